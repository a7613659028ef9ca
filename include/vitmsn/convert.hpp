#pragma once
/// \file
/// Conversion of Hugging Face checkpoints (pytorch_model.bin or model.safetensors, with config.json
/// and preprocessor_config.json) into one self-contained vitmsn safetensors file.

#include <string>
#include <vector>

#include "vitmsn/export.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {

/// How the six linear weights of every block are laid out in the output file.
enum class WeightLayout {
  /// [out, in], as PyTorch stores them: any safetensors reader can use the file.
  kRows,
  /// Float32 in the panels of this CPU's GEMM micro-tile (32 columns wide with AVX-512, 16 with
  /// AVX2): loaded in place from the memory map, nothing copied or packed at load. Only vitmsn reads
  /// it (docs/NUMERICS.md, "Weight types"), on any CPU: laid out again at load where the width differs.
  kPanels,
};

struct ConvertOptions {
  /// Storage type of the weights: F32, BF16 or F16 for every matrix (linear and patch weights), or I8:
  /// the six linear weights of every block quantized to int8 per output channel (the patch
  /// projection and the classifier stay F32; see "int8" in docs/NUMERICS.md). Layer-norm parameters,
  /// biases and embeddings always stay F32.
  DType dtype = DType::kF32;
  /// Optional classifier head to merge: a safetensors file with `classifier.weight` [K, D] and
  /// `classifier.bias` [K]; its `__metadata__` "id2label" (JSON object) names the classes.
  std::string classifier;
  /// The linear weights' layout; kPanels needs dtype F32.
  WeightLayout layout = WeightLayout::kRows;
  /// Replace an existing output file.
  bool overwrite = false;
  /// Merge `classifier` even when its metadata records another backbone than the input's (a head
  /// trained on other features; see backbone_identity()).
  bool allow_other_backbone = false;
};

/// How a merged head's recorded backbone compares with the model's.
enum class HeadBackbone {
  kNoHead,      ///< no head was merged
  kSame,        ///< the head was trained on this backbone
  kUnrecorded,  ///< the head records no backbone (merged unchecked)
  kOther,       ///< another backbone, merged because ConvertOptions::allow_other_backbone
};

/// What convert_checkpoint() did.
struct ConvertReport {
  std::string weights_input;        ///< the checkpoint file read
  std::string config_source;        ///< where the config came from
  std::string preprocessor_source;  ///< where the preprocessor settings came from ("defaults" if none)
  std::size_t tensors = 0;          ///< tensors written
  std::size_t bytes = 0;            ///< bytes of tensor data written
  bool has_classifier = false;
  std::vector<std::string> dropped;  ///< tensors of the input that are not part of a ViT-MSN model
  std::string backbone;              ///< the backbone identity written to the output's metadata
  bool backbone_recorded = false;    ///< it was read from the input's metadata (else computed)
  HeadBackbone head_backbone = HeadBackbone::kNoHead;
  std::string head_backbone_recorded;  ///< the merged head's recorded backbone ("" when none)
  /// The input's own head, replaced by the merged one: its class names (empty when none was replaced;
  /// "LABEL_i" when the input's config names none).
  std::vector<std::string> replaced_labels;
  /// WeightLayout::kPanels: the panel width written (the micro-tile width of this CPU's kernels); else 0.
  int panel_width = 0;
};

/// Reads `input` — a model folder (model.safetensors, else pytorch_model.bin; config.json;
/// preprocessor_config.json), a `.bin` or a `.safetensors` file (config from its metadata or a
/// config.json beside it) — checks every tensor against the config, converts the dtype, merges a
/// classifier, and writes `output` atomically with `__metadata__` entries "config" and
/// "preprocessor_config" (JSON), so that the file alone is a complete model for Model::load(), and
/// kBackboneMetadataKey: the input's backbone identity (include/vitmsn/identity.hpp), carried over
/// from the input's metadata when it records one, else computed from its tensors.
/// A merged head whose metadata records another backbone is refused unless
/// `options.allow_other_backbone`.
/// \throws Error naming the file and the problem; `output` is then not created.
VITMSN_API ConvertReport convert_checkpoint(const std::string& input, const std::string& output,
                                            const ConvertOptions& options = {});

/// "rows" / "panels" → WeightLayout. \throws Error otherwise.
VITMSN_API WeightLayout parse_weight_layout(const std::string& name);

/// "f32" / "bf16" / "f16" / "int8" (also "float32", "bfloat16", "float16", "i8") → DType.
/// \throws Error otherwise.
VITMSN_API DType parse_weight_dtype(const std::string& name);

}  // namespace vitmsn
