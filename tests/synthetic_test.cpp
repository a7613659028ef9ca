// Synthetic weights must be bit-identical to the Python reference (vitmsn_ref.synth_state); the
// expected values below were printed by that reference (float.hex) for the tiny layout.
#include "vitmsn/synthetic.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "test_util.hpp"
#include "vitmsn/model.hpp"

namespace vitmsn {
namespace {

Config tiny_config() { return test::tiny_architecture(); }

float element(const std::vector<TensorData>& t, const std::string& name, long index) {
  for (const auto& x : t)
    if (x.name == name) {
      const long n = static_cast<long>(x.bytes.size() / 4);
      const long i = index < 0 ? n + index : index;
      float v;
      std::memcpy(&v, x.bytes.data() + 4 * i, 4);
      return v;
    }
  ADD_FAILURE() << "no tensor " << name;
  return NAN;
}

TEST(Synthetic, MatchesThePythonReferenceBitForBit) {
  const auto t = synthetic_tensors(tiny_config());
  struct Case {
    const char* name;
    long index;
    double value;
  };
  const Case cases[] = {
      {"embeddings.cls_token", 0, 0x1.6d6d0cp-3},
      {"embeddings.cls_token", 1, -0x1.66130cp-3},
      {"embeddings.cls_token", -1, -0x1.4eade0p-2},
      {"embeddings.patch_embeddings.projection.weight", 0, -0x1.0ee130p-3},
      {"embeddings.patch_embeddings.projection.weight", 1, 0x1.92277ap-4},
      {"embeddings.patch_embeddings.projection.weight", -1, -0x1.61d226p-6},
      {"encoder.layer.1.layernorm_after.weight", 0, 0x1.17bceap+0},
      {"encoder.layer.1.layernorm_after.weight", -1, 0x1.049410p+0},
      {"encoder.layer.1.intermediate.dense.bias", 0, -0x1.1fae96p-5},
      {"encoder.layer.1.intermediate.dense.bias", -1, 0x1.a95d66p-8},
      {"layernorm.bias", 0, 0x1.2a2330p-3},
      {"layernorm.bias", -1, 0x1.cc3ee6p-5},
  };
  for (const auto& c : cases)
    EXPECT_EQ(element(t, c.name, c.index), static_cast<float>(c.value)) << c.name << "[" << c.index << "]";
}

// The tiny synthetic model's forward against a float64 PyTorch forward of the same weights and
// input (tests/tools/make_synthetic_fixture.py wrote the expected rows of last_hidden_state).
TEST(Synthetic, TinySyntheticModelMatchesTheFloat64Reference) {
  constexpr double kTolerance = 1e-4;  // float32 vs float64, as the golden tests (NUMERICS: 2-4e-6 seen)
  const Model m = Model::from_tensors(tiny_config(), synthetic_tensors(tiny_config()));
  PixelValues p(3, 224, 224);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < 224; ++y)
      for (int x = 0; x < 224; ++x) p(c, y, x) = static_cast<float>((c * 7 + y * 3 + x * 5) % 17 / 8.0 - 1.0);
  const Features f = m.extract_features(p);
  ASSERT_EQ(f.last_hidden_state.rows(), 1025);
  ASSERT_EQ(f.last_hidden_state.cols(), 64);
  const SafetensorsFile expected = SafetensorsFile::open(test::data_path("expected/synthetic_tiny.safetensors"));
  const TensorView& rows = expected.get("last_hidden_state_rows");
  ASSERT_EQ(rows.shape, (std::vector<std::int64_t>{4, 64}));
  const std::vector<float> want = rows.to_float();
  const int row_index[] = {0, 1, 500, 1024};  // CLS, first and last patches, one in between
  double worst = 0;
  for (int r = 0; r < 4; ++r) {
    const Vector got = f.last_hidden_state.row(row_index[r]);
    const double err = test::max_abs_diff(got.data(), want.data() + 64 * r, 64);
    EXPECT_LE(err, kTolerance) << "row " << row_index[r] << ": max abs error " << err;
    worst = std::max(worst, err);
  }
  std::printf("synthetic tiny model vs float64 reference: max abs error %.3g (tolerance %.0e)\n", worst, kTolerance);
}

}  // namespace
}  // namespace vitmsn
