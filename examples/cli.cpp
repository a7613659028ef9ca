// The definitions of cli.hpp (see there): compiled once into vitmsn_cli, the programs' static library.
#include "cli.hpp"

#include <fcntl.h>
#include <sys/stat.h>
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
#include <string>
#include <utility>
#include <vector>

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

// --- Words and numbers -------------------------------------------------------------------------------

std::string count(std::size_t n, const std::string& noun, const std::string& plural) {
  return std::to_string(n) + " " + (n == 1 ? noun : plural.empty() ? noun + "s" : plural);
}

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%g", v);
  return b;
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

std::string sidecar_path(const std::string& output) {
  return output.substr(0, output.find_last_of('.')) + ".files.txt";
}

std::string join(const std::vector<std::string>& items, const std::string& separator) {
  std::string s;
  for (const auto& x : items) s += (s.empty() ? "" : separator) + x;
  return s;
}

std::string join_first(const std::vector<std::string>& items, std::size_t n) {
  const std::vector<std::string> first(items.begin(), items.begin() + std::min(n, items.size()));
  return join(first, ", ") + (items.size() > n ? ", …" : "");
}

// --- The command line --------------------------------------------------------------------------------

std::string usage_text(const Spec& spec) {
  std::string text = spec.usage;
  const std::string key = "@EXTENSIONS@";
  if (const auto at = text.find(key); at != std::string::npos)
    text.replace(at, key.size(), join(image_file_extensions(), " "));
  return text;
}

std::string version_text(const Spec& spec) {
  return std::string(spec.name) + " (vitmsn " + kVersionString + "): kernels " + kernel_isa() + ", JPEG decoder " +
         jpeg_decoder_name() + "\n";
}

namespace {
bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}
}  // namespace

Args::Args(int argc, char** argv, const Spec& spec) {
  auto flags = spec.flags;
  flags.insert(flags.end(), {"--help", "--version"});
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--") {
      for (++i; i < argc; ++i) positional_.push_back(argv[i]);
      break;
    }
    if (a.size() > 1 && a[0] == '-' && !std::isdigit(static_cast<unsigned char>(a[1]))) {
      std::string name = a, value;
      bool has_value = false;
      if (auto eq = a.find('='); eq != std::string::npos) {
        name = a.substr(0, eq);
        value = a.substr(eq + 1);
        has_value = true;
      }
      if (name == "-h") name = "--help";
      if (values_.count(name) && !contains(repeatable(), name) && name != "--help" && name != "--version")
        throw UsageError("option " + name + " is given twice" +
                         (contains(flags, name) ? std::string()
                                                : " ('" + values_[name].back() + "', then '" +
                                                      (has_value      ? value
                                                       : i + 1 < argc ? argv[i + 1]
                                                                      : "") +
                                                      "')") +
                         "; give it once");
      if (contains(flags, name)) {
        if (has_value) throw UsageError("option " + name + " takes no value");
        values_[name].push_back("");
      } else if (contains(spec.with_value, name)) {
        if (!has_value) {
          if (i + 1 >= argc) throw UsageError("option " + name + " needs a value");
          value = argv[++i];
        }
        values_[name].push_back(value);
      } else {
        throw UsageError("unknown option " + name);
      }
    } else {
      positional_.push_back(a);
    }
  }
}

std::string Args::get(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second.back();
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int Args::get_int(const std::string& name, int fallback, int min, int max) const {
  if (!has(name)) return fallback;
  const std::string v = get(name);
  char* end = nullptr;
  errno = 0;
  const long n = std::strtol(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || n < min || n > max)
    throw UsageError("option " + name + " needs an integer in " + std::to_string(min) + ".." + std::to_string(max) +
                     ", got '" + v + "'");
  return static_cast<int>(n);
}

double Args::get_double(const std::string& name, double fallback, double min, double max, bool open) const {
  if (!has(name)) return fallback;
  const std::string v = get(name);
  char* end = nullptr;
  errno = 0;
  const double x = std::strtod(v.c_str(), &end);
  const bool inside = open ? x > min && x < max : x >= min && x <= max;
  if (v.empty() || *end || errno || !inside)
    throw UsageError("option " + name + " needs a number in " + (open ? "(" : "[") + number(min) + ", " +
                     (std::isinf(max) ? std::string("inf") : number(max)) + (open ? ")" : "]") + ", got '" + v + "'");
  return x;
}

const std::vector<std::string>& Args::repeatable() {
  static const std::vector<std::string> r = {"--list", "--pixel-values"};
  return r;
}

void Args::conflict(const std::string& a, const std::string& b, const std::string& why) const {
  if (has(a) && has(b)) throw UsageError("options " + a + " and " + b + " conflict: " + why);
}

void Args::expect_no_positional() const {
  if (!positional_.empty()) throw UsageError("unexpected argument '" + positional_[0] + "'");
}

std::string Args::required(const std::string& name, const std::string& what) const {
  if (!has(name)) throw UsageError(what + " is required");
  return get(name);
}

// --- Interruption ------------------------------------------------------------------------------------

std::atomic<bool>& interrupted() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {
std::atomic<bool>& graceful_interrupts() {
  static std::atomic<bool> on{false};
  return on;
}

/// SIGINT/SIGTERM. Graceful mode, first signal: set interrupted() and let the loop finish its item.
/// Otherwise (no loop to stop, or a second signal): remove the temporary files of the outputs being
/// written, say so, and die of the signal, so the caller sees the usual exit status. Only
/// async-signal-safe calls.
void on_interrupt(int sig) {
  if (graceful_interrupts().load() && !interrupted().exchange(true)) {
    static const char msg[] = "\nstopping after the current item (interrupt again to stop at once)\n";
    (void)!::write(2, msg, sizeof msg - 1);
    return;
  }
  const int removed = vitmsn::remove_unfinished_outputs() + remove_staged_files();
  static const char msg[] = "\ninterrupted: stopped at once; no output was left half-written\n";
  static const char msg_removed[] =
      "\ninterrupted: stopped at once; unfinished output removed, nothing half-written left\n";
  if (removed > 0) {
    (void)!::write(2, msg_removed, sizeof msg_removed - 1);
  } else {
    (void)!::write(2, msg, sizeof msg - 1);
  }
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

void install_on_interrupt(bool graceful) {
  graceful_interrupts().store(graceful);
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
}
}  // namespace

void install_immediate_interrupt_handler() { install_on_interrupt(false); }

void install_interrupt_handler() { install_on_interrupt(true); }

int run_main(int argc, char** argv, const Spec& spec, const std::function<int(const Args&)>& body) {
  install_immediate_interrupt_handler();
  try {
    const Args args(argc, argv, spec);
    if (args.has("--help")) {
      std::fputs(usage_text(spec).c_str(), stdout);
      return 0;
    }
    if (args.has("--version")) {
      std::fputs(version_text(spec).c_str(), stdout);
      return 0;
    }
    return body(args);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n(%s --help lists the options)\n", e.what(), spec.name);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// --- Checks made before any work ---------------------------------------------------------------------

bool file_exists(const std::string& p) { return ::access(p.c_str(), F_OK) == 0; }

void check_output(const std::string& option, const std::string& path, const std::vector<std::string>& extensions,
                  bool force) {
  namespace fs = std::filesystem;
  const std::string ext = lower(fs::path(path).extension().string());
  if (std::find(extensions.begin(), extensions.end(), ext) == extensions.end())
    throw UsageError(option + " " + path + ": the name must end in " + join(extensions, " or ") + ", the " +
                     (extensions.size() == 1 ? "format" : "formats") + " written (" +
                     (ext.empty() ? std::string("it has no extension") : "not " + ext) + ")");
  std::error_code ec;
  if (fs::is_directory(path, ec)) throw Error(path + ": is a folder; give " + option + " a file name");
  const fs::path parent = fs::path(path).parent_path();
  const std::string folder = parent.empty() ? "." : parent.string();
  if (!fs::exists(folder, ec)) throw Error(path + ": the folder " + folder + " does not exist");
  if (!fs::is_directory(folder, ec)) throw Error(path + ": " + folder + " is not a folder");
  // Try what the writer will do: create a file in that folder (and remove it at once).
  const std::string probe =
      (parent.empty() ? fs::path(".") : parent) / (".vitmsn-write-check." + std::to_string(::getpid()));
  const int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_EXCL, 0600);
  if (fd < 0 && errno != EEXIST)
    throw Error(path + ": cannot create files in the folder " + folder + ": " + std::strerror(errno));
  if (fd >= 0) {
    ::close(fd);
    ::unlink(probe.c_str());
  }
  if (!force && file_exists(path)) throw Error(path + ": already exists (use --force to overwrite)");
}

std::pair<int, int> parse_size(const std::string& s, const std::string& option) {
  const auto x = s.find_first_of("xX");
  auto bad = [&] { return UsageError("option " + option + " needs HEIGHTxWIDTH (e.g. 224x224), got '" + s + "'"); };
  if (x == std::string::npos || x == 0 || x + 1 == s.size() || x > 9 || s.size() - x - 1 > 9) throw bad();
  for (std::size_t i = 0; i < s.size(); ++i)
    if (i != x && !std::isdigit(static_cast<unsigned char>(s[i]))) throw bad();
  return {std::atoi(s.substr(0, x).c_str()), std::atoi(s.substr(x + 1).c_str())};
}

std::pair<int, int> input_size(const Args& args, const std::string& option, const Config& config) {
  const auto [h, w] = parse_size(args.get(option), option);
  try {
    check_input_size(config, h, w);
  } catch (const Error& e) {
    throw UsageError("option " + option + " " + e.what());
  }
  return {h, w};
}

std::pair<int, int> fixed_output_size(const Preprocessor& pre) {
  const PreprocessorConfig& c = pre.config();
  if (c.do_center_crop) return {c.crop_height, c.crop_width};
  if (c.do_resize && c.shortest_edge == 0) return {c.height, c.width};
  return {0, 0};
}

void check_preprocessor_size(const Preprocessor& pre, const std::string& file, const Config& config) {
  const auto [h, w] = fixed_output_size(pre);
  if (h <= 0 || w <= 0) return;
  try {
    check_input_size(config, h, w);
  } catch (const Error& e) {
    throw UsageError("--preprocessor " + file + " makes images of " + e.what() +
                     " (change its size/crop_size, or give --size HxW)");
  }
}

Compute parse_compute(const Args& args) {
  try {
    return vitmsn::parse_compute(args.get("--compute", "auto"));
  } catch (const Error& e) {
    throw UsageError(std::string("--") + e.what());  // "--compute must be 'auto', 'f32' or 'bf16', got …"
  }
}

// --- Inputs ------------------------------------------------------------------------------------------

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path + ": read error");
  return bytes;
}

std::string file_kind(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return "a folder";
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  std::string b(4096, '\0');
  in.read(&b[0], static_cast<std::streamsize>(b.size()));
  b.resize(static_cast<std::size_t>(in.gcount()));
  auto starts = [&](const char* magic, std::size_t n) { return b.size() >= n && b.compare(0, n, magic, n) == 0; };
  if (starts("\x89PNG", 4)) return "a PNG image";
  if (starts("\xff\xd8\xff", 3)) return "a JPEG image";
  if (starts("GIF8", 4)) return "a GIF image";
  if (starts("RIFF", 4) && b.size() >= 12 && b.compare(8, 4, "WEBP") == 0) return "a WebP image";
  if (starts("II*\0", 4) || starts("MM\0*", 4)) return "a TIFF image";
  if (starts("\x93NUMPY", 6)) return "a NumPy .npy array";
  if (starts("PK\x03\x04", 4)) return "a zip archive";
  if (b.size() >= 9 && b[8] == '{') {  // safetensors: 8-byte little-endian header size, then JSON
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(b[i]);
    if (n >= 2 && n < (std::uint64_t{1} << 32)) return "a safetensors file";
  }
  if (starts("BM", 2) && b.find('\0') != std::string::npos) return "a BMP image";
  if (b.find('\0') != std::string::npos) return "a binary file";
  return "";
}

bool is_image_kind(const std::string& kind) { return ends_with(kind, " image"); }

const char* const kDecodedFormats = "PNG, JPEG, BMP, GIF, TGA, PSD, PNM";

namespace {

// Whether `b` starts like a TGA file stb_image takes (its stbi__tga_test): TGA has no signature, only
// a header whose colour map type, image type, size and bits per pixel must make sense.
bool tga_header(const unsigned char* b, std::size_t n) {
  if (n < 17 || b[1] > 1) return false;
  const bool mapped = b[1] == 1;
  const int type = b[2], bpp = b[16];
  if (mapped && ((type != 1 && type != 9) || (b[7] != 8 && b[7] != 15 && b[7] != 16 && b[7] != 24 && b[7] != 32)))
    return false;
  if (!mapped && type != 2 && type != 3 && type != 10 && type != 11) return false;
  if ((b[12] | b[13] << 8) < 1 || (b[14] | b[15] << 8) < 1) return false;  // width, height
  if (mapped && bpp != 8 && bpp != 16) return false;
  return bpp == 8 || bpp == 15 || bpp == 16 || bpp == 24 || bpp == 32;
}

}  // namespace

std::string not_an_image(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // O_NONBLOCK: a FIFO does not hang
  if (fd < 0) {
    const int e = errno;
    return e == ENOENT ? "does not exist" : std::string("cannot be read (") + std::strerror(e) + ")";
  }
  struct stat st {};
  unsigned char b[32];
  ssize_t n = -1;
  int e = 0;
  if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) {
    do n = ::read(fd, b, sizeof b);
    while (n < 0 && errno == EINTR);
    e = errno;
  }
  ::close(fd);
  if (S_ISDIR(st.st_mode)) return "is a folder";
  if (!S_ISREG(st.st_mode)) return "is not a regular file";
  if (n < 0) return std::string("cannot be read (") + std::strerror(e) + ")";
  if (n == 0) return "is empty";
  const auto size = static_cast<std::size_t>(n);
  auto starts = [&](const char* magic, std::size_t k) { return size >= k && std::memcmp(b, magic, k) == 0; };
  // The signatures decode_image() goes by (PNM: binary P5/P6 only); a match may still be corrupt.
  if (starts("\x89PNG", 4) || starts("\xff\xd8\xff", 3) || starts("GIF8", 4) || starts("8BPS", 4)) return "";
  // Two bytes are a weak signature: a safetensors header size can start with "BM" (its JSON at byte 8).
  const bool safetensors_like = size >= 9 && b[8] == '{';
  if ((starts("BM", 2) || starts("P5", 2) || starts("P6", 2)) && !safetensors_like) return "";
  // What people give by mistake is named (file_kind reads the file again: only for files refused).
  const std::string kind = file_kind(path);
  if (is_image_kind(kind)) return "is " + kind + " (vitmsn does not decode that format)";  // WebP, TIFF
  if (kind == "a zip archive") {
    const std::string ext = lower(std::filesystem::path(path).extension().string());
    return ext == ".bin" || ext == ".pt" || ext == ".pth" || ext == ".ckpt" ? "is a PyTorch checkpoint (a zip archive)"
                                                                            : "is a zip archive";
  }
  if (!kind.empty() && kind != "a binary file") return "is " + kind;  // safetensors, .npy
  if (tga_header(b, size)) return "";
  bool control = kind == "a binary file";  // NUL bytes, or other control bytes than blanks: not text
  for (std::size_t i = 0; i < size; ++i) control = control || ((b[i] < 0x20 || b[i] == 0x7f) && !std::isspace(b[i]));
  if (control) return "starts like none of them";
  std::string head;  // text from its first non-blank byte, lower case
  for (std::size_t i = 0; i < size; ++i)
    if (!std::isspace(b[i]) || !head.empty()) head += static_cast<char>(std::tolower(b[i]));
  if (!head.empty() && (head[0] == '{' || head[0] == '[')) return "is a JSON file";
  if (head.rfind("<!doctype html", 0) == 0 || head.rfind("<html", 0) == 0) return "is an HTML page";
  return "is a text file";
}

void check_image_file(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw Error(printable(path) + ": a folder, not an image; give one image file (nothing was run)");
  collect_images({path}, {});
}

void check_images(const std::vector<std::string>& images) {
  constexpr std::size_t kShown = 10;
  std::vector<std::string> shown;
  std::size_t n = 0;
  for (const auto& p : images) {
    const std::string why = not_an_image(p);
    if (why.empty()) continue;
    if (++n <= kShown) shown.push_back(printable(p) + " " + why);
  }
  if (n == 0) return;
  if (n > shown.size()) shown.push_back("and " + std::to_string(n - shown.size()) + " more");
  throw Error(count(n, "input is not an image", "inputs are not images") + " vitmsn decodes (" + kDecodedFormats +
              "): " + join(shown, "; ") + " (nothing was run)");
}

void check_list_file(const std::string& path, const std::string& option) {
  const std::string kind = file_kind(path);
  if (kind == "a folder")
    throw Error(option + " " + path +
                ": a folder, not a list file (one path per line); give the folder as an "
                "argument (without " +
                option + ") to read the images in it");
  if (!kind.empty())
    throw Error(option + " " + path + ": " + kind + ", not a list file (one path per line)" +
                (is_image_kind(kind) ? "; give images as arguments (without " + option + ")" : std::string()));
}

std::vector<std::string> read_list(const std::string& path, const std::string& option) {
  check_list_file(path, option);
  std::ifstream in(path);
  if (!in) throw Error(path + ": cannot read the list file: " + std::strerror(errno));
  std::vector<std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.pop_back();
    const auto first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    out.push_back(line.substr(first));
  }
  return out;
}

Preprocessor preprocessor_from_file(const std::string& path, const std::string& option) {
  const std::string kind = file_kind(path);
  if (!kind.empty())
    throw Error(option + " " + path + ": " + kind + ", not a preprocessor_config.json" +
                (is_image_kind(kind) ? "; give images as arguments (without " + option + ")" : std::string()));
  if (file_exists(path)) {
    const std::string text = read_file(path);
    auto has = [&](const char* key) { return text.find(std::string("\"") + key + "\"") != std::string::npos; };
    const bool model_keys = has("hidden_size") || has("num_hidden_layers");
    bool preprocessing_keys = false;
    for (const char* k :
         {"size", "crop_size", "do_resize", "do_center_crop", "do_rescale", "do_normalize", "image_mean", "image_std",
          "resample", "rescale_factor", "image_processor_type", "feature_extractor_type"})
      preprocessing_keys = preprocessing_keys || has(k);
    if (model_keys && !preprocessing_keys)
      throw Error(option + " " + path +
                  ": a model config (it has hidden_size/num_hidden_layers and no preprocessing keys), not a "
                  "preprocessor_config.json; give the preprocessor_config.json beside it, or leave " +
                  option + " out to use the model's own");
  }
  return Preprocessor::from_file(path);
}

bool is_image_file_name(const std::filesystem::path& p) {
  const auto& known = image_file_extensions();
  return std::find(known.begin(), known.end(), lower(p.extension().string())) != known.end();
}

std::string Skipped::notes(const std::string& folder) const {
  std::string s;
  if (!extensions.empty()) {
    std::size_t n = 0;
    std::vector<std::string> kinds;
    for (const auto& [ext, k] : extensions) {
      n += k;
      kinds.push_back(std::to_string(k) + " " + (ext.empty() ? "without extension" : ext));
    }
    s += "note: " + folder + ": skipped " + count(n, "file") + " of formats vitmsn does not decode (" +
         join(kinds, ", ") + "); it reads " + join(image_file_extensions(), " ") + "\n";
  }
  if (!hidden.empty())
    s += "note: " + folder + ": skipped " + count(hidden.size(), "hidden file or folder", "hidden files or folders") +
         " (" + join_first(hidden, 3) + ")\n";
  if (!top_level.empty())
    s += "note: " + folder + ": ignored " + count(top_level.size(), "image") + " outside the class folders (" +
         join_first(top_level, 3) + "); only images inside a class sub-folder are used\n";
  return s;
}

std::vector<std::string> scan_folder(const std::string& dir, Skipped& skipped) {
  namespace fs = std::filesystem;
  std::vector<std::string> found;
  std::error_code ec;
  std::vector<std::string> visited;  // canonical paths of the folders read
  if (const auto c = fs::canonical(dir, ec); !ec) visited.push_back(c.string());
  ec.clear();
  for (auto it = fs::recursive_directory_iterator(
           dir, fs::directory_options::skip_permission_denied | fs::directory_options::follow_directory_symlink, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code ec2;
    if (!name.empty() && name[0] == '.') {
      skipped.hidden.push_back(it->path().string());
      if (it->is_directory(ec2)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_directory(ec2)) {
      const auto c = fs::canonical(it->path(), ec2);
      if (ec2 || std::find(visited.begin(), visited.end(), c.string()) != visited.end()) {
        it.disable_recursion_pending();
      } else {
        visited.push_back(c.string());
      }
      continue;
    }
    if (!it->is_regular_file(ec2)) continue;
    if (is_image_file_name(it->path()))
      found.push_back(it->path().string());
    else
      ++skipped.extensions[lower(it->path().extension().string())];
  }
  if (ec) throw Error(dir + ": cannot list folder: " + ec.message());
  std::sort(found.begin(), found.end());
  return found;
}

std::string printable(const std::string& s) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) {
      out += "\\x";
      out += kHex[u >> 4];
      out += kHex[u & 15];
    } else {
      out += c;
    }
  }
  return out;
}

std::vector<std::string> collect_images(const std::vector<std::string>& arguments,
                                        const std::vector<std::string>& lists) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths = arguments;
  std::vector<std::string> from(arguments.size());  // the list file each path came from ("": an argument)
  for (const auto& list : lists) {
    const auto more = read_list(list);
    paths.insert(paths.end(), more.begin(), more.end());
    from.insert(from.end(), more.size(), list);
  }
  std::vector<std::string> images, missing, beside_list;
  for (std::size_t i = 0; i < paths.size(); ++i) {
    const std::string& p = paths[i];
    std::error_code ec;
    if (fs::is_directory(p, ec)) {
      Skipped skipped;
      const auto found = scan_folder(p, skipped);
      std::fputs(skipped.notes(p).c_str(), stderr);
      if (found.empty()) std::fprintf(stderr, "note: %s: no images in this folder\n", p.c_str());
      images.insert(images.end(), found.begin(), found.end());
    } else if (fs::exists(p, ec)) {
      images.push_back(p);
    } else {
      missing.push_back(printable(p));
      // A relative entry of a list that exists relative to the list's folder: the likely meaning.
      if (!from[i].empty() && fs::path(p).is_relative()) {
        const fs::path alt = fs::path(from[i]).parent_path() / p;
        if (!fs::path(from[i]).parent_path().empty() && fs::exists(alt, ec))
          beside_list.push_back(printable(alt.string()));
      }
    }
  }
  if (!missing.empty()) {
    throw Error(count(missing.size(), "input does not exist", "inputs do not exist") + ": " + join_first(missing, 5) +
                " (nothing was run)" +
                (beside_list.empty() ? std::string()
                                     : "; relative paths in a list are read from the current folder, not the list's "
                                       "folder; did you mean " +
                                           join_first(beside_list, 3) + "?"));
  }
  check_images(images);
  return images;
}

std::string default_model_path() {
  if (const char* env = std::getenv("VITMSN_MODEL"); env && *env) return env;
  for (const char* p : {"weights/vit-msn-large-7.safetensors", "weights/vit-msn-large-7"})
    if (file_exists(p)) return p;
  return "";
}

void check_model_file(const std::string& path, const std::string& what) {
  if (file_kind(path) != "a safetensors file") return;
  std::vector<std::string> names;
  try {
    names = SafetensorsFile::open(path).names();
  } catch (const Error&) {
    return;  // Model::load says what is wrong with it
  }
  const bool head_only = !names.empty() && std::all_of(names.begin(), names.end(), [](const std::string& n) {
    return n.rfind("classifier.", 0) == 0;
  });
  if (head_only)
    throw Error(what + " " + path +
                ": a classifier head (only classifier.weight and classifier.bias), not a model; merge it into the "
                "model it was trained on with: vitmsn-convert --add-classifier " +
                path + " MODEL OUT.safetensors, then use OUT.safetensors");
}

std::string model_path_or_throw(const Args& args) {
  if (args.has("--model")) {
    check_model_file(args.get("--model"), "--model");
    return args.get("--model");
  }
  std::string p = default_model_path();
  if (p.empty())
    throw UsageError(
        "no model: give --model PATH, set VITMSN_MODEL, or fetch the real weights with "
        "weights/fetch_vit_msn_large_7.sh");
  const char* env = std::getenv("VITMSN_MODEL");
  if (env && p == env) {
    std::error_code ec;
    if (!std::filesystem::exists(p, ec)) throw Error(p + ": no such model file or folder (from $VITMSN_MODEL)");
    check_model_file(p, "$VITMSN_MODEL");
  }
  return p;
}

// --- Progress ----------------------------------------------------------------------------------------

Progress::Progress(std::size_t total, std::string what)
    : total_(total), what_(std::move(what)), tty_(::isatty(2) == 1) {}

void Progress::start() {
  if (tty_) {
    draw("starting");
  } else {
    std::fprintf(stderr, "[0/%zu] %s: starting\n", total_, what_.c_str());
  }
  std::fflush(stderr);
}

void Progress::step(const std::string& item) {
  ++done_;
  const double s = elapsed();
  const double rate = s > 0 ? done_ / s : 0.0;
  const std::string eta = rate > 0 ? clock((total_ - done_) / rate) : "-:--:--";
  char line[64];
  std::snprintf(line, sizeof line, "%.2f/s  ETA %s", rate, eta.c_str());
  if (tty_) {
    draw(line);
    if (done_ == total_) std::fprintf(stderr, "\n");
  } else {
    std::fprintf(stderr, "[%zu/%zu] %s (%.2f %s/s, ETA %s)\n", done_, total_, item.c_str(), rate, what_.c_str(),
                 eta.c_str());
  }
  std::fflush(stderr);
}

void Progress::clear() {
  if (tty_) std::fprintf(stderr, "\r\033[K");
}

void Progress::break_line() {
  if (tty_ && done_ < total_) std::fprintf(stderr, "\n");
}

double Progress::elapsed() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
}

void Progress::draw(const std::string& tail) {
  const int width = 30;
  const int filled = total_ ? static_cast<int>(width * done_ / total_) : width;
  std::fprintf(stderr, "\r[%s%s] %zu/%zu %s  %s   ", std::string(filled, '#').c_str(),
               std::string(width - filled, '.').c_str(), done_, total_, what_.c_str(), tail.c_str());
}

std::string Progress::clock(double s) {
  const long t = static_cast<long>(s + 0.5);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
  return buf;
}

}  // namespace vitmsn::cli
