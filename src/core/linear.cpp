#include "core/linear.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <new>

#include "base/contract.hpp"
#include "base/file_util.hpp"
#include "cpu/buffer.hpp"
#include "cpu/int8_format.hpp"
#include "cpu/parallel.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace vitmsn::detail {

namespace {

WeightType weight_type(DType d) {
  return d == DType::kBF16 ? WeightType::kBF16 : d == DType::kF16 ? WeightType::kF16 : WeightType::kF32;
}

/// `floats` floats, 2 MB aligned and marked for transparent huge pages from 2 MB up (the panels are
/// streamed by the GEMM: fewer TLB entries), 64-byte aligned below.
std::shared_ptr<float> allocate_panels(std::size_t floats) {
  constexpr std::size_t kHuge = std::size_t{2} << 20;
  std::size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
  const std::size_t align = bytes >= kHuge ? kHuge : 64;
  bytes = (bytes + align - 1) / align * align;
  auto* p = static_cast<float*>(std::aligned_alloc(align, bytes));
  if (p == nullptr) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (align == kHuge) madvise(p, bytes, MADV_HUGEPAGE);  // a hint: ignored where THP is off
#endif
  return std::shared_ptr<float>(p, std::free);
}

/// Page tables for a new buffer about to be packed into, as prefault_pages(for_write), the range
/// shared by `threads` in 2 MB units: the kernel zeroes each new page on the thread that asks for it,
/// and at load that zeroing (1.2 GB on ViT-L/7) is the largest cost that one thread would carry alone.
void prefault_for_write(void* data, std::size_t bytes, int threads) {
  constexpr std::size_t kUnit = std::size_t{2} << 20;
  const int units = static_cast<int>((bytes + kUnit - 1) / kUnit);
  run_split(threads < units ? threads : units, [&](int t, int nt) {
    const std::size_t b = static_cast<std::size_t>(split_begin(units, t, nt)) * kUnit;
    const std::size_t e = static_cast<std::size_t>(split_begin(units, t + 1, nt)) * kUnit;
    if (b < bytes) prefault_pages(static_cast<char*>(data) + b, (e < bytes ? e : bytes) - b, /*for_write=*/true);
  });
}

bf16::Source bf16_source(const LinearWeight& w) {
  bf16::Source s;
  if (w.dtype == DType::kBF16)
    s.bf16 = static_cast<const std::uint16_t*>(w.data);
  else if (w.dtype == DType::kF16)
    s.f16 = static_cast<const std::uint16_t*>(w.data);
  else
    s.f32 = static_cast<const float*>(w.data);
  s.ld = w.cols;
  s.rows = static_cast<int>(w.rows);
  return s;
}

// y[M, out] = epilogue(x[M, in]·Wᵀ) for `segments` int8 weights stacked along the output: the int8
// GEMM of the kernel table, with the outlier split (int8_format.hpp) when the activations have
// outlier channels; its float product goes to a per-thread scratch buffer.
void apply_int8(Isa isa, const int8::Scheme& scheme, int M, const float* x, std::ptrdiff_t ldx,
                const std::vector<const LinearWeight*>& w, float* y, std::ptrdiff_t ldy, const Epilogue& ep,
                int threads) {
  const int segments = static_cast<int>(w.size());
  const std::int8_t* panels[3];
  const float* scales[3];
  for (int s = 0; s < segments; ++s) {
    panels[s] = static_cast<const std::int8_t*>(w[s]->data);
    scales[s] = w[s]->scale;
  }
  const int seg_rows = static_cast<int>(w[0]->rows), K = static_cast<int>(w[0]->cols);
  const int kp = int8::padded_k(K);
  if (scheme.grouping != int8::Grouping::kBlock32)
    return int8::gemm_grouped(scheme.grouping, M, seg_rows, segments, K, kp, x, ldx, panels, scales, y, ldy, ep.bias,
                              ep.gelu, ep.residual, ep.ldr);
  const KernelTable& kt = kernels(isa);
  const std::vector<int> ch = scheme.outlier_split ? int8::find_outlier_channels(x, ldx, M, K) : std::vector<int>{};
  if (ch.empty()) return kt.gemm_int8(M, seg_rows, segments, K, kp, x, ldx, panels, scales, y, ldy, ep, threads);
  // These channels leave the quantization; their product with the weight columns is computed in
  // float and added before the bias.
  const int N = seg_rows * segments, J = static_cast<int>(ch.size());
  std::vector<std::uint32_t> excluded(static_cast<std::size_t>(kp / int8::kBlock), 0u);
  std::vector<float> wcols(static_cast<std::size_t>(J) * N);
  for (int j = 0; j < J; ++j) {
    excluded[ch[j] / int8::kBlock] |= 1u << (ch[j] % int8::kBlock);
    for (int s = 0; s < segments; ++s)
      for (int r = 0; r < seg_rows; ++r)
        wcols[static_cast<std::size_t>(j) * N + s * seg_rows + r] = int8::dequantized_weight(
            panels[s], scales[s], w[s]->residual, w[s]->residual_scale, seg_rows, r, ch[j], kp);
  }
  static thread_local FloatBuffer scratch;
  float* p = scratch.get(static_cast<std::size_t>(M) * N);
  kt.outlier_product(M, N, J, x, ldx, ch.data(), wcols.data(), p, N, threads);
  Epilogue e = ep;
  e.int8_excluded = excluded.data();
  e.int8_pre = p;
  e.ldp = N;
  kt.gemm_int8(M, seg_rows, segments, K, kp, x, ldx, panels, scales, y, ldy, e, threads);
}

}  // namespace

Linear Linear::from_panels(Isa isa, const std::vector<const LinearWeight*>& parts, LinearCompute compute, int threads,
                           const std::function<void(const LinearWeight&)>& release) {
  const LinearWeight& w0 = *parts[0];
  const int width = w0.panel_width;
  bool in_place = compute == LinearCompute::kF32 && kernels(isa).packed_nr == width;
  for (const LinearWeight* w : parts)
    in_place = in_place && w->panel_width == width && w->dtype == DType::kF32 && w->rows == w0.rows &&
               w->cols == w0.cols && reinterpret_cast<std::uintptr_t>(w->data) % 64 == 0;
  if (in_place && parts.size() > 1) {
    // Stacked in place: whole panels each, one right after the other in the file (vitmsn-convert
    // writes query, key and value so); else one Linear per part.
    bool contiguous = w0.rows % width == 0;
    for (std::size_t s = 1; s < parts.size(); ++s)
      contiguous = contiguous && static_cast<const char*>(parts[s]->data) ==
                                     static_cast<const char*>(parts[s - 1]->data) + parts[s - 1]->stored_bytes();
    if (!contiguous) {
      Linear l;
      l.isa_ = isa;
      l.k_ = static_cast<int>(w0.cols);
      l.path_ = Path::kParts;
      for (const LinearWeight* w : parts) {
        l.parts_.push_back(from_panels(isa, {w}, compute, threads, release));
        l.n_ += l.parts_.back().n_;
      }
      return l;
    }
  }
  if (in_place) {
    Linear l;
    l.isa_ = isa;
    l.k_ = static_cast<int>(w0.cols);
    for (const LinearWeight* w : parts) l.n_ += static_cast<int>(w->rows);
    l.path_ = Path::kPanels;
    l.panels_ = std::shared_ptr<float>(const_cast<float*>(static_cast<const float*>(w0.data)), [](float*) {});
    l.panels_in_file_ = true;
    return l;
  }
  // Another CPU's panel width, the portable kernels or bf16 compute: each weight laid out [out, in]
  // again (panels split over the threads), then prepared as any float32 weight.
  auto plain = std::make_shared<std::vector<LinearWeight>>(parts.size());
  std::vector<std::shared_ptr<const void>> copies;
  std::vector<const LinearWeight*> plain_parts;
  for (std::size_t s = 0; s < parts.size(); ++s) {
    const LinearWeight& w = *parts[s];
    const std::int64_t rows = w.rows, cols = w.cols;
    std::shared_ptr<float> buf(new float[static_cast<std::size_t>(rows * cols)], std::default_delete<float[]>());
    const auto* src = static_cast<const float*>(w.data);
    float* dst = buf.get();
    const int panels = static_cast<int>((rows + width - 1) / width);
    run_split(threads < panels ? threads : panels, [&](int t, int nt) {
      const std::int64_t n1 =
          std::min<std::int64_t>(rows, static_cast<std::int64_t>(split_begin(panels, t + 1, nt)) * width);
      for (std::int64_t n = static_cast<std::int64_t>(split_begin(panels, t, nt)) * width; n < n1; ++n)
        for (std::int64_t k = 0; k < cols; ++k) dst[n * cols + k] = src[panel_offset(n, k, cols, width)];
    });
    (*plain)[s] = w;
    (*plain)[s].data = dst;
    (*plain)[s].panel_width = 0;
    plain_parts.push_back(&(*plain)[s]);
    copies.push_back(std::move(buf));
  }
  Linear l = prepare(isa, plain_parts, compute, threads, {});
  if (!l.holds_its_weights()) {  // it reads the copies (the portable kernels): they stay with it
    l.keep_ = std::move(copies);
    l.keep_.push_back(plain);
  }
  if (release)
    for (const LinearWeight* w : parts) release(*w);
  return l;
}

Linear Linear::prepare(Isa isa, const std::vector<const LinearWeight*>& parts, LinearCompute compute, int threads,
                       const std::function<void(const LinearWeight&)>& release) {
  VITMSN_DASSERT(!parts.empty() && parts.size() <= 3, "1 to 3 weights stacked in one linear layer");
  if (parts[0]->panel_width > 0) return from_panels(isa, parts, compute, threads, release);
  Linear l;
  l.isa_ = isa;
  l.k_ = static_cast<int>(parts.at(0)->cols);
  bool same = true;
  for (const LinearWeight* w : parts) {
    l.n_ += static_cast<int>(w->rows);
    same = same && w->dtype == parts[0]->dtype && w->rows == parts[0]->rows && w->cols == parts[0]->cols;
  }
  const DType dtype = parts[0]->dtype;
  const auto give_back = [&] {
    if (release)
      for (const LinearWeight* w : parts) release(*w);
  };
  if (compute == LinearCompute::kBF16) {  // any float types, stacked as they are
    std::vector<bf16::Source> src;
    for (const LinearWeight* w : parts) src.push_back(bf16_source(*w));
    l.path_ = Path::kBF16;
    l.bf16_ = bf16::pack(src, l.k_, threads);
    give_back();
    return l;
  }
  const KernelTable& kt = kernels(isa);
  const bool int8_stackable = parts.size() == 1 || parts[0]->rows % int8::kPanel == 0;
  if (!same || (dtype == DType::kI8 && !int8_stackable)) {
    l.path_ = Path::kParts;
    for (const LinearWeight* w : parts) l.parts_.push_back(prepare(isa, {w}, compute, threads, release));
    return l;
  }
  l.stored_ = parts;
  if (dtype == DType::kI8) {
    l.path_ = Path::kInt8;
  } else if (dtype == DType::kF32 && kt.packed_nr > 0) {
    l.path_ = Path::kPanels;
    const int panels = (l.n_ + kt.packed_nr - 1) / kt.packed_nr;
    l.panel_floats_ = static_cast<std::size_t>(panels) * kt.packed_nr * l.k_;
    l.panels_ = allocate_panels(l.panel_floats_);
    // Page tables in a few calls rather than a fault per page: the packing walks both once.
    prefault_for_write(l.panels_.get(), l.panel_floats_ * sizeof(float), threads);
    for (const LinearWeight* w : parts)
      prefault_pages(w->data, static_cast<std::size_t>(w->rows * w->cols) * sizeof(float), /*for_write=*/false);
    const void* w[3] = {nullptr, nullptr, nullptr};
    for (std::size_t s = 0; s < parts.size(); ++s) w[s] = parts[s]->data;
    kt.pack_panels(static_cast<int>(parts[0]->rows), static_cast<int>(parts.size()), l.k_, w, WeightType::kF32,
                   parts[0]->cols, l.panels_.get(), threads);
    l.stored_.clear();
    give_back();
  } else {
    l.path_ = Path::kStored;
  }
  return l;
}

void Linear::apply(int M, const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, const Epilogue& ep,
                   int threads) const {
  const KernelTable& kt = kernels(isa_);
  switch (path_) {
    case Path::kPanels:
      return kt.gemm_packed(M, n_, k_, x, ldx, panels_.get(), y, ldy, ep, threads);
    case Path::kBF16:
      return kt.gemm_bf16(M, x, ldx, bf16_, y, ldy, ep, threads);
    case Path::kInt8:
      return apply_int8(isa_, int8_scheme_, M, x, ldx, stored_, y, ldy, ep, threads);
    case Path::kStored: {
      const LinearWeight& w0 = *stored_[0];
      if (stored_.size() == 1)
        return gemm_weights(isa_, M, n_, k_, x, ldx, w0.data, weight_type(w0.dtype), w0.cols, y, ldy, ep, threads);
      const void* w[3] = {nullptr, nullptr, nullptr};
      for (std::size_t s = 0; s < stored_.size(); ++s) w[s] = stored_[s]->data;
      return kt.gemm_weights_stacked(M, static_cast<int>(w0.rows), static_cast<int>(stored_.size()), k_, x, ldx, w,
                                     weight_type(w0.dtype), w0.cols, y, ldy, ep, threads);
    }
    case Path::kParts: {
      int n0 = 0;
      for (const Linear& part : parts_) {
        Epilogue e = ep;
        if (e.bias) e.bias += n0;
        if (e.residual) e.residual += n0;
        part.apply(M, x, ldx, y + n0, ldy, e, threads);
        n0 += part.n_;
      }
      return;
    }
    case Path::kNone:
      break;
  }
}

void Linear::set_int8_scheme(const int8::Scheme& scheme) {
  int8_scheme_ = scheme;
  for (Linear& p : parts_) p.set_int8_scheme(scheme);
}

bool Linear::holds_its_weights() const {
  if (path_ == Path::kPanels) return !panels_in_file_;
  if (path_ == Path::kBF16) return true;
  if (path_ != Path::kParts) return false;
  for (const Linear& p : parts_)
    if (!p.holds_its_weights()) return false;
  return true;
}

std::size_t Linear::packed_bytes() const {
  std::size_t n = panel_floats_ * sizeof(float) + (path_ == Path::kBF16 ? bf16_.bytes() : 0);
  for (const Linear& p : parts_) n += p.packed_bytes();
  return n;
}

}  // namespace vitmsn::detail
