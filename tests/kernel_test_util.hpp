// Helpers shared by the kernel tests (kernels_*_test.cpp): skipping a variant the CPU lacks, bit
// equality of two results, and ScalarLanes, the vector traits of the blocked kernels in plain C++ lanes
// (the AVX-512 and AVX2 geometries checked on any CPU). Internal linkage, as the files they test.
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu/half.hpp"
#include "cpu/kernels.hpp"
#include "vitmsn/cpu.hpp"

#define SKIP_UNLESS_AVAILABLE(isa)                                           \
  if (!isa_available(isa))                                                   \
  GTEST_SKIP() << isa_name(isa)                                              \
               << " is not available here (not compiled in, or this CPU/OS " \
                  "lacks it)"

namespace vitmsn::detail {
namespace {

inline bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The blocked kernels' vector traits (gemm_blocked.hpp, attention_blocked.hpp) in plain C++ lanes: N
// floats per register, every operation lane by lane.
template <int N>
struct ScalarLanes {
  struct R {
    float v[N];
  };
  struct M {
    bool v[N];
  };
  static constexpr int kLanes = N;
  template <class F>
  static R map(F f) {
    R r;
    for (int i = 0; i < N; ++i) r.v[i] = f(i);
    return r;
  }
  static R zero() {
    return map([](int) { return 0.0f; });
  }
  static R set1(float x) {
    return map([x](int) { return x; });
  }
  static R load(const float* p) {
    return map([p](int i) { return p[i]; });
  }
  static void store(float* p, R v) {
    for (int i = 0; i < N; ++i) p[i] = v.v[i];
  }
  static R load_n(const float* p, int n) {
    return map([p, n](int i) { return i < n ? p[i] : 0.0f; });
  }
  static void store_n(float* p, R v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
  }
  static M lanes_below(int n) {
    M m;
    for (int i = 0; i < N; ++i) m.v[i] = i < n;
    return m;
  }
  static R bcast(const float* p) { return set1(*p); }
  static R fma(R a, R b, R c) {
    return map([&](int i) { return std::fma(a.v[i], b.v[i], c.v[i]); });
  }
  static R fnma(R a, R b, R c) {
    return map([&](int i) { return std::fma(-a.v[i], b.v[i], c.v[i]); });
  }
  static R add(R a, R b) {
    return map([&](int i) { return a.v[i] + b.v[i]; });
  }
  static R sub(R a, R b) {
    return map([&](int i) { return a.v[i] - b.v[i]; });
  }
  static R mul(R a, R b) {
    return map([&](int i) { return a.v[i] * b.v[i]; });
  }
  static R min(R a, R b) {
    return map([&](int i) { return a.v[i] < b.v[i] ? a.v[i] : b.v[i]; });
  }
  static R max(R a, R b) {
    return map([&](int i) { return a.v[i] > b.v[i] ? a.v[i] : b.v[i]; });
  }
  static R abs(R x) {
    return map([&](int i) { return std::fabs(x.v[i]); });
  }
  static R sign_of(R x) {
    return map([&](int i) { return std::signbit(x.v[i]) ? -0.0f : 0.0f; });
  }
  static R or_bits(R a, R b) {
    return map([&](int i) { return std::signbit(b.v[i]) ? -std::fabs(a.v[i]) : a.v[i]; });
  }
  static M lt(R a, R b) {
    M m;
    for (int i = 0; i < N; ++i) m.v[i] = a.v[i] < b.v[i];
    return m;
  }
  static R select(M m, R a, R b) {
    return map([&](int i) { return m.v[i] ? a.v[i] : b.v[i]; });
  }
  static R round(R x) {
    return map([&](int i) { return std::nearbyint(x.v[i]); });
  }
  static R pow2(R n) {
    return map([&](int i) { return std::ldexp(1.0f, static_cast<int>(n.v[i])); });
  }
  static float hmax(R v) {
    float m = v.v[0];
    for (int i = 1; i < N; ++i) m = v.v[i] > m ? v.v[i] : m;
    return m;
  }
  static float hsum(R v) {
    float s = 0.0f;
    for (int i = 0; i < N; ++i) s += v.v[i];
    return s;
  }
  static void transpose8(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
  // Widening with src/cpu/half.hpp's scalar conversions (the vector packing is checked against them).
  template <WeightType T>
  static void transpose8_half(const std::uint16_t* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) {
        const std::uint16_t h = src[r * lds + c];
        dst[c * ldd + r] = T == WeightType::kBF16 ? bf16_to_float(h) : half_to_float(h);
      }
  }
};

/// bf16 pair traits (as avx512_traits.hpp's Bf16Avx512) through plain C++ lanes: vdpbf16ps's
/// definition (src/cpu/bf16_format.hpp) lane by lane, conversions with half.hpp's float_to_bf16.
template <int N>
struct ScalarBf16 {
  using V = ScalarLanes<N>;
  struct W {
    std::uint32_t v[N];
  };
  static W load(const std::uint32_t* p) {
    W w;
    std::memcpy(w.v, p, sizeof w.v);
    return w;
  }
  static W bcast(const std::uint32_t* p) {
    W w;
    for (auto& x : w.v) x = *p;
    return w;
  }
  static float daz(std::uint32_t h) {  // a subnormal bf16 reads as a zero of its sign
    return bf16_to_float(static_cast<std::uint16_t>((h & 0x7f80u) ? h : h & 0x8000u));
  }
  static float ftz(float x) {  // a subnormal result becomes a zero of its sign
    const std::uint32_t u = float_to_bits(x);
    return (u & 0x7f800000u) ? x : bits_to_float(u & 0x80000000u);
  }
  static typename V::R dot(typename V::R acc, W a, W b) {
    for (int i = 0; i < N; ++i) {
      const float hi = ftz(std::fma(daz(a.v[i] >> 16), daz(b.v[i] >> 16), acc.v[i]));
      acc.v[i] = ftz(std::fma(daz(a.v[i] & 0xffffu), daz(b.v[i] & 0xffffu), hi));
    }
    return acc;
  }
  static void to_pairs(const float* x, int n, std::uint32_t* out) {
    for (int i = 0; i < (n + 1) / 2; ++i)
      out[i] = std::uint32_t{float_to_bf16(x[2 * i])} |
               std::uint32_t{2 * i + 1 < n ? float_to_bf16(x[2 * i + 1]) : std::uint16_t{0}} << 16;
  }
  static void pairs_of_rows(const float* lo, const float* hi, int n, std::uint32_t* out) {
    for (int c = 0; c < n; ++c)
      out[c] = std::uint32_t{float_to_bf16(lo[c])} | std::uint32_t{hi ? float_to_bf16(hi[c]) : std::uint16_t{0}} << 16;
  }
  static void transpose8_words(const std::uint32_t* src, std::ptrdiff_t lds, std::uint32_t* dst, std::ptrdiff_t ldd) {
    for (int r = 0; r < 8; ++r)
      for (int c = 0; c < 8; ++c) dst[c * ldd + r] = src[r * lds + c];
  }
};

}  // namespace
}  // namespace vitmsn::detail
