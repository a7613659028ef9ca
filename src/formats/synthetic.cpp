#include "vitmsn/synthetic.hpp"

#include <cmath>
#include <cstring>

#include "base/file_util.hpp"
#include "core/weights.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {

namespace {

/// The i-th uniform in [0, 1) of tensor number t: a splitmix64-style hash, 24 bits.
double synthetic_uniform(std::uint64_t t, std::uint64_t i) {
  // x = i·φ64 + (t+1)·C1; x ^= x>>31; x *= C2; x ^= x>>29; u = (x>>40) / 2^24 (all mod 2^64)
  std::uint64_t x = i * 0x9E3779B97F4A7C15ull + (t + 1) * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  x ^= x >> 29;
  return static_cast<double>(x >> 40) / static_cast<double>(1 << 24);
}

}  // namespace

std::vector<TensorData> synthetic_tensors(const Config& config) {
  if (!config.qkv_bias)
    throw Error(ErrorKind::kUnsupported, "synthetic weights: the reference generator assumes qkv_bias = true");
  std::vector<TensorData> out;
  std::uint64_t t = 0;
  for (const auto& [name, shape] : detail::keys::encoder_tensors(config, "")) {
    std::size_t n = 1;
    for (auto d : shape) n *= static_cast<std::size_t>(d);
    // Kind by name, as vitmsn_ref.vit_keys labels them.
    double scale = 0.15, offset = 0.0;
    if (detail::ends_with(name, "cls_token") || detail::ends_with(name, "position_embeddings")) {
      scale = 0.8;
    } else if (name.find("layernorm") != std::string::npos && detail::ends_with(name, ".weight")) {
      scale = 0.3;
      offset = 1.0;
    } else if (shape.size() > 1) {
      std::size_t fan_in = 1;
      for (std::size_t k = 1; k < shape.size(); ++k) fan_in *= static_cast<std::size_t>(shape[k]);
      scale = 1.7 / std::sqrt(static_cast<double>(fan_in));
    }
    TensorData td;
    td.name = name;
    td.dtype = DType::kF32;
    td.shape = shape;
    td.bytes.resize(n * sizeof(float));
    float* v = reinterpret_cast<float*>(td.bytes.data());
    for (std::size_t i = 0; i < n; ++i) {
      const double u = synthetic_uniform(t, i) * 2.0 - 1.0;
      v[i] = static_cast<float>(offset + u * scale);
    }
    out.push_back(std::move(td));
    ++t;
  }
  return out;
}

Config vit_msn_large_7_config() {
  Config c;
  c.hidden_size = 1024;
  c.num_hidden_layers = 24;
  c.num_attention_heads = 16;
  c.intermediate_size = 4096;
  c.patch_size = 7;
  c.image_size = 224;
  return c;
}

}  // namespace vitmsn
