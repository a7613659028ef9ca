// Image file in, features out: decoding + preprocessing + forward against Hugging Face's outputs.
#include <gtest/gtest.h>

#include <string>

#include "test_util.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/model.hpp"

namespace vitmsn {
namespace {

const Model& tiny() {
  static const Model m = Model::load(test::data_path("models/tiny"));
  return m;
}

double error_vs_hf(const Features& f, const std::string& key) {
  const auto want = test::tiny_output(key).to_float();
  EXPECT_EQ(static_cast<std::size_t>(f.last_hidden_state.size()), want.size()) << key;
  if (static_cast<std::size_t>(f.last_hidden_state.size()) != want.size()) return 1e30;
  return test::max_abs_diff(f.last_hidden_state.data(), want.data(), want.size());
}

class PngEndToEnd : public ::testing::TestWithParam<std::string> {};

TEST_P(PngEndToEnd, ImageFileGivesHuggingFaceFeatures) {
  const Features f = tiny().extract_features(test::data_path("images/" + GetParam() + ".png"));
  const double err = error_vs_hf(f, GetParam() + ".last_hidden_state");
  EXPECT_LE(err, 1e-4) << GetParam() << ": max abs error " << err;
  std::printf("    %-16s image -> last_hidden_state: max abs error %.3g\n", GetParam().c_str(), err);
}

INSTANTIATE_TEST_SUITE_P(EveryPng, PngEndToEnd,
                         ::testing::Values("astronaut", "camera", "chelsea", "coffee", "green_palette", "horse"),
                         [](const auto& info) { return info.param; });

TEST(EndToEnd, OtherSizesUseInterpolatedPositionEmbeddings) {
  const Image img = read_image(test::data_path("images/chelsea.png"));
  for (const auto& [h, w] : {std::pair<int, int>{280, 280}, {224, 336}}) {
    const std::string key = "chelsea." + std::to_string(h) + "x" + std::to_string(w) + ".last_hidden_state";
    const Features f = tiny().extract_features(tiny().preprocessor().with_size(h, w)(img));
    const double err = error_vs_hf(f, key);
    EXPECT_LE(err, 1e-4) << key << ": max abs error " << err;
  }
}

// JPEG: exact with libjpeg-turbo; with stb_image the decoded pixels differ by up to 3 levels, which
// moves the tiny model's features measurably. The bound below is what that decode difference
// produces here (measured 0.021–0.040 on these files; README "JPEG parity"), with margin.
class JpegEndToEnd : public ::testing::TestWithParam<std::string> {};

TEST_P(JpegEndToEnd, ImageFileGivesHuggingFaceFeaturesUpToTheDecoder) {
  const std::string file = GetParam() == "rocket" ? "rocket.jpg" : GetParam() + ".jpg";
  const Features f = tiny().extract_features(test::data_path("images/" + file));
  const double err = error_vs_hf(f, GetParam() + ".last_hidden_state");
  const bool exact = std::string(jpeg_decoder_name()) == "libjpeg-turbo";
  std::printf("    %-20s (%s) -> last_hidden_state: max abs error %.3g\n", GetParam().c_str(), jpeg_decoder_name(),
              err);
  EXPECT_LE(err, exact ? 1e-4 : 0.15) << GetParam() << " with " << jpeg_decoder_name() << ": max abs error " << err;
}

INSTANTIATE_TEST_SUITE_P(EveryJpeg, JpegEndToEnd, ::testing::Values("rocket", "chelsea_q90", "coffee_progressive"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace vitmsn
