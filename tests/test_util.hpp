#pragma once
// Shared helpers of the tests: fixture paths, fixture tensors, error measures.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "vitmsn/image.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn::test {

/// Path inside tests/data.
inline std::string data_path(const std::string& rel) { return std::string(VITMSN_TEST_DATA_DIR) + "/" + rel; }

/// The running test's own folder for the files it writes: `<build>/test-tmp/<test name>.<pid>`, made
/// empty on the test's first call and removed when the test ends. Unique per test and process, so
/// tests running in parallel (ctest -j) never see each other's files. `sub` names a subfolder of it
/// (created). Outside a test (static initialisation) it is an error.
std::string temp_dir(const std::string& sub = "");

/// The tiny models' architecture (hidden 64, 2 layers, 4 heads, MLP 256, patch 7, 224×224), as a
/// Config built in code (the bundled tiny models' config.json says the same).
Config tiny_architecture();

/// The split copy of HF's preprocess.safetensors (tests/data/expected/preprocess.{0,1,2}).
const TensorView& preprocess_fixture(const std::string& key);
bool has_preprocess_fixture(const std::string& key);
/// The nine fixture images (tests/data/images), by case name.
const std::vector<std::string>& image_cases();
/// HF's pixel_values of a fixture image case (preprocess_fixture(case + ".pixel_values")) as model input.
PixelValues fixture_pixels(const std::string& case_name);
/// HF's tiny_outputs.safetensors.
const TensorView& tiny_output(const std::string& key);

/// Every tensor of a safetensors file, in its order, as TensorData (to rewrite them, modified). Its
/// __metadata__ is SafetensorsFile::open(path).metadata().
std::vector<TensorData> read_tensors(const std::string& path);

/// Largest |a[i] - b[i]|; sizes must agree (a test failure otherwise).
double max_abs_diff(const float* a, const float* b, std::size_t n);

/// decode_image() on the bytes of a string (an encoded image built or read by a test).
inline Image decode_bytes(const std::string& bytes, const std::string& name) {
  return decode_image(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), name);
}

/// Runs `fn` and expects a vitmsn::Error whose message contains every one of `needles` (a test
/// failure naming the missing piece and showing the message otherwise).
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& needles);
inline void expect_error(const std::function<void()>& fn, const char* needle) {
  expect_error(fn, std::vector<std::string>{needle});
}
/// As above, and the message must start with `prefix` (e.g. the file's path).
void expect_error(const std::function<void()>& fn, const std::string& prefix, const std::vector<std::string>& needles);

/// A classifier head of the tiny models' width (64) written to `path`: one class per label (weights
/// 0.01, biases 0), their id2label, `backbone` as its backbone_sha256 (none when empty), and `metadata`
/// besides. Returns `path`.
std::string write_tiny_head(const std::string& path, const std::vector<std::string>& labels,
                            const std::string& backbone, std::map<std::string, std::string> metadata = {});

/// expect_error() on Model::load(path), with the path in the failure's trace.
void expect_load_error(const std::string& path, const std::vector<std::string>& needles);

/// `image` as a raw (uncompressed) 8-bit RGB Photoshop file: the PSD layout Pillow and vitmsn read.
std::string psd_bytes(const Image& image);

/// Writes bytes to a file (for error tests that build broken inputs).
void write_bytes(const std::string& path, const std::string& bytes);

/// What a program printed (stdout + stderr) and its exit status (-1 when it did not exit normally).
struct ProgramRun {
  int status;
  std::string output;
};

/// Runs `command` through the shell (stderr joined to stdout) and waits for it.
ProgramRun run_command(const std::string& command);

/// Starts `command` in the background with stdout and stderr to `log`; returns its process id (empty
/// when it could not be started).
std::string start_in_background(const std::string& command, const std::string& log);

/// The few-shot task of the probe tests: 3 classes (blue checkerboards, green stripes, red disks) of
/// 40×40 pictures with noise. Class names, in label order.
const std::vector<std::string>& probe_class_names();
/// Picture i (0..5) of class c (0..2); deterministic.
Image probe_picture(int c, int i);
/// `dir`/data with a folder per class, 6 pictures each (two of them in a subfolder); returns its path.
std::string make_probe_image_folder(const std::string& dir);

/// The whole content of a file ("" when it cannot be read).
std::string read_text(const std::string& path);

#ifdef VITMSN_PROGRAM_DIR
/// Runs one of the built programs: `args` starts with its name, e.g. "vitmsn-extract --help".
inline ProgramRun run(const std::string& args) { return run_command(std::string(VITMSN_PROGRAM_DIR) + "/" + args); }
#endif

}  // namespace vitmsn::test
