// The fused attention kernel (attention_head) and the attention op over images and heads: every
// variant against a float64 evaluation of the definition and against the portable entry, both
// vector geometries through plain C++ lanes, bit-identity across thread counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "core/ops.hpp"
#include "cpu/attention_blocked.hpp"
#include "cpu/cpu.hpp"
#include "cpu/kernels.hpp"
#include "kernel_test_util.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn::detail {
namespace {

// ---------------------------------------------------------------------------------------------
// Fused attention (attention_head): every variant against a float64 evaluation of the definition
// and against the portable entry, on the model's shape and on edge shapes (token counts around the
// tile widths, head dims that are not a multiple of the vector width); the probabilities too (the
// whole map, and the CLS row alone with the same bits as the map's first row).

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

/// ctx [tokens, hd] (ldc = hd + 3, the padding must stay untouched) and the probabilities of one
/// variant: the whole map [tokens, tokens] (one past its end a canary), or one row alone.
struct AttentionResult {
  std::vector<float> ctx, probs;
};

template <class Fn>
AttentionResult run_attention(const AttentionData& d, Fn&& head, int prob_rows) {
  AttentionResult r;
  const std::ptrdiff_t ldc = d.hd + 3;
  r.ctx.assign(static_cast<std::size_t>(d.tokens) * ldc, 777.0f);
  r.probs.assign(static_cast<std::size_t>(prob_rows) * d.tokens + 1, -1.0f);
  head(d.qkv.data(), d.qkv.data() + d.hd, d.qkv.data() + 2 * d.hd, d.ld, d.tokens, d.hd,
       1.0f / std::sqrt(static_cast<float>(d.hd)), r.ctx.data(), ldc, prob_rows > 0 ? r.probs.data() : nullptr,
       prob_rows);
  EXPECT_EQ(r.probs.back(), -1.0f) << "written past " << prob_rows << " probability rows";
  return r;
}

/// Largest |got − exact| over ctx (exact: float64 softmax·v) and over the probabilities (got holds
/// the whole map); padding checked.
void compare_attention(const AttentionData& d, const AttentionResult& got, const char* what, double* worst_ctx,
                       double* worst_probs) {
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
    for (int j = 0; j < d.tokens; ++j)
      *worst_probs =
          std::max(*worst_probs, std::fabs(p[j] / z - got.probs[static_cast<std::size_t>(i) * d.tokens + j]));
  }
}

// |values| are N(0, 1.5): a context value is a weighted mean of them, so an error of 2e-5 is ~1e-5
// relative to their spread; the float64 reference itself sees the float inputs exactly.
constexpr double kAttentionCtxTol = 2e-5;
// A probability's error is about its score's float32 rounding (scores up to ~±20: ~1.2e-6 relative)
// times the probability: at most ~1e-6 for probabilities near 1 (measured: 1.03e-6, portable).
constexpr double kAttentionProbTol = 2e-6;

/// Asking for probabilities changes nothing else: ctx without them, and the CLS row alone, have
/// the bits of the run that wrote the whole map.
template <class Fn>
void expect_probabilities_change_nothing(const AttentionData& d, Fn&& head, const AttentionResult& full,
                                         const char* what) {
  const AttentionResult none = run_attention(d, head, 0);
  const AttentionResult cls = run_attention(d, head, 1);
  EXPECT_TRUE(same_bits(none.ctx, full.ctx)) << what << ": ctx changed by asking for the map, tokens " << d.tokens;
  EXPECT_TRUE(same_bits(cls.ctx, full.ctx)) << what << ": ctx changed by asking for the CLS row, tokens " << d.tokens;
  EXPECT_TRUE(std::equal(cls.probs.begin(), cls.probs.begin() + d.tokens, full.probs.begin()))
      << what << ": the CLS row alone differs from the map's row 0, tokens " << d.tokens;
}

// Every variant against float64; the vector ones against the portable one too.
void check_attention(Isa isa) {
  const bool vs_portable = isa != Isa::kPortable;
  double worst_ctx = 0.0, worst_probs = 0.0, worst_vs_portable = 0.0;
  for (const AttentionCase& c : attention_cases()) {
    const AttentionData d = make_attention_data(c, 99u + static_cast<unsigned>(c.tokens * 7 + c.head_dim));
    const AttentionResult got = run_attention(d, kernels(isa).attention_head, d.tokens);
    double ctx_err = 0.0, prob_err = 0.0;
    compare_attention(d, got, isa_name(isa), &ctx_err, &prob_err);
    EXPECT_LE(ctx_err, kAttentionCtxTol) << isa_name(isa) << " tokens " << c.tokens << " head_dim " << c.head_dim;
    EXPECT_LE(prob_err, kAttentionProbTol) << isa_name(isa) << " tokens " << c.tokens << " head_dim " << c.head_dim;
    expect_probabilities_change_nothing(d, kernels(isa).attention_head, got, isa_name(isa));
    if (vs_portable) {
      const AttentionResult ref = run_attention(d, kernels(Isa::kPortable).attention_head, 0);
      for (std::size_t i = 0; i < got.ctx.size(); ++i)
        worst_vs_portable = std::max(worst_vs_portable, static_cast<double>(std::fabs(got.ctx[i] - ref.ctx[i])));
    }
    worst_ctx = std::max(worst_ctx, ctx_err);
    worst_probs = std::max(worst_probs, prob_err);
  }
  std::printf("[ %s attention ] max |ctx - exact| %.3g (tolerance %.0e), max |probabilities - exact| %.3g (%.0e)",
              isa_name(isa), worst_ctx, kAttentionCtxTol, worst_probs, kAttentionProbTol);
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

/// The fused head of one vector geometry (N lanes, SMR, PMR, NVP, QB) through plain C++ lanes, with
/// float or bf16 products: the AVX-512 one is <16, 14, 6, 4, 126>, the AVX2 one <8, 6, 3, 3, 120>.
template <bool Bf16, int N, int SMR, int PMR, int NVP, int QB>
void plain_lanes_head(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int hd,
                      float scale, float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows) {
  if constexpr (Bf16)
    attn_blocked::attention_head_bf16<ScalarBf16<N>, SMR, PMR, NVP, QB>(q, k, v, ld, tokens, hd, scale, ctx, ldc, probs,
                                                                        prob_rows);
  else
    attn_blocked::attention_head<ScalarLanes<N>, SMR, PMR, NVP, QB>(q, k, v, ld, tokens, hd, scale, ctx, ldc, probs,
                                                                    prob_rows);
}
constexpr auto* lanes16 = &plain_lanes_head<false, 16, 14, 6, 4, 126>;
constexpr auto* lanes8 = &plain_lanes_head<false, 8, 6, 3, 3, 120>;
constexpr auto* bf16_lanes16 = &plain_lanes_head<true, 16, 14, 6, 4, 126>;
constexpr auto* bf16_lanes8 = &plain_lanes_head<true, 8, 6, 3, 3, 120>;

// The AVX-512 and AVX2 geometries of the fused kernel through plain C++ lanes: their tiling and edge
// logic is checked on any CPU (the AVX-512 one on CPUs that cannot run it).
TEST(AttentionBlocked, BothGeometriesThroughPlainLanesMatchTheDefinition) {
  for (const AttentionCase& c : {AttentionCase{1025, 64}, AttentionCase{50, 40}, AttentionCase{17, 1},
                                 AttentionCase{127, 63}, AttentionCase{3, 16}}) {
    const AttentionData d = make_attention_data(c, 5u + static_cast<unsigned>(c.tokens + c.head_dim));
    for (int g = 0; g < 2; ++g) {
      const auto head = g == 0 ? lanes16 : lanes8;
      const char* what = g == 0 ? "16 lanes" : "8 lanes";
      double ctx_err = 0.0, prob_err = 0.0;
      const AttentionResult got = run_attention(d, head, d.tokens);
      compare_attention(d, got, what, &ctx_err, &prob_err);
      EXPECT_LE(ctx_err, kAttentionCtxTol) << what << ", tokens " << c.tokens << " hd " << c.head_dim;
      EXPECT_LE(prob_err, kAttentionProbTol) << what << ", tokens " << c.tokens << " hd " << c.head_dim;
      expect_probabilities_change_nothing(d, head, got, what);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// bf16 products (attention_head_bf16, bf16 compute): q·factor, k, v and the exponentials rounded to
// bf16, float32 chains of exact bf16 products. Every table's entry, and both vector geometries
// through plain lanes (the ScalarBf16 emulation of vdpbf16ps), against float64 attention without
// rounding; the vector entries against the portable definition too.

// With q, k ~ N(0, 1.5) and hd = 64, a score's error from rounding q and k (2^-9 relative each) is
// ~1e-2 in log2 units, a probability's ~1 % of itself; ctx, a weighted mean of v ~ N(0, 1.5), moves by
// the same ~1 % of its spread plus v's and P's own rounding. Measured maxima are printed.
constexpr double kBf16CtxTol = 6e-2;
constexpr double kBf16ProbTol = 2e-2;

template <class Fn>
void check_bf16_head(Fn&& head, const char* what, double* worst_ctx, double* worst_probs) {
  for (const AttentionCase& c : attention_cases()) {
    const AttentionData d = make_attention_data(c, 99u + static_cast<unsigned>(c.tokens * 7 + c.head_dim));
    const AttentionResult got = run_attention(d, head, d.tokens);
    double ctx_err = 0.0, prob_err = 0.0;
    compare_attention(d, got, what, &ctx_err, &prob_err);
    EXPECT_LE(ctx_err, kBf16CtxTol) << what << " tokens " << c.tokens << " head_dim " << c.head_dim;
    EXPECT_LE(prob_err, kBf16ProbTol) << what << " tokens " << c.tokens << " head_dim " << c.head_dim;
    expect_probabilities_change_nothing(d, head, got, what);
    *worst_ctx = std::max(*worst_ctx, ctx_err);
    *worst_probs = std::max(*worst_probs, prob_err);
  }
}

TEST(AttentionBf16, EveryTableMatchesTheDefinitionWithinBf16Rounding) {
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!isa_available(isa)) continue;
    double ctx = 0.0, probs = 0.0, vs_portable = 0.0;
    check_bf16_head(kernels(isa).attention_head_bf16, isa_name(isa), &ctx, &probs);
    if (isa != Isa::kPortable)
      for (const AttentionCase& c : {AttentionCase{1025, 64}, AttentionCase{127, 63}, AttentionCase{17, 1}}) {
        const AttentionData d = make_attention_data(c, 3u + static_cast<unsigned>(c.tokens));
        const AttentionResult got = run_attention(d, kernels(isa).attention_head_bf16, 0);
        const AttentionResult ref = run_attention(d, kernels(Isa::kPortable).attention_head_bf16, 0);
        for (std::size_t i = 0; i < got.ctx.size(); ++i)
          vs_portable = std::max(vs_portable, static_cast<double>(std::fabs(got.ctx[i] - ref.ctx[i])));
      }
    std::printf(
        "[ %s attention, bf16 products ] max |ctx - exact| %.3g (tolerance %.0e), max |probabilities - exact| "
        "%.3g (%.0e), max |ctx - portable| %.3g\n",
        isa_name(isa), ctx, kBf16CtxTol, probs, kBf16ProbTol, vs_portable);
    // Both compute the same definition; they differ only where exp2 or a sum's order moves a bf16
    // rounding by one step.
    EXPECT_LE(vs_portable, kBf16CtxTol / 4) << isa_name(isa);
  }
}

TEST(AttentionBf16, BothGeometriesThroughPlainLanesMatchTheDefinition) {
  double ctx = 0.0, probs = 0.0;
  check_bf16_head(bf16_lanes16, "16 lanes", &ctx, &probs);
  check_bf16_head(bf16_lanes8, "8 lanes", &ctx, &probs);
  std::printf("[ plain lanes, bf16 products ] max |ctx - exact| %.3g, max |probabilities - exact| %.3g\n", ctx, probs);
}

TEST(AttentionBf16, Avx512EqualsItsPlainLanesEmulationOnTheScores) {
  // With AVX512_BF16, the vector head and its plain-lanes emulation compute the same chains: their
  // probabilities agree to float32 rounding of the softmax (exp2 and the sum's order differ).
  if (!isa_available(Isa::kAvx512) || !cpu_has(CpuFeature::kAvx512bf16)) GTEST_SKIP() << "no AVX512_BF16";
  const AttentionData d = make_attention_data(AttentionCase{1025, 64}, 7u);
  const AttentionResult got = run_attention(d, kernels(Isa::kAvx512).attention_head_bf16, d.tokens);
  const AttentionResult emu = run_attention(d, bf16_lanes16, d.tokens);
  double worst = 0.0;
  for (std::size_t i = 0; i + 1 < got.probs.size(); ++i)
    worst = std::max(worst, static_cast<double>(std::fabs(got.probs[i] - emu.probs[i])));
  std::printf("[ avx512 vs plain lanes, bf16 products ] max |probabilities difference| %.3g\n", worst);
  EXPECT_LE(worst, 1e-6);
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
    // Thread counts 1, 2, 3 with the whole maps; then 2 threads with CLS rows only.
    std::vector<float> out[4], probs[4];
    for (int t = 0; t < 4; ++t) {
      const int prob_rows = t < 3 ? tokens : 1;
      out[t].assign(static_cast<std::size_t>(images) * tokens * D, 0.0f);
      probs[t].assign(static_cast<std::size_t>(images) * heads * prob_rows * tokens, 0.0f);
      attention(isa, qkv.data(), 3 * D, images, tokens, heads, hd, 0.125f, out[t].data(), D, probs[t].data(), prob_rows,
                false, t < 3 ? t + 1 : 2);
    }
    EXPECT_TRUE(same_bits(out[0], out[1]) && same_bits(out[0], out[2]) && same_bits(out[0], out[3])) << isa_name(isa);
    EXPECT_TRUE(same_bits(probs[0], probs[1]) && same_bits(probs[0], probs[2])) << isa_name(isa);
    // The CLS rows of [images, heads, 1, N] are rows 0 of the maps [images, heads, N, N].
    for (int m = 0; m < images * heads; ++m)
      EXPECT_TRUE(std::equal(probs[3].begin() + static_cast<std::ptrdiff_t>(m) * tokens,
                             probs[3].begin() + static_cast<std::ptrdiff_t>(m + 1) * tokens,
                             probs[0].begin() + static_cast<std::ptrdiff_t>(m) * tokens * tokens))
          << isa_name(isa) << ": image·head " << m;
  }
}

}  // namespace
}  // namespace vitmsn::detail
