// AVX2 + FMA kernels (compiled with -mavx2 -mfma; reached only through kernels() in src/cpu/cpu.cpp, after the CPU
// check). GEMM micro-tile 6×16: 12 ymm accumulators + 2 B vectors + 1 broadcast of the 16 ymm registers; per k: 2 loads
// of B, 6 broadcasts of A, 12 FMAs (the two FMA pipes of Zen 3 / Haswell+ are the limit).
#include <immintrin.h>

#include <cstdint>

#include "cpu/attention_blocked.hpp"
#include "cpu/gemm_blocked.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {
namespace {

struct Avx2 {
  using R = __m256;
  using M = __m256;  // lane mask: all-ones / all-zeros per lane
  static constexpr int kLanes = 8;

  static __m256i mask_n(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static R zero() { return _mm256_setzero_ps(); }
  static R set1(float x) { return _mm256_set1_ps(x); }
  static R load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, R v) { _mm256_storeu_ps(p, v); }
  static R load_n(const float* p, int n) { return _mm256_maskload_ps(p, mask_n(n)); }
  static void store_n(float* p, R v, int n) { _mm256_maskstore_ps(p, mask_n(n), v); }
  static M lanes_below(int n) { return _mm256_castsi256_ps(mask_n(n)); }
  static R bcast(const float* p) { return _mm256_broadcast_ss(p); }
  static R fma(R a, R b, R c) { return _mm256_fmadd_ps(a, b, c); }
  static R fnma(R a, R b, R c) { return _mm256_fnmadd_ps(a, b, c); }
  static R add(R a, R b) { return _mm256_add_ps(a, b); }
  static R sub(R a, R b) { return _mm256_sub_ps(a, b); }
  static R mul(R a, R b) { return _mm256_mul_ps(a, b); }
  static R min(R a, R b) { return _mm256_min_ps(a, b); }
  static R max(R a, R b) { return _mm256_max_ps(a, b); }
  static R abs(R x) { return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x); }
  static R sign_of(R x) { return _mm256_and_ps(_mm256_set1_ps(-0.0f), x); }
  static R or_bits(R a, R b) { return _mm256_or_ps(a, b); }
  static M lt(R a, R b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
  static R select(M m, R a, R b) { return _mm256_blendv_ps(b, a, m); }
  static R round(R x) { return _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static R pow2(R n) {
    const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
    return _mm256_castsi256_ps(_mm256_slli_epi32(e, 23));
  }
  static float hmax(R v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    return _mm_cvtss_f32(m);
  }
  /// Σx and Σx² of n floats, accumulated in double (4 lanes per quarter of 16 floats).
  static void sum_and_squares(const float* p, int n, double* sum, double* sumsq) {
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd(), q0 = _mm256_setzero_pd(), q1 = _mm256_setzero_pd();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
      const __m256d a = _mm256_cvtps_pd(_mm_loadu_ps(p + i)), b = _mm256_cvtps_pd(_mm_loadu_ps(p + i + 4));
      s0 = _mm256_add_pd(s0, a);
      s1 = _mm256_add_pd(s1, b);
      q0 = _mm256_fmadd_pd(a, a, q0);
      q1 = _mm256_fmadd_pd(b, b, q1);
    }
    alignas(32) double sv[4], qv[4];
    _mm256_store_pd(sv, _mm256_add_pd(s0, s1));
    _mm256_store_pd(qv, _mm256_add_pd(q0, q1));
    double s = (sv[0] + sv[1]) + (sv[2] + sv[3]), q = (qv[0] + qv[1]) + (qv[2] + qv[3]);
    for (; i < n; ++i) {
      const double v = p[i];
      s += v;
      q += v * v;
    }
    *sum = s;
    *sumsq = q;
  }
  static float hsum(R v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  /// transpose8 of 16-bit weights, widened to float on the way (bf16: integer unpack and shift; f16: F16C).
  template <WeightType T>
  static void transpose8_half(const std::uint16_t* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    blocked::ymm::transpose8_half<T>(src, lds, dst, ldd);
  }
  static void transpose8(const float* src, std::ptrdiff_t lds, float* dst, std::ptrdiff_t ldd) {
    blocked::ymm::transpose8(src, lds, dst, ldd);
  }
};

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
  blocked::Problem p{M, seg_rows * segments, K, A, lda, nullptr, ldw, /*b_trans=*/true, C, ldc, ep, nullptr, wt};
  p.segments = segments;
  p.seg_rows = seg_rows;
  for (int s = 0; s < segments; ++s) p.segs[s] = W[s];
  blocked::gemm<Avx2, kMr, kNv, /*KMajorA=*/false>(p, bl, threads);
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

void erf_avx2(float* x, std::ptrdiff_t n) { blocked::erf_buffer<Avx2>(x, n); }

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
  t.gemm_weights_stacked = gemm_weights_stacked_avx2;
  t.fma_burst = fma_burst_avx2;
  return t;
}

}  // namespace vitmsn::detail
