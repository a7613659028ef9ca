#pragma once
// The AVX-512 vector traits, for the file compiled with -mavx512f/bw/dq/vl/vnni/bf16
// (kernels_avx512.cpp): float lanes for gemm_blocked.hpp and attention_blocked.hpp (Avx512), integer
// lanes for int8_blocked.hpp on AVX512-VNNI (Int8Vnni512) and bf16 pairs for bf16_blocked.hpp on
// AVX512_BF16 (Bf16Avx512). Internal linkage, as the templates that use them.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/gemm_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {
namespace {

struct Avx512 {
  using R = __m512;
  using M = __mmask16;
  static constexpr int kLanes = 16;

  static M mask_n(int n) { return static_cast<M>((1u << n) - 1u); }  // n in [0, 16]
  static R zero() { return _mm512_setzero_ps(); }
  static R set1(float x) { return _mm512_set1_ps(x); }
  static R load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, R v) { _mm512_storeu_ps(p, v); }
  static R load_n(const float* p, int n) { return _mm512_maskz_loadu_ps(mask_n(n), p); }
  static void store_n(float* p, R v, int n) { _mm512_mask_storeu_ps(p, mask_n(n), v); }
  static M lanes_below(int n) { return mask_n(n); }
  static R bcast(const float* p) { return _mm512_set1_ps(*p); }
  static R fma(R a, R b, R c) { return _mm512_fmadd_ps(a, b, c); }
  static R fnma(R a, R b, R c) { return _mm512_fnmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm512_add_ps(a, b); }
  static R sub(R a, R b) { return _mm512_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm512_mul_ps(a, b); }
  static R min(R a, R b) { return _mm512_min_ps(a, b); }
  static R max(R a, R b) { return _mm512_max_ps(a, b); }
  static R abs(R x) { return _mm512_abs_ps(x); }
  static R sign_of(R x) {
    return _mm512_castsi512_ps(
        _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(static_cast<int>(0x80000000u))));
  }
  static R or_bits(R a, R b) {
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(a), _mm512_castps_si512(b)));
  }
  static M lt(R a, R b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
  static R select(M m, R a, R b) { return _mm512_mask_blend_ps(m, b, a); }
  static R round(R x) { return _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R pow2(R n) {
    const __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
    return _mm512_castsi512_ps(_mm512_slli_epi32(e, 23));
  }
  static float hmax(R v) { return _mm512_reduce_max_ps(v); }
  /// x·2^n for integral n (vscalefps): 0 or ∞ where that leaves the float range.
  static constexpr bool kHasScalef = true;
  static R scalef(R x, R n) { return _mm512_scalef_ps(x, n); }
  static float hsum(R v) { return _mm512_reduce_add_ps(v); }
  /// Σx and Σx² of n floats, accumulated in double (8 lanes per half vector).
  static void sum_and_squares(const float* p, int n, double* sum, double* sumsq) {
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd(), q0 = _mm512_setzero_pd(), q1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
      const __m512d a = _mm512_cvtps_pd(_mm256_loadu_ps(p + i)), b = _mm512_cvtps_pd(_mm256_loadu_ps(p + i + 8));
      s0 = _mm512_add_pd(s0, a);
      s1 = _mm512_add_pd(s1, b);
      q0 = _mm512_fmadd_pd(a, a, q0);
      q1 = _mm512_fmadd_pd(b, b, q1);
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1)), q = _mm512_reduce_add_pd(_mm512_add_pd(q0, q1));
    for (; i < n; ++i) {
      const double v = p[i];
      s += v;
      q += v * v;
    }
    *sum = s;
    *sumsq = q;
  }
  /// transpose8 of 16-bit weights, widened to float on the way (bf16: integer unpack and shift; f16: F16C).
  template <WeightType T>
  static void transpose8_half(const std::uint16_t* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    blocked::ymm::transpose8_half<T>(src, lds, dst, ldd);
  }
  static void transpose8(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    blocked::ymm::transpose8(src, lds, dst, ldd);
  }
};

/// 16 int32 lanes for int8_blocked.hpp on AVX512-VNNI: vpdpbusd on u8 activations stored with the
/// +128 offset (its sum corrected by −128·Σ q_w per block).
struct Int8Vnni512 {
  using V = Avx512;
  using Ri = __m512i;
  using Rf = __m512;
  static constexpr int kLanes = 16;
  static constexpr bool kOffset = true;
  static Ri zero_i() { return _mm512_setzero_si512(); }
  static Ri load_b(const std::int8_t* p) { return _mm512_loadu_si512(p); }
  static Ri bcast4(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static Ri bcast_u8(std::uint8_t b) { return _mm512_set1_epi8(static_cast<char>(b)); }
  static Ri dot(Ri acc, Ri a, Ri b) { return _mm512_dpbusd_epi32(acc, a, b); }
  static Ri load_i(const std::int32_t* p) { return _mm512_loadu_si512(p); }
  static void store_i(std::int32_t* p, Ri v) { _mm512_storeu_si512(p, v); }
  static Ri neg_i(Ri v) { return _mm512_sub_epi32(_mm512_setzero_si512(), v); }
  static Rf to_float(Ri v) { return _mm512_cvtepi32_ps(v); }
  /// int8_blocked.hpp's quantize_block_scalar, 16 lanes at a time (same operations, same results).
  static float quantize_block(const float* x, int len, std::int8_t* q) {
    const __m512 v0 = Avx512::load_n(x, len < 16 ? len : 16);
    const __m512 v1 = len > 16 ? Avx512::load_n(x + 16, len - 16) : _mm512_setzero_ps();
    // |x| > amax ? |x| : amax, lane by lane (vmaxps keeps the second operand when |x| is NaN).
    const __m512 m = _mm512_max_ps(_mm512_abs_ps(v1), _mm512_max_ps(_mm512_abs_ps(v0), _mm512_setzero_ps()));
    const float a = _mm512_reduce_max_ps(m);
    if (!(a > 0.0f)) {
      std::memset(q, 0, 32);
      return 0.0f;
    }
    const __m512 inv = _mm512_set1_ps(127.0f / a), lo = _mm512_set1_ps(-127.0f), hi = _mm512_set1_ps(127.0f);
    const auto quantize = [&](__m512 v) {
      __m512 r = _mm512_roundscale_ps(_mm512_mul_ps(v, inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
      return _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(r));
    };
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), quantize(v0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + 16), quantize(v1));
    return a / 127.0f;
  }
};

/// bf16 pairs for bf16_blocked.hpp on AVX512_BF16: vdpbf16ps, and vcvtne2ps2bf16 for the activations
/// (round to nearest even, as float_to_bf16).
struct Bf16Avx512 {
  using V = Avx512;
  using W = __m512i;
  static W load(const std::uint32_t* p) { return _mm512_load_si512(p); }
  static W bcast(const std::uint32_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
  }
  static __m512 dot(__m512 acc, W a, W b) { return _mm512_dpbf16_ps(acc, (__m512bh)a, (__m512bh)b); }
  static void to_pairs(const float* x, int n, std::uint32_t* out) {
    int i = 0;
    for (; i + 32 <= n; i += 32) {
      const __m512bh h = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
      _mm512_storeu_si512(out + i / 2, (__m512i)h);
    }
    if (i < n) {
      const int r = n - i;
      const __m512 lo = Avx512::load_n(x + i, r < 16 ? r : 16);
      const __m512 hi = r > 16 ? Avx512::load_n(x + i + 16, r - 16) : _mm512_setzero_ps();
      const __m512bh h = _mm512_cvtne2ps_pbh(hi, lo);
      _mm512_mask_storeu_epi32(out + i / 2, static_cast<__mmask16>((1u << ((r + 1) / 2)) - 1u), (__m512i)h);
    }
  }
  /// out[c] = the pair (bf16(lo[c]) low, bf16(hi[c]) high) for c < n; hi null reads as zeros. The
  /// rounding is to_pairs' (vcvtneps2bf16 and vcvtne2ps2bf16 round alike).
  static void pairs_of_rows(const float* lo, const float* hi, int n, std::uint32_t* out) {
    for (int c = 0; c < n; c += 16) {
      const int r = n - c < 16 ? n - c : 16;
      const __m512 l = Avx512::load_n(lo + c, r), h = hi ? Avx512::load_n(hi + c, r) : _mm512_setzero_ps();
      const __m512i wl = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(l));
      const __m512i wh = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(h));
      const __m512i w = _mm512_or_si512(wl, _mm512_slli_epi32(wh, 16));
      _mm512_mask_storeu_epi32(out + c, static_cast<__mmask16>(r == 16 ? 0xffffu : (1u << r) - 1u), w);
    }
  }
  /// dst[c·ldd + r] = src[r·lds + c] for r, c < 8 (32-bit words: bf16 pairs).
  static void transpose8_words(const std::uint32_t* src, std::ptrdiff_t lds, std::uint32_t* dst, std::ptrdiff_t ldd) {
    blocked::ymm::transpose8(reinterpret_cast<const float*>(src), lds, reinterpret_cast<float*>(dst), ldd);
  }
};

}  // namespace
}  // namespace vitmsn::detail
