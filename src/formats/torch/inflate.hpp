#pragma once
/// \file
/// Raw DEFLATE (RFC 1951) decoding and CRC-32 (ISO-HDLC, as zip and zlib use it). Internal to the
/// library: the torch checkpoint reader uses them for zip entries; no zlib dependency.

#include <cstddef>
#include <cstdint>
#include <vector>

namespace vitmsn::detail {

/// Decodes the raw DEFLATE stream `data[0, size)` (no zlib or gzip wrapper) whose output is exactly
/// `expected_size` bytes: stored, fixed-Huffman and dynamic-Huffman blocks. Output never grows past
/// `expected_size`; a size DEFLATE cannot reach from `size` input bytes (ratio above 1032:1) is
/// refused before anything is allocated. Bytes after the final block are ignored.
/// \throws Error "deflate stream: <problem>" (invalid block type or code, over-subscribed code
/// lengths, distance before start of output, truncated stream, output larger or smaller than
/// expected). Thread-safe (no shared state besides constant tables).
std::vector<std::uint8_t> inflate_raw(const std::uint8_t* data, std::size_t size, std::size_t expected_size);

/// CRC-32 of `data[0, size)` continuing from `crc` (0 for a fresh checksum):
/// crc32("123456789") == 0xCBF43926. Thread-safe.
std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc = 0);

}  // namespace vitmsn::detail
