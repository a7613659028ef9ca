// vitmsn-extract: features of many images (files, folders, list files) or of ready pixel values,
// to one .safetensors or .npy file.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

namespace fs = std::filesystem;
using namespace vitmsn;

namespace {

const char* kUsage = R"(usage: vitmsn-extract [--model PATH] --output OUT [options] [IMAGE|FOLDER ...]

Runs ViT-MSN on images (files; folders searched recursively for .png .jpg .jpeg .bmp .gif .tga .ppm
.pgm .pnm; --list files) and/or on ready pixel values, and writes the features to OUT.
With --pool none (default) and OUT.safetensors, per input <case> (file name without extension):
  <case>.last_hidden_state   F32 [tokens, hidden]
  <case>.hidden_states.<i>   with --hidden-states (i = 0 embeddings … L)
  <case>.cls_attention.<l>   with --cls-attention: [heads, tokens] CLS attention row of layer l
  <case>.logits              when the model has a classifier head
  <case>.pixel_values        with --save-pixel-values
With --pool cls|mean: one array "features" [images, hidden] (the CLS token, or the mean of the patch
tokens), rows in input order, plus a sidecar OUT-without-extension.files.txt naming each row's file.
OUT.npy writes a numpy array instead ([images, hidden] pooled, [images, tokens, hidden] with
--pool none) with the same sidecar.
options:
  --model PATH              model folder or .safetensors (default: $VITMSN_MODEL, else
                            weights/vit-msn-large-7.safetensors)
  --output OUT              .safetensors or .npy (written atomically; never left half-written)
  --list FILE               read more image paths from FILE, one per line (# comments allowed)
  --pixel-values IN         also run every F32 [3,H,W] tensor of IN.safetensors; its key is the case
                            name (a trailing ".pixel_values" is dropped); may be repeated
  --pool cls|mean|none      what to keep per image (default none: all tokens)
  --batch B                 images per forward pass (default 1)
  --hidden-states           also write every layer's hidden state (--pool none, .safetensors)
  --cls-attention           also write every layer's CLS attention row (--pool none, .safetensors)
  --save-pixel-values       also write the preprocessed input of each image (--pool none, .safetensors)
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

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// Files as given, folders expanded recursively (image extensions only, sorted).
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

std::vector<std::string> read_list(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot read the list file");
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    out.push_back(line.substr(first));
  }
  return out;
}

struct Input {
  std::string name;    // case name, the key prefix
  std::string source;  // file path, or "IN.safetensors:key"
  const TensorView* pixels = nullptr;  // set for --pixel-values inputs
};

enum class Pool { kNone, kCls, kMean };

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kUsage, [&]() -> int {
    cli::Args args(argc, argv,
                   {"--model", "--output", "--pixel-values", "--preprocessor", "--size", "--threads", "--list", "--pool",
                    "--batch"},
                   {"--hidden-states", "--cls-attention", "--save-pixel-values", "--force", "--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!args.has("--output")) throw cli::UsageError("--output OUT.safetensors|OUT.npy is required");
    const std::string output = args.get("--output");
    const bool npy = ends_with(lower(output), ".npy");
    if (!npy && !ends_with(lower(output), ".safetensors"))
      throw cli::UsageError("--output must end in .safetensors or .npy");
    const std::string pool_name = args.get("--pool", "none");
    const Pool pool = pool_name == "cls" ? Pool::kCls : pool_name == "mean" ? Pool::kMean : Pool::kNone;
    if (pool == Pool::kNone && pool_name != "none") throw cli::UsageError("--pool must be cls, mean or none");
    const bool extras = args.has("--hidden-states") || args.has("--cls-attention") || args.has("--save-pixel-values");
    if (extras && (pool != Pool::kNone || npy))
      throw cli::UsageError("--hidden-states, --cls-attention and --save-pixel-values need --pool none and .safetensors output");
    if (args.positional().empty() && !args.has("--pixel-values") && !args.has("--list"))
      throw cli::UsageError("nothing to do: give images, folders, --list FILE or --pixel-values IN.safetensors");
    const int threads = args.get_int("--threads", 0, 1, 4096);
    const int batch = args.get_int("--batch", 1, 1, 4096);
    const std::string sidecar = output.substr(0, output.find_last_of('.')) + ".files.txt";
    const bool with_sidecar = pool != Pool::kNone || npy;
    if (!args.has("--force")) {
      if (cli::file_exists(output)) throw Error(output + ": already exists (use --force to overwrite)");
      if (with_sidecar && cli::file_exists(sidecar)) throw Error(sidecar + ": already exists (use --force to overwrite)");
    }

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

    // Inputs: pixel-value tensors, then images (arguments, then list files); case names unique.
    std::vector<Input> inputs;
    std::map<std::string, std::string> owner;
    auto add = [&](const std::string& name, const std::string& source, const TensorView* px) {
      auto [it, fresh] = owner.emplace(name, source);
      if (!fresh && !with_sidecar)
        throw Error("inputs '" + it->second + "' and '" + source + "' both have the case name '" + name + "'");
      inputs.push_back({name, source, px});
    };
    std::vector<SafetensorsFile> pv_files;
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
        if (ends_with(name, ".pixel_values") && name.size() > 13) name.resize(name.size() - 13);
        add(name, pv + ":" + key, &t);
      }
    }
    std::vector<std::string> paths = args.positional();
    for (const auto& list : args.all("--list")) {
      const auto more = read_list(list);
      paths.insert(paths.end(), more.begin(), more.end());
    }
    for (const auto& path : collect_images(paths)) add(fs::path(path).stem().string(), path, nullptr);
    if (inputs.empty()) throw Error("no inputs: no images found and no F32 [3,H,W] tensors in --pixel-values");

    cli::install_interrupt_handler();
    std::vector<TensorData> out;     // --pool none, .safetensors
    std::vector<float> pooled;       // pooled rows, in order
    std::vector<float> all_tokens;   // --pool none, .npy
    std::vector<std::string> rows;   // sources of the rows written
    std::int64_t tokens = -1, hidden = model.config().hidden_size;
    std::vector<std::string> failed;
    cli::Progress progress(inputs.size(), "images");
    for (std::size_t start = 0; start < inputs.size() && !cli::interrupted(); start += batch) {
      const std::size_t end = std::min(inputs.size(), start + static_cast<std::size_t>(batch));
      std::vector<PixelValues> px;
      std::vector<const Input*> ok;
      for (std::size_t n = start; n < end; ++n) {
        const Input& in = inputs[n];
        try {
          if (in.pixels) {
            PixelValues p(in.pixels->shape[0], in.pixels->shape[1], in.pixels->shape[2]);
            const std::vector<float> v = in.pixels->to_float();
            std::copy(v.begin(), v.end(), p.data());
            px.push_back(std::move(p));
          } else {
            px.push_back(pre(load_image(in.source)));
          }
          ok.push_back(&in);
        } catch (const Error& e) {
          progress.break_line();
          std::fprintf(stderr, "error: %s\n", e.what());
          failed.push_back(in.source);
          progress.step(in.source);
        }
      }
      if (ok.empty()) continue;
      std::vector<Features> feats;
      try {
        feats = model.extract_features(px, fo);
      } catch (const Error& e) {
        progress.break_line();
        for (const Input* in : ok) {
          std::fprintf(stderr, "error: %s: %s\n", in->source.c_str(), e.what());
          failed.push_back(in->source);
          progress.step(in->source);
        }
        continue;
      }
      for (std::size_t k = 0; k < ok.size(); ++k) {
        const Input& in = *ok[k];
        const Features& f = feats[k];
        const auto N = f.last_hidden_state.rows(), D = f.last_hidden_state.cols();
        if (pool != Pool::kNone) {
          const Vector v = pool == Pool::kCls ? f.cls() : f.mean_patch();
          pooled.insert(pooled.end(), v.data(), v.data() + v.size());
        } else if (npy) {
          if (tokens >= 0 && tokens != N) {
            progress.break_line();
            std::fprintf(stderr, "error: %s: %ld tokens, earlier images had %ld; one .npy array needs one size "
                         "(use --pool, --size, or .safetensors output)\n", in.source.c_str(), static_cast<long>(N),
                         static_cast<long>(tokens));
            failed.push_back(in.source);
            progress.step(in.source);
            continue;
          }
          tokens = N;
          all_tokens.insert(all_tokens.end(), f.last_hidden_state.data(), f.last_hidden_state.data() + N * D);
        } else {
          out.push_back(TensorData::f32(in.name + ".last_hidden_state", {N, D}, f.last_hidden_state.data()));
          for (const auto& [i, hs] : f.hidden_states)
            out.push_back(TensorData::f32(in.name + ".hidden_states." + std::to_string(i), {N, D}, hs.data()));
          for (const auto& [l, a] : f.cls_attention)
            out.push_back(TensorData::f32(in.name + ".cls_attention." + std::to_string(l), {a.rows(), a.cols()}, a.data()));
          if (model.has_classifier()) {
            const Vector logits = model.logits(f);
            out.push_back(TensorData::f32(in.name + ".logits", {logits.size()}, logits.data()));
          }
          if (args.has("--save-pixel-values")) {
            const PixelValues& p = px[k];
            out.push_back(TensorData::f32(in.name + ".pixel_values", {p.dimension(0), p.dimension(1), p.dimension(2)}, p.data()));
          }
        }
        rows.push_back(in.source);
        progress.step(in.source);
      }
    }
    progress.break_line();
    if (cli::interrupted()) {
      std::fprintf(stderr, "interrupted after %zu of %zu inputs; nothing was written to %s\n", rows.size(), inputs.size(),
                   output.c_str());
      return 130;
    }
    const std::int64_t n = static_cast<std::int64_t>(rows.size());
    if (n > 0) {
      const std::map<std::string, std::string> meta = {
          {"producer", "vitmsn-extract"}, {"model", model.source()}, {"pool", pool_name}};
      if (pool != Pool::kNone) {
        if (npy) {
          write_npy(output, {n, hidden}, pooled.data());
        } else {
          write_safetensors(output, {TensorData::f32("features", {n, hidden}, pooled.data())}, meta);
        }
      } else if (npy) {
        write_npy(output, {n, tokens, hidden}, all_tokens.data());
      } else {
        write_safetensors(output, out, meta);
      }
      if (with_sidecar) {
        std::string text;
        for (const auto& r : rows) text += r + "\n";
        write_text_file(sidecar, text);
      }
    }
    std::fprintf(stderr, "%zu of %zu inputs done in %.1f s (%.2f images/s) -> %s%s\n", rows.size(), inputs.size(),
                 progress.elapsed(), rows.size() / std::max(1e-9, progress.elapsed()),
                 n ? output.c_str() : "(nothing written)", n && with_sidecar ? (" + " + sidecar).c_str() : "");
    if (skipped) std::fprintf(stderr, "%zu tensors of --pixel-values skipped (not F32 [C,H,W])\n", skipped);
    if (!failed.empty()) {
      std::fprintf(stderr, "%zu failed:\n", failed.size());
      for (const auto& f : failed) std::fprintf(stderr, "  %s\n", f.c_str());
      return 1;
    }
    return 0;
  });
}
