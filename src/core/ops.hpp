#pragma once
// The ViT operations as free functions over float buffers: they know shapes, never tensor names.
#include <cstddef>

#include "cpu/kernels.hpp"

namespace vitmsn::detail {

/// y[r,:] = (x[r,:] − mean) / sqrt(var + eps) · w + b for each row (biased variance, accumulated in
/// double in one pass), as torch.nn.LayerNorm. x and y may be the same buffer.
void layer_norm(Isa isa, const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, int rows, int cols,
                const float* w, const float* b, double eps, int threads);

/// im2col for a stride-P, P×P convolution: pixels [C, H, W] → patches [(H/P)·(W/P), C·P·P], patches
/// in row-major grid order, each patch's values in (c, ky, kx) order — the order of the flattened
/// conv weight [D, C, P, P], so the convolution becomes patches · Wᵀ.
void extract_patches(const float* pixels, int channels, int height, int width, int patch, float* out);

/// PyTorch F.interpolate(mode="bicubic", align_corners=False, antialias=False) of a [src_h, src_w]
/// grid of D-vectors (row-major [src_h·src_w, D]) to [dst_h, dst_w]: cubic convolution A = −0.75,
/// source coordinate (dst + 0.5)·(src/dst) − 0.5, taps floor−1…floor+2 clamped to the edge. Double
/// precision internally.
void interpolate_bicubic(const float* src, int src_h, int src_w, int dim, int dst_h, int dst_w, float* dst);

/// Multi-head self-attention core for `images` images of N tokens stored one after the other: image
/// b's qkv is rows b·N… of qkv [images·N, 3·D] (q | k | v, head h in columns h·hd…(h+1)·hd of each
/// part, leading dimension ld_qkv); its ctx rows b·N… of ctx [images·N, D] (ld_ctx) receive
/// concat_h softmax(q_h·k_hᵀ·scale)·v_h. One task per (image, head), run by the kernel table's
/// attention_head (fused: a block of queries' scores at a time, never all heads' N×N at once); all
/// tasks of all images share one parallel region, so the result does not depend on `threads`.
/// probs (optional, [images, heads, prob_rows, N]) receives each head's softmax rows of queries
/// 0 … prob_rows − 1 (1: the CLS row; N: the whole attention map); ctx does not depend on it.
/// bf16: both products on bf16 pairs (KernelTable::attention_head_bf16), for bf16 compute.
void attention(Isa isa, const float* qkv, std::ptrdiff_t ld_qkv, int images, int tokens, int heads, int head_dim,
               float scale, float* ctx, std::ptrdiff_t ld_ctx, float* probs, int prob_rows, bool bf16, int threads);

}  // namespace vitmsn::detail
