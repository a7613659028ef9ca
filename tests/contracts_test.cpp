// The internal contracts (VITMSN_DASSERT, src/base/contract.hpp): each precondition a kernel states
// aborts with its message when broken, on every kernel set this CPU runs. Death tests: the broken call
// runs in a child process.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "base/contract.hpp"
#include "core/linear.hpp"
#include "cpu/bf16_format.hpp"
#include "cpu/cpu.hpp"
#include "cpu/kernels.hpp"

namespace vitmsn::detail {
namespace {

// The kernel sets this CPU runs (portable always).
std::vector<Isa> available_isas() {
  std::vector<Isa> out;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512})
    if (isa_available(isa)) out.push_back(isa);
  return out;
}

class Contracts : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!contracts_enabled()) GTEST_SKIP() << "built with -DVITMSN_CONTRACTS=OFF: the checks are compiled out";
    GTEST_FLAG_SET(death_test_style, "threadsafe");
  }
  // Room for any of the calls below: 64 rows of 64 floats per operand.
  std::vector<float> a_ = std::vector<float>(64 * 64, 0.5f), c_ = std::vector<float>(64 * 64, 0.0f);
  std::vector<float> w_ = std::vector<float>(64 * 64, 0.25f);
};

TEST_F(Contracts, StackedFloatWeightsTakeOneToThreeSegments) {
  const void* w[4] = {w_.data(), w_.data(), w_.data(), w_.data()};
  for (Isa isa : available_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const KernelTable& kt = kernels(isa);
    EXPECT_DEATH(kt.gemm_weights_stacked(2, 8, 4, 16, a_.data(), 16, w, WeightType::kF32, 16, c_.data(), 32, {}, 1),
                 "stacked weight segments");
    if (kt.pack_panels != nullptr) {
      EXPECT_DEATH(kt.pack_panels(8, 4, 16, w, WeightType::kF32, 16, c_.data(), 1), "stacked weight segments");
      EXPECT_DEATH(kt.pack_panels(8, 1, 16, w, WeightType::kF32, 8, c_.data(), 1), "ldw >= K");
    }
  }
}

TEST_F(Contracts, Int8WeightsArePaddedToWholeBlocksAndStackOneToThreeSegments) {
  std::vector<std::int8_t> q(64 * 64, 1);
  std::vector<float> s(64, 0.01f);
  const std::int8_t* panels[4] = {q.data(), q.data(), q.data(), q.data()};
  const float* scales[4] = {s.data(), s.data(), s.data(), s.data()};
  for (Isa isa : available_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const KernelTable& kt = kernels(isa);
    EXPECT_DEATH(kt.gemm_int8(2, 16, 1, 40, 40, a_.data(), 64, panels, scales, c_.data(), 16, {}, 1), "blocks of 32");
    EXPECT_DEATH(kt.gemm_int8(2, 16, 4, 32, 32, a_.data(), 64, panels, scales, c_.data(), 64, {}, 1), "segments");
  }
}

TEST_F(Contracts, AttentionNeedsTokensAndAHead) {
  for (Isa isa : available_isas()) {
    if (isa == Isa::kPortable) continue;  // the portable reference is Eigen's, with its own asserts
    SCOPED_TRACE(isa_name(isa));
    const KernelTable& kt = kernels(isa);
    EXPECT_DEATH(kt.attention_head(a_.data(), a_.data(), a_.data(), 16, 0, 16, 0.25f, c_.data(), 16, nullptr, 0),
                 "tokens and head_dim");
    EXPECT_DEATH(kt.attention_head(a_.data(), a_.data(), a_.data(), 8, 4, 16, 0.25f, c_.data(), 16, nullptr, 0),
                 "rows hold a head");
    EXPECT_DEATH(kt.attention_head(a_.data(), a_.data(), a_.data(), 16, 4, 16, 0.25f, c_.data(), 16, c_.data(), 5),
                 "probability rows");
  }
}

TEST_F(Contracts, Bf16GemmReadsWholeRowsOfA) {
  std::vector<bf16::Source> src(1);
  src[0].f32 = w_.data();
  src[0].ld = 32;
  src[0].rows = 32;
  const bf16::Panels p = bf16::pack(src, 32, 1);
  for (Isa isa : available_isas()) {
    const KernelTable& kt = kernels(isa);
    if (kt.bf16_burst == nullptr || isa == Isa::kPortable) continue;  // the vector bf16 GEMM only
    SCOPED_TRACE(isa_name(isa));
    EXPECT_DEATH(kt.gemm_bf16(2, a_.data(), 16, p, c_.data(), 32, {}, 1), "bf16 GEMM");
  }
}

TEST_F(Contracts, ALinearLayerStacksOneToThreeWeights) {
  LinearWeight w;
  w.data = w_.data();
  w.rows = 8;
  w.cols = 8;
  EXPECT_DEATH(Linear::prepare(Isa::kPortable, {&w, &w, &w, &w}, LinearCompute::kF32, 1, {}), "1 to 3 weights");
  EXPECT_DEATH(Linear::prepare(Isa::kPortable, {}, LinearCompute::kF32, 1, {}), "1 to 3 weights");
}

}  // namespace
}  // namespace vitmsn::detail
