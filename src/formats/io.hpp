#pragma once
// The .npy header of write_npy() (include/vitmsn/io.hpp), for writers that stream the values
// themselves (vitmsn-extract's spooled outputs): one spelling, so that their files are the same bytes.
#include <cstdint>
#include <string>
#include <vector>

namespace vitmsn::detail {

/// The bytes before the values of a float32 C-order `.npy` (format 1.0, '<f4') of `shape`: magic,
/// version, header length and the header dict, padded to a multiple of 64 bytes. `*count` gets the
/// number of values (the product of `shape`). \throws Error(kArgument) naming `path` on a negative
/// dimension.
std::string npy_header(const std::string& path, const std::vector<std::int64_t>& shape, std::uint64_t* count);

}  // namespace vitmsn::detail
