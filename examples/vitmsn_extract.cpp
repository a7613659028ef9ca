// vitmsn-extract: features of many images (files, folders, list files) or of ready pixel values,
// to one .safetensors or .npy file.
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <optional>
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
  --shard I/N               process only shard I (0-based) of N: a contiguous slice of the input list
                            (sorted folder contents, list files in their order), written to
                            OUT-0000I-of-0000N.ext + .files.txt; without it, the task index comes from
                            SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT or
                            JOB_COMPLETION_INDEX with --shards N. A finished shard is not redone; an
                            interrupted one resumes from its saved chunks. vitmsn-merge joins shards.
  --shards N                the shard count, with a task index from the environment
  --chunk C                 images per saved chunk of a shard (default 64)
  --force                   overwrite OUT if it exists (for a shard: redo it)
  -h, --help                this text
)";

// Files as given, folders expanded recursively (image extensions only, sorted).
std::vector<std::string> collect_images(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (const auto& in : inputs) {
    std::error_code ec;
    if (fs::is_directory(in, ec)) {
      std::vector<std::string> found;
      for (auto it = fs::recursive_directory_iterator(in, fs::directory_options::skip_permission_denied, ec);
           !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
        if (it->is_regular_file(ec) && cli::is_image_file_name(it->path())) found.push_back(it->path().string());
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
  std::string name;                    // case name, the key prefix
  std::string source;                  // file path, or "IN.safetensors:key"
  const TensorView* pixels = nullptr;  // set for --pixel-values inputs
};

enum class Pool { kNone, kCls, kMean };

// What a run produced: per-case tensors (--pool none to .safetensors), or rows of one array.
struct Results {
  std::vector<TensorData> tensors;
  std::vector<float> row_data;  // rows of row_size floats
  std::int64_t row_size = -1;
  std::vector<std::string> rows, failed;  // sources of the rows written, and of failed inputs

  void append(Results&& o) {
    if (row_size >= 0 && o.row_size >= 0 && row_size != o.row_size)
      throw Error("features of different sizes in one array (" + std::to_string(row_size) + " vs " +
                  std::to_string(o.row_size) + " values per image): use --pool, --size or .safetensors output");
    if (o.row_size >= 0) row_size = o.row_size;
    row_data.insert(row_data.end(), o.row_data.begin(), o.row_data.end());
    for (auto& t : o.tensors) tensors.push_back(std::move(t));
    rows.insert(rows.end(), o.rows.begin(), o.rows.end());
    failed.insert(failed.end(), o.failed.begin(), o.failed.end());
  }
};

std::string join_lines(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::size_t a = 0;
  while (a < s.size()) {
    const std::size_t b = s.find('\n', a);
    out.push_back(s.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  return out;
}

// The file's bytes, or "" when it cannot be read (a damaged .done record means: redo the shard).
std::string read_or_empty(const std::string& path) {
  try {
    return cli::read_file(path);
  } catch (const Error&) {
    return "";
  }
}

std::string pad5(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%05d", i);
  return buf;
}

// Shard I of N of OUT.ext: OUT-0000I-of-0000N.ext, its .files.txt list and its .done record.
struct ShardPaths {
  std::string base, output, files, done;
};

ShardPaths shard_paths(const std::string& output, int index, int count) {
  const auto dot = output.find_last_of('.');
  ShardPaths p;
  p.base = output.substr(0, dot) + "-" + pad5(index) + "-of-" + pad5(count);
  p.output = p.base + output.substr(dot);
  p.files = p.base + ".files.txt";
  p.done = p.base + ".done";
  return p;
}

// A chunk of a shard, saved so that an interrupted task can resume: the chunk's results with the
// list of its inputs in the metadata (a part is reused only for exactly the same inputs).
void write_part(const std::string& path, const Results& r, const std::string& inputs) {
  std::vector<TensorData> t = r.tensors;
  const std::int64_t n = static_cast<std::int64_t>(r.rows.size());
  if (r.row_size >= 0) t.push_back(TensorData::f32("__rows__", {n, r.row_size}, r.row_data.data()));
  write_safetensors(path, t,
                    {{"inputs", inputs},
                     {"rows", join_lines(r.rows)},
                     {"failed", join_lines(r.failed)},
                     {"row_size", std::to_string(r.row_size)}});
}

Results read_part(const std::string& path, const std::string& inputs) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  const auto& m = f.metadata();
  if (!m.count("inputs") || m.at("inputs") != inputs) throw Error(path + ": made for other inputs");
  Results r;
  r.rows = split_lines(m.count("rows") ? m.at("rows") : "");
  r.failed = split_lines(m.count("failed") ? m.at("failed") : "");
  r.row_size = -1;
  if (m.count("row_size")) {
    const std::string& v = m.at("row_size");
    char* end = nullptr;
    errno = 0;
    const long long n = std::strtoll(v.c_str(), &end, 10);
    if (v.empty() || *end || errno || n < -1 || n > (1ll << 40))
      throw Error(path + ": bad row_size '" + v + "' in the metadata of a saved chunk");
    r.row_size = n;
  }
  for (const auto& name : f.names()) {
    const TensorView& v = f.get(name);
    if (name == "__rows__") {
      r.row_data = v.to_float();
      continue;
    }
    r.tensors.push_back(v.to_tensor_data());
  }
  if (r.row_size >= 0 && r.row_data.size() != r.rows.size() * static_cast<std::size_t>(r.row_size))
    throw Error(path + ": rows and data disagree");
  return r;
}

// Which shard this task is: --shard I/N, else the scheduler's task index (Slurm job arrays:
// SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT; Kubernetes Indexed Jobs:
// JOB_COMPLETION_INDEX) with --shards N when the count is not in the environment.
std::optional<std::pair<int, int>> shard_of(const cli::Args& args) {
  auto number = [](const std::string& s, const std::string& what) {
    char* end = nullptr;
    const long v = std::strtol(s.c_str(), &end, 10);
    if (s.empty() || *end || v < 0 || v > 9999999)
      throw cli::UsageError(what + " must be a non-negative integer, got '" + s + "'");
    return static_cast<int>(v);
  };
  int index = -1, count = args.has("--shards") ? number(args.get("--shards"), "--shards") : -1;
  if (args.has("--shard")) {
    const std::string s = args.get("--shard");
    const auto slash = s.find('/');
    if (slash == std::string::npos) throw cli::UsageError("--shard needs I/N (e.g. 3/16), got '" + s + "'");
    index = number(s.substr(0, slash), "--shard I");
    count = number(s.substr(slash + 1), "--shard N");
  } else if (const char* id = std::getenv("SLURM_ARRAY_TASK_ID")) {
    const char* min = std::getenv("SLURM_ARRAY_TASK_MIN");
    index = number(id, "SLURM_ARRAY_TASK_ID") - (min ? number(min, "SLURM_ARRAY_TASK_MIN") : 0);
    if (const char* n = std::getenv("SLURM_ARRAY_TASK_COUNT"); n && count < 0)
      count = number(n, "SLURM_ARRAY_TASK_COUNT");
  } else if (const char* k = std::getenv("JOB_COMPLETION_INDEX")) {
    index = number(k, "JOB_COMPLETION_INDEX");
  } else if (count >= 0) {
    throw cli::UsageError("--shards N needs a task index: --shard I/N, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX");
  } else {
    return std::nullopt;
  }
  if (count < 1) throw cli::UsageError("the shard count is unknown: give --shards N (or --shard I/N)");
  if (index < 0 || index >= count)
    throw cli::UsageError("shard index " + std::to_string(index) + " is outside 0.." + std::to_string(count - 1));
  return std::make_pair(index, count);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kUsage, [&]() -> int {
    cli::Args args(argc, argv,
                   {"--model", "--output", "--pixel-values", "--preprocessor", "--size", "--threads", "--list",
                    "--pool", "--batch", "--shard", "--shards", "--chunk"},
                   {"--hidden-states", "--cls-attention", "--save-pixel-values", "--force", "--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!args.has("--output")) throw cli::UsageError("--output OUT.safetensors|OUT.npy is required");
    const std::string output = args.get("--output");
    const bool npy = cli::ends_with(cli::lower(output), ".npy");
    if (!npy && !cli::ends_with(cli::lower(output), ".safetensors"))
      throw cli::UsageError("--output must end in .safetensors or .npy");
    const std::string pool_name = args.get("--pool", "none");
    const Pool pool = pool_name == "cls" ? Pool::kCls : pool_name == "mean" ? Pool::kMean : Pool::kNone;
    if (pool == Pool::kNone && pool_name != "none") throw cli::UsageError("--pool must be cls, mean or none");
    const bool extras = args.has("--hidden-states") || args.has("--cls-attention") || args.has("--save-pixel-values");
    if (extras && (pool != Pool::kNone || npy))
      throw cli::UsageError(
          "--hidden-states, --cls-attention and --save-pixel-values need --pool none and .safetensors output");
    if (args.positional().empty() && !args.has("--pixel-values") && !args.has("--list"))
      throw cli::UsageError("nothing to do: give images, folders, --list FILE or --pixel-values IN.safetensors");
    const int threads = args.get_int("--threads", 0, 1, 4096);
    const int batch = args.get_int("--batch", 1, 1, 4096);
    const std::string sidecar = output.substr(0, output.find_last_of('.')) + ".files.txt";
    const bool with_sidecar = pool != Pool::kNone || npy;
    const std::optional<std::pair<int, int>> shard = shard_of(args);
    const int chunk = args.get_int("--chunk", 64, 1, 1 << 20);
    if (!args.has("--force") && !shard) {
      if (cli::file_exists(output)) throw Error(output + ": already exists (use --force to overwrite)");
      if (with_sidecar && cli::file_exists(sidecar))
        throw Error(sidecar + ": already exists (use --force to overwrite)");
    }

    LoadOptions lo;
    lo.threads = threads;
    const Model model = Model::load(cli::model_path_or_throw(args), lo);
    Preprocessor pre =
        args.has("--preprocessor") ? Preprocessor::from_file(args.get("--preprocessor")) : model.preprocessor();
    if (args.has("--size")) {
      const auto [h, w] = cli::parse_size(args.get("--size"), "--size");
      if (h % model.config().patch_size || w % model.config().patch_size)
        throw cli::UsageError("--size " + args.get("--size") +
                              ": height and width must be multiples of the patch size " +
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
      if (!fresh && !with_sidecar && !shard)
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
        if (cli::ends_with(name, ".pixel_values") && name.size() > 13) name.resize(name.size() - 13);
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
    const std::int64_t hidden = model.config().hidden_size;
    const bool keep_rows = pool != Pool::kNone || npy;  // features as rows of one array

    // Runs inputs[begin, end) in batches; failures are reported and listed, never fatal.
    cli::Progress progress(inputs.size(), "images");
    auto run_range = [&](std::size_t begin, std::size_t end) {
      Results res;
      for (std::size_t start = begin; start < end && !cli::interrupted(); start += batch) {
        const std::size_t stop = std::min(end, start + static_cast<std::size_t>(batch));
        std::vector<PixelValues> px;
        std::vector<const Input*> ok;
        for (std::size_t n = start; n < stop; ++n) {
          const Input& in = inputs[n];
          try {
            if (in.pixels) {
              PixelValues p(in.pixels->shape[0], in.pixels->shape[1], in.pixels->shape[2]);
              const std::vector<float> v = in.pixels->to_float();
              std::copy(v.begin(), v.end(), p.data());
              px.push_back(std::move(p));
            } else {
              px.push_back(pre(read_image(in.source)));
            }
            ok.push_back(&in);
          } catch (const Error& e) {
            progress.break_line();
            std::fprintf(stderr, "error: %s\n", e.what());
            res.failed.push_back(in.source);
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
            res.failed.push_back(in->source);
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
            res.row_data.insert(res.row_data.end(), v.data(), v.data() + v.size());
            res.row_size = D;
          } else if (npy) {
            if (res.row_size >= 0 && res.row_size != N * D) {
              progress.break_line();
              std::fprintf(stderr,
                           "error: %s: %ld tokens, earlier images had %ld; one .npy array needs one size "
                           "(use --pool, --size, or .safetensors output)\n",
                           in.source.c_str(), static_cast<long>(N), static_cast<long>(res.row_size / D));
              res.failed.push_back(in.source);
              progress.step(in.source);
              continue;
            }
            res.row_size = N * D;
            res.row_data.insert(res.row_data.end(), f.last_hidden_state.data(), f.last_hidden_state.data() + N * D);
          } else {
            res.tensors.push_back(TensorData::f32(in.name + ".last_hidden_state", {N, D}, f.last_hidden_state.data()));
            for (const auto& [i, hs] : f.hidden_states)
              res.tensors.push_back(
                  TensorData::f32(in.name + ".hidden_states." + std::to_string(i), {N, D}, hs.data()));
            for (const auto& [l, a] : f.cls_attention)
              res.tensors.push_back(
                  TensorData::f32(in.name + ".cls_attention." + std::to_string(l), {a.rows(), a.cols()}, a.data()));
            if (model.has_classifier()) {
              const Vector logits = model.logits(f);
              res.tensors.push_back(TensorData::f32(in.name + ".logits", {logits.size()}, logits.data()));
            }
            if (args.has("--save-pixel-values")) {
              const PixelValues& p = px[k];
              res.tensors.push_back(TensorData::f32(in.name + ".pixel_values",
                                                    {p.dimension(0), p.dimension(1), p.dimension(2)}, p.data()));
            }
          }
          res.rows.push_back(in.source);
          progress.step(in.source);
        }
      }
      return res;
    };

    // Writes the final output (+ the sidecar list of rows).
    const std::map<std::string, std::string> meta = {
        {"producer", "vitmsn-extract"}, {"model", model.source()}, {"pool", pool_name}};
    auto write_output = [&](const std::string& path, const std::string& side, const Results& res) {
      const std::int64_t n = static_cast<std::int64_t>(res.rows.size());
      if (keep_rows) {
        const std::int64_t tokens = res.row_size > 0 && pool == Pool::kNone ? res.row_size / hidden : 0;
        std::vector<std::int64_t> shape =
            pool != Pool::kNone ? std::vector<std::int64_t>{n, hidden} : std::vector<std::int64_t>{n, tokens, hidden};
        if (npy) {
          write_npy(path, shape, res.row_data.data());
        } else {
          write_safetensors(path, {TensorData::f32("features", shape, res.row_data.data())}, meta);
        }
      } else {
        write_safetensors(path, res.tensors, meta);
      }
      if (!side.empty()) write_text_file(side, join_lines(res.rows));
    };

    auto finish = [&](const Results& res, std::size_t total, const std::string& written) {
      std::fprintf(stderr, "%zu of %zu inputs done in %.1f s (%.2f images/s) -> %s\n", res.rows.size(), total,
                   progress.elapsed(), res.rows.size() / std::max(1e-9, progress.elapsed()), written.c_str());
      if (skipped) std::fprintf(stderr, "%zu tensors of --pixel-values skipped (not F32 [C,H,W])\n", skipped);
      if (!res.failed.empty()) {
        std::fprintf(stderr, "%zu failed:\n", res.failed.size());
        for (const auto& f : res.failed) std::fprintf(stderr, "  %s\n", f.c_str());
        return 1;
      }
      return 0;
    };

    if (!shard) {
      Results res = run_range(0, inputs.size());
      progress.break_line();
      if (cli::interrupted()) {
        std::fprintf(stderr, "interrupted after %zu of %zu inputs; nothing was written to %s\n", res.rows.size(),
                     inputs.size(), output.c_str());
        return 130;
      }
      if (!res.rows.empty()) write_output(output, with_sidecar ? sidecar : "", res);
      return finish(res, inputs.size(),
                    res.rows.empty() ? "(nothing written)"
                    : with_sidecar   ? output + " + " + sidecar
                                     : output);
    }

    // A shard: its contiguous slice of the input list, computed in chunks that are each saved as a
    // part file, so a killed task redoes only its unfinished chunks; the shard's output, its file
    // list and finally a .done record are written when every chunk is there.
    const std::size_t first = inputs.size() * shard->first / shard->second;
    const std::size_t last = inputs.size() * (shard->first + 1) / shard->second;
    std::string expected;
    for (std::size_t i = first; i < last; ++i) expected += inputs[i].source + "\n";
    const ShardPaths sp = shard_paths(output, shard->first, shard->second);
    if (!args.has("--force") && cli::file_exists(sp.done) && read_or_empty(sp.done) == expected) {
      std::fprintf(stderr, "shard %d/%d already complete: %s (use --force to redo)\n", shard->first, shard->second,
                   sp.output.c_str());
      return 0;
    }
    std::fprintf(stderr, "shard %d/%d: inputs %zu..%zu of %zu -> %s\n", shard->first, shard->second, first, last,
                 inputs.size(), sp.output.c_str());
    progress = cli::Progress(last - first, "images");
    Results all;
    std::size_t reused = 0, chunks = 0;
    // Test hook (tests/programs_test.cpp): die by SIGKILL right after saving chunk N, the one point at
    // which a killed task's resume is tested the same way on a fast and on a slow machine.
    const char* kill_hook = std::getenv("VITMSN_TEST_KILL_AFTER_CHUNK");
    const long long kill_after_chunk = kill_hook ? std::atoll(kill_hook) : -1;
    for (std::size_t c0 = first; c0 < last && !cli::interrupted(); c0 += chunk, ++chunks) {
      const std::size_t c1 = std::min(last, c0 + static_cast<std::size_t>(chunk));
      std::string chunk_inputs;
      for (std::size_t i = c0; i < c1; ++i) chunk_inputs += inputs[i].source + "\n";
      const std::string part = sp.base + ".part-" + pad5(static_cast<int>(chunks)) + ".safetensors";
      if (!args.has("--force") && cli::file_exists(part)) {
        try {
          Results r = read_part(part, chunk_inputs);
          for (std::size_t i = c0; i < c1; ++i) progress.step(inputs[i].source);
          all.append(std::move(r));
          ++reused;
          continue;
        } catch (const Error& e) {
          progress.break_line();
          std::fprintf(stderr, "note: redoing chunk %zu: %s\n", chunks, e.what());
        }
      }
      Results r = run_range(c0, c1);
      if (cli::interrupted()) break;
      write_part(part, r, chunk_inputs);
      if (static_cast<long long>(chunks) == kill_after_chunk) std::raise(SIGKILL);
      all.append(std::move(r));
    }
    progress.break_line();
    if (cli::interrupted()) {
      std::fprintf(stderr,
                   "interrupted: shard %d/%d has %zu of %zu chunks saved as %s.part-*; run the same command "
                   "again to finish it\n",
                   shard->first, shard->second, chunks, (last - first + chunk - 1) / chunk, sp.base.c_str());
      return 130;
    }
    write_output(sp.output, sp.files, all);
    std::string done = expected;
    write_text_file(sp.done, done);
    for (std::size_t k = 0; k < chunks; ++k)
      std::remove((sp.base + ".part-" + pad5(static_cast<int>(k)) + ".safetensors").c_str());
    if (reused) std::fprintf(stderr, "resumed: %zu of %zu chunks were already done\n", reused, chunks);
    return finish(all, last - first, sp.output + " + " + sp.files);
  });
}
