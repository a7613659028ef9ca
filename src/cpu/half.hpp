#pragma once
// IEEE half (f16) and bfloat16 <-> float32, scalar, round to nearest even: the one place
// these conversions are written (the decoders use integer arithmetic only, so every ISA build gives
// the same bits). Used by the GEMM's packing (src/cpu/gemm_blocked.hpp, for the panel
// edges), the portable kernels, the safetensors reader (TensorView::value) and the converter.
//
// Internal linkage (anonymous namespace), as gemm_blocked.hpp: the ISA files include this header too,
// and an out-of-line copy compiled with -mavx512f must never be the one the linker picks for portable
// code.
#include <cstdint>
#include <cstring>

namespace vitmsn::detail {
namespace {

inline float bits_to_float(std::uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline std::uint32_t float_to_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

/// bfloat16 -> float: the upper half of a float32.
inline float bf16_to_float(std::uint16_t h) { return bits_to_float(static_cast<std::uint32_t>(h) << 16); }

/// IEEE binary16 -> float32, exact (subnormal halves become normal floats). A signalling NaN comes out
/// quiet (quiet bit set, sign and payload kept), as F16C's vcvtph2ps does, so the scalar edges of a
/// packed GEMM panel agree with its vector part bit for bit.
inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  std::uint32_t bits;
  if (e == 0x1fu) {
    bits = 0x7f800000u | (m << 13) | (m != 0 ? 0x00400000u : 0u);  // inf, or NaN made quiet
  } else if (e != 0) {
    bits = ((e + 112u) << 23) | (m << 13);  // rebias 15 -> 127
  } else if (m == 0) {
    bits = 0;
  } else {  // subnormal m·2^-24: shift the leading 1 up to bit 10 (s shifts), exponent 2^(-14-s)
    const int shift = __builtin_clz(m) - 21;
    bits = ((113u - static_cast<std::uint32_t>(shift)) << 23) | (((m << shift) & 0x3ffu) << 13);
  }
  return bits_to_float(sign | bits);
}

/// float -> bfloat16, round to nearest even; NaN stays NaN (made quiet).
inline std::uint16_t float_to_bf16(float f) {
  std::uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<std::uint16_t>(u >> 16);
}

/// float -> IEEE binary16, round to nearest even; overflow to inf, NaN to the quiet NaN 0x7e00 (signed).
inline std::uint16_t float_to_half(float f) {
  const std::uint32_t u = float_to_bits(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000u);
  const std::uint32_t abs = u & 0x7fffffffu;
  if (abs > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (abs >= 0x477ff000u) return sign | 0x7c00u;  // overflow (>= 65520 rounds to inf)
  if (abs < 0x38800000u) {                        // below the smallest normal half
    // Subnormal: round abs·2^24 to nearest even integer.
    const float v = bits_to_float(abs) * 16777216.0f;
    std::uint32_t m = static_cast<std::uint32_t>(v);
    const float rem = v - static_cast<float>(m);
    if (rem > 0.5f || (rem == 0.5f && (m & 1u))) ++m;
    return sign | static_cast<std::uint16_t>(m);
  }
  std::uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u) - (112u << 23);
  return sign | static_cast<std::uint16_t>(r >> 13);
}

}  // namespace
}  // namespace vitmsn::detail
