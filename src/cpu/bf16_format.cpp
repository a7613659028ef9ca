#include "cpu/bf16_format.hpp"

#include <cstdlib>
#include <new>

#include "cpu/half.hpp"
#include "cpu/parallel.hpp"

namespace vitmsn::detail::bf16 {

Panels pack(const std::vector<Source>& parts, int K, int threads) {
  Panels out;
  for (const auto& s : parts) out.N += s.rows;
  out.K = K;
  out.kp = padded_k(K);
  const int panels = (out.N + kPanel - 1) / kPanel, pairs = out.kp / 2;
  const std::size_t words = static_cast<std::size_t>(panels) * pairs * kPanel;
  auto* p = static_cast<std::uint32_t*>(std::aligned_alloc(64, (words * 4 + 63) / 64 * 64));
  if (p == nullptr) throw std::bad_alloc();
  out.words = std::shared_ptr<std::uint32_t>(p, std::free);
  // Row n of the stacked operand: its source and row pointer.
  std::vector<const Source*> src(static_cast<std::size_t>(out.N));
  std::vector<int> row(static_cast<std::size_t>(out.N));
  for (int n = 0, s = 0, r = 0; n < out.N; ++n, ++r) {
    while (r >= parts[s].rows) {
      ++s;
      r = 0;
    }
    src[n] = &parts[s];
    row[n] = r;
  }
  const auto value = [&](int n, int k) -> std::uint16_t {
    if (n >= out.N || k >= K) return 0;
    const Source& s = *src[n];
    const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(row[n]) * s.ld + k;
    if (s.bf16) return s.bf16[at];
    return float_to_bf16(s.f32 ? s.f32[at] : half_to_float(s.f16[at]));
  };
  run_split(threads, [&](int t, int nt) {
    for (int q = split_begin(panels, t, nt); q < split_begin(panels, t + 1, nt); ++q) {
      std::uint32_t* d = p + static_cast<std::size_t>(q) * pairs * kPanel;
      for (int c = 0; c < kPanel; ++c) {
        const int n = q * kPanel + c;
        for (int k2 = 0; k2 < pairs; ++k2)
          d[static_cast<std::size_t>(k2) * kPanel + c] =
              static_cast<std::uint32_t>(value(n, 2 * k2)) | static_cast<std::uint32_t>(value(n, 2 * k2 + 1)) << 16;
      }
    }
  });
  return out;
}

}  // namespace vitmsn::detail::bf16
