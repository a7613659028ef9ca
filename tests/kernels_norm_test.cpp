// The element-wise and row kernels: GELU (erf-based) against scalar references, erf over the whole
// float range, layer norm against float64 and the portable entry.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/kernels.hpp"
#include "kernel_test_util.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// GELU.

float gelu_reference(float x) { return x * 0.5f * (1.0f + std::erf(x * 0.70710678118654752440f)); }
double gelu_exact(double x) { return 0.5 * x * std::erfc(-x / std::sqrt(2.0)); }

// Dense grid over [-12, 12] plus the values where the erf approximation switches pieces.
std::vector<float> gelu_inputs() {
  std::vector<float> x;
  for (int i = -1200000; i <= 1200000; ++i) x.push_back(static_cast<float>(i) * 1e-5f);
  for (float b : {0.875f * 1.41421356f, 3.9f * 1.41421356f}) {
    float v = b;
    for (int i = 0; i < 64; ++i) {
      x.push_back(v);
      x.push_back(-v);
      v = std::nextafter(v, 0.0f);
    }
  }
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 30.0f, -30.0f, 1e20f, -1e20f}) x.push_back(v);
  return x;
}

// GELU tolerance: 1e-6 relative, plus what the float formula itself cannot resolve: left of zero
// 1 + erf cancels, and one ulp of erf near -1 (2^-24) becomes |x|/2 · 2^-24 in the result. So
// |y − ref| <= 1e-6·|ref| + 2^-24·|x| (two such ulps). Reported: the largest |y − ref| / that bound,
// the largest relative error where the formula has no cancellation (x >= -1), and the largest
// |y − ref| / |x| anywhere.
constexpr double kGeluRel = 1e-6;
constexpr double kGeluErfUlp = 5.9604644775390625e-8;  // 2^-24

struct GeluErrors {
  double worst_ratio = 0.0, rel_no_cancel = 0.0, abs_over_x = 0.0;
  float worst_x = 0.0f;
  void add(float x, double y, double ref) {
    const double diff = std::fabs(y - ref);
    const double ratio = diff / (kGeluRel * std::fabs(ref) + kGeluErfUlp * std::fabs(x) + 1e-45);
    if (ratio > worst_ratio) {
      worst_ratio = ratio;
      worst_x = x;
    }
    if (x >= -1.0f && ref != 0.0) rel_no_cancel = std::max(rel_no_cancel, diff / std::fabs(ref));
    if (x != 0.0f) abs_over_x = std::max(abs_over_x, diff / std::fabs(x));
  }
};

void check_gelu(Isa isa) {
  std::vector<float> x = gelu_inputs();
  std::vector<float> y = x;
  gelu_erf(isa, y.data(), static_cast<std::ptrdiff_t>(y.size()));
  GeluErrors vs_float, vs_exact, formula_vs_exact;
  for (std::size_t i = 0; i < x.size(); ++i) {
    vs_float.add(x[i], y[i], gelu_reference(x[i]));
    vs_exact.add(x[i], y[i], gelu_exact(x[i]));
    formula_vs_exact.add(x[i], gelu_reference(x[i]), gelu_exact(x[i]));
  }
  const auto show = [](const char* what, const GeluErrors& e) {
    std::printf(
        "    %-28s max %.3f × tolerance (at x=%g); relative error for x >= -1: %.3g; "
        "max |diff|/|x|: %.3g\n",
        what, e.worst_ratio, e.worst_x, e.rel_no_cancel, e.abs_over_x);
  };
  std::printf("[ %s gelu ] %zu inputs in [-12, 12] and edges; tolerance 1e-6·|ref| + 2^-24·|x|\n", isa_name(isa),
              x.size());
  show("vs float std::erf formula:", vs_float);
  show("vs exact (double):", vs_exact);
  show("(float formula vs exact:)", formula_vs_exact);
  EXPECT_LE(vs_float.worst_ratio, 1.0) << isa_name(isa) << " worst at x = " << vs_float.worst_x;
  EXPECT_LE(vs_exact.worst_ratio, 1.0) << isa_name(isa) << " worst at x = " << vs_exact.worst_x;
  // Zero and the saturated ends are exact.
  for (std::size_t i = 0; i < x.size(); ++i)
    if (x[i] == 0.0f || std::fabs(x[i]) >= 30.0f) EXPECT_EQ(y[i], gelu_reference(x[i])) << x[i];
}

TEST(KernelsGelu, PortableMatchesTheErfFormula) { check_gelu(Isa::kPortable); }
TEST(KernelsGelu, Avx2MatchesTheErfFormula) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_gelu(Isa::kAvx2);
}
TEST(KernelsGelu, Avx512MatchesTheErfFormula) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  check_gelu(Isa::kAvx512);
}

TEST(KernelsGelu, HandlesLengthsThatAreNotAMultipleOfTheVectorWidth) {
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    for (int n : {0, 1, 7, 15, 17, 33}) {
      std::vector<float> x(static_cast<std::size_t>(n) + 1, 0.0f);
      for (int i = 0; i < n; ++i) x[i] = 0.37f * static_cast<float>(i) - 3.0f;
      x[n] = 123.0f;  // sentinel past the end
      gelu_erf(isa, x.data(), n);
      for (int i = 0; i < n; ++i) EXPECT_NEAR(x[i], gelu_reference(0.37f * static_cast<float>(i) - 3.0f), 1e-6) << n;
      EXPECT_EQ(x[n], 123.0f) << isa_name(isa) << " wrote past n = " << n;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Layer norm: every variant against float64, and the vector ones against the portable one (double
// sums: the statistics agree to double rounding, so the outputs agree to the last float bit but for
// rare ties).

void check_layer_norm(Isa isa) {
  const bool vs_portable = isa != Isa::kPortable;
  std::mt19937 rng(31);
  std::normal_distribution<float> nd(0.0f, 3.0f);
  double worst_portable = 0.0, worst_exact = 0.0;
  std::size_t differing = 0, total = 0;
  for (int cols : {1, 7, 16, 17, 64, 1023, 1024, 4096}) {
    const int rows = 9;
    const std::ptrdiff_t ld = cols + 5;
    std::vector<float> x(static_cast<std::size_t>(rows) * ld), w(cols), b(cols);
    for (float& v : x) v = nd(rng) + 40.0f;  // an offset: the variance formula must not cancel badly
    for (float& v : w) v = 1.0f + 0.3f * nd(rng);
    for (float& v : b) v = nd(rng);
    std::vector<float> got(x.size(), 5.0f), ref;
    kernels(isa).layer_norm(x.data(), ld, got.data(), ld, rows, cols, w.data(), b.data(), 1e-6);
    if (vs_portable) {
      ref.assign(x.size(), 5.0f);
      kernels(Isa::kPortable).layer_norm(x.data(), ld, ref.data(), ld, rows, cols, w.data(), b.data(), 1e-6);
    }
    for (int r = 0; r < rows; ++r) {
      double mean = 0.0, var = 0.0;
      for (int c = 0; c < cols; ++c) mean += x[r * ld + c];
      mean /= cols;
      for (int c = 0; c < cols; ++c) var += (x[r * ld + c] - mean) * (x[r * ld + c] - mean);
      var /= cols;
      for (int c = 0; c < cols; ++c) {
        const double exact = (x[r * ld + c] - mean) / std::sqrt(var + 1e-6) * w[c] + b[c];
        worst_exact = std::max(worst_exact, std::fabs(got[r * ld + c] - exact));
        if (vs_portable) {
          worst_portable = std::max(worst_portable, static_cast<double>(std::fabs(got[r * ld + c] - ref[r * ld + c])));
          differing += got[r * ld + c] != ref[r * ld + c];
          ++total;
        }
      }
      for (std::ptrdiff_t c = cols; c < ld; ++c) EXPECT_EQ(got[r * ld + c], 5.0f) << "padding";
    }
  }
  std::printf("[ %s layer norm ] max |y - exact| %.3g", isa_name(isa), worst_exact);
  if (vs_portable)
    std::printf(", max |y - portable| %.3g (%zu of %zu values differ)", worst_portable, differing, total);
  std::printf("\n");
  if (vs_portable) EXPECT_LE(worst_portable, 2e-6);
  EXPECT_LE(worst_exact, 1e-5);
}

TEST(KernelsLayerNorm, PortableMatchesFloat64) { check_layer_norm(Isa::kPortable); }
TEST(KernelsLayerNorm, Avx2MatchesPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_layer_norm(Isa::kAvx2);
}
TEST(KernelsLayerNorm, Avx512MatchesPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  check_layer_norm(Isa::kAvx512);
}

// ---------------------------------------------------------------------------------------------
// erf over the whole float range: every `stride`-th bit pattern (all 2^32 with stride 1), against
// std::erf in double. The bound: |error| <= 2e-7.

constexpr double kErfAbsTol = 2e-7;

double erf_max_error(Isa isa, std::uint64_t stride, std::uint64_t* checked) {
  constexpr std::size_t kChunk = 1 << 16;
  std::vector<float> x(kChunk), y(kChunk);
  double worst = 0.0;
  *checked = 0;
  std::uint64_t bits = 0;
  while (bits < (std::uint64_t{1} << 32)) {
    std::size_t n = 0;
    for (; n < kChunk && bits < (std::uint64_t{1} << 32); bits += stride) {
      const std::uint32_t b = static_cast<std::uint32_t>(bits);
      float f;
      std::memcpy(&f, &b, sizeof f);
      if (std::isnan(f)) continue;
      x[n++] = f;
    }
    std::copy(x.begin(), x.begin() + n, y.begin());
    kernels(isa).erf(y.data(), static_cast<std::ptrdiff_t>(n));
    for (std::size_t i = 0; i < n; ++i) worst = std::max(worst, std::fabs(y[i] - std::erf(static_cast<double>(x[i]))));
    *checked += n;
  }
  return worst;
}

void check_erf(Isa isa, std::uint64_t stride) {
  std::uint64_t checked = 0;
  const double worst = erf_max_error(isa, stride, &checked);
  std::printf("[ %s erf ] max |erf - std::erf| %.3g over %llu floats (every %llu-th bit pattern)\n", isa_name(isa),
              worst, static_cast<unsigned long long>(checked), static_cast<unsigned long long>(stride));
  EXPECT_LE(worst, kErfAbsTol) << isa_name(isa);
}

TEST(KernelsErf, Avx2IsWithin2e7OfStdErfAcrossTheFloatRange) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_erf(Isa::kAvx2, 7);
}
TEST(KernelsErf, Avx512IsWithin2e7OfStdErfAcrossTheFloatRange) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  check_erf(Isa::kAvx512, 7);
}

}  // namespace
}  // namespace vitmsn::detail
