#include "core/ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vitmsn::detail {

void layer_norm(Isa isa, const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, int rows, int cols,
                const float* w, const float* b, double eps, int threads) {
  const KernelTable& kt = kernels(isa);
  // Rows in blocks of 16 (whole rows per thread: the result does not depend on the thread count).
  constexpr int kBlock = 16;
  const int blocks = (rows + kBlock - 1) / kBlock;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static) if (threads > 1 && rows >= 64)
#endif
  for (int blk = 0; blk < blocks; ++blk) {
    const int r0 = blk * kBlock, n = std::min(kBlock, rows - r0);
    kt.layer_norm(x + r0 * ldx, ldx, y + r0 * ldy, ldy, n, cols, w, b, eps);
  }
}

void extract_patches(const float* pixels, int channels, int height, int width, int patch, float* out) {
  const int gh = height / patch, gw = width / patch;
  const int row = channels * patch * patch;
  for (int py = 0; py < gh; ++py)
    for (int px = 0; px < gw; ++px) {
      float* o = out + static_cast<std::ptrdiff_t>(py * gw + px) * row;
      for (int c = 0; c < channels; ++c)
        for (int ky = 0; ky < patch; ++ky) {
          const float* src = pixels + (static_cast<std::ptrdiff_t>(c) * height + py * patch + ky) * width + px * patch;
          std::memcpy(o, src, sizeof(float) * patch);
          o += patch;
        }
    }
}

namespace {

// PyTorch's cubic convolution weights for fractional offset t in [0, 1), A = −0.75
// (aten/src/ATen/native/UpSample.h get_cubic_upsample_coefficients).
void cubic_weights(double t, double w[4]) {
  constexpr double A = -0.75;
  auto near = [](double x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };       // |x| <= 1
  auto far = [](double x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };  // 1 < |x| < 2
  w[0] = far(t + 1.0);
  w[1] = near(t);
  w[2] = near(1.0 - t);
  w[3] = far(2.0 - t);
}

struct Taps {
  int index[4];
  double weight[4];
};

std::vector<Taps> cubic_taps(int in, int out) {
  std::vector<Taps> taps(out);
  const double scale = static_cast<double>(in) / out;
  for (int o = 0; o < out; ++o) {
    // align_corners=False source coordinate; not clamped at 0 for cubic (as PyTorch).
    const double real = (o + 0.5) * scale - 0.5;
    const double fl = std::floor(real);
    cubic_weights(real - fl, taps[o].weight);
    for (int k = 0; k < 4; ++k) taps[o].index[k] = std::min(std::max(static_cast<int>(fl) - 1 + k, 0), in - 1);
  }
  return taps;
}

}  // namespace

void interpolate_bicubic(const float* src, int src_h, int src_w, int dim, int dst_h, int dst_w, float* dst) {
  const std::vector<Taps> ty = cubic_taps(src_h, dst_h), tx = cubic_taps(src_w, dst_w);
  std::vector<double> acc(dim), rowv(dim);
  for (int oy = 0; oy < dst_h; ++oy)
    for (int ox = 0; ox < dst_w; ++ox) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int ky = 0; ky < 4; ++ky) {
        // Interpolate along x within source row ty.index[ky], then weight by the y tap.
        std::fill(rowv.begin(), rowv.end(), 0.0);
        for (int kx = 0; kx < 4; ++kx) {
          const float* s = src + (static_cast<std::ptrdiff_t>(ty[oy].index[ky]) * src_w + tx[ox].index[kx]) * dim;
          const double wx = tx[ox].weight[kx];
          for (int d = 0; d < dim; ++d) rowv[d] += wx * s[d];
        }
        const double wy = ty[oy].weight[ky];
        for (int d = 0; d < dim; ++d) acc[d] += wy * rowv[d];
      }
      float* o = dst + (static_cast<std::ptrdiff_t>(oy) * dst_w + ox) * dim;
      for (int d = 0; d < dim; ++d) o[d] = static_cast<float>(acc[d]);
    }
}

void attention(Isa isa, const float* qkv_all, std::ptrdiff_t ld_qkv, int images, int tokens, int heads, int head_dim,
               float scale, float* ctx_all, std::ptrdiff_t ld_ctx, float* probs_all, int prob_rows, bool bf16,
               int threads) {
  const KernelTable& kt = kernels(isa);
  const auto head = bf16 ? kt.attention_head_bf16 : kt.attention_head;
  const int D = heads * head_dim;
  const int tasks = images * heads;
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(dynamic, 1) if (threads > 1 && tasks > 1)
#endif
  for (int task = 0; task < tasks; ++task) {
    const int image = task / heads, h = task % heads;
    const float* qkv = qkv_all + static_cast<std::ptrdiff_t>(image) * tokens * ld_qkv;
    float* probs =
        probs_all ? probs_all + (static_cast<std::ptrdiff_t>(image) * heads + h) * prob_rows * tokens : nullptr;
    head(qkv + h * head_dim, qkv + D + h * head_dim, qkv + 2 * D + h * head_dim, ld_qkv, tokens, head_dim, scale,
         ctx_all + static_cast<std::ptrdiff_t>(image) * tokens * ld_ctx + h * head_dim, ld_ctx, probs, prob_rows);
  }
}

}  // namespace vitmsn::detail
