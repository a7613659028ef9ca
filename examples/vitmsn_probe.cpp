// vitmsn-probe: a linear probe (multinomial logistic regression on CLS features) trained on an
// ImageFolder — MSN's label-efficient evaluation — saved as a classifier head for vitmsn-convert.
// main() reads the options (parse_options), scans the ImageFolder (scan_image_folder), extracts or
// reads the cached features (extract), evaluates (evaluate), then trains on everything and writes
// the head (train_and_write).
#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/probe.hpp"
#include "vitmsn/vitmsn.hpp"

namespace fs = std::filesystem;
using namespace vitmsn;

namespace {

const cli::Spec kSpec = {
    "vitmsn-probe",
    R"(usage: vitmsn-probe [--model PATH] --data DIR --output HEAD.safetensors [options]

Trains a linear probe — multinomial logistic regression on the model's CLS embedding — on the images
of DIR, laid out as an ImageFolder: one sub-folder per class (class ids = sorted folder names),
images inside, searched recursively (@EXTENSIONS@; hidden files
skipped, images directly in DIR ignored). Features are standardised, the L2 strength is chosen by
stratified cross-validation over 1e-4..1e2 (13 values), and the head is folded back to the raw CLS
features. Reports cross-validated (or held-out) accuracy per class, then trains on all images and
writes HEAD.safetensors (classifier.weight [K, D], classifier.bias [K], __metadata__ id2label and
the model's backbone identity), ready for vitmsn-convert --add-classifier.
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
  --version            the version, kernel instruction set and JPEG decoder
Before any work, every file found must start like an image vitmsn decodes (32 bytes read per file):
the others (a .jpg that is an HTML page, …) are named, each with what it is, and nothing is run.
Images that cannot be decoded are reported and skipped; a class none of whose images can be decoded
is left out of the head (said), as long as 2 classes remain.
Ctrl-C (SIGINT) or SIGTERM: stops after the current image; the features computed so far are in the
cache, and the same command continues from there (a second Ctrl-C stops at once).
Exit status: 0 every input done; 3 the head written but some images failed, or a class left out
(each is named); 1 an error, nothing written (nothing could be trained); 2 a usage error;
130 interrupted.
Symbolic links to files and folders are followed (each folder is read once).
)",
    {"--model", "--data", "--output", "--cache", "--folds", "--test-fraction", "--threads", "--seed", "--l2"},
    {"--force"}};

// --- Options -----------------------------------------------------------------------------------------

struct Options {
  std::string model_path, data, output, cache_root;
  int folds = 5, threads = 0;
  bool holdout = false;
  double test_fraction = 0;
  ProbeOptions probe;
};

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

// Every option, the data folder and the output, before any work.
Options parse_options(const cli::Args& args) {
  Options o;
  args.expect_no_positional();
  o.data = args.required("--data", "--data DIR");
  o.output = args.required("--output", "--output HEAD.safetensors");
  if (args.has("--folds") && args.has("--test-fraction"))
    throw cli::UsageError("give --folds or --test-fraction, not both");
  o.folds = args.get_int("--folds", 5, 2, 1000);
  o.holdout = args.has("--test-fraction");
  o.test_fraction = args.get_double("--test-fraction", 0, 0, 1, true);
  o.threads = args.get_int("--threads", 0, 1, 4096);
  o.probe.seed = parse_seed(args);
  o.probe.l2 = args.get_double("--l2", o.probe.l2, 0, HUGE_VAL, true);
  o.probe.folds = o.folds;
  o.model_path = cli::model_path_or_throw(args);
  o.cache_root = args.get("--cache", (fs::path(o.data) / ".vitmsn-cache").string());
  std::error_code ec;
  if (!fs::exists(o.data, ec)) throw Error(o.data + ": does not exist (give an ImageFolder: one sub-folder per class)");
  if (!fs::is_directory(o.data, ec))
    throw Error(o.data + ": is a file, not a folder (give an ImageFolder: one sub-folder per class)");
  cli::check_output("--output", o.output, {".safetensors"}, args.has("--force"));
  return o;
}

// --- The ImageFolder ---------------------------------------------------------------------------------

struct Sample {
  std::string path;
  int label = 0;
};

struct Dataset {
  std::vector<std::string> classes;
  std::vector<Sample> samples;
};

// ImageFolder: the non-hidden sub-folders of `dir`, sorted, are the classes; what is passed over
// (hidden files, other formats, images outside the class folders) is said in notes on stderr.
Dataset scan_image_folder(const std::string& dir, const std::string& cache_root) {
  Dataset d;
  cli::Skipped skipped;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code ec2;
    if (!name.empty() && name[0] == '.') {
      if (!fs::equivalent(it->path(), cache_root, ec2)) skipped.hidden.push_back(it->path().string());
    } else if (it->is_directory(ec2)) {
      d.classes.push_back(name);
    } else if (cli::is_image_file_name(it->path())) {
      skipped.top_level.push_back(it->path().string());
    }
  }
  if (ec) throw Error(dir + ": cannot list folder: " + ec.message());
  std::sort(d.classes.begin(), d.classes.end());
  if (d.classes.size() < 2) {
    const std::size_t loose = skipped.top_level.size();
    throw Error(dir + ": found " + cli::count(d.classes.size(), "class folder") +
                (loose ? " and " + cli::count(loose, "image") + " directly in it (not in a class folder)" : "") +
                "; a probe needs at least 2 classes, each a sub-folder of images named after its class (" +
                (fs::path(dir) / "cat" / "1.jpg").string() + ", " + (fs::path(dir) / "dog" / "2.jpg").string() +
                ", ...)");
  }
  for (std::size_t c = 0; c < d.classes.size(); ++c) {
    const std::string folder = (fs::path(dir) / d.classes[c]).string();
    const std::vector<std::string> found = cli::scan_folder(folder, skipped);
    if (found.empty())
      throw Error(folder + ": no images in this class folder (" + cli::join(image_file_extensions(), " ") + ")");
    for (const auto& f : found) d.samples.push_back({f, static_cast<int>(c)});
  }
  std::fputs(skipped.notes(dir).c_str(), stderr);
  return d;
}

// --- Features ----------------------------------------------------------------------------------------

// The cache folder of a model: what decides its CLS features — config (without the labels),
// preprocessor settings, and the weights file's size, first and last MiB — hashed, so a copied or
// moved model keeps its cache and a different one never reads it.
std::string model_identity(const Model& model) {
  Config config = model.config();
  config.id2label.clear();
  detail::Sha256 id;
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

struct FeatureRows {
  std::vector<std::vector<float>> rows;
  std::vector<int> labels;
  std::vector<std::string> failed;
  std::size_t extracted = 0, cached = 0;
  std::size_t stored = 0;  // of those extracted, written to the cache
  bool interrupted = false;
};

// Each image's CLS feature: from the cache when the image's bytes and the model match, else
// extracted and cached. Unreadable images are reported and skipped.
FeatureRows extract(const Model& model, const Dataset& d, const std::string& cache) {
  FeatureRows out;
  const int dim = model.config().hidden_size;
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
  cli::install_interrupt_handler();
  // Test hook (tests/probe_test.cpp): act as if Ctrl-C came after N images, the same on any machine.
  const char* stop_hook = std::getenv("VITMSN_TEST_INTERRUPT_AFTER");
  const long long stop_after = stop_hook ? std::atoll(stop_hook) : -1;
  cli::Progress progress(d.samples.size(), "images");
  progress.start();
  for (const Sample& s : d.samples) {
    if (static_cast<long long>(out.rows.size() + out.failed.size()) == stop_after) cli::interrupted() = true;
    if (cli::interrupted()) break;
    try {
      const std::string bytes = cli::read_file(s.path);
      detail::Sha256 h;
      h.update(bytes);
      const std::string entry = (fs::path(cache) / (h.hex() + ".safetensors")).string();
      std::vector<float> f = read_cached(entry, dim);
      if (!f.empty()) {
        ++out.cached;
      } else {
        const Image image = decode_image(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), s.path);
        const Vector cls = model.extract_features(image).cls();
        if (!cls.allFinite()) throw Error(s.path + ": the model's CLS feature is not finite");
        f.assign(cls.data(), cls.data() + cls.size());
        ++out.extracted;
        if (!cache_warned) {
          try {
            write_safetensors(entry, {TensorData::f32("cls", {dim}, f.data())},
                              {{"producer", "vitmsn-probe"}, {"image", s.path}, {"model", model.source()}});
            ++out.stored;
          } catch (const Error& e) {
            progress.clear();
            std::fprintf(stderr, "warning: cannot write the feature cache: %s\n", e.what());
            cache_warned = true;
          }
        }
      }
      out.rows.push_back(std::move(f));
      out.labels.push_back(s.label);
    } catch (const Error& e) {
      progress.clear();
      std::fprintf(stderr, "error: %s (skipped)\n", e.what());
      out.failed.push_back(s.path);
    }
    progress.step(s.path);
  }
  progress.break_line();
  out.interrupted = cli::interrupted();
  if (!out.interrupted)
    std::printf("features: %zu extracted, %zu cached, %zu failed (%.1f s); cache %s\n", out.extracted, out.cached,
                out.failed.size(), progress.elapsed(), cache.c_str());
  return out;
}

// What the probe trains on: the features as a matrix [images, hidden], their labels, the classes
// that kept at least one image (`count`: images per class) and those left out (`dropped`).
struct Usable {
  Eigen::MatrixXd x;
  std::vector<int> labels, count;
  std::vector<std::string> classes, dropped;
};

// The features that can be used, after listing the images that could not be read. A class none of
// whose images could be read is left out (said); fewer than 2 classes left is an error.
Usable usable_features(const FeatureRows& f, const Dataset& d, const std::string& data) {
  if (!f.failed.empty()) {
    std::printf("skipped %s that could not be read:\n", cli::count(f.failed.size(), "image").c_str());
    for (const auto& p : f.failed) std::printf("  %s\n", p.c_str());
  }
  if (f.rows.empty()) throw Error(data + ": none of the " + std::to_string(d.samples.size()) + " images could be read");
  std::vector<int> all_count(d.classes.size(), 0), index(d.classes.size(), -1);
  for (int y : f.labels) ++all_count[y];
  Usable u;
  for (std::size_t k = 0; k < d.classes.size(); ++k) {
    if (all_count[k] == 0) {
      u.dropped.push_back(d.classes[k]);
      continue;
    }
    index[k] = static_cast<int>(u.classes.size());
    u.classes.push_back(d.classes[k]);
    u.count.push_back(all_count[k]);
  }
  if (!u.dropped.empty()) {
    std::vector<std::string> folders;
    for (const auto& c : u.dropped) folders.push_back((fs::path(data) / c).string());
    const std::string which = cli::join(folders, ", ");
    if (u.classes.size() < 2)
      throw Error("none of the images of " + cli::count(u.dropped.size(), "class", "classes") + " could be read (" +
                  which + "), which leaves " + cli::count(u.classes.size(), "class", "classes") +
                  ": a probe needs at least 2 (nothing was written)");
    std::fflush(stdout);
    std::fprintf(stderr, "warning: left out %s none of whose images could be read: %s; the head has %s\n",
                 cli::count(u.dropped.size(), "class", "classes").c_str(), which.c_str(),
                 cli::count(u.classes.size(), "class", "classes").c_str());
  }
  for (int y : f.labels) u.labels.push_back(index[y]);
  const Eigen::Index dim = static_cast<Eigen::Index>(f.rows[0].size());
  u.x.resize(static_cast<Eigen::Index>(f.rows.size()), dim);
  for (std::size_t i = 0; i < f.rows.size(); ++i)
    for (Eigen::Index j = 0; j < dim; ++j) u.x(static_cast<Eigen::Index>(i), j) = f.rows[i][j];
  std::fflush(stdout);
  return u;
}

// --- Evaluation and training -------------------------------------------------------------------------

std::string percent(double fraction) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f%%", 100 * fraction);
  return b;
}

// Three significant digits: l2 values, log-losses, gradient norms.
std::string g3(double v) {
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
      return g3(p.l2) + " (given by --l2)";
    case L2Source::kFallback:
      return g3(p.l2) + " (default: a class has a single image, too few to cross-validate)";
    case L2Source::kCrossValidation:
      break;
  }
  const auto best =
      std::find_if(p.l2_scores.begin(), p.l2_scores.end(), [&](const L2Score& s) { return s.l2 == p.l2; });
  std::string s = g3(p.l2) + " (best of " + std::to_string(p.l2_scores.size()) + " values " +
                  g3(p.l2_scores.front().l2) + ".." + g3(p.l2_scores.back().l2) + " by " + std::to_string(p.folds) +
                  "-fold cross-validation";
  if (best != p.l2_scores.end()) s += ": accuracy " + percent(best->accuracy) + ", log-loss " + g3(best->log_loss);
  return s + ")";
}

std::string smallest_class(const std::vector<int>& count, const std::vector<std::string>& classes) {
  const auto it = std::min_element(count.begin(), count.end());
  return "'" + classes[it - count.begin()] + "' (" + cli::count(*it, "image") + ")";
}

// The honest accuracy: nested (the l2 choice happens inside each training part). Returns a note for
// the head's metadata ("" when there was no evaluation).
std::string report_evaluation(const Options& o, const Eigen::MatrixXd& x, const std::vector<int>& labels,
                              const std::vector<std::string>& classes, const std::vector<int>& count) {
  const int num_classes = static_cast<int>(classes.size());
  const int smallest = *std::min_element(count.begin(), count.end());
  std::string note;
  if (o.holdout) {
    if (std::all_of(count.begin(), count.end(), [](int n) { return n < 2; })) {
      std::printf("no held-out evaluation: every class has a single image\n");
      return note;
    }
    const HoldoutEvaluation h = holdout_evaluate(x, labels, num_classes, o.test_fraction, o.probe);
    std::printf("held-out evaluation (stratified, test fraction %s: %zu test / %zu training images, seed %llu):\n",
                g3(o.test_fraction).c_str(), h.split.test.size(), h.split.train.size(),
                static_cast<unsigned long long>(o.probe.seed));
    print_evaluation(h.evaluation, classes);
    std::printf("  l2 of the training part: %s\n", describe_l2(h.probe).c_str());
    return "held-out accuracy " + g3(h.evaluation.accuracy()) + " on " + std::to_string(h.evaluation.total()) +
           " images";
  }
  if (smallest < 2) {
    std::printf("no cross-validation: the smallest class is %s, and it needs at least 2 images per class\n",
                smallest_class(count, classes).c_str());
    return note;
  }
  const CrossValidation cv = cross_validate(x, labels, num_classes, o.folds, o.probe);
  std::printf("cross-validation (%d-fold stratified, seed %llu; l2 %s inside each fold):\n", cv.folds,
              static_cast<unsigned long long>(o.probe.seed), o.probe.l2 > 0 ? "given" : "chosen");
  if (cv.folds < o.folds)
    std::printf("  (%d folds requested; the smallest class is %s)\n", o.folds, smallest_class(count, classes).c_str());
  print_evaluation(cv.evaluation, classes);
  std::string l2s;
  for (double v : cv.fold_l2) l2s += (l2s.empty() ? "" : ", ") + g3(v);
  std::printf("  l2 per fold: %s\n", l2s.c_str());
  return std::to_string(cv.folds) + "-fold cross-validated accuracy " + g3(cv.evaluation.accuracy()) + " on " +
         std::to_string(cv.evaluation.total()) + " images";
}

// The head, trained on every image, written with the backbone identity of the model it fits.
void train_and_write(const Options& o, const Eigen::MatrixXd& x, const std::vector<int>& labels,
                     const std::vector<std::string>& classes, const std::string& evaluation_note,
                     const std::string& backbone) {
  const int num_classes = static_cast<int>(classes.size());
  const Probe probe = train_probe(x, labels, num_classes, o.probe);
  const Evaluation train = evaluate(probe.head, x, labels);
  std::printf("l2: %s\n", describe_l2(probe).c_str());
  std::printf("trained on all %d images: training accuracy %s (L-BFGS: %d iterations, stopped on %s, |grad| %s)\n",
              probe.num_examples, percent(train.accuracy()).c_str(), probe.solver.iterations,
              to_string(probe.solver.stop), g3(probe.solver.gradient_norm).c_str());
  std::map<std::string, std::string> meta = {
      {"producer", "vitmsn-probe"}, {"model", o.model_path}, {"data", o.data}, {kBackboneMetadataKey, backbone}};
  if (!evaluation_note.empty()) meta["evaluation"] = evaluation_note;
  write_head(o.output, probe, classes, meta);
  std::printf("saved %s: classifier.weight [%d,%ld], classifier.bias [%d]; labels %s\n", o.output.c_str(), num_classes,
              static_cast<long>(x.cols()), num_classes, cli::join(classes, ", ").c_str());
  std::printf(
      "to use it:\n  vitmsn-convert --add-classifier %s %s OUT.safetensors\n"
      "  vitmsn-classify --model OUT.safetensors IMAGE\n",
      o.output.c_str(), o.model_path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    const Options o = parse_options(args);
    const Dataset d = scan_image_folder(o.data, o.cache_root);
    std::vector<std::string> files;
    for (const Sample& s : d.samples) files.push_back(s.path);
    cli::check_images(files);  // before the model loads
    LoadOptions lo;
    lo.threads = o.threads;
    const Model model = Model::load(o.model_path, lo);
    const std::string backbone = backbone_identity(o.model_path);  // for the head; computed before the work
    const int dim = model.config().hidden_size;
    const std::string cache = (fs::path(o.cache_root) / model_identity(model)).string();
    std::printf("vitmsn-probe: %s in %s under %s; model %s (CLS, %d dimensions)\n",
                cli::count(d.samples.size(), "image").c_str(), cli::count(d.classes.size(), "class", "classes").c_str(),
                o.data.c_str(), model.source().c_str(), dim);
    std::fflush(stdout);

    const FeatureRows f = extract(model, d, cache);
    if (f.interrupted) {
      const std::string kept =
          f.stored
              ? cli::count(f.stored, "feature") + " extracted in this run " + (f.stored == 1 ? "is" : "are") +
                    " kept in the cache " + cache +
                    (f.stored < f.extracted ? " (" + std::to_string(f.extracted - f.stored) + " could not be)" : "")
              : std::string(f.extracted ? "the features extracted in this run could not be cached"
                                        : "no feature was extracted in this run");
      std::fprintf(stderr,
                   "interrupted after %zu of %s; %s was not written. %s; run the same command again to continue "
                   "(cached features are not extracted again)\n",
                   f.rows.size() + f.failed.size(), cli::count(d.samples.size(), "image").c_str(), o.output.c_str(),
                   kept.c_str());
      return 130;
    }
    const Usable u = usable_features(f, d, o.data);
    const std::string note = report_evaluation(o, u.x, u.labels, u.classes, u.count);
    std::fflush(stdout);
    train_and_write(o, u.x, u.labels, u.classes, note, backbone);
    return f.failed.empty() && u.dropped.empty() ? 0 : 3;  // written, with failures
  });
}
