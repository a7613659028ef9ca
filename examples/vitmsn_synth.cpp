// vitmsn-synth: writes a model folder with the reproducible synthetic weights of synthetic_tensors()
// (include/vitmsn/synthetic.hpp): model.safetensors (Hugging Face names), config.json and
// preprocessor_config.json. By default the full-size ViT-L/7 (1.2 GB as float32): the model of the
// benchmarks (examples/bench_vs_peers.sh), the peers (examples/peers/) and the full-size tests
// (tests/fullsize), without the real checkpoint.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <system_error>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const cli::Spec kSpec = {"vitmsn-synth",
                         R"(usage: vitmsn-synth [--dtype f32|bf16|f16|int8] [--config CONFIG.json] [--force] OUT_DIR

Writes a ViT-MSN model folder with reproducible synthetic weights (a hash of each tensor's number and
element index; the same bits on every machine) for benchmarks and tests without the real checkpoint:
  OUT_DIR/model.safetensors         the encoder's tensors, Hugging Face names (no classifier)
  OUT_DIR/config.json               the architecture
  OUT_DIR/preprocessor_config.json  the model card's preprocessing (resize to image_size, ImageNet
                                    mean and std)
The architecture is facebook/vit-msn-large-7's (ViT-L, patch 7, 224x224: 1.2 GB as float32) unless
--config gives another. OUT_DIR is created (its parent folder must exist); an existing OUT_DIR must be
empty unless --force. model.safetensors is written last, atomically: a folder that has it is whole.
Every program given --model OUT_DIR gives the same outputs, bit for bit, as the same weights built in
memory (vitmsn-bench --synthetic).
options:
  --dtype T        storage type of model.safetensors: f32 (default; what the PyTorch and ONNX
                   Runtime peers read), or bf16, f16, int8 as vitmsn-convert --dtype T writes them
                   (a self-contained file; the float32 weights are staged in OUT_DIR meanwhile)
  --config FILE    the architecture from a Hugging Face config.json (hidden_size,
                   num_hidden_layers, num_attention_heads, intermediate_size, patch_size,
                   image_size; qkv_bias must be true), e.g. a small model for tests
  --force          write into an OUT_DIR that is not empty (its three files are replaced)
  -h, --help       this text
  --version        the version, kernel instruction set and JPEG decoder
Sizes are in MB: 1 MB = 10^6 bytes.
)",
                         {"--dtype", "--config"},
                         {"--force"}};

namespace fs = std::filesystem;

/// Removes a staging file when it goes out of scope (after an error too).
struct RemoveOnExit {
  std::string path;
  ~RemoveOnExit() {
    std::error_code ec;
    if (!path.empty()) fs::remove(path, ec);
  }
};

/// Checks OUT_DIR before any work and creates it: a folder (or nothing yet) whose parent exists, empty
/// unless `force`. \throws Error saying what is wrong.
void prepare_out_dir(const std::string& dir, bool force) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw Error(dir + ": exists and is not a folder; give OUT_DIR a folder");
    if (!force && !fs::is_empty(dir, ec))
      throw Error(dir + ": already exists and is not empty (use --force to write the model into it)");
    if (ec) throw Error(dir + ": cannot list the folder: " + ec.message());
  } else {
    const fs::path parent = fs::path(dir).lexically_normal().parent_path();
    const std::string folder = parent.empty() ? "." : parent.string();
    if (!fs::is_directory(folder, ec)) throw Error(dir + ": the folder " + folder + " does not exist");
    if (!fs::create_directory(dir, ec) && ec) throw Error(dir + ": cannot create the folder: " + ec.message());
  }
  if (::access(dir.c_str(), W_OK) != 0) throw Error(dir + ": cannot create files in this folder");
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    if (args.positional().size() != 1) throw cli::UsageError("give one OUT_DIR");
    DType dtype = DType::kF32;
    try {
      dtype = parse_weight_dtype(args.get("--dtype", "f32"));
    } catch (const Error& e) {
      throw cli::UsageError(std::string("--dtype: ") + e.what());
    }
    Config config = vit_msn_large_7_config();
    std::string architecture = "ViT-L/7 (facebook/vit-msn-large-7)";
    if (args.has("--config")) {
      const std::string file = args.get("--config"), kind = cli::file_kind(file);
      if (!kind.empty()) throw Error("--config " + file + ": " + kind + ", not a model's config.json");
      config = read_config(file);
      if (!config.qkv_bias) throw Error(args.get("--config") + ": qkv_bias must be true for synthetic weights");
      config.id2label.clear();  // no classifier is written
      architecture = args.get("--config");
    }
    const std::string dir = args.positional()[0];
    const bool force = args.has("--force");
    prepare_out_dir(dir, force);

    PreprocessorConfig pre;
    pre.height = pre.width = pre.crop_height = pre.crop_width = config.image_size;
    const std::string model = (fs::path(dir) / "model.safetensors").string();
    // The folder's model is whole once model.safetensors exists: the two JSON files first.
    write_text_file((fs::path(dir) / "config.json").string(), to_json(config) + "\n");
    write_text_file((fs::path(dir) / "preprocessor_config.json").string(), to_json(pre) + "\n");
    std::vector<TensorData> tensors = synthetic_tensors(config);
    const std::size_t count = tensors.size();
    std::size_t bytes = 0;
    for (const auto& t : tensors) bytes += t.bytes.size();
    if (dtype == DType::kF32) {
      write_safetensors(model, tensors, {{"format", "pt"}});
    } else {
      // The float32 file (config.json beside it) converted as vitmsn-convert --dtype would.
      RemoveOnExit staged{
          (fs::path(dir) / (".vitmsn-synth-f32." + std::to_string(::getpid()) + ".safetensors")).string()};
      write_safetensors(staged.path, tensors, {{"format", "pt"}});
      std::vector<TensorData>().swap(tensors);  // the conversion reads the file
      ConvertOptions o;
      o.dtype = dtype;
      o.overwrite = true;  // OUT_DIR was checked above
      bytes = convert_checkpoint(staged.path, model, o).bytes;
    }
    std::printf("wrote %s: synthetic %s, %s, %s, %.1f MB\n", dir.c_str(), architecture.c_str(),
                cli::lower(args.get("--dtype", "f32")).c_str(), cli::count(count, "tensor").c_str(), bytes / 1e6);
    return 0;
  });
}
