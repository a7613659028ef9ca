#pragma once
// Large float buffers for activations and kernel scratch: 64-byte aligned and, from 2 MB up, 2 MB
// aligned and marked for transparent huge pages. The GEMM's packing and the attention kernel walk
// these buffers by rows of 4-16 KB; with 4 KB pages nearly every row is another TLB entry (a 12 MB
// q | k | v buffer spans 3,000 pages, more than the second-level TLB holds), with 2 MB pages six.
#include <cstddef>
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
  ~FloatBuffer() { std::free(p_); }

  /// Makes room for at least `floats` values; the contents are not kept (nor initialised).
  void resize(std::size_t floats) {
    if (floats <= n_ && p_ != nullptr) return;
    std::free(p_);
    p_ = nullptr;
    n_ = 0;
    constexpr std::size_t kHuge = std::size_t{2} << 20;
    std::size_t bytes = ((floats < 16 ? 16 : floats) * sizeof(float) + 63) / 64 * 64;
    const std::size_t align = bytes >= kHuge ? kHuge : 64;
    bytes = (bytes + align - 1) / align * align;
    p_ = static_cast<float*>(std::aligned_alloc(align, bytes));
    if (p_ == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == kHuge) madvise(p_, bytes, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
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
  float* p_ = nullptr;
  std::size_t n_ = 0;
};

}  // namespace
}  // namespace vitmsn::detail
