#include "vitmsn/convert.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "base/file_util.hpp"
#include "base/json_error.hpp"
#include "core/model_files.hpp"
#include "core/safetensors_write.hpp"
#include "core/weights.hpp"
#include "cpu/cpu.hpp"
#include "cpu/half.hpp"
#include "cpu/int8_format.hpp"
#include "cpu/kernels.hpp"
#include "formats/identity.hpp"
#include "vitmsn/config.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/torch_checkpoint.hpp"

namespace vitmsn {

namespace {

bool is_float(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF64; }

// Re-encodes a float tensor as `dtype` (round to nearest even).
void convert_dtype(TensorData& t, DType dtype) {
  const std::vector<float> values = t.view().to_float();
  t.dtype = dtype;
  if (dtype == DType::kF32) {
    t.bytes.resize(values.size() * 4);
    if (!values.empty()) std::memcpy(t.bytes.data(), values.data(), values.size() * 4);
    return;
  }
  t.bytes.resize(values.size() * 2);
  for (std::size_t i = 0; i < values.size(); ++i) {
    const std::uint16_t h = dtype == DType::kBF16 ? detail::float_to_bf16(values[i]) : detail::float_to_half(values[i]);
    std::memcpy(t.bytes.data() + 2 * i, &h, 2);
  }
}

// The six linear weights of a block: ...encoder.layer.{i}.{attention.attention.{query,key,value},
// attention.output.dense, intermediate.dense, output.dense}.weight, in the forward's order.
constexpr const char* kBlockLinearTails[] = {".attention.attention.query.weight", ".attention.attention.key.weight",
                                             ".attention.attention.value.weight", ".attention.output.dense.weight",
                                             ".intermediate.dense.weight",        ".output.dense.weight"};

// Which of kBlockLinearTails `name` is (0..5), or -1 when it is none of a block's linear weights.
int block_linear_slot(const std::string& name) {
  if (name.find("encoder.layer.") == std::string::npos) return -1;
  for (int i = 0; i < 6; ++i)
    if (detail::ends_with(name, kBlockLinearTails[i])) return i;
  return -1;
}

bool is_block_linear_weight(const std::string& name) { return block_linear_slot(name) >= 0; }

// A float [N, K] linear weight (any float dtype) in place → its int8 panel layout (src/cpu/int8_format.hpp), shape
// [ceil(N/16), ceil(K/32)·8, 16, 4]; returns the tensors that go with it: the scales "<name>_scale"
// F32 [N], and the second plane "<name>_residual" I8 [K, N] with its scales "<name>_residual_scale".
std::vector<TensorData> quantize_int8(TensorData& t) {
  const int N = static_cast<int>(t.shape[0]), K = static_cast<int>(t.shape[1]);
  const std::vector<float> w = t.view().to_float();
  std::vector<std::int8_t> panels;
  std::vector<float> scales;
  detail::int8::quantize_weights(w.data(), N, K, K, &panels, &scales);
  std::vector<std::int8_t> residual;
  std::vector<float> residual_scales;
  detail::int8::quantize_residual(w.data(), N, K, K, panels, scales, &residual, &residual_scales);
  t.dtype = DType::kI8;
  t.shape = detail::int8::panel_shape(N, K);
  t.bytes.assign(reinterpret_cast<const std::uint8_t*>(panels.data()),
                 reinterpret_cast<const std::uint8_t*>(panels.data()) + panels.size());
  std::vector<TensorData> extra;
  extra.push_back(TensorData::f32(detail::int8_scale_name(t.name), {N}, scales.data()));
  TensorData r;
  r.name = detail::int8_residual_name(t.name);
  r.dtype = DType::kI8;
  r.shape = {K, N};
  r.bytes.assign(reinterpret_cast<const std::uint8_t*>(residual.data()),
                 reinterpret_cast<const std::uint8_t*>(residual.data()) + residual.size());
  extra.push_back(std::move(r));
  extra.push_back(TensorData::f32(detail::int8_residual_scale_name(t.name), {N}, residual_scales.data()));
  return extra;
}

// The place of a block's linear weight in a panel file's order: (layer, block_linear_slot); query,
// key and value adjacent so that they load as one stacked operand.
std::pair<long, int> panel_slot(const std::string& name) {
  const std::size_t at = name.find("encoder.layer.") + std::strlen("encoder.layer.");
  return {std::strtol(name.c_str() + at, nullptr, 10), block_linear_slot(name)};
}

// A float32 [N, K] weight → panels of `width` columns (LinearWeight::panel_width's layout), shape
// [ceil(N/width), K, width], columns past N zero.
void to_panels(TensorData& t, int width) {
  const std::int64_t N = t.shape[0], K = t.shape[1];
  const std::int64_t panels = (N + width - 1) / width;
  std::vector<float> w(static_cast<std::size_t>(N * K));
  std::memcpy(w.data(), t.bytes.data(), w.size() * sizeof(float));
  std::vector<float> p(static_cast<std::size_t>(panels * K * width), 0.0f);
  for (std::int64_t n = 0; n < N; ++n)
    for (std::int64_t k = 0; k < K; ++k) p[detail::panel_offset(n, k, K, width)] = w[n * K + k];
  t.shape = detail::panel_shape(N, K, width);
  t.bytes.resize(p.size() * sizeof(float));
  std::memcpy(t.bytes.data(), p.data(), t.bytes.size());
}

// The __metadata__ "weight_layout" of a panel file.
std::string panel_metadata(int width) {
  const nlohmann::json j = {
      {"scheme", detail::kPanelLayout},
      {"panel_width", width},
      {"weights",
       "the six linear weights of every block, float32 [out, in], stored as ceil(out/w) panels of "
       "in x w values (w = panel_width): element (n, k) at ((n / w) * in + k) * w + n % w, columns "
       "past out zero; shape [ceil(out/w), in, w]. Query, key and value of a block are adjacent. "
       "Everything else is stored as in the Hugging Face checkpoint"}};
  return j.dump();
}

// The __metadata__ "quantization" of an int8 file: the scheme the loader checks, and what it means.
std::string int8_metadata() {
  const nlohmann::json j = {
      {"scheme", detail::kInt8Scheme},
      {"weights",
       "the six linear weights of every block: int8 per output channel, symmetric, "
       "s = max|w|/127, q = rint(w·127/max|w|); stored in panels of 16 output channels × 4 inputs, "
       "inputs padded to a multiple of 32; scales in '<name>_scale' (F32); the rounding residual "
       "w - s*q quantized the same way, transposed [in, out], in '<name>_residual' (I8) with scales "
       "'<name>_residual_scale' (F32): the exact weight columns of outlier activation channels"},
      {"outliers",
       "activation channels above 6x the median channel's largest magnitude (at most "
       "max(8, in/16)) are left out of the activation quantization and computed in float32"},
      {"activations", "int8 per token and block of 32 inputs, symmetric, computed at run time"},
      {"float32", "embeddings, patch projection, layer norms, biases, classifier"}};
  return j.dump();
}

// id2label from a head file's metadata (a JSON object {"0": "cat", …}).
std::vector<std::string> parse_labels(const std::string& json_text, const std::string& source) {
  nlohmann::json labels;
  try {
    labels = nlohmann::json::parse(json_text);
  } catch (const nlohmann::json::exception& e) {
    throw Error(ErrorKind::kMalformed,
                source + ": __metadata__ id2label is not valid JSON: " + detail::describe_json_error(e, json_text));
  }
  const nlohmann::json wrapper = {{"hidden_size", 1},       {"num_hidden_layers", 1}, {"num_attention_heads", 1},
                                  {"intermediate_size", 1}, {"patch_size", 1},        {"image_size", 1},
                                  {"id2label", labels}};
  return parse_config(wrapper.dump(), source + " (__metadata__ id2label)").id2label;
}

}  // namespace

WeightLayout parse_weight_layout(const std::string& name) {
  if (name == "rows") return WeightLayout::kRows;
  if (name == "panels") return WeightLayout::kPanels;
  throw Error(ErrorKind::kArgument, "unknown weight layout '" + name + "' (expected rows or panels)");
}

DType parse_weight_dtype(const std::string& name) {
  if (name == "f32" || name == "float32" || name == "F32") return DType::kF32;
  if (name == "bf16" || name == "bfloat16" || name == "BF16") return DType::kBF16;
  if (name == "f16" || name == "float16" || name == "F16") return DType::kF16;
  if (name == "int8" || name == "i8" || name == "I8") return DType::kI8;
  throw Error(ErrorKind::kArgument, "unknown dtype '" + name + "' (expected f32, bf16, f16 or int8)");
}

ConvertReport convert_checkpoint(const std::string& input, const std::string& output, const ConvertOptions& options) {
  ConvertReport report;
  if (options.dtype != DType::kF32 && options.dtype != DType::kBF16 && options.dtype != DType::kF16 &&
      options.dtype != DType::kI8)
    throw Error(ErrorKind::kArgument, output + ": output dtype must be F32, BF16, F16 or I8", output);
  const bool panels = options.layout == WeightLayout::kPanels;
  if (panels && options.dtype != DType::kF32)
    throw Error(ErrorKind::kArgument,
                output + ": the panel layout stores float32 weights; it does not combine with dtype " +
                    dtype_name(options.dtype),
                output);
  if (!options.overwrite && (detail::is_regular_file(output) || detail::is_directory(output)))
    throw Error(ErrorKind::kArgument,
                output + ": already exists (to replace it: vitmsn-convert --force; Python: overwrite=True)", output);

  // The checkpoint, its config and its preprocessor settings (src/core/model_files.hpp: one precedence,
  // shared with Model::load).
  detail::ModelFiles files = detail::resolve_model_files(input, detail::Checkpoints::kSafetensorsOrTorch);
  const std::string& weights = files.weights;
  report.weights_input = weights;
  if (files.file && detail::panel_width(files.file->metadata(), weights) > 0)
    throw Error(ErrorKind::kUnsupported,
                weights +
                    ": stores its linear weights in vitmsn's panel layout (vitmsn-convert --layout "
                    "panels); convert from its float checkpoint",
                weights);
  std::vector<TensorData> tensors;
  if (files.file) {
    for (const auto& name : files.file->names()) tensors.push_back(files.file->get(name).to_tensor_data());
  } else {
    tensors = read_torch_checkpoint(weights);
  }
  Config config = files.config;
  report.config_source = files.config_source;
  const PreprocessorConfig pre = files.preprocessor;
  report.preprocessor_source = files.preprocessor_source;

  // The backbone identity: carried over when the input records one (a converted file), else
  // computed from the encoder tensors (a Hugging Face checkpoint).
  std::map<std::string, TensorView> views;
  for (const auto& t : tensors) {
    if (views.count(t.name))
      throw Error(ErrorKind::kMalformed, weights + ": tensor '" + t.name + "' appears twice", weights);
    views[t.name] = t.view();
  }
  const detail::TensorLookup any_dtype = [&](const std::string& n) -> const TensorView* {
    auto it = views.find(n);
    return it == views.end() ? nullptr : &it->second;
  };
  const std::string prefix = detail::detect_prefix(any_dtype, weights);
  report.backbone = files.file ? detail::recorded_backbone_identity(files.file->metadata(), weights) : "";
  report.backbone_recorded = !report.backbone.empty();
  if (report.backbone.empty()) report.backbone = detail::compute_backbone_identity(config, any_dtype, weights);

  // Merge a separately trained head (replacing any head the checkpoint has), if it was trained on
  // this backbone.
  if (!options.classifier.empty()) {
    const SafetensorsFile head = SafetensorsFile::open(options.classifier);
    const TensorView& w = head.get(detail::keys::kClassifierWeight);
    const TensorView& b = head.get(detail::keys::kClassifierBias);
    if (w.shape.size() != 2 || w.shape[1] != config.hidden_size || b.shape.size() != 1 || b.shape[0] != w.shape[0])
      throw Error(ErrorKind::kMalformed,
                  options.classifier + ": classifier.weight " + w.shape_string() + " / classifier.bias " +
                      b.shape_string() + " do not fit hidden size " + std::to_string(config.hidden_size),
                  options.classifier);
    report.head_backbone_recorded = detail::recorded_backbone_identity(head.metadata(), options.classifier);
    if (report.head_backbone_recorded.empty()) {
      report.head_backbone = HeadBackbone::kUnrecorded;
    } else if (report.head_backbone_recorded == report.backbone) {
      report.head_backbone = HeadBackbone::kSame;
    } else if (options.allow_other_backbone) {
      report.head_backbone = HeadBackbone::kOther;
    } else {
      const auto trained_on = head.metadata().find("model");
      throw Error(ErrorKind::kArgument,
                  options.classifier + ": this head was trained on the features of another model (backbone " +
                      report.head_backbone_recorded.substr(0, 16) +
                      (trained_on != head.metadata().end() ? ", " + trained_on->second : std::string()) + ") than " +
                      weights + " (backbone " + report.backbone.substr(0, 16) +
                      "): its classes would not fit these features. Train a head on this model with vitmsn-probe, "
                      "or merge it anyway (vitmsn-convert --force; Python: allow_other_backbone=True)",
                  options.classifier);
    }
    if (views.count(detail::keys::kClassifierWeight)) {
      report.replaced_labels = config.id2label;
      const TensorView& old = views.at(detail::keys::kClassifierWeight);
      if (report.replaced_labels.empty() && !old.shape.empty())
        for (std::int64_t k = 0; k < old.shape[0]; ++k) report.replaced_labels.push_back("LABEL_" + std::to_string(k));
    }
    views.erase(detail::keys::kClassifierWeight);
    views.erase(detail::keys::kClassifierBias);
    tensors.erase(std::remove_if(tensors.begin(), tensors.end(),
                                 [](const TensorData& t) {
                                   return t.name == detail::keys::kClassifierWeight ||
                                          t.name == detail::keys::kClassifierBias;
                                 }),
                  tensors.end());
    tensors.push_back(w.to_tensor_data());
    tensors.push_back(b.to_tensor_data());
    views[detail::keys::kClassifierWeight] = tensors[tensors.size() - 2].view();
    views[detail::keys::kClassifierBias] = tensors.back().view();
    config.id2label.clear();
    if (auto it = head.metadata().find("id2label"); it != head.metadata().end()) {
      config.id2label = parse_labels(it->second, options.classifier);
      if (static_cast<std::int64_t>(config.id2label.size()) != w.shape[0])
        throw Error(ErrorKind::kMalformed,
                    options.classifier + ": id2label has " + std::to_string(config.id2label.size()) + " labels for " +
                        std::to_string(w.shape[0]) + " classifier rows",
                    options.classifier);
    }
  }

  // Keep exactly the tensors of a ViT-MSN model (with the checkpoint's prefix).
  std::set<std::string> wanted;
  for (const auto& entry : detail::keys::encoder_tensors(config, prefix)) wanted.insert(entry.first);
  for (const char* k : {detail::keys::kClassifierWeight, detail::keys::kClassifierBias})
    if (views.count(k)) wanted.insert(k);
  for (const auto& name : wanted) {
    auto it = views.find(name);
    if (it == views.end()) throw Error(ErrorKind::kMalformed, weights + ": missing tensor '" + name + "'", weights);
    if (it->second.dtype == DType::kI8)
      throw Error(ErrorKind::kUnsupported,
                  weights + ": tensor '" + name +
                      "' is int8: this model is already quantized; convert from its float checkpoint",
                  weights);
    if (!is_float(it->second.dtype))
      throw Error(
          ErrorKind::kUnsupported,
          weights + ": tensor '" + name + "' has dtype " + dtype_name(it->second.dtype) + ", expected a float type",
          weights);
  }
  // Shapes and the layer count against the config, exactly as Model::load checks them. F64 tensors
  // are presented as F32 for this check only (the binder looks at shapes; values are converted below).
  std::map<std::string, TensorView> shape_views = views;
  for (auto& [name, v] : shape_views)
    if (v.dtype == DType::kF64) v.dtype = DType::kF32;
  detail::bind_weights(
      config,
      [&](const std::string& n) -> const TensorView* {
        auto it = shape_views.find(n);
        return it == shape_views.end() ? nullptr : &it->second;
      },
      weights);

  std::vector<TensorData> out;
  for (auto& t : tensors) {
    if (!wanted.count(t.name)) {
      report.dropped.push_back(t.name);
      continue;
    }
    // Matrices (linear and patch weights) take the requested type; norms, biases, embeddings stay F32.
    // int8 quantizes the six linear weights of the blocks only: the rest stays F32.
    const bool matrix = t.shape.size() >= 2 && !detail::ends_with(t.name, "cls_token") &&
                        !detail::ends_with(t.name, "position_embeddings");
    if (options.dtype == DType::kI8 && is_block_linear_weight(t.name)) {
      std::vector<TensorData> extra = quantize_int8(t);
      report.bytes += t.bytes.size();
      out.push_back(std::move(t));
      for (TensorData& e : extra) {
        report.bytes += e.bytes.size();
        out.push_back(std::move(e));
      }
      continue;
    }
    const DType target = matrix && options.dtype != DType::kI8 ? options.dtype : DType::kF32;
    if (t.dtype != target) convert_dtype(t, target);
    report.bytes += t.bytes.size();
    out.push_back(std::move(t));
  }
  report.tensors = out.size();
  report.has_classifier = wanted.count(detail::keys::kClassifierWeight) != 0;
  std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                 {"config", to_json(config)},
                                                 {"preprocessor_config", to_json(pre)},
                                                 {"dtype", dtype_name(options.dtype)},
                                                 {"converted_by", "vitmsn-convert"},
                                                 {kBackboneMetadataKey, report.backbone}};
  if (options.dtype == DType::kI8) metadata[detail::kQuantizationMetadataKey] = int8_metadata();
  if (!panels) {
    write_safetensors(output, out, metadata);
    return report;
  }
  // Panels of this CPU's micro-tile width (32 where the kernels have none: AVX-512's), written first
  // and in block order, each a multiple of 64 bytes from a 64-byte aligned start: every panel tensor
  // is then 64-byte aligned in a memory map, and a block's query, key and value are one operand.
  const int nr = detail::kernels(detail::detected_isa()).packed_nr;
  report.panel_width = nr == 16 || nr == 32 ? nr : 32;
  std::vector<const TensorData*> order;
  for (TensorData& t : out)
    if (is_block_linear_weight(t.name)) {
      to_panels(t, report.panel_width);
      order.push_back(&t);
    }
  std::sort(order.begin(), order.end(),
            [](const TensorData* a, const TensorData* b) { return panel_slot(a->name) < panel_slot(b->name); });
  std::vector<const TensorData*> rest;
  for (const TensorData& t : out)
    if (!is_block_linear_weight(t.name)) rest.push_back(&t);
  std::sort(rest.begin(), rest.end(), [](const TensorData* a, const TensorData* b) { return a->name < b->name; });
  order.insert(order.end(), rest.begin(), rest.end());
  metadata[detail::kWeightLayoutMetadataKey] = panel_metadata(report.panel_width);
  report.bytes = 0;
  for (const TensorData* t : order) report.bytes += t->bytes.size();
  detail::write_safetensors_in_order(output, order, metadata, 64);
  return report;
}

}  // namespace vitmsn
