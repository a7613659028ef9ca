// Portable kernels and the ISA dispatch. The portable GEMM is Eigen's (single-threaded per call; the
// row range is split over threads here), the reference every vectorised variant is tested against.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include <Eigen/Core>

#include "kernels.hpp"

#ifdef _OPENMP
#include <omp.h>
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

void gemm_rows_portable(int m0, int m1, int N, int K, const float* A, std::ptrdiff_t lda,
                        const float* B, std::ptrdiff_t ldb, bool b_trans, float* C,
                        std::ptrdiff_t ldc, const Epilogue& ep) {
  const int rows = m1 - m0;
  if (rows <= 0) return;
  ConstMap a(A + m0 * lda, rows, K, Stride(lda));
  RowMat t(rows, N);
  if (b_trans) {
    ConstMap b(B, N, K, Stride(ldb));
    t.noalias() = a * b.transpose();
  } else {
    ConstMap b(B, K, N, Stride(ldb));
    t.noalias() = a * b;
  }
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
    default:
      return false;
  }
}

Isa detected_isa() { return Isa::kPortable; }

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

void gemm(Isa isa, int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B,
          std::ptrdiff_t ldb, bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep,
          int threads) {
  (void)isa;
  threads = std::max(1, std::min(threads, M / 16 + 1));
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      const int chunk = (M + n - 1) / n;
      gemm_rows_portable(std::min(M, t * chunk), std::min(M, (t + 1) * chunk), N, K, A, lda, B, ldb,
                         b_trans, C, ldc, ep);
    }
    return;
  }
#endif
  gemm_rows_portable(0, M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep);
}

void softmax_rows(Isa isa, float* x, int rows, int cols, std::ptrdiff_t ld) {
  (void)isa;
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
  (void)isa;
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] = gelu_scalar(x[i]);
}

}  // namespace vitmsn::detail
