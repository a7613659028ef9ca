// AVX2 + FMA kernels (compiled with -mavx2 -mfma -mf16c; reached only through kernels() in src/cpu/cpu.cpp, after the
// CPU check): the table of kernels_simd.inc for these traits. GEMM micro-tile 6×16: 12 ymm accumulators + 2 B vectors
// + 1 broadcast of the 16 ymm registers; per k: 2 loads of B, 6 broadcasts of A, 12 FMAs (the two FMA pipes of Zen 3 /
// Haswell+ are the limit).
#include <immintrin.h>

#include <cstdint>

#include "cpu/attention_blocked.hpp"
#include "cpu/avx2_traits.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {

namespace avx2 {
// int8 without VNNI: vpmaddubsw on |q_x| and sign(q_x)·q_w (avx2_traits.hpp), 2 × 16 tiles (4 int32 +
// 4 float accumulators, 2 weight vectors, the broadcast and temporaries in 16 ymm registers).
void gemm_int8_maddubs(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                       const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                       const Epilogue& ep, int threads) {
  const int8::Problem p{M, seg_rows * segments, K, A, lda, int8::WeightView{W, w_scale, seg_rows, kp}, C, ldc, ep};
  int8::gemm<Int8Ymm<false>, 2, 2>(p, 512 / int8::kBlock, threads);
}
}  // namespace avx2

namespace {

struct Simd {
  using V = Avx2;
  static constexpr Isa kIsa = Isa::kAvx2;
  // GEMM 6 × 16 (NR = 2 vectors), A row-major. Attention: score tiles 6 queries × 16 keys (the
  // GEMM's), P·V tiles 3 queries × 24 columns (9 accumulators of the 16 ymm registers), 120 queries
  // per block (0.5 MB of scores). Peak probe: 12 chains, more than 2 pipes × 4-5 cycles of latency.
  static constexpr TileGeometry kTiles{6, 2, false, 3, 3, 120, 12};

  // int8: CPUs with AVX-VNNI run the vpdpbusd version of src/cpu/kernels_avxvnni.cpp, the others
  // vpmaddubsw.
  static void gemm_int8(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                        const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                        const Epilogue& ep, int threads) {
    static const bool avx_vnni = cpu_has(CpuFeature::kAvxVnni);
    if (avx_vnni)
      return avxvnni::gemm_int8_avxvnni(M, seg_rows, segments, K, kp, A, lda, W, w_scale, C, ldc, ep, threads);
    avx2::gemm_int8_maddubs(M, seg_rows, segments, K, kp, A, lda, W, w_scale, C, ldc, ep, threads);
  }

  // No bf16 dot product in AVX2: the portable definitions (emulations) run.
  static constexpr auto* gemm_bf16 = &gemm_bf16_portable;
  static constexpr auto* attention_head_bf16 = &attention_head_bf16_portable;
  static double (*bf16_burst())(long) { return nullptr; }
};

}  // namespace
}  // namespace vitmsn::detail

#define VITMSN_KERNEL_TABLE avx2_kernel_table
#include "cpu/kernels_simd.inc"
