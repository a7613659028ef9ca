#include "cpu/bf16_format.hpp"

#include <algorithm>
#include <cstdlib>
#include <new>
#include <utility>

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
  // Each thread packs whole panels: a channel's row is converted to pairs once (contiguous reads),
  // then written to its column of the panel (stride 32 words: the panel, kp·64 bytes, stays in L2).
  std::vector<std::pair<const Source*, int>> row_of(static_cast<std::size_t>(out.N));
  for (int n = 0, s = 0, r = 0; n < out.N; ++n, ++r) {
    while (r >= parts[s].rows) {
      ++s;
      r = 0;
    }
    row_of[n] = {&parts[s], r};
  }
  run_split(threads, [&](int t, int nt) {
    std::vector<std::uint16_t> h(static_cast<std::size_t>(out.kp));
    for (int q = split_begin(panels, t, nt); q < split_begin(panels, t + 1, nt); ++q) {
      std::uint32_t* d = p + static_cast<std::size_t>(q) * pairs * kPanel;
      for (int c = 0; c < kPanel; ++c) {
        const int n = q * kPanel + c;
        std::fill(h.begin(), h.end(), std::uint16_t{0});
        if (n < out.N) {
          const Source& s = *row_of[n].first;
          const std::ptrdiff_t at = static_cast<std::ptrdiff_t>(row_of[n].second) * s.ld;
          if (s.bf16) {
            std::copy(s.bf16 + at, s.bf16 + at + K, h.begin());
          } else if (s.f32) {
            for (int k = 0; k < K; ++k) h[k] = float_to_bf16(s.f32[at + k]);
          } else {
            for (int k = 0; k < K; ++k) h[k] = float_to_bf16(half_to_float(s.f16[at + k]));
          }
        }
        for (int k2 = 0; k2 < pairs; ++k2)
          d[static_cast<std::size_t>(k2) * kPanel + c] =
              static_cast<std::uint32_t>(h[2 * k2]) | static_cast<std::uint32_t>(h[2 * k2 + 1]) << 16;
      }
    }
  });
  return out;
}

}  // namespace vitmsn::detail::bf16
