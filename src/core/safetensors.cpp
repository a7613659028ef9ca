// Safetensors: https://github.com/huggingface/safetensors format — 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets:[begin,end]}, "__metadata__": {str: str}}, then the
// data area. Everything in the header is validated before any tensor pointer is handed out.
#include "vitmsn/safetensors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "base/file_util.hpp"
#include "base/json_error.hpp"
#include "core/safetensors_write.hpp"
#include "cpu/half.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {

namespace {

struct DTypeInfo {
  const char* name;
  DType dtype;
  std::size_t size;
};

constexpr DTypeInfo kDTypes[] = {
    {"F32", DType::kF32, 4}, {"F16", DType::kF16, 2},   {"BF16", DType::kBF16, 2}, {"F64", DType::kF64, 8},
    {"I64", DType::kI64, 8}, {"I32", DType::kI32, 4},   {"I16", DType::kI16, 2},   {"I8", DType::kI8, 1},
    {"U8", DType::kU8, 1},   {"BOOL", DType::kBool, 1},
};

const DTypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DTypeInfo& info(DType dtype) {
  for (const auto& d : kDTypes)
    if (d.dtype == dtype) return d;
  return kDTypes[0];
}

std::string shape_to_string(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ",";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

bool starts_with(const std::uint8_t* p, std::uint64_t n, const char* magic, std::size_t m) {
  return n >= m && std::memcmp(p, magic, m) == 0;
}

// What a file that is not safetensors is, with what to do, for the files people pass by mistake (a
// checkpoint still to convert, an image, a config, a Git LFS pointer…); "" when it is not recognised.
std::string what_else_it_is(const std::uint8_t* p, std::uint64_t n, const std::string& path) {
  // A folder's pytorch_model.bin converted beside it makes the folder a model (config.json is there).
  const bool in_hf_folder = path.size() >= 17 && path.compare(path.size() - 17, 17, "pytorch_model.bin") == 0 &&
                            (path.size() == 17 || path[path.size() - 18] == '/');
  const std::string out =
      in_hf_folder ? detail::join_path(detail::parent_dir(path), "model.safetensors") : std::string("OUT.safetensors");
  const std::string convert = "; convert it into one with: vitmsn-convert " + path + " " + out;
  if (starts_with(p, n, "PK\x03\x04", 4)) {
    // torch.save writes a zip whose entries are ARCHIVE/data.pkl, ARCHIVE/data/0, …
    const std::uint64_t name_len = n >= 30 ? p[26] | (p[27] << 8) : 0;
    const std::string first(reinterpret_cast<const char*>(p) + 30, n >= 30 + name_len ? name_len : 0);
    const bool torch = first.size() >= 8 && first.compare(first.size() - 8, 8, "data.pkl") == 0;
    return torch ? "a PyTorch checkpoint (torch.save zip, like pytorch_model.bin), not a safetensors file" + convert
                 : "a zip archive, not a safetensors file";
  }
  if (n >= 2 && p[0] == 0x80 && p[1] >= 2 && p[1] <= 5)
    return "a Python pickle (a PyTorch checkpoint in the legacy format?), not a safetensors file; re-save it with "
           "torch.save (zip format, the default since PyTorch 1.6), then: vitmsn-convert " +
           path + " OUT.safetensors";
  if (starts_with(p, n, "\x89PNG\r\n\x1a\n", 8)) return "a PNG image, not a model";
  if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return "a JPEG image, not a model";
  if (starts_with(p, n, "GIF8", 4)) return "a GIF image, not a model";
  if (starts_with(p, n, "\x93NUMPY", 6)) return "a NumPy .npy array (features?), not a model";
  if (starts_with(p, n, "GGUF", 4)) return "a GGUF file (llama.cpp), not a safetensors model";
  if (starts_with(p, n, "\x1f\x8b", 2)) return "a gzip archive, not a safetensors file; unpack it first";
  if (starts_with(p, n, "version https://git-lfs", 23))
    return "a Git LFS pointer, not the weights themselves; fetch them with: git lfs pull";
  // Text: the first bytes are printable ASCII/UTF-8 and white space.
  const std::uint64_t look = std::min<std::uint64_t>(n, 512);
  const char* text = reinterpret_cast<const char*>(p);
  const bool printable =
      std::all_of(p, p + look, [](std::uint8_t c) { return c >= 0x20 || c == '\n' || c == '\r' || c == '\t'; });
  if (look == 0 || !printable || detail::first_non_utf8(text, look) < look - std::min<std::uint64_t>(look, 3))
    return "";
  std::uint64_t first = 0;
  while (first < look && std::isspace(static_cast<unsigned char>(text[first]))) ++first;
  if (first < look && text[first] == '{') return "a JSON text file (a config?), not a safetensors model";
  if (first < look && text[first] == '<')
    return "an HTML or XML text file (a failed download?), not a safetensors model";
  return "a text file, not a safetensors model";
}

}  // namespace

const char* dtype_name(DType dtype) { return info(dtype).name; }
std::size_t dtype_size(DType dtype) { return info(dtype).size; }

std::int64_t TensorView::numel() const {
  std::int64_t n = 1;
  for (auto d : shape) n *= d;
  return n;
}

std::string TensorView::shape_string() const { return shape_to_string(shape); }

float TensorView::value(std::size_t i) const {
  switch (dtype) {
    case DType::kF32: {
      float v;
      std::memcpy(&v, data + 4 * i, 4);
      return v;
    }
    case DType::kF16: {
      std::uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      return detail::half_to_float(h);
    }
    case DType::kBF16: {
      std::uint16_t h;
      std::memcpy(&h, data + 2 * i, 2);
      return detail::bf16_to_float(h);
    }
    case DType::kF64: {
      double v;
      std::memcpy(&v, data + 8 * i, 8);
      return static_cast<float>(v);
    }
    case DType::kI64: {
      std::int64_t v;
      std::memcpy(&v, data + 8 * i, 8);
      return static_cast<float>(v);
    }
    case DType::kI32: {
      std::int32_t v;
      std::memcpy(&v, data + 4 * i, 4);
      return static_cast<float>(v);
    }
    case DType::kI16: {
      std::int16_t v;
      std::memcpy(&v, data + 2 * i, 2);
      return static_cast<float>(v);
    }
    case DType::kI8:
      return static_cast<float>(static_cast<std::int8_t>(data[i]));
    case DType::kU8:
    case DType::kBool:
      return static_cast<float>(data[i]);
  }
  return 0.0f;
}

TensorView TensorData::view() const {
  TensorView v;
  v.name = name;
  v.dtype = dtype;
  v.shape = shape;
  v.data = bytes.data();
  v.nbytes = bytes.size();
  return v;
}

TensorData TensorView::to_tensor_data() const {
  TensorData t;
  t.name = name;
  t.dtype = dtype;
  t.shape = shape;
  t.bytes.assign(data, data + nbytes);
  return t;
}

std::vector<float> TensorView::to_float() const {
  const std::size_t n = static_cast<std::size_t>(numel());
  std::vector<float> out(n);
  if (dtype == DType::kF32) {
    if (n) std::memcpy(out.data(), data, n * 4);
  } else {
    for (std::size_t i = 0; i < n; ++i) out[i] = value(i);
  }
  return out;
}

struct SafetensorsFile::Impl {
  std::string path;
  detail::MappedFile map;
  std::map<std::string, std::string> metadata;
  std::vector<TensorView> tensors;  // sorted by data offset
  std::unordered_map<std::string, std::size_t> index;
};

SafetensorsFile::SafetensorsFile(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;
SafetensorsFile::~SafetensorsFile() = default;

SafetensorsFile SafetensorsFile::open(const std::string& path, const SafetensorsLimits& limits, FileAccess access) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->map = detail::MappedFile::open(
      path, access == FileAccess::kCopy ? detail::MappedFile::Access::kCopy : detail::MappedFile::Access::kMap);
  const std::uint8_t* base = impl->map.data();
  const std::uint64_t size = impl->map.size();
  auto fail = [&](const std::string& what, ErrorKind kind = ErrorKind::kMalformed) -> Error {
    return Error(kind, path + ": " + what, path);
  };

  if (size < 8)
    throw fail("not a safetensors file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  // A header that cannot be right (too long for the file or the cap, not a JSON object): say what
  // the file is instead when it is a kind people pass by mistake.
  if (header_len > limits.max_header_bytes || header_len > size - 8 || size < 9 || base[8] != '{')
    if (const std::string other = what_else_it_is(base, size, path); !other.empty())
      throw fail(other, ErrorKind::kUnsupported);
  if (header_len > limits.max_header_bytes)
    throw fail("header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(limits.max_header_bytes) + " bytes",
               ErrorKind::kLimit);
  if (header_len > size - 8)
    throw fail("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(size) + " bytes)");
  if (header_len < 2) throw fail("header of " + std::to_string(header_len) + " bytes is not a JSON object");

  nlohmann::json header;
  try {
    header = nlohmann::json::parse(base + 8, base + 8 + header_len);
  } catch (const nlohmann::json::exception& e) {
    throw fail("header is not valid JSON: " +
               detail::describe_json_error(e, reinterpret_cast<const char*>(base + 8), header_len));
  }
  if (!header.is_object()) throw fail("header is not a JSON object");
  const std::size_t tensor_count = header.size() - (header.contains("__metadata__") ? 1 : 0);
  if (tensor_count > limits.max_tensors)
    throw fail("header lists " + std::to_string(tensor_count) + " tensors, more than the limit of " +
                   std::to_string(limits.max_tensors) + " tensors",
               ErrorKind::kLimit);

  const std::uint64_t data_begin = 8 + header_len;
  const std::uint64_t data_size = size - data_begin;
  struct Range {
    std::uint64_t begin, end;
    std::size_t tensor;
  };
  std::vector<Range> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) throw fail("__metadata__ is not an object of strings");
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__ value '" + m.key() + "' is not a string");
        impl->metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = "tensor '" + name + "'";
    if (!entry.is_object()) throw fail(where + ": entry is not an object");
    auto dt = entry.find("dtype");
    auto sh = entry.find("shape");
    auto off = entry.find("data_offsets");
    if (dt == entry.end() || !dt->is_string()) throw fail(where + ": missing or non-string dtype");
    if (sh == entry.end() || !sh->is_array()) throw fail(where + ": missing or non-array shape");
    if (off == entry.end() || !off->is_array() || off->size() != 2)
      throw fail(where + ": data_offsets must be an array of two integers");
    const DTypeInfo* d = find_dtype(dt->get<std::string>());
    if (!d) throw fail(where + ": unknown dtype '" + dt->get<std::string>() + "'", ErrorKind::kUnsupported);
    TensorView view;
    view.name = name;
    view.dtype = d->dtype;
    // numel with overflow checks: every factor must be a non-negative integer and the product must
    // fit in the data area, so bound it by data_size as we go.
    std::uint64_t numel = 1;
    bool zero = false;
    for (const auto& v : *sh) {
      if (!v.is_number_integer() || v.get<std::int64_t>() < 0)
        throw fail(where + ": shape entries must be non-negative integers");
      const auto dim = v.get<std::uint64_t>();
      if (dim == 0) zero = true;
      view.shape.push_back(static_cast<std::int64_t>(dim));
      if (!zero && dim > 0 && numel > (data_size + 1) / dim + 1)
        throw fail(where + ": shape " + shape_to_string(view.shape) + " is larger than the file");
      if (!zero) numel *= dim;
    }
    if (view.shape.size() > 16) throw fail(where + ": more than 16 dimensions");
    if (zero) numel = 0;
    for (const auto& v : *off)
      if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
        throw fail(where + ": data_offsets must be non-negative integers");
    const auto begin = (*off)[0].get<std::uint64_t>();
    const auto end = (*off)[1].get<std::uint64_t>();
    if (begin > end)
      throw fail(where + ": data_offsets [" + std::to_string(begin) + "," + std::to_string(end) + "] are reversed");
    if (end > data_size)
      throw fail(where + ": data_offsets [" + std::to_string(begin) + "," + std::to_string(end) +
                 "] run past the end of the data (" + std::to_string(data_size) + " bytes)");
    if (numel > std::numeric_limits<std::uint64_t>::max() / d->size)  // numel * size below would wrap
      throw fail(where + ": shape " + shape_to_string(view.shape) + " is larger than the file");
    if (end - begin != numel * d->size)
      throw fail(where + ": data_offsets span " + std::to_string(end - begin) + " bytes but " + d->name + " shape " +
                 shape_to_string(view.shape) + " needs " + std::to_string(numel * d->size));
    view.data = base + data_begin + begin;
    view.nbytes = static_cast<std::size_t>(end - begin);
    ranges.push_back({begin, end, impl->tensors.size()});
    impl->tensors.push_back(std::move(view));
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const Range& a, const Range& b) { return a.begin != b.begin ? a.begin < b.begin : a.end < b.end; });
  // Sorted by begin, a range overlaps an earlier one exactly when it starts before the furthest end
  // seen so far. Empty tensors occupy no bytes and overlap nothing.
  std::uint64_t furthest = 0;
  std::size_t furthest_tensor = 0;
  for (const Range& r : ranges) {
    if (r.end == r.begin) continue;
    if (r.begin < furthest)
      throw fail("tensors '" + impl->tensors[furthest_tensor].name + "' and '" + impl->tensors[r.tensor].name +
                 "' overlap in the data area");
    furthest = r.end;
    furthest_tensor = r.tensor;
  }
  std::vector<TensorView> sorted;
  sorted.reserve(ranges.size());
  for (const auto& r : ranges) sorted.push_back(std::move(impl->tensors[r.tensor]));
  impl->tensors = std::move(sorted);
  for (std::size_t i = 0; i < impl->tensors.size(); ++i) impl->index[impl->tensors[i].name] = i;
  return SafetensorsFile(std::move(impl));
}

const std::string& SafetensorsFile::path() const { return impl_->path; }
const std::map<std::string, std::string>& SafetensorsFile::metadata() const { return impl_->metadata; }
std::size_t SafetensorsFile::file_size() const { return impl_->map.size(); }
bool SafetensorsFile::is_copy() const { return impl_->map.is_copy(); }
void SafetensorsFile::check_unchanged() const { impl_->map.check_unchanged(impl_->path); }

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(impl_->tensors.size());
  for (const auto& t : impl_->tensors) out.push_back(t.name);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const { return impl_->index.count(name) != 0; }

const TensorView* SafetensorsFile::find(const std::string& name) const {
  auto it = impl_->index.find(name);
  return it == impl_->index.end() ? nullptr : &impl_->tensors[it->second];
}

const TensorView& SafetensorsFile::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (!t) throw Error(ErrorKind::kMalformed, impl_->path + ": missing tensor '" + name + "'", impl_->path);
  return *t;
}

TensorData TensorData::f32(std::string name, std::vector<std::int64_t> shape, const float* values) {
  TensorData t;
  t.name = std::move(name);
  t.dtype = DType::kF32;
  t.shape = std::move(shape);
  std::size_t n = 1;
  for (auto d : t.shape) n *= static_cast<std::size_t>(d);
  t.bytes.resize(n * 4);
  if (n) std::memcpy(t.bytes.data(), values, n * 4);
  return t;
}

void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::vector<const TensorData*> order;
  for (const auto& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorData* a, const TensorData* b) { return a->name < b->name; });
  detail::write_safetensors_in_order(path, order, metadata, 8);
}

namespace detail {

void write_safetensors_in_order(const std::string& path, const std::vector<const TensorData*>& order,
                                const std::map<std::string, std::string>& metadata, std::size_t data_alignment) {
  nlohmann::json header = nlohmann::json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::uint64_t offset = 0;
  for (std::size_t i = 0; i < order.size(); ++i) {
    const TensorData& t = *order[i];
    if (t.name.empty() || t.name == "__metadata__")
      throw Error(ErrorKind::kArgument, path + ": invalid tensor name '" + t.name + "'", path);
    if (header.contains(t.name))
      throw Error(ErrorKind::kArgument, path + ": duplicate tensor name '" + t.name + "'", path);
    std::uint64_t numel = 1;
    for (auto d : t.shape) {
      if (d < 0) throw Error(ErrorKind::kArgument, path + ": tensor '" + t.name + "' has a negative dimension", path);
      numel *= static_cast<std::uint64_t>(d);
    }
    if (numel * dtype_size(t.dtype) != t.bytes.size())
      throw Error(ErrorKind::kArgument,
                  path + ": tensor '" + t.name + "' has " + std::to_string(t.bytes.size()) + " bytes, shape " +
                      shape_to_string(t.shape) + " of " + dtype_name(t.dtype) + " needs " +
                      std::to_string(numel * dtype_size(t.dtype)),
                  path);
    header[t.name] = {
        {"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  std::string h = header.dump();
  // The data start at 8 + h.size(): padded (with spaces, as the format allows) to data_alignment.
  h.append((data_alignment - (8 + h.size()) % data_alignment) % data_alignment, ' ');
  detail::AtomicFile out(path);
  std::uint8_t len[8];
  std::uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(n >> (8 * i));
  out.write(len, 8);
  out.write(h.data(), h.size());
  for (const TensorData* t : order) out.write(t->bytes.data(), t->bytes.size());
  out.commit();
}

}  // namespace detail

}  // namespace vitmsn
