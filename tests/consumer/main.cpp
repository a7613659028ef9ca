// Loads a model and prints the CLS embedding's size and norm: proves headers, library and
// dependencies are all found by a project that only links vitmsn::vitmsn.
#include <cstdio>
#include <vitmsn/vitmsn.hpp>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: consumer MODEL IMAGE\n");
    return 2;
  }
  try {
    const vitmsn::Model model = vitmsn::Model::load(argv[1]);
    const vitmsn::Features f = model.extract_features(std::string(argv[2]));
    std::printf("vitmsn %s: %ld x %ld, CLS norm %.4f\n", vitmsn::kVersionString, (long)f.last_hidden_state.rows(),
                (long)f.last_hidden_state.cols(), f.cls().norm());
    return 0;
  } catch (const vitmsn::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
