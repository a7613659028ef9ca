#pragma once
// Backbone identity (include/vitmsn/identity.hpp) over tensors already at hand: the converter hashes
// the tensors it is about to write, backbone_identity() those of a model path.
#include <map>
#include <string>

#include "core/weights.hpp"
#include "vitmsn/config.hpp"

namespace vitmsn::detail {

/// The identity of the encoder tensors `config` calls for, found through `lookup` (checkpoint names,
/// any float dtype). \throws Error naming `source` when a tensor is missing or not a float type.
std::string compute_backbone_identity(const Config& config, const TensorLookup& lookup, const std::string& source);

/// The identity a file records in its metadata (kBackboneMetadataKey), or "" when it records none.
/// \throws Error naming `source` when the recorded value is not 64 lower-case hex digits.
std::string recorded_backbone_identity(const std::map<std::string, std::string>& metadata, const std::string& source);

}  // namespace vitmsn::detail
