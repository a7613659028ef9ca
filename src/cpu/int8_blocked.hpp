#pragma once
// The int8 GEMM of quantized linear layers, written once over an integer vector-traits type `I` and
// instantiated per instruction set (internal linkage, like gemm_blocked.hpp).
//
// The scheme (docs/NUMERICS.md, "int8"):
//   weights     int8 per output channel n, symmetric: w[n,k] ≈ s_w[n]·q_w[n,k], q_w in [−127, 127],
//               stored by vitmsn-convert in panels of 16 output channels (see int8_panel_index()).
//   activations int8 per row t and block b of 32 along K, symmetric, computed on the fly:
//               a = max |x[t, b·32 … b·32+31]|; s_x = a/127; q_x = clamp(rint(x·(127/a)), −127, 127)
//               (all zero when a = 0).
//   product     acc_b = Σ_{k∈b} q_x·q_w exactly in int32 (|acc_b| <= 32·127² < 2^24: exact as a float);
//               f = 0; for b in order: f = fma(float(acc_b), s_x[t,b], f); y = f·s_w[n]; then the
//               epilogue (bias, GELU, residual) as the float GEMM's.
// Every variant computes exactly these integers and floats in this order, so their results are
// bit-identical (the epilogue's GELU aside, which the vector variants share with the float GEMM).
//
// Integer products by instruction set (the traits `I` below provide `dot`):
//   AVX512-VNNI / AVX-VNNI  vpdpbusd multiplies u8·s8 and adds 4 products into int32. The activation
//                           is stored as q_x + 128 (u8), so each block's sum carries 128·Σ q_w, which
//                           is subtracted by starting the block's accumulator at −128·Σ_{k∈b} q_w
//                           (computed once per packed weight slice, shared by all its row tiles).
//   AVX2                    vpmaddubsw multiplies u8·s8 and adds pairs into int16 WITH saturation:
//                           |q_x|·(sign(q_x)·q_w) pairs stay <= 2·127² = 32258 < 32767, so the
//                           activation goes in as |q_x| (vpsignb) and its sign onto the weight
//                           (vpsignb): no saturation, exact; vpmaddwd with ones widens to int32.

#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/buffer.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/int8_format.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vitmsn::detail::int8 {
namespace {

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

/// Activations quantized and packed for the micro-tiles of MR rows: for row group g (rows g·MR …),
/// quad q (k = 4q … 4q+3), row i: 4 bytes at data[((g·quads + q)·MR + i)·4]; block b's scale of row i
/// at scales[(g·blocks + b)·MR + i]. Rows past M are zero. `offset` stores q + 128 (u8) for vpdpbusd.
struct PackedA {
  const std::uint8_t* data;
  const float* scales;
  int quads, blocks;
};

/// Quantizes and packs the row groups [g0, g1): block by block, the group's MR rows together, so the
/// block's 8 quads × MR rows are written as one contiguous run of 32·MR bytes, and the next group's rows
/// are prefetched a block ahead of their use (a row of K = 1024 floats is one 4 KB page, where the
/// hardware's stream prefetcher starts again: measured 3-10 % of the whole int8 GEMM, in one process
/// alternating with the previous loop, row by row with bytes stored one at a time).
template <class I, int MR>
void quantize_rows(const float* A, std::ptrdiff_t lda, int M, int K, int kp, const std::uint32_t* excluded,
                   std::uint8_t* data, float* scales, int g0, int g1) {
  constexpr int kQuads = kBlock / 4;
  const int quads = kp / 4, blocks = kp / kBlock;
  alignas(64) std::int8_t q[MR][kBlock];
  for (int g = g0; g < g1; ++g) {
    const int r0 = g * MR, rows = imin(MR, M - r0);
    const int ahead = g + 1 < g1 ? imin(MR, M - r0 - MR) : 0;  // rows of the next group to prefetch
    for (int b = 0; b < blocks; ++b) {
      const int k0 = b * kBlock, len = imin(kBlock, K - k0);
      for (int i = 0; i < ahead && len > 0; ++i) {
        const char* next = reinterpret_cast<const char*>(A + (r0 + MR + i) * lda + k0);
        __builtin_prefetch(next);
        __builtin_prefetch(next + sizeof(float) * (len - 1));  // the block's second cache line, if any
      }
      float* s = scales + (static_cast<std::ptrdiff_t>(g) * blocks + b) * MR;
      for (int i = 0; i < MR; ++i) {
        if (i < rows && len > 0) {  // the outlier split's channels count as 0
          alignas(64) float kept[kBlock];
          s[i] = I::quantize_block(block_without(A + (r0 + i) * lda + k0, len, excluded ? excluded[b] : 0u, kept), len,
                                   q[i]);
        } else {
          s[i] = 0.0f;
          std::memset(q[i], 0, sizeof q[i]);
        }
      }
      std::uint8_t* d = data + (static_cast<std::ptrdiff_t>(g) * quads + b * kQuads) * MR * 4;
      for (int j = 0; j < kQuads; ++j)
        for (int i = 0; i < MR; ++i) {
          std::uint32_t w;
          std::memcpy(&w, &q[i][4 * j], 4);
          if (I::kOffset) w ^= 0x80808080u;  // q + 128 in each byte
          std::memcpy(d + (j * MR + i) * 4, &w, 4);
        }
    }
  }
}

/// Column n0 + c (c < NR) of a stacked weight: segment pointer and its row within the segment.
struct WeightView {
  const std::int8_t* const* panels;  // per segment: the panel-layout int8 data
  const float* const* scales;        // per segment: s_w [seg_rows]
  int seg_rows;                      // output channels per segment (a multiple of 16 when segments > 1)
  int kp;
  const std::int8_t* panel(int n) const {  // the 16-channel panel holding channel n
    const int s = n / seg_rows, r = n % seg_rows;
    return panels[s] + static_cast<std::ptrdiff_t>(r / kPanel) * (kp / 4) * (kPanel * 4);
  }
  float scale(int n) const { return scales[n / seg_rows][n % seg_rows]; }
};

/// MR×(NV·L) micro-tile over the blocks [b0, b1): f (float accumulators, from C unless first) +=
/// Σ_b float(acc_b)·s_x; at the last k-slice y = f·s_w and the epilogue; else f is stored in C.
/// `corr` (offset variants): −128·Σ_{k∈b} q_w per block and column, [b1 − b0][NV·L].
/// A float vector of n lanes at p through the float traits V: a plain load or store for a whole
/// vector, a masked one for fewer lanes (n may be 0: nothing read, zeros).
template <class V>
inline typename V::R load_part(const float* p, int n) {
  return n >= V::kLanes ? V::load(p) : V::load_n(p, n);
}
template <class V>
inline void store_part(float* p, typename V::R v, int n) {
  if (n >= V::kLanes)
    V::store(p, v);
  else
    V::store_n(p, v, n);
}

template <class I, int MR, int NV>
inline void tile(const PackedA& pa, int g, int b0, int b1, const std::int8_t* const* bpanel, const std::int32_t* corr,
                 float* c, std::ptrdiff_t ldc, int rows, int cols, bool first, bool last, const float* w_scale,
                 const float* pre, std::ptrdiff_t ldp, const blocked::TileEpilogue* ep) {
  using Ri = typename I::Ri;
  using V = typename I::V;  // the float side: the ISA's float traits
  using Rf = typename V::R;
  constexpr int L = I::kLanes;
  constexpr int NR = NV * L;
  Rf f[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j)
      f[i][j] = first || i >= rows ? V::zero() : load_part<V>(c + i * ldc + j * L, imin(L, imax(0, cols - j * L)));
  const std::uint8_t* a_group = pa.data + static_cast<std::ptrdiff_t>(g) * pa.quads * MR * 4;
  const float* s_group = pa.scales + static_cast<std::ptrdiff_t>(g) * pa.blocks * MR;
  for (int b = b0; b < b1; ++b) {
    Ri acc[MR][NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      const Ri init = I::kOffset ? I::load_i(corr + (b - b0) * NR + j * L) : I::zero_i();
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) acc[i][j] = init;
    }
#pragma GCC unroll 8
    for (int qq = 0; qq < kBlock / 4; ++qq) {
      const int q = b * (kBlock / 4) + qq;
      Ri w[NV];
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) w[j] = I::load_b(bpanel[j] + static_cast<std::ptrdiff_t>(q) * (kPanel * 4));
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const Ri a = I::bcast4(a_group + (static_cast<std::ptrdiff_t>(q) * MR + i) * 4);
#pragma GCC unroll 4
        for (int j = 0; j < NV; ++j) acc[i][j] = I::dot(acc[i][j], a, w[j]);
      }
    }
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const Rf s = V::set1(s_group[b * MR + i]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) f[i][j] = V::fma(I::to_float(acc[i][j]), s, f[i][j]);
    }
  }
  if (!last) {
    for (int i = 0; i < rows; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        const int n = imin(L, cols - j * L);
        if (n > 0) store_part<V>(c + i * ldc + j * L, f[i][j], n);
      }
    return;
  }
  // y = f·s_w (fma(f, s_w, pre) with the outlier split's product), then the float GEMM's epilogue
  // from a stack tile.
  alignas(64) float t[MR][NR];
#pragma GCC unroll 4
  for (int j = 0; j < NV; ++j) {
    const int n = imin(L, imax(0, cols - j * L));
    const Rf sw = load_part<V>(w_scale + j * L, n);
    if (pre == nullptr) {
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) V::store(&t[i][j * L], V::mul(f[i][j], sw));
    } else {
      for (int i = 0; i < MR; ++i)
        V::store(&t[i][j * L],
                 i < rows && n > 0 ? V::fma(f[i][j], sw, load_part<V>(pre + i * ldp + j * L, n)) : V::mul(f[i][j], sw));
    }
  }
  blocked::finish_tile<typename I::V, MR, NR / I::V::kLanes>(&t[0][0], c, ldc, rows, cols, ep);
}

/// −128·Σ_{k∈b} q_w for the blocks [b0, b1) and the NR columns of one slice (offset variants).
template <class I, int NV>
void slice_corrections(const std::int8_t* const* bpanel, int b0, int b1, std::int32_t* corr) {
  using Ri = typename I::Ri;
  constexpr int L = I::kLanes;
  const Ri ones = I::bcast_u8(0x80);
  for (int b = b0; b < b1; ++b)
    for (int j = 0; j < NV; ++j) {
      Ri s = I::zero_i();
      for (int qq = 0; qq < kBlock / 4; ++qq) {
        const int q = b * (kBlock / 4) + qq;
        s = I::dot(s, ones, I::load_b(bpanel[j] + static_cast<std::ptrdiff_t>(q) * (kPanel * 4)));
      }
      I::store_i(corr + (b - b0) * NV * L + j * L, I::neg_i(s));
    }
}

/// The problem: C[M, N] = epilogue(dequant(quantize(A)·Wᵀ)), N = segments·seg_rows.
struct Problem {
  int M, N, K;
  const float* A;
  std::ptrdiff_t lda;
  WeightView w;
  float* C;
  std::ptrdiff_t ldc;
  Epilogue ep;
};

struct Workspace {
  FloatBuffer a;         // packed activations (bytes) + scales, shared by the threads of one call
  FloatBuffer corr;      // per thread: corrections of one slice
  FloatBuffer residual;  // per thread: the rows and columns of an in-place residual it computes, set aside
};

inline Workspace& workspace() {
  static thread_local Workspace ws;
  return ws;
}

/// The columns [n0, n1) (multiples of NR except at N) of the row groups [g0, g1).
template <class I, int MR, int NV>
void gemm_columns(const Problem& p, const PackedA& pa, int g0, int g1, int n0, int n1, int kc_blocks,
                  std::int32_t* corr) {
  constexpr int L = I::kLanes;
  constexpr int NR = NV * L;
  static_assert(NR % kPanel == 0 || kPanel % NR == 0, "tiles cover whole panels or halves of one");
  const int blocks = pa.blocks;
  const int m0 = g0 * MR, m1 = imin(p.M, g1 * MR);
  // C holds the partial sums between k-slices: a residual that is C itself (x += …) is set aside
  // first, these rows and columns of it.
  const float* residual = p.ep.residual;
  std::ptrdiff_t ldr = p.ep.ldr;
  if (residual != nullptr && blocks > kc_blocks) {
    FloatBuffer& saved = workspace().residual;
    saved.resize(static_cast<std::size_t>(m1 - m0) * (n1 - n0));
    for (int r = m0; r < m1; ++r)
      std::memcpy(saved.data() + static_cast<std::ptrdiff_t>(r - m0) * (n1 - n0), residual + r * ldr + n0,
                  sizeof(float) * static_cast<std::size_t>(n1 - n0));
    ldr = n1 - n0;
    residual = saved.data() - m0 * ldr - n0;  // indexed by the row and column as before
  }
  for (int b0 = 0; b0 < blocks; b0 += kc_blocks) {
    const int b1 = imin(blocks, b0 + kc_blocks);
    const bool first = b0 == 0, last = b1 == blocks;
    blocked::TileEpilogue te{1.0f, false, nullptr, p.ep.gelu, nullptr, 0};
    for (int jr = n0; jr < n1; jr += NR) {
      const int cols = imin(NR, n1 - jr);
      // Vector j covers channels jr + j·L …: its panel, at byte ((jr + j·L) % 16)·4 of each 64-byte
      // quad. A vector entirely past N reads the first one's (valid) bytes; its columns are dropped.
      const std::int8_t* bpanel[NV];
      bpanel[0] = p.w.panel(jr) + static_cast<std::ptrdiff_t>(jr % kPanel) * 4;
      for (int j = 1; j < NV; ++j) {
        const int n = jr + j * L;
        bpanel[j] = n < p.N ? p.w.panel(n) + static_cast<std::ptrdiff_t>(n % kPanel) * 4 : bpanel[0];
      }
      // Also the slice's first pass over its weights, which brings them into the cache before the row
      // tiles read them (corrections kept with the weights instead: 4-8 % slower, measured).
      if (I::kOffset) slice_corrections<I, NV>(bpanel, b0, b1, corr);
      alignas(64) float wscale[NR];
      for (int c = 0; c < NR; ++c) wscale[c] = jr + c < p.N ? p.w.scale(jr + c) : 0.0f;
      if (last) te.bias = p.ep.bias ? p.ep.bias + jr : nullptr;
      for (int g = g0; g < g1; ++g) {
        const int r0 = g * MR, rows = imin(MR, p.M - r0);
        float* ct = p.C + static_cast<std::ptrdiff_t>(r0) * p.ldc + jr;
        if (last && residual) {
          te.residual = residual + static_cast<std::ptrdiff_t>(r0) * ldr + jr;
          te.ldr = ldr;
        }
        const float* pre =
            last && p.ep.int8_pre ? p.ep.int8_pre + static_cast<std::ptrdiff_t>(r0) * p.ep.ldp + jr : nullptr;
        tile<I, MR, NV>(pa, g, b0, b1, bpanel, corr, ct, p.ldc, rows, cols, first, last, wscale, pre, p.ep.ldp,
                        last ? &te : nullptr);
      }
    }
  }
}

/// The rows in parts, one per thread (at least kMinPartGroups row groups each); a part's columns in
/// chunks of kChunkTiles tiles. Thread t quantizes part t and then takes the chunks of part t, then
/// those left in the other parts: without a barrier between quantizing and computing, and a thread that
/// runs slower (a busy sibling core, a host that lends this vCPU less) leaves its last chunks to the
/// other. A part's packed activations (K bytes a row: 0.5 MB for half of ViT-L's 1025 tokens at
/// K = 1024) stay in its thread's L2 while every weight slice passes; each thread reads all the weights
/// (from L3 after the first). Measured in one process against all rows quantized first, then columns
/// split (2 threads, ViT-L's shapes, 2 sets of 15 alternations): attention output +12/+14 %, fc2 +13/+22 %,
/// qkv +2/+3 %, fc1 +3 %.
struct PartState {
  std::atomic<int> quantized{0};  // 0 not started, 1 being quantized, 2 ready
  std::atomic<int> next_chunk{0};
};
constexpr int kMinPartGroups = 16;
constexpr int kMaxParts = 64;
constexpr int kChunkTiles = 2;

inline void spin_pause() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

/// The whole GEMM. Results do not depend on the thread count or on which thread computes a tile.
/// kc_blocks: 32-wide K blocks per k-slice (the packed weight slice of NR columns, kc_blocks·32·NR
/// bytes, stays in L1/L2 while all row tiles use it).
template <class I, int MR, int NV>
void gemm(const Problem& p, int kc_blocks, int threads) {
  constexpr int NR = NV * I::kLanes;
  if (p.M <= 0 || p.N <= 0) return;
  VITMSN_DASSERT(p.w.kp % kBlock == 0 && p.w.kp >= p.K, "int8 panels: K padded to whole blocks of 32");
  VITMSN_DASSERT(p.w.seg_rows > 0 && p.N % p.w.seg_rows == 0 && p.N / p.w.seg_rows <= 3,
                 "int8 GEMM: 1 to 3 whole stacked segments");
  VITMSN_DASSERT(p.N == p.w.seg_rows || p.w.seg_rows % kPanel == 0, "stacked int8 segments of whole panels");
  const int kp = p.w.kp, quads = kp / 4, blocks = kp / kBlock;
  const int groups = (p.M + MR - 1) / MR;
  // Shared packed activations: bytes then scales, in one buffer of the calling thread.
  const std::size_t bytes = static_cast<std::size_t>(groups) * quads * MR * 4;
  const std::size_t scale_floats = static_cast<std::size_t>(groups) * blocks * MR;
  FloatBuffer& buf = workspace().a;
  buf.resize((bytes + 63) / 64 * 16 + scale_floats);
  auto* data = reinterpret_cast<std::uint8_t*>(buf.data());
  float* scales = buf.data() + (bytes + 63) / 64 * 16;
  const PackedA pa{data, scales, quads, blocks};
  const int tiles_n = (p.N + NR - 1) / NR;
  const int chunks = (tiles_n + kChunkTiles - 1) / kChunkTiles;
  threads = imax(1, imin(threads, imax(chunks, groups)));
  const int parts = imax(1, imin(imin(threads, kMaxParts), groups / kMinPartGroups));
  PartState state[kMaxParts];
  const auto quantized_part = [&](int q) {  // part q ready to read: quantized here or waited for
    int expected = 0;
    if (state[q].quantized.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
      quantize_rows<I, MR>(p.A, p.lda, p.M, p.K, kp, p.ep.int8_excluded, data, scales, split_begin(groups, q, parts),
                           split_begin(groups, q + 1, parts));
      state[q].quantized.store(2, std::memory_order_release);
    } else {
      while (state[q].quantized.load(std::memory_order_acquire) != 2) spin_pause();
    }
  };
  const auto work = [&](int t) {
    FloatBuffer& cb = workspace().corr;
    cb.resize(static_cast<std::size_t>(kc_blocks) * NR);
    auto* corr = reinterpret_cast<std::int32_t*>(cb.data());
    for (int k = 0; k < parts; ++k) {
      const int q = (t + k) % parts;
      if (state[q].next_chunk.load(std::memory_order_relaxed) >= chunks) continue;  // nothing left there
      quantized_part(q);
      const int g0 = split_begin(groups, q, parts), g1 = split_begin(groups, q + 1, parts);
      for (int c = state[q].next_chunk.fetch_add(1, std::memory_order_relaxed); c < chunks;
           c = state[q].next_chunk.fetch_add(1, std::memory_order_relaxed))
        gemm_columns<I, MR, NV>(p, pa, g0, g1, c * kChunkTiles * NR, imin(p.N, (c + 1) * kChunkTiles * NR), kc_blocks,
                                corr);
    }
  };
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    work(omp_get_thread_num());
    return;
  }
#endif
  work(0);
}

/// gemm<I, MR, NV> with k-slices of `slice` inputs as a KernelTable::gemm_int8 entry (GemmInt8Fn).
template <class I, int MR, int NV, int slice>
void table_entry(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                 const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                 const Epilogue& ep, int threads) {
  const Problem p{M, seg_rows * segments, K, A, lda, WeightView{W, w_scale, seg_rows, kp}, C, ldc, ep};
  gemm<I, MR, NV>(p, slice / kBlock, threads);
}

}  // namespace
}  // namespace vitmsn::detail::int8
