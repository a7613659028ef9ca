#pragma once
// Models for the int8 tests (tests/int8_test.cpp, tests/fullsize/fullsize_test.cpp): float32 models
// written as single files next to their `vitmsn-convert --dtype int8` conversions, the synthetic
// "outlier" variant, and the agreement measures the int8 targets are stated in (also those of bf16
// compute: tests/bf16_test.cpp).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "core/model.hpp"
#include "cpu/int8_format.hpp"
#include "test_util.hpp"
#include "vitmsn/config.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/probe.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn::test {

/// The int8 targets (issue #16): CLS cosine >= 0.999 and every token's cosine >= 0.995 against the
/// float32 forward of the same model on the same input.
constexpr double kInt8ClsCosine = 0.999;
constexpr double kInt8TokenCosine = 0.995;

/// The outlier variant: real ViT-L checkpoints have a few hidden channels whose layer-norm outputs are
/// 20-100x larger than the rest on every token ("outlier features"), which breaks int8 with one
/// activation scale per tensor. Random weights have none; this makes them. In every layer, for
/// channel c_j and factor f_j: layernorm_before and layernorm_after weight[c_j] and bias[c_j] are
/// multiplied by f_j (the layer-norm outputs feeding query, key, value and intermediate.dense carry
/// the outliers), and the columns c_j of those four weights are divided by f_j, so that the float
/// function stays the base model's (up to rounding) and the test measures int8, not a new model.
/// Full size: channels 37, 291, 612, 955 × 20, 40, 60, 100. Tiny (hidden 64): channels 5, 22, 41, 58
/// × 4, 8, 12, 20 — at hidden 64 four channels are 6 % of all and sit in both blocks of 32, and ×20-100
/// there defeats every data-free scheme tried (docs/NUMERICS.md, int8).
///
/// Then the residual-stream rule (make_residual_outliers): in one layer only, `residual_layer` (layer 0
/// of the tiny model, layer 2 at full size), fc2's (output.dense) rows c_j of weight and bias are
/// multiplied by r_j, so that this block writes 20-100x larger values into those channels of the
/// residual stream, as the "massive activations" of real ViTs; the stream carries them to the later
/// layers, whose layer norms pass them on to query, key, value and fc1. This changes the float
/// function (the int8 model is compared with the float32 model it was converted from), and it is what
/// defeats the activation quantization without the outlier split (src/cpu/int8_format.hpp). Full size:
/// channels 101, 402, 707, 860; tiny: 13, 30, 47, 62 (not the gains' channels); × 20, 40, 60, 100 in both.
struct OutlierSpec {
  std::vector<int> channels;  // layer-norm gains (compensated)
  std::vector<float> factors;
  std::vector<int> residual_channels;  // fc2 output rows (not compensated)
  std::vector<float> residual_factors;
  int residual_layer;  // the one layer whose fc2 is scaled
};
inline OutlierSpec tiny_outliers() {
  return {{5, 22, 41, 58}, {4.0f, 8.0f, 12.0f, 20.0f}, {13, 30, 47, 62}, {20.0f, 40.0f, 60.0f, 100.0f}, 0};
}
inline OutlierSpec full_size_outliers() {
  return {{37, 291, 612, 955}, {20.0f, 40.0f, 60.0f, 100.0f}, {101, 402, 707, 860}, {20.0f, 40.0f, 60.0f, 100.0f}, 2};
}

inline float* f32_data(TensorData& t) {
  EXPECT_EQ(t.dtype, DType::kF32) << t.name;
  return reinterpret_cast<float*>(t.bytes.data());
}

/// Applies the outlier rule to float32 tensors with Hugging Face names (no prefix).
inline void make_outliers(std::vector<TensorData>& tensors, const Config& c, const OutlierSpec& o) {
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  int touched = 0;
  for (TensorData& t : tensors) {
    if (t.name.rfind("encoder.layer.", 0) != 0) continue;
    const bool gain = ends_with(t.name, "layernorm_before.weight") || ends_with(t.name, "layernorm_before.bias") ||
                      ends_with(t.name, "layernorm_after.weight") || ends_with(t.name, "layernorm_after.bias");
    const bool consumer =
        ends_with(t.name, "attention.attention.query.weight") || ends_with(t.name, "attention.attention.key.weight") ||
        ends_with(t.name, "attention.attention.value.weight") || ends_with(t.name, "intermediate.dense.weight");
    if (!gain && !consumer) continue;
    float* v = f32_data(t);
    for (std::size_t j = 0; j < o.channels.size(); ++j) {
      const int ch = o.channels[j];
      if (gain) {
        v[ch] *= o.factors[j];
      } else {  // [out, D]: column ch
        for (std::int64_t r = 0; r < t.shape[0]; ++r) v[r * c.hidden_size + ch] /= o.factors[j];
      }
    }
    ++touched;
  }
  EXPECT_EQ(touched, 8 * c.num_hidden_layers) << "the outlier rule touches 8 tensors per layer";
}

/// Applies the residual-stream rule to float32 tensors with Hugging Face names (no prefix): fc2 of layer
/// o.residual_layer only.
inline void make_residual_outliers(std::vector<TensorData>& tensors, const OutlierSpec& o) {
  int touched = 0;
  for (TensorData& t : tensors) {
    if (t.name.rfind("encoder.layer." + std::to_string(o.residual_layer) + ".", 0) != 0) continue;
    const std::string tail = t.name.substr(t.name.find(".", std::strlen("encoder.layer.")) + 1);
    if (tail != "output.dense.weight" && tail != "output.dense.bias") continue;
    float* v = f32_data(t);
    const std::int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;  // weight [D, F], bias [D]
    for (std::size_t j = 0; j < o.residual_channels.size(); ++j)
      for (std::int64_t k = 0; k < cols; ++k) v[o.residual_channels[j] * cols + k] *= o.residual_factors[j];
    ++touched;
  }
  EXPECT_EQ(touched, 2) << "the residual rule touches fc2's weight and bias in layer " << o.residual_layer;
}

/// The activation grouping (and the outlier split) of one int8 model for the life of a scope: the
/// schemes the chosen one (per token and block of 32, with the split) is measured against. The
/// model's default scheme is restored at the end of the scope.
struct GroupingScope {
  GroupingScope(Model& model, detail::int8::Grouping g, bool split = true) : model_(model) {
    detail::ModelAccess::set_int8_scheme(model_, detail::int8::Scheme{g, split});
  }
  ~GroupingScope() { detail::ModelAccess::set_int8_scheme(model_, detail::int8::Scheme{}); }
  GroupingScope(const GroupingScope&) = delete;
  GroupingScope& operator=(const GroupingScope&) = delete;

 private:
  Model& model_;
};

/// A float32 model written as one file (config in its metadata) and its int8 conversion.
struct ModelPair {
  std::string f32, int8;
};
inline ModelPair write_model_pair(const std::string& dir, const Config& c, const std::vector<TensorData>& tensors) {
  ModelPair p{dir + "/f32.safetensors", dir + "/int8.safetensors"};
  write_safetensors(p.f32, tensors, {{"config", to_json(c)}});
  ConvertOptions o;
  o.dtype = DType::kI8;
  convert_checkpoint(p.f32, p.int8, o);
  return p;
}

/// How int8 features agree with float32 ones: cosine of the CLS token, min and mean cosine over all
/// tokens, largest absolute difference.
struct Agreement {
  double cls = 1.0, min_token = 1.0, mean_token = 0.0, max_abs = 0.0;
  bool meets_targets() const { return cls >= kInt8ClsCosine && min_token >= kInt8TokenCosine; }
};

inline double cosine(const float* a, const float* b, Eigen::Index n) {
  double ab = 0, aa = 0, bb = 0;
  for (Eigen::Index i = 0; i < n; ++i) {
    ab += static_cast<double>(a[i]) * b[i];
    aa += static_cast<double>(a[i]) * a[i];
    bb += static_cast<double>(b[i]) * b[i];
  }
  return ab / std::sqrt(aa * bb);
}

/// How one image's int8 features (`int8`) agree with its float32 ones (`f32`).
inline Agreement agreement(const Matrix& f32, const Matrix& int8) {
  Agreement a;
  const Eigen::Index D = f32.cols();
  for (Eigen::Index t = 0; t < f32.rows(); ++t) {
    const double c = cosine(f32.row(t).data(), int8.row(t).data(), D);
    if (t == 0) a.cls = c;
    a.min_token = std::min(a.min_token, c);
    a.mean_token += c / static_cast<double>(f32.rows());
  }
  a.max_abs = (f32 - int8).cwiseAbs().maxCoeff();
  return a;
}

/// Folds `y`, the agreement on the `count`-th image, into `x`, the one over the images before it: worst
/// of each, mean of the means.
inline Agreement worst_of(const Agreement& x, const Agreement& y, int count) {
  Agreement w;
  w.cls = std::min(x.cls, y.cls);
  w.min_token = std::min(x.min_token, y.min_token);
  w.mean_token = (x.mean_token * (count - 1) + y.mean_token) / count;
  w.max_abs = std::max(x.max_abs, y.max_abs);
  return w;
}

/// The worst agreement of `other` (int8 weights, bf16 compute, …) with `f32` over the fixture images.
inline Agreement compare_on_fixtures(const Model& f32, const Model& other) {
  Agreement worst;
  int n = 0;
  for (const auto& c : image_cases()) {
    const PixelValues px = fixture_pixels(c);
    worst = worst_of(
        worst, agreement(f32.extract_features(px).last_hidden_state, other.extract_features(px).last_hidden_state),
        ++n);
  }
  return worst;
}

/// Few-shot probes (the probe tests' three classes of six pictures) trained on the CLS features of two
/// models of the same network, `f32` and `other`: each cross-validated (3 folds), then the final heads'
/// class probabilities on every picture, which can differ even where the accuracy is 100 %.
struct FewShot {
  double accuracy_f32 = 0.0, accuracy_other = 0.0;
  bool same_predictions = false;   // the cross-validated prediction of every picture
  double worst_probability = 0.0;  // largest |p_f32 − p_other| of a class probability
};

inline FewShot few_shot(const Model& f32, const Model& other) {
  const Eigen::Index n = 18, D = f32.config().hidden_size;
  Eigen::MatrixXd x32(n, D), xo(n, D);
  std::vector<int> labels;
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 6; ++i) {
      const Image im = probe_picture(c, i);
      const auto row = static_cast<Eigen::Index>(labels.size());
      x32.row(row) = f32.extract_features(im).cls().cast<double>();
      xo.row(row) = other.extract_features(im).cls().cast<double>();
      labels.push_back(c);
    }
  const ProbeOptions o;
  const CrossValidation cv32 = cross_validate(x32, labels, 3, 3, o), cvo = cross_validate(xo, labels, 3, 3, o);
  const Probe h32 = train_probe(x32, labels, 3, o), ho = train_probe(xo, labels, 3, o);
  const auto softmax = [](const Eigen::MatrixXd& logits) {
    Eigen::MatrixXd p = logits;
    for (Eigen::Index r = 0; r < p.rows(); ++r) {
      p.row(r) = (p.row(r).array() - p.row(r).maxCoeff()).exp().matrix();
      p.row(r) /= p.row(r).sum();
    }
    return p;
  };
  FewShot f;
  f.accuracy_f32 = cv32.evaluation.accuracy();
  f.accuracy_other = cvo.evaluation.accuracy();
  f.same_predictions = cv32.evaluation.predictions == cvo.evaluation.predictions;
  f.worst_probability = (softmax(h32.head.logits(x32)) - softmax(ho.head.logits(xo))).cwiseAbs().maxCoeff();
  return f;
}

inline std::string describe(const Agreement& a) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "CLS cosine %.6f, token cosine min %.6f mean %.6f, max |diff| %.4f", a.cls,
                a.min_token, a.mean_token, a.max_abs);
  return buf;
}

}  // namespace vitmsn::test
