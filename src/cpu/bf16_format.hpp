#pragma once
// bf16 compute (KernelTable::gemm_bf16): the weight layout the bf16 dot-product micro-kernels read,
// prepared once when a model is loaded, and the arithmetic every variant reproduces.
//
// Layout. A linear weight W [N, K] (y = x·Wᵀ) becomes ceil(N / 32) panels of 32 output channels.
// K is padded to an even kp (zeros). Panel p holds, for each pair q = 0 … kp/2 − 1 of inputs and each
// channel c = 0 … 31 of the panel, one 32-bit word: low half bf16(W[32p + c, 2q]), high half
// bf16(W[32p + c, 2q + 1]) — word index (p·kp/2 + q)·32 + c. Channels past N are zero. This is the
// operand of vdpbf16ps as it is: a 64-byte line is one k-pair of 16 channels.
//
// Arithmetic (the definition; AVX512_BF16's vdpbf16ps does exactly this, checked bit for bit by
// tests/kernels_gemm_test.cpp against the portable entry): activations are rounded to bf16 (round to
// nearest even, as float_to_bf16), products of two bf16 are exact in float32, and each output is one
// float32 chain over the pairs in order: acc = fma(a[2q+1], w[2q+1], acc), then acc = fma(a[2q],
// w[2q], acc), with subnormal inputs and results flushed to zero (DAZ/FTZ, as the instruction). Bias,
// GELU and residual follow in float32 as in the float GEMM's epilogue. The result does not depend on
// the thread count or the blocking.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace vitmsn::detail::bf16 {

/// Output channels per panel.
inline constexpr int kPanel = 32;

/// K rounded up to even.
constexpr int padded_k(int K) { return (K + 1) / 2 * 2; }

/// Packed weights [N, K] in the layout above, 64-byte aligned.
struct Panels {
  int N = 0, K = 0, kp = 0;
  std::shared_ptr<std::uint32_t> words;  // (ceil(N / 32)·kp/2·32) words
  const std::uint32_t* data() const { return words.get(); }
  std::size_t bytes() const { return static_cast<std::size_t>((N + kPanel - 1) / kPanel) * kp / 2 * kPanel * 4; }
};

/// The source of one block of rows of W: `rows` rows of K elements, row stride `ld` elements, as
/// float32 (`f32`), bfloat16 (`bf16`) or IEEE half (`f16`) — exactly one of them set.
struct Source {
  const float* f32 = nullptr;
  const std::uint16_t* bf16 = nullptr;
  const std::uint16_t* f16 = nullptr;
  std::ptrdiff_t ld = 0;
  int rows = 0;
};

/// Packs the row blocks `parts` (stacked in order along N, e.g. the query, key and value weights)
/// of K inputs each into Panels; float32 and f16 values are rounded to bf16 (nearest even), bf16 ones
/// copied. `threads` share the work (the result does not depend on them).
Panels pack(const std::vector<Source>& parts, int K, int threads);

}  // namespace vitmsn::detail::bf16
