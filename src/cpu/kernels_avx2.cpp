// AVX2 + FMA kernels (compiled with -mavx2 -mfma; reached only through kernels() in src/cpu/cpu.cpp, after the CPU
// check). GEMM micro-tile 6×16: 12 ymm accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers; per k: 2 loads
// of B, 6 broadcasts of A, 12 FMAs (the two FMA pipes of Zen 3 / Haswell+ are the limit).
#include <immintrin.h>

#include <cstdint>

#include "cpu/attention_blocked.hpp"
#include "cpu/avx2_traits.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {
namespace {

constexpr int kMr = 6;
constexpr int kNv = 2;  // NR = 16

void gemm_avx2(int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
               bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  static const Blocking bl = gemm_blocking(Isa::kAvx2);
  const blocked::Problem p{M, N, K, A, lda, B, ldb, b_trans, C, ldc, ep};
  blocked::gemm<Avx2, kMr, kNv, /*KMajorA=*/false>(p, bl, threads);
}

void gemm_weights_avx2(int M, int N, int K, const float* A, std::ptrdiff_t lda, const void* W, WeightType wt,
                       std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  static const Blocking bl = gemm_blocking(Isa::kAvx2);
  const blocked::Problem p{
      M, N, K, A, lda, nullptr, ldw, /*b_trans=*/true, C, ldc, ep, static_cast<const std::uint16_t*>(W), wt};
  blocked::gemm<Avx2, kMr, kNv, /*KMajorA=*/false>(p, bl, threads);
}

void gemm_weights_stacked_avx2(int M, int seg_rows, int segments, int K, const float* A, std::ptrdiff_t lda,
                               const void* const* W, WeightType wt, std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc,
                               const Epilogue& ep, int threads) {
  static const Blocking bl = gemm_blocking(Isa::kAvx2);
  blocked::gemm<Avx2, kMr, kNv, /*KMajorA=*/false>(
      blocked::stacked_problem(M, seg_rows, segments, K, A, lda, W, wt, ldw, C, ldc, ep), bl, threads);
}

void softmax_rows_avx2(float* x, int rows, int cols, std::ptrdiff_t ld) {
  blocked::softmax_rows<Avx2>(x, rows, cols, ld);
}

// Attention: score tiles 6 queries × 16 keys (the GEMM's), P·V tiles 3 queries × 24 columns (9
// accumulators of the 16 ymm registers); 120 queries per block (0.5 MB of scores).
void attention_head_avx2(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int head_dim,
                         float scale, float* ctx, std::ptrdiff_t ldc, float* cls_row) {
  attn_blocked::attention_head<Avx2, /*SMR=*/kMr, /*PMR=*/3, /*NVP_MAX=*/3, /*QB=*/120>(q, k, v, ld, tokens, head_dim,
                                                                                        scale, ctx, ldc, cls_row);
}

void layer_norm_avx2(const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, int rows, int cols,
                     const float* w, const float* b, double eps) {
  blocked::layer_norm_rows<Avx2>(x, ldx, y, ldy, rows, cols, w, b, eps);
}

void outlier_product_avx2(int M, int N, int J, const float* A, std::ptrdiff_t lda, const int* channels, const float* w,
                          float* P, std::ptrdiff_t ldp, int threads) {
  blocked::outlier_product<Avx2>(M, N, J, A, lda, channels, w, P, ldp, threads);
}

void erf_avx2(float* x, std::ptrdiff_t n) { blocked::erf_buffer<Avx2>(x, n); }

}  // namespace

void gemm_int8_maddubs(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                       const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                       const Epilogue& ep, int threads) {
  const int8::Problem p{M, seg_rows * segments, K, A, lda, int8::WeightView{W, w_scale, seg_rows, kp}, C, ldc, ep};
  int8::gemm<Int8Ymm<false>, 2, 2>(p, 512 / int8::kBlock, threads);
}

namespace {

// int8 without VNNI: vpmaddubsw on |q_x| and sign(q_x)·q_w (avx2_traits.hpp), 2 × 16 tiles (4 int32 +
// 4 float accumulators, 2 weight vectors, the broadcast and temporaries in 16 ymm registers). CPUs
// with AVX-VNNI run the vpdpbusd version of src/cpu/kernels_avxvnni.cpp instead.
void gemm_int8_avx2(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
                    const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
                    const Epilogue& ep, int threads) {
  static const bool avx_vnni = cpu_has(CpuFeature::kAvxVnni);
  if (avx_vnni) return gemm_int8_avxvnni(M, seg_rows, segments, K, kp, A, lda, W, w_scale, C, ldc, ep, threads);
  gemm_int8_maddubs(M, seg_rows, segments, K, kp, A, lda, W, w_scale, C, ldc, ep, threads);
}

void gelu_erf_avx2(float* x, std::ptrdiff_t n) { blocked::gelu_erf<Avx2>(x, n); }

double fma_burst_avx2(long iterations) {
  // 12 independent accumulator chains: more than 2 pipes × 4-5 cycles of FMA latency.
  constexpr int kChains = 12;
  __m256 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm256_set1_ps(0.001f * static_cast<float>(i + 1));
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < kChains; ++i) acc[i] = _mm256_fmadd_ps(acc[i], m, c);
  }
  __m256 s = acc[0];
  for (int i = 1; i < kChains; ++i) s = _mm256_add_ps(s, acc[i]);
  volatile float sink = _mm256_cvtss_f32(s);
  (void)sink;
  return 2.0 * 8 * kChains * static_cast<double>(iterations);
}

}  // namespace

KernelTable avx2_kernel_table() {
  KernelTable t;
  t.isa = Isa::kAvx2;
  t.gemm = gemm_avx2;
  t.gemm_weights = gemm_weights_avx2;
  t.softmax_rows = softmax_rows_avx2;
  t.gelu_erf = gelu_erf_avx2;
  t.erf = erf_avx2;
  t.layer_norm = layer_norm_avx2;
  t.attention_head = attention_head_avx2;
  t.gemm_int8 = gemm_int8_avx2;
  t.outlier_product = outlier_product_avx2;
  t.gemm_weights_stacked = gemm_weights_stacked_avx2;
  t.fma_burst = fma_burst_avx2;
  t.microkernel_burst = blocked::microkernel_burst<Avx2, kMr, kNv, /*KMajorA=*/false>;
  t.gemm_bf16 = gemm_bf16_portable;  // no bf16 dot product in AVX2: the emulation
  return t;
}

}  // namespace vitmsn::detail
