// The int8 GEMM with AVX-VNNI (256-bit vpdpbusd; compiled with -mavx2 -mfma -mf16c -mavxvnni and
// reached only through avx2::best_gemm_int8() after the CPU check): 3 × 16 tiles (6 int32 + 6 float
// accumulators, 2 weight vectors, 1 broadcast), activations stored with the +128 offset, k-slices
// of 512 inputs.
#include <immintrin.h>

#include <cstdint>

#include "cpu/avx2_traits.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail::avxvnni {

GemmInt8Fn* const gemm_int8_avxvnni = &int8::table_entry<Int8Ymm<true>, 3, 2, 512>;

}  // namespace vitmsn::detail::avxvnni
