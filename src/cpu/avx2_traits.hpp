#pragma once
// The AVX2 vector traits, for the files compiled with -mavx2 -mfma -mf16c (kernels_avx2.cpp, and
// kernels_avxvnni.cpp with -mavxvnni too): float lanes for gemm_blocked.hpp and attention_blocked.hpp
// (Avx2), integer lanes for int8_blocked.hpp (Int8Ymm). Internal linkage, as the templates that use them.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "cpu/gemm_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {
namespace {

struct Avx2 {
  using R = __m256;
  using M = __m256;  // lane mask: all-ones / all-zeros per lane
  static constexpr int kLanes = 8;

  static __m256i mask_n(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask_n(n)); }
  static void store_n(float* p, R v, int n) { _mm256_maskstore_ps(p, mask_n(n), v); }
  static M lanes_below(int n) { return _mm256_castsi256_ps(mask_n(n)); }
  static R bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R fnma(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R abs(R x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
  static R sign_of(R x) { return _mm256_and_ps(_mm256_set1_ps(-0.0f), x); }
  static R or_bits(R a, R b) { return _mm256_or_ps(a, b); }
  static M lt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static R select(M m, R a, R b) { return _mm256_blendv_ps(b, a, m); }
  static R round(R x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R pow2(R n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static float hmax(R v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  /// Σx and Σx² of n floats, accumulated in double (4 lanes per quarter of 16 floats).
  static void sum_and_squares(const float* p, int n, double* sum, double* sumsq) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(p + i)), b = _mm256_cvtps_pd(_mm_loadu_ps(p + i + 4));
      s0 = _mm256_add_pd(s0, a);
      s1 = _mm256_add_pd(s1, b);
      q0 = _mm256_fmadd_pd(a, a, q0);
      q1 = _mm256_fmadd_pd(b, b, q1);
    }
    alignas(32) double sv[4], qv[4];
    _mm256_store_pd(sv, _mm256_add_pd(s0, s1));
    _mm256_store_pd(qv, _mm256_add_pd(q0, q1));
    double s = (sv[0] + sv[1]) + (sv[2] + sv[3]), q = (qv[0] + qv[1]) + (qv[2] + qv[3]);
    for (; i < n; ++i) {
      const double v = p[i];
      s += v;
      q += v * v;
    }
    *sum = s;
    *sumsq = q;
  }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
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

/// 8 int32 lanes for int8_blocked.hpp. Vnni: vpdpbusd (AVX-VNNI) on u8 activations stored with the
/// +128 offset; otherwise vpmaddubsw on |q_x| and sign(q_x)·q_w (vpsignb), widened by vpmaddwd.
template <bool Vnni>
struct Int8Ymm {
  using V = Avx2;
  using Ri = __m256i;
  using Rf = __m256;
  static constexpr int kLanes = 8;
  static constexpr bool kOffset = Vnni;
  static Ri zero_i() { return _mm256_setzero_si256(); }
  static Ri load_b(const std::int8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Ri bcast4(const std::uint8_t* p) {
    std::int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
  }
  static Ri bcast_u8(std::uint8_t b) { return _mm256_set1_epi8(static_cast<char>(b)); }
  static Ri dot(Ri acc, Ri a, Ri b) {
    if constexpr (Vnni) {
      return _mm256_dpbusd_avx_epi32(acc, a, b);
    } else {
      // |a|·(sign(a)·b): each pair sum stays within ±2·127², below vpmaddubsw's int16 saturation.
      const Ri t = _mm256_maddubs_epi16(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
      return _mm256_add_epi32(acc, _mm256_madd_epi16(t, _mm256_set1_epi16(1)));
    }
  }
  static Ri load_i(const std::int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static void store_i(std::int32_t* p, Ri v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
  static Ri neg_i(Ri v) { return _mm256_sub_epi32(_mm256_setzero_si256(), v); }
  static Rf to_float(Ri v) { return _mm256_cvtepi32_ps(v); }
  /// int8_blocked.hpp's quantize_block_scalar, 8 lanes at a time (same operations, same results).
  static float quantize_block(const float* x, int len, std::int8_t* q) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int i = 0; i < 4; ++i) {
      const int n = len - 8 * i;
      v[i] = n >= 8 ? _mm256_loadu_ps(x + 8 * i) : (n > 0 ? Avx2::load_n(x + 8 * i, n) : _mm256_setzero_ps());
      amax = _mm256_max_ps(_mm256_andnot_ps(sign, v[i]), amax);  // |x| > amax ? |x| : amax
    }
    const float a = Avx2::hmax(amax);
    if (!(a > 0.0f)) {
      std::memset(q, 0, 32);
      return 0.0f;
    }
    const __m256 inv = _mm256_set1_ps(127.0f / a), lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    __m256i w[4];
    for (int i = 0; i < 4; ++i) {
      __m256 r = _mm256_round_ps(_mm256_mul_ps(v[i], inv), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
      w[i] = _mm256_cvtps_epi32(r);
    }
    // int32 -> int8 in order: packs interleave 128-bit lanes; a final permute restores the order.
    const __m256i p01 = _mm256_packs_epi32(w[0], w[1]), p23 = _mm256_packs_epi32(w[2], w[3]);
    const __m256i b = _mm256_packs_epi16(p01, p23);
    const __m256i ordered = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), ordered);
    return a / 127.0f;
  }
};

}  // namespace
}  // namespace vitmsn::detail
