// bf16 compute (LoadOptions::compute, KernelTable::gemm_bf16): every kernel variant gives the bits
// of the portable definition (src/cpu/bf16_format.hpp) for any thread count; a model computing in
// bf16 agrees with its float32 forward within the stated targets on the fixture images, the outlier
// variant included; Compute::kAuto picks bf16 only for bf16 weights on CPUs where it pays.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/measure.hpp"
#include "core/model.hpp"
#include "core/weights.hpp"
#include "cpu/bf16_format.hpp"
#include "cpu/half.hpp"
#include "cpu/kernels.hpp"
#include "int8_models.hpp"
#include "test_util.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/model.hpp"

namespace vitmsn {
namespace {

using detail::Epilogue;
using detail::Isa;

/// The bf16 targets against the float32 forward of the same model on the same input (issue #21):
/// CLS cosine >= 0.9999, every token >= 0.999.
constexpr double kBf16ClsCosine = 0.9999;
constexpr double kBf16TokenCosine = 0.999;

struct Operands {
  int M, N, K;
  std::vector<float> A, W, bias, residual;
};

Operands operands(int M, int N, int K, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  Operands o{M,
             N,
             K,
             std::vector<float>(static_cast<std::size_t>(M) * K),
             std::vector<float>(static_cast<std::size_t>(N) * K),
             std::vector<float>(N),
             std::vector<float>(static_cast<std::size_t>(M) * N)};
  for (auto& x : o.A) x = nd(rng);
  for (auto& x : o.W) x = 0.05f * nd(rng);
  for (auto& x : o.bias) x = nd(rng);
  for (auto& x : o.residual) x = nd(rng);
  // Subnormals in both operands: the definition flushes them (DAZ), as the instruction does.
  o.A[0] = 1e-39f;
  if (o.A.size() > 5) o.A[5] = -3e-40f;
  o.W[K > 1 ? 1 : 0] = 2e-39f;
  return o;
}

detail::bf16::Panels pack(const Operands& o) {
  detail::bf16::Source s;
  s.f32 = o.W.data();
  s.ld = o.K;
  s.rows = o.N;
  return detail::bf16::pack({s}, o.K, 2);
}

// Shapes: edges of every kind (M not a multiple of the tile, N of the panel, K odd, K over two blocks
// of 1024 inputs with a short last one, K over four as ViT-L's fc2), and the ViT-L/7 projection shape.
const int kShapes[][3] = {{1, 32, 2},      {5, 33, 7},     {30, 64, 64},    {97, 100, 513},
                          {200, 96, 1030}, {29, 64, 4096}, {1025, 96, 1024}};

TEST(Bf16Kernels, EveryVariantGivesTheBitsOfTheDefinitionForAnyThreadCount) {
  int compared = 0;
  for (const auto& sh : kShapes) {
    const Operands o = operands(sh[0], sh[1], sh[2], static_cast<unsigned>(sh[0] * 7 + sh[2]));
    const detail::bf16::Panels w = pack(o);
    for (int variant = 0; variant < 3; ++variant) {
      Epilogue ep;
      if (variant >= 1) ep.bias = o.bias.data();
      if (variant == 2) {
        ep.residual = o.residual.data();
        ep.ldr = o.N;
      }
      std::vector<float> want(static_cast<std::size_t>(o.M) * o.N), got(want.size());
      detail::kernels(Isa::kPortable).gemm_bf16(o.M, o.A.data(), o.K, w, want.data(), o.N, ep, 1);
      for (const Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
        if (!detail::isa_available(isa)) continue;
        for (const int threads : {1, 2, 3}) {
          std::fill(got.begin(), got.end(), -1.0f);
          detail::kernels(isa).gemm_bf16(o.M, o.A.data(), o.K, w, got.data(), o.N, ep, threads);
          std::size_t differ = 0;
          for (std::size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[i], 4) != 0;
          EXPECT_EQ(differ, 0u) << detail::isa_name(isa) << " M" << o.M << " N" << o.N << " K" << o.K << " epilogue "
                                << variant << " threads " << threads << ": " << differ << " of " << got.size()
                                << " outputs differ from the definition; max |diff| "
                                << test::max_abs_diff(got.data(), want.data(), got.size());
          ++compared;
        }
      }
    }
  }
  EXPECT_GE(compared, 36);
}

TEST(Bf16Kernels, InPlaceResidualAcrossBlocksAndGeluFollowTheFloatEpilogue) {
  // x += gelu(A·Wᵀ + b) with C == residual and K over two blocks: the residual must be read before the
  // partial sums overwrite it.
  const Operands o = operands(37, 64, 1100, 11);
  const detail::bf16::Panels w = pack(o);
  Epilogue ep;
  ep.bias = o.bias.data();
  ep.gelu = true;
  std::vector<float> want = o.residual;
  ep.residual = want.data();
  ep.ldr = o.N;
  detail::kernels(Isa::kPortable).gemm_bf16(o.M, o.A.data(), o.K, w, want.data(), o.N, ep, 1);
  for (const Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!detail::isa_available(isa)) continue;
    std::vector<float> got = o.residual;
    ep.residual = got.data();
    detail::kernels(isa).gemm_bf16(o.M, o.A.data(), o.K, w, got.data(), o.N, ep, 2);
    // The vector GELU's erf is within 2e-7 of std::erf (KernelsErf): a few ulps, never more.
    for (std::size_t i = 0; i < got.size(); ++i)
      ASSERT_NEAR(got[i], want[i], 1e-5f * (1.0f + std::fabs(want[i]))) << detail::isa_name(isa) << " at " << i;
  }
}

TEST(Bf16Kernels, TheDefinitionIsTheExactProductOfTheRoundedOperands) {
  // Against float64 on the bf16-rounded operands: only the float32 accumulation rounds.
  const Operands o = operands(9, 40, 300, 5);
  const detail::bf16::Panels w = pack(o);
  std::vector<float> got(static_cast<std::size_t>(o.M) * o.N);
  detail::kernels(Isa::kPortable).gemm_bf16(o.M, o.A.data(), o.K, w, got.data(), o.N, {}, 1);
  const auto r = [](float x) {
    const float y = detail::bf16_to_float(detail::float_to_bf16(x));
    return std::fabs(y) < 1.17549435e-38f ? 0.0 : static_cast<double>(y);
  };
  double worst = 0.0;
  for (int m = 0; m < o.M; ++m)
    for (int n = 0; n < o.N; ++n) {
      double exact = 0.0, magnitude = 0.0;
      for (int k = 0; k < o.K; ++k) {
        exact += r(o.A[m * o.K + k]) * r(o.W[n * o.K + k]);
        magnitude += std::fabs(r(o.A[m * o.K + k]) * r(o.W[n * o.K + k]));
      }
      worst = std::max(worst, std::fabs(got[m * o.N + n] - exact) / magnitude);
    }
  // K float32 additions: |error| <= K·2^-24·Σ|terms| (a loose bound; typically 1e-7).
  EXPECT_LE(worst, o.K * 6e-8) << "relative to the sum of |terms|";
}

TEST(Bf16Kernels, TheRateProbeRunsWhereThereIsADotProduct) {
  const detail::KernelTable& t = detail::kernels(detail::detected_isa());
  if (t.bf16_burst == nullptr) {
    EXPECT_FALSE(bf16_compute_pays());
    EXPECT_EQ(detail::measure_bf16_peak_gflops(1, 0.01), 0.0);
    GTEST_SKIP() << "no bf16 dot product on this CPU";
  }
  EXPECT_EQ(t.bf16_burst(8), 4.0 * 16 * 16 * 8) << "FLOPs counted: 16 chains x 16 lanes x 2 pairs x 2";
  EXPECT_GT(detail::measure_bf16_peak_gflops(1, 0.01), 0.0);
}

// --- Models -------------------------------------------------------------------------------------------

Config tiny_config() { return read_config(test::data_path("models/tiny/config.json")); }

LoadOptions with_compute(Compute c, int threads = 0) {
  LoadOptions o;
  o.compute = c;
  o.threads = threads;
  return o;
}

using test::compare_on_fixtures;

TEST(Bf16Model, TinyMeetsTheTargetsOnTheFixtureImages) {
  const std::string path = test::data_path("models/tiny");
  const Model f32 = Model::load(path), bf16 = Model::load(path, with_compute(Compute::kBF16));
  EXPECT_STREQ(f32.compute(), "f32");
  EXPECT_STREQ(bf16.compute(), "bf16");
  // Float32 weights are packed into the GEMM's panels (none on the portable kernels), and with them the
  // small tensors are held as copies (Weights::held_bytes); bf16 compute's panels are half their size,
  // K padded to even.
  const detail::KernelTable& kt = detail::kernels(detail::detected_isa());
  const auto panels = [&](std::size_t n, std::size_t k) {
    return kt.packed_nr == 0 ? 0 : (n + kt.packed_nr - 1) / kt.packed_nr * kt.packed_nr * k * 4;
  };
  const auto D = static_cast<std::size_t>(f32.config().hidden_size),
             F = static_cast<std::size_t>(f32.config().intermediate_size);
  EXPECT_EQ(f32.packed_weight_bytes(), static_cast<std::size_t>(f32.config().num_hidden_layers) *
                                               (panels(3 * D, D) + panels(D, D) + panels(F, D) + panels(D, F)) +
                                           detail::ModelAccess::weights(f32).held_bytes);
  EXPECT_GT(bf16.packed_weight_bytes(), 0u);
  const test::Agreement a = compare_on_fixtures(f32, bf16);
  std::printf("[ tiny, 9 images ] bf16 compute vs float32: %s\n", test::describe(a).c_str());
  EXPECT_GE(a.cls, kBf16ClsCosine) << test::describe(a);
  EXPECT_GE(a.min_token, kBf16TokenCosine) << test::describe(a);
  EXPECT_GT(a.max_abs, 0.0) << "bf16 compute must differ from float32: is it running at all?";
}

TEST(Bf16Model, TheOutlierVariantMeetsTheTargets) {
  std::vector<TensorData> t = test::read_tensors(test::data_path("models/tiny/model.safetensors"));
  const Config c = tiny_config();
  test::make_outliers(t, c, test::tiny_outliers());
  test::make_residual_outliers(t, test::tiny_outliers());
  const Model f32 = Model::from_tensors(c, t), bf16 = Model::from_tensors(c, t, with_compute(Compute::kBF16));
  const test::Agreement a = compare_on_fixtures(f32, bf16);
  std::printf("[ tiny outlier variant, 9 images ] bf16 compute vs float32: %s\n", test::describe(a).c_str());
  EXPECT_GE(a.cls, kBf16ClsCosine) << test::describe(a);
  EXPECT_GE(a.min_token, kBf16TokenCosine) << test::describe(a);
}

// Few-shot (issue #21's target: as for int8): heads trained on bf16-compute and on float32 features
// of the probe tests' three classes agree in cross-validated accuracy and predictions, and in each
// image's class probabilities.
TEST(Bf16Model, FewShotProbeGivesTheSameAccuracyAndProbabilities) {
  const std::string path = test::data_path("models/tiny");
  const test::FewShot f = test::few_shot(Model::load(path), Model::load(path, with_compute(Compute::kBF16)));
  std::printf("[ probe ] cross-validated accuracy: float32 %.4f, bf16 compute %.4f\n", f.accuracy_f32,
              f.accuracy_other);
  std::printf("[ probe ] largest difference of a class probability, float32 vs bf16-compute heads: %.2e\n",
              f.worst_probability);
  EXPECT_EQ(f.accuracy_other, f.accuracy_f32);
  EXPECT_TRUE(f.same_predictions) << "a picture's cross-validated class differs between float32 and bf16 compute";
  EXPECT_LE(f.worst_probability, 0.02);
}

TEST(Bf16Model, ResultsAreTheSameBitsForAnyThreadCountAndBatch) {
  const std::string path = test::data_path("models/tiny");
  const Model one = Model::load(path, with_compute(Compute::kBF16, 1)),
              two = Model::load(path, with_compute(Compute::kBF16, 2));
  const PixelValues a = test::fixture_pixels("chelsea"), b = test::fixture_pixels("coffee");
  const Matrix x = one.extract_features(a).last_hidden_state;
  EXPECT_EQ(x, two.extract_features(a).last_hidden_state);
  const std::vector<Features> batch = two.extract_features(std::vector<PixelValues>{b, a});
  EXPECT_EQ(x, batch[1].last_hidden_state);
}

TEST(Bf16Model, AutoComputesInBf16OnlyForBf16WeightsWhereItPays) {
  const std::string dir = test::temp_dir();
  ConvertOptions co;
  co.dtype = DType::kBF16;
  convert_checkpoint(test::data_path("models/tiny"), dir + "/bf16.safetensors", co);
  const Model f32 = Model::load(test::data_path("models/tiny")), file16 = Model::load(dir + "/bf16.safetensors");
  EXPECT_STREQ(f32.compute(), "f32") << "a float32 file stays exact by default";
  EXPECT_STREQ(file16.compute(), bf16_compute_pays() ? "bf16" : "f32");
  const Model forced = Model::load(dir + "/bf16.safetensors", with_compute(Compute::kF32));
  EXPECT_STREQ(forced.compute(), "f32");
  // The bf16 file in bf16 compute against the same file widened to float32 (its patch projection is
  // bf16 too, so it is not the float32 file's model).
  const Model b = Model::load(dir + "/bf16.safetensors", with_compute(Compute::kBF16));
  const test::Agreement a = compare_on_fixtures(forced, b);
  EXPECT_GE(a.cls, kBf16ClsCosine) << test::describe(a);
  EXPECT_GE(a.min_token, kBf16TokenCosine) << test::describe(a);
}

TEST(Bf16Model, AnInt8ModelRefusesBf16Compute) {
  const std::string dir = test::temp_dir();
  ConvertOptions co;
  co.dtype = DType::kI8;
  convert_checkpoint(test::data_path("models/tiny"), dir + "/int8.safetensors", co);
  test::expect_error([&] { Model::load(dir + "/int8.safetensors", with_compute(Compute::kBF16)); },
                     "an int8 model computes in int8");
  EXPECT_STREQ(Model::load(dir + "/int8.safetensors").compute(), "int8");
}

// One parser for the programs' --compute and Python's compute= (#24): each name round-trips, anything
// else is an argument error naming the allowed values and what was given.
TEST(Bf16Model, ComputeNamesParseAndPrintOneWay) {
  for (Compute c : {Compute::kAuto, Compute::kF32, Compute::kBF16}) EXPECT_EQ(parse_compute(to_string(c)), c);
  EXPECT_STREQ(to_string(Compute::kBF16), "bf16");
  try {
    parse_compute("fp16");
    ADD_FAILURE() << "parse_compute(\"fp16\") did not throw";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kArgument);
    EXPECT_STREQ(e.what(), "compute must be 'auto', 'f32' or 'bf16', got 'fp16'");
  }
}

}  // namespace
}  // namespace vitmsn
