#include "formats/torch/zip_reader.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>

#include "formats/torch/inflate.hpp"
#include "formats/torch/little_endian.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn::detail::torch {
namespace {

std::string hex32(std::uint32_t v) {
  static const char kDigits[] = "0123456789abcdef";
  std::string s = "0x00000000";
  for (int i = 9; i >= 2; --i, v >>= 4) s[i] = kDigits[v & 15u];
  return s;
}

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

}  // namespace

ZipArchive::ZipArchive(const std::string& path, const std::uint8_t* data, std::size_t size,
                       const TorchCheckpointLimits& limits)
    : path_(path), data_(data), size_(size), limits_(limits) {
  read_central_directory();
  validate_local_headers();
}

const ZipEntry* ZipArchive::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

EntryBytes ZipArchive::read(const ZipEntry& e) const {
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

void ZipArchive::read_central_directory() {
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
    if (rd32(loc + 4) != 0 || rd32(loc + 16) > 1)
      fail("split (multi-disk) zip archives are not supported", ErrorKind::kUnsupported);
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
    fail("split (multi-disk) zip archives are not supported", ErrorKind::kUnsupported);
  }
  if (count == 0) fail("zip archive has no entries");
  if (count > limits_.max_zip_entries) {
    fail("zip archive has " + std::to_string(count) + " entries, above the limit of " +
             std::to_string(limits_.max_zip_entries),
         ErrorKind::kLimit);
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

void ZipArchive::read_zip64_extra(ZipEntry& entry, std::uint32_t& start_disk, const std::uint8_t* x,
                                  std::size_t len) const {
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

void ZipArchive::check_entry(const ZipEntry& e, std::uint32_t start_disk) const {
  const std::string what = "entry '" + e.name + "'";
  if (e.flags & (kFlagEncrypted | kFlagStrongEncryption)) fail(what + " is encrypted", ErrorKind::kUnsupported);
  if (start_disk != 0) fail("split (multi-disk) zip archives are not supported", ErrorKind::kUnsupported);
  if (e.method != kMethodStored && e.method != kMethodDeflated) {
    fail(what + " uses compression method " + std::to_string(e.method) + " (only stored and deflated are supported)",
         ErrorKind::kUnsupported);
  }
  if (e.method == kMethodStored && e.compressed_size != e.size) {
    fail(what + " is stored, but its compressed size " + std::to_string(e.compressed_size) + " differs from its size " +
         std::to_string(e.size));
  }
  if (e.size > limits_.max_entry_bytes || e.compressed_size > limits_.max_entry_bytes) {
    fail(what + " has " + std::to_string(std::max(e.size, e.compressed_size)) + " bytes, above the limit of " +
             std::to_string(limits_.max_entry_bytes),
         ErrorKind::kLimit);
  }
  if (e.size > std::numeric_limits<std::size_t>::max()) fail(what + " does not fit in memory", ErrorKind::kLimit);
}

void ZipArchive::validate_local_headers() {
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

std::string ZipArchive::legacy_hint() const {
  // torch.save before PyTorch 1.6 (or with _use_new_zipfile_serialization=False) writes a bare
  // pickle stream, which starts with the PROTO opcode.
  if (size_ >= 2 && data_[0] == 0x80 && data_[1] <= 5) {
    return "; this looks like the legacy torch.save format (before PyTorch 1.6), which is not "
           "supported: re-save it with a recent PyTorch";
  }
  return "";
}

}  // namespace vitmsn::detail::torch
