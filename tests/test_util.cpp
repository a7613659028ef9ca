#include "test_util.hpp"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <random>

#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"

namespace vitmsn::test {

Config tiny_architecture() {
  Config c;
  c.hidden_size = 64;
  c.num_hidden_layers = 2;
  c.num_attention_heads = 4;
  c.intermediate_size = 256;
  c.patch_size = 7;
  c.image_size = 224;
  return c;
}

namespace {

/// The folder of the running test (empty before its first temp_dir() call); removed at its end.
struct TestFolder {
  const ::testing::TestInfo* test = nullptr;
  std::filesystem::path path;
};
TestFolder& current_folder() {
  static TestFolder folder;
  return folder;
}

void remove_current_folder() {
  TestFolder& f = current_folder();
  if (!f.path.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(f.path, ec);
  }
  f = TestFolder{};
}

/// Removes each test's folder when the test ends, passed or failed.
class TempFolderRemover : public ::testing::EmptyTestEventListener {
  void OnTestEnd(const ::testing::TestInfo&) override { remove_current_folder(); }
};

/// Registered before main() runs: gtest_main's RUN_ALL_TESTS then calls it after every test.
const bool kRemoverRegistered = [] {
  ::testing::UnitTest::GetInstance()->listeners().Append(new TempFolderRemover);
  return true;
}();

std::string file_name_safe(std::string s) {
  for (char& c : s)
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') c = '_';
  return s;
}

}  // namespace

std::string temp_dir(const std::string& sub) {
  const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
  if (!test) throw std::logic_error("test::temp_dir() called outside a running test");
  TestFolder& f = current_folder();
  if (f.test != test) {
    remove_current_folder();
    f.test = test;
    f.path =
        std::filesystem::path(VITMSN_BINARY_DIR) / "test-tmp" /
        file_name_safe(std::string(test->test_suite_name()) + "." + test->name() + "." + std::to_string(::getpid()));
    std::filesystem::remove_all(f.path);  // left by a crashed earlier process with the same pid
    std::filesystem::create_directories(f.path);
  }
  if (sub.empty()) return f.path.string();
  const std::filesystem::path dir = f.path / sub;
  std::filesystem::create_directories(dir);
  return dir.string();
}

namespace {
const std::vector<SafetensorsFile>& preprocess_parts() {
  static const std::vector<SafetensorsFile> parts = [] {
    std::vector<SafetensorsFile> v;
    for (int i = 0; i < 3; ++i)
      v.push_back(SafetensorsFile::open(data_path("expected/preprocess." + std::to_string(i) + ".safetensors")));
    return v;
  }();
  return parts;
}
}  // namespace

bool has_preprocess_fixture(const std::string& key) {
  for (const auto& f : preprocess_parts())
    if (f.contains(key)) return true;
  return false;
}

const TensorView& preprocess_fixture(const std::string& key) {
  for (const auto& f : preprocess_parts())
    if (const TensorView* t = f.find(key)) return *t;
  throw std::runtime_error("no preprocess fixture '" + key + "'");
}

const std::vector<std::string>& image_cases() {
  static const std::vector<std::string> cases = {"astronaut",     "camera", "chelsea",
                                                 "chelsea_q90",   "coffee", "coffee_progressive",
                                                 "green_palette", "horse",  "rocket"};
  return cases;
}

PixelValues fixture_pixels(const std::string& case_name) {
  const TensorView& t = preprocess_fixture(case_name + ".pixel_values");
  PixelValues p(t.shape[0], t.shape[1], t.shape[2]);
  const std::vector<float> v = t.to_float();
  std::copy(v.begin(), v.end(), p.data());
  return p;
}

const TensorView& tiny_output(const std::string& key) {
  static const SafetensorsFile file = SafetensorsFile::open(data_path("expected/tiny_outputs.safetensors"));
  return file.get(key);
}

std::vector<TensorData> read_tensors(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::vector<TensorData> out;
  for (const auto& name : f.names()) out.push_back(f.get(name).to_tensor_data());
  return out;
}

double max_abs_diff(const float* a, const float* b, std::size_t n) {
  double m = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (!(d <= m)) m = d;  // NaN propagates as failure
  }
  return m;
}

std::string psd_bytes(const Image& image) {
  auto be = [](std::uint32_t v, int bytes) {
    std::string s;
    for (int i = bytes - 1; i >= 0; --i) s += static_cast<char>((v >> (8 * i)) & 0xff);
    return s;
  };
  // Header: signature, version 1, 6 reserved bytes, channels, height, width, depth, colour mode RGB;
  // then empty colour-mode, image-resource and layer sections; then compression 0 (raw), planar data.
  std::string out = "8BPS" + be(1, 2) + std::string(6, '\0') + be(3, 2) + be(image.height, 4) + be(image.width, 4) +
                    be(8, 2) + be(3, 2) + be(0, 4) + be(0, 4) + be(0, 4) + be(0, 2);
  for (int c = 0; c < 3; ++c)
    for (int y = 0; y < image.height; ++y)
      for (int x = 0; x < image.width; ++x) out += static_cast<char>(image.at(y, x, c));
  return out;
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

ProgramRun run_command(const std::string& command) {
  ProgramRun r{-1, ""};
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  while (std::fgets(buf.data(), buf.size(), p)) r.output += buf.data();
  const int st = pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

std::string start_in_background(const std::string& command, const std::string& log) {
  FILE* p = popen((command + " > " + log + " 2>&1 & echo $!").c_str(), "r");
  if (!p) return "";
  char pid[32] = {0};
  const bool ok = std::fgets(pid, sizeof pid, p) != nullptr;
  pclose(p);
  std::string s = ok ? pid : "";
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no vitmsn::Error; expected one mentioning '" << (needles.empty() ? "" : needles[0]) << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message lacks '" << n << "': " << msg;
  }
}

void expect_error(const std::function<void()>& fn, const std::string& prefix, const std::vector<std::string>& needles) {
  try {
    fn();
    ADD_FAILURE() << "no vitmsn::Error; expected one starting with '" << prefix << "'";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(prefix, 0), 0u) << "message does not start with '" << prefix << "': " << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "message lacks '" << n << "': " << msg;
  }
}

std::string write_tiny_head(const std::string& path, const std::vector<std::string>& labels,
                            const std::string& backbone, std::map<std::string, std::string> metadata) {
  const std::int64_t n = static_cast<std::int64_t>(labels.size());
  const std::vector<float> w(labels.size() * 64, 0.01f), b(labels.size(), 0.0f);
  std::string id2label = "{";
  for (std::size_t i = 0; i < labels.size(); ++i)
    id2label += (i ? ",\"" : "\"") + std::to_string(i) + "\":\"" + labels[i] + "\"";
  metadata["id2label"] = id2label + "}";
  if (!backbone.empty()) metadata[kBackboneMetadataKey] = backbone;
  write_safetensors(
      path,
      {TensorData::f32("classifier.weight", {n, 64}, w.data()), TensorData::f32("classifier.bias", {n}, b.data())},
      metadata);
  return path;
}

void expect_load_error(const std::string& path, const std::vector<std::string>& needles) {
  SCOPED_TRACE("Model::load(" + path + ")");
  expect_error([&] { Model::load(path); }, needles);
}

const std::vector<std::string>& probe_class_names() {
  static const std::vector<std::string> names = {"blue_checks", "green_stripes", "red_disk"};
  return names;
}

Image probe_picture(int c, int i) {
  Image im;
  im.width = im.height = 40;
  im.rgb.resize(40 * 40 * 3);
  std::mt19937 rng(100 * c + i);
  std::uniform_int_distribution<int> noise(-12, 12);
  for (int y = 0; y < 40; ++y)
    for (int x = 0; x < 40; ++x) {
      int r = 0, g = 0, b = 0;
      if (c == 0) {  // blue / white checkerboard
        const bool on = ((x + i) / 5 + (y + 2 * i) / 5) % 2 == 0;
        r = g = on ? 30 : 230;
        b = on ? 220 : 240;
      } else if (c == 1) {  // green horizontal stripes
        const bool on = ((y + i) / 4) % 2 == 0;
        r = on ? 20 : 200;
        g = on ? 190 : 250;
        b = on ? 30 : 200;
      } else {  // red disk on dark grey
        const int cx = 16 + i, cy = 22 - i, rad = 9 + i % 4;
        const bool in = (x - cx) * (x - cx) + (y - cy) * (y - cy) <= rad * rad;
        r = in ? 230 : 50;
        g = in ? 25 : 50;
        b = in ? 30 : 55;
      }
      const int n = noise(rng);
      auto px = [&](int v) { return static_cast<std::uint8_t>(std::clamp(v + n, 0, 255)); };
      std::uint8_t* p = &im.rgb[(y * 40 + x) * 3];
      p[0] = px(r);
      p[1] = px(g);
      p[2] = px(b);
    }
  return im;
}

std::string make_probe_image_folder(const std::string& dir) {
  const std::string data = dir + "/data";
  for (int c = 0; c < 3; ++c) {
    std::filesystem::create_directories(data + "/" + probe_class_names()[c] + "/sub");
    for (int i = 0; i < 6; ++i)
      write_png(data + "/" + probe_class_names()[c] + (i >= 4 ? "/sub/" : "/") + std::to_string(i) + ".png",
                probe_picture(c, i));
  }
  return data;
}

}  // namespace vitmsn::test
