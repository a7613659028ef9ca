// Regression tests for what the fuzzers (tests/fuzz/) found. Every input saved under
// data/fuzz/<target>/ is replayed through the very target body that found it; the named tests below
// pin down, per finding, the error the fixed library gives instead of the crash, the hang or the
// foreign exception. Run under tests/sanitize.sh, a regression shows as a sanitizer report.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "fuzz/fuzz_targets.hpp"
#include "test_util.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/torch_checkpoint.hpp"

#if defined(__SANITIZE_ADDRESS__)
#define VITMSN_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define VITMSN_UNDER_ASAN 1
#endif
#endif

namespace vitmsn {
namespace {

using test::expect_error;

using test::data_path;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

using Target = void (*)(const std::uint8_t*, std::size_t);

/// Feeds every saved input of `target_name` to `target`: each must be accepted or refused with
/// vitmsn::Error (any other exception fails the test; a crash or sanitizer report fails the run).
void replay_saved_inputs(const std::string& target_name, Target target) {
  const std::filesystem::path dir = data_path("fuzz/" + target_name);
  ASSERT_TRUE(std::filesystem::is_directory(dir)) << dir;
  int count = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    const std::string bytes = read_file(entry.path().string());
    SCOPED_TRACE(entry.path().string());
    try {
      target(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
    } catch (const Error&) {
      // refused: the expected answer to most fuzz inputs
    } catch (const std::exception& e) {
      ADD_FAILURE() << "exception other than vitmsn::Error: " << e.what();
    }
    ++count;
  }
  EXPECT_GT(count, 0) << "no saved inputs in " << dir;
}

TEST(FuzzRegression, SavedSafetensorsInputsAreAcceptedOrRefusedWithError) {
  replay_saved_inputs("safetensors", fuzz::safetensors_input);
}
TEST(FuzzRegression, SavedJsonInputsAreAcceptedOrRefusedWithError) { replay_saved_inputs("json", fuzz::json_input); }
TEST(FuzzRegression, SavedImageInputsAreAcceptedOrRefusedWithError) { replay_saved_inputs("image", fuzz::image_input); }
TEST(FuzzRegression, SavedTorchInputsAreAcceptedOrRefusedWithError) { replay_saved_inputs("torch", fuzz::torch_input); }
TEST(FuzzRegression, SavedNpyInputsAreAcceptedOrRefusedWithError) { replay_saved_inputs("npy", fuzz::npy_input); }

// --- safetensors -------------------------------------------------------------------------------

// shape [1, 2^62] of F32: numel * 4 wrapped around to 0, which matched data_offsets [0, 0], so the
// file opened with a tensor of 2^62 elements in 0 bytes (value(i) read out of bounds, to_float
// threw std::length_error).
TEST(FuzzRegression, SafetensorsShapeWhoseByteSizeWrapsAroundIsRefused) {
  const std::string path = data_path("fuzz/safetensors/f32-shape-whose-byte-size-wraps-to-0.safetensors");
  expect_error([&] { SafetensorsFile::open(path); },
               "tensor 'x': shape [1,4611686018427387904] is larger than the file");
}

// --- .npy (found reading read_npy for the npy target, before it ran) -----------------------------

// shape (2^48, 2^16): the element count wrapped to 0, which matched the 0 data bytes, so the file
// was read as an empty array with that shape (vitmsn-merge would then have indexed by it).
TEST(FuzzRegression, NpyShapeWhoseElementCountWrapsAroundIsRefused) {
  const std::string path = data_path("fuzz/npy/shape-whose-size-wraps-to-0.npy");
  expect_error([&] { read_npy(path, nullptr); },
               "shape (281474976710656, 65536) needs more data than the file's 0 bytes");
}

// A shape that is not a tuple of integers escaped as std::invalid_argument from std::stoll.
TEST(FuzzRegression, NpyShapeThatIsNotATupleOfIntegersThrowsError) {
  const std::string path = data_path("fuzz/npy/shape-not-a-number.npy");
  expect_error([&] { read_npy(path, nullptr); }, "shape-not-a-number.npy: bad .npy header");
}

// --- preprocessor_config.json ------------------------------------------------------------------

// nlohmann reports a number beyond double range as out_of_range, which the parser let escape
// (std::terminate in the fuzzer); it is invalid JSON like any other.
TEST(FuzzRegression, PreprocessorConfigWithANumberBeyondDoubleRangeThrowsError) {
  const std::string saved = read_file(data_path("fuzz/json/number-overflow-4e505.json"));
  expect_error([&] { parse_preprocessor_config(saved, "pp.json"); }, "pp.json: invalid JSON");
  expect_error([] { parse_preprocessor_config(R"({"rescale_factor": 1e400})", "pp.json"); }, "pp.json: invalid JSON");
  expect_error([] { parse_config(R"({"layer_norm_eps": -2e308})", "config.json"); }, "config.json: not valid JSON");
}

// The error message quoted the offending value with a recursive dump(): a value nested 500,000
// levels deep (a 1 MB file, within the size limit of read_preprocessor_config) overflowed the stack.
TEST(FuzzRegression, DeeplyNestedPreprocessorConfigValueThrowsErrorWithoutExhaustingTheStack) {
  constexpr std::size_t kDepth = 500000;
  const std::string text = "{\"size\": " + std::string(kDepth, '[') + std::string(kDepth, ']') + "}";
  expect_error([&] { parse_preprocessor_config(text, "pp.json"); }, "pp.json: key 'size' must be an integer");
  const std::string root = std::string(kDepth, '[') + std::string(kDepth, ']');
  expect_error([&] { parse_preprocessor_config(root, "pp.json"); }, "pp.json: expected a JSON object");
}

TEST(FuzzRegression, ShallowPreprocessorConfigValuesAreStillQuotedInErrors) {
  expect_error([] { parse_preprocessor_config(R"({"size": [224, 224]})", "pp.json"); }, "got array [224,224]");
}

// --- images ------------------------------------------------------------------------------------

Image zero_image(int width, int height) {
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.assign(static_cast<std::size_t>(width) * height * 3, 0);
  return image;
}

// A 23-byte PGM header claiming 3x265535 pixels: to 224x224, Pillow's order (rows first) widens every
// one of the 265,535 rows to 224 columns before shrinking them, a 59 M pixel intermediate, 74 times
// the image (10 s per input in the fuzzer; a 1x178M image would have asked for 120 GB). The resize
// now counts that intermediate against the pixel limit.
TEST(FuzzRegression, ResizeCountsItsIntermediateImageAgainstThePixelLimit) {
  ImageLimits small;
  small.max_pixels = 1u << 20;
  const Image sliver = zero_image(3, 265535);
  expect_error([&] { Preprocessor().with_limits(small)(sliver); },
               "resize: 3x265535 to 224x224 needs an intermediate image of 224x265535 pixels (Pillow resizes rows "
               "first), above the limit of 1048576 pixels");
  // Within the default limit (Pillow's 178,956,970) the same image is resized.
  EXPECT_EQ(Preprocessor()(sliver).dimension(1), 224);
  // 1 x 800,000 widened to 224 columns: 179.2 M intermediate pixels, above the default limit.
  expect_error([] { resize(zero_image(1, 800000), 224, 224, Resample::kBilinear); }, "above the limit of 178956970");
  // The limit goes along with_size() copies.
  EXPECT_EQ(Preprocessor().with_limits(small).with_size(100, 100).limits().max_pixels, small.max_pixels);
}

// stb_image 2.27 writes past its 257-entry Huffman size table when a DHT table declares more than
// 256 codes (UBSan: index 257 out of bounds in stbi__build_huffman).
TEST(FuzzRegression, JpegWithAHuffmanTableOfMoreThan256CodesIsRefused) {
  const std::string bytes = read_file(data_path("fuzz/image/jpeg-dht-more-than-256-codes.jpg"));
  expect_error([&] { test::decode_bytes(bytes, "dht.jpg"); },
               "dht.jpg: corrupt JPEG: a Huffman table has more than 256 codes");
}

// A 117-byte PNG whose second chunk claims 1,962,934,332 bytes: stb_image grows its buffer to the
// claimed length before reading (with the zeroing realloc tried for a while, that meant a 1.9 GB
// memset: the fuzzer's RSS limit caught it). Chunk lengths are now checked against the file first.
TEST(FuzzRegression, PngChunkClaimingMoreThanTheFileIsRefusedBeforeAllocating) {
  const std::string bytes = read_file(data_path("fuzz/image/png-idat-claiming-1.9-GB.png"));
  expect_error([&] { test::decode_bytes(bytes, "c.png"); },
               "c.png: truncated or corrupt PNG: chunk 'IDAT' claims 1962934332 bytes, 72 are left");
}

// A progressive JPEG whose AC scans use tables the file never defines: stb_image decoded them with
// its uninitialised table memory (UBSan: index -16776858 out of bounds in stbi__jpeg_huff_decode,
// seen only when the heap held the right garbage). Missing tables 0 and 1 are now the standard
// ones, as in libjpeg-turbo; this stream is then corrupt for them too, as Pillow also says.
TEST(FuzzRegression, JpegScansUsingUndefinedHuffmanTablesNeverReachUninitialisedMemory) {
  const std::string bytes = read_file(data_path("fuzz/image/jpeg-progressive-scans-use-undefined-ac-tables.jpg"));
  expect_error([&] { test::decode_bytes(bytes, "p.jpg"); }, "p.jpg: cannot decode JPEG");
}

// The same table behind an extra fill byte (FF FF D8): not a JPEG to Pillow or to our checks, but
// stb_image's sniffer took it for one and decoded it unchecked.
TEST(FuzzRegression, JpegSignatureWithExtraFillBytesIsNotHandedToStbImage) {
  const std::string bytes = read_file(data_path("fuzz/image/jpeg-dht-behind-ff-ff-d8.bin"));
  expect_error([&] { test::decode_bytes(bytes, "ff.bin"); },
               "ff.bin: not a supported image: a JPEG must start with FF D8 FF");
}

// stb_image passed a null pointer to memcpy (UBSan: nonnull-attribute in stbi__getn) for a
// zero-length IDAT chunk before the image data. Such chunks are legal and carry nothing: the image
// must decode exactly as it does without one.
TEST(FuzzRegression, PngWithAnEmptyIdatChunkDecodesAsWithoutIt) {
  const Image with = read_image(data_path("fuzz/image/png-empty-idat-before-data.png"));
  const Image without = read_image(data_path("pillow/gray1.png"));
  EXPECT_EQ(with.width, without.width);
  EXPECT_EQ(with.height, without.height);
  EXPECT_TRUE(with.rgb == without.rgb);
}

TEST(FuzzRegression, WellFormedJpegsStillDecodeAfterTheHuffmanTableCheck) {
  for (const char* name : {"images/chelsea_q90.jpg", "images/coffee_progressive.jpg", "pillow/photo_420.jpg"}) {
    const Image image = read_image(data_path(name));
    EXPECT_GT(image.width, 0) << name;
  }
}

// --- torch checkpoints -------------------------------------------------------------------------

// 59 dicts, each holding the previous one under two keys: flattening walked 2^59 paths until the
// 50M-entry limit stopped it, 45 s under ASan (3 s in Release) for a 1.4 KB file. The walk must stop
// once it has visited more entries than the pickle executed opcodes: at most a few hundred steps.
TEST(FuzzRegression, CheckpointWithExponentiallySharedDictsIsRefusedWithinThePicklesOwnSize) {
  const std::string path = data_path("fuzz/torch/dicts-shared-59-levels-deep.pt");
  std::string message;
  try {
    read_torch_checkpoint(path);
  } catch (const Error& e) {
    message = e.what();
  }
  // "... walking it reached V entries, more than the N opcodes of data.pkl": the walk took V steps.
  const std::string reached = "walking it reached ", than = "more than the ";
  const std::size_t at_v = message.find(reached), at_n = message.find(than);
  ASSERT_TRUE(at_v != std::string::npos && at_n != std::string::npos)
      << "not refused by the shared-dict bound: '" << message << "'";
  const long long visited = std::atoll(message.c_str() + at_v + reached.size());
  const long long opcodes = std::atoll(message.c_str() + at_n + than.size());
  const long long file_bytes = static_cast<long long>(std::ifstream(path, std::ios::binary | std::ios::ate).tellg());
  EXPECT_GT(opcodes, 0) << message;
  EXPECT_LE(opcodes, file_bytes) << message;
  EXPECT_LE(visited, opcodes + 1) << "the walk over shared dicts is no longer bounded by the pickle's size: "
                                  << message;
}

// A 600-byte checkpoint whose tensor is a stride-0 view of one float expanded to 2^58 elements.
TEST(FuzzRegression, StrideZeroViewBeyondTheLimitsIsRefusedBeforeAllocating) {
  const std::string path = data_path("fuzz/torch/stride0-view-of-2-pow-60-bytes.pt");
  expect_error([&] { read_torch_checkpoint(path); }, "tensor 'x' is larger than the limit");
}

TEST(FuzzRegression, StrideZeroViewTooLargeToAllocateThrowsErrorNotBadAlloc) {
#ifdef VITMSN_UNDER_ASAN
  GTEST_SKIP() << "AddressSanitizer reports an impossible allocation instead of throwing std::bad_alloc";
#else
  TorchCheckpointLimits unlimited;
  unlimited.max_entry_bytes = std::numeric_limits<std::uint64_t>::max();
  unlimited.max_total_bytes = std::numeric_limits<std::uint64_t>::max();
  const std::string path = data_path("fuzz/torch/stride0-view-of-2-pow-60-bytes.pt");
  expect_error([&] { read_torch_checkpoint(path, unlimited); }, "tensor 'x': cannot allocate");
#endif
}

}  // namespace
}  // namespace vitmsn
