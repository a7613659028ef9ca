#pragma once
/// \file
/// Writing results: numpy `.npy` arrays and text files, atomically (temporary file + rename), so an
/// output path never holds a partial file.

#include <cstdint>
#include <string>
#include <vector>

namespace vitmsn {

/// Writes a float32 C-order `.npy` (format 1.0, little-endian '<f4') of `shape` from `values`
/// (product of shape elements). \throws Error naming `path`.
void write_npy(const std::string& path, const std::vector<std::int64_t>& shape, const float* values);

/// Reads a float32 `.npy` written by write_npy() (or numpy: '<f4', C order). \throws Error naming `path`.
std::vector<float> read_npy(const std::string& path, std::vector<std::int64_t>* shape);

/// Writes `text` to `path` atomically. \throws Error naming `path`.
void write_text_file(const std::string& path, const std::string& text);

}  // namespace vitmsn
