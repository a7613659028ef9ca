// vitmsn-synth, run as a user runs it, on a small architecture (--config): the folder it writes loads
// with Model::load and gives the in-memory synthetic model's outputs bit for bit; its other dtypes are
// vitmsn-convert's conversions; OUT_DIR is checked before any work. The full-size default (1.2 GB) is
// run only under the `fullsize` label (tests/fullsize).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "test_util.hpp"
#include "vitmsn/config.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/synthetic.hpp"

#ifdef VITMSN_PROGRAM_DIR

namespace vitmsn {
namespace {

namespace fs = std::filesystem;
using test::ProgramRun;
using test::run;

Config tiny_config() { return test::tiny_architecture(); }

/// A config.json of the tiny architecture in the test's folder; returns its path.
std::string tiny_config_file(const std::string& name = "tiny.json", bool qkv_bias = true) {
  Config c = tiny_config();
  c.qkv_bias = qkv_bias;
  const std::string path = test::temp_dir() + "/" + name;
  test::write_bytes(path, to_json(c));
  return path;
}

std::vector<std::string> folder_listing(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

/// Both models' last_hidden_state on the chelsea fixture are the same bits.
void expect_same_outputs(const Model& a, const Model& b) {
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features fa = a.extract_features(px), fb = b.extract_features(px);
  ASSERT_EQ(fa.last_hidden_state.rows(), fb.last_hidden_state.rows());
  ASSERT_EQ(fa.last_hidden_state.cols(), fb.last_hidden_state.cols());
  EXPECT_EQ(std::memcmp(fa.last_hidden_state.data(), fb.last_hidden_state.data(),
                        sizeof(float) * static_cast<std::size_t>(fa.last_hidden_state.size())),
            0)
      << "outputs differ (max abs difference "
      << test::max_abs_diff(fa.last_hidden_state.data(), fb.last_hidden_state.data(),
                            static_cast<std::size_t>(fa.last_hidden_state.size()))
      << ")";
}

TEST(SynthProgram, HelpAndVersion) {
  ProgramRun r = run("vitmsn-synth --help");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("usage: vitmsn-synth"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("--dtype"), std::string::npos) << r.output;
  r = run("vitmsn-synth --version");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.rfind("vitmsn-synth (vitmsn ", 0), 0u) << r.output;
}

TEST(SynthProgram, WritesAFolderThatLoadsAsTheInMemoryModelBitForBit) {
  const std::string dir = test::temp_dir() + "/model";
  const ProgramRun r = run("vitmsn-synth --config " + tiny_config_file() + " " + dir);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("wrote " + dir), std::string::npos) << r.output;
  EXPECT_EQ(folder_listing(dir),
            (std::vector<std::string>{"config.json", "model.safetensors", "preprocessor_config.json"}));

  // The file holds synthetic_tensors() themselves: same names, order, shapes and bytes, float32.
  const auto want = synthetic_tensors(tiny_config());
  const SafetensorsFile file = SafetensorsFile::open(dir + "/model.safetensors");
  ASSERT_EQ(file.names().size(), want.size());
  for (const auto& t : want) {
    const TensorView& v = file.get(t.name);
    EXPECT_EQ(v.dtype, DType::kF32) << t.name;
    EXPECT_EQ(v.shape, t.shape) << t.name;
    ASSERT_EQ(v.nbytes, t.bytes.size()) << t.name;
    EXPECT_EQ(std::memcmp(v.data, t.bytes.data(), v.nbytes), 0) << t.name << " differs";
  }

  const Model loaded = Model::load(dir);
  EXPECT_EQ(loaded.config().hidden_size, 64);
  EXPECT_EQ(loaded.config().num_hidden_layers, 2);
  EXPECT_FALSE(loaded.has_classifier());
  EXPECT_EQ(loaded.copied_weight_bytes(), 0u) << "float32 weights are used in place";
  expect_same_outputs(loaded, Model::from_tensors(tiny_config(), synthetic_tensors(tiny_config())));
}

TEST(SynthProgram, OtherDtypesAreVitmsnConvertsConversions) {
  const std::string dir = test::temp_dir();
  const std::string config = tiny_config_file();
  ProgramRun r = run("vitmsn-synth --config " + config + " " + dir + "/f32");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const std::string dtype : {"bf16", "f16", "int8"}) {
    SCOPED_TRACE(dtype);
    const std::string out = dir + "/" + dtype, converted = dir + "/" + dtype + ".safetensors";
    r = run("vitmsn-synth --dtype " + dtype + " --config " + config + " " + out);
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_EQ(folder_listing(out),
              (std::vector<std::string>{"config.json", "model.safetensors", "preprocessor_config.json"}))
        << "the float32 staging file must be gone";
    r = run("vitmsn-convert --dtype " + dtype + " " + dir + "/f32 " + converted);
    ASSERT_EQ(r.status, 0) << r.output;
    const SafetensorsFile got = SafetensorsFile::open(out + "/model.safetensors");
    const SafetensorsFile want = SafetensorsFile::open(converted);
    ASSERT_EQ(got.names(), want.names());
    for (const auto& name : want.names()) {
      const TensorView &g = got.get(name), &w = want.get(name);
      EXPECT_EQ(g.dtype, w.dtype) << name;
      ASSERT_EQ(g.nbytes, w.nbytes) << name;
      EXPECT_EQ(std::memcmp(g.data, w.data, g.nbytes), 0) << name << " differs";
    }
    expect_same_outputs(Model::load(out), Model::load(converted));
  }
}

TEST(SynthProgram, ChecksOutDirBeforeAnyWork) {
  const std::string dir = test::temp_dir();
  const std::string config = tiny_config_file();
  // An existing, empty folder is used.
  fs::create_directories(dir + "/empty");
  ProgramRun r = run("vitmsn-synth --config " + config + " " + dir + "/empty");
  EXPECT_EQ(r.status, 0) << r.output;
  // A folder with files in it is not, unless --force; nothing in it is touched.
  fs::create_directories(dir + "/full");
  test::write_bytes(dir + "/full/model.safetensors", "keep");
  r = run("vitmsn-synth --config " + config + " " + dir + "/full");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("already exists and is not empty (use --force"), std::string::npos) << r.output;
  EXPECT_EQ(test::read_text(dir + "/full/model.safetensors"), "keep");
  EXPECT_EQ(folder_listing(dir + "/full"), std::vector<std::string>{"model.safetensors"});
  r = run("vitmsn-synth --force --config " + config + " " + dir + "/full");
  EXPECT_EQ(r.status, 0) << r.output;
  expect_same_outputs(Model::load(dir + "/full"), Model::load(dir + "/empty"));
  // A file, or a folder whose parent is missing.
  test::write_bytes(dir + "/file", "x");
  r = run("vitmsn-synth --config " + config + " " + dir + "/file");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("is not a folder"), std::string::npos) << r.output;
  r = run("vitmsn-synth --config " + config + " " + dir + "/missing/model");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/missing"));
}

TEST(SynthProgram, RejectsBadArguments) {
  const std::string dir = test::temp_dir();
  ProgramRun r = run("vitmsn-synth");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("give one OUT_DIR"), std::string::npos) << r.output;
  r = run("vitmsn-synth " + dir + "/a " + dir + "/b");
  EXPECT_EQ(r.status, 2) << r.output;
  r = run("vitmsn-synth --dtype f8 " + dir + "/a");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--dtype"), std::string::npos) << r.output;
  r = run("vitmsn-synth --config " + dir + "/no-such.json " + dir + "/a");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("no-such.json"), std::string::npos) << r.output;
  r = run("vitmsn-synth --config " + tiny_config_file("no-bias.json", false) + " " + dir + "/a");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("qkv_bias"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir + "/a")) << "nothing may be written after an argument error";
}

}  // namespace
}  // namespace vitmsn

#endif  // VITMSN_PROGRAM_DIR
