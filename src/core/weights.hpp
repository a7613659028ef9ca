#pragma once
// The weights of a ViT-MSN encoder as plain structs of Eigen maps and raw views into the
// (memory-mapped) checkpoint. Every checkpoint key string lives in weights.cpp. Internal: used by the
// model, the converter and the synthetic-weight generator.

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "vitmsn/config.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/tensor.hpp"

namespace vitmsn::detail {

using ConstMatrixMap = Eigen::Map<const Matrix>;
using ConstVectorMap = Eigen::Map<const Vector>;

/// A linear layer's weight [out, in] (y = x·Wᵀ + b) as stored in the checkpoint: float32, bfloat16
/// or float16, used in place from the memory map (half types are widened inside the GEMM, a panel at
/// a time, never as a whole matrix).
struct LinearWeight {
  const void* data = nullptr;
  DType dtype = DType::kF32;  // kF32, kBF16, kF16, or kI8 (quantized: see below)
  std::int64_t rows = 0;      // out
  std::int64_t cols = 0;      // in
  /// kI8 only: `data` is the panel layout of src/cpu/int8_format.hpp ([ceil(out/16), in_padded/4,
  /// 16, 4] int8, in_padded = in rounded up to 32) and `scale` the per-output-channel scales [out].
  const float* scale = nullptr;
  /// kI8, when the file has it: the second plane of int8_format.hpp's quantize_residual(), q_r as
  /// [in, out] int8 and s_r [out] — the exact weight columns of the outlier split.
  const std::int8_t* residual = nullptr;
  const float* residual_scale = nullptr;
  /// kF32 only: 0 when `data` is [out, in] row-major; else the panel layout of a file written by
  /// vitmsn-convert --layout panels: ceil(out/w) panels of in × w floats (w = panel_width), element
  /// (n, k) at (n / w)·in·w + k·w + n % w, columns past `out` zero — what KernelTable::pack_panels
  /// makes of the weight on a CPU whose micro-tile is w wide.
  int panel_width = 0;

  /// Bytes of `data` as stored.
  std::size_t stored_bytes() const;
};

/// The shape of a float32 weight [rows, cols] stored as panels of `width` columns.
std::vector<std::int64_t> panel_shape(std::int64_t rows, std::int64_t cols, int width);

/// Where element (n, k) of a weight [rows, cols] lies in its panels of `width` columns (the one
/// statement of LinearWeight::panel_width's layout: the converter writes by it, the loader reads).
inline std::size_t panel_offset(std::int64_t n, std::int64_t k, std::int64_t cols, int width) {
  return static_cast<std::size_t>(((n / width) * cols + k) * width + n % width);
}

/// The metadata key of a file whose linear weights are stored as panels, and the one layout this
/// build reads (JSON: {"scheme": kPanelLayout, "panel_width": 16 or 32, ...}).
inline constexpr const char* kWeightLayoutMetadataKey = "weight_layout";
inline constexpr const char* kPanelLayout = "vitmsn-panels-v1";

/// The panel width a file's __metadata__ declares: 0 when it declares none (weights [out, in]).
/// \throws Error naming `source` for another layout, a width other than 16 or 32, or bad JSON.
int panel_width(const std::map<std::string, std::string>& metadata, const std::string& source);

/// The name of the scales tensor of a quantized linear weight: "<weight name>_scale".
std::string int8_scale_name(const std::string& weight_name);
/// The names of its second plane: "<weight name>_residual" (I8 [in, out]) and
/// "<weight name>_residual_scale" (F32 [out]).
std::string int8_residual_name(const std::string& weight_name);
std::string int8_residual_scale_name(const std::string& weight_name);

/// The metadata key and the one quantization scheme this build reads (vitmsn-convert --dtype int8).
inline constexpr const char* kQuantizationMetadataKey = "quantization";
inline constexpr const char* kInt8Scheme = "vitmsn-int8-v1";

/// The quantization a file's __metadata__ declares: "" when none, else its scheme, which must be
/// kInt8Scheme. \throws Error naming `source` for another scheme or unreadable metadata.
std::string quantization_scheme(const std::map<std::string, std::string>& metadata, const std::string& source);

/// One pre-LN transformer block. Linear weights are PyTorch's [out, in]: y = x·Wᵀ + b.
struct LayerWeights {
  ConstVectorMap layernorm_before_weight{nullptr, 0};  // [D]
  ConstVectorMap layernorm_before_bias{nullptr, 0};    // [D]
  LinearWeight query;                                  // [D, D]  attention.attention.query
  ConstVectorMap query_bias{nullptr, 0};               // [D] (size 0 when qkv_bias is false)
  LinearWeight key;                                    // [D, D]  attention.attention.key
  ConstVectorMap key_bias{nullptr, 0};                 // [D] (size 0 when qkv_bias is false)
  LinearWeight value;                                  // [D, D]  attention.attention.value
  ConstVectorMap value_bias{nullptr, 0};               // [D] (size 0 when qkv_bias is false)
  LinearWeight attention_output;                       // [D, D]  attention.output.dense
  ConstVectorMap attention_output_bias{nullptr, 0};    // [D]
  ConstVectorMap layernorm_after_weight{nullptr, 0};   // [D]
  ConstVectorMap layernorm_after_bias{nullptr, 0};     // [D]
  LinearWeight intermediate;                           // [F, D]  intermediate.dense (fc1)
  ConstVectorMap intermediate_bias{nullptr, 0};        // [F]
  LinearWeight output;                                 // [D, F]  output.dense (fc2)
  ConstVectorMap output_bias{nullptr, 0};              // [D]
};

/// All weights of a ViTMSNModel, plus the optional ViTMSNForImageClassification head.
struct Weights {
  ConstVectorMap cls_token{nullptr, 0};               // [D]           stored [1, 1, D]
  ConstMatrixMap position_embeddings{nullptr, 0, 0};  // [1+(S/P)², D] stored [1, N, D]
  ConstMatrixMap patch_weight{nullptr, 0, 0};         // [D, C·P·P]    stored [D, C, P, P] (conv)
  ConstVectorMap patch_bias{nullptr, 0};              // [D]
  std::vector<LayerWeights> layers;                   // L blocks
  ConstVectorMap layernorm_weight{nullptr, 0};        // [D] final layer norm
  ConstVectorMap layernorm_bias{nullptr, 0};          // [D]
  ConstMatrixMap classifier_weight{nullptr, 0, 0};    // [num_labels, D]; 0 rows without a head
  ConstVectorMap classifier_bias{nullptr, 0};         // [num_labels]

  bool has_classifier() const { return classifier_weight.rows() > 0; }
  /// Float32 copies made for tensors that could not be used in place (F16/BF16 widened, or
  /// misaligned data). Empty for a float32 safetensors file: the maps point into the memory map.
  std::vector<std::unique_ptr<float[]>> owned;
  /// Bytes held in `owned` for tensors that could not be used in place.
  std::size_t owned_bytes = 0;
  /// Bytes held in `owned` for tensors that could have been used in place (bind_weights' copy_small).
  std::size_t held_bytes = 0;
};

/// Finds a tensor by checkpoint name; null when absent.
using TensorLookup = std::function<const TensorView*(const std::string&)>;

/// The checkpoint's naming: "" for a ViTMSNModel file, "vit." for a ViTMSNForImageClassification.
/// Detected from which cls_token key exists. \throws Error naming `source` when neither exists.
std::string detect_prefix(const TensorLookup& lookup, const std::string& source);

/// Binds every tensor the config calls for, checking names, shapes and dtypes; float32 tensors are
/// used in place, and so are F16/BF16 linear weight matrices (other half tensors are widened). With
/// `copy_small`, every tensor but the linear weight matrices (and int8 scales) is copied into `owned`
/// — embeddings, patch projection, biases, norms, the head: ~7 MB on ViT-L/7 — so that a forward
/// whose linear layers hold packed copies reads nothing from the file. \throws Error naming
/// `source`, the tensor, the expected and the actual shape.
/// `panel_width` > 0: the six linear weights of every block are stored as panels of that width
/// (panel_width() of the file's metadata), float32 of shape panel_shape().
Weights bind_weights(const Config& config, const TensorLookup& lookup, const std::string& source,
                     bool copy_small = false, int panel_width = 0);

/// Checkpoint key names (Hugging Face), for tools that write checkpoints. `prefix` as detect_prefix.
namespace keys {
std::string cls_token(const std::string& prefix);
std::string position_embeddings(const std::string& prefix);
std::string patch_weight(const std::string& prefix);
std::string patch_bias(const std::string& prefix);
/// "encoder.layer.{i}." + rest, with the prefix.
std::string layer(const std::string& prefix, int i, const std::string& rest);
std::string final_norm_weight(const std::string& prefix);
std::string final_norm_bias(const std::string& prefix);
extern const char* const kClassifierWeight;  // "classifier.weight"
extern const char* const kClassifierBias;    // "classifier.bias"
/// Every tensor name of an encoder with `config`'s layer count, in Hugging Face's order, with shapes.
std::vector<std::pair<std::string, std::vector<std::int64_t>>> encoder_tensors(const Config& config,
                                                                               const std::string& prefix);
}  // namespace keys

/// True when any linear weight of `w` is int8.
bool has_int8_weights(const Weights& w);

}  // namespace vitmsn::detail
