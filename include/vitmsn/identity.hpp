#pragma once
/// \file
/// What identifies models: a model's backbone identity — the checkpoint a classifier head's features
/// come from, kept through conversions (vitmsn-convert records it, vitmsn-probe writes it into the
/// heads it trains, --add-classifier compares the two).

#include <string>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// The `__metadata__` key of a model's backbone identity (in files written by convert_checkpoint())
/// and of the backbone a head was trained on (in heads written by vitmsn-probe).
inline constexpr const char* kBackboneMetadataKey = "backbone_sha256";

/// A model's backbone identity: 64 hex digits naming the encoder weights (every tensor but the
/// classifier head), the same for a checkpoint and every conversion of it (other dtypes, merged
/// heads, .bin → .safetensors). `model_path` is anything Model::load or convert_checkpoint() reads.
/// A file that records it (metadata kBackboneMetadataKey) is not read further; otherwise it is
/// computed: SHA-256 over the lines "NAME SHAPE SHA256(values)" of the encoder tensors in name order,
/// NAME without a "vit." prefix, values as little-endian float32 (half and double tensors widened
/// or narrowed to float32 first). ViT-L/7 (1.2 GB) takes about a second per core the machine has
/// to spare (tensors are hashed in parallel, default_threads()).
/// \throws Error naming the file (unreadable, not a model, malformed recorded identity).
VITMSN_API std::string backbone_identity(const std::string& model_path);

}  // namespace vitmsn
