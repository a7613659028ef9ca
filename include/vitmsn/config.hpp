#pragma once
/// \file
/// ViT-MSN hyper-parameters, read from Hugging Face's `config.json` or a safetensors `__metadata__`.

#include <string>
#include <vector>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// The hyper-parameters of a ViT-MSN encoder (Hugging Face `ViTMSNConfig` field names).
/// Defaults are facebook/vit-msn-large-7's; real values always come from the checkpoint.
struct Config {
  int hidden_size = 1024;        ///< D
  int num_hidden_layers = 24;    ///< L
  int num_attention_heads = 16;  ///< H; head dim D/H
  int intermediate_size = 4096;  ///< F, MLP width
  int patch_size = 7;            ///< P
  int image_size = 224;          ///< S, the resolution the position embeddings were trained at
  int num_channels = 3;
  double layer_norm_eps = 1e-6;
  bool qkv_bias = true;
  std::string hidden_act = "gelu";  ///< only "gelu" (exact erf form) is supported
  std::string model_type = "vit_msn";
  /// Class names by id (`id2label`); empty when the config has none.
  std::vector<std::string> id2label;

  int head_dim() const { return hidden_size / num_attention_heads; }
  /// Patches per side at image_size: S/P.
  int grid_size() const { return image_size / patch_size; }
  /// Tokens at image_size: (S/P)^2 + 1 (CLS).
  int num_tokens() const { return grid_size() * grid_size() + 1; }
  /// Tokens for an H x W input (both multiples of patch_size).
  int num_tokens(int height, int width) const { return (height / patch_size) * (width / patch_size) + 1; }
};

/// Largest token count ((H/P)·(W/P) + 1) a model accepts: attention memory and time grow with its
/// square (1792x1792 at patch 7 is 65,537 tokens, 16 GB of activations at ViT-L width).
inline constexpr long long kMaxInputTokens = 65537;

/// Checks an input size before any image is read, as extract_features() will: height and width
/// positive multiples of patch_size, at most kMaxInputTokens tokens. \throws Error saying what is
/// wrong, with the nearest valid size ("320x240: … the nearest valid size is 322x238").
VITMSN_API void check_input_size(const Config& config, int height, int width);

/// Parses a Hugging Face config.json text. Missing fields keep the defaults above except the five
/// size fields, which are required. \throws Error naming `source` and the field on a missing or
/// mistyped field, a non-positive size, hidden_size not divisible by the head count, or an
/// unsupported `hidden_act`.
VITMSN_API Config parse_config(const std::string& json_text, const std::string& source);

/// Reads a config.json file. \throws Error naming the file.
VITMSN_API Config read_config(const std::string& path);

/// The config as Hugging Face-style JSON (round-trips through parse_config).
VITMSN_API std::string to_json(const Config& config);

}  // namespace vitmsn
