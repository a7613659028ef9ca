// vitmsn-probe: a linear probe (multinomial logistic regression on CLS features) trained on an
// ImageFolder — MSN's label-efficient evaluation — saved as a classifier head for vitmsn-convert.
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/probe.hpp"
#include "vitmsn/vitmsn.hpp"

namespace fs = std::filesystem;
using namespace vitmsn;

namespace {

const char* kUsage = R"(usage: vitmsn-probe [--model PATH] --data DIR --output HEAD.safetensors [options]

Trains a linear probe — multinomial logistic regression on the model's CLS embedding — on the images
of DIR, laid out as an ImageFolder: one sub-folder per class (class ids = sorted folder names),
images inside, searched recursively (.png .jpg .jpeg .bmp .gif .tga .ppm .pgm .pnm). Features are
standardised, the L2 strength is chosen by stratified cross-validation over 1e-4..1e2 (13 values),
and the head is folded back to the raw CLS features. Reports cross-validated (or held-out) accuracy
per class, then trains on all images and writes HEAD.safetensors (classifier.weight [K, D],
classifier.bias [K], __metadata__ id2label), ready for vitmsn-convert --add-classifier.
options:
  --model PATH         model folder or .safetensors (default: $VITMSN_MODEL, else
                       weights/vit-msn-large-7.safetensors)
  --data DIR           the ImageFolder
  --output HEAD        the head file to write (atomically)
  --cache DIR          where each image's CLS feature is kept, keyed by a SHA-256 of the image
                       file and of the model, so later runs skip extraction
                       (default: DIR/.vitmsn-cache)
  --folds K            evaluate by stratified K-fold cross-validation (default 5; reduced to the
                       size of the smallest class); l2 is chosen inside each fold
  --test-fraction F    evaluate on a stratified held-out fraction F of each class instead
  --l2 V               use this L2 strength instead of choosing it (loss = mean cross-entropy
                       + V/2 * |W|^2 over standardised features)
  --seed S             seed of the fold and split shuffles (default 0)
  --threads N          threads of the model (default: all CPUs this process may use)
  --force              overwrite HEAD if it exists
  -h, --help           this text
Images that cannot be read are reported and skipped; the exit status is non-zero only when
nothing could be trained.
)";

// The cache folder of a model: what decides its CLS features — config (without the labels),
// preprocessor settings, and the weights file's size, first and last MiB — hashed, so a copied or
// moved model keeps its cache and a different one never reads it.
std::string model_identity(const Model& model) {
  Config config = model.config();
  config.id2label.clear();
  Sha256 id;
  id.update("vitmsn-probe feature cache v1\npool=cls\nconfig=" + to_json(config) +
            "\npreprocessor=" + to_json(model.preprocessor().config()) + "\n");
  std::ifstream in(model.source(), std::ios::binary);
  if (!in) throw Error(model.source() + ": cannot open: " + std::strerror(errno));
  in.seekg(0, std::ios::end);
  const std::uint64_t size = static_cast<std::uint64_t>(in.tellg());
  id.update("weights_size=" + std::to_string(size) + "\n");
  const std::uint64_t chunk = 1 << 20;
  std::string buf;
  for (const std::uint64_t at : {std::uint64_t{0}, size > chunk ? size - chunk : 0}) {
    buf.assign(std::min(chunk, size), '\0');
    in.seekg(static_cast<std::streamoff>(at));
    in.read(&buf[0], static_cast<std::streamsize>(buf.size()));
    if (!in) throw Error(model.source() + ": read error");
    id.update(buf);
  }
  return id.hex().substr(0, 16);
}

// A cached CLS feature of `dim` values, or empty when absent or unusable (then re-extracted).
std::vector<float> read_cached(const std::string& path, int dim) {
  if (!cli::file_exists(path)) return {};
  try {
    const SafetensorsFile f = SafetensorsFile::open(path);
    const TensorView* t = f.find("cls");
    if (!t || t->dtype != DType::kF32 || t->shape != std::vector<std::int64_t>{dim}) return {};
    std::vector<float> v = t->to_float();
    for (float x : v)
      if (!std::isfinite(x)) return {};
    return v;
  } catch (const Error&) {
    return {};
  }
}

struct Sample {
  std::string path;
  int label = 0;
};

// ImageFolder: the non-hidden sub-folders of `dir`, sorted, are the classes.
std::vector<Sample> scan_image_folder(const std::string& dir, std::vector<std::string>& classes) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw Error(dir + ": not a folder (give an ImageFolder: one sub-folder per class)");
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.empty() || name[0] == '.') continue;
    std::error_code ec2;
    if (it->is_directory(ec2)) classes.push_back(name);
  }
  if (ec) throw Error(dir + ": cannot list folder: " + ec.message());
  std::sort(classes.begin(), classes.end());
  if (classes.size() < 2)
    throw Error(dir + ": found " + std::to_string(classes.size()) +
                " class folder(s); a probe needs at least 2 (one sub-folder of images per class)");
  std::vector<Sample> samples;
  for (std::size_t c = 0; c < classes.size(); ++c) {
    const std::string folder = (fs::path(dir) / classes[c]).string();
    std::vector<std::string> found;
    for (auto it = fs::recursive_directory_iterator(folder, fs::directory_options::skip_permission_denied, ec);
         !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
      if (it->is_regular_file(ec) && cli::is_image_file_name(it->path())) found.push_back(it->path().string());
    if (ec) throw Error(folder + ": cannot list folder: " + ec.message());
    if (found.empty())
      throw Error(folder + ": no images in this class folder (.png .jpg .jpeg .bmp .gif .tga .ppm .pgm .pnm)");
    std::sort(found.begin(), found.end());
    for (auto& f : found) samples.push_back({std::move(f), static_cast<int>(c)});
  }
  return samples;
}

double parse_double(const cli::Args& args, const std::string& name, double min_exclusive, double max_exclusive) {
  const std::string v = args.get(name);
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end || errno || !(x > min_exclusive && x < max_exclusive))
    throw cli::UsageError("option " + name + " needs a number in (" + std::to_string(min_exclusive) + ", " +
                          (std::isinf(max_exclusive) ? std::string("inf") : std::to_string(max_exclusive)) +
                          "), got '" + v + "'");
  return x;
}

std::uint64_t parse_seed(const cli::Args& args) {
  if (!args.has("--seed")) return 0;
  const std::string v = args.get("--seed");
  char* end = nullptr;
  errno = 0;
  const unsigned long long s = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || v[0] == '-' || *end || errno)
    throw cli::UsageError("option --seed needs a non-negative integer, got '" + v + "'");
  return s;
}

std::string percent(double fraction) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", 100 * fraction);
  return b;
}

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g", v);
  return b;
}

// Per-class and overall accuracy, then the confusion matrix (when it fits a terminal).
void print_evaluation(const Evaluation& e, const std::vector<std::string>& classes) {
  std::size_t w = std::string("overall").size();
  for (const auto& c : classes) w = std::max(w, c.size());
  const int width = static_cast<int>(w);
  std::printf("  %-*s  %6s  %8s\n", width, "class", "images", "accuracy");
  for (int k = 0; k < e.num_classes(); ++k) {
    if (e.count(k))
      std::printf("  %-*s  %6d  %8s\n", width, classes[k].c_str(), e.count(k), percent(e.class_accuracy(k)).c_str());
    else
      std::printf("  %-*s  %6d  %8s\n", width, classes[k].c_str(), 0, "-");
  }
  std::printf("  %-*s  %6d  %8s  (%d/%d right)\n", width, "overall", e.total(), percent(e.accuracy()).c_str(),
              e.correct(), e.total());
  if (e.num_classes() > 12) return;
  std::printf("  confusion (rows: true class, columns: predicted):\n");
  int cw = 5;
  for (const auto& c : classes) cw = std::max(cw, static_cast<int>(std::min<std::size_t>(c.size(), 16)));
  std::printf("    %-*s", width, "");
  for (const auto& c : classes) std::printf(" %*s", cw, c.substr(0, 16).c_str());
  std::printf("\n");
  for (int k = 0; k < e.num_classes(); ++k) {
    std::printf("    %-*s", width, classes[k].c_str());
    for (int j = 0; j < e.num_classes(); ++j) std::printf(" %*d", cw, e.confusion(k, j));
    std::printf("\n");
  }
}

std::string describe_l2(const Probe& p) {
  switch (p.l2_source) {
    case L2Source::kGiven:
      return number(p.l2) + " (given by --l2)";
    case L2Source::kFallback:
      return number(p.l2) + " (default: a class has a single image, too few to cross-validate)";
    case L2Source::kCrossValidation:
      break;
  }
  const auto best =
      std::find_if(p.l2_scores.begin(), p.l2_scores.end(), [&](const L2Score& s) { return s.l2 == p.l2; });
  std::string s = number(p.l2) + " (best of " + std::to_string(p.l2_scores.size()) + " values " +
                  number(p.l2_scores.front().l2) + ".." + number(p.l2_scores.back().l2) + " by " +
                  std::to_string(p.folds) + "-fold cross-validation";
  if (best != p.l2_scores.end()) s += ": accuracy " + percent(best->accuracy) + ", log-loss " + number(best->log_loss);
  return s + ")";
}

std::string smallest_class(const std::vector<int>& count, const std::vector<std::string>& classes) {
  const auto it = std::min_element(count.begin(), count.end());
  return "'" + classes[it - count.begin()] + "' (" + std::to_string(*it) + " image" + (*it == 1 ? "" : "s") + ")";
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kUsage, [&]() -> int {
    cli::Args args(
        argc, argv,
        {"--model", "--data", "--output", "--cache", "--folds", "--test-fraction", "--threads", "--seed", "--l2"},
        {"--force", "--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (!args.positional().empty()) throw cli::UsageError("unexpected argument '" + args.positional()[0] + "'");
    if (!args.has("--data")) throw cli::UsageError("--data DIR is required");
    if (!args.has("--output")) throw cli::UsageError("--output HEAD.safetensors is required");
    if (args.has("--folds") && args.has("--test-fraction"))
      throw cli::UsageError("give --folds or --test-fraction, not both");
    const std::string data = args.get("--data"), output = args.get("--output");
    const int folds = args.get_int("--folds", 5, 2, 1000);
    const bool holdout = args.has("--test-fraction");
    const double test_fraction = holdout ? parse_double(args, "--test-fraction", 0, 1) : 0;
    const int threads = args.get_int("--threads", 0, 1, 4096);
    ProbeOptions options;
    options.seed = parse_seed(args);
    if (args.has("--l2")) options.l2 = parse_double(args, "--l2", 0, HUGE_VAL);
    options.folds = folds;
    const std::string model_path = cli::model_path_or_throw(args);
    if (cli::file_exists(output) && !args.has("--force"))
      throw Error(output + ": already exists (use --force to overwrite)");
    {
      std::error_code ec;
      const fs::path parent = fs::path(output).parent_path();
      if (!parent.empty() && !fs::is_directory(parent, ec))
        throw Error(output + ": the folder " + parent.string() + " does not exist");
    }

    std::vector<std::string> classes;
    const std::vector<Sample> samples = scan_image_folder(data, classes);
    LoadOptions lo;
    lo.threads = threads;
    const Model model = Model::load(model_path, lo);
    const int dim = model.config().hidden_size;
    const std::string cache_root = args.get("--cache", (fs::path(data) / ".vitmsn-cache").string());
    const std::string cache = (fs::path(cache_root) / model_identity(model)).string();
    std::printf("vitmsn-probe: %zu images in %zu classes under %s; model %s (CLS, %d dimensions)\n", samples.size(),
                classes.size(), data.c_str(), model.source().c_str(), dim);
    std::fflush(stdout);

    // Features: from the cache when the image's bytes and the model match, else extracted and cached.
    cli::install_interrupt_handler();
    std::vector<std::vector<float>> rows;
    std::vector<int> labels;
    std::vector<std::string> failed;
    std::size_t extracted = 0, cached = 0;
    bool cache_warned = false;
    {
      std::error_code ec;
      fs::create_directories(cache, ec);
      if (ec) {
        std::fprintf(stderr, "warning: %s: cannot create the feature cache (%s); features will not be kept\n",
                     cache.c_str(), ec.message().c_str());
        cache_warned = true;
      }
    }
    cli::Progress progress(samples.size(), "images");
    for (const Sample& s : samples) {
      if (cli::interrupted()) break;
      try {
        const std::string bytes = cli::read_file(s.path);
        Sha256 h;
        h.update(bytes);
        const std::string entry = (fs::path(cache) / (h.hex() + ".safetensors")).string();
        std::vector<float> f = read_cached(entry, dim);
        if (!f.empty()) {
          ++cached;
        } else {
          const Image image = decode_image(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), s.path);
          const Vector cls = model.extract_features(image).cls();
          if (!cls.allFinite()) throw Error(s.path + ": the model's CLS feature is not finite");
          f.assign(cls.data(), cls.data() + cls.size());
          ++extracted;
          if (!cache_warned) {
            try {
              write_safetensors(entry, {TensorData::f32("cls", {dim}, f.data())},
                                {{"producer", "vitmsn-probe"}, {"image", s.path}, {"model", model.source()}});
            } catch (const Error& e) {
              progress.break_line();
              std::fprintf(stderr, "warning: cannot write the feature cache: %s\n", e.what());
              cache_warned = true;
            }
          }
        }
        rows.push_back(std::move(f));
        labels.push_back(s.label);
      } catch (const Error& e) {
        progress.break_line();
        std::fprintf(stderr, "error: %s (skipped)\n", e.what());
        failed.push_back(s.path);
      }
      progress.step(s.path);
    }
    progress.break_line();
    if (cli::interrupted()) {
      std::fprintf(stderr, "interrupted after %zu of %zu images; %s was not written\n", rows.size() + failed.size(),
                   samples.size(), output.c_str());
      return 130;
    }
    std::printf("features: %zu extracted, %zu cached, %zu failed (%.1f s); cache %s\n", extracted, cached,
                failed.size(), progress.elapsed(), cache.c_str());
    if (!failed.empty()) {
      std::printf("skipped %zu image%s that could not be read:\n", failed.size(), failed.size() == 1 ? "" : "s");
      for (const auto& f : failed) std::printf("  %s\n", f.c_str());
    }
    if (rows.empty()) throw Error(data + ": none of the " + std::to_string(samples.size()) + " images could be read");
    std::vector<int> count(classes.size(), 0);
    for (int y : labels) ++count[y];
    for (std::size_t k = 0; k < classes.size(); ++k)
      if (count[k] == 0)
        throw Error((fs::path(data) / classes[k]).string() + ": none of this class's images could be read");

    Eigen::MatrixXd x(static_cast<Eigen::Index>(rows.size()), dim);
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (int j = 0; j < dim; ++j) x(static_cast<Eigen::Index>(i), j) = rows[i][j];
    const int num_classes = static_cast<int>(classes.size());
    const int smallest = *std::min_element(count.begin(), count.end());
    std::fflush(stdout);

    // Evaluation: nested — the l2 choice happens inside each training part, so the accuracy is honest.
    std::string evaluation_note;
    if (holdout) {
      if (std::all_of(count.begin(), count.end(), [](int n) { return n < 2; })) {
        std::printf("no held-out evaluation: every class has a single image\n");
      } else {
        const HoldoutEvaluation h = holdout_evaluate(x, labels, num_classes, test_fraction, options);
        std::printf("held-out evaluation (stratified, test fraction %s: %zu test / %zu training images, seed %llu):\n",
                    number(test_fraction).c_str(), h.split.test.size(), h.split.train.size(),
                    static_cast<unsigned long long>(options.seed));
        print_evaluation(h.evaluation, classes);
        std::printf("  l2 of the training part: %s\n", describe_l2(h.probe).c_str());
        evaluation_note = "held-out accuracy " + number(h.evaluation.accuracy()) + " on " +
                          std::to_string(h.evaluation.total()) + " images";
      }
    } else if (smallest < 2) {
      std::printf("no cross-validation: the smallest class is %s, and it needs at least 2 images per class\n",
                  smallest_class(count, classes).c_str());
    } else {
      const CrossValidation cv = cross_validate(x, labels, num_classes, folds, options);
      std::printf("cross-validation (%d-fold stratified, seed %llu; l2 %s inside each fold):\n", cv.folds,
                  static_cast<unsigned long long>(options.seed), options.l2 > 0 ? "given" : "chosen");
      if (cv.folds < folds)
        std::printf("  (%d folds requested; the smallest class is %s)\n", folds,
                    smallest_class(count, classes).c_str());
      print_evaluation(cv.evaluation, classes);
      std::string l2s;
      for (double v : cv.fold_l2) l2s += (l2s.empty() ? "" : ", ") + number(v);
      std::printf("  l2 per fold: %s\n", l2s.c_str());
      evaluation_note = std::to_string(cv.folds) + "-fold cross-validated accuracy " +
                        number(cv.evaluation.accuracy()) + " on " + std::to_string(cv.evaluation.total()) + " images";
    }
    std::fflush(stdout);

    // The head: trained on every image.
    const Probe probe = train_probe(x, labels, num_classes, options);
    const Evaluation train = evaluate(probe.head, x, labels);
    std::printf("l2: %s\n", describe_l2(probe).c_str());
    std::printf("trained on all %d images: training accuracy %s (L-BFGS: %d iterations, stopped on %s, |grad| %s)\n",
                probe.num_examples, percent(train.accuracy()).c_str(), probe.solver.iterations,
                to_string(probe.solver.stop), number(probe.solver.gradient_norm).c_str());
    std::map<std::string, std::string> meta = {{"producer", "vitmsn-probe"}, {"model", model.source()}, {"data", data}};
    if (!evaluation_note.empty()) meta["evaluation"] = evaluation_note;
    write_head(output, probe, classes, meta);
    std::string names;
    for (const auto& c : classes) names += (names.empty() ? "" : ", ") + c;
    std::printf("saved %s: classifier.weight [%d,%d], classifier.bias [%d]; labels %s\n", output.c_str(), num_classes,
                dim, num_classes, names.c_str());
    std::printf(
        "to use it:\n  vitmsn-convert --add-classifier %s %s OUT.safetensors\n"
        "  vitmsn-classify --model OUT.safetensors IMAGE\n",
        output.c_str(), model_path.c_str());
    return 0;
  });
}
