#pragma once
// The packed, register-blocked GEMM (GotoBLAS/BLIS scheme) and the vectorised exp/erf, written once
// over a small vector-traits type `V` and instantiated per instruction set by src/cpu/kernels_avx2.cpp
// and src/cpu/kernels_avx512.cpp (each compiled with its own -m flags). Everything here has internal linkage
// (anonymous namespace): every file that includes it gets its own copy compiled for its own ISA, so the
// linker can never pick an AVX-512 body for the AVX2 path.
//
// V provides (all static): R (register type), M (lane-mask type), kLanes, zero, set1, load, store,
// load_n / store_n (first n lanes; the others read as 0 / left untouched; no access past n),
// lanes_below(n) -> M, bcast(const float*), fma(a, b, c) = a·b + c and fnma(a, b, c) = c − a·b
// (rounded once), add, sub, mul, min, max, abs, lt(a, b) -> M, select(m, a, b) = m ? a : b,
// sign_of(x) (sign bits only), or_bits, round (to nearest even), pow2(n) (2^n for integral n in
// [-126, 127]), hmax, hsum, and transpose8(src, lds, dst, ldd): dst[c·ldd + r] = src[r·lds + c] for
// an 8×8 block; transpose8_half<T>(src, lds, dst, ldd): the same for 16-bit weights of type T
// (kBF16 / kF16), widened to float exactly as widen<T> below.
//
// Loop nest of one thread computing C[m0:m1, n0:n1] (names as in BLIS):
//   jc: nc columns  -> pack op(B)[:, jc:jc+nc] for ALL of K into NR-wide panels (k-major)
//     ic: mc rows
//       pc: kc deep -> pack A[ic:ic+mc, pc:pc+kc] (row-major copy, or k-major MR-row groups)
//         jr: NR-wide panel   (its kc×NR slice stays in L1 across ir)
//           ir: MR rows       -> micro-tile MR×NR: acc (0, or the partial sum stored in C) += A·B
// Every C element is one FMA chain over k = 0..K-1 in order (partials are stored and reloaded
// unrounded between kc blocks), so the result does not depend on the thread count, on mc/nc/kc, or on
// where a tile sits. The epilogue is applied to the finished tile in the last kc block, as it is stored.
// When K spans several kc blocks and a residual is added, the residual block is copied aside first, so
// residual == C (in-place x += …) works although C holds partial sums in between.
//
// Half-size weights (gemm_weights: bf16 / f16 W [N,K], b_trans): only pack_b differs. It widens the
// 16-bit values to float while it transposes them into the panels (V::transpose8_half<T>, scalar
// bf16_to_float / half_to_float of src/cpu/half.hpp for the edges), so the packed panels, the micro-kernel and
// therefore the results are exactly those of the float32 GEMM run on the widened weights. Each weight is widened once
// per thread range that needs it (the same number of times B is packed for float32).

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>

#include "base/contract.hpp"
#include "cpu/buffer.hpp"
#include "cpu/half.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"
#include "cpu/polynomial.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX2__) && defined(__F16C__)
#include <immintrin.h>
#endif

namespace vitmsn::detail::blocked {
namespace {

// Own integer helpers instead of std::min/max/clamp: a template instantiated in an ISA file could be
// emitted out of line (e.g. -O0) and picked by the linker for portable code.
constexpr int imin(int a, int b) { return a < b ? a : b; }
constexpr int imax(int a, int b) { return a > b ? a : b; }
constexpr int iclamp(int v, int lo, int hi) { return v < lo ? lo : (v > hi ? hi : v); }

// ---------------------------------------------------------------------------------------------
// 16-bit weights -> float, scalar (edges of the packing): src/cpu/half.hpp's exact conversions.

template <WeightType T>
inline float widen(std::uint16_t h) {
  return T == WeightType::kBF16 ? bf16_to_float(h) : half_to_float(h);
}

#if defined(__AVX2__) && defined(__F16C__)
// 8×8 transposes of float and of 16-bit weights widened to float (for the ISA files' V::transpose8*).
namespace ymm {

/// 8 consecutive 16-bit weights widened to float: bf16 by zero-extension and a 16-bit shift, f16 by F16C.
template <WeightType T>
inline __m256 widen8(const std::uint16_t* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  if constexpr (T == WeightType::kBF16) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    return _mm256_cvtph_ps(h);
  }
}

/// dst[c·ldd + r] = r_r[c] for r, c < 8: the 8×8 transpose of eight rows held in registers.
inline void transpose8_store(__m256 r0, __m256 r1, __m256 r2, __m256 r3, __m256 r4, __m256 r5, __m256 r6, __m256 r7,
                             float* dst, std::ptrdiff_t ldd) {
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  const __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  const __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  const __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  _mm256_storeu_ps(dst + 0 * ldd, _mm256_permute2f128_ps(u0, u4, 0x20));
  _mm256_storeu_ps(dst + 1 * ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
  _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
  _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
  _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
  _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
  _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
  _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

/// dst[c·ldd + r] = src[r·lds + c] for r, c < 8 (float).
inline void transpose8(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
  transpose8_store(_mm256_loadu_ps(src + 0 * lds), _mm256_loadu_ps(src + 1 * lds), _mm256_loadu_ps(src + 2 * lds),
                   _mm256_loadu_ps(src + 3 * lds), _mm256_loadu_ps(src + 4 * lds), _mm256_loadu_ps(src + 5 * lds),
                   _mm256_loadu_ps(src + 6 * lds), _mm256_loadu_ps(src + 7 * lds), dst, ldd);
}

/// dst[c·ldd + r] = widen(src[r·lds + c]) for r, c < 8.
template <WeightType T>
inline void transpose8_half(const std::uint16_t* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
  transpose8_store(widen8<T>(src + 0 * lds), widen8<T>(src + 1 * lds), widen8<T>(src + 2 * lds),
                   widen8<T>(src + 3 * lds), widen8<T>(src + 4 * lds), widen8<T>(src + 5 * lds),
                   widen8<T>(src + 6 * lds), widen8<T>(src + 7 * lds), dst, ldd);
}

}  // namespace ymm
#endif

// ---------------------------------------------------------------------------------------------
// exp and erf, float, vectorised. Coefficients: weighted least-squares / Lawson fits (near minimax)
// computed with mpmath at 40 digits. Measured over every float of the range (AVX2 build, against
// double-precision std::exp / std::erf): exp <= 0.98 ulp on [-87.33, 88.3], erf <= 1.23 ulp (<= 0.94
// below 0.875). tests/kernels_norm_test.cpp checks GELU (erf, through exp) on dense grids.

/// e^x for x <= 88.37 (larger x saturate there); 0 below -87.33 (no subnormal results). ~1 ulp.
template <class V>
inline typename V::R exp_v(typename V::R x) {
  using R = typename V::R;
  const R lo = V::set1(-87.3365447f);  // e^lo = 2^-126 (smallest normal float)
  const R hi = V::set1(88.3762626f);   // keeps n <= 127
  const auto underflow = V::lt(x, lo);
  x = V::min(V::max(x, lo), hi);
  // x = n·ln2 + r, |r| <= ln2/2; ln2 split in two (Cody–Waite), both products exact thanks to FMA.
  const R n = V::round(V::mul(x, V::set1(1.44269504088896341f)));
  R r = V::fma(n, V::set1(-0.693145751953125f), x);
  r = V::fma(n, V::set1(-1.42860682030941723212e-6f), r);
  // e^r = 1 + r + r²·p(r), p of degree 5 (fit error 2.7e-9 relative on p).
  const R p = horner<V>(r, 1.985777930081782e-4f, 1.3933597431425681e-3f, 8.333360741061035e-3f, 4.166646552907774e-2f,
                        1.6666666532321517e-1f, 5.000000013379328e-1f);
  const R e = V::add(V::fma(V::mul(r, r), p, r), V::set1(1.0f));
  return V::select(underflow, V::zero(), V::mul(e, V::pow2(n)));
}

/// erf(x), float, ~1 ulp. |x| < 0.875: x·P(x²). Above: 1 − erfc(|x|) with
/// erfc(a) = exp(−a² + g(a)), g(a) = ln erfc(a) + a² a polynomial in (a − 2.4375) on [0.875, 4];
/// the exponent g − a² is formed with one FMA (one rounding). erf is ±1 in float beyond |x| = 4.
template <class V>
inline typename V::R erf_v(typename V::R x) {
  using R = typename V::R;
  const R a = V::abs(x);
  // Small |x|: erf(a) = a + a·(P(t) − 1), P = erf(a)/a of degree 6 in t = a² on [0, 0.875²]
  // (fit error 2e-10).
  const R t = V::mul(a, a);
  // The last coefficient is 2/√π − 1: the leading a is added exactly.
  const R p =
      horner<V>(t, 8.67535639092485e-05f, -8.211095389079671e-04f, 5.206746657042618e-03f, -2.6861584384388022e-02f,
                1.1283732996765618e-01f, -3.7612636065359406e-01f, 0.128379166869336f);
  const R small = V::fma(a, p, a);
  // Large |x|.
  // Beyond 4, erfc < 1.6e-8 < ulp(1)/2 and erf is ±1 exactly: clamping there gives that.
  const R ac = V::min(V::max(a, V::set1(0.875f)), V::set1(4.0f));
  const R u = V::sub(ac, V::set1(2.4375f));
  // g(a), degree 10 in u = a - 2.4375, highest power first (fit error 3.1e-9 on [0.875, 4]).
  const R g =
      horner<V>(u, -6.207562054874025e-08f, -2.1738505550041423e-08f, 1.984329832948296e-06f, -1.3989708606248185e-05f,
                8.262043001314161e-05f, -0.0004505262044691479f, 0.0023017655249173564f, -0.011416429673291808f,
                0.05819392421699341f, -0.3598234045938444f, -1.5345508751387895f);
  const R erfc = exp_v<V>(V::fnma(ac, ac, g));  // g − a², rounded once
  const R large = V::sub(V::set1(1.0f), erfc);
  const R r = V::select(V::lt(a, V::set1(0.875f)), small, large);
  return V::or_bits(r, V::sign_of(x));
}

/// torch's exact GELU in float: x·0.5·(1 + erf(x·√½)), same operation order as the portable path.
template <class V>
inline typename V::R gelu_v(typename V::R x) {
  const typename V::R e = erf_v<V>(V::mul(x, V::set1(0.70710678118654752440f)));
  return V::mul(V::mul(x, V::set1(0.5f)), V::add(V::set1(1.0f), e));
}

// ---------------------------------------------------------------------------------------------
// Thread-local, grow-only, 64-byte-aligned scratch (FloatBuffer::get; reused across calls: no
// allocation in the steady state).

struct Workspace {
  FloatBuffer a;         // packed A block, mc × kc (row-major, row stride rsa)
  FloatBuffer b;         // packed B, K × nc in NR-wide panels
  FloatBuffer residual;  // residual block set aside when K spans several kc blocks
};

inline Workspace& workspace() {
  static thread_local Workspace ws;
  return ws;
}

// ---------------------------------------------------------------------------------------------

struct Problem {
  int M, N, K;
  const float* A;
  std::ptrdiff_t lda;
  const float* B;
  std::ptrdiff_t ldb;
  bool b_trans;
  float* C;
  std::ptrdiff_t ldc;
  Epilogue ep;
  // Half-size B: when wtype is kBF16 or kF16, B is ignored and Bh holds the 16-bit values, [N,K]
  // (b_trans must be true) with leading dimension ldb in elements.
  const std::uint16_t* Bh = nullptr;
  WeightType wtype = WeightType::kF32;
  // b_trans only: op(B)ᵀ stacked from `segments` matrices of seg_rows rows each (the query, key and
  // value weights as one [3·D, D] operand); segment s's rows start at segs[s] (float or 16-bit as
  // wtype, leading dimension ldb). segments == 1: B / Bh as above.
  int segments = 1;
  int seg_rows = 0;
  const void* segs[3] = {nullptr, nullptr, nullptr};
  // Pre-packed op(B) (KernelTable::gemm_packed): ceil(N / NR) panels of K × NR floats, panel q at
  // Bp + q·K·NR, in the layout pack_b_slice writes (pack_panels below). B, Bh and segs are then unused
  // and nothing is packed per call; the arithmetic is the same.
  const float* Bp = nullptr;
};

/// The Problem of KernelTable::gemm_weights_stacked: C = epilogue(A·[W_0; …; W_{S−1}]ᵀ), `segments`
/// weights of seg_rows rows each, of type wt, leading dimension ldw.
inline Problem stacked_problem(int M, int seg_rows, int segments, int K, const float* A, std::ptrdiff_t lda,
                               const void* const* W, WeightType wt, std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc,
                               const Epilogue& ep) {
  VITMSN_DASSERT(segments >= 1 && segments <= 3, "1 to 3 stacked weight segments (Problem::segs has 3)");
  VITMSN_DASSERT(seg_rows > 0 && K > 0 && ldw >= K, "stacked weights: seg_rows > 0, K > 0, ldw >= K");
  Problem p{M, seg_rows * segments, K, A, lda, nullptr, ldw, /*b_trans=*/true, C, ldc, ep, nullptr, wt};
  p.segments = segments;
  p.seg_rows = seg_rows;
  for (int s = 0; s < segments; ++s) p.segs[s] = W[s];
  if (segments == 1) {  // one weight: b_row reads B / Bh
    p.B = wt == WeightType::kF32 ? static_cast<const float*>(W[0]) : nullptr;
    p.Bh = wt == WeightType::kF32 ? nullptr : static_cast<const std::uint16_t*>(W[0]);
  }
  return p;
}

/// Row n of op(B)ᵀ (b_trans) as stored: float* or const std::uint16_t*, across segments.
template <class T>
inline const T* b_row(const Problem& p, int n) {
  if (p.segments == 1) {
    const T* base = std::is_same<T, float>::value ? reinterpret_cast<const T*>(p.B) : reinterpret_cast<const T*>(p.Bh);
    return base + static_cast<std::ptrdiff_t>(n) * p.ldb;
  }
  return static_cast<const T*>(p.segs[n / p.seg_rows]) + static_cast<std::ptrdiff_t>(n % p.seg_rows) * p.ldb;
}

/// True when rows [n, n + count) of op(B)ᵀ are equally spaced (one segment): a strided transpose may
/// read them.
inline bool b_rows_contiguous(const Problem& p, int n, int count) {
  return p.segments == 1 || n / p.seg_rows == (n + count - 1) / p.seg_rows;
}

struct TileEpilogue {
  float alpha;
  bool scale;
  const float* bias;  // at the tile's first column, or null
  bool gelu;
  const float* residual;  // at the tile's first element, or null
  std::ptrdiff_t ldr;
};

/// One vector of a finished tile through the epilogue, in this order: ·alpha (when ep.scale), + bias,
/// GELU (Gelu: ep.gelu, as a template argument so that the register-only callers carry no GELU code),
/// + the residual's first n lanes (when ep.residual; `residual` points at this vector's).
template <class V, bool Gelu>
__attribute__((always_inline)) inline typename V::R epilogue_vector(typename V::R x, const TileEpilogue& ep,
                                                                    typename V::R alpha, typename V::R bias,
                                                                    const float* residual, int n) {
  if (ep.scale) x = V::mul(x, alpha);
  if (ep.bias) x = V::add(x, bias);
  if constexpr (Gelu) x = gelu_v<V>(x);
  if (ep.residual) x = V::add(x, n == V::kLanes ? V::load(residual) : V::load_n(residual, n));
  return x;
}

/// finish_tile's work for one epilogue kind: a row at a time (a full tile, Full, as straight-line code
/// over its columns), each vector loaded, put through epilogue_vector and stored.
template <class V, int MR, int NV, bool Gelu, bool Full>
__attribute__((always_inline)) inline void finish_rows(const float* tile, float* c, std::ptrdiff_t ldc, int rows,
                                                       int cols, const TileEpilogue& ep) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  constexpr int NR = NV * L;
  const R alpha = V::set1(ep.alpha);
  R bias[NV];
  int lanes[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) {
    lanes[j] = Full ? L : iclamp(cols - j * L, 0, L);
    bias[j] = !ep.bias ? V::zero() : Full ? V::load(ep.bias + j * L) : V::load_n(ep.bias + j * L, lanes[j]);
  }
  const int n_rows = Full ? MR : rows;
#pragma GCC unroll 2
  for (int i = 0; i < n_rows; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      const int n = lanes[j];
      if (n == 0) break;
      const float* residual = ep.residual ? ep.residual + i * ep.ldr + j * L : nullptr;
      const R x = epilogue_vector<V, Gelu>(V::load(tile + i * NR + j * L), ep, alpha, bias[j], residual, n);
      if (n == L)
        V::store(c + i * ldc + j * L, x);
      else
        V::store_n(c + i * ldc + j * L, x, n);
    }
}

/// Stores a computed MR×NR tile (row-major in `tile`) to C: the epilogue when `ep` is given, only the
/// valid rows × cols. A row at a time: with GELU, 2·MR independent evaluations in a row that the
/// out-of-order core overlaps, without spilling (all MR·NV at once: fc1 with GELU 2-3 % slower, measured
/// on Zen 5).
template <class V, int MR, int NV>
__attribute__((noinline)) void finish_tile(const float* tile, float* c, std::ptrdiff_t ldc, int rows, int cols,
                                           const TileEpilogue* ep) {
  constexpr int L = V::kLanes;
  constexpr int NR = NV * L;
  if (ep == nullptr) {
    for (int i = 0; i < rows; ++i)
      for (int j = 0; j < NV; ++j) {
        const int n = iclamp(cols - j * L, 0, L);
        if (n == 0) break;
        V::store_n(c + i * ldc + j * L, V::load(tile + i * NR + j * L), n);
      }
    return;
  }
  const bool full = rows == MR && cols == NR;
  if (ep->gelu) {
    if (full)
      finish_rows<V, MR, NV, true, true>(tile, c, ldc, rows, cols, *ep);
    else
      finish_rows<V, MR, NV, true, false>(tile, c, ldc, rows, cols, *ep);
  } else {
    if (full)
      finish_rows<V, MR, NV, false, true>(tile, c, ldc, rows, cols, *ep);
    else
      finish_rows<V, MR, NV, false, false>(tile, c, ldc, rows, cols, *ep);
  }
}

/// Lines a micro-tile prefetches into L2 for the slice that follows its own (one line every 8
/// k-steps): `count` lines, line i at base + (first + i) / per_row · row_stride + (first + i) % per_row
/// · 16 floats. The slice is either rows of B still to be packed (per_row lines per row of B) or an
/// already packed slice (one contiguous run: row_stride 0, per_row = count; the bf16 GEMM's slices of
/// 32-bit words are addressed as floats, 16 to a line as well).
struct Prefetch {
  const float* base = nullptr;
  std::ptrdiff_t row_stride = 0;
  int per_row = 1;
  int first = 0;
  int count = 0;
  const float* line(int i) const {
    const int l = first + i;
    if (row_stride == 0) return base + static_cast<std::ptrdiff_t>(l) * 16;  // one run: no division
    return base + static_cast<std::ptrdiff_t>(l / per_row) * row_stride + (l % per_row) * 16;
  }
  /// Row tile t's share of these lines, of `tiles` tiles whose k loops run `steps` steps: its run of
  /// them, at most one per 8 steps.
  Prefetch share(int t, int tiles, int steps) const {
    Prefetch mine = *this;
    mine.first = first + split_begin(count, t, tiles);
    mine.count = imin(split_begin(count, t + 1, tiles) - split_begin(count, t, tiles), (steps + 7) / 8);
    return mine;
  }
  /// At k-step k of a micro-tile: every 8th step, the next of its lines into L2.
  void at_step(int k) const {
    if ((k & 7) == 0 && (k >> 3) < count) __builtin_prefetch(line(k >> 3), 0, 2);
  }
};

/// The first `rows` of the MR × NR tile of C at c (row stride ldc), fetched for writing (L2/L3 -> L1)
/// while the current tile computes: the next micro-tile's C rows.
template <int MR, int NR>
__attribute__((always_inline)) inline void prefetch_tile_for_write(const float* c, std::ptrdiff_t ldc, int rows) {
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i) {
    if (i < rows) {
      __builtin_prefetch(c + i * ldc, 1, 3);
      __builtin_prefetch(c + i * ldc + NR - 1, 1, 3);
    }
  }
}

/// Stores a micro-tile's accumulators (MR × NV registers) to C: straight to C for a full tile without
/// GELU (the epilogue applied on the registers: 1 % faster than through finish_tile on Zen 5);
/// otherwise through a stack tile to finish_tile(), a separate function, so that its register needs
/// (GELU) do not make the compiler spill the accumulators of the caller's k loop. The float32 and bf16
/// micro-tiles end with it.
template <class V, int MR, int NV>
__attribute__((always_inline)) inline void store_accumulators(const typename V::R (&acc)[MR][NV], float* c,
                                                              std::ptrdiff_t ldc, int rows, int cols, bool full,
                                                              const TileEpilogue* ep) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  constexpr int NR = NV * L;
  if (full && ep == nullptr) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) V::store(c + i * ldc + j * L, acc[i][j]);
    return;
  }
  if (full && !ep->gelu) {  // scale, bias, residual: on the registers, no trip through the stack
    const R alpha = V::set1(ep->alpha);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      const R bias = ep->bias ? V::load(ep->bias + j * L) : V::zero();
#pragma GCC unroll 32
      for (int i = 0; i < MR; ++i) {
        const float* residual = ep->residual ? ep->residual + i * ep->ldr + j * L : nullptr;
        V::store(c + i * ldc + j * L, epilogue_vector<V, false>(acc[i][j], *ep, alpha, bias, residual, L));
      }
    }
    return;
  }
  alignas(64) float tile[MR][NR];
#pragma GCC unroll 32
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) V::store(&tile[i][j * L], acc[i][j]);
  finish_tile<V, MR, NV>(&tile[0][0], c, ldc, rows, cols, ep);
}

/// The MR×NR micro-tile (NR = NV·kLanes): C = acc(·) + A_panel · B_panel over kc, where acc starts at 0
/// (first) or at the partial sum stored in C. Without `ep`, the raw sum is stored (more kc blocks
/// follow); with it, the epilogue is applied first. rows <= MR, cols <= NR: the valid part of the tile.
/// The accumulators are only ever indexed by constants (fully unrolled loops) so that they stay in
/// registers.
template <class V, int MR, int NV, bool KMajorA>
inline void micro_tile(int kc, const float* __restrict a, std::ptrdiff_t rsa, const float* __restrict b, float* c,
                       std::ptrdiff_t ldc, int rows, int cols, bool first, const TileEpilogue* ep, const Prefetch& pf,
                       const float* c_next, int next_rows) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  constexpr int NR = NV * L;
  R acc[MR][NV];
  const bool full = rows == MR && cols == NR;
  prefetch_tile_for_write<MR, NR>(c_next, ldc, next_rows);
  if (first) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = V::zero();
  } else if (full) {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = V::load(c + i * ldc + j * L);
  } else {
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i)
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j)
        acc[i][j] = i < rows ? V::load_n(c + i * ldc + j * L, iclamp(cols - j * L, 0, L)) : V::zero();
  }

#pragma GCC unroll 4
  for (int k = 0; k < kc; ++k) {
    pf.at_step(k);  // one line of what the next slice needs (see Prefetch)
    R bv[NV];
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) bv[j] = V::load(b + k * NR + j * L);
#pragma GCC unroll 32
    for (int i = 0; i < MR; ++i) {
      const R av = V::bcast(KMajorA ? a + k * MR + i : a + i * rsa + k);
#pragma GCC unroll 8
      for (int j = 0; j < NV; ++j) acc[i][j] = V::fma(av, bv[j], acc[i][j]);
    }
  }

  store_accumulators<V, MR, NV>(acc, c, ldc, rows, cols, full, ep);
}

/// widen<T> as a function of float for the f32 case (identity), so one packing loop serves all types.
template <class T, WeightType W>
inline float element(T v) {
  if constexpr (std::is_same<T, float>::value) {
    return v;
  } else {
    return widen<W>(v);
  }
}

/// Packs rows k0..k0+kb of op(B)ᵀ's columns… i.e. op(B)[k0:k0+kb, n0:n0+valid] with B [N,K] (b_trans)
/// of element type T (float, or 16-bit widened as W), into the kb × NR slice at dst (row stride NR),
/// columns past `valid` zero. 8×8 transposes where 8 rows lie in one segment, scalar otherwise.
template <class V, int NR, class T, WeightType W>
void pack_b_slice_trans(const Problem& p, int n0, int valid, int k0, int kb, float* dst) {
  for (int j8 = 0; j8 < NR; j8 += 8) {
    const int vr = iclamp(valid - j8, 0, 8);
    if (vr == 0) {  // columns past N: zeros
      for (int k = 0; k < kb; ++k)
        for (int r = 0; r < 8; ++r) dst[k * NR + j8 + r] = 0.0f;
      continue;
    }
    int k = 0;
    if (vr == 8 && b_rows_contiguous(p, n0 + j8, 8)) {
      const T* s = b_row<T>(p, n0 + j8) + k0;
      for (; k + 8 <= kb; k += 8) {
        if constexpr (std::is_same<T, float>::value) {
          V::transpose8(s + k, p.ldb, dst + k * NR + j8, NR);
        } else {
          V::template transpose8_half<W>(s + k, p.ldb, dst + k * NR + j8, NR);
        }
      }
    }
    for (int r = 0; r < 8; ++r) {
      const T* s = r < vr ? b_row<T>(p, n0 + j8 + r) + k0 : nullptr;
      for (int kk = k; kk < kb; ++kk) dst[kk * NR + j8 + r] = s ? element<T, W>(s[kk]) : 0.0f;
    }
  }
}

/// Packs op(B)[k0:k0+kb, n0:n0+valid] into the kb × NR slice at dst (row stride NR; columns past
/// `valid` zero): one k-block of one NR-wide panel, in the layout micro_tile reads.
template <class V, int NR>
void pack_b_slice(const Problem& p, int n0, int valid, int k0, int kb, float* dst) {
  if (p.b_trans) {
    if (p.wtype == WeightType::kBF16)
      return pack_b_slice_trans<V, NR, std::uint16_t, WeightType::kBF16>(p, n0, valid, k0, kb, dst);
    if (p.wtype == WeightType::kF16)
      return pack_b_slice_trans<V, NR, std::uint16_t, WeightType::kF16>(p, n0, valid, k0, kb, dst);
    return pack_b_slice_trans<V, NR, float, WeightType::kF32>(p, n0, valid, k0, kb, dst);
  }
  // B is [K, N]: a k-slice of the panel is a piece of row k.
  constexpr int L = V::kLanes;
  for (int k = 0; k < kb; ++k) {
    const float* s = p.B + static_cast<std::ptrdiff_t>(k0 + k) * p.ldb + n0;
    float* dk = dst + k * NR;
    for (int j = 0; j < NR; j += L) {
      const int n = iclamp(valid - j, 0, L);
      V::store(dk + j, n == L ? V::load(s + j) : V::load_n(s + j, n));
    }
  }
}

/// Packs A[m0:m0+mb, k0:k0+kb] for the micro-tiles, rows padded with zeros to a multiple of MR.
/// Row-major (KMajorA false): a plain copy, row stride rsa; the kernel reads MR rows as MR streams.
/// K-major (KMajorA true): each MR-row group as kb slices of MR values (group stride MR·rsa); the
/// kernel reads one stream with constant offsets, which keeps tall tiles (MR = 14) from running out
/// of general-purpose registers for row addresses.
template <class V, int MR, bool KMajorA>
void pack_a(const Problem& p, int m0, int mb, int k0, int kb, float* dst, std::ptrdiff_t rsa) {
  const auto row = [&](int i) { return p.A + static_cast<std::ptrdiff_t>(m0 + i) * p.lda + k0; };
  if constexpr (!KMajorA) {
    for (int i = 0; i < mb; ++i) std::memcpy(dst + i * rsa, row(i), sizeof(float) * static_cast<std::size_t>(kb));
    const int padded = (mb + MR - 1) / MR * MR;
    for (int i = mb; i < padded; ++i) std::memset(dst + i * rsa, 0, sizeof(float) * static_cast<std::size_t>(kb));
  } else {
    for (int r0 = 0; r0 < mb; r0 += MR) {
      float* d = dst + static_cast<std::ptrdiff_t>(r0) * rsa;
      const int rows = imin(MR, mb - r0);
      int k = 0;
      if (rows == MR && MR >= 8) {
        // 8×8 transposes of rows [0, 8) and [MR − 8, MR) (overlapping when MR < 16).
        for (; k + 8 <= kb; k += 8)
          for (int i0 = 0; i0 < MR; i0 += 8) {
            const int i = imin(i0, MR - 8);
            V::transpose8(row(r0 + i) + k, p.lda, d + k * MR + i, MR);
          }
      }
      for (int i = 0; i < MR; ++i) {
        if (i < rows) {
          const float* s = row(r0 + i);
          for (int kk = k; kk < kb; ++kk) d[kk * MR + i] = s[kk];
        } else {
          for (int kk = k; kk < kb; ++kk) d[kk * MR + i] = 0.0f;
        }
      }
    }
  }
}

/// One thread's share: C[m0:m1, n0:n1].
///
/// B is packed a kc × NR slice at a time, right before the first row block uses it (so a weight read
/// from memory is packed and then used by every row tile while it is in L1/L2), into a K × nc buffer
/// that later row blocks reuse. While one slice computes, its micro-tiles prefetch into L2 what the
/// next slice needs: the rows of B it will be packed from (first row block), or the packed slice.
template <class V, int MR, int NV, bool KMajorA>
void gemm_range(const Problem& p, int m0, int m1, int n0, int n1, const Blocking& bl) {
  constexpr int NR = NV * V::kLanes;
  if (m0 >= m1 || n0 >= n1) return;
  const int K = p.K;
  // K in equal kc blocks (<= bl.kc): no short last block (K = 1025 runs as 5 × 205, not 4 × 256 + 1).
  const int k_blocks = imax(1, (K + imax(1, bl.kc) - 1) / imax(1, bl.kc));
  const int kc = imax(1, (K + k_blocks - 1) / k_blocks);
  const int mc = imax(MR, bl.mc / MR * MR);
  const int width = (n1 - n0 + NR - 1) / NR * NR;
  const std::size_t budget_cols = bl.b_pack_floats / static_cast<std::size_t>(imax(K, 1)) / NR * NR;
  const int nc_budget = budget_cols > (1u << 30) ? (1 << 30) : static_cast<int>(budget_cols);
  const int nc = imin(width, imax(NR, nc_budget));
  const std::ptrdiff_t rsa = (imin(kc, imax(K, 1)) + 15) / 16 * 16;
  const bool multi_k = K > kc;
  const bool save_residual = multi_k && p.ep.residual != nullptr;
  // Prefetching rows of B to pack works on float rows (16 per line); 16-bit and [K,N] B rely on the
  // hardware prefetchers.
  const bool prefetch_source = p.b_trans && p.wtype == WeightType::kF32 && !p.Bp;

  Workspace& ws = workspace();
  // Packed B of this jc block: the per-call buffer (filled by the first row block), or the weights'
  // own pre-packed panels.
  float* const bws = p.Bp ? nullptr : ws.b.get(static_cast<std::size_t>(nc) * imax(K, 1));
  float* ap = ws.a.get(static_cast<std::size_t>(mc) * rsa);
  float* rs = save_residual ? ws.residual.get(static_cast<std::size_t>(mc) * nc) : nullptr;

  for (int jc = n0; jc < n1; jc += nc) {
    const int nb = imin(nc, n1 - jc);
    const float* const bp = p.Bp ? p.Bp + static_cast<std::ptrdiff_t>(jc / NR) * K * NR : bws;
    for (int ic = m0; ic < m1; ic += mc) {
      const int mb = imin(mc, m1 - ic);
      const bool pack_now = ic == m0 && !p.Bp;
      const int tiles = (mb + MR - 1) / MR;
      if (save_residual) {
        for (int i = 0; i < mb; ++i)
          std::memcpy(rs + static_cast<std::ptrdiff_t>(i) * nb,
                      p.ep.residual + static_cast<std::ptrdiff_t>(ic + i) * p.ep.ldr + jc,
                      sizeof(float) * static_cast<std::size_t>(nb));
      }
      int pc = 0;
      do {
        const int kb = imin(kc, K - pc);
        pack_a<V, MR, KMajorA>(p, ic, mb, pc, kb, ap, rsa);
        const bool first = pc == 0;
        const bool last = pc + kb >= K;
        TileEpilogue te{p.ep.alpha, p.ep.alpha != 1.0f, nullptr, p.ep.gelu, nullptr, 0};
        for (int jr = 0; jr < nb; jr += NR) {
          const int cols = imin(NR, nb - jr);
          const std::ptrdiff_t slice =
              static_cast<std::ptrdiff_t>(jr / NR) * K * NR + static_cast<std::ptrdiff_t>(pc) * NR;
          const float* bpanel = bp + slice;
          if (pack_now) pack_b_slice<V, NR>(p, jc + jr, cols, pc, kb, bws + slice);
          // The next slice: the next panel at this k-block, or the first panel of the next one.
          Prefetch next;
          const bool next_in_block = jr + NR < nb;
          const int next_jr = next_in_block ? jr + NR : 0;
          const int next_pc = next_in_block ? pc : pc + kb;
          if (next_pc < K) {
            const int next_kb = imin(kc, K - next_pc);
            if (pack_now && prefetch_source) {
              const int next_cols = imin(NR, nb - next_jr);
              next.base = b_row<float>(p, jc + next_jr) + next_pc;
              next.row_stride = p.ldb;
              next.per_row = (next_kb + 15) / 16;
              next.count = next_cols * next.per_row;
              if (!b_rows_contiguous(p, jc + next_jr, next_cols)) next.count = 0;
            } else if (!pack_now) {
              next.base =
                  bp + static_cast<std::ptrdiff_t>(next_jr / NR) * K * NR + static_cast<std::ptrdiff_t>(next_pc) * NR;
              next.per_row = next.count = next_kb * NR / 16;
            }
          }
          if (last) te.bias = p.ep.bias ? p.ep.bias + jc + jr : nullptr;
          for (int ir = 0, t = 0; ir < mb; ir += MR, ++t) {
            const int rows = imin(MR, mb - ir);
            float* ct = p.C + static_cast<std::ptrdiff_t>(ic + ir) * p.ldc + jc + jr;
            if (last && p.ep.residual) {
              if (save_residual) {
                te.residual = rs + static_cast<std::ptrdiff_t>(ir) * nb + jr;
                te.ldr = nb;
              } else {
                te.residual = p.ep.residual + static_cast<std::ptrdiff_t>(ic + ir) * p.ep.ldr + jc + jr;
                te.ldr = p.ep.ldr;
              }
            }
            // The next tile's C rows (L2/L3 -> L1 while this tile computes).
            const bool last_tile = ir + MR >= mb;
            const float* c_next = last_tile ? ct : ct + MR * p.ldc;
            const int next_rows = last_tile ? rows : imin(MR, mb - ir - MR);
            micro_tile<V, MR, NV, KMajorA>(kb, ap + static_cast<std::ptrdiff_t>(ir) * rsa, rsa, bpanel, ct, p.ldc, rows,
                                           cols, first, last ? &te : nullptr, next.share(t, tiles, kb), c_next,
                                           next_rows);
          }
        }
        pc += kb;
      } while (pc < K);
    }
  }
}

/// Splits C over threads along N (in whole NR panels) when N is wide, else along M (whole MR tiles);
/// never along K. threads == 1 runs on the calling thread without a parallel region.
///
/// With B already packed (Problem::Bp) and at most 16 panels per thread against at least 16 row tiles
/// per thread, along M: split along N, every thread packs all of A for its few columns (at 512 columns
/// and K = 1024 about 5 % of its work), split along M only its own rows, while each reads as much of
/// the packed B either way. Measured on Zen 5 at 2 threads (weights packed, 4 sets of 15–41 alternating
/// calls): the attention output and fc2 shapes of ViT-L (N = 1024) 2–5 % faster along M in three of
/// the four, qkv and fc1 unchanged. Where B is packed per call, each thread would pack all of it: along N.
template <class V, int MR, int NV, bool KMajorA>
void gemm(const Problem& p, const Blocking& bl, int threads) {
  constexpr int NR = NV * V::kLanes;
  VITMSN_DASSERT(p.M >= 0 && p.N >= 0 && p.K >= 0, "GEMM sizes are not negative");
  if (p.M <= 0 || p.N <= 0) return;
  VITMSN_DASSERT(p.A != nullptr && p.C != nullptr && p.ldc >= p.N, "GEMM: A and C given, ldc >= N");
  VITMSN_DASSERT(p.Bp != nullptr || p.B != nullptr || p.Bh != nullptr || p.segments > 1, "GEMM: B given");
  const int panels_n = (p.N + NR - 1) / NR;
  const int tiles_m = (p.M + MR - 1) / MR;
  const bool rows_pay = p.Bp != nullptr && panels_n <= 16 * threads && tiles_m >= 16 * threads;
  const bool split_n = panels_n >= 4 * threads && !rows_pay;
  threads = imax(1, imin(threads, split_n ? panels_n : tiles_m));
  const auto part = [&](int t, int nt) {
    if (split_n) {
      const int q0 = split_begin(panels_n, t, nt);
      const int q1 = split_begin(panels_n, t + 1, nt);
      gemm_range<V, MR, NV, KMajorA>(p, 0, p.M, q0 * NR, imin(p.N, q1 * NR), bl);
    } else {
      const int q0 = split_begin(tiles_m, t, nt);
      const int q1 = split_begin(tiles_m, t + 1, nt);
      gemm_range<V, MR, NV, KMajorA>(p, q0 * MR, imin(p.M, q1 * MR), 0, p.N, bl);
    }
  };
  run_split(threads, part);
}

/// Packs op(B) of `p` (b_trans: a linear weight, maybe stacked, of any WeightType) once, for all of K,
/// into the panels gemm_range reads when Problem::Bp is set: ceil(N / NR) panels of K × NR floats,
/// panel q at dst + q·K·NR, columns past N zero. Panels are split over the threads.
template <class V, int NR>
void pack_panels(const Problem& p, float* dst, int threads) {
  VITMSN_DASSERT(p.b_trans && p.N > 0 && p.K > 0 && dst != nullptr, "panels of a linear weight [N, K] into dst");
  const int panels = (p.N + NR - 1) / NR;
  run_split(iclamp(threads, 1, imax(panels, 1)), [&](int t, int nt) {
    for (int q = split_begin(panels, t, nt); q < split_begin(panels, t + 1, nt); ++q)
      pack_b_slice<V, NR>(p, q * NR, imin(NR, p.N - q * NR), 0, p.K, dst + static_cast<std::ptrdiff_t>(q) * p.K * NR);
  });
}

// ---------------------------------------------------------------------------------------------
// Layer norm and GELU over buffers.

/// Layer norm of `rows` rows (the table's layer_norm entry): sums in double through
/// V::sum_and_squares, then y = (x − m)·rstd·w + b in float with the portable entry's operations.
template <class V>
void layer_norm_rows(const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, int rows, int cols,
                     const float* w, const float* b, double eps) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    double sum = 0.0, sumsq = 0.0;
    V::sum_and_squares(xr, cols, &sum, &sumsq);
    const double mean = sum / cols;
    const double var = mean * mean > sumsq / cols ? 0.0 : sumsq / cols - mean * mean;
    const R rstd = V::set1(static_cast<float>(1.0 / __builtin_sqrt(var + eps)));
    const R m = V::set1(static_cast<float>(mean));
    int c = 0;
    for (; c + L <= cols; c += L)
      V::store(yr + c, V::add(V::mul(V::mul(V::sub(V::load(xr + c), m), rstd), V::load(w + c)), V::load(b + c)));
    if (c < cols) {
      const int n = cols - c;
      V::store_n(
          yr + c,
          V::add(V::mul(V::mul(V::sub(V::load_n(xr + c, n), m), rstd), V::load_n(w + c, n)), V::load_n(b + c, n)), n);
    }
  }
}

/// The table's microkernel_burst: micro_tile on one packed A panel (MR × 128) and one packed B panel
/// (128 × NR), both in L1, `calls` times; every call starts from zero and stores its MR × NR tile.
template <class V, int MR, int NV, bool KMajorA>
double microkernel_burst(long calls) {
  constexpr int NR = NV * V::kLanes, KC = 128;
  alignas(64) static thread_local float a[MR * KC], b[KC * NR], c[MR * NR];
  for (int i = 0; i < MR * KC; ++i) a[i] = 1e-3f * static_cast<float>(i % 7);
  for (int i = 0; i < KC * NR; ++i) b[i] = 1e-3f * static_cast<float>(i % 5);
  const Prefetch none{};
  for (long n = 0; n < calls; ++n)
    micro_tile<V, MR, NV, KMajorA>(KC, a, KC, b, c, NR, MR, NR, /*first=*/true, nullptr, none, c, 0);
  volatile float sink = c[MR * NR - 1];
  (void)sink;
  return 2.0 * MR * NR * KC * static_cast<double>(calls);
}

/// The table's outlier_product: P[t, n] = Σ_j A[t, ch[j]]·w[j, n], one fma per term in j's order (the
/// same rounding as the portable entry's std::fma chain). Rows split over the threads.
template <class V>
void outlier_product(int M, int N, int J, const float* A, std::ptrdiff_t lda, const int* ch, const float* w, float* P,
                     std::ptrdiff_t ldp, int threads) {
  using R = typename V::R;
  constexpr int L = V::kLanes;
  run_split(iclamp(imin(threads, M / 64), 1, threads), [&](int t, int nt) {
    for (int r = split_begin(M, t, nt); r < split_begin(M, t + 1, nt); ++r) {
      const float* a = A + r * lda;
      float* p = P + r * ldp;
      int n = 0;
      for (; n + L <= N; n += L) {
        R acc = V::zero();
        for (int j = 0; j < J; ++j)
          acc = V::fma(V::set1(a[ch[j]]), V::load(w + static_cast<std::ptrdiff_t>(j) * N + n), acc);
        V::store(p + n, acc);
      }
      if (n < N) {
        const int k = N - n;
        R acc = V::zero();
        for (int j = 0; j < J; ++j)
          acc = V::fma(V::set1(a[ch[j]]), V::load_n(w + static_cast<std::ptrdiff_t>(j) * N + n, k), acc);
        V::store_n(p + n, acc, k);
      }
    }
  });
}

template <class V>
void erf_buffer(float* x, std::ptrdiff_t n) {
  constexpr int L = V::kLanes;
  std::ptrdiff_t i = 0;
  for (; i + L <= n; i += L) V::store(x + i, erf_v<V>(V::load(x + i)));
  if (i < n) V::store_n(x + i, erf_v<V>(V::load_n(x + i, static_cast<int>(n - i))), static_cast<int>(n - i));
}

template <class V>
void gelu_erf(float* x, std::ptrdiff_t n) {
  constexpr int L = V::kLanes;
  std::ptrdiff_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {  // four independent evaluations in flight
    const typename V::R a = gelu_v<V>(V::load(x + i)), b = gelu_v<V>(V::load(x + i + L));
    const typename V::R c = gelu_v<V>(V::load(x + i + 2 * L)), d = gelu_v<V>(V::load(x + i + 3 * L));
    V::store(x + i, a);
    V::store(x + i + L, b);
    V::store(x + i + 2 * L, c);
    V::store(x + i + 3 * L, d);
  }
  for (; i + L <= n; i += L) V::store(x + i, gelu_v<V>(V::load(x + i)));
  if (i < n) {
    const int k = static_cast<int>(n - i);
    V::store_n(x + i, gelu_v<V>(V::load_n(x + i, k)), k);
  }
}

}  // namespace
}  // namespace vitmsn::detail::blocked
