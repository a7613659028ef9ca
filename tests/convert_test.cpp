// The converter: Hugging Face checkpoints (.bin and .safetensors) into single-file vitmsn models.
#include "vitmsn/convert.hpp"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <string>

#include "test_util.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

double max_error_vs_hf(const Model& m, const std::string& c) {
  const Features f = m.extract_features(test::fixture_pixels(c));
  const auto want = test::tiny_output(c + ".last_hidden_state").to_float();
  return test::max_abs_diff(f.last_hidden_state.data(), want.data(), want.size());
}

TEST(Convert, PytorchBinGivesTensorsIdenticalToModelSafetensors) {
  const std::string out = test::temp_dir() + "/tiny.safetensors";
  const ConvertReport r = convert_checkpoint(test::data_path("models/tiny/pytorch_model.bin"), out);
  EXPECT_EQ(r.tensors, 38u);
  EXPECT_TRUE(r.dropped.empty());
  const SafetensorsFile got = SafetensorsFile::open(out);
  const SafetensorsFile want = SafetensorsFile::open(test::data_path("models/tiny/model.safetensors"));
  ASSERT_EQ(got.names().size(), want.names().size());
  for (const auto& name : want.names()) {
    const TensorView& a = got.get(name);
    const TensorView& b = want.get(name);
    EXPECT_EQ(a.dtype, b.dtype) << name;
    EXPECT_EQ(a.shape, b.shape) << name;
    ASSERT_EQ(a.nbytes, b.nbytes) << name;
    EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << name << ": bytes differ";
  }
}

TEST(Convert, ConvertedFileIsACompleteModelMatchingHuggingFace) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/tiny.safetensors";
  convert_checkpoint(test::data_path("models/tiny"), out);
  const SafetensorsFile f = SafetensorsFile::open(out);
  EXPECT_TRUE(f.metadata().count("config"));
  EXPECT_TRUE(f.metadata().count("preprocessor_config"));
  const Model m = Model::load(out);  // no config.json beside it: the metadata is the config
  EXPECT_EQ(m.config().hidden_size, 64);
  EXPECT_EQ(m.preprocessor().config().height, 224);
  const double err = max_error_vs_hf(m, "chelsea");
  EXPECT_LE(err, 1e-4) << "converted model vs HF: max abs error " << err;
}

TEST(Convert, ClassificationCheckpointKeepsItsHeadAndLabels) {
  const std::string out = test::temp_dir() + "/tiny_cls.safetensors";
  const ConvertReport r = convert_checkpoint(test::data_path("models/tiny-cls"), out);
  EXPECT_TRUE(r.has_classifier);
  const Model m = Model::load(out);
  EXPECT_EQ(m.labels(), (std::vector<std::string>{"cat", "astronaut", "coffee", "rocket", "camera"}));
  const Vector logits = m.classify(test::fixture_pixels("coffee"));
  const auto want = test::tiny_output("coffee.logits").to_float();
  EXPECT_LE(test::max_abs_diff(logits.data(), want.data(), want.size()), 1e-4);
}

class ConvertHalf : public ::testing::TestWithParam<DType> {};

TEST_P(ConvertHalf, HalvesTheMatricesAndStaysClose) {
  const std::string out = test::temp_dir() + "/tiny.safetensors";
  ConvertOptions o;
  o.dtype = GetParam();
  convert_checkpoint(test::data_path("models/tiny"), out, o);
  const SafetensorsFile f = SafetensorsFile::open(out);
  EXPECT_EQ(f.get("encoder.layer.0.intermediate.dense.weight").dtype, GetParam());
  EXPECT_EQ(f.get("encoder.layer.0.intermediate.dense.bias").dtype, DType::kF32);
  EXPECT_EQ(f.get("embeddings.position_embeddings").dtype, DType::kF32);
  EXPECT_EQ(f.get("layernorm.weight").dtype, DType::kF32);
  const Model half = Model::load(out);
  // Linear weights stay half-size in the memory map; only the small patch-embedding kernel is widened.
  EXPECT_LE(half.copied_weight_bytes(), 64u * 3 * 7 * 7 * 4) << "half weights must not be widened at load";
  const Model full = Model::load(test::data_path("models/tiny"));
  const Features a = half.extract_features(test::fixture_pixels("astronaut"));
  const Features b = full.extract_features(test::fixture_pixels("astronaut"));
  const float cos = a.cls().dot(b.cls()) / (a.cls().norm() * b.cls().norm());
  // bf16 keeps 8 bits of mantissa (relative error 2^-9 per weight), f16 11 bits.
  EXPECT_GT(cos, GetParam() == DType::kBF16 ? 0.999f : 0.99999f) << "CLS cosine vs float32 " << cos;
}

INSTANTIATE_TEST_SUITE_P(Bf16AndF16, ConvertHalf, ::testing::Values(DType::kBF16, DType::kF16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(Convert, MergesAClassifierHeadWithLabels) {
  const std::string dir = test::temp_dir();
  std::vector<float> w(3 * 64), b = {0.5f, -0.25f, 0.0f};
  for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<float>((i * 37) % 11) * 0.01f - 0.05f;
  write_safetensors(
      dir + "/head.safetensors",
      {TensorData::f32("classifier.weight", {3, 64}, w.data()), TensorData::f32("classifier.bias", {3}, b.data())},
      {{"id2label", R"({"0":"red","1":"green","2":"blue"})"}});
  ConvertOptions o;
  o.classifier = dir + "/head.safetensors";
  convert_checkpoint(test::data_path("models/tiny"), dir + "/with_head.safetensors", o);
  const Model m = Model::load(dir + "/with_head.safetensors");
  ASSERT_TRUE(m.has_classifier());
  EXPECT_EQ(m.labels(), (std::vector<std::string>{"red", "green", "blue"}));
  const Features f = m.extract_features(test::fixture_pixels("camera"));
  const Vector logits = m.logits(f);
  for (int k = 0; k < 3; ++k) {
    double expect = b[k];
    for (int d = 0; d < 64; ++d) expect += static_cast<double>(w[k * 64 + d]) * f.last_hidden_state(0, d);
    EXPECT_NEAR(logits[k], expect, 1e-4);
  }
}

const std::vector<std::string> kHeadLabels = {"red", "green", "blue"};

TEST(Convert, RefusesAHeadTrainedOnAnotherBackboneUnlessAllowed) {
  const std::string dir = test::temp_dir();
  const std::string tiny = test::data_path("models/tiny");
  ConvertOptions o;
  o.classifier =
      test::write_tiny_head(dir + "/other.safetensors", kHeadLabels,
                            backbone_identity(test::data_path("models/tiny-cls")), {{"model", "somewhere/else"}});
  test::expect_error([&] { convert_checkpoint(tiny, dir + "/out.safetensors", o); },
                     dir + "/other.safetensors: this head was trained on the features of another model",
                     {"somewhere/else", backbone_identity(tiny).substr(0, 16), "vitmsn-probe", "--force"});
  EXPECT_FALSE(std::ifstream(dir + "/out.safetensors").good());
  o.allow_other_backbone = true;
  EXPECT_EQ(convert_checkpoint(tiny, dir + "/out.safetensors", o).head_backbone, HeadBackbone::kOther);
  // The head of this very backbone merges without a word; one that records none is merged unchecked.
  o.allow_other_backbone = false;
  o.overwrite = true;
  o.classifier = test::write_tiny_head(dir + "/same.safetensors", kHeadLabels, backbone_identity(tiny));
  EXPECT_EQ(convert_checkpoint(tiny, dir + "/out.safetensors", o).head_backbone, HeadBackbone::kSame);
  o.classifier = test::write_tiny_head(dir + "/old.safetensors", kHeadLabels, "");
  EXPECT_EQ(convert_checkpoint(tiny, dir + "/out.safetensors", o).head_backbone, HeadBackbone::kUnrecorded);
}

TEST(Convert, SaysWhichHeadAMergedHeadReplaces) {
  const std::string dir = test::temp_dir();
  const std::string cls = test::data_path("models/tiny-cls");
  ConvertOptions o;
  o.classifier = test::write_tiny_head(dir + "/head.safetensors", kHeadLabels, backbone_identity(cls));
  const ConvertReport r = convert_checkpoint(cls, dir + "/out.safetensors", o);
  EXPECT_EQ(r.replaced_labels, Model::load(cls).labels()) << "tiny-cls's own 5 classes were replaced";
  EXPECT_EQ(Model::load(dir + "/out.safetensors").labels(), (std::vector<std::string>{"red", "green", "blue"}));
}

TEST(Convert, RejectsHeadOfTheWrongWidth) {
  const std::string dir = test::temp_dir();
  std::vector<float> w(2 * 32, 0.0f), b(2, 0.0f);
  write_safetensors(dir + "/head.safetensors", {TensorData::f32("classifier.weight", {2, 32}, w.data()),
                                                TensorData::f32("classifier.bias", {2}, b.data())});
  ConvertOptions o;
  o.classifier = dir + "/head.safetensors";
  try {
    convert_checkpoint(test::data_path("models/tiny"), dir + "/out.safetensors", o);
    FAIL() << "accepted a head of width 32 for hidden size 64";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("do not fit hidden size 64"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::ifstream(dir + "/out.safetensors").good());
}

TEST(Convert, RefusesToOverwriteAndNeedsAConfig) {
  const std::string dir = test::temp_dir();
  test::write_bytes(dir + "/exists.safetensors", "x");
  EXPECT_THROW(convert_checkpoint(test::data_path("models/tiny"), dir + "/exists.safetensors"), Error);
  // A .bin alone, with no config.json beside it.
  std::ifstream in(test::data_path("models/tiny/pytorch_model.bin"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  test::write_bytes(dir + "/pytorch_model.bin", bytes);
  try {
    convert_checkpoint(dir + "/pytorch_model.bin", dir + "/out.safetensors");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no config.json"), std::string::npos) << e.what();
  }
  EXPECT_EQ(parse_weight_dtype("int8"), DType::kI8);
  EXPECT_THROW(parse_weight_dtype("int4"), Error);
}

}  // namespace
}  // namespace vitmsn
