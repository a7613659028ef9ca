// vitmsn-extract: features of many images (files, folders, list files) or of ready pixel values,
// to one .safetensors or .npy file. main() reads the options (parse_options, which also checks the
// outputs), takes the output's lock, loads the model, collects and checks the inputs, then runs its
// slice of them (all, or one shard of a job array) in chunks that an interrupted run saves and a
// later one resumes (run). Every output is a unit of the features file, its .files.txt list and a
// manifest recording what made them (run_output.hpp).
#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cli.hpp"
#include "run_output.hpp"
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
Features go to disk as each batch is done (a hidden spool file beside OUT, joined into OUT at the
end): memory holds one batch of them, whatever the number of images; the disk, about twice OUT.
Beside OUT: OUT-without-extension.manifest.json records what made it (model identity and dtype,
kernels, options, preprocessor, the inputs and rows in order, SHA-256 of OUT and its list);
OUT-without-extension.lock is held while a run writes OUT: a second run into the same OUT is refused.
An input named twice (after path normalisation) is an error before any work, unless --dedupe.
Before any work, every image input (files found in folders too) must exist and start like an image
vitmsn decodes (32 bytes read per file): the others (a .safetensors, a text file, …) are named, each
with what it is, and nothing is run. A corrupt image is found when decoded (exit status 3).
Ctrl-C (SIGINT) or SIGTERM: the current image is finished, the work done so far is saved in
OUT-without-extension.part-*.safetensors, and the same command resumes it (a second Ctrl-C stops at
once). Resuming with other settings (model, dtype, pool, size, preprocessor, kernels) is refused.
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
  --compute C               auto|f32|bf16: the linear layers' arithmetic (default auto: bf16 weights
                            compute in bf16 where the CPU's bf16 dot product pays, all else in float32
                            as Hugging Face; recorded in the manifest)
  --shard I/N               process only shard I (0-based) of N: a contiguous slice of the input list
                            (sorted folder contents, list files in their order), written to
                            OUT-0000I-of-0000N.ext + .files.txt; without it, the task index comes from
                            SLURM_ARRAY_TASK_ID (minus SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_COUNT or
                            JOB_COMPLETION_INDEX with --shards N. A finished shard is not redone; an
                            interrupted one resumes from its saved chunks. vitmsn-merge joins shards.
  --shards N                the shard count, with a task index from the environment
  --chunk C                 images per saved chunk (default: 64 for a shard; without --shard the work
                            is saved only when the run is interrupted)
  --dedupe                  drop inputs named twice (the first is kept) instead of refusing them
  --force                   overwrite OUT if it exists and start over (saved parts are discarded; for a
                            shard: redo it)
  -h, --help                this text
  --version                 the version, kernel instruction set and JPEG decoder
Exit status: 0 every input done; 3 the output written but some inputs failed (each is named);
1 an error, nothing written; 2 a usage error; 130 interrupted.
Symbolic links to files and folders are followed (each folder is read once).
)",
                         {"--model", "--output", "--pixel-values", "--preprocessor", "--size", "--threads", "--compute",
                          "--list", "--pool", "--batch", "--shard", "--shards", "--chunk"},
                         {"--hidden-states", "--cls-attention", "--save-pixel-values", "--force", "--dedupe"}};

enum class Pool { kNone, kCls, kMean };

std::string pad5(int i) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%05d", i);
  return buf;
}

// The files of one output unit: BASE.ext (the features), BASE.files.txt (its rows' inputs, when it
// has rows), BASE.manifest.json, the lock BASE.lock and the saved work BASE.part-0000K.safetensors.
// BASE is OUT without its extension, or OUT-0000I-of-0000N for shard I of N.
struct RunPaths {
  int index = 0, count = 1;  // the shard (0 of 1 without --shard)
  std::string base, output, files, manifest, lock;
  std::string part(std::size_t k) const { return base + ".part-" + pad5(static_cast<int>(k)) + ".safetensors"; }
};

RunPaths run_paths(const std::string& output, int index, int count, bool sharded) {
  const auto dot = output.find_last_of('.');
  RunPaths p;
  p.index = index;
  p.count = count;
  p.base = output.substr(0, dot) + (sharded ? "-" + pad5(index) + "-of-" + pad5(count) : "");
  p.output = p.base + output.substr(dot);
  p.files = p.base + ".files.txt";
  p.manifest = p.base + ".manifest.json";
  p.lock = p.base + ".lock";
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
  args.conflict("--shard", "--shards", "--shard I/N gives the count already; give one of them");
  int index = -1, count = args.has("--shards") ? number(args.get("--shards"), "--shards") : -1;
  std::string from;  // where the index came from, as the user gave it
  if (args.has("--shard")) {
    const std::string s = args.get("--shard");
    from = "--shard " + s;
    const auto slash = s.find('/');
    if (slash == std::string::npos) throw cli::UsageError("--shard needs I/N (e.g. 3/16), got '" + s + "'");
    index = number(s.substr(0, slash), "--shard I");
    count = number(s.substr(slash + 1), "--shard N");
    if (count < 1) throw cli::UsageError("--shard I/N needs N of at least 1 (the number of shards), got '" + s + "'");
  } else if (const char* id = std::getenv("SLURM_ARRAY_TASK_ID")) {
    const char* min = std::getenv("SLURM_ARRAY_TASK_MIN");
    index = number(id, "SLURM_ARRAY_TASK_ID") - (min ? number(min, "SLURM_ARRAY_TASK_MIN") : 0);
    from = "SLURM_ARRAY_TASK_ID=" + std::string(id) + (min ? " (SLURM_ARRAY_TASK_MIN=" + std::string(min) + ")" : "");
    if (const char* n = std::getenv("SLURM_ARRAY_TASK_COUNT"); n && count < 0)
      count = number(n, "SLURM_ARRAY_TASK_COUNT");
  } else if (const char* k = std::getenv("JOB_COMPLETION_INDEX")) {
    index = number(k, "JOB_COMPLETION_INDEX");
    from = "JOB_COMPLETION_INDEX=" + std::string(k);
  } else if (count >= 0) {
    throw cli::UsageError("--shards N needs a task index: --shard I/N, SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX");
  } else {
    return std::nullopt;
  }
  if (count < 1) throw cli::UsageError("the shard count is unknown: give --shards N (or --shard I/N)");
  if (index < 0 || index >= count)
    throw cli::UsageError(from + ": shard index " + std::to_string(index) + " is outside 0.." +
                          std::to_string(count - 1) + " (" + std::to_string(count) + " shards)");
  return std::make_pair(index, count);
}

// --- Options -----------------------------------------------------------------------------------------

struct Options {
  std::string model_path, output, sidecar, pool_name;
  Pool pool = Pool::kNone;
  bool npy = false;
  bool keep_rows = false;  // features as rows of one array (pooled, or .npy), named by the sidecar
  bool hidden_states = false, cls_attention = false, save_pixel_values = false, force = false, dedupe = false;
  int threads = 0, batch = 1, chunk = 0;  // chunk 0: save only when interrupted
  Compute compute = Compute::kAuto;
  bool sharded = false;
  RunPaths paths;
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
  o.compute = cli::parse_compute(args);
  o.batch = args.get_int("--batch", 1, 1, 4096);
  o.force = args.has("--force");
  o.dedupe = args.has("--dedupe");
  o.keep_rows = o.pool != Pool::kNone || o.npy;
  o.sidecar = cli::sidecar_path(o.output);
  if (args.has("--size")) cli::parse_size(args.get("--size"), "--size");  // the values: once the model is known
  o.model_path = cli::model_path_or_throw(args);

  const std::vector<std::string> kinds = {".safetensors", ".npy"};
  const auto shard = shard_of(args);
  o.sharded = shard.has_value();
  o.chunk = args.get_int("--chunk", o.sharded ? 64 : 0, 1, 1 << 20);
  o.paths = run_paths(o.output, shard ? shard->first : 0, shard ? shard->second : 1, o.sharded);
  if (o.sharded) {
    cli::check_output("--output", o.output, kinds, true);  // the name and the folder; a shard resumes
  } else {
    cli::check_output("--output", o.output, kinds, o.force);
    if (o.keep_rows) cli::check_output("--output", o.sidecar, {".txt"}, o.force);
    cli::check_output("--output", o.paths.manifest, {".json"}, o.force);
  }
  for (const auto& pv : o.pixel_values) {
    const std::string kind = cli::file_kind(pv);
    if (cli::is_image_kind(kind))
      throw Error("--pixel-values " + pv + ": " + kind +
                  ", not a pixel-values file (F32 [3,H,W] tensors in .safetensors); give images as arguments "
                  "(without --pixel-values)");
    if (!kind.empty() && kind != "a safetensors file")
      throw Error("--pixel-values " + pv + ": " + kind +
                  ", not a pixel-values safetensors file (F32 [3,H,W] tensors, as --save-pixel-values writes)");
  }
  if (args.has("--preprocessor")) o.preprocessor = cli::preprocessor_from_file(args.get("--preprocessor"));
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

// The file an input path names, for finding inputs given twice: absolute, "." and ".." resolved,
// symbolic links followed where the path exists.
std::string normalised(const std::string& path) {
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  return ec ? fs::absolute(path, ec).lexically_normal().string() : p.string();
}

// Pixel-value tensors, then images (arguments, then list files). Checked before any work: no input
// twice (the same file under any spelling; dropped with --dedupe), case names unique when they name
// tensors of the output, and names that fit the line-based .files.txt when one is written.
Inputs collect_inputs(const Options& o, const Config& config) {
  Inputs in;
  std::map<std::string, std::string> owner, first_as;
  std::vector<std::string> twice, clashes;
  const bool names_matter = !o.keep_rows;
  auto add = [&](const std::string& name, const std::string& source, const std::string& key, const TensorView* px) {
    if (auto [it, fresh] = first_as.emplace(key, source); !fresh) {
      twice.push_back(source + (source == it->second ? "" : " (= " + it->second + ")"));
      if (o.dedupe) return;
    } else if (auto [it2, fresh2] = owner.emplace(name, source); !fresh2 && names_matter) {
      clashes.push_back("'" + it2->second + "' and '" + source + "' both have the case name '" + name + "'");
    }
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
      add(name, pv + ":" + key, normalised(pv) + ":" + key, &t);
    }
  }
  for (const auto& path : cli::collect_images(o.images, o.lists))
    add(fs::path(path).stem().string(), path, normalised(path), nullptr);
  if (!twice.empty() && o.dedupe) {
    std::fprintf(stderr, "note: --dedupe: dropped %s named twice: %s\n", cli::count(twice.size(), "input").c_str(),
                 cli::join_first(twice, 5).c_str());
  } else if (!twice.empty()) {
    throw Error(cli::count(twice.size(), "input is", "inputs are") + " named twice: " + cli::join_first(twice, 5) +
                "; each would be computed twice. Remove the repeats, or give --dedupe to keep the first of each "
                "(nothing was run)");
  }
  if (!clashes.empty())
    throw Error("inputs with the same case name (the key prefix in the output): " + cli::join_first(clashes, 5) +
                "; use --pool cls|mean or .npy output (rows named by the .files.txt list), or rename them "
                "(nothing was run)");
  // A name with a line break cannot be one line of .files.txt.
  std::vector<std::string> multi_line;
  for (const auto& i : in.list)
    if (i.source.find_first_of("\r\n") != std::string::npos) multi_line.push_back(i.source);
  if (!multi_line.empty() && (o.keep_rows || o.sharded)) {
    std::string shown;
    for (const auto& m : multi_line) {
      std::string e;
      for (const char c : m) e += c == '\n' ? std::string("\\n") : c == '\r' ? std::string("\\r") : std::string(1, c);
      shown += (shown.empty() ? "" : ", ") + e;
    }
    throw Error(cli::count(multi_line.size(), "input name contains", "input names contain") +
                " a line break, which the line-based " + o.paths.files + " cannot hold: " + shown +
                "; rename the file (nothing was run)");
  }
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

// What a run produced: per-case tensors (--pool none to .safetensors), or rows of one array. The
// values are not held in memory: they lie in files (the run's spool, saved parts), as pieces.
struct Results {
  std::vector<cli::SpooledTensor> tensors;
  std::vector<cli::Piece> row_pieces;  // rows of row_size floats, in order
  std::int64_t row_size = -1;
  std::vector<std::string> rows, failed;  // sources of the rows written, and of failed inputs
  std::size_t consumed = 0;               // inputs taken (rows + failed)

  void append(Results&& o) {
    if (row_size >= 0 && o.row_size >= 0 && row_size != o.row_size)
      throw Error("features of different sizes in one array (" + std::to_string(row_size) + " vs " +
                  std::to_string(o.row_size) + " values per image)");
    if (o.row_size >= 0) row_size = o.row_size;
    row_pieces.insert(row_pieces.end(), o.row_pieces.begin(), o.row_pieces.end());
    for (auto& t : o.tensors) tensors.push_back(std::move(t));
    rows.insert(rows.end(), o.rows.begin(), o.rows.end());
    failed.insert(failed.end(), o.failed.begin(), o.failed.end());
    consumed += o.consumed;
  }
};

// The manifest of this run before any file is written: what makes the features (model, kernels,
// options, preprocessor, the job's input list) and this file's slice of the inputs.
nlohmann::ordered_json run_manifest(const Options& o, const Model& model, const Preprocessor& pre,
                                    const std::vector<Input>& inputs, std::size_t first, std::size_t end) {
  std::vector<std::string> all;
  all.reserve(inputs.size());
  for (const auto& i : inputs) all.push_back(i.source);
  const std::vector<std::string> slice(all.begin() + static_cast<std::ptrdiff_t>(first),
                                       all.begin() + static_cast<std::ptrdiff_t>(end));
  nlohmann::ordered_json m;
  m["vitmsn_manifest"] = cli::kManifestVersion;
  m["written_by"] = std::string("vitmsn-extract ") + kVersionString;
  m["model"] = cli::model_manifest(model);
  m["kernels"] = kernel_isa();
  m["options"] = {{"pool", o.pool_name},
                  {"format", o.npy ? "npy" : "safetensors"},
                  {"hidden_states", o.hidden_states},
                  {"cls_attention", o.cls_attention},
                  {"save_pixel_values", o.save_pixel_values},
                  {"preprocessor", nlohmann::ordered_json::parse(to_json(pre.config()))}};
  m["job"] = {{"inputs", all.size()}, {"inputs_sha256", cli::list_sha256(all)}};
  m["shard"] =
      o.sharded
          ? nlohmann::ordered_json{{"index", o.paths.index}, {"count", o.paths.count}, {"first", first}, {"end", end}}
          : nlohmann::ordered_json(nullptr);
  m["inputs"] = cli::paths_to_json(slice);
  return m;
}

// A part of the work saved so that a later run resumes it: the results of inputs [first, end) of the
// job, with the run's settings (a part is reused only by a run with the same settings and inputs).
// Returns `r` relocated into the part (its values copied there from where they were).
Results write_part(const std::string& path, const Results& r, nlohmann::ordered_json manifest, std::size_t first,
                   std::size_t end, const std::vector<Input>& inputs) {
  std::vector<cli::SpooledTensor> t = r.tensors;
  const std::int64_t n = static_cast<std::int64_t>(r.rows.size());
  if (r.row_size >= 0) t.push_back({"__rows__", {n, r.row_size}, r.row_pieces});
  std::vector<std::string> in;
  for (std::size_t i = first; i < end; ++i) in.push_back(inputs[i].source);
  manifest["inputs"] = cli::paths_to_json(in);
  manifest["part"] = {{"first", first}, {"end", end}, {"row_size", r.row_size}};
  manifest["rows"] = cli::paths_to_json(r.rows);
  manifest["failed"] = cli::paths_to_json(r.failed);
  Results moved = r;
  moved.tensors.clear();
  moved.row_pieces.clear();
  for (auto& x : cli::write_spooled_safetensors(path, t, {{"vitmsn_part", manifest.dump()}})) {
    if (x.name == "__rows__")
      moved.row_pieces = std::move(x.pieces);
    else
      moved.tensors.push_back(std::move(x));
  }
  return moved;
}

// A saved part: its manifest (settings compared by the caller) and its results.
struct Part {
  nlohmann::ordered_json manifest;
  std::size_t first = 0, end = 0;
  Results results;
};

Part read_part(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  const auto& meta = f.metadata();
  const auto it = meta.find("vitmsn_part");
  if (it == meta.end())
    throw Error(path + ": saved by an older vitmsn-extract, without a manifest; run with --force to start over");
  Part p;
  p.manifest = nlohmann::ordered_json::parse(it->second, nullptr, false);
  const auto& m = p.manifest;
  if (p.manifest.is_discarded() || !m.is_object() || !m.contains("part") || !m["part"].is_object())
    throw Error(path + ": damaged manifest in a saved part");
  try {
    p.first = m["part"].at("first").get<std::size_t>();
    p.end = m["part"].at("end").get<std::size_t>();
    p.results.row_size = m["part"].at("row_size").get<std::int64_t>();
    p.results.rows = cli::paths_from_json(m.at("rows"), path + ": rows");
    p.results.failed = cli::paths_from_json(m.at("failed"), path + ": failed");
  } catch (const nlohmann::ordered_json::exception& e) {
    throw Error(path + ": damaged manifest in a saved part (" + e.what() + ")");
  }
  p.results.consumed = p.end - p.first;
  if (p.end < p.first || p.results.rows.size() + p.results.failed.size() != p.results.consumed)
    throw Error(path + ": damaged manifest in a saved part (rows and failed do not add up to its inputs)");
  std::uint64_t row_bytes = 0;
  for (auto& t : cli::spooled_tensors_of(path)) {
    if (t.name == "__rows__") {
      row_bytes = t.bytes();
      p.results.row_pieces = std::move(t.pieces);
      continue;
    }
    p.results.tensors.push_back(std::move(t));
  }
  if (p.results.row_size >= 0 &&
      row_bytes != p.results.rows.size() * static_cast<std::uint64_t>(p.results.row_size) * sizeof(float))
    throw Error(path + ": rows and data disagree");
  return p;
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

  // Runs inputs[begin, end) in batches, each image's features written to `spool` as soon as they are
  // computed (one batch of them held in memory); failures are reported and listed, never fatal.
  Results run_range(std::size_t begin, std::size_t end, cli::Progress& progress, cli::Spool& spool) const {
    Results res;
    for (std::size_t start = begin; start < end && !cli::interrupted(); start += o_.batch) {
      const std::size_t stop = std::min(end, start + static_cast<std::size_t>(o_.batch));
      res.consumed += stop - start;  // each of them ends as a row or as a failure below
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
      const Held held(feats);
      for (std::size_t k = 0; k < ok.size(); ++k) {
        if (keep(*ok[k], feats[k], px[k], res, progress, spool)) res.rows.push_back(ok[k]->source);
        progress.step(ok[k]->source);
      }
    }
    return res;
  }

  // Writes the unit: the features to `paths.output`, the list of rows to `paths.files` (when the
  // output has rows, or is a shard) and the manifest (cli::write_unit). Without `replace`, a final
  // name that exists is never replaced.
  void write_output(const RunPaths& paths, bool with_list, const nlohmann::ordered_json& manifest, const Results& res,
                    bool replace) const {
    const std::int64_t n = static_cast<std::int64_t>(res.rows.size());
    const std::int64_t hidden = model_.config().hidden_size;
    const auto write_features = [&](const std::string& path) {
      const std::map<std::string, std::string> meta = {
          {"producer", "vitmsn-extract"}, {"model", model_.source()}, {"pool", o_.pool_name}};
      if (!o_.keep_rows) {
        cli::write_spooled_safetensors(path, res.tensors, meta);
        return;
      }
      const std::int64_t tokens = res.row_size > 0 && o_.pool == Pool::kNone ? res.row_size / hidden : 0;
      const std::vector<std::int64_t> shape =
          o_.pool != Pool::kNone ? std::vector<std::int64_t>{n, hidden} : std::vector<std::int64_t>{n, tokens, hidden};
      if (o_.npy) return cli::write_spooled_npy(path, shape, res.row_pieces);
      cli::write_spooled_safetensors(path, {{"features", shape, res.row_pieces}}, meta);
    };
    cli::write_unit(paths.output, with_list ? paths.files : "", paths.manifest, manifest, res.rows, res.failed,
                    write_features, replace);
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
    return 3;  // written, with failures
  }

 private:
  static PixelValues to_pixel_values(const TensorView& t) {
    PixelValues p(t.shape[0], t.shape[1], t.shape[2]);
    const std::vector<float> v = t.to_float();
    std::copy(v.begin(), v.end(), p.data());
    return p;
  }

  // The features of a batch, counted as held in memory while they live (cli::hold_bytes).
  struct Held {
    std::int64_t bytes = 0;
    explicit Held(const std::vector<Features>& feats) {
      for (const Features& f : feats) {
        bytes += f.last_hidden_state.size();
        for (const auto& [i, hs] : f.hidden_states) bytes += hs.size();
        for (const auto& [l, a] : f.cls_attention) bytes += a.size();
      }
      bytes *= static_cast<std::int64_t>(sizeof(float));
      cli::hold_bytes(bytes);
    }
    ~Held() { cli::hold_bytes(-bytes); }
    Held(const Held&) = delete;
    Held& operator=(const Held&) = delete;
  };

  // One float32 tensor of an input, written to the spool at once.
  static cli::SpooledTensor spooled(cli::Spool& spool, std::string name, std::vector<std::int64_t> shape,
                                    const float* values) {
    std::size_t n = 1;
    for (const auto d : shape) n *= static_cast<std::size_t>(d);
    return {std::move(name), std::move(shape), {spool.append(values, n * sizeof(float))}};
  }

  // Writes one input's features to `spool` and names them in `res`; false (reported) when they cannot
  // join the array.
  bool keep(const Input& in, const Features& f, const PixelValues& px, Results& res, cli::Progress& progress,
            cli::Spool& spool) const {
    const auto N = f.last_hidden_state.rows(), D = f.last_hidden_state.cols();
    if (o_.pool != Pool::kNone) {
      const Vector v = o_.pool == Pool::kCls ? f.cls() : f.mean_patch();
      res.row_pieces.push_back(spool.append(v.data(), static_cast<std::size_t>(v.size()) * sizeof(float)));
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
      res.row_pieces.push_back(
          spool.append(f.last_hidden_state.data(), static_cast<std::size_t>(N * D) * sizeof(float)));
    } else {
      res.tensors.push_back(spooled(spool, in.name + ".last_hidden_state", {N, D}, f.last_hidden_state.data()));
      for (const auto& [i, hs] : f.hidden_states)
        res.tensors.push_back(spooled(spool, in.name + ".hidden_states." + std::to_string(i), {N, D}, hs.data()));
      for (const auto& [l, a] : f.cls_attention)
        res.tensors.push_back(
            spooled(spool, in.name + ".cls_attention." + std::to_string(l), {a.rows(), a.cols()}, a.data()));
      if (model_.has_classifier()) {
        const Vector logits = model_.logits(f);
        res.tensors.push_back(spooled(spool, in.name + ".logits", {logits.size()}, logits.data()));
      }
      if (o_.save_pixel_values)
        res.tensors.push_back(
            spooled(spool, in.name + ".pixel_values", {px.dimension(0), px.dimension(1), px.dimension(2)}, px.data()));
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

// The run of inputs [first, last) — all of them, or this task's shard — into the unit at o.paths.
// Work saved by an earlier run of the same command (parts 0, 1, … each continuing where the one
// before ended) is reused; saved work of other settings is refused, a damaged part and those after it
// are redone. The rest is computed in chunks: each saved as a part (with --chunk, and for shards),
// or, without chunks, saved only when an interrupt stops the run. When all is done the unit is
// written and the parts removed.
int run(const Options& o, const Extractor& x, const std::vector<Input>& inputs, const nlohmann::ordered_json& manifest,
        std::size_t first, std::size_t last) {
  const RunPaths& rp = o.paths;
  const bool with_list = o.keep_rows || o.sharded;
  const std::string what = o.sharded ? "shard " + std::to_string(rp.index) + "/" + std::to_string(rp.count) : rp.output;
  if (o.sharded && !o.force && cli::file_exists(rp.manifest)) {
    const nlohmann::ordered_json done = cli::read_manifest(rp.manifest);
    const auto diffs = cli::settings_differences(done, manifest, "done", "this run");
    if (!diffs.empty())
      throw Error(rp.output + ": this shard was finished with other settings: " + cli::join(diffs, "; ") +
                  ". Use --force to redo it, or another --output to keep both (nothing was run)");
    cli::verify_unit(done, rp.manifest, rp.output, rp.files);
    std::fprintf(stderr, "%s already complete: %s (use --force to redo)\n", what.c_str(), rp.output.c_str());
    return 0;
  }
  if (o.sharded && !o.force && (cli::file_exists(rp.output) || cli::file_exists(rp.files)))
    throw Error((cli::file_exists(rp.output) ? rp.output : rp.files) + ": exists without its manifest " + rp.manifest +
                " (written by an older vitmsn, or its run stopped while writing it); use --force to redo the "
                "shard (nothing was run)");

  // Saved work.
  Results all;
  std::size_t next = first, parts = 0;
  if (o.force) {
    std::size_t removed = 0;
    for (std::size_t k = 0; cli::file_exists(rp.part(k)); ++k) removed += std::remove(rp.part(k).c_str()) == 0;
    if (removed)
      std::fprintf(stderr, "note: --force: discarded %s of saved work (%s.part-*)\n",
                   cli::count(removed, "part").c_str(), rp.base.c_str());
  }
  for (; cli::file_exists(rp.part(parts)); ++parts) {
    const std::string path = rp.part(parts);
    Part p;
    std::string problem;
    try {
      p = read_part(path);
    } catch (const Error& e) {
      problem = e.what();
    }
    if (problem.empty()) {
      const auto diffs = cli::settings_differences(p.manifest, manifest, "saved", "this run");
      if (!diffs.empty())
        throw Error(path + ": the saved work was made with other settings: " + cli::join(diffs, "; ") +
                    ". Use --force to start over, or another --output to keep both (nothing was run)");
      std::vector<std::string> expected;
      for (std::size_t i = next; i < std::min(last, p.end); ++i) expected.push_back(inputs[i].source);
      if (p.first != next || p.end > last || cli::paths_to_json(expected) != p.manifest["inputs"])
        problem = path + ": holds inputs " + std::to_string(p.first) + ".." + std::to_string(p.end) +
                  " of other names or places than this run's";
    }
    if (!problem.empty()) {
      std::fprintf(stderr, "note: redoing the work from part %zu on: %s\n", parts, problem.c_str());
      for (std::size_t k = parts; cli::file_exists(rp.part(k)); ++k) std::remove(rp.part(k).c_str());
      break;
    }
    all.append(std::move(p.results));
    next = p.end;
  }
  if (next > first)
    std::fprintf(stderr, "resuming %s: %zu of %s already done (saved in %s.part-*), %zu to go\n", what.c_str(),
                 next - first, cli::count(last - first, "input").c_str(), rp.base.c_str(), last - next);
  else if (o.sharded)
    std::fprintf(stderr, "%s: inputs %zu..%zu of %zu -> %s\n", what.c_str(), first, last, inputs.size(),
                 rp.output.c_str());

  // Test hook (tests/programs_test.cpp): die by SIGKILL right after saving part N, the one point at
  // which a killed task's resume is tested the same way on a fast and on a slow machine.
  const char* kill_hook = std::getenv("VITMSN_TEST_KILL_AFTER_CHUNK");
  const long long kill_after_part = kill_hook ? std::atoll(kill_hook) : -1;
  cli::Progress progress(last - next, "images");
  progress.start();
  // The features go to disk as they are computed: into a spool file per chunk (one for the whole run
  // without --chunk), then into the chunk's part (moved there: the spool is then dropped) or, at the
  // end, into the output, copied in bounded pieces (cli::write_spooled_*).
  std::optional<cli::Spool> spool;
  while (next < last && !cli::interrupted()) {
    const std::size_t stop = o.chunk > 0 ? std::min(last, next + static_cast<std::size_t>(o.chunk)) : last;
    spool.reset();
    spool.emplace(rp.base + ".features");
    Results r = x.run_range(next, stop, progress, *spool);
    const std::size_t end = next + r.consumed;
    if (r.consumed > 0 && (o.chunk > 0 || cli::interrupted())) {
      r = write_part(rp.part(parts), r, manifest, next, end, inputs);
      if (static_cast<long long>(parts) == kill_after_part) std::raise(SIGKILL);
      ++parts;
    }
    all.append(std::move(r));
    next = end;
  }
  progress.break_line();
  if (next < last) {
    std::fprintf(stderr,
                 "interrupted: %zu of %s done for %s%s; run the same command again to continue (--force starts "
                 "over)\n",
                 next - first, cli::count(last - first, "input").c_str(), what.c_str(),
                 parts ? (", saved in " + rp.base + ".part-*").c_str() : "");
    return 130;
  }
  try {
    x.write_output(rp, with_list, manifest, all, o.force);
  } catch (const Error& e) {
    std::string saved;
    if (o.chunk == 0 && parts == 0 && last > first) {  // keep what was computed: write it as a part
      write_part(rp.part(0), all, manifest, first, last, inputs);
      saved = "; the features of this run are saved in " + rp.part(0) +
              ": move the file away and run the same command again to write them, or use --force to recompute "
              "and replace it";
    } else if (parts) {
      saved = "; the features of this run are saved in " + rp.base +
              ".part-*: move the file away and run the same command again to write them, or use --force to "
              "recompute and replace it";
    }
    throw Error(e.what() + saved);
  }
  for (std::size_t k = 0; k < parts; ++k) std::remove(rp.part(k).c_str());
  const int status = x.finish(all, last - first, with_list ? rp.output + " + " + rp.files : rp.output, progress);
  // Test hook (tests/programs_test.cpp): how many bytes of features the run held in memory at most.
  if (const char* h = std::getenv("VITMSN_TEST_REPORT_HELD_BYTES"); h && *h == '1')
    std::fprintf(stderr, "test hook: at most %llu bytes of features held in memory\n",
                 static_cast<unsigned long long>(cli::peak_held_bytes()));
  return status;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    const Options o = parse_options(args);
    // One writer per output, from before the model is loaded until the program exits.
    std::string stale;
    const cli::OutputLock lock(o.paths.lock, o.paths.output, &stale);
    if (!stale.empty()) std::fprintf(stderr, "%s\n", stale.c_str());
    cli::test_pause_after_lock();
    LoadOptions lo;
    lo.threads = o.threads;
    lo.compute = o.compute;
    const Model model = Model::load(o.model_path, lo);
    Preprocessor pre = o.preprocessor ? *o.preprocessor : model.preprocessor();
    if (args.has("--size")) {
      const auto [h, w] = cli::input_size(args, "--size", model.config());
      pre = pre.with_size(h, w);
    } else if (o.preprocessor) {
      cli::check_preprocessor_size(pre, args.get("--preprocessor"), model.config());
    }
    const Inputs inputs = collect_inputs(o, model.config());
    cli::install_interrupt_handler();
    const Extractor x(o, model, pre, inputs);
    const std::size_t n = inputs.list.size();
    const std::size_t first = n * o.paths.index / o.paths.count, last = n * (o.paths.index + 1) / o.paths.count;
    return run(o, x, inputs.list, run_manifest(o, model, pre, inputs.list, first, last), first, last);
  });
}
