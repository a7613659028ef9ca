#pragma once
/// \file
/// What the library runs on: the kernel path chosen at run time, thread defaults, and the machine's
/// measured float32 rates (for benchmarks).

#include <string>

namespace vitmsn {

/// The compute kernels in use: "avx512", "avx2" or "portable" (chosen at run time from the CPU;
/// the environment variable VITMSN_ISA=portable|avx2|avx512 can force a lower one).
std::string kernel_isa();

/// The number of CPUs this process may run on (its affinity mask): the default thread count.
int default_threads();

/// The float32 fused multiply-add peak in GFLOP/s, measured with a register-only FMA loop on
/// `threads` threads for about `seconds` seconds.
double measure_fma_peak_gflops(int threads, double seconds = 1.0);

/// The bf16 dot-product peak in GFLOP/s (2 per multiply-add; AVX512_BF16's vdpbf16ps), measured
/// like measure_fma_peak_gflops(); 0 when the kernels in use have no bf16 dot product.
double measure_bf16_peak_gflops(int threads, double seconds = 1.0);

/// Whether bf16 compute pays on this CPU: its bf16 dot product runs at least 1.5× the float32 FMA
/// rate (measured once per process, ~40 ms). Models whose weights are bf16 then compute in bf16
/// (LoadOptions::compute, Compute::kAuto).
bool bf16_compute_pays();

/// GFLOP/s of the library's GEMM for C[M,N] = A[M,K]·Bᵀ (B as a PyTorch linear weight [N,K]),
/// best of `runs` runs on `threads` threads.
double measure_gemm_gflops(int m, int n, int k, int threads, int runs = 3);

}  // namespace vitmsn
