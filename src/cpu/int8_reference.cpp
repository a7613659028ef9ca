#include "cpu/int8_reference.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu/int8_format.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail::int8 {

void gemm_grouped(Grouping grouping, int M, int seg_rows, int segments, int K, int kp, const float* A,
                  std::ptrdiff_t lda, const std::int8_t* const* W, const float* const* w_scale, float* C,
                  std::ptrdiff_t ldc, const float* bias, bool gelu, const float* residual, std::ptrdiff_t ldr) {
  Epilogue ep;
  ep.bias = bias;
  ep.gelu = gelu;
  ep.residual = residual;
  ep.ldr = ldr;
  if (grouping == Grouping::kBlock32)
    return kernels(Isa::kPortable).gemm_int8(M, seg_rows, segments, K, kp, A, lda, W, w_scale, C, ldc, ep, 1);
  const int N = seg_rows * segments;
  std::vector<std::int8_t> q(static_cast<std::size_t>(M) * K);
  std::vector<float> s(static_cast<std::size_t>(M));
  if (grouping == Grouping::kTensor) {  // one scale: quantize the matrix as one group
    std::vector<float> all(static_cast<std::size_t>(M) * K);
    for (int t = 0; t < M; ++t)
      std::copy(A + t * lda, A + t * lda + K, all.begin() + static_cast<std::ptrdiff_t>(t) * K);
    const float st = quantize_scalar(all.data(), M * K, M * K, q.data());
    std::fill(s.begin(), s.end(), st);
  } else {
    for (int t = 0; t < M; ++t)
      s[t] = quantize_scalar(A + t * lda, K, K, q.data() + static_cast<std::ptrdiff_t>(t) * K);
  }
  // Weights back to row-major int8 [N, K] so that the dot products run over contiguous bytes (the
  // compiler vectorises them); int32 sums are exact (K·127² < 2^31 for K < 133,000).
  std::vector<std::int8_t> rows(static_cast<std::size_t>(N) * K);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k)
      rows[static_cast<std::size_t>(n) * K + k] = W[n / seg_rows][panel_offset(n % seg_rows, k, kp)];
#ifdef _OPENMP
#pragma omp parallel for schedule(static)
#endif
  for (int t = 0; t < M; ++t) {
    const std::int8_t* qt = q.data() + static_cast<std::size_t>(t) * K;
    for (int n = 0; n < N; ++n) {
      const std::int8_t* w = rows.data() + static_cast<std::size_t>(n) * K;
      std::int32_t acc = 0;
      for (int k = 0; k < K; ++k) acc += static_cast<std::int32_t>(qt[k]) * w[k];
      float v = static_cast<float>(acc) * s[t] * w_scale[n / seg_rows][n % seg_rows];
      if (bias) v += bias[n];
      // GELU as torch computes it: x * 0.5 * (1 + erf(x * M_SQRT1_2)) in float.
      if (gelu) v = v * 0.5f * (1.0f + std::erf(v * 0.70710678118654752440f));
      if (residual) v += residual[t * ldr + n];
      C[t * ldc + n] = v;
    }
  }
}

}  // namespace vitmsn::detail::int8
