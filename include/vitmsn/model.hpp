#pragma once
/// \file
/// The ViT-MSN encoder: load a checkpoint, extract features, classify.

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "vitmsn/config.hpp"
#include "vitmsn/export.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/tensor.hpp"

namespace vitmsn {

namespace detail {
struct ModelAccess;
}  // namespace detail

/// How the linear layers compute (LoadOptions::compute).
enum class Compute {
  /// bf16 where it pays: a model whose linear weights are all bfloat16 computes in bf16 when
  /// bf16_compute_pays() (measured: the CPU's bf16 dot product runs at least 1.5× its float32 FMA),
  /// and an int8 model runs attention's two products in bf16 there (its linear layers are int8);
  /// everything else in float32, exactly as Hugging Face.
  kAuto,
  /// float32 always (bf16/f16 weights widened, as Hugging Face runs them in float32; an int8 model's
  /// attention in float32).
  kF32,
  /// bf16 always: the linear layers' weights are rounded to bf16 once at load (bf16 files: kept as
  /// they are) and the activations to bf16 before each product, with float32 accumulation, and
  /// attention's two products on bf16 pairs; bias, GELU, residuals, layer norms, the softmax and the
  /// patch embedding stay float32 (docs/NUMERICS.md). On CPUs without AVX512_BF16 an exact emulation
  /// runs (slow: for tests). Not for int8 models.
  kBF16,
};

/// The Compute named `name`: "auto", "f32" or "bf16" (the programs' --compute, Python's compute=).
/// \throws Error (ErrorKind::kArgument) naming the allowed values and `name`.
VITMSN_API Compute parse_compute(const std::string& name);
/// The name parse_compute() reads: "auto", "f32" or "bf16".
VITMSN_API const char* to_string(Compute compute);

struct LoadOptions {
  /// Threads for each forward pass; 0 = the CPUs this process may use.
  int threads = 0;
  /// The arithmetic of the linear layers (see Compute). The default keeps float32 files exact.
  Compute compute = Compute::kAuto;
  /// Model::load: read the weights file into private memory (page-aligned, read-only) instead of
  /// memory-mapping it. Memory use grows by the file's size (copied_weight_bytes() counts it) and
  /// loading reads the whole file up front; in exchange nothing done to the file afterwards, a
  /// rewrite in place included, can affect the model. Without it (the default) the weights are a
  /// read-only map of the file: replacing the file by rename (mv, atomic writers) is safe, a rewrite
  /// in place (cp over it) is detected before each call, which then throws Error (see
  /// SafetensorsFile::check_unchanged()). Ignored by from_tensors().
  bool copy_weights = false;
};

/// Seconds spent per stage of the forward pass, accumulated over calls (for benchmarks).
struct StageTimes {
  double patch_embedding = 0;   ///< im2col + patch GEMM + position embeddings
  double layer_norm = 0;        ///< all layer norms, final one included
  double qkv = 0;               ///< query/key/value projections
  double attention = 0;         ///< scores, softmax, attention·V
  double attention_output = 0;  ///< output projection + residual
  double mlp = 0;               ///< fc1 + GELU + fc2 + residual
  double other = 0;             ///< copies of requested outputs, classifier, buffers
  double total() const { return patch_embedding + layer_norm + qkv + attention + attention_output + mlp + other; }
};

/// What extract_features() returns besides last_hidden_state.
struct FeatureOptions {
  /// Hidden states to return, by index as Hugging Face numbers them: 0 = embeddings output,
  /// i = output of layer i (1..L), before the final layer norm. Negative counts from the end (-1 = L).
  std::vector<int> hidden_states;
  /// Layers (0..L-1; negative from the end) whose CLS-query attention row to return.
  std::vector<int> cls_attention;
  /// Layers (0..L-1; negative from the end) whose whole attention map to return, as Hugging Face's
  /// output_attentions. Each is heads·N² floats per image (67 MB for ViT-L/7 at 224²; all 24 layers
  /// 1.6 GB): ask for the layers you need. The features do not change with it.
  std::vector<int> attentions;
  /// Threads for this call; 0 = the model's setting.
  int threads = 0;
  /// When set, the time of each stage is added to it. Not synchronised: one per calling thread.
  StageTimes* profile = nullptr;
};

/// The result of one image's forward pass.
struct Features {
  /// Final layer norm over all tokens, [tokens, hidden]; row 0 is CLS, then patches row-major.
  Matrix last_hidden_state;
  /// Requested hidden states by (non-negative) index, each [tokens, hidden].
  std::map<int, Matrix> hidden_states;
  /// Requested attention rows by (non-negative) layer: softmax(q_cls·Kᵀ·d^-½) per head, [heads, tokens].
  std::map<int, Matrix> cls_attention;
  /// Requested attention maps by (non-negative) layer: softmax(q·Kᵀ·d^-½) per head, [heads·N, N];
  /// row h·N + i is head h's query i (HF's attentions[l][0, h, i]). Row h·N is cls_attention's row h.
  std::map<int, Matrix> attentions;

  /// The CLS token's embedding: row 0 of last_hidden_state, [hidden].
  Vector cls() const { return last_hidden_state.row(0); }
  /// The mean over the patch tokens (rows 1..), [hidden].
  Vector mean_patch() const { return last_hidden_state.bottomRows(last_hidden_state.rows() - 1).colwise().mean(); }
};

/// A loaded ViT-MSN model. Immutable after load: every const method may be called from several
/// threads at once (each call uses its own activation buffers); copies share the weights.
class VITMSN_API Model {
 public:
  /// Loads a model folder (model.safetensors + config.json [+ preprocessor_config.json]) or a single
  /// .safetensors file (config from its `__metadata__` "config" entry, else config.json beside it).
  /// Float32 tensors are used in place from a read-only memory map (or from a private copy of the
  /// file, LoadOptions::copy_weights). Every call that reads the weights (extract_features, classify,
  /// logits) first checks, with one fstat(2), that the mapped file was not rewritten in place since
  /// (SafetensorsFile::check_unchanged()) and throws Error naming the file when it was.
  /// \throws Error naming the file and the problem (missing file or tensor, shape or config mismatch).
  static Model load(const std::string& path, const LoadOptions& options = {});

  /// A model over tensors held in memory (e.g. generated weights); names as in a checkpoint file.
  static Model from_tensors(const Config& config, std::vector<TensorData> tensors, const LoadOptions& options = {},
                            const PreprocessorConfig& preprocessor = {});

  const Config& config() const;
  bool has_classifier() const;
  /// Class names of the head (id2label), or "LABEL_i" when the config lists none; empty without a head.
  const std::vector<std::string>& labels() const;
  /// The preprocessor read from the model's preprocessor_config.json (or metadata), else defaults.
  const Preprocessor& preprocessor() const;
  /// Threads used when a call does not say.
  int threads() const;
  /// Where the weights came from (file path, or "<memory>").
  const std::string& source() const;
  /// Bytes of weights copied to memory at load: tensors widened to float32, plus the whole file with
  /// LoadOptions::copy_weights (0 when all were used in place from the memory map).
  std::size_t copied_weight_bytes() const;
  /// How the linear layers compute: "f32", "bf16" (LoadOptions::compute, decided at load) or "int8"
  /// (an int8 model).
  const char* compute() const;
  /// Bytes of the linear weights the model holds packed, prepared at load for its kernels: float32
  /// weights laid out as the GEMM reads them, or bf16 panels for bf16 compute. 0 where they are read
  /// as stored (int8 models, bf16/f16 weights computed in float32, the portable kernels). When every
  /// linear layer is packed from a memory-mapped file, the small tensors (embeddings, biases, norms,
  /// head: ~7 MB on ViT-L/7) are held as copies too and counted here, and the whole map is given back
  /// at load: a forward reads nothing from the file.
  std::size_t packed_weight_bytes() const;

  /// The main entry point: pixel values [3, H, W] (H, W multiples of patch_size; other sizes than
  /// image_size use bicubic-interpolated position embeddings as HF's interpolate_pos_encoding=True)
  /// → features. \throws Error on a wrong channel count, a size not a multiple of the patch size,
  /// an out-of-range layer index, or a weights file rewritten on disk since load (see load()).
  Features extract_features(const PixelValues& pixel_values, const FeatureOptions& options = {}) const;
  /// The same on pixel values in the caller's memory (PixelValuesView): read in place, not copied.
  /// The memory must stay valid and unchanged during the call. \throws Error as above.
  Features extract_features(const PixelValuesView& pixel_values, const FeatureOptions& options = {}) const;
  /// Preprocesses with preprocessor() then extract_features().
  Features extract_features(const Image& image, const FeatureOptions& options = {}) const;
  /// Loads the image file (read_image) then as above. \throws Error naming the file.
  Features extract_features(const std::string& image_path, const FeatureOptions& options = {}) const;
  /// A batch: images of the same size run together (one GEMM per weight for all of them).
  std::vector<Features> extract_features(const std::vector<PixelValues>& batch,
                                         const FeatureOptions& options = {}) const;
  /// A batch of views in the caller's memory (same grouping by size; nothing copied).
  std::vector<Features> extract_features(const std::vector<PixelValuesView>& batch,
                                         const FeatureOptions& options = {}) const;

  /// Classifier logits [num_labels]: the head applied to the CLS token after the final layer norm
  /// (ViTMSNForImageClassification). `options` as for extract_features(); its threads and profile
  /// apply, hidden states or attention rows it asks for are computed and dropped.
  /// \throws Error when the model has no classifier head (checked before any work), and as
  /// extract_features().
  Vector classify(const PixelValues& pixel_values, const FeatureOptions& options = {}) const;
  Vector classify(const Image& image, const FeatureOptions& options = {}) const;
  std::vector<Vector> classify(const std::vector<PixelValues>& batch, const FeatureOptions& options = {}) const;
  /// The head applied to features already computed: last_hidden_state row 0 · Wᵀ + b.
  /// \throws Error when the model has no classifier head or the width does not fit, or the weights
  /// file was rewritten on disk since load (see load()).
  Vector logits(const Features& features) const;

 private:
  struct Impl;
  friend struct detail::ModelAccess;  // internal views for tests (src/core/model.hpp)
  explicit Model(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
};

}  // namespace vitmsn
