// vitmsn-classify: top-k classes of images for a model with a classifier head.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

namespace {
const char* kUsage = R"(usage: vitmsn-classify [--model PATH] [--top K] [--threads N] IMAGE...

Prints the K most likely classes (softmax probability and logit) of each image, with the class
names of the model's id2label. The model needs a classifier head: a ViTMSNForImageClassification
checkpoint, or a head trained by vitmsn-probe and merged with vitmsn-convert --add-classifier.
options:
  --model PATH   model folder or .safetensors (default: $VITMSN_MODEL, else
                 weights/vit-msn-large-7.safetensors)
  --top K        classes to show per image (default 5)
  --threads N    threads (default: all CPUs this process may use)
  -h, --help     this text
)";
}  // namespace

int main(int argc, char** argv) {
  return vitmsn::cli::run_main(kUsage, [&]() -> int {
    vitmsn::cli::Args args(argc, argv, {"--model", "--top", "--threads"}, {"--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (args.positional().empty()) throw vitmsn::cli::UsageError("give at least one image");
    const int top = args.get_int("--top", 5, 1, 1 << 20);
    vitmsn::LoadOptions lo;
    lo.threads = args.get_int("--threads", 0, 1, 4096);
    const std::string path = vitmsn::cli::model_path_or_throw(args);
    const vitmsn::Model model = vitmsn::Model::load(path, lo);
    if (!model.has_classifier())
      throw vitmsn::Error(path +
                          " has no classifier head (it is a feature extractor, like facebook/vit-msn-large-7). "
                          "Train one on your labelled images with vitmsn-probe, merge it with "
                          "vitmsn-convert --add-classifier HEAD.safetensors " +
                          path +
                          " OUT.safetensors, "
                          "then run vitmsn-classify --model OUT.safetensors");
    int failures = 0;
    for (const auto& image : args.positional()) {
      vitmsn::Vector logits;
      try {
        logits = model.classify(vitmsn::read_image(image));
      } catch (const vitmsn::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        ++failures;
        continue;
      }
      // Softmax in double, max-subtracted.
      const double mx = logits.maxCoeff();
      std::vector<double> p(logits.size());
      double sum = 0;
      for (Eigen::Index i = 0; i < logits.size(); ++i) sum += p[i] = std::exp(logits[i] - mx);
      std::vector<int> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      const int k = std::min<int>(top, static_cast<int>(order.size()));
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int a, int b) { return logits[a] > logits[b]; });
      std::printf("%s\n", image.c_str());
      for (int i = 0; i < k; ++i)
        std::printf("  %6.2f %%  %-24s (logit %.4f)\n", 100.0 * p[order[i]] / sum, model.labels()[order[i]].c_str(),
                    logits[order[i]]);
    }
    return failures ? 1 : 0;
  });
}
