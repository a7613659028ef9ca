// The float GEMM kernels: every vectorised variant against the portable (Eigen) one over edge shapes,
// strides, both B layouts and every epilogue; bit-identity across thread counts; the blocked tiling
// through plain C++ lanes; half-size (bf16/f16) weights and their decoders; stacked weights, weights
// packed once (gemm_packed), and features under any blocking. Variants the CPU lacks are skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "cpu/gemm_blocked.hpp"
#include "cpu/half.hpp"
#include "cpu/kernels.hpp"
#include "kernel_test_util.hpp"
#include "test_util.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Problems.

struct Shape {
  int M, N, K;
  int lda_pad, ldb_pad, ldc_pad;  // leading dimension = width + pad
};

std::string describe(const Shape& s, bool b_trans) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "M=%d N=%d K=%d lda+%d ldb+%d ldc+%d %s", s.M, s.N, s.K, s.lda_pad, s.ldb_pad,
                s.ldc_pad, b_trans ? "B[N,K]" : "B[K,N]");
  return buf;
}

// Edges of the 6×16 (AVX2) and 14×32 (AVX-512) tiles, several kc blocks, the model's own shapes in
// small (hidden 64) and the attention shapes at full size with their strides inside a QKV buffer.
const std::vector<Shape>& shapes() {
  static const std::vector<Shape> s = {
      {1, 5, 64, 0, 0, 0},      {1, 1, 1, 0, 0, 0},      {3, 7, 5, 2, 3, 1},      {6, 16, 8, 0, 0, 0},
      {7, 17, 33, 5, 7, 9},     {14, 32, 128, 0, 0, 0},  {15, 33, 129, 1, 1, 1},  {29, 65, 300, 4, 0, 3},
      {65, 192, 64, 128, 0, 0}, {50, 40, 1030, 0, 2, 0}, {200, 300, 64, 0, 0, 0}, {33, 47, 520, 3, 5, 7},
  };
  return s;
}

struct Data {
  Shape s;
  bool b_trans;
  std::ptrdiff_t lda, ldb, ldc;
  std::vector<float> A, B, bias, residual;
};

Data make_data(const Shape& s, bool b_trans, unsigned seed) {
  Data d{s, b_trans, s.K + s.lda_pad, (b_trans ? s.K : s.N) + s.ldb_pad, s.N + s.ldc_pad, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  d.A.resize(static_cast<std::size_t>(s.M) * d.lda);
  d.B.resize(static_cast<std::size_t>(b_trans ? s.N : s.K) * d.ldb);
  d.bias.resize(static_cast<std::size_t>(s.N));
  d.residual.resize(static_cast<std::size_t>(s.M) * d.ldc);
  for (auto* v : {&d.A, &d.B, &d.bias, &d.residual})
    for (float& x : *v) x = u(rng);
  return d;
}

// Σ_k |a_ik · op(b)_kj|, the scale of the rounding error of element (i, j).
std::vector<double> abs_product(const Data& d) {
  const Shape& s = d.s;
  std::vector<double> out(static_cast<std::size_t>(s.M) * s.N, 0.0);
  for (int i = 0; i < s.M; ++i)
    for (int j = 0; j < s.N; ++j) {
      double acc = 0.0;
      for (int k = 0; k < s.K; ++k) {
        const float b = d.b_trans ? d.B[j * d.ldb + k] : d.B[k * d.ldb + j];
        acc += std::fabs(static_cast<double>(d.A[i * d.lda + k]) * b);
      }
      out[static_cast<std::size_t>(i) * s.N + j] = acc;
    }
  return out;
}

struct EpilogueCase {
  float alpha;
  bool bias, gelu;
  int residual;  // 0 none, 1 separate buffer, 2 in place (residual == C)
};

std::string describe(const EpilogueCase& e) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "alpha=%g bias=%d gelu=%d residual=%s", e.alpha, e.bias, e.gelu,
                e.residual == 0 ? "none" : (e.residual == 1 ? "separate" : "in-place"));
  return buf;
}

std::vector<EpilogueCase> all_epilogues() {
  std::vector<EpilogueCase> v;
  for (float alpha : {1.0f, 0.125f})
    for (bool bias : {false, true})
      for (bool gelu : {false, true})
        for (int residual : {0, 1, 2}) v.push_back({alpha, bias, gelu, residual});
  return v;
}

// C for one GEMM: the residual (in place) or a canary that must be overwritten, and the epilogue of
// case e over it. Elements of C's padding must survive.
std::vector<float> output_and_epilogue(const Data& d, const EpilogueCase& e, Epilogue* ep) {
  const Shape& s = d.s;
  std::vector<float> C(static_cast<std::size_t>(s.M) * d.ldc, 12345.0f);
  ep->alpha = e.alpha;
  ep->bias = e.bias ? d.bias.data() : nullptr;
  ep->gelu = e.gelu;
  if (e.residual == 1) {
    ep->residual = d.residual.data();
    ep->ldr = d.ldc;
  } else if (e.residual == 2) {
    for (int i = 0; i < s.M; ++i)
      std::memcpy(&C[i * d.ldc], &d.residual[i * d.ldc], sizeof(float) * static_cast<std::size_t>(s.N));
    ep->residual = C.data();
    ep->ldr = d.ldc;
  }
  return C;
}

// Runs one GEMM (C and epilogue from output_and_epilogue()). packed (b_trans only): through
// pack_panels + gemm_packed.
std::vector<float> run(Isa isa, const Data& d, const EpilogueCase& e, int threads, bool packed = false) {
  const Shape& s = d.s;
  Epilogue ep;
  std::vector<float> C = output_and_epilogue(d, e, &ep);
  if (!packed) {
    gemm(isa, s.M, s.N, s.K, d.A.data(), d.lda, d.B.data(), d.ldb, d.b_trans, C.data(), d.ldc, ep, threads);
    return C;
  }
  const KernelTable& kt = kernels(isa);
  const int NR = kt.packed_nr;
  std::vector<float> panels(static_cast<std::size_t>((s.N + NR - 1) / NR) * NR * s.K + 16, -7.0f);
  float* aligned = panels.data();
  while (reinterpret_cast<std::uintptr_t>(aligned) % 64 != 0) ++aligned;
  const void* W[1] = {d.B.data()};
  kt.pack_panels(s.N, 1, s.K, W, WeightType::kF32, d.ldb, aligned, threads);
  kt.gemm_packed(s.M, s.N, s.K, d.A.data(), d.lda, aligned, C.data(), d.ldc, ep, threads);
  return C;
}

// Tolerance of one element against the portable result: both sum K products in float in different
// orders, so each is within ~sqrt(K)·u·Σ|a·b| of the truth in practice (K·u in the worst case); GELU
// (slope <= 1.13) and the bias/residual additions add a few ulps of their operands.
constexpr double kProductTol = 4e-7;  // × sqrt(K + 1) × |alpha| × Σ|a·b|
constexpr double kOperandTol = 4e-7;  // × (|bias| + |residual| + |result|)

struct Comparison {
  double max_abs = 0.0, max_ratio = 0.0;
  std::string worst;
};

Comparison compare(const Data& d, const EpilogueCase& e, const std::vector<float>& got, const std::vector<float>& want,
                   const std::vector<double>& absprod) {
  const Shape& s = d.s;
  Comparison c;
  for (int i = 0; i < s.M; ++i) {
    for (int j = 0; j < s.N; ++j) {
      const double g = got[i * d.ldc + j], w = want[i * d.ldc + j];
      const double tol = kProductTol * std::sqrt(s.K + 1.0) * std::fabs(e.alpha) *
                             absprod[static_cast<std::size_t>(i) * s.N + j] * (e.gelu ? 1.2 : 1.0) +
                         kOperandTol * ((e.bias ? std::fabs(d.bias[j]) : 0.0) +
                                        (e.residual ? std::fabs(d.residual[i * d.ldc + j]) : 0.0) + std::fabs(w)) +
                         1e-30;
      const double diff = std::fabs(g - w);
      if (!(diff <= c.max_abs)) c.max_abs = std::isnan(diff) ? 1e30 : diff;
      const double ratio = std::isnan(diff) ? 1e30 : diff / tol;
      if (ratio > c.max_ratio) {
        c.max_ratio = ratio;
        c.worst = "at (" + std::to_string(i) + ", " + std::to_string(j) + "): got " + std::to_string(g) +
                  ", portable " + std::to_string(w);
      }
    }
    for (std::ptrdiff_t j = s.N; j < d.ldc; ++j)
      if (got[i * d.ldc + j] != 12345.0f && e.residual != 2) {
        c.max_ratio = 1e30;
        c.worst = "wrote into C's padding at row " + std::to_string(i);
      }
  }
  return c;
}

void expect_matches_portable(Isa isa, const Shape& s, bool b_trans, const std::vector<EpilogueCase>& epilogues,
                             int threads, double* worst_abs, double* worst_ratio) {
  const Data d = make_data(s, b_trans, 1234u + static_cast<unsigned>(s.M * 31 + s.N * 7 + s.K));
  const std::vector<double> absprod = abs_product(d);
  for (const EpilogueCase& e : epilogues) {
    const std::vector<float> want = run(Isa::kPortable, d, e, 1);
    const std::vector<float> got = run(isa, d, e, threads);
    const Comparison c = compare(d, e, got, want, absprod);
    *worst_abs = std::max(*worst_abs, c.max_abs);
    *worst_ratio = std::max(*worst_ratio, c.max_ratio);
    EXPECT_LE(c.max_ratio, 1.0) << isa_name(isa) << " " << describe(s, b_trans) << " " << describe(e) << ": max |diff| "
                                << c.max_abs << ", " << c.max_ratio << " × tolerance " << c.worst;
  }
}

void check_variant_against_portable(Isa isa) {
  double worst_abs = 0.0, worst_ratio = 0.0;
  for (const Shape& s : shapes())
    for (bool b_trans : {true, false})
      expect_matches_portable(isa, s, b_trans, all_epilogues(), 1, &worst_abs, &worst_ratio);
  // The attention shapes at full size, inside a QKV buffer (row stride 3·1024).
  const std::vector<EpilogueCase> some = {{0.125f, false, false, 0}, {1.0f, true, true, 2}};
  expect_matches_portable(isa, {1025, 1025, 64, 3072 - 64, 3072 - 64, 0}, true, some, 2, &worst_abs, &worst_ratio);
  expect_matches_portable(isa, {1025, 64, 1025, 0, 3072 - 64, 0}, false, some, 2, &worst_abs, &worst_ratio);
  std::printf(
      "[ %s vs portable ] max |diff| %.3g, max %.3f × tolerance (%.0e·sqrt(K+1)·|alpha|·Σ|a·b|"
      " + %.0e·(|bias|+|residual|+|C|))\n",
      isa_name(isa), worst_abs, worst_ratio, kProductTol, kOperandTol);
}

TEST(GemmAvx2, MatchesPortableOnEdgeShapesStridesLayoutsAndEpilogues) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_variant_against_portable(Isa::kAvx2);
}

TEST(GemmAvx512, MatchesPortableOnEdgeShapesStridesLayoutsAndEpilogues) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  check_variant_against_portable(Isa::kAvx512);
}

TEST(Gemm, UnavailableVariantFallsBackToAnAvailableOne) {
  // Asking for a variant the CPU lacks must still compute the product.
  const Data d = make_data({9, 20, 30, 0, 0, 0}, true, 7u);
  const EpilogueCase e{1.0f, true, false, 0};
  const std::vector<float> want = run(Isa::kPortable, d, e, 1);
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    double worst_abs = 0.0, worst_ratio = 0.0;
    const std::vector<double> absprod = abs_product(d);
    const Comparison c = compare(d, e, run(isa, d, e, 1), want, absprod);
    worst_ratio = c.max_ratio;
    worst_abs = c.max_abs;
    EXPECT_LE(worst_ratio, 1.0) << isa_name(isa) << ": " << worst_abs;
  }
}

TEST(Gemm, ResultsAreBitIdenticalForOneTwoAndThreeThreads) {
  const std::vector<Shape> cases = {
      {1025, 1024, 96, 0, 0, 0}, {300, 3072, 64, 0, 0, 0}, {257, 64, 520, 0, 3072 - 64, 0}, {61, 200, 300, 5, 3, 2},
      {13, 1025, 64, 0, 0, 0},   {61, 37, 70, 0, 0, 0},    {200, 37, 520, 1, 0, 0},
  };
  const EpilogueCase e{0.5f, true, true, 2};
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    for (const Shape& s : cases) {
      for (bool b_trans : {true, false}) {
        const Data d = make_data(s, b_trans, 99u);
        const std::vector<float> one = run(isa, d, e, 1);
        for (int threads : {2, 3}) {
          const std::vector<float> many = run(isa, d, e, threads);
          EXPECT_EQ(0, std::memcmp(one.data(), many.data(), one.size() * sizeof(float)))
              << isa_name(isa) << " " << describe(s, b_trans) << ": " << threads << " threads differ from 1";
        }
      }
    }
  }
}

TEST(Gemm, InPlaceResidualIsReadBeforeCIsOverwrittenAcrossKBlocks) {
  // K = 4096 spans many kc blocks; C holds partial sums in between, residual == C must still work.
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    const Data d = make_data({40, 70, 4096, 0, 0, 0}, true, 5u);
    const EpilogueCase in_place{1.0f, true, false, 2}, separate{1.0f, true, false, 1};
    const std::vector<float> a = run(isa, d, in_place, 2), b = run(isa, d, separate, 2);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float))) << isa_name(isa);
  }
}

TEST(Gemm, EmptyProblemsLeaveCUntouchedAndKZeroGivesTheEpilogueOfZero) {
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    std::vector<float> C(12, 7.0f);
    const float A[1] = {1.0f}, B[1] = {1.0f}, bias[4] = {1.0f, -2.0f, 3.0f, 0.5f};
    gemm(isa, 0, 4, 3, A, 3, B, 3, true, C.data(), 4, Epilogue{}, 2);
    gemm(isa, 3, 0, 3, A, 3, B, 3, true, C.data(), 4, Epilogue{}, 2);
    for (float c : C) EXPECT_EQ(c, 7.0f) << isa_name(isa);
    Epilogue ep;
    ep.bias = bias;
    gemm(isa, 3, 4, 0, A, 1, B, 1, true, C.data(), 4, ep, 1);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 4; ++j) EXPECT_EQ(C[i * 4 + j], bias[j]) << isa_name(isa);
  }
}

// ---------------------------------------------------------------------------------------------
// The shared blocked GEMM with the AVX-512 geometry (16 lanes, 14×32 tiles, kc = 128), run through
// plain C++ lanes (ScalarLanes, kernel_test_util.hpp): checks the tiling, packing and edge logic of the
// AVX-512 build on any CPU.

TEST(GemmBlocked, AvxFiveTwelveTilingThroughPlainLanesMatchesPortable) {
  using V = ScalarLanes<16>;
  const Blocking bl{128, 28, std::size_t{1} << 14};  // small mc, nc: many blocks
  double worst_abs = 0.0, worst_ratio = 0.0;
  // Each epilogue feature, and all of them at once with the residual in place.
  const std::vector<EpilogueCase> epilogues = {{1.0f, false, false, 0},
                                               {0.125f, true, false, 1},
                                               {1.0f, false, true, 0},
                                               {1.0f, false, false, 2},
                                               {0.5f, true, true, 2}};
  for (const Shape& s : shapes()) {
    for (bool b_trans : {true, false}) {
      const Data d = make_data(s, b_trans, 4321u + static_cast<unsigned>(s.K));
      const std::vector<double> absprod = abs_product(d);
      for (const EpilogueCase& e : epilogues) {
        const std::vector<float> want = run(Isa::kPortable, d, e, 1);
        std::vector<float> got(static_cast<std::size_t>(s.M) * d.ldc, 12345.0f);
        Epilogue ep;
        ep.alpha = e.alpha;
        ep.bias = e.bias ? d.bias.data() : nullptr;
        ep.gelu = e.gelu;
        if (e.residual == 1) {
          ep.residual = d.residual.data();
          ep.ldr = d.ldc;
        } else if (e.residual == 2) {
          for (int i = 0; i < s.M; ++i)
            std::memcpy(&got[i * d.ldc], &d.residual[i * d.ldc], sizeof(float) * static_cast<std::size_t>(s.N));
          ep.residual = got.data();
          ep.ldr = d.ldc;
        }
        const blocked::Problem p{s.M, s.N, s.K, d.A.data(), d.lda, d.B.data(), d.ldb, b_trans, got.data(), d.ldc, ep};
        blocked::gemm<V, 14, 2, true>(p, bl, 1);
        const Comparison c = compare(d, e, got, want, absprod);
        worst_abs = std::max(worst_abs, c.max_abs);
        worst_ratio = std::max(worst_ratio, c.max_ratio);
        EXPECT_LE(c.max_ratio, 1.0) << describe(s, b_trans) << " " << describe(e) << ": max |diff| " << c.max_abs << " "
                                    << c.worst;
      }
    }
  }
  std::printf("[ 14x32 tiling, plain lanes, vs portable ] max |diff| %.3g, max %.3f × tolerance\n", worst_abs,
              worst_ratio);
}

// ---------------------------------------------------------------------------------------------
// Half-size weights: gemm_weights with bf16 / f16 W [N,K], widened to float while B is packed
// (AVX2 / AVX-512) or a block of rows at a time (portable).

const char* wt_name(WeightType wt) {
  return wt == WeightType::kBF16 ? "bf16" : (wt == WeightType::kF16 ? "f16" : "f32");
}

float widen_reference(WeightType wt, std::uint16_t h) {
  return wt == WeightType::kBF16 ? bf16_to_float(h) : half_to_float(h);
}

/// Rounds the weights d.B (layout [N,K], ldb) to wt and returns their 16-bit codes; d.B becomes the
/// widened values, so that a float32 GEMM on d is the exact reference for the half-weight one.
std::vector<std::uint16_t> round_weights(Data& d, WeightType wt) {
  std::vector<std::uint16_t> h(d.B.size());
  for (std::size_t i = 0; i < d.B.size(); ++i) {
    h[i] = wt == WeightType::kBF16 ? float_to_bf16(d.B[i]) : float_to_half(d.B[i]);
    d.B[i] = widen_reference(wt, h[i]);
  }
  return h;
}

/// As run(), through gemm_weights with the weights W of type wt (leading dimension d.ldb).
std::vector<float> run_weights(Isa isa, const Data& d, const void* W, WeightType wt, const EpilogueCase& e,
                               int threads) {
  const Shape& s = d.s;
  Epilogue ep;
  std::vector<float> C = output_and_epilogue(d, e, &ep);
  gemm_weights(isa, s.M, s.N, s.K, d.A.data(), d.lda, W, wt, d.ldb, C.data(), d.ldc, ep, threads);
  return C;
}

// The value of an IEEE binary16 code by its definition, in double arithmetic: an independent
// reference for the integer decoder of src/cpu/half.hpp.
double half_by_definition(std::uint16_t h) {
  const int sign = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double magnitude = e == 0 ? std::ldexp(m, -24) : std::ldexp(1024 + m, e - 25);
  return sign ? -magnitude : magnitude;
}

TEST(KernelsHalf, ScalarDecodersMatchTheDefinitionOnAllBitPatterns) {
  int nan_f16 = 0;
  for (std::uint32_t u = 0; u < 65536u; ++u) {
    const auto h = static_cast<std::uint16_t>(u);
    // bf16: the upper half of a float32, NaNs included.
    EXPECT_EQ(float_to_bits(bf16_to_float(h)), u << 16) << "bf16 0x" << std::hex << u;
    const float f = half_to_float(h);
    const std::uint32_t sign = (u & 0x8000u) << 16;
    if ((u & 0x7c00u) == 0x7c00u && (u & 0x3ffu) != 0) {
      // NaN: sign and payload kept, made quiet (as F16C's vcvtph2ps).
      ++nan_f16;
      EXPECT_EQ(float_to_bits(f), sign | 0x7fc00000u | ((u & 0x3ffu) << 13)) << "f16 0x" << std::hex << u;
    } else if ((u & 0x7c00u) == 0x7c00u) {
      EXPECT_EQ(float_to_bits(f), sign | 0x7f800000u) << "f16 0x" << std::hex << u;  // infinity
    } else {
      EXPECT_EQ(static_cast<double>(f), half_by_definition(h)) << "f16 0x" << std::hex << u;
      EXPECT_EQ(float_to_bits(f) & 0x80000000u, sign) << "f16 0x" << std::hex << u;  // -0 stays -0
    }
  }
  EXPECT_EQ(nan_f16, 2 * 1023);
  // Spot values.
  EXPECT_EQ(half_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_to_float(0xc000), -2.0f);
  EXPECT_EQ(half_to_float(0x0001), 5.9604644775390625e-08f);  // smallest subnormal, 2^-24
  EXPECT_EQ(half_to_float(0x7bff), 65504.0f);
  EXPECT_EQ(bf16_to_float(0x3f80), 1.0f);
  EXPECT_EQ(bf16_to_float(0xc040), -3.0f);
}

TEST(GemmWeights, WideningInThePackingIsExactForEveryFiniteBitPattern) {
  // C = I·Wᵀ with W [1024, 64] holding all 65536 16-bit codes: C[m, n] = widen(W[n, m]) exactly
  // (a sum of one product by 1 and products by 0). Non-finite codes are replaced by 0 (0·inf is NaN).
  constexpr int K = 64, N = 1024, M = 64;
  std::vector<float> A(static_cast<std::size_t>(M) * K, 0.0f);
  for (int i = 0; i < M; ++i) A[i * K + i] = 1.0f;
  for (WeightType wt : {WeightType::kBF16, WeightType::kF16}) {
    std::vector<std::uint16_t> W(static_cast<std::size_t>(N) * K);
    for (std::size_t i = 0; i < W.size(); ++i) {
      const auto h = static_cast<std::uint16_t>(i);
      W[i] = std::isfinite(widen_reference(wt, h)) ? h : 0;
    }
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
      if (!isa_available(isa)) continue;
      for (int threads : {1, 2}) {
        std::vector<float> C(static_cast<std::size_t>(M) * N, 12345.0f);
        gemm_weights(isa, M, N, K, A.data(), K, W.data(), wt, K, C.data(), N, Epilogue{}, threads);
        int bad = 0;
        for (int m = 0; m < M; ++m)
          for (int n = 0; n < N; ++n) {
            const float want = widen_reference(wt, W[static_cast<std::size_t>(n) * K + m]);
            if (!(C[m * N + n] == want) && ++bad <= 5)
              ADD_FAILURE() << isa_name(isa) << " " << wt_name(wt) << " code 0x" << std::hex << W[n * K + m] << std::dec
                            << ": got " << C[m * N + n] << ", want " << want;
          }
        EXPECT_EQ(bad, 0) << isa_name(isa) << " " << wt_name(wt) << " " << threads << " threads";
      }
    }
  }
}

// Edges of both tile geometries, several kc blocks, ldw > K (the shapes' ldb_pad), and several
// 256-row blocks of the portable path.
std::vector<Shape> weight_shapes() {
  std::vector<Shape> v = shapes();
  v.push_back({130, 200, 1030, 0, 8, 3});
  v.push_back({5, 129, 31, 1, 9, 0});
  v.push_back({37, 600, 100, 2, 5, 1});  // three 256-row blocks on the portable path
  return v;
}

TEST(GemmWeights, MatchesTheFloatGemmOnTheWidenedWeightsForEveryEpilogue) {
  for (WeightType wt : {WeightType::kBF16, WeightType::kF16}) {
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
      if (!isa_available(isa)) continue;
      double worst_abs = 0.0, worst_ratio = 0.0;
      int identical = 0, total = 0;
      for (const Shape& s : weight_shapes()) {
        Data d = make_data(s, true, 777u + static_cast<unsigned>(s.M * 31 + s.N * 7 + s.K));
        const std::vector<std::uint16_t> W = round_weights(d, wt);
        const std::vector<double> absprod = abs_product(d);
        for (const EpilogueCase& e : all_epilogues()) {
          const std::vector<float> want = run(Isa::kPortable, d, e, 1);  // float32 reference
          const std::vector<float> got = run_weights(isa, d, W.data(), wt, e, 1);
          const Comparison c = compare(d, e, got, want, absprod);
          worst_abs = std::max(worst_abs, c.max_abs);
          worst_ratio = std::max(worst_ratio, c.max_ratio);
          EXPECT_LE(c.max_ratio, 1.0) << isa_name(isa) << " " << wt_name(wt) << " " << describe(s, true) << " "
                                      << describe(e) << ": max |diff| " << c.max_abs << " " << c.worst;
          // The same variant on float32 weights: the vectorised ones pack identical panels, so bit-identical.
          const bool same = same_bits(got, run(isa, d, e, 1));
          if (isa != Isa::kPortable)
            EXPECT_TRUE(same) << isa_name(isa) << " " << wt_name(wt) << " " << describe(s, true) << " " << describe(e)
                              << ": differs from gemm() on the widened weights";
          identical += same;
          ++total;
        }
      }
      std::printf(
          "[ %s %s weights vs float32 portable on widened weights ] max |diff| %.3g, max %.3f × tolerance; "
          "bit-identical to %s gemm() on widened weights in %d of %d cases\n",
          isa_name(isa), wt_name(wt), worst_abs, worst_ratio, isa_name(isa), identical, total);
    }
  }
}

TEST(GemmWeights, ResultsAreBitIdenticalForOneTwoAndThreeThreads) {
  const std::vector<Shape> cases = {
      {1025, 1024, 96, 0, 0, 0}, {300, 3072, 64, 0, 0, 0}, {257, 64, 520, 0, 3072 - 64, 0},
      {61, 200, 300, 5, 3, 2},   {13, 1025, 64, 0, 0, 0},  {40, 70, 4096, 0, 0, 0},
  };
  const EpilogueCase e{0.5f, true, true, 2};
  for (WeightType wt : {WeightType::kBF16, WeightType::kF16}) {
    for (const Shape& s : cases) {
      Data d = make_data(s, true, 99u);
      const std::vector<std::uint16_t> W = round_weights(d, wt);
      for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
        if (!isa_available(isa)) continue;
        const std::vector<float> one = run_weights(isa, d, W.data(), wt, e, 1);
        for (int threads : {2, 3})
          EXPECT_TRUE(same_bits(one, run_weights(isa, d, W.data(), wt, e, threads)))
              << isa_name(isa) << " " << wt_name(wt) << " " << describe(s, true) << ": " << threads
              << " threads differ from 1";
      }
    }
  }
}

TEST(GemmWeights, Float32WeightsAreExactlyGemmWithTransposedB) {
  const std::vector<EpilogueCase> epilogues = {
      {1.0f, false, false, 0}, {0.125f, true, true, 1}, {1.0f, true, false, 2}};
  for (const Shape& s : weight_shapes()) {
    const Data d = make_data(s, true, 31u + static_cast<unsigned>(s.K));
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
      if (!isa_available(isa)) continue;
      for (const EpilogueCase& e : epilogues)
        for (int threads : {1, 2})
          EXPECT_TRUE(same_bits(run_weights(isa, d, d.B.data(), WeightType::kF32, e, threads), run(isa, d, e, threads)))
              << isa_name(isa) << " " << describe(s, true) << " " << describe(e);
    }
  }
}

TEST(GemmWeights, EmptyProblemsLeaveCUntouchedAndKZeroGivesTheEpilogueOfZero) {
  for (WeightType wt : {WeightType::kBF16, WeightType::kF16}) {
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
      if (!isa_available(isa)) continue;
      std::vector<float> C(12, 7.0f);
      const float A[1] = {1.0f}, bias[4] = {1.0f, -2.0f, 3.0f, 0.5f};
      const std::uint16_t W[1] = {0x3c00};
      gemm_weights(isa, 0, 4, 3, A, 3, W, wt, 3, C.data(), 4, Epilogue{}, 2);
      gemm_weights(isa, 3, 0, 3, A, 3, W, wt, 3, C.data(), 4, Epilogue{}, 2);
      for (float c : C) EXPECT_EQ(c, 7.0f) << isa_name(isa) << " " << wt_name(wt);
      Epilogue ep;
      ep.bias = bias;
      gemm_weights(isa, 3, 4, 0, A, 1, W, wt, 1, C.data(), 4, ep, 2);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 4; ++j) EXPECT_EQ(C[i * 4 + j], bias[j]) << isa_name(isa) << " " << wt_name(wt);
    }
  }
}

TEST(GemmBlocked, HalfWeightsThroughPlainLanesEqualTheFloatGemmOnTheWidenedWeights) {
  // The 14×32 (AVX-512) geometry with small blocks: the half-weight packing (8×8 blocks and the
  // scalar edges) must give exactly the panels of the float packing.
  using V = ScalarLanes<16>;
  const Blocking bl{128, 28, std::size_t{1} << 14};
  const std::vector<EpilogueCase> epilogues = {{1.0f, false, false, 0}, {0.5f, true, true, 2}};
  for (WeightType wt : {WeightType::kBF16, WeightType::kF16}) {
    for (const Shape& s : weight_shapes()) {
      Data d = make_data(s, true, 55u + static_cast<unsigned>(s.N));
      const std::vector<std::uint16_t> W = round_weights(d, wt);
      for (const EpilogueCase& e : epilogues) {
        std::vector<float> out[2];
        for (int half = 0; half < 2; ++half) {
          std::vector<float>& C = out[half];
          C.assign(static_cast<std::size_t>(s.M) * d.ldc, 12345.0f);
          Epilogue ep;
          ep.alpha = e.alpha;
          ep.bias = e.bias ? d.bias.data() : nullptr;
          ep.gelu = e.gelu;
          if (e.residual == 2) {
            for (int i = 0; i < s.M; ++i)
              std::memcpy(&C[i * d.ldc], &d.residual[i * d.ldc], sizeof(float) * static_cast<std::size_t>(s.N));
            ep.residual = C.data();
            ep.ldr = d.ldc;
          }
          blocked::Problem p{s.M, s.N, s.K, d.A.data(), d.lda, d.B.data(), d.ldb, true, C.data(), d.ldc, ep};
          if (half) {
            p.B = nullptr;
            p.Bh = W.data();
            p.wtype = wt;
          }
          blocked::gemm<V, 14, 2, true>(p, bl, 1);
        }
        EXPECT_TRUE(same_bits(out[0], out[1])) << wt_name(wt) << " " << describe(s, true) << " " << describe(e);
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Stacked weights (the query, key and value projections as one GEMM) and the blocking.

// Also: the same weights packed once (pack_panels, f16 widened there) through gemm_packed.
TEST(GemmWeightsStacked, IsBitIdenticalToOneCallPerSegmentAndToPackedPanels) {
  std::mt19937 rng(23);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  // seg_rows 37: segments meet inside an NR panel and inside an 8-row transpose group.
  for (const int seg_rows : {64, 37, 8}) {
    const int M = 61, K = 70, S = 3, N = S * seg_rows;
    const std::ptrdiff_t ldw = K + 2, ldc = N + 5;
    std::vector<float> A(static_cast<std::size_t>(M) * K), bias(N), Wf[S];
    std::vector<std::uint16_t> Wh[S];
    for (float& x : A) x = nd(rng);
    for (float& x : bias) x = nd(rng);
    for (int s = 0; s < S; ++s) {
      Wf[s].resize(static_cast<std::size_t>(seg_rows) * ldw);
      Wh[s].resize(Wf[s].size());
      for (std::size_t i = 0; i < Wf[s].size(); ++i) {
        Wf[s][i] = nd(rng);
        Wh[s][i] = float_to_half(Wf[s][i]);
      }
    }
    for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
      if (!isa_available(isa)) continue;
      for (WeightType wt : {WeightType::kF32, WeightType::kF16}) {
        const void* W[S];
        for (int s = 0; s < S; ++s)
          W[s] =
              wt == WeightType::kF32 ? static_cast<const void*>(Wf[s].data()) : static_cast<const void*>(Wh[s].data());
        Epilogue ep;
        ep.bias = bias.data();
        ep.gelu = true;
        std::vector<float> stacked(static_cast<std::size_t>(M) * ldc, 3.0f), apart = stacked;
        kernels(isa).gemm_weights_stacked(M, seg_rows, S, K, A.data(), K, W, wt, ldw, stacked.data(), ldc, ep, 2);
        for (int s = 0; s < S; ++s) {
          Epilogue e = ep;
          e.bias = bias.data() + s * seg_rows;
          gemm_weights(isa, M, seg_rows, K, A.data(), K, W[s], wt, ldw, apart.data() + s * seg_rows, ldc, e, 1);
        }
        EXPECT_TRUE(same_bits(stacked, apart)) << isa_name(isa) << " " << wt_name(wt) << " seg_rows " << seg_rows;
        const KernelTable& kt = kernels(isa);
        if (kt.packed_nr == 0) continue;
        std::vector<float> panels(static_cast<std::size_t>((N + kt.packed_nr - 1) / kt.packed_nr) * kt.packed_nr * K +
                                  16);
        float* aligned = panels.data();
        while (reinterpret_cast<std::uintptr_t>(aligned) % 64 != 0) ++aligned;
        kt.pack_panels(seg_rows, S, K, W, wt, ldw, aligned, 2);
        std::vector<float> packed(stacked.size(), 3.0f);
        kt.gemm_packed(M, N, K, A.data(), K, aligned, packed.data(), ldc, ep, 2);
        EXPECT_TRUE(same_bits(packed, stacked))
            << isa_name(isa) << " " << wt_name(wt) << " seg_rows " << seg_rows << ": packed panels";
      }
    }
  }
}

// Weights packed once (KernelTable::pack_panels + gemm_packed, the path of every float32 linear layer)
// give the bits of packing them on every call: every edge shape, epilogue and thread count, a single
// weight (against gemm with B [N, K]) and three stacked ones, float32 and f16 (against
// gemm_weights_stacked). The portable table has no panels.
TEST(GemmPacked, PortableHasNoPanels) {
  EXPECT_EQ(kernels(Isa::kPortable).packed_nr, 0);
  EXPECT_EQ(kernels(Isa::kPortable).pack_panels, nullptr);
  EXPECT_EQ(kernels(Isa::kPortable).gemm_packed, nullptr);
}

TEST(GemmPacked, IsBitIdenticalToPackingOnEveryCall) {
  int checked = 0;
  for (Isa isa : {Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa) || kernels(isa).isa != isa) continue;
    EXPECT_GT(kernels(isa).packed_nr, 0) << isa_name(isa);
    // Plus a wide one: columns taken in chunks by the threads (gemm_chunked: N of at least four
    // panels a thread), A packed once for all, K over several kc blocks (in-place residual set aside).
    std::vector<Shape> wide = shapes();
    wide.push_back({300, 1000, 600, 2, 3, 5});  // M over one mc block too
    // Tall and narrow with the weights packed: the threads split the rows, not the columns (at most 16
    // panels and at least 16 row tiles a thread, on AVX2 and AVX-512 at 2 and 3 threads).
    wide.push_back({700, 520, 300, 0, 0, 0});
    for (const Shape& s : wide) {
      const Data d = make_data(s, /*b_trans=*/true, 99u + static_cast<unsigned>(s.M * 31 + s.N * 7 + s.K));
      for (const EpilogueCase& e : all_epilogues())
        for (int threads : {1, 2, 3}) {
          const std::vector<float> want = run(isa, d, e, 1), got = run(isa, d, e, threads, /*packed=*/true);
          EXPECT_TRUE(same_bits(got, want))
              << isa_name(isa) << " " << describe(s, true) << " " << describe(e) << " threads " << threads;
          ++checked;
        }
    }
  }
  if (checked == 0) GTEST_SKIP() << "no vector kernel table on this CPU";
}

#ifdef VITMSN_PROGRAM_DIR
// The blocking (VITMSN_GEMM_BLOCKING=kc,mc,packed_b_floats) changes only the speed: features of the
// tiny model are bit-identical under very different blockings, for every kernel variant this CPU has
// (one process per setting: the blocking is read once per process).
TEST(Gemm, FeaturesAreBitIdenticalForAnyBlocking) {
  const std::string dir = test::temp_dir();
  const std::string args = " --model " + test::data_path("models/tiny") + " --pool none --threads 2 " +
                           test::data_path("images/chelsea.png") + " " + test::data_path("images/camera.png");
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    std::string first;
    int n = 0;
    for (const char* blocking : {"", "64,28,4096", "8,14,1", "200,140,65536", "1024,2048,8388608"}) {
      const std::string out = dir + "/" + isa_name(isa) + "-" + std::to_string(n++) + ".safetensors";
      const std::string env = std::string("VITMSN_ISA=") + isa_name(isa) +
                              (*blocking ? std::string(" VITMSN_GEMM_BLOCKING=") + blocking : std::string());
      const test::ProgramRun r =
          test::run_command(env + " " + std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract --output " + out + args);
      ASSERT_EQ(r.status, 0) << r.output;
      const std::string bytes = test::read_text(out);
      ASSERT_GT(bytes.size(), 2u * 1025 * 64 * 4) << out;
      if (first.empty()) {
        first = bytes;
      } else {
        EXPECT_TRUE(bytes == first) << isa_name(isa) << ": blocking " << blocking << " changed the features";
      }
    }
  }
}
#endif

}  // namespace
}  // namespace vitmsn::detail
