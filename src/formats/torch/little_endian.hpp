#pragma once
// Little-endian integers from bytes, for the zip reader and the pickle machine.
#include <cstdint>

namespace vitmsn::detail::torch {

inline std::uint16_t rd16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | p[1] << 8); }
inline std::uint32_t rd32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24;
}
inline std::uint64_t rd64(const std::uint8_t* p) { return rd32(p) | std::uint64_t{rd32(p + 4)} << 32; }

}  // namespace vitmsn::detail::torch
