#pragma once
/// \file
/// Writing results: numpy `.npy` arrays and text files, atomically (temporary file + rename), so an
/// output path never holds a partial file.

#include <cstdint>
#include <string>
#include <vector>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// Writes a float32 C-order `.npy` (format 1.0, little-endian '<f4') of `shape` from `values`
/// (product of shape elements). \throws Error naming `path`.
VITMSN_API void write_npy(const std::string& path, const std::vector<std::int64_t>& shape, const float* values);

/// Reads a float32 `.npy` written by write_npy() (or numpy: '<f4', C order). \throws Error naming `path`.
VITMSN_API std::vector<float> read_npy(const std::string& path, std::vector<std::int64_t>* shape);

/// Writes `text` to `path` atomically. \throws Error naming `path`.
VITMSN_API void write_text_file(const std::string& path, const std::string& text);

/// Removes the temporary files of every output this process is writing right now (write_npy,
/// write_text_file, write_safetensors, write_png, convert_checkpoint, ...) and returns how many it
/// removed. Async-signal-safe: meant for a SIGINT/SIGTERM handler that ends the process at once, so
/// that an interrupted write leaves nothing behind (an output path never holds a partial file either
/// way). The library installs no signal handler itself.
VITMSN_API int remove_unfinished_outputs() noexcept;

}  // namespace vitmsn
