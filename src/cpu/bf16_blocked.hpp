#pragma once
// The bf16 GEMM of KernelTable::gemm_bf16 (arithmetic and weight layout: src/cpu/bf16_format.hpp),
// written once over a dot-product traits type `B` and instantiated by the ISA files that have a bf16
// dot product (today src/cpu/kernels_avx512.cpp with AVX512_BF16's vdpbf16ps). Internal linkage, as
// gemm_blocked.hpp, whose epilogue (finish_tile) it shares.
//
// B provides: V (the float vector traits of gemm_blocked.hpp, 16 lanes), W (a register of 16 words),
// load(const std::uint32_t*) (64-byte aligned), bcast(const std::uint32_t*) (one word to all lanes),
// dot(typename V::R acc, W a, W b) (acc += the bf16 pair products, as bf16_format.hpp defines), and
// to_pairs(const float* x, int n, std::uint32_t* out): x[0..n) rounded to bf16 pairs, ceil(n/2) words
// (a missing odd element is 0); for attention_blocked.hpp also pairs_of_rows(lo, hi, n, out): out[c] =
// (bf16(lo[c]), bf16(hi[c])) for c < n, hi null read as zeros, and transpose8_words(src, lds, dst,
// ldd): dst[c·ldd + r] = src[r·lds + c] for r, c < 8.
//
// Weights are packed once (bf16::pack), so only the activations are converted per call: a block of mc
// rows × kKcPairs pairs at a time, row-major with the compile-time stride kKcPairs (the micro-kernel
// then addresses its MR rows with constant offsets). Loop nest of one thread over C[m0:m1, n0:n1]:
//   ic: mc rows
//     pc: kKcPairs pairs -> convert A[ic:ic+mc, 2pc : 2pc+2kc] to bf16 pairs
//       jr: one 32-channel panel (its kc×32 words, 64 KB, read from L2 by every row tile; its
//           tiles prefetch the next panel's slice into L2)
//         ir: MR rows -> micro-tile MR × 32: acc (0, or the partial sum stored in C) += A·W
// As in the float GEMM every C element is one float chain over the pairs in order (partials stored
// unrounded between blocks), so results do not depend on threads or blocking.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "cpu/bf16_format.hpp"
#include "cpu/buffer.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"

namespace vitmsn::detail::bf16_blocked {
namespace {

using blocked::TileEpilogue;

/// Pairs per converted block of A (1024 inputs: ViT-L's projections and fc1 in one block, fc2 in
/// four): a kc × 32 panel slice is 64 KB, streamed from L2 by every row tile, and C is written once,
/// with its epilogue, instead of stored and reloaded as partial sums. Measured on Zen 5 (2 threads,
/// ViT-L shapes, old and new code alternating in one process) against 256 pairs (a 32 KB slice that
/// stays in L1): fc1 +7-12 %, fc2 +4 %, qkv +5 %, attention output +1-3 %, and the prefetches of
/// micro_tile another 1-7 %; the whole bf16-compute forward 1.09-1.10 s -> 0.94-0.97 s. 1024 pairs (an
/// A block of 1.1 MB at mc = 280) were no better.
constexpr int kKcPairs = 512;

/// The scratch of one thread: the converted A block (mc × kKcPairs words) and the residual block set
/// aside when K spans several blocks.
struct Bf16Workspace {
  FloatBuffer a;
  FloatBuffer residual;
};

inline Bf16Workspace& bf16_workspace() {
  static thread_local Bf16Workspace ws;
  return ws;
}

/// The MR × 32 micro-tile over kb2 pairs: C = acc + A·W, acc = 0 (first) or the partial sum in C;
/// the epilogue when `ep` is given (last block). Meanwhile it prefetches its share of the next slice
/// into L2 (pf_lines lines from pf, one per 8 pairs: blocked::Prefetch::share of one run) and the next
/// tile's c_next rows for writing.
template <class B, int MR>
inline void micro_tile(int kb2, const std::uint32_t* __restrict a, const std::uint32_t* __restrict w, float* c,
                       std::ptrdiff_t ldc, int rows, int cols, bool first, const TileEpilogue* ep, const float* pf,
                       int pf_lines, const float* c_next, int next_rows) {
  using V = typename B::V;
  using R = typename V::R;
  constexpr int L = V::kLanes;
  constexpr int NV = bf16::kPanel / L;
  constexpr int NR = bf16::kPanel;
  R acc[MR][NV];
  const bool full = rows == MR && cols == NR;
  blocked::prefetch_tile_for_write<MR, NR>(c_next, ldc, next_rows);
  if (first) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  } else {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) {
        const int n = blocked::iclamp(cols - j * L, 0, L);
        acc[i][j] = full ? V::load(c + i * ldc + j * L) : i < rows ? V::load_n(c + i * ldc + j * L, n) : V::zero();
      }
  }
#pragma GCC unroll 2
  for (int q = 0; q < kb2; ++q) {
    if ((q & 7) == 0 && (q >> 3) < pf_lines) __builtin_prefetch(pf + (q >> 3) * 16, 0, 2);
    typename B::W wv[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) wv[j] = B::load(w + q * NR + j * L);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const typename B::W av = B::bcast(a + i * kKcPairs + q);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = B::dot(acc[i][j], av, wv[j]);
    }
  }
  blocked::store_accumulators<V, MR, NV>(acc, c, ldc, rows, cols, full, ep);
}

/// One thread's share C[m0:m1, n0:n1] (n0 a multiple of 32).
template <class B, int MR>
void gemm_range(int K, const float* A, std::ptrdiff_t lda, const bf16::Panels& w, float* C, std::ptrdiff_t ldc,
                const Epilogue& ep, int m0, int m1, int n0, int n1, int mc) {
  if (m0 >= m1 || n0 >= n1) return;
  constexpr int NR = bf16::kPanel;
  const int pairs = w.kp / 2;
  const bool multi_k = pairs > kKcPairs;
  const bool save_residual = multi_k && ep.residual != nullptr;
  const int nb_all = n1 - n0;
  Bf16Workspace& ws = bf16_workspace();
  auto* ap = reinterpret_cast<std::uint32_t*>(ws.a.get(static_cast<std::size_t>(mc) * kKcPairs));
  float* rs = save_residual ? ws.residual.get(static_cast<std::size_t>(mc) * nb_all) : nullptr;
  for (int ic = m0; ic < m1; ic += mc) {
    const int mb = blocked::imin(mc, m1 - ic);
    const int padded_rows = (mb + MR - 1) / MR * MR;
    if (save_residual) {
      for (int i = 0; i < mb; ++i)
        std::memcpy(rs + static_cast<std::ptrdiff_t>(i) * nb_all,
                    ep.residual + static_cast<std::ptrdiff_t>(ic + i) * ep.ldr + n0,
                    sizeof(float) * static_cast<std::size_t>(nb_all));
    }
    for (int pc = 0; pc < pairs; pc += kKcPairs) {
      const int kb2 = blocked::imin(kKcPairs, pairs - pc);
      const int k0 = 2 * pc, kn = blocked::imin(2 * kb2, K - k0);
      for (int i = 0; i < mb; ++i)
        B::to_pairs(A + static_cast<std::ptrdiff_t>(ic + i) * lda + k0, kn, ap + i * kKcPairs);
      for (int i = mb; i < padded_rows; ++i) std::memset(ap + i * kKcPairs, 0, sizeof(std::uint32_t) * kb2);
      const bool first = pc == 0, last = pc + kb2 >= pairs;
      TileEpilogue te{ep.alpha, ep.alpha != 1.0f, nullptr, ep.gelu, nullptr, 0};
      for (int jr = n0; jr < n1; jr += NR) {
        const int cols = blocked::imin(NR, n1 - jr);
        const std::uint32_t* panel = w.data() + (static_cast<std::ptrdiff_t>(jr / NR) * pairs + pc) * NR;
        if (last) te.bias = ep.bias ? ep.bias + jr : nullptr;
        // The next slice (next panel at this block, else the first of the next block): its lines
        // shared out over this slice's row tiles.
        blocked::Prefetch next;
        const bool next_in_block = jr + NR < n1;
        const int next_pc = next_in_block ? pc : pc + kb2;
        if (next_pc < pairs) {
          next.base = reinterpret_cast<const float*>(
              w.data() + (static_cast<std::ptrdiff_t>((next_in_block ? jr + NR : n0) / NR) * pairs + next_pc) * NR);
          next.per_row = next.count = blocked::imin(kKcPairs, pairs - next_pc) * NR / 16;
        }
        const int tiles = padded_rows / MR;
        for (int ir = 0, t = 0; ir < mb; ir += MR, ++t) {
          const int rows = blocked::imin(MR, mb - ir);
          float* ct = C + static_cast<std::ptrdiff_t>(ic + ir) * ldc + jr;
          if (last && ep.residual) {
            if (save_residual) {
              te.residual = rs + static_cast<std::ptrdiff_t>(ir) * nb_all + (jr - n0);
              te.ldr = nb_all;
            } else {
              te.residual = ep.residual + static_cast<std::ptrdiff_t>(ic + ir) * ep.ldr + jr;
              te.ldr = ep.ldr;
            }
          }
          const bool last_tile = ir + MR >= mb;
          const blocked::Prefetch mine = next.share(t, tiles, kb2);
          micro_tile<B, MR>(kb2, ap + static_cast<std::ptrdiff_t>(ir) * kKcPairs, panel, ct, ldc, rows, cols, first,
                            last ? &te : nullptr, mine.line(0), mine.count, last_tile ? ct : ct + MR * ldc,
                            last_tile ? rows : blocked::imin(MR, mb - ir - MR));
        }
      }
    }
  }
}

/// KernelTable::gemm_bf16: C split over threads along N (whole panels) when N is wide, else along M
/// (whole MR tiles); never along K.
template <class B, int MR>
void gemm(int M, const float* A, std::ptrdiff_t lda, const bf16::Panels& w, float* C, std::ptrdiff_t ldc,
          const Epilogue& ep, int threads, int mc) {
  constexpr int NR = bf16::kPanel;
  if (M <= 0 || w.N <= 0) return;
  VITMSN_DASSERT(A != nullptr && C != nullptr && lda >= w.K && ldc >= w.N && w.kp % 2 == 0 && w.kp >= w.K,
                 "bf16 GEMM: A [M, K] and C [M, N] given, panels of K padded to pairs");
  mc = blocked::imax(MR, mc / MR * MR);
  const int panels_n = (w.N + NR - 1) / NR;
  const int tiles_m = (M + MR - 1) / MR;
  const bool split_n = panels_n >= 4 * threads;
  threads = blocked::imax(1, blocked::imin(threads, split_n ? panels_n : tiles_m));
  run_split(threads, [&](int t, int nt) {
    if (split_n) {
      const int q0 = split_begin(panels_n, t, nt), q1 = split_begin(panels_n, t + 1, nt);
      gemm_range<B, MR>(w.K, A, lda, w, C, ldc, ep, 0, M, q0 * NR, blocked::imin(w.N, q1 * NR), mc);
    } else {
      const int q0 = split_begin(tiles_m, t, nt), q1 = split_begin(tiles_m, t + 1, nt);
      gemm_range<B, MR>(w.K, A, lda, w, C, ldc, ep, q0 * MR, blocked::imin(M, q1 * MR), 0, w.N, mc);
    }
  });
}

}  // namespace
}  // namespace vitmsn::detail::bf16_blocked
