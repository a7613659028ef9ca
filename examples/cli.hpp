#pragma once
// Small helpers shared by the vitmsn programs: argument parsing, the default model location, a
// progress line, interruption by SIGINT/SIGTERM. Programs print `error: …` and exit non-zero;
// the library itself never prints.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "vitmsn/error.hpp"
#include "vitmsn/io.hpp"

namespace vitmsn::cli {

/// A command-line mistake: printed as `error: …` with a hint to --help.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Options of the form `--name value`, `--name=value` and `--flag`; everything else is positional.
class Args {
 public:
  /// `with_value`: options that take a value; `flags`: options that don't.
  Args(int argc, char** argv, const std::vector<std::string>& with_value, const std::vector<std::string>& flags) {
    for (int i = 1; i < argc; ++i) {
      std::string a = argv[i];
      if (a == "--") {
        for (++i; i < argc; ++i) positional_.push_back(argv[i]);
        break;
      }
      if (a.size() > 1 && a[0] == '-' && !(a.size() > 1 && std::isdigit(static_cast<unsigned char>(a[1])))) {
        std::string name = a, value;
        bool has_value = false;
        if (auto eq = a.find('='); eq != std::string::npos) {
          name = a.substr(0, eq);
          value = a.substr(eq + 1);
          has_value = true;
        }
        if (name == "-h") name = "--help";
        if (contains(flags, name)) {
          if (has_value) throw UsageError("option " + name + " takes no value");
          values_[name].push_back("");
        } else if (contains(with_value, name)) {
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

  bool has(const std::string& name) const { return values_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& fallback = "") const {
    auto it = values_.find(name);
    return it == values_.end() ? fallback : it->second.back();
  }
  std::vector<std::string> all(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
  }
  int get_int(const std::string& name, int fallback, int min, int max) const {
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
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  static bool contains(const std::vector<std::string>& v, const std::string& s) {
    for (const auto& x : v)
      if (x == s) return true;
    return false;
  }
  std::map<std::string, std::vector<std::string>> values_;
  std::vector<std::string> positional_;
};

/// "HxW" → {H, W}. \throws UsageError.
inline std::pair<int, int> parse_size(const std::string& s, const std::string& option) {
  const auto x = s.find_first_of("xX");
  auto bad = [&] { return UsageError("option " + option + " needs HEIGHTxWIDTH (e.g. 224x224), got '" + s + "'"); };
  if (x == std::string::npos || x == 0 || x + 1 == s.size()) throw bad();
  char* end = nullptr;
  const long h = std::strtol(s.c_str(), &end, 10);
  if (end != s.c_str() + x) throw bad();
  const long w = std::strtol(s.c_str() + x + 1, &end, 10);
  if (*end || h < 1 || w < 1 || h > 16384 || w > 16384) throw bad();
  return {static_cast<int>(h), static_cast<int>(w)};
}

inline bool file_exists(const std::string& p) { return ::access(p.c_str(), F_OK) == 0; }

/// ASCII lower case.
inline std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

inline bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

/// The whole file as bytes. \throws vitmsn::Error naming `path` when it cannot be read.
inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw Error(path + ": read error");
  return bytes;
}

/// The extensions the programs take for images when they search folders (any case).
inline bool is_image_file_name(const std::filesystem::path& p) {
  static const std::set<std::string> kImageExtensions = {".png", ".jpg", ".jpeg", ".bmp", ".gif",
                                                         ".tga", ".ppm", ".pgm",  ".pnm"};
  return kImageExtensions.count(lower(p.extension().string())) != 0;
}

/// Where the programs look for the model when --model is not given: $VITMSN_MODEL, then
/// weights/vit-msn-large-7.safetensors (what weights/fetch_vit_msn_large_7.sh writes), relative to the
/// working directory. Empty when none exists.
inline std::string default_model_path() {
  if (const char* env = std::getenv("VITMSN_MODEL"); env && *env) return env;
  for (const char* p : {"weights/vit-msn-large-7.safetensors", "weights/vit-msn-large-7"})
    if (file_exists(p)) return p;
  return "";
}

inline std::string model_path_or_throw(const Args& args) {
  if (args.has("--model")) return args.get("--model");
  std::string p = default_model_path();
  if (p.empty())
    throw UsageError(
        "no model: give --model PATH, set VITMSN_MODEL, or fetch the real weights with "
        "weights/fetch_vit_msn_large_7.sh");
  return p;
}

/// Set by SIGINT/SIGTERM once install_interrupt_handler() was called; long loops check it and
/// stop cleanly after the current item.
inline std::atomic<bool>& interrupted() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace detail {
inline std::atomic<bool>& graceful_interrupts() {
  static std::atomic<bool> on{false};
  return on;
}

/// SIGINT/SIGTERM. Graceful mode, first signal: set interrupted() and let the loop finish its item.
/// Otherwise (no loop to stop, or a second signal): remove the temporary files of the outputs being
/// written, say so, and die of the signal, so the caller sees the usual exit status. Only
/// async-signal-safe calls.
inline void on_interrupt(int sig) {
  if (graceful_interrupts().load() && !interrupted().exchange(true)) {
    static const char msg[] = "\nstopping after the current item (interrupt again to stop at once)\n";
    (void)!::write(2, msg, sizeof msg - 1);
    return;
  }
  const int removed = vitmsn::remove_unfinished_outputs();
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

inline void install_on_interrupt(bool graceful) {
  graceful_interrupts().store(graceful);
  std::signal(SIGINT, on_interrupt);
  std::signal(SIGTERM, on_interrupt);
}
}  // namespace detail

/// Every program: SIGINT/SIGTERM stop it at once without leaving a partial output (run_main
/// installs this).
inline void install_immediate_interrupt_handler() { detail::install_on_interrupt(false); }

/// Programs with a long loop: the first SIGINT/SIGTERM sets interrupted() and the loop stops after
/// its current item; a second one stops at once.
inline void install_interrupt_handler() { detail::install_on_interrupt(true); }

/// Progress of a loop over items: a self-rewriting line with rate and ETA on a terminal, plain lines
/// otherwise (logs, pipes).
class Progress {
 public:
  Progress(std::size_t total, std::string what) : total_(total), what_(std::move(what)), tty_(::isatty(2) == 1) {}

  void step(const std::string& item) {
    ++done_;
    const double s = elapsed();
    const double rate = s > 0 ? done_ / s : 0.0;
    const double eta = rate > 0 ? (total_ - done_) / rate : 0.0;
    if (tty_) {
      const int width = 30;
      const int filled = total_ ? static_cast<int>(width * done_ / total_) : width;
      std::fprintf(stderr, "\r[%s%s] %zu/%zu %s  %.2f/s  ETA %s   ", std::string(filled, '#').c_str(),
                   std::string(width - filled, '.').c_str(), done_, total_, what_.c_str(), rate, clock(eta).c_str());
      if (done_ == total_) std::fprintf(stderr, "\n");
    } else {
      std::fprintf(stderr, "[%zu/%zu] %s (%.2f %s/s)\n", done_, total_, item.c_str(), rate, what_.c_str());
    }
    std::fflush(stderr);
  }
  /// Ends a half-drawn terminal line (before printing an error or a summary).
  void break_line() {
    if (tty_ && done_ < total_) std::fprintf(stderr, "\n");
  }
  double elapsed() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count(); }

 private:
  static std::string clock(double s) {
    const long t = static_cast<long>(s + 0.5);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", t / 3600, t / 60 % 60, t % 60);
    return buf;
  }
  std::size_t total_, done_ = 0;
  std::string what_;
  bool tty_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

/// Runs `body`, printing `error: …` for exceptions; returns the process exit status.
inline int run_main(const char* usage, const std::function<int()>& body) {
  install_immediate_interrupt_handler();
  try {
    return body();
  } catch (const UsageError& e) {
    std::fprintf(stderr, "error: %s\n%s", e.what(), usage);
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

}  // namespace vitmsn::cli
