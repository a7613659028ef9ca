// vitmsn-merge: joins the shard outputs of `vitmsn-extract --shard I/N` into one file, in input order,
// after checking that every shard is there exactly once and no image appears twice. main() reads
// the options, finds the shards (find_shards), checks them (problems), then merges.
#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const cli::Spec kSpec = {"vitmsn-merge",
                         R"(usage: vitmsn-merge --output OUT [--inputs LIST] [--force] SHARD_OUTPUT...

Joins OUT-0000I-of-0000N.safetensors (or .npy) files written by vitmsn-extract --shard into OUT, in
shard order (= input order), with OUT's .files.txt list. Checks that all N shards are given exactly
once and complete (.done present), that no image is in two shards, and with --inputs LIST (one path
per line) that every listed image is in some shard. Problems are listed and nothing is written.
options:
  --output OUT     merged .safetensors or .npy (same kind as the shards)
  --inputs LIST    the full input list, to report images missing from every shard
  --force          overwrite OUT
  -h, --help       this text
  --version        the version, kernel instruction set and JPEG decoder
)",
                         {"--output", "--inputs"},
                         {"--force"}};

struct Shard {
  std::string path, base, ext;
  int index = 0, count = 0;
  std::vector<std::string> files;
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

// Every reason not to merge: shards missing, given twice, absent or unfinished, images in two
// shards or (with `inputs`) in none. Reads each complete shard's file list.
std::vector<std::string> problems(std::vector<Shard>& shards, const std::string& inputs) {
  std::vector<std::string> out;
  const int count = shards[0].count;
  std::vector<int> seen(count, 0);
  for (const auto& s : shards) ++seen[s.index];
  for (int i = 0; i < count; ++i) {
    if (seen[i] == 0) out.push_back("missing shard " + std::to_string(i) + " of " + std::to_string(count));
    if (seen[i] > 1) out.push_back("shard " + std::to_string(i) + " given " + std::to_string(seen[i]) + " times");
  }
  std::map<std::string, int> owner;
  for (auto& s : shards) {
    if (!cli::file_exists(s.path)) {
      out.push_back(s.path + ": no such file");
      continue;
    }
    if (!cli::file_exists(s.base + ".done")) {
      out.push_back(s.path + ": shard is not complete (no " + s.base + ".done)");
      continue;
    }
    s.files = cli::read_list(s.base + ".files.txt");
    for (const auto& f : s.files) {
      auto [it, fresh] = owner.emplace(f, s.index);
      if (!fresh)
        out.push_back("image " + f + " is in shards " + std::to_string(it->second) + " and " + std::to_string(s.index));
    }
  }
  if (!inputs.empty()) {
    std::size_t missing = 0;
    for (const auto& f : cli::read_list(inputs))
      if (!owner.count(f) && ++missing <= 20)
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
    const std::string sidecar = cli::sidecar_path(output);
    cli::check_output("--output", output, {"." + ext}, args.has("--force"));
    cli::check_output("--output", sidecar, {".txt"}, args.has("--force"));

    const std::vector<std::string> found = problems(shards, args.get("--inputs"));
    if (!found.empty()) {
      for (const auto& p : found) std::fprintf(stderr, "error: %s\n", p.c_str());
      std::fprintf(stderr, "%s; nothing written\n", cli::count(found.size(), "problem").c_str());
      return 1;
    }
    std::vector<std::string> files;
    for (const auto& s : shards) files.insert(files.end(), s.files.begin(), s.files.end());
    if (ext == "npy")
      merge_npy(shards, output);
    else
      merge_safetensors(shards, output);
    std::string list;
    for (const auto& f : files) list += f + "\n";
    write_text_file(sidecar, list);
    std::fprintf(stderr, "merged %s, %s -> %s + %s\n", cli::count(shards[0].count, "shard").c_str(),
                 cli::count(files.size(), "image").c_str(), output.c_str(), sidecar.c_str());
    return 0;
  });
}
