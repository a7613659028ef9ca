#pragma once
// What makes a program's output trustworthy over a long run (vitmsn-extract, vitmsn-merge): a
// manifest that records what made the output, one writer per output (a lock file beside it), and a
// commit that never replaces a file that appeared during the run.
//
// The manifest (OUT-without-extension.manifest.json, JSON, "vitmsn_manifest": 1) names the model
// (backbone identity, weight dtype, classifier), the kernels, the options that change the features,
// the job's input list (count and SHA-256), the inputs of this file and its rows in order, and the
// SHA-256 of the features file and of its .files.txt list: the files are one unit, and every reader
// (resume, merge) checks the hashes before it trusts the rows.
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace vitmsn {
class Model;
}

namespace vitmsn::cli {

inline constexpr int kManifestVersion = 1;

// --- Paths in JSON -----------------------------------------------------------------------------------

/// A file name as JSON: the string itself when it is valid UTF-8, else {"hex": "<its bytes>"}, so
/// that every name (Linux allows any bytes but '/' and NUL) survives the round trip exactly.
nlohmann::ordered_json path_to_json(const std::string& path);
/// The inverse of path_to_json. \throws Error on anything else.
std::string path_from_json(const nlohmann::ordered_json& j);
nlohmann::ordered_json paths_to_json(const std::vector<std::string>& paths);
std::vector<std::string> paths_from_json(const nlohmann::ordered_json& j, const std::string& what);

/// SHA-256 (hex) of a list of names, each followed by a NUL byte (names cannot contain NUL).
std::string list_sha256(const std::vector<std::string>& names);
/// SHA-256 (hex) of a file's bytes. \throws Error naming the file.
std::string file_sha256(const std::string& path);

// --- What made an output -----------------------------------------------------------------------------

/// The storage type of a model file's linear weights: what vitmsn-convert recorded in its metadata
/// ("F32", "BF16", "F16", "I8"), else the dtype of its first encoder linear weight.
std::string weights_dtype(const std::string& model_file);

/// The model part of a manifest: where it was loaded from (informational), its backbone identity,
/// the dtype of its weights and, when it has one, the SHA-256 of its classifier head's tensors.
nlohmann::ordered_json model_manifest(const Model& model);

/// The settings of a manifest: every field of `a` and `b` except those that differ legitimately from
/// file to file of one job (the inputs and rows of this file, the shard, file hashes, the model's
/// path). Two outputs may be resumed or merged into one only when their settings are equal.
nlohmann::ordered_json settings_of(const nlohmann::ordered_json& manifest);

/// The differences between two manifests' settings, one phrase each ("pool: cls, now mean"), `then`
/// naming the first ("saved", "shard 0") and `now` the second. Empty when they agree.
std::vector<std::string> settings_differences(const nlohmann::ordered_json& then, const nlohmann::ordered_json& now,
                                              const std::string& then_name = "saved",
                                              const std::string& now_name = "now");

/// Reads a manifest file. \throws Error naming the file: unreadable, not JSON, not a manifest, or a
/// version this program does not know.
nlohmann::ordered_json read_manifest(const std::string& path);

/// The manifest path of an output: OUT up to its last '.', then ".manifest.json".
std::string manifest_path(const std::string& output);

/// Checks that `output` (and `list`, when not empty) are the files `manifest` describes (SHA-256 and
/// size): the unit is whole. \throws Error naming what does not match and what to do.
void verify_unit(const nlohmann::ordered_json& manifest, const std::string& manifest_file, const std::string& output,
                 const std::string& list);

// --- One writer per output ---------------------------------------------------------------------------

/// An exclusive lock on an output, held while the object lives: `<lock_path>` beside the output,
/// locked with flock(2) and holding the owner's PID, host and start time. A lock file left by a
/// process that died is recognised (the flock is gone with it) and reported by `note`.
class OutputLock {
 public:
  OutputLock() = default;
  /// \throws Error when another process holds the lock, naming it (PID, host, start) and what to do;
  /// `note` receives a line about a stale lock taken over (empty otherwise).
  OutputLock(const std::string& lock_path, const std::string& output, std::string* note);
  OutputLock(OutputLock&& o) noexcept;
  OutputLock& operator=(OutputLock&& o) noexcept;
  OutputLock(const OutputLock&) = delete;
  OutputLock& operator=(const OutputLock&) = delete;
  ~OutputLock();

 private:
  void release() noexcept;
  std::string path_;
  int fd_ = -1;
};

/// The lock file of an output: OUT up to its last '.', then ".lock".
std::string lock_path(const std::string& output);

// --- Committing ---------------------------------------------------------------------------------------

/// Where a file of the unit is written before it is committed: a hidden name beside `final_path`
/// that names this process.
std::string staging_path(const std::string& final_path);

/// Renames each staged file onto its final name, in order. Without `replace`, a final name that
/// exists is never replaced (renameat2 RENAME_NOREPLACE, or link + unlink where the file system has
/// no such rename): \throws Error naming it, and the files not yet renamed are removed.
void commit_staged(const std::vector<std::pair<std::string, std::string>>& staged, bool replace);

/// Writes an output unit: `write_features(path)` writes the features file to the path it is given
/// (a staged name), `rows` go to `list` one per line (none when `list` is empty), and `manifest`,
/// completed with the rows, the failed inputs and the SHA-256 and size of both files, to
/// `manifest_file`; then all are committed (commit_staged) in that order, the manifest last.
void write_unit(const std::string& output, const std::string& list, const std::string& manifest_file,
                nlohmann::ordered_json manifest, const std::vector<std::string>& rows,
                const std::vector<std::string>& failed, const std::function<void(const std::string&)>& write_features,
                bool replace);

/// Registers a staged file so that an interrupt that stops the program at once removes it
/// (remove_staged_files(), async-signal-safe); forget_staged() when it was renamed or removed.
void register_staged(const std::string& path);
void forget_staged(const std::string& path);
int remove_staged_files() noexcept;

// --- Features streamed to disk ------------------------------------------------------------------------

/// A byte range of a file.
struct Piece {
  std::string file;
  std::uint64_t offset = 0, bytes = 0;
};

/// A float32 tensor whose values lie in files (its pieces, in order), not in memory.
struct SpooledTensor {
  std::string name;
  std::vector<std::int64_t> shape;
  std::vector<Piece> pieces;
  std::uint64_t bytes() const;
};

/// The bytes a program copies between files at a time: the only feature data that
/// write_spooled_safetensors() and write_spooled_npy() hold in memory.
inline constexpr std::size_t kCopyBufferBytes = std::size_t{1} << 20;

/// An append-only file that takes features as they are computed, so that a run holds one batch of
/// them in memory, not all: a hidden staged name (staging_path(path)), registered so that an
/// interrupt removes it, and removed when the object is destroyed.
class Spool {
 public:
  /// \throws Error naming the file when it cannot be created.
  explicit Spool(const std::string& path);
  ~Spool();
  Spool(const Spool&) = delete;
  Spool& operator=(const Spool&) = delete;
  /// Appends `bytes` bytes at once (write(2); nothing is kept) and returns where they are.
  /// \throws Error naming the file on a write error (a full disk).
  Piece append(const void* data, std::size_t bytes);
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

/// Writes `tensors` (float32) to `path`, atomically, byte for byte what write_safetensors() writes
/// for the same tensors held in memory (sorted by name, the header padded to 8 bytes), copying their
/// values from their pieces through one buffer of kCopyBufferBytes. Returns the tensors relocated
/// into `path` (pieces of that file). \throws Error naming the file.
std::vector<SpooledTensor> write_spooled_safetensors(const std::string& path, const std::vector<SpooledTensor>& tensors,
                                                     const std::map<std::string, std::string>& metadata = {});

/// Writes a float32 .npy of `shape` whose values are `pieces` in order, atomically, byte for byte
/// what write_npy() writes; the same bounded copy. \throws Error naming the file.
void write_spooled_npy(const std::string& path, const std::vector<std::int64_t>& shape,
                       const std::vector<Piece>& pieces);

/// Where the data of each tensor of the safetensors file `path` lie in that file.
/// \throws Error naming the file.
std::vector<SpooledTensor> spooled_tensors_of(const std::string& path);

/// Bytes of feature values a program holds in memory: hold_bytes(+n) when it takes n bytes,
/// hold_bytes(-n) when it lets them go; peak_held_bytes() is the most held at once so far (what a
/// test checks to see that memory does not grow with the number of images).
void hold_bytes(std::int64_t delta);
std::uint64_t peak_held_bytes();

// --- Test hooks ---------------------------------------------------------------------------------------

/// VITMSN_TEST_PAUSE_AFTER_LOCK=FIFO: once the output lock is taken, open FIFO for reading and read
/// it to its end. A test opens the FIFO for writing (which returns only once the lock is held),
/// starts a second run, then closes it to let the first go on: no sleeps, the same on any machine.
void test_pause_after_lock();

}  // namespace vitmsn::cli
