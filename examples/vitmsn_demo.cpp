// vitmsn-demo: the quickest look at vitmsn. Loads facebook/vit-msn-large-7 when its converted
// weights are present (weights/vit-msn-large-7.safetensors or $VITMSN_MODEL), else the small test
// model bundled in tests/data (random weights: the numbers are meaningless, the pipeline is real),
// and prints the image embedding of an image.
#include <chrono>
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

#ifndef VITMSN_SOURCE_DIR
#define VITMSN_SOURCE_DIR "."
#endif

namespace {
const vitmsn::cli::Spec kSpec = {"vitmsn-demo",
                                 R"(usage: vitmsn-demo [--model PATH] [--threads N] [IMAGE]

Extracts ViT-MSN features of IMAGE (default: the bundled chelsea.png) and prints the CLS embedding.
Without --model it uses $VITMSN_MODEL or weights/vit-msn-large-7.safetensors, and falls back to the
bundled tiny test model (random weights) when the real weights are absent. IMAGE is checked before
the model is loaded: it must exist and start like an image vitmsn decodes (PNG, JPEG, BMP, GIF, TGA,
PSD, PNM).
options:
  --model PATH   model folder or .safetensors
  --threads N    threads (default: all CPUs this process may use)
  -h, --help     this text
  --version      the version, kernel instruction set and JPEG decoder
)",
                                 {"--model", "--threads"},
                                 {}};
}  // namespace

int main(int argc, char** argv) {
  return vitmsn::cli::run_main(argc, argv, kSpec, [](const vitmsn::cli::Args& args) {
    if (args.positional().size() > 1) throw vitmsn::cli::UsageError("give at most one image");
    const std::string image = args.positional().empty()
                                  ? std::string(VITMSN_SOURCE_DIR) + "/tests/data/images/chelsea.png"
                                  : args.positional()[0];
    vitmsn::LoadOptions lo;
    lo.threads = args.get_int("--threads", 0, 1, 4096);  // options first: no note before a usage error
    vitmsn::cli::check_image_file(image);                // and the image: no note before its error
    std::string model_path = args.has("--model") || !vitmsn::cli::default_model_path().empty()
                                 ? vitmsn::cli::model_path_or_throw(args)
                                 : std::string();
    if (model_path.empty()) {
      model_path = std::string(VITMSN_SOURCE_DIR) + "/tests/data/models/tiny";
      std::printf(
          "note: real weights not found (weights/vit-msn-large-7.safetensors, $VITMSN_MODEL);\n"
          "      using the bundled tiny test model (hidden 64, 2 layers, random weights).\n"
          "      Get facebook/vit-msn-large-7 with weights/fetch_vit_msn_large_7.sh.\n\n");
    }

    const auto t0 = std::chrono::steady_clock::now();
    const vitmsn::Model model = vitmsn::Model::load(model_path, lo);
    const auto t1 = std::chrono::steady_clock::now();
    const vitmsn::Features f = model.extract_features(image);
    const auto t2 = std::chrono::steady_clock::now();

    const vitmsn::Config& c = model.config();
    std::printf("model     %s  (hidden %d, %d layers, %d heads, patch %d)\n", model_path.c_str(), c.hidden_size,
                c.num_hidden_layers, c.num_attention_heads, c.patch_size);
    std::printf("image     %s\n", image.c_str());
    std::printf("features  last_hidden_state [%ld, %ld]  (CLS + %ld patch tokens)\n",
                static_cast<long>(f.last_hidden_state.rows()), static_cast<long>(f.last_hidden_state.cols()),
                static_cast<long>(f.last_hidden_state.rows() - 1));
    const vitmsn::Vector cls = f.cls();
    std::printf("CLS       [");
    for (int i = 0; i < std::min<int>(6, static_cast<int>(cls.size())); ++i)
      std::printf("%s% .4f", i ? ", " : "", cls[i]);
    std::printf(", …]  norm %.4f\n", cls.norm());
    if (model.has_classifier()) {
      const vitmsn::Vector logits = model.logits(f);
      Eigen::Index best;
      logits.maxCoeff(&best);
      std::printf("class     %s (logit %.3f)\n", model.labels()[best].c_str(), logits[best]);
    }
    std::printf("time      load %.3f s, forward %.3f s on %d threads\n", std::chrono::duration<double>(t1 - t0).count(),
                std::chrono::duration<double>(t2 - t1).count(), model.threads());
    return 0;
  });
}
