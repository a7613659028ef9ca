#pragma once
/// \file
/// The one exception type vitmsn throws for bad input: files, headers, shapes, configs, images.

#include <stdexcept>
#include <string>

namespace vitmsn {

/// Thrown for every problem with input the caller supplied (a file, a tensor, a config, an image,
/// an argument). The message names the culprit and the problem, e.g.
/// `model.safetensors: tensor 'layernorm.weight' has shape [63], expected [64]`.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace vitmsn
