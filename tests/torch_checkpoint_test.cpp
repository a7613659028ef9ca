// Tests of the torch.save checkpoint reader and its DEFLATE decoder. Fixtures under data/torch/ come
// from tests/tools/make_torch_fixtures.py (PyTorch 1.13 and zlib); broken inputs are built here.
#include "vitmsn/torch_checkpoint.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "base/file_util.hpp"
#include "formats/torch/inflate.hpp"
#include "test_util.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

using test::expect_error;

using test::data_path;

std::string torch_path(const std::string& name) { return data_path("torch/" + name); }

std::vector<std::uint8_t> bytes_of(const std::string& s) { return {s.begin(), s.end()}; }

void expect_checkpoint_error(const std::string& path, const std::vector<std::string>& needles,
                             const TorchCheckpointLimits& limits = {}) {
  expect_error([&] { read_torch_checkpoint(path, limits); }, path + ":", needles);
}

/// Every tensor of `got` equals the same-named tensor of the safetensors file bit for bit; with
/// `same_order`, names come in the file's order too.
void expect_same_tensors(const std::vector<TensorData>& got, const std::string& expected_path, bool same_order) {
  const SafetensorsFile expected = SafetensorsFile::open(expected_path);
  const std::vector<std::string> names = expected.names();
  ASSERT_EQ(got.size(), names.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    const TensorData& t = got[i];
    if (same_order) EXPECT_EQ(t.name, names[i]) << "at position " << i;
    const TensorView* want = expected.find(t.name);
    ASSERT_NE(want, nullptr) << "unexpected tensor '" << t.name << "'";
    EXPECT_EQ(t.dtype, want->dtype) << t.name;
    EXPECT_EQ(t.shape, want->shape) << t.name;
    ASSERT_EQ(t.bytes.size(), want->nbytes) << t.name;
    EXPECT_TRUE(want->nbytes == 0 || std::memcmp(t.bytes.data(), want->data, want->nbytes) == 0)
        << "tensor '" << t.name << "' differs";
  }
}

const TensorData& by_name(const std::vector<TensorData>& ts, const std::string& name) {
  for (const TensorData& t : ts) {
    if (t.name == name) return t;
  }
  throw std::runtime_error("no tensor '" + name + "'");
}

// ---------------------------------------------------------------------------------------------
// Hand-written pickles and zips, for inputs PyTorch would never write.

void put16(std::string& s, std::uint32_t v) {
  s += static_cast<char>(v & 0xFF);
  s += static_cast<char>((v >> 8) & 0xFF);
}
void put32(std::string& s, std::uint32_t v) {
  put16(s, v & 0xFFFF);
  put16(s, v >> 16);
}
void put64(std::string& s, std::uint64_t v) {
  put32(s, static_cast<std::uint32_t>(v));
  put32(s, static_cast<std::uint32_t>(v >> 32));
}

/// Appends pickle opcodes.
struct Pickle {
  std::string b = "\x80\x02";  // PROTO 2
  Pickle& op(char c) {
    b += c;
    return *this;
  }
  Pickle& raw(const std::string& s) {
    b += s;
    return *this;
  }
  Pickle& str(const std::string& s) {  // BINUNICODE
    b += 'X';
    put32(b, static_cast<std::uint32_t>(s.size()));
    b += s;
    return *this;
  }
  Pickle& integer(std::int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
      b += 'J';  // BININT
      put32(b, static_cast<std::uint32_t>(v));
    } else {
      b += "\x8a\x08";  // LONG1, 8 bytes
      put64(b, static_cast<std::uint64_t>(v));
    }
    return *this;
  }
  Pickle& global(const std::string& module, const std::string& name) {
    b += 'c' + module + '\n' + name + '\n';
    return *this;
  }
  Pickle& ints(const std::vector<std::int64_t>& v) {  // a tuple of ints
    op('(');
    for (const std::int64_t x : v) integer(x);
    return op('t');
  }
  /// key -> _rebuild_tensor_v2(storage, offset, size, stride, False, OrderedDict()), then SETITEM.
  Pickle& tensor_item(const std::string& name, const std::string& storage_type, const std::string& key,
                      std::int64_t numel, std::int64_t offset, const std::vector<std::int64_t>& size,
                      const std::vector<std::int64_t>& stride) {
    str(name).global("torch._utils", "_rebuild_tensor_v2").op('(');
    op('(').str("storage").global("torch", storage_type).str(key).str("cpu").integer(numel).op('t').op('Q');
    integer(offset).ints(size).ints(stride).op('\x89');
    global("collections", "OrderedDict").op(')').op('R');
    return op('t').op('R').op('s');
  }
};

struct ZipItem {
  std::string name;
  std::string data;
};

/// A stored-only zip; with `zip64`, central sizes and offsets live in ZIP64 extra fields and the
/// archive ends with a ZIP64 end record, as for files over 4 GB.
std::string make_zip(const std::vector<ZipItem>& items, bool zip64 = false) {
  std::string out, central;
  for (const ZipItem& it : items) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(it.data.data());
    const std::uint32_t crc = detail::crc32(p, it.data.size());
    const std::uint64_t offset = out.size();
    put32(out, 0x04034b50);
    put16(out, 20), put16(out, 0), put16(out, 0), put16(out, 0), put16(out, 0x21);
    put32(out, crc), put32(out, static_cast<std::uint32_t>(it.data.size()));
    put32(out, static_cast<std::uint32_t>(it.data.size()));
    put16(out, static_cast<std::uint32_t>(it.name.size())), put16(out, 0);
    out += it.name + it.data;

    put32(central, 0x02014b50);
    put16(central, 45), put16(central, 45), put16(central, 0), put16(central, 0);
    put16(central, 0), put16(central, 0x21), put32(central, crc);
    const std::uint32_t small = zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(it.data.size());
    put32(central, small), put32(central, small);
    put16(central, static_cast<std::uint32_t>(it.name.size())), put16(central, zip64 ? 28 : 0);
    put16(central, 0), put16(central, 0), put16(central, 0), put32(central, 0);
    put32(central, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(offset));
    central += it.name;
    if (zip64) {
      put16(central, 1), put16(central, 24);
      put64(central, it.data.size()), put64(central, it.data.size()), put64(central, offset);
    }
  }
  const std::uint64_t cd_offset = out.size();
  out += central;
  const std::uint64_t n = items.size();
  if (zip64) {
    const std::uint64_t rec = out.size();
    put32(out, 0x06064b50), put64(out, 44), put16(out, 45), put16(out, 45), put32(out, 0), put32(out, 0);
    put64(out, n), put64(out, n), put64(out, central.size()), put64(out, cd_offset);
    put32(out, 0x07064b50), put32(out, 0), put64(out, rec), put32(out, 1);
  }
  put32(out, 0x06054b50), put16(out, 0), put16(out, 0);
  put16(out, zip64 ? 0xFFFF : static_cast<std::uint32_t>(n)),
      put16(out, zip64 ? 0xFFFF : static_cast<std::uint32_t>(n));
  put32(out, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(central.size()));
  put32(out, zip64 ? 0xFFFFFFFFu : static_cast<std::uint32_t>(cd_offset));
  put16(out, 0);
  return out;
}

/// Little-endian float32 bytes 0, 1, 2, ... n-1.
std::string float_storage(int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    const float f = static_cast<float>(i);
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    put32(s, u);
  }
  return s;
}

/// Writes `bytes` to `file` in a folder of the running test's own (ctest runs tests in parallel).
std::string write_temp(const std::string& file, const std::string& bytes) {
  const std::string path = test::temp_dir() + "/" + file;
  test::write_bytes(path, bytes);
  return path;
}

/// Writes a torch-like checkpoint (archive/data.pkl + archive/data/<key>) and returns its path.
std::string write_checkpoint(const std::string& file, const std::string& pickle,
                             const std::map<std::string, std::string>& storages, bool zip64 = false) {
  std::vector<ZipItem> items = {{"archive/data.pkl", pickle}, {"archive/byteorder", "little"}};
  for (const auto& [key, data] : storages) items.push_back({"archive/data/" + key, data});
  items.push_back({"archive/version", "3\n"});
  return write_temp(file, make_zip(items, zip64));
}

/// A one-tensor state dict {"w": view of a 6-element FloatStorage '0'}.
std::string one_tensor_pickle(std::int64_t offset, const std::vector<std::int64_t>& size,
                              const std::vector<std::int64_t>& stride, std::int64_t numel = 6) {
  Pickle p;
  p.op('}').tensor_item("w", "FloatStorage", "0", numel, offset, size, stride).op('.');
  return p.b;
}

/// Offset of the data of zip entry `name` (first local header naming it).
std::size_t entry_data_offset(const std::string& zip, const std::string& name) {
  std::size_t pos = 0;
  while ((pos = zip.find("PK\x03\x04", pos)) != std::string::npos) {
    const auto* h = reinterpret_cast<const std::uint8_t*>(zip.data() + pos);
    const std::size_t name_len = h[26] | h[27] << 8;
    const std::size_t extra_len = h[28] | h[29] << 8;
    if (zip.compare(pos + 30, name_len, name) == 0) return pos + 30 + name_len + extra_len;
    pos += 4;
  }
  throw std::runtime_error("no entry " + name);
}

// ---------------------------------------------------------------------------------------------
// CRC-32 and DEFLATE

TEST(Inflate, Crc32MatchesTheStandardCheckValue) {
  const std::string s = "123456789";
  const auto* p = reinterpret_cast<const std::uint8_t*>(s.data());
  EXPECT_EQ(detail::crc32(p, s.size()), 0xCBF43926u);
  EXPECT_EQ(detail::crc32(p + 4, 5, detail::crc32(p, 4)), 0xCBF43926u);  // incremental
  EXPECT_EQ(detail::crc32(p, 0), 0u);
}

TEST(Inflate, DecodesZlibStreamsOfEveryBlockKind) {
  // streams.txt: "<name> <size> <crc32 hex>" computed by zlib on the original data.
  std::istringstream manifest(detail::read_text_file(torch_path("deflate/streams.txt")));
  std::string line;
  int streams = 0;
  while (std::getline(manifest, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string name, crc_hex;
    std::size_t size = 0;
    fields >> name >> size >> crc_hex;
    const std::vector<std::uint8_t> in = bytes_of(detail::read_text_file(torch_path("deflate/" + name + ".deflate")));
    const std::vector<std::uint8_t> out = detail::inflate_raw(in.data(), in.size(), size);
    EXPECT_EQ(out.size(), size) << name;
    EXPECT_EQ(detail::crc32(out.data(), out.size()), std::stoul(crc_hex, nullptr, 16)) << name;
    ++streams;
  }
  EXPECT_EQ(streams, 7);
}

std::vector<std::uint8_t> dynamic_stream() {
  return bytes_of(detail::read_text_file(torch_path("deflate/dynamic.deflate")));
}
constexpr std::size_t kDynamicSize = 60001;

TEST(Inflate, RejectsOutputLongerThanExpected) {
  const auto in = dynamic_stream();
  expect_error([&] { detail::inflate_raw(in.data(), in.size(), kDynamicSize - 1); },
               "deflate stream:", {"longer than the expected 60000 bytes"});
}

TEST(Inflate, RejectsOutputShorterThanExpected) {
  const auto in = dynamic_stream();
  expect_error([&] { detail::inflate_raw(in.data(), in.size(), kDynamicSize + 1); },
               "deflate stream:", {"ends after 60001 bytes, expected 60002"});
}

TEST(Inflate, RejectsTruncatedStream) {
  const auto in = dynamic_stream();
  expect_error([&] { detail::inflate_raw(in.data(), in.size() / 2, kDynamicSize); }, "deflate stream:", {"truncated"});
}

TEST(Inflate, RejectsReservedBlockType) {
  const std::uint8_t in[] = {0x07, 0x00};  // BFINAL 1, BTYPE 11
  expect_error([&] { detail::inflate_raw(in, sizeof in, 10); }, "deflate stream:", {"invalid block type 3"});
}

TEST(Inflate, RejectsStoredLengthWithoutItsComplement) {
  const std::uint8_t in[] = {0x01, 0x03, 0x00, 0x00, 0x00, 'a', 'b', 'c'};
  expect_error([&] { detail::inflate_raw(in, sizeof in, 3); }, "deflate stream:", {"complement"});
}

/// LSB-first bit packing, with Huffman codes sent most-significant bit first (RFC 1951 §3.1.1).
struct BitWriter {
  std::vector<std::uint8_t> bytes;
  unsigned used = 8;
  void bits(std::uint32_t v, unsigned n) {
    for (unsigned i = 0; i < n; ++i, v >>= 1) {
      if (used == 8) bytes.push_back(0), used = 0;
      bytes.back() |= static_cast<std::uint8_t>((v & 1u) << used++);
    }
  }
  void code(std::uint32_t c, unsigned n) {
    for (unsigned i = n; i-- > 0;) bits((c >> i) & 1u, 1);
  }
};

TEST(Inflate, RejectsDistanceBeforeStartOfOutput) {
  BitWriter w;
  w.bits(1, 1), w.bits(1, 2);  // final, fixed Huffman
  w.code(0x30 + 'x', 8);       // literal 'x'
  w.code(1, 7);                // symbol 257: length 3
  w.code(1, 5);                // distance code 1: distance 2, but only 1 byte is out
  w.code(0, 7);                // end of block
  expect_error([&] { detail::inflate_raw(w.bytes.data(), w.bytes.size(), 4); },
               "deflate stream:", {"distance 2 reaches before the start of the output (1 bytes written)"});
}

TEST(Inflate, DecodesOverlappingCopyOfHandWrittenFixedBlock) {
  BitWriter w;
  w.bits(1, 1), w.bits(1, 2);
  w.code(0x30 + 'a', 8), w.code(0x30 + 'b', 8);
  w.code(2, 7);  // symbol 258: length 4
  w.code(1, 5);  // distance 2: copies "abab" from a 2-byte window
  w.code(0, 7);
  const std::vector<std::uint8_t> out = detail::inflate_raw(w.bytes.data(), w.bytes.size(), 6);
  EXPECT_EQ(std::string(out.begin(), out.end()), "ababab");
}

TEST(Inflate, RejectsOversubscribedCodeLengths) {
  BitWriter w;
  w.bits(1, 1), w.bits(2, 2);                // final, dynamic
  w.bits(0, 5), w.bits(0, 5), w.bits(0, 4);  // 257 lit/len, 1 distance, 4 code-length codes
  for (int i = 0; i < 4; ++i) w.bits(1, 3);  // four 1-bit codes: two too many
  expect_error([&] { detail::inflate_raw(w.bytes.data(), w.bytes.size(), 1); }, "deflate stream:", {"over-subscribed"});
}

TEST(Inflate, RefusesSizeBeyondDeflateRatioBeforeAllocating) {
  const std::uint8_t in[] = {0x03, 0x00};
  expect_error([&] { detail::inflate_raw(in, sizeof in, std::size_t{1} << 40); },
               "deflate stream:", {"more than DEFLATE can produce"});
}

TEST(Inflate, CorruptedStreamsThrowErrorOrDecodeToExpectedSize) {
  // Run under -DVITMSN_SANITIZE=ON this proves no read or write leaves the buffers.
  const auto original = dynamic_stream();
  std::mt19937 rng(1951);
  for (int trial = 0; trial < 300; ++trial) {
    auto in = original;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) in[rng() % in.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    try {
      EXPECT_EQ(detail::inflate_raw(in.data(), in.size(), kDynamicSize).size(), kDynamicSize);
    } catch (const Error&) {
    }
  }
  for (int trial = 0; trial < 300; ++trial) {
    std::vector<std::uint8_t> noise(1 + rng() % 64);
    for (auto& b : noise) b = static_cast<std::uint8_t>(rng());
    try {
      detail::inflate_raw(noise.data(), noise.size(), 1000);
    } catch (const Error&) {
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Reading checkpoints

TEST(TorchCheckpoint, ReadsTinyModelBitIdenticalToItsSafetensors) {
  const std::vector<TensorData> got = read_torch_checkpoint(data_path("models/tiny/pytorch_model.bin"));
  EXPECT_EQ(got.front().name, "embeddings.cls_token");  // checkpoint order: the pickle's
  expect_same_tensors(got, data_path("models/tiny/model.safetensors"), /*same_order=*/false);
}

TEST(TorchCheckpoint, ReadsFusedSlicesTransposedAndStridedViews) {
  const std::vector<TensorData> got = read_torch_checkpoint(torch_path("views.pt"));
  expect_same_tensors(got, torch_path("views.expected.safetensors"), /*same_order=*/true);
  EXPECT_EQ(by_name(got, "attention.key.weight").shape, (std::vector<std::int64_t>{8, 6}));
  EXPECT_EQ(by_name(got, "permuted_stepped").shape, (std::vector<std::int64_t>{5, 3, 3}));
  EXPECT_EQ(by_name(got, "expanded").shape, (std::vector<std::int64_t>{4, 3}));
  EXPECT_TRUE(by_name(got, "scalar").shape.empty());
  EXPECT_TRUE(by_name(got, "empty").bytes.empty());
  EXPECT_EQ(by_name(got, "tied").bytes, by_name(got, "weight").bytes);
}

TEST(TorchCheckpoint, PreservesEveryStorageDtype) {
  const std::vector<TensorData> got = read_torch_checkpoint(torch_path("views.pt"));
  const std::map<std::string, DType> want = {
      {"weight", DType::kF32}, {"half", DType::kF16},  {"bfloat16", DType::kBF16}, {"double", DType::kF64},
      {"int64", DType::kI64},  {"int32", DType::kI32}, {"int16", DType::kI16},     {"int8", DType::kI8},
      {"uint8", DType::kU8},   {"bool", DType::kBool}, {"parameter", DType::kF32}};
  for (const auto& [name, dtype] : want) EXPECT_EQ(by_name(got, name).dtype, dtype) << name;
}

TEST(TorchCheckpoint, ReadsPickleProtocol4WithFramesAndMemoize) {
  expect_same_tensors(read_torch_checkpoint(torch_path("views_proto4.pt")), torch_path("views.expected.safetensors"),
                      true);
}

TEST(TorchCheckpoint, ReadsDeflatedZipEntries) {
  expect_same_tensors(read_torch_checkpoint(torch_path("views_deflated.pt")), torch_path("views.expected.safetensors"),
                      true);
}

TEST(TorchCheckpoint, ReadsZip64LocalHeaders) {
  expect_same_tensors(read_torch_checkpoint(torch_path("views_zip64.pt")), torch_path("views.expected.safetensors"),
                      true);
}

TEST(TorchCheckpoint, ReadsZip64CentralDirectoryAndEndRecord) {
  const std::string path =
      write_checkpoint("zip64.pt", one_tensor_pickle(1, {2, 2}, {1, 2}), {{"0", float_storage(6)}}, true);
  const std::vector<TensorData> got = read_torch_checkpoint(path);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].shape, (std::vector<std::int64_t>{2, 2}));
  std::vector<float> values(4);
  std::memcpy(values.data(), got[0].bytes.data(), 16);
  EXPECT_EQ(values, (std::vector<float>{1, 3, 2, 4}));  // transposed view of elements 1..4
}

TEST(TorchCheckpoint, ReadsLong1IntegersAndUnicode8Strings) {
  Pickle p;
  p.op('}');
  p.b += "\x8d";  // BINUNICODE8 key
  put64(p.b, 1);
  p.b += "w";
  p.global("torch._utils", "_rebuild_tensor").op('(');
  p.op('(').str("storage").global("torch", "FloatStorage").str("0").str("cpu").integer(6).op('t').op('Q');
  p.raw(std::string("\x8a\x01\x02", 3));  // LONG1 offset 2
  p.ints({2}).ints({2}).op('t').op('R').op('s').op('.');
  const std::vector<TensorData> got =
      read_torch_checkpoint(write_checkpoint("long1.pt", p.b, {{"0", float_storage(6)}}));
  ASSERT_EQ(got.size(), 1u);
  std::vector<float> values(2);
  std::memcpy(values.data(), got[0].bytes.data(), 8);
  EXPECT_EQ(values, (std::vector<float>{2, 4}));
}

TEST(TorchCheckpoint, PicksModelStateDictOutOfTrainingCheckpoint) {
  expect_same_tensors(read_torch_checkpoint(torch_path("wrapped.pt")), torch_path("wrapped.expected.safetensors"),
                      true);
}

TEST(TorchCheckpoint, FlattensNestedDictsWithDottedNames) {
  const std::vector<TensorData> got = read_torch_checkpoint(torch_path("nested.pt"));
  expect_same_tensors(got, torch_path("nested.expected.safetensors"), true);
  EXPECT_EQ(got.front().name, "encoder.layer.0.w");
}

// ---------------------------------------------------------------------------------------------
// Refusals: malicious pickles

TEST(TorchCheckpoint, RejectsPickleWithDisallowedGlobal) {
  const std::string path = torch_path("malicious_os_system.pt");
  expect_checkpoint_error(path, {"archive/data.pkl", "global 'os.system' is not allowed", "GLOBAL at offset 2"});
}

TEST(TorchCheckpoint, RejectsStackGlobalOfBuiltinsEval) {
  expect_checkpoint_error(torch_path("malicious_eval.pt"), {"global 'builtins.eval' is not allowed", "STACK_GLOBAL"});
}

TEST(TorchCheckpoint, RejectsGetattrGlobalInsideTensorArguments) {
  Pickle p;
  p.op('}').str("w").global("__builtin__", "getattr").op(')').op('R').op('s').op('.');
  expect_checkpoint_error(write_checkpoint("getattr.pt", p.b, {}), {"global '__builtin__.getattr' is not allowed"});
}

TEST(TorchCheckpoint, RejectsPickleWithUnknownOpcode) {
  Pickle p;
  p.op('}').op('\xff').op('.');
  expect_checkpoint_error(write_checkpoint("unknown.pt", p.b, {}), {"unknown opcode", "0xff at offset 3"});
}

TEST(TorchCheckpoint, RejectsObjectBuildingOpcodes) {
  Pickle p;
  p.global("collections", "OrderedDict").op(')').op('\x81').op('.');  // NEWOBJ
  expect_checkpoint_error(write_checkpoint("newobj.pt", p.b, {}), {"not allowed", "NEWOBJ"});
}

TEST(TorchCheckpoint, RejectsCallingAStorageType) {
  Pickle p;
  p.op('}').str("w").global("torch", "FloatStorage").op(')').op('R').op('s').op('.');
  expect_checkpoint_error(write_checkpoint("call_storage.pt", p.b, {}),
                          {"global 'torch.FloatStorage' cannot be called", "REDUCE"});
}

TEST(TorchCheckpoint, RejectsMarksNestedBeyondTheLimit) {
  Pickle p;
  for (int i = 0; i < 100; ++i) p.op('(');
  p.op('.');
  expect_checkpoint_error(write_checkpoint("marks.pt", p.b, {}), {"MARKs nested deeper than 64"});
}

TEST(TorchCheckpoint, RejectsPickleBeyondItsOpcodeLimit) {
  TorchCheckpointLimits limits;
  limits.max_pickle_ops = 10;
  expect_checkpoint_error(torch_path("views.pt"), {"more than 10 opcodes"}, limits);
}

TEST(TorchCheckpoint, RejectsPickleEndingWithoutStop) {
  Pickle p;
  p.op('}');
  expect_checkpoint_error(write_checkpoint("nostop.pt", p.b, {}), {"without a STOP"});
}

TEST(TorchCheckpoint, RejectsStringLengthPastTheEnd) {
  Pickle p;
  p.op('}').raw(
      std::string("X\xff\xff\xff\x7f"
                  "abc",
                  8));
  expect_checkpoint_error(write_checkpoint("longstr.pt", p.b, {}), {"runs past the end", "BINUNICODE"});
}

TEST(TorchCheckpoint, RejectsEmptyMemoSlot) {
  Pickle p;
  p.op('}').raw("h\x07").op('.');
  expect_checkpoint_error(write_checkpoint("memo.pt", p.b, {}), {"memo slot 7 is empty", "BINGET"});
}

TEST(TorchCheckpoint, RejectsTopLevelObjectThatIsNotADict) {
  Pickle p;
  p.op(']').op('.');
  expect_checkpoint_error(write_checkpoint("list.pt", p.b, {}), {"top-level object is a list"});
}

// ---------------------------------------------------------------------------------------------
// Refusals: tensors and storages

TEST(TorchCheckpoint, RejectsMissingStorageKey) {
  Pickle p;
  p.op('}').tensor_item("w", "FloatStorage", "9", 6, 0, {6}, {1}).op('.');
  expect_checkpoint_error(write_checkpoint("missing.pt", p.b, {{"0", float_storage(6)}}),
                          {"storage '9' of tensor 'w' is missing", "archive/data/9"});
}

TEST(TorchCheckpoint, RejectsViewOutsideItsStorage) {
  const std::string path = write_checkpoint("oob.pt", one_tensor_pickle(3, {2, 2}, {2, 1}), {{"0", float_storage(6)}});
  expect_checkpoint_error(path, {"tensor 'w' addresses element 6 of storage '0', which holds 6 elements"});
}

TEST(TorchCheckpoint, RejectsStridesThatOverflow) {
  const std::string path =
      write_checkpoint("overflow.pt", one_tensor_pickle(0, {4, 2}, {INT64_MAX, 1}), {{"0", float_storage(6)}});
  expect_checkpoint_error(path, {"tensor 'w': size or stride overflows"});
}

TEST(TorchCheckpoint, RejectsNegativeSizes) {
  const std::string path = write_checkpoint("negative.pt", one_tensor_pickle(0, {-1}, {1}), {{"0", float_storage(6)}});
  expect_checkpoint_error(path, {"tensor size is negative"});
}

TEST(TorchCheckpoint, RejectsStorageWhoseBytesDoNotMatchItsSize) {
  const std::string path = write_checkpoint("short.pt", one_tensor_pickle(0, {6}, {1}), {{"0", float_storage(5)}});
  expect_checkpoint_error(path, {"storage '0' has 20 bytes, expected 6 elements of 4 bytes"});
}

TEST(TorchCheckpoint, RejectsTensorsBeyondTheTotalByteLimit) {
  TorchCheckpointLimits limits;
  limits.max_total_bytes = 1000;
  expect_checkpoint_error(torch_path("views.pt"), {"more than the limit of 1000 bytes"}, limits);
}

TEST(TorchCheckpoint, RejectsBigEndianCheckpoints) {
  const std::string pickle = one_tensor_pickle(0, {6}, {1});
  const std::string path =
      write_temp("big.pt", make_zip({{"a/data.pkl", pickle}, {"a/byteorder", "big"}, {"a/data/0", float_storage(6)}}));
  expect_checkpoint_error(path, {"byte order 'big' is not supported"});
}

// ---------------------------------------------------------------------------------------------
// Refusals: files and zip structure

TEST(TorchCheckpoint, RejectsEmptyFile) { expect_checkpoint_error(write_temp("empty.pt", ""), {"empty file"}); }

TEST(TorchCheckpoint, RejectsFileThatIsNotAZip) {
  expect_checkpoint_error(write_temp("text.pt", std::string(100, 'x') + "\nnot a checkpoint\n"), {"not a zip archive"});
}

TEST(TorchCheckpoint, RejectsMissingFile) { expect_checkpoint_error(torch_path("does_not_exist.pt"), {"cannot open"}); }

TEST(TorchCheckpoint, RejectsLegacyTorchSaveFormat) {
  expect_checkpoint_error(torch_path("legacy.pt"), {"not a zip archive", "legacy torch.save format"});
}

TEST(TorchCheckpoint, RejectsTruncatedZip) {
  const std::string bytes = detail::read_text_file(torch_path("views.pt"));
  for (const std::size_t keep : {bytes.size() / 2, bytes.size() - 30, bytes.size() - 1}) {
    expect_checkpoint_error(write_temp("truncated.pt", bytes.substr(0, keep)), {"zip"});
  }
}

TEST(TorchCheckpoint, RejectsCentralDirectoryOffsetPastTheFile) {
  // torch writes a ZIP64 end record: its central-directory offset is at +48.
  std::string bytes = detail::read_text_file(torch_path("views.pt"));
  const std::size_t rec = bytes.rfind("PK\x06\x06");
  ASSERT_NE(rec, std::string::npos);
  bytes[rec + 48 + 2] = '\x7f';
  expect_checkpoint_error(write_temp("bad_cd.pt", bytes), {"central directory", "lies outside the file"});
}

TEST(TorchCheckpoint, RejectsLocalHeaderOffsetPastTheEntries) {
  std::string bytes = make_zip({{"a/data.pkl", one_tensor_pickle(0, {6}, {1})}, {"a/data/0", float_storage(6)}});
  const std::size_t central = bytes.find("PK\x01\x02");
  bytes[central + 42 + 2] = '\x10';  // local header offset of the first entry += 1 MiB
  expect_checkpoint_error(write_temp("bad_local.pt", bytes), {"entry 'a/data.pkl': local header offset", "outside"});
}

TEST(TorchCheckpoint, RejectsCrcMismatch) {
  std::string bytes = detail::read_text_file(torch_path("views.pt"));
  bytes[entry_data_offset(bytes, "views/data/3")] ^= 0x01;
  expect_checkpoint_error(write_temp("crc.pt", bytes), {"entry 'views/data/3': CRC-32 mismatch"});
}

TEST(TorchCheckpoint, RejectsCorruptDeflateStream) {
  std::string bytes = detail::read_text_file(torch_path("views_deflated.pt"));
  bytes[entry_data_offset(bytes, "views/data.pkl")] = '\x07';  // block type 3
  expect_checkpoint_error(write_temp("bad_deflate.pt", bytes),
                          {"entry 'views/data.pkl': deflate stream: invalid block type 3"});
}

TEST(TorchCheckpoint, RejectsUnsupportedCompressionMethod) {
  std::string bytes = make_zip({{"a/data.pkl", one_tensor_pickle(0, {6}, {1})}, {"a/data/0", float_storage(6)}});
  bytes[8] = 12;  // local header: bzip2
  bytes[bytes.find("PK\x01\x02") + 10] = 12;
  expect_checkpoint_error(write_temp("bzip2.pt", bytes), {"compression method 12"});
}

TEST(TorchCheckpoint, RejectsDuplicateEntryNames) {
  const std::string pickle = one_tensor_pickle(0, {6}, {1});
  const std::string path = write_temp(
      "dup.pt", make_zip({{"a/data.pkl", pickle}, {"a/data/0", float_storage(6)}, {"a/data/0", float_storage(6)}}));
  expect_checkpoint_error(path, {"two entries named 'a/data/0'"});
}

TEST(TorchCheckpoint, RejectsZipWithoutDataPkl) {
  expect_checkpoint_error(write_temp("nopkl.pt", make_zip({{"a/version", "3\n"}})), {"no '<archive>/data.pkl'"});
}

TEST(TorchCheckpoint, CorruptedCheckpointsThrowErrorOrReadCleanly) {
  // Random byte flips anywhere in stored and deflated checkpoints: every outcome is a result or a
  // vitmsn::Error (run under -DVITMSN_SANITIZE=ON to check memory safety as well).
  std::mt19937 rng(16);
  for (const char* name : {"views.pt", "views_deflated.pt", "views_proto4.pt"}) {
    const std::string original = detail::read_text_file(torch_path(name));
    for (int trial = 0; trial < 150; ++trial) {
      std::string bytes = original;
      const int flips = 1 + static_cast<int>(rng() % 3);
      for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] ^= static_cast<char>(1u << (rng() % 8));
      const std::string path = write_temp("fuzz.pt", bytes);
      TorchCheckpointLimits limits;
      limits.max_total_bytes = 1u << 20;  // a flipped size must not make the test allocate gigabytes
      try {
        read_torch_checkpoint(path, limits);
      } catch (const Error& e) {
        EXPECT_EQ(std::string(e.what()).rfind(path, 0), 0u) << e.what();
      }
    }
  }
}

}  // namespace
}  // namespace vitmsn
