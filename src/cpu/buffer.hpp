#pragma once
// Large float buffers for activations and kernel scratch: 64-byte aligned and, from 2 MB up, 2 MB
// aligned and marked for transparent huge pages. The GEMM's packing and the attention kernel walk
// these buffers by rows of 4-16 KB; with 4 KB pages nearly every row is another TLB entry (a 12 MB
// q | k | v buffer spans 3,000 pages, more than the second-level TLB holds), with 2 MB pages six.
//
// From 128 KB up a buffer is its own anonymous mapping (mmap/munmap), not malloc's: a forward pass
// allocates and frees the same large buffers for every image, and once glibc has freed a large
// block it raises its mmap threshold and serves the next ones from the heap, where small long-lived
// allocations made in between split the freed space — the heap then grew by about 1 MB per image
// over a long vitmsn-extract run (212 MB max RSS after 200 tiny-model images instead of 47 MB).
// A mapping goes back to the system when the buffer is freed, whatever else was allocated.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#endif

// Internal linkage (anonymous namespace), as half.hpp: the ISA files include this header too, and an
// inline function compiled with -mavx512f must never be the copy the linker keeps for the others.
namespace vitmsn::detail {
namespace {

class FloatBuffer {
 public:
  FloatBuffer() = default;
  explicit FloatBuffer(std::size_t floats) { resize(floats); }
  FloatBuffer(const FloatBuffer&) = delete;
  FloatBuffer& operator=(const FloatBuffer&) = delete;
  FloatBuffer(FloatBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  FloatBuffer& operator=(FloatBuffer&& o) noexcept {
    if (this != &o) {
      release();
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  ~FloatBuffer() { release(); }

  /// Makes room for at least `floats` values; the contents are not kept (nor initialised).
  void resize(std::size_t floats) {
    if (floats <= n_ && p_ != nullptr) return;
    release();
    std::size_t bytes = ((floats < 16 ? 16 : floats) * sizeof(float) + 63) / 64 * 64;
    if (bytes >= kMapped) {
      const std::size_t align = bytes >= kHuge ? kHuge : kPage;
      bytes = (bytes + align - 1) / align * align;
      p_ = static_cast<float*>(map_aligned(bytes, align));
    } else {
      p_ = static_cast<float*>(std::aligned_alloc(64, bytes));
    }
    if (p_ == nullptr) throw std::bad_alloc();
    n_ = bytes / sizeof(float);
  }

  /// Grow-only scratch: resize(floats), then data().
  float* get(std::size_t floats) {
    resize(floats);
    return p_;
  }

  float* data() { return p_; }
  const float* data() const { return p_; }
  std::size_t size() const { return n_; }

 private:
  static constexpr std::size_t kHuge = std::size_t{2} << 20;
  static constexpr std::size_t kPage = 4096;
  static constexpr std::size_t kMapped = std::size_t{128} << 10;  // from here on: a mapping of its own

  // `bytes` (a multiple of `align`, 4 KB or 2 MB) of fresh zero pages at an `align` boundary; from
  // 2 MB marked for transparent huge pages (a hint: ignored where THP is off). Null when the system
  // has no memory for it.
  static void* map_aligned(std::size_t bytes, std::size_t align) {
#if defined(__linux__)
    const std::size_t extra = align > kPage ? align : 0;
    void* raw = ::mmap(nullptr, bytes + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return nullptr;
    const auto r = reinterpret_cast<std::uintptr_t>(raw);
    const std::uintptr_t a = (r + align - 1) / align * align;
    if (a > r) ::munmap(raw, a - r);                                                 // the head before the boundary
    if (r + extra > a) ::munmap(reinterpret_cast<void*>(a + bytes), r + extra - a);  // the tail past the buffer
#if defined(MADV_HUGEPAGE)
    if (align == kHuge) ::madvise(reinterpret_cast<void*>(a), bytes, MADV_HUGEPAGE);
#endif
    return reinterpret_cast<void*>(a);
#else
    return std::aligned_alloc(align, bytes);
#endif
  }

  void release() noexcept {
    if (p_ != nullptr) {
#if defined(__linux__)
      if (n_ * sizeof(float) >= kMapped)
        ::munmap(p_, n_ * sizeof(float));
      else
        std::free(p_);
#else
      std::free(p_);
#endif
    }
    p_ = nullptr;
    n_ = 0;
  }

  float* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace
}  // namespace vitmsn::detail
