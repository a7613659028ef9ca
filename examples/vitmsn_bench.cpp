// vitmsn-bench: seconds per image of the ViT-MSN forward, per stage, against the machine's measured
// float32 FMA peak and GEMM rate. The last line of output is one JSON object.
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cli.hpp"
#include "core/measure.hpp"
#include "run_output.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;
using Clock = std::chrono::steady_clock;

namespace {

const cli::Spec kSpec = {"vitmsn-bench",
                         R"(usage: vitmsn-bench [--model PATH | --synthetic] [options]

Times the forward pass (after a warm-up) and prints per-stage times, seconds per image (median and
min of the runs), GFLOP/s, the measured FMA peak and GEMM rate, the share of each reached, load time
and peak RSS. The last line is a JSON object.
options:
  --model PATH       model folder or .safetensors (default: $VITMSN_MODEL, else
                     weights/vit-msn-large-7.safetensors)
  --synthetic        build the full ViT-L/7 in memory from the reference synthetic weights
  --threads N        threads (default: the CPUs this process may use)
  --batch B          images per forward call (default 1)
  --runs R           timed runs (default 3)
  --warmup W         untimed runs first (default 1)
  --size HxW         input size (default: the model's image_size)
  --compute C        auto|f32|bf16: the linear layers' arithmetic (default auto: bf16 weights compute in
                     bf16 where the CPU's bf16 dot product pays, all else in float32)
  --no-peak          skip measuring the peaks and the GEMM rate
Shares of the peak are against the arithmetic each stage uses: the float32 FMA peak, the bf16
dot-product peak for the linear layers of bf16 compute; int8 linear layers get none.
  -h, --help         this text
  --version          the version, kernel instruction set and JPEG decoder
Sizes are in MB: 1 MB = 10^6 bytes.
)",
                         {"--model", "--threads", "--batch", "--runs", "--warmup", "--size", "--compute"},
                         {"--synthetic", "--no-peak"}};

double seconds_since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss * 1024.0 / 1e6;  // ru_maxrss is in KiB; MB = 10^6 bytes
}

// FLOPs of one forward per stage (multiply-adds counted as 2): the patch GEMM; per layer the Q/K/V
// projections, the scores and attention·V, the output projection and the two MLP products.
struct StageFlops {
  double patch, qkv, attention, attention_output, mlp;
  double total() const { return patch + qkv + attention + attention_output + mlp; }
};

StageFlops forward_flops(const Config& c, int h, int w) {
  const double D = c.hidden_size, F = c.intermediate_size, P = c.patch_size, L = c.num_hidden_layers;
  const double patches = (h / c.patch_size) * (w / c.patch_size), N = patches + 1;
  return {2 * patches * c.num_channels * P * P * D, L * 2 * N * D * 3 * D, L * 2 * 2 * N * N * D, L * 2 * N * D * D,
          L * 2 * 2 * N * D * F};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    if (args.has("--model") && args.has("--synthetic"))
      throw cli::UsageError("give --model PATH or --synthetic, not both");
    args.expect_no_positional();
    const int threads = args.get_int("--threads", default_threads(), 1, 4096);
    const int batch = args.get_int("--batch", 1, 1, 1024);
    const int runs = args.get_int("--runs", 3, 1, 100000);
    const int warmup = args.get_int("--warmup", 1, 0, 1000);
    if (args.has("--size")) cli::parse_size(args.get("--size"), "--size");  // the values: once the model is known
    const std::string model_path = args.has("--synthetic") ? "" : cli::model_path_or_throw(args);

    LoadOptions lo;
    lo.threads = threads;
    lo.compute = cli::parse_compute(args);
    auto t0 = Clock::now();
    std::string source;
    double generate_seconds = 0;
    Model model = [&] {
      if (!model_path.empty()) {
        source = model_path;
        return Model::load(source, lo);
      }
      source = "synthetic ViT-L/7 (in memory)";
      auto tensors = synthetic_tensors(vit_msn_large_7_config());
      generate_seconds = seconds_since(t0);
      t0 = Clock::now();
      return Model::from_tensors(vit_msn_large_7_config(), std::move(tensors), lo);
    }();
    const double load_seconds = seconds_since(t0);
    const Config& c = model.config();
    int h = c.image_size, w = c.image_size;
    if (args.has("--size")) std::tie(h, w) = cli::input_size(args, "--size", c);

    // Deterministic inputs (normal noise, as the PyTorch peer feeds).
    std::mt19937 rng(0);
    std::normal_distribution<float> normal;
    std::vector<PixelValues> inputs(batch, PixelValues(c.num_channels, h, w));
    for (auto& p : inputs)
      for (Eigen::Index i = 0; i < p.size(); ++i) p.data()[i] = normal(rng);

    std::printf("vitmsn-bench: %s\n", source.c_str());
    std::printf("  model     hidden %d, %d layers, %d heads, patch %d, input %dx%d (%d tokens)\n", c.hidden_size,
                c.num_hidden_layers, c.num_attention_heads, c.patch_size, h, w, c.num_tokens(h, w));
    const std::string dtype = model_path.empty() ? "F32" : cli::weights_dtype(model.source());
    const std::string arith = model.compute();
    std::printf("  weights   %s, linear layers compute in %s\n", dtype.c_str(), arith.c_str());
    std::printf("  machine   %d threads, kernels %s\n", threads, kernel_isa().c_str());
    std::fflush(stdout);

    FeatureOptions fo;
    fo.threads = threads;
    auto run_once = [&]() {
      if (batch == 1) {
        model.extract_features(inputs[0], fo);
      } else {
        model.extract_features(inputs, fo);
      }
    };
    for (int i = 0; i < warmup; ++i) run_once();
    StageTimes stages;
    fo.profile = &stages;
    std::vector<double> per_image;
    for (int r = 0; r < runs; ++r) {
      const auto t = Clock::now();
      run_once();
      per_image.push_back(seconds_since(t) / batch);
    }
    const double rss = peak_rss_mb();
    const double med = median(per_image), best = *std::min_element(per_image.begin(), per_image.end());
    const StageFlops flops = forward_flops(c, h, w);
    const double gflop = flops.total() * 1e-9;
    const double gflops = gflop / med;

    // The peaks of the arithmetic used: float32 FMA for the patch embedding and attention (and the
    // linear layers of f32 compute), the bf16 dot product for the linear layers of bf16 compute; int8
    // linear layers have no comparable peak (their shares are not shown).
    double peak = 0, gemm = 0, bf16_peak = 0;
    const bool measured = !args.has("--no-peak");
    if (measured) {
      peak = detail::measure_fma_peak_gflops(threads, 1.0);
      if (arith == "bf16") bf16_peak = detail::measure_bf16_peak_gflops(threads, 1.0);
      gemm = detail::measure_gemm_gflops(c.num_tokens(h, w), c.intermediate_size, c.hidden_size, threads, 3);
    }
    const double linear_peak = arith == "f32" ? peak : arith == "bf16" ? bf16_peak : 0.0;

    const double n = static_cast<double>(runs) * batch;
    struct Row {
      const char* name;
      double seconds, flops, peak;  // peak: of the arithmetic the stage uses (0: none shown)
    };
    const Row rows[] = {{"patch embedding", stages.patch_embedding, flops.patch, peak},
                        {"layer norms", stages.layer_norm, 0, 0},
                        {"qkv projections", stages.qkv, flops.qkv, linear_peak},
                        {"attention", stages.attention, flops.attention, peak},
                        {"attention output", stages.attention_output, flops.attention_output, linear_peak},
                        {"mlp", stages.mlp, flops.mlp, linear_peak},
                        {"other", stages.other, 0, 0}};
    std::printf("  stages (seconds per image, mean of %d run%s of batch %d; GFLOP/s%s):\n", runs, runs == 1 ? "" : "s",
                batch, measured ? " and share of the peak of the arithmetic used" : "");
    // The time the stages would take at their peaks: the forward's share of the machine's limit.
    double ideal = 0;
    bool all_peaks = measured;
    for (const Row& r : rows) {
      const double s = r.seconds / n;
      std::printf("    %-18s %8.4f s  %5.1f %%", r.name, s,
                  stages.total() > 0 ? 100.0 * r.seconds / stages.total() : 0.0);
      if (r.flops > 0 && s > 0) {
        std::printf("  %7.1f GFLOP/s", r.flops * 1e-9 / s);
        if (r.peak > 0)
          std::printf("  %5.1f %% of %s peak", 100.0 * r.flops * 1e-9 / s / r.peak, r.peak == peak ? "FMA" : "bf16");
      }
      if (r.flops > 0) {
        if (r.peak > 0)
          ideal += r.flops * 1e-9 / r.peak;
        else
          all_peaks = false;
      }
      std::printf("\n");
    }
    const double peak_fraction = all_peaks && ideal > 0 ? ideal / med : 0.0;
    const double outside = stages.patch_embedding + stages.layer_norm + stages.other;
    std::printf("    %-18s %8.4f s  %5.1f %%  (patch embedding + layer norms + other)\n", "outside the GEMMs",
                outside / n, stages.total() > 0 ? 100.0 * outside / stages.total() : 0.0);
    std::printf("  per image   median %.4f s, min %.4f s  (%.1f GFLOP each)\n", med, best, gflop);
    std::printf("  throughput  %.1f GFLOP/s, %.3f images/s\n", gflops, 1.0 / med);
    if (peak > 0) {
      std::printf("  FMA peak    %.1f GFLOP/s measured%s\n", peak,
                  bf16_peak > 0 ? ("; bf16 dot-product peak " + cli::number(bf16_peak) + " GFLOP/s").c_str() : "");
      if (peak_fraction > 0)
        std::printf("  forward     reaches %.1f %% of the peak of the arithmetic it uses\n", 100.0 * peak_fraction);
      else
        std::printf("  forward     (no comparable peak for %s linear layers)\n", arith.c_str());
      std::printf("  GEMM        %.1f GFLOP/s on [%d x %d]·[%d x %d]ᵀ: forward reaches %.1f %% of it\n", gemm,
                  c.num_tokens(h, w), c.hidden_size, c.intermediate_size, c.hidden_size, 100.0 * gflops / gemm);
    }
    std::printf(
        "  load        %.3f s%s\n", load_seconds,
        generate_seconds > 0 ? (" (+ " + std::to_string(generate_seconds) + " s generating weights)").c_str() : "");
    std::printf("  peak RSS    %.0f MB (weights copied at load: %.0f MB, packed at load: %.0f MB)\n", rss,
                model.copied_weight_bytes() / 1e6, model.packed_weight_bytes() / 1e6);
    // For the JSON line, as the text above computes them: the share of the forward spent outside the
    // GEMMs, and the attention stage's share of the FMA peak (0 when the text shows no share).
    const double outside_gemm_fraction = stages.total() > 0 ? outside / stages.total() : 0.0;
    const double attention_s = stages.attention / n;
    const double attention_peak_fraction =
        flops.attention > 0 && attention_s > 0 && peak > 0 ? flops.attention * 1e-9 / attention_s / peak : 0.0;
    // Values not measured (--no-peak) or not comparable (int8) are null.
    const auto num = [](double v, bool known) { return known ? cli::number(v) : std::string("null"); };
    std::printf(
        "{\"seconds_per_image\": %.6f, \"seconds_per_image_min\": %.6f, \"gflops\": %.3f, \"fma_peak_gflops\": %s, "
        "\"bf16_peak_gflops\": %s, \"gemm_gflops\": %s, \"peak_fraction\": %s, \"load_seconds\": %.6f, "
        "\"peak_rss_mb\": %.1f, \"threads\": %d, \"batch\": %d, \"runs\": %d, \"height\": %d, \"width\": %d, "
        "\"isa\": \"%s\", \"dtype\": \"%s\", \"compute\": \"%s\", \"bf16_compute_pays\": %s, \"gflop_per_image\": "
        "%.3f, "
        "\"stages_s\": {\"patch_embedding\": %.6f, \"layer_norms\": %.6f, \"qkv\": %.6f, \"attention\": %.6f, "
        "\"attention_output\": %.6f, \"mlp\": %.6f, \"other\": %.6f}, \"attention_gflop\": %.3f, "
        "\"outside_gemm_fraction\": %.6f, \"attention_peak_fraction\": %s}\n",
        med, best, gflops, num(peak, measured).c_str(), num(bf16_peak, measured && bf16_peak > 0).c_str(),
        num(gemm, measured).c_str(), num(peak_fraction, peak_fraction > 0).c_str(), load_seconds, rss, threads, batch,
        runs, h, w, kernel_isa().c_str(), dtype.c_str(), arith.c_str(), bf16_compute_pays() ? "true" : "false", gflop,
        stages.patch_embedding / n, stages.layer_norm / n, stages.qkv / n, stages.attention / n,
        stages.attention_output / n, stages.mlp / n, stages.other / n, flops.attention * 1e-9, outside_gemm_fraction,
        num(attention_peak_fraction, measured).c_str());
    return 0;
  });
}
