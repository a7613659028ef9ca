// vitmsn-attention: where the CLS token looks. Renders one layer's CLS attention over the patch grid
// as a heat map, upsampled to the image and blended over it, with a colour bar below that gives the
// scale, into a PNG.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "cli.hpp"
#include "vitmsn/vitmsn.hpp"

using namespace vitmsn;

namespace {

const cli::Spec kSpec = {"vitmsn-attention",
                         R"(usage: vitmsn-attention [--model PATH] --output OUT.png [options] IMAGE

Writes IMAGE with the CLS token's attention over the patches of one layer blended over it as a heat
map: dark blue (the least attention) through purple, pink and orange to yellow (the most), scaled
from the weakest to the strongest patch. A colour bar below the image gives that scale in percent of
the CLS token's attention (--no-legend: the image alone, at its own size). An image narrower than
160 pixels is scaled up by a whole factor (nearest pixel) so that the colour bar is readable.
IMAGE is checked before the model is loaded: it must exist and start like an image vitmsn decodes
(PNG, JPEG, BMP, GIF, TGA, PSD, PNM); an error names what it is instead.
options:
  --model PATH     model folder or .safetensors (default: $VITMSN_MODEL, else
                   weights/vit-msn-large-7.safetensors)
  --output OUT     PNG to write (atomically)
  --layer L        layer, 0-based; negative counts from the end (default -1: the last)
  --head H         one attention head (default: the mean over heads)
  --alpha A        opacity of the heat map, 0..1 (default 0.6)
  --size HxW       model input size (default: the preprocessor's)
  --no-legend      no colour bar
  --threads N      threads (default: all CPUs this process may use)
  --force          overwrite OUT
  -h, --help       this text
  --version        the version, kernel instruction set and JPEG decoder
)",
                         {"--model", "--output", "--layer", "--head", "--alpha", "--size", "--threads"},
                         {"--force", "--no-legend"}};

// The narrowest image a colour bar is drawn under: smaller ones are scaled up to at least this.
constexpr int kMinLegendWidth = 160;

// A perceptually ordered colour ramp (plasma's stops: dark blue → purple → pink → orange → yellow),
// t in [0, 1].
void colormap(double t, double rgb[3]) {
  static const double stops[5][3] = {{13, 8, 135}, {126, 3, 168}, {204, 71, 120}, {248, 149, 64}, {240, 249, 33}};
  t = std::clamp(t, 0.0, 1.0) * 4.0;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  for (int c = 0; c < 3; ++c) rgb[c] = stops[i][c] + f * (stops[i + 1][c] - stops[i][c]);
}

// --- The legend: a colour bar with its scale written under it -----------------------------------------

// 5x7 glyphs of what the scale's numbers need, one row per byte (bit 4 = leftmost column).
const std::uint8_t* glyph(char c) {
  static const std::uint8_t kDigits[10][7] = {
      {14, 17, 19, 21, 25, 17, 14}, {4, 12, 4, 4, 4, 4, 14},    {14, 17, 1, 2, 4, 8, 31},   {31, 2, 4, 2, 1, 17, 14},
      {2, 6, 10, 18, 31, 2, 2},     {31, 16, 30, 1, 1, 17, 14}, {6, 8, 16, 30, 17, 17, 14}, {31, 1, 2, 4, 8, 8, 8},
      {14, 17, 17, 14, 17, 17, 14}, {14, 17, 17, 15, 1, 2, 12}};
  static const std::uint8_t kDot[7] = {0, 0, 0, 0, 0, 12, 12}, kPercent[7] = {24, 25, 2, 4, 8, 19, 3},
                            kMinus[7] = {0, 0, 0, 31, 0, 0, 0}, kPlus[7] = {0, 4, 4, 31, 4, 4, 0},
                            kE[7] = {0, 0, 14, 17, 31, 16, 14}, kBlank[7] = {0, 0, 0, 0, 0, 0, 0};
  if (c >= '0' && c <= '9') return kDigits[c - '0'];
  switch (c) {
    case '.':
      return kDot;
    case '%':
      return kPercent;
    case '-':
      return kMinus;
    case '+':
      return kPlus;
    case 'e':
      return kE;
    default:
      return kBlank;
  }
}

// Width in pixels of `text` drawn at `scale` (6 columns per character: 5 + 1 of space).
int text_width(const std::string& text, int scale) { return static_cast<int>(text.size()) * 6 * scale - scale; }

void draw_text(Image& im, const std::string& text, int x0, int y0, int scale) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const std::uint8_t* g = glyph(text[i]);
    for (int row = 0; row < 7 * scale; ++row)
      for (int col = 0; col < 5 * scale; ++col) {
        const int x = x0 + static_cast<int>(i) * 6 * scale + col, y = y0 + row;
        if (x < 0 || y < 0 || x >= im.width || y >= im.height || !(g[row / scale] & (16 >> (col / scale)))) continue;
        std::uint8_t* p = &im.rgb[(static_cast<std::size_t>(y) * im.width + x) * 3];
        p[0] = p[1] = p[2] = 0;
      }
  }
}

std::string percent_label(double fraction) {
  char b[32];
  std::snprintf(b, sizeof b, "%.3g%%", 100 * fraction);
  return b;
}

// `image` with a white panel below it: the colour ramp from the weakest (left) to the strongest
// (right) patch's attention, labelled with both values and the one in the middle.
Image with_legend(const Image& image, double lo, double hi) {
  const int scale = std::max(1, image.width / 320), margin = 4 * scale, bar = 10 * scale;
  Image out;
  out.width = image.width;
  out.height = image.height + margin + bar + margin / 2 + 7 * scale + margin;
  out.rgb.assign(static_cast<std::size_t>(out.width) * out.height * 3, 255);
  std::copy(image.rgb.begin(), image.rgb.end(), out.rgb.begin());
  const int x0 = margin, x1 = std::max(x0 + 1, image.width - margin), top = image.height + margin;
  for (int x = x0; x < x1; ++x) {
    double rgb[3];
    colormap(x1 - x0 > 1 ? static_cast<double>(x - x0) / (x1 - x0 - 1) : 0.0, rgb);
    for (int y = top; y < top + bar; ++y)
      for (int ch = 0; ch < 3; ++ch)
        out.rgb[(static_cast<std::size_t>(y) * out.width + x) * 3 + ch] =
            static_cast<std::uint8_t>(std::lround(rgb[ch]));
  }
  const int text_y = top + bar + margin / 2;
  const std::string left = percent_label(lo), mid = percent_label((lo + hi) / 2), right = percent_label(hi);
  draw_text(out, left, x0, text_y, scale);
  draw_text(out, right, x1 - text_width(right, scale), text_y, scale);
  const int mid_x = (x0 + x1 - text_width(mid, scale)) / 2;
  if (mid_x > x0 + text_width(left, scale) + 2 * margin &&
      mid_x + text_width(mid, scale) + 2 * margin < x1 - text_width(right, scale))
    draw_text(out, mid, mid_x, text_y, scale);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  return cli::run_main(argc, argv, kSpec, [](const cli::Args& args) {
    if (args.positional().size() != 1) throw cli::UsageError("give exactly one IMAGE");
    const std::string output = args.required("--output", "--output OUT.png");
    const double alpha = args.get_double("--alpha", 0.6, 0.0, 1.0);
    cli::check_output("--output", output, {".png"}, args.has("--force"));
    cli::check_image_file(args.positional()[0]);  // before the model loads
    LoadOptions lo;
    lo.threads = args.get_int("--threads", 0, 1, 4096);
    const Model model = Model::load(cli::model_path_or_throw(args), lo);
    const Config& c = model.config();
    const int layer = args.get_int("--layer", -1, -c.num_hidden_layers, c.num_hidden_layers - 1);
    const int head = args.get_int("--head", -1, 0, c.num_attention_heads - 1);
    Preprocessor pre = model.preprocessor();
    if (args.has("--size")) {
      const auto [h, w] = cli::input_size(args, "--size", c);
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
    const bool legend = !args.has("--no-legend");
    if (legend && out.width < kMinLegendWidth) {
      // A small image is scaled up (whole pixels, nearest) so that the colour bar and its numbers fit.
      const int k = (kMinLegendWidth + out.width - 1) / out.width;
      out = resize(out, out.width * k, out.height * k, Resample::kNearest);
    }
    write_png(output, legend ? with_legend(out, lo_v, *hi_it) : out);
    const int layer_index = f.cls_attention.begin()->first;
    std::printf("%s: layer %d, %s, %dx%d patches; strongest patch row %d col %d (%.2f%% of the attention)%s\n",
                output.c_str(), layer_index, head >= 0 ? ("head " + std::to_string(head)).c_str() : "mean of heads", gh,
                gw, peak / gw, peak % gw, 100.0 * grid[peak],
                legend ? ("; colour bar " + percent_label(lo_v) + " to " + percent_label(*hi_it)).c_str() : "");
    return 0;
  });
}
