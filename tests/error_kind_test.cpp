// Error::kind(): one real error of each kind through the public API, with the kind, the file it is
// about (path()) and a message that still names the file.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <functional>
#include <string>

#include "test_util.hpp"
#include "vitmsn/vitmsn.hpp"

namespace vitmsn {
namespace {

// Runs fn, expects an Error and returns it (a default Error when none is thrown, after a failure).
Error caught(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e;
  }
  ADD_FAILURE() << "no vitmsn::Error thrown";
  return Error(ErrorKind::kArgument, "");
}

// The error is of `kind`, about `path` (path() and the start of the message).
void expect_about(const Error& e, ErrorKind kind, const std::string& path) {
  EXPECT_EQ(error_kind_name(e.kind()), std::string(error_kind_name(kind))) << e.what();
  EXPECT_EQ(e.path(), path) << e.what();
  EXPECT_EQ(std::string(e.what()).rfind(path + ": ", 0), 0u) << e.what();
}

TEST(ErrorKind, MissingModelFileIsNotFound) {
  const std::string path = test::temp_dir() + "/absent.safetensors";
  const Error e = caught([&] { Model::load(path); });
  expect_about(e, ErrorKind::kNotFound, path);
}

TEST(ErrorKind, MissingImageIsNotFoundWithItsErrno) {
  const std::string path = test::temp_dir() + "/absent.png";
  const Error e = caught([&] { read_image(path); });
  expect_about(e, ErrorKind::kNotFound, path);
  EXPECT_EQ(e.os_error(), ENOENT);
  EXPECT_NE(std::string(e.what()).find("cannot open"), std::string::npos) << e.what();
}

TEST(ErrorKind, TruncatedSafetensorsIsMalformed) {
  const std::string path = test::temp_dir() + "/truncated.safetensors";
  test::write_bytes(path, std::string("\x10\x00\x00", 3));
  const Error e = caught([&] { SafetensorsFile::open(path); });
  expect_about(e, ErrorKind::kMalformed, path);
  EXPECT_NE(std::string(e.what()).find("shorter than the 8-byte header length"), std::string::npos) << e.what();
}

TEST(ErrorKind, UnknownDtypeIsUnsupported) {
  const std::string path = test::temp_dir() + "/f8.safetensors";
  const std::string header = R"({"x":{"dtype":"F8_E9","shape":[2],"data_offsets":[0,8]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  test::write_bytes(path, bytes + header + std::string(8, '\0'));
  const Error e = caught([&] { SafetensorsFile::open(path); });
  expect_about(e, ErrorKind::kUnsupported, path);
  EXPECT_NE(std::string(e.what()).find("unknown dtype 'F8_E9'"), std::string::npos) << e.what();
}

TEST(ErrorKind, ATorchCheckpointGivenAsAModelIsUnsupported) {
  const std::string path = test::data_path("models/tiny/pytorch_model.bin");
  const Error e = caught([&] { Model::load(path); });
  expect_about(e, ErrorKind::kUnsupported, path);
}

TEST(ErrorKind, ImageOverImageLimitsIsALimit) {
  const std::string path = test::data_path("images/chelsea.png");
  ImageLimits limits;
  limits.max_pixels = 100;
  const Error e = caught([&] { read_image(path, limits); });
  expect_about(e, ErrorKind::kLimit, path);
  EXPECT_NE(std::string(e.what()).find("limit of 100 pixels"), std::string::npos) << e.what();
  EXPECT_EQ(std::string(e.what()).find("::"), std::string::npos) << e.what();  // no C++ names for program users
}

TEST(ErrorKind, WrongPixelValuesShapeIsAnArgument) {
  const Model model = Model::load(test::data_path("models/tiny"));
  PixelValues px(2, 224, 224);  // two channels, the model takes three
  px.setZero();
  const Error e = caught([&] { model.extract_features(px); });
  EXPECT_EQ(e.kind(), ErrorKind::kArgument) << e.what();
  EXPECT_TRUE(e.path().empty()) << e.path();
  EXPECT_NE(std::string(e.what()).find("channels"), std::string::npos) << e.what();
}

TEST(ErrorKind, UnreadableFileIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads files whatever their permissions";
  const std::string path = test::temp_dir() + "/locked.safetensors";
  test::write_bytes(path, "{}");
  ASSERT_EQ(::chmod(path.c_str(), 0), 0);
  const Error e = caught([&] { Model::load(path); });
  ::chmod(path.c_str(), 0644);  // the test folder is removed afterwards
  expect_about(e, ErrorKind::kPermission, path);
  EXPECT_EQ(e.os_error(), EACCES);
}

TEST(ErrorKind, ErrnoMapsToKinds) {
  EXPECT_EQ(error_kind_from_errno(ENOENT), ErrorKind::kNotFound);
  EXPECT_EQ(error_kind_from_errno(ENOTDIR), ErrorKind::kNotFound);
  EXPECT_EQ(error_kind_from_errno(EACCES), ErrorKind::kPermission);
  EXPECT_EQ(error_kind_from_errno(EPERM), ErrorKind::kPermission);
  EXPECT_EQ(error_kind_from_errno(EIO), ErrorKind::kIo);
  EXPECT_EQ(error_kind_from_errno(ENOSPC), ErrorKind::kIo);
  EXPECT_EQ(std::string(error_kind_name(ErrorKind::kNotFound)), "not_found");
  EXPECT_EQ(Error("x").kind(), ErrorKind::kMalformed);  // no kind given: documented default
}

}  // namespace
}  // namespace vitmsn
