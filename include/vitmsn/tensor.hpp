#pragma once
/// \file
/// The tensor types of the public API.

#include <Eigen/Core>
#include <unsupported/Eigen/CXX11/Tensor>

namespace vitmsn {

/// Row-major float32 matrix; features are [tokens, hidden], one token per row.
using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
/// A float32 row vector, e.g. one embedding [hidden] or the logits [num_labels].
using Vector = Eigen::Matrix<float, 1, Eigen::Dynamic, Eigen::RowMajor>;
/// Model input: float32 pixel values, channel first [3, H, W], as Hugging Face's `pixel_values[0]`.
using PixelValues = Eigen::Tensor<float, 3, Eigen::RowMajor>;
/// Pixel values in the caller's memory, read in place: float32, channel first [C, H, W], contiguous
/// (C-order, as a NumPy float32 array of that shape). Make one with
/// `PixelValuesView(pointer, channels, height, width)`; nothing is copied.
using PixelValuesView = Eigen::TensorMap<const Eigen::Tensor<float, 3, Eigen::RowMajor>>;

}  // namespace vitmsn
