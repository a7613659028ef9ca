// .npy reading and writing: round trips, files as numpy writes them, and malformed files (each a
// vitmsn::Error naming the file, before anything is allocated from the header's numbers).
#include "vitmsn/io.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "test_util.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {
namespace {

/// A .npy file of version `version` with header dict `dict` (padded as numpy pads) and `data`.
std::string npy_bytes(const std::string& dict, const std::string& data, int version = 1) {
  const std::size_t prefix = version == 1 ? 10 : 12;
  std::string header = dict;
  header.append((64 - (prefix + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string out = "\x93NUMPY";
  out += static_cast<char>(version);
  out += '\0';
  const std::size_t n = header.size();
  out += static_cast<char>(n & 0xff);
  out += static_cast<char>((n >> 8) & 0xff);
  if (version != 1) {
    out += static_cast<char>((n >> 16) & 0xff);
    out += static_cast<char>((n >> 24) & 0xff);
  }
  return out + header + data;
}

std::string floats(std::size_t n) {
  std::string s;
  for (std::size_t i = 0; i < n; ++i) {
    const float f = 0.5f * static_cast<float>(i);
    s.append(reinterpret_cast<const char*>(&f), sizeof f);
  }
  return s;
}

TEST(Npy, RoundTripsEveryShape) {
  const std::string dir = test::temp_dir();
  const std::vector<std::vector<std::int64_t>> shapes = {{}, {3}, {2, 3}, {0, 5}, {2, 1, 4}};
  for (const auto& shape : shapes) {
    std::size_t n = 1;
    for (auto d : shape) n *= static_cast<std::size_t>(d);
    std::vector<float> v(n);
    for (std::size_t i = 0; i < n; ++i) v[i] = 0.25f * static_cast<float>(i) - 1.0f;
    write_npy(dir + "/a.npy", shape, v.data());
    std::vector<std::int64_t> got_shape;
    const std::vector<float> got = read_npy(dir + "/a.npy", &got_shape);
    EXPECT_EQ(got_shape, shape);
    EXPECT_EQ(got, v);
  }
}

// The bytes numpy.save writes (the header dict as numpy spells it, padded as numpy pads): write_npy()
// and vitmsn-extract's streamed .npy share this header (src/formats/io.hpp), so this pins both.
TEST(Npy, WritesTheBytesNumpyWrites) {
  const std::string dir = test::temp_dir();
  const std::vector<std::pair<std::vector<std::int64_t>, std::string>> cases = {
      {{}, "()"}, {{6}, "(6,)"}, {{2, 3}, "(2, 3)"}, {{1, 2, 3}, "(1, 2, 3)"}, {{0, 5}, "(0, 5)"}};
  for (const auto& [shape, spelled] : cases) {
    std::size_t n = 1;
    for (auto d : shape) n *= static_cast<std::size_t>(d);
    const std::string data = floats(n);
    std::vector<float> values(n);
    if (n) std::memcpy(values.data(), data.data(), data.size());
    write_npy(dir + "/a.npy", shape, values.data());
    EXPECT_EQ(test::read_text(dir + "/a.npy"),
              npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': " + spelled + ", }", data))
        << spelled;
  }
}

TEST(Npy, ReadsFilesAsNumpyWritesThem) {
  const std::string dir = test::temp_dir();
  // numpy.save's spelling (version 1 and 2), double quotes, no trailing comma, Python 2 longs.
  const std::vector<std::string> dicts = {
      "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }",
      "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2, 3)}",
      "{'shape': (2L, 3L), 'fortran_order': False, 'descr': '<f4'}",
  };
  for (int version : {1, 2, 3}) {
    for (const auto& dict : dicts) {
      test::write_bytes(dir + "/n.npy", npy_bytes(dict, floats(6), version));
      std::vector<std::int64_t> shape;
      const std::vector<float> v = read_npy(dir + "/n.npy", &shape);
      EXPECT_EQ(shape, (std::vector<std::int64_t>{2, 3})) << dict;
      ASSERT_EQ(v.size(), 6u) << dict;
      EXPECT_EQ(v[5], 2.5f);
    }
  }
}

void expect_npy_error(const std::string& bytes, const std::string& phrase) {
  const std::string path = test::temp_dir() + "/bad.npy";
  test::write_bytes(path, bytes);
  try {
    read_npy(path, nullptr);
    ADD_FAILURE() << "accepted a bad .npy (expected: " << phrase << ")";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(phrase), std::string::npos) << "expected \"" << phrase << "\" in: " << msg;
  }
}

TEST(Npy, MalformedFilesAreErrorsNamingTheFile) {
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }";
  expect_npy_error("", "not a .npy file");
  expect_npy_error("PK\x03\x04 not numpy at all", "not a .npy file");
  expect_npy_error(npy_bytes(ok, floats(2)).replace(6, 1, "\x07"), "unsupported .npy version 7");
  expect_npy_error(npy_bytes(ok, floats(2)).substr(0, 40), "header runs past the end");
  expect_npy_error(npy_bytes(ok, floats(3)), "holds 12 data bytes, shape (2,) needs 8");
  expect_npy_error(npy_bytes(ok, floats(1)), "shape (2,) needs more data than the file's 4 bytes");
  expect_npy_error(npy_bytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", floats(4)), "dtype is '<f8'");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", floats(2)), "Fortran order");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, }", floats(2)), "lacks descr");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (abc), }", floats(2)),
                   "expected a dimension");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }", floats(2)),
                   "expected a dimension");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", floats(2)),
                   "unknown key 'x'");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} trailing", floats(2)),
                   "text after the header dict");
  expect_npy_error(npy_bytes("{'descr': '<f4, 'fortran_order': False", floats(2)), "bad .npy header");
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,)}", ""),
                   "dimension too large");
  // Shapes whose element count overflows 64 bits (2^48 x 2^16 wraps to 0) or asks for terabytes.
  expect_npy_error(npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (281474976710656, 65536)}", ""),
                   "needs more data than the file's 0 bytes");
  expect_npy_error(
      npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 1099511627776)}", floats(4)),
      "needs more data than the file's 16 bytes");
}

TEST(Npy, AnEmptyDimensionMakesAnEmptyArrayWhateverTheOthers) {
  const std::string path = test::temp_dir() + "/e.npy";
  test::write_bytes(path, npy_bytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 0)}", ""));
  std::vector<std::int64_t> shape;
  EXPECT_TRUE(read_npy(path, &shape).empty());
  EXPECT_EQ(shape, (std::vector<std::int64_t>{1099511627776, 0}));
}

}  // namespace
}  // namespace vitmsn
