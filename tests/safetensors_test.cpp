// The safetensors reader: valid files, and every kind of broken header rejected with a message that
// names the file and the problem.
#include "vitmsn/safetensors.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "vitmsn/config.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {
namespace {

// A file: 8-byte little-endian header length, the header, then `data`.
std::string make_file(const std::string& header, const std::string& data, std::uint64_t claimed_len = ~0ull) {
  std::string out(8, '\0');
  const std::uint64_t n = claimed_len == ~0ull ? header.size() : claimed_len;
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + header + data;
}

std::string dir() { return test::temp_dir(); }

// Writes `bytes` as <name>.safetensors and expects open() to throw an Error mentioning the file and
// every string in `needles`.
void expect_rejected(const std::string& name, const std::string& bytes, const std::vector<std::string>& needles) {
  const std::string path = dir() + "/" + name + ".safetensors";
  test::write_bytes(path, bytes);
  try {
    SafetensorsFile::open(path);
    ADD_FAILURE() << name << ": open() accepted a broken file";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << "message does not name the file: " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message lacks '" << n << "': " << msg;
  }
}

const std::string kFloats8(8, '\0');  // two float32 zeros

TEST(Safetensors, ReadsTheTinyModel) {
  const SafetensorsFile f = SafetensorsFile::open(test::data_path("models/tiny/model.safetensors"));
  EXPECT_TRUE(f.contains("embeddings.cls_token"));
  const TensorView& t = f.get("embeddings.position_embeddings");
  EXPECT_EQ(t.dtype, DType::kF32);
  EXPECT_EQ(t.shape, (std::vector<std::int64_t>{1, 1025, 64}));
  EXPECT_EQ(t.nbytes, 1025u * 64 * 4);
  EXPECT_EQ(t.shape_string(), "[1,1025,64]");
  EXPECT_EQ(f.names().size(), 4u + 2 * 16 + 2);
}

TEST(Safetensors, TensorsPointIntoTheMemoryMap) {
  const SafetensorsFile f = SafetensorsFile::open(test::data_path("models/tiny/model.safetensors"));
  const TensorView& a = f.get("layernorm.weight");
  const TensorView& b = f.get("layernorm.bias");
  // Views into one mapping: their distance is the distance of their data offsets.
  EXPECT_LT(std::abs(a.data - b.data), static_cast<std::ptrdiff_t>(f.file_size()));
}

TEST(Safetensors, RoundTripsThroughTheWriterWithMetadata) {
  const std::string path = dir() + "/roundtrip.safetensors";
  const float values[6] = {1.5f, -2.0f, 3.25f, 0.0f, 1e-7f, -1e7f};
  TensorData half;
  half.name = "h";
  half.dtype = DType::kF16;
  half.shape = {2};
  half.bytes = {0x00, 0x3c, 0x00, 0xc0};  // 1.0, -2.0
  TensorData bf;
  bf.name = "b";
  bf.dtype = DType::kBF16;
  bf.shape = {1};
  bf.bytes = {0x80, 0x3f};  // 1.0
  write_safetensors(path, {TensorData::f32("x", {2, 3}, values), half, bf}, {{"config", "{\"a\":1}"}});
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("config"), "{\"a\":1}");
  const std::vector<float> x = f.get("x").to_float();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(x[i], values[i]);
  EXPECT_EQ(f.get("h").value(0), 1.0f);
  EXPECT_EQ(f.get("h").value(1), -2.0f);
  EXPECT_EQ(f.get("b").value(0), 1.0f);
}

TEST(Safetensors, WriterRejectsSizeMismatchAndLeavesNoFile) {
  const std::string path = dir() + "/mismatch.safetensors";
  TensorData t;
  t.name = "x";
  t.shape = {3};
  t.bytes.resize(8);
  EXPECT_THROW(write_safetensors(path, {t}), Error);
  EXPECT_FALSE(std::ifstream(path).good());
}

TEST(Safetensors, WriterRejectsADuplicateTensorNameAndLeavesNoFile) {
  const std::string path = dir() + "/twice.safetensors";
  const float v[2] = {1.0f, 2.0f};
  try {
    write_safetensors(path, {TensorData::f32("b", {2}, v), TensorData::f32("a", {1}, v), TensorData::f32("b", {2}, v)});
    FAIL() << "a file with tensor 'b' twice was written";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("duplicate tensor name 'b'"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::ifstream(path).good());
}

TEST(Safetensors, AcceptsEmptyTensors) {
  const std::string h =
      R"({"e":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string path = dir() + "/empty_tensor.safetensors";
  test::write_bytes(path, make_file(h, kFloats8));
  const SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.get("e").numel(), 0);
}

TEST(Safetensors, RejectsTruncatedFile) {
  expect_rejected("truncated", std::string("\x10\x00\x00", 3), {"shorter than the 8-byte header length"});
}

TEST(Safetensors, RejectsHeaderLengthPastTheEnd) {
  expect_rejected("header_past_end", make_file("{}", "", 4096), {"runs past the end of the file"});
}

TEST(Safetensors, RejectsHugeHeaderLength) {
  expect_rejected("huge_header", make_file("{}", "", 1ull << 62), {"exceeds the limit"});
}

TEST(Safetensors, RejectsInvalidJson) {
  expect_rejected("bad_json", make_file("{\"x\": [1,2", ""), {"not valid JSON"});
}

TEST(Safetensors, JsonErrorsSayWhereInWordsWithBytesEscaped) {
  // A header whose bytes are not UTF-8: nlohmann's own message would carry the raw bytes and its
  // "[json.exception.parse_error.101]" tag; the reader's says where and shows them escaped.
  const std::string path = dir() + "/latin1.safetensors";
  test::write_bytes(path, make_file("{\"caf\xe9\": 1}", ""));
  try {
    SafetensorsFile::open(path);
    FAIL() << "accepted a header that is not UTF-8";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("header is not valid JSON: byte 6 is 0xe9, not UTF-8 text (near '{\"caf\\xe9\": 1}')"),
              std::string::npos)
        << msg;
    EXPECT_EQ(msg.find("json.exception"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\xe9'), std::string::npos) << "raw byte in the message: " << msg;
  }
  expect_rejected("syntax", make_file("{\"x\": tru}", ""), {"syntax error at byte 10 of 10, near '{\"x\": tru}'"});
  expect_rejected("cut", make_file("{\"x\": [1,2", ""), {"the text ends before the JSON is complete"});
}

// What people pass as a model by mistake is named, with what to do, instead of a header length.
TEST(Safetensors, SaysWhatAFileIsWhenItIsNotSafetensors) {
  const std::string torch = test::read_text(test::data_path("models/tiny/pytorch_model.bin"));
  const std::string png = test::read_text(test::data_path("images/chelsea.png"));
  const std::string jpeg = test::read_text(test::data_path("images/rocket.jpg"));
  expect_rejected("torch", torch, {"a PyTorch checkpoint (torch.save zip", "vitmsn-convert"});
  expect_rejected("png", png, {"a PNG image, not a model"});
  expect_rejected("jpeg", jpeg, {"a JPEG image, not a model"});
  expect_rejected("text", "These are my notes about the model.\n", {"a text file, not a safetensors model"});
  expect_rejected("config", "{\n  \"hidden_size\": 1024\n}\n", {"a JSON text file (a config?)"});
  expect_rejected("lfs", "version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1214099224\n",
                  {"a Git LFS pointer", "git lfs pull"});
  expect_rejected("npy", std::string("\x93NUMPY\x01\x00v\x00{'descr': '<f4'}", 26), {"a NumPy .npy array"});
  // pytorch_model.bin in a folder: the command converts it into that folder's model.safetensors.
  const std::string folder = test::temp_dir("hf");
  test::write_bytes(folder + "/pytorch_model.bin", torch);
  test::expect_error([&] { SafetensorsFile::open(folder + "/pytorch_model.bin"); },
                     {"vitmsn-convert " + folder + "/pytorch_model.bin " + folder + "/model.safetensors"});
}

TEST(Safetensors, RejectsHeaderThatIsNotAnObject) {
  expect_rejected("not_object", make_file("[1, 2, 3]", ""), {"not a JSON object"});
}

TEST(Safetensors, RejectsUnknownDtype) {
  expect_rejected("unknown_dtype", make_file(R"({"x":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,8]}})", kFloats8),
                  {"'x'", "unknown dtype 'F8_E9'"});
}

TEST(Safetensors, RejectsOffsetsOutOfRange) {
  expect_rejected("offsets_out_of_range",
                  make_file(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", kFloats8),
                  {"'x'", "run past the end of the data"});
}

TEST(Safetensors, RejectsSizeThatDisagreesWithShape) {
  expect_rejected("size_vs_shape", make_file(R"({"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", kFloats8),
                  {"'x'", "span 8 bytes", "needs 12"});
}

TEST(Safetensors, RejectsOverlappingTensors) {
  expect_rejected(
      "overlap",
      make_file(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          kFloats8),
      {"overlap"});
}

TEST(Safetensors, RejectsOverlapHiddenBehindAnEmptyTensor) {
  expect_rejected(
      "overlap_empty",
      make_file(
          R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[4,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          kFloats8),
      {"overlap"});
}

TEST(Safetensors, RejectsReversedOffsets) {
  expect_rejected("reversed", make_file(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", kFloats8),
                  {"reversed"});
}

TEST(Safetensors, RejectsNegativeOrNonIntegerShape) {
  expect_rejected("negative_shape", make_file(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", kFloats8),
                  {"non-negative integers"});
  expect_rejected("float_shape", make_file(R"({"x":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", kFloats8),
                  {"non-negative integers"});
}

TEST(Safetensors, RejectsShapeWhoseElementCountOverflows) {
  expect_rejected(
      "overflow_shape",
      make_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", kFloats8),
      {"larger than the file"});
}

TEST(Safetensors, RejectsNonStringMetadata) {
  expect_rejected("bad_metadata", make_file(R"({"__metadata__":{"a":1}})", ""), {"__metadata__"});
}

TEST(Safetensors, RejectsMissingFileAndDirectory) {
  EXPECT_THROW(SafetensorsFile::open(dir() + "/does_not_exist.safetensors"), Error);
  try {
    SafetensorsFile::open(dir());
    FAIL() << "opened a directory";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a directory"), std::string::npos) << e.what();
  }
}

TEST(Safetensors, MissingTensorNamesFileAndTensor) {
  const SafetensorsFile f = SafetensorsFile::open(test::data_path("models/tiny/model.safetensors"));
  try {
    f.get("no.such.tensor");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("model.safetensors: missing tensor 'no.such.tensor'"), std::string::npos)
        << e.what();
  }
}

TEST(Safetensors, RejectsTooManyTensorsByLimit) {
  const std::string path = dir() + "/many.safetensors";
  test::write_bytes(
      path,
      make_file(
          R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
          kFloats8));
  SafetensorsLimits limits;
  limits.max_tensors = 1;
  EXPECT_THROW(SafetensorsFile::open(path, limits), Error);
  EXPECT_NO_THROW(SafetensorsFile::open(path));
}

}  // namespace
}  // namespace vitmsn
