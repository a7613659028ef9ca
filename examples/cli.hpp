#pragma once
// What the vitmsn programs share: the command line (options, --help, --version, usage errors), checks
// of outputs and sizes made before any work, the image inputs (files, folders, list files), the
// default model location, a progress line, and interruption by SIGINT/SIGTERM. Programs print
// `error: …` and exit non-zero; the library itself never prints. Declarations only: the definitions
// are in cli.cpp, compiled once into the programs' static library vitmsn_cli.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "formats/sha256.hpp"  // Sha256: internal (src/), for the programs that hash what they write
#include "run_output.hpp"
#include "vitmsn/config.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/version.hpp"

namespace vitmsn::cli {

/// A command-line mistake: printed as `error: …` and a pointer to --help, exit status 2.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// --- Words and numbers -------------------------------------------------------------------------------

/// "1 image", "2 images": `n` and the noun, plural unless n is 1 (`plural` for irregular ones).
std::string count(std::size_t n, const std::string& noun, const std::string& plural = "");

/// A number as a person writes it: 0.6, 1e-05, 100 (printf %g).
std::string number(double v);

/// ASCII lower case.
std::string lower(std::string s);

bool ends_with(const std::string& s, const std::string& tail);

/// The list written beside `output` naming its rows (vitmsn-extract, vitmsn-merge): `output` up to its
/// last '.', then ".files.txt" (OUT.npy -> OUT.files.txt; a name without '.' gets ".files.txt" appended).
std::string sidecar_path(const std::string& output);

/// `items` joined by `separator`.
std::string join(const std::vector<std::string>& items, const std::string& separator);

/// The first `n` of `items` joined by ", ", and ", …" when there are more.
std::string join_first(const std::vector<std::string>& items, std::size_t n);

// --- The command line --------------------------------------------------------------------------------

/// A program: its name, its --help text and the options it takes (--help and --version are implied).
/// In `usage`, "@EXTENSIONS@" stands for the image extensions folders are searched for.
struct Spec {
  const char* name;
  const char* usage;
  std::vector<std::string> with_value;  ///< options that take a value
  std::vector<std::string> flags;       ///< options that don't
};

/// The --help text of `spec`, placeholders filled in.
std::string usage_text(const Spec& spec);

/// What --version prints: the program, the library version and how this build computes and decodes.
std::string version_text(const Spec& spec);

/// Options of the form `--name value`, `--name=value` and `--flag`; everything else is positional.
class Args {
 public:
  /// \throws UsageError for an unknown option, a missing value, or a value given to a flag.
  Args(int argc, char** argv, const Spec& spec);

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const;
  std::vector<std::string> all(const std::string& name) const;
  /// The integer value of `name` in [min, max], or `fallback` when absent. \throws UsageError.
  int get_int(const std::string& name, int fallback, int min, int max) const;
  /// The number value of `name` in [min, max] (or (min, max) when `open`), or `fallback` when absent.
  /// \throws UsageError.
  double get_double(const std::string& name, double fallback, double min, double max, bool open = false) const;
  /// The options that may be given more than once (each adds to the list); every other option given
  /// twice is a usage error, so that `--output a --output b` does not silently keep one of them.
  static const std::vector<std::string>& repeatable();
  /// \throws UsageError when both `a` and `b` are given (`why`: what to do instead).
  void conflict(const std::string& a, const std::string& b, const std::string& why) const;
  const std::vector<std::string>& positional() const { return positional_; }
  /// \throws UsageError when there are positional arguments.
  void expect_no_positional() const;
  /// \throws UsageError when `name` is absent, saying it is required as `what` ("--output OUT").
  std::string required(const std::string& name, const std::string& what) const;

 private:
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

// --- Interruption ------------------------------------------------------------------------------------

/// Set by SIGINT/SIGTERM once install_interrupt_handler() was called; long loops check it and
/// stop cleanly after the current item.
std::atomic<bool>& interrupted();

/// Every program: SIGINT/SIGTERM stop it at once without leaving a partial output (run_main
/// installs this).
void install_immediate_interrupt_handler();

/// Programs with a long loop: the first SIGINT/SIGTERM sets interrupted() and the loop stops after
/// its current item; a second one stops at once.
void install_interrupt_handler();

/// Parses the command line, answers --help and --version, runs `body` and turns its exceptions into an
/// `error: …` line: exit status 2 for a usage error (with one line pointing to --help), 1 otherwise.
int run_main(int argc, char** argv, const Spec& spec, const std::function<int(const Args&)>& body);

// --- Checks made before any work ---------------------------------------------------------------------

bool file_exists(const std::string& p);

/// Checks, before any work, that `path` can be written as the output given by `option`: its extension
/// is one of `extensions` (lower case, e.g. ".npy"; any case accepted), it is not a folder, its folder
/// exists and takes new files, and it does not exist yet unless `force`.
/// \throws UsageError for the extension, Error for the rest.
void check_output(const std::string& option, const std::string& path, const std::vector<std::string>& extensions,
                  bool force);

/// "HxW" → {H, W}: the syntax only; check_input_size() judges the values. \throws UsageError.
std::pair<int, int> parse_size(const std::string& s, const std::string& option);

/// The input size given by `option` (HxW) checked against `config` before any image is read: patch
/// multiples and the token limit, with the nearest valid size when it is not one. \throws UsageError.
std::pair<int, int> input_size(const Args& args, const std::string& option, const Config& config);

/// The size every image comes out of `pre` at, when it is fixed (a centre crop, or a resize to
/// height x width); {0, 0} when it depends on the image (shortest_edge without crop, no resize).
std::pair<int, int> fixed_output_size(const Preprocessor& pre);

/// Checks, before any image, that the images `--preprocessor FILE` makes fit the model (patch
/// multiples, token limit). \throws UsageError naming the file and the nearest valid size.
void check_preprocessor_size(const Preprocessor& pre, const std::string& file, const Config& config);

/// --compute auto|f32|bf16 (LoadOptions::compute; default auto). \throws UsageError.
Compute parse_compute(const Args& args);

// --- Inputs ------------------------------------------------------------------------------------------

/// The whole file as bytes. \throws vitmsn::Error naming `path` when it cannot be read.
std::string read_file(const std::string& path);

/// What `path` is when it is a file people give to the wrong option, from its first bytes: "a folder",
/// "a PNG image", "a JPEG image", "a GIF image", "a BMP image", "a WebP image", "a TIFF image", "a
/// NumPy .npy array", "a safetensors file", "a zip archive", "a binary file" (NUL bytes); "" for
/// anything else (text, a file that cannot be read).
std::string file_kind(const std::string& path);

/// Whether file_kind() named an image.
bool is_image_kind(const std::string& kind);

/// The image formats vitmsn decodes, as a person names them: "PNG, JPEG, BMP, GIF, TGA, PSD, PNM".
extern const char* const kDecodedFormats;

/// Why `path` is not an image vitmsn decodes, from one open and a read of its first 32 bytes: "" when
/// it starts like one of kDecodedFormats (a signature, or for TGA, which has none, a header stb_image
/// takes) — it may still be corrupt, which decoding it finds —; else what it is, as a predicate:
/// "does not exist", "cannot be read (Permission denied)", "is a folder", "is not a regular file", "is
/// empty", "is a safetensors file", "is a NumPy .npy array", "is a PyTorch checkpoint (a zip archive)"
/// (.bin, .pt, .pth, .ckpt; else "is a zip archive"), "is a WebP image (vitmsn does not decode that
/// format)", "is a JSON file", "is an HTML page", "is a text file", "starts like none of them" (other
/// binary data). Never quotes the bytes.
std::string not_an_image(const std::string& path);

/// Checks, before any image, that every file of `images` starts like an image vitmsn decodes
/// (not_an_image(): 32 bytes read per file). \throws Error naming those that do not (at most 10, then
/// "and N more"), each with what it is, and the formats vitmsn reads.
void check_images(const std::vector<std::string>& images);

/// \throws Error when `path`, given to `option` as a list file, is a folder or not text.
void check_list_file(const std::string& path, const std::string& option);

/// The lines of a list file: one entry per line, surrounding blanks and `#` comment lines dropped.
/// \throws Error naming `path` (and `option`) when it cannot be read or is not a text file.
std::vector<std::string> read_list(const std::string& path, const std::string& option = "--list");

/// The settings of `--preprocessor PATH`, refusing before any work what is not a preprocessor config:
/// an image or other binary file, a folder, and a model's config.json (hidden_size or
/// num_hidden_layers and no preprocessing key). \throws Error naming the option and the file.
Preprocessor preprocessor_from_file(const std::string& path, const std::string& option = "--preprocessor");

/// Whether vitmsn decodes files of this name's extension (any case): image_file_extensions().
bool is_image_file_name(const std::filesystem::path& p);

/// What a folder scan passed over, and why.
struct Skipped {
  std::map<std::string, std::size_t> extensions;  ///< files of other formats, by extension ("" = none)
  std::vector<std::string> hidden;                ///< hidden files and folders (names starting with '.')
  std::vector<std::string> top_level;             ///< images at the top of an ImageFolder (vitmsn-probe)

  bool empty() const { return extensions.empty() && hidden.empty() && top_level.empty(); }
  /// One `note:` line per reason, e.g. "note: photos: skipped 2 files vitmsn does not decode (1 .webp,
  /// 1 .txt)"; "" when nothing was skipped.
  std::string notes(const std::string& folder) const;
};

/// The image files under `dir`, recursively, sorted: files whose extension vitmsn decodes, outside
/// hidden folders and not hidden themselves. Symbolic links to files and folders are followed, each
/// folder read once (a link back up the tree, or a second link to a folder already read, is passed
/// over). What is passed over is counted in `skipped`. \throws Error when the folder cannot be listed.
std::vector<std::string> scan_folder(const std::string& dir, Skipped& skipped);

/// `s` with control bytes (and DEL) written as \xNN, for messages that show names read from files.
std::string printable(const std::string& s);

/// The images a program is given: each argument a file (as given) or a folder (scanned, see
/// scan_folder; a note on stderr says what was skipped), then the entries of each `lists` file in
/// order. Every file is checked to exist and to start like an image (check_images) before any work.
/// \throws Error naming what is missing, or the files that are not images.
std::vector<std::string> collect_images(const std::vector<std::string>& arguments,
                                        const std::vector<std::string>& lists);

/// The one IMAGE of a program that takes a single image file (vitmsn-attention, vitmsn-demo), checked
/// before any work as collect_images() checks files: it is not a folder, exists, and starts like an
/// image vitmsn decodes. \throws Error saying which it is not.
void check_image_file(const std::string& path);

/// Where the programs look for the model when --model is not given: $VITMSN_MODEL, then
/// weights/vit-msn-large-7.safetensors (what weights/fetch_vit_msn_large_7.sh writes), relative to the
/// working directory. Empty when none exists.
std::string default_model_path();

/// \throws Error when `path`, given as a model by `what` ("--model", "INPUT"), is a classifier head
/// alone (classifier.weight and classifier.bias, as vitmsn-probe writes), saying what to do instead.
/// Other mistakes (an image, a .bin, …) are left to Model::load, which names them.
void check_model_file(const std::string& path, const std::string& what);

/// --model, else default_model_path(), checked by check_model_file(); a $VITMSN_MODEL that does not
/// exist is said to come from the variable. \throws UsageError when there is none.
std::string model_path_or_throw(const Args& args);

// --- Progress ----------------------------------------------------------------------------------------

/// Progress of a loop over items: a self-rewriting line with rate and ETA on a terminal, plain lines
/// otherwise (logs, pipes). start() shows the first line before the first item finishes.
class Progress {
 public:
  Progress(std::size_t total, std::string what);

  /// The first line, before any item is done (the first image of ViT-L/7 takes seconds).
  void start();
  void step(const std::string& item);
  /// Erases the terminal line, so that a message or result printed next stands alone (step() draws
  /// the line again).
  void clear();
  /// Ends a half-drawn terminal line (before printing an error or a summary).
  void break_line();
  double elapsed() const;

 private:
  void draw(const std::string& tail);
  static std::string clock(double s);
  std::size_t total_, done_ = 0;
  std::string what_;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

}  // namespace vitmsn::cli
