#pragma once
/// \file
/// Reproducible synthetic ViT-MSN weights, bit-identical to `synth_state()` of the fixtures' Python
/// reference (vitmsn_ref.py; tests/tools/make_synthetic_fixture.py has the same generator): a
/// full-size model for benchmarks and smoke tests without the real checkpoint. The program
/// vitmsn-synth writes it as a model folder.

#include <vector>

#include "vitmsn/config.hpp"
#include "vitmsn/export.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {

/// Every encoder tensor of `config` (Hugging Face names, no prefix, float32), tensor t in Hugging
/// Face's key order, element i = scale(kind) · (2·u(t, i) − 1), u a 24-bit splitmix64-style hash in [0, 1), with the
/// kinds of vitmsn_ref.synth_state: linear/conv weights 1.7/√fan_in, layer-norm gains 1 + 0.3·u, embeddings 0.8·u,
/// biases 0.15·u. Requires config.qkv_bias (as the reference).
VITMSN_API std::vector<TensorData> synthetic_tensors(const Config& config);

/// facebook/vit-msn-large-7's configuration (ViT-L, patch 7, 224×224, 1025 tokens, 24 blocks).
VITMSN_API Config vit_msn_large_7_config();

}  // namespace vitmsn
