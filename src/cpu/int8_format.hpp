#pragma once
// The int8 format of vitmsn's quantized linear weights and the scalar definitions of its
// quantization (the scheme: src/cpu/int8_blocked.hpp). Plain C++, used by the converter, the loader
// and every kernel variant.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace vitmsn::detail::int8 {

constexpr int kBlock = 32;  // activation block along K
constexpr int kPanel = 16;  // output channels per weight panel

/// K padded to the block: the inner dimension of the panel layout.
inline int padded_k(int k) { return (k + kBlock - 1) / kBlock * kBlock; }
/// N padded to whole panels.
inline int padded_n(int n) { return (n + kPanel - 1) / kPanel * kPanel; }

/// Byte offset of weight (n, k) in the panel layout of a [N, K] weight with K padded to kp (a
/// multiple of 32) and N to whole panels: panel n/16 holds kp/4 quads of 16 channels × 4
/// consecutive k (64 bytes, the operand of one 512-bit vpdpbusd).
inline std::ptrdiff_t panel_offset(int n, int k, int kp) {
  return (static_cast<std::ptrdiff_t>(n / kPanel) * (kp / 4) + k / 4) * (kPanel * 4) + (n % kPanel) * 4 + k % 4;
}

/// Symmetric int8 quantization of `len` values (len <= count; missing values are zero) into
/// q[0, count): s = max|x| / 127, q = clamp(rint(x·(127/max|x|)), −127, 127); all zero (s = 0)
/// when max|x| is 0. NaN values do not count for the maximum and become −127 (as the vector code's
/// vmaxps/vminps give). Returns s. The definition every vector version reproduces bit for bit.
inline float quantize_scalar(const float* x, int len, int count, std::int8_t* q) {
  float amax = 0.0f;
  for (int i = 0; i < len; ++i) amax = std::fabs(x[i]) > amax ? std::fabs(x[i]) : amax;
  if (!(amax > 0.0f)) {
    for (int i = 0; i < count; ++i) q[i] = 0;
    return 0.0f;
  }
  const float inv = 127.0f / amax;
  for (int i = 0; i < count; ++i) {
    float v = i < len ? std::nearbyint(x[i] * inv) : 0.0f;
    v = v > -127.0f ? v : -127.0f;
    v = v < 127.0f ? v : 127.0f;
    q[i] = static_cast<std::int8_t>(v);
  }
  return amax / 127.0f;
}

/// One activation block of 32 (len <= 32 values).
inline float quantize_block_scalar(const float* x, int len, std::int8_t* q) {
  return quantize_scalar(x, len, kBlock, q);
}

/// A float weight W [N, K] (row-major, leading dimension ldw) quantized per output channel into the
/// panel layout (padded_n(N) · padded_k(K) bytes, padding zero) and its scales [N].
inline void quantize_weights(const float* W, int N, int K, std::ptrdiff_t ldw, std::vector<std::int8_t>* panels,
                             std::vector<float>* scales) {
  const int kp = padded_k(K);
  panels->assign(static_cast<std::size_t>(padded_n(N)) * kp, 0);
  scales->assign(static_cast<std::size_t>(N), 0.0f);
  std::vector<std::int8_t> row(static_cast<std::size_t>(K));
  for (int n = 0; n < N; ++n) {
    (*scales)[n] = quantize_scalar(W + n * ldw, K, K, row.data());
    for (int k = 0; k < K; ++k) (*panels)[panel_offset(n, k, kp)] = row[k];
  }
}

/// How activations are grouped for their scales. kBlock32 (per row and block of 32 along K) is the
/// scheme; kRow (one scale per row, "per token") and kTensor (one scale for the whole matrix) are the
/// schemes it was chosen against. They run only in gemm_grouped() — portable, slow — when a test or
/// an analysis selects them with set_activation_grouping(); the default, kBlock32, runs the kernels.
enum class Grouping { kBlock32, kRow, kTensor };

/// The grouping int8 models use in this process (default kBlock32). Thread-safe.
Grouping activation_grouping();
void set_activation_grouping(Grouping grouping);

/// The int8 GEMM of KernelTable::gemm_int8 with the activations quantized as `grouping` says, element
/// by element: y = s_w[n]·(s_x·Σ_k q_x·q_w) for kRow and kTensor (exact integer sums), the
/// portable kernel for kBlock32.
void gemm_grouped(Grouping grouping, int M, int seg_rows, int segments, int K, int kp, const float* A,
                  std::ptrdiff_t lda, const std::int8_t* const* W, const float* const* w_scale, float* C,
                  std::ptrdiff_t ldc, const float* bias, bool gelu, const float* residual, std::ptrdiff_t ldr);

}  // namespace vitmsn::detail::int8
