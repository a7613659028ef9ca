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
#include "cpu/kernels.hpp"
#include "kernel_test_util.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn::detail {
namespace {

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

}  // namespace
}  // namespace vitmsn::detail
