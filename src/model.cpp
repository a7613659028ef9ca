// ViT-MSN forward, step by step as Hugging Face's modeling_vit_msn.py (eval mode, dropout = identity).
#include "vitmsn/model.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <thread>

#include "cpu/kernels.hpp"
#include "file_util.hpp"
#include "ops.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/weights.hpp"

namespace vitmsn {

struct Model::Impl {
  std::string source;
  Config config;
  std::unique_ptr<SafetensorsFile> file;       // keeps the memory map alive (file-backed models)
  std::vector<TensorData> memory_tensors;      // tensor storage (in-memory models)
  std::unique_ptr<const Weights> weights_ptr;  // Eigen maps are not assignable: built in place
  const Weights& weights() const { return *weights_ptr; }
  std::vector<std::string> labels;
  Preprocessor preprocessor;
  int threads = 1;
  detail::Isa isa = detail::Isa::kPortable;
};

namespace {

using Clock = std::chrono::steady_clock;

// Largest token count accepted (e.g. 1792x1792 at patch 7): 16 GB of activations at ViT-L width.
constexpr long long kMaxTokens = 65537;

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

// y[M, out] = epilogue(x[M, in]·Wᵀ) for a weight stored as float32, bf16 or f16.
void linear(detail::Isa isa, int M, const float* x, std::ptrdiff_t ldx, const LinearWeight& w, float* y,
            std::ptrdiff_t ldy, const detail::Epilogue& ep, int threads) {
  const auto type = w.storage == WeightStorage::kBF16  ? detail::WeightType::kBF16
                    : w.storage == WeightStorage::kF16 ? detail::WeightType::kF16
                                                       : detail::WeightType::kF32;
  detail::gemm_weights(isa, M, static_cast<int>(w.rows), static_cast<int>(w.cols), x, ldx, w.data, type, w.cols, y, ldy,
                       ep, threads);
}

int resolve_index(int index, int count, const char* what) {
  const int i = index < 0 ? index + count : index;
  if (i < 0 || i >= count)
    throw Error(std::string(what) + " index " + std::to_string(index) + " is out of range (" + std::to_string(count) +
                " available)");
  return i;
}

void check_pixels(const Config& c, const PixelValues& px) {
  const auto C = px.dimension(0), H = px.dimension(1), W = px.dimension(2);
  if (C != c.num_channels)
    throw Error("pixel values have " + std::to_string(C) + " channels, the model expects " +
                std::to_string(c.num_channels) + " ([C,H,W] channel-first)");
  if (H < c.patch_size || W < c.patch_size || H % c.patch_size || W % c.patch_size)
    throw Error("pixel values of size " + std::to_string(H) + "x" + std::to_string(W) +
                ": height and width must be positive multiples of the patch size " + std::to_string(c.patch_size));
  // Attention memory and time grow with tokens²; refuse sizes no ViT-MSN use needs before allocating.
  const long long tokens = static_cast<long long>(H / c.patch_size) * (W / c.patch_size) + 1;
  if (tokens > kMaxTokens)
    throw Error("pixel values of size " + std::to_string(H) + "x" + std::to_string(W) + " make " +
                std::to_string(tokens) + " tokens, more than the limit of " + std::to_string(kMaxTokens));
}

// Runs images of one size together: GEMMs over all B·N rows, attention per image.
void forward(const Model::Impl& m, const std::vector<const PixelValues*>& images, const FeatureOptions& opt,
             std::vector<Features>& out) {
  const Config& c = m.config;
  const Weights& w = m.weights();
  const detail::Isa isa = m.isa;
  const int threads = opt.threads > 0 ? opt.threads : m.threads;
  const int B = static_cast<int>(images.size());
  const int H = static_cast<int>(images[0]->dimension(1)), W = static_cast<int>(images[0]->dimension(2));
  const int P = c.patch_size, D = c.hidden_size, F = c.intermediate_size, L = c.num_hidden_layers;
  const int heads = c.num_attention_heads, hd = c.head_dim();
  const int gh = H / P, gw = W / P, patches = gh * gw, N = patches + 1, CPP = c.num_channels * P * P;
  const std::ptrdiff_t rows = static_cast<std::ptrdiff_t>(B) * N;
  const float eps = static_cast<float>(c.layer_norm_eps);

  std::vector<int> want_hidden, want_attn;
  for (int i : opt.hidden_states) want_hidden.push_back(resolve_index(i, L + 1, "hidden state"));
  for (int i : opt.cls_attention) want_attn.push_back(resolve_index(i, L, "attention layer"));
  auto wants = [](const std::vector<int>& v, int i) { return std::find(v.begin(), v.end(), i) != v.end(); };

  Stopwatch sw{opt.profile};
  // Activation buffers, allocated once per call and reused by every layer.
  std::vector<float> x(rows * D), h(rows * D), qkv(rows * 3 * D),
      mlp(std::max<std::ptrdiff_t>(rows * F, static_cast<std::ptrdiff_t>(B) * patches * CPP));
  std::vector<float> scratch(detail::attention_scratch_floats(N, threads));
  float* ctx = h.data();  // h is dead between the QKV projections and layernorm_after

  // Position embeddings for this grid: as stored at the trained size, else bicubic-resized
  // (HF interpolate_pos_encoding: CLS row unchanged, the (S/P)² grid resized to gh×gw).
  const int g0 = c.grid_size();
  std::vector<float> pos_resized;
  const float* pos = w.position_embeddings.data();
  if (gh != g0 || gw != g0) {
    pos_resized.resize(static_cast<std::size_t>(N) * D);
    std::memcpy(pos_resized.data(), pos, sizeof(float) * D);
    detail::interpolate_bicubic(pos + D, g0, g0, D, gh, gw, pos_resized.data() + D);
    pos = pos_resized.data();
  }
  sw.lap(&StageTimes::other);

  // embeddings: x = concat(cls_token, conv(pixels)) + position_embeddings   [N, D] per image
  for (int b = 0; b < B; ++b) {
    float* patch_rows = mlp.data() + static_cast<std::ptrdiff_t>(b) * patches * CPP;
    detail::extract_patches(images[b]->data(), c.num_channels, H, W, P, patch_rows);
    float* xb = x.data() + static_cast<std::ptrdiff_t>(b) * N * D;
    for (int d = 0; d < D; ++d) xb[d] = w.cls_token[d] + pos[d];
    detail::Epilogue ep;
    ep.bias = w.patch_bias.data();
    ep.residual = pos + D;
    ep.ldr = D;
    detail::gemm(isa, patches, D, CPP, patch_rows, CPP, w.patch_weight.data(), CPP, true, xb + D, D, ep, threads);
  }
  sw.lap(&StageTimes::patch_embedding);

  auto capture_hidden = [&](int index) {
    if (!wants(want_hidden, index)) return;
    for (int b = 0; b < B; ++b)
      out[b].hidden_states[index] = Eigen::Map<const Matrix>(x.data() + static_cast<std::ptrdiff_t>(b) * N * D, N, D);
    sw.lap(&StageTimes::other);
  };
  capture_hidden(0);

  const std::ptrdiff_t ld3 = 3 * static_cast<std::ptrdiff_t>(D);
  std::vector<float> cls_rows;
  for (int l = 0; l < L; ++l) {
    const LayerWeights& lw = w.layers[l];
    // h = layernorm_before(x)
    detail::layer_norm(x.data(), D, h.data(), D, static_cast<int>(rows), D, lw.layernorm_before_weight.data(),
                       lw.layernorm_before_bias.data(), eps, threads);
    sw.lap(&StageTimes::layer_norm);
    // Per image: q | k | v = h·Wqᵀ + bq | h·Wkᵀ + bk | h·Wvᵀ + bv side by side in qkv [N, 3D], then
    // ctx = concat_heads(softmax(q·kᵀ·d^-½)·v). Image by image so that attention reads q, k, v while
    // they are still in cache (a batched projection would have evicted the first images' by then).
    // ctx shares h's buffer: image b's ctx rows overwrite only h rows already projected.
    const bool keep_cls = wants(want_attn, l);
    if (keep_cls) cls_rows.assign(static_cast<std::size_t>(heads) * N, 0.0f);
    const LinearWeight* proj[3] = {&lw.query, &lw.key, &lw.value};
    const ConstVectorMap* bias[3] = {&lw.query_bias, &lw.key_bias, &lw.value_bias};
    for (int b = 0; b < B; ++b) {
      const std::ptrdiff_t r0 = static_cast<std::ptrdiff_t>(b) * N;
      for (int j = 0; j < 3; ++j) {
        detail::Epilogue ep;
        ep.bias = bias[j]->size() ? bias[j]->data() : nullptr;
        linear(isa, N, h.data() + r0 * D, D, *proj[j], qkv.data() + r0 * ld3 + j * D, ld3, ep, threads);
      }
      sw.lap(&StageTimes::qkv);
      detail::attention(isa, qkv.data() + r0 * ld3, ld3, 1, N, heads, hd, 1.0f / std::sqrt(static_cast<float>(hd)),
                        ctx + r0 * D, D, scratch.data(), keep_cls ? cls_rows.data() : nullptr, threads);
      if (keep_cls) out[b].cls_attention[l] = Eigen::Map<const Matrix>(cls_rows.data(), heads, N);
      sw.lap(&StageTimes::attention);
    }
    // x = x + ctx·Woᵀ + bo
    {
      detail::Epilogue ep;
      ep.bias = lw.attention_output_bias.data();
      ep.residual = x.data();
      ep.ldr = D;
      linear(isa, static_cast<int>(rows), ctx, D, lw.attention_output, x.data(), D, ep, threads);
    }
    sw.lap(&StageTimes::attention_output);
    // h = layernorm_after(x)
    detail::layer_norm(x.data(), D, h.data(), D, static_cast<int>(rows), D, lw.layernorm_after_weight.data(),
                       lw.layernorm_after_bias.data(), eps, threads);
    sw.lap(&StageTimes::layer_norm);
    // x = x + gelu(h·W1ᵀ + b1)·W2ᵀ + b2
    {
      detail::Epilogue ep1;
      ep1.bias = lw.intermediate_bias.data();
      ep1.gelu = true;
      linear(isa, static_cast<int>(rows), h.data(), D, lw.intermediate, mlp.data(), F, ep1, threads);
      detail::Epilogue ep2;
      ep2.bias = lw.output_bias.data();
      ep2.residual = x.data();
      ep2.ldr = D;
      linear(isa, static_cast<int>(rows), mlp.data(), F, lw.output, x.data(), D, ep2, threads);
    }
    sw.lap(&StageTimes::mlp);
    capture_hidden(l + 1);
  }
  // last_hidden_state = layernorm(x), all tokens
  for (int b = 0; b < B; ++b) {
    out[b].last_hidden_state.resize(N, D);
    detail::layer_norm(x.data() + static_cast<std::ptrdiff_t>(b) * N * D, D, out[b].last_hidden_state.data(), D, N, D,
                       w.layernorm_weight.data(), w.layernorm_bias.data(), eps, threads);
  }
  sw.lap(&StageTimes::layer_norm);
}

std::shared_ptr<Model::Impl> finish(std::shared_ptr<Model::Impl> impl, const LoadOptions& options,
                                    const TensorLookup& lookup) {
  impl->weights_ptr = std::make_unique<const Weights>(bind_weights(impl->config, lookup, impl->source));
  impl->threads = options.threads > 0 ? options.threads : default_threads();
  impl->isa = detail::detected_isa();
  if (impl->weights().has_classifier()) {
    const auto n = static_cast<std::size_t>(impl->weights().classifier_weight.rows());
    if (impl->config.id2label.size() == n) {
      impl->labels = impl->config.id2label;
    } else {
      for (std::size_t i = 0; i < n; ++i) impl->labels.push_back("LABEL_" + std::to_string(i));
    }
  }
  return impl;
}

}  // namespace

Model::Model(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Model Model::load(const std::string& path, const LoadOptions& options) {
  auto impl = std::make_shared<Impl>();
  std::string dir, weights_path;
  const bool folder = detail::is_directory(path);
  if (folder) {
    dir = path;
    weights_path = detail::join_path(dir, "model.safetensors");
    if (!detail::is_regular_file(weights_path)) {
      if (detail::is_regular_file(detail::join_path(dir, "pytorch_model.bin")))
        throw Error(path + ": has pytorch_model.bin but no model.safetensors; convert it first: vitmsn-convert " +
                    path + " model.safetensors");
      throw Error(path + ": no model.safetensors in this folder");
    }
  } else {
    if (!detail::is_regular_file(path)) throw Error(path + ": no such model file or folder");
    weights_path = path;
    dir = detail::parent_dir(path);
  }
  impl->file = std::make_unique<SafetensorsFile>(SafetensorsFile::open(weights_path));
  impl->source = weights_path;
  const auto& meta = impl->file->metadata();
  const std::string config_json = detail::join_path(dir, "config.json");
  const bool have_json = detail::is_regular_file(config_json);
  auto meta_config = meta.find("config");
  if (folder && have_json) {
    impl->config = load_config(config_json);
  } else if (meta_config != meta.end()) {
    impl->config = parse_config(meta_config->second, weights_path + " (__metadata__ config)");
  } else if (have_json) {
    impl->config = load_config(config_json);
  } else {
    throw Error(weights_path + ": no model config: neither a \"config\" entry in __metadata__ nor " + config_json);
  }
  const std::string pre_json = detail::join_path(dir, "preprocessor_config.json");
  auto meta_pre = meta.find("preprocessor_config");
  if ((folder || meta_pre == meta.end()) && detail::is_regular_file(pre_json)) {
    impl->preprocessor = Preprocessor::from_file(pre_json);
  } else if (meta_pre != meta.end()) {
    impl->preprocessor =
        Preprocessor(parse_preprocessor_config(meta_pre->second, weights_path + " (__metadata__ preprocessor_config)"));
  }
  const SafetensorsFile* file = impl->file.get();
  return Model(finish(impl, options, [file](const std::string& name) { return file->find(name); }));
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
    TensorView v;
    v.name = t.name;
    v.dtype = t.dtype;
    v.shape = t.shape;
    v.data = t.bytes.data();
    v.nbytes = t.bytes.size();
    if (v.numel() * static_cast<std::int64_t>(dtype_size(v.dtype)) != static_cast<std::int64_t>(v.nbytes))
      throw Error("<memory>: tensor '" + t.name + "' has " + std::to_string(v.nbytes) + " bytes for shape " +
                  v.shape_string());
    (*views)[t.name] = std::move(v);
  }
  return Model(finish(impl, options, [views](const std::string& name) -> const TensorView* {
    auto it = views->find(name);
    return it == views->end() ? nullptr : &it->second;
  }));
}

const Config& Model::config() const { return impl_->config; }
bool Model::has_classifier() const { return impl_->weights().has_classifier(); }
const std::vector<std::string>& Model::labels() const { return impl_->labels; }
const Preprocessor& Model::preprocessor() const { return impl_->preprocessor; }
int Model::threads() const { return impl_->threads; }
const std::string& Model::source() const { return impl_->source; }
std::size_t Model::copied_weight_bytes() const { return impl_->weights().owned_bytes; }

std::vector<Features> Model::extract_features(const std::vector<PixelValues>& batch,
                                              const FeatureOptions& options) const {
  std::vector<Features> out(batch.size());
  for (const auto& px : batch) check_pixels(impl_->config, px);
  // Group images by size; each group runs as one batch.
  std::vector<bool> done(batch.size(), false);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (done[i]) continue;
    std::vector<const PixelValues*> group;
    std::vector<std::size_t> index;
    for (std::size_t j = i; j < batch.size(); ++j)
      if (!done[j] && batch[j].dimension(1) == batch[i].dimension(1) &&
          batch[j].dimension(2) == batch[i].dimension(2)) {
        group.push_back(&batch[j]);
        index.push_back(j);
        done[j] = true;
      }
    std::vector<Features> part(group.size());
    forward(*impl_, group, options, part);
    for (std::size_t k = 0; k < index.size(); ++k) out[index[k]] = std::move(part[k]);
  }
  return out;
}

Features Model::extract_features(const PixelValues& pixel_values, const FeatureOptions& options) const {
  check_pixels(impl_->config, pixel_values);
  std::vector<Features> out(1);
  forward(*impl_, {&pixel_values}, options, out);
  return std::move(out[0]);
}

Features Model::extract_features(const Image& image, const FeatureOptions& options) const {
  return extract_features(impl_->preprocessor(image), options);
}

Features Model::extract_features(const std::string& image_path, const FeatureOptions& options) const {
  return extract_features(load_image(image_path), options);
}

Vector Model::logits(const Features& features) const {
  if (!has_classifier())
    throw Error(impl_->source +
                ": this model has no classifier head (a ViTMSNModel checkpoint); "
                "use extract_features(), or add a head (classifier.weight/classifier.bias)");
  const Weights& w = impl_->weights();
  if (features.last_hidden_state.cols() != w.classifier_weight.cols() || features.last_hidden_state.rows() < 1)
    throw Error("features of width " + std::to_string(features.last_hidden_state.cols()) +
                " do not fit the classifier of width " + std::to_string(w.classifier_weight.cols()));
  // logits = last_hidden_state[0]·Wcᵀ + bc
  Vector out(w.classifier_weight.rows());
  for (Eigen::Index j = 0; j < w.classifier_weight.rows(); ++j) {
    float acc = 0.0f;
    for (Eigen::Index k = 0; k < w.classifier_weight.cols(); ++k)
      acc += features.last_hidden_state(0, k) * w.classifier_weight(j, k);
    out[j] = acc + w.classifier_bias[j];
  }
  return out;
}

Vector Model::classify(const PixelValues& pixel_values, int threads) const {
  if (!has_classifier()) return logits(Features{});
  FeatureOptions o;
  o.threads = threads;
  return logits(extract_features(pixel_values, o));
}

Vector Model::classify(const Image& image, int threads) const { return classify(impl_->preprocessor(image), threads); }

std::vector<Vector> Model::classify(const std::vector<PixelValues>& batch, int threads) const {
  if (!has_classifier()) return {logits(Features{})};
  FeatureOptions o;
  o.threads = threads;
  std::vector<Vector> out;
  for (const auto& f : extract_features(batch, o)) out.push_back(logits(f));
  return out;
}

}  // namespace vitmsn
