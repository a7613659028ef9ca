// The int8 GEMM with AVX-VNNI (256-bit vpdpbusd; compiled with -mavx2 -mfma -mf16c -mavxvnni and
// reached only from the AVX2 table's entry after the CPU check): 3 × 16 tiles (6 int32 + 6 float
// accumulators, 2 weight vectors, 1 broadcast), activations stored with the +128 offset.
#include <immintrin.h>

#include <cstdint>

#include "cpu/avx2_traits.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail::avxvnni {

void gemm_int8_avxvnni(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                       const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                       const Epilogue& ep, int threads) {
  const int8::Problem p{M, seg_rows * segments, K, A, lda, int8::WeightView{W, w_scale, seg_rows, kp}, C, ldc, ep};
  int8::gemm<Int8Ymm<true>, 3, 2>(p, 512 / int8::kBlock, threads);
}

}  // namespace vitmsn::detail::avxvnni
