// int8 models (vitmsn-convert --dtype int8): their error against float32 on the tiny model with real
// images and on its outlier variant (the scheme meets the targets, one activation scale per tensor does
// not), few-shot results and neighbour rankings unchanged, and the file format's checks.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <string>
#include <vector>

#include "core/weights.hpp"
#include "cpu/int8_format.hpp"
#include "int8_models.hpp"
#include "test_util.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/probe.hpp"

namespace vitmsn {
namespace {

std::vector<TensorData> tiny_tensors() { return test::read_tensors(test::data_path("models/tiny/model.safetensors")); }

Config tiny_config() { return read_config(test::data_path("models/tiny/config.json")); }

using test::compare_on_fixtures;

/// Sets the activation grouping for one scope (the previous one is restored whatever happens).
using test::GroupingScope;

TEST(Int8Model, TinyMeetsTheTargetsOnTheFixtureImages) {
  const test::ModelPair p = test::write_model_pair(test::temp_dir(), tiny_config(), tiny_tensors());
  const Model f32 = Model::load(p.f32);
  Model int8 = Model::load(p.int8);
  const test::Agreement a = compare_on_fixtures(f32, int8);
  std::printf("[ tiny, 9 images ] int8 vs float32: %s\n", test::describe(a).c_str());
  EXPECT_GE(a.cls, test::kInt8ClsCosine) << test::describe(a);
  EXPECT_GE(a.min_token, test::kInt8TokenCosine) << test::describe(a);
}

/// int8 against float32 on the fixture images under each activation scheme: the scheme (blocks of 32
/// with the outlier split), blocks of 32 without the split, one scale per token, one per tensor.
struct SchemeAgreements {
  test::Agreement scheme, no_split, per_token, per_tensor;
};
SchemeAgreements compare_schemes(const Model& f32, Model& int8, const char* label) {
  SchemeAgreements r;
  r.scheme = compare_on_fixtures(f32, int8);
  {
    GroupingScope g(int8, detail::int8::Grouping::kBlock32, /*split=*/false);
    r.no_split = compare_on_fixtures(f32, int8);
  }
  {
    GroupingScope g(int8, detail::int8::Grouping::kRow);
    r.per_token = compare_on_fixtures(f32, int8);
  }
  {
    GroupingScope g(int8, detail::int8::Grouping::kTensor);
    r.per_tensor = compare_on_fixtures(f32, int8);
  }
  std::printf("[ %s, 9 images ] blocks of 32 + outlier split (the scheme): %s\n", label,
              test::describe(r.scheme).c_str());
  std::printf("[ %s, 9 images ] blocks of 32 without the split:          %s\n", label,
              test::describe(r.no_split).c_str());
  std::printf("[ %s, 9 images ] one scale per token:                     %s\n", label,
              test::describe(r.per_token).c_str());
  std::printf("[ %s, 9 images ] one scale per tensor:                    %s\n", label,
              test::describe(r.per_tensor).c_str());
  return r;
}

TEST(Int8Model, TinyOutlierModelMeetsTheTargetsAndOneScalePerTensorDoesNot) {
  std::vector<TensorData> tensors = tiny_tensors();
  const Config c = tiny_config();
  test::make_outliers(tensors, c, test::tiny_outliers());
  const test::ModelPair p = test::write_model_pair(test::temp_dir(), c, tensors);
  const Model f32 = Model::load(p.f32);
  Model int8 = Model::load(p.int8);
  // The float32 outlier model computes the base model's function (the rule compensates the gains).
  const Model base = Model::load(test::data_path("models/tiny"));
  const test::Agreement same = test::agreement(base.extract_features(test::fixture_pixels("chelsea")).last_hidden_state,
                                               f32.extract_features(test::fixture_pixels("chelsea")).last_hidden_state);
  EXPECT_GE(same.min_token, 0.99999) << "the outlier rule changed the float function: " << test::describe(same);

  const SchemeAgreements r = compare_schemes(f32, int8, "tiny outlier");
  EXPECT_TRUE(r.scheme.meets_targets()) << test::describe(r.scheme);
  EXPECT_FALSE(r.per_tensor.meets_targets())
      << "one activation scale per tensor should fail on outlier channels: " << test::describe(r.per_tensor);
}

// Residual-stream outliers on top (tests/int8_models.hpp). At full size the scheme meets the targets
// there and blocks of 32 without the split do not (fullsize label). This 64-wide model is far more
// sensitive to its weights — bf16 weights alone (measured here for comparison) take the worst token
// to 0.9995 — and int8's per-channel weight rounding, several times coarser than bf16's, leaves the
// worst token near 0.986 whatever the activations do; so here the test asserts what the outlier
// split buys: most of the worst token's error.
TEST(Int8Model, TinyResidualStreamOutliersAreReducedByTheOutlierSplit) {
  std::vector<TensorData> tensors = tiny_tensors();
  const Config c = tiny_config();
  test::make_outliers(tensors, c, test::tiny_outliers());
  test::make_residual_outliers(tensors, test::tiny_outliers());
  const test::ModelPair p = test::write_model_pair(test::temp_dir(), c, tensors);
  const Model f32 = Model::load(p.f32);
  Model int8 = Model::load(p.int8);
  const SchemeAgreements r = compare_schemes(f32, int8, "tiny residual outlier");
  ConvertOptions o;
  o.dtype = DType::kBF16;
  convert_checkpoint(p.f32, test::temp_dir() + "/bf16.safetensors", o);
  const test::Agreement bf16 = compare_on_fixtures(f32, Model::load(test::temp_dir() + "/bf16.safetensors"));
  std::printf("[ tiny residual outlier, 9 images ] bf16 weights, for comparison:           %s\n",
              test::describe(bf16).c_str());
  EXPECT_GE(r.scheme.min_token, r.no_split.min_token + 0.05)
      << "the outlier split should recover most of the worst token's error: with " << test::describe(r.scheme)
      << "; without " << test::describe(r.no_split);
  EXPECT_GE(r.scheme.cls, 0.998) << test::describe(r.scheme);
  EXPECT_FALSE(r.per_tensor.meets_targets()) << test::describe(r.per_tensor);
}

// Few-shot: heads trained on int8 and on float32 features of the probe tests' three classes agree —
// the cross-validated accuracy and predictions, and each image's class probabilities (test::few_shot).
TEST(Int8Model, FewShotProbeGivesTheSameAccuracyAndProbabilities) {
  const test::ModelPair p = test::write_model_pair(test::temp_dir(), tiny_config(), tiny_tensors());
  const test::FewShot f = test::few_shot(Model::load(p.f32), Model::load(p.int8));
  std::printf("[ probe ] cross-validated accuracy: float32 %.4f, int8 %.4f\n", f.accuracy_f32, f.accuracy_other);
  std::printf("[ probe ] largest difference of a class probability, float32 vs int8 heads: %.2e\n",
              f.worst_probability);
  EXPECT_EQ(f.accuracy_other, f.accuracy_f32);
  EXPECT_TRUE(f.same_predictions) << "a picture's cross-validated class differs between float32 and int8";
  EXPECT_LE(f.worst_probability, 0.02);
}

// The CLS features of the fixture images rank each image's neighbours (cosine similarity) as with
// float32: at every rank the int8 ranking's neighbour is as similar, by float32 features, as float32's
// own neighbour at that rank, to within kTie — near-duplicates (chelsea and its JPEG, coffee and its
// progressive JPEG) are nearly equally similar to a third image and may swap; nothing else may move.
TEST(Int8Model, NearestNeighboursOfTheFixtureImagesRankAsWithFloat32) {
  constexpr double kTie = 0.002;
  const test::ModelPair p = test::write_model_pair(test::temp_dir(), tiny_config(), tiny_tensors());
  const Model f32 = Model::load(p.f32);
  Model int8 = Model::load(p.int8);
  std::vector<Vector> a, b;
  for (const auto& c : test::image_cases()) {
    a.push_back(f32.extract_features(test::fixture_pixels(c)).cls());
    b.push_back(int8.extract_features(test::fixture_pixels(c)).cls());
  }
  const auto sim = [](const std::vector<Vector>& v, std::size_t i, std::size_t j) {
    return test::cosine(v[i].data(), v[j].data(), v[i].size());
  };
  const auto ranking = [&](const std::vector<Vector>& v, std::size_t i) {
    std::vector<std::size_t> order;
    for (std::size_t j = 0; j < v.size(); ++j)
      if (j != i) order.push_back(j);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::size_t x, std::size_t y) { return sim(v, i, x) > sim(v, i, y); });
    return order;
  };
  double worst = 0.0;
  int swaps = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const std::vector<std::size_t> want = ranking(a, i), got = ranking(b, i);
    for (std::size_t r = 0; r < want.size(); ++r) {
      const double gap = std::fabs(sim(a, i, got[r]) - sim(a, i, want[r]));
      worst = std::max(worst, gap);
      swaps += got[r] != want[r];
      EXPECT_LE(gap, kTie) << test::image_cases()[i] << ": rank " << r + 1 << " is " << test::image_cases()[got[r]]
                           << " with int8, " << test::image_cases()[want[r]] << " with float32";
    }
  }
  std::printf(
      "[ neighbours ] %d rank positions differ, all between near-duplicates: largest float32 similarity gap %.5f "
      "(tie tolerance %.3f)\n",
      swaps, worst, kTie);
}

// ---------------------------------------------------------------------------------------------
// The file format: what the loader and the converter refuse.

std::string int8_file(const std::string& dir) {
  return test::write_model_pair(dir, tiny_config(), tiny_tensors()).int8;
}

TEST(Int8Format, ConvertedFileDeclaresItsSchemeAndKeepsTheBackbone) {
  const std::string dir = test::temp_dir();
  const test::ModelPair p = test::write_model_pair(dir, tiny_config(), tiny_tensors());
  const SafetensorsFile f = SafetensorsFile::open(p.int8);
  const auto q = f.metadata().find("quantization");
  ASSERT_NE(q, f.metadata().end());
  EXPECT_NE(q->second.find("\"scheme\":\"vitmsn-int8-v1\""), std::string::npos) << q->second;
  EXPECT_EQ(f.metadata().at(kBackboneMetadataKey), backbone_identity(p.f32)) << "the backbone identity is carried";
  // Six int8 weights per layer, each with its scales and its second plane (+ scales); everything
  // else float32.
  int int8_weights = 0, residual_planes = 0;
  for (const auto& n : f.names()) {
    const TensorView& t = f.get(n);
    if (t.dtype == DType::kI8 && n.size() > 9 && n.compare(n.size() - 9, 9, "_residual") == 0) {
      ++residual_planes;
    } else if (t.dtype == DType::kI8) {
      ++int8_weights;
      EXPECT_TRUE(f.contains(n + "_scale")) << n;
      EXPECT_TRUE(f.contains(n + "_residual")) << n;
      EXPECT_TRUE(f.contains(n + "_residual_scale")) << n;
    } else {
      EXPECT_EQ(t.dtype, DType::kF32) << n;
    }
  }
  EXPECT_EQ(int8_weights, 6 * 2);
  EXPECT_EQ(residual_planes, 6 * 2);
  EXPECT_EQ(f.get("encoder.layer.0.intermediate.dense.weight").shape, (std::vector<std::int64_t>{16, 16, 16, 4}));
  EXPECT_EQ(f.get("encoder.layer.0.intermediate.dense.weight_residual").shape, (std::vector<std::int64_t>{64, 256}))
      << "the second plane is [in, out]";
  // Converting it again is refused: int8 is the end of the line.
  ConvertOptions o;
  o.dtype = DType::kBF16;
  test::expect_error([&] { convert_checkpoint(p.int8, dir + "/again.safetensors", o); }, "already quantized");
}

// Files without the second plane (written before it existed) load and run: the outlier split then
// takes the weight columns from the int8 plane alone. On the plain tiny model nothing changes.
TEST(Int8Format, FilesWithoutTheSecondPlaneStillLoadAndRun) {
  const std::string dir = test::temp_dir();
  const std::string full = int8_file(dir);
  const std::vector<TensorData> tensors = test::read_tensors(full);
  const std::map<std::string, std::string> meta = SafetensorsFile::open(full).metadata();
  std::vector<TensorData> first_plane;
  for (const TensorData& t : tensors)
    if (t.name.find("_residual") == std::string::npos) first_plane.push_back(t);
  ASSERT_EQ(first_plane.size() + 24, tensors.size());
  write_safetensors(dir + "/v1.safetensors", first_plane, meta);
  const Model both = Model::load(full), v1 = Model::load(dir + "/v1.safetensors");
  const Matrix a = both.extract_features(test::fixture_pixels("coffee")).last_hidden_state;
  const Matrix b = v1.extract_features(test::fixture_pixels("coffee")).last_hidden_state;
  EXPECT_EQ(a.rows(), b.rows());
  EXPECT_TRUE(test::agreement(a, b).meets_targets()) << test::describe(test::agreement(a, b));
}

TEST(Int8Format, LoaderRefusesAnUnknownSchemeMissingMetadataBadShapesAndMissingScales) {
  const std::string dir = test::temp_dir();
  const std::string path = int8_file(dir);
  const std::vector<TensorData> tensors = test::read_tensors(path);
  const std::map<std::string, std::string> meta = SafetensorsFile::open(path).metadata();

  auto with_meta = meta;
  with_meta["quantization"] = R"({"scheme":"vitmsn-int4-v9"})";
  write_safetensors(dir + "/scheme.safetensors", tensors, with_meta);
  test::expect_load_error(dir + "/scheme.safetensors", {"quantization scheme 'vitmsn-int4-v9' is not one this build"});

  auto no_meta = meta;
  no_meta.erase("quantization");
  write_safetensors(dir + "/nometa.safetensors", tensors, no_meta);
  test::expect_load_error(dir + "/nometa.safetensors", {"has int8 weights but no __metadata__ \"quantization\""});

  std::vector<TensorData> no_scale;
  for (const TensorData& t : tensors)
    if (t.name != "encoder.layer.1.attention.attention.key.weight_scale") no_scale.push_back(t);
  write_safetensors(dir + "/noscale.safetensors", no_scale, meta);
  test::expect_load_error(dir + "/noscale.safetensors",
                          {"has no scales 'encoder.layer.1.attention.attention.key.weight_scale'"});
  std::vector<TensorData> half_plane;
  for (const TensorData& t : tensors)
    if (t.name != "encoder.layer.0.attention.attention.value.weight_residual_scale") half_plane.push_back(t);
  write_safetensors(dir + "/halfplane.safetensors", half_plane, meta);
  test::expect_load_error(dir + "/halfplane.safetensors",
                          {"has 'encoder.layer.0.attention.attention.value.weight_residual' but not "
                           "'encoder.layer.0.attention.attention.value.weight_residual_scale'"});
  std::vector<TensorData> flipped = tensors;
  for (TensorData& t : flipped)
    if (t.name == "encoder.layer.0.intermediate.dense.weight_residual") t.shape = {256, 64};  // [out, in]
  write_safetensors(dir + "/flipped.safetensors", flipped, meta);
  test::expect_load_error(
      dir + "/flipped.safetensors",
      {"'encoder.layer.0.intermediate.dense.weight_residual' has I8 [256,64], expected I8 [64,256]"});
  std::vector<TensorData> reshaped = tensors;
  for (TensorData& t : reshaped)
    if (t.name == "encoder.layer.1.output.dense.weight") t.shape = {8, 32, 16, 4};  // same bytes, wrong layout
  write_safetensors(dir + "/shape.safetensors", reshaped, meta);
  test::expect_load_error(dir + "/shape.safetensors",
                          {"int8 tensor 'encoder.layer.1.output.dense.weight' has shape [8,32,16,4]"});
}

}  // namespace
}  // namespace vitmsn
