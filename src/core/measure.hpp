#pragma once
// The machine's measured float32 and bf16 rates and the GEMM's, for the benchmarks (vitmsn-bench,
// gemm_bench) and tests: general utilities, not ViT-MSN API, so not in include/vitmsn/ and not
// exported from a shared libvitmsn. Defined in src/cpu/cpu.cpp (core).

namespace vitmsn::detail {

/// The float32 fused multiply-add peak in GFLOP/s, measured with a register-only FMA loop on
/// `threads` threads for about `seconds` seconds.
double measure_fma_peak_gflops(int threads, double seconds = 1.0);

/// The bf16 dot-product peak in GFLOP/s (2 per multiply-add; AVX512_BF16's vdpbf16ps), measured
/// like measure_fma_peak_gflops(); 0 when the kernels in use have no bf16 dot product.
double measure_bf16_peak_gflops(int threads, double seconds = 1.0);

/// GFLOP/s of the library's GEMM for C[M,N] = A[M,K]·Bᵀ (B as a PyTorch linear weight [N,K]),
/// best of `runs` runs on `threads` threads.
double measure_gemm_gflops(int m, int n, int k, int threads, int runs = 3);

}  // namespace vitmsn::detail
