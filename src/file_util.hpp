#pragma once
// Files: read-only memory maps, whole-file reads, and atomic writes (temp file + rename).
#include <cstddef>
#include <cstdint>
#include <string>

namespace vitmsn::detail {

/// A read-only, private memory map of a whole file. Movable; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  /// \throws Error naming `path` (missing, a directory, unreadable, mmap failure).
  static MappedFile open(const std::string& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  void* map_ = nullptr;
};

/// The whole file as a string. \throws Error naming `path`.
std::string read_text_file(const std::string& path, std::size_t max_bytes = 64u << 20);

bool is_directory(const std::string& path);
bool is_regular_file(const std::string& path);
/// The folder part of a path ("." when there is none).
std::string parent_dir(const std::string& path);
std::string join_path(const std::string& dir, const std::string& name);

/// Writes to `<path>.tmp.<pid>.<n>` in the same folder; commit() flushes and renames it onto `path`.
/// Destroyed without commit() (an error, an exception) the temporary file is removed, so `path`
/// is never left half-written.
class AtomicFile {
 public:
  /// \throws Error naming `path` when the temporary file cannot be created.
  explicit AtomicFile(const std::string& path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, std::size_t size);
  void commit();
  const std::string& temp_path() const { return temp_; }

 private:
  std::string path_, temp_;
  int fd_ = -1;
  int slot_ = -1;  // in the registry remove_registered_temp_files() reads
};

/// Removes the temporary file of every AtomicFile that exists right now and returns how many it
/// removed. Async-signal-safe (atomics and unlink(2) only): vitmsn::remove_unfinished_outputs().
int remove_registered_temp_files() noexcept;

}  // namespace vitmsn::detail
