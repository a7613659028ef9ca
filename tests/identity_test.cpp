// Identities: SHA-256 against the standard's vectors, and a model's backbone identity — the same for a
// checkpoint and every conversion of it, different for other weights.
#include "vitmsn/identity.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "formats/sha256.hpp"
#include "test_util.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

std::string sha256(const std::string& s) {
  detail::Sha256 h;
  h.update(s);
  return h.hex();
}

TEST(Sha256, MatchesTheStandardsTestVectors) {
  // FIPS 180-4 examples (csrc.nist.gov SHA256.pdf, SHA256_2.pdf) and the empty message.
  EXPECT_EQ(sha256(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  // A million 'a', fed in uneven pieces: the block buffering must not matter.
  detail::Sha256 h;
  const std::string a(1000000, 'a');
  for (std::size_t at = 0, step = 1; at < a.size(); at += step, step = step * 3 % 1000 + 1)
    h.update(a.data() + at, std::min(step, a.size() - at));
  EXPECT_EQ(h.hex(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(BackboneIdentity, IsTheSameForACheckpointAndEveryConversionOfIt) {
  const std::string dir = test::temp_dir();
  const std::string tiny = test::data_path("models/tiny");
  const std::string id = backbone_identity(tiny);
  ASSERT_EQ(id.size(), 64u);
  EXPECT_EQ(backbone_identity(tiny + "/model.safetensors"), id);
  EXPECT_EQ(backbone_identity(tiny + "/pytorch_model.bin"), id) << "the .bin holds the same weights";
  // f32 → bf16 → f16: the identity is carried in the metadata, not recomputed from rounded values.
  ConvertOptions o;
  o.dtype = DType::kBF16;
  const ConvertReport bf16 = convert_checkpoint(tiny + "/pytorch_model.bin", dir + "/bf16.safetensors", o);
  EXPECT_EQ(bf16.backbone, id);
  EXPECT_FALSE(bf16.backbone_recorded);
  o.dtype = DType::kF16;
  const ConvertReport f16 = convert_checkpoint(dir + "/bf16.safetensors", dir + "/f16.safetensors", o);
  EXPECT_EQ(f16.backbone, id);
  EXPECT_TRUE(f16.backbone_recorded);
  EXPECT_EQ(SafetensorsFile::open(dir + "/f16.safetensors").metadata().at(kBackboneMetadataKey), id);
  EXPECT_EQ(backbone_identity(dir + "/f16.safetensors"), id);
  // Other weights, another identity.
  EXPECT_NE(backbone_identity(test::data_path("models/tiny-cls")), id);
}

// The tiny model's tensors, and its config.json copied into `dir` (a model folder once
// model.safetensors is written there).
std::vector<TensorData> tiny_tensors_in(const std::string& dir) {
  test::write_bytes(dir + "/config.json", test::read_text(test::data_path("models/tiny/config.json")));
  return test::read_tensors(test::data_path("models/tiny/model.safetensors"));
}

TEST(BackboneIdentity, ChangesWithAnyEncoderWeightButNotWithTheHead) {
  const std::string dir = test::temp_dir();
  std::vector<TensorData> t = tiny_tensors_in(dir);
  write_safetensors(dir + "/model.safetensors", t);
  const std::string id = backbone_identity(dir);
  EXPECT_EQ(id, backbone_identity(test::data_path("models/tiny")));
  // A head added: the backbone is the same.
  std::vector<float> w(2 * 64, 0.5f), b(2, 0.0f);
  t.push_back(TensorData::f32("classifier.weight", {2, 64}, w.data()));
  t.push_back(TensorData::f32("classifier.bias", {2}, b.data()));
  write_safetensors(dir + "/model.safetensors", t);
  EXPECT_EQ(backbone_identity(dir), id);
  // One bit of one weight flipped: another backbone.
  for (auto& x : t)
    if (x.name == "encoder.layer.1.output.dense.weight") x.bytes[100] ^= 1;
  write_safetensors(dir + "/model.safetensors", t);
  EXPECT_NE(backbone_identity(dir), id);
}

TEST(BackboneIdentity, ARecordedIdentityMustBeASha256) {
  const std::string dir = test::temp_dir();
  write_safetensors(dir + "/model.safetensors", tiny_tensors_in(dir), {{kBackboneMetadataKey, "not-a-hash"}});
  test::expect_error([&] { backbone_identity(dir); }, {dir + "/model.safetensors", "backbone_sha256 is not a SHA-256"});
}

}  // namespace
}  // namespace vitmsn
