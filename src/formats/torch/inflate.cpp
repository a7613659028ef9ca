#include "formats/torch/inflate.hpp"

#include <array>
#include <cstring>
#include <string>

#include "vitmsn/error.hpp"

namespace vitmsn::detail {
namespace {

constexpr unsigned kMaxCodeBits = 15;         // RFC 1951 §3.2.2: no code is longer than 15 bits
constexpr std::size_t kMaxLitLenCodes = 286;  // 0..255 literals, 256 end of block, 257..285 lengths
constexpr std::size_t kMaxDistCodes = 30;
constexpr std::size_t kCodeLengthCodes = 19;
// Best case for DEFLATE: a 258-byte match coded in 1 (length) + 1 (distance) bit = 2 bits, so one
// input byte never yields more than 4 * 258 = 1032 output bytes.
constexpr std::size_t kMaxExpansion = 1032;

// RFC 1951 §3.2.5: base value and extra bits of length symbols 257..285 and distance symbols 0..29.
constexpr std::array<std::uint16_t, 29> kLengthBase = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                                       31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr std::array<std::uint8_t, 29> kLengthExtra = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                       2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr std::array<std::uint16_t, 30> kDistBase = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                                     33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                                     1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr std::array<std::uint8_t, 30> kDistExtra = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                                     6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
// §3.2.7: order in which the code-length code lengths are sent.
constexpr std::array<std::uint8_t, kCodeLengthCodes> kCodeLengthOrder = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                                                         11, 4,  12, 3, 13, 2, 14, 1, 15};

[[noreturn]] void fail(const std::string& what) { throw Error(ErrorKind::kMalformed, "deflate stream: " + what); }

/// A canonical Huffman code as one lookup table indexed by the next `max_bits` input bits (LSB
/// first, i.e. bit-reversed codes). Entry = symbol << 4 | code length; 0 marks a bit pattern no code
/// starts with (incomplete codes are allowed and fail only when such a pattern is met).
struct Huffman {
  std::vector<std::uint16_t> table;
  unsigned max_bits = 0;
};

/// Builds the code of RFC 1951 §3.2.2 from per-symbol lengths (0 = unused).
Huffman build_huffman(const std::uint8_t* lengths, std::size_t count) {
  std::array<unsigned, kMaxCodeBits + 1> per_length{};
  for (std::size_t s = 0; s < count; ++s) ++per_length[lengths[s]];
  per_length[0] = 0;
  // Kraft sum: more codes of a length than the remaining code space cannot be decoded.
  long left = 1;
  Huffman h;
  for (unsigned len = 1; len <= kMaxCodeBits; ++len) {
    left = left * 2 - static_cast<long>(per_length[len]);
    if (left < 0) fail("over-subscribed Huffman code lengths");
    if (per_length[len] != 0) h.max_bits = len;
  }
  if (h.max_bits == 0) h.max_bits = 1;  // no symbol at all: every lookup is invalid
  std::array<unsigned, kMaxCodeBits + 2> next_code{};
  unsigned code = 0;
  for (unsigned len = 1; len <= kMaxCodeBits; ++len) {
    code = (code + per_length[len - 1]) << 1;
    next_code[len] = code;
  }
  const std::size_t size = std::size_t{1} << h.max_bits;
  h.table.assign(size, 0);
  for (std::size_t s = 0; s < count; ++s) {
    const unsigned len = lengths[s];
    if (len == 0) continue;
    // Codes are sent most-significant bit first into an LSB-first stream: index by the reversal.
    unsigned c = next_code[len]++;
    unsigned reversed = 0;
    for (unsigned b = 0; b < len; ++b, c >>= 1) reversed = (reversed << 1) | (c & 1u);
    const auto entry = static_cast<std::uint16_t>((s << 4) | len);
    for (std::size_t i = reversed; i < size; i += std::size_t{1} << len) h.table[i] = entry;
  }
  return h;
}

/// LSB-first bit reader over a byte buffer. `count_` counts real input bits only; bits past the end
/// read as zero, and consuming one of them is a truncated stream.
class BitReader {
 public:
  BitReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint32_t take(unsigned n) {  // n <= 32
    if (count_ < n) {
      refill();
      if (count_ < n) fail("truncated (ends inside a block)");
    }
    const auto v = static_cast<std::uint32_t>(bits_ & ((std::uint64_t{1} << n) - 1));
    bits_ >>= n;
    count_ -= n;
    return v;
  }

  unsigned decode(const Huffman& h, const char* what) {
    if (count_ < h.max_bits) refill();
    const std::uint16_t entry = h.table[bits_ & ((std::uint64_t{1} << h.max_bits) - 1)];
    const unsigned len = entry & 15u;
    if (len == 0 || len > count_) {
      if (count_ < h.max_bits) fail("truncated (ends inside a block)");
      fail(std::string("invalid ") + what + " code");
    }
    bits_ >>= len;
    count_ -= len;
    return entry >> 4;
  }

  /// Drops the bits up to the next byte boundary and returns the position of the next unread
  /// byte; the buffer is emptied so the caller can read bytes directly, then `seek`.
  std::size_t align_to_byte() {
    const unsigned whole_bytes = count_ / 8;
    bits_ = 0;
    count_ = 0;
    pos_ -= whole_bytes;
    return pos_;
  }
  void seek(std::size_t pos) { pos_ = pos; }

 private:
  void refill() {
    while (count_ <= 56 && pos_ < size_) {
      bits_ |= std::uint64_t{data_[pos_++]} << count_;
      count_ += 8;
    }
  }

  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
  std::uint64_t bits_ = 0;
  unsigned count_ = 0;
};

/// The fixed codes of §3.2.6 (distance symbols 30 and 31 take part in the code but are invalid).
const Huffman& fixed_litlen() {
  static const Huffman h = [] {
    std::array<std::uint8_t, 288> lengths{};
    for (std::size_t s = 0; s < 288; ++s) lengths[s] = s < 144 ? 8 : s < 256 ? 9 : s < 280 ? 7 : 8;
    return build_huffman(lengths.data(), lengths.size());
  }();
  return h;
}
const Huffman& fixed_dist() {
  static const Huffman h = [] {
    std::array<std::uint8_t, 32> lengths;
    lengths.fill(5);
    return build_huffman(lengths.data(), lengths.size());
  }();
  return h;
}

/// Reads the code-length header of a dynamic block (§3.2.7) into its two codes.
void read_dynamic_codes(BitReader& in, Huffman& litlen, Huffman& dist) {
  const std::size_t nlit = in.take(5) + 257;
  const std::size_t ndist = in.take(5) + 1;
  const std::size_t nclen = in.take(4) + 4;
  if (nlit > kMaxLitLenCodes) fail("too many length/literal codes (" + std::to_string(nlit) + ")");
  if (ndist > kMaxDistCodes) fail("too many distance codes (" + std::to_string(ndist) + ")");
  std::array<std::uint8_t, kCodeLengthCodes> clen{};
  for (std::size_t i = 0; i < nclen; ++i) clen[kCodeLengthOrder[i]] = static_cast<std::uint8_t>(in.take(3));
  const Huffman clcode = build_huffman(clen.data(), clen.size());

  std::array<std::uint8_t, kMaxLitLenCodes + kMaxDistCodes> lengths{};
  const std::size_t total = nlit + ndist;
  std::size_t i = 0;
  while (i < total) {
    const unsigned sym = in.decode(clcode, "code-length");
    if (sym < 16) {
      lengths[i++] = static_cast<std::uint8_t>(sym);
      continue;
    }
    std::uint8_t value = 0;
    std::size_t repeat = 0;
    if (sym == 16) {
      if (i == 0) fail("code-length repeat with no previous length");
      value = lengths[i - 1];
      repeat = 3 + in.take(2);
    } else if (sym == 17) {
      repeat = 3 + in.take(3);
    } else {
      repeat = 11 + in.take(7);
    }
    if (repeat > total - i) fail("code-length repeat past the end of the code lengths");
    for (std::size_t r = 0; r < repeat; ++r) lengths[i++] = value;
  }
  if (lengths[256] == 0) fail("dynamic block without an end-of-block code");
  litlen = build_huffman(lengths.data(), nlit);
  dist = build_huffman(lengths.data() + nlit, ndist);
}

[[noreturn]] void fail_too_long(std::size_t expected) {
  fail("output longer than the expected " + std::to_string(expected) + " bytes");
}

/// Decodes the symbols of one Huffman-coded block into out[n...].
void inflate_block(BitReader& in, const Huffman& litlen, const Huffman& dist, std::uint8_t* out, std::size_t& n,
                   std::size_t expected) {
  for (;;) {
    const unsigned sym = in.decode(litlen, "length/literal");
    if (sym < 256) {
      if (n == expected) fail_too_long(expected);
      out[n++] = static_cast<std::uint8_t>(sym);
      continue;
    }
    if (sym == 256) return;
    const unsigned li = sym - 257;
    if (li >= kLengthBase.size()) fail("invalid length symbol " + std::to_string(sym));
    const std::size_t length = kLengthBase[li] + in.take(kLengthExtra[li]);
    const unsigned di = in.decode(dist, "distance");
    if (di >= kDistBase.size()) fail("invalid distance symbol " + std::to_string(di));
    const std::size_t distance = kDistBase[di] + in.take(kDistExtra[di]);
    if (distance > n) {
      fail("distance " + std::to_string(distance) + " reaches before the start of the output (" + std::to_string(n) +
           " bytes written)");
    }
    if (length > expected - n) fail_too_long(expected);
    std::uint8_t* dst = out + n;
    const std::uint8_t* src = dst - distance;
    if (distance >= length) {
      std::memcpy(dst, src, length);
    } else {
      for (std::size_t k = 0; k < length; ++k) dst[k] = src[k];  // overlapping: repeats the run
    }
    n += length;
  }
}

struct CrcTables {
  std::uint32_t t[8][256];
};

// Slicing-by-8 tables for the reflected polynomial 0xEDB88320: t[k][b] is the CRC of byte b followed
// by k zero bytes, so eight input bytes fold in with eight lookups.
constexpr CrcTables make_crc_tables() {
  CrcTables tables{};
  for (std::uint32_t b = 0; b < 256; ++b) {
    std::uint32_t c = b;
    for (int k = 0; k < 8; ++k) c = (c & 1u) ? (c >> 1) ^ 0xEDB88320u : c >> 1;
    tables.t[0][b] = c;
  }
  for (int k = 1; k < 8; ++k) {
    for (std::uint32_t b = 0; b < 256; ++b) {
      const std::uint32_t prev = tables.t[k - 1][b];
      tables.t[k][b] = (prev >> 8) ^ tables.t[0][prev & 0xFFu];
    }
  }
  return tables;
}
constexpr CrcTables kCrc = make_crc_tables();

std::uint32_t load_le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | std::uint32_t{p[1]} << 8 | std::uint32_t{p[2]} << 16 | std::uint32_t{p[3]} << 24;
}

}  // namespace

std::vector<std::uint8_t> inflate_raw(const std::uint8_t* data, std::size_t size, std::size_t expected_size) {
  if (size == 0) fail("empty (no block)");
  if (expected_size / kMaxExpansion > size) {
    fail("claims " + std::to_string(expected_size) + " bytes from " + std::to_string(size) +
         " compressed bytes, more than DEFLATE can produce");
  }
  std::vector<std::uint8_t> out(expected_size);
  std::size_t n = 0;
  BitReader in(data, size);
  Huffman litlen;
  Huffman dist;
  bool last = false;
  while (!last) {
    last = in.take(1) != 0;
    const unsigned type = in.take(2);
    if (type == 0) {
      // Stored block (§3.2.4): byte-aligned LEN and its one's complement NLEN, then LEN raw bytes.
      const std::size_t pos = in.align_to_byte();
      if (size - pos < 4) fail("truncated (stored block header)");
      const std::size_t len = data[pos] | std::size_t{data[pos + 1]} << 8;
      const std::size_t nlen = data[pos + 2] | std::size_t{data[pos + 3]} << 8;
      if ((len ^ 0xFFFFu) != nlen) fail("stored block length does not match its complement");
      if (size - pos - 4 < len) fail("truncated (stored block data)");
      if (len > expected_size - n) fail_too_long(expected_size);
      if (len != 0) std::memcpy(out.data() + n, data + pos + 4, len);
      n += len;
      in.seek(pos + 4 + len);
    } else if (type == 1) {
      inflate_block(in, fixed_litlen(), fixed_dist(), out.data(), n, expected_size);
    } else if (type == 2) {
      read_dynamic_codes(in, litlen, dist);
      inflate_block(in, litlen, dist, out.data(), n, expected_size);
    } else {
      fail("invalid block type 3");
    }
  }
  if (n != expected_size) {
    fail("ends after " + std::to_string(n) + " bytes, expected " + std::to_string(expected_size));
  }
  return out;
}

std::uint32_t crc32(const std::uint8_t* data, std::size_t size, std::uint32_t crc) {
  crc = ~crc;
  while (size >= 8) {
    const std::uint32_t lo = load_le32(data) ^ crc;
    const std::uint32_t hi = load_le32(data + 4);
    crc = kCrc.t[7][lo & 0xFFu] ^ kCrc.t[6][(lo >> 8) & 0xFFu] ^ kCrc.t[5][(lo >> 16) & 0xFFu] ^ kCrc.t[4][lo >> 24] ^
          kCrc.t[3][hi & 0xFFu] ^ kCrc.t[2][(hi >> 8) & 0xFFu] ^ kCrc.t[1][(hi >> 16) & 0xFFu] ^ kCrc.t[0][hi >> 24];
    data += 8;
    size -= 8;
  }
  while (size-- > 0) crc = kCrc.t[0][(crc ^ *data++) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

}  // namespace vitmsn::detail
