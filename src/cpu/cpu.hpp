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

/// Cache blocking of the packed GEMM (src/cpu/gemm_blocked.hpp). kc: depth of one packed block (a
/// kc×NR slice of B stays in L1); mc: rows of A packed at once (mc×kc stays in L2); b_pack_floats:
/// budget of the packed B (K × nc floats). Results do not depend on these, only speed does.
struct Blocking {
  int kc;
  int mc;
  std::size_t b_pack_floats;
};

/// The blocking of the `isa` variant: its defaults, or VITMSN_GEMM_BLOCKING=kc,mc,packed_b_floats
/// when that is set (three integers; read once per process, a tuning aid).
Blocking gemm_blocking(Isa isa);

}  // namespace vitmsn::detail
