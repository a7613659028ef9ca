#pragma once
/// \file
/// A reader for PyTorch `torch.save` checkpoints (the zip format of PyTorch >= 1.6, e.g. Hugging
/// Face's `pytorch_model.bin`) that never executes pickle code: a small pickle machine knows only the
/// opcodes and globals a tensor state dict needs and refuses everything else. Knows nothing of ViT.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "vitmsn/export.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {

/// Caps applied while reading a checkpoint, before anything in it is trusted.
struct TorchCheckpointLimits {
  std::uint64_t max_entry_bytes = 64ull << 30;  ///< largest zip entry (compressed or inflated)
  std::uint64_t max_pickle_bytes = 1ull << 30;  ///< size cap of `data.pkl`
  std::size_t max_pickle_ops = 50'000'000;      ///< opcodes executed in `data.pkl`
  std::size_t max_stack_size = 1u << 20;        ///< values on the pickle stack at once
  std::size_t max_memo_entries = 1u << 24;      ///< pickle memo slots
  std::size_t max_nesting_depth = 64;           ///< open MARKs, and dict-in-dict depth of the result
  std::size_t max_zip_entries = 1u << 20;       ///< entries in the zip central directory
  std::size_t max_tensors = 1u << 20;           ///< tensors returned
  std::size_t max_tensor_dims = 64;             ///< dimensions of one tensor
  std::uint64_t max_total_bytes = 64ull << 30;  ///< sum of the returned tensors' bytes
};

/// Reads the tensors of a `torch.save` zip checkpoint (`<archive>/data.pkl` + `<archive>/data/<key>`)
/// without executing pickle code.
///
/// - Zip: read through the central directory (ZIP64 end record and extra fields understood); every
///   local header, offset and size is checked against the file; entries may be STORED or DEFLATED
///   and each one read is CRC-32 verified. Encrypted, split and other compression methods are refused.
/// - `data.pkl`: pickle protocols 2-5, limited to the opcodes a state dict needs; the only globals
///   are `collections.OrderedDict`, `torch._utils._rebuild_tensor{,_v2}`,
///   `torch._utils._rebuild_parameter{,_with_state}` and the storage classes (`torch.FloatStorage`,
///   `HalfStorage`, `BFloat16Storage`, `DoubleStorage`, `LongStorage`, `IntStorage`, `ShortStorage`,
///   `CharStorage`, `ByteStorage`, `BoolStorage`, `UntypedStorage`). Anything else is refused.
/// - Tensors are views (storage, offset, size, stride; storages may be shared and strides arbitrary,
///   including 0); each is returned as a contiguous row-major copy with its own dtype, after checking
///   that every element it addresses lies inside its storage. Big-endian checkpoints are refused.
/// - Which dict: the top-level object must be a dict. If it holds a dict under `state_dict`,
///   `model_state_dict` or `model` (first match in that order), that dict is read instead (the
///   training-checkpoint layouts of Lightning, plain PyTorch and timm). The chosen dict is then
///   flattened: tensor values keep their key; dict values are walked recursively with keys joined by
///   '.' (`{"encoder": {"w": t}}` gives `encoder.w`); other values (numbers, strings, lists, None)
///   are skipped. The order is the checkpoint's; a tensor stored under two keys is returned twice.
///
/// \returns the tensors in checkpoint order (at least one).
/// \throws Error whose message starts with `path` and names the problem (entry, opcode, global,
/// tensor), e.g. `model.bin: data.pkl: global 'os.system' is not allowed (offset 2)`.
/// Thread-safe (no shared state).
VITMSN_API std::vector<TensorData> read_torch_checkpoint(const std::string& path,
                                                         const TorchCheckpointLimits& limits = {});

}  // namespace vitmsn
