// One Model shared by several threads: results bit-identical to serial calls (the thread-safety
// contract of Model's const methods).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <exception>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/model.hpp"  // src/: detail::ModelAccess
#include "test_util.hpp"
#include "vitmsn/model.hpp"

namespace vitmsn {
namespace {

TEST(Concurrency, FourThreadsSharingOneModelMatchSerialCallsBitForBit) {
  const Model model = Model::load(test::data_path("models/tiny-cls"));
  const std::vector<std::string> images = {"chelsea.png", "astronaut.png", "coffee.png",
                                           "camera.png",  "horse.png",     "green_palette.png"};
  FeatureOptions opt;
  opt.hidden_states = {1};
  opt.cls_attention = {0};
  std::vector<Features> serial;
  for (const auto& img : images) serial.push_back(model.extract_features(test::data_path("images/" + img), opt));

  constexpr int kThreads = 4, kRounds = 3;
  std::atomic<int> mismatches{0};
  std::mutex errors_mutex;
  std::vector<std::string> errors;  // what each failed call threw
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      for (int r = 0; r < kRounds; ++r)
        for (std::size_t k = 0; k < images.size(); ++k) {
          const std::size_t i = (k + t) % images.size();  // threads work on different images at once
          try {
            const Features f = model.extract_features(test::data_path("images/" + images[i]), opt);
            const Features& s = serial[i];
            const bool same = f.last_hidden_state.size() == s.last_hidden_state.size() &&
                              std::memcmp(f.last_hidden_state.data(), s.last_hidden_state.data(),
                                          sizeof(float) * s.last_hidden_state.size()) == 0 &&
                              std::memcmp(f.hidden_states.at(1).data(), s.hidden_states.at(1).data(),
                                          sizeof(float) * s.hidden_states.at(1).size()) == 0 &&
                              std::memcmp(f.cls_attention.at(0).data(), s.cls_attention.at(0).data(),
                                          sizeof(float) * s.cls_attention.at(0).size()) == 0 &&
                              model.logits(f) == model.logits(s);
            if (!same) ++mismatches;
          } catch (const std::exception& e) {
            const std::lock_guard<std::mutex> lock(errors_mutex);
            errors.push_back(images[i] + ": " + e.what());
          } catch (...) {
            const std::lock_guard<std::mutex> lock(errors_mutex);
            errors.push_back(images[i] + ": an exception not derived from std::exception");
          }
        }
    });
  for (auto& th : pool) th.join();
  EXPECT_TRUE(errors.empty()) << errors.size() << " calls threw; the first: " << errors.front();
  EXPECT_EQ(mismatches.load(), 0) << "of " << kThreads * kRounds * images.size() << " concurrent calls";
}

TEST(Concurrency, CopiesOfAModelShareWeightsAndAgree) {
  const Model a = Model::load(test::data_path("models/tiny"));
  const Model b = a;  // cheap copy: shared, immutable weights
  // Sharing, concretely: one Weights object, whose float32 matrices point into the one memory map.
  const detail::Weights& wa = detail::ModelAccess::weights(a);
  const detail::Weights& wb = detail::ModelAccess::weights(b);
  EXPECT_EQ(&wa, &wb) << "a copy must share the weights, not duplicate them";
  const SafetensorsFile* file = detail::ModelAccess::file(a);
  ASSERT_NE(file, nullptr);
  EXPECT_EQ(detail::ModelAccess::file(b), file);
  const TensorView& query = file->get("encoder.layer.0.attention.attention.query.weight");
  EXPECT_EQ(wb.layers[0].query.data, static_cast<const void*>(query.data)) << "used in place from the map";
  // The small tensors too, unless the linear layers hold packed copies (then they are held as well).
  const auto* patch = reinterpret_cast<const float*>(file->get("embeddings.patch_embeddings.projection.weight").data);
  if (wb.held_bytes == 0)
    EXPECT_EQ(wb.patch_weight.data(), patch);
  else
    EXPECT_NE(wb.patch_weight.data(), patch);
  EXPECT_EQ(b.copied_weight_bytes(), 0u);
  // A second load is a separate model: the check above can tell sharing from equal values.
  const Model c = Model::load(test::data_path("models/tiny"));
  EXPECT_NE(&detail::ModelAccess::weights(c), &wa);
  EXPECT_NE(detail::ModelAccess::weights(c).layers[0].query.data, wa.layers[0].query.data);
  // And the copies agree, bit for bit.
  const Features fa = a.extract_features(test::data_path("images/rocket.jpg"));
  const Features fb = b.extract_features(test::data_path("images/rocket.jpg"));
  EXPECT_EQ(fa.last_hidden_state, fb.last_hidden_state);
}

}  // namespace
}  // namespace vitmsn
