// Hugging Face ViTImageProcessor (PIL path) reproduced bit for bit: Pillow's 8-bit resampling
// (src/libImaging/Resample.c, Geometry.c), HF's center crop, rescale and normalize (docs/NUMERICS.md, Preprocessing).
//
// Floating-point note: the normalize step must round twice in float32 and never fuse; CMake compiles
// this file with -ffp-contract=off (VITMSN_FP_EXACT_SOURCES), for GCC and Clang alike.

#include "vitmsn/preprocess.hpp"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "base/file_util.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {
namespace {

// ---------------------------------------------------------------------------------------------------
// Pillow's resampling filters (Resample.c). Each takes the distance from the output sample's centre,
// in input pixels scaled by 1/filterscale, and is evaluated in double exactly as Pillow writes it.

constexpr double kPi = 3.14159265358979323846;  // M_PI

double box_filter(double x) { return (x > -0.5 && x <= 0.5) ? 1.0 : 0.0; }

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

double hamming_filter(double x) {
  if (x < 0.0) x = -x;
  if (x == 0.0) return 1.0;
  if (x >= 1.0) return 0.0;
  x = x * kPi;
  // Pillow writes the constants as float literals (0.54f, 0.46f): their float values take part.
  return std::sin(x) / x * (static_cast<double>(0.54f) + static_cast<double>(0.46f) * std::cos(x));
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;  // Pillow's choice (PyTorch's bicubic uses -0.75)
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

double sinc(double x) {
  if (x == 0.0) return 1.0;
  x = x * kPi;
  return std::sin(x) / x;
}

double lanczos_filter(double x) {
  // sinc windowed by sinc(x/3), truncated to [-3, 3)
  if (-3.0 <= x && x < 3.0) return sinc(x) * sinc(x / 3);
  return 0.0;
}

struct Filter {
  double (*kernel)(double);
  double support;  ///< half-width in input pixels at scale 1
};

Filter filter_for(Resample resample) {
  switch (resample) {
    case Resample::kBox:
      return {box_filter, 0.5};
    case Resample::kBilinear:
      return {bilinear_filter, 1.0};
    case Resample::kHamming:
      return {hamming_filter, 1.0};
    case Resample::kBicubic:
      return {bicubic_filter, 2.0};
    case Resample::kLanczos:
      return {lanczos_filter, 3.0};
    case Resample::kNearest:
      break;
  }
  throw Error(ErrorKind::kArgument,
              "resize: no convolution filter for resample code " + std::to_string(static_cast<int>(resample)));
}

/// 8 bits of result and 2 bits of headroom for negative lobes / sums above one (Pillow's
/// PRECISION_BITS = 32 - 8 - 2).
constexpr int kPrecisionBits = 22;

/// Fixed-point weights of one resampling pass: output sample i reads `count[i]` inputs starting at
/// `first[i]` with weights `weights[i * ksize + j]` (scaled by 2^22).
struct Coefficients {
  int ksize = 0;
  std::vector<int> first;
  std::vector<int> count;
  std::vector<std::int32_t> weights;
};

/// Pillow's precompute_coeffs() + normalize_coeffs_8bpc() for the whole image (box = [0, in_size)).
Coefficients precompute_coefficients(int in_size, int out_size, const Filter& filter) {
  // The box edges are C floats in Pillow: (double)(float(in_size) - 0.0f) / out_size.
  const double scale = static_cast<double>(static_cast<float>(in_size) - 0.0f) / out_size;
  // Antialias: when shrinking, the kernel widens by the scale.
  const double filterscale = std::max(scale, 1.0);
  const double support = filter.support * filterscale;
  Coefficients c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  if (static_cast<std::uint64_t>(out_size) * static_cast<std::uint64_t>(c.ksize) >
      static_cast<std::uint64_t>(INT_MAX)) {
    throw Error(ErrorKind::kLimit, "resize: " + std::to_string(in_size) + " -> " + std::to_string(out_size) +
                                       " needs too many filter coefficients");
  }
  c.first.resize(out_size);
  c.count.resize(out_size);
  c.weights.assign(static_cast<std::size_t>(out_size) * c.ksize, 0);
  std::vector<double> k(c.ksize);
  const double ss = 1.0 / filterscale;
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = 0.0f + (xx + 0.5) * scale;
    // Bounds rounded with C truncation toward zero, then clamped to the image.
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = filter.kernel((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    std::int32_t* kk = &c.weights[static_cast<std::size_t>(xx) * c.ksize];
    for (int x = 0; x < xmax; ++x) {
      const double w = ww != 0.0 ? k[x] / ww : k[x];
      // Round half away from zero to 2^22 fixed point.
      kk[x] = w < 0 ? static_cast<std::int32_t>(-0.5 + w * (1 << kPrecisionBits))
                    : static_cast<std::int32_t>(0.5 + w * (1 << kPrecisionBits));
    }
    c.first[xx] = xmin;
    c.count[xx] = xmax;
  }
  return c;
}

/// acc = 2^21 + Σ v·k accumulated in 32 bits as Pillow does (unsigned arithmetic so that a wrap, were
/// it to happen, is defined and equal to Pillow's two's complement), then clamp(acc >> 22, 0, 255).
inline std::uint8_t clip8(std::uint32_t acc) {
  const auto v = static_cast<std::int32_t>(acc);
  if (v < 0) return 0;
  const std::int32_t shifted = v >> kPrecisionBits;
  return static_cast<std::uint8_t>(shifted > 255 ? 255 : shifted);
}

constexpr std::uint32_t kHalf = 1u << (kPrecisionBits - 1);

/// Horizontal pass over rows [row0, row0 + rows) of `in` (width in_w) into `out` (width out_w, `rows`
/// rows), 3 interleaved channels.
void resample_horizontal(const std::uint8_t* in, int in_w, int row0, int rows, std::uint8_t* out, int out_w,
                         const Coefficients& c) {
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* src = in + (static_cast<std::size_t>(row0) + y) * in_w * 3;
    std::uint8_t* dst = out + static_cast<std::size_t>(y) * out_w * 3;
    for (int xx = 0; xx < out_w; ++xx) {
      const std::int32_t* k = &c.weights[static_cast<std::size_t>(xx) * c.ksize];
      const std::uint8_t* s = src + static_cast<std::size_t>(c.first[xx]) * 3;
      std::uint32_t a0 = kHalf, a1 = kHalf, a2 = kHalf;
      for (int x = 0; x < c.count[xx]; ++x) {
        const auto w = static_cast<std::uint32_t>(k[x]);
        a0 += s[x * 3 + 0] * w;
        a1 += s[x * 3 + 1] * w;
        a2 += s[x * 3 + 2] * w;
      }
      dst[xx * 3 + 0] = clip8(a0);
      dst[xx * 3 + 1] = clip8(a1);
      dst[xx * 3 + 2] = clip8(a2);
    }
  }
}

/// Vertical pass: `in` has width w; output row yy reads rows first[yy] - row0 … of `in`.
void resample_vertical(const std::uint8_t* in, int w, int row0, std::uint8_t* out, int out_h, const Coefficients& c) {
  const std::size_t stride = static_cast<std::size_t>(w) * 3;
  std::vector<std::uint32_t> acc(stride);
  for (int yy = 0; yy < out_h; ++yy) {
    const std::int32_t* k = &c.weights[static_cast<std::size_t>(yy) * c.ksize];
    std::fill(acc.begin(), acc.end(), kHalf);
    for (int y = 0; y < c.count[yy]; ++y) {
      const std::uint8_t* src = in + (static_cast<std::size_t>(c.first[yy] - row0) + y) * stride;
      const auto wgt = static_cast<std::uint32_t>(k[y]);
      for (std::size_t i = 0; i < stride; ++i) acc[i] += src[i] * wgt;
    }
    std::uint8_t* dst = out + static_cast<std::size_t>(yy) * stride;
    for (std::size_t i = 0; i < stride; ++i) dst[i] = clip8(acc[i]);
  }
}

/// Pillow's NEAREST resize: an affine transform (Geometry.c, ImagingScaleAffine). The source position
/// starts at scale/2 and is advanced by repeated addition of the scale, truncated to an index; an
/// index outside the image leaves a zero pixel.
Image resize_nearest(const Image& in, int width, int height) {
  const double ax = static_cast<double>(static_cast<float>(in.width) - 0.0f) / width;
  const double ay = static_cast<double>(static_cast<float>(in.height) - 0.0f) / height;
  auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
  std::vector<int> xin(width, -1);
  double xo = 0.0 + ax * 0.5;
  for (int x = 0; x < width; ++x) {
    const int xi = coord(xo);
    if (xi >= 0 && xi < in.width) xin[x] = xi;
    xo += ax;
  }
  Image out;
  out.width = width;
  out.height = height;
  out.rgb.assign(static_cast<std::size_t>(width) * height * 3, 0);
  double yo = 0.0 + ay * 0.5;
  for (int y = 0; y < height; ++y) {
    const int yi = coord(yo);
    yo += ay;
    if (yi < 0 || yi >= in.height) continue;
    const std::uint8_t* src = in.rgb.data() + static_cast<std::size_t>(yi) * in.width * 3;
    std::uint8_t* dst = out.rgb.data() + static_cast<std::size_t>(y) * width * 3;
    for (int x = 0; x < width; ++x) {
      if (xin[x] < 0) continue;
      std::memcpy(dst + x * 3, src + static_cast<std::size_t>(xin[x]) * 3, 3);
    }
  }
  return out;
}

void check_image(const Image& image, const char* what) {
  if (image.width <= 0 || image.height <= 0 ||
      image.rgb.size() != static_cast<std::size_t>(image.width) * image.height * 3) {
    throw Error(ErrorKind::kArgument, std::string(what) + ": invalid input image " + std::to_string(image.width) + "x" +
                                          std::to_string(image.height) + " with " + std::to_string(image.rgb.size()) +
                                          " bytes (expected width*height*3)");
  }
}

/// HF `center_crop`: top = (h - crop_h) // 2, left = (w - crop_w) // 2; a side shorter than the crop
/// is zero-padded, the image placed at ceil((crop - size) / 2).
Image center_crop(const Image& in, int crop_h, int crop_w) {
  struct Span {
    int src, dst, length;
  };
  auto axis = [](int size, int crop) {
    if (size >= crop) return Span{(size - crop) / 2, 0, crop};
    return Span{0, (crop - size + 1) / 2, size};
  };
  const Span rows = axis(in.height, crop_h);
  const Span cols = axis(in.width, crop_w);
  Image out;
  out.width = crop_w;
  out.height = crop_h;
  out.rgb.assign(static_cast<std::size_t>(crop_w) * crop_h * 3, 0);
  for (int y = 0; y < rows.length; ++y) {
    const std::uint8_t* src = in.rgb.data() + ((static_cast<std::size_t>(rows.src) + y) * in.width + cols.src) * 3;
    std::uint8_t* dst = out.rgb.data() + ((static_cast<std::size_t>(rows.dst) + y) * crop_w + cols.dst) * 3;
    std::memcpy(dst, src, static_cast<std::size_t>(cols.length) * 3);
  }
  return out;
}

}  // namespace

// -----------------------------------------------------------------------------------------------------

Image resize(const Image& image, int width, int height, Resample filter, const ImageLimits& limits) {
  check_image(image, "resize");
  if (width < 1 || height < 1) {
    throw Error(ErrorKind::kArgument, "resize: output size " + std::to_string(width) + "x" + std::to_string(height) +
                                          " must be at least 1x1");
  }
  if (static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height) > limits.max_pixels) {
    throw Error(ErrorKind::kLimit, "resize: output size " + std::to_string(width) + "x" + std::to_string(height) +
                                       " exceeds " + std::to_string(limits.max_pixels) + " pixels");
  }
  const int code = static_cast<int>(filter);
  if (code < 0 || code > 5) throw Error(ErrorKind::kArgument, "resize: unknown resample code " + std::to_string(code));
  // Same size: Pillow returns a copy (no filtering at all, whatever the filter).
  if (width == image.width && height == image.height) return image;
  if (filter == Resample::kNearest) return resize_nearest(image, width, height);

  const Filter f = filter_for(filter);
  const bool need_horizontal = width != image.width;
  const bool need_vertical = height != image.height;
  const Coefficients vert = precompute_coefficients(image.height, height, f);
  // Rows of the source that the vertical pass reads: only those go through the horizontal pass.
  const int row_first = vert.first.front();
  const int row_last = vert.first.back() + vert.count.back();

  // Horizontal pass first, into an 8-bit intermediate (the rounding there is part of the result).
  const std::uint8_t* src = image.rgb.data();
  int src_row0 = 0;
  int src_width = image.width;
  std::vector<std::uint8_t> temp;
  if (need_horizontal) {
    const std::uint64_t temp_pixels =
        static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(row_last - row_first);
    if (temp_pixels > limits.max_pixels) {
      throw Error(ErrorKind::kLimit, "resize: " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                         " to " + std::to_string(width) + "x" + std::to_string(height) +
                                         " needs an intermediate image of " + std::to_string(width) + "x" +
                                         std::to_string(row_last - row_first) +
                                         " pixels (Pillow resizes rows first), above the limit of " +
                                         std::to_string(limits.max_pixels) + " pixels");
    }
    const Coefficients horiz = precompute_coefficients(image.width, width, f);
    temp.resize(static_cast<std::size_t>(width) * (row_last - row_first) * 3);
    resample_horizontal(image.rgb.data(), image.width, row_first, row_last - row_first, temp.data(), width, horiz);
    src = temp.data();
    src_row0 = row_first;
    src_width = width;
  }
  Image out;
  out.width = width;
  out.height = height;
  if (need_vertical) {
    out.rgb.resize(static_cast<std::size_t>(width) * height * 3);
    resample_vertical(src, src_width, src_row0, out.rgb.data(), height, vert);
  } else {
    out.rgb = std::move(temp);  // height unchanged: rows [0, height) were all resampled
  }
  return out;
}

// -----------------------------------------------------------------------------------------------------

Preprocessor::Preprocessor(PreprocessorConfig config) : config_(config) {
  validate_preprocessor_config(config_, "PreprocessorConfig");
}

Preprocessor Preprocessor::from_file(const std::string& path) { return Preprocessor(read_preprocessor_config(path)); }

Preprocessor Preprocessor::with_size(int height, int width) const {
  PreprocessorConfig c = config_;
  c.do_resize = true;
  c.height = height;
  c.width = width;
  c.shortest_edge = 0;
  c.do_center_crop = false;
  Preprocessor p(c);
  p.limits_ = limits_;
  return p;
}

Preprocessor Preprocessor::with_limits(const ImageLimits& limits) const {
  Preprocessor p = *this;
  p.limits_ = limits;
  return p;
}

Image Preprocessor::resize_only(const Image& image) const {
  check_image(image, "preprocess");
  Image out;
  const Image* current = &image;
  if (config_.do_resize) {
    int height = config_.height;
    int width = config_.width;
    if (config_.shortest_edge > 0) {
      // HF get_resize_output_image_size(default_to_square=False): the short side becomes
      // shortest_edge, the long side int(shortest_edge * long / short) (Python true division).
      const int short_side = std::min(image.width, image.height);
      const int long_side = std::max(image.width, image.height);
      const auto product = static_cast<double>(static_cast<std::int64_t>(config_.shortest_edge) * long_side);
      const double new_long = product / short_side;
      if (new_long > static_cast<double>(INT_MAX)) {
        throw Error(ErrorKind::kLimit, "preprocess: resizing " + std::to_string(image.width) + "x" +
                                           std::to_string(image.height) + " to shortest edge " +
                                           std::to_string(config_.shortest_edge) + " gives an oversized long side");
      }
      if (image.width <= image.height) {
        width = config_.shortest_edge;
        height = static_cast<int>(new_long);
      } else {
        height = config_.shortest_edge;
        width = static_cast<int>(new_long);
      }
    }
    out = resize(image, width, height, config_.resample, limits_);
    current = &out;
  }
  if (config_.do_center_crop) return center_crop(*current, config_.crop_height, config_.crop_width);
  if (current == &image) return image;
  return out;
}

PixelValues Preprocessor::operator()(const Image& image) const {
  // do_convert_rgb: an Image is already RGB (read_image converts as Pillow's convert("RGB")).
  const Image rgb = resize_only(image);

  // Each output value depends only on the 8-bit level and the channel: tabulate the 3 x 256 results.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    const float mean = static_cast<float>(config_.image_mean[c]);
    const float std = static_cast<float>(config_.image_std[c]);
    for (int v = 0; v < 256; ++v) {
      // HF rescale: float64 multiply, stored as float32.
      float x = config_.do_rescale ? static_cast<float>(static_cast<double>(v) * config_.rescale_factor)
                                   : static_cast<float>(v);
      // HF normalize: (x - mean) / std in float32, rounded after each operation.
      if (config_.do_normalize) {
        const float centered = x - mean;
        x = centered / std;
      }
      table[c][v] = x;
    }
  }

  PixelValues out(3, rgb.height, rgb.width);
  float* data = out.data();
  const std::size_t plane = static_cast<std::size_t>(rgb.height) * rgb.width;
  const std::uint8_t* px = rgb.rgb.data();
  for (std::size_t i = 0; i < plane; ++i, px += 3) {
    data[i] = table[0][px[0]];
    data[plane + i] = table[1][px[1]];
    data[2 * plane + i] = table[2][px[2]];
  }
  return out;
}

}  // namespace vitmsn
