#pragma once
/// \file
/// What the library runs on: the kernel path chosen at run time, thread defaults, and whether bf16
/// compute pays on this CPU.

#include <string>

#include "vitmsn/export.hpp"

namespace vitmsn {

/// The compute kernels in use: "avx512", "avx2" or "portable" (chosen at run time from the CPU;
/// the environment variable VITMSN_ISA=portable|avx2|avx512 can force a lower one).
VITMSN_API std::string kernel_isa();

/// The number of CPUs this process may run on (its affinity mask): the default thread count.
VITMSN_API int default_threads();

/// Whether bf16 compute pays on this CPU: its bf16 dot product runs at least 1.5× the float32 FMA
/// rate (measured once per process, ~40 ms). Models whose weights are bf16 then compute in bf16
/// (LoadOptions::compute, Compute::kAuto).
VITMSN_API bool bf16_compute_pays();

}  // namespace vitmsn
