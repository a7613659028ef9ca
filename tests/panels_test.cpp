// Float32 files whose linear weights are stored as the GEMM's panels (vitmsn-convert --layout
// panels): the same bits as the [out, in] file on every kernel variant, read in place where the
// panel width is the kernels', laid out again where it is not; the file's layout; bad panel files.
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/weights.hpp"
#include "cpu/cpu.hpp"
#include "cpu/kernels.hpp"
#include "test_util.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

struct TwoFiles {
  std::string dir, rows, panels;
  int width = 0;
};

// The tiny model converted twice: [out, in] and panels.
TwoFiles convert_both(const std::string& model = "models/tiny") {
  TwoFiles f;
  f.dir = test::temp_dir();
  f.rows = f.dir + "/rows.safetensors";
  f.panels = f.dir + "/panels.safetensors";
  convert_checkpoint(test::data_path(model), f.rows);
  ConvertOptions o;
  o.layout = WeightLayout::kPanels;
  f.width = convert_checkpoint(test::data_path(model), f.panels, o).panel_width;
  return f;
}

bool same_bits(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())) == 0;
}

// Every hidden state and the pooled features of one image, bit for bit.
void expect_same_features(const Model& a, const Model& b, const std::string& what) {
  FeatureOptions opt;
  opt.hidden_states = {0, 1, 2};
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features fa = a.extract_features(px, opt), fb = b.extract_features(px, opt);
  EXPECT_TRUE(same_bits(fa.last_hidden_state, fb.last_hidden_state)) << what << ": last hidden state differs";
  for (int i : opt.hidden_states)
    EXPECT_TRUE(same_bits(fa.hidden_states.at(i), fb.hidden_states.at(i))) << what << ": hidden state " << i;
}

TEST(Panels, FileHoldsThePanelsOfThisCpusKernelsAlignedAndQueryKeyValueAdjacent) {
  const TwoFiles f = convert_both();
  const int nr = detail::kernels(detail::detected_isa()).packed_nr;
  EXPECT_EQ(f.width, nr > 0 ? nr : 32);
  const SafetensorsFile file = SafetensorsFile::open(f.panels);
  EXPECT_EQ(detail::panel_width(file.metadata(), f.panels), f.width);
  const SafetensorsFile rows = SafetensorsFile::open(f.rows);
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "encoder.layer." + std::to_string(layer) + ".";
    const char* names[] = {"attention.attention.query.weight", "attention.attention.key.weight",
                           "attention.attention.value.weight", "attention.output.dense.weight",
                           "intermediate.dense.weight",        "output.dense.weight"};
    for (int s = 0; s < 6; ++s) {
      const TensorView& t = file.get(p + names[s]);
      const TensorView& r = rows.get(p + names[s]);
      const std::int64_t N = r.shape[0], K = r.shape[1];
      EXPECT_EQ(t.shape, detail::panel_shape(N, K, f.width)) << p + names[s];
      EXPECT_EQ(reinterpret_cast<std::uintptr_t>(t.data) % 64, 0u) << p + names[s] << " is not 64-byte aligned";
      // Element (n, k) where the layout says, against the [out, in] file.
      const auto* pw = reinterpret_cast<const float*>(t.data);
      const auto* rw = reinterpret_cast<const float*>(r.data);
      int wrong = 0;
      for (std::int64_t n = 0; n < N; ++n)
        for (std::int64_t k = 0; k < K; ++k)
          wrong += pw[((n / f.width) * K + k) * f.width + n % f.width] != rw[n * K + k];
      EXPECT_EQ(wrong, 0) << p + names[s] << ": elements out of place";
    }
    const TensorView& q = file.get(p + names[0]);
    const TensorView& k = file.get(p + names[1]);
    const TensorView& v = file.get(p + names[2]);
    EXPECT_EQ(q.data + q.nbytes, k.data) << "key does not follow query in layer " << layer;
    EXPECT_EQ(k.data + k.nbytes, v.data) << "value does not follow key in layer " << layer;
  }
}

TEST(Panels, FeaturesAreBitIdenticalToTheRowsFileAndPanelsAreReadInPlace) {
  const TwoFiles f = convert_both();
  for (int threads : {1, 2}) {
    LoadOptions o;
    o.threads = threads;
    o.compute = Compute::kF32;
    const Model rows = Model::load(f.rows, o), panels = Model::load(f.panels, o);
    expect_same_features(rows, panels, "f32, threads " + std::to_string(threads));
    if (detail::kernels(detail::detected_isa()).packed_nr == f.width) {
      EXPECT_EQ(panels.packed_weight_bytes(), 0u) << "the panels were copied at load, not read in place";
      EXPECT_GT(rows.packed_weight_bytes(), 0u);
    }
  }
}

TEST(Panels, BF16ComputeAndAClassifierHeadGiveTheRowsFilesBits) {
  const TwoFiles f = convert_both("models/tiny-cls");
  LoadOptions o;
  o.compute = Compute::kBF16;
  const Model rows = Model::load(f.rows, o), panels = Model::load(f.panels, o);
  expect_same_features(rows, panels, "bf16 compute");
  const Vector a = rows.classify(test::fixture_pixels("coffee")), b = panels.classify(test::fixture_pixels("coffee"));
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * static_cast<std::size_t>(a.size())), 0);
}

#ifdef VITMSN_PROGRAM_DIR
// On every kernel variant this CPU runs (VITMSN_ISA, one process each): the panel file, written for
// this CPU's width, gives the rows file's bytes — in place, laid out again for AVX2's narrower panels,
// or as [out, in] for the portable kernels.
TEST(Panels, EveryKernelVariantGivesTheRowsFilesBytes) {
  const TwoFiles f = convert_both();
  using detail::Isa;
  for (Isa isa : {Isa::kPortable, Isa::kAvx2, Isa::kAvx512}) {
    if (!detail::isa_available(isa)) continue;
    std::string out[2];
    for (int i = 0; i < 2; ++i) {
      out[i] = f.dir + "/" + detail::isa_name(isa) + (i ? "-panels" : "-rows") + ".safetensors";
      const test::ProgramRun r =
          test::run_command(std::string("VITMSN_ISA=") + detail::isa_name(isa) + " " + VITMSN_PROGRAM_DIR +
                            "/vitmsn-extract --threads 2 --hidden-states --model " + (i ? f.panels : f.rows) +
                            " --output " + out[i] + " " + test::data_path("images/chelsea.png"));
      ASSERT_EQ(r.status, 0) << r.output;
    }
    const SafetensorsFile a = SafetensorsFile::open(out[0]), b = SafetensorsFile::open(out[1]);
    ASSERT_EQ(a.names(), b.names());
    int tensors = 0;
    for (const std::string& name : a.names()) {
      const TensorView& x = a.get(name);
      const TensorView& y = b.get(name);
      ASSERT_EQ(x.nbytes, y.nbytes) << name;
      EXPECT_EQ(std::memcmp(x.data, y.data, x.nbytes), 0) << detail::isa_name(isa) << ": " << name << " differs";
      ++tensors;
    }
    EXPECT_GE(tensors, 2) << "no features compared";
  }
}
#endif

// A file whose metadata declares panels: its weights rewritten for the case, everything else kept.
std::string panel_file_with(const TwoFiles& f, const std::string& name, const std::string& layout_json,
                            bool rows_weights = false) {
  const SafetensorsFile in = SafetensorsFile::open(rows_weights ? f.rows : f.panels);
  std::vector<TensorData> tensors;
  for (const std::string& name : in.names()) tensors.push_back(in.get(name).to_tensor_data());
  std::map<std::string, std::string> meta = in.metadata();
  meta[detail::kWeightLayoutMetadataKey] = layout_json;
  const std::string out = f.dir + "/" + name + ".safetensors";
  write_safetensors(out, tensors, meta);
  return out;
}

void expect_load_error(const std::string& path, ErrorKind kind, const std::vector<std::string>& words) {
  try {
    Model::load(path);
    FAIL() << path << " loaded";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), kind) << e.what();
    for (const std::string& w : words) EXPECT_NE(std::string(e.what()).find(w), std::string::npos) << e.what();
  }
}

TEST(Panels, BadPanelFilesAreRefusedNamingTheProblem) {
  const TwoFiles f = convert_both();
  // Weights [out, in] under metadata that declares panels.
  expect_load_error(panel_file_with(f, "rows-as-panels", R"({"scheme":"vitmsn-panels-v1","panel_width":32})", true),
                    ErrorKind::kMalformed,
                    {"rows-as-panels.safetensors", "encoder.layer.0.attention.attention.query.weight", "panels of 32"});
  // A layout this build does not read, a width it has no kernels for, metadata that is not JSON.
  expect_load_error(panel_file_with(f, "v9", R"({"scheme":"vitmsn-panels-v9","panel_width":32})"),
                    ErrorKind::kUnsupported, {"v9.safetensors", "vitmsn-panels-v9"});
  expect_load_error(panel_file_with(f, "w24", R"({"scheme":"vitmsn-panels-v1","panel_width":24})"),
                    ErrorKind::kMalformed, {"w24.safetensors", "panel_width", "24"});
  expect_load_error(panel_file_with(f, "text", "panels please"), ErrorKind::kMalformed,
                    {"text.safetensors", "weight_layout"});
}

TEST(Panels, ConverterRefusesPanelsOfOtherTypesAndConvertingAPanelFile) {
  const TwoFiles f = convert_both();
  ConvertOptions o;
  o.layout = WeightLayout::kPanels;
  o.dtype = DType::kBF16;
  try {
    convert_checkpoint(f.rows, f.dir + "/bf16.safetensors", o);
    FAIL() << "bf16 panels written";
  } catch (const Error& e) {
    EXPECT_EQ(e.kind(), ErrorKind::kArgument) << e.what();
    EXPECT_NE(std::string(e.what()).find("BF16"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(std::filesystem::exists(f.dir + "/bf16.safetensors"));
  for (DType d : {DType::kF32, DType::kI8}) {
    ConvertOptions again;
    again.dtype = d;
    try {
      convert_checkpoint(f.panels, f.dir + "/again.safetensors", again);
      FAIL() << "a panel file converted";
    } catch (const Error& e) {
      EXPECT_EQ(e.kind(), ErrorKind::kUnsupported) << e.what();
      EXPECT_NE(std::string(e.what()).find("panel layout"), std::string::npos) << e.what();
    }
  }
  EXPECT_EQ(parse_weight_layout("panels"), WeightLayout::kPanels);
  EXPECT_EQ(parse_weight_layout("rows"), WeightLayout::kRows);
  EXPECT_THROW(parse_weight_layout("columns"), Error);
}

}  // namespace
}  // namespace vitmsn
