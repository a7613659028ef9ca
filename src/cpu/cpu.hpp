#pragma once
// The machine the kernels run on: which instruction-set variant runs (CPU features, narrowed by the
// environment variable VITMSN_ISA), the GEMM's cache blocking per variant, and the FMA-peak yardstick.
// Implemented in src/cpu/cpu.cpp, which also implements the public include/vitmsn/cpu.hpp
// (kernel_isa(), default_threads(), measure_fma_peak_gflops(), measure_gemm_gflops()).

#include <cstddef>

namespace vitmsn::detail {

/// The kernel variants, lowest first. A variant exists in a build only on x86-64 with GCC or Clang
/// (VITMSN_X86_KERNELS); kPortable always does.
enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

/// The best variant this CPU runs and this build contains, computed once. Honours the environment
/// variable VITMSN_ISA=portable|avx2|avx512 (a lower choice than detected only).
Isa detected_isa();
/// True when `isa` is compiled in and the CPU (and the OS, which must save its registers) supports it.
bool isa_available(Isa isa);
/// "portable", "avx2", "avx512".
const char* isa_name(Isa isa);

/// The CPU features the kernels choose between.
enum class CpuFeature {
  kAvx2,
  kFma,
  kF16c,
  kAvx512f,
  kAvx512bw,
  kAvx512dq,
  kAvx512vl,
  kAvx512vnni,
  kAvxVnni,
  kAvx512bf16
};
/// True when the CPU has `f` and the OS saves the registers it uses (XCR0: YMM state for the AVX
/// features, opmask and ZMM state as well for the AVX-512 ones); false off x86-64 (VITMSN_X86_KERNELS).
/// Read with CPUID and XGETBV once per process: the one place for CPU-feature detection, instead of
/// __builtin_cpu_supports, whose feature names differ between compilers and versions (Clang 14 knows no
/// "avxvnni"). Not narrowed by VITMSN_ISA: that chooses among the variants (detected_isa()).
bool cpu_has(CpuFeature f);

/// Cache blocking of the packed GEMM (src/cpu/gemm_blocked.hpp). kc: depth of one packed block (a
/// kc×NR slice of B stays in L1); mc: rows of A packed at once (mc×kc stays in L2); b_pack_floats:
/// budget of the packed B (K × nc floats). Results do not depend on these, only speed does.
struct Blocking {
  int kc;
  int mc;
  std::size_t b_pack_floats;
};

/// Data cache sizes of the CPU the process runs on, in bytes: L1 data and L2 of one core, L3 (shared).
/// From sysfs (Linux), else CPUID (x86), else defaults (32 KB, 512 KB, 8 MB). A virtual machine may
/// report its host's caches, so the values are bounded: L1d to [16 KB, 128 KB], L2 to [128 KB, 8 MB].
struct CacheSizes {
  std::size_t l1d;
  std::size_t l2;
  std::size_t l3;
  const char* source;  ///< "sysfs", "cpuid" or "defaults"
};
CacheSizes cache_sizes();

/// The blocking a micro-tile of mr × nr floats needs on CPUs with these caches (after Low et al.,
/// "Analytical Modeling Is Enough for High-Performance BLIS", ACM TOMS 2016):
///   kc: the kc × nr slice of B that every micro-tile of a row block reuses fills `l1_share` of L1d;
///   mc: the mc × kc block of A that every slice streams over fills `l2_share` of L2;
///   b_pack_floats: 8 MB of packed B at most (B is reused across row blocks only when mc < M).
/// l1_share and l2_share are per-variant constants measured on real CPUs (see gemm_blocking()).
Blocking derive_blocking(const CacheSizes& caches, int mr, int nr, double l1_share, double l2_share);

/// The caches AMD's legacy CPUID leaves describe: L1d = 0x80000005 ECX[31:24] KB, L2 = 0x80000006
/// ECX[31:16] KB, L3 = 0x80000006 EDX[31:18] × 512 KB (the socket's). cache_sizes() uses them on AMD
/// CPUs where leaf 0x8000001D reads as empty (virtual machines that hide it).
CacheSizes amd_legacy_caches(unsigned ecx_80000005, unsigned ecx_80000006, unsigned edx_80000006);

/// The blocking of the `isa` variant on a CPU with `caches`, from the shares measured for its vendor
/// (AMD or other; see cpu.cpp): what gemm_blocking() returns when VITMSN_GEMM_BLOCKING is unset.
Blocking default_blocking(Isa isa, const CacheSizes& caches, bool amd);

/// The blocking of the `isa` variant: derived from cache_sizes() for its micro-tile, or
/// VITMSN_GEMM_BLOCKING=kc,mc,packed_b_floats when that is set (three integers; read once per
/// process, a tuning aid). Results do not depend on it, only speed does.
Blocking gemm_blocking(Isa isa);

/// GFLOP/s of `isa`'s GEMM micro-kernel alone on packed panels in L1 (KernelTable::microkernel_burst)
/// on `threads` threads for about `seconds`: the ceiling of the GEMM code, next to the FMA peak.
double measure_microkernel_gflops(Isa isa, int threads, double seconds);

}  // namespace vitmsn::detail
