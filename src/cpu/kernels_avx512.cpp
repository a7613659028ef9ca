// AVX-512 kernels (compiled with -mavx512f/bw/dq/vl; reached only through kernels() in
// src/cpu/cpu.cpp, after the CPU check). GEMM micro-tile 14×32: 28 zmm accumulators + 2 B vectors + 1 broadcast of the
// 32 zmm registers; per k: 2 loads of B, 14 broadcasts of A (k-major packed A: one address stream), 28 FMAs. Zen 4 runs
// a zmm FMA as two 256-bit halves (1 zmm FMA/cycle), Intel server cores on two 512-bit ports: either way FMA-bound
// (measured rates: docs/PERFORMANCE.md). The shared tiling logic is also tested with this geometry
// through plain C++ lanes (tests/kernels_gemm_test.cpp, tests/kernels_attention_test.cpp). Half-size weights
// (gemm_weights) are widened in 8×8 blocks with the same 256-bit code as the AVX2 build (blocked::ymm: vpmovzxwd +
// shift for bf16, vcvtph2ps for f16); the packing is a small part of the work (each weight is widened once per GEMM and
// then used by all M rows).
#include <immintrin.h>

// GCC 12's AVX-512 headers trip -Wmaybe-uninitialized on their own _mm512_undefined_*() temporaries
// (GCC bug 105593) wherever they are inlined; nothing of ours is uninitialised.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#include <cstdint>

#include "cpu/attention_blocked.hpp"
#include "cpu/avx512_traits.hpp"
#include "cpu/bf16_blocked.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {
namespace {

struct Simd {
  using V = Avx512;
  static constexpr Isa kIsa = Isa::kAvx512;
  // GEMM 14 × 32 (NR = 2 vectors), A k-major. Attention: score tiles 14 queries × 32 keys (the
  // GEMM's), P·V tiles 6 queries × 64 columns (24 accumulators, 4 loads of v + 6 broadcasts of P per
  // key), 126 queries per block (0.5 MB of scores). Peak probe: 16 zmm chains, more than 2 ports × 4
  // cycles of FMA latency.
  static constexpr TileGeometry kTiles{14, 2, true, 6, 4, 126, 16};

  // int8: 6 × 32 tiles (12 int32 + 12 float accumulators, 2 weight vectors, 1 broadcast); per k-quad 2
  // loads of weights + 6 broadcasts of activations for 12 vpdpbusd. k-slices of 2048 inputs (the 32
  // columns' weights, 64 KB, streamed from L2 by every row tile; fc1 and the projections run as one
  // slice, without partial sums): measured 8-16 % faster than slices of 512 (other tile shapes,
  // 7 × 32, 4 × 48, 5 × 32, were no better). Without AVX512-VNNI, the AVX2 table's entry (AVX-VNNI or
  // vpmaddubsw) runs.
  static GemmInt8Fn* gemm_int8() {
    if (cpu_has(CpuFeature::kAvx512vnni)) return &int8::table_entry<Int8Vnni512, 6, 2, 2048>;
    return avx2::best_gemm_int8();
  }

  // bf16 compute: 14 × 32 tiles as the float GEMM's (28 accumulators, 2 weight vectors, 1 broadcast);
  // per pair of inputs 2 loads + 14 broadcasts for 28 vdpbf16ps (twice the multiply-adds of an FMA).
  // Without AVX512_BF16 the portable emulation runs.
  static void gemm_bf16_zmm(int M, const float* A, std::ptrdiff_t lda, const bf16::Panels& w, float* C,
                            std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
    static const Blocking bl = gemm_blocking(Isa::kAvx512);
    bf16_blocked::gemm<Bf16Avx512, kTiles.mr>(M, A, lda, w, C, ldc, ep, threads, bl.mc);
  }
  static GemmBf16Fn* gemm_bf16() { return cpu_has(CpuFeature::kAvx512bf16) ? gemm_bf16_zmm : portable::gemm_bf16; }

  // The bf16 rate probe (bf16_compute_pays): 16 independent vdpbf16ps chains, as the FMA probe.
  static double bf16_burst_zmm(long iterations) {
    constexpr int kChains = 16;
    __m512 acc[kChains];
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.001f * static_cast<float>(i + 1));
    const __m512i a = _mm512_set1_epi32(0x3f803f80), b = _mm512_set1_epi32(0x33d633d6);  // (1, 1), (1e-7, 1e-7)
    for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 16
      for (int i = 0; i < kChains; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], (__m512bh)a, (__m512bh)b);
    }
    __m512 s = acc[0];
    for (int i = 1; i < kChains; ++i) s = _mm512_add_ps(s, acc[i]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return 4.0 * 16 * kChains * static_cast<double>(iterations);
  }
  static BurstFn* bf16_burst() { return cpu_has(CpuFeature::kAvx512bf16) ? bf16_burst_zmm : nullptr; }

  // Attention's two products on bf16 pairs (bf16 compute): the float head's tiles, vdpbf16ps for the
  // FMAs. 252 queries per block (twice the float head's): attention 3-5 % faster than 126 on Zen 5
  // (int8 forward, alternating runs), 56 and 504 slower; a row's arithmetic does not depend on it.
  static AttentionHeadFn* attention_head_bf16() {
    if (!cpu_has(CpuFeature::kAvx512bf16)) return portable::attention_head_bf16;
    return attn_blocked::attention_head_bf16<Bf16Avx512, kTiles.mr, kTiles.pv_mr, kTiles.pv_nv_max,
                                             2 * kTiles.query_block>;
  }
};

}  // namespace
}  // namespace vitmsn::detail

#define VITMSN_KERNEL_TABLE avx512_kernel_table
#include "cpu/kernels_simd.inc"
