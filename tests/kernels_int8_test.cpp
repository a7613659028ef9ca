// The int8 GEMM kernels: every variant bit-identical to the portable entry, the portable one against
// float64 of its definition, the outlier split's inputs (excluded channels, the outlier product), the
// VNNI and vpmaddubsw geometries through plain C++ integer lanes, weight quantization.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/int8_blocked.hpp"
#include "cpu/int8_format.hpp"
#include "cpu/kernels.hpp"
#include "kernel_test_util.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn::detail {
namespace {

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
  // 203 × 2080: rows in 2 or 3 parts (at 2 or 3 threads) and two k-slices, the in-place residual set
  // aside part by part.
  return {{1025, 96, 1, 64}, {37, 48, 3, 100},  {5, 16, 1, 32},    {130, 80, 1, 256},
          {1, 32, 1, 4096},  {61, 64, 3, 1024}, {203, 48, 1, 2080}};
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
  std::printf("[ %s int8 ] bit-identical to portable in %zu runs (4 epilogues × 3 thread counts × 7 shapes)\n", name,
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
  // 203 × 100: 2 row parts at 2 threads (34 groups of 6, 102 of 2), 2 k-slices: the residual set aside per part.
  for (const Int8Case& c :
       {Int8Case{61, 64, 3, 100}, Int8Case{29, 48, 1, 256}, Int8Case{5, 16, 1, 32}, Int8Case{203, 48, 1, 100}}) {
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
