// vitmsn-attention: where the CLS token looks. Renders one layer's CLS attention over the patch grid
// as a heat map, upsampled to the image and blended over it, into a PNG.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const char* kUsage = R"(usage: vitmsn-attention [--model PATH] --output OUT.png [options] IMAGE

Writes IMAGE with the CLS token's attention over the patches of one layer blended over it as a heat
map (dark blue = little attention, yellow = most), at the image's own size.
options:
  --model PATH     model folder or .safetensors (default: $VITMSN_MODEL, else
                   weights/vit-msn-large-7.safetensors)
  --output OUT     PNG to write (atomically)
  --layer L        layer, 0-based; negative counts from the end (default -1: the last)
  --head H         one attention head (default: the mean over heads)
  --alpha A        opacity of the heat map, 0..1 (default 0.6)
  --size HxW       model input size (default: the preprocessor's)
  --threads N      threads (default: all CPUs this process may use)
  --force          overwrite OUT
  -h, --help       this text
)";

// A perceptually ordered colour ramp (dark blue → purple → orange → yellow), t in [0, 1].
void colormap(double t, double rgb[3]) {
  static const double stops[5][3] = {{13, 8, 135}, {126, 3, 168}, {204, 71, 120}, {248, 149, 64}, {240, 249, 33}};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  for (int c = 0; c < 3; ++c) rgb[c] = stops[i][c] + f * (stops[i + 1][c] - stops[i][c]);
}

double parse_double(const std::string& s, const std::string& option, double lo, double hi) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end || !(v >= lo && v <= hi))
    throw cli::UsageError("option " + option + " needs a number in [" + std::to_string(lo) + ", " + std::to_string(hi) +
                          "], got '" + s + "'");
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(kUsage, [&]() -> int {
    cli::Args args(argc, argv, {"--model", "--output", "--layer", "--head", "--alpha", "--size", "--threads"},
                   {"--force", "--help"});
    if (args.has("--help")) {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (args.positional().size() != 1) throw cli::UsageError("give exactly one IMAGE");
    if (!args.has("--output")) throw cli::UsageError("--output OUT.png is required");
    const std::string output = args.get("--output");
    if (cli::file_exists(output) && !args.has("--force"))
      throw Error(output + ": already exists (use --force to overwrite)");
    const double alpha = args.has("--alpha") ? parse_double(args.get("--alpha"), "--alpha", 0.0, 1.0) : 0.6;
    LoadOptions lo;
    lo.threads = args.get_int("--threads", 0, 1, 4096);
    const Model model = Model::load(cli::model_path_or_throw(args), lo);
    const Config& c = model.config();
    const int layer = args.get_int("--layer", -1, -c.num_hidden_layers, c.num_hidden_layers - 1);
    const int head = args.get_int("--head", -1, 0, c.num_attention_heads - 1);
    Preprocessor pre = model.preprocessor();
    if (args.has("--size")) {
      const auto [h, w] = cli::parse_size(args.get("--size"), "--size");
      pre = pre.with_size(h, w);
    }

    const Image image = read_image(args.positional()[0]);
    const PixelValues px = pre(image);
    const int gh = static_cast<int>(px.dimension(1)) / c.patch_size,
              gw = static_cast<int>(px.dimension(2)) / c.patch_size;
    FeatureOptions fo;
    fo.cls_attention = {layer};
    const Features f = model.extract_features(px, fo);
    const Matrix& a = f.cls_attention.begin()->second;  // [heads, tokens]

    // Attention of CLS to each patch (token 0 is CLS itself), one head or the mean over heads.
    std::vector<double> grid(static_cast<std::size_t>(gh) * gw);
    for (int p = 0; p < gh * gw; ++p) grid[p] = head >= 0 ? a(head, p + 1) : a.col(p + 1).mean();
    const auto [lo_it, hi_it] = std::minmax_element(grid.begin(), grid.end());
    const double lo_v = *lo_it, span = std::max(1e-12, *hi_it - *lo_it);
    const int peak = static_cast<int>(hi_it - grid.begin());

    // The grid as an 8-bit image, upsampled to the photo with Pillow-exact bilinear resampling.
    Image small;
    small.width = gw;
    small.height = gh;
    small.rgb.resize(static_cast<std::size_t>(gw) * gh * 3);
    for (int p = 0; p < gh * gw; ++p)
      for (int ch = 0; ch < 3; ++ch)
        small.rgb[3 * p + ch] = static_cast<std::uint8_t>(std::lround(255.0 * (grid[p] - lo_v) / span));
    const Image heat = resize(small, image.width, image.height, Resample::kBilinear);

    Image out = image;
    for (std::size_t i = 0; i < static_cast<std::size_t>(image.width) * image.height; ++i) {
      double rgb[3];
      colormap(heat.rgb[3 * i] / 255.0, rgb);
      for (int ch = 0; ch < 3; ++ch)
        out.rgb[3 * i + ch] =
            static_cast<std::uint8_t>(std::lround((1 - alpha) * image.rgb[3 * i + ch] + alpha * rgb[ch]));
    }
    write_png(output, out);
    const int layer_index = f.cls_attention.begin()->first;
    std::printf("%s: layer %d, %s, %dx%d patches; strongest patch row %d col %d (%.2f%% of the attention)\n",
                output.c_str(), layer_index, head >= 0 ? ("head " + std::to_string(head)).c_str() : "mean of heads", gh,
                gw, peak / gw, peak % gw, 100.0 * grid[peak]);
    return 0;
  });
}
