// Loading: folders, single files with the config in __metadata__, and checkpoints that disagree with
// their config — each rejected with a message naming the file, the tensor, expected and actual shape.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "base/file_util.hpp"
#include "core/model.hpp"
#include "core/weights.hpp"
#include "test_util.hpp"
#include "vitmsn/config.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

std::string tiny_dir() { return test::data_path("models/tiny"); }

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::ofstream out(to, std::ios::binary);
  out << in.rdbuf();
}

// A model folder with the tiny config and `tensors`; returns its path.
std::string make_folder(const std::string& name, const std::vector<TensorData>& tensors,
                        const std::string& config_text = "") {
  const std::string d = test::temp_dir(name);
  write_safetensors(d + "/model.safetensors", tensors);
  if (config_text.empty()) {
    copy_file(tiny_dir() + "/config.json", d + "/config.json");
  } else {
    test::write_bytes(d + "/config.json", config_text);
  }
  return d;
}

TEST(ModelLoad, AcceptsAFolderOrItsSafetensorsFile) {
  const Model a = Model::load(tiny_dir());
  const Model b = Model::load(tiny_dir() + "/model.safetensors");
  EXPECT_EQ(a.config().hidden_size, b.config().hidden_size);
  EXPECT_EQ(b.source(), tiny_dir() + "/model.safetensors");
}

TEST(ModelLoad, SingleFileWithConfigInMetadataIsAWholeModel) {
  const std::string d = test::temp_dir();
  const Config c = read_config(tiny_dir() + "/config.json");
  write_safetensors(d + "/alone.safetensors", test::read_tensors(tiny_dir() + "/model.safetensors"),
                    {{"config", to_json(c)}, {"format", "pt"}});
  const Model m = Model::load(d + "/alone.safetensors");
  EXPECT_EQ(m.config().hidden_size, 64);
  EXPECT_EQ(m.config().num_hidden_layers, 2);
  EXPECT_EQ(m.config().num_attention_heads, 4);
}

// One precedence for Model::load and the converter (src/core/model_files.hpp): a weights file's own
// __metadata__ config first, then the config.json beside it.
TEST(ModelLoad, MetadataConfigWinsOverAConfigJsonBesideIt) {
  const std::string d = test::temp_dir();
  const Config c = read_config(tiny_dir() + "/config.json");
  PreprocessorConfig pre;
  pre.height = pre.width = 280;
  write_safetensors(d + "/model.safetensors", test::read_tensors(tiny_dir() + "/model.safetensors"),
                    {{"config", to_json(c)}, {"preprocessor_config", to_json(pre)}});
  std::string wrong = test::read_text(tiny_dir() + "/config.json");
  wrong.replace(wrong.find("\"hidden_size\": 64"), 17, "\"hidden_size\": 32");
  test::write_bytes(d + "/config.json", wrong);  // would not fit the tensors
  test::write_bytes(d + "/preprocessor_config.json", test::read_text(tiny_dir() + "/preprocessor_config.json"));
  for (const std::string& path : {d, d + "/model.safetensors"}) {
    const Model m = Model::load(path);
    EXPECT_EQ(m.config().hidden_size, 64) << path;
    EXPECT_EQ(m.preprocessor().config().height, 280) << path;
  }
  const ConvertReport r = convert_checkpoint(d, d + "/out.safetensors");
  EXPECT_EQ(r.config_source, d + "/model.safetensors (__metadata__)");
  EXPECT_EQ(r.preprocessor_source, d + "/model.safetensors (__metadata__)");
}

TEST(ModelLoad, ConfigJsonBesideTheWeightsIsUsedWithoutMetadata) {
  const ConvertReport r = convert_checkpoint(tiny_dir(), test::temp_dir() + "/out.safetensors");
  EXPECT_EQ(r.config_source, tiny_dir() + "/config.json");
  EXPECT_EQ(r.preprocessor_source, tiny_dir() + "/preprocessor_config.json");
}

TEST(ModelLoad, FileWithoutAnyConfigIsAnError) {
  const std::string d = test::temp_dir();
  write_safetensors(d + "/x.safetensors", test::read_tensors(tiny_dir() + "/model.safetensors"));
  test::expect_load_error(d + "/x.safetensors", {"x.safetensors", "no model config"});
}

TEST(ModelLoad, FolderWithOnlyPytorchBinSaysToConvertIntoTheFolder) {
  const std::string d = test::temp_dir();
  copy_file(tiny_dir() + "/pytorch_model.bin", d + "/pytorch_model.bin");
  // The command writes where the folder is looked up, so that the same path loads afterwards.
  test::expect_load_error(d, {"pytorch_model.bin", "vitmsn-convert " + d + " " + d + "/model.safetensors"});
}

TEST(ModelLoad, MissingPathIsAnError) { test::expect_load_error("/nonexistent/model", {"/nonexistent/model"}); }

TEST(ModelLoad, MissingTensorIsNamed) {
  auto t = test::read_tensors(tiny_dir() + "/model.safetensors");
  t.erase(std::remove_if(t.begin(), t.end(),
                         [](const TensorData& x) { return x.name == "encoder.layer.1.output.dense.bias"; }),
          t.end());
  const std::string d = make_folder("missing", t);
  test::expect_load_error(d, {"model.safetensors", "missing tensor 'encoder.layer.1.output.dense.bias'"});
}

TEST(ModelLoad, WrongShapeNamesTensorExpectedAndActual) {
  auto t = test::read_tensors(tiny_dir() + "/model.safetensors");
  for (auto& x : t)
    if (x.name == "encoder.layer.0.attention.attention.query.weight") {
      x.shape = {64, 32};
      x.bytes.resize(64 * 32 * 4);
    }
  const std::string d = make_folder("wrong_shape", t);
  test::expect_load_error(d, {"model.safetensors", "tensor 'encoder.layer.0.attention.attention.query.weight'",
                              "has shape [64,32], expected [64,64]"});
}

TEST(ModelLoad, ConfigWithMoreLayersThanTheFileIsAnError) {
  std::string cfg = test::data_path("models/tiny/config.json");
  std::ifstream in(cfg);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto pos = text.find("\"num_hidden_layers\": 2");
  ASSERT_NE(pos, std::string::npos);
  text.replace(pos, 22, "\"num_hidden_layers\": 3");
  const std::string d = make_folder("more_layers", test::read_tensors(tiny_dir() + "/model.safetensors"), text);
  test::expect_load_error(d, {"missing tensor 'encoder.layer.2.layernorm_before.weight'", "3 layers"});
}

TEST(ModelLoad, ConfigWithFewerLayersThanTheFileIsAnError) {
  std::ifstream in(test::data_path("models/tiny/config.json"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.replace(text.find("\"num_hidden_layers\": 2"), 22, "\"num_hidden_layers\": 1");
  const std::string d = make_folder("fewer_layers", test::read_tensors(tiny_dir() + "/model.safetensors"), text);
  test::expect_load_error(d, {"more layers than the config", "encoder.layer.1."});
}

TEST(ModelLoad, ConfigHiddenSizeDisagreeingWithTensorsIsAnError) {
  std::ifstream in(test::data_path("models/tiny/config.json"));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.replace(text.find("\"hidden_size\": 64"), 17, "\"hidden_size\": 32");
  const std::string d = make_folder("hidden_size", test::read_tensors(tiny_dir() + "/model.safetensors"), text);
  test::expect_load_error(d, {"embeddings.cls_token", "expected [1,1,32]"});
}

TEST(ModelLoad, IntegerDtypeWeightIsAnError) {
  auto t = test::read_tensors(tiny_dir() + "/model.safetensors");
  for (auto& x : t)
    if (x.name == "layernorm.bias") x.dtype = DType::kI32;
  const std::string d = make_folder("int_dtype", t);
  test::expect_load_error(d, {"'layernorm.bias'", "dtype I32"});
}

TEST(ModelLoad, HalfPrecisionWeightsAreWidenedAndStillMatch) {
  // BF16 copy of the tiny model: loads (widened to float32), results close to float32.
  auto t = test::read_tensors(tiny_dir() + "/model.safetensors");
  for (auto& x : t) {
    std::vector<std::uint8_t> b(x.bytes.size() / 2);
    for (std::size_t i = 0; i < b.size() / 2; ++i) {
      b[2 * i] = x.bytes[4 * i + 2];  // truncate to bf16: the high half of each float
      b[2 * i + 1] = x.bytes[4 * i + 3];
    }
    x.bytes = b;
    x.dtype = DType::kBF16;
  }
  const std::string d = make_folder("bf16", t);
  const Model m = Model::load(d);
  EXPECT_GT(m.copied_weight_bytes(), 0u);
  PixelValues p(3, 224, 224);
  p.setConstant(0.25f);
  const Features a = m.extract_features(p);
  const Features b = Model::load(tiny_dir()).extract_features(p);
  const float cos = a.cls().dot(b.cls()) / (a.cls().norm() * b.cls().norm());
  EXPECT_GT(cos, 0.99f) << "bf16 vs f32 CLS cosine " << cos;
}

TEST(ModelLoad, ClassifierHeadWithMismatchedLabelsIsAnError) {
  const std::string src = test::data_path("models/tiny-cls");
  auto t = test::read_tensors(src + "/model.safetensors");
  std::ifstream in(src + "/config.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  text.replace(text.find("\"4\": \"camera\""), 13, "\"4\": \"camera\", \"5\": \"dog\"");
  const std::string d = make_folder("labels", t, text);
  test::expect_load_error(d, {"classifier.weight", "5 rows", "6 labels"});
}

// A model file replaced under a loaded model (README "Memory-mapped weights"). The weights are a
// read-only map of the file: a rewrite in place (cp over it) is detected before each call, which
// throws instead of faulting (SIGBUS) or computing with other weights; a new file renamed over the
// path leaves the map intact; copy_weights keeps a private copy nothing can touch.

// A copy of a fixture model folder (weights, config, preprocessor config) in the test's temp dir.
std::string copy_model(const std::string& fixture, const std::string& sub) {
  const std::string from = test::data_path("models/" + fixture), d = test::temp_dir(sub);
  for (const char* f : {"model.safetensors", "config.json", "preprocessor_config.json"})
    copy_file(from + "/" + f, d + "/" + f);
  return d;
}

// Rewrites `path` in place, as `cp other path` does: the same file (inode), truncated, new bytes.
void rewrite_in_place(const std::string& path, const std::string& bytes) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
  ASSERT_EQ(::close(fd), 0);
}

ino_t inode_of(const std::string& path) {
  struct stat st {};
  EXPECT_EQ(::stat(path.c_str(), &st), 0) << path;
  return st.st_ino;
}

bool identical(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::equal(a.data(), a.data() + a.size(), b.data());  // bit for bit (no NaN in these features)
}

// The Error of a call on a model whose file was rewritten: names the file, says what changed and
// what to do.
void expect_changed(const std::function<void()>& call, const std::string& file, const std::string& what) {
  test::expect_error(call, file + ": the model file changed on disk after it was loaded (",
                     {what, "reload the model", "load it with its weights copied (copy_weights)"});
}

TEST(ModelFileChanged, RewriteInPlaceWithOtherContentIsAnErrorBeforeTheForward) {
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  const Model m = Model::load(d);
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features before = m.extract_features(px);
  const ino_t inode = inode_of(file);
  // Another model's bytes (tiny-cls, a larger file) over the same inode, as `cp` writes them.
  rewrite_in_place(file, test::read_text(test::data_path("models/tiny-cls/model.safetensors")));
  ASSERT_EQ(inode_of(file), inode) << "the rewrite must keep the inode, as cp does";
  const std::string size = "size 704904 -> 706508 bytes";
  expect_changed([&] { m.extract_features(px); }, file, size);
  expect_changed([&] { m.extract_features(PixelValuesView(px.data(), 3, 224, 224)); }, file, size);
  expect_changed([&] { m.extract_features(std::vector<PixelValues>{px, px}); }, file, size);
  expect_changed([&] { m.extract_features(std::vector<PixelValuesView>{PixelValuesView(px.data(), 3, 224, 224)}); },
                 file, size);
  expect_changed([&] { m.extract_features(test::data_path("images/chelsea.png")); }, file, size);
  // Loading it again gives the new model.
  EXPECT_TRUE(Model::load(d).has_classifier());
  EXPECT_FALSE(identical(Model::load(d).extract_features(px).last_hidden_state, before.last_hidden_state));
}

TEST(ModelFileChanged, TruncatedInPlaceIsAnErrorNotASignal) {
  // The case that faults without the check: the mapped pages past the new end are gone (SIGBUS).
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  const Model m = Model::load(file);
  const std::string bytes = test::read_text(file);
  rewrite_in_place(file, bytes.substr(0, 4096));
  expect_changed([&] { m.extract_features(test::fixture_pixels("chelsea")); }, file, "size 704904 -> 4096 bytes");
}

TEST(ModelFileChanged, SameSizeRewriteIsCaughtByItsModificationTime) {
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  // An old modification time, so the rewrite's cannot fall in the same clock tick.
  const struct timespec old[2] = {{1000000000, 0}, {1000000000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), old, 0), 0);
  const Model m = Model::load(d);
  std::string bytes = test::read_text(file);
  bytes.back() ^= 0x55;  // another value in the last tensor, same size
  rewrite_in_place(file, bytes);
  expect_changed([&] { m.extract_features(test::fixture_pixels("chelsea")); }, file,
                 "modified at 2001-09-09 01:46:40.000000000 UTC -> ");
}

TEST(ModelFileChanged, RewriteThatRestoresTheModificationTimeIsCaughtByTheStatusChangeTime) {
  // rsync --inplace -t, cp -p over a same-size file whose time it copies: only ctime tells.
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  struct stat st {};
  ASSERT_EQ(::stat(file.c_str(), &st), 0);
  const Model m = Model::load(d);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // past the clock tick of the copy
  rewrite_in_place(file, test::read_text(file));
  const struct timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, file.c_str(), times, 0), 0);
  expect_changed([&] { m.extract_features(test::fixture_pixels("chelsea")); }, file, "status changed at ");
}

TEST(ModelFileChanged, LogitsAndClassifyCheckTheFileToo) {
  const std::string d = copy_model("tiny-cls", "model");
  const std::string file = d + "/model.safetensors";
  const Model m = Model::load(d);
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features f = m.extract_features(px);
  const Vector logits = m.logits(f);
  rewrite_in_place(file, test::read_text(test::data_path("models/tiny/model.safetensors")));
  const std::string size = "size 706508 -> 704904 bytes";
  expect_changed([&] { m.logits(f); }, file, size);  // reads the mapped classifier weights
  expect_changed([&] { m.classify(px); }, file, size);
  expect_changed([&] { m.classify(std::vector<PixelValues>{px}); }, file, size);
  EXPECT_EQ(logits.size(), 5);
}

TEST(ModelFileChanged, ReplacingByRenameKeepsTheLoadedModelWorking) {
  // mv, atomic writers (write_safetensors itself): a new inode takes the name, the map keeps the old.
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  const Model m = Model::load(d);
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features before = m.extract_features(px);
  const ino_t inode = inode_of(file);
  test::write_bytes(file + ".new", test::read_text(test::data_path("models/tiny-cls/model.safetensors")));
  ASSERT_EQ(std::rename((file + ".new").c_str(), file.c_str()), 0);
  ASSERT_NE(inode_of(file), inode);
  const Features after = m.extract_features(px);
  EXPECT_TRUE(identical(after.last_hidden_state, before.last_hidden_state));
  // And once more after the old file is gone for good (unlinked, still mapped).
  ASSERT_EQ(std::remove(file.c_str()), 0);
  EXPECT_TRUE(
      identical(m.extract_features(std::vector<PixelValues>{px})[0].last_hidden_state, before.last_hidden_state));
}

TEST(ModelFileChanged, CopyWeightsKeepsAPrivateCopyThatARewriteCannotTouch) {
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  LoadOptions o;
  o.copy_weights = true;
  const Model copied = Model::load(d, o);
  const Model mapped = Model::load(d);
  EXPECT_EQ(copied.copied_weight_bytes(), 704904u) << "the whole file";
  EXPECT_EQ(mapped.copied_weight_bytes(), 0u);
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features before = mapped.extract_features(px);
  EXPECT_TRUE(identical(copied.extract_features(px).last_hidden_state, before.last_hidden_state));
  const std::string bytes = test::read_text(file);
  rewrite_in_place(file, bytes.substr(0, 4096));
  EXPECT_TRUE(identical(copied.extract_features(px).last_hidden_state, before.last_hidden_state));
  rewrite_in_place(file, test::read_text(test::data_path("models/tiny-cls/model.safetensors")));
  EXPECT_TRUE(identical(copied.extract_features(px).last_hidden_state, before.last_hidden_state));
  expect_changed([&] { mapped.extract_features(px); }, file, "size 704904 -> 706508 bytes");
}

// The mapping of /proc/self/smaps that contains `p`: its first address and resident kB ("Rss:");
// rss_kb -1 when not found.
struct Mapping {
  std::uintptr_t start = 0;
  long rss_kb = -1;
};

Mapping mapping_of(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  Mapping m;
  bool inside = false;
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  while (std::getline(smaps, line)) {
    unsigned long lo = 0, hi = 0;
    char perms[8] = {};
    if (std::sscanf(line.c_str(), "%lx-%lx %7s", &lo, &hi, perms) == 3) {
      inside = addr >= lo && addr < hi;
      if (inside) m.start = lo;
      continue;
    }
    long kb = 0;
    if (inside && std::sscanf(line.c_str(), "Rss: %ld kB", &kb) == 1) {
      m.rss_kb = kb;
      return m;
    }
  }
  return m;
}

TEST(ModelLoad, PackedLinearLayersLeaveNothingOfTheMapResident) {
  const Model m = Model::load(test::data_path("models/tiny"));
  if (m.packed_weight_bytes() == 0) GTEST_SKIP() << "the portable kernels read the weights in place";
  const detail::Weights& w = detail::ModelAccess::weights(m);
  const SafetensorsFile* file = detail::ModelAccess::file(m);
  ASSERT_NE(file, nullptr);
  // The small tensors are held as copies: none points into the map.
  const std::uint8_t* begin = nullptr;
  const std::uint8_t* end = nullptr;
  for (const std::string& name : file->names()) {
    const TensorView& t = file->get(name);
    if (!begin || t.data < begin) begin = t.data;
    if (!end || t.data + t.nbytes > end) end = t.data + t.nbytes;
  }
  const auto outside = [&](const float* p) {
    const auto* b = reinterpret_cast<const std::uint8_t*>(p);
    return b < begin || b >= end;
  };
  EXPECT_TRUE(outside(w.cls_token.data()) && outside(w.position_embeddings.data()) && outside(w.patch_weight.data()) &&
              outside(w.patch_bias.data()) && outside(w.layernorm_weight.data()));
  for (const detail::LayerWeights& l : w.layers)
    EXPECT_TRUE(outside(l.layernorm_before_weight.data()) && outside(l.query_bias.data()) &&
                outside(l.attention_output_bias.data()) && outside(l.intermediate_bias.data()) &&
                outside(l.output_bias.data()) && outside(l.layernorm_after_bias.data()));
  const auto D = static_cast<std::size_t>(m.config().hidden_size),
             F = static_cast<std::size_t>(m.config().intermediate_size);
  const auto N = static_cast<std::size_t>(m.config().num_tokens()), L = w.layers.size();
  const std::size_t small =
      D + N * D + D * static_cast<std::size_t>(w.patch_weight.cols()) + D + 2 * D + L * (4 * D + 3 * D + D + F + D);
  EXPECT_EQ(w.held_bytes, small * sizeof(float));
  EXPECT_EQ(m.copied_weight_bytes(), 0u);
  // After a forward, only the header's pages of the map are resident (before: every page holding a
  // bias, a norm or an embedding, read in place).
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features f = m.extract_features(px);
  const Mapping map = mapping_of(begin);
  ASSERT_GE(map.rss_kb, 0) << "the map is not in /proc/self/smaps";
  const long page = ::sysconf(_SC_PAGESIZE);
  const long header_pages = (static_cast<long>(reinterpret_cast<std::uintptr_t>(begin) - map.start) + page - 1) / page;
  EXPECT_LE(map.rss_kb, (header_pages + 1) * page / 1024)
      << "resident kB of the map after a forward (header: " << header_pages << " pages)";
  // And the features are those of the same tensors held in memory (the same kernels and packing).
  const Model memory =
      Model::from_tensors(m.config(), test::read_tensors(test::data_path("models/tiny/model.safetensors")));
  EXPECT_TRUE(identical(memory.extract_features(px).last_hidden_state, f.last_hidden_state));
}

TEST(ModelFileChanged, InMemoryModelsHaveNoFileToCheck) {
  const std::string d = copy_model("tiny", "model");
  const std::string file = d + "/model.safetensors";
  const Model mapped = Model::load(d);
  const Model memory = Model::from_tensors(mapped.config(), test::read_tensors(file));
  const PixelValues px = test::fixture_pixels("chelsea");
  const Features before = memory.extract_features(px);
  rewrite_in_place(file, "");
  EXPECT_TRUE(identical(memory.extract_features(px).last_hidden_state, before.last_hidden_state));
  EXPECT_EQ(memory.copied_weight_bytes(), 0u);
}

TEST(ModelFileChanged, SafetensorsFileChecksTheFileItMapped) {
  const std::string d = copy_model("tiny", "file");
  const std::string file = d + "/model.safetensors";
  const SafetensorsFile mapped = SafetensorsFile::open(file);
  const SafetensorsFile copied = SafetensorsFile::open(file, {}, FileAccess::kCopy);
  EXPECT_FALSE(mapped.is_copy());
  EXPECT_TRUE(copied.is_copy());
  EXPECT_EQ(reinterpret_cast<std::uintptr_t>(copied.get("embeddings.cls_token").data) % 4096,
            reinterpret_cast<std::uintptr_t>(mapped.get("embeddings.cls_token").data) % 4096)
      << "a copy keeps the file's alignment (page-aligned base)";
  EXPECT_NO_THROW(mapped.check_unchanged());
  const std::string bytes = test::read_text(file);
  rewrite_in_place(file, bytes + std::string(8, ' '));
  test::expect_error([&] { mapped.check_unchanged(); }, file + ": the model file changed on disk",
                     {"size 704904 -> 704912 bytes"});
  EXPECT_NO_THROW(copied.check_unchanged());
  EXPECT_EQ(copied.get("embeddings.cls_token").to_float(), mapped.get("embeddings.cls_token").to_float());
}

TEST(Config, JsonErrorsSayWhereInWords) {
  try {
    parse_config("{\"hidden_size\": 64,, }", "c.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.json: not valid JSON: syntax error at byte 20"), std::string::npos)
        << e.what();
    EXPECT_EQ(std::string(e.what()).find("json.exception"), std::string::npos) << e.what();
  }
}

TEST(Config, RejectsMissingAndMistypedFields) {
  EXPECT_THROW(parse_config("{}", "c.json"), Error);
  try {
    parse_config(
        R"({"hidden_size":"64","num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":256,"patch_size":7})",
        "c.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("c.json: field 'hidden_size' must be an integer"), std::string::npos)
        << e.what();
  }
  EXPECT_THROW(parse_config("not json", "c.json"), Error);
  EXPECT_THROW(
      parse_config(
          R"({"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":5,"intermediate_size":256,"patch_size":7})",
          "c.json"),
      Error);
  EXPECT_THROW(
      parse_config(
          R"({"hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"intermediate_size":256,"patch_size":7,"hidden_act":"relu"})",
          "c.json"),
      Error);
  EXPECT_THROW(
      parse_config(
          R"({"hidden_size":64,"num_hidden_layers":-2,"num_attention_heads":4,"intermediate_size":256,"patch_size":7})",
          "c.json"),
      Error);
}

TEST(Config, APreprocessorConfigIsNamedForWhatItIs) {
  // vitmsn-synth --config preprocessor_config.json, or a model folder whose config.json is one (#24).
  try {
    parse_config(detail::read_text_file(test::data_path("models/tiny/preprocessor_config.json")), "p.json");
    FAIL() << "a preprocessor config was taken as a model config";
  } catch (const Error& e) {
    EXPECT_EQ(
        std::string(e.what()),
        "p.json: a preprocessor config (it has preprocessing keys and no hidden_size), not a model's config.json");
    EXPECT_EQ(e.kind(), ErrorKind::kMalformed);
  }
  // A config without hidden_size and without preprocessing keys still names the missing field.
  try {
    parse_config(R"({"num_hidden_layers":2})", "c.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "c.json: missing field 'hidden_size'");
  }
}

TEST(Config, InputSizesAreCheckedWithTheNearestValidSize) {
  const Config c;  // ViT-L/7's: patch 7
  EXPECT_NO_THROW(check_input_size(c, 224, 224));
  EXPECT_NO_THROW(check_input_size(c, 1792, 1792));
  test::expect_error([&] { check_input_size(c, 320, 240); },
                     {"320x240: height and width must be positive multiples of the patch size 7",
                      "the nearest valid size is 322x238"});
  test::expect_error([&] { check_input_size(c, 0, 0); }, {"0x0", "the nearest valid size is 7x7"});
  test::expect_error([&] { check_input_size(c, 7000, 7000); },
                     {"7000x7000 makes 1000001 tokens", "limit of 65537", "largest square size is 1792x1792"});
}

TEST(Config, RoundTripsThroughJson) {
  Config c = read_config(test::data_path("models/tiny-cls/config.json"));
  EXPECT_EQ(c.id2label.size(), 5u);
  EXPECT_EQ(c.id2label[3], "rocket");
  const Config d = parse_config(to_json(c), "roundtrip");
  EXPECT_EQ(d.id2label, c.id2label);
  EXPECT_EQ(d.hidden_size, c.hidden_size);
  EXPECT_EQ(d.layer_norm_eps, c.layer_norm_eps);
  EXPECT_EQ(d.num_tokens(), 1025);
}

}  // namespace
}  // namespace vitmsn
