// Everything about the machine in one place: which kernel variant runs (CPU features and VITMSN_ISA),
// the per-variant kernel tables handed out by kernels(), the GEMM's cache blocking (defaults and the
// VITMSN_GEMM_BLOCKING override), the thread default and the FMA-peak / GEMM-rate measurements.
// Implements src/cpu/cpu.hpp, kernels() of src/cpu/kernels.hpp and the public include/vitmsn/cpu.hpp.
#include "vitmsn/cpu.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "cpu/cpu.hpp"
#include "cpu/kernels.hpp"

#if defined(__linux__)
#include <sched.h>
#endif

namespace vitmsn {
namespace detail {

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return true;
#if VITMSN_X86_KERNELS
    // GCC's and Clang's __builtin_cpu_supports report a feature only when the OS also saves its
    // registers (XCR0 checked via xgetbv), so this is "CPU and OS support".
    case Isa::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::kAvx512:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#endif
    default:
      return false;
  }
}

Isa detected_isa() {
  static const Isa isa = [] {
    Isa best = Isa::kPortable;
    if (isa_available(Isa::kAvx2)) best = Isa::kAvx2;
    if (isa_available(Isa::kAvx512)) best = Isa::kAvx512;
    if (const char* env = std::getenv("VITMSN_ISA")) {
      const std::string want(env);
      Isa asked = best;
      if (want == "portable") asked = Isa::kPortable;
      if (want == "avx2") asked = Isa::kAvx2;
      if (want == "avx512") asked = Isa::kAvx512;
      if (static_cast<int>(asked) < static_cast<int>(best)) best = asked;  // only ever lower
    }
    return best;
  }();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "portable";
  }
}

const KernelTable& kernels(Isa isa) {
  static const KernelTable portable = portable_kernel_table();
#if VITMSN_X86_KERNELS
  static const bool has_avx2 = isa_available(Isa::kAvx2), has_avx512 = isa_available(Isa::kAvx512);
  static const KernelTable avx2 = has_avx2 ? avx2_kernel_table() : portable;
  static const KernelTable avx512 = has_avx512 ? avx512_kernel_table() : portable;
  if (isa == Isa::kAvx512 && has_avx512) return avx512;
  if (isa != Isa::kPortable && has_avx2) return avx2;
#endif
  return portable;
}

Blocking gemm_blocking(Isa isa) {
  // The override, read once: three integers, else ignored.
  static const struct Override {
    bool set = false;
    Blocking value{0, 0, 0};
    Override() {
      if (const char* s = std::getenv("VITMSN_GEMM_BLOCKING")) {
        long kc = 0, mc = 0, bf = 0;
        if (std::sscanf(s, "%ld,%ld,%ld", &kc, &mc, &bf) == 3) {
          set = true;
          value = {static_cast<int>(kc), static_cast<int>(mc), static_cast<std::size_t>(bf)};
        }
      }
    }
  } override_blocking;
  if (override_blocking.set) return override_blocking.value;
  switch (isa) {
    case Isa::kAvx512:
      // By analogy with the AVX2 measurements (not measured on an AVX-512 CPU): kc = 256 (a kc×NR
      // slice of B is 32 KB), mc = 224 (A block 224 KB in a 1-2 MB L2); packed B up to 8 MB.
      return {256, 224, std::size_t{2} << 20};
    default:
      // Measured on Zen 3 (32 KB L1d, 512 KB L2): kc = 512 (a kc×NR slice of B is 32 KB, streamed from
      // L2 with prefetch and reused over mc/MR tiles; fewer passes over partial sums than kc = 256,
      // which measured 4-8 % slower), mc = 96 (A block 192 KB in L2); packed B up to 8 MB (K × nc) so
      // that A is packed once per thread for the model's shapes. (The portable GEMM does not block.)
      return {512, 96, std::size_t{2} << 20};
  }
}

}  // namespace detail

std::string kernel_isa() { return detail::isa_name(detail::detected_isa()); }

int default_threads() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

double measure_fma_peak_gflops(int threads, double seconds) {
  threads = std::max(1, threads);
  // The widest FMA the CPU has, whatever VITMSN_ISA says: this measures the machine.
  const detail::Isa widest = detail::isa_available(detail::Isa::kAvx512) ? detail::Isa::kAvx512
                             : detail::isa_available(detail::Isa::kAvx2) ? detail::Isa::kAvx2
                                                                         : detail::Isa::kPortable;
  double (*const burst)(long) = detail::kernels(widest).fma_burst;
  std::vector<double> flops(static_cast<std::size_t>(threads), 0.0);
  const auto start = std::chrono::steady_clock::now();
  const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(); };
  const auto work = [&](int t) {
    do flops[static_cast<std::size_t>(t)] += burst(1 << 14);
    while (elapsed() < seconds);
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
  const double total_time = elapsed();
  double total = 0.0;
  for (double f : flops) total += f;
  return total_time > 0.0 ? total / total_time * 1e-9 : 0.0;
}

double measure_gemm_gflops(int m, int n, int k, int threads, int runs) {
  std::vector<float> a(static_cast<std::size_t>(m) * k), b(static_cast<std::size_t>(n) * k),
      c(static_cast<std::size_t>(m) * n);
  for (std::size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>((i * 7919) % 1000) * 1e-3f - 0.5f;
  for (std::size_t i = 0; i < b.size(); ++i) b[i] = static_cast<float>((i * 104729) % 1000) * 1e-3f - 0.5f;
  const detail::KernelTable& kt = detail::kernels(detail::detected_isa());
  kt.gemm(m, n, k, a.data(), k, b.data(), k, true, c.data(), n, {}, threads);  // warm-up
  double best = 1e30;
  for (int r = 0; r < std::max(1, runs); ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    kt.gemm(m, n, k, a.data(), k, b.data(), k, true, c.data(), n, {}, threads);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return 2.0 * m * n * k / best * 1e-9;
}

}  // namespace vitmsn
