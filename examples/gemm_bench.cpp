// gemm_bench: GFLOP/s of the GEMM variants on ViT-L/7's shapes, against the machine's measured FMA
// peak. Usage: gemm_bench [threads (default: all usable CPUs)] [repetitions (default 7)]
// Each shape runs `repetitions` times per variant; the best and the median are reported. The FMA peak
// is measured right before each shape (0.2 s), so that on a shared machine the ratio compares runs
// made under the same load. A second table runs the linear layers through gemm_weights with float32,
// bf16 and f16 weights (W [N,K], widened to float inside the GEMM).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <random>
#include <vector>

#include "core/measure.hpp"
#include "cpu/half.hpp"
#include "cpu/int8_format.hpp"
#include "cpu/kernels.hpp"
#include "vitmsn/cpu.hpp"

namespace {

using vitmsn::detail::Epilogue;
using vitmsn::detail::Isa;
using vitmsn::detail::WeightType;

struct Shape {
  const char* name;
  int M, N, K;
  bool b_trans;
  std::ptrdiff_t lda, ldb;
  bool bias, gelu, residual;
  float alpha;
};

struct Timing {
  double best, median;
};

/// A shape's operands: A [M, lda], B [N, ldb] when b_trans (the linear layers' W [N, K]) else [K, ldb],
/// bias [N] and C [M, N], all filled with uniform values in [-1, 1) from `rng`.
struct Operands {
  std::vector<float> A, B, bias, C;
};

Operands make_operands(const Shape& s, std::mt19937& rng) {
  Operands o{std::vector<float>(static_cast<std::size_t>(s.M) * s.lda),
             std::vector<float>(static_cast<std::size_t>(s.b_trans ? s.N : s.K) * s.ldb), std::vector<float>(s.N),
             std::vector<float>(static_cast<std::size_t>(s.M) * s.N)};
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (auto* v : {&o.A, &o.B, &o.bias, &o.C})
    for (float& x : *v) x = u(rng);
  return o;
}

/// The shape's epilogue; a residual is added in place, as the model's x += ...
Epilogue epilogue_of(const Shape& s, Operands& o) {
  Epilogue ep;
  ep.alpha = s.alpha;
  ep.bias = s.bias ? o.bias.data() : nullptr;
  ep.gelu = s.gelu;
  if (s.residual) {
    ep.residual = o.C.data();
    ep.ldr = s.N;
  }
  return ep;
}

/// Runs `call` reps + 1 times and times each run; the first run only warms caches and scratch
/// buffers. Returns the best and the median of the other `reps`.
template <class F>
Timing time_runs(int reps, F&& call) {
  std::vector<double> t;
  for (int r = 0; r < reps + 1; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r > 0) t.push_back(dt);
  }
  std::sort(t.begin(), t.end());
  return {t.front(), t[t.size() / 2]};
}

Timing time_gemm(Isa isa, const Shape& s, Operands& o, int threads, int reps) {
  const Epilogue ep = epilogue_of(s, o);
  return time_runs(reps, [&] {
    vitmsn::detail::gemm(isa, s.M, s.N, s.K, o.A.data(), s.lda, o.B.data(), s.ldb, s.b_trans, o.C.data(), s.N, ep,
                         threads);
  });
}

/// gemm_weights (the linear layers: W [N,K], ldw = K) with weights of type wt stored in W.
Timing time_weights(Isa isa, const Shape& s, Operands& o, const void* W, WeightType wt, int threads, int reps) {
  const Epilogue ep = epilogue_of(s, o);
  return time_runs(reps, [&] {
    vitmsn::detail::gemm_weights(isa, s.M, s.N, s.K, o.A.data(), s.lda, W, wt, s.ldb, o.C.data(), s.N, ep, threads);
  });
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const int threads = argc > 1 ? std::atoi(argv[1]) : vitmsn::default_threads();
    const int reps = argc > 2 ? std::max(1, std::atoi(argv[2])) : 7;
    const Isa best = vitmsn::detail::detected_isa();
    std::printf("threads %d, best variant %s\n", threads, vitmsn::detail::isa_name(best));
    const vitmsn::detail::CacheSizes caches = vitmsn::detail::cache_sizes();
    const vitmsn::detail::Blocking bl = vitmsn::detail::gemm_blocking(best);
    std::printf("caches (%s): L1d %zu KB, L2 %zu KB, L3 %zu KB; blocking kc %d, mc %d, packed B %zu floats%s\n",
                caches.source, caches.l1d / 1024, caches.l2 / 1024, caches.l3 / 1024, bl.kc, bl.mc, bl.b_pack_floats,
                std::getenv("VITMSN_GEMM_BLOCKING") ? " (VITMSN_GEMM_BLOCKING)" : "");
    {  // The ceiling of the GEMM code: its micro-kernel alone on packed panels in L1, next to the peak.
      const double peak = vitmsn::detail::measure_fma_peak_gflops(threads, 0.5);
      const double mk = vitmsn::detail::measure_microkernel_gflops(best, threads, 0.5);
      std::printf("micro-kernel alone (%s, packed panels in L1): %.1f GFLOP/s = %.1f%% of the FMA peak %.1f\n",
                  vitmsn::detail::isa_name(best), mk, 100.0 * mk / peak, peak);
    }
    // The per-layer GEMMs of ViT-L/7 (1025 tokens, hidden 1024, MLP 4096, heads of 64).
    const std::vector<Shape> shapes = {
        {"qkv", 1025, 3072, 1024, true, 1024, 1024, true, false, false, 1.0f},
        {"attn.out", 1025, 1024, 1024, true, 1024, 1024, true, false, true, 1.0f},
        {"mlp.fc1", 1025, 4096, 1024, true, 1024, 1024, true, false, false, 1.0f},
        {"mlp.fc1+gelu", 1025, 4096, 1024, true, 1024, 1024, true, true, false, 1.0f},
        {"mlp.fc2", 1025, 1024, 4096, true, 4096, 4096, true, false, true, 1.0f},
        {"scores q·kT", 1025, 1025, 64, true, 3072, 3072, false, false, false, 0.125f},
        {"probs·v", 1025, 64, 1025, false, 1025, 3072, false, false, false, 1.0f},
    };
    std::mt19937 rng(1);
    std::printf("%-13s %5s %5s %5s | %-8s %8s %8s %6s | %-8s %8s %8s %6s | %8s\n", "shape", "M", "N", "K", "variant",
                "best", "median", "%peak", "variant", "best", "median", "%peak", "peak");
    for (const Shape& s : shapes) {
      Operands o = make_operands(s, rng);
      const double peak = vitmsn::detail::measure_fma_peak_gflops(threads, 0.2);
      const double gflop = 2.0 * s.M * s.N * s.K * 1e-9;
      const Timing portable = time_gemm(Isa::kPortable, s, o, threads, reps);
      const Timing fast = time_gemm(best, s, o, threads, reps);
      std::printf("%-13s %5d %5d %5d | %-8s %8.1f %8.1f %5.1f%% | %-8s %8.1f %8.1f %5.1f%% | %8.1f\n", s.name, s.M, s.N,
                  s.K, "portable", gflop / portable.best, gflop / portable.median, 100.0 * gflop / portable.best / peak,
                  vitmsn::detail::isa_name(best), gflop / fast.best, gflop / fast.median,
                  100.0 * gflop / fast.best / peak, peak);
    }
    std::printf("GFLOP/s (best and median of %d runs); %%peak = best / FMA peak measured just before\n", reps);

    // The ceiling of the GEMM code itself: a product whose operands stay in each core's L2 (one kc
    // block, each thread's rows of A and C plus the packed B well under 2 MB), run back to back, so
    // nothing is streamed from memory. What the model's layers lose against this row is memory
    // traffic and edges; what this row loses against the FMA peak is the micro-kernel's loads,
    // packing and stores.
    {
      const Shape s = {"in-L2 ceiling", 224 * threads, 512, 256, false, 256, 512, false, false, false, 1.0f};
      constexpr int kCalls = 100;
      Operands o = make_operands(s, rng);
      const double peak = vitmsn::detail::measure_fma_peak_gflops(threads, 0.2);
      const double gflop = 2.0 * s.M * s.N * s.K * 1e-9 * kCalls;
      for (Isa isa : {Isa::kPortable, best}) {
        const Timing t = time_runs(reps, [&] {
          for (int c = 0; c < kCalls; ++c)
            vitmsn::detail::gemm(isa, s.M, s.N, s.K, o.A.data(), s.lda, o.B.data(), s.ldb, s.b_trans, o.C.data(), s.N,
                                 Epilogue{}, threads);
        });
        std::printf("%-13s %5d %5d %5d | %-8s %8.1f %8.1f %5.1f%% | %d calls back to back, FMA peak %.1f\n", s.name,
                    s.M, s.N, s.K, vitmsn::detail::isa_name(isa), gflop / t.best, gflop / t.median,
                    100.0 * gflop / t.best / peak, kCalls, peak);
        if (best == Isa::kPortable) break;
      }
    }

    // Half-size weights on the linear layers.
    std::printf("\ngemm_weights, GFLOP/s best (median) of %d runs, by weight type\n", reps);
    std::printf("%-13s %5s %5s %5s | %-8s | %15s %15s %15s\n", "shape", "M", "N", "K", "variant", "f32", "bf16", "f16");
    for (const Shape& s : shapes) {
      if (!s.b_trans || s.lda != s.K || s.ldb != s.K) continue;  // the linear layers only
      Operands o = make_operands(s, rng);
      const std::vector<float>& W = o.B;  // [N, K]
      std::vector<std::uint16_t> Wb(W.size()), Wh(W.size());
      for (std::size_t i = 0; i < W.size(); ++i) {
        Wb[i] = vitmsn::detail::float_to_bf16(W[i]);
        Wh[i] = vitmsn::detail::float_to_half(W[i]);
      }
      const double gflop = 2.0 * s.M * s.N * s.K * 1e-9;
      for (Isa isa : {Isa::kPortable, best}) {
        const Timing f = time_weights(isa, s, o, W.data(), WeightType::kF32, threads, reps);
        const Timing b = time_weights(isa, s, o, Wb.data(), WeightType::kBF16, threads, reps);
        const Timing h = time_weights(isa, s, o, Wh.data(), WeightType::kF16, threads, reps);
        std::printf("%-13s %5d %5d %5d | %-8s | %6.1f (%6.1f) %6.1f (%6.1f) %6.1f (%6.1f)\n", s.name, s.M, s.N, s.K,
                    vitmsn::detail::isa_name(isa), gflop / f.best, gflop / f.median, gflop / b.best, gflop / b.median,
                    gflop / h.best, gflop / h.median);
        if (best == Isa::kPortable) break;
      }
    }

    // int8 (vitmsn-convert --dtype int8) against float32 weights on the linear layers, per variant: the
    // AVX2 float32 GEMM next to the AVX2 vpmaddubsw and AVX-VNNI int8 GEMMs, the AVX-512 float32 GEMM
    // next to the AVX512-VNNI one. Rates in GOP/s (2·M·N·K per call), best of `reps`.
    std::printf(
        "\nint8 against float32 weights, GOP/s best of %d runs (speed-up over the float32 GEMM of the same ISA)\n",
        reps);
    for (const Shape& s : shapes) {
      if (!s.b_trans || s.lda != s.K || s.ldb != s.K || s.gelu) continue;
      Operands o = make_operands(s, rng);
      const std::vector<float>& W = o.B;  // [N, K]
      std::vector<std::int8_t> panels;
      std::vector<float> wscale;
      vitmsn::detail::int8::quantize_weights(W.data(), s.N, s.K, s.K, &panels, &wscale);
      const std::int8_t* P[1] = {panels.data()};
      const float* S[1] = {wscale.data()};
      const int kp = vitmsn::detail::int8::padded_k(s.K);
      const Epilogue ep = epilogue_of(s, o);
      using Int8Fn = void (*)(int, int, int, int, int, const float*, std::ptrdiff_t, const std::int8_t* const*,
                              const float* const*, float*, std::ptrdiff_t, const Epilogue&, int);
      const auto time_int8 = [&](Int8Fn fn) {
        return time_runs(reps, [&] { fn(s.M, s.N, 1, s.K, kp, o.A.data(), s.K, P, S, o.C.data(), s.N, ep, threads); })
            .best;
      };
      const double gop = 2.0 * s.M * s.N * s.K * 1e-9;
      std::printf("%-13s %5d %5d %5d |", s.name, s.M, s.N, s.K);
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
      if (vitmsn::detail::isa_available(Isa::kAvx2)) {
        const double f = time_weights(Isa::kAvx2, s, o, W.data(), WeightType::kF32, threads, reps).best;
        const double m = time_int8(vitmsn::detail::avx2::gemm_int8_maddubs);
        std::printf(" avx2 f32 %6.1f, vpmaddubsw %6.1f (%.2fx)", gop / f, gop / m, f / m);
        if (vitmsn::detail::cpu_has(vitmsn::detail::CpuFeature::kAvxVnni)) {
          const double v = time_int8(vitmsn::detail::avxvnni::gemm_int8_avxvnni);
          std::printf(", avx-vnni %6.1f (%.2fx)", gop / v, f / v);
        }
      }
      if (vitmsn::detail::isa_available(Isa::kAvx512) &&
          vitmsn::detail::cpu_has(vitmsn::detail::CpuFeature::kAvx512vnni)) {
        const double f = time_weights(Isa::kAvx512, s, o, W.data(), WeightType::kF32, threads, reps).best;
        const double v = time_int8(vitmsn::detail::kernels(Isa::kAvx512).gemm_int8);
        std::printf(" | avx512 f32 %6.1f, avx512-vnni %6.1f (%.2fx)", gop / f, gop / v, f / v);
      }
#endif
      if (!vitmsn::detail::isa_available(Isa::kAvx2))
        std::printf(" portable only: no vector int8 variant in this build or CPU");
      std::printf("\n");
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
