// vitmsn-convert: Hugging Face checkpoint (folder, pytorch_model.bin or model.safetensors) → one
// self-contained vitmsn safetensors file (config, preprocessor settings and backbone identity in
// __metadata__), optionally with a classifier head merged.
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const cli::Spec kSpec = {
    "vitmsn-convert",
    R"(usage: vitmsn-convert [--dtype f32|bf16|f16|int8] [--layout rows|panels] [--add-classifier HEAD.safetensors]
                      [--force] INPUT OUTPUT.safetensors

INPUT is a Hugging Face model folder (model.safetensors or pytorch_model.bin, config.json,
preprocessor_config.json), a pytorch_model.bin or a .safetensors file (config.json beside it).
pytorch_model.bin is read without executing pickle code (only tensor data is accepted).
OUTPUT is a single-file model: every tensor checked against the config, config and preprocessor
settings embedded in __metadata__, and the backbone identity of INPUT (a SHA-256 of its weights,
kept through conversions) that vitmsn-probe records in the heads it trains.
options:
  --dtype T               storage type of the weight matrices: f32 (default), bf16 or f16; or
                          int8: the linear weights of the blocks quantized per output channel
                          (activations are quantized at run time; the patch projection and the
                          classifier stay f32); layer norms, biases and embeddings stay f32
  --layout L              rows (default): the linear weights [out, in] as PyTorch stores them, a
                          file any safetensors reader uses; panels (f32 only): laid out for this
                          CPU's GEMM (panels 32 columns wide with AVX-512, 16 with AVX2), loaded in
                          place — no copy, no packing, one copy in memory for every process that
                          loads it; other CPUs lay it out again at load; only vitmsn reads it
  --add-classifier HEAD   merge a classifier head (classifier.weight [K, D], classifier.bias [K],
                          __metadata__ id2label), e.g. one trained by vitmsn-probe on INPUT; a
                          head trained on another model is refused (unless --force), one that
                          replaces INPUT's own head is said so
  --force                 overwrite OUTPUT; merge a head trained on another backbone
  -h, --help              this text
  --version               the version, kernel instruction set and JPEG decoder
Sizes are in MB: 1 MB = 10^6 bytes.
)",
    {"--dtype", "--layout", "--add-classifier"},
    {"--force"}};

std::string short_id(const std::string& id) { return id.substr(0, 16); }

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    std::setvbuf(stdout, nullptr, _IOLBF, 0);  // each line of the log as it is printed, even into a pipe
    if (args.positional().size() != 2) throw cli::UsageError("give INPUT and OUTPUT");
    ConvertOptions o;
    try {
      o.dtype = parse_weight_dtype(args.get("--dtype", "f32"));
    } catch (const Error& e) {
      throw cli::UsageError(std::string("--dtype: ") + e.what());
    }
    try {
      o.layout = parse_weight_layout(args.get("--layout", "rows"));
    } catch (const Error& e) {
      throw cli::UsageError(std::string("--layout: ") + e.what());
    }
    if (o.layout == WeightLayout::kPanels && o.dtype != DType::kF32)
      throw cli::UsageError("--layout panels stores float32 weights: it does not combine with --dtype " +
                            args.get("--dtype"));
    o.classifier = args.get("--add-classifier");
    o.overwrite = o.allow_other_backbone = args.has("--force");
    const std::string& input = args.positional()[0];
    const std::string& out = args.positional()[1];
    if (const std::string kind = cli::file_kind(input); cli::is_image_kind(kind))
      throw Error("INPUT " + input + ": " + kind +
                  ", not a model checkpoint (a Hugging Face folder, pytorch_model.bin or .safetensors)");
    cli::check_model_file(input, "INPUT");
    cli::check_output("OUTPUT", out, {".safetensors"}, o.overwrite);
    if (!o.classifier.empty() && !cli::file_exists(o.classifier))
      throw Error(o.classifier + ": no such head file (--add-classifier)");

    const ConvertReport r = convert_checkpoint(input, out, o);
    std::printf("read      %s\n", r.weights_input.c_str());
    std::printf("config    %s\n", r.config_source.c_str());
    std::printf("preproc   %s\n", r.preprocessor_source.c_str());
    std::printf("backbone  %s… (%s)\n", short_id(r.backbone).c_str(),
                r.backbone_recorded ? "recorded in the input" : "computed from the weights");
    if (!r.dropped.empty()) {
      std::printf("dropped   %s that are not part of a ViT-MSN model:", cli::count(r.dropped.size(), "tensor").c_str());
      for (std::size_t i = 0; i < r.dropped.size() && i < 8; ++i) std::printf(" %s", r.dropped[i].c_str());
      std::printf("%s\n", r.dropped.size() > 8 ? " …" : "");
    }
    switch (r.head_backbone) {
      case HeadBackbone::kNoHead:
      case HeadBackbone::kSame:
        break;
      case HeadBackbone::kUnrecorded:
        std::fprintf(stderr,
                     "warning: %s records no backbone, so it cannot be checked that it was trained on %s's "
                     "features (heads written by vitmsn-probe since 0.2.0 record it)\n",
                     o.classifier.c_str(), input.c_str());
        break;
      case HeadBackbone::kOther:
        std::fprintf(stderr, "warning: %s was trained on another backbone (%s…, not %s…); merged because of --force\n",
                     o.classifier.c_str(), short_id(r.head_backbone_recorded).c_str(), short_id(r.backbone).c_str());
        break;
    }
    if (!r.replaced_labels.empty())
      std::printf("replaced  the classifier head of %s (%s: %s) by %s's\n", input.c_str(),
                  cli::count(r.replaced_labels.size(), "class", "classes").c_str(),
                  cli::join_first(r.replaced_labels, 8).c_str(), o.classifier.c_str());
    std::error_code ec;  // the file's size (1 MB = 10^6 bytes), header and metadata included
    const double file_mb = static_cast<double>(std::filesystem::file_size(out, ec)) / 1e6;
    const std::string layout = r.panel_width > 0 ? ", panels of " + std::to_string(r.panel_width) : std::string();
    std::printf("wrote     %s: %s, %.*f MB, %s%s%s\n", out.c_str(), cli::count(r.tensors, "tensor").c_str(),
                file_mb < 10 ? 2 : 1, file_mb, args.get("--dtype", "f32").c_str(), layout.c_str(),
                r.has_classifier ? ", with classifier head" : "");
    return 0;
  });
}
