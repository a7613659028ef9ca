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

/// The stored shape of a [N, K] weight's panel layout: [padded_n(N)/16, padded_k(K)/4, 16, 4].
inline std::vector<std::int64_t> panel_shape(int n, int k) {
  return {padded_n(n) / kPanel, padded_k(k) / 4, kPanel, 4};
}

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

/// An activation block of `len` <= 32 values as it is quantized: x itself, or — when bits are set in
/// `excluded` (bit c: channel c of the block, left to the outlier split's float product) — a copy in
/// `kept` with those channels 0.
inline const float* block_without(const float* x, int len, std::uint32_t excluded, float* kept) {
  if (excluded == 0) return x;
  for (int i = 0; i < len; ++i) kept[i] = (excluded >> i) & 1u ? 0.0f : x[i];
  return kept;
}

/// One activation block of 32 (len <= 32 values), the channels in `excluded` counting as 0.
inline float quantize_block_scalar(const float* x, int len, std::int8_t* q, std::uint32_t excluded = 0) {
  float kept[kBlock];
  return quantize_scalar(block_without(x, len, excluded, kept), len, kBlock, q);
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

/// The outlier split. Real ViT-L checkpoints carry a few activation channels 20-100x larger than the
/// rest on nearly every token (outlier features, in the residual stream and the layer-norm outputs);
/// quantized with their block they leave its other 31 channels a level or two. Per GEMM call,
/// find_outlier_channels() picks the channels whose largest magnitude over kOutlierRows evenly
/// spaced rows exceeds kOutlierRatio times the median channel's (at most max(8, K/16) of them, the largest;
/// none when that median is 0). They are left out of the int8 quantization, and their product with
/// the weight columns (dequantized_weight(): both planes) is computed in float32
/// (KernelTable::outlier_product) and added before the bias (Epilogue::int8_pre). Without outliers
/// nothing changes.
constexpr float kOutlierRatio = 6.0f;
constexpr int kOutlierRows = 64;

/// The outlier channels of A [M, K] (ascending), as described above.
std::vector<int> find_outlier_channels(const float* A, std::ptrdiff_t lda, int M, int K);

/// The weights' second plane, for the outlier split's float product. An outlier channel's term
/// dominates its dot products, so its weight column needs the precision of the float weights, not
/// the int8 plane's (error up to max|w_n|/254, relative to the row, not to the element). The
/// converter stores, per output channel n, the rounding residual r = w − s_w·q_w quantized once more
/// — s_r[n] = max_k |r[n,k]| / 127, q_r = rint(r·127/max|r|) — transposed, [K, N] (channel k's
/// column is one contiguous row of N bytes: reading the few outlier columns touches a few pages).
/// s_w·q_w + s_r·q_r is within max|w_n|/64,516 of w. `cols` gets q_r as [K, N], `residual_scales` s_r.
inline void quantize_residual(const float* W, int N, int K, std::ptrdiff_t ldw, const std::vector<std::int8_t>& panels,
                              const std::vector<float>& scales, std::vector<std::int8_t>* cols,
                              std::vector<float>* residual_scales) {
  const int kp = padded_k(K);
  cols->assign(static_cast<std::size_t>(K) * N, 0);
  residual_scales->assign(static_cast<std::size_t>(N), 0.0f);
  std::vector<float> r(static_cast<std::size_t>(K));
  std::vector<std::int8_t> q(static_cast<std::size_t>(K));
  for (int n = 0; n < N; ++n) {
    for (int k = 0; k < K; ++k) r[k] = W[n * ldw + k] - scales[n] * static_cast<float>(panels[panel_offset(n, k, kp)]);
    (*residual_scales)[n] = quantize_scalar(r.data(), K, K, q.data());
    for (int k = 0; k < K; ++k) (*cols)[static_cast<std::size_t>(k) * N + n] = q[k];
  }
}

/// Weight (n, k) as the outlier split uses it: s_w·q_w from the panels, plus s_r·q_r when the second
/// plane (`residual` [K, N] and its scales) is there (null otherwise).
inline float dequantized_weight(const std::int8_t* panels, const float* scales, const std::int8_t* residual,
                                const float* residual_scales, int N, int n, int k, int kp) {
  float v = scales[n] * static_cast<float>(panels[panel_offset(n, k, kp)]);
  if (residual != nullptr)
    v += residual_scales[n] * static_cast<float>(residual[static_cast<std::ptrdiff_t>(k) * N + n]);
  return v;
}

}  // namespace vitmsn::detail::int8
