#include <algorithm>
#include <chrono>
#include <vector>

#include "kernels.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn {

std::string kernel_isa() { return detail::isa_name(detail::detected_isa()); }

int default_threads() { return detail::default_threads(); }

double measure_fma_peak_gflops(int threads, double seconds) {
  return detail::measure_fma_peak_gflops(std::max(1, threads), seconds);
}

double measure_gemm_gflops(int m, int n, int k, int threads, int runs) {
  std::vector<float> a(static_cast<std::size_t>(m) * k), b(static_cast<std::size_t>(n) * k),
      c(static_cast<std::size_t>(m) * n);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 104729) % 1000) * 1e-3f - 0.5f;
  const detail::Isa isa = detail::detected_isa();
  detail::gemm(isa, m, n, k, a.data(), k, b.data(), k, true, c.data(), n, {}, threads);  // warm-up
  double best = 1e30;
  for (int r = 0; r < std::max(1, runs); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    detail::gemm(isa, m, n, k, a.data(), k, b.data(), k, true, c.data(), n, {}, threads);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * m * n * k / best * 1e-9;
}

}  // namespace vitmsn
