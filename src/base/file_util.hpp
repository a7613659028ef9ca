#pragma once
// Files: read-only memory maps, whole-file reads, and atomic writes (temp file + rename).
#include <cstddef>
#include <cstdint>
#include <string>

namespace vitmsn::detail {

/// A whole file's bytes, read-only: a private memory map of it (Access::kMap), or a private copy
/// read into page-aligned anonymous memory (Access::kCopy). Either way data() is page-aligned.
/// Movable; unmaps (and closes its descriptor) on destruction.
///
/// A map keeps the file's descriptor open (O_CLOEXEC) and the file's identity and times as they were
/// at open, so that check_unchanged() can tell, with one fstat(2), whether the file was rewritten in
/// place since (a truncated mapped file faults with SIGBUS when the lost pages are touched).
class MappedFile {
 public:
  enum class Access {
    kMap,   ///< mmap(PROT_READ, MAP_PRIVATE); pages are read when first touched
    kCopy,  ///< read(2) into private memory now; the file is closed and can no longer affect it
  };

  MappedFile() = default;
  /// \throws Error naming `path` (missing, a directory, unreadable, mmap failure; kCopy: a read
  /// failure, or the file changing while it is read).
  static MappedFile open(const std::string& path, Access access = Access::kMap);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  /// True for Access::kCopy: the bytes are private memory, not the file's pages.
  bool is_copy() const { return copy_; }

  /// For a map: fstat(2)s the kept descriptor and throws Error, starting with `path`, when the file's
  /// size, modification time or status-change time differ from those at open (the status-change
  /// time is not compared once the file has no name left: replacing it by rename or deleting it
  /// moves that time but leaves the mapped data intact). Nothing to check for a copy or an empty
  /// object. Thread-safe; one system call.
  void check_unchanged(const std::string& path) const;

 private:
  // The file at open. dev and ino name the mapped file (fstat of the kept descriptor always returns
  // them); size and the times are what check_unchanged() compares.
  struct Stamp {
    std::uint64_t dev = 0, ino = 0, size = 0;
    std::int64_t mtime_s = 0, mtime_ns = 0, ctime_s = 0, ctime_ns = 0;
  };
  void release() noexcept;
  // Throws "<path>: the model file changed on disk <when> (<what changed>); <remedy>" when the file
  // behind fd_ changed since open.
  void check_changed_while_open(const std::string& path, const char* when, const char* remedy) const;

  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
  void* map_ = nullptr;
  int fd_ = -1;  // a map's file, kept open for check_unchanged()
  bool copy_ = false;
  Stamp stamp_;
};

/// Gives the whole pages inside [data, data + bytes) of a read-only file map back to the kernel
/// (madvise MADV_DONTNEED): resident memory drops; a later read faults them in again from the file.
/// Only for memory a MappedFile maps from a file (never for private copies). No-op elsewhere.
void release_pages(const void* data, std::size_t bytes) noexcept;

/// Maps the pages of [data, data + bytes) in one call before they are read or written (madvise
/// MADV_POPULATE_READ / _WRITE, Linux 5.14+): one system call instead of a page fault per 4 KB page
/// (or per fault-around block) when a large buffer or file map is about to be walked once. A hint:
/// no-op where unsupported; never changes the contents.
void prefault_pages(const void* data, std::size_t bytes, bool for_write) noexcept;

/// The whole file as a string. \throws Error naming `path`.
std::string read_text_file(const std::string& path, std::size_t max_bytes = 64u << 20);

/// Whether `s` ends with `tail`.
inline bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

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
