#pragma once
// Fused multi-head attention for one (image, head): ctx = softmax(q·kᵀ·scale)·v, written once over the
// vector-traits type V of gemm_blocked.hpp and instantiated per instruction set (like the GEMM, every
// file that includes this gets its own copy compiled for its own ISA: internal linkage).
//
// The scheme (a blocked softmax that never leaves the cache, equivalent to the online one):
//   once per head   pack kᵀ into panels of NRS = 2·L keys (d-major, as the GEMM's B panels) and copy
//                   v into a dense [keys, hdp] block (hdp = hd rounded up to L);
//   per query block (QB rows, QB·keys floats of scores: about 0.5 MB, in L2)
//     pack the block's q rows k-major in groups of SMR, scaled by scale·log2(e);
//     S = q·kᵀ           SMR×NRS micro-tiles over the panels (scores in log2 units);
//     P = 2^(S − rowmax)  in place, row sums kept;
//     ctx = P·v / rowsum  PMR×(NVP·L) micro-tiles reading P rows in place and v rows from the dense
//                         block; the division by the row sum is the tile's epilogue.
// Work per head: 4·N²·hd FLOPs in the two products, N² exponentials, O(N·hd) packing. Each head is
// computed the same way whatever thread runs it, so results do not depend on the thread count.
//
// Requirements on V beyond gemm_blocked.hpp's: nothing new (exp2 is built from round, pow2, select).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "base/contract.hpp"
#include "cpu/buffer.hpp"
#include "cpu/polynomial.hpp"

namespace vitmsn::detail::attn_blocked {
namespace {

constexpr int imin(int a, int b) { return a < b ? a : b; }
constexpr int imax(int a, int b) { return a > b ? a : b; }

/// 2^t for t <= 0 (softmax arguments in log2 units): 0 below 2^-126, ~1 ulp above. t = n + f with
/// n = round(t), f in [-0.5, 0.5]; 2^f by a degree-6 polynomial (relative error < 2e-9 on that range).
template <class V>
inline typename V::R exp2_poly(typename V::R f) {
  return horner<V>(f, 1.5353362e-4f, 1.3398874e-3f, 9.6181351e-3f, 5.5503340e-2f, 2.4022652e-1f, 6.9314718e-1f, 1.0f);
}

/// True when V has scalef (AVX-512's vscalefps: x·2^n in one instruction, 0 on underflow), announced
/// by a member `static constexpr bool kHasScalef = true`.
template <class V, class = void>
struct HasScalef : std::false_type {};
template <class V>
struct HasScalef<V, std::void_t<decltype(V::kHasScalef)>> : std::bool_constant<V::kHasScalef> {};

template <class V>
inline typename V::R exp2_nonpositive(typename V::R t) {
  using R = typename V::R;
  if constexpr (HasScalef<V>::value) {
    // t = n + f; vscalefps gives 2^n·p(f), and 0 once that is below the smallest normal float.
    const R n = V::round(t);
    const R r = V::scalef(exp2_poly<V>(V::sub(t, n)), n);
    return V::select(V::lt(t, V::set1(-126.0f)), V::zero(), r);
  } else {
    const R lo = V::set1(-126.0f);
    const auto underflow = V::lt(t, lo);
    t = V::max(t, lo);
    const R n = V::round(t);
    return V::select(underflow, V::zero(), V::mul(exp2_poly<V>(V::sub(t, n)), V::pow2(n)));
  }
}

struct Workspace {
  FloatBuffer kp, vp, qp, s, inv;
  FloatBuffer pw, row;  // bf16 products: P rows as pairs of keys, one row of conversions
};

/// 32-bit words (bf16 pairs) in a scratch buffer of floats (same size and alignment).
inline std::uint32_t* words(FloatBuffer& b, std::size_t n) { return reinterpret_cast<std::uint32_t*>(b.get(n)); }

inline Workspace& workspace() {
  static thread_local Workspace ws;
  return ws;
}

/// kp[p][d][j] = k[(p·NRS + j)·ld + d] for the `keys` keys, zeros past them (NRS-wide panels).
template <class V, int NRS>
void pack_k(const float* k, std::ptrdiff_t ld, int keys, int hd, float* kp) {
  const int panels = (keys + NRS - 1) / NRS;
  for (int p = 0; p < panels; ++p) {
    float* dst = kp + static_cast<std::ptrdiff_t>(p) * hd * NRS;
    for (int j8 = 0; j8 < NRS; j8 += 8) {
      const int key0 = p * NRS + j8;
      const int rows = imax(0, imin(8, keys - key0));
      int d = 0;
      if (rows == 8)
        for (; d + 8 <= hd; d += 8) V::transpose8(k + key0 * ld + d, ld, dst + d * NRS + j8, NRS);
      for (; d < hd; ++d)
        for (int r = 0; r < 8; ++r) dst[d * NRS + j8 + r] = r < rows ? k[(key0 + r) * ld + d] : 0.0f;
    }
  }
}

/// qp[g][d][i] = q[(g·SMR + i)·ld + d]·factor for the `rows` rows, zeros past them. Full groups go
/// through 8×8 transposes (rows [0, 8) and [SMR − 8, SMR), overlapping when SMR < 16), then the
/// packed values are scaled in place (one rounding, as src·factor).
template <class V, int SMR>
void pack_q(const float* q, std::ptrdiff_t ld, int rows, int hd, float factor, float* qp) {
  const int groups = (rows + SMR - 1) / SMR;
  for (int g = 0; g < groups; ++g) {
    float* dst = qp + static_cast<std::ptrdiff_t>(g) * hd * SMR;
    const int r0 = g * SMR, valid = imin(SMR, rows - r0);
    int d = 0;
    if (valid == SMR && SMR >= 8)
      for (; d + 8 <= hd; d += 8)
        for (int i0 = 0; i0 < SMR; i0 += 8) {
          const int i = imin(i0, SMR - 8);
          V::transpose8(q + (r0 + i) * ld + d, ld, dst + d * SMR + i, SMR);
        }
    for (int i = 0; i < SMR; ++i) {
      const float* src = q + (r0 + i) * ld;
      for (int dd = d; dd < hd; ++dd) dst[dd * SMR + i] = i < valid ? src[dd] : 0.0f;
    }
  }
  using R = typename V::R;
  constexpr int L = V::kLanes;
  const R f = V::set1(factor);
  const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(groups) * hd * SMR;
  std::ptrdiff_t i = 0;
  for (; i + L <= n; i += L) V::store(qp + i, V::mul(V::load(qp + i), f));
  if (i < n) V::store_n(qp + i, V::mul(V::load_n(qp + i, static_cast<int>(n - i)), f), static_cast<int>(n - i));
}

/// S[i][key] for SMR query rows (packed qp) against one NRS-key panel: 2·SMR accumulators.
template <class V, int SMR>
inline void score_tile(int hd, const float* __restrict qp, const float* __restrict kpanel, float* s,
                       std::ptrdiff_t lds) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  R acc[SMR][2];
#pragma GCC unroll 32
  for (int i = 0; i < SMR; ++i) acc[i][0] = acc[i][1] = V::zero();
#pragma GCC unroll 4
  for (int d = 0; d < hd; ++d) {
    const R b0 = V::load(kpanel + d * 2 * L), b1 = V::load(kpanel + d * 2 * L + L);
#pragma GCC unroll 32
    for (int i = 0; i < SMR; ++i) {
      const R a = V::bcast(qp + d * SMR + i);
      acc[i][0] = V::fma(a, b0, acc[i][0]);
      acc[i][1] = V::fma(a, b1, acc[i][1]);
    }
  }
#pragma GCC unroll 32
  for (int i = 0; i < SMR; ++i) {
    V::store(s + i * lds, acc[i][0]);
    V::store(s + i * lds + L, acc[i][1]);
  }
}

/// Row r of s (cols valid values, padded to lds): s = 2^(s − max), padding zeroed; returns 1 / Σ.
template <class V>
float exp2_row(float* s, int cols, std::ptrdiff_t lds) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  const int full = cols / L * L;
  R mx = V::set1(-__builtin_inff());
  for (int j = 0; j < full; j += L) mx = V::max(mx, V::load(s + j));
  if (full < cols) mx = V::max(mx, V::select(V::lanes_below(cols - full), V::load_n(s + full, cols - full), mx));
  const R m = V::set1(V::hmax(mx));
  R sum0 = V::zero(), sum1 = V::zero();
  int j = 0;
  for (; j + 2 * L <= full; j += 2 * L) {
    const R e0 = exp2_nonpositive<V>(V::sub(V::load(s + j), m));
    const R e1 = exp2_nonpositive<V>(V::sub(V::load(s + j + L), m));
    V::store(s + j, e0);
    V::store(s + j + L, e1);
    sum0 = V::add(sum0, e0);
    sum1 = V::add(sum1, e1);
  }
  for (; j < full; j += L) {
    const R e = exp2_nonpositive<V>(V::sub(V::load(s + j), m));
    V::store(s + j, e);
    sum0 = V::add(sum0, e);
  }
  if (full < cols) {
    const R e = V::select(V::lanes_below(cols - full), exp2_nonpositive<V>(V::sub(V::load(s + full), m)), V::zero());
    V::store(s + full, e);  // lanes past cols become 0
    sum0 = V::add(sum0, e);
  }
  (void)lds;
  return 1.0f / V::hsum(V::add(sum0, sum1));
}

/// The epilogue of a P·V tile: ctx row i = acc[i] · inv[i] for `rows` rows, `cols` columns (masked
/// stores past the last whole vector).
template <class V, int PMR, int NVP>
inline void store_rows_scaled(const typename V::R (&acc)[PMR][NVP], const float* inv, float* ctx, std::ptrdiff_t ldc,
                              int rows, int cols) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  for (int i = 0; i < rows; ++i) {
    const R scale = V::set1(inv[i]);
#pragma GCC unroll 8
    for (int j = 0; j < NVP; ++j) {
      const int n = imin(L, cols - j * L);
      if (n <= 0) break;
      const R x = V::mul(acc[i][j], scale);
      if (n == L)
        V::store(ctx + i * ldc + j * L, x);
      else
        V::store_n(ctx + i * ldc + j * L, x, n);
    }
  }
}

/// ctx[i][0:NVP·L] = (Σ_key P[i][key]·vp[key][0:NVP·L]) · inv[i] for PMR rows of P (row stride lds),
/// columns [c0, c0 + NVP·L) of the dense v block (row stride hdp); stores `cols` columns of `rows` rows.
template <class V, int PMR, int NVP>
inline void pv_tile(int keys, const float* __restrict p, std::ptrdiff_t lds, const float* __restrict vp,
                    std::ptrdiff_t hdp, const float* inv, float* ctx, std::ptrdiff_t ldc, int rows, int cols) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  R acc[PMR][NVP];
#pragma GCC unroll 32
  for (int i = 0; i < PMR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NVP; ++j) acc[i][j] = V::zero();
  constexpr int NB = (PMR + 2) / 3;  // rows as base + {0,1,2}·lds: few address registers
  const float* base[NB];
#pragma GCC unroll 8
  for (int g = 0; g < NB; ++g) base[g] = p + 3 * g * lds;
#pragma GCC unroll 2
  for (int key = 0; key < keys; ++key) {
    R b[NVP];
#pragma GCC unroll 8
    for (int j = 0; j < NVP; ++j) b[j] = V::load(vp + key * hdp + j * L);
#pragma GCC unroll 32
    for (int i = 0; i < PMR; ++i) {
      const R a = V::bcast(base[i / 3] + (i % 3) * lds + key);
#pragma GCC unroll 8
      for (int j = 0; j < NVP; ++j) acc[i][j] = V::fma(a, b[j], acc[i][j]);
    }
  }
  store_rows_scaled<V, PMR, NVP>(acc, inv, ctx, ldc, rows, cols);
}

/// The two products in float32 (V: float traits): q·factor packed in groups of SMR queries, kᵀ in
/// NRS-key panels, v dense; scores and P·V as FMA chains over the head dimensions and the keys.
template <class V, int SMR, int PMR>
struct FloatProducts {
  using Vf = V;
  static constexpr int kSMR = SMR, kPMR = PMR, kNRS = 2 * V::kLanes;
  int hd = 0;
  std::ptrdiff_t hdp = 0;
  float *kp = nullptr, *vp = nullptr, *qp = nullptr;

  void prepare(Workspace& ws, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int head_dim, int qb) {
    constexpr int L = V::kLanes;
    hd = head_dim;
    hdp = (hd + L - 1) / L * L;
    const int panels = (tokens + kNRS - 1) / kNRS;
    kp = ws.kp.get(static_cast<std::size_t>(panels) * hd * kNRS);
    vp = ws.vp.get(static_cast<std::size_t>(tokens) * hdp);
    qp = ws.qp.get(static_cast<std::size_t>(qb) * hd);
    pack_k<V, kNRS>(k, ld, tokens, hd, kp);
    for (int key = 0; key < tokens; ++key) {
      std::memcpy(vp + static_cast<std::ptrdiff_t>(key) * hdp, v + key * ld, sizeof(float) * hd);
      for (std::ptrdiff_t d = hd; d < hdp; ++d) vp[static_cast<std::ptrdiff_t>(key) * hdp + d] = 0.0f;
    }
  }
  void pack_queries(const float* q, std::ptrdiff_t ld, int rows, float factor) {
    pack_q<V, SMR>(q, ld, rows, hd, factor, qp);
  }
  void score(int g, int pnl, float* s, std::ptrdiff_t lds) const {
    score_tile<V, SMR>(hd, qp + static_cast<std::ptrdiff_t>(g) * hd * SMR,
                       kp + static_cast<std::ptrdiff_t>(pnl) * hd * kNRS, s, lds);
  }
  /// Row i of the block's P is ready in s; then rows [from, to) (zeros, up to a whole P·V tile; rows
  /// QB … QB + PMR − 1 are zero too): P·V reads them as they are.
  void row_ready(const float*, int, int) {}
  void p_ready(const float*, std::ptrdiff_t, int, int, int) {}
  template <int NVP>
  void pv(int tokens, int i0, const float* s, std::ptrdiff_t lds, int c0, const float* inv, float* out,
          std::ptrdiff_t ldc, int rows, int cols) const {
    pv_tile<V, PMR, NVP>(tokens, s + static_cast<std::ptrdiff_t>(i0) * lds, lds, vp + c0, hdp, inv, out, ldc, rows,
                         cols);
  }
};

/// One head. q, k, v: rows of `tokens` tokens with leading dimension ld (head_dim columns each);
/// ctx: [tokens, head_dim] with leading dimension ldc. probs (optional): the softmax rows of queries
/// 0 … prob_rows − 1, [prob_rows, tokens]. Products: FloatProducts or PairProducts, with its tile rows
/// (score SMR, P·V PMR); NVP_MAX: widest P·V column chunk (vectors); QB: query rows per block.
template <class Products, int NVP_MAX, int QB>
void attention_head_with(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int hd,
                         float scale, float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows) {
  using V = typename Products::Vf;
  constexpr int L = V::kLanes;
  constexpr int NRS = Products::kNRS, SMR = Products::kSMR, PMR = Products::kPMR;
  static_assert(QB % SMR == 0, "score tiles must not straddle query blocks");
  VITMSN_DASSERT(tokens >= 1 && hd >= 1 && ld >= hd && ldc >= hd,
                 "attention head: tokens and head_dim >= 1, rows hold a head");
  VITMSN_DASSERT(probs == nullptr || (prob_rows >= 0 && prob_rows <= tokens),
                 "attention head: probability rows within the queries");
  const int panels = (tokens + NRS - 1) / NRS;
  const std::ptrdiff_t lds = static_cast<std::ptrdiff_t>(panels) * NRS;  // padded key count
  Workspace& ws = workspace();
  Products prod;
  prod.prepare(ws, k, v, ld, tokens, hd, QB);
  // PMR spare rows: the last P·V tile of a block may read (and discard) rows past the block.
  float* s = ws.s.get(static_cast<std::size_t>(QB + PMR) * lds);
  float* inv = ws.inv.get(static_cast<std::size_t>(QB + PMR));
  for (int r = QB; r < QB + PMR; ++r) {
    std::memset(s + r * lds, 0, sizeof(float) * lds);
    inv[r] = 0.0f;
  }
  // softmax(x) = 2^(x·log2e − max): the factor folds into q (one rounding per q value, as the scale).
  const float factor = scale * 1.44269504088896341f;

  for (int r0 = 0; r0 < tokens; r0 += QB) {
    const int rows = imin(QB, tokens - r0);
    prod.pack_queries(q + r0 * ld, ld, rows, factor);
    const int groups = (rows + SMR - 1) / SMR;
    // Panel outer, query groups inner: a panel and the packed q (≤ QB·hd) stay in L1.
    for (int pnl = 0; pnl < panels; ++pnl)
      for (int g = 0; g < groups; ++g) prod.score(g, pnl, s + g * SMR * lds + pnl * NRS, lds);
    for (int i = 0; i < rows; ++i) {
      inv[i] = exp2_row<V>(s + i * lds, tokens, lds);
      prod.row_ready(s + i * lds, tokens, i);  // while the row is in L1
    }
    // P·V reads whole tiles of PMR rows: in a short (last) block the rows past its own up to the next
    // multiple of PMR are made zero (those past QB always are); the rows beyond are never read.
    const int tile_rows = imin(QB, (rows + PMR - 1) / PMR * PMR);
    for (int i = rows; i < tile_rows; ++i) {
      std::memset(s + i * lds, 0, sizeof(float) * lds);
      inv[i] = 0.0f;
    }
    if (probs != nullptr)
      for (int i = 0; i < rows && r0 + i < prob_rows; ++i) {
        float* out = probs + static_cast<std::ptrdiff_t>(r0 + i) * tokens;
        for (int j = 0; j < tokens; ++j) out[j] = s[i * lds + j] * inv[i];
      }
    prod.p_ready(s, lds, tokens, rows, tile_rows);
    for (int c0 = 0; c0 < hd; c0 += NVP_MAX * L) {
      const int cols = imin(NVP_MAX * L, hd - c0);
      const int nvp = (cols + L - 1) / L;
      for (int i0 = 0; i0 < rows; i0 += PMR) {
        const int rr = imin(PMR, rows - i0);
        float* out = ctx + (r0 + i0) * ldc + c0;
        switch (nvp) {
          case 1:
            prod.template pv<1>(tokens, i0, s, lds, c0, inv + i0, out, ldc, rr, cols);
            break;
          case 2:
            if constexpr (NVP_MAX >= 2) prod.template pv<2>(tokens, i0, s, lds, c0, inv + i0, out, ldc, rr, cols);
            break;
          case 3:
            if constexpr (NVP_MAX >= 3) prod.template pv<3>(tokens, i0, s, lds, c0, inv + i0, out, ldc, rr, cols);
            break;
          default:
            if constexpr (NVP_MAX >= 4) prod.template pv<4>(tokens, i0, s, lds, c0, inv + i0, out, ldc, rr, cols);
            break;
        }
      }
    }
  }
}

/// The float32 head (see the top of the file).
template <class V, int SMR, int PMR, int NVP_MAX, int QB>
void attention_head(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int hd, float scale,
                    float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows) {
  attention_head_with<FloatProducts<V, SMR, PMR>, NVP_MAX, QB>(q, k, v, ld, tokens, hd, scale, ctx, ldc, probs,
                                                               prob_rows);
}

// ---------------------------------------------------------------------------------------------
// bf16 products (bf16 compute, docs/NUMERICS.md): the same head with both products as bf16 dot
// products of pairs. B: bf16 pair traits as bf16_blocked.hpp's (vdpbf16ps on AVX512_BF16; a plain
// C++ emulation in the tests). The definition: q·(scale·log2 e) rounded to float32, then q, k and v
// rounded to bf16 (nearest even); a score is one float32 chain over the pairs of head dimensions
// (bf16_format.hpp's order within a pair, DAZ/FTZ); the softmax in float32 as the float head's; the
// unnormalised 2^(s − max) rounded to bf16 and multiplied with v as one chain over the pairs of
// keys; the row then scaled by 1/Σ in float32 (Σ of the float32 values).

/// Pairs as rows, transposed: dst[dq·ldd + i] = t[i·ldt + dq] for the `rows` rows and hdq pairs
/// (8×8 word transposes over rows [0, 8), [8, 16), … and a last block ending at `rows`, overlapping
/// the one before where rows is not a multiple of 8; scalar for the pairs past whole groups of 8).
template <class B>
void transpose_pairs(const std::uint32_t* t, std::ptrdiff_t ldt, int rows, int hdq, std::uint32_t* dst,
                     std::ptrdiff_t ldd) {
  int dq = 0;
  if (rows >= 8)
    for (; dq + 8 <= hdq; dq += 8)
      for (int i0 = 0; i0 < rows; i0 += 8) {
        const int i = imin(i0, rows - 8);
        B::transpose8_words(t + i * ldt + dq, ldt, dst + dq * ldd + i, ldd);
      }
  for (; dq < hdq; ++dq)
    for (int i = 0; i < rows; ++i) dst[dq * ldd + i] = t[i * ldt + dq];
}

/// kw[p][dq][j] = the pair dq (dimensions 2dq, 2dq + 1) of key p·NRS + j, zeros past `keys`: each
/// panel's keys converted as rows of pairs into t (NRS rows of stride ldt >= hdq), then transposed.
template <class B, int NRS>
void pack_k_pairs(const float* k, std::ptrdiff_t ld, int keys, int hd, std::uint32_t* kw, std::uint32_t* t,
                  std::ptrdiff_t ldt) {
  const int hdq = (hd + 1) / 2, panels = (keys + NRS - 1) / NRS;
  for (int p = 0; p < panels; ++p) {
    for (int j = 0; j < NRS; ++j) {
      const int key = p * NRS + j;
      if (key < keys)
        B::to_pairs(k + key * ld, hd, t + j * ldt);
      else
        std::memset(t + j * ldt, 0, sizeof(std::uint32_t) * hdq);
    }
    transpose_pairs<B>(t, ldt, NRS, hdq, kw + static_cast<std::ptrdiff_t>(p) * hdq * NRS, NRS);
  }
}

/// The two products on bf16 pairs (see above).
template <class B, int SMR, int PMR>
struct PairProducts {
  using Vf = typename B::V;
  static constexpr int kSMR = SMR, kPMR = PMR, kL = Vf::kLanes, kNRS = 2 * kL;
  int hd = 0, hdq = 0;
  std::ptrdiff_t hdp = 0, ldw = 0, ldt = 0;
  std::uint32_t *kw = nullptr, *vw = nullptr, *qw = nullptr, *pw = nullptr, *t = nullptr;
  float* row = nullptr;

  void prepare(Workspace& ws, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int head_dim, int qb) {
    hd = head_dim;
    hdq = (hd + 1) / 2;
    hdp = (hd + kL - 1) / kL * kL;
    ldt = (hdq + 15) / 16 * 16;
    const int panels = (tokens + kNRS - 1) / kNRS, kq = (tokens + 1) / 2;
    ldw = (kq + kL - 1) / kL * kL;
    kw = words(ws.kp, static_cast<std::size_t>(panels) * hdq * kNRS);
    vw = words(ws.vp, static_cast<std::size_t>(kq) * hdp);
    qw = words(ws.qp, static_cast<std::size_t>(qb) * hdq);
    pw = words(ws.pw, static_cast<std::size_t>(qb + PMR) * ldw);
    // row: [0, hdp) a scaled q row, then the rows of pairs that pack_k_pairs and pack_queries transpose
    // (kNRS >= SMR rows of ldt words).
    static_assert(kNRS >= SMR, "the pair rows of a key panel hold a query group's");
    row = ws.row.get(static_cast<std::size_t>(hdp + kNRS * ldt));
    t = reinterpret_cast<std::uint32_t*>(row + hdp);
    pack_k_pairs<B, kNRS>(k, ld, tokens, hd, kw, t, ldt);
    // vw[kq][c]: the pair (v[2kq][c], v[2kq + 1][c]); columns past hd and the key past the last zero.
    for (int kk = 0; kk < kq; ++kk) {
      std::uint32_t* dst = vw + static_cast<std::ptrdiff_t>(kk) * hdp;
      B::pairs_of_rows(v + 2 * kk * ld, 2 * kk + 1 < tokens ? v + (2 * kk + 1) * ld : nullptr, hd, dst);
      for (std::ptrdiff_t c = hd; c < hdp; ++c) dst[c] = 0u;
    }
    for (int r = qb; r < qb + PMR; ++r) std::memset(pw + r * ldw, 0, sizeof(std::uint32_t) * ldw);
  }
  /// qw[g][dq][i]: pair dq of query g·SMR + i scaled by factor (rounded to float32, then to bf16);
  /// a group's rows converted as rows of pairs, then transposed.
  void pack_queries(const float* q, std::ptrdiff_t ld, int rows, float factor) {
    using V = Vf;
    const int groups = (rows + SMR - 1) / SMR;
    const typename V::R f = V::set1(factor);
    float* scaled = row;
    for (int g = 0; g < groups; ++g) {
      for (int i = 0; i < SMR; ++i) {
        const int r = g * SMR + i;
        if (r >= rows) {
          std::memset(t + i * ldt, 0, sizeof(std::uint32_t) * hdq);
          continue;
        }
        const float* src = q + r * ld;
        int d = 0;
        for (; d + kL <= hd; d += kL) V::store(scaled + d, V::mul(V::load(src + d), f));
        if (d < hd) V::store_n(scaled + d, V::mul(V::load_n(src + d, hd - d), f), hd - d);
        B::to_pairs(scaled, hd, t + i * ldt);
      }
      transpose_pairs<B>(t, ldt, SMR, hdq, qw + static_cast<std::ptrdiff_t>(g) * hdq * SMR, SMR);
    }
  }
  /// S[i][key] for SMR queries against one panel: 2·SMR accumulators, one dot product per pair.
  void score(int g, int pnl, float* s, std::ptrdiff_t lds) const {
    using R = typename Vf::R;
    const std::uint32_t* __restrict qg = qw + static_cast<std::ptrdiff_t>(g) * hdq * SMR;
    const std::uint32_t* __restrict kpanel = kw + static_cast<std::ptrdiff_t>(pnl) * hdq * kNRS;
    R acc[SMR][2];
#pragma GCC unroll 32
    for (int i = 0; i < SMR; ++i) acc[i][0] = acc[i][1] = Vf::zero();
#pragma GCC unroll 2
    for (int dq = 0; dq < hdq; ++dq) {
      const auto b0 = B::load(kpanel + dq * kNRS), b1 = B::load(kpanel + dq * kNRS + kL);
#pragma GCC unroll 32
      for (int i = 0; i < SMR; ++i) {
        const auto a = B::bcast(qg + dq * SMR + i);
        acc[i][0] = B::dot(acc[i][0], a, b0);
        acc[i][1] = B::dot(acc[i][1], a, b1);
      }
    }
#pragma GCC unroll 32
    for (int i = 0; i < SMR; ++i) {
      Vf::store(s + i * lds, acc[i][0]);
      Vf::store(s + i * lds + kL, acc[i][1]);
    }
  }
  /// P row i as bf16 pairs of keys, converted right after its softmax (the row still in L1).
  void row_ready(const float* s_row, int tokens, int i) { B::to_pairs(s_row, tokens, pw + i * ldw); }
  /// The block's zero rows [from, to) (up to a whole P·V tile) as pairs too.
  void p_ready(const float* s, std::ptrdiff_t lds, int tokens, int from, int to) {
    for (int i = from; i < to; ++i) B::to_pairs(s + i * lds, tokens, pw + i * ldw);
  }
  /// ctx rows: (Σ over pairs of keys P·v) · inv, NVP vectors of columns from c0.
  template <int NVP>
  void pv(int tokens, int i0, const float*, std::ptrdiff_t, int c0, const float* inv, float* out, std::ptrdiff_t ldc,
          int rows, int cols) const {
    using R = typename Vf::R;
    const int kq = (tokens + 1) / 2;
    const std::uint32_t* __restrict p = pw + static_cast<std::ptrdiff_t>(i0) * ldw;
    R acc[PMR][NVP];
#pragma GCC unroll 32
    for (int i = 0; i < PMR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NVP; ++j) acc[i][j] = Vf::zero();
#pragma GCC unroll 2
    for (int kk = 0; kk < kq; ++kk) {
      decltype(B::load(vw)) b[NVP];
#pragma GCC unroll 8
      for (int j = 0; j < NVP; ++j) b[j] = B::load(vw + static_cast<std::ptrdiff_t>(kk) * hdp + c0 + j * kL);
#pragma GCC unroll 32
      for (int i = 0; i < PMR; ++i) {
        const auto a = B::bcast(p + i * ldw + kk);
#pragma GCC unroll 8
        for (int j = 0; j < NVP; ++j) acc[i][j] = B::dot(acc[i][j], a, b[j]);
      }
    }
    store_rows_scaled<Vf, PMR, NVP>(acc, inv, out, ldc, rows, cols);
  }
};

/// The head with bf16 products (see above); B: bf16 pair traits.
template <class B, int SMR, int PMR, int NVP_MAX, int QB>
void attention_head_bf16(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int hd,
                         float scale, float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows) {
  attention_head_with<PairProducts<B, SMR, PMR>, NVP_MAX, QB>(q, k, v, ld, tokens, hd, scale, ctx, ldc, probs,
                                                              prob_rows);
}

}  // namespace
}  // namespace vitmsn::detail::attn_blocked
