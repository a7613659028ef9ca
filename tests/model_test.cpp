// Golden tests: the forward pass against Hugging Face's own outputs (tests/data/expected, computed by
// transformers in float64). Tolerance: max abs error 1e-4 (HF's own float32 run differs by 2–3e-6).
#include "vitmsn/model.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

constexpr double kTolerance = 1e-4;

const Model& tiny() {
  static const Model m = Model::load(test::data_path("models/tiny"));
  return m;
}

const Model& tiny_cls() {
  static const Model m = Model::load(test::data_path("models/tiny-cls"));
  return m;
}

// Compares a [rows, cols] result with the HF tensor `key`; prints the measured error.
void expect_close(const Matrix& got, const std::string& key) {
  const TensorView& ref = test::tiny_output(key);
  const std::vector<float> want = ref.to_float();
  ASSERT_EQ(static_cast<std::size_t>(got.size()), want.size())
      << key << ": got " << got.rows() << "x" << got.cols() << ", HF " << ref.shape_string();
  const double err = test::max_abs_diff(got.data(), want.data(), want.size());
  EXPECT_LE(err, kTolerance) << key << ": max abs error " << err;
  ::testing::Test::RecordProperty(key, std::to_string(err));
  std::printf("    %-40s max abs error %.3g\n", key.c_str(), err);
}

class LastHiddenState : public ::testing::TestWithParam<std::string> {};

TEST_P(LastHiddenState, MatchesHuggingFace) {
  const Features f = tiny().extract_features(test::fixture_pixels(GetParam()));
  expect_close(f.last_hidden_state, GetParam() + ".last_hidden_state");
}

INSTANTIATE_TEST_SUITE_P(EveryImageCase, LastHiddenState, ::testing::ValuesIn(test::image_cases()),
                         [](const auto& info) { return info.param; });

TEST(InterpolatedPositions, Chelsea280x280MatchesHuggingFace) {
  const Features f = tiny().extract_features(test::fixture_pixels("chelsea.280x280"));
  EXPECT_EQ(f.last_hidden_state.rows(), 1601);
  expect_close(f.last_hidden_state, "chelsea.280x280.last_hidden_state");
}

TEST(InterpolatedPositions, Chelsea224x336MatchesHuggingFace) {
  const Features f = tiny().extract_features(test::fixture_pixels("chelsea.224x336"));
  EXPECT_EQ(f.last_hidden_state.rows(), 1537);
  expect_close(f.last_hidden_state, "chelsea.224x336.last_hidden_state");
}

class HiddenStatesAndAttention : public ::testing::TestWithParam<std::string> {};

TEST_P(HiddenStatesAndAttention, MatchHuggingFace) {
  FeatureOptions o;
  o.hidden_states = {0, 1, 2};
  o.cls_attention = {0, 1};
  const Features f = tiny().extract_features(test::fixture_pixels(GetParam()), o);
  ASSERT_EQ(f.hidden_states.size(), 3u);
  ASSERT_EQ(f.cls_attention.size(), 2u);
  for (int i = 0; i < 3; ++i) expect_close(f.hidden_states.at(i), GetParam() + ".hidden_states." + std::to_string(i));
  for (int i = 0; i < 2; ++i) expect_close(f.cls_attention.at(i), GetParam() + ".cls_attention." + std::to_string(i));
  expect_close(f.last_hidden_state, GetParam() + ".last_hidden_state");
}

INSTANTIATE_TEST_SUITE_P(ChelseaAndAstronaut, HiddenStatesAndAttention, ::testing::Values("chelsea", "astronaut"),
                         [](const auto& info) { return info.param; });

// Layer l's attention maps by the definition, in float64, from HF's own input to the layer
// (hidden_states.l): h = layernorm_before(x), q = h·Wqᵀ + bq, k = h·Wkᵀ + bk, per head
// softmax(q_h·k_hᵀ / √d). Returns [heads·N, N] as Features::attentions.
std::vector<double> reference_attention_maps(const std::string& case_name, int layer) {
  const SafetensorsFile w = SafetensorsFile::open(test::data_path("models/tiny/model.safetensors"));
  const std::string pre = "encoder.layer." + std::to_string(layer) + ".";
  const auto get = [&](const std::string& name) { return w.get(pre + name).to_float(); };
  const std::vector<float> x = test::tiny_output(case_name + ".hidden_states." + std::to_string(layer)).to_float();
  const std::vector<float> g = get("layernorm_before.weight"), beta = get("layernorm_before.bias");
  const std::vector<float> wq = get("attention.attention.query.weight"), bq = get("attention.attention.query.bias");
  const std::vector<float> wk = get("attention.attention.key.weight"), bk = get("attention.attention.key.bias");
  const int D = tiny().config().hidden_size, heads = tiny().config().num_attention_heads, hd = D / heads;
  const int N = static_cast<int>(x.size()) / D;
  const double eps = tiny().config().layer_norm_eps;
  std::vector<double> h(x.size()), q(x.size()), k(x.size());
  for (int i = 0; i < N; ++i) {
    double mean = 0, var = 0;
    for (int d = 0; d < D; ++d) mean += x[i * D + d];
    mean /= D;
    for (int d = 0; d < D; ++d) var += (x[i * D + d] - mean) * (x[i * D + d] - mean);
    var /= D;
    for (int d = 0; d < D; ++d) h[i * D + d] = (x[i * D + d] - mean) / std::sqrt(var + eps) * g[d] + beta[d];
    for (int o = 0; o < D; ++o) {
      double sq = bq[o], sk = bk[o];
      for (int d = 0; d < D; ++d) {
        sq += h[i * D + d] * wq[o * D + d];
        sk += h[i * D + d] * wk[o * D + d];
      }
      q[i * D + o] = sq;
      k[i * D + o] = sk;
    }
  }
  std::vector<double> maps(static_cast<std::size_t>(heads) * N * N);
  for (int hh = 0; hh < heads; ++hh)
    for (int i = 0; i < N; ++i) {
      double* row = maps.data() + (static_cast<std::size_t>(hh) * N + i) * N;
      double mx = -1e300, z = 0;
      for (int j = 0; j < N; ++j) {
        double s = 0;
        for (int d = 0; d < hd; ++d) s += q[i * D + hh * hd + d] * k[j * D + hh * hd + d];
        row[j] = s / std::sqrt(static_cast<double>(hd));
        mx = std::max(mx, row[j]);
      }
      for (int j = 0; j < N; ++j) z += (row[j] = std::exp(row[j] - mx));
      for (int j = 0; j < N; ++j) row[j] /= z;
    }
  return maps;
}

// Whole attention maps (HF's output_attentions): row 0 of each head is HF's CLS row (fixture) and
// has the bits of cls_attention; every row is the float64 definition on HF's input to the layer;
// asking for them changes no feature.
class AttentionMaps : public ::testing::TestWithParam<std::string> {};

TEST_P(AttentionMaps, MatchHuggingFaceAndTheDefinition) {
  const PixelValues pixels = test::fixture_pixels(GetParam());
  FeatureOptions o;
  o.attentions = {0, -1};
  o.cls_attention = {0, 1};
  const Features f = tiny().extract_features(pixels, o);
  const Features plain = tiny().extract_features(pixels);
  ASSERT_EQ(f.attentions.size(), 2u);
  EXPECT_TRUE(f.last_hidden_state == plain.last_hidden_state) << "asking for attention maps changed the features";
  const int heads = tiny().config().num_attention_heads;
  const Eigen::Index N = plain.last_hidden_state.rows();
  for (int l = 0; l < 2; ++l) {
    const Matrix& a = f.attentions.at(l);
    ASSERT_EQ(a.rows(), heads * N);
    ASSERT_EQ(a.cols(), N);
    Matrix cls(heads, N);
    for (int h = 0; h < heads; ++h) cls.row(h) = a.row(h * N);
    expect_close(cls, GetParam() + ".cls_attention." + std::to_string(l));
    EXPECT_TRUE(cls == f.cls_attention.at(l)) << "layer " << l << ": the maps' row 0 differ from cls_attention";
    const std::vector<double> want = reference_attention_maps(GetParam(), l);
    double err = 0, worst_sum = 0;
    for (Eigen::Index r = 0; r < a.rows(); ++r) {
      double sum = 0;
      for (Eigen::Index j = 0; j < N; ++j) {
        sum += a(r, j);
        err = std::max(err, std::fabs(a(r, j) - want[static_cast<std::size_t>(r * N + j)]));
      }
      worst_sum = std::max(worst_sum, std::fabs(sum - 1.0));
    }
    EXPECT_LE(err, kTolerance) << GetParam() << " layer " << l << ": max abs error vs float64 " << err;
    EXPECT_LE(worst_sum, 1e-4) << GetParam() << " layer " << l << ": a row sums to 1 ± " << worst_sum;
    std::printf("    %-40s max abs error %.3g, rows sum to 1 ± %.3g\n",
                (GetParam() + ".attentions." + std::to_string(l)).c_str(), err, worst_sum);
  }
}

INSTANTIATE_TEST_SUITE_P(ChelseaAndAstronaut, AttentionMaps, ::testing::Values("chelsea", "astronaut"),
                         [](const auto& info) { return info.param; });

TEST(AttentionMaps, EachImageOfABatchGetsItsOwnMaps) {
  FeatureOptions o;
  o.attentions = {1};
  const std::vector<PixelValues> batch = {test::fixture_pixels("chelsea"), test::fixture_pixels("astronaut")};
  const std::vector<Features> both = tiny().extract_features(batch, o);
  ASSERT_EQ(both.size(), 2u);
  for (int b = 0; b < 2; ++b) {
    const Features one = tiny().extract_features(batch[b], o);
    EXPECT_TRUE(both[b].attentions.at(1) == one.attentions.at(1)) << "image " << b << " of the batch";
  }
  EXPECT_FALSE(both[0].attentions.at(1) == both[1].attentions.at(1));
  o.attentions = {2};
  EXPECT_THROW(tiny().extract_features(batch[0], o), Error) << "layer 2 of a 2-layer model";
}

TEST(HiddenStates, NegativeIndicesCountFromTheEnd) {
  FeatureOptions o;
  o.hidden_states = {-1};
  o.cls_attention = {-1};
  const Features f = tiny().extract_features(test::fixture_pixels("chelsea"), o);
  ASSERT_EQ(f.hidden_states.count(2), 1u);
  ASSERT_EQ(f.cls_attention.count(1), 1u);
  expect_close(f.hidden_states.at(2), "chelsea.hidden_states.2");
}

TEST(HiddenStates, OutOfRangeIndexIsAnError) {
  FeatureOptions o;
  o.hidden_states = {3};
  EXPECT_THROW(tiny().extract_features(test::fixture_pixels("chelsea"), o), Error);
  o.hidden_states = {};
  o.cls_attention = {2};
  EXPECT_THROW(tiny().extract_features(test::fixture_pixels("chelsea"), o), Error);
}

class Logits : public ::testing::TestWithParam<std::string> {};

TEST_P(Logits, MatchHuggingFace) {
  const Vector logits = tiny_cls().classify(test::fixture_pixels(GetParam()));
  const TensorView& ref = test::tiny_output(GetParam() + ".logits");
  ASSERT_EQ(logits.size(), ref.numel());
  const std::vector<float> want = ref.to_float();
  const double err = test::max_abs_diff(logits.data(), want.data(), want.size());
  EXPECT_LE(err, kTolerance) << GetParam() << ".logits: max abs error " << err;
  std::printf("    %-40s max abs error %.3g\n", (GetParam() + ".logits").c_str(), err);
}

INSTANTIATE_TEST_SUITE_P(EveryImageCase, Logits, ::testing::ValuesIn(test::image_cases()),
                         [](const auto& info) { return info.param; });

TEST(Model, ClassifierModelHasLabelsFromConfig) {
  EXPECT_TRUE(tiny_cls().has_classifier());
  EXPECT_EQ(tiny_cls().labels(), (std::vector<std::string>{"cat", "astronaut", "coffee", "rocket", "camera"}));
  EXPECT_FALSE(tiny().has_classifier());
  EXPECT_TRUE(tiny().labels().empty());
}

TEST(Model, ClassifyWithoutHeadIsAClearError) {
  try {
    tiny().classify(test::fixture_pixels("chelsea"));
    FAIL() << "classify() on a model without a head did not throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("no classifier head"), std::string::npos) << e.what();
  }
}

TEST(Model, ConfigComesFromTheFolder) {
  const Config& c = tiny().config();
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.num_hidden_layers, 2);
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.intermediate_size, 256);
  EXPECT_EQ(c.patch_size, 7);
  EXPECT_EQ(tiny().copied_weight_bytes(), 0u) << "float32 weights must be used in place";
}

TEST(Model, ClassifierFeaturesEqualBaseModelShapes) {
  const Features f = tiny_cls().extract_features(test::fixture_pixels("rocket"));
  EXPECT_EQ(f.last_hidden_state.rows(), 1025);
  EXPECT_EQ(f.last_hidden_state.cols(), 64);
  const Vector direct = tiny_cls().logits(f);
  const Vector via = tiny_cls().classify(test::fixture_pixels("rocket"));
  EXPECT_EQ(direct, via);
}

TEST(Batch, MixedSizesEqualSingleCalls) {
  const std::vector<PixelValues> batch = {test::fixture_pixels("chelsea"), test::fixture_pixels("chelsea.280x280"),
                                          test::fixture_pixels("astronaut")};
  const std::vector<Features> out = tiny().extract_features(batch);
  ASSERT_EQ(out.size(), 3u);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const Features single = tiny().extract_features(batch[i]);
    const double err = test::max_abs_diff(out[i].last_hidden_state.data(), single.last_hidden_state.data(),
                                          single.last_hidden_state.size());
    EXPECT_LE(err, 1e-5) << "batch item " << i << ": max abs difference " << err;
  }
  expect_close(out[0].last_hidden_state, "chelsea.last_hidden_state");
  expect_close(out[1].last_hidden_state, "chelsea.280x280.last_hidden_state");
  expect_close(out[2].last_hidden_state, "astronaut.last_hidden_state");
}

TEST(PixelInput, AViewOfCallerMemoryGivesTheSameFeaturesAsATensor) {
  // The caller's own buffer ([3, H, W] float32, contiguous), read in place through PixelValuesView.
  const PixelValues owned = test::fixture_pixels("chelsea"), wide = test::fixture_pixels("chelsea.224x336");
  std::vector<float> buffer(owned.data(), owned.data() + owned.size());
  const PixelValuesView view(buffer.data(), 3, 224, 224);
  const Features a = tiny().extract_features(owned), b = tiny().extract_features(view);
  EXPECT_TRUE(a.last_hidden_state == b.last_hidden_state) << "a view must give bit-identical features";
  expect_close(b.last_hidden_state, "chelsea.last_hidden_state");
  // A batch of views of two sizes, as a batch of tensors.
  const std::vector<PixelValuesView> views = {view, PixelValuesView(wide.data(), 3, 224, 336), view};
  const std::vector<Features> out = tiny().extract_features(views);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_TRUE(out[0].last_hidden_state == a.last_hidden_state);
  EXPECT_TRUE(out[2].last_hidden_state == a.last_hidden_state);
  expect_close(out[1].last_hidden_state, "chelsea.224x336.last_hidden_state");
  // Shape checks apply to views too.
  test::expect_error([&] { tiny().extract_features(PixelValuesView(buffer.data(), 1, 224, 672)); }, "channels");
}

TEST(Batch, ClassifyBatchMatchesSingle) {
  const std::vector<PixelValues> batch = {test::fixture_pixels("coffee"), test::fixture_pixels("camera")};
  const std::vector<Vector> out = tiny_cls().classify(batch);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_LE((out[0] - tiny_cls().classify(batch[0])).cwiseAbs().maxCoeff(), 1e-5);
  EXPECT_LE((out[1] - tiny_cls().classify(batch[1])).cwiseAbs().maxCoeff(), 1e-5);
}

TEST(Threads, OneAndTwoThreadsAgree) {
  FeatureOptions one, two;
  one.threads = 1;
  two.threads = 2;
  const Features a = tiny().extract_features(test::fixture_pixels("coffee"), one);
  const Features b = tiny().extract_features(test::fixture_pixels("coffee"), two);
  const double err =
      test::max_abs_diff(a.last_hidden_state.data(), b.last_hidden_state.data(), a.last_hidden_state.size());
  EXPECT_LE(err, 1e-5) << "1 vs 2 threads: max abs difference " << err;
}

TEST(Features, ClsAndMeanPatchAccessors) {
  const Features f = tiny().extract_features(test::fixture_pixels("horse"));
  const Vector cls = f.cls();
  const Vector mean = f.mean_patch();
  ASSERT_EQ(cls.size(), 64);
  EXPECT_EQ(cls, f.last_hidden_state.row(0));
  Vector expect = Vector::Zero(64);
  for (int r = 1; r < 1025; ++r) expect += f.last_hidden_state.row(r);
  expect /= 1024.0f;
  EXPECT_LE((mean - expect).cwiseAbs().maxCoeff(), 1e-5);
}

TEST(PixelInput, WrongChannelCountIsAnError) {
  PixelValues p(1, 224, 224);
  p.setZero();
  try {
    tiny().extract_features(p);
    FAIL() << "no error for a 1-channel input";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 channels"), std::string::npos) << e.what();
  }
}

TEST(PixelInput, HugeInputIsRefusedBeforeAllocating) {
  PixelValues p(3, 7 * 300, 7 * 300);  // 90,001 tokens
  p.setZero();
  try {
    tiny().extract_features(p);
    FAIL() << "no error for 90001 tokens";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("more than the limit of 65537"), std::string::npos) << e.what();
  }
}

TEST(PixelInput, SizeNotAMultipleOfThePatchIsAnError) {
  PixelValues p(3, 224, 225);
  p.setZero();
  try {
    tiny().extract_features(p);
    FAIL() << "no error for 224x225";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiples of the patch size 7"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace vitmsn
