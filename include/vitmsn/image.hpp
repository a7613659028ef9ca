#pragma once
/// \file
/// Image decoding (stb_image; optionally libjpeg-turbo for JPEG) and conversion to 8-bit RGB exactly
/// as Pillow's `Image.convert("RGB")` does.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// An 8-bit RGB image, rows top to bottom, interleaved `[height, width, 3]`.
struct Image {
  int width = 0;
  int height = 0;
  std::vector<std::uint8_t> rgb;  ///< size width*height*3

  /// Channel c (0 R, 1 G, 2 B) of the pixel at row y, column x. No bounds check.
  std::uint8_t at(int y, int x, int c) const { return rgb[(static_cast<std::size_t>(y) * width + x) * 3 + c]; }
};

/// Limits applied before any pixel is decoded.
struct ImageLimits {
  /// Largest width*height accepted; larger images are refused from their header alone.
  /// Default: Pillow's decompression-bomb error threshold (2 x 89,478,485 pixels).
  std::uint64_t max_pixels = 178956970;
};

/// Decodes PNG (8/16-bit; gray, gray+alpha, RGB, RGBA, palette), JPEG (baseline, progressive), BMP,
/// GIF (first frame), TGA, PSD and binary PNM (P5, P6) from a file — the formats Pillow reads too;
/// others (Radiance HDR, WebP, …) are refused — and converts to RGB as Pillow's `convert("RGB")`:
/// gray replicated, alpha dropped (not composited), palette looked up, 16-bit reduced as Pillow does.
/// EXIF orientation is not applied (Hugging Face's processor does not either).
/// \throws Error naming `path` when the file cannot be read, is not a supported image, is corrupt or
///         truncated, or exceeds `limits`.
/// Thread-safe.
VITMSN_API Image read_image(const std::string& path, const ImageLimits& limits = {});

/// Same as read_image() for an encoded image in memory; `name` is used in error messages.
VITMSN_API Image decode_image(const std::uint8_t* data, std::size_t size, const std::string& name,
                              const ImageLimits& limits = {});

/// The file name extensions (lower case, with the dot) of the formats read_image() decodes, for
/// programs that pick images out of folders: .png .jpg .jpeg .jpe .jfif .bmp .gif .tga .psd .ppm .pgm .pnm.
VITMSN_API const std::vector<std::string>& image_file_extensions();

/// Which decoder handles JPEG in this build: "stb_image" (default) or "libjpeg-turbo".
VITMSN_API const char* jpeg_decoder_name();

/// Writes `image` as an 8-bit RGB PNG, atomically: the bytes go to a temporary file in the same
/// folder that is renamed over `path` only when complete, so `path` never holds a partial file.
/// \throws Error naming `path` when the image is empty or inconsistent (`rgb.size() != w*h*3`) or
///         the file cannot be written. Thread-safe (distinct paths).
VITMSN_API void write_png(const std::string& path, const Image& image);

}  // namespace vitmsn
