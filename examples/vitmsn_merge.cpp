// vitmsn-merge: joins the shard outputs of `vitmsn-extract --shard I/N` into one file, in input order,
// after checking that every shard is there exactly once, whole (its files match its manifest), made
// with the same settings, and that together they hold the job's input list. main() reads the options,
// takes the output's lock, finds the shards (find_shards), checks them (problems), then merges.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "run_output.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const cli::Spec kSpec = {"vitmsn-merge",
                         R"(usage: vitmsn-merge --output OUT [--inputs LIST] [--force] SHARD_OUTPUT...

Joins OUT-0000I-of-0000N.safetensors (or .npy) files written by vitmsn-extract --shard into OUT, in
shard order (= input order), with OUT's .files.txt list and OUT's manifest (.manifest.json). Checks
that all N shards are given exactly once and complete (their manifest present, their files matching
its SHA-256), that all were made with the same model, dtype, kernels and options, that together they
cover the job's input list in order, that no image is in two shards, and with --inputs LIST that
every listed image is in some shard. Problems are listed and nothing is written. OUT is locked while
it is written (OUT-without-extension.lock): a second merge into it is refused.
options:
  --output OUT     merged .safetensors or .npy (same kind as the shards)
  --inputs LIST    the full input list (one path per line, or a .manifest.json whose inputs are
                   read), to report images missing from every shard
  --force          overwrite OUT
  -h, --help       this text
  --version        the version, kernel instruction set and JPEG decoder
)",
                         {"--output", "--inputs"},
                         {"--force"}};

struct Shard {
  std::string path, base, ext;
  int index = 0, count = 0;
  nlohmann::ordered_json manifest;
  std::vector<std::string> files, inputs, failed;  // its rows, its slice of the job's inputs, failures
};

/// Reads `p` as NAME-0000I-of-0000N.safetensors|.npy (five digits each, as vitmsn-extract writes them).
bool parse_shard_name(const std::string& p, Shard* s) {
  const std::string ext = cli::ends_with(p, ".safetensors") ? "safetensors" : cli::ends_with(p, ".npy") ? "npy" : "";
  if (ext.empty()) return false;
  const std::string stem = p.substr(0, p.size() - ext.size() - 1);
  // The stem ends in "-IIIII-of-NNNNN" (15 characters) after a NAME that may itself contain anything.
  constexpr std::size_t kTail = 15;
  if (stem.size() < kTail) return false;
  const std::string tail = stem.substr(stem.size() - kTail);
  const auto digits = [&](std::size_t at) {
    return std::all_of(tail.begin() + at, tail.begin() + at + 5, [](char c) { return c >= '0' && c <= '9'; });
  };
  if (tail[0] != '-' || !digits(1) || tail.compare(6, 4, "-of-") != 0 || !digits(10)) return false;
  s->path = p;
  s->base = stem;
  s->ext = ext;
  s->index = std::stoi(tail.substr(1, 5));
  s->count = std::stoi(tail.substr(10, 5));
  return true;
}

// The shards named on the command line, sorted by index; all of one count and one kind.
std::vector<Shard> find_shards(const std::vector<std::string>& paths) {
  std::vector<Shard> shards;
  for (const auto& p : paths) {
    Shard s;
    if (!parse_shard_name(p, &s)) throw Error(p + ": not a shard output (NAME-0000I-of-0000N.safetensors|.npy)");
    shards.push_back(std::move(s));
  }
  for (const auto& s : shards) {
    if (s.count != shards[0].count)
      throw Error(s.path + ": is one of " + std::to_string(s.count) + " shards, " + shards[0].path + " one of " +
                  std::to_string(shards[0].count));
    if (s.ext != shards[0].ext) throw Error(s.path + ": mixes ." + s.ext + " and ." + shards[0].ext + " shards");
  }
  std::sort(shards.begin(), shards.end(), [](const Shard& a, const Shard& b) { return a.index < b.index; });
  return shards;
}

// The inputs LIST names: lines of a list file, or the "inputs" of a manifest (.json).
std::vector<std::string> expected_inputs(const std::string& list) {
  if (!cli::ends_with(cli::lower(list), ".json")) return cli::read_list(list, "--inputs");
  const auto m = cli::read_manifest(list);
  if (!m.contains("inputs")) throw Error(list + ": the manifest lists no inputs");
  return cli::paths_from_json(m["inputs"], list + ": inputs");
}

// Reads shard `s`'s manifest and checks that its files are the ones it describes; "" or the problem.
std::string read_shard(Shard& s) {
  if (!cli::file_exists(s.path)) return s.path + ": no such file";
  const std::string mf = s.base + ".manifest.json";
  if (!cli::file_exists(mf))
    return s.path + (cli::file_exists(s.base + ".done")
                         ? ": written by an older vitmsn, without a manifest: redo the shard with vitmsn-extract "
                           "--force"
                         : ": shard is not complete (no " + mf + ")");
  try {
    s.manifest = cli::read_manifest(mf);
    cli::verify_unit(s.manifest, mf, s.path, s.base + ".files.txt");
    const auto& sh = s.manifest["shard"];
    if (!sh.is_object() || sh.value("index", -1) != s.index || sh.value("count", -1) != s.count)
      return mf + ": is not the manifest of shard " + std::to_string(s.index) + " of " + std::to_string(s.count);
    s.files = cli::paths_from_json(s.manifest.at("rows"), mf + ": rows");
    s.inputs = cli::paths_from_json(s.manifest.at("inputs"), mf + ": inputs");
    s.failed = cli::paths_from_json(s.manifest.at("failed"), mf + ": failed");
  } catch (const Error& e) {
    return e.what();
  } catch (const nlohmann::ordered_json::exception& e) {
    return mf + ": damaged manifest (" + e.what() + ")";
  }
  return "";
}

// Every reason not to merge: shards missing, given twice, absent, unfinished or torn, made with other
// settings than the first, not covering the job's inputs, images in two shards or (with `inputs`) in
// none.
std::vector<std::string> problems(std::vector<Shard>& shards, const std::string& inputs) {
  std::vector<std::string> out;
  const int count = shards[0].count;
  std::vector<int> seen(count, 0);
  for (const auto& s : shards) ++seen[s.index];
  bool all_there = true;
  for (int i = 0; i < count; ++i) {
    if (seen[i] == 0) out.push_back("missing shard " + std::to_string(i) + " of " + std::to_string(count));
    if (seen[i] > 1) out.push_back("shard " + std::to_string(i) + " given " + std::to_string(seen[i]) + " times");
    all_there = all_there && seen[i] == 1;
  }
  const Shard* reference = nullptr;
  for (auto& s : shards) {
    if (std::string p = read_shard(s); !p.empty()) {
      out.push_back(p);
      all_there = false;
      continue;
    }
    if (!reference) {
      reference = &s;
      continue;
    }
    const auto diffs =
        cli::settings_differences(reference->manifest, s.manifest, "shard " + std::to_string(reference->index),
                                  "shard " + std::to_string(s.index));
    if (!diffs.empty()) {
      out.push_back(s.path + ": made with other settings than " + reference->path + ": " + cli::join(diffs, "; ") +
                    "; redo it with the same command as the other shards (--force)");
      all_there = false;
    }
  }
  // Together, in shard order, the shards' slices are the job's input list.
  if (all_there && reference) {
    std::vector<std::string> job;
    for (const auto& s : shards) job.insert(job.end(), s.inputs.begin(), s.inputs.end());
    const auto& j = reference->manifest["job"];
    if (j.value("inputs", std::size_t{0}) != job.size() ||
        j.value("inputs_sha256", std::string()) != cli::list_sha256(job))
      out.push_back("the shards' inputs do not make up their job's input list (" +
                    std::to_string(j.value("inputs", std::size_t{0})) + " inputs; the shards hold " +
                    std::to_string(job.size()) + "): were they run over different inputs?");
  }
  // Paths compared as files, not as written: absolute, "." and ".." resolved (relative ones from the
  // current folder), so that ./a.png, a.png and /job/a.png are one image.
  auto normal = [](const std::string& p) {
    std::error_code ec;
    const std::filesystem::path a = std::filesystem::absolute(p, ec);
    return ec ? p : a.lexically_normal().string();
  };
  std::map<std::string, int> owner;
  for (const auto& s : shards) {
    for (const auto& f : s.files) {
      auto [it, fresh] = owner.emplace(normal(f), s.index);
      if (!fresh)
        out.push_back("image " + f + " is in shards " + std::to_string(it->second) + " and " + std::to_string(s.index));
    }
  }
  if (!inputs.empty()) {
    std::size_t missing = 0;
    for (const auto& f : expected_inputs(inputs))
      if (!owner.count(normal(f)) && ++missing <= 20)
        out.push_back("image " + f + " is in no shard (failed or never processed)");
    if (missing > 20) out.push_back(cli::count(missing - 20, "more image is", "more images are") + " in no shard");
  }
  return out;
}

void merge_npy(const std::vector<Shard>& shards, const std::string& output) {
  std::vector<float> all;
  std::vector<std::int64_t> shape;
  for (const auto& s : shards) {
    std::vector<std::int64_t> sh;
    const std::vector<float> part = read_npy(s.path, &sh);
    if (sh.empty() || static_cast<std::size_t>(sh[0]) != s.files.size())
      throw Error(s.path + ": has " + (sh.empty() ? std::string("no") : std::to_string(sh[0])) + " rows, its list " +
                  std::to_string(s.files.size()));
    if (shape.empty()) {
      shape = sh;
      shape[0] = 0;
    } else if (!std::equal(sh.begin() + 1, sh.end(), shape.begin() + 1, shape.end())) {
      throw Error(s.path + ": rows of another size than the earlier shards'");
    }
    shape[0] += sh[0];
    all.insert(all.end(), part.begin(), part.end());
  }
  write_npy(output, shape, all.data());
}

void merge_safetensors(const std::vector<Shard>& shards, const std::string& output) {
  std::vector<TensorData> out;
  std::vector<float> rows;
  std::vector<std::int64_t> row_shape;
  std::set<std::string> names;
  std::map<std::string, std::string> meta;
  for (const auto& s : shards) {
    const SafetensorsFile f = SafetensorsFile::open(s.path);
    if (meta.empty()) meta = f.metadata();
    for (const auto& name : f.names()) {
      const TensorView& v = f.get(name);
      if (name == "features") {
        if (v.shape.empty() || static_cast<std::size_t>(v.shape[0]) != s.files.size())
          throw Error(s.path + ": 'features' has " + v.shape_string() + " rows, its list " +
                      std::to_string(s.files.size()));
        if (row_shape.empty()) {
          row_shape = v.shape;
          row_shape[0] = 0;
        }
        row_shape[0] += v.shape[0];
        const auto data = v.to_float();
        rows.insert(rows.end(), data.begin(), data.end());
        continue;
      }
      if (!names.insert(name).second) throw Error(s.path + ": tensor '" + name + "' is also in an earlier shard");
      out.push_back(v.to_tensor_data());
    }
  }
  if (!row_shape.empty()) out.push_back(TensorData::f32("features", row_shape, rows.data()));
  meta["merged_shards"] = std::to_string(shards[0].count);
  write_safetensors(output, out, meta);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    const std::string output = args.required("--output", "--output OUT");
    if (args.positional().empty()) throw cli::UsageError("give the shard outputs to merge");
    std::vector<Shard> shards = find_shards(args.positional());
    const std::string ext = shards[0].ext;
    // Before check_output, whose message would not say that the kind comes from the shards.
    if (!cli::ends_with(cli::lower(output), "." + ext))
      throw cli::UsageError("--output must be ." + ext + " like the shards");
    const bool force = args.has("--force");
    const std::string sidecar = cli::sidecar_path(output), manifest_file = cli::manifest_path(output);
    cli::check_output("--output", output, {"." + ext}, force);
    cli::check_output("--output", sidecar, {".txt"}, force);
    cli::check_output("--output", manifest_file, {".json"}, force);
    std::string stale;
    const cli::OutputLock lock(cli::lock_path(output), output, &stale);
    if (!stale.empty()) std::fprintf(stderr, "%s\n", stale.c_str());
    cli::test_pause_after_lock();

    const std::vector<std::string> found = problems(shards, args.get("--inputs"));
    if (!found.empty()) {
      for (const auto& p : found) std::fprintf(stderr, "error: %s\n", p.c_str());
      std::fprintf(stderr, "%s; nothing written\n", cli::count(found.size(), "problem").c_str());
      return 1;
    }
    std::vector<std::string> files, inputs, failed, merged_from;
    for (const auto& s : shards) {
      files.insert(files.end(), s.files.begin(), s.files.end());
      inputs.insert(inputs.end(), s.inputs.begin(), s.inputs.end());
      failed.insert(failed.end(), s.failed.begin(), s.failed.end());
      merged_from.push_back(s.path);
    }
    nlohmann::ordered_json manifest = shards[0].manifest;
    manifest["written_by"] = std::string("vitmsn-merge ") + kVersionString;
    manifest["shard"] = nullptr;
    manifest["merged_from"] = cli::paths_to_json(merged_from);
    manifest["inputs"] = cli::paths_to_json(inputs);
    cli::write_unit(
        output, sidecar, manifest_file, manifest, files, failed,
        [&](const std::string& path) {
          if (ext == "npy")
            merge_npy(shards, path);
          else
            merge_safetensors(shards, path);
        },
        force);
    std::fprintf(stderr, "merged %s, %s -> %s + %s\n", cli::count(shards[0].count, "shard").c_str(),
                 cli::count(files.size(), "image").c_str(), output.c_str(), sidecar.c_str());
    return 0;
  });
}
