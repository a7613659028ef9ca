#pragma once
// A zip archive read in place from memory (APPNOTE.TXT 6.3): the central directory, ZIP64 end records
// and extra fields; every local header, offset and size checked against the file; STORED or DEFLATED
// entries, each one read CRC-32 verified. Used by the torch checkpoint reader
// (src/formats/torch_checkpoint.cpp); knows nothing of pickles or tensors.
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "vitmsn/error.hpp"
#include "vitmsn/torch_checkpoint.hpp"

namespace vitmsn::detail::torch {

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

/// The entries of a zip archive held in memory (`data` must outlive the object). Every failure
/// throws Error starting with `path`.
class ZipArchive {
 public:
  ZipArchive(const std::string& path, const std::uint8_t* data, std::size_t size, const TorchCheckpointLimits& limits);

  const std::vector<ZipEntry>& entries() const { return entries_; }

  const ZipEntry* find(const std::string& name) const;

  /// The entry's uncompressed bytes, CRC-32 verified.
  EntryBytes read(const ZipEntry& e) const;

  /// Throws "<path>: <what>" of `kind` (default: malformed).
  [[noreturn]] void fail(const std::string& what, ErrorKind kind = ErrorKind::kMalformed) const {
    throw Error(kind, path_ + ": " + what, path_);
  }

 private:
  void read_central_directory();

  /// Replaces 0xFFFFFFFF fields by their 64-bit values from the ZIP64 extra field (APPNOTE 4.5.3:
  /// present in this order, and only for fields that hold the marker).
  void read_zip64_extra(ZipEntry& entry, std::uint32_t& start_disk, const std::uint8_t* x, std::size_t len) const;

  void check_entry(const ZipEntry& e, std::uint32_t start_disk) const;

  /// Each local header must sit before the central directory, repeat the central name and method,
  /// and leave room for its data; entries may not overlap.
  void validate_local_headers();

  std::string legacy_hint() const;

  std::string path_;
  const std::uint8_t* data_;
  std::size_t size_;
  const TorchCheckpointLimits& limits_;
  std::uint64_t cd_offset_ = 0;
  std::vector<ZipEntry> entries_;
  std::unordered_map<std::string, std::size_t> by_name_;
};

}  // namespace vitmsn::detail::torch
