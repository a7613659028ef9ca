// vitmsn-convert: Hugging Face checkpoint (folder, pytorch_model.bin or model.safetensors) → one
// self-contained vitmsn safetensors file (config and preprocessor settings in __metadata__).
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/vitmsn.hpp"

namespace {
const char* kUsage =
    R"(usage: vitmsn-convert [--dtype f32|bf16|f16] [--add-classifier HEAD.safetensors] [--force] INPUT OUTPUT.safetensors

INPUT is a Hugging Face model folder (model.safetensors or pytorch_model.bin, config.json,
preprocessor_config.json), a pytorch_model.bin or a .safetensors file (config.json beside it).
pytorch_model.bin is read without executing pickle code (only tensor data is accepted).
OUTPUT is a single-file model: every tensor checked against the config, config and preprocessor
settings embedded in __metadata__.
options:
  --dtype T               storage type of the weight matrices: f32 (default), bf16 or f16;
                          layer norms, biases and embeddings stay f32
  --add-classifier HEAD   merge a classifier head (classifier.weight [K, D], classifier.bias [K],
                          __metadata__ id2label), e.g. one trained by vitmsn-probe
  --force                 overwrite OUTPUT
  -h, --help              this text
)";
}  // namespace

int main(int argc, char** argv) {
  return vitmsn::cli::run_main(kUsage, [&]() -> int {
    vitmsn::cli::Args args(argc, argv, {"--dtype", "--add-classifier"}, {"--force", "--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (args.positional().size() != 2) throw vitmsn::cli::UsageError("give INPUT and OUTPUT");
    vitmsn::ConvertOptions o;
    try {
      o.dtype = vitmsn::parse_float_dtype(args.get("--dtype", "f32"));
    } catch (const vitmsn::Error& e) {
      throw vitmsn::cli::UsageError(std::string("--dtype: ") + e.what());
    }
    o.classifier = args.get("--add-classifier");
    o.overwrite = args.has("--force");
    const std::string& out = args.positional()[1];
    const vitmsn::ConvertReport r = vitmsn::convert_checkpoint(args.positional()[0], out, o);
    std::printf("read      %s\n", r.weights_input.c_str());
    std::printf("config    %s\n", r.config_source.c_str());
    std::printf("preproc   %s\n", r.preprocessor_source.c_str());
    if (!r.dropped.empty()) {
      std::printf("dropped   %zu tensors that are not part of a ViT-MSN model:", r.dropped.size());
      for (std::size_t i = 0; i < r.dropped.size() && i < 8; ++i) std::printf(" %s", r.dropped[i].c_str());
      std::printf("%s\n", r.dropped.size() > 8 ? " …" : "");
    }
    std::printf("wrote     %s: %zu tensors, %.1f MB, %s%s\n", out.c_str(), r.tensors, r.bytes / 1048576.0,
                args.get("--dtype", "f32").c_str(), r.has_classifier ? ", with classifier head" : "");
    return 0;
  });
}
