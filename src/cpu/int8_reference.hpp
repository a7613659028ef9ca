#pragma once
// The int8 activation schemes the library's scheme was chosen against, for the tests that measure
// what each part of it buys (tests/int8_test.cpp, the full-size tests). Not a production path: a
// model runs them only when a test selects one with ModelAccess::set_int8_scheme (src/core/model.hpp);
// they are portable and slow.
#include <cstddef>
#include <cstdint>

namespace vitmsn::detail::int8 {

/// How activations are grouped for their scales. kBlock32 (per row and block of 32 along K) is the
/// scheme; kRow (one scale per row, "per token") and kTensor (one scale for the whole matrix) are the
/// schemes it was chosen against.
enum class Grouping { kBlock32, kRow, kTensor };

/// How an int8 linear layer quantizes its activations. The default is what every model runs: blocks
/// of 32 with the outlier split (int8_format.hpp). Anything else runs gemm_grouped() below.
struct Scheme {
  Grouping grouping = Grouping::kBlock32;
  bool outlier_split = true;
  bool is_default() const { return grouping == Grouping::kBlock32 && outlier_split; }
};

/// The int8 GEMM of KernelTable::gemm_int8 with the activations quantized as `grouping` says, element
/// by element: y = s_w[n]·(s_x·Σ_k q_x·q_w) for kRow and kTensor (exact integer sums), the
/// portable kernel for kBlock32 (without the outlier split).
void gemm_grouped(Grouping grouping, int M, int seg_rows, int segments, int K, int kp, const float* A,
                  std::ptrdiff_t lda, const std::int8_t* const* W, const float* const* w_scale, float* C,
                  std::ptrdiff_t ldc, const float* bias, bool gelu, const float* residual, std::ptrdiff_t ldr);

}  // namespace vitmsn::detail::int8
