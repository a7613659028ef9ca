// The portable kernels: the reference every vectorised variant (src/cpu/kernels_avx2.cpp,
// kernels_avx512.cpp over src/cpu/gemm_blocked.hpp) is tested against, and the path on CPUs without
// them. The GEMM is Eigen's (single-threaded per call; the row range is split over threads here).
// gemm_weights with 16-bit weights widens blocks of rows of W (portable::gemm_weights below).
#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "base/contract.hpp"
#include "cpu/half.hpp"
#include "cpu/int8_blocked.hpp"
#include "cpu/kernels.hpp"
#include "cpu/parallel.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace vitmsn::detail {

namespace int8 {

std::vector<int> find_outlier_channels(const float* A, std::ptrdiff_t lda, int M, int K) {
  std::vector<int> out;
  if (M <= 0 || K <= 0) return out;
  const int rows = std::min(M, kOutlierRows);
  std::vector<float> amax(static_cast<std::size_t>(K), 0.0f);
  for (int i = 0; i < rows; ++i) {
    const float* a = A + static_cast<std::ptrdiff_t>(static_cast<long long>(M) * i / rows) * lda;
    for (int c = 0; c < K; ++c) amax[c] = std::fabs(a[c]) > amax[c] ? std::fabs(a[c]) : amax[c];  // NaN: skipped
  }
  std::vector<float> sorted = amax;
  std::nth_element(sorted.begin(), sorted.begin() + K / 2, sorted.end());
  const float median = sorted[K / 2];
  if (!(median > 0.0f)) return out;
  const float threshold = kOutlierRatio * median;
  for (int c = 0; c < K; ++c)
    if (amax[c] > threshold) out.push_back(c);
  const std::size_t cap = static_cast<std::size_t>(std::max(8, K / 16));
  if (out.size() > cap) {  // the largest, ties by channel
    std::stable_sort(out.begin(), out.end(), [&](int a, int b) { return amax[a] > amax[b]; });
    out.resize(cap);
    std::sort(out.begin(), out.end());
  }
  return out;
}

}  // namespace int8

namespace portable {

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Stride = Eigen::OuterStride<>;
using ConstMap = Eigen::Map<const RowMat, 0, Stride>;
using Map = Eigen::Map<RowMat, 0, Stride>;

float gelu_scalar(float x) {
  // torch computes x * 0.5 * (1 + erf(x * M_SQRT1_2)) in float.
  return x * 0.5f * (1.0f + std::erf(x * 0.70710678118654752440f));
}

void gemm_rows(int m0, int m1, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb,
               bool b_trans, float* C, std::ptrdiff_t ldc, const Epilogue& ep) {
  const int rows = m1 - m0;
  if (rows <= 0) return;
#ifdef _OPENMP
  // Eigen parallelises a product by itself when OpenMP is on (up to omp_get_max_threads()). Keep it
  // on this thread: threads == 1 must not open a parallel region. The ICV is per task, restored below.
  const int saved_max_threads = omp_get_max_threads();
  omp_set_num_threads(1);
#endif
  ConstMap a(A + m0 * lda, rows, K, Stride(lda));
  RowMat t(rows, N);
  if (b_trans) {
    ConstMap b(B, N, K, Stride(ldb));
    t.noalias() = a * b.transpose();
  } else {
    ConstMap b(B, K, N, Stride(ldb));
    t.noalias() = a * b;
  }
#ifdef _OPENMP
  omp_set_num_threads(saved_max_threads);
#endif
  for (int i = 0; i < rows; ++i) {
    float* c = C + (m0 + i) * ldc;
    const float* r = ep.residual ? ep.residual + (m0 + i) * ep.ldr : nullptr;
    for (int j = 0; j < N; ++j) {
      float v = t(i, j);
      if (ep.alpha != 1.0f) v *= ep.alpha;
      if (ep.bias) v += ep.bias[j];
      if (ep.gelu) v = gelu_scalar(v);
      if (r) v += r[j];
      c[j] = v;
    }
  }
}

// Rows of C per Eigen product. Eigen chooses its kernels and its own K blocking from the product's
// size, so the same rows must always be computed in the same call: C is cut into fixed blocks of
// kRowBlock rows whatever the thread count, and threads take whole blocks. That makes the result
// independent of the thread count.
constexpr int kRowBlock = 64;

// Portable gemm_weights for 16-bit W: blocks of kWidenRows rows of W (columns of C) are widened into a
// thread-local float buffer, multiplied by all of A with Eigen and finished with the epilogue. Threads
// take whole blocks; a block's computation is the same whoever runs it, so the result does not
// depend on the thread count. W is never widened whole: per thread at most kWidenRows × K floats.
// 256 rows measured 1-2 % faster than 128 on Zen 3 (M = 1025: fewer passes of Eigen over A).
constexpr int kWidenRows = 256;

template <WeightType T>
void widen_rows(const std::uint16_t* W, std::ptrdiff_t ldw, int rows, int K, float* dst) {
  for (int n = 0; n < rows; ++n) {
    const std::uint16_t* s = W + n * ldw;
    float* d = dst + static_cast<std::ptrdiff_t>(n) * K;
    for (int k = 0; k < K; ++k) d[k] = T == WeightType::kBF16 ? bf16_to_float(s[k]) : half_to_float(s[k]);
  }
}

void gemm_weights_block(int n0, int nb, int M, int K, const float* A, std::ptrdiff_t lda, const std::uint16_t* W,
                        WeightType wt, std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep) {
  static thread_local std::vector<float> wf;
  static thread_local RowMat t;
  const std::size_t need = static_cast<std::size_t>(nb) * static_cast<std::size_t>(std::max(K, 1));
  if (wf.size() < need) wf.resize(need);  // grow-only
  if (wt == WeightType::kBF16)
    widen_rows<WeightType::kBF16>(W + n0 * ldw, ldw, nb, K, wf.data());
  else
    widen_rows<WeightType::kF16>(W + n0 * ldw, ldw, nb, K, wf.data());
  {
#ifdef _OPENMP
    const int saved_max_threads = omp_get_max_threads();  // keep Eigen on this thread (see above)
    omp_set_num_threads(1);
#endif
    ConstMap a(A, M, K, Stride(lda));
    ConstMap b(wf.data(), nb, K, Stride(std::max(K, 1)));
    t.resize(M, nb);
    t.noalias() = a * b.transpose();
#ifdef _OPENMP
    omp_set_num_threads(saved_max_threads);
#endif
  }
  for (int i = 0; i < M; ++i) {
    float* c = C + i * ldc + n0;
    const float* r = ep.residual ? ep.residual + i * ep.ldr + n0 : nullptr;
    for (int j = 0; j < nb; ++j) {
      float v = t(i, j);
      if (ep.alpha != 1.0f) v *= ep.alpha;
      if (ep.bias) v += ep.bias[n0 + j];
      if (ep.gelu) v = gelu_scalar(v);
      if (r) v += r[j];
      c[j] = v;
    }
  }
}

void softmax_rows(float* x, int rows, int cols, std::ptrdiff_t ld) {
  for (int i = 0; i < rows; ++i) {
    float* r = x + i * ld;
    float mx = r[0];
    for (int j = 1; j < cols; ++j) mx = std::max(mx, r[j]);
    float sum = 0.0f;
    for (int j = 0; j < cols; ++j) {
      r[j] = std::exp(r[j] - mx);
      sum += r[j];
    }
    const float inv = 1.0f / sum;
    for (int j = 0; j < cols; ++j) r[j] *= inv;
  }
}

// One head as the reference computes it: for each block of kQueryBlock queries, scores = q·kᵀ·scale
// with the portable GEMM, softmax over the keys, ctx = probabilities·v. The scores of one block
// (kQueryBlock × tokens floats) live in a thread-local buffer.
constexpr int kQueryBlock = 128;

// bf16 with DAZ: a subnormal bf16 (exponent bits 0) reads as a zero of its sign.
inline float bf16_daz(std::uint32_t h) {
  return bf16_to_float(static_cast<std::uint16_t>((h & 0x7f80u) ? h : h & 0x8000u));
}

// FTZ: a subnormal result becomes a zero of its sign.
inline float ftz(float x) {
  const std::uint32_t u = float_to_bits(x);
  return (u & 0x7f800000u) ? x : bits_to_float(u & 0x80000000u);
}

// One 32-bit word of two bf16 (nearest even): lo in the low half, hi in the high half.
inline std::uint32_t bf16_pair(float lo, float hi) {
  return std::uint32_t{float_to_bf16(lo)} | std::uint32_t{float_to_bf16(hi)} << 16;
}

// One pair step of the definition (src/cpu/bf16_format.hpp): the odd element first, then the even one.
inline float bf16_pair_fma(float acc, std::uint32_t a, std::uint32_t w) {
  acc = ftz(std::fma(bf16_daz(a >> 16), bf16_daz(w >> 16), acc));
  return ftz(std::fma(bf16_daz(a & 0xffffu), bf16_daz(w & 0xffffu), acc));
}

}  // namespace

void gemm(int M, int N, int K, const float* A, std::ptrdiff_t lda, const float* B, std::ptrdiff_t ldb, bool b_trans,
          float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  const int blocks = (M + kRowBlock - 1) / kRowBlock;
  const auto part = [&](int t, int nt) {
    const int b0 = split_begin(blocks, t, nt);
    const int b1 = split_begin(blocks, t + 1, nt);
    for (int b = b0; b < b1; ++b)
      gemm_rows(b * kRowBlock, std::min(M, (b + 1) * kRowBlock), N, K, A, lda, B, ldb, b_trans, C, ldc, ep);
  };
  threads = std::max(1, std::min(threads, blocks));
  run_split(threads, part);
}

// The table's gemm_weights entry: 16-bit W only (kF32 goes to gemm).
void gemm_weights(int M, int N, int K, const float* A, std::ptrdiff_t lda, const void* W_any, WeightType wt,
                  std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc, const Epilogue& ep, int threads) {
  if (M <= 0 || N <= 0) return;
  const auto* W = static_cast<const std::uint16_t*>(W_any);
  const int blocks = (N + kWidenRows - 1) / kWidenRows;
  const auto part = [&](int t, int nt) {
    const int b0 = split_begin(blocks, t, nt);
    const int b1 = split_begin(blocks, t + 1, nt);
    for (int b = b0; b < b1; ++b) {
      const int n0 = b * kWidenRows;
      gemm_weights_block(n0, std::min(kWidenRows, N - n0), M, K, A, lda, W, wt, ldw, C, ldc, ep);
    }
  };
  threads = std::max(1, std::min(threads, blocks));
  run_split(threads, part);
}

// One call per segment, each with its share of the bias (its own columns of C).
void gemm_weights_stacked(int M, int seg_rows, int segments, int K, const float* A, std::ptrdiff_t lda,
                          const void* const* W, WeightType wt, std::ptrdiff_t ldw, float* C, std::ptrdiff_t ldc,
                          const Epilogue& ep, int threads) {
  VITMSN_DASSERT(segments >= 1 && segments <= 3, "1 to 3 stacked weight segments");
  for (int s = 0; s < segments; ++s) {
    Epilogue e = ep;
    if (e.bias) e.bias += static_cast<std::ptrdiff_t>(s) * seg_rows;
    if (e.residual) e.residual += static_cast<std::ptrdiff_t>(s) * seg_rows;
    float* Cs = C + static_cast<std::ptrdiff_t>(s) * seg_rows;
    if (wt == WeightType::kF32) {
      gemm(M, seg_rows, K, A, lda, static_cast<const float*>(W[s]), ldw, /*b_trans=*/true, Cs, ldc, e, threads);
    } else {
      gemm_weights(M, seg_rows, K, A, lda, W[s], wt, ldw, Cs, ldc, e, threads);
    }
  }
}

// The int8 GEMM as src/cpu/int8_blocked.hpp defines it, element by element: the reference of the
// vector variants (the same integers and the same float operations in the same order).
void gemm_int8(int M, int seg_rows, int segments, int K, int kp, const float* A, std::ptrdiff_t lda,
               const std::int8_t* const* W, const float* const* w_scale, float* C, std::ptrdiff_t ldc,
               const Epilogue& ep, int threads) {
  VITMSN_DASSERT(segments >= 1 && segments <= 3 && kp % int8::kBlock == 0 && kp >= K,
                 "int8 GEMM: 1 to 3 segments, K padded to whole blocks of 32");
  const int N = seg_rows * segments, blocks = kp / int8::kBlock;
  const auto rows = [&](int r0, int r1) {
    std::vector<std::int8_t> q(static_cast<std::size_t>(kp));
    std::vector<float> s(static_cast<std::size_t>(blocks));
    for (int t = r0; t < r1; ++t) {
      for (int b = 0; b < blocks; ++b) {
        const int k0 = b * int8::kBlock, len = std::max(0, std::min(int8::kBlock, K - k0));
        s[b] = int8::quantize_block_scalar(A + t * lda + k0, len, q.data() + k0,
                                           ep.int8_excluded ? ep.int8_excluded[b] : 0u);
      }
      for (int n = 0; n < N; ++n) {
        const std::int8_t* w = W[n / seg_rows];
        const int nn = n % seg_rows;
        float f = 0.0f;
        for (int b = 0; b < blocks; ++b) {
          std::int32_t acc = 0;
          for (int k = b * int8::kBlock; k < (b + 1) * int8::kBlock; ++k)
            acc += static_cast<std::int32_t>(q[k]) * w[int8::panel_offset(nn, k, kp)];
          f = std::fma(static_cast<float>(acc), s[b], f);
        }
        float v = ep.int8_pre ? std::fma(f, w_scale[n / seg_rows][nn], ep.int8_pre[t * ep.ldp + n])
                              : f * w_scale[n / seg_rows][nn];
        if (ep.bias) v += ep.bias[n];
        if (ep.gelu) v = gelu_scalar(v);
        if (ep.residual) v += ep.residual[t * ep.ldr + n];
        C[t * ldc + n] = v;
      }
    }
  };
  threads = std::max(1, std::min(threads, M));
  run_split(threads, [&](int t, int nt) { rows(split_begin(M, t, nt), split_begin(M, t + 1, nt)); });
}

void outlier_product(int M, int N, int J, const float* A, std::ptrdiff_t lda, const int* channels, const float* w,
                     float* P, std::ptrdiff_t ldp, int threads) {
  threads = std::max(1, std::min(threads, M / 64));
  run_split(threads, [&](int t, int nt) {
    for (int r = split_begin(M, t, nt); r < split_begin(M, t + 1, nt); ++r)
      for (int n = 0; n < N; ++n) {
        float p = 0.0f;
        for (int j = 0; j < J; ++j)
          p = std::fma(A[r * lda + channels[j]], w[static_cast<std::ptrdiff_t>(j) * N + n], p);
        P[r * ldp + n] = p;
      }
  });
}

void layer_norm(const float* x, std::ptrdiff_t ldx, float* y, std::ptrdiff_t ldy, int rows, int cols, const float* w,
                const float* b, double eps) {
  for (int r = 0; r < rows; ++r) {
    const float* xr = x + r * ldx;
    float* yr = y + r * ldy;
    // mean = Σx/n, var = Σx²/n − mean² (biased, as torch), both in double in a single pass.
    double sum = 0.0, sumsq = 0.0;
    for (int c = 0; c < cols; ++c) {
      const double v = xr[c];
      sum += v;
      sumsq += v * v;
    }
    const double mean = sum / cols;
    const double var = std::max(0.0, sumsq / cols - mean * mean);
    const float rstd = static_cast<float>(1.0 / std::sqrt(var + eps));
    const float m = static_cast<float>(mean);
    for (int c = 0; c < cols; ++c) yr[c] = (xr[c] - m) * rstd * w[c] + b[c];
  }
}

void erf(float* x, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] = std::erf(x[i]);
}

void gelu_erf(float* x, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = 0; i < n; ++i) x[i] = gelu_scalar(x[i]);
}

void attention_head(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int head_dim,
                    float scale, float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows) {
  static thread_local std::vector<float> scores;
  scores.resize(static_cast<std::size_t>(kQueryBlock) * static_cast<std::size_t>(tokens));
  for (int r0 = 0; r0 < tokens; r0 += kQueryBlock) {
    const int rows = std::min(kQueryBlock, tokens - r0);
    Epilogue ep;
    ep.alpha = scale;
    gemm(rows, tokens, head_dim, q + r0 * ld, ld, k, ld, /*b_trans=*/true, scores.data(), tokens, ep, 1);
    softmax_rows(scores.data(), rows, tokens, tokens);
    if (probs != nullptr && r0 < prob_rows) {
      const std::ptrdiff_t n = static_cast<std::ptrdiff_t>(std::min(rows, prob_rows - r0)) * tokens;
      std::copy(scores.begin(), scores.begin() + n, probs + static_cast<std::ptrdiff_t>(r0) * tokens);
    }
    gemm(rows, head_dim, tokens, scores.data(), tokens, v, ld, /*b_trans=*/false, ctx + r0 * ldc, ldc, Epilogue{}, 1);
  }
}

// Scalar stand-in for CPUs without the vector kernels: 8 independent multiply-add chains (2 FLOP each).
double fma_burst(long iterations) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = 0.001f * static_cast<float>(i + 1);
  for (long it = 0; it < iterations; ++it)
    for (float& a : acc) a = a * 0.999999f + 1e-7f;
  float s = 0.0f;
  for (float a : acc) s += a;
  volatile float sink = s;
  (void)sink;
  return 2.0 * 8 * static_cast<double>(iterations);
}

// The definition of bf16 compute (src/cpu/bf16_format.hpp), one output at a time.
void gemm_bf16(int M, const float* A, std::ptrdiff_t lda, const bf16::Panels& w, float* C, std::ptrdiff_t ldc,
               const Epilogue& ep, int threads) {
  const int pairs = w.kp / 2, N = w.N, K = w.K;
  run_split(std::max(1, std::min(threads, M)), [&](int t, int nt) {
    std::vector<std::uint32_t> a(static_cast<std::size_t>(pairs));
    for (int m = split_begin(M, t, nt); m < split_begin(M, t + 1, nt); ++m) {
      const float* x = A + static_cast<std::ptrdiff_t>(m) * lda;
      for (int q = 0; q < pairs; ++q) a[q] = bf16_pair(x[2 * q], 2 * q + 1 < K ? x[2 * q + 1] : 0.0f);
      float* c = C + static_cast<std::ptrdiff_t>(m) * ldc;
      const float* r = ep.residual ? ep.residual + static_cast<std::ptrdiff_t>(m) * ep.ldr : nullptr;
      for (int n = 0; n < N; ++n) {
        const std::uint32_t* col =
            w.data() + static_cast<std::ptrdiff_t>(n / bf16::kPanel) * pairs * bf16::kPanel + n % bf16::kPanel;
        float acc = 0.0f;
        for (int q = 0; q < pairs; ++q)
          acc = bf16_pair_fma(acc, a[q], col[static_cast<std::ptrdiff_t>(q) * bf16::kPanel]);
        float v = acc;
        if (ep.alpha != 1.0f) v *= ep.alpha;
        if (ep.bias) v += ep.bias[n];
        if (ep.gelu) v = gelu_scalar(v);
        if (r) v += r[n];
        c[n] = v;
      }
    }
  });
}

// attention_head_bf16 by its definition (attention_blocked.hpp, PairProducts), scalar: q·factor, k, v
// and the unnormalised exponentials rounded to bf16, the pair chains of gemm_bf16, the
// softmax in float32 with std::exp2.
void attention_head_bf16(const float* q, const float* k, const float* v, std::ptrdiff_t ld, int tokens, int head_dim,
                         float scale, float* ctx, std::ptrdiff_t ldc, float* probs, int prob_rows) {
  const float factor = scale * 1.44269504088896341f;
  const int hd = head_dim, hdq = (hd + 1) / 2, kq = (tokens + 1) / 2;
  static thread_local std::vector<std::uint32_t> kw, vw, qw, pw;
  static thread_local std::vector<float> s;
  kw.assign(static_cast<std::size_t>(tokens) * hdq, 0u);
  vw.assign(static_cast<std::size_t>(kq) * hd, 0u);
  qw.assign(static_cast<std::size_t>(hdq), 0u);
  pw.assign(static_cast<std::size_t>(kq), 0u);
  s.assign(static_cast<std::size_t>(tokens), 0.0f);
  for (int key = 0; key < tokens; ++key)
    for (int dq = 0; dq < hdq; ++dq)
      kw[static_cast<std::size_t>(key) * hdq + dq] =
          bf16_pair(k[key * ld + 2 * dq], 2 * dq + 1 < hd ? k[key * ld + 2 * dq + 1] : 0.0f);
  for (int kk = 0; kk < kq; ++kk)
    for (int c = 0; c < hd; ++c)
      vw[static_cast<std::size_t>(kk) * hd + c] =
          bf16_pair(v[2 * kk * ld + c], 2 * kk + 1 < tokens ? v[(2 * kk + 1) * ld + c] : 0.0f);
  for (int i = 0; i < tokens; ++i) {
    const float* qi = q + i * ld;
    for (int dq = 0; dq < hdq; ++dq)
      qw[dq] = bf16_pair(qi[2 * dq] * factor, 2 * dq + 1 < hd ? qi[2 * dq + 1] * factor : 0.0f);
    float mx = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < tokens; ++j) {
      float acc = 0.0f;
      for (int dq = 0; dq < hdq; ++dq) acc = bf16_pair_fma(acc, qw[dq], kw[static_cast<std::size_t>(j) * hdq + dq]);
      s[j] = acc;
      mx = std::max(mx, acc);
    }
    float sum = 0.0f;
    for (int j = 0; j < tokens; ++j) sum += (s[j] = std::exp2(s[j] - mx));
    const float inv = 1.0f / sum;
    if (probs != nullptr && i < prob_rows)
      for (int j = 0; j < tokens; ++j) probs[static_cast<std::ptrdiff_t>(i) * tokens + j] = s[j] * inv;
    for (int kk = 0; kk < kq; ++kk) pw[kk] = bf16_pair(s[2 * kk], 2 * kk + 1 < tokens ? s[2 * kk + 1] : 0.0f);
    for (int c = 0; c < hd; ++c) {
      float acc = 0.0f;
      for (int kk = 0; kk < kq; ++kk) acc = bf16_pair_fma(acc, pw[kk], vw[static_cast<std::size_t>(kk) * hd + c]);
      ctx[i * ldc + c] = acc * inv;
    }
  }
}

}  // namespace portable

// The portable table is the defaults: every entry its definition above, no packed GEMM (weights stay
// as stored), no bf16 rate probe.
KernelTable portable_kernel_table() { return KernelTable{}; }

}  // namespace vitmsn::detail
