// Image decoding: Pillow's convert("RGB") reproduced for every PNG colour type and bit depth, JPEG
// measured against Pillow's libjpeg-turbo pixels, and every kind of bad file rejected with a message
// naming it.
#include "vitmsn/image.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "image/image_stats.hpp"
#include "test_util.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

using test::expect_error;

bool built_with_turbojpeg() { return std::string(jpeg_decoder_name()) == "libjpeg-turbo"; }

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string tmp() { return test::temp_dir(); }

/// How far an 8-bit image is from an expected U8 [H, W, 3] tensor.
struct LevelDiff {
  std::size_t total = 0;
  std::size_t differing = 0;
  int max = 0;
  double mean = 0.0;  ///< mean |difference| over all values
  std::string shape_error;

  std::string summary() const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "max %d levels, mean %.4f, %zu of %zu values differ (%.2f%%)", max, mean, differing,
                  total, total ? 100.0 * differing / total : 0.0);
    return buf;
  }
};

LevelDiff compare_levels(const Image& image, const TensorView& expected) {
  LevelDiff d;
  if (expected.dtype != DType::kU8 || expected.shape.size() != 3 || expected.shape[2] != 3 ||
      expected.shape[0] != image.height || expected.shape[1] != image.width) {
    d.shape_error = "expected U8 " + expected.shape_string() + ", got " + std::to_string(image.height) + "x" +
                    std::to_string(image.width) + "x3";
    return d;
  }
  d.total = image.rgb.size();
  double sum = 0.0;
  for (std::size_t i = 0; i < d.total; ++i) {
    const int diff = std::abs(static_cast<int>(image.rgb[i]) - static_cast<int>(expected.data[i]));
    if (diff != 0) ++d.differing;
    d.max = std::max(d.max, diff);
    sum += diff;
  }
  d.mean = d.total ? sum / d.total : 0.0;
  return d;
}

const SafetensorsFile& pillow_conversions() {
  static const SafetensorsFile f = SafetensorsFile::open(test::data_path("pillow/convert.safetensors"));
  return f;
}

// --- Pillow conversions ----------------------------------------------------------------------------

/// Files in tests/data/pillow whose RGB must equal Pillow's convert("RGB") bit for bit.
const char* const kLosslessFiles[] = {
    "gray16.png", "gray16_trns.png", "gray16_interlaced.png", "gray_alpha16.png", "rgb16.png",
    "rgba16.png", "gray_alpha8.png", "gray8_trns.png",        "gray1.png",        "gray2.png",
    "gray4.png",  "palette4.png",    "palette8_trns.png",     "rgb8_trns.png",    "rgb8_interlaced.png",
    "rgb.bmp",    "palette.gif",
};

std::string stem(const std::string& file) { return file.substr(0, file.find('.')); }

class PillowConversion : public ::testing::TestWithParam<const char*> {};

TEST_P(PillowConversion, MatchesPillowConvertRgbBitForBit) {
  const std::string file = GetParam();
  const Image image = read_image(test::data_path("pillow/" + file));
  const LevelDiff d = compare_levels(image, pillow_conversions().get("convert." + stem(file)));
  ASSERT_TRUE(d.shape_error.empty()) << d.shape_error;
  EXPECT_EQ(d.differing, 0u) << file << ": " << d.summary();
}

INSTANTIATE_TEST_SUITE_P(Image, PillowConversion, ::testing::ValuesIn(kLosslessFiles),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '.', '_');
                           return name;
                         });

TEST(Image, SixteenBitGrayIsClippedAt255LikePillow) {
  // gray16.png starts with 0, 1, 2, 100, 254, 255, 256, 257, 511, 1000 (see make_pillow_fixtures.py):
  // Pillow opens 16-bit gray as mode I and convert("RGB") clips, it does not take the high byte.
  const Image image = read_image(test::data_path("pillow/gray16.png"));
  const int expected[] = {0, 1, 2, 100, 254, 255, 255, 255, 255, 255};
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(image.at(0, i, 0), expected[i]) << "column " << i;
    EXPECT_EQ(image.at(0, i, 1), expected[i]);
    EXPECT_EQ(image.at(0, i, 2), expected[i]);
  }
}

TEST(Image, SixteenBitRgbKeepsTheHighByteLikePillow) {
  // rgb16.png's first pixel is (0, 255, 256) and the second (65535, 0x80FF, 0x7F00).
  const Image image = read_image(test::data_path("pillow/rgb16.png"));
  EXPECT_EQ(image.at(0, 0, 0), 0);
  EXPECT_EQ(image.at(0, 0, 1), 0);
  EXPECT_EQ(image.at(0, 0, 2), 1);
  EXPECT_EQ(image.at(0, 1, 0), 255);
  EXPECT_EQ(image.at(0, 1, 1), 0x80);
  EXPECT_EQ(image.at(0, 1, 2), 0x7F);
}

TEST(Image, FixtureImagesHaveTheirSizes) {
  struct Case {
    const char* file;
    int width, height;
  };
  for (const Case& c :
       {Case{"astronaut.png", 512, 512}, Case{"camera.png", 512, 512}, Case{"chelsea.png", 451, 300},
        Case{"coffee.png", 600, 400}, Case{"green_palette.png", 320, 240}, Case{"horse.png", 400, 328},
        Case{"rocket.jpg", 640, 427}, Case{"chelsea_q90.jpg", 451, 300}, Case{"coffee_progressive.jpg", 600, 400}}) {
    const Image image = read_image(test::data_path(std::string("images/") + c.file));
    EXPECT_EQ(image.width, c.width) << c.file;
    EXPECT_EQ(image.height, c.height) << c.file;
    EXPECT_EQ(image.rgb.size(), static_cast<std::size_t>(c.width) * c.height * 3) << c.file;
  }
}

TEST(Image, GrayscalePngIsReplicatedIntoThreeEqualChannels) {
  const Image image = read_image(test::data_path("images/camera.png"));
  for (int y = 0; y < image.height; y += 37) {
    for (int x = 0; x < image.width; x += 41) {
      EXPECT_EQ(image.at(y, x, 0), image.at(y, x, 1));
      EXPECT_EQ(image.at(y, x, 0), image.at(y, x, 2));
    }
  }
}

TEST(Image, DecodeImageFromMemoryEqualsLoadImage) {
  const std::string bytes = read_bytes(test::data_path("images/horse.png"));
  const Image a = test::decode_bytes(bytes, "horse.png");
  const Image b = read_image(test::data_path("images/horse.png"));
  EXPECT_EQ(a.width, b.width);
  EXPECT_EQ(a.height, b.height);
  EXPECT_TRUE(a.rgb == b.rgb);
}

// --- JPEG against Pillow (libjpeg-turbo) -------------------------------------------------------------

/// The golden fixtures' JPEGs: `<case>.decoded_rgb` is what Pillow decoded.
const char* const kFixtureJpegs[] = {"rocket", "chelsea_q90", "coffee_progressive"};

class FixtureJpeg : public ::testing::TestWithParam<const char*> {
 protected:
  LevelDiff measure() const {
    const std::string name = GetParam();
    const Image image = read_image(test::data_path("images/" + name + ".jpg"));
    const LevelDiff d = compare_levels(image, test::preprocess_fixture(name + ".decoded_rgb"));
    std::printf("[ JPEG     ] %s.jpg, %s vs Pillow: %s\n", name.c_str(), jpeg_decoder_name(), d.summary().c_str());
    return d;
  }
};

TEST_P(FixtureJpeg, DecodesWithinThreeLevelsOfPillow) {
  const LevelDiff d = measure();
  ASSERT_TRUE(d.shape_error.empty()) << d.shape_error;
  EXPECT_LE(d.max, 3) << d.summary();
}

TEST_P(FixtureJpeg, IsIdenticalToPillowWithLibjpegTurbo) {
  if (!built_with_turbojpeg()) {
    GTEST_SKIP() << "built with stb_image for JPEG; configure with -DVITMSN_WITH_TURBOJPEG=ON to "
                    "decode bit-exactly like Pillow";
  }
  const LevelDiff d = measure();
  ASSERT_TRUE(d.shape_error.empty()) << d.shape_error;
  EXPECT_EQ(d.differing, 0u) << d.summary();
}

INSTANTIATE_TEST_SUITE_P(Image, FixtureJpeg, ::testing::ValuesIn(kFixtureJpegs),
                         [](const ::testing::TestParamInfo<const char*>& info) { return std::string(info.param); });

/// Small JPEGs written by Pillow with each chroma layout, and the bound stb_image keeps to.
struct ExtraJpeg {
  const char* file;
  int stb_max_levels;  ///< largest difference stb_image may show (docs/NUMERICS.md, Preprocessing)
};

const ExtraJpeg kExtraJpegs[] = {
    {"photo_420.jpg", 3},
    {"photo_444.jpg", 3},
    {"photo_gray.jpg", 1},
    {"odd_420.jpg", 3},
    // stb's horizontal-only 2x chroma upsampler weighs the last chroma column differently from
    // libjpeg: up to tens of levels there (docs/NUMERICS.md, Preprocessing), within 3 levels elsewhere.
    {"photo_422.jpg", 255},
};

class ExtraJpegTest : public ::testing::TestWithParam<ExtraJpeg> {};

TEST_P(ExtraJpegTest, MatchesPillowWithinTheDecodersBound) {
  const ExtraJpeg& c = GetParam();
  const Image image = read_image(test::data_path(std::string("pillow/") + c.file));
  const TensorView& expected = pillow_conversions().get("convert." + stem(c.file));
  const LevelDiff d = compare_levels(image, expected);
  ASSERT_TRUE(d.shape_error.empty()) << d.shape_error;
  std::printf("[ JPEG     ] %s, %s vs Pillow: %s\n", c.file, jpeg_decoder_name(), d.summary().c_str());
  if (built_with_turbojpeg()) {
    EXPECT_EQ(d.differing, 0u) << d.summary();
    return;
  }
  EXPECT_LE(d.max, c.stb_max_levels) << d.summary();
  // Away from the last chroma column (the last two pixel columns when chroma is halved
  // horizontally) every layout stays within 3 levels.
  int inner_max = 0;
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x + 2 < image.width; ++x) {
      for (int ch = 0; ch < 3; ++ch) {
        const std::size_t i = (static_cast<std::size_t>(y) * image.width + x) * 3 + ch;
        inner_max = std::max(inner_max, std::abs(image.rgb[i] - static_cast<int>(expected.data[i])));
      }
    }
  }
  EXPECT_LE(inner_max, 3) << "excluding the last two pixel columns";
}

INSTANTIATE_TEST_SUITE_P(Image, ExtraJpegTest, ::testing::ValuesIn(kExtraJpegs),
                         [](const ::testing::TestParamInfo<ExtraJpeg>& info) { return stem(info.param.file); });

TEST(Image, DecoderNameSaysWhichJpegDecoderIsBuiltIn) {
  const std::string name = jpeg_decoder_name();
  EXPECT_TRUE(name == "stb_image" || name == "libjpeg-turbo") << name;
}

// --- JPEG Huffman tables -----------------------------------------------------------------------------

/// The JPEG without the segments of `marker`.
std::string without_segments(const std::string& jpeg, std::uint8_t drop) {
  std::string out = jpeg.substr(0, 2);
  std::size_t i = 2;
  while (i + 4 <= jpeg.size()) {
    const auto marker = static_cast<std::uint8_t>(jpeg[i + 1]);
    if (marker == 0xDA) return out + jpeg.substr(i);
    const std::size_t length = (static_cast<std::size_t>(static_cast<std::uint8_t>(jpeg[i + 2])) << 8) |
                               static_cast<std::uint8_t>(jpeg[i + 3]);
    if (marker != drop) out += jpeg.substr(i, 2 + length);
    i += 2 + length;
  }
  return out;
}

// These JPEGs were written with the standard tables of ITU T.81 K.3 (4:2:0, 4:2:2, 4:4:4, gray, odd
// sizes). Without their DHT segments libjpeg-turbo (Pillow) falls back on those tables and decodes
// them unchanged (checked with Pillow 9.4: max difference 0); so must we.
TEST(Image, JpegWithoutHuffmanTablesDecodesWithTheStandardOnes) {
  for (const char* name : {"images/chelsea_q90.jpg", "pillow/odd_420.jpg", "pillow/photo_420.jpg",
                           "pillow/photo_422.jpg", "pillow/photo_444.jpg", "pillow/photo_gray.jpg"}) {
    const std::string bytes = read_bytes(test::data_path(name));
    const std::string stripped = without_segments(bytes, 0xC4);  // as Motion-JPEG frames come
    ASSERT_LT(stripped.size(), bytes.size()) << name << " has no DHT segment to strip";
    const Image original = test::decode_bytes(bytes, name);
    const Image bare = test::decode_bytes(stripped, name);
    ASSERT_EQ(bare.width, original.width);
    EXPECT_TRUE(bare.rgb == original.rgb) << name << " decodes differently without its DHT segments";
  }
}

// libjpeg refuses ("Quantization table 0x00 was not defined"; Pillow: "broken data stream"); stb_image would dequantize
// with whatever its table memory held.
TEST(Image, JpegWithoutQuantizationTablesIsRefused) {
  const std::string bytes = without_segments(read_bytes(test::data_path("images/chelsea_q90.jpg")), 0xDB);
  expect_error([&] { test::decode_bytes(bytes, "q.jpg"); },
               {"q.jpg", "a scan uses quantization table 0, which the file does not define"});
}

TEST(Image, JpegScanUsingAnUndefinedHuffmanTable2Or3IsRefused) {
  std::string bytes = without_segments(read_bytes(test::data_path("images/chelsea_q90.jpg")), 0xC4);
  const std::size_t sos = bytes.find("\xFF\xDA");
  ASSERT_NE(sos, std::string::npos);
  bytes[sos + 6] = '\x02';  // first component: DC table 0, AC table 2
  expect_error([&] { test::decode_bytes(bytes, "t2.jpg"); },
               {"t2.jpg", "a scan uses AC Huffman table 2, which the file does not define"});
}

// A 64x48 gray progressive JPEG (Pillow) cut after its first scan, the DC one: no scan writes any AC
// coefficient, which must read as 0 (libjpeg's arrays start zeroed; stb_image zeroes a block in the
// first DC scan, and every buffer it allocates now starts zeroed too). Decoded after the heap was
// filled with garbage, twice: the same result, every 8x8 block flat. (Pillow's own output differs:
// libjpeg smooths the blocks of an incomplete progressive image, stb_image does not.)
TEST(Image, IncompleteProgressiveJpegDecodesDeterministicallyWithZeroAcCoefficients) {
  const std::string path = test::data_path("images/gray_progressive_dc_scan_only.jpg");
  auto decode_on_dirty_heap = [&](std::uint8_t garbage) {
    {
      std::vector<std::vector<std::uint8_t>> dirt;
      for (int k = 0; k < 64; ++k) dirt.emplace_back(std::size_t{512} << (k % 8), garbage);
    }
    return read_image(path);
  };
  const Image a = decode_on_dirty_heap(0xAB);
  const Image b = decode_on_dirty_heap(0x5C);
  EXPECT_TRUE(a.rgb == b.rgb) << "decoding depends on what the heap held";
  ASSERT_EQ(a.width, 64);
  ASSERT_EQ(a.height, 48);
  int uneven_blocks = 0;
  for (int by = 0; by < 48; by += 8) {
    for (int bx = 0; bx < 64; bx += 8) {
      const std::uint8_t first = a.rgb[(static_cast<std::size_t>(by) * 64 + bx) * 3];
      bool flat = true;
      for (int y = by; y < by + 8; ++y) {
        for (int x = bx; x < bx + 8; ++x) flat = flat && a.rgb[(static_cast<std::size_t>(y) * 64 + x) * 3] == first;
      }
      uneven_blocks += !flat;
    }
  }
  EXPECT_EQ(uneven_blocks, 0) << "blocks with non-zero AC coefficients, which no scan wrote";
}

// --- PNM, BMP, TGA written by Pillow -----------------------------------------------------------------

// data/formats: one 7x5 image saved by Pillow 9.4 as PPM/PGM/BMP/TGA (raw and RLE) and as PNG;
// gray16.pgm is 16-bit (Pillow mode I), compared with the 16-bit PNG of the same values.
struct FormatCase {
  const char* file;
  const char* reference;
};
const FormatCase kFormats[] = {
    {"rgb.ppm", "rgb.png"},   {"rgb.bmp", "rgb.png"},   {"rgb.tga", "rgb.png"},       {"rgb_rle.tga", "rgb.png"},
    {"gray.pgm", "gray.png"}, {"gray.tga", "gray.png"}, {"gray16.pgm", "gray16.png"},
};

TEST(Image, PnmBmpAndTgaDecodeAsTheirPngTwins) {
  for (const FormatCase& c : kFormats) {
    const Image image = read_image(test::data_path(std::string("formats/") + c.file));
    const Image reference = read_image(test::data_path(std::string("formats/") + c.reference));
    ASSERT_EQ(image.width, reference.width) << c.file;
    ASSERT_EQ(image.height, reference.height) << c.file;
    EXPECT_TRUE(image.rgb == reference.rgb) << c.file << " differs from " << c.reference;
  }
}

// PNM samples as Pillow 9.4 scales them: maxval 255 raw; else round(v / maxval * 255) half to even
// (16-bit gray: to mode I first, clipped at 255 by convert("RGB")); 16-bit samples big-endian.
// data/formats/*_maxval*.p?m.pillow.png hold Pillow's Image.open(f).convert("RGB").
TEST(Image, PnmSamplesAreScaledByMaxvalAsPillowDoes) {
  int checked = 0;
  for (const char* kind : {"gray_maxval", "rgb_maxval"}) {
    for (int maxval : {2, 6, 15, 100, 1000, 4095, 65535}) {
      const std::string name = std::string(kind) + std::to_string(maxval) + (kind[0] == 'g' ? ".pgm" : ".ppm");
      const Image image = read_image(test::data_path("formats/" + name));
      const Image pillow = read_image(test::data_path("formats/" + name + ".pillow.png"));
      ASSERT_EQ(image.rgb.size(), pillow.rgb.size()) << name;
      std::size_t differing = 0;
      for (std::size_t i = 0; i < image.rgb.size(); ++i) differing += image.rgb[i] != pillow.rgb[i];
      EXPECT_EQ(differing, 0u) << name << ": " << differing << " of " << image.rgb.size()
                               << " values differ from Pillow";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 14);
}

TEST(Image, RejectsPnmHeadersPillowRejects) {
  const std::string px(12, '\x10');
  const std::string zero = "P5\n2 2\n0\n" + px;
  expect_error([&] { test::decode_bytes(zero, "z.pgm"); }, {"z.pgm", "maxval 0 is not between 1 and 65535"});
  const std::string big = "P6\n2 2\n70000\n" + px + px;
  expect_error([&] { test::decode_bytes(big, "b.ppm"); }, {"b.ppm", "maxval 70000"});
  const std::string glued = "P61 1 255\n" + px;
  expect_error([&] { test::decode_bytes(glued, "g.ppm"); }, {"g.ppm", "must be followed by whitespace"});
  const std::string letters = "P5\n2 x\n255\n" + px;
  expect_error([&] { test::decode_bytes(letters, "l.pgm"); }, {"l.pgm", "expected a number"});
  const std::string longer = "P5\n12345678901 1\n255\n" + px;
  expect_error([&] { test::decode_bytes(longer, "n.pgm"); }, {"n.pgm", "longer than 10 digits"});
}

// stb_image reads zeros past the end of these formats; Pillow raises "image file is truncated".
// Every cut inside the pixel data (and any cut at all for RLE) must be refused.
TEST(Image, RejectsEveryTruncationOfPnmBmpAndTga) {
  for (const FormatCase& c : kFormats) {
    const std::string bytes = read_bytes(test::data_path(std::string("formats/") + c.file));
    for (std::size_t cut = 1; cut < bytes.size(); ++cut) {
      SCOPED_TRACE(std::string(c.file) + " cut at " + std::to_string(cut) + " of " + std::to_string(bytes.size()));
      // Pillow's TGA writer appends a 26-byte footer after the pixels: cutting there loses nothing.
      const bool tga_footer = std::string(c.file).find(".tga") != std::string::npos && cut >= bytes.size() - 26;
      if (tga_footer) continue;
      expect_error([&] { decode_image(reinterpret_cast<const std::uint8_t*>(bytes.data()), cut, c.file); }, c.file);
    }
    const std::string path = tmp() + "/cut_" + c.file;
    test::write_bytes(path,
                      bytes.substr(0, bytes.size() - (std::string(c.file).find(".tga") != std::string::npos ? 27 : 1)));
    expect_error([&] { read_image(path); }, {path, "image file is truncated"});
  }
}

TEST(Image, ReadsTheFormatsItsExtensionListNamesAndNoOthers) {
  // What folder scans pick up is what the decoder reads: Pillow's formats, PSD included.
  const auto& ext = image_file_extensions();
  for (const char* e : {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tga", ".psd", ".ppm", ".pgm", ".pnm"})
    EXPECT_NE(std::find(ext.begin(), ext.end(), e), ext.end()) << e;
  for (const char* e : {".hdr", ".pic", ".webp", ".pbm", ".tif"})
    EXPECT_EQ(std::find(ext.begin(), ext.end(), e), ext.end()) << e;
  const Image rgb = read_image(test::data_path("formats/rgb.png"));
  const std::string psd = test::psd_bytes(rgb);
  EXPECT_EQ(test::decode_bytes(psd, "rgb.psd").rgb, rgb.rgb);
  // Radiance HDR, which stb_image could decode but Pillow cannot: no reference, so refused.
  const std::string hdr = std::string("#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y 2 +X 3\n") + std::string(24, '\x40');
  expect_error([&] { test::decode_bytes(hdr, "x.hdr"); },
               "x.hdr: not a supported image (PNG, JPEG, BMP, GIF, TGA, PSD, PNM)");
}

// --- bad input -----------------------------------------------------------------------------------------

TEST(Image, RejectsTheTruncatedJpegNamingThePath) {
  const std::string path = test::data_path("images/truncated.jpg");
  expect_error([&] { read_image(path); }, {path, "truncated"});
}

TEST(Image, RejectsJpegsCutShortInTheMiddleOfTheScan) {
  for (const char* name : {"rocket.jpg", "coffee_progressive.jpg"}) {
    const std::string bytes = read_bytes(test::data_path(std::string("images/") + name));
    const std::string path = tmp() + "/cut_" + name;
    test::write_bytes(path, bytes.substr(0, bytes.size() * 6 / 10));
    expect_error([&] { read_image(path); }, {path, "truncated"});
  }
}

TEST(Image, RejectsAPngCutInHalf) {
  const std::string bytes = read_bytes(test::data_path("images/chelsea.png"));
  const std::string path = tmp() + "/half.png";
  test::write_bytes(path, bytes.substr(0, bytes.size() / 2));
  expect_error([&] { read_image(path); }, {path});
}

TEST(Image, RejectsEveryTruncationOfAJpegAndAPngWithoutCrashing) {
  // Cut points across headers, entropy-coded data and trailers; each must give an Error, never a
  // crash or a silently grey image.
  for (const char* name : {"chelsea_q90.jpg", "coffee_progressive.jpg", "green_palette.png", "horse.png"}) {
    const std::string bytes = read_bytes(test::data_path(std::string("images/") + name));
    const std::size_t step = std::max<std::size_t>(1, bytes.size() / 40);
    for (std::size_t cut = 1; cut < bytes.size(); cut += step) {
      SCOPED_TRACE(std::string(name) + " cut at " + std::to_string(cut) + " of " + std::to_string(bytes.size()));
      expect_error([&] { decode_image(reinterpret_cast<const std::uint8_t*>(bytes.data()), cut, name); }, name);
    }
  }
}

TEST(Image, RejectsAnEmptyFile) {
  const std::string path = tmp() + "/empty.png";
  test::write_bytes(path, "");
  expect_error([&] { read_image(path); }, {path, "empty"});
}

TEST(Image, RejectsRandomBytes) {
  std::string bytes(4096, '\0');
  std::uint64_t state = 0x9E3779B97F4A7C15ull;
  for (char& b : bytes) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    b = static_cast<char>(state >> 56);
  }
  const std::string path = tmp() + "/random.bin";
  test::write_bytes(path, bytes);
  expect_error([&] { read_image(path); }, {path, "not a supported image"});
}

TEST(Image, RejectsATextFileNamedPng) {
  const std::string path = tmp() + "/notes.png";
  test::write_bytes(path, "This is a text file, not a picture.\n");
  expect_error([&] { read_image(path); }, {path, "not a supported image"});
}

std::uint32_t crc32(const std::string& bytes) {
  std::uint32_t crc = 0xFFFFFFFFu;
  for (unsigned char b : bytes) {
    crc ^= b;
    for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
  }
  return crc ^ 0xFFFFFFFFu;
}

std::string be32(std::uint32_t v) {
  return {static_cast<char>(v >> 24), static_cast<char>(v >> 16), static_cast<char>(v >> 8), static_cast<char>(v)};
}

/// A PNG that is only a signature and a valid IHDR chunk claiming `width` x `height` RGB pixels.
std::string png_header(std::uint32_t width, std::uint32_t height) {
  std::string ihdr = "IHDR" + be32(width) + be32(height);
  ihdr += std::string{8, 2, 0, 0, 0};  // depth 8, colour type RGB, deflate, filter 0, no interlace
  return std::string("\x89PNG\r\n\x1a\n", 8) + be32(13) + ihdr + be32(crc32(ihdr));
}

TEST(Image, RefusesAPngClaiming100000x100000PixelsFromItsHeaderAlone) {
  const std::string path = tmp() + "/huge.png";
  test::write_bytes(path, png_header(100000, 100000));
  const std::uint64_t buffers_before = detail::pixel_buffers_allocated();
  expect_error([&] { read_image(path); }, {path, "100000x100000", "10000000000 pixels", "limit of 178956970 pixels"});
  // Refused from the header alone: no decoder started, no pixel buffer was allocated.
  EXPECT_EQ(detail::pixel_buffers_allocated(), buffers_before);
}

TEST(Image, RespectsTheCallersPixelLimit) {
  const std::string path = test::data_path("images/chelsea.png");
  ImageLimits limits;
  limits.max_pixels = 451 * 300 - 1;
  expect_error([&] { read_image(path, limits); }, {path, "451x300", "limit of 135299 pixels"});
  limits.max_pixels = 451 * 300;
  EXPECT_EQ(read_image(path, limits).width, 451);
}

TEST(Image, RefusesALargeJpegFromItsHeaderAlone) {
  ImageLimits limits;
  limits.max_pixels = 1000;
  const std::string path = test::data_path("images/rocket.jpg");
  expect_error([&] { read_image(path, limits); }, {path, "640x427", "limit of 1000 pixels"});
}

TEST(Image, RejectsADirectoryNamingIt) {
  const std::string path = tmp();
  expect_error([&] { read_image(path); }, {path, "directory"});
}

TEST(Image, RejectsAMissingFileNamingIt) {
  const std::string path = tmp() + "/no_such_image.png";
  expect_error([&] { read_image(path); }, {path});
}

TEST(Image, DecodeImageNamesTheBufferInErrors) {
  const std::string bytes = "GIF89a but not really";
  expect_error([&] { test::decode_bytes(bytes, "upload #7"); }, "upload #7");
  expect_error([&] { decode_image(nullptr, 0, "upload #8"); }, {"upload #8", "empty"});
}

// --- write_png ---------------------------------------------------------------------------------------

Image gradient(int width, int height) {
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(static_cast<std::size_t>(width) * height * 3);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      std::uint8_t* p = &image.rgb[(static_cast<std::size_t>(y) * width + x) * 3];
      p[0] = static_cast<std::uint8_t>(x * 7 + y);
      p[1] = static_cast<std::uint8_t>(y * 13);
      p[2] = static_cast<std::uint8_t>((x * y) ^ 0x5A);
    }
  }
  return image;
}

TEST(ImageWritePng, RoundTripsExactly) {
  const Image image = gradient(37, 23);
  const std::string path = tmp() + "/roundtrip.png";
  write_png(path, image);
  const Image back = read_image(path);
  EXPECT_EQ(back.width, 37);
  EXPECT_EQ(back.height, 23);
  EXPECT_TRUE(back.rgb == image.rgb);
}

TEST(ImageWritePng, ReplacesAnExistingFileAndLeavesNoTemporaryFile) {
  const std::string dir = test::temp_dir();
  const std::string path = dir + "/out.png";
  test::write_bytes(path, "old contents");
  write_png(path, gradient(5, 4));
  EXPECT_EQ(read_image(path).width, 5);
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_EQ(entry.path().filename(), "out.png");
  }
  EXPECT_EQ(files, 1);
}

TEST(ImageWritePng, RejectsAnInconsistentImageNamingThePath) {
  Image image = gradient(4, 4);
  image.rgb.pop_back();
  const std::string path = tmp() + "/bad.png";
  expect_error([&] { write_png(path, image); }, {path});
  EXPECT_FALSE(std::filesystem::exists(path));
  expect_error([&] { write_png(path, Image{}); }, {path, "empty"});
}

TEST(ImageWritePng, NamesThePathWhenTheFolderIsMissing) {
  const std::string path = tmp() + "/missing_folder/out.png";
  expect_error([&] { write_png(path, gradient(2, 2)); }, {path});
}

}  // namespace
}  // namespace vitmsn
