#include "file_util.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "vitmsn/error.hpp"

namespace vitmsn::detail {

namespace {
std::string errno_text() { return std::strerror(errno); }
}  // namespace

MappedFile MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw Error(path + ": cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const std::string why = errno_text();
    ::close(fd);
    throw Error(path + ": cannot stat: " + why);
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": is a directory, not a file");
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw Error(path + ": not a regular file");
  }
  MappedFile m;
  m.size_ = static_cast<std::size_t>(st.st_size);
  if (m.size_ > 0) {
    void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const std::string why = errno_text();
      ::close(fd);
      throw Error(path + ": cannot memory-map: " + why);
    }
    m.map_ = p;
    m.data_ = static_cast<const std::uint8_t*>(p);
  }
  ::close(fd);
  return m;
}

MappedFile::MappedFile(MappedFile&& o) noexcept : data_(o.data_), size_(o.size_), map_(o.map_) {
  o.data_ = nullptr;
  o.size_ = 0;
  o.map_ = nullptr;
}

MappedFile& MappedFile::operator=(MappedFile&& o) noexcept {
  if (this != &o) {
    if (map_) ::munmap(map_, size_);
    data_ = o.data_;
    size_ = o.size_;
    map_ = o.map_;
    o.data_ = nullptr;
    o.size_ = 0;
    o.map_ = nullptr;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (map_) ::munmap(map_, size_);
}

std::string read_text_file(const std::string& path, std::size_t max_bytes) {
  MappedFile m = MappedFile::open(path);
  if (m.size() > max_bytes)
    throw Error(path + ": file of " + std::to_string(m.size()) + " bytes exceeds the limit of " +
                std::to_string(max_bytes) + " bytes");
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
    const std::string why = errno_text();
    unregister_temp(slot_);
    throw Error(path + ": cannot create output file: " + why);
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
      throw Error(path_ + ": write failed: " + errno_text());
    }
    p += n;
    size -= static_cast<std::size_t>(n);
  }
}

void AtomicFile::commit() {
  if (::fsync(fd_) != 0 && errno != EINVAL) throw Error(path_ + ": fsync failed: " + errno_text());
  if (::close(fd_) != 0) {
    fd_ = -1;
    ::unlink(temp_.c_str());
    throw Error(path_ + ": close failed: " + errno_text());
  }
  fd_ = -1;
  if (::rename(temp_.c_str(), path_.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(temp_.c_str());
    unregister_temp(slot_);
    slot_ = -1;
    throw Error(path_ + ": cannot rename the finished file into place: " + why);
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
