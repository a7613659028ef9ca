// Full-size ViT-L/7 (label `fullsize`, not in the default test run): the synthetic model written by
// vitmsn-synth, loaded from its folder, against a float64 PyTorch reference.
//   build/examples/vitmsn-synth DIR
//   /usr/bin/python3 tests/tools/fullsize_reference.py DIR
//   VITMSN_FULLSIZE_MODEL=DIR ctest --test-dir build -L fullsize --output-on-failure
// Without VITMSN_FULLSIZE_MODEL the synthetic model is built in memory (no reference comparison).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

#include "cpu/int8_format.hpp"
#include "int8_models.hpp"
#include "test_util.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/synthetic.hpp"

namespace vitmsn {
namespace {

// docs/NUMERICS.md, Tolerances: plain float32 PyTorch lands ~8e-6 from float64 at full size; a float32
// implementation with another summation order "a few 1e-4". We hold ourselves to 5e-4.
constexpr double kFullSizeTolerance = 5e-4;

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss / 1024.0;
}

TEST(FullSize, SyntheticVitL7RunsAndMatchesTheReference) {
  const char* dir = std::getenv("VITMSN_FULLSIZE_MODEL");
  const auto t0 = std::chrono::steady_clock::now();
  const Model model = dir ? Model::load(dir)
                          : Model::from_tensors(vit_msn_large_7_config(), synthetic_tensors(vit_msn_large_7_config()));
  const auto t1 = std::chrono::steady_clock::now();
  const Features f = model.extract_features(test::fixture_pixels("chelsea"));
  const auto t2 = std::chrono::steady_clock::now();
  ASSERT_EQ(f.last_hidden_state.rows(), 1025);
  ASSERT_EQ(f.last_hidden_state.cols(), 1024);
  EXPECT_TRUE(f.last_hidden_state.allFinite());
  std::printf("    model %s: load %.2f s, forward %.2f s on %d threads, peak RSS %.0f MB\n", dir ? dir : "<memory>",
              std::chrono::duration<double>(t1 - t0).count(), std::chrono::duration<double>(t2 - t1).count(),
              model.threads(), peak_rss_mb());
  if (!dir) GTEST_SKIP() << "VITMSN_FULLSIZE_MODEL not set: ran the in-memory synthetic model, no reference to compare";
  const std::string ref_path = std::string(dir) + "/reference.safetensors";
  const SafetensorsFile ref = SafetensorsFile::open(ref_path);
  const auto want = ref.get("chelsea.last_hidden_state").to_float();
  const double err = test::max_abs_diff(f.last_hidden_state.data(), want.data(), want.size());
  std::printf("    chelsea.last_hidden_state vs float64 PyTorch: max abs error %.3g\n", err);
  EXPECT_LE(err, kFullSizeTolerance) << "max abs error " << err;
  EXPECT_EQ(model.copied_weight_bytes(), 0u) << "float32 weights must be used in place";
}

#ifdef VITMSN_PROGRAM_DIR
// Ctrl-C while vitmsn-convert writes the 1.2 GB file: the program dies of the signal at once and
// removes its temporary file; no output, partial or whole, is left.
TEST(FullSize, ConvertInterruptedMidWriteLeavesNothing) {
  const char* model = std::getenv("VITMSN_FULLSIZE_MODEL");
  if (!model) GTEST_SKIP() << "set VITMSN_FULLSIZE_MODEL to the synthetic model folder";
  const std::string dir = test::temp_dir();
  const std::string pid = test::start_in_background(
      std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-convert " + model + " " + dir + "/out.safetensors", dir + ".log");
  ASSERT_FALSE(pid.empty());
  const std::string list = "ls " + dir + " 2>/dev/null";
  auto listing = [&] { return test::run_command(list).output; };
  // Wait until the temporary file has some hundred MB in it, then interrupt.
  bool writing = false;
  for (int i = 0; i < 600 && !writing; ++i) {
    usleep(50000);
    writing = test::run_command("find " + dir + " -name '*.tmp.*' -size +100M | grep -q .").status == 0;
  }
  ASSERT_TRUE(writing) << "no temporary file grew past 100 MB; folder: " << listing();
  ASSERT_EQ(std::system(("kill -INT " + pid).c_str()), 0);
  std::string log;
  for (int i = 0; i < 200 && log.find("interrupted") == std::string::npos; ++i) {
    usleep(50000);
    log = test::read_text(dir + ".log");
  }
  EXPECT_NE(log.find("interrupted: stopped at once; unfinished output removed"), std::string::npos) << log;
  usleep(200000);
  EXPECT_EQ(listing(), "") << "left behind after the interrupt";
}

// vitmsn-synth's default, the full-size folder (1.2 GB written to the test's folder): Model::load of it
// gives the in-memory synthetic ViT-L/7's output bit for bit, with the weights used in place.
TEST(FullSize, SynthProgramWritesTheInMemoryModel) {
  const std::string dir = test::temp_dir() + "/vitl7";
  const test::ProgramRun r = test::run("vitmsn-synth " + dir);
  ASSERT_EQ(r.status, 0) << r.output;
  const PixelValues px = test::fixture_pixels("chelsea");
  Matrix want;
  {
    const Model memory = Model::from_tensors(vit_msn_large_7_config(), synthetic_tensors(vit_msn_large_7_config()));
    want = memory.extract_features(px).last_hidden_state;
  }
  const Model loaded = Model::load(dir);
  EXPECT_EQ(loaded.copied_weight_bytes(), 0u);
  const Matrix got = loaded.extract_features(px).last_hidden_state;
  ASSERT_EQ(got.size(), want.size());
  EXPECT_EQ(std::memcmp(got.data(), want.data(), sizeof(float) * static_cast<std::size_t>(got.size())), 0)
      << "max abs difference " << test::max_abs_diff(got.data(), want.data(), static_cast<std::size_t>(got.size()));
}
#endif

// int8 at full size (issue #16): the synthetic ViT-L/7 and its outlier variants (tests/int8_models.hpp),
// int8 against float32 on chelsea: the scheme meets the targets on all three; on both outlier variants
// one activation scale per tensor must fail, and with residual-stream outliers blocks of 32 without
// the outlier split must fail too.
enum class Outliers { kNone, kGains, kGainsAndResidual };

void int8_full_size(Outliers outliers) {
  const std::string dir = test::temp_dir();
  const Config c = vit_msn_large_7_config();
  std::vector<TensorData> tensors = synthetic_tensors(c);
  if (outliers != Outliers::kNone) test::make_outliers(tensors, c, test::full_size_outliers());
  if (outliers == Outliers::kGainsAndResidual) test::make_residual_outliers(tensors, test::full_size_outliers());
  const test::ModelPair p = test::write_model_pair(dir, c, tensors);
  tensors.clear();
  const Model f32 = Model::load(p.f32);
  Model int8 = Model::load(p.int8);
  const PixelValues chelsea = test::fixture_pixels("chelsea");
  const Matrix a = f32.extract_features(chelsea).last_hidden_state;
  const char* name = outliers == Outliers::kNone    ? "ViT-L/7"
                     : outliers == Outliers::kGains ? "outlier ViT-L/7"
                                                    : "residual outlier ViT-L/7";
  const test::Agreement scheme = test::agreement(a, int8.extract_features(chelsea).last_hidden_state);
  std::printf("    %s, int8 (blocks of 32 + outlier split) vs float32: %s\n", name, test::describe(scheme).c_str());
  if (outliers == Outliers::kNone) {
    EXPECT_TRUE(scheme.meets_targets()) << test::describe(scheme);
    return;
  }
  test::Agreement no_split, tensor;
  {
    test::GroupingScope g(int8, detail::int8::Grouping::kBlock32, /*split=*/false);
    no_split = test::agreement(a, int8.extract_features(chelsea).last_hidden_state);
  }
  {
    test::GroupingScope g(int8, detail::int8::Grouping::kTensor);
    tensor = test::agreement(a, int8.extract_features(chelsea).last_hidden_state);
  }
  std::printf("    %s, blocks of 32 without the outlier split: %s\n", name, test::describe(no_split).c_str());
  std::printf("    %s, one activation scale per tensor: %s\n", name, test::describe(tensor).c_str());
  EXPECT_FALSE(tensor.meets_targets()) << "one scale per tensor should fail on outlier channels: "
                                       << test::describe(tensor);
  EXPECT_TRUE(scheme.meets_targets()) << test::describe(scheme);
  if (outliers == Outliers::kGainsAndResidual)
    EXPECT_FALSE(no_split.meets_targets())
        << "blocks of 32 without the outlier split should fail on residual-stream outliers: "
        << test::describe(no_split);
}

TEST(FullSize, Int8SyntheticVitL7MeetsTheTargets) { int8_full_size(Outliers::kNone); }

TEST(FullSize, Int8OutlierVitL7MeetsTheTargetsAndOneScalePerTensorDoesNot) { int8_full_size(Outliers::kGains); }

TEST(FullSize, Int8ResidualOutlierVitL7MeetsTheTargetsAndTheSchemesWithoutTheSplitDoNot) {
  int8_full_size(Outliers::kGainsAndResidual);
}

// bf16 compute at full size (issue #21): the synthetic ViT-L/7 and both outlier variants, in memory,
// bf16 compute against float32 on two real images: CLS cosine >= 0.9999, every token >= 0.999.
void bf16_full_size(Outliers outliers) {
  const Config c = vit_msn_large_7_config();
  std::vector<TensorData> tensors = synthetic_tensors(c);
  if (outliers != Outliers::kNone) test::make_outliers(tensors, c, test::full_size_outliers());
  if (outliers == Outliers::kGainsAndResidual) test::make_residual_outliers(tensors, test::full_size_outliers());
  LoadOptions bf16_compute;
  bf16_compute.compute = Compute::kBF16;
  const Model f32 = Model::from_tensors(c, tensors), bf16 = Model::from_tensors(c, tensors, bf16_compute);
  tensors.clear();
  ASSERT_STREQ(bf16.compute(), "bf16");
  const char* name = outliers == Outliers::kNone    ? "ViT-L/7"
                     : outliers == Outliers::kGains ? "outlier ViT-L/7"
                                                    : "residual outlier ViT-L/7";
  for (const char* image : {"chelsea", "astronaut"}) {
    const PixelValues px = test::fixture_pixels(image);
    const test::Agreement a =
        test::agreement(f32.extract_features(px).last_hidden_state, bf16.extract_features(px).last_hidden_state);
    std::printf("    %s, %s, bf16 compute vs float32: %s\n", name, image, test::describe(a).c_str());
    EXPECT_GE(a.cls, 0.9999) << name << ", " << image << ": " << test::describe(a);
    EXPECT_GE(a.min_token, 0.999) << name << ", " << image << ": " << test::describe(a);
  }
}

TEST(FullSize, Bf16ComputeSyntheticVitL7MeetsTheTargets) { bf16_full_size(Outliers::kNone); }

TEST(FullSize, Bf16ComputeOutlierVitL7MeetsTheTargets) { bf16_full_size(Outliers::kGains); }

TEST(FullSize, Bf16ComputeResidualOutlierVitL7MeetsTheTargets) { bf16_full_size(Outliers::kGainsAndResidual); }

}  // namespace
}  // namespace vitmsn
