// ViT-MSN forward, step by step as Hugging Face's modeling_vit_msn.py (eval mode, dropout = identity):
// embed_patches() ← ViTMSNEmbeddings.forward, encoder_layer() ← ViTMSNLayer.forward (attention_block()
// ← ViTMSNAttention, mlp_block() ← ViTMSNIntermediate + ViTMSNOutput), final_norm() ←
// ViTMSNModel.layernorm. The arithmetic of every step is the kernels' (src/cpu/), applied to
// activation buffers allocated once per call.
#include "vitmsn/model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <functional>
#include <vector>

#include "base/file_util.hpp"
#include "core/linear.hpp"
#include "core/model.hpp"
#include "core/model_files.hpp"
#include "core/ops.hpp"
#include "core/weights.hpp"
#include "cpu/buffer.hpp"
#include "cpu/kernels.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {

struct Model::Impl {
  std::string source;
  Config config;
  std::unique_ptr<SafetensorsFile> file;               // keeps the memory map alive (file-backed models)
  std::vector<TensorData> memory_tensors;              // tensor storage (in-memory models)
  std::unique_ptr<const detail::Weights> weights_ptr;  // Eigen maps are not assignable: built in place
  const detail::Weights& weights() const { return *weights_ptr; }
  std::vector<std::string> labels;
  Preprocessor preprocessor;
  int threads = 1;
  detail::Isa isa = detail::Isa::kPortable;
  std::vector<detail::LayerLinears> linears;  // per block: the linear layers as prepared for the forward
  const char* compute = "f32";                // "f32", "bf16" or "int8" (Model::compute())
  bool bf16_attention = false;                // attention's products on bf16 pairs (bf16 compute, int8 where it pays)

  /// Binds the weights (checking names, shapes and dtypes against the config), then threads, kernels
  /// and labels.
  /// panel_width: the file's (detail::panel_width of its metadata), 0 for weights [out, in].
  void bind(const detail::TensorLookup& lookup, const LoadOptions& options, int panel_width = 0);
  /// Before a call reads the weights: throws when the memory-mapped file was rewritten in place since
  /// load (one fstat; nothing for in-memory models and private copies).
  void check_file() const {
    if (file) file->check_unchanged();
  }
  /// The file a forward checks first: null for in-memory models and private copies.
  const SafetensorsFile* mapped_file() const { return file && !file->is_copy() ? file.get() : nullptr; }
};

namespace detail {

const Weights& ModelAccess::weights(const Model& model) { return model.impl_->weights(); }
const SafetensorsFile* ModelAccess::file(const Model& model) { return model.impl_->file.get(); }
void ModelAccess::set_int8_scheme(Model& model, const int8::Scheme& scheme) {
  // The prepared layers are the model's own state; a test hook may change how they compute.
  auto& linears = const_cast<Model::Impl&>(*model.impl_).linears;
  for (LayerLinears& l : linears)
    for (Linear* op : {&l.qkv, &l.attention_output, &l.intermediate, &l.output}) op->set_int8_scheme(scheme);
}

}  // namespace detail

namespace {

using detail::Epilogue;
using detail::Isa;
using detail::LayerLinears;
using detail::LayerWeights;
using detail::Weights;
using Clock = std::chrono::steady_clock;

// Adds the time since `start` to `slot` (when profiling) and restarts the clock.
struct Stopwatch {
  StageTimes* times;
  Clock::time_point start = Clock::now();
  void lap(double StageTimes::*slot) {
    if (!times) return;
    const auto now = Clock::now();
    times->*slot += std::chrono::duration<double>(now - start).count();
    start = now;
  }
};

// The sizes of one forward call: B images of H×W pixels, N = (H/P)·(W/P) + 1 tokens each, stored one
// image after the other (row b·N + t is token t of image b).
struct Shape {
  int B, H, W;
  int P, D, F, L, heads, hd;    // patch, hidden, MLP width, layers, heads, head dim
  int gh, gw, patches, N, CPP;  // patch grid, patches, tokens, values per patch (C·P·P)
  std::ptrdiff_t rows;          // B·N
};

Shape shape_of(const Config& c, int images, int height, int width) {
  Shape s;
  s.B = images;
  s.H = height;
  s.W = width;
  s.P = c.patch_size;
  s.D = c.hidden_size;
  s.F = c.intermediate_size;
  s.L = c.num_hidden_layers;
  s.heads = c.num_attention_heads;
  s.hd = c.head_dim();
  s.gh = height / s.P;
  s.gw = width / s.P;
  s.patches = s.gh * s.gw;
  s.N = s.patches + 1;
  s.CPP = c.num_channels * s.P * s.P;
  s.rows = static_cast<std::ptrdiff_t>(s.B) * s.N;
  return s;
}

// Where one image's attention probabilities of a layer go (null: not asked for).
struct KeepAttention {
  Matrix* cls = nullptr;   // [heads, N]: each head's CLS-query row
  Matrix* full = nullptr;  // [heads·N, N]: each head's whole map, rows h·N + query
};

// The activation buffers of one call, allocated once and reused by every layer.
struct Activations {
  detail::FloatBuffer x;        // [B·N, D]   the residual stream (hidden_states)
  detail::FloatBuffer h;        // [B·N, D]   layer-norm output; also the attention context (ctx)
  detail::FloatBuffer qkv;      // [N, 3D] per image, q | k | v side by side, images one after the other
  detail::FloatBuffer mlp;      // [B·N, F]   MLP hidden; before the layers, the im2col patches
  std::vector<float> qkv_bias;  // [3D] the query, key and value biases side by side

  explicit Activations(const Shape& s)
      : x(s.rows * s.D),
        h(s.rows * s.D),
        qkv(s.rows * 3 * s.D),
        mlp(std::max<std::ptrdiff_t>(s.rows * s.F, static_cast<std::ptrdiff_t>(s.B) * s.patches * s.CPP)),
        qkv_bias(3 * s.D) {}
};

int resolve_index(int index, int count, const char* what) {
  const int i = index < 0 ? index + count : index;
  if (i < 0 || i >= count)
    throw Error(ErrorKind::kArgument, std::string(what) + " index " + std::to_string(index) + " is out of range (" +
                                          std::to_string(count) + " available)");
  return i;
}

template <class Pixels>
void check_pixels(const Config& c, const Pixels& px) {
  const auto C = px.dimension(0), H = px.dimension(1), W = px.dimension(2);
  if (C != c.num_channels)
    throw Error(ErrorKind::kArgument, "pixel values have " + std::to_string(C) + " channels, the model expects " +
                                          std::to_string(c.num_channels) + " ([C,H,W] channel-first)");
  if (H < c.patch_size || W < c.patch_size || H % c.patch_size || W % c.patch_size)
    throw Error(ErrorKind::kArgument, "pixel values of size " + std::to_string(H) + "x" + std::to_string(W) +
                                          ": height and width must be positive multiples of the patch size " +
                                          std::to_string(c.patch_size));
  // Attention memory and time grow with tokens²; refuse sizes no ViT-MSN use needs before allocating.
  const long long tokens = static_cast<long long>(H / c.patch_size) * (W / c.patch_size) + 1;
  if (tokens > kMaxInputTokens)
    throw Error(ErrorKind::kLimit, "pixel values of size " + std::to_string(H) + "x" + std::to_string(W) + " make " +
                                       std::to_string(tokens) + " tokens, more than the limit of " +
                                       std::to_string(kMaxInputTokens));
}

// ViTMSNEmbeddings.interpolate_pos_encoding: the position embeddings for a gh×gw grid — as stored at
// the trained size, else the (S/P)² grid bicubic-resized to gh×gw (F.interpolate, mode="bicubic",
// align_corners=False), the CLS row unchanged. Returns the [N, D] rows (stored, or in `resized`).
const float* position_embeddings(const Config& c, const Weights& w, const Shape& s, std::vector<float>& resized) {
  const int g0 = c.grid_size();
  const float* pos = w.position_embeddings.data();
  if (s.gh == g0 && s.gw == g0) return pos;
  resized.resize(static_cast<std::size_t>(s.N) * s.D);
  std::memcpy(resized.data(), pos, sizeof(float) * s.D);  // class_pos_embed
  detail::interpolate_bicubic(pos + s.D, g0, g0, s.D, s.gh, s.gw, resized.data() + s.D);
  return resized.data();
}

// ViTMSNEmbeddings.forward, per image:
//   embeddings = self.patch_embeddings(pixel_values)     # Conv2d(stride P) → flatten(2).transpose(1, 2)
//   embeddings = torch.cat((cls_tokens, embeddings), dim=1)
//   embeddings = embeddings + position_embeddings        # [N, D]
// The convolution is im2col + one GEMM whose epilogue adds the conv bias and the position embeddings.
void embed_patches(Isa isa, const Config& c, const Weights& w, const Shape& s, const std::vector<const float*>& images,
                   const float* pos, Activations& a, int threads) {
  for (int b = 0; b < s.B; ++b) {
    float* patch_rows = a.mlp.data() + static_cast<std::ptrdiff_t>(b) * s.patches * s.CPP;
    detail::extract_patches(images[b], c.num_channels, s.H, s.W, s.P, patch_rows);
    float* xb = a.x.data() + static_cast<std::ptrdiff_t>(b) * s.N * s.D;
    for (int d = 0; d < s.D; ++d) xb[d] = w.cls_token[d] + pos[d];  // CLS row: cls_token + its position
    Epilogue ep;
    ep.bias = w.patch_bias.data();  // projection.bias
    ep.residual = pos + s.D;        // + position_embeddings of the patches
    ep.ldr = s.D;
    detail::gemm(isa, s.patches, s.D, s.CPP, patch_rows, s.CPP, w.patch_weight.data(), s.CPP, true, xb + s.D, s.D, ep,
                 threads);
  }
}

// ViTMSNLayer.forward, first half:
//   hidden_states_norm = self.layernorm_before(hidden_states)
//   attention_output = self.attention(hidden_states_norm)   # ViTMSNSelfAttention + ViTMSNSelfOutput.dense
//   hidden_states = attention_output + hidden_states        # first residual connection
// ViTMSNSelfAttention: q, k, v = query/key/value(h) split into heads; eager_attention_forward:
// softmax(q·kᵀ · head_dim^-½) · v, heads concatenated (context_layer).
// `keep[b]` says where image b's attention probabilities go, if anywhere.
void attention_block(Isa isa, const Config& c, const LayerWeights& lw, const LayerLinears& ll, const Shape& s,
                     Activations& a, const std::vector<KeepAttention>& keep, bool bf16, Stopwatch& sw, int threads) {
  const int D = s.D, N = s.N;
  detail::layer_norm(isa, a.x.data(), D, a.h.data(), D, static_cast<int>(s.rows), D, lw.layernorm_before_weight.data(),
                     lw.layernorm_before_bias.data(), static_cast<float>(c.layer_norm_eps), threads);
  sw.lap(&StageTimes::layer_norm);
  // Per image: q | k | v = h·Wqᵀ + bq | h·Wkᵀ + bk | h·Wvᵀ + bv side by side in qkv [N, 3D], then
  // ctx = concat_heads(softmax(q·kᵀ·d^-½)·v). Image by image so that attention reads q, k, v while
  // they are still in cache (a batched projection would have evicted the first images' by then).
  // ctx shares h's buffer: image b's ctx rows overwrite only h rows already projected.
  float* ctx = a.h.data();
  const std::ptrdiff_t ld3 = 3 * static_cast<std::ptrdiff_t>(D);
  // The three projections run as one GEMM over the stacked [3D, D] weight (the layer-norm output is
  // packed once); their biases side by side in qkv_bias.
  const detail::ConstVectorMap* bias[3] = {&lw.query_bias, &lw.key_bias, &lw.value_bias};
  const bool has_bias = bias[0]->size() > 0;
  for (int j = 0; j < 3 && has_bias; ++j)
    std::copy(bias[j]->data(), bias[j]->data() + D, a.qkv_bias.begin() + static_cast<std::ptrdiff_t>(j) * D);
  for (int b = 0; b < s.B; ++b) {
    const std::ptrdiff_t r0 = static_cast<std::ptrdiff_t>(b) * N;
    Epilogue ep;
    ep.bias = has_bias ? a.qkv_bias.data() : nullptr;  // qkv_bias
    ll.qkv.apply(N, a.h.data() + r0 * D, D, a.qkv.data() + r0 * ld3, ld3, ep, threads);
    sw.lap(&StageTimes::qkv);
    // The probabilities asked for: the whole map [heads·N, N] straight into the output, or the CLS
    // rows alone [heads, N] (row 0 of each head's map: the same values either way).
    const KeepAttention& k = keep[b];
    float* probs = nullptr;
    int prob_rows = 0;
    if (k.full) {
      k.full->resize(static_cast<Eigen::Index>(s.heads) * N, N);
      probs = k.full->data();
      prob_rows = N;
    } else if (k.cls) {
      k.cls->resize(s.heads, N);
      probs = k.cls->data();
      prob_rows = 1;
    }
    detail::attention(isa, a.qkv.data() + r0 * ld3, ld3, 1, N, s.heads, s.hd,
                      1.0f / std::sqrt(static_cast<float>(s.hd)), ctx + r0 * D, D, probs, prob_rows, bf16, threads);
    if (k.full && k.cls) {
      k.cls->resize(s.heads, N);
      for (int h = 0; h < s.heads; ++h) k.cls->row(h) = k.full->row(static_cast<Eigen::Index>(h) * N);
    }
    sw.lap(&StageTimes::attention);
  }
  // ViTMSNSelfOutput.dense, then the first residual: x = x + ctx·Woᵀ + bo
  Epilogue ep;
  ep.bias = lw.attention_output_bias.data();
  ep.residual = a.x.data();
  ep.ldr = D;
  ll.attention_output.apply(static_cast<int>(s.rows), ctx, D, a.x.data(), D, ep, threads);
  sw.lap(&StageTimes::attention_output);
}

// ViTMSNLayer.forward, second half:
//   layer_output = self.layernorm_after(hidden_states)
//   layer_output = self.intermediate(layer_output)          # dense + gelu (exact erf)
//   layer_output = self.output(layer_output, hidden_states) # dense + second residual connection
void mlp_block(Isa isa, const Config& c, const LayerWeights& lw, const LayerLinears& ll, const Shape& s, Activations& a,
               Stopwatch& sw, int threads) {
  const int D = s.D;
  detail::layer_norm(isa, a.x.data(), D, a.h.data(), D, static_cast<int>(s.rows), D, lw.layernorm_after_weight.data(),
                     lw.layernorm_after_bias.data(), static_cast<float>(c.layer_norm_eps), threads);
  sw.lap(&StageTimes::layer_norm);
  // x = x + gelu(h·W1ᵀ + b1)·W2ᵀ + b2
  Epilogue ep1;
  ep1.bias = lw.intermediate_bias.data();
  ep1.gelu = true;
  Epilogue ep2;
  ep2.bias = lw.output_bias.data();
  ep2.residual = a.x.data();
  ep2.ldr = D;
  const int M = static_cast<int>(s.rows);
  ll.intermediate.apply(M, a.h.data(), D, a.mlp.data(), s.F, ep1, threads);
  ll.output.apply(M, a.mlp.data(), s.F, a.x.data(), D, ep2, threads);
  sw.lap(&StageTimes::mlp);
}

// ViTMSNLayer.forward: the attention block, then the MLP block, both pre-norm with residuals.
void encoder_layer(Isa isa, const Config& c, const LayerWeights& lw, const LayerLinears& ll, const Shape& s,
                   Activations& a, const std::vector<KeepAttention>& keep, bool bf16_attention, Stopwatch& sw,
                   int threads) {
  attention_block(isa, c, lw, ll, s, a, keep, bf16_attention, sw, threads);
  mlp_block(isa, c, lw, ll, s, a, sw, threads);
}

// ViTMSNModel.forward: sequence_output = self.layernorm(sequence_output) — all N tokens, no pooler.
void final_norm(Isa isa, const Config& c, const Weights& w, const Shape& s, const Activations& a,
                std::vector<Features>& out, int threads) {
  for (int b = 0; b < s.B; ++b) {
    out[b].last_hidden_state.resize(s.N, s.D);
    detail::layer_norm(isa, a.x.data() + static_cast<std::ptrdiff_t>(b) * s.N * s.D, s.D,
                       out[b].last_hidden_state.data(), s.D, s.N, s.D, w.layernorm_weight.data(),
                       w.layernorm_bias.data(), static_cast<float>(c.layer_norm_eps), threads);
  }
}

// ViTMSNModel.forward for images of one size, run together: GEMMs over all B·N rows, attention per
// image. hidden_states[0] is the embeddings output, hidden_states[l + 1] layer l's output (before the
// final layer norm), as HF's output_hidden_states.
// images: B images of height × width, [C, H, W] float32 each (already checked by check_pixels).
// linears: each block's linear layers, prepared at load.
void forward(Isa isa, const Config& c, const Weights& w, const std::vector<LayerLinears>& linears, int model_threads,
             bool bf16_attention, const std::vector<const float*>& images, int height, int width,
             const FeatureOptions& opt, std::vector<Features>& out) {
  const int threads = opt.threads > 0 ? opt.threads : model_threads;
  const Shape s = shape_of(c, static_cast<int>(images.size()), height, width);
  std::vector<int> want_hidden, want_cls, want_maps;
  for (int i : opt.hidden_states) want_hidden.push_back(resolve_index(i, s.L + 1, "hidden state"));
  for (int i : opt.cls_attention) want_cls.push_back(resolve_index(i, s.L, "attention layer"));
  for (int i : opt.attentions) want_maps.push_back(resolve_index(i, s.L, "attention layer"));
  auto wants = [](const std::vector<int>& v, int i) { return std::find(v.begin(), v.end(), i) != v.end(); };

  Stopwatch sw{opt.profile};
  Activations a(s);
  std::vector<float> pos_resized;
  const float* pos = position_embeddings(c, w, s, pos_resized);
  sw.lap(&StageTimes::other);

  embed_patches(isa, c, w, s, images, pos, a, threads);
  sw.lap(&StageTimes::patch_embedding);

  auto capture_hidden = [&](int index) {
    if (!wants(want_hidden, index)) return;
    for (int b = 0; b < s.B; ++b)
      out[b].hidden_states[index] =
          Eigen::Map<const Matrix>(a.x.data() + static_cast<std::ptrdiff_t>(b) * s.N * s.D, s.N, s.D);
    sw.lap(&StageTimes::other);
  };
  capture_hidden(0);
  for (int l = 0; l < s.L; ++l) {
    std::vector<KeepAttention> keep(s.B);
    for (int b = 0; b < s.B; ++b) {
      if (wants(want_cls, l)) keep[b].cls = &out[b].cls_attention[l];
      if (wants(want_maps, l)) keep[b].full = &out[b].attentions[l];
    }
    encoder_layer(isa, c, w.layers[l], linears[l], s, a, keep, bf16_attention, sw, threads);
    capture_hidden(l + 1);
  }
  final_norm(isa, c, w, s, a, out, threads);
  sw.lap(&StageTimes::layer_norm);
}

// The error for head-only calls on a model without one.
[[noreturn]] void no_classifier(const std::string& source) {
  throw Error(ErrorKind::kUnsupported, source +
                                           ": this model has no classifier head (a ViTMSNModel checkpoint); "
                                           "use extract_features(), or add a head (classifier.weight/classifier.bias)");
}

}  // namespace

void Model::Impl::bind(const detail::TensorLookup& lookup, const LoadOptions& options, int panel_width) {
  weights_ptr =
      std::make_unique<const detail::Weights>(detail::bind_weights(config, lookup, source, false, panel_width));
  threads = options.threads > 0 ? options.threads : default_threads();
  isa = detail::detected_isa();
  (void)detail::gemm_blocking(isa);  // a malformed VITMSN_GEMM_BLOCKING fails here, at load
  // The arithmetic of the linear layers (LoadOptions::compute): bf16 packs their weights once here.
  bool all_bf16 = !weights().layers.empty(), any_int8 = false;
  for (const auto& l : weights().layers)
    for (const detail::LinearWeight* w :
         {&l.query, &l.key, &l.value, &l.attention_output, &l.intermediate, &l.output}) {
      all_bf16 = all_bf16 && w->dtype == DType::kBF16;
      any_int8 = any_int8 || w->dtype == DType::kI8;
    }
  const bool use_bf16 = options.compute == Compute::kBF16 ||
                        (options.compute == Compute::kAuto && all_bf16 && detail::bf16_compute_pays());
  if (use_bf16 && any_int8)
    throw Error(ErrorKind::kUnsupported, source +
                                             ": an int8 model computes in int8; bf16 compute is for float32, bf16 "
                                             "and f16 weights (load it with compute f32 or auto)");
  compute = use_bf16 ? "bf16" : any_int8 ? "int8" : "f32";
  // Attention's products in bf16: with bf16 compute, and for an int8 model (compute auto) where the
  // CPU's bf16 dot product pays — its linear layers are int8 already; --compute f32 keeps float32.
  bf16_attention = use_bf16 || (any_int8 && options.compute == Compute::kAuto && detail::bf16_compute_pays());
  // Each linear layer prepared once for its kernel (src/core/linear.hpp): float32 weights laid out in the
  // GEMM's panels, or bf16 panels for bf16 compute. Layer by layer, the stored weights that were copied
  // are given back: a private, read-only file map drops the pages (they would be read again from the
  // file, but are not read again), so resident memory peaks at the packed weights plus one layer. Not
  // for private copies (copy_weights), in-memory models or tensors copied at load, whose memory is the
  // only copy.
  const bool mapped = file && !file->is_copy();
  const auto owned = [this](const void* p) {
    for (const auto& o : weights().owned)
      if (o.get() == p) return true;
    return false;
  };
  std::function<void(const detail::LinearWeight&)> release;
  if (mapped)
    release = [owned](const detail::LinearWeight& w) {
      if (!owned(w.data)) detail::release_pages(w.data, w.stored_bytes());
    };
  const auto mode = use_bf16 ? detail::LinearCompute::kBF16 : detail::LinearCompute::kF32;
  for (const auto& l : weights().layers) {
    detail::LayerLinears ll;
    ll.qkv = detail::Linear::prepare(isa, {&l.query, &l.key, &l.value}, mode, threads, release);
    ll.attention_output = detail::Linear::prepare(isa, {&l.attention_output}, mode, threads, release);
    ll.intermediate = detail::Linear::prepare(isa, {&l.intermediate}, mode, threads, release);
    ll.output = detail::Linear::prepare(isa, {&l.output}, mode, threads, release);
    linears.push_back(std::move(ll));
  }
  // When every linear layer holds its packed weights, the rest (embeddings, biases, norms, head: ~7 MB
  // on ViT-L/7) is bound again as copies and the whole map is given back: a forward then reads nothing
  // from the file. (Where the page cache keeps the file in 2 MB pages, a bias read in place would map
  // the 2 MB around it: 240 MB of file pages resident after one ViT-L forward.)
  bool all_held = mapped;
  for (const auto& ll : linears)
    for (const detail::Linear* l : {&ll.qkv, &ll.attention_output, &ll.intermediate, &ll.output})
      all_held = all_held && l->holds_its_weights();
  if (all_held) {
    weights_ptr =
        std::make_unique<const detail::Weights>(detail::bind_weights(config, lookup, source, true, panel_width));
    const std::uint8_t *begin = nullptr, *end = nullptr;
    for (const std::string& name : file->names()) {
      const TensorView& t = file->get(name);
      if (!begin || t.data < begin) begin = t.data;
      if (!end || t.data + t.nbytes > end) end = t.data + t.nbytes;
    }
    if (begin) detail::release_pages(begin, static_cast<std::size_t>(end - begin));
  }
  if (weights().has_classifier()) {
    const auto n = static_cast<std::size_t>(weights().classifier_weight.rows());
    if (config.id2label.size() == n) {
      labels = config.id2label;
    } else {
      for (std::size_t i = 0; i < n; ++i) labels.push_back("LABEL_" + std::to_string(i));
    }
  }
}

Compute parse_compute(const std::string& name) {
  if (name == "auto") return Compute::kAuto;
  if (name == "f32") return Compute::kF32;
  if (name == "bf16") return Compute::kBF16;
  throw Error(ErrorKind::kArgument, "compute must be 'auto', 'f32' or 'bf16', got '" + name + "'");
}

const char* to_string(Compute compute) {
  switch (compute) {
    case Compute::kAuto:
      return "auto";
    case Compute::kF32:
      return "f32";
    case Compute::kBF16:
      return "bf16";
  }
  return "auto";  // not reached: every enumerator is named above
}

Model::Model(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Model Model::load(const std::string& path, const LoadOptions& options) {
  detail::ModelFiles files = detail::resolve_model_files(path, detail::Checkpoints::kSafetensors,
                                                         options.copy_weights ? FileAccess::kCopy : FileAccess::kMap);
  auto impl = std::make_shared<Impl>();
  impl->source = files.weights;
  impl->file = std::move(files.file);
  impl->config = std::move(files.config);
  impl->preprocessor = Preprocessor(files.preprocessor);
  const SafetensorsFile* file = impl->file.get();
  const bool quantized = !detail::quantization_scheme(file->metadata(), impl->source).empty();
  const int panel_width = detail::panel_width(file->metadata(), impl->source);
  impl->bind([file](const std::string& name) { return file->find(name); }, options, panel_width);
  if (!quantized && detail::has_int8_weights(impl->weights()))
    throw Error(ErrorKind::kMalformed,
                impl->source + ": has int8 weights but no __metadata__ \"quantization\" naming their scheme");
  return Model(impl);
}

Model Model::from_tensors(const Config& config, std::vector<TensorData> tensors, const LoadOptions& options,
                          const PreprocessorConfig& preprocessor) {
  auto impl = std::make_shared<Impl>();
  impl->source = "<memory>";
  impl->config = config;
  impl->preprocessor = Preprocessor(preprocessor);
  impl->memory_tensors = std::move(tensors);
  auto views = std::make_shared<std::map<std::string, TensorView>>();
  for (const auto& t : impl->memory_tensors) {
    TensorView v = t.view();
    if (v.numel() * static_cast<std::int64_t>(dtype_size(v.dtype)) != static_cast<std::int64_t>(v.nbytes))
      throw Error(ErrorKind::kArgument, "<memory>: tensor '" + t.name + "' has " + std::to_string(v.nbytes) +
                                            " bytes for shape " + v.shape_string());
    (*views)[t.name] = std::move(v);
  }
  impl->bind(
      [views](const std::string& name) -> const TensorView* {
        auto it = views->find(name);
        return it == views->end() ? nullptr : &it->second;
      },
      options);
  return Model(impl);
}

const Config& Model::config() const { return impl_->config; }
bool Model::has_classifier() const { return impl_->weights().has_classifier(); }
const std::vector<std::string>& Model::labels() const { return impl_->labels; }
const Preprocessor& Model::preprocessor() const { return impl_->preprocessor; }
int Model::threads() const { return impl_->threads; }
const std::string& Model::source() const { return impl_->source; }
const char* Model::compute() const { return impl_->compute; }
std::size_t Model::packed_weight_bytes() const {
  std::size_t n = 0;
  for (const auto& l : impl_->linears)
    n += l.qkv.packed_bytes() + l.attention_output.packed_bytes() + l.intermediate.packed_bytes() +
         l.output.packed_bytes();
  return n + impl_->weights().held_bytes;
}
std::size_t Model::copied_weight_bytes() const {
  const SafetensorsFile* file = impl_->file.get();
  return impl_->weights().owned_bytes + (file && file->is_copy() ? file->file_size() : 0);
}

namespace {

// What a forward needs of a Model (its Impl is private to Model's members).
struct Runner {
  Isa isa;
  const Config& config;
  const Weights& weights;
  int threads;
  const SafetensorsFile* file;               // the weights' file when memory-mapped, checked before each forward
  const std::vector<LayerLinears>& linears;  // each block's linear layers as prepared at load
  bool bf16_attention;                       // bf16 compute: attention's products on bf16 pairs too

  // What a forward needs of a loaded model (Model::Impl), listed once for every entry point.
  template <class ModelImpl>
  explicit Runner(const ModelImpl& m)
      : isa(m.isa),
        config(m.config),
        weights(m.weights()),
        threads(m.threads),
        file(m.mapped_file()),
        linears(m.linears),
        bf16_attention(m.bf16_attention) {}
};

// Before a forward reads the weights: a memory-mapped file rewritten in place since load throws here
// instead of faulting (SIGBUS) or computing with other weights.
void check_file(const Runner& m) {
  if (m.file) m.file->check_unchanged();
}

// Runs a batch of images (PixelValues or PixelValuesView) grouped by size: each group is one forward.
template <class Pixels>
std::vector<Features> extract_batch(const Runner& m, const std::vector<Pixels>& batch, const FeatureOptions& options) {
  std::vector<Features> out(batch.size());
  for (const auto& px : batch) check_pixels(m.config, px);
  std::vector<bool> done(batch.size(), false);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (done[i]) continue;
    std::vector<const float*> group;
    std::vector<std::size_t> index;
    for (std::size_t j = i; j < batch.size(); ++j)
      if (!done[j] && batch[j].dimension(1) == batch[i].dimension(1) &&
          batch[j].dimension(2) == batch[i].dimension(2)) {
        group.push_back(batch[j].data());
        index.push_back(j);
        done[j] = true;
      }
    std::vector<Features> part(group.size());
    check_file(m);
    forward(m.isa, m.config, m.weights, m.linears, m.threads, m.bf16_attention, group,
            static_cast<int>(batch[i].dimension(1)), static_cast<int>(batch[i].dimension(2)), options, part);
    for (std::size_t k = 0; k < index.size(); ++k) out[index[k]] = std::move(part[k]);
  }
  return out;
}

template <class Pixels>
Features extract_one(const Runner& m, const Pixels& px, const FeatureOptions& options) {
  check_pixels(m.config, px);
  std::vector<Features> out(1);
  check_file(m);
  forward(m.isa, m.config, m.weights, m.linears, m.threads, m.bf16_attention, {px.data()},
          static_cast<int>(px.dimension(1)), static_cast<int>(px.dimension(2)), options, out);
  return std::move(out[0]);
}

// The classifier head on features already computed (the caller checked the head and the file).
Vector head_logits(const detail::Weights& w, const Features& features) {
  if (features.last_hidden_state.cols() != w.classifier_weight.cols() || features.last_hidden_state.rows() < 1)
    throw Error(ErrorKind::kArgument, "features of width " + std::to_string(features.last_hidden_state.cols()) +
                                          " do not fit the classifier of width " +
                                          std::to_string(w.classifier_weight.cols()));
  // ViTMSNForImageClassification: logits = self.classifier(sequence_output[:, 0, :]), the CLS token
  // after the final layer norm: last_hidden_state[0]·Wcᵀ + bc.
  Vector out(w.classifier_weight.rows());
  for (Eigen::Index j = 0; j < w.classifier_weight.rows(); ++j) {
    float acc = 0.0f;
    for (Eigen::Index k = 0; k < w.classifier_weight.cols(); ++k)
      acc += features.last_hidden_state(0, k) * w.classifier_weight(j, k);
    out[j] = acc + w.classifier_bias[j];
  }
  return out;
}

}  // namespace

std::vector<Features> Model::extract_features(const std::vector<PixelValues>& batch,
                                              const FeatureOptions& options) const {
  return extract_batch(Runner(*impl_), batch, options);
}

std::vector<Features> Model::extract_features(const std::vector<PixelValuesView>& batch,
                                              const FeatureOptions& options) const {
  return extract_batch(Runner(*impl_), batch, options);
}

Features Model::extract_features(const PixelValues& pixel_values, const FeatureOptions& options) const {
  return extract_one(Runner(*impl_), pixel_values, options);
}

Features Model::extract_features(const PixelValuesView& pixel_values, const FeatureOptions& options) const {
  return extract_one(Runner(*impl_), pixel_values, options);
}

Features Model::extract_features(const Image& image, const FeatureOptions& options) const {
  return extract_features(impl_->preprocessor(image), options);
}

Features Model::extract_features(const std::string& image_path, const FeatureOptions& options) const {
  return extract_features(read_image(image_path), options);
}

Vector Model::logits(const Features& features) const {
  if (!has_classifier()) no_classifier(impl_->source);
  impl_->check_file();
  return head_logits(impl_->weights(), features);
}

Vector Model::classify(const PixelValues& pixel_values, const FeatureOptions& options) const {
  if (!has_classifier()) no_classifier(impl_->source);  // before any work
  // extract_features checks the file; the head is read right after it.
  return head_logits(impl_->weights(), extract_features(pixel_values, options));
}

Vector Model::classify(const Image& image, const FeatureOptions& options) const {
  if (!has_classifier()) no_classifier(impl_->source);
  return classify(impl_->preprocessor(image), options);
}

std::vector<Vector> Model::classify(const std::vector<PixelValues>& batch, const FeatureOptions& options) const {
  if (!has_classifier()) no_classifier(impl_->source);
  std::vector<Vector> out;
  for (const auto& f : extract_features(batch, options)) out.push_back(head_logits(impl_->weights(), f));
  return out;
}

}  // namespace vitmsn
