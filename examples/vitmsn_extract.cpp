// vitmsn-extract: features of images (files, folders) or of ready pixel values, to one safetensors file.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

namespace fs = std::filesystem;
using namespace vitmsn;

namespace {

const char* kUsage = R"(usage: vitmsn-extract [--model PATH] --output OUT.safetensors [options] [IMAGE|FOLDER ...]

Runs ViT-MSN on images (files, or folders searched recursively for .png .jpg .jpeg .bmp .gif .tga
.ppm .pgm .pnm) and/or on ready pixel values, and writes one safetensors file with, per input
<case> (an image's file name without extension):
  <case>.last_hidden_state   F32 [tokens, hidden]
  <case>.hidden_states.<i>   with --hidden-states (i = 0 embeddings … L)
  <case>.cls_attention.<l>   with --cls-attention: [heads, tokens] CLS attention row of layer l
  <case>.logits              when the model has a classifier head
  <case>.pixel_values        with --save-pixel-values
options:
  --model PATH              model folder or .safetensors (default: $VITMSN_MODEL, else
                            weights/vit-msn-large-7.safetensors)
  --output OUT              output .safetensors (written atomically; never left half-written)
  --pixel-values IN         also run every F32 [3,H,W] tensor of IN.safetensors; its key is the case
                            name (a trailing ".pixel_values" is dropped); may be repeated
  --hidden-states           also write every layer's hidden state
  --cls-attention           also write every layer's CLS attention row
  --save-pixel-values       also write the preprocessed input of each image
  --preprocessor FILE       preprocessor_config.json to use instead of the model's
  --size HxW                resize images to H x W (multiples of the patch size; position
                            embeddings are interpolated)
  --threads N               threads (default: all CPUs this process may use)
  --force                   overwrite OUT if it exists
  -h, --help                this text
)";

const std::set<std::string> kImageExtensions = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".ppm", ".pgm", ".pnm"};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Files as given, folders expanded recursively (image extensions only); folders' contents sorted.
std::vector<std::string> collect_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(in, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (it->is_regular_file(ec) && kImageExtensions.count(lower(it->path().extension().string())))
          found.push_back(it->path().string());
      if (ec) throw Error(in + ": cannot list folder: " + ec.message());
      std::sort(found.begin(), found.end());
      out.insert(out.end(), found.begin(), found.end());
    } else {
      out.push_back(in);
    }
  }
  return out;
}

struct Input {
  std::string name;    // case name, the key prefix
  std::string source;  // file path, or "IN.safetensors:key"
};

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kUsage, [&]() -> int {
    cli::Args args(argc, argv, {"--model", "--output", "--pixel-values", "--preprocessor", "--size", "--threads"},
                   {"--hidden-states", "--cls-attention", "--save-pixel-values", "--force", "--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!args.has("--output")) throw cli::UsageError("--output OUT.safetensors is required");
    const std::string output = args.get("--output");
    if (args.positional().empty() && !args.has("--pixel-values"))
      throw cli::UsageError("nothing to do: give images, folders or --pixel-values IN.safetensors");
    if (cli::file_exists(output) && !args.has("--force"))
      throw Error(output + ": already exists (use --force to overwrite)");
    const int threads = args.get_int("--threads", 0, 1, 4096);

    LoadOptions lo;
    lo.threads = threads;
    const Model model = Model::load(cli::model_path_or_throw(args), lo);
    Preprocessor pre = args.has("--preprocessor") ? Preprocessor::from_file(args.get("--preprocessor")) : model.preprocessor();
    if (args.has("--size")) {
      const auto [h, w] = cli::parse_size(args.get("--size"), "--size");
      if (h % model.config().patch_size || w % model.config().patch_size)
        throw cli::UsageError("--size " + args.get("--size") + ": height and width must be multiples of the patch size " +
                              std::to_string(model.config().patch_size));
      pre = pre.with_size(h, w);
    }
    FeatureOptions fo;
    if (args.has("--hidden-states"))
      for (int i = 0; i <= model.config().num_hidden_layers; ++i) fo.hidden_states.push_back(i);
    if (args.has("--cls-attention"))
      for (int i = 0; i < model.config().num_hidden_layers; ++i) fo.cls_attention.push_back(i);

    // Inputs: the pixel-values file's tensors, then the images; case names must be unique.
    std::vector<Input> inputs;
    std::map<std::string, std::string> owner;
    auto add = [&](const std::string& name, const std::string& source) {
      auto [it, fresh] = owner.emplace(name, source);
      if (!fresh) throw Error("inputs '" + it->second + "' and '" + source + "' both have the case name '" + name + "'");
      inputs.push_back({name, source});
    };
    std::vector<SafetensorsFile> pv_files;
    std::vector<std::pair<std::size_t, std::string>> pv_keys;  // per input from --pixel-values: file, key
    std::size_t skipped = 0;
    for (const auto& pv : args.all("--pixel-values")) {
      pv_files.push_back(SafetensorsFile::open(pv));
      for (const auto& key : pv_files.back().names()) {
        const TensorView& t = pv_files.back().get(key);
        if (t.dtype != DType::kF32 || t.shape.size() != 3 || t.shape[0] != model.config().num_channels) {
          ++skipped;
          continue;
        }
        std::string name = key;
        const std::string suffix = ".pixel_values";
        if (name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0)
          name.resize(name.size() - suffix.size());
        add(name, pv + ":" + key);
        pv_keys.emplace_back(pv_files.size() - 1, key);
      }
    }
    for (const auto& path : collect_images(args.positional())) add(fs::path(path).stem().string(), path);
    if (inputs.empty()) throw Error("no inputs: no images found and no F32 [3,H,W] tensors in --pixel-values");

    cli::install_interrupt_handler();
    std::vector<TensorData> out;
    std::vector<std::string> failed;
    cli::Progress progress(inputs.size(), "images");
    std::size_t done = 0;
    for (std::size_t n = 0; n < inputs.size(); ++n) {
      const Input& in = inputs[n];
      if (cli::interrupted()) break;
      try {
        PixelValues px;
        if (n < pv_keys.size()) {
          const TensorView& t = pv_files[pv_keys[n].first].get(pv_keys[n].second);
          px = PixelValues(t.shape[0], t.shape[1], t.shape[2]);
          const std::vector<float> v = t.to_float();
          std::copy(v.begin(), v.end(), px.data());
        } else {
          px = pre(load_image(in.source));
        }
        const Features f = model.extract_features(px, fo);
        const auto N = f.last_hidden_state.rows(), D = f.last_hidden_state.cols();
        out.push_back(TensorData::f32(in.name + ".last_hidden_state", {N, D}, f.last_hidden_state.data()));
        for (const auto& [i, hs] : f.hidden_states)
          out.push_back(TensorData::f32(in.name + ".hidden_states." + std::to_string(i), {N, D}, hs.data()));
        for (const auto& [l, a] : f.cls_attention)
          out.push_back(TensorData::f32(in.name + ".cls_attention." + std::to_string(l), {a.rows(), a.cols()}, a.data()));
        if (model.has_classifier()) {
          const Vector logits = model.logits(f);
          out.push_back(TensorData::f32(in.name + ".logits", {logits.size()}, logits.data()));
        }
        if (args.has("--save-pixel-values"))
          out.push_back(TensorData::f32(in.name + ".pixel_values", {px.dimension(0), px.dimension(1), px.dimension(2)},
                                        px.data()));
        ++done;
      } catch (const Error& e) {
        progress.break_line();
        std::fprintf(stderr, "error: %s\n", e.what());
        failed.push_back(in.source);
      }
      progress.step(in.source);
    }
    progress.break_line();
    if (cli::interrupted()) {
      std::fprintf(stderr, "interrupted after %zu of %zu inputs; %s was not written\n", done, inputs.size(),
                   output.c_str());
      return 130;
    }
    if (!out.empty())
      write_safetensors(output, out, {{"producer", "vitmsn-extract"}, {"model", model.source()}});
    std::fprintf(stderr, "%zu of %zu inputs done in %.1f s -> %s%s", done, inputs.size(), progress.elapsed(),
                 out.empty() ? "(nothing written)" : output.c_str(),
                 skipped ? (", " + std::to_string(skipped) + " tensors of --pixel-values skipped (not F32 [C,H,W])\n").c_str()
                         : "\n");
    if (!failed.empty()) {
      std::fprintf(stderr, "%zu failed:\n", failed.size());
      for (const auto& f : failed) std::fprintf(stderr, "  %s\n", f.c_str());
      return 1;
    }
    return 0;
  });
}
