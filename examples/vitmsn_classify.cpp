// vitmsn-classify: top-k classes of images (files, folders, list files) for a model with a
// classifier head.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const cli::Spec kSpec = {"vitmsn-classify",
                         R"(usage: vitmsn-classify [--model PATH] [options] [IMAGE|FOLDER ...]

Prints the K most likely classes (softmax probability and logit) of each image, with the class
names of the model's id2label. Images are files, folders (searched recursively for
@EXTENSIONS@, hidden files skipped) and --list files.
Before the first image, every input (files found in folders too) must exist and start like an image
vitmsn decodes (32 bytes read per file): the others (a .safetensors, a text file, …) are named, each
with what it is, and nothing is run. A corrupt image is found when decoded (exit status 3).
The model needs a classifier head: a ViTMSNForImageClassification checkpoint, or a head trained by
vitmsn-probe and merged with vitmsn-convert --add-classifier.
options:
  --model PATH   model folder or .safetensors (default: $VITMSN_MODEL, else
                 weights/vit-msn-large-7.safetensors)
  --list FILE    read more image paths from FILE, one per line (# comments allowed)
  --top K        classes to show per image (default 5)
  --threads N    threads (default: all CPUs this process may use)
  -h, --help     this text
  --version      the version, kernel instruction set and JPEG decoder
Exit status: 0 every input done; 3 some or all images failed, each named (the others printed);
1 an error, nothing classified; 2 a usage error; 130 interrupted.
Symbolic links to files and folders are followed (each folder is read once).
)",
                         {"--model", "--top", "--threads", "--list"},
                         {}};

// The `top` most likely classes of one image, as printed.
void print_top(const std::string& image, const Vector& logits, const std::vector<std::string>& labels, int top) {
  // Softmax in double, max-subtracted.
  const double mx = logits.maxCoeff();
  std::vector<double> p(logits.size());
  double sum = 0;
  for (Eigen::Index i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(logits[i] - mx);
  std::vector<int> order(logits.size());
  std::iota(order.begin(), order.end(), 0);
  const int k = std::min<int>(top, static_cast<int>(order.size()));
  std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  std::printf("%s\n", image.c_str());
  for (int i = 0; i < k; ++i)
    std::printf("  %6.2f %%  %-24s (logit %.4f)\n", 100.0 * p[order[i]] / sum, labels[order[i]].c_str(),
                logits[order[i]]);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    if (args.positional().empty() && !args.has("--list"))
      throw cli::UsageError("give at least one image, folder or --list FILE");
    const int top = args.get_int("--top", 5, 1, 1 << 20);
    LoadOptions lo;
    lo.threads = args.get_int("--threads", 0, 1, 4096);
    const std::string path = cli::model_path_or_throw(args);
    const Model model = Model::load(path, lo);
    if (!model.has_classifier())
      throw Error(path +
                  " has no classifier head (it is a feature extractor, like facebook/vit-msn-large-7). "
                  "Train one on your labelled images with vitmsn-probe, merge it with "
                  "vitmsn-convert --add-classifier HEAD.safetensors " +
                  path + " OUT.safetensors, then run vitmsn-classify --model OUT.safetensors");
    const std::vector<std::string> images = cli::collect_images(args.positional(), args.all("--list"));
    if (images.empty()) throw Error("nothing to do: no images in " + cli::join(args.positional(), ", "));

    cli::install_interrupt_handler();
    cli::Progress progress(images.size(), "images");
    progress.start();
    std::vector<std::string> failed;
    std::size_t done = 0;
    for (const auto& image : images) {
      if (cli::interrupted()) break;
      try {
        const Vector logits = model.classify(read_image(image));
        progress.clear();
        print_top(image, logits, model.labels(), top);
      } catch (const Error& e) {
        progress.clear();
        std::fprintf(stderr, "error: %s\n", e.what());
        failed.push_back(image);
      }
      ++done;
      progress.step(image);
    }
    progress.break_line();
    if (cli::interrupted()) {
      std::fprintf(stderr, "interrupted after %zu of %s\n", done, cli::count(images.size(), "image").c_str());
      return 130;
    }
    if (!failed.empty())
      std::fprintf(stderr, "%zu of %s failed: %s\n", failed.size(), cli::count(images.size(), "image").c_str(),
                   cli::join_first(failed, 8).c_str());
    return failed.empty() ? 0 : 3;  // the others printed
  });
}
