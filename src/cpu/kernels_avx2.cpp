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
GemmInt8Fn* const gemm_int8_maddubs = &int8::table_entry<Int8Ymm<false>, 2, 2, 512>;

// CPUs with AVX-VNNI run the vpdpbusd version of src/cpu/kernels_avxvnni.cpp, the others vpmaddubsw.
GemmInt8Fn* best_gemm_int8() { return cpu_has(CpuFeature::kAvxVnni) ? avxvnni::gemm_int8_avxvnni : gemm_int8_maddubs; }
}  // namespace avx2

namespace {

struct Simd {
  using V = Avx2;
  static constexpr Isa kIsa = Isa::kAvx2;
  // GEMM 6 × 16 (NR = 2 vectors), A row-major. Attention: score tiles 6 queries × 16 keys (the
  // GEMM's), P·V tiles 3 queries × 24 columns (9 accumulators of the 16 ymm registers), 120 queries
  // per block (0.5 MB of scores). Peak probe: 12 chains, more than 2 pipes × 4-5 cycles of latency.
  static constexpr TileGeometry kTiles{6, 2, false, 3, 3, 120, 12};

  static GemmInt8Fn* gemm_int8() { return avx2::best_gemm_int8(); }
  // No bf16 dot product in AVX2: the portable definitions (emulations) run.
  static GemmBf16Fn* gemm_bf16() { return portable::gemm_bf16; }
  static AttentionHeadFn* attention_head_bf16() { return portable::attention_head_bf16; }
  static BurstFn* bf16_burst() { return nullptr; }
};

}  // namespace
}  // namespace vitmsn::detail

#define VITMSN_KERNEL_TABLE avx2_kernel_table
#include "cpu/kernels_simd.inc"
