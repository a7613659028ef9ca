// Portable kernels, the run-time ISA dispatch, and the machine measurements. The portable GEMM is
// Eigen's (single-threaded per call; the row range is split over threads here), the reference every
// vectorised variant (src/gemm_avx2.cpp, src/gemm_avx512.cpp over src/gemm_blocked.hpp) is tested
// against. gemm_weights with 16-bit weights: the vectorised variants widen while packing B; the
// portable one widens blocks of rows of W (gemm_weights_portable below).
#include <Eigen/Core>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gemm_blocked.hpp"
#include "kernels.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__linux__)
#include <sched.h>
#endif

namespace vitmsn::detail {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using ConstMap = Eigen::Map<const RowMat, 0, Stride>;
using Map = Eigen::Map<RowMat, 0, Stride>;

float gelu_scalar(float x) {
  // torch computes x * 0.5 * (1 + erf(x * M_SQRT1_2)) in float.
  return x * 0.5f * (1.0f + std::erf(x * 0.70710678118654752440f));
}

void gemm_rows_portable(int m0, int m1, int N, int K, const float* A, std::ptrdiff_t lda, const float* B,
                        std::ptrdiff_t ldb, bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep) {
  const int rows = m1 - m0;
  if (rows <= 0) return;
#ifdef _OPENMP
  // Eigen parallelises a product by itself when OpenMP is on (up to omp_get_max_threads()). Keep it
  // on this thread: threads == 1 must not open a parallel region. The ICV is per task, restored below.
  const int saved_max_threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  ConstMap a(A + m0 * lda, rows, K, Stride(lda));
  RowMat t(rows, N);
  if (b_trans) {
    ConstMap b(B, N, K, Stride(ldb));
    t.noalias() = a * b.transpose();
  } else {
    ConstMap b(B, K, N, Stride(ldb));
    t.noalias() = a * b;
  }
#ifdef _OPENMP
  omp_set_num_threads(saved_max_threads);
#endif
  for (int i = 0; i < rows; ++i) {
    float* c = C + (m0 + i) * ldc;
    const float* r = ep.residual ? ep.residual + (m0 + i) * ep.ldr : nullptr;
    for (int j = 0; j < N; ++j) {
      float v = t(i, j);
      if (ep.alpha != 1.0f) v *= ep.alpha;
      if (ep.bias) v += ep.bias[j];
      if (ep.gelu) v = gelu_scalar(v);
      if (r) v += r[j];
      c[j] = v;
    }
  }
}

}  // namespace

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

namespace {

// The variant that runs for a request: `isa` if available, else the best available one below it.
Isa runnable(Isa isa) {
  if (isa == Isa::kAvx512 && isa_available(Isa::kAvx512)) return Isa::kAvx512;
  if (isa != Isa::kPortable && isa_available(Isa::kAvx2)) return Isa::kAvx2;
  return Isa::kPortable;
}

void gemm_portable(int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
                   bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  threads = std::max(1, std::min(threads, M / 16 + 1));
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      const int chunk = (M + n - 1) / n;
      gemm_rows_portable(std::min(M, t * chunk), std::min(M, (t + 1) * chunk), N, K, A, lda, B, ldb, b_trans, C, ldc,
                         ep);
    }
    return;
  }
#endif
  gemm_rows_portable(0, M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep);
}

// Portable gemm_weights for 16-bit W: blocks of kWidenRows rows of W (columns of C) are widened into a
// thread-local float buffer, multiplied by all of A with Eigen and finished with the epilogue. Threads
// take whole blocks; a block's computation is the same whoever runs it, so the result does not
// depend on the thread count. W is never widened whole: per thread at most kWidenRows × K floats.
// 256 rows measured 1-2 % faster than 128 on Zen 3 (M = 1025: fewer passes of Eigen over A).
constexpr int kWidenRows = 256;

template <WeightType T>
void widen_rows(const std::uint16_t* W, std::ptrdiff_t ldw, int rows, int K, float* dst) {
  for (int n = 0; n < rows; ++n) {
    const std::uint16_t* s = W + n * ldw;
    float* d = dst + static_cast<std::ptrdiff_t>(n) * K;
    for (int k = 0; k < K; ++k) d[k] = blocked::widen<T>(s[k]);
  }
}

void gemm_weights_block_portable(int n0, int nb, int M, int K, const float* A, std::ptrdiff_t lda,
                                 const std::uint16_t* W, WeightType wt, std::ptrdiff_t ldw, float* C,
                                 std::ptrdiff_t ldc, const Epilogue& ep) {
  static thread_local std::vector<float> wf;
  static thread_local RowMat t;
  const std::size_t need = static_cast<std::size_t>(nb) * static_cast<std::size_t>(std::max(K, 1));
  if (wf.size() < need) wf.resize(need);  // grow-only
  if (wt == WeightType::kBF16)
    widen_rows<WeightType::kBF16>(W + n0 * ldw, ldw, nb, K, wf.data());
  else
    widen_rows<WeightType::kF16>(W + n0 * ldw, ldw, nb, K, wf.data());
  {
#ifdef _OPENMP
    const int saved_max_threads = omp_get_max_threads();  // keep Eigen on this thread (see above)
    omp_set_num_threads(1);
#endif
    ConstMap a(A, M, K, Stride(lda));
    ConstMap b(wf.data(), nb, K, Stride(std::max(K, 1)));
    t.resize(M, nb);
    t.noalias() = a * b.transpose();
#ifdef _OPENMP
    omp_set_num_threads(saved_max_threads);
#endif
  }
  for (int i = 0; i < M; ++i) {
    float* c = C + i * ldc + n0;
    const float* r = ep.residual ? ep.residual + i * ep.ldr + n0 : nullptr;
    for (int j = 0; j < nb; ++j) {
      float v = t(i, j);
      if (ep.alpha != 1.0f) v *= ep.alpha;
      if (ep.bias) v += ep.bias[n0 + j];
      if (ep.gelu) v = gelu_scalar(v);
      if (r) v += r[j];
      c[j] = v;
    }
  }
}

void gemm_weights_portable(int M, int N, int K, const float* A, std::ptrdiff_t lda, const std::uint16_t* W,
                           WeightType wt, std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep,
                           int threads) {
  if (M <= 0 || N <= 0) return;
  const int blocks = (N + kWidenRows - 1) / kWidenRows;
  const auto part = [&](int t, int nt) {
    const int b0 = static_cast<int>(static_cast<long long>(blocks) * t / nt);
    const int b1 = static_cast<int>(static_cast<long long>(blocks) * (t + 1) / nt);
    for (int b = b0; b < b1; ++b) {
      const int n0 = b * kWidenRows;
      gemm_weights_block_portable(n0, std::min(kWidenRows, N - n0), M, K, A, lda, W, wt, ldw, C, ldc, ep);
    }
  };
  threads = std::max(1, std::min(threads, blocks));
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    part(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  part(0, 1);
}

}  // namespace

void gemm_weights(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const void* W, WeightType wt,
                  std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  if (wt == WeightType::kF32)
    return gemm(isa, M, N, K, A, lda, static_cast<const float*>(W), ldw, /*b_trans=*/true, C, ldc, ep, threads);
  switch (runnable(isa)) {
#if VITMSN_X86_KERNELS
    case Isa::kAvx512:
      return avx512::gemm_weights(M, N, K, A, lda, W, wt, ldw, C, ldc, ep, threads);
    case Isa::kAvx2:
      return avx2::gemm_weights(M, N, K, A, lda, W, wt, ldw, C, ldc, ep, threads);
#endif
    default:
      return gemm_weights_portable(M, N, K, A, lda, static_cast<const std::uint16_t*>(W), wt, ldw, C, ldc, ep, threads);
  }
}

void gemm(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
          bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  switch (runnable(isa)) {
#if VITMSN_X86_KERNELS
    case Isa::kAvx512:
      return avx512::gemm(M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep, threads);
    case Isa::kAvx2:
      return avx2::gemm(M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep, threads);
#endif
    default:
      return gemm_portable(M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep, threads);
  }
}

void softmax_rows(Isa isa, float* x, int rows, int cols, std::ptrdiff_t ld) {
  switch (runnable(isa)) {
#if VITMSN_X86_KERNELS
    case Isa::kAvx512:
      return avx512::softmax_rows(x, rows, cols, ld);
    case Isa::kAvx2:
      return avx2::softmax_rows(x, rows, cols, ld);
#endif
    default:
      break;
  }
  for (int i = 0; i < rows; ++i) {
    float* r = x + i * ld;
    float mx = r[0];
    for (int j = 1; j < cols; ++j) mx = std::max(mx, r[j]);
    float sum = 0.0f;
    for (int j = 0; j < cols; ++j) {
      r[j] = std::exp(r[j] - mx);
      sum += r[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < cols; ++j) r[j] *= inv;
  }
}

void gelu_erf(Isa isa, float* x, std::ptrdiff_t n) {
  switch (runnable(isa)) {
#if VITMSN_X86_KERNELS
    case Isa::kAvx512:
      return avx512::gelu_erf(x, n);
    case Isa::kAvx2:
      return avx2::gelu_erf(x, n);
#endif
    default:
      break;
  }
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] = gelu_scalar(x[i]);
}

namespace {

// Scalar stand-in for CPUs without the vector kernels: 8 independent multiply-add chains (2 FLOP each).
double fma_burst_scalar(long iterations) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = 0.001f * static_cast<float>(i + 1);
  for (long it = 0; it < iterations; ++it)
    for (float& a : acc) a = a * 0.999999f + 1e-7f;
  float s = 0.0f;
  for (float a : acc) s += a;
  volatile float sink = s;
  (void)sink;
  return 2.0 * 8 * static_cast<double>(iterations);
}

}  // namespace

double measure_fma_peak_gflops(int threads, double seconds) {
  threads = std::max(1, threads);
  double (*burst)(long) = fma_burst_scalar;
#if VITMSN_X86_KERNELS
  if (isa_available(Isa::kAvx2)) burst = avx2::fma_burst;
  if (isa_available(Isa::kAvx512)) burst = avx512::fma_burst;
#endif
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

}  // namespace vitmsn::detail
