#pragma once
// Internal views of a Model (the public API is include/vitmsn/model.hpp, implemented with this in
// src/core/model.cpp): for tests that check what a Model holds rather than what it computes.
#include "core/weights.hpp"
#include "cpu/int8_reference.hpp"
#include "vitmsn/model.hpp"

namespace vitmsn::detail {

/// Model befriends this struct; nothing else reaches Model::Impl.
struct ModelAccess {
  /// The bound weights. Copies of a Model share one Weights object.
  static const Weights& weights(const Model& model);
  /// The memory-mapped file the weights are used from; null for a model made by from_tensors().
  static const SafetensorsFile* file(const Model& model);
  /// Sets the activation scheme of every int8 linear layer of `model` (and of its copies, which share
  /// the prepared layers): for tests that compare the scheme with the ones it was chosen against.
  /// Not thread-safe with a forward pass.
  static void set_int8_scheme(Model& model, const int8::Scheme& scheme);
};

}  // namespace vitmsn::detail
