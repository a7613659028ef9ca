#pragma once
// SHA-256 (FIPS 180-4): the hash of backbone identities (identity.cpp), and of the programs' run
// manifests and probe heads (examples/). Internal (vitmsn_formats; not exported from a shared
// libvitmsn): a general utility, not ViT-MSN API.

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace vitmsn::detail {

/// SHA-256 (FIPS 180-4), fed incrementally. Not thread-safe; one object per stream.
class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  void update(const std::string& bytes) { update(bytes.data(), bytes.size()); }
  /// Lower-case hex of the digest (64 characters). The object is spent afterwards.
  std::string hex();

 private:
  std::array<std::uint32_t, 8> h_{};
  std::array<std::uint8_t, 64> buf_{};
  std::size_t used_ = 0;
  std::uint64_t total_ = 0;
};

}  // namespace vitmsn::detail
