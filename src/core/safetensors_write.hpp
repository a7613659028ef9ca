#pragma once
// write_safetensors with the tensors in a given order and the data aligned: for files whose tensors
// are used in place where their alignment and adjacency matter (vitmsn-convert --layout panels).
// Internal.
#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "vitmsn/safetensors.hpp"

namespace vitmsn::detail {

/// As write_safetensors, but the data hold the tensors in `order` (back to back: the format allows
/// no gaps) and start at a multiple of `data_alignment` bytes from the file's start (the header padded
/// with spaces). A tensor whose offset is a multiple of it is then as aligned in a memory map.
void write_safetensors_in_order(const std::string& path, const std::vector<const TensorData*>& order,
                                const std::map<std::string, std::string>& metadata, std::size_t data_alignment);

}  // namespace vitmsn::detail
