#pragma once
// Compute kernels behind the ops: GEMM with fused epilogues, and the row-wise helpers that attention
// and the MLP need. Pure functions of raw float buffers; they never see the model or tensor names.
// Several instruction-set variants exist (portable, AVX2+FMA, AVX-512); the caller picks one with
// `Isa` (normally detected_isa()). All variants give results independent of the thread count:
// work is split over output tiles only, never over the summation dimension.

#include <cstddef>

namespace vitmsn::detail {

enum class Isa { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

/// The best variant this CPU runs and this build contains. Honours the environment variable
/// VITMSN_ISA=portable|avx2|avx512 (a lower choice than detected only).
Isa detected_isa();
/// True when `isa` is compiled in and the CPU supports it.
bool isa_available(Isa isa);
const char* isa_name(Isa isa);

/// What happens to alpha·A·op(B) before it is stored in C, in this order:
///   t = alpha·(A·op(B)); t += bias[n]; t = gelu_erf(t) if gelu; t += residual[m, n]; C[m, n] = t.
/// `residual` may be the same buffer as C (in-place residual add, ldr == ldc).
struct Epilogue {
  float alpha = 1.0f;
  const float* bias = nullptr;      // [N] or null
  bool gelu = false;                // exact erf GELU: 0.5·x·(1 + erf(x/√2))
  const float* residual = nullptr;  // [M, N] with leading dimension ldr, or null
  std::ptrdiff_t ldr = 0;
};

/// C[M,N] = epilogue(A[M,K]·op(B)); A row-major with leading dimension lda; C row-major (ldc).
/// b_trans: B is [N,K] row-major (ldb) and op(B) = Bᵀ — the layout of PyTorch linear weights,
/// so y = x·Wᵀ. Otherwise B is [K,N] row-major (ldb). C must not overlap A or B.
/// threads: how many threads to use (1 = the calling thread only; safe inside a parallel region).
/// An `isa` this CPU lacks runs the best available variant below it. The vectorised variants take
/// their cache blocking from VITMSN_GEMM_BLOCKING=kc,mc,packed_b_floats when set (a tuning aid; the
/// results do not depend on it).
void gemm(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
          bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads);

/// Element type of a weight matrix used in place (e.g. memory-mapped from a safetensors file).
enum class WeightType { kF32 = 0, kBF16 = 1, kF16 = 2 };

/// C[M,N] = epilogue(A[M,K]·Wᵀ) with W [N,K] row-major of type wt (leading dimension ldw in elements).
/// bf16: value = bits << 16; f16: IEEE half (F16C when available). Accumulation in float32.
/// W stays half-size: it is widened to float32 while the GEMM packs its panels of B (AVX2 / AVX-512:
/// vectorised, in the packing the float32 path does anyway), or a block of rows at a time into a
/// thread-local buffer (portable path; at most 256 rows of W at once per thread). The compute is
/// float32 FMA with float32 accumulation, so the AVX2 and AVX-512 results are bit-identical to
/// gemm(…, b_trans = true, …) on the widened weights. wt == kF32 is exactly gemm(isa, …, W, ldw,
/// b_trans = true, …). Results are independent of the thread count, as for gemm().
/// Future work (not implemented, nothing here to test it on): on CPUs with AVX512_BF16, a vdpbf16ps
/// path would need A rounded to bf16 as well, i.e. different (less accurate) results; it would be a
/// separate, opt-in variant.
void gemm_weights(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const void* W, WeightType wt,
                  std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads);

/// In place, for each of `rows` rows of x (leading dimension ld): x = softmax(x) over `cols` values.
void softmax_rows(Isa isa, float* x, int rows, int cols, std::ptrdiff_t ld);

/// In place: x[i] = 0.5·x·(1 + erf(x/√2)) for n values (exact-erf GELU, as torch.nn.functional.gelu).
void gelu_erf(Isa isa, float* x, std::ptrdiff_t n);

/// The machine's float32 FMA throughput in GFLOP/s (1 FMA = 2 FLOP): `threads` threads each run
/// independent register-only FMA chains (AVX-512 when available, else AVX2, else scalar) for about
/// `seconds`. The yardstick for GEMM efficiency; takes `seconds` of wall time.
double measure_fma_peak_gflops(int threads, double seconds);

/// How many CPUs this process may run on (its affinity mask on Linux, else hardware_concurrency);
/// at least 1.
int default_threads();

}  // namespace vitmsn::detail
