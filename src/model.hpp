#pragma once
// Internal views of a Model (the public API is include/vitmsn/model.hpp, implemented with this in
// src/model.cpp): for tests that check what a Model holds rather than what it computes.
#include "vitmsn/model.hpp"
#include "weights.hpp"

namespace vitmsn::detail {

/// Model befriends this struct; nothing else reaches Model::Impl.
struct ModelAccess {
  /// The bound weights. Copies of a Model share one Weights object.
  static const Weights& weights(const Model& model);
  /// The memory-mapped file the weights are used from; null for a model made by from_tensors().
  static const SafetensorsFile* file(const Model& model);
};

}  // namespace vitmsn::detail
