// torch.save checkpoints: the walk from the unpickled object to named tensors, the bounds checks of
// every view, and the public read_torch_checkpoint(). The layers below live in src/formats/torch/: the zip
// archive (zip_reader, with inflate for DEFLATED entries) and the restricted pickle machine.
#include "vitmsn/torch_checkpoint.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "base/file_util.hpp"
#include "formats/torch/pickle_machine.hpp"
#include "formats/torch/zip_reader.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {
namespace {

using detail::torch::EntryBytes;
using detail::torch::Kind;
using detail::torch::kind_name;
using detail::torch::PickleMachine;
using detail::torch::StorageRef;
using detail::torch::TensorRef;
using detail::torch::Value;
using detail::torch::ZipArchive;
using detail::torch::ZipEntry;

/// a * b, or false when it does not fit in 64 bits.
bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (a != 0 && b > std::numeric_limits<std::uint64_t>::max() / a) return false;
  out = a * b;
  return true;
}
bool checked_add(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (b > std::numeric_limits<std::uint64_t>::max() - a) return false;
  out = a + b;
  return true;
}

bool is_valid_utf8(const std::string& s) {
  std::size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    std::size_t extra = 0;
    std::uint32_t cp = 0;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      extra = 1, cp = c & 0x1Fu;
    } else if ((c & 0xF0) == 0xE0) {
      extra = 2, cp = c & 0x0Fu;
    } else if ((c & 0xF8) == 0xF0) {
      extra = 3, cp = c & 0x07u;
    } else {
      return false;
    }
    if (s.size() - i <= extra) return false;
    for (std::size_t k = 1; k <= extra; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = cp << 6 | (cc & 0x3Fu);
    }
    static const std::uint32_t kMin[4] = {0, 0x80, 0x800, 0x10000};
    if (cp < kMin[extra] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += extra + 1;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// From the unpickled object to tensors.

/// Keys under which training checkpoints nest the model's state dict (see the header).
constexpr const char* kWrapperKeys[] = {"state_dict", "model_state_dict", "model"};

struct NamedTensor {
  std::string name;
  const TensorRef* tensor;
};

class StateDictWalker {
 public:
  StateDictWalker(const std::string& path, const PickleMachine& vm, const TorchCheckpointLimits& limits)
      : path_(path), vm_(vm), limits_(limits) {}

  std::vector<NamedTensor> walk(const Value& root) {
    if (root.kind != Kind::kDict) {
      throw Error(
          ErrorKind::kUnsupported,
          path_ + ": top-level object is a " + kind_name(root.kind) + ", expected a dict of tensors (a state dict)",
          path_);
    }
    Value chosen = root;
    for (const char* wrapper : kWrapperKeys) {
      const Value* v = find_string_key(root, wrapper);
      if (v != nullptr && v->kind == Kind::kDict) {
        chosen = *v;
        break;
      }
    }
    visit(chosen, "", 0);
    if (out_.empty()) throw Error(ErrorKind::kMalformed, path_ + ": checkpoint holds no tensors", path_);
    return std::move(out_);
  }

 private:
  const Value* find_string_key(const Value& d, const std::string& key) const {
    for (const auto& [k, v] : vm_.dict(d).items) {
      if (k.kind == Kind::kString && vm_.str(k) == key) return &v;
    }
    return nullptr;
  }

  void visit(const Value& d, const std::string& prefix, std::size_t depth) {
    if (depth >= limits_.max_nesting_depth) {
      throw Error(ErrorKind::kLimit,
                  path_ + ": dicts nested deeper than " + std::to_string(limits_.max_nesting_depth) +
                      " levels (limit) at '" + prefix + "'",
                  path_);
    }
    for (const auto& [k, v] : vm_.dict(d).items) {
      if (++visited_ > limits_.max_pickle_ops) {
        throw Error(ErrorKind::kLimit,
                    path_ + ": state dict has more than " + std::to_string(limits_.max_pickle_ops) + " entries (limit)",
                    path_);
      }
      // Every entry of a tree of dicts costs the pickle at least one opcode; only a dict shared under
      // several keys is walked more than once, and sharing nested k deep multiplies the walk by 2^k.
      if (visited_ > vm_.ops_executed()) {
        throw Error(ErrorKind::kLimit,
                    path_ + ": state dict shares dicts so often that walking it reached " + std::to_string(visited_) +
                        " entries, more than the " + std::to_string(vm_.ops_executed()) + " opcodes of data.pkl",
                    path_);
      }
      if (v.kind != Kind::kTensor && v.kind != Kind::kDict) continue;
      const std::string name = prefix.empty() ? vm_.key_text(k) : prefix + "." + vm_.key_text(k);
      if (v.kind == Kind::kDict) {
        visit(v, name, depth + 1);
        continue;
      }
      if (!is_valid_utf8(name)) throw Error(ErrorKind::kMalformed, path_ + ": tensor name is not valid UTF-8", path_);
      if (!names_.insert(name).second)
        throw Error(ErrorKind::kMalformed, path_ + ": two tensors are named '" + name + "'", path_);
      if (out_.size() >= limits_.max_tensors) {
        throw Error(ErrorKind::kLimit,
                    path_ + ": more than " + std::to_string(limits_.max_tensors) + " tensors (limit)", path_);
      }
      out_.push_back(NamedTensor{name, &vm_.tensor(v)});
    }
  }

  const std::string& path_;
  const PickleMachine& vm_;
  const TorchCheckpointLimits& limits_;
  std::vector<NamedTensor> out_;
  std::size_t visited_ = 0;
  std::unordered_set<std::string> names_;
};

/// Copies the elements a strided view addresses, in row-major order, into `out`.
/// Bounds were checked by the caller.
void gather(const std::uint8_t* src, const TensorRef& t, std::size_t item, std::uint8_t* out) {
  const std::size_t dims = t.size.size();
  if (dims == 0) {
    std::memcpy(out, src + t.offset * item, item);
    return;
  }
  // Inner dimension as a run: one memcpy when contiguous, else an element loop.
  const std::size_t inner = static_cast<std::size_t>(t.size[dims - 1]);
  const std::size_t inner_stride = static_cast<std::size_t>(t.stride[dims - 1]);
  std::vector<std::uint64_t> idx(dims, 0);
  std::uint64_t base = t.offset;
  for (;;) {
    const std::uint8_t* s = src + base * item;
    if (inner_stride == 1) {
      std::memcpy(out, s, inner * item);
    } else {
      for (std::size_t k = 0; k < inner; ++k) std::memcpy(out + k * item, s + k * inner_stride * item, item);
    }
    out += inner * item;
    // Odometer over the outer dimensions.
    std::size_t d = dims - 1;
    for (;;) {
      if (d == 0) return;
      --d;
      if (++idx[d] < t.size[d]) {
        base += t.stride[d];
        break;
      }
      base -= t.stride[d] * (t.size[d] - 1);
      idx[d] = 0;
    }
  }
}

/// The one `<archive>/data.pkl` entry (torch.save names every entry "<archive>/..."; the archive
/// name is free, HF writes "pytorch_model").
const ZipEntry& find_pickle_entry(const ZipArchive& zip) {
  static const std::string kSuffix = "/data.pkl";
  const ZipEntry* found = nullptr;
  for (const ZipEntry& e : zip.entries()) {
    const std::size_t stem = e.name.size() - kSuffix.size();
    if (e.name.size() > kSuffix.size() && e.name.compare(stem, kSuffix.size(), kSuffix) == 0 &&
        e.name.find('/') == stem) {
      if (found != nullptr) zip.fail("two pickles ('" + found->name + "', '" + e.name + "'); expected one");
      found = &e;
    }
  }
  if (found == nullptr) zip.fail("no '<archive>/data.pkl' entry: not a torch.save checkpoint");
  return *found;
}

/// Checks every view against its storage and the size limits before any data is read; returns, per
/// storage, the index of the last tensor that uses it.
std::vector<std::size_t> check_views(const ZipArchive& zip, const std::vector<NamedTensor>& named,
                                     const std::vector<StorageRef>& storages, const TorchCheckpointLimits& limits) {
  std::vector<std::size_t> last_use(storages.size(), 0);
  std::uint64_t total = 0;
  for (std::size_t n = 0; n < named.size(); ++n) {
    const TensorRef& t = *named[n].tensor;
    const StorageRef& s = storages[t.storage];
    const auto what = [&] { return "tensor '" + named[n].name + "'"; };
    std::uint64_t numel = 1;
    std::uint64_t last = t.offset;  // largest element index addressed: offset + sum (size-1)*stride
    for (std::size_t d = 0; d < t.size.size(); ++d) {
      std::uint64_t reach = 0;
      if (!checked_mul(numel, t.size[d], numel) ||
          (t.size[d] > 0 && (!checked_mul(t.size[d] - 1, t.stride[d], reach) || !checked_add(last, reach, last)))) {
        zip.fail(what() + ": size or stride overflows 64 bits");
      }
    }
    std::uint64_t bytes = 0;
    if (!checked_mul(numel, dtype_size(s.dtype), bytes) || bytes > limits.max_entry_bytes) {
      zip.fail(what() + " is larger than the limit of " + std::to_string(limits.max_entry_bytes) + " bytes",
               ErrorKind::kLimit);
    }
    if (!checked_add(total, bytes, total) || total > limits.max_total_bytes) {
      zip.fail("tensors add up to more than the limit of " + std::to_string(limits.max_total_bytes) + " bytes",
               ErrorKind::kLimit);
    }
    if (numel > 0 && last >= s.numel) {
      zip.fail(what() + " addresses element " + std::to_string(last) + " of storage '" + s.key + "', which holds " +
               std::to_string(s.numel) + " elements");
    }
    last_use[t.storage] = n;
  }
  return last_use;
}

/// The bytes of storage `s` (CRC-checked, inflated when needed).
EntryBytes load_storage(const ZipArchive& zip, const std::string& prefix, const StorageRef& s,
                        const std::string& tensor_name) {
  const std::string entry_name = prefix + "data/" + s.key;
  const ZipEntry* entry = zip.find(entry_name);
  if (entry == nullptr) {
    zip.fail("storage '" + s.key + "' of tensor '" + tensor_name + "' is missing (no entry '" + entry_name + "')");
  }
  const std::size_t item = dtype_size(s.dtype);
  std::uint64_t expected = 0;
  if (!checked_mul(s.numel, item, expected) || entry->size != expected) {
    zip.fail("storage '" + s.key + "' has " + std::to_string(entry->size) + " bytes, expected " +
             std::to_string(s.numel) + " elements of " + std::to_string(item) + " bytes");
  }
  return zip.read(*entry);
}

}  // namespace

std::vector<TensorData> read_torch_checkpoint(const std::string& path, const TorchCheckpointLimits& limits) {
  const detail::MappedFile file = detail::MappedFile::open(path);
  if (file.size() == 0)
    throw Error(ErrorKind::kMalformed, path + ": empty file, not a torch.save zip checkpoint", path);
  const ZipArchive zip(path, file.data(), file.size(), limits);

  const ZipEntry& pickle_entry = find_pickle_entry(zip);
  const std::string prefix = pickle_entry.name.substr(0, pickle_entry.name.find('/') + 1);  // "<archive>/"
  if (const ZipEntry* order = zip.find(prefix + "byteorder")) {
    const EntryBytes b = zip.read(*order);
    const std::string text(reinterpret_cast<const char*>(b.data), b.size);
    if (text != "little") zip.fail("byte order '" + text.substr(0, 16) + "' is not supported (only little-endian)");
  }
  if (pickle_entry.size > limits.max_pickle_bytes) {
    zip.fail("'" + pickle_entry.name + "' has " + std::to_string(pickle_entry.size) + " bytes, above the limit of " +
             std::to_string(limits.max_pickle_bytes));
  }

  const EntryBytes pickle = zip.read(pickle_entry);
  PickleMachine vm(path + ": " + pickle_entry.name, pickle.data, pickle.size, limits);
  const Value root = vm.run();
  const std::vector<NamedTensor> named = StateDictWalker(path, vm, limits).walk(root);
  const std::vector<StorageRef>& storages = vm.storages();
  const std::vector<std::size_t> last_use = check_views(zip, named, storages, limits);

  // Each storage is loaded once, at its first view, and dropped after its last one, so a deflated
  // checkpoint never holds more inflated storages than its views need at once.
  std::vector<EntryBytes> loaded(storages.size());
  std::vector<bool> is_loaded(storages.size(), false);
  std::vector<TensorData> result;
  result.reserve(named.size());
  for (std::size_t n = 0; n < named.size(); ++n) {
    const TensorRef& t = *named[n].tensor;
    const StorageRef& s = storages[t.storage];
    if (!is_loaded[t.storage]) {
      loaded[t.storage] = load_storage(zip, prefix, s, named[n].name);
      is_loaded[t.storage] = true;
    }
    TensorData td;
    td.name = named[n].name;
    td.dtype = s.dtype;
    std::size_t numel = 1;  // fits: check_views bounded numel * itemsize
    for (const std::uint64_t d : t.size) {
      td.shape.push_back(static_cast<std::int64_t>(d));
      numel *= static_cast<std::size_t>(d);
    }
    const std::size_t item = dtype_size(s.dtype);
    try {
      td.bytes.resize(numel * item);
    } catch (const std::bad_alloc&) {  // a stride-0 view of a tiny storage can ask for max_total_bytes
      zip.fail("tensor '" + td.name + "': cannot allocate " + std::to_string(numel * item) + " bytes");
    }
    if (numel > 0) gather(loaded[t.storage].data, t, item, td.bytes.data());
    result.push_back(std::move(td));
    if (last_use[t.storage] == n) loaded[t.storage] = EntryBytes{};
  }
  return result;
}

}  // namespace vitmsn
