// vitmsn-extract: features of many images (files, folders, list files) or of ready pixel values,
// to one .safetensors or .npy file. main() reads the options (parse_options, which also checks the
// outputs), loads the model, collects the inputs, then runs them in one go (run_all) or as one
// shard of a job array (run_shard).
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

namespace fs = std::filesystem;
using namespace vitmsn;

namespace {

const cli::Spec kSpec = {"vitmsn-extract",
                         R"(usage: vitmsn-extract [--model PATH] --output OUT [options] [IMAGE|FOLDER ...]

Runs ViT-MSN on images (files; folders searched recursively for @EXTENSIONS@,
hidden files skipped; --list files) and/or on ready pixel values, and writes the features to OUT.
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
  --version                 the version, kernel instruction set and JPEG decoder
)",
                         {"--model", "--output", "--pixel-values", "--preprocessor", "--size", "--threads", "--list",
                          "--pool", "--batch", "--shard", "--shards", "--chunk"},
                         {"--hidden-states", "--cls-attention", "--save-pixel-values", "--force"}};

enum class Pool { kNone, kCls, kMean };

std::string pad5(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%05d", i);
  return buf;
}

// Shard I of N of OUT.ext: OUT-0000I-of-0000N.ext, its .files.txt list, its .done record, and the
// saved chunks OUT-0000I-of-0000N.part-0000K.safetensors.
struct ShardPaths {
  int index = 0, count = 0;
  std::string base, output, files, done;
  std::string part(std::size_t k) const { return base + ".part-" + pad5(static_cast<int>(k)) + ".safetensors"; }
};

ShardPaths shard_paths(const std::string& output, int index, int count) {
  const auto dot = output.find_last_of('.');
  ShardPaths p;
  p.index = index;
  p.count = count;
  p.base = output.substr(0, dot) + "-" + pad5(index) + "-of-" + pad5(count);
  p.output = p.base + output.substr(dot);
  p.files = p.base + ".files.txt";
  p.done = p.base + ".done";
  return p;
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

// --- Options -----------------------------------------------------------------------------------------

struct Options {
  std::string model_path, output, sidecar, pool_name;
  Pool pool = Pool::kNone;
  bool npy = false;
  bool keep_rows = false;  // features as rows of one array (pooled, or .npy), named by the sidecar
  bool hidden_states = false, cls_attention = false, save_pixel_values = false, force = false;
  int threads = 0, batch = 1, chunk = 64;
  std::optional<ShardPaths> shard;
  std::optional<Preprocessor> preprocessor;  // --preprocessor
  std::vector<std::string> images, lists, pixel_values;
};

// Every option, and the outputs' folders, names and existence, before any work.
Options parse_options(const cli::Args& args) {
  Options o;
  o.output = args.required("--output", "--output OUT.safetensors|OUT.npy");
  o.npy = cli::ends_with(cli::lower(o.output), ".npy");
  o.pool_name = args.get("--pool", "none");
  o.pool = o.pool_name == "cls" ? Pool::kCls : o.pool_name == "mean" ? Pool::kMean : Pool::kNone;
  if (o.pool == Pool::kNone && o.pool_name != "none") throw cli::UsageError("--pool must be cls, mean or none");
  o.hidden_states = args.has("--hidden-states");
  o.cls_attention = args.has("--cls-attention");
  o.save_pixel_values = args.has("--save-pixel-values");
  if ((o.hidden_states || o.cls_attention || o.save_pixel_values) && (o.pool != Pool::kNone || o.npy))
    throw cli::UsageError(
        "--hidden-states, --cls-attention and --save-pixel-values need --pool none and .safetensors output");
  o.images = args.positional();
  o.lists = args.all("--list");
  o.pixel_values = args.all("--pixel-values");
  if (o.images.empty() && o.pixel_values.empty() && o.lists.empty())
    throw cli::UsageError("nothing to do: give images, folders, --list FILE or --pixel-values IN.safetensors");
  o.threads = args.get_int("--threads", 0, 1, 4096);
  o.batch = args.get_int("--batch", 1, 1, 4096);
  o.chunk = args.get_int("--chunk", 64, 1, 1 << 20);
  o.force = args.has("--force");
  o.keep_rows = o.pool != Pool::kNone || o.npy;
  o.sidecar = cli::sidecar_path(o.output);
  if (args.has("--size")) cli::parse_size(args.get("--size"), "--size");  // the values: once the model is known
  o.model_path = cli::model_path_or_throw(args);

  const std::vector<std::string> kinds = {".safetensors", ".npy"};
  if (const auto shard = shard_of(args)) {
    o.shard = shard_paths(o.output, shard->first, shard->second);
    cli::check_output("--output", o.output, kinds, true);  // the name and the folder; a shard resumes
  } else {
    cli::check_output("--output", o.output, kinds, o.force);
    if (o.keep_rows) cli::check_output("--output", o.sidecar, {".txt"}, o.force);
  }
  if (args.has("--preprocessor")) o.preprocessor = Preprocessor::from_file(args.get("--preprocessor"));
  return o;
}

// --- Inputs ------------------------------------------------------------------------------------------

struct Input {
  std::string name;                    // case name, the key prefix
  std::string source;                  // file path, or "IN.safetensors:key"
  const TensorView* pixels = nullptr;  // set for --pixel-values inputs
};

struct Inputs {
  std::vector<SafetensorsFile> files;  // the --pixel-values files the inputs point into
  std::vector<Input> list;
  std::size_t skipped_tensors = 0;  // tensors of --pixel-values that are not [C,H,W] F32
};

// Pixel-value tensors, then images (arguments, then list files); case names must be unique when they
// name tensors of the output.
Inputs collect_inputs(const Options& o, const Config& config) {
  Inputs in;
  std::map<std::string, std::string> owner;
  const bool names_matter = !o.keep_rows && !o.shard;
  auto add = [&](const std::string& name, const std::string& source, const TensorView* px) {
    auto [it, fresh] = owner.emplace(name, source);
    if (!fresh && names_matter)
      throw Error("inputs '" + it->second + "' and '" + source + "' both have the case name '" + name + "'");
    in.list.push_back({name, source, px});
  };
  in.files.reserve(o.pixel_values.size());
  for (const auto& pv : o.pixel_values) {
    in.files.push_back(SafetensorsFile::open(pv));
    for (const auto& key : in.files.back().names()) {
      const TensorView& t = in.files.back().get(key);
      if (t.dtype != DType::kF32 || t.shape.size() != 3 || t.shape[0] != config.num_channels) {
        ++in.skipped_tensors;
        continue;
      }
      std::string name = key;
      if (cli::ends_with(name, ".pixel_values") && name.size() > 13) name.resize(name.size() - 13);
      add(name, pv + ":" + key, &t);
    }
  }
  for (const auto& path : cli::collect_images(o.images, o.lists)) add(fs::path(path).stem().string(), path, nullptr);
  if (in.list.empty()) {
    std::vector<std::string> why;
    if (!o.images.empty() || !o.lists.empty())
      why.push_back("no images in " + cli::join(o.images, ", ") + (o.images.empty() || o.lists.empty() ? "" : ", ") +
                    cli::join(o.lists, ", "));
    if (!o.pixel_values.empty())
      why.push_back("no F32 [" + std::to_string(config.num_channels) + ",H,W] tensors in " +
                    cli::join(o.pixel_values, ", "));
    throw Error("nothing to do: " + cli::join(why, "; "));
  }
  return in;
}

// --- The run -----------------------------------------------------------------------------------------

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

// Runs inputs through the model and writes the results.
class Extractor {
 public:
  Extractor(const Options& o, const Model& model, Preprocessor pre, const Inputs& inputs)
      : o_(o), model_(model), pre_(std::move(pre)), inputs_(inputs.list), skipped_tensors_(inputs.skipped_tensors) {
    if (o.hidden_states)
      for (int i = 0; i <= model.config().num_hidden_layers; ++i) fo_.hidden_states.push_back(i);
    if (o.cls_attention)
      for (int i = 0; i < model.config().num_hidden_layers; ++i) fo_.cls_attention.push_back(i);
  }

  // Runs inputs[begin, end) in batches; failures are reported and listed, never fatal.
  Results run_range(std::size_t begin, std::size_t end, cli::Progress& progress) const {
    Results res;
    for (std::size_t start = begin; start < end && !cli::interrupted(); start += o_.batch) {
      const std::size_t stop = std::min(end, start + static_cast<std::size_t>(o_.batch));
      std::vector<PixelValues> px;
      std::vector<const Input*> ok;
      for (std::size_t n = start; n < stop; ++n) {
        const Input& in = inputs_[n];
        try {
          px.push_back(in.pixels ? to_pixel_values(*in.pixels) : pre_(read_image(in.source)));
          ok.push_back(&in);
        } catch (const Error& e) {
          progress.clear();
          std::fprintf(stderr, "error: %s\n", e.what());
          res.failed.push_back(in.source);
          progress.step(in.source);
        }
      }
      if (ok.empty()) continue;
      std::vector<Features> feats;
      try {
        feats = model_.extract_features(px, fo_);
      } catch (const Error& e) {
        progress.clear();
        for (const Input* in : ok) {
          std::fprintf(stderr, "error: %s: %s\n", in->source.c_str(), e.what());
          res.failed.push_back(in->source);
          progress.step(in->source);
        }
        continue;
      }
      for (std::size_t k = 0; k < ok.size(); ++k) {
        if (keep(*ok[k], feats[k], px[k], res, progress)) res.rows.push_back(ok[k]->source);
        progress.step(ok[k]->source);
      }
    }
    return res;
  }

  // Writes the final output (+ the sidecar list of rows).
  void write_output(const std::string& path, const std::string& side, const Results& res) const {
    const std::int64_t n = static_cast<std::int64_t>(res.rows.size());
    const std::int64_t hidden = model_.config().hidden_size;
    const std::map<std::string, std::string> meta = {
        {"producer", "vitmsn-extract"}, {"model", model_.source()}, {"pool", o_.pool_name}};
    if (o_.keep_rows) {
      const std::int64_t tokens = res.row_size > 0 && o_.pool == Pool::kNone ? res.row_size / hidden : 0;
      std::vector<std::int64_t> shape =
          o_.pool != Pool::kNone ? std::vector<std::int64_t>{n, hidden} : std::vector<std::int64_t>{n, tokens, hidden};
      if (o_.npy) {
        write_npy(path, shape, res.row_data.data());
      } else {
        write_safetensors(path, {TensorData::f32("features", shape, res.row_data.data())}, meta);
      }
    } else {
      write_safetensors(path, res.tensors, meta);
    }
    if (!side.empty()) write_text_file(side, join_lines(res.rows));
  }

  // The summary; the exit status.
  int finish(const Results& res, std::size_t total, const std::string& written, const cli::Progress& progress) const {
    std::fprintf(stderr, "%zu of %s done in %.1f s (%.2f images/s) -> %s\n", res.rows.size(),
                 cli::count(total, "input").c_str(), progress.elapsed(),
                 res.rows.size() / std::max(1e-9, progress.elapsed()), written.c_str());
    if (skipped_tensors_)
      std::fprintf(stderr, "%s of --pixel-values skipped (not F32 [C,H,W])\n",
                   cli::count(skipped_tensors_, "tensor").c_str());
    if (res.failed.empty()) return 0;
    std::fprintf(stderr, "%zu failed:\n", res.failed.size());
    for (const auto& f : res.failed) std::fprintf(stderr, "  %s\n", f.c_str());
    return 1;
  }

 private:
  static PixelValues to_pixel_values(const TensorView& t) {
    PixelValues p(t.shape[0], t.shape[1], t.shape[2]);
    const std::vector<float> v = t.to_float();
    std::copy(v.begin(), v.end(), p.data());
    return p;
  }

  // Adds one input's features to `res`; false (reported) when they cannot join the array.
  bool keep(const Input& in, const Features& f, const PixelValues& px, Results& res, cli::Progress& progress) const {
    const auto N = f.last_hidden_state.rows(), D = f.last_hidden_state.cols();
    if (o_.pool != Pool::kNone) {
      const Vector v = o_.pool == Pool::kCls ? f.cls() : f.mean_patch();
      res.row_data.insert(res.row_data.end(), v.data(), v.data() + v.size());
      res.row_size = D;
    } else if (o_.npy) {
      if (res.row_size >= 0 && res.row_size != N * D) {
        progress.clear();
        std::fprintf(stderr,
                     "error: %s: %ld tokens, earlier images had %ld; one .npy array needs one size "
                     "(use --pool, --size, or .safetensors output)\n",
                     in.source.c_str(), static_cast<long>(N), static_cast<long>(res.row_size / D));
        res.failed.push_back(in.source);
        return false;
      }
      res.row_size = N * D;
      res.row_data.insert(res.row_data.end(), f.last_hidden_state.data(), f.last_hidden_state.data() + N * D);
    } else {
      res.tensors.push_back(TensorData::f32(in.name + ".last_hidden_state", {N, D}, f.last_hidden_state.data()));
      for (const auto& [i, hs] : f.hidden_states)
        res.tensors.push_back(TensorData::f32(in.name + ".hidden_states." + std::to_string(i), {N, D}, hs.data()));
      for (const auto& [l, a] : f.cls_attention)
        res.tensors.push_back(
            TensorData::f32(in.name + ".cls_attention." + std::to_string(l), {a.rows(), a.cols()}, a.data()));
      if (model_.has_classifier()) {
        const Vector logits = model_.logits(f);
        res.tensors.push_back(TensorData::f32(in.name + ".logits", {logits.size()}, logits.data()));
      }
      if (o_.save_pixel_values)
        res.tensors.push_back(
            TensorData::f32(in.name + ".pixel_values", {px.dimension(0), px.dimension(1), px.dimension(2)}, px.data()));
    }
    return true;
  }

  const Options& o_;
  const Model& model_;
  const Preprocessor pre_;
  const std::vector<Input>& inputs_;
  std::size_t skipped_tensors_;
  FeatureOptions fo_;
};

// Every input in one go, written when all are done.
int run_all(const Options& o, const Extractor& x, std::size_t total) {
  cli::Progress progress(total, "images");
  progress.start();
  Results res = x.run_range(0, total, progress);
  progress.break_line();
  if (cli::interrupted()) {
    std::fprintf(stderr, "interrupted after %zu of %s; nothing was written to %s\n", res.rows.size(),
                 cli::count(total, "input").c_str(), o.output.c_str());
    return 130;
  }
  if (!res.rows.empty()) x.write_output(o.output, o.keep_rows ? o.sidecar : "", res);
  return x.finish(res, total,
                  res.rows.empty() ? "(nothing written)"
                  : o.keep_rows    ? o.output + " + " + o.sidecar
                                   : o.output,
                  progress);
}

// A shard: its contiguous slice of the input list, computed in chunks that are each saved as a part
// file, so a killed task redoes only its unfinished chunks; the shard's output, its file list and
// finally a .done record are written when every chunk is there.
int run_shard(const Options& o, const Extractor& x, const std::vector<Input>& inputs) {
  const ShardPaths& sp = *o.shard;
  const std::size_t first = inputs.size() * sp.index / sp.count;
  const std::size_t last = inputs.size() * (sp.index + 1) / sp.count;
  std::string expected;
  for (std::size_t i = first; i < last; ++i) expected += inputs[i].source + "\n";
  if (!o.force && cli::file_exists(sp.done)) {
    std::string done;
    try {
      done = cli::read_file(sp.done);
    } catch (const Error&) {  // a damaged .done record means: redo the shard
    }
    if (done == expected) {
      std::fprintf(stderr, "shard %d/%d already complete: %s (use --force to redo)\n", sp.index, sp.count,
                   sp.output.c_str());
      return 0;
    }
  }
  std::fprintf(stderr, "shard %d/%d: inputs %zu..%zu of %zu -> %s\n", sp.index, sp.count, first, last, inputs.size(),
               sp.output.c_str());
  cli::Progress progress(last - first, "images");
  progress.start();
  Results all;
  std::size_t reused = 0, chunks = 0;
  // Test hook (tests/programs_test.cpp): die by SIGKILL right after saving chunk N, the one point at
  // which a killed task's resume is tested the same way on a fast and on a slow machine.
  const char* kill_hook = std::getenv("VITMSN_TEST_KILL_AFTER_CHUNK");
  const long long kill_after_chunk = kill_hook ? std::atoll(kill_hook) : -1;
  for (std::size_t c0 = first; c0 < last && !cli::interrupted(); c0 += o.chunk, ++chunks) {
    const std::size_t c1 = std::min(last, c0 + static_cast<std::size_t>(o.chunk));
    std::string chunk_inputs;
    for (std::size_t i = c0; i < c1; ++i) chunk_inputs += inputs[i].source + "\n";
    const std::string part = sp.part(chunks);
    if (!o.force && cli::file_exists(part)) {
      try {
        Results r = read_part(part, chunk_inputs);
        for (std::size_t i = c0; i < c1; ++i) progress.step(inputs[i].source);
        all.append(std::move(r));
        ++reused;
        continue;
      } catch (const Error& e) {
        progress.clear();
        std::fprintf(stderr, "note: redoing chunk %zu: %s\n", chunks, e.what());
      }
    }
    Results r = x.run_range(c0, c1, progress);
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
                 sp.index, sp.count, chunks, (last - first + o.chunk - 1) / o.chunk, sp.base.c_str());
    return 130;
  }
  x.write_output(sp.output, sp.files, all);
  write_text_file(sp.done, expected);
  for (std::size_t k = 0; k < chunks; ++k) std::remove(sp.part(k).c_str());
  if (reused) std::fprintf(stderr, "resumed: %zu of %zu chunks were already done\n", reused, chunks);
  return x.finish(all, last - first, sp.output + " + " + sp.files, progress);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    const Options o = parse_options(args);
    LoadOptions lo;
    lo.threads = o.threads;
    const Model model = Model::load(o.model_path, lo);
    Preprocessor pre = o.preprocessor ? *o.preprocessor : model.preprocessor();
    if (args.has("--size")) {
      const auto [h, w] = cli::input_size(args, "--size", model.config());
      pre = pre.with_size(h, w);
    }
    const Inputs inputs = collect_inputs(o, model.config());
    cli::install_interrupt_handler();
    const Extractor x(o, model, pre, inputs);
    return o.shard ? run_shard(o, x, inputs.list) : run_all(o, x, inputs.list.size());
  });
}
