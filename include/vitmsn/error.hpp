#pragma once
/// \file
/// The one exception type vitmsn throws for bad input: files, headers, shapes, configs, images. Each
/// error has a kind (ErrorKind) so that callers can tell a missing file from a malformed one without
/// reading the message.

#include <cerrno>
#include <stdexcept>
#include <string>
#include <utility>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// What went wrong, for callers that react differently (retry, ask for another file, report a bug in
/// their own code). The message says the same in words; the kind never changes for a given check.
/// Python maps each kind to an exception class that is also the matching builtin (vitmsn.NotFoundError
/// is a FileNotFoundError, ...).
enum class ErrorKind {
  kNotFound,     ///< a path that does not exist (open(2): ENOENT, ENOTDIR), or a model folder without its file
  kPermission,   ///< the OS refused access to a path (EACCES, EPERM, EROFS)
  kIo,           ///< another OS error reading, writing, mapping or stat-ing a file, or a file changed on disk
  kMalformed,    ///< content that breaks its format: a bad header, a truncated file, invalid JSON, a missing
                 ///< or mis-shaped tensor, a config that contradicts itself
  kUnsupported,  ///< well-formed content this library does not read: a dtype, a format or version, an
                 ///< activation, a quantization scheme, a PyTorch checkpoint where safetensors is needed
  kLimit,        ///< a size over a limit (LoadLimits, ImageLimits, header and file size limits, token counts)
  kArgument,     ///< a bad function argument or option: a wrong pixel-values shape, an index out of range,
                 ///< an option value outside its range
};

/// "not_found", "permission", "io", "malformed", "unsupported", "limit", "argument".
inline const char* error_kind_name(ErrorKind kind) noexcept {
  switch (kind) {
    case ErrorKind::kNotFound:
      return "not_found";
    case ErrorKind::kPermission:
      return "permission";
    case ErrorKind::kIo:
      return "io";
    case ErrorKind::kMalformed:
      return "malformed";
    case ErrorKind::kUnsupported:
      return "unsupported";
    case ErrorKind::kLimit:
      return "limit";
    case ErrorKind::kArgument:
      return "argument";
  }
  return "unknown";
}

/// The kind of an OS error number (errno): ENOENT, ENOTDIR -> kNotFound; EACCES, EPERM, EROFS ->
/// kPermission; ENAMETOOLONG -> kArgument; anything else -> kIo.
inline ErrorKind error_kind_from_errno(int err) noexcept {
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      return ErrorKind::kNotFound;
    case EACCES:
    case EPERM:
    case EROFS:
      return ErrorKind::kPermission;
    case ENAMETOOLONG:
      return ErrorKind::kArgument;
    default:
      return ErrorKind::kIo;
  }
}

/// Thrown for every problem with input the caller supplied (a file, a tensor, a config, an image,
/// an argument). The message names the culprit and the problem, e.g.
/// `model.safetensors: tensor 'layernorm.weight' has shape [63], expected [64]`; kind() says which
/// sort of problem it is, path() the file it is about (when it is about one), os_error() the errno
/// of a failed system call (0 when none failed).
class VITMSN_API Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, const std::string& message, std::string path = {}, int os_error = 0)
      : std::runtime_error(message), kind_(kind), os_error_(os_error), path_(std::move(path)) {}
  /// Without a kind: kind() is ErrorKind::kMalformed. Kept for code outside the library (the programs
  /// in examples/); every throw in the library names its kind.
  explicit Error(const std::string& message) : Error(ErrorKind::kMalformed, message) {}

  ErrorKind kind() const noexcept { return kind_; }
  /// The file or folder the error is about; empty when it is about no file (an argument, memory).
  const std::string& path() const noexcept { return path_; }
  /// The errno of the system call that failed (kNotFound, kPermission, kIo), else 0.
  int os_error() const noexcept { return os_error_; }

 private:
  ErrorKind kind_;
  int os_error_;
  std::string path_;
};

}  // namespace vitmsn
