#pragma once
// The compute kernels behind the ops: GEMM with fused epilogues, and the row-wise helpers that
// attention and the MLP need. Pure functions of raw float buffers; they never see the model or tensor
// names. Each instruction-set variant (portable, AVX2+FMA, AVX-512) fills one KernelTable in its own
// file — src/cpu/kernels_portable.cpp, kernels_avx2.cpp, kernels_avx512.cpp, the ISA files compiled
// with their -m flags — and kernels(isa) hands out the best table the CPU runs at or below `isa`.
// All variants give results independent of the thread count: work is split over output tiles only,
// never over the summation dimension.
//
// Adding a kernel: its signature type (or an existing one), one member in KernelTable (with its
// contract) whose default is its portable definition (namespace portable, kernels_portable.cpp), the
// vector version as one line of kernels_simd.inc's table, and a test in the tests/kernels_*_test.cpp
// of its family against the portable entry.

#include <cstddef>
#include <cstdint>

#include "cpu/bf16_format.hpp"
#include "cpu/cpu.hpp"

namespace vitmsn::detail {

/// What happens to alpha·A·op(B) before it is stored in C, in this order:
///   t = alpha·(A·op(B)); t += bias[n]; t = gelu_erf(t) if gelu; t += residual[m, n]; C[m, n] = t.
/// `residual` may be the same buffer as C (in-place residual add, ldr == ldc).
struct Epilogue {
  float alpha = 1.0f;
  const float* bias = nullptr;      // [N] or null
  bool gelu = false;                // exact erf GELU: 0.5·x·(1 + erf(x/√2))
  const float* residual = nullptr;  // [M, N] with leading dimension ldr, or null
  std::ptrdiff_t ldr = 0;
  // gemm_int8 only (the outlier split, src/cpu/int8_blocked.hpp): activation channels left out of the
  // quantization — bit c of int8_excluded[b] is channel 32·b + c, kp/32 words, or null for none —
  // and int8_pre [M, N] (leading dimension ldp), added to the dequantized product before the bias:
  // t = fma(f, s_w, pre). The exact float product of the excluded channels goes there.
  const std::uint32_t* int8_excluded = nullptr;
  const float* int8_pre = nullptr;
  std::ptrdiff_t ldp = 0;
};

/// The tile shapes of one instruction set's vector kernels (set by its kernel file, read by
/// kernels_simd.inc): the tuning, apart from the maths of the templates that use it.
struct TileGeometry {
  int mr, nv;            ///< GEMM micro-tile: mr rows × nv vectors (NR = nv · lanes)
  bool k_major_a;        ///< A packed k-major (tall tiles: one address stream) or row-major
  int pv_mr, pv_nv_max;  ///< attention P·V tile: rows × widest column chunk (vectors); score tiles are the GEMM's
  int query_block;       ///< attention queries per block (their scores stay in L2)
  int burst_chains;      ///< independent FMA chains of the peak probe
};

/// Element type of a weight matrix used in place (e.g. memory-mapped from a safetensors file).
enum class WeightType { kF32 = 0, kBF16 = 1, kF16 = 2 };

// The signature of each kind of entry (the contracts are at the members of KernelTable below).
using GemmFn = void(int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
                    bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads);
using GemmWeightsFn = void(int M, int N, int K, const float* A, std::ptrdiff_t lda, const void* W, WeightType wt,
                           std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads);
using GemmWeightsStackedFn = void(int M, int seg_rows, int segments, int K, const float* A, std::ptrdiff_t lda,
                                  const void* const* W, WeightType wt, std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc,
                                  const Epilogue& ep, int threads);
using PackPanelsFn = void(int seg_rows, int segments, int K, const void* const* W, WeightType wt, std::ptrdiff_t ldw,
                          float* dst, int threads);
using GemmPackedFn = void(int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* panels, float* C,
                          std::ptrdiff_t ldc, const Epilogue& ep, int threads);
using GemmInt8Fn = void(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                        const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                        const Epilogue& ep, int threads);
using GemmBf16Fn = void(int M, const float* A, std::ptrdiff_t lda, const bf16::Panels& w, float* C, std::ptrdiff_t ldc,
                        const Epilogue& ep, int threads);
using BurstFn = double(long iterations);
using OutlierProductFn = void(int M, int N, int J, const float* A, std::ptrdiff_t lda, const int* channels,
                              const float* w, float* P, std::ptrdiff_t ldp, int threads);
using LayerNormFn = void(const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, int rows, int cols,
                         const float* w, const float* b, double eps);
using InPlaceFn = void(float* x, std::ptrdiff_t n);
using AttentionHeadFn = void(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens,
                             int head_dim, float scale, float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows);

/// The portable definitions (src/cpu/kernels_portable.cpp, scalar, compiled without ISA flags): the
/// reference every vector entry is tested against, and the entry of any table that does not set its
/// own (an entry nobody sets is never null: a new kernel runs everywhere from its first line).
namespace portable {
GemmFn gemm;
GemmWeightsFn gemm_weights;
GemmWeightsStackedFn gemm_weights_stacked;
GemmInt8Fn gemm_int8;
GemmBf16Fn gemm_bf16;
OutlierProductFn outlier_product;
LayerNormFn layer_norm;
InPlaceFn erf, gelu_erf;
AttentionHeadFn attention_head, attention_head_bf16;
BurstFn fma_burst;
}  // namespace portable

/// One instruction set's kernels. An entry a table does not set is the portable definition; the packed
/// GEMM and the bf16 rate probe exist only where a table sets them (null in the portable table).
struct KernelTable {
  Isa isa = Isa::kPortable;

  /// C[M,N] = epilogue(A[M,K]·op(B)); A row-major with leading dimension lda; C row-major (ldc).
  /// b_trans: B is [N,K] row-major (ldb) and op(B) = Bᵀ — the layout of PyTorch linear weights, so
  /// y = x·Wᵀ. Otherwise B is [K,N] row-major (ldb). C must not overlap A or B. threads: how many
  /// threads to use (1 = the calling thread only; safe inside a parallel region).
  GemmFn* gemm = portable::gemm;

  /// C[M,N] = epilogue(A[M,K]·Wᵀ) with W [N,K] row-major of 16-bit type wt (kBF16 or kF16; kF32 goes
  /// to gemm, see the gemm_weights() wrapper below), leading dimension ldw in elements. bf16: value =
  /// bits << 16; f16: IEEE half. W stays half-size: it is widened to float32 while the GEMM packs its
  /// panels of B (vectorised variants, in the packing the float32 path does anyway), or a block of
  /// rows at a time into a thread-local buffer (portable: at most 256 rows of W at once per thread).
  /// The compute is float32 FMA with float32 accumulation, so the AVX2 and AVX-512 results are
  /// bit-identical to gemm(…, b_trans = true, …) on the widened weights. Results are independent of
  /// the thread count. (A vdpbf16ps path for CPUs with AVX512_BF16 would round A to bf16 too, i.e.
  /// give other, less accurate results: it would be a separate, opt-in entry.)
  GemmWeightsFn* gemm_weights = portable::gemm_weights;

  /// C[M, S·R] = epilogue(A[M,K]·[W_0; …; W_{S−1}]ᵀ): `segments` (S ≤ 3) weight matrices of
  /// seg_rows (R) rows each, of one type wt (kF32 included), leading dimension ldw, stacked along N as
  /// one operand — the query, key and value projections as one GEMM, so A is packed once. ep.bias
  /// covers all S·R columns. Bit-identical to one gemm_weights call per segment.
  GemmWeightsStackedFn* gemm_weights_stacked = portable::gemm_weights_stacked;

  /// Width of the panels gemm_packed reads (output channels per panel: the micro-tile's NR), or 0 for a
  /// table without a packed GEMM (portable: its gemm reads W as stored, so weights stay so).
  int packed_nr = 0;

  /// Lays out op(B) = [W_0; …; W_{S−1}]ᵀ — `segments` (S ≤ 3) weights of seg_rows rows each, of type
  /// wt, K inputs, leading dimension ldw, stacked along N as in gemm_weights_stacked — once, for
  /// gemm_packed: ceil(N / packed_nr) panels of K × packed_nr floats (16-bit types widened exactly),
  /// panel q at dst + q·K·packed_nr (dst: that many floats, 64-byte aligned), channels past N zero.
  /// The values are those the GEMM packs per call, so gemm_packed's results are the same bits as
  /// gemm_weights_stacked's. Null where packed_nr is 0.
  PackPanelsFn* pack_panels = nullptr;

  /// C[M,N] = epilogue(A[M,K]·op(B)) with op(B) laid out by pack_panels (N = seg_rows·segments): the
  /// float32 GEMM without packing B on the call — weights prepared once at load. Bit-identical to gemm
  /// / gemm_weights_stacked on the weights it was packed from, for every thread count. Null where
  /// packed_nr is 0.
  GemmPackedFn* gemm_packed = nullptr;

  /// C[M, S·R] = epilogue(dequant(quantize(A[M,K])·[W_0; …; W_{S−1}]ᵀ)) with int8 weights: the scheme
  /// of src/cpu/int8_blocked.hpp (activations quantized per row and block of 32 along K, on the fly;
  /// int32 products; dequantized in float, then bias, GELU, residual as gemm's epilogue; ep.alpha is
  /// ignored). W[s]: segment s's seg_rows output channels in the panel layout (16 channels × 4 k per
  /// 64 bytes, K padded to kp, a multiple of 32), w_scale[s]: their scales [seg_rows]. With S > 1,
  /// seg_rows is a multiple of 16. Results are the same bits for every variant and thread count
  /// (the epilogue's GELU aside: the portable entry uses std::erf).
  GemmInt8Fn* gemm_int8 = portable::gemm_int8;

  /// C[M, N] = epilogue(bf16(A[M, K])·Wᵀ) with W packed once by bf16::pack (N, K, kp from it): the bf16
  /// compute of src/cpu/bf16_format.hpp (activations rounded to bf16, exact pair products, one float32
  /// chain per output, DAZ/FTZ as vdpbf16ps; then bias, GELU and residual in float32). Every variant
  /// gives the portable entry's bits (the epilogue's GELU aside: the portable entry uses std::erf) for
  /// every thread count. Tables without a bf16 dot product use the portable entry (an emulation, slow).
  GemmBf16Fn* gemm_bf16 = portable::gemm_bf16;

  /// Runs `iterations` rounds of independent register-only bf16 dot-product chains and returns the
  /// FLOPs done (2 per multiply-add), for the rate probe of bf16_compute_pays(); null for tables whose
  /// gemm_bf16 is the emulation.
  BurstFn* bf16_burst = nullptr;

  /// P[M, N] (leading dimension ldp) = Σ_j A[t, channels[j]]·w[j, n] over j = 0 … J−1 in that order,
  /// each term one fma from p = 0 (bit-identical in every variant): the float product of an int8
  /// GEMM's outlier channels, w [J, N] their dequantized weight columns.
  OutlierProductFn* outlier_product = portable::outlier_product;

  /// For each of `rows` rows on the calling thread: y = (x − mean)·rstd·w + b with mean and the
  /// biased variance of the row's `cols` values accumulated in double (rstd = 1/√(var + eps), both then
  /// rounded to float), as torch.nn.LayerNorm. x and y may be the same buffer.
  LayerNormFn* layer_norm = portable::layer_norm;

  // Probes for the tests, not called by the model: the GELU epilogue's vector erf and GELU over a
  // buffer, so that tests/kernels_norm_test.cpp can check them on every float against std::erf (the
  // epilogue itself only ever sees GEMM outputs).

  /// In place: x[i] = erf(x[i]) (the erf the GELU epilogue uses; |error| <= 2e-7 over all floats).
  InPlaceFn* erf = portable::erf;

  /// In place: x[i] = 0.5·x·(1 + erf(x/√2)) for n values (exact-erf GELU, as torch.nn.functional.gelu).
  InPlaceFn* gelu_erf = portable::gelu_erf;

  /// One attention head on the calling thread: ctx[i, :] = Σ_j softmax_j(q_i·k_jᵀ·scale)·v_j for
  /// i < tokens. q, k, v: `tokens` rows of head_dim floats each, leading dimension ld (the columns of
  /// one head inside the q | k | v buffer); ctx: [tokens, head_dim], leading dimension ldc.
  /// probs (optional, [prob_rows, tokens] row-major): receives the softmax probabilities of queries
  /// 0 … prob_rows − 1 (1: the CLS row; tokens: the whole map), the values ctx is computed from. The
  /// scores of a block of queries stay in the cache (never all N×N at once); the result does not
  /// depend on which thread runs it, nor on whether probs is asked for.
  AttentionHeadFn* attention_head = portable::attention_head;
  /// attention_head with bf16 products, for bf16 compute (the definition: attention_blocked.hpp's
  /// PairProducts): vdpbf16ps where the CPU has AVX512_BF16, else the portable emulation.
  AttentionHeadFn* attention_head_bf16 = portable::attention_head_bf16;

  /// Runs `iterations` rounds of independent register-only FMA chains; returns the FLOPs done (the
  /// FMA-peak measurement of src/cpu/cpu.cpp).
  BurstFn* fma_burst = portable::fma_burst;

  /// Runs the GEMM's micro-kernel alone `calls` times on packed panels that stay in L1 (depth 128,
  /// C stored on every call); returns the FLOPs done: the ceiling of the GEMM code with no memory
  /// traffic (gemm_bench). The portable table, which has no micro-kernel, runs its scalar FMA loop.
  BurstFn* microkernel_burst = portable::fma_burst;
};

/// The table of `isa` if this build has it and the CPU runs it, else of the best variant below it.
/// Tables are built once; the reference stays valid for the whole process. Thread-safe.
const KernelTable& kernels(Isa isa);

/// Each variant's table, defined in its own file (called once, by kernels()).
KernelTable portable_kernel_table();
#if VITMSN_X86_KERNELS
KernelTable avx2_kernel_table();
KernelTable avx512_kernel_table();
#endif
/// The int8 GEMM variants behind the AVX2 table's gemm_int8, each in the namespace of its instruction
/// set (with the tables, the only names of the ISA files with external linkage): vpmaddubsw
/// (src/cpu/kernels_avx2.cpp) and vpdpbusd on ymm (src/cpu/kernels_avxvnni.cpp). Same contract as
/// KernelTable::gemm_int8; callable only on CPUs with AVX2 (and AVX-VNNI), and defined only in
/// x86-64 builds with GCC or Clang (VITMSN_X86_KERNELS). avx2::best_gemm_int8() is the one of the
/// two this CPU runs: the AVX2 table's entry, and the AVX-512 table's on CPUs without AVX512-VNNI.
namespace avx2 {
extern GemmInt8Fn* const gemm_int8_maddubs;
GemmInt8Fn* best_gemm_int8();
}  // namespace avx2
namespace avxvnni {
extern GemmInt8Fn* const gemm_int8_avxvnni;
}

/// Whether bf16 compute pays on this CPU: the best table's bf16_burst runs at least 1.5× its
/// fma_burst (a 2 × ~10 ms probe, once per process). False where there is no bf16 dot product.
bool bf16_compute_pays();

// Thin wrappers: the entry of kernels(isa), with the contracts above.

inline void gemm(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
                 bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  kernels(isa).gemm(M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep, threads);
}

/// Any WeightType: kF32 is exactly gemm(isa, …, W, ldw, b_trans = true, …).
inline void gemm_weights(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const void* W, WeightType wt,
                         std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  if (wt == WeightType::kF32) {
    kernels(isa).gemm(M, N, K, A, lda, static_cast<const float*>(W), ldw, /*b_trans=*/true, C, ldc, ep, threads);
  } else {
    kernels(isa).gemm_weights(M, N, K, A, lda, W, wt, ldw, C, ldc, ep, threads);
  }
}

inline void gelu_erf(Isa isa, float* x, std::ptrdiff_t n) { kernels(isa).gelu_erf(x, n); }

}  // namespace vitmsn::detail
