#include "vitmsn/torch_checkpoint.hpp"

#include <algorithm>
#include <cstring>
#include <iterator>
#include <limits>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "file_util.hpp"
#include "inflate.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {
namespace {

// ---------------------------------------------------------------------------------------------
// Little helpers

std::uint16_t rd16(const std::uint8_t* p) { return static_cast<std::uint16_t>(p[0] | p[1] << 8); }
std::uint32_t rd32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24;
}
std::uint64_t rd64(const std::uint8_t* p) { return rd32(p) | std::uint64_t{rd32(p + 4)} << 32; }

std::string hex32(std::uint32_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s = "0x00000000";
  for (int i = 9; i >= 2; --i, v >>= 4) s[i] = kDigits[v & 15u];
  return s;
}

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
// Zip archive (APPNOTE.TXT 6.3): central directory, ZIP64 end records and extra fields.

constexpr std::uint32_t kLocalHeaderSig = 0x04034b50;
constexpr std::uint32_t kCentralHeaderSig = 0x02014b50;
constexpr std::uint32_t kEndSig = 0x06054b50;
constexpr std::uint32_t kZip64EndSig = 0x06064b50;
constexpr std::uint32_t kZip64LocatorSig = 0x07064b50;
constexpr std::size_t kLocalHeaderSize = 30;
constexpr std::size_t kCentralHeaderSize = 46;
constexpr std::size_t kEndSize = 22;
constexpr std::size_t kZip64LocatorSize = 20;
constexpr std::size_t kZip64EndSize = 56;
constexpr std::size_t kMaxZipComment = 0xFFFF;
constexpr std::uint16_t kZip64ExtraId = 0x0001;
constexpr std::uint16_t kMethodStored = 0;
constexpr std::uint16_t kMethodDeflated = 8;
constexpr std::uint16_t kFlagEncrypted = 0x0001;
constexpr std::uint16_t kFlagDataDescriptor = 0x0008;
constexpr std::uint16_t kFlagStrongEncryption = 0x0040;
constexpr std::uint32_t kZip64Marker32 = 0xFFFFFFFF;
constexpr std::uint16_t kZip64Marker16 = 0xFFFF;

struct ZipEntry {
  std::string name;
  std::uint16_t flags = 0;
  std::uint16_t method = 0;
  std::uint32_t crc = 0;
  std::uint64_t compressed_size = 0;
  std::uint64_t size = 0;  // uncompressed
  std::uint64_t local_offset = 0;
  std::uint64_t data_offset = 0;  // set once the local header is validated
};

/// Bytes of one entry: a view into the map (stored) or an owned, inflated buffer (deflated).
struct EntryBytes {
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  std::vector<std::uint8_t> owned;
};

class ZipArchive {
 public:
  ZipArchive(const std::string& path, const std::uint8_t* data, std::size_t size, const TorchCheckpointLimits& limits)
      : path_(path), data_(data), size_(size), limits_(limits) {
    read_central_directory();
    validate_local_headers();
  }

  const std::vector<ZipEntry>& entries() const { return entries_; }

  const ZipEntry* find(const std::string& name) const {
    const auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : &entries_[it->second];
  }

  /// The entry's uncompressed bytes, CRC-32 verified.
  EntryBytes read(const ZipEntry& e) const {
    EntryBytes out;
    const std::uint8_t* raw = data_ + e.data_offset;
    if (e.method == kMethodStored) {
      out.data = raw;
      out.size = static_cast<std::size_t>(e.size);
    } else {
      try {
        out.owned =
            detail::inflate_raw(raw, static_cast<std::size_t>(e.compressed_size), static_cast<std::size_t>(e.size));
      } catch (const Error& err) {
        fail("entry '" + e.name + "': " + err.what());
      } catch (const std::bad_alloc&) {
        fail("entry '" + e.name + "': cannot allocate " + std::to_string(e.size) + " bytes");
      }
      out.data = out.owned.data();
      out.size = out.owned.size();
    }
    const std::uint32_t crc = detail::crc32(out.data, out.size);
    if (crc != e.crc) {
      fail("entry '" + e.name + "': CRC-32 mismatch (central directory says " + hex32(e.crc) + ", data has " +
           hex32(crc) + ")");
    }
    return out;
  }

  [[noreturn]] void fail(const std::string& what) const { throw Error(path_ + ": " + what); }

 private:
  void read_central_directory() {
    if (size_ < kEndSize) {
      fail("not a zip archive (" + std::to_string(size_) + " bytes, too small for an end-of-central-directory record)" +
           legacy_hint());
    }
    // The end record sits at the very end, after a comment of up to 64 KiB whose length it states.
    std::size_t end = 0;
    bool found = false;
    const std::size_t lowest = size_ - kEndSize > kMaxZipComment ? size_ - kEndSize - kMaxZipComment : 0;
    for (std::size_t pos = size_ - kEndSize + 1; pos-- > lowest;) {
      if (rd32(data_ + pos) == kEndSig && pos + kEndSize + rd16(data_ + pos + 20) == size_) {
        end = pos;
        found = true;
        break;
      }
    }
    if (!found) fail("not a zip archive (no end-of-central-directory record)" + legacy_hint());

    const std::uint8_t* e = data_ + end;
    std::uint64_t disk = rd16(e + 4);
    std::uint64_t cd_disk = rd16(e + 6);
    std::uint64_t disk_entries = rd16(e + 8);
    std::uint64_t count = rd16(e + 10);
    std::uint64_t cd_size = rd32(e + 12);
    std::uint64_t cd_offset = rd32(e + 16);
    std::uint64_t cd_limit = end;  // the central directory ends before the end records

    if (end >= kZip64LocatorSize && rd32(data_ + end - kZip64LocatorSize) == kZip64LocatorSig) {
      const std::uint8_t* loc = data_ + end - kZip64LocatorSize;
      const std::uint64_t rec = rd64(loc + 8);
      if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1) fail("split (multi-disk) zip archives are not supported");
      const std::uint64_t rec_limit = end - kZip64LocatorSize;
      if (rec > rec_limit || rec_limit - rec < kZip64EndSize) {
        fail("ZIP64 end-of-central-directory offset " + std::to_string(rec) + " is outside the file");
      }
      const std::uint8_t* z = data_ + rec;
      if (rd32(z) != kZip64EndSig) fail("ZIP64 end-of-central-directory record has a bad signature");
      const std::uint64_t rec_size = rd64(z + 4);
      if (rec_size < kZip64EndSize - 12 || rec_size > rec_limit - rec - 12) {
        fail("ZIP64 end-of-central-directory record has a bad size (" + std::to_string(rec_size) + ")");
      }
      disk = rd32(z + 16);
      cd_disk = rd32(z + 20);
      disk_entries = rd64(z + 24);
      count = rd64(z + 32);
      cd_size = rd64(z + 40);
      cd_offset = rd64(z + 48);
      cd_limit = rec;
    } else if (count == kZip64Marker16 || cd_size == kZip64Marker32 || cd_offset == kZip64Marker32) {
      fail("zip end record needs a ZIP64 end-of-central-directory record, but there is none");
    }
    if (disk != 0 || cd_disk != 0 || disk_entries != count) {
      fail("split (multi-disk) zip archives are not supported");
    }
    if (count == 0) fail("zip archive has no entries");
    if (count > limits_.max_zip_entries) {
      fail("zip archive has " + std::to_string(count) + " entries, above the limit of " +
           std::to_string(limits_.max_zip_entries));
    }
    if (cd_offset > cd_limit || cd_size > cd_limit - cd_offset) {
      fail("central directory (offset " + std::to_string(cd_offset) + ", " + std::to_string(cd_size) +
           " bytes) lies outside the file (" + std::to_string(size_) + " bytes)");
    }
    if (count > cd_size / kCentralHeaderSize) {
      fail("central directory of " + std::to_string(cd_size) + " bytes cannot hold " + std::to_string(count) +
           " entries");
    }
    cd_offset_ = cd_offset;

    std::size_t p = static_cast<std::size_t>(cd_offset);
    const std::size_t cd_end = static_cast<std::size_t>(cd_offset + cd_size);
    entries_.reserve(static_cast<std::size_t>(count));
    for (std::uint64_t i = 0; i < count; ++i) {
      const std::string where = "central directory entry " + std::to_string(i);
      if (cd_end - p < kCentralHeaderSize || rd32(data_ + p) != kCentralHeaderSig) {
        fail(where + " at offset " + std::to_string(p) + " is truncated or has a bad signature");
      }
      const std::uint8_t* h = data_ + p;
      ZipEntry entry;
      entry.flags = rd16(h + 8);
      entry.method = rd16(h + 10);
      entry.crc = rd32(h + 16);
      entry.compressed_size = rd32(h + 20);
      entry.size = rd32(h + 24);
      const std::size_t name_len = rd16(h + 28);
      const std::size_t extra_len = rd16(h + 30);
      const std::size_t comment_len = rd16(h + 32);
      std::uint32_t start_disk = rd16(h + 34);
      entry.local_offset = rd32(h + 42);
      if (cd_end - p - kCentralHeaderSize < name_len + extra_len + comment_len) {
        fail(where + " runs past the end of the central directory");
      }
      entry.name.assign(reinterpret_cast<const char*>(h + kCentralHeaderSize), name_len);
      read_zip64_extra(entry, start_disk, h + kCentralHeaderSize + name_len, extra_len);
      check_entry(entry, start_disk);
      if (!by_name_.emplace(entry.name, entries_.size()).second) {
        fail("zip archive has two entries named '" + entry.name + "'");
      }
      entries_.push_back(std::move(entry));
      p += kCentralHeaderSize + name_len + extra_len + comment_len;
    }
  }

  /// Replaces 0xFFFFFFFF fields by their 64-bit values from the ZIP64 extra field (APPNOTE 4.5.3:
  /// present in this order, and only for fields that hold the marker).
  void read_zip64_extra(ZipEntry& entry, std::uint32_t& start_disk, const std::uint8_t* x, std::size_t len) const {
    const bool need_size = entry.size == kZip64Marker32;
    const bool need_csize = entry.compressed_size == kZip64Marker32;
    const bool need_offset = entry.local_offset == kZip64Marker32;
    const bool need_disk = start_disk == kZip64Marker16;
    bool seen = false;
    std::size_t q = 0;
    while (len - q >= 4) {
      const std::uint16_t id = rd16(x + q);
      const std::size_t field_len = rd16(x + q + 2);
      q += 4;
      if (len - q < field_len) fail("entry '" + entry.name + "': extra field runs past its header");
      if (id == kZip64ExtraId && !seen) {
        seen = true;
        const std::size_t need = 8 * (need_size + need_csize + need_offset) + 4 * need_disk;
        if (field_len < need) fail("entry '" + entry.name + "': ZIP64 extra field is too short");
        const std::uint8_t* f = x + q;
        if (need_size) entry.size = rd64(f), f += 8;
        if (need_csize) entry.compressed_size = rd64(f), f += 8;
        if (need_offset) entry.local_offset = rd64(f), f += 8;
        if (need_disk) start_disk = rd32(f);
      }
      q += field_len;
    }
    if (!seen && (need_size || need_csize || need_offset || need_disk)) {
      fail("entry '" + entry.name + "' needs a ZIP64 extra field, but has none");
    }
  }

  void check_entry(const ZipEntry& e, std::uint32_t start_disk) const {
    const std::string what = "entry '" + e.name + "'";
    if (e.flags & (kFlagEncrypted | kFlagStrongEncryption)) fail(what + " is encrypted");
    if (start_disk != 0) fail("split (multi-disk) zip archives are not supported");
    if (e.method != kMethodStored && e.method != kMethodDeflated) {
      fail(what + " uses compression method " + std::to_string(e.method) + " (only stored and deflated are supported)");
    }
    if (e.method == kMethodStored && e.compressed_size != e.size) {
      fail(what + " is stored, but its compressed size " + std::to_string(e.compressed_size) +
           " differs from its size " + std::to_string(e.size));
    }
    if (e.size > limits_.max_entry_bytes || e.compressed_size > limits_.max_entry_bytes) {
      fail(what + " has " + std::to_string(std::max(e.size, e.compressed_size)) + " bytes, above the limit of " +
           std::to_string(limits_.max_entry_bytes));
    }
    if (e.size > std::numeric_limits<std::size_t>::max()) fail(what + " does not fit in memory");
  }

  /// Each local header must sit before the central directory, repeat the central name and method,
  /// and leave room for its data; entries may not overlap.
  void validate_local_headers() {
    for (ZipEntry& e : entries_) {
      const std::string what = "entry '" + e.name + "'";
      if (e.local_offset > cd_offset_ || cd_offset_ - e.local_offset < kLocalHeaderSize) {
        fail(what + ": local header offset " + std::to_string(e.local_offset) +
             " is outside the file's entry area (central directory at " + std::to_string(cd_offset_) + ")");
      }
      const std::uint8_t* h = data_ + e.local_offset;
      if (rd32(h) != kLocalHeaderSig) {
        fail(what + ": no local header at offset " + std::to_string(e.local_offset));
      }
      const std::uint16_t flags = rd16(h + 6);
      const std::uint16_t method = rd16(h + 8);
      const std::uint64_t name_len = rd16(h + 26);
      const std::uint64_t extra_len = rd16(h + 28);
      const std::uint64_t room = cd_offset_ - e.local_offset - kLocalHeaderSize;
      if (name_len + extra_len > room || e.compressed_size > room - name_len - extra_len) {
        fail(what + ": data (" + std::to_string(e.compressed_size) + " bytes at offset " +
             std::to_string(e.local_offset) + ") runs past the entry area");
      }
      if (method != e.method) fail(what + ": local header and central directory disagree on the method");
      if (name_len != e.name.size() || std::memcmp(h + kLocalHeaderSize, e.name.data(), e.name.size()) != 0) {
        fail(what + ": local header names a different entry");
      }
      if (!(flags & kFlagDataDescriptor)) {
        // Without a data descriptor the local header carries CRC and sizes itself (0xFFFFFFFF
        // sizes defer to its ZIP64 extra field).
        const std::uint32_t csize = rd32(h + 18);
        const std::uint32_t usize = rd32(h + 22);
        if (rd32(h + 14) != e.crc || (csize != kZip64Marker32 && csize != e.compressed_size) ||
            (usize != kZip64Marker32 && usize != e.size)) {
          fail(what + ": local header and central directory disagree on CRC or sizes");
        }
      }
      e.data_offset = e.local_offset + kLocalHeaderSize + name_len + extra_len;
    }
    std::vector<const ZipEntry*> order;
    order.reserve(entries_.size());
    for (const ZipEntry& e : entries_) order.push_back(&e);
    std::sort(order.begin(), order.end(),
              [](const ZipEntry* a, const ZipEntry* b) { return a->local_offset < b->local_offset; });
    for (std::size_t i = 1; i < order.size(); ++i) {
      if (order[i]->local_offset < order[i - 1]->data_offset + order[i - 1]->compressed_size) {
        fail("entries '" + order[i - 1]->name + "' and '" + order[i]->name + "' overlap");
      }
    }
  }

  std::string legacy_hint() const {
    // torch.save before PyTorch 1.6 (or with _use_new_zipfile_serialization=False) writes a bare
    // pickle stream, which starts with the PROTO opcode.
    if (size_ >= 2 && data_[0] == 0x80 && data_[1] <= 5) {
      return "; this looks like the legacy torch.save format (before PyTorch 1.6), which is not "
             "supported: re-save it with a recent PyTorch";
    }
    return "";
  }

  std::string path_;
  const std::uint8_t* data_;
  std::size_t size_;
  const TorchCheckpointLimits& limits_;
  std::uint64_t cd_offset_ = 0;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, std::size_t> by_name_;
};

// ---------------------------------------------------------------------------------------------
// Pickle machine: the opcodes and globals of a tensor state dict, nothing else.

/// Pickle opcodes by pickletools name (protocols 0-5), for error messages: the refused ones too.
struct OpcodeName {
  std::uint8_t op;
  const char* name;
};
// clang-format off
constexpr OpcodeName kOpcodeNames[] = {
    {'(', "MARK"}, {'.', "STOP"}, {'0', "POP"}, {'1', "POP_MARK"}, {'2', "DUP"}, {'F', "FLOAT"}, {'I', "INT"},
    {'J', "BININT"}, {'K', "BININT1"}, {'L', "LONG"}, {'M', "BININT2"}, {'N', "NONE"}, {'P', "PERSID"},
    {'Q', "BINPERSID"}, {'R', "REDUCE"}, {'S', "STRING"}, {'T', "BINSTRING"}, {'U', "SHORT_BINSTRING"},
    {'V', "UNICODE"}, {'X', "BINUNICODE"}, {'a', "APPEND"}, {'b', "BUILD"}, {'c', "GLOBAL"}, {'d', "DICT"},
    {'}', "EMPTY_DICT"}, {'e', "APPENDS"}, {'g', "GET"}, {'h', "BINGET"}, {'i', "INST"}, {'j', "LONG_BINGET"},
    {'l', "LIST"}, {']', "EMPTY_LIST"}, {'o', "OBJ"}, {'p', "PUT"}, {'q', "BINPUT"}, {'r', "LONG_BINPUT"},
    {'s', "SETITEM"}, {'t', "TUPLE"}, {')', "EMPTY_TUPLE"}, {'u', "SETITEMS"}, {'G', "BINFLOAT"}, {'B', "BINBYTES"},
    {'C', "SHORT_BINBYTES"}, {0x80, "PROTO"}, {0x81, "NEWOBJ"}, {0x82, "EXT1"}, {0x83, "EXT2"}, {0x84, "EXT4"},
    {0x85, "TUPLE1"}, {0x86, "TUPLE2"}, {0x87, "TUPLE3"}, {0x88, "NEWTRUE"}, {0x89, "NEWFALSE"}, {0x8a, "LONG1"},
    {0x8b, "LONG4"}, {0x8c, "SHORT_BINUNICODE"}, {0x8d, "BINUNICODE8"}, {0x8e, "BINBYTES8"}, {0x8f, "EMPTY_SET"},
    {0x90, "ADDITEMS"}, {0x91, "FROZENSET"}, {0x92, "NEWOBJ_EX"}, {0x93, "STACK_GLOBAL"}, {0x94, "MEMOIZE"},
    {0x95, "FRAME"}, {0x96, "BYTEARRAY8"}, {0x97, "NEXT_BUFFER"}, {0x98, "READONLY_BUFFER"}};
// clang-format on

const char* opcode_name(std::uint8_t op) {
  for (const OpcodeName& o : kOpcodeNames) {
    if (o.op == op) return o.name;
  }
  return nullptr;
}

/// What an allowed global does when called (REDUCE) or named in a persistent id.
enum class GlobalKind {
  kOrderedDict,
  kRebuildTensor,              // _rebuild_tensor(storage, offset, size, stride)
  kRebuildTensorV2,            // + requires_grad, backward_hooks[, metadata]
  kRebuildParameter,           // (tensor, requires_grad, backward_hooks)
  kRebuildParameterWithState,  // + state
  kStorageType,
};

struct AllowedGlobal {
  const char* module;
  const char* name;
  GlobalKind kind;
  DType dtype;  // storage types only
};

// The whole allow-list. Storage classes are pickled by module 'torch' (torch/__init__.py defines
// them); UntypedStorage lives in torch.storage and is re-exported by torch; its elements are bytes.
constexpr AllowedGlobal kAllowedGlobals[] = {
    {"collections", "OrderedDict", GlobalKind::kOrderedDict, DType::kU8},
    {"torch._utils", "_rebuild_tensor", GlobalKind::kRebuildTensor, DType::kU8},
    {"torch._utils", "_rebuild_tensor_v2", GlobalKind::kRebuildTensorV2, DType::kU8},
    {"torch._utils", "_rebuild_parameter", GlobalKind::kRebuildParameter, DType::kU8},
    {"torch._utils", "_rebuild_parameter_with_state", GlobalKind::kRebuildParameterWithState, DType::kU8},
    {"torch", "FloatStorage", GlobalKind::kStorageType, DType::kF32},
    {"torch", "HalfStorage", GlobalKind::kStorageType, DType::kF16},
    {"torch", "BFloat16Storage", GlobalKind::kStorageType, DType::kBF16},
    {"torch", "DoubleStorage", GlobalKind::kStorageType, DType::kF64},
    {"torch", "LongStorage", GlobalKind::kStorageType, DType::kI64},
    {"torch", "IntStorage", GlobalKind::kStorageType, DType::kI32},
    {"torch", "ShortStorage", GlobalKind::kStorageType, DType::kI16},
    {"torch", "CharStorage", GlobalKind::kStorageType, DType::kI8},
    {"torch", "ByteStorage", GlobalKind::kStorageType, DType::kU8},
    {"torch", "BoolStorage", GlobalKind::kStorageType, DType::kBool},
    {"torch", "UntypedStorage", GlobalKind::kStorageType, DType::kU8},
    {"torch.storage", "UntypedStorage", GlobalKind::kStorageType, DType::kU8},
};

enum class Kind : std::uint8_t {
  kNone,
  kBool,
  kInt,
  kFloat,
  kString,
  kTuple,
  kList,
  kDict,
  kGlobal,
  kStorage,
  kTensor
};

/// Python's name of each Kind, in enum order.
constexpr const char* kKindNames[] = {"None", "bool", "int",    "float",   "str",   "tuple",
                                      "list", "dict", "global", "storage", "tensor"};

const char* kind_name(Kind k) { return kKindNames[static_cast<std::size_t>(k)]; }

/// A pickle value. Scalars live inline; strings, containers, storages and tensors live in the
/// machine's arenas and `i` indexes them, so shared references (memo) behave like Python's and
/// self-referencing containers cannot leak.
struct Value {
  Kind kind = Kind::kNone;
  std::int64_t i = 0;  // int, bool, or arena index
  double f = 0;
};

struct Dict {
  std::vector<std::pair<Value, Value>> items;          // insertion order, as Python keeps it
  std::unordered_map<std::string, std::size_t> index;  // canonical key -> position in items
};

struct StorageRef {
  std::string key;
  DType dtype = DType::kU8;
  std::uint64_t numel = 0;  // elements of dtype
};

struct TensorRef {
  std::size_t storage = 0;
  std::uint64_t offset = 0;  // elements
  std::vector<std::uint64_t> size;
  std::vector<std::uint64_t> stride;  // elements
};

class PickleMachine {
 public:
  PickleMachine(std::string where, const std::uint8_t* data, std::size_t size, const TorchCheckpointLimits& limits)
      : where_(std::move(where)), data_(data), size_(size), limits_(limits) {}

  /// Runs to STOP and returns the unpickled object.
  Value run() {
    while (pos_ < size_) {
      op_pos_ = pos_;
      op_ = data_[pos_++];
      if (++ops_ > limits_.max_pickle_ops) {
        fail("more than " + std::to_string(limits_.max_pickle_ops) + " opcodes (limit)");
      }
      if (op_ == '.') {  // STOP
        return pop();
      }
      step();
    }
    op_pos_ = size_;
    fail("ends without a STOP opcode");
  }

  const std::string& str(const Value& v) const { return strings_[static_cast<std::size_t>(v.i)]; }
  const std::vector<Value>& seq(const Value& v) const { return seqs_[static_cast<std::size_t>(v.i)]; }
  const Dict& dict(const Value& v) const { return dicts_[static_cast<std::size_t>(v.i)]; }
  const std::vector<StorageRef>& storages() const { return storages_; }
  const TensorRef& tensor(const Value& v) const { return tensors_[static_cast<std::size_t>(v.i)]; }
  /// Opcodes executed by run().
  std::size_t ops_executed() const { return ops_; }

  /// A dict key as a tensor-name component: strings as is, integers in decimal.
  std::string key_text(const Value& k) const {
    if (k.kind == Kind::kString) return str(k);
    if (k.kind == Kind::kInt) return std::to_string(k.i);
    throw Error(where_ + ": dict key of type " + kind_name(k.kind) + " cannot name a tensor");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    std::string op = "end of data";
    if (op_pos_ < size_) {
      const char* name = opcode_name(op_);
      op = std::string("opcode ") + (name ? name : hex_byte(op_)) + " at offset " + std::to_string(op_pos_);
    }
    throw Error(where_ + ": " + what + " (" + op + ")");
  }
  static std::string hex_byte(std::uint8_t b) {
    static const char kDigits[] = "0123456789abcdef";
    return std::string("0x") + kDigits[b >> 4] + kDigits[b & 15];
  }

  // --- input
  const std::uint8_t* take(std::size_t n) {
    if (size_ - pos_ < n) fail("truncated: needs " + std::to_string(n) + " more bytes");
    const std::uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
  }
  std::uint8_t u8() { return *take(1); }
  std::string line() {
    const void* nl = std::memchr(data_ + pos_, '\n', size_ - pos_);
    if (nl == nullptr) fail("truncated: line without a newline");
    const std::size_t n = static_cast<const std::uint8_t*>(nl) - (data_ + pos_);
    std::string s(reinterpret_cast<const char*>(take(n)), n);
    ++pos_;
    return s;
  }

  // --- stack
  void push(const Value& v) {
    if (stack_.size() >= limits_.max_stack_size) {
      fail("stack deeper than " + std::to_string(limits_.max_stack_size) + " values (limit)");
    }
    stack_.push_back(v);
  }
  Value pop() {
    if (stack_.size() <= mark_floor()) fail("pops from an empty stack");
    Value v = stack_.back();
    stack_.pop_back();
    return v;
  }
  Value& top() {
    if (stack_.size() <= mark_floor()) fail("reads from an empty stack");
    return stack_.back();
  }
  std::size_t mark_floor() const { return marks_.empty() ? 0 : marks_.back(); }
  /// Values above the topmost MARK, which is removed.
  std::vector<Value> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to");
    const std::size_t m = marks_.back();
    marks_.pop_back();
    std::vector<Value> items(stack_.begin() + static_cast<std::ptrdiff_t>(m), stack_.end());
    stack_.resize(m);
    return items;
  }

  // --- values
  Value make(Kind kind, std::size_t index) { return Value{kind, static_cast<std::int64_t>(index), 0}; }
  Value new_string(std::string s) {
    strings_.push_back(std::move(s));
    return make(Kind::kString, strings_.size() - 1);
  }
  Value new_seq(Kind kind, std::vector<Value> items) {
    seqs_.push_back(std::move(items));
    return make(kind, seqs_.size() - 1);
  }
  Value new_dict() {
    dicts_.emplace_back();
    return make(Kind::kDict, dicts_.size() - 1);
  }
  void expect(const Value& v, Kind kind, const char* what) {
    if (v.kind != kind) {
      fail(std::string(what) + " must be " + kind_name(kind) + ", got " + kind_name(v.kind));
    }
  }
  std::uint64_t non_negative(const Value& v, const char* what) {
    expect(v, Kind::kInt, what);
    if (v.i < 0) fail(std::string(what) + " is negative (" + std::to_string(v.i) + ")");
    return static_cast<std::uint64_t>(v.i);
  }

  void set_item(std::size_t dict_index, const Value& key, const Value& value) {
    std::string canonical;
    if (key.kind == Kind::kString) {
      canonical = "s" + str(key);
    } else if (key.kind == Kind::kInt) {
      canonical = "i" + std::to_string(key.i);
    } else {
      fail(std::string("dict key of type ") + kind_name(key.kind) + " is not supported");
    }
    Dict& d = dicts_[dict_index];
    const auto [it, inserted] = d.index.emplace(std::move(canonical), d.items.size());
    if (inserted) {
      d.items.emplace_back(key, value);
    } else {
      d.items[it->second].second = value;
    }
  }

  void memo_put(std::uint64_t slot) {
    const Value v = top();
    auto it = memo_.find(slot);
    if (it != memo_.end()) {
      it->second = v;
      return;
    }
    if (memo_.size() >= limits_.max_memo_entries) {
      fail("more than " + std::to_string(limits_.max_memo_entries) + " memo entries (limit)");
    }
    memo_.emplace(slot, v);
  }
  void memo_get(std::uint64_t slot) {
    const auto it = memo_.find(slot);
    if (it == memo_.end()) fail("memo slot " + std::to_string(slot) + " is empty");
    push(it->second);
  }

  Value lookup_global(const std::string& module, const std::string& name) {
    for (std::size_t g = 0; g < std::size(kAllowedGlobals); ++g) {
      if (module == kAllowedGlobals[g].module && name == kAllowedGlobals[g].name) {
        return make(Kind::kGlobal, g);
      }
    }
    std::string shown = module + "." + name;
    if (shown.size() > 200) shown = shown.substr(0, 200) + "...";
    fail("global '" + shown +
         "' is not allowed (a state dict of tensors needs only OrderedDict, "
         "torch._utils._rebuild_* and torch storage types)");
  }

  std::string global_name(const Value& g) const {
    const AllowedGlobal& a = kAllowedGlobals[static_cast<std::size_t>(g.i)];
    return std::string(a.module) + "." + a.name;
  }

  void step() {
    switch (op_) {
      case 0x80: {  // PROTO
        const std::uint8_t v = u8();
        if (v > 5) fail("pickle protocol " + std::to_string(v) + " is not supported (2-5)");
        return;
      }
      case 0x95: {  // FRAME: a length prefix for buffering; the content is ordinary opcodes
        const std::uint64_t n = rd64(take(8));
        if (n > size_ - pos_) fail("frame of " + std::to_string(n) + " bytes runs past the end");
        return;
      }
      case '(':  // MARK
        if (marks_.size() >= limits_.max_nesting_depth) {
          fail("MARKs nested deeper than " + std::to_string(limits_.max_nesting_depth) + " (limit)");
        }
        marks_.push_back(stack_.size());
        return;
      case '}':  // EMPTY_DICT
        push(new_dict());
        return;
      case ']':  // EMPTY_LIST
        push(new_seq(Kind::kList, {}));
        return;
      case ')':  // EMPTY_TUPLE
        push(new_seq(Kind::kTuple, {}));
        return;
      case 't':  // TUPLE
        push(new_seq(Kind::kTuple, pop_mark()));
        return;
      case 0x85:    // TUPLE1
      case 0x86:    // TUPLE2
      case 0x87: {  // TUPLE3
        const std::size_t n = op_ - 0x84u;
        std::vector<Value> items(n);
        for (std::size_t k = n; k-- > 0;) items[k] = pop();
        push(new_seq(Kind::kTuple, std::move(items)));
        return;
      }
      case 'q':  // BINPUT
        memo_put(u8());
        return;
      case 'r':  // LONG_BINPUT
        memo_put(rd32(take(4)));
        return;
      case 0x94:  // MEMOIZE
        memo_put(memo_.size());
        return;
      case 'h':  // BINGET
        memo_get(u8());
        return;
      case 'j':  // LONG_BINGET
        memo_get(rd32(take(4)));
        return;
      case 's': {  // SETITEM
        const Value value = pop();
        const Value key = pop();
        const Value d = top();
        expect(d, Kind::kDict, "SETITEM target");
        set_item(static_cast<std::size_t>(d.i), key, value);
        return;
      }
      case 'u': {  // SETITEMS
        const std::vector<Value> items = pop_mark();
        if (items.size() % 2 != 0) fail("odd number of values for key/value pairs");
        const Value d = top();
        expect(d, Kind::kDict, "SETITEMS target");
        for (std::size_t k = 0; k < items.size(); k += 2) {
          set_item(static_cast<std::size_t>(d.i), items[k], items[k + 1]);
        }
        return;
      }
      case 'a': {  // APPEND
        const Value v = pop();
        const Value l = top();
        expect(l, Kind::kList, "APPEND target");
        seqs_[static_cast<std::size_t>(l.i)].push_back(v);
        return;
      }
      case 'e': {  // APPENDS
        const std::vector<Value> items = pop_mark();
        const Value l = top();
        expect(l, Kind::kList, "APPENDS target");
        auto& dst = seqs_[static_cast<std::size_t>(l.i)];
        dst.insert(dst.end(), items.begin(), items.end());
        return;
      }
      case 'K':  // BININT1
        push(Value{Kind::kInt, u8(), 0});
        return;
      case 'M':  // BININT2
        push(Value{Kind::kInt, rd16(take(2)), 0});
        return;
      case 'J':  // BININT
        push(Value{Kind::kInt, static_cast<std::int32_t>(rd32(take(4))), 0});
        return;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const std::size_t n = u8();
        if (n > 8) fail("integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
        const std::uint8_t* p = take(n);
        std::uint64_t u = 0;
        for (std::size_t k = 0; k < n; ++k) u |= std::uint64_t{p[k]} << (8 * k);
        if (n > 0 && n < 8 && (p[n - 1] & 0x80)) u |= ~std::uint64_t{0} << (8 * n);  // sign-extend
        std::int64_t v;
        std::memcpy(&v, &u, sizeof v);
        push(Value{Kind::kInt, v, 0});
        return;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        const std::uint8_t* p = take(8);
        std::uint64_t u = 0;
        for (int k = 0; k < 8; ++k) u = u << 8 | p[k];
        double d;
        std::memcpy(&d, &u, sizeof d);
        push(Value{Kind::kFloat, 0, d});
        return;
      }
      case 0x88:  // NEWTRUE
        push(Value{Kind::kBool, 1, 0});
        return;
      case 0x89:  // NEWFALSE
        push(Value{Kind::kBool, 0, 0});
        return;
      case 'N':  // NONE
        push(Value{});
        return;
      case 'X':  // BINUNICODE
        push_string(rd32(take(4)));
        return;
      case 0x8c:  // SHORT_BINUNICODE
        push_string(u8());
        return;
      case 0x8d:  // BINUNICODE8
        push_string(rd64(take(8)));
        return;
      case 'U':  // SHORT_BINSTRING (Python 2 str)
        push_string(u8());
        return;
      case 'T': {  // BINSTRING: signed 32-bit length
        const auto n = static_cast<std::int32_t>(rd32(take(4)));
        if (n < 0) fail("negative string length");
        push_string(static_cast<std::uint64_t>(n));
        return;
      }
      case 'c': {  // GLOBAL "module\nname\n"
        const std::string module = line();
        const std::string name = line();
        push(lookup_global(module, name));
        return;
      }
      case 0x93: {  // STACK_GLOBAL
        const Value name = pop();
        const Value module = pop();
        expect(name, Kind::kString, "STACK_GLOBAL name");
        expect(module, Kind::kString, "STACK_GLOBAL module");
        push(lookup_global(str(module), str(name)));
        return;
      }
      case 'Q': {  // BINPERSID
        const Value pid = pop();
        push(persistent_load(pid));
        return;
      }
      case 'R': {  // REDUCE
        const Value args = pop();
        const Value callable = pop();
        expect(callable, Kind::kGlobal, "REDUCE callable");
        expect(args, Kind::kTuple, "REDUCE arguments");
        push(call(callable, seq(args)));
        return;
      }
      case 'b': {  // BUILD
        const Value state = pop();
        const Value target = top();
        // An OrderedDict state dict carries its `_metadata` (per-module versions) as instance
        // state; tensors need none of it, so it is checked for type and dropped.
        if (target.kind != Kind::kDict) {
          fail(std::string("BUILD on a ") + kind_name(target.kind) + " is not allowed (only on a dict)");
        }
        if (state.kind != Kind::kDict && state.kind != Kind::kNone && state.kind != Kind::kTuple) {
          fail(std::string("BUILD state of type ") + kind_name(state.kind) + " is not allowed");
        }
        return;
      }
      default: {
        const char* name = opcode_name(op_);
        fail(name ? "opcode is not allowed in a tensor checkpoint" : "unknown opcode");
      }
    }
  }

  void push_string(std::uint64_t n) {
    if (n > size_ - pos_) fail("string of " + std::to_string(n) + " bytes runs past the end");
    const auto* p = reinterpret_cast<const char*>(take(static_cast<std::size_t>(n)));
    push(new_string(std::string(p, static_cast<std::size_t>(n))));
  }

  /// ('storage', storage_type, key, location, numel), as torch.serialization's persistent_id writes.
  Value persistent_load(const Value& pid) {
    expect(pid, Kind::kTuple, "persistent id");
    const std::vector<Value>& t = seq(pid);
    if (t.size() != 5 || t[0].kind != Kind::kString || str(t[0]) != "storage") {
      fail("persistent id must be ('storage', type, key, location, numel)");
    }
    expect(t[1], Kind::kGlobal, "storage type");
    const AllowedGlobal& type = kAllowedGlobals[static_cast<std::size_t>(t[1].i)];
    if (type.kind != GlobalKind::kStorageType) fail("'" + global_name(t[1]) + "' is not a storage type");
    expect(t[2], Kind::kString, "storage key");
    expect(t[3], Kind::kString, "storage location");
    const std::uint64_t numel = non_negative(t[4], "storage size");
    const std::string& key = str(t[2]);
    const auto [it, inserted] = storage_by_key_.emplace(key, storages_.size());
    if (inserted) {
      storages_.push_back(StorageRef{key, type.dtype, numel});
    } else {
      const StorageRef& s = storages_[it->second];
      if (s.dtype != type.dtype || s.numel != numel) {
        fail("storage '" + key + "' is referenced with two different types or sizes");
      }
    }
    return make(Kind::kStorage, it->second);
  }

  Value call(const Value& callable, const std::vector<Value>& args) {
    const AllowedGlobal& g = kAllowedGlobals[static_cast<std::size_t>(callable.i)];
    const std::string name = global_name(callable);
    auto arity = [&](std::size_t lo, std::size_t hi) {
      if (args.size() < lo || args.size() > hi) {
        fail(name + " takes " + std::to_string(lo) + (lo == hi ? "" : "-" + std::to_string(hi)) + " arguments, got " +
             std::to_string(args.size()));
      }
    };
    switch (g.kind) {
      case GlobalKind::kOrderedDict:
        arity(0, 0);
        return new_dict();
      case GlobalKind::kRebuildTensor:
        arity(4, 4);
        return rebuild_tensor(args);
      case GlobalKind::kRebuildTensorV2:
        arity(6, 7);
        expect(args[4], Kind::kBool, "requires_grad");
        check_no_hooks(args[5]);
        if (args.size() == 7 && args[6].kind != Kind::kDict && args[6].kind != Kind::kNone) {
          fail("tensor metadata must be a dict or None");
        }
        return rebuild_tensor(args);
      case GlobalKind::kRebuildParameter:
      case GlobalKind::kRebuildParameterWithState:
        if (g.kind == GlobalKind::kRebuildParameter) {
          arity(3, 3);
        } else {
          arity(4, 4);
        }
        expect(args[0], Kind::kTensor, "parameter data");
        expect(args[1], Kind::kBool, "requires_grad");
        check_no_hooks(args[2]);
        return args[0];  // a Parameter is its tensor
      case GlobalKind::kStorageType:
        break;
    }
    fail("global '" + name + "' cannot be called");
  }

  void check_no_hooks(const Value& hooks) {
    expect(hooks, Kind::kDict, "backward_hooks");
    if (!dict(hooks).items.empty()) fail("backward hooks are not supported");
  }

  Value rebuild_tensor(const std::vector<Value>& args) {
    expect(args[0], Kind::kStorage, "tensor storage");
    TensorRef t;
    t.storage = static_cast<std::size_t>(args[0].i);
    t.offset = non_negative(args[1], "storage_offset");
    expect(args[2], Kind::kTuple, "tensor size");
    expect(args[3], Kind::kTuple, "tensor stride");
    const std::vector<Value>& size = seq(args[2]);
    const std::vector<Value>& stride = seq(args[3]);
    if (size.size() != stride.size()) {
      fail("tensor size has " + std::to_string(size.size()) + " dimensions but stride has " +
           std::to_string(stride.size()));
    }
    if (size.size() > limits_.max_tensor_dims) {
      fail("tensor has " + std::to_string(size.size()) + " dimensions, above the limit of " +
           std::to_string(limits_.max_tensor_dims));
    }
    for (std::size_t d = 0; d < size.size(); ++d) {
      t.size.push_back(non_negative(size[d], "tensor size"));
      t.stride.push_back(non_negative(stride[d], "tensor stride"));
    }
    tensors_.push_back(std::move(t));
    return make(Kind::kTensor, tensors_.size() - 1);
  }

  std::string where_;
  const std::uint8_t* data_;
  std::size_t size_;
  const TorchCheckpointLimits& limits_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::size_t ops_ = 0;
  std::uint8_t op_ = 0;

  std::vector<Value> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, Value> memo_;
  std::vector<std::string> strings_;
  std::vector<std::vector<Value>> seqs_;
  std::vector<Dict> dicts_;
  std::vector<StorageRef> storages_;
  std::unordered_map<std::string, std::size_t> storage_by_key_;
  std::vector<TensorRef> tensors_;
};

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
      throw Error(path_ + ": top-level object is a " + kind_name(root.kind) +
                  ", expected a dict of tensors (a state dict)");
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
    if (out_.empty()) throw Error(path_ + ": checkpoint holds no tensors");
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
      throw Error(path_ + ": dicts nested deeper than " + std::to_string(limits_.max_nesting_depth) +
                  " levels (limit) at '" + prefix + "'");
    }
    for (const auto& [k, v] : vm_.dict(d).items) {
      if (++visited_ > limits_.max_pickle_ops) {
        throw Error(path_ + ": state dict has more than " + std::to_string(limits_.max_pickle_ops) +
                    " entries (limit)");
      }
      // Every entry of a tree of dicts costs the pickle at least one opcode; only a dict shared under
      // several keys is walked more than once, and sharing nested k deep multiplies the walk by 2^k.
      if (visited_ > vm_.ops_executed()) {
        throw Error(path_ + ": state dict shares dicts so often that walking it reached " + std::to_string(visited_) +
                    " entries, more than the " + std::to_string(vm_.ops_executed()) + " opcodes of data.pkl");
      }
      if (v.kind != Kind::kTensor && v.kind != Kind::kDict) continue;
      const std::string name = prefix.empty() ? vm_.key_text(k) : prefix + "." + vm_.key_text(k);
      if (v.kind == Kind::kDict) {
        visit(v, name, depth + 1);
        continue;
      }
      if (!is_valid_utf8(name)) throw Error(path_ + ": tensor name is not valid UTF-8");
      if (!names_.insert(name).second) throw Error(path_ + ": two tensors are named '" + name + "'");
      if (out_.size() >= limits_.max_tensors) {
        throw Error(path_ + ": more than " + std::to_string(limits_.max_tensors) + " tensors (limit)");
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
      zip.fail(what() + " is larger than the limit of " + std::to_string(limits.max_entry_bytes) + " bytes");
    }
    if (!checked_add(total, bytes, total) || total > limits.max_total_bytes) {
      zip.fail("tensors add up to more than the limit of " + std::to_string(limits.max_total_bytes) + " bytes");
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
  if (file.size() == 0) throw Error(path + ": empty file, not a torch.save zip checkpoint");
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
