#include "base/file_util.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "vitmsn/error.hpp"

namespace vitmsn::detail {

namespace {
// Throws "<path>: <what>: <strerror(err)>", its kind from err (ENOENT: not found, EACCES: permission...).
[[noreturn]] void os_fail(const std::string& path, const std::string& what, int err) {
  throw Error(error_kind_from_errno(err), path + ": " + what + ": " + std::strerror(err), path, err);
}

// "2025-01-31 12:34:56.123456789 UTC"
std::string format_time(std::int64_t s, std::int64_t ns) {
  const std::time_t t = static_cast<std::time_t>(s);
  std::tm tm{};
  char buf[64];
  if (!::gmtime_r(&t, &tm) || std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm) == 0)
    return std::to_string(s) + "." + std::to_string(ns) + " s";
  char frac[16];
  std::snprintf(frac, sizeof frac, ".%09lld", static_cast<long long>(ns));
  return std::string(buf) + frac + " UTC";
}

}  // namespace

MappedFile MappedFile::open(const std::string& path, Access access) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) os_fail(path, "cannot open", errno);
  MappedFile m;
  m.fd_ = fd;  // closed by m's destructor on every error below
  struct stat st {};
  if (::fstat(fd, &st) != 0) os_fail(path, "cannot stat", errno);
  if (S_ISDIR(st.st_mode)) throw Error(ErrorKind::kArgument, path + ": is a directory, not a file", path, EISDIR);
  if (!S_ISREG(st.st_mode)) throw Error(ErrorKind::kArgument, path + ": not a regular file", path);
  m.stamp_.dev = static_cast<std::uint64_t>(st.st_dev);
  m.stamp_.ino = static_cast<std::uint64_t>(st.st_ino);
  m.stamp_.size = static_cast<std::uint64_t>(st.st_size);
  m.stamp_.mtime_s = st.st_mtim.tv_sec;
  m.stamp_.mtime_ns = st.st_mtim.tv_nsec;
  m.stamp_.ctime_s = st.st_ctim.tv_sec;
  m.stamp_.ctime_ns = st.st_ctim.tv_nsec;
  m.size_ = static_cast<std::size_t>(st.st_size);
  if (access == Access::kCopy) {
    m.copy_ = true;
    if (m.size_ > 0) {
      // Anonymous memory is page-aligned, as a file map is: tensors keep the alignment the file gives.
      void* p = ::mmap(nullptr, m.size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED)
        os_fail(path, "cannot allocate " + std::to_string(m.size_) + " bytes for a copy of the file", errno);
      m.map_ = p;
      m.data_ = static_cast<const std::uint8_t*>(p);
      auto* out = static_cast<std::uint8_t*>(p);
      std::size_t done = 0;
      while (done < m.size_) {
        const ssize_t n = ::pread(fd, out + done, m.size_ - done, static_cast<off_t>(done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) os_fail(path, "read failed", errno);
        if (n == 0)
          throw Error(ErrorKind::kIo, path + ": the file shrank while it was read (" + std::to_string(done) + " of " +
                                          std::to_string(m.size_) + " bytes)");
        done += static_cast<std::size_t>(n);
      }
      ::mprotect(p, m.size_, PROT_READ);  // read-only like a map (a failure leaves it writable, no harm)
    }
    // Written to while it was read: the copy may mix old and new bytes.
    m.check_changed_while_open(path, "while it was read", "load it again once it is complete");
    ::close(m.fd_);
    m.fd_ = -1;
    return m;
  }
  if (m.size_ > 0) {
    void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) os_fail(path, "cannot memory-map", errno);
    m.map_ = p;
    m.data_ = static_cast<const std::uint8_t*>(p);
  }
  return m;
}

void MappedFile::check_unchanged(const std::string& path) const {
  if (copy_ || fd_ < 0) return;
  check_changed_while_open(path, "after it was loaded",
                           "reload the model, or load it with its weights copied (copy_weights) to keep a private "
                           "copy");
}

void MappedFile::check_changed_while_open(const std::string& path, const char* when, const char* remedy) const {
  struct stat st {};
  if (::fstat(fd_, &st) != 0) os_fail(path, "cannot stat the model file", errno);
  std::string what;
  auto add = [&what](const std::string& s) { what += (what.empty() ? "" : ", ") + s; };
  const auto size = static_cast<std::uint64_t>(st.st_size);
  if (size != stamp_.size) add("size " + std::to_string(stamp_.size) + " -> " + std::to_string(size) + " bytes");
  if (st.st_mtim.tv_sec != stamp_.mtime_s || st.st_mtim.tv_nsec != stamp_.mtime_ns)
    add("modified at " + format_time(stamp_.mtime_s, stamp_.mtime_ns) + " -> " +
        format_time(st.st_mtim.tv_sec, st.st_mtim.tv_nsec));
  // Renaming another file over this one, or deleting it, moves its status-change time and leaves the
  // data as they were; once no name is left nobody can open it to rewrite it.
  if (what.empty() && st.st_nlink > 0 && (st.st_ctim.tv_sec != stamp_.ctime_s || st.st_ctim.tv_nsec != stamp_.ctime_ns))
    add("status changed at " + format_time(stamp_.ctime_s, stamp_.ctime_ns) + " -> " +
        format_time(st.st_ctim.tv_sec, st.st_ctim.tv_nsec));
  if (what.empty()) return;
  throw Error(ErrorKind::kIo, path + ": the model file changed on disk " + when + " (" + what + "); " + remedy, path);
}

MappedFile::MappedFile(MappedFile&& o) noexcept
    : data_(o.data_), size_(o.size_), map_(o.map_), fd_(o.fd_), copy_(o.copy_), stamp_(o.stamp_) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.map_ = nullptr;
  o.fd_ = -1;
  o.copy_ = false;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    release();
    data_ = o.data_;
    size_ = o.size_;
    map_ = o.map_;
    fd_ = o.fd_;
    copy_ = o.copy_;
    stamp_ = o.stamp_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.map_ = nullptr;
    o.fd_ = -1;
    o.copy_ = false;
  }
  return *this;
}

void MappedFile::release() noexcept {
  if (map_) ::munmap(map_, size_);
  if (fd_ >= 0) ::close(fd_);
  map_ = nullptr;
  fd_ = -1;
}

MappedFile::~MappedFile() { release(); }

void release_pages(const void* data, std::size_t bytes) noexcept {
  const long page = ::sysconf(_SC_PAGESIZE);
  if (page <= 0 || data == nullptr) return;
  const auto p = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t begin = (p + page - 1) / page * page, end = (p + bytes) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void prefault_pages(const void* data, std::size_t bytes, bool for_write) noexcept {
#if defined(MADV_POPULATE_READ) && defined(MADV_POPULATE_WRITE)
  const long page = ::sysconf(_SC_PAGESIZE);
  if (page <= 0 || data == nullptr || bytes == 0) return;
  const auto p = reinterpret_cast<std::uintptr_t>(data);
  const std::uintptr_t begin = p / page * page, end = (p + bytes + page - 1) / page * page;
  ::madvise(reinterpret_cast<void*>(begin), end - begin, for_write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
#else
  (void)data;
  (void)bytes;
  (void)for_write;
#endif
}

std::string read_text_file(const std::string& path, std::size_t max_bytes) {
  MappedFile m = MappedFile::open(path);
  if (m.size() > max_bytes)
    throw Error(ErrorKind::kLimit,
                path + ": file of " + std::to_string(m.size()) + " bytes exceeds the limit of " +
                    std::to_string(max_bytes) + " bytes",
                path);
  return std::string(reinterpret_cast<const char*>(m.data()), m.size());
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string parent_dir(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty() || dir == ".") return name;
  if (dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

namespace {

// The temporary files being written right now, for remove_unfinished_outputs(), which a signal
// handler may call: fixed storage, no allocation, only atomics and unlink(2) on its side.
// A slot is free (0), being filled or emptied (1), or holds a path to remove (2).
constexpr int kSlots = 64;
constexpr std::size_t kSlotPath = 4096;
struct TempSlot {
  std::atomic<int> state{0};
  char path[kSlotPath];
};
TempSlot g_temp_slots[kSlots];

int register_temp(const std::string& path) {
  if (path.size() >= kSlotPath) return -1;
  for (int i = 0; i < kSlots; ++i) {
    int expected = 0;
    if (g_temp_slots[i].state.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
      std::memcpy(g_temp_slots[i].path, path.c_str(), path.size() + 1);
      g_temp_slots[i].state.store(2, std::memory_order_release);
      return i;
    }
  }
  return -1;  // more than 64 files open at once: this one is still removed on errors, just not on signals
}

void unregister_temp(int slot) {
  if (slot >= 0) g_temp_slots[slot].state.store(0, std::memory_order_release);
}

}  // namespace

AtomicFile::AtomicFile(const std::string& path) : path_(path) {
  static std::atomic<unsigned> counter{0};
  temp_ = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(counter++);
  slot_ = register_temp(temp_);  // before the file exists: a signal in between finds nothing to remove
  fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    const int err = errno;
    unregister_temp(slot_);
    os_fail(path, "cannot create output file", err);
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(temp_.c_str());
  }
  unregister_temp(slot_);
}

void AtomicFile::write(const void* data, std::size_t size) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd_, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      os_fail(path_, "write failed", errno);
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0 && errno != EINVAL) os_fail(path_, "fsync failed", errno);
  if (::close(fd_) != 0) {
    const int err = errno;
    fd_ = -1;
    ::unlink(temp_.c_str());
    os_fail(path_, "close failed", err);
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    ::unlink(temp_.c_str());
    unregister_temp(slot_);
    slot_ = -1;
    os_fail(path_, "cannot rename the finished file into place", err);
  }
  unregister_temp(slot_);
  slot_ = -1;
}

int remove_registered_temp_files() noexcept {
  int removed = 0;
  for (auto& slot : g_temp_slots) {
    if (slot.state.load(std::memory_order_acquire) == 2 && ::unlink(slot.path) == 0) ++removed;
  }
  return removed;
}

}  // namespace vitmsn::detail
