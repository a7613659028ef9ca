#include "run_output.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>

#include "base/file_util.hpp"
#include "formats/io.hpp"
#include "formats/sha256.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn::cli {

namespace fs = std::filesystem;
using json = nlohmann::ordered_json;

// --- Paths in JSON -----------------------------------------------------------------------------------

namespace {

bool valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int extra = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + static_cast<std::size_t>(extra) >= s.size()) return false;
    for (int k = 1; k <= extra; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) || (extra == 3 && cp < 0x10000) || cp > 0x10FFFF ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += extra + 1;
  }
  return true;
}

std::string to_hex(const std::string& bytes) {
  static const char* d = "0123456789abcdef";
  std::string h;
  for (const unsigned char c : bytes) {
    h += d[c >> 4];
    h += d[c & 15];
  }
  return h;
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

json path_to_json(const std::string& path) {
  if (valid_utf8(path)) return path;
  return json{{"hex", to_hex(path)}};
}

std::string path_from_json(const json& j) {
  if (j.is_string()) return j.get<std::string>();
  if (j.is_object() && j.size() == 1 && j.contains("hex") && j["hex"].is_string()) {
    const std::string h = j["hex"].get<std::string>();
    auto nibble = [](char c) -> int {
      return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    };
    if (h.size() % 2) throw Error("a file name in hex ('" + h + "') has an odd number of digits");
    std::string out;
    for (std::size_t i = 0; i < h.size(); i += 2) {
      const int a = nibble(h[i]), b = nibble(h[i + 1]);
      if (a < 0 || b < 0) throw Error("a file name in hex ('" + h + "') is not hexadecimal");
      out += static_cast<char>(a * 16 + b);
    }
    return out;
  }
  throw Error("a file name is neither a string nor {\"hex\": …}");
}

json paths_to_json(const std::vector<std::string>& paths) {
  json a = json::array();
  for (const auto& p : paths) a.push_back(path_to_json(p));
  return a;
}

std::vector<std::string> paths_from_json(const json& j, const std::string& what) {
  if (!j.is_array()) throw Error(what + " is not a list");
  std::vector<std::string> out;
  out.reserve(j.size());
  for (const auto& x : j) out.push_back(path_from_json(x));
  return out;
}

std::string list_sha256(const std::vector<std::string>& names) {
  detail::Sha256 h;
  for (const auto& n : names) {
    h.update(n);
    h.update("", 1);
  }
  return h.hex();
}

std::string file_sha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + errno_text());
  detail::Sha256 h;
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) h.update(buf.data(), static_cast<std::size_t>(in.gcount()));
  }
  if (in.bad()) throw Error(path + ": read error");
  return h.hex();
}

// --- What made an output -----------------------------------------------------------------------------

namespace {

// weights_dtype() of a file already open.
std::string weights_dtype_of(const SafetensorsFile& f) {
  if (auto it = f.metadata().find("dtype"); it != f.metadata().end() && !it->second.empty()) return it->second;
  for (const auto& name : f.names())
    if (name.find("intermediate.dense.weight") != std::string::npos) return dtype_name(f.get(name).dtype);
  return "";
}

}  // namespace

std::string weights_dtype(const std::string& model_file) { return weights_dtype_of(SafetensorsFile::open(model_file)); }

json model_manifest(const Model& model) {
  json m;
  m["path"] = path_to_json(model.source());
  m["backbone_sha256"] = backbone_identity(model.source());
  const SafetensorsFile f = SafetensorsFile::open(model.source());
  m["dtype"] = weights_dtype_of(f);
  m["compute"] = model.compute();
  m["hidden_size"] = model.config().hidden_size;
  m["num_hidden_layers"] = model.config().num_hidden_layers;
  if (model.has_classifier()) {
    detail::Sha256 h;
    for (const char* name : {"classifier.weight", "classifier.bias"}) {
      const TensorView& t = f.get(name);
      h.update(name);
      h.update(t.shape_string());
      h.update(t.data, t.nbytes);
    }
    m["classifier_sha256"] = h.hex();
  } else {
    m["classifier_sha256"] = nullptr;
  }
  return m;
}

json settings_of(const json& manifest) {
  json s = manifest;
  for (const char* k : {"inputs", "rows", "failed", "shard", "files", "part", "merged_from"}) s.erase(k);
  if (s.contains("model") && s["model"].is_object()) s["model"].erase("path");
  return s;
}

namespace {

void flatten(const json& j, const std::string& prefix, std::map<std::string, std::string>& out) {
  if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it)
      flatten(it.value(), prefix.empty() ? it.key() : prefix + "." + it.key(), out);
  } else {
    out[prefix] = j.is_string() ? j.get<std::string>() : j.dump(-1, ' ', false, json::error_handler_t::replace);
  }
}

}  // namespace

std::vector<std::string> settings_differences(const json& then, const json& now, const std::string& then_name,
                                              const std::string& now_name) {
  std::map<std::string, std::string> a, b;
  flatten(settings_of(then), "", a);
  flatten(settings_of(now), "", b);
  std::vector<std::string> out;
  auto shown = [](const std::map<std::string, std::string>& m, const std::string& k) {
    auto it = m.find(k);
    if (it == m.end()) return std::string("(none)");
    std::string v = it->second;
    if (v.size() == 64 && v.find_first_not_of("0123456789abcdef") == std::string::npos) v = v.substr(0, 12) + "…";
    if (v.size() > 80) v = v.substr(0, 77) + "…";
    return v;
  };
  std::map<std::string, bool> keys;
  for (const auto& [k, v] : a) keys[k] = true;
  for (const auto& [k, v] : b) keys[k] = true;
  for (const auto& [k, unused] : keys) {
    auto x = a.find(k), y = b.find(k);
    if (x != a.end() && y != b.end() && x->second == y->second) continue;
    out.push_back(k + ": " + shown(a, k) + " (" + then_name + ") vs " + shown(b, k) + " (" + now_name + ")" +
                  (k == "kernels" ? " [the kernels of each CPU round differently; VITMSN_ISA=" + shown(a, k) +
                                        " makes every run use the same]"
                                  : ""));
  }
  return out;
}

json read_manifest(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(path + ": cannot open: " + errno_text());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("vitmsn_manifest"))
    throw Error(path + ": not a vitmsn manifest (a JSON object with \"vitmsn_manifest\")");
  if (!j["vitmsn_manifest"].is_number_integer() || j["vitmsn_manifest"].get<int>() != kManifestVersion)
    throw Error(path + ": manifest version " + j["vitmsn_manifest"].dump() + "; this vitmsn reads version " +
                std::to_string(kManifestVersion));
  return j;
}

std::string manifest_path(const std::string& output) {
  return output.substr(0, output.find_last_of('.')) + ".manifest.json";
}

void verify_unit(const json& manifest, const std::string& manifest_file, const std::string& output,
                 const std::string& list) {
  auto check = [&](const char* key, const std::string& path) {
    if (!manifest.contains("files") || !manifest["files"].contains(key))
      throw Error(manifest_file + ": records no " + key + " file");
    const json& f = manifest["files"][key];
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) throw Error(path + ": missing (" + ec.message() + "), though " + manifest_file + " lists it");
    const std::string sha = file_sha256(path);
    if (!f.contains("sha256") || f["sha256"] != sha || !f.contains("bytes") || f["bytes"] != size)
      throw Error(path + ": does not match " + manifest_file +
                  " (its SHA-256 or size differs: the file was changed or comes from another run); "
                  "redo the run with --force, or restore the files written together");
  };
  check("features", output);
  if (!list.empty()) check("list", list);
}

// --- One writer per output ---------------------------------------------------------------------------

std::string lock_path(const std::string& output) { return output.substr(0, output.find_last_of('.')) + ".lock"; }

namespace {

std::string host_name() {
  char h[256] = {0};
  if (::gethostname(h, sizeof h - 1) != 0) return "?";
  return h;
}

std::string now_text() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char b[64];
  std::strftime(b, sizeof b, "%Y-%m-%d %H:%M:%S %z", &tm);
  return b;
}

std::string read_fd(int fd) {
  std::string s;
  char buf[512];
  ::lseek(fd, 0, SEEK_SET);
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0 && s.size() < 4096;) s.append(buf, static_cast<std::size_t>(n));
  return s;
}

// "pid 123 on host, started …" from a lock file's JSON; the raw text when it is not ours.
std::string describe_owner(const std::string& text) {
  const json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("pid")) return "unknown owner";
  std::string s = j.value("program", std::string("a vitmsn program")) + " (pid " + j["pid"].dump();
  if (j.contains("host") && j["host"].is_string()) s += " on " + j["host"].get<std::string>();
  if (j.contains("started") && j["started"].is_string()) s += ", started " + j["started"].get<std::string>();
  return s + ")";
}

}  // namespace

OutputLock::OutputLock(const std::string& lock_file, const std::string& output, std::string* note) : path_(lock_file) {
  if (note) note->clear();
  for (int attempt = 0; attempt < 10; ++attempt) {
    const int fd = ::open(path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) throw Error(path_ + ": cannot create the lock file for " + output + ": " + errno_text());
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      const int err = errno;
      const std::string owner = describe_owner(read_fd(fd));
      ::close(fd);
      if (err == EWOULDBLOCK)
        throw Error(output + ": another run is writing it: " + owner + " holds " + path_ +
                    "; wait for it to finish, or give this run another --output");
      throw Error(path_ + ": cannot lock: " + std::strerror(err));
    }
    // The file may have been removed (and another made) between open and flock by a run that was
    // finishing: hold the lock only on the file that is at the path now.
    struct stat a {
    }, b{};
    if (::fstat(fd, &a) != 0 || ::stat(path_.c_str(), &b) != 0 || a.st_ino != b.st_ino || a.st_dev != b.st_dev) {
      ::close(fd);
      continue;
    }
    const std::string previous = read_fd(fd);
    if (!previous.empty() && note)
      *note = "note: " + output + ": the run that last wrote it ended without finishing (" + describe_owner(previous) +
              " is no longer running); this run takes over";
    const json me = {{"program", std::string(program_invocation_short_name)},
                     {"pid", static_cast<long>(::getpid())},
                     {"host", host_name()},
                     {"started", now_text()},
                     {"output", path_to_json(output)}};
    const std::string text = me.dump(1) + "\n";
    if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) {
      const std::string why = errno_text();
      ::close(fd);
      throw Error(path_ + ": cannot write the lock file: " + why);
    }
    fd_ = fd;
    return;
  }
  throw Error(path_ + ": the lock file keeps being replaced; is another run starting and stopping?");
}

OutputLock::OutputLock(OutputLock&& o) noexcept : path_(std::move(o.path_)), fd_(o.fd_) { o.fd_ = -1; }

OutputLock& OutputLock::operator=(OutputLock&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    fd_ = o.fd_;
    o.fd_ = -1;
  }
  return *this;
}

OutputLock::~OutputLock() { release(); }

void OutputLock::release() noexcept {
  if (fd_ < 0) return;
  // Unlink while holding the lock, then close: a run that opened the old file finds it gone (the
  // inode check above) and opens a new one.
  ::unlink(path_.c_str());
  ::close(fd_);
  fd_ = -1;
}

// --- Committing ---------------------------------------------------------------------------------------

std::string staging_path(const std::string& final_path) {
  const fs::path p(final_path);
  return (p.parent_path() / ("." + p.filename().string() + ".staged-" + std::to_string(::getpid()))).string();
}

namespace {

// Renames `from` onto `to` unless `to` exists. 0, or an errno value.
int rename_no_replace(const std::string& from, const std::string& to) {
  if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return errno;
  // No RENAME_NOREPLACE on this file system: link(2) fails when `to` exists.
  if (::link(from.c_str(), to.c_str()) != 0) return errno;
  ::unlink(from.c_str());
  return 0;
}

constexpr int kStagedSlots = 16;
struct StagedSlot {
  std::atomic<int> used{0};
  char path[4096];
};
StagedSlot g_staged[kStagedSlots];

}  // namespace

void commit_staged(const std::vector<std::pair<std::string, std::string>>& staged, bool replace) {
  for (std::size_t i = 0; i < staged.size(); ++i) {
    const auto& [from, to] = staged[i];
    const int err = replace ? (::rename(from.c_str(), to.c_str()) == 0 ? 0 : errno) : rename_no_replace(from, to);
    if (err == 0) {
      forget_staged(from);
      continue;
    }
    for (std::size_t k = i; k < staged.size(); ++k) {
      ::unlink(staged[k].first.c_str());
      forget_staged(staged[k].first);
    }
    if (err == EEXIST)
      throw Error(to + ": appeared while this run was working (another program wrote it); not replaced");
    throw Error(to + ": cannot rename " + from + " onto it: " + std::strerror(err));
  }
}

void write_unit(const std::string& output, const std::string& list, const std::string& manifest_file, json manifest,
                const std::vector<std::string>& rows, const std::vector<std::string>& failed,
                const std::function<void(const std::string&)>& write_features, bool replace) {
  const std::string features = staging_path(output), staged_list = list.empty() ? "" : staging_path(list),
                    man = staging_path(manifest_file);
  const std::vector<std::string> all = {features, staged_list, man};
  for (const auto& s : all)
    if (!s.empty()) register_staged(s);
  try {
    write_features(features);
    auto entry = [](const std::string& final_name, const std::string& staged) {
      return json{{"name", path_to_json(fs::path(final_name).filename().string())},
                  {"bytes", fs::file_size(staged)},
                  {"sha256", file_sha256(staged)}};
    };
    manifest["rows"] = paths_to_json(rows);
    manifest["failed"] = paths_to_json(failed);
    manifest["files"] = {{"features", entry(output, features)}};
    std::vector<std::pair<std::string, std::string>> staged = {{features, output}};
    if (!list.empty()) {
      std::string text;
      for (const auto& r : rows) text += r + "\n";
      write_text_file(staged_list, text);
      manifest["files"]["list"] = entry(list, staged_list);
      staged.emplace_back(staged_list, list);
    }
    write_text_file(man, manifest.dump(1) + "\n");
    staged.emplace_back(man, manifest_file);
    commit_staged(staged, replace);
  } catch (...) {
    for (const auto& s : all) {
      if (s.empty()) continue;
      std::remove(s.c_str());
      forget_staged(s);
    }
    throw;
  }
}

void register_staged(const std::string& path) {
  for (auto& s : g_staged) {
    int expected = 0;
    if (path.size() < sizeof s.path && s.used.compare_exchange_strong(expected, 1)) {
      std::memcpy(s.path, path.c_str(), path.size() + 1);
      s.used.store(2, std::memory_order_release);
      return;
    }
  }
}

void forget_staged(const std::string& path) {
  for (auto& s : g_staged)
    if (s.used.load(std::memory_order_acquire) == 2 && path == s.path) s.used.store(0, std::memory_order_release);
}

int remove_staged_files() noexcept {
  int n = 0;
  for (auto& s : g_staged)
    if (s.used.load(std::memory_order_acquire) == 2 && ::unlink(s.path) == 0) ++n;
  return n;
}

// --- Features streamed to disk ------------------------------------------------------------------------

std::uint64_t SpooledTensor::bytes() const {
  std::uint64_t n = 0;
  for (const auto& p : pieces) n += p.bytes;
  return n;
}

namespace {

std::atomic<std::int64_t> g_held{0}, g_peak_held{0};

// Held while a copy buffer exists: its bytes count as held.
struct HeldBuffer {
  std::vector<char> bytes;
  explicit HeldBuffer(std::size_t n) : bytes(n) { hold_bytes(static_cast<std::int64_t>(n)); }
  ~HeldBuffer() { hold_bytes(-static_cast<std::int64_t>(bytes.size())); }
};

// Appends the pieces' bytes to `out`, through `buffer`.
void copy_pieces(detail::AtomicFile& out, const std::vector<Piece>& pieces, HeldBuffer& buffer,
                 const std::string& path) {
  std::map<std::string, int> open_files;
  try {
    for (const Piece& p : pieces) {
      auto it = open_files.find(p.file);
      if (it == open_files.end()) {
        const int fd = ::open(p.file.c_str(), O_RDONLY | O_CLOEXEC);
        if (fd < 0) throw Error(path + ": cannot read " + p.file + ": " + errno_text());
        it = open_files.emplace(p.file, fd).first;
      }
      for (std::uint64_t done = 0; done < p.bytes;) {
        const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(p.bytes - done, buffer.bytes.size()));
        const ssize_t n = ::pread(it->second, buffer.bytes.data(), want, static_cast<off_t>(p.offset + done));
        if (n <= 0)
          throw Error(path + ": cannot read " + p.file + ": " + (n < 0 ? errno_text() : "it is shorter than expected"));
        out.write(buffer.bytes.data(), static_cast<std::size_t>(n));
        done += static_cast<std::uint64_t>(n);
      }
    }
  } catch (...) {
    for (const auto& [f, fd] : open_files) ::close(fd);
    throw;
  }
  for (const auto& [f, fd] : open_files) ::close(fd);
}

}  // namespace

void hold_bytes(std::int64_t delta) {
  const std::int64_t now = g_held.fetch_add(delta) + delta;
  std::int64_t peak = g_peak_held.load();
  while (now > peak && !g_peak_held.compare_exchange_weak(peak, now)) {
  }
}

std::uint64_t peak_held_bytes() { return static_cast<std::uint64_t>(std::max<std::int64_t>(0, g_peak_held.load())); }

Spool::Spool(const std::string& path) : path_(staging_path(path)) {
  register_staged(path_);
  fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) {
    forget_staged(path_);
    throw Error(path_ + ": cannot create: " + errno_text());
  }
}

Spool::~Spool() {
  if (fd_ >= 0) ::close(fd_);
  ::unlink(path_.c_str());
  forget_staged(path_);
}

Piece Spool::append(const void* data, std::size_t bytes) {
  Piece piece{path_, size_, bytes};
  const char* p = static_cast<const char*>(data);
  for (std::size_t done = 0; done < bytes;) {
    const ssize_t n = ::write(fd_, p + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) throw Error(path_ + ": cannot write: " + (n < 0 ? errno_text() : "no progress"));
    done += static_cast<std::size_t>(n);
  }
  size_ += bytes;
  return piece;
}

std::vector<SpooledTensor> write_spooled_safetensors(const std::string& path, const std::vector<SpooledTensor>& tensors,
                                                     const std::map<std::string, std::string>& metadata) {
  // The header write_safetensors() writes: tensors sorted by name, offsets in that order.
  std::vector<const SpooledTensor*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(),
            [](const SpooledTensor* a, const SpooledTensor* b) { return a->name < b->name; });
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const SpooledTensor& t = *order[i];
    if (t.name.empty() || t.name == "__metadata__") throw Error(path + ": invalid tensor name '" + t.name + "'");
    if (i && order[i - 1]->name == t.name) throw Error(path + ": duplicate tensor name '" + t.name + "'");
    std::uint64_t numel = 1;
    for (const auto d : t.shape) numel *= static_cast<std::uint64_t>(std::max<std::int64_t>(d, 0));
    if (numel * 4 != t.bytes())
      throw Error(path + ": tensor '" + t.name + "' has " + std::to_string(t.bytes()) + " bytes, not " +
                  std::to_string(numel * 4));
    header[t.name] = {{"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes()}}};
    offset += t.bytes();
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(static_cast<std::uint64_t>(h.size()) >> (8 * i));
  detail::AtomicFile out(path);
  out.write(len, 8);
  out.write(h.data(), h.size());
  HeldBuffer buffer(kCopyBufferBytes);
  std::vector<SpooledTensor> relocated;
  std::uint64_t at = 8 + h.size();
  for (const SpooledTensor* t : order) {
    copy_pieces(out, t->pieces, buffer, path);
    relocated.push_back({t->name, t->shape, {{path, at, t->bytes()}}});
    at += t->bytes();
  }
  out.commit();
  return relocated;
}

void write_spooled_npy(const std::string& path, const std::vector<std::int64_t>& shape,
                       const std::vector<Piece>& pieces) {
  std::uint64_t n = 0, bytes = 0;
  const std::string head = detail::npy_header(path, shape, &n);  // the header write_npy() writes
  for (const auto& p : pieces) bytes += p.bytes;
  if (bytes != n * 4)
    throw Error(path + ": " + std::to_string(bytes) + " bytes of values for " + std::to_string(n) + " floats");
  detail::AtomicFile out(path);
  out.write(head.data(), head.size());
  HeldBuffer buffer(kCopyBufferBytes);
  copy_pieces(out, pieces, buffer, path);
  out.commit();
}

std::vector<SpooledTensor> spooled_tensors_of(const std::string& path) {
  const SafetensorsFile f = SafetensorsFile::open(path);  // validated: offsets inside the file
  std::ifstream in(path, std::ios::binary);
  std::uint8_t len[8] = {};
  if (!in.read(reinterpret_cast<char*>(len), 8)) throw Error(path + ": cannot read its header");
  std::uint64_t header_bytes = 0;
  for (int i = 0; i < 8; ++i) header_bytes |= static_cast<std::uint64_t>(len[i]) << (8 * i);
  std::string text(static_cast<std::size_t>(header_bytes), '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(text.size()))) throw Error(path + ": cannot read its header");
  const nlohmann::json header = nlohmann::json::parse(text, nullptr, false);
  std::vector<SpooledTensor> out;
  for (const auto& name : f.names()) {
    const TensorView& v = f.get(name);
    if (v.dtype != DType::kF32) throw Error(path + ": tensor '" + name + "' is " + dtype_name(v.dtype) + ", not F32");
    const std::uint64_t begin = header.at(name).at("data_offsets").at(0).get<std::uint64_t>();
    out.push_back({name, v.shape, {{path, 8 + header_bytes + begin, v.nbytes}}});
  }
  return out;
}

// --- Test hooks ---------------------------------------------------------------------------------------

void test_pause_after_lock() {
  const char* fifo = std::getenv("VITMSN_TEST_PAUSE_AFTER_LOCK");
  if (!fifo || !*fifo) return;
  const int fd = ::open(fifo, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  char buf[64];
  while (::read(fd, buf, sizeof buf) > 0) {
  }
  ::close(fd);
}

}  // namespace vitmsn::cli
