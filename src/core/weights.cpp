#include "core/weights.hpp"

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cpu/int8_format.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn::detail {

namespace keys {

const char* const kClassifierWeight = "classifier.weight";
const char* const kClassifierBias = "classifier.bias";

std::string cls_token(const std::string& p) { return p + "embeddings.cls_token"; }
std::string position_embeddings(const std::string& p) { return p + "embeddings.position_embeddings"; }
std::string patch_weight(const std::string& p) { return p + "embeddings.patch_embeddings.projection.weight"; }
std::string patch_bias(const std::string& p) { return p + "embeddings.patch_embeddings.projection.bias"; }
std::string layer(const std::string& p, int i, const std::string& rest) {
  return p + "encoder.layer." + std::to_string(i) + "." + rest;
}
std::string final_norm_weight(const std::string& p) { return p + "layernorm.weight"; }
std::string final_norm_bias(const std::string& p) { return p + "layernorm.bias"; }

namespace {
// Per-layer tensors: name after "encoder.layer.{i}.", and whether the shape is [D,D], [F,D], [D,F],
// [D] or [F].
enum class Shape { kDD, kFD, kDF, kD, kF };
struct LayerKey {
  const char* name;
  Shape shape;
  bool qkv_bias;  // present only when config.qkv_bias
};
constexpr LayerKey kLayerKeys[] = {
    {"attention.attention.query.weight", Shape::kDD, false},
    {"attention.attention.query.bias", Shape::kD, true},
    {"attention.attention.key.weight", Shape::kDD, false},
    {"attention.attention.key.bias", Shape::kD, true},
    {"attention.attention.value.weight", Shape::kDD, false},
    {"attention.attention.value.bias", Shape::kD, true},
    {"attention.output.dense.weight", Shape::kDD, false},
    {"attention.output.dense.bias", Shape::kD, false},
    {"intermediate.dense.weight", Shape::kFD, false},
    {"intermediate.dense.bias", Shape::kF, false},
    {"output.dense.weight", Shape::kDF, false},
    {"output.dense.bias", Shape::kD, false},
    {"layernorm_before.weight", Shape::kD, false},
    {"layernorm_before.bias", Shape::kD, false},
    {"layernorm_after.weight", Shape::kD, false},
    {"layernorm_after.bias", Shape::kD, false},
};
}  // namespace

std::vector<std::pair<std::string, std::vector<std::int64_t>>> encoder_tensors(const Config& c, const std::string& p) {
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, P = c.patch_size, C = c.num_channels;
  auto dims = [&](Shape s) -> std::vector<std::int64_t> {
    switch (s) {
      case Shape::kDD:
        return {D, D};
      case Shape::kFD:
        return {F, D};
      case Shape::kDF:
        return {D, F};
      case Shape::kD:
        return {D};
      case Shape::kF:
        return {F};
    }
    return {};
  };
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> out = {
      {cls_token(p), {1, 1, D}},
      {position_embeddings(p), {1, c.num_tokens(), D}},
      {patch_weight(p), {D, C, P, P}},
      {patch_bias(p), {D}},
  };
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    for (const auto& k : kLayerKeys) {
      if (k.qkv_bias && !c.qkv_bias) continue;
      out.emplace_back(layer(p, i, k.name), dims(k.shape));
    }
  }
  out.push_back({final_norm_weight(p), {D}});
  out.push_back({final_norm_bias(p), {D}});
  return out;
}

}  // namespace keys

namespace {

std::string shape_str(const std::vector<std::int64_t>& s) {
  std::string r = "[";
  for (std::size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

class Binder {
 public:
  Binder(const TensorLookup& lookup, const std::string& source, Weights& w, bool copy_small, int panel_width)
      : lookup_(lookup), source_(source), w_(w), copy_small_(copy_small), panel_width_(panel_width) {}

  // A linear weight matrix with exactly `shape`: F32, BF16 and F16 are used in place when aligned
  // (other float types and misaligned data are widened to an owned float32 copy).
  LinearWeight linear(const std::string& name, const std::vector<std::int64_t>& shape) {
    const TensorView* t = lookup_(name);
    LinearWeight lw;
    lw.rows = shape[0];
    lw.cols = shape[1];
    if (panel_width_ > 0) return panel_linear(name, t, lw);
    if (t && t->dtype == DType::kI8) return int8_linear(name, *t, lw);
    if (t && t->shape == shape && (t->dtype == DType::kBF16 || t->dtype == DType::kF16) &&
        reinterpret_cast<std::uintptr_t>(t->data) % 2 == 0) {
      lw.data = t->data;
      lw.dtype = t->dtype;
      return lw;
    }
    lw.data = get(name, shape, /*small=*/false);
    return lw;
  }

  // A float32 weight stored as panels (vitmsn-convert --layout panels), used in place.
  LinearWeight panel_linear(const std::string& name, const TensorView* t, LinearWeight lw) {
    if (!t) throw Error(ErrorKind::kMalformed, source_ + ": missing tensor '" + name + "'");
    const std::vector<std::int64_t> want = panel_shape(lw.rows, lw.cols, panel_width_);
    if (t->dtype != DType::kF32 || t->shape != want)
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + name + "' is " + dtype_name(t->dtype) + " " +
                                             t->shape_string() + ", expected F32 " + shape_str(want) +
                                             " (the file's metadata declares panels of " +
                                             std::to_string(panel_width_) + " columns for a [" +
                                             std::to_string(lw.rows) + "," + std::to_string(lw.cols) + "] weight)");
    if (reinterpret_cast<std::uintptr_t>(t->data) % alignof(float) != 0)
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + name + "' is not aligned to 4 bytes");
    lw.data = t->data;
    lw.panel_width = panel_width_;
    return lw;
  }

  // A quantized linear weight (vitmsn-convert --dtype int8): the panel layout in place, and its scales.
  LinearWeight int8_linear(const std::string& name, const TensorView& t, LinearWeight lw) {
    const std::vector<std::int64_t> panels = int8::panel_shape(static_cast<int>(lw.rows), static_cast<int>(lw.cols));
    if (t.shape != panels)
      throw Error(ErrorKind::kMalformed, source_ + ": int8 tensor '" + name + "' has shape " + t.shape_string() +
                                             ", expected " + shape_str(panels) + " (the int8 panel layout of a [" +
                                             std::to_string(lw.rows) + "," + std::to_string(lw.cols) + "] weight)");
    lw.data = t.data;
    lw.dtype = DType::kI8;
    const std::string scale_name = int8_scale_name(name);
    const TensorView* s = lookup_(scale_name);
    if (!s)
      throw Error(ErrorKind::kMalformed, source_ + ": int8 tensor '" + name + "' has no scales '" + scale_name + "'");
    lw.scale = float_vector(scale_name, *s, lw.rows);
    // The second plane (vitmsn 0.2 writes it; files without it run the outlier split on the first).
    const std::string r_name = int8_residual_name(name), rs_name = int8_residual_scale_name(name);
    const TensorView* r = lookup_(r_name);
    const TensorView* rs = lookup_(rs_name);
    if (!r && !rs) return lw;
    if (!r || !rs)
      throw Error(ErrorKind::kMalformed, source_ + ": int8 tensor '" + name + "' has '" + (r ? r_name : rs_name) +
                                             "' but not '" + (r ? rs_name : r_name) + "'");
    if (r->dtype != DType::kI8 || r->shape != std::vector<std::int64_t>{lw.cols, lw.rows})
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + r_name + "' has " + dtype_name(r->dtype) + " " +
                                             r->shape_string() + ", expected I8 [" + std::to_string(lw.cols) + "," +
                                             std::to_string(lw.rows) + "]");
    lw.residual = reinterpret_cast<const std::int8_t*>(r->data);
    lw.residual_scale = float_vector(rs_name, *rs, lw.rows);
    return lw;
  }

  // A float32 vector [n] used in place (the scales of an int8 weight).
  const float* float_vector(const std::string& name, const TensorView& s, std::int64_t n) {
    if (s.dtype != DType::kF32 || s.shape != std::vector<std::int64_t>{n})
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + name + "' has " + dtype_name(s.dtype) + " " +
                                             s.shape_string() + ", expected F32 [" + std::to_string(n) + "]");
    if (reinterpret_cast<std::uintptr_t>(s.data) % alignof(float) != 0)
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + name + "' is not aligned to 4 bytes");
    return reinterpret_cast<const float*>(s.data);
  }

  // The float data of tensor `name` with exactly `shape`; used in place when it is aligned float32
  // (unless it is a small tensor and copy_small is set).
  const float* get(const std::string& name, const std::vector<std::int64_t>& shape, bool small = true) {
    const TensorView* t = lookup_(name);
    if (!t) throw Error(ErrorKind::kMalformed, source_ + ": missing tensor '" + name + "'");
    if (t->shape != shape)
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + name + "' has shape " + t->shape_string() +
                                             ", expected " + shape_str(shape));
    if (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16)
      throw Error(ErrorKind::kMalformed, source_ + ": tensor '" + name + "' has dtype " + dtype_name(t->dtype) +
                                             ", expected F32, F16 or BF16");
    const bool in_place = t->dtype == DType::kF32 && reinterpret_cast<std::uintptr_t>(t->data) % alignof(float) == 0;
    if (in_place && !(small && copy_small_)) return reinterpret_cast<const float*>(t->data);
    const std::size_t n = static_cast<std::size_t>(t->numel());
    std::unique_ptr<float[]> copy(new float[n ? n : 1]);
    for (std::size_t i = 0; i < n; ++i) copy[i] = t->value(i);
    const float* p = copy.get();
    w_.owned.push_back(std::move(copy));
    (in_place ? w_.held_bytes : w_.owned_bytes) += n * sizeof(float);
    return p;
  }

 private:
  const TensorLookup& lookup_;
  const std::string& source_;
  Weights& w_;
  bool copy_small_;
  int panel_width_;
};

void bind(ConstVectorMap& m, const float* p, std::int64_t n) { new (&m) ConstVectorMap(p, n); }
void bind(ConstMatrixMap& m, const float* p, std::int64_t r, std::int64_t c) { new (&m) ConstMatrixMap(p, r, c); }

}  // namespace

std::string detect_prefix(const TensorLookup& lookup, const std::string& source) {
  if (lookup(keys::cls_token(""))) return "";
  if (lookup(keys::cls_token("vit."))) return "vit.";
  throw Error(
      ErrorKind::kMalformed,
      source + ": missing tensor 'embeddings.cls_token' (nor 'vit.embeddings.cls_token'): not a ViT-MSN checkpoint");
}

std::string int8_scale_name(const std::string& weight_name) { return weight_name + "_scale"; }
std::string int8_residual_name(const std::string& weight_name) { return weight_name + "_residual"; }
std::string int8_residual_scale_name(const std::string& weight_name) { return weight_name + "_residual_scale"; }

std::string quantization_scheme(const std::map<std::string, std::string>& metadata, const std::string& source) {
  const auto it = metadata.find(kQuantizationMetadataKey);
  if (it == metadata.end()) return "";
  const nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("scheme") || !j["scheme"].is_string())
    throw Error(ErrorKind::kMalformed,
                source + ": __metadata__ \"quantization\" is not a JSON object with a \"scheme\" string");
  const std::string scheme = j["scheme"].get<std::string>();
  if (scheme != kInt8Scheme)
    throw Error(ErrorKind::kUnsupported,
                source + ": quantization scheme '" + scheme + "' is not one this build of vitmsn reads (it reads " +
                    kInt8Scheme + "); convert the float checkpoint again with this version's vitmsn-convert");
  return scheme;
}

std::size_t LinearWeight::stored_bytes() const {
  const std::int64_t out = panel_width > 0 ? (rows + panel_width - 1) / panel_width * panel_width : rows;
  if (dtype == DType::kI8) {  // the int8 panels (int8_format.hpp), without the scales and second plane
    std::int64_t n = 1;
    for (std::int64_t d : int8::panel_shape(static_cast<int>(rows), static_cast<int>(cols))) n *= d;
    return static_cast<std::size_t>(n);
  }
  return static_cast<std::size_t>(out * cols) * dtype_size(dtype);
}

std::vector<std::int64_t> panel_shape(std::int64_t rows, std::int64_t cols, int width) {
  return {(rows + width - 1) / width, cols, width};
}

int panel_width(const std::map<std::string, std::string>& metadata, const std::string& source) {
  const auto it = metadata.find(kWeightLayoutMetadataKey);
  if (it == metadata.end()) return 0;
  const nlohmann::json j = nlohmann::json::parse(it->second, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("scheme") || !j["scheme"].is_string())
    throw Error(ErrorKind::kMalformed, source + ": __metadata__ \"" + kWeightLayoutMetadataKey +
                                           "\" is not a JSON object with a \"scheme\" string");
  const std::string scheme = j["scheme"].get<std::string>();
  if (scheme != kPanelLayout)
    throw Error(ErrorKind::kUnsupported,
                source + ": weight layout '" + scheme + "' is not one this build of vitmsn reads (it reads " +
                    kPanelLayout + "); convert the float checkpoint again with this version's vitmsn-convert");
  const nlohmann::json& w = j.contains("panel_width") ? j["panel_width"] : nlohmann::json();
  if (!w.is_number_integer() || (w.get<int>() != 16 && w.get<int>() != 32))
    throw Error(ErrorKind::kMalformed, source + ": __metadata__ \"" + kWeightLayoutMetadataKey +
                                           "\" has no \"panel_width\" of 16 or 32 (got " + w.dump() + ")");
  return w.get<int>();
}

bool has_int8_weights(const Weights& w) {
  for (const LayerWeights& l : w.layers)
    for (const LinearWeight* lw : {&l.query, &l.key, &l.value, &l.attention_output, &l.intermediate, &l.output})
      if (lw->dtype == DType::kI8) return true;
  return false;
}

Weights bind_weights(const Config& c, const TensorLookup& lookup, const std::string& source, bool copy_small,
                     int panel_width) {
  Weights w;
  Binder b(lookup, source, w, copy_small, panel_width);
  const std::string p = detect_prefix(lookup, source);
  const std::int64_t D = c.hidden_size, F = c.intermediate_size, P = c.patch_size, C = c.num_channels;
  const std::int64_t N = c.num_tokens();

  // The layer count comes from the config; the file must agree: layer L must not exist.
  for (int i = 0; i < c.num_hidden_layers; ++i)
    if (!lookup(keys::layer(p, i, "layernorm_before.weight")))
      throw Error(ErrorKind::kMalformed, source + ": missing tensor '" + keys::layer(p, i, "layernorm_before.weight") +
                                             "': config has " + std::to_string(c.num_hidden_layers) +
                                             " layers, the file fewer");
  if (lookup(keys::layer(p, c.num_hidden_layers, "layernorm_before.weight")))
    throw Error(ErrorKind::kMalformed, source + ": file has more layers than the config's num_hidden_layers = " +
                                           std::to_string(c.num_hidden_layers) + " (found '" +
                                           keys::layer(p, c.num_hidden_layers, "layernorm_before.weight") + "')");

  bind(w.cls_token, b.get(keys::cls_token(p), {1, 1, D}), D);
  bind(w.position_embeddings, b.get(keys::position_embeddings(p), {1, N, D}), N, D);
  bind(w.patch_weight, b.get(keys::patch_weight(p), {D, C, P, P}), D, C * P * P);
  bind(w.patch_bias, b.get(keys::patch_bias(p), {D}), D);
  w.layers.resize(c.num_hidden_layers);
  for (int i = 0; i < c.num_hidden_layers; ++i) {
    LayerWeights& l = w.layers[i];
    auto k = [&](const char* rest) { return keys::layer(p, i, rest); };
    bind(l.layernorm_before_weight, b.get(k("layernorm_before.weight"), {D}), D);
    bind(l.layernorm_before_bias, b.get(k("layernorm_before.bias"), {D}), D);
    l.query = b.linear(k("attention.attention.query.weight"), {D, D});
    l.key = b.linear(k("attention.attention.key.weight"), {D, D});
    l.value = b.linear(k("attention.attention.value.weight"), {D, D});
    if (c.qkv_bias) {
      bind(l.query_bias, b.get(k("attention.attention.query.bias"), {D}), D);
      bind(l.key_bias, b.get(k("attention.attention.key.bias"), {D}), D);
      bind(l.value_bias, b.get(k("attention.attention.value.bias"), {D}), D);
    }
    l.attention_output = b.linear(k("attention.output.dense.weight"), {D, D});
    bind(l.attention_output_bias, b.get(k("attention.output.dense.bias"), {D}), D);
    bind(l.layernorm_after_weight, b.get(k("layernorm_after.weight"), {D}), D);
    bind(l.layernorm_after_bias, b.get(k("layernorm_after.bias"), {D}), D);
    l.intermediate = b.linear(k("intermediate.dense.weight"), {F, D});
    bind(l.intermediate_bias, b.get(k("intermediate.dense.bias"), {F}), F);
    l.output = b.linear(k("output.dense.weight"), {D, F});
    bind(l.output_bias, b.get(k("output.dense.bias"), {D}), D);
  }
  bind(w.layernorm_weight, b.get(keys::final_norm_weight(p), {D}), D);
  bind(w.layernorm_bias, b.get(keys::final_norm_bias(p), {D}), D);

  const TensorView* cw = lookup(keys::kClassifierWeight);
  const TensorView* cb = lookup(keys::kClassifierBias);
  if (cw || cb) {
    if (!cw) throw Error(ErrorKind::kMalformed, source + ": has 'classifier.bias' but no 'classifier.weight'");
    if (!cb) throw Error(ErrorKind::kMalformed, source + ": has 'classifier.weight' but no 'classifier.bias'");
    if (cw->shape.size() != 2 || cw->shape[1] != D || cw->shape[0] < 1)
      throw Error(ErrorKind::kMalformed, source + ": tensor 'classifier.weight' has shape " + cw->shape_string() +
                                             ", expected [num_labels," + std::to_string(D) + "]");
    const std::int64_t labels = cw->shape[0];
    if (!c.id2label.empty() && static_cast<std::int64_t>(c.id2label.size()) != labels)
      throw Error(ErrorKind::kMalformed, source + ": tensor 'classifier.weight' has " + std::to_string(labels) +
                                             " rows but id2label has " + std::to_string(c.id2label.size()) + " labels");
    bind(w.classifier_weight, b.get(keys::kClassifierWeight, {labels, D}), labels, D);
    bind(w.classifier_bias, b.get(keys::kClassifierBias, {labels}), labels);
  }
  return w;
}

}  // namespace vitmsn::detail
