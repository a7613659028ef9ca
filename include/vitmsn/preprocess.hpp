#pragma once
/// \file
/// Hugging Face ViTImageProcessor (PIL path), reproduced bit for bit: Pillow resize on 8-bit data,
/// rescale, normalize, channel-first float32.

#include <string>

#include "vitmsn/export.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/preprocessor_config.hpp"
#include "vitmsn/tensor.hpp"

namespace vitmsn {

/// Pillow `Image.resize((width, height), filter)` on an 8-bit RGB image, bit-exact: antialiased
/// (widened) kernel on downscale, 22-bit fixed-point weights, horizontal pass first into an 8-bit
/// intermediate, a pass skipped when its size is unchanged.
/// `limits.max_pixels` bounds the output and that intermediate (`width` x the source rows the
/// vertical pass reads): a 1 x 800,000 image widened to 224 columns first would need 179 M
/// intermediate pixels, and the memory and time that go with them, from a small file.
/// \throws Error for sizes < 1 and sizes above the limit.
VITMSN_API Image resize(const Image& image, int width, int height, Resample filter, const ImageLimits& limits = {});

/// Image -> pixel values [3, H, W] exactly as Hugging Face's ViTImageProcessor (PIL backend).
/// Immutable after construction; operator() is const and thread-safe.
class VITMSN_API Preprocessor {
 public:
  explicit Preprocessor(PreprocessorConfig config = {});
  /// Reads the settings from a `preprocessor_config.json`. \throws Error naming the file.
  static Preprocessor from_file(const std::string& path);

  const PreprocessorConfig& config() const { return config_; }

  /// A copy that resizes to exactly height x width (shortest_edge and center crop turned off).
  Preprocessor with_size(int height, int width) const;

  /// A copy whose resize refuses outputs and intermediates above `limits.max_pixels` (default:
  /// ImageLimits{}, the limit read_image() applies to decoded images).
  Preprocessor with_limits(const ImageLimits& limits) const;
  const ImageLimits& limits() const { return limits_; }

  /// Resize (and crop), rescale, normalize: float32 [3, H, W].
  PixelValues operator()(const Image& image) const;

  /// The 8-bit image after resize and crop, before rescale (what Pillow's `resize` returns).
  Image resize_only(const Image& image) const;

 private:
  PreprocessorConfig config_;
  ImageLimits limits_;
};

}  // namespace vitmsn
