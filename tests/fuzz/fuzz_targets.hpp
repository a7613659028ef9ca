#pragma once
// The bodies of the fuzz targets, shared by the libFuzzer harnesses (tests/fuzz/fuzz_*.cpp) and by the
// regression test that replays saved inputs (tests/fuzz_regression_test.cpp), so a finding is
// replayed through exactly the code that found it.
//
// Contract of every target: bad input throws vitmsn::Error, which the caller treats as the expected
// outcome. Anything else is a finding: another exception, a crash, a sanitizer report, a leak, a
// hang, an allocation past the fuzzer's RSS limit, or a broken invariant of an accepted input, which
// aborts through VITMSN_FUZZ_CHECK so that libFuzzer saves the input.

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "vitmsn/config.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/preprocess.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/torch_checkpoint.hpp"

/// Aborts (a finding) when an invariant of an accepted input does not hold.
#define VITMSN_FUZZ_CHECK(cond)                                                                \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      std::fprintf(stderr, "%s:%d: fuzz invariant violated: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                            \
    }                                                                                          \
  } while (0)

namespace vitmsn::fuzz {

/// Largest image the image target decodes (1024 x 1024). BMP, TGA, PNM and PSD headers of a
/// few bytes decode to images of the size they claim, zero-filled, so the cap sets the cost of the
/// commonest slow inputs (at 4096 x 4096 the target ran at ~25 inputs/s). The decoders take the same
/// paths at this size.
constexpr std::uint64_t kMaxImagePixels = 1024ull * 1024ull;

/// Caps of the torch target on what one input may make the reader allocate. The defaults (64 GiB)
/// let a checkpoint of a few hundred bytes ask for gigabytes through a stride-0 view, by design (the
/// caller sets the limits for untrusted files); with these caps the fuzzer's 2 GB RSS limit flags
/// only allocations the limits fail to bound.
constexpr std::uint64_t kTorchMaxBytes = 256ull << 20;

/// A file that lives in memory (memfd, reached through /proc/self/fd) for the readers that take a
/// path; a file in /dev/shm (or /tmp) when memfd is unavailable. One per target per process.
class ScratchFile {
 public:
  explicit ScratchFile(const char* tag) {
#ifdef MFD_CLOEXEC
    fd_ = ::memfd_create(tag, MFD_CLOEXEC);
    if (fd_ >= 0) path_ = "/proc/self/fd/" + std::to_string(fd_);
#endif
    if (fd_ < 0) {
      for (const char* dir : {"/dev/shm", "/tmp"}) {
        path_ = std::string(dir) + "/vitmsn-fuzz-" + tag + "-" + std::to_string(::getpid());
        fd_ = ::open(path_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd_ >= 0) {
          owns_path_ = true;
          break;
        }
      }
    }
    if (fd_ < 0) {
      std::perror("vitmsn fuzz: cannot create a scratch file");
      std::abort();
    }
  }
  ~ScratchFile() {
    ::close(fd_);
    if (owns_path_) ::unlink(path_.c_str());
  }
  ScratchFile(const ScratchFile&) = delete;
  ScratchFile& operator=(const ScratchFile&) = delete;

  /// Replaces the content by `data[0, size)` and returns the path that reads it.
  const std::string& write(const std::uint8_t* data, std::size_t size) {
    if (::ftruncate(fd_, 0) != 0) die("ftruncate");
    std::size_t done = 0;
    while (done < size) {
      const ssize_t n = ::pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("pwrite");
      done += static_cast<std::size_t>(n);
    }
    return path_;
  }

 private:
  [[noreturn]] static void die(const char* what) {
    std::perror(what);
    std::abort();
  }
  int fd_ = -1;
  bool owns_path_ = false;
  std::string path_;
};

// ---------------------------------------------------------------------------------------------------
// safetensors

/// Opens the bytes as a safetensors file and reads every tensor it lists (get + to_float), once with
/// the default limits and once with tight ones.
inline void safetensors_input(const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch("safetensors");
  const std::string& path = scratch.write(data, size);

  SafetensorsLimits tight;
  tight.max_header_bytes = 256;
  tight.max_tensors = 2;
  try {
    const SafetensorsFile small = SafetensorsFile::open(path, tight);
    VITMSN_FUZZ_CHECK(small.names().size() <= tight.max_tensors);
  } catch (const Error&) {
    // expected for most inputs; the default limits below still run
  }

  const SafetensorsFile file = SafetensorsFile::open(path);
  VITMSN_FUZZ_CHECK(file.file_size() == size);
  for (const auto& [key, value] : file.metadata()) VITMSN_FUZZ_CHECK(key.size() + value.size() < size);
  const std::vector<std::string> names = file.names();
  const TensorView* previous = nullptr;
  for (const std::string& name : names) {
    VITMSN_FUZZ_CHECK(file.contains(name));
    const TensorView& t = file.get(name);
    VITMSN_FUZZ_CHECK(file.find(name) == &t && t.name == name);
    VITMSN_FUZZ_CHECK(t.numel() >= 0);
    const auto numel = static_cast<std::uint64_t>(t.numel());
    VITMSN_FUZZ_CHECK(t.nbytes == numel * dtype_size(t.dtype));
    VITMSN_FUZZ_CHECK(t.nbytes <= size);
    // names() is in data order: each tensor starts at or after the previous one's start.
    if (previous != nullptr && t.nbytes != 0 && previous->nbytes != 0) VITMSN_FUZZ_CHECK(t.data >= previous->data);
    if (t.nbytes != 0) previous = &t;
    VITMSN_FUZZ_CHECK(!t.shape_string().empty());
    const std::vector<float> values = t.to_float();
    VITMSN_FUZZ_CHECK(values.size() == numel);
    if (numel > 0) {
      // value() agrees with to_float() (NaN payloads aside).
      const float first = t.value(0);
      const float last = t.value(numel - 1);
      VITMSN_FUZZ_CHECK(std::isnan(first) ? std::isnan(values.front()) : first == values.front());
      VITMSN_FUZZ_CHECK(std::isnan(last) ? std::isnan(values.back()) : last == values.back());
    }
  }
  try {
    file.get("\x01not a tensor name\x02");
    VITMSN_FUZZ_CHECK(file.contains("\x01not a tensor name\x02"));
  } catch (const Error&) {
    VITMSN_FUZZ_CHECK(!file.contains("\x01not a tensor name\x02"));
  }
}

// ---------------------------------------------------------------------------------------------------
// config.json and preprocessor_config.json

inline bool same_config(const Config& a, const Config& b) {
  return a.hidden_size == b.hidden_size && a.num_hidden_layers == b.num_hidden_layers &&
         a.num_attention_heads == b.num_attention_heads && a.intermediate_size == b.intermediate_size &&
         a.patch_size == b.patch_size && a.image_size == b.image_size && a.num_channels == b.num_channels &&
         a.layer_norm_eps == b.layer_norm_eps && a.qkv_bias == b.qkv_bias && a.hidden_act == b.hidden_act &&
         a.model_type == b.model_type && a.id2label == b.id2label;
}

/// Equal in every setting that takes part in preprocessing (height/width do not when shortest_edge
/// is set, and to_json then leaves them out).
inline bool same_preprocessor_config(const PreprocessorConfig& a, const PreprocessorConfig& b) {
  const bool sizes =
      a.shortest_edge == b.shortest_edge && (a.shortest_edge > 0 || (a.height == b.height && a.width == b.width));
  return sizes && a.do_resize == b.do_resize && a.resample == b.resample && a.do_center_crop == b.do_center_crop &&
         a.crop_height == b.crop_height && a.crop_width == b.crop_width && a.do_rescale == b.do_rescale &&
         a.rescale_factor == b.rescale_factor && a.do_normalize == b.do_normalize && a.image_mean == b.image_mean &&
         a.image_std == b.image_std && a.do_convert_rgb == b.do_convert_rgb;
}

/// Parses the bytes as config.json; an accepted config must satisfy the documented invariants and
/// round-trip through to_json.
inline void config_input(const std::string& text) {
  const Config c = parse_config(text, "config.json");
  VITMSN_FUZZ_CHECK(c.hidden_size > 0 && c.num_hidden_layers > 0 && c.num_attention_heads > 0);
  VITMSN_FUZZ_CHECK(c.intermediate_size > 0 && c.patch_size > 0 && c.image_size > 0 && c.num_channels > 0);
  VITMSN_FUZZ_CHECK(c.hidden_size % c.num_attention_heads == 0);
  VITMSN_FUZZ_CHECK(c.image_size % c.patch_size == 0);
  VITMSN_FUZZ_CHECK(c.hidden_act == "gelu");
  const Config again = parse_config(to_json(c), "round-trip");
  VITMSN_FUZZ_CHECK(same_config(c, again));
}

/// Parses the bytes as preprocessor_config.json; an accepted config must construct a Preprocessor
/// and round-trip through to_json.
inline void preprocessor_config_input(const std::string& text) {
  const PreprocessorConfig c = parse_preprocessor_config(text, "preprocessor_config.json");
  const Preprocessor p(c);  // validates again: must accept what the parser accepted
  const PreprocessorConfig again = parse_preprocessor_config(to_json(c), "round-trip");
  VITMSN_FUZZ_CHECK(same_preprocessor_config(c, again));
}

/// Both JSON parsers on the same bytes; the first Error is rethrown after both have run.
inline void json_input(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  bool failed = false;
  std::string first_error;
  try {
    config_input(text);
  } catch (const Error& e) {
    failed = true;
    first_error = e.what();
  }
  try {
    preprocessor_config_input(text);
  } catch (const Error& e) {
    if (!failed) first_error = e.what();
    failed = true;
  }
  if (failed) throw Error(first_error);
}

// ---------------------------------------------------------------------------------------------------
// Image decode + preprocess

/// Decodes the bytes as an image (at most kMaxImagePixels) and runs the default Preprocessor on it.
inline void image_input(const std::uint8_t* data, std::size_t size) {
  ImageLimits limits;
  limits.max_pixels = kMaxImagePixels;
  const Image image = decode_image(data, size, "fuzz-input", limits);
  VITMSN_FUZZ_CHECK(image.width > 0 && image.height > 0);
  VITMSN_FUZZ_CHECK(static_cast<std::uint64_t>(image.width) * static_cast<std::uint64_t>(image.height) <=
                    kMaxImagePixels);
  VITMSN_FUZZ_CHECK(image.rgb.size() == static_cast<std::size_t>(image.width) * image.height * 3);

  // Default config (224 x 224 bilinear, rescale, normalize), resize held to the same pixel limit.
  static const Preprocessor preprocess = Preprocessor().with_limits(limits);
  const PixelValues pixels = preprocess(image);
  VITMSN_FUZZ_CHECK(pixels.size() == 3 * 224 * 224);
  // Every 8-bit value normalises to (v / 255 - mean) / std, within [-2.2, 2.7] for ImageNet stats.
  for (Eigen::Index i = 0; i < pixels.size(); ++i) {
    const float v = pixels.data()[i];
    VITMSN_FUZZ_CHECK(std::isfinite(v) && v > -2.2f && v < 2.7f);
  }
}

// ---------------------------------------------------------------------------------------------------
// torch.save checkpoints

/// Reads the bytes as a torch.save zip checkpoint; every returned tensor must be consistent.
inline void torch_input(const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch("torch");
  const std::string& path = scratch.write(data, size);
  TorchCheckpointLimits limits;
  limits.max_entry_bytes = kTorchMaxBytes;
  limits.max_total_bytes = kTorchMaxBytes;
  const std::vector<TensorData> tensors = read_torch_checkpoint(path, limits);
  VITMSN_FUZZ_CHECK(!tensors.empty());
  std::uint64_t total = 0;
  for (const TensorData& t : tensors) {
    VITMSN_FUZZ_CHECK(t.shape.size() <= limits.max_tensor_dims);
    std::uint64_t numel = 1;
    for (const std::int64_t d : t.shape) {
      VITMSN_FUZZ_CHECK(d >= 0);
      numel *= static_cast<std::uint64_t>(d);
    }
    VITMSN_FUZZ_CHECK(t.bytes.size() == numel * dtype_size(t.dtype));
    total += t.bytes.size();
  }
  VITMSN_FUZZ_CHECK(total <= limits.max_total_bytes);
}

// ---------------------------------------------------------------------------------------------------
// .npy feature files (vitmsn-merge reads the shards' parts)

/// Reads the bytes as a .npy file; an accepted array must fit the file and match its shape.
inline void npy_input(const std::uint8_t* data, std::size_t size) {
  static ScratchFile scratch("npy");
  const std::string& path = scratch.write(data, size);
  std::vector<std::int64_t> shape;
  const std::vector<float> values = read_npy(path, &shape);
  std::uint64_t numel = 1;
  for (const std::int64_t d : shape) {
    VITMSN_FUZZ_CHECK(d >= 0);
    numel *= static_cast<std::uint64_t>(d);
  }
  VITMSN_FUZZ_CHECK(values.size() == numel);
  VITMSN_FUZZ_CHECK(values.size() * sizeof(float) + 10 <= size);
}

}  // namespace vitmsn::fuzz
