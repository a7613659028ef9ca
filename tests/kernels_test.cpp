// The compute kernels: every vectorised GEMM variant against the portable (Eigen) one over edge
// shapes, strides, both B layouts and every epilogue; bit-identity across thread counts; the
// vectorised GELU against scalar references. Variants the CPU lacks are skipped.
#include "cpu/kernels.hpp"

#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cpu/attention_blocked.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/half.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/int8_format.hpp"
#include "ops.hpp"
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

// Runs one GEMM; C starts as the residual (in place) or as a canary that must be overwritten. Elements
// of C's padding must survive. packed (b_trans only): through pack_panels + gemm_packed.
std::vector<float> run(Isa isa, const Data& d, const EpilogueCase& e, int threads, bool packed = false) {
  const Shape& s = d.s;
  std::vector<float> C(static_cast<std::size_t>(s.M) * d.ldc, 12345.0f);
  Epilogue ep;
  ep.alpha = e.alpha;
  ep.bias = e.bias ? d.bias.data() : nullptr;
  ep.gelu = e.gelu;
  if (e.residual == 1) {
    ep.residual = d.residual.data();
    ep.ldr = d.ldc;
  } else if (e.residual == 2) {
    for (int i = 0; i < s.M; ++i)
      std::memcpy(&C[i * d.ldc], &d.residual[i * d.ldc], sizeof(float) * static_cast<std::size_t>(s.N));
    ep.residual = C.data();
    ep.ldr = d.ldc;
  }
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

#define SKIP_UNLESS_AVAILABLE(isa)                                           \
  if (!isa_available(isa))                                                   \
  GTEST_SKIP() << isa_name(isa)                                              \
               << " is not available here (not compiled in, or this CPU/OS " \
                  "lacks it)"

// ---------------------------------------------------------------------------------------------

TEST(Kernels, PortableIsAlwaysAvailableAndDetectedIsAvailable) {
  EXPECT_TRUE(isa_available(Isa::kPortable));
  EXPECT_TRUE(isa_available(detected_isa()));
  EXPECT_STREQ(isa_name(Isa::kPortable), "portable");
  EXPECT_STREQ(isa_name(Isa::kAvx2), "avx2");
  EXPECT_STREQ(isa_name(Isa::kAvx512), "avx512");
  std::printf("[ detected ] %s\n", isa_name(detected_isa()));
}

// The default thread count follows the process's CPU affinity, not the machine's CPU count: a child
// process limited to CPU 0 must get 1 (std::thread::hardware_concurrency() would still say all).
TEST(Kernels, DefaultThreadsFollowsTheCpuAffinity) {
  cpu_set_t all;
  CPU_ZERO(&all);
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  EXPECT_EQ(default_threads(), CPU_COUNT(&all));
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) _exit(100);
    _exit(default_threads());
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << "threads seen by a process pinned to one CPU (100: could not pin)";
}

// The peak probe counts exactly the FLOPs its chains do: 2 per lane and chain per round, linear in
// the rounds (a wrong lane or chain count would misstate every share of the peak vitmsn-bench prints).
TEST(Kernels, FmaBurstCountsItsFlops) {
  struct Expect {
    Isa isa;
    double per_round;
  } cases[] = {{Isa::kAvx2, 2.0 * 8 * 12}, {Isa::kAvx512, 2.0 * 16 * 16}};
  for (const Expect& e : cases) {
    if (!isa_available(e.isa)) continue;
    EXPECT_EQ(kernels(e.isa).fma_burst(1), e.per_round) << isa_name(e.isa);
    EXPECT_EQ(kernels(e.isa).fma_burst(10), 10 * e.per_round) << isa_name(e.isa);
  }
  const double portable = kernels(Isa::kPortable).fma_burst(1);
  EXPECT_EQ(kernels(Isa::kPortable).fma_burst(4), 4 * portable);
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
// plain C++ lanes: checks the tiling, packing and edge logic of the AVX-512 build on any CPU.

template <int N>
struct ScalarLanes {
  struct R {
    float v[N];
  };
  struct M {
    bool v[N];
  };
  static constexpr int kLanes = N;
  template <class F>
  static R map(F f) {
    R r;
    for (int i = 0; i < N; ++i) r.v[i] = f(i);
    return r;
  }
  static R zero() {
    return map([](int) { return 0.0f; });
  }
  static R set1(float x) {
    return map([x](int) { return x; });
  }
  static R load(const float* p) {
    return map([p](int i) { return p[i]; });
  }
  static void store(float* p, R v) {
    for (int i = 0; i < N; ++i) p[i] = v.v[i];
  }
  static R load_n(const float* p, int n) {
    return map([p, n](int i) { return i < n ? p[i] : 0.0f; });
  }
  static void store_n(float* p, R v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
  }
  static M lanes_below(int n) {
    M m;
    for (int i = 0; i < N; ++i) m.v[i] = i < n;
    return m;
  }
  static R bcast(const float* p) { return set1(*p); }
  static R fma(R a, R b, R c) {
    return map([&](int i) { return std::fma(a.v[i], b.v[i], c.v[i]); });
  }
  static R fnma(R a, R b, R c) {
    return map([&](int i) { return std::fma(-a.v[i], b.v[i], c.v[i]); });
  }
  static R add(R a, R b) {
    return map([&](int i) { return a.v[i] + b.v[i]; });
  }
  static R sub(R a, R b) {
    return map([&](int i) { return a.v[i] - b.v[i]; });
  }
  static R mul(R a, R b) {
    return map([&](int i) { return a.v[i] * b.v[i]; });
  }
  static R min(R a, R b) {
    return map([&](int i) { return a.v[i] < b.v[i] ? a.v[i] : b.v[i]; });
  }
  static R max(R a, R b) {
    return map([&](int i) { return a.v[i] > b.v[i] ? a.v[i] : b.v[i]; });
  }
  static R abs(R x) {
    return map([&](int i) { return std::fabs(x.v[i]); });
  }
  static R sign_of(R x) {
    return map([&](int i) { return std::signbit(x.v[i]) ? -0.0f : 0.0f; });
  }
  static R or_bits(R a, R b) {
    return map([&](int i) { return std::signbit(b.v[i]) ? -std::fabs(a.v[i]) : a.v[i]; });
  }
  static M lt(R a, R b) {
    M m;
    for (int i = 0; i < N; ++i) m.v[i] = a.v[i] < b.v[i];
    return m;
  }
  static R select(M m, R a, R b) {
    return map([&](int i) { return m.v[i] ? a.v[i] : b.v[i]; });
  }
  static R round(R x) {
    return map([&](int i) { return std::nearbyint(x.v[i]); });
  }
  static R pow2(R n) {
    return map([&](int i) { return std::ldexp(1.0f, static_cast<int>(n.v[i])); });
  }
  static float hmax(R v) {
    float m = v.v[0];
    for (int i = 1; i < N; ++i) m = v.v[i] > m ? v.v[i] : m;
    return m;
  }
  static float hsum(R v) {
    float s = 0.0f;
    for (int i = 0; i < N; ++i) s += v.v[i];
    return s;
  }
  static void transpose8(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
  // Widening with src/cpu/half.hpp's scalar conversions (the vector packing is checked against them).
  template <WeightType T>
  static void transpose8_half(const std::uint16_t* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) {
        const std::uint16_t h = src[r * lds + c];
        dst[c * ldd + r] = T == WeightType::kBF16 ? bf16_to_float(h) : half_to_float(h);
      }
  }
};

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
  std::vector<float> C(static_cast<std::size_t>(s.M) * d.ldc, 12345.0f);
  Epilogue ep;
  ep.alpha = e.alpha;
  ep.bias = e.bias ? d.bias.data() : nullptr;
  ep.gelu = e.gelu;
  if (e.residual == 1) {
    ep.residual = d.residual.data();
    ep.ldr = d.ldc;
  } else if (e.residual == 2) {
    for (int i = 0; i < s.M; ++i)
      std::memcpy(&C[i * d.ldc], &d.residual[i * d.ldc], sizeof(float) * static_cast<std::size_t>(s.N));
    ep.residual = C.data();
    ep.ldr = d.ldc;
  }
  gemm_weights(isa, s.M, s.N, s.K, d.A.data(), d.lda, W, wt, d.ldb, C.data(), d.ldc, ep, threads);
  return C;
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
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
// Fused attention (attention_head): every variant against a float64 evaluation of the definition
// and against the portable entry, on the model's shape and on edge shapes (token counts around the
// tile widths, head dims that are not a multiple of the vector width); the CLS row too.

struct AttentionCase {
  int tokens, head_dim;
};

std::vector<AttentionCase> attention_cases() {
  return {{1025, 64}, {1025, 16}, {1, 64}, {2, 16}, {17, 64}, {33, 1}, {50, 40}, {127, 63}, {200, 17}, {1601, 64}};
}

struct AttentionData {
  int tokens, hd;
  std::ptrdiff_t ld;
  std::vector<float> qkv;  // q | k | v side by side, ld = 3·hd + 5
};

AttentionData make_attention_data(const AttentionCase& c, unsigned seed) {
  AttentionData d{c.tokens, c.head_dim, 3 * c.head_dim + 5, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.5f);  // scores up to ~±20: a peaked softmax
  d.qkv.resize(static_cast<std::size_t>(d.tokens) * d.ld);
  for (float& x : d.qkv) x = nd(rng);
  return d;
}

/// ctx [tokens, hd] (ldc = hd + 3, the padding must stay untouched) and the CLS row of one variant.
struct AttentionResult {
  std::vector<float> ctx, cls;
};

template <class Fn>
AttentionResult run_attention(const AttentionData& d, Fn&& head) {
  AttentionResult r;
  const std::ptrdiff_t ldc = d.hd + 3;
  r.ctx.assign(static_cast<std::size_t>(d.tokens) * ldc, 777.0f);
  r.cls.assign(static_cast<std::size_t>(d.tokens), -1.0f);
  head(d.qkv.data(), d.qkv.data() + d.hd, d.qkv.data() + 2 * d.hd, d.ld, d.tokens, d.hd,
       1.0f / std::sqrt(static_cast<float>(d.hd)), r.ctx.data(), ldc, r.cls.data());
  return r;
}

/// Largest |got − exact| over ctx (exact: float64 softmax·v) and over the CLS row; padding checked.
void compare_attention(const AttentionData& d, const AttentionResult& got, const char* what, double* worst_ctx,
                       double* worst_cls) {
  const std::ptrdiff_t ldc = d.hd + 3;
  const double scale = 1.0 / std::sqrt(static_cast<double>(static_cast<float>(d.hd)));
  std::vector<double> p(static_cast<std::size_t>(d.tokens));
  const int step = d.tokens > 300 ? 7 : 1;
  for (int i = 0; i < d.tokens; i += (i == 0 ? 1 : step)) {
    double mx = -1e300;
    for (int j = 0; j < d.tokens; ++j) {
      double s = 0.0;
      for (int c = 0; c < d.hd; ++c) s += static_cast<double>(d.qkv[i * d.ld + c]) * d.qkv[j * d.ld + d.hd + c];
      p[j] = s * static_cast<float>(scale);
      mx = std::max(mx, p[j]);
    }
    double z = 0.0;
    for (double& v : p) z += (v = std::exp(v - mx));
    for (int c = 0; c < d.hd; ++c) {
      double o = 0.0;
      for (int j = 0; j < d.tokens; ++j) o += p[j] * d.qkv[j * d.ld + 2 * d.hd + c];
      *worst_ctx = std::max(*worst_ctx, std::fabs(o / z - got.ctx[i * ldc + c]));
    }
    for (int c = d.hd; c < ldc; ++c) EXPECT_EQ(got.ctx[i * ldc + c], 777.0f) << what << ": padding written";
    if (i == 0)
      for (int j = 0; j < d.tokens; ++j) *worst_cls = std::max(*worst_cls, std::fabs(p[j] / z - got.cls[j]));
  }
}

// |values| are N(0, 1.5): a context value is a weighted mean of them, so an error of 2e-5 is ~1e-5
// relative to their spread; the float64 reference itself sees the float inputs exactly.
constexpr double kAttentionCtxTol = 2e-5;
constexpr double kAttentionClsTol = 1e-6;

// Every variant against float64; the vector ones against the portable one too.
void check_attention(Isa isa) {
  const bool vs_portable = isa != Isa::kPortable;
  double worst_ctx = 0.0, worst_cls = 0.0, worst_vs_portable = 0.0;
  for (const AttentionCase& c : attention_cases()) {
    const AttentionData d = make_attention_data(c, 99u + static_cast<unsigned>(c.tokens * 7 + c.head_dim));
    const AttentionResult got = run_attention(d, kernels(isa).attention_head);
    double ctx_err = 0.0, cls_err = 0.0;
    compare_attention(d, got, isa_name(isa), &ctx_err, &cls_err);
    EXPECT_LE(ctx_err, kAttentionCtxTol) << isa_name(isa) << " tokens " << c.tokens << " head_dim " << c.head_dim;
    EXPECT_LE(cls_err, kAttentionClsTol) << isa_name(isa) << " tokens " << c.tokens << " head_dim " << c.head_dim;
    if (vs_portable) {
      const AttentionResult ref = run_attention(d, kernels(Isa::kPortable).attention_head);
      for (std::size_t i = 0; i < got.ctx.size(); ++i)
        worst_vs_portable = std::max(worst_vs_portable, static_cast<double>(std::fabs(got.ctx[i] - ref.ctx[i])));
    }
    worst_ctx = std::max(worst_ctx, ctx_err);
    worst_cls = std::max(worst_cls, cls_err);
  }
  std::printf("[ %s attention ] max |ctx - exact| %.3g (tolerance %.0e), max |cls - exact| %.3g (%.0e)", isa_name(isa),
              worst_ctx, kAttentionCtxTol, worst_cls, kAttentionClsTol);
  if (vs_portable) std::printf(", max |ctx - portable| %.3g", worst_vs_portable);
  std::printf("\n");
  if (vs_portable) EXPECT_LE(worst_vs_portable, 2 * kAttentionCtxTol);
}

TEST(Attention, PortableMatchesTheDefinition) { check_attention(Isa::kPortable); }
TEST(Attention, Avx2MatchesTheDefinitionAndPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_attention(Isa::kAvx2);
}
TEST(Attention, Avx512MatchesTheDefinitionAndPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  check_attention(Isa::kAvx512);
}

// The AVX-512 and AVX2 geometries of the fused kernel through plain C++ lanes: their tiling and edge
// logic is checked on any CPU (the AVX-512 one on CPUs that cannot run it).
TEST(AttentionBlocked, BothGeometriesThroughPlainLanesMatchTheDefinition) {
  const auto lanes16 = [](const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int hd,
                          float scale, float* ctx, std::ptrdiff_t ldc, float* cls) {
    attn_blocked::attention_head<ScalarLanes<16>, 14, 6, 4, 126>(q, k, v, ld, tokens, hd, scale, ctx, ldc, cls);
  };
  const auto lanes8 = [](const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int hd,
                         float scale, float* ctx, std::ptrdiff_t ldc, float* cls) {
    attn_blocked::attention_head<ScalarLanes<8>, 6, 3, 3, 120>(q, k, v, ld, tokens, hd, scale, ctx, ldc, cls);
  };
  for (const AttentionCase& c : {AttentionCase{1025, 64}, AttentionCase{50, 40}, AttentionCase{17, 1},
                                 AttentionCase{127, 63}, AttentionCase{3, 16}}) {
    const AttentionData d = make_attention_data(c, 5u + static_cast<unsigned>(c.tokens + c.head_dim));
    for (int g = 0; g < 2; ++g) {
      double ctx_err = 0.0, cls_err = 0.0;
      compare_attention(d, g == 0 ? run_attention(d, lanes16) : run_attention(d, lanes8),
                        g == 0 ? "16 lanes" : "8 lanes", &ctx_err, &cls_err);
      EXPECT_LE(ctx_err, kAttentionCtxTol)
          << (g == 0 ? "16" : "8") << " lanes, tokens " << c.tokens << " hd " << c.head_dim;
      EXPECT_LE(cls_err, kAttentionClsTol)
          << (g == 0 ? "16" : "8") << " lanes, tokens " << c.tokens << " hd " << c.head_dim;
    }
  }
}

TEST(Attention, ResultsAreBitIdenticalForOneTwoAndThreeThreads) {
  // Two images of 1025 tokens, 4 heads of 64: (image, head) tasks spread differently over threads.
  const int images = 2, tokens = 1025, heads = 4, hd = 64, D = heads * hd;
  std::mt19937 rng(17);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> qkv(static_cast<std::size_t>(images) * tokens * 3 * D);
  for (float& x : qkv) x = nd(rng);
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    std::vector<float> out[3], cls[3];
    for (int t = 0; t < 3; ++t) {
      out[t].assign(static_cast<std::size_t>(images) * tokens * D, 0.0f);
      cls[t].assign(static_cast<std::size_t>(images) * heads * tokens, 0.0f);
      attention(isa, qkv.data(), 3 * D, images, tokens, heads, hd, 0.125f, out[t].data(), D, cls[t].data(), t + 1);
    }
    EXPECT_TRUE(same_bits(out[0], out[1]) && same_bits(out[0], out[2])) << isa_name(isa);
    EXPECT_TRUE(same_bits(cls[0], cls[1]) && same_bits(cls[0], cls[2])) << isa_name(isa);
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
    for (const Shape& s : shapes()) {
      const Data d = make_data(s, /*b_trans=*/true, 99u + static_cast<unsigned>(s.M * 31 + s.N * 7 + s.K));
      for (const EpilogueCase& e : all_epilogues())
        for (int threads : {1, 3}) {
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

// ---------------------------------------------------------------------------------------------
// int8 GEMM: every variant bit-identical to the portable entry (without GELU, whose erf differs
// between the portable and the vector code), across shapes, segments, padding and thread counts;
// the AVX512-VNNI and vpmaddubsw geometries also through plain C++ integer lanes.

/// Integer lanes in plain C++ for int8_blocked.hpp: vpdpbusd semantics (Offset: u8·s8 in fours) or
/// the sign trick with int16 saturation checked (vpmaddubsw), on N int32 lanes.
template <int N, bool Offset>
struct ScalarInt8 {
  using V = ScalarLanes<N>;
  struct Ri {
    std::int32_t v[N];
  };
  using Rf = typename V::R;
  static constexpr int kLanes = N;
  static constexpr bool kOffset = Offset;
  static Ri zero_i() { return Ri{}; }
  static Rf zero_f() { return V::zero(); }
  static Ri load_b(const std::int8_t* p) {
    Ri r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static Ri bcast4(const std::uint8_t* p) {
    std::int32_t x;
    std::memcpy(&x, p, 4);
    Ri r;
    for (int i = 0; i < N; ++i) r.v[i] = x;
    return r;
  }
  static Ri bcast_u8(std::uint8_t b) {
    Ri r;
    for (int i = 0; i < N; ++i) r.v[i] = static_cast<std::int32_t>(0x01010101u * b);
    return r;
  }
  static Ri dot(Ri acc, Ri a, Ri b) {
    for (int i = 0; i < N; ++i) {
      std::uint8_t ab[4];
      std::int8_t bb[4];
      std::memcpy(ab, &a.v[i], 4);
      std::memcpy(bb, &b.v[i], 4);
      if (Offset) {
        for (int t = 0; t < 4; ++t) acc.v[i] += static_cast<std::int32_t>(ab[t]) * bb[t];
      } else {
        for (int t = 0; t < 4; t += 2) {  // vpmaddubsw pairs of |a|·(sign(a)·b): must not saturate
          std::int32_t pair = 0;
          for (int u = t; u < t + 2; ++u) {
            const int as = static_cast<std::int8_t>(ab[u]);
            const int mag = as < 0 ? -as : as, sb = as < 0 ? -bb[u] : (as == 0 ? 0 : bb[u]);
            pair += mag * sb;
          }
          EXPECT_LE(std::abs(pair), 32767) << "vpmaddubsw would saturate";
          acc.v[i] += pair;
        }
      }
    }
    return acc;
  }
  static Ri load_i(const std::int32_t* p) {
    Ri r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static void store_i(std::int32_t* p, Ri v) { std::memcpy(p, v.v, sizeof v.v); }
  static Ri neg_i(Ri v) {
    for (auto& x : v.v) x = -x;
    return v;
  }
  static Rf to_float(Ri v) {
    Rf r;
    for (int i = 0; i < N; ++i) r.v[i] = static_cast<float>(v.v[i]);
    return r;
  }
  static Rf set1_f(float x) { return V::set1(x); }
  static Rf fma_f(Rf a, Rf b, Rf c) { return V::fma(a, b, c); }
  static Rf mul_f(Rf a, Rf b) { return V::mul(a, b); }
  static Rf load_f_n(const float* p, int n) { return V::load_n(p, n); }
  static void store_f(float* p, Rf v) { V::store(p, v); }
  static void store_f_n(float* p, Rf v, int n) { V::store_n(p, v, n); }
  static float quantize_block(const float* x, int len, std::int8_t* q) {
    return int8::quantize_block_scalar(x, len, q);
  }
};

struct Int8Case {
  int M, seg_rows, segments, K;
};

struct Int8Data {
  Int8Case c;
  int kp;
  std::ptrdiff_t lda, ldc;
  std::vector<float> A, bias, residual;
  std::vector<std::vector<std::int8_t>> W;
  std::vector<std::vector<float>> scales;
};

Int8Data make_int8_data(const Int8Case& c, unsigned seed) {
  Int8Data d{c, int8::padded_k(c.K), c.K + 3, c.seg_rows * c.segments + 5, {}, {}, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  d.A.resize(static_cast<std::size_t>(c.M) * d.lda);
  for (float& x : d.A) x = nd(rng);
  for (int i = 0; i < c.M; i += 7) d.A[i * d.lda + (i % c.K)] *= 60.0f;  // outlier values: block scales differ
  d.bias.resize(static_cast<std::size_t>(c.seg_rows) * c.segments);
  for (float& x : d.bias) x = nd(rng);
  d.residual.resize(static_cast<std::size_t>(c.M) * d.ldc);
  for (float& x : d.residual) x = nd(rng);
  for (int s = 0; s < c.segments; ++s) {
    std::vector<float> w(static_cast<std::size_t>(c.seg_rows) * c.K);
    for (float& x : w) x = nd(rng) * 0.05f;
    d.W.emplace_back();
    d.scales.emplace_back();
    int8::quantize_weights(w.data(), c.seg_rows, c.K, c.K, &d.W.back(), &d.scales.back());
  }
  return d;
}

using Int8Fn = void (*)(int, int, int, int, int, const float*, std::ptrdiff_t, const std::int8_t* const*,
                        const float* const*, float*, std::ptrdiff_t, const Epilogue&, int);

/// Element i of epilogue 4's product `pre` (a fixed pattern in [-5, 5)).
float pre_value(std::size_t i) { return static_cast<float>((i * 2654435761u) % 1000) * 0.01f - 5.0f; }

std::vector<float> run_int8(const Int8Data& d, int epilogue, int threads, Int8Fn fn) {
  std::vector<const std::int8_t*> W;
  std::vector<const float*> S;
  for (int s = 0; s < d.c.segments; ++s) {
    W.push_back(d.W[s].data());
    S.push_back(d.scales[s].data());
  }
  std::vector<float> C(static_cast<std::size_t>(d.c.M) * d.ldc, 12345.0f);
  Epilogue ep;
  if (epilogue >= 1) ep.bias = d.bias.data();
  if (epilogue == 2) {  // in-place residual, as the model's x += …
    C = d.residual;
    ep.residual = C.data();
    ep.ldr = d.ldc;
  }
  if (epilogue == 3) ep.gelu = true;
  // 4: the outlier split's inputs: channels 0, K/2 and K−1 left out of the quantization, a product
  // `pre` added before the bias (ldp ≠ ldc), then bias and an in-place residual.
  std::vector<std::uint32_t> excluded(static_cast<std::size_t>(d.kp / int8::kBlock), 0u);
  std::vector<float> pre;
  if (epilogue == 4) {
    for (int ch : {0, d.c.K / 2, d.c.K - 1}) excluded[ch / int8::kBlock] |= 1u << (ch % int8::kBlock);
    const std::ptrdiff_t ldp = d.ldc + 2;
    pre.resize(static_cast<std::size_t>(d.c.M) * ldp);
    for (std::size_t i = 0; i < pre.size(); ++i) pre[i] = pre_value(i);
    ep.int8_excluded = excluded.data();
    ep.int8_pre = pre.data();
    ep.ldp = ldp;
    C = d.residual;
    ep.residual = C.data();
    ep.ldr = d.ldc;
  }
  fn(d.c.M, d.c.seg_rows, d.c.segments, d.c.K, d.kp, d.A.data(), d.lda, W.data(), S.data(), C.data(), d.ldc, ep,
     threads);
  return C;
}

std::vector<Int8Case> int8_cases() {
  return {{1025, 96, 1, 64}, {37, 48, 3, 100}, {5, 16, 1, 32}, {130, 80, 1, 256}, {1, 32, 1, 4096}, {61, 64, 3, 1024}};
}

/// Float64 of the definition for a few rows: the reference the bit-identical chain is anchored to.
double int8_vs_float64(const Int8Data& d, const std::vector<float>& C) {
  double worst = 0.0;
  const int N = d.c.seg_rows * d.c.segments, blocks = d.kp / int8::kBlock;
  std::vector<std::int8_t> q(static_cast<std::size_t>(d.kp));
  for (int t = 0; t < d.c.M; t += 1 + d.c.M / 9) {
    std::vector<float> s(static_cast<std::size_t>(blocks));
    for (int b = 0; b < blocks; ++b)
      s[b] = int8::quantize_block_scalar(&d.A[t * d.lda + b * int8::kBlock],
                                         std::max(0, std::min(int8::kBlock, d.c.K - b * int8::kBlock)),
                                         &q[b * int8::kBlock]);
    for (int n = 0; n < N; ++n) {
      double y = 0.0;
      for (int k = 0; k < d.c.K; ++k)
        y += static_cast<double>(q[k]) * s[k / int8::kBlock] *
             d.W[n / d.c.seg_rows][int8::panel_offset(n % d.c.seg_rows, k, d.kp)];
      y = y * d.scales[n / d.c.seg_rows][n % d.c.seg_rows] + d.bias[n];
      worst = std::max(worst, std::fabs(y - C[t * d.ldc + n]) / (1.0 + std::fabs(y)));
    }
  }
  return worst;
}

/// The data of the vector variants' bit-identity checks (check_int8_variant); PortableMatchesItsDefinition
/// anchors the portable result on it to float64.
unsigned int8_variant_seed(const Int8Case& c) { return 77u + static_cast<unsigned>(c.M + c.K); }

void check_int8_variant(const char* name, Int8Fn fn) {
  std::size_t compared = 0;
  for (const Int8Case& c : int8_cases()) {
    const Int8Data d = make_int8_data(c, int8_variant_seed(c));
    for (int epilogue : {0, 1, 2, 4}) {
      const std::vector<float> want = run_int8(d, epilogue, 1, kernels(Isa::kPortable).gemm_int8);
      for (int threads : {1, 2, 3}) {
        const std::vector<float> got = run_int8(d, epilogue, threads, fn);
        EXPECT_TRUE(same_bits(got, want)) << name << " M " << c.M << " seg_rows " << c.seg_rows << " x " << c.segments
                                          << " K " << c.K << " epilogue " << epilogue << " threads " << threads;
        ++compared;
      }
    }
    // GELU: the vector erf, within the GELU test's tolerance of the portable result.
    const std::vector<float> g0 = run_int8(d, 3, 1, kernels(Isa::kPortable).gemm_int8), g1 = run_int8(d, 3, 2, fn);
    for (std::size_t i = 0; i < g0.size(); ++i) ASSERT_NEAR(g0[i], g1[i], 1e-6 + 2e-6 * std::fabs(g0[i])) << name;
  }
  std::printf("[ %s int8 ] bit-identical to portable in %zu runs (4 epilogues × 3 thread counts × 6 shapes)\n", name,
              compared);
}

// The outlier split's inputs in the portable definition: excluded channels quantize as 0 and `pre`
// enters as fma(f, s_w, pre) — against the same GEMM on A with those channels zeroed, plus pre.
TEST(Int8, ExcludedChannelsAndPreProductFollowTheDefinition) {
  const Int8Data d = make_int8_data({61, 64, 3, 100}, 9u);
  Int8Data zeroed = d;
  for (int t = 0; t < d.c.M; ++t)
    for (int ch : {0, d.c.K / 2, d.c.K - 1}) zeroed.A[t * d.lda + ch] = 0.0f;
  const std::vector<float> split = run_int8(d, 4, 1, kernels(Isa::kPortable).gemm_int8);
  const std::vector<float> plain = run_int8(zeroed, 2, 1, kernels(Isa::kPortable).gemm_int8);  // bias + residual
  const std::ptrdiff_t ldp = d.ldc + 2;
  double worst = 0.0;
  for (int t = 0; t < d.c.M; ++t)
    for (int n = 0; n < d.c.seg_rows * d.c.segments; ++n) {
      const float pre = pre_value(static_cast<std::size_t>(t * ldp + n));
      worst = std::max(worst, static_cast<double>(std::fabs(split[t * d.ldc + n] - (plain[t * d.ldc + n] + pre))));
    }
  EXPECT_LE(worst, 1e-4) << "largest difference from zeroed channels + pre: " << worst;
  EXPECT_GT(worst, 0.0) << "pre enters before the rounding of f·s_w (one fma), so some results differ in the last bit";
}

struct OutlierProductData {
  static constexpr int M = 130, N = 200, K = 96, J = 5;
  static constexpr std::ptrdiff_t lda = K + 1, ldp = N + 3;
  std::vector<float> A, w;
  std::vector<int> ch = {2, 31, 32, 70, 95};
  OutlierProductData() : A(static_cast<std::size_t>(M) * lda), w(static_cast<std::size_t>(J) * N) {
    std::mt19937 rng(3);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (float& x : A) x = nd(rng);
    for (float& x : w) x = nd(rng);
  }
  std::vector<float> run(Isa isa, int threads) const {
    std::vector<float> P(static_cast<std::size_t>(M) * ldp, -1.0f);
    kernels(isa).outlier_product(M, N, J, A.data(), lda, ch.data(), w.data(), P.data(), ldp, threads);
    return P;
  }
};

TEST(Int8, OutlierProductPortableMatchesItsDefinition) {
  const OutlierProductData d;
  const std::vector<float> P = d.run(Isa::kPortable, 2);
  double worst = 0.0;
  for (int t = 0; t < d.M; ++t)
    for (int n = 0; n < d.N; ++n) {
      double y = 0.0;
      for (int j = 0; j < d.J; ++j) y += static_cast<double>(d.A[t * d.lda + d.ch[j]]) * d.w[j * d.N + n];
      worst = std::max(worst, std::fabs(P[t * d.ldp + n] - y) / (1.0 + std::fabs(y)));
    }
  EXPECT_LE(worst, 1e-6) << "largest relative difference from the float64 sum: " << worst;
}

void check_outlier_product(Isa isa) {
  const OutlierProductData d;
  const std::vector<float> want = d.run(Isa::kPortable, 1);
  for (int threads : {1, 2})
    EXPECT_TRUE(same_bits(d.run(isa, threads), want)) << isa_name(isa) << " threads " << threads;
}

TEST(Int8, OutlierProductAvx2IsBitIdenticalToPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_outlier_product(Isa::kAvx2);
}

TEST(Int8, OutlierProductAvx512IsBitIdenticalToPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  check_outlier_product(Isa::kAvx512);
}

TEST(Int8, OutlierChannelsAreTheLargeOnesAtMostMaxOf8AndKOver16) {
  const int M = 300, K = 256;
  std::vector<float> A(static_cast<std::size_t>(M) * K);
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (float& x : A) x = nd(rng);
  EXPECT_TRUE(int8::find_outlier_channels(A.data(), K, M, K).empty()) << "plain Gaussian activations have none";
  for (int t = 0; t < M; ++t) {
    A[t * K + 7] *= 40.0f;
    A[t * K + 200] *= 25.0f;
    A[t * K + 100] *= 2.0f;  // not an outlier
  }
  EXPECT_EQ(int8::find_outlier_channels(A.data(), K, M, K), (std::vector<int>{7, 200}));
  for (int c = 0; c < 40; ++c)  // 40 candidates: the 16 largest (K/16), ascending
    for (int t = 0; t < M; ++t) A[t * K + c] = (t % 2 ? -1.0f : 1.0f) * (200.0f + static_cast<float>(c));
  const std::vector<int> capped = int8::find_outlier_channels(A.data(), K, M, K);
  std::vector<int> want;
  for (int c = 24; c < 40; ++c) want.push_back(c);
  EXPECT_EQ(capped, want);
  std::vector<float> zeros(static_cast<std::size_t>(M) * K, 0.0f);
  EXPECT_TRUE(int8::find_outlier_channels(zeros.data(), K, M, K).empty()) << "a zero median: no split";
}

// gemm_bench's micro-kernel ceiling: the burst does what it counts (FLOPs linear in the calls, the
// tile's size times depth 128) in every table.
TEST(Kernels, MicrokernelBurstCountsItsFlops) {
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    const double one = kernels(isa).microkernel_burst(3), two = kernels(isa).microkernel_burst(6);
    EXPECT_GT(one, 0.0) << isa_name(isa);
    EXPECT_EQ(two, 2.0 * one) << isa_name(isa);
  }
  if (isa_available(Isa::kAvx512)) EXPECT_EQ(kernels(Isa::kAvx512).microkernel_burst(1), 2.0 * 14 * 32 * 128);
  if (isa_available(Isa::kAvx2)) EXPECT_EQ(kernels(Isa::kAvx2).microkernel_burst(1), 2.0 * 6 * 16 * 128);
}

// Also on the data the vector variants are checked bit-identical to portable with (the chain's anchor).
TEST(Int8, PortableMatchesItsDefinition) {
  for (const Int8Case& c : int8_cases())
    for (unsigned seed : {5u + static_cast<unsigned>(c.K), int8_variant_seed(c)}) {
      const Int8Data d = make_int8_data(c, seed);
      const double rel = int8_vs_float64(d, run_int8(d, 1, 1, kernels(Isa::kPortable).gemm_int8));
      EXPECT_LE(rel, 1e-5) << "M " << c.M << " K " << c.K << " seed " << seed;
    }
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
TEST(Int8, Avx2MaddubsIsBitIdenticalToPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  check_int8_variant("avx2 vpmaddubsw", avx2::gemm_int8_maddubs);
}

TEST(Int8, AvxVnniIsBitIdenticalToPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx2);
  if (!cpu_has(CpuFeature::kAvxVnni)) GTEST_SKIP() << "this CPU has no AVX-VNNI";
  check_int8_variant("avx-vnni", avxvnni::gemm_int8_avxvnni);
}
#endif

TEST(Int8, Avx512VnniIsBitIdenticalToPortable) {
  SKIP_UNLESS_AVAILABLE(Isa::kAvx512);
  if (!cpu_has(CpuFeature::kAvx512vnni)) GTEST_SKIP() << "this CPU has no AVX512-VNNI";
  check_int8_variant("avx512-vnni", kernels(Isa::kAvx512).gemm_int8);
}

// The tilings of the vector variants through plain C++ integer lanes: the AVX512-VNNI geometry
// (16 lanes, vpdpbusd with the +128 offset, 6 × 32 tiles) and the vpmaddubsw one (8 lanes, sign
// trick, saturation checked, 2 × 16 tiles), on any CPU.
template <class I, int MR, int NV>
void int8_through_lanes(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                        const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                        const Epilogue& ep, int threads) {
  const int8::Problem p{M, seg_rows * segments, K, A, lda, int8::WeightView{W, w_scale, seg_rows, kp}, C, ldc, ep};
  int8::gemm<I, MR, NV>(p, 2, threads);  // k-slices of 64: several slices even at small K
}

TEST(Int8Blocked, VnniAndMaddubsGeometriesThroughPlainLanesAreBitIdenticalToPortable) {
  for (const Int8Case& c : {Int8Case{61, 64, 3, 100}, Int8Case{29, 48, 1, 256}, Int8Case{5, 16, 1, 32}}) {
    const Int8Data d = make_int8_data(c, 11u + static_cast<unsigned>(c.M));
    for (int epilogue : {0, 1, 2, 4}) {
      const std::vector<float> want = run_int8(d, epilogue, 1, kernels(Isa::kPortable).gemm_int8);
      EXPECT_TRUE(same_bits(run_int8(d, epilogue, 2, int8_through_lanes<ScalarInt8<16, true>, 6, 2>), want))
          << "16 lanes, offset: M " << c.M << " K " << c.K << " epilogue " << epilogue;
      EXPECT_TRUE(same_bits(run_int8(d, epilogue, 2, int8_through_lanes<ScalarInt8<8, false>, 2, 2>), want))
          << "8 lanes, sign trick: M " << c.M << " K " << c.K << " epilogue " << epilogue;
    }
  }
}

TEST(Int8, WeightQuantizationIsPerOutputChannelAndSymmetric) {
  // Row 0: max 2.54 → scale 0.02, exact multiples; row 1 all zero; row 2 a single value.
  const int K = 40;
  std::vector<float> w(3 * K, 0.0f);
  for (int k = 0; k < K; ++k) w[k] = 0.02f * static_cast<float>((k * 37) % 255 - 127);
  w[2 * K + 5] = -3.0f;
  std::vector<std::int8_t> panels;
  std::vector<float> scales;
  int8::quantize_weights(w.data(), 3, K, K, &panels, &scales);
  EXPECT_EQ(panels.size(), static_cast<std::size_t>(16 * 64));  // one panel, K padded to 64
  EXPECT_FLOAT_EQ(scales[0], 2.54f / 127.0f);
  EXPECT_EQ(scales[1], 0.0f);
  EXPECT_FLOAT_EQ(scales[2], 3.0f / 127.0f);
  for (int k = 0; k < K; ++k) EXPECT_EQ(panels[int8::panel_offset(0, k, 64)], (k * 37) % 255 - 127) << k;
  EXPECT_EQ(panels[int8::panel_offset(2, 5, 64)], -127);
  for (int k = K; k < 64; ++k) EXPECT_EQ(panels[int8::panel_offset(0, k, 64)], 0) << "padding";
}

}  // namespace
}  // namespace vitmsn::detail
