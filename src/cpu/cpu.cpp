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

#include "core/measure.hpp"
#include "cpu/cpu.hpp"
#include "cpu/kernels.hpp"
#include "vitmsn/error.hpp"

#if VITMSN_X86_KERNELS
#include <cpuid.h>
#endif

#if defined(__linux__)
#include <sched.h>
#endif

namespace vitmsn {
namespace detail {

namespace {
// The fractions of L1d and L2 that the GEMM's B slice (kc × NR floats) and A block (mc × kc floats)
// fill (derive_blocking()), per variant, from sweeps on real CPUs:
// - AVX2, AMD Zen 3 (32 KB L1d, 512 KB L2): kc = 512, mc = 96 were the best of a sweep (kc = 256
//   4-8 % slower): a B slice the size of L1d, an A block of 192 KB.
// - AVX-512, Intel Xeon of the Sapphire Rapids class (48 KB L1d, 2 MB L2), 2026-11-29, with weights
//   streamed from memory as in the model: kc = 512, mc = 224 (A block 448 KB) gave 72-74 % of the
//   single-core FMA peak on [1025 × 1024]·[2048 × 1024]ᵀ against 65-67 % for the former 256 / 224 and
//   61-63 % for 192 or 128; 2 threads: +5 % on every linear-layer shape.
constexpr double kAvx2L1Share = 1.0, kAvx2L2Share = 0.375;
constexpr double kAvx512L1Share = 4.0 / 3.0, kAvx512L2Share = 0.21875;
// - AVX-512, AMD Zen 5 (EPYC family 26, 48 KB L1d, 1 MB L2, a 2-core VM), 2026-12-04, the whole
//   ViT-L/7 forward (vitmsn-bench, 2 threads, weights packed at load): kc = 256, mc = 280 (a B slice
//   of 32 KB that stays in L1d, an A block of 280 KB) ran the linear layers at 80-82 % of the FMA peak
//   against 68-70 % for the Intel shares (kc = 512, mc = 112 there) and 63-65 % for 336 / 84; see
//   docs/PERFORMANCE.md for the sweep. Used on AMD CPUs.
//   2026-12-06, another machine of that kind, weights pre-packed, old and new blocking alternating in
//   one process on ViT-L's four linear shapes: kc = 1024, mc = 280 (a B slice of 128 KB read from L2
//   by every row tile, an A block of 1.1 MB; ViT-L's K = 1024 in one block, so C is written once with
//   its epilogue) 11 % faster than 256 / 280 at 2 threads (qkv +15 %, fc1 +16 %, attention output
//   +9 %, fc2 +3 %), 10 % at 1 thread, 3 % faster than 512 / 280; mc = 140, 196, 420, 560 or 1036
//   1-4 % slower; whole forward (vitmsn-bench, alternating) 1.672-1.680 s -> 1.615-1.654 s. The
//   shares below give exactly that on Zen 5's 48 KB L1d and 1 MB L2 (kc = 1056 capped at 1024); on
//   Zen 4's 32 KB L1d they give kc = 704, mc = 406, not measured (no Zen 4 machine since).
constexpr double kAvx512AmdL1Share = 2.75, kAvx512AmdL2Share = 1.09375;
}  // namespace

namespace {

#if VITMSN_X86_KERNELS
// The feature bits, read once: CPUID leaf 1 (ECX), leaf 7 sub-leaf 0 (EBX, ECX), leaf 7 sub-leaf 1
// (EAX), and XCR0 (XGETBV, only when the OS has enabled it: CPUID.1:ECX.OSXSAVE[27]).
struct CpuidBits {
  unsigned l1_ecx = 0, l7_ebx = 0, l7_ecx = 0, l7s1_eax = 0;
  unsigned long long xcr0 = 0;
};

CpuidBits read_cpuid_bits() {
  CpuidBits r;
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &c, &d)) return r;
  const unsigned max_leaf = a;
  if (max_leaf >= 1 && __get_cpuid_count(1, 0, &a, &b, &c, &d)) r.l1_ecx = c;
  if (max_leaf >= 7 && __get_cpuid_count(7, 0, &a, &b, &c, &d)) {
    const unsigned max_sub_leaf = a;
    r.l7_ebx = b;
    r.l7_ecx = c;
    if (max_sub_leaf >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) r.l7s1_eax = a;
  }
  if (r.l1_ecx & (1u << 27)) {  // OSXSAVE: XGETBV is available (inline: _xgetbv needs -mxsave)
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    r.xcr0 = (static_cast<unsigned long long>(hi) << 32) | lo;
  }
  return r;
}
#endif

}  // namespace

bool cpu_has(CpuFeature f) {
#if VITMSN_X86_KERNELS
  static const CpuidBits r = read_cpuid_bits();
  const auto bit = [](unsigned reg, int i) { return ((reg >> i) & 1u) != 0; };
  // XCR0: SSE (1) and AVX (2) state for the YMM registers; opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7) for AVX-512.
  const bool os_ymm = (r.xcr0 & 0x6) == 0x6, os_zmm = os_ymm && (r.xcr0 & 0xe0) == 0xe0;
  const bool avx = os_ymm && bit(r.l1_ecx, 28);
  const bool avx512f = os_zmm && bit(r.l7_ebx, 16);
  switch (f) {
    case CpuFeature::kAvx2:
      return avx && bit(r.l7_ebx, 5);
    case CpuFeature::kFma:
      return avx && bit(r.l1_ecx, 12);
    case CpuFeature::kF16c:
      return avx && bit(r.l1_ecx, 29);
    case CpuFeature::kAvx512f:
      return avx512f;
    case CpuFeature::kAvx512dq:
      return avx512f && bit(r.l7_ebx, 17);
    case CpuFeature::kAvx512bw:
      return avx512f && bit(r.l7_ebx, 30);
    case CpuFeature::kAvx512vl:
      return avx512f && bit(r.l7_ebx, 31);
    case CpuFeature::kAvx512vnni:
      return avx512f && bit(r.l7_ecx, 11);
    case CpuFeature::kAvxVnni:
      return avx && bit(r.l7s1_eax, 4);
    case CpuFeature::kAvx512bf16:
      return avx512f && bit(r.l7s1_eax, 5);
  }
#else
  (void)f;
#endif
  return false;
}

bool isa_available(Isa isa) {
  switch (isa) {
    case Isa::kPortable:
      return true;
#if VITMSN_X86_KERNELS
    // cpu_has() checks the OS's register saving too (XCR0), so this is "CPU and OS support". The
    // variants' files are compiled with -mavx2 -mfma -mf16c (and the AVX-512 flags).
    case Isa::kAvx2:
      return cpu_has(CpuFeature::kAvx2) && cpu_has(CpuFeature::kFma) && cpu_has(CpuFeature::kF16c);
    case Isa::kAvx512:
      return cpu_has(CpuFeature::kAvx512f) && cpu_has(CpuFeature::kAvx512bw) && cpu_has(CpuFeature::kAvx512dq) &&
             cpu_has(CpuFeature::kAvx512vl) && isa_available(Isa::kAvx2);
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
    if (const char* env = std::getenv("VITMSN_ISA"); env && *env) {
      const std::string want(env);
      Isa asked;
      if (want == "portable")
        asked = Isa::kPortable;
      else if (want == "avx2")
        asked = Isa::kAvx2;
      else if (want == "avx512")
        asked = Isa::kAvx512;
      else
        throw Error(ErrorKind::kArgument,
                    "VITMSN_ISA=" + want + ": unknown kernel set; use portable, avx2 or avx512 (or unset it)");
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

namespace {

constexpr std::size_t kKiB = 1024;

std::size_t clamp_size(std::size_t v, std::size_t lo, std::size_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// The first line of a sysfs file without its line end; "" when unreadable.
std::string read_sysfs_word(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "r");
  if (!f) return "";
  char buf[64] = {0};
  const bool ok = std::fgets(buf, sizeof buf, f) != nullptr;
  std::fclose(f);
  std::string s = ok ? buf : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// "48K", "2048K", "32M" as sysfs writes them; 0 when unreadable.
std::size_t read_sysfs_size(const std::string& path) {
  const std::string s = read_sysfs_word(path);
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (end == s.c_str()) return 0;
  if (*end == 'K') return static_cast<std::size_t>(v) * kKiB;
  if (*end == 'M') return static_cast<std::size_t>(v) * kKiB * kKiB;
  return static_cast<std::size_t>(v);
}

bool caches_from_sysfs(CacheSizes* c) {
  bool any = false;
  for (int i = 0; i < 16; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string level = read_sysfs_word(dir + "level"), type = read_sysfs_word(dir + "type");
    if (level.empty()) break;
    const std::size_t size = read_sysfs_size(dir + "size");
    if (size == 0 || type == "Instruction") continue;
    if (level == "1") c->l1d = size;
    if (level == "2") c->l2 = size;
    if (level == "3") c->l3 = size;
    any = true;
  }
  return any;
}

#if VITMSN_X86_KERNELS
// CPUID's deterministic cache parameters: leaf 4 (Intel) or 0x8000001D (AMD), one sub-leaf per cache.
// AMD's older cache leaves, which hypervisors that hide leaf 0x8000001D still pass through (seen on
// a Zen 5 VM): decoded by amd_legacy_caches().
bool caches_from_amd_legacy_cpuid(CacheSizes* c) {
  unsigned a = 0, b = 0, ecx5 = 0, ecx6 = 0, edx6 = 0, d = 0;
  __cpuid(0x80000000u, a, b, ecx5, d);
  if (a < 0x80000006u) return false;
  __cpuid(0x80000005u, a, b, ecx5, d);
  __cpuid(0x80000006u, a, b, ecx6, edx6);
  const CacheSizes got = amd_legacy_caches(ecx5, ecx6, edx6);
  if (got.l1d == 0 || got.l2 == 0) return false;
  c->l1d = got.l1d;
  c->l2 = got.l2;
  if (got.l3 > 0) c->l3 = got.l3;
  return true;
}

bool caches_from_cpuid(CacheSizes* c) {
  unsigned a = 0, b = 0, cx = 0, d = 0;
  if (!__get_cpuid(0, &a, &b, &cx, &d)) return false;
  const bool amd = b == 0x68747541u;  // "Auth"enticAMD
  const unsigned leaf = amd ? 0x8000001Du : 4u;
  if (amd) {
    unsigned max_ext = 0;
    __cpuid(0x80000000u, max_ext, b, cx, d);
    if (max_ext < leaf) return false;
  } else if (a < 4) {
    return false;
  }
  bool any = false;
  for (unsigned sub = 0; sub < 16; ++sub) {
    __cpuid_count(leaf, sub, a, b, cx, d);
    if (sub == 0 && amd && (a & 0x1fu) == 0) return caches_from_amd_legacy_cpuid(c);  // leaf hidden (VMs)
    const unsigned type = a & 0x1fu;  // 1 data, 2 instruction, 3 unified, 0 no more caches
    if (type == 0) break;
    if (type == 2) continue;
    const unsigned level = (a >> 5) & 0x7u;
    const std::size_t ways = ((b >> 22) & 0x3ffu) + 1, parts = ((b >> 12) & 0x3ffu) + 1, line = (b & 0xfffu) + 1;
    const std::size_t size = ways * parts * line * (static_cast<std::size_t>(cx) + 1);
    if (level == 1) c->l1d = size;
    if (level == 2) c->l2 = size;
    if (level == 3) c->l3 = size;
    any = true;
  }
  return any;
}
#endif

}  // namespace

CacheSizes amd_legacy_caches(unsigned ecx_80000005, unsigned ecx_80000006, unsigned edx_80000006) {
  return {static_cast<std::size_t>(ecx_80000005 >> 24) * kKiB, static_cast<std::size_t>(ecx_80000006 >> 16) * kKiB,
          static_cast<std::size_t>(edx_80000006 >> 18) * 512 * kKiB, "cpuid"};
}

namespace {

/// True on AMD x86 CPUs (CPUID vendor "AuthenticAMD"): they get their own GEMM blocking shares.
bool amd_cpu() {
#if VITMSN_X86_KERNELS
  static const bool amd = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(0, &a, &b, &c, &d) && b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u;
  }();
  return amd;
#else
  return false;
#endif
}

}  // namespace

CacheSizes cache_sizes() {
  static const CacheSizes sizes = [] {
    CacheSizes c{32 * kKiB, 512 * kKiB, 8 * kKiB * kKiB, "defaults"};
    if (caches_from_sysfs(&c)) {
      c.source = "sysfs";
#if VITMSN_X86_KERNELS
    } else if (caches_from_cpuid(&c)) {
      c.source = "cpuid";
#endif
    }
    c.l1d = clamp_size(c.l1d, 16 * kKiB, 128 * kKiB);
    c.l2 = clamp_size(c.l2, 128 * kKiB, 8 * kKiB * kKiB);
    c.l3 = clamp_size(c.l3, c.l2, 1024 * kKiB * kKiB);
    return c;
  }();
  return sizes;
}

Blocking derive_blocking(const CacheSizes& caches, int mr, int nr, double l1_share, double l2_share) {
  const double floats_l1 = static_cast<double>(caches.l1d) / sizeof(float);
  const double floats_l2 = static_cast<double>(caches.l2) / sizeof(float);
  int kc = static_cast<int>(l1_share * floats_l1 / nr) / 8 * 8;
  kc = std::min(1024, std::max(64, kc));
  int mc = static_cast<int>(l2_share * floats_l2 / kc) / mr * mr;
  mc = std::min(4096 / mr * mr, std::max(mr, mc));
  return {kc, mc, std::size_t{2} << 20};
}

Blocking gemm_blocking(Isa isa) {
  // The override, read once: exactly three positive integers, else an error naming the variable.
  static const struct Override {
    bool set = false;
    Blocking value{0, 0, 0};
    Override() {
      const char* s = std::getenv("VITMSN_GEMM_BLOCKING");
      if (s == nullptr || *s == '\0') return;
      long kc = 0, mc = 0, bf = 0;
      int used = 0;
      if (std::sscanf(s, "%ld,%ld,%ld%n", &kc, &mc, &bf, &used) != 3 || s[used] != '\0' || kc < 1 || mc < 1 || bf < 1 ||
          kc > (1 << 20) || mc > (1 << 20))
        throw Error(ErrorKind::kArgument,
                    std::string("VITMSN_GEMM_BLOCKING=") + s +
                        ": expected three positive integers KC,MC,PACKED_B_FLOATS (e.g. 512,224,2097152), or unset it");
      set = true;
      value = {static_cast<int>(kc), static_cast<int>(mc), static_cast<std::size_t>(bf)};
    }
  } override_blocking;
  if (override_blocking.set) return override_blocking.value;
  return default_blocking(isa, cache_sizes(), amd_cpu());
}

Blocking default_blocking(Isa isa, const CacheSizes& caches, bool amd) {
  switch (isa) {
    case Isa::kAvx512:
      // 14 × 32 tiles; shares measured on an Intel Xeon of the Sapphire Rapids class and on AMD Zen 5
      // (see above).
      return amd ? derive_blocking(caches, 14, 32, kAvx512AmdL1Share, kAvx512AmdL2Share)
                 : derive_blocking(caches, 14, 32, kAvx512L1Share, kAvx512L2Share);
    default:
      // 6 × 16 tiles; shares measured on AMD Zen 3 (see above).
      return derive_blocking(caches, 6, 16, kAvx2L1Share, kAvx2L2Share);
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

namespace detail {

namespace {

// GFLOP/s of `burst` (FLOPs per call of 2^14 rounds) run on `threads` threads for about `seconds`.
double measure_burst(double (*burst)(long), int threads, double seconds) {
  threads = std::max(1, threads);
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

}  // namespace

double measure_fma_peak_gflops(int threads, double seconds) {
  // The widest FMA the CPU has, whatever VITMSN_ISA says: this measures the machine.
  const detail::Isa widest = detail::isa_available(detail::Isa::kAvx512) ? detail::Isa::kAvx512
                             : detail::isa_available(detail::Isa::kAvx2) ? detail::Isa::kAvx2
                                                                         : detail::Isa::kPortable;
  return measure_burst(detail::kernels(widest).fma_burst, threads, seconds);
}

double measure_bf16_peak_gflops(int threads, double seconds) {
  const detail::KernelTable& t = detail::kernels(detail::detected_isa());
  return t.bf16_burst ? measure_burst(t.bf16_burst, threads, seconds) : 0.0;
}

double measure_microkernel_gflops(Isa isa, int threads, double seconds) {
  return measure_burst(kernels(isa).microkernel_burst, threads, seconds);
}

bool bf16_compute_pays() {
  // Measured, not assumed from the flag: Zen 4/5 run vdpbf16ps at ~1.9x their FMA rate, some Intel
  // server parts at half of it. 2 x 20 ms on one thread, once per process.
  static const bool pays = [] {
    const KernelTable& t = kernels(detected_isa());
    if (t.bf16_burst == nullptr) return false;
    const double fma = measure_burst(t.fma_burst, 1, 0.02), bf16 = measure_burst(t.bf16_burst, 1, 0.02);
    return bf16 >= 1.5 * fma;
  }();
  return pays;
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

}  // namespace detail

bool bf16_compute_pays() { return detail::bf16_compute_pays(); }

}  // namespace vitmsn
