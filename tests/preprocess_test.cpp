// Preprocessing: Pillow's resize bit for bit (all six filters, up and down), Hugging Face's
// ViTImageProcessor outputs on the golden images, and preprocessor_config.json parsing.
#include "vitmsn/preprocess.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

using test::expect_error;

/// HF's float32 pipeline rounds exactly as ours does; 1e-6 leaves room for nothing but that.
constexpr double kPixelTolerance = 1e-6;

std::string tmp() { return test::temp_dir(); }

/// A U8 [H, W, 3] tensor as an Image.
Image image_from_tensor(const TensorView& t) {
  EXPECT_EQ(t.dtype, DType::kU8);
  EXPECT_EQ(t.shape.size(), 3u);
  Image image;
  image.height = static_cast<int>(t.shape[0]);
  image.width = static_cast<int>(t.shape[1]);
  image.rgb.assign(t.data, t.data + t.nbytes);
  return image;
}

struct LevelDiff {
  std::size_t differing = 0, total = 0;
  int max = 0;
  std::string summary() const {
    return std::to_string(differing) + " of " + std::to_string(total) + " values differ, max diff " +
           std::to_string(max) + " levels";
  }
};

/// Compares an image with a U8 [H, W, 3] tensor; shapes must agree (a test failure otherwise).
LevelDiff compare_levels(const Image& image, const TensorView& expected) {
  LevelDiff d;
  EXPECT_EQ(expected.shape, (std::vector<std::int64_t>{image.height, image.width, 3}))
      << "expected " << expected.shape_string() << ", got " << image.height << "x" << image.width;
  if (expected.nbytes != image.rgb.size()) {
    d.total = d.differing = std::max(expected.nbytes, image.rgb.size());
    d.max = 255;
    return d;
  }
  d.total = image.rgb.size();
  for (std::size_t i = 0; i < d.total; ++i) {
    const int diff = std::abs(static_cast<int>(image.rgb[i]) - static_cast<int>(expected.data[i]));
    if (diff) ++d.differing;
    d.max = std::max(d.max, diff);
  }
  return d;
}

/// Largest |ours - expected| of pixel values against an F32 [3, H, W] tensor (infinity on a shape
/// mismatch).
double pixel_error(const PixelValues& ours, const TensorView& expected) {
  EXPECT_EQ(expected.shape, (std::vector<std::int64_t>{ours.dimension(0), ours.dimension(1), ours.dimension(2)}))
      << "expected " << expected.shape_string();
  if (expected.numel() != ours.size()) return std::numeric_limits<double>::infinity();
  const std::vector<float> values = expected.to_float();
  return test::max_abs_diff(ours.data(), values.data(), values.size());
}

const char* filter_name(Resample r) {
  switch (r) {
    case Resample::kNearest:
      return "nearest";
    case Resample::kLanczos:
      return "lanczos";
    case Resample::kBilinear:
      return "bilinear";
    case Resample::kBicubic:
      return "bicubic";
    case Resample::kBox:
      return "box";
    case Resample::kHamming:
      return "hamming";
  }
  return "?";
}

const Resample kAllFilters[] = {Resample::kNearest, Resample::kLanczos, Resample::kBilinear,
                                Resample::kBicubic, Resample::kBox,     Resample::kHamming};
std::string param_name(std::string name) {
  std::replace(name.begin(), name.end(), '.', '_');
  return name;
}

// --- golden images: HF ViTImageProcessor (PIL path) ---------------------------------------------------

struct GoldenCase {
  const char* key;   ///< case name in preprocess.safetensors
  const char* file;  ///< image in tests/data/images
  int width, height;
  Resample resample;
};

const GoldenCase kPngCases[] = {
    {"astronaut", "astronaut.png", 224, 224, Resample::kBilinear},
    {"chelsea", "chelsea.png", 224, 224, Resample::kBilinear},
    {"coffee", "coffee.png", 224, 224, Resample::kBilinear},
    {"camera", "camera.png", 224, 224, Resample::kBilinear},                // mode L
    {"horse", "horse.png", 224, 224, Resample::kBilinear},                  // RGBA, alpha dropped
    {"green_palette", "green_palette.png", 224, 224, Resample::kBilinear},  // mode P
    {"chelsea.bicubic", "chelsea.png", 224, 224, Resample::kBicubic},
    {"camera.bicubic", "camera.png", 224, 224, Resample::kBicubic},
    {"chelsea.280x280", "chelsea.png", 280, 280, Resample::kBilinear},  // upscale in height
    {"chelsea.224x336", "chelsea.png", 336, 224, Resample::kBilinear},  // height 224, width 336
};

const GoldenCase kJpegCases[] = {
    {"rocket", "rocket.jpg", 224, 224, Resample::kBilinear},
    {"chelsea_q90", "chelsea_q90.jpg", 224, 224, Resample::kBilinear},
    {"coffee_progressive", "coffee_progressive.jpg", 224, 224, Resample::kBilinear},
    {"rocket.bicubic", "rocket.jpg", 224, 224, Resample::kBicubic},
};

Preprocessor preprocessor_for(const GoldenCase& c) {
  PreprocessorConfig config;  // the model card's settings
  config.resample = c.resample;
  return Preprocessor(config).with_size(c.height, c.width);
}

/// "rocket.bicubic" -> "rocket": the decoded pixels are stored once per image.
std::string image_key(const std::string& key) { return key.substr(0, key.find('.')); }

class PngGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(PngGolden, ResizedRgbIsBitExactWithPillow) {
  const GoldenCase& c = GetParam();
  const Image image = read_image(test::data_path(std::string("images/") + c.file));
  const Image resized = preprocessor_for(c).resize_only(image);
  const LevelDiff d = compare_levels(resized, test::preprocess_fixture(std::string(c.key) + ".resized_rgb"));
  EXPECT_EQ(d.differing, 0u) << c.key << ": " << d.summary();
}

TEST_P(PngGolden, PixelValuesMatchHuggingFaceWithin1e6) {
  const GoldenCase& c = GetParam();
  const Image image = read_image(test::data_path(std::string("images/") + c.file));
  const PixelValues pixels = preprocessor_for(c)(image);
  const double err = pixel_error(pixels, test::preprocess_fixture(std::string(c.key) + ".pixel_values"));
  EXPECT_LE(err, kPixelTolerance) << c.key << ": max abs error " << err;
}

INSTANTIATE_TEST_SUITE_P(Preprocess, PngGolden, ::testing::ValuesIn(kPngCases),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) { return param_name(info.param.key); });

class JpegGolden : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(JpegGolden, ResizingPillowsDecodedPixelsIsBitExact) {
  // Separates the resize from the decoder: start from the pixels Pillow decoded.
  const GoldenCase& c = GetParam();
  const Image decoded = image_from_tensor(test::preprocess_fixture(image_key(c.key) + ".decoded_rgb"));
  const Preprocessor pre = preprocessor_for(c);
  const LevelDiff d =
      compare_levels(pre.resize_only(decoded), test::preprocess_fixture(std::string(c.key) + ".resized_rgb"));
  EXPECT_EQ(d.differing, 0u) << c.key << ": " << d.summary();
  const double err = pixel_error(pre(decoded), test::preprocess_fixture(std::string(c.key) + ".pixel_values"));
  EXPECT_LE(err, kPixelTolerance) << c.key << ": max abs error " << err;
}

TEST_P(JpegGolden, PixelValuesStayWithinTheBoundSetByTheDecoderDifference) {
  const GoldenCase& c = GetParam();
  const Image image = read_image(test::data_path(std::string("images/") + c.file));
  int decode_max = 0;
  {
    const LevelDiff d = compare_levels(image, test::preprocess_fixture(image_key(c.key) + ".decoded_rgb"));
    decode_max = d.max;
  }
  // A resize pass is a weighted average: inputs off by at most d levels give outputs off by at most
  // d·Σ|w| plus one level of rounding. Σ|w| <= 1 for bilinear, < 1.2 for bicubic; two passes:
  // 2d + 1 levels is a safe bound. Zero decode difference must give an exact result.
  const int level_bound = decode_max == 0 ? 0 : 2 * decode_max + 1;
  const Preprocessor pre = preprocessor_for(c);
  const LevelDiff resized =
      compare_levels(pre.resize_only(image), test::preprocess_fixture(std::string(c.key) + ".resized_rgb"));
  const PreprocessorConfig& cfg = pre.config();
  const double min_std = *std::min_element(cfg.image_std.begin(), cfg.image_std.end());
  const double pixel_bound = level_bound * cfg.rescale_factor / min_std + kPixelTolerance;
  const double err = pixel_error(pre(image), test::preprocess_fixture(std::string(c.key) + ".pixel_values"));
  std::printf(
      "[ JPEG     ] %s (%s): decode max %d levels -> resized max %d levels (%zu of %zu differ), "
      "pixel_values max abs error %.6f (bound %.6f)\n",
      c.key, jpeg_decoder_name(), decode_max, resized.max, resized.differing, resized.total, err, pixel_bound);
  EXPECT_LE(resized.max, level_bound) << c.key << ": " << resized.summary();
  EXPECT_LE(err, pixel_bound) << c.key << ": max abs error " << err;
}

INSTANTIATE_TEST_SUITE_P(Preprocess, JpegGolden, ::testing::ValuesIn(kJpegCases),
                         [](const ::testing::TestParamInfo<GoldenCase>& info) { return param_name(info.param.key); });

// --- resize against Pillow directly (tests/data/pillow/resize.safetensors) ---------------------------

const SafetensorsFile& pillow_resizes() {
  static const SafetensorsFile f = SafetensorsFile::open(test::data_path("pillow/resize.safetensors"));
  return f;
}

struct ResizeCase {
  std::string input;
  int width, height;
  Resample filter;
  std::string key() const {
    return "resize." + input + "." + filter_name(filter) + "." + std::to_string(width) + "x" + std::to_string(height);
  }
};

/// Mirrors tests/tools/make_pillow_fixtures.py: inputs and target sizes, each with all six filters.
std::vector<ResizeCase> resize_cases() {
  struct Input {
    const char* name;
    std::vector<std::pair<int, int>> sizes;
  };
  const Input inputs[] = {
      // 37x29 noise: down, up, mixed, width kept, height kept, strong reductions
      {"noise", {{17, 13}, {61, 47}, {50, 20}, {37, 11}, {20, 29}, {5, 3}, {1, 1}}},
      // 96x64 piece of chelsea
      {"photo", {{24, 16}, {50, 33}, {7, 5}, {67, 45}}},
      // 3x2: extreme upscale
      {"tiny", {{50, 40}, {1, 7}}},
      // 3x6000: columns widened while rows shrink (the intermediate is 64x6000)
      {"sliver", {{64, 48}, {2, 4000}}},
  };
  std::vector<ResizeCase> cases;
  for (const Input& in : inputs) {
    for (Resample f : kAllFilters) {
      for (const auto& [w, h] : in.sizes) cases.push_back({in.name, w, h, f});
    }
  }
  return cases;
}

class PillowResize : public ::testing::TestWithParam<ResizeCase> {};

TEST_P(PillowResize, IsBitExact) {
  const ResizeCase& c = GetParam();
  const Image input = image_from_tensor(pillow_resizes().get("resize." + c.input + ".input"));
  const Image out = resize(input, c.width, c.height, c.filter);
  ASSERT_EQ(out.width, c.width);
  ASSERT_EQ(out.height, c.height);
  const LevelDiff d = compare_levels(out, pillow_resizes().get(c.key()));
  EXPECT_EQ(d.differing, 0u) << c.key() << ": " << d.summary();
}

INSTANTIATE_TEST_SUITE_P(Resize, PillowResize, ::testing::ValuesIn(resize_cases()),
                         [](const ::testing::TestParamInfo<ResizeCase>& info) {
                           return info.param.input + "_" + filter_name(info.param.filter) + "_" +
                                  std::to_string(info.param.width) + "x" + std::to_string(info.param.height);
                         });

TEST(Resize, EveryPillowFixtureIsCovered) {
  std::size_t expected_outputs = 0;
  for (const std::string& name : pillow_resizes().names()) {
    if (name.size() < 6 || name.compare(name.size() - 6, 6, ".input") != 0) ++expected_outputs;
  }
  const std::vector<ResizeCase> cases = resize_cases();
  EXPECT_EQ(cases.size(), expected_outputs);
  for (const ResizeCase& c : cases) EXPECT_TRUE(pillow_resizes().contains(c.key())) << c.key();
}

Image pattern(int width, int height) {
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(static_cast<std::size_t>(width) * height * 3);
  for (std::size_t i = 0; i < image.rgb.size(); ++i) {
    image.rgb[i] = static_cast<std::uint8_t>((i * 37 + i / 7) & 0xFF);
  }
  return image;
}

TEST(Resize, SameSizeReturnsTheImageUnchangedWithEveryFilter) {
  const Image image = pattern(13, 9);
  for (Resample f : kAllFilters) {
    EXPECT_TRUE(resize(image, 13, 9, f).rgb == image.rgb) << filter_name(f);
  }
}

TEST(Resize, ConstantImageStaysConstantWithEveryFilter) {
  // The weights of each output sum to 1 (to within 2^-22 per tap): flat input, flat output, even
  // for lanczos and bicubic with their negative lobes.
  for (int level : {0, 1, 127, 254, 255}) {
    Image image = pattern(23, 17);
    std::fill(image.rgb.begin(), image.rgb.end(), static_cast<std::uint8_t>(level));
    for (Resample f : kAllFilters) {
      for (const auto& [w, h] : {std::pair{7, 5}, std::pair{40, 31}, std::pair{1, 1}}) {
        const Image out = resize(image, w, h, f);
        EXPECT_TRUE(std::all_of(out.rgb.begin(), out.rgb.end(), [&](std::uint8_t v) { return v == level; }))
            << filter_name(f) << " " << w << "x" << h << " level " << level;
      }
    }
  }
}

TEST(Resize, BoxHalvingRoundsEachPassHalfUp) {
  // 2x2 -> 1x1 with the box filter: the horizontal pass averages each row into 8 bits first
  // (floor((a + b + 1) / 2)), then the vertical pass averages those.
  Image image;
  image.width = 2;
  image.height = 2;
  image.rgb = {10, 0, 255, 21, 1, 254,  // row 0
               30, 0, 0,   41, 0, 1};   // row 1
  const Image out = resize(image, 1, 1, Resample::kBox);
  // R: rows -> 16 (15.5 up), 36 (35.5 up) -> 26 (26.0); G: 1 (0.5 up), 0 -> 1 (0.5 up);
  // B: 255 (254.5 up), 1 (0.5 up) -> 128.
  EXPECT_EQ(out.rgb, (std::vector<std::uint8_t>{26, 1, 128}));
}

TEST(Resize, NearestFollowsPillowsAffineMapping) {
  // 4 -> 2: source x = int((i + 0.5) * 2) = 1, 3. 3 -> 2: int(0.75) = 0, int(2.25) = 2.
  Image image = pattern(4, 3);
  const Image out = resize(image, 2, 2, Resample::kNearest);
  const int xs[] = {1, 3}, ys[] = {0, 2};
  for (int y = 0; y < 2; ++y) {
    for (int x = 0; x < 2; ++x) {
      for (int c = 0; c < 3; ++c) EXPECT_EQ(out.at(y, x, c), image.at(ys[y], xs[x], c));
    }
  }
}

TEST(Resize, RejectsEmptySizesAndInconsistentImages) {
  const Image image = pattern(4, 4);
  expect_error([&] { resize(image, 0, 4, Resample::kBilinear); }, {"resize", "0x4"});
  expect_error([&] { resize(image, 4, -1, Resample::kBilinear); }, "resize");
  Image broken = image;
  broken.rgb.resize(5);
  expect_error([&] { resize(broken, 2, 2, Resample::kBilinear); }, {"resize", "invalid input image"});
  expect_error([&] { resize(image, 2, 2, static_cast<Resample>(9)); }, {"resize", "9"});
  expect_error([&] { resize(image, 1 << 20, 1 << 20, Resample::kBilinear); }, {"resize", "exceeds"});
}

// --- the pipeline ---------------------------------------------------------------------------------------

TEST(Preprocess, ShortestEdgeKeepsTheAspectRatioAsHuggingFaceComputesIt) {
  // chelsea is 451x300: short side 300 -> 224, long side int(224 * 451 / 300) = int(336.75) = 336.
  const Image image = read_image(test::data_path("images/chelsea.png"));
  PreprocessorConfig config;
  config.shortest_edge = 224;
  const Preprocessor pre(config);
  const Image out = pre.resize_only(image);
  EXPECT_EQ(out.width, 336);
  EXPECT_EQ(out.height, 224);
  EXPECT_TRUE(out.rgb == resize(image, 336, 224, Resample::kBilinear).rgb);
  const PixelValues pixels = pre(image);
  EXPECT_EQ(pixels.dimension(0), 3);
  EXPECT_EQ(pixels.dimension(1), 224);
  EXPECT_EQ(pixels.dimension(2), 336);

  // Portrait: width is the short side. 30x47 -> 20 x int(20 * 47 / 30) = int(31.33) = 31.
  config.shortest_edge = 20;
  const Image portrait = Preprocessor(config).resize_only(pattern(30, 47));
  EXPECT_EQ(portrait.width, 20);
  EXPECT_EQ(portrait.height, 31);
}

TEST(Preprocess, CenterCropTakesTheMiddleAsHuggingFace) {
  PreprocessorConfig config;
  config.do_resize = false;
  config.do_center_crop = true;
  config.crop_height = 4;
  config.crop_width = 3;
  const Image image = pattern(10, 9);
  const Image out = Preprocessor(config).resize_only(image);
  ASSERT_EQ(out.width, 3);
  ASSERT_EQ(out.height, 4);
  // top = (9 - 4) // 2 = 2, left = (10 - 3) // 2 = 3
  for (int y = 0; y < 4; ++y) {
    for (int x = 0; x < 3; ++x) {
      for (int c = 0; c < 3; ++c) EXPECT_EQ(out.at(y, x, c), image.at(y + 2, x + 3, c));
    }
  }
}

TEST(Preprocess, CenterCropPadsASmallImageWithZerosAsHuggingFace) {
  PreprocessorConfig config;
  config.do_resize = false;
  config.do_center_crop = true;
  config.crop_height = 6;  // image 2 rows: pad ceil(4 / 2) = 2 rows on top
  config.crop_width = 2;   // image 5 wide: left = (5 - 2) // 2 = 1
  const Image image = pattern(5, 2);
  const Image out = Preprocessor(config).resize_only(image);
  ASSERT_EQ(out.width, 2);
  ASSERT_EQ(out.height, 6);
  for (int y = 0; y < 6; ++y) {
    for (int x = 0; x < 2; ++x) {
      for (int c = 0; c < 3; ++c) {
        const int expected = (y >= 2 && y < 4) ? image.at(y - 2, x + 1, c) : 0;
        EXPECT_EQ(out.at(y, x, c), expected) << "y " << y << " x " << x;
      }
    }
  }
}

TEST(Preprocess, ResizeComesBeforeTheCrop) {
  const Image image = read_image(test::data_path("images/chelsea.png"));
  PreprocessorConfig config;
  config.shortest_edge = 256;
  config.do_center_crop = true;
  const Image out = Preprocessor(config).resize_only(image);
  // 451x300 -> 384x256 (int(256 * 451 / 300) = 384), then the middle 224x224: top 16, left 80.
  const Image resized = resize(image, 384, 256, Resample::kBilinear);
  ASSERT_EQ(out.width, 224);
  ASSERT_EQ(out.height, 224);
  for (int y = 0; y < 224; y += 13) {
    for (int x = 0; x < 224; x += 11) EXPECT_EQ(out.at(y, x, 1), resized.at(y + 16, x + 80, 1));
  }
}

TEST(Preprocess, WithoutRescaleAndNormalizeTheLevelsPassThroughAsFloats) {
  PreprocessorConfig config;
  config.do_resize = false;
  config.do_rescale = false;
  config.do_normalize = false;
  const Image image = pattern(6, 5);
  const PixelValues pixels = Preprocessor(config)(image);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < 5; ++y) {
      for (int x = 0; x < 6; ++x) EXPECT_EQ(pixels(c, y, x), static_cast<float>(image.at(y, x, c)));
    }
  }
}

TEST(Preprocess, RescaleWithoutNormalizeIsTheFloat64ProductRoundedToFloat32) {
  PreprocessorConfig config;
  config.do_resize = false;
  config.do_normalize = false;
  Image image;
  image.width = 256;
  image.height = 1;
  for (int v = 0; v < 256; ++v) image.rgb.insert(image.rgb.end(), 3, static_cast<std::uint8_t>(v));
  const PixelValues pixels = Preprocessor(config)(image);
  for (int v = 0; v < 256; ++v) {
    EXPECT_EQ(pixels(0, 0, v), static_cast<float>(v * (1.0 / 255.0))) << v;
  }
}

TEST(Preprocess, WithSizeResizesExactlyAndDropsShortestEdgeAndCrop) {
  PreprocessorConfig config;
  config.shortest_edge = 256;
  config.do_center_crop = true;
  const Preprocessor pre = Preprocessor(config).with_size(33, 45);
  EXPECT_EQ(pre.config().shortest_edge, 0);
  EXPECT_FALSE(pre.config().do_center_crop);
  const Image out = pre.resize_only(pattern(20, 20));
  EXPECT_EQ(out.width, 45);
  EXPECT_EQ(out.height, 33);
  expect_error([&] { Preprocessor().with_size(0, 10); }, "size.height");
}

TEST(Preprocess, RejectsAnInconsistentImage) {
  Image broken = pattern(4, 4);
  broken.rgb.pop_back();
  expect_error([&] { Preprocessor()(broken); }, "invalid input image");
}

// --- preprocessor_config.json ------------------------------------------------------------------------

TEST(PreprocessConfig, ParsesTheTinyModelsConfig) {
  const std::string path = test::data_path("models/tiny/preprocessor_config.json");
  const PreprocessorConfig c = read_preprocessor_config(path);
  EXPECT_TRUE(c.do_resize);
  EXPECT_EQ(c.height, 224);
  EXPECT_EQ(c.width, 224);
  EXPECT_EQ(c.shortest_edge, 0);
  EXPECT_EQ(c.resample, Resample::kBilinear);
  EXPECT_TRUE(c.do_rescale);
  EXPECT_EQ(c.rescale_factor, 0.00392156862745098);
  EXPECT_TRUE(c.do_normalize);
  EXPECT_EQ(c.image_mean, (std::array<double, 3>{0.485, 0.456, 0.406}));
  EXPECT_EQ(c.image_std, (std::array<double, 3>{0.229, 0.224, 0.225}));
  EXPECT_FALSE(c.do_center_crop);
  const Preprocessor pre = Preprocessor::from_file(path);
  EXPECT_EQ(pre.config().height, 224);
}

TEST(PreprocessConfig, AnEmptyObjectGivesTheModelCardDefaults) {
  const PreprocessorConfig c = parse_preprocessor_config("{}", "empty.json");
  const PreprocessorConfig d;
  EXPECT_EQ(c.do_resize, d.do_resize);
  EXPECT_EQ(c.height, 224);
  EXPECT_EQ(c.width, 224);
  EXPECT_EQ(c.resample, Resample::kBilinear);
  EXPECT_EQ(c.rescale_factor, 1.0 / 255.0);
  EXPECT_EQ(c.image_mean, d.image_mean);
  EXPECT_EQ(c.image_std, d.image_std);
  EXPECT_TRUE(c.do_convert_rgb);
}

TEST(PreprocessConfig, AnIntegerSizeMeansASquare) {
  const PreprocessorConfig c = parse_preprocessor_config(R"({"size": 384, "resample": 3})", "s.json");
  EXPECT_EQ(c.height, 384);
  EXPECT_EQ(c.width, 384);
  EXPECT_EQ(c.shortest_edge, 0);
  EXPECT_EQ(c.resample, Resample::kBicubic);
}

TEST(PreprocessConfig, ParsesShortestEdgeAndCropSize) {
  const PreprocessorConfig c = parse_preprocessor_config(
      R"({"size": {"shortest_edge": 256}, "do_center_crop": true, "crop_size": {"height": 224, "width": 200}})",
      "s.json");
  EXPECT_EQ(c.shortest_edge, 256);
  EXPECT_TRUE(c.do_center_crop);
  EXPECT_EQ(c.crop_height, 224);
  EXPECT_EQ(c.crop_width, 200);
  const PreprocessorConfig square = parse_preprocessor_config(R"({"crop_size": 96})", "s.json");
  EXPECT_EQ(square.crop_height, 96);
  EXPECT_EQ(square.crop_width, 96);
}

TEST(PreprocessConfig, IgnoresUnknownKeysAndNullValues) {
  const PreprocessorConfig c = parse_preprocessor_config(
      R"({"image_processor_type": "ViTImageProcessor", "feature_extractor_type": "x", "unknown": [1, {}],
          "do_convert_rgb": null, "crop_size": null, "size": {"height": 100, "width": 120}})",
      "s.json");
  EXPECT_EQ(c.height, 100);
  EXPECT_EQ(c.width, 120);
  EXPECT_TRUE(c.do_convert_rgb);
  EXPECT_EQ(c.crop_height, 224);
}

TEST(PreprocessConfig, BroadcastsASingleMeanAndStd) {
  const PreprocessorConfig c = parse_preprocessor_config(R"({"image_mean": 0.5, "image_std": [0.25]})", "s.json");
  EXPECT_EQ(c.image_mean, (std::array<double, 3>{0.5, 0.5, 0.5}));
  EXPECT_EQ(c.image_std, (std::array<double, 3>{0.25, 0.25, 0.25}));
}

TEST(PreprocessConfig, RejectsWrongTypesAndRangesNamingTheSourceAndKey) {
  struct Bad {
    const char* json;
    const char* key;
  };
  const Bad cases[] = {
      {R"({"do_resize": 1})", "do_resize"},
      {R"({"do_normalize": "yes"})", "do_normalize"},
      {R"({"do_rescale": null, "do_center_crop": [true]})", "do_center_crop"},
      {R"({"size": "224"})", "size"},
      {R"({"size": 0})", "size"},
      {R"({"size": 224.5})", "size"},
      {R"({"size": {"height": 224}})", "size"},
      {R"({"size": {"height": 224, "width": -3}})", "size.width"},
      {R"({"size": {"height": 100000, "width": 3}})", "size.height"},
      {R"({"size": {"shortest_edge": 224, "height": 10, "width": 10}})", "size"},
      {R"({"size": {"shortest_edge": 224, "longest_edge": 400}})", "size"},
      {R"({"size": {"shortest_edge": "224"}})", "size.shortest_edge"},
      {R"({"resample": 6})", "resample"},
      {R"({"resample": -1})", "resample"},
      {R"({"resample": 2.0})", "resample"},
      {R"({"resample": "bilinear"})", "resample"},
      {R"({"rescale_factor": "1/255"})", "rescale_factor"},
      {R"({"rescale_factor": 0})", "rescale_factor"},
      {R"({"image_mean": [0.5, 0.5]})", "image_mean"},
      {R"({"image_mean": [0.5, "a", 0.5]})", "image_mean[1]"},
      {R"({"image_std": [0.5, 0, 0.5]})", "image_std"},
      {R"({"image_std": {"r": 1}})", "image_std"},
      {R"({"crop_size": -1})", "crop_size"},
      {R"({"crop_size": {"width": 3}})", "crop_size"},
      {R"({"do_convert_rgb": "true"})", "do_convert_rgb"},
  };
  for (const Bad& b : cases) {
    SCOPED_TRACE(b.json);
    expect_error([&] { parse_preprocessor_config(b.json, "my_config.json"); },
                 {"my_config.json", std::string("'") + b.key + "'"});
  }
}

TEST(PreprocessConfig, RejectsInvalidJsonAndNonObjectsNamingTheSource) {
  expect_error([] { parse_preprocessor_config("{\"size\": 224,", "broken.json"); }, {"broken.json", "invalid JSON"});
  expect_error([] { parse_preprocessor_config("[224, 224]", "array.json"); }, {"array.json", "object"});
}

TEST(PreprocessConfig, LoadingNamesAMissingFileOrADirectory) {
  const std::string missing = tmp() + "/no_such_preprocessor_config.json";
  expect_error([&] { read_preprocessor_config(missing); }, {missing});
  expect_error([&] { Preprocessor::from_file(tmp()); }, {tmp()});
}

TEST(PreprocessConfig, ErrorsInAFileNameTheFile) {
  const std::string path = tmp() + "/bad_preprocessor_config.json";
  test::write_bytes(path, R"({"resample": 9})");
  expect_error([&] { Preprocessor::from_file(path); }, {path, "'resample'"});
}

TEST(PreprocessConfig, ToJsonRoundTripsThroughParse) {
  PreprocessorConfig a;
  a.shortest_edge = 256;
  a.do_center_crop = true;
  a.crop_height = 200;
  a.crop_width = 190;
  a.resample = Resample::kHamming;
  a.rescale_factor = 1.0 / 127.5;
  a.image_mean = {0.5, 0.25, 0.125};
  a.image_std = {0.1, 0.2, 0.3};
  a.do_normalize = false;
  a.do_convert_rgb = false;
  PreprocessorConfig b;
  b.height = 280;
  b.width = 336;
  b.resample = Resample::kNearest;
  for (const PreprocessorConfig& c : {a, b, PreprocessorConfig{}}) {
    const std::string text = to_json(c);
    const PreprocessorConfig r = parse_preprocessor_config(text, "to_json");
    EXPECT_EQ(r.do_resize, c.do_resize) << text;
    EXPECT_EQ(r.height, c.height) << text;
    EXPECT_EQ(r.width, c.width) << text;
    EXPECT_EQ(r.shortest_edge, c.shortest_edge) << text;
    EXPECT_EQ(r.resample, c.resample) << text;
    EXPECT_EQ(r.do_center_crop, c.do_center_crop) << text;
    EXPECT_EQ(r.crop_height, c.crop_height) << text;
    EXPECT_EQ(r.crop_width, c.crop_width) << text;
    EXPECT_EQ(r.do_rescale, c.do_rescale) << text;
    EXPECT_EQ(r.rescale_factor, c.rescale_factor) << text;  // exact: shortest round-trip digits
    EXPECT_EQ(r.do_normalize, c.do_normalize) << text;
    EXPECT_EQ(r.image_mean, c.image_mean) << text;
    EXPECT_EQ(r.image_std, c.image_std) << text;
    EXPECT_EQ(r.do_convert_rgb, c.do_convert_rgb) << text;
  }
  EXPECT_NE(to_json(PreprocessorConfig{}).find("\"rescale_factor\": 0.00392156862745098"), std::string::npos);
}

TEST(PreprocessConfig, TheConstructorRejectsAnInvalidConfig) {
  PreprocessorConfig c;
  c.image_std = {0.2, 0.0, 0.2};
  expect_error([&] { Preprocessor p(c); }, "image_std");
  c = PreprocessorConfig{};
  c.crop_width = 0;
  expect_error([&] { Preprocessor p(c); }, "crop_size.width");
}

}  // namespace
}  // namespace vitmsn
