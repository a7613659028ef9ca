#pragma once
/// \file
/// Safetensors files: a memory-mapped (or copied), validated reader and an atomic writer. Knows
/// nothing of ViT.

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// Element types of a safetensors file that vitmsn understands.
enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kI8, kU8, kBool };

/// "F32", "BF16", … as written in the header.
VITMSN_API const char* dtype_name(DType dtype);
/// Size of one element in bytes.
VITMSN_API std::size_t dtype_size(DType dtype);

struct TensorData;

/// One tensor of an open file: a view into the memory map (valid while the file object lives).
struct VITMSN_API TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  const std::uint8_t* data = nullptr;  ///< first byte; aligned as the file aligns it
  std::size_t nbytes = 0;

  std::int64_t numel() const;
  /// "[1025,64]"
  std::string shape_string() const;
  /// Element i widened to float (F32, F16, BF16, F64 and integer types). No bounds check.
  float value(std::size_t i) const;
  /// All elements widened to float32 (copy).
  std::vector<float> to_float() const;
  /// An owning copy: same name, dtype, shape and bytes (e.g. to write the tensor again).
  TensorData to_tensor_data() const;
};

/// Limits applied while validating a header (before anything in it is trusted).
struct SafetensorsLimits {
  std::uint64_t max_header_bytes = 100u << 20;  ///< JSON header size cap (safetensors' own: 100 MB)
  std::size_t max_tensors = 1u << 20;           ///< tensor count cap
};

/// How SafetensorsFile::open holds a file's bytes. Both give page-aligned, read-only memory.
enum class FileAccess {
  /// A read-only private memory map (the default): pages are read from disk when first used and
  /// shared with the page cache. Replacing the file by rename (mv, atomic writers) leaves the map
  /// intact; rewriting it in place (cp over it, a truncating writer) does not: see
  /// SafetensorsFile::check_unchanged().
  kMap,
  /// A private copy read into memory at open (memory use = the file's size); the file is closed
  /// afterwards and nothing done to it later can affect the copy.
  kCopy,
};

/// A safetensors file, memory-mapped read-only (or copied, FileAccess::kCopy). The header is
/// validated on open: 8-byte length inside the file and below the cap, JSON object, known dtypes,
/// shapes of non-negative integers, offsets inside the data area, `end - begin == numel * itemsize`,
/// no two tensors overlapping. Immutable after open; all methods are const and thread-safe. Movable,
/// not copyable.
class VITMSN_API SafetensorsFile {
 public:
  /// \throws Error naming `path` and the problem (FileAccess::kCopy: also a file that changes while
  /// it is read).
  static SafetensorsFile open(const std::string& path, const SafetensorsLimits& limits = {},
                              FileAccess access = FileAccess::kMap);

  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;
  ~SafetensorsFile();

  const std::string& path() const;
  /// The `__metadata__` string map (empty when absent).
  const std::map<std::string, std::string>& metadata() const;
  /// Tensor names in file order (by data offset).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  /// \throws Error "<path>: missing tensor '<name>'" when absent.
  const TensorView& get(const std::string& name) const;
  /// Null when absent.
  const TensorView* find(const std::string& name) const;
  /// Total size of the file in bytes.
  std::size_t file_size() const;
  /// True when opened with FileAccess::kCopy (the bytes are a private copy, not a map of the file).
  bool is_copy() const;
  /// Throws when the memory-mapped file was rewritten in place since open, before its tensors are
  /// read again: reading a mapped file that was truncated faults (SIGBUS), one rewritten with other
  /// bytes gives other tensors. One fstat(2) of the descriptor the object keeps open, comparing the
  /// size, modification time and status-change time with those at open; the file the map shows is
  /// checked, not whatever `path()` names now, so a new file renamed over the path (mv, atomic
  /// writers), which leaves the map intact, passes (the old file's status-change time, moved by the
  /// rename, is not compared once it has no name left). Renaming the mapped file itself or changing
  /// its permissions also moves its status-change time and is reported. It does not catch a change
  /// made after it returns: a file truncated while its tensors are being read still faults, as with
  /// every memory-mapped reader. Never throws for FileAccess::kCopy. Thread-safe.
  /// \throws Error "<path>: the model file changed on disk after it was loaded (size 1234 -> 567
  /// bytes, modified at <UTC time> -> <UTC time>); reload the model …".
  void check_unchanged() const;

 private:
  struct Impl;
  explicit SafetensorsFile(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

/// One tensor to write: raw little-endian bytes of `dtype` with `shape`.
struct VITMSN_API TensorData {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> bytes;
  /// A view of these bytes (valid while this object lives and its bytes are not resized).
  TensorView view() const;
  /// Convenience: an F32 tensor from floats.
  static TensorData f32(std::string name, std::vector<std::int64_t> shape, const float* values);
};

/// Writes a safetensors file (tensors sorted by name, header padded to 8 bytes) atomically: data go
/// to a temporary file in the same folder that is renamed over `path` only when complete, so `path`
/// never holds a partial file. \throws Error naming `path` (shape/size mismatch, I/O failure).
VITMSN_API void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace vitmsn
