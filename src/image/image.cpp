// Image decoding and conversion to 8-bit RGB as Pillow's `Image.open(f).convert("RGB")` does.
//
// stb_image decodes every format; with VITMSN_WITH_TURBOJPEG, JPEG goes through libjpeg-turbo with its
// default settings (accurate integer IDCT, fancy upsampling), which is what Pillow links, so the pixels
// match Pillow's bit for bit. stb_image's own JPEG decoder differs by a few levels (docs/NUMERICS.md, Preprocessing).

#include "vitmsn/image.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "base/file_util.hpp"
#include "image/image_stats.hpp"
#include "vitmsn/error.hpp"

// Every buffer stb_image allocates starts zeroed. stb_image 2.27 reads memory it never wrote for
// some malformed files (Huffman or quantization tables a file never defines); zeroed, such reads
// are deterministic. Large buffers come from calloc's fresh pages, so the zeroing costs next to
// nothing. Buffers it grows (zlib output, PNG data) are written before they are read: plain realloc,
// which also leaves untouched whatever a bogus length would have it reserve.
#define STBI_MALLOC(size) std::calloc(1, (size))
#define STBI_REALLOC(p, size) std::realloc((p), (size))
#define STBI_FREE(p) std::free(p)

// The one translation unit that compiles stb_image and stb_image_write (the image module, docs/DEVELOPING.md).
// Radiance HDR and Softimage PIC are left out: Pillow reads neither, so there is no reference for
// their pixels (image_file_extensions() lists what is decoded).
#define STBI_NO_HDR
#define STBI_NO_PIC
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_WRITE_IMPLEMENTATION
#include <stb_image.h>
#include <stb_image_write.h>

#ifdef VITMSN_WITH_TURBOJPEG
#include <turbojpeg.h>
#endif

namespace vitmsn {
namespace {

// Throws "<name>: <what>" (name: the file's path, or the name decode_image() was given).
[[noreturn]] void fail(const std::string& name, const std::string& what, ErrorKind kind = ErrorKind::kMalformed) {
  throw Error(kind, name + ": " + what, name);
}

std::atomic<std::uint64_t> g_pixel_buffers{0};

/// Called right before a decoder allocates a pixel buffer (see image_stats.hpp).
void note_pixel_buffer() { g_pixel_buffers.fetch_add(1, std::memory_order_relaxed); }

std::string stb_reason() {
  const char* reason = stbi_failure_reason();
  return reason != nullptr ? reason : "unknown error";
}

struct StbFree {
  void operator()(void* p) const { stbi_image_free(p); }
};

bool is_png(const std::uint8_t* data, std::size_t size) {
  static const std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  return size >= 8 && std::memcmp(data, kSignature, 8) == 0;
}

bool is_jpeg(const std::uint8_t* data, std::size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

/// Size and colour type from a PNG's IHDR chunk (which must come first). stb_image has its own
/// limit (2^30 bytes) and, asked for the size of an image it refuses, reports the last format it
/// tried, so the size is read here. The colour type (0 gray, 2 RGB, 3 palette, 4 gray+alpha, 6 RGBA)
/// matters because stb_image reports gray+tRNS and gray+alpha alike as two channels, while Pillow
/// converts 16-bit gray (clipped) and 16-bit gray+alpha (high byte) differently.
struct PngHeader {
  std::uint32_t width = 0, height = 0;
  int color_type = -1;
};

std::uint32_t read_be32(const std::uint8_t* p) {
  return (static_cast<std::uint32_t>(p[0]) << 24) | (static_cast<std::uint32_t>(p[1]) << 16) |
         (static_cast<std::uint32_t>(p[2]) << 8) | p[3];
}

bool read_png_header(const std::uint8_t* data, std::size_t size, PngHeader* out) {
  // signature (8) | length (4) = 13 | "IHDR" (4) | width (4) | height (4) | depth (1) | colour (1)
  if (size < 8 + 8 + 13 || read_be32(data + 8) != 13 || std::memcmp(data + 12, "IHDR", 4) != 0) {
    return false;
  }
  out->width = read_be32(data + 16);
  out->height = read_be32(data + 20);
  out->color_type = data[25];
  return true;
}

/// stb_image (2.27) passes a null pointer to memcpy for an empty IDAT chunk before the image data
/// (undefined behaviour, though nothing is copied). Empty IDAT chunks carry nothing, so a PNG that
/// has one is decoded from a copy without them; false (and `out` untouched) when there is none.
/// Chunks are walked while their lengths fit; what follows is copied as is, for stb_image to judge.
/// The first PNG chunk (before IEND) whose length field claims more bytes than the file has left;
/// empty when there is none. stb_image 2.27 grows its buffer to an IDAT chunk's claimed length before
/// reading it, so a 117-byte file could make it allocate 1.9 GB.
std::string png_chunk_past_end(const std::uint8_t* d, std::size_t n) {
  for (std::size_t p = 8; n - p >= 12;) {
    const std::uint32_t length = read_be32(d + p);
    const std::string type(reinterpret_cast<const char*>(d + p + 4), 4);
    if (length > n - p - 12) {
      std::string shown;
      for (const char c : type) shown += (c >= 32 && c < 127) ? c : '?';
      return "chunk '" + shown + "' claims " + std::to_string(length) + " bytes, " + std::to_string(n - p - 12) +
             " are left";
    }
    if (type == "IEND") break;
    p += 12 + length;
  }
  return "";
}

bool strip_empty_png_idat(const std::uint8_t* d, std::size_t n, std::vector<std::uint8_t>* out) {
  auto empty_idat = [d](std::size_t p) { return read_be32(d + p) == 0 && std::memcmp(d + p + 4, "IDAT", 4) == 0; };
  bool found = false;
  for (std::size_t p = 8; n - p >= 12 && read_be32(d + p) <= n - p - 12; p += 12 + read_be32(d + p)) {
    found = found || empty_idat(p);
  }
  if (!found) return false;
  out->assign(d, d + 8);
  std::size_t p = 8;
  for (; n - p >= 12 && read_be32(d + p) <= n - p - 12; p += 12 + read_be32(d + p)) {
    if (!empty_idat(p)) out->insert(out->end(), d + p, d + p + 12 + read_be32(d + p));
  }
  out->insert(out->end(), d + p, d + n);
  return true;
}

/// Size from the JPEG frame header (SOFn), found by walking the marker segments before it.
bool read_jpeg_size(const std::uint8_t* d, std::size_t n, std::uint32_t* width, std::uint32_t* height) {
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return false;
  std::size_t i = 2;
  while (i + 4 <= n) {
    if (d[i] != 0xFF) {  // stray byte between segments: libjpeg skips it with a warning
      ++i;
      continue;
    }
    while (i < n && d[i] == 0xFF) ++i;
    if (i + 3 > n) return false;
    const std::uint8_t marker = d[i++];
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;  // no length field
    const std::size_t length = (static_cast<std::size_t>(d[i]) << 8) | d[i + 1];
    if (length < 2 || length > n - i) return false;
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC):
    // length (2) | precision (1) | height (2) | width (2) | components (1) ...
    if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
      if (length < 8) return false;
      *height = (static_cast<std::uint32_t>(d[i + 3]) << 8) | d[i + 4];
      *width = (static_cast<std::uint32_t>(d[i + 5]) << 8) | d[i + 6];
      return true;
    }
    if (marker == 0xDA || marker == 0xD9) return false;  // scan or end before any frame header
    i += length;
  }
  return false;
}

/// Walks the marker segments of a JPEG after SOI, as libjpeg reads them: stray bytes between
/// segments and fill bytes before a marker are skipped, markers without a length field (TEM, RSTn,
/// SOI) passed over, and the entropy-coded data after each SOS skipped up to the next marker that is
/// neither stuffing (FF 00), a restart marker (FF D0..D7) nor a fill byte. Calls
/// visit(marker, offset of the marker's first FF, offset of the segment's payload, payload length)
/// for each segment with a length field. Returns true when it reaches EOI, false when the data end
/// first or a segment length runs past them.
template <class Visit>
bool walk_jpeg_segments(const std::uint8_t* d, std::size_t n, Visit&& visit) {
  if (n < 4 || d[0] != 0xFF || d[1] != 0xD8) return false;
  std::size_t i = 2;
  while (i < n) {
    if (d[i] != 0xFF) {  // stray byte between segments: libjpeg skips it with a warning
      ++i;
      continue;
    }
    const std::size_t marker_at = i;
    while (i < n && d[i] == 0xFF) ++i;  // fill bytes before a marker
    if (i >= n) return false;
    const std::uint8_t marker = d[i++];
    if (marker == 0xD9) return true;  // EOI
    if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) continue;
    if (i + 2 > n) return false;
    const std::size_t length = (static_cast<std::size_t>(d[i]) << 8) | d[i + 1];
    if (length < 2 || length > n - i) return false;
    visit(marker, marker_at, i + 2, length - 2);
    i += length;
    if (marker == 0xDA) {
      while (i + 1 < n) {
        if (d[i] == 0xFF) {
          const std::uint8_t next = d[i + 1];
          if (next != 0x00 && next != 0xFF && !(next >= 0xD0 && next <= 0xD7)) break;
        }
        ++i;
      }
      if (i + 1 >= n) return false;
    }
  }
  return false;
}

/// Whether the JPEG's marker structure reaches the end-of-image marker. Decoders (stb_image,
/// libjpeg) fill a stream that stops early with grey and report success or a mere warning; Pillow
/// raises "image file is truncated", and so do we.
bool jpeg_reaches_end_marker(const std::uint8_t* d, std::size_t n) {
  return walk_jpeg_segments(d, n, [](std::uint8_t, std::size_t, std::size_t, std::size_t) {});
}

/// stb_image (2.27) writes past its Huffman tables when a DHT table declares more than 256 codes
/// (libjpeg refuses such a table). Reads each DHT segment as stb_image does (tables until the
/// segment length is used up, the last one possibly reaching past it; bytes past the end of the data
/// read as 0); false when a table has too many codes.
bool jpeg_huffman_tables_fit(const std::uint8_t* d, std::size_t n) {
  bool fit = true;
  walk_jpeg_segments(d, n, [&](std::uint8_t marker, std::size_t, std::size_t at, std::size_t len) {
    if (marker != 0xC4) return;
    // Each table: class/id byte, 16 code counts, then as many symbol bytes as codes.
    std::size_t p = at;
    long left = static_cast<long>(len);
    while (left > 0) {
      std::size_t codes = 0;
      for (std::size_t k = 1; k <= 16; ++k) codes += p + k < n ? d[p + k] : 0;
      if (codes > 256) fit = false;
      p += 17 + codes;
      left -= static_cast<long>(17 + codes);
    }
  });
  return fit;
}

// The standard Huffman tables of ITU T.81 Annex K.3 (data: kDcLuminanceBits, kDcSymbols, …).
#include "image/jpeg_tables.inc"

/// Checks the tables each scan uses, as libjpeg does when a scan starts. A scan may use a Huffman
/// table the file never defines (Motion-JPEG frames leave them out): libjpeg-turbo, and so Pillow,
/// then uses the standard table of that class for ids 0 and 1 and fails for ids 2 and 3, and fails
/// for a quantization table never defined. stb_image 2.27 would read its never-initialised table
/// memory instead (undefined behaviour, output that changes from run to run). When a scan needs a
/// missing Huffman table 0 or 1, writes into `out` the file with a DHT segment of the standard tables
/// placed before the first scan, and returns true. \throws Error for the cases libjpeg refuses.
bool add_missing_standard_huffman_tables(const std::uint8_t* d, std::size_t n, const std::string& name,
                                         std::vector<std::uint8_t>* out) {
  bool defined[2][4] = {{false, false, false, false}, {false, false, false, false}};
  bool missing[2][2] = {{false, false}, {false, false}};
  bool quant_defined[4] = {false, false, false, false};
  int quant_of_component[256];
  std::fill(std::begin(quant_of_component), std::end(quant_of_component), -1);
  bool progressive = false;
  std::size_t first_scan = 0;
  walk_jpeg_segments(d, n, [&](std::uint8_t marker, std::size_t marker_at, std::size_t at, std::size_t len) {
    const std::uint8_t* seg = d + at;
    if (marker == 0xC0 || marker == 0xC1 || marker == 0xC2) {  // the frames stb_image decodes
      progressive = marker == 0xC2;
      // precision, height, width, component count, then (id, sampling, quantization table) each
      const std::size_t components = len >= 6 ? seg[5] : 0;
      for (std::size_t c = 0; c < components && 6 + 3 * c + 2 < len; ++c) {
        quant_of_component[seg[6 + 3 * c]] = seg[6 + 3 * c + 2];
      }
    }
    if (marker == 0xDB) {
      // Each table: precision/id byte, then 64 entries of 1 (precision 0) or 2 bytes.
      for (std::size_t p = 0; p < len;) {
        if ((seg[p] & 15) <= 3) quant_defined[seg[p] & 15] = true;
        p += 1 + ((seg[p] >> 4) ? 128 : 64);
      }
    }
    if (marker == 0xC4) {
      for (std::size_t p = 0; p + 17 <= len;) {
        const int table_class = seg[p] >> 4, id = seg[p] & 15;
        if (table_class <= 1 && id <= 3) defined[table_class][id] = true;
        std::size_t codes = 0;
        for (std::size_t k = 1; k <= 16; ++k) codes += seg[p + k];
        p += 17 + codes;
      }
    }
    if (marker != 0xDA) return;
    if (first_scan == 0) first_scan = marker_at;
    const std::size_t components = len >= 1 ? seg[0] : 0;
    if (len < 1 + 2 * components + 3) return;  // stb_image refuses the scan header
    const std::uint8_t ss = seg[1 + 2 * components], ah = seg[3 + 2 * components] >> 4;
    for (std::size_t c = 0; c < components; ++c) {
      const int quant = quant_of_component[seg[1 + 2 * c]];
      if (quant >= 0 && quant <= 3 && !quant_defined[quant]) {
        fail(name, "corrupt JPEG: a scan uses quantization table " + std::to_string(quant) +
                       ", which the file does not define");
      }
      const int dc = seg[2 + 2 * c] >> 4, ac = seg[2 + 2 * c] & 15;
      // Sequential scans use both Huffman tables; progressive ones the DC table in a first DC scan,
      // the AC table in an AC scan, none in a DC refinement.
      const bool uses_dc = !progressive || (ss == 0 && ah == 0);
      const bool uses_ac = !progressive || ss > 0;
      for (const auto& [uses, table_class, id] : {std::tuple<bool, int, int>{uses_dc, 0, dc}, {uses_ac, 1, ac}}) {
        if (!uses || id > 3 || defined[table_class][id]) continue;
        if (id > 1) {
          fail(name, std::string("corrupt JPEG: a scan uses ") + (table_class == 0 ? "DC" : "AC") + " Huffman table " +
                         std::to_string(id) + ", which the file does not define");
        }
        missing[table_class][id] = true;
      }
    }
  });
  if (!(missing[0][0] || missing[0][1] || missing[1][0] || missing[1][1])) return false;
  std::vector<std::uint8_t> dht = {0xFF, 0xC4, 0, 0};
  auto add = [&](int table_class, int id, const std::uint8_t* bits, const std::uint8_t* symbols, std::size_t count) {
    if (!missing[table_class][id]) return;
    dht.push_back(static_cast<std::uint8_t>(table_class << 4 | id));
    dht.insert(dht.end(), bits, bits + 16);
    dht.insert(dht.end(), symbols, symbols + count);
  };
  add(0, 0, kDcLuminanceBits, kDcSymbols, sizeof kDcSymbols);
  add(0, 1, kDcChrominanceBits, kDcSymbols, sizeof kDcSymbols);
  add(1, 0, kAcLuminanceBits, kAcLuminanceSymbols, sizeof kAcLuminanceSymbols);
  add(1, 1, kAcChrominanceBits, kAcChrominanceSymbols, sizeof kAcChrominanceSymbols);
  const std::size_t dht_length = dht.size() - 2;
  dht[2] = static_cast<std::uint8_t>(dht_length >> 8);
  dht[3] = static_cast<std::uint8_t>(dht_length & 0xFF);
  out->assign(d, d + first_scan);
  out->insert(out->end(), dht.begin(), dht.end());
  out->insert(out->end(), d + first_scan, d + n);
  return true;
}

/// stb_image takes any input that starts with 0xFF bytes followed by 0xD8 (SOI) for a JPEG; Pillow
/// (and is_jpeg) only FF D8 FF. Such inputs must not reach stb_image outside the checks above.
bool stb_sniffs_jpeg(const std::uint8_t* d, std::size_t n) {
  std::size_t i = 0;
  while (i < n && d[i] == 0xFF) ++i;
  return i > 0 && i < n && d[i] == 0xD8;
}

std::uint32_t read_le16(const std::uint8_t* p) { return p[0] | (p[1] << 8); }
std::uint32_t read_le32(const std::uint8_t* p) { return read_le16(p) | (read_le16(p + 2) << 16); }

/// Bytes an uncompressed image of the formats below needs, from its header; 0 when the header does
/// not say (compressed data, unknown layout) or the file is of another format. stb_image reads zeros
/// past the end of such files; Pillow raises "image file is truncated", and so do we.
std::uint64_t uncompressed_size_needed(const std::uint8_t* d, std::size_t n) {
  // BMP with uncompressed (BI_RGB) or bit-field rows: data offset + padded rows.
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') {
    if (n < 30) return 30;  // the file and info headers themselves are cut
    const std::uint32_t info = read_le32(d + 14);
    std::uint64_t width = 0, height = 0, bpp = 0, compression = 0;
    if (info == 12) {
      width = read_le16(d + 18);
      height = read_le16(d + 20);
      bpp = read_le16(d + 24);
    } else if (info >= 40) {
      if (n < 34) return 34;
      const auto w = static_cast<std::int32_t>(read_le32(d + 18));
      const auto h = static_cast<std::int32_t>(read_le32(d + 22));
      width = static_cast<std::uint64_t>(w < 0 ? -static_cast<std::int64_t>(w) : w);
      height = static_cast<std::uint64_t>(h < 0 ? -static_cast<std::int64_t>(h) : h);
      bpp = read_le16(d + 28);
      compression = read_le32(d + 30);
    } else {
      return 0;
    }
    if (compression != 0 && compression != 3 && compression != 6) return 0;  // RLE: sizes vary
    const std::uint64_t stride = (width * bpp + 31) / 32 * 4;
    return read_le32(d + 10) + stride * height;
  }
  // TGA (types 1 colour-mapped, 2 true-colour, 3 gray, 9-11 their run-length versions). It has no
  // signature: this runs only after stb_image took the input for an image, and the formats with
  // signatures are ruled out.
  const bool other = (n >= 4 && (std::memcmp(d, "GIF8", 4) == 0 || std::memcmp(d, "8BPS", 4) == 0 ||
                                 std::memcmp(d, "\x53\x80\xF6\x34", 4) == 0)) ||
                     (n >= 2 && d[0] == '#' && d[1] == '?');
  if (!other && n < 18) return 18;  // stb_image took it for a TGA with a cut header
  if (!other && (d[2] == 1 || d[2] == 2 || d[2] == 3 || d[2] == 9 || d[2] == 10 || d[2] == 11)) {
    const std::uint64_t map_bytes = d[1] == 1 ? read_le16(d + 5) * ((d[7] + 7ull) / 8) : 0;
    const std::uint64_t width = read_le16(d + 12), height = read_le16(d + 14);
    const std::uint64_t pixel = (d[16] + 7ull) / 8;
    const std::uint64_t start = 18 + d[0] + map_bytes;
    if (d[2] < 9) return start + width * height * pixel;
    // Run-length packets: a count byte, then one pixel (a run) or count pixels (literals).
    std::uint64_t at = start, left = width * height;
    while (left > 0) {
      if (at >= n) return at + 1;  // ends inside the packets
      const std::uint64_t count = (d[at] & 0x7F) + 1ull;
      at += 1 + ((d[at] & 0x80) ? pixel : count * pixel);
      left -= std::min(left, count);
    }
    return at;
  }
  // PSD with raw (uncompressed) planes: after the header and three length-prefixed sections,
  // compression 0 and channels x height x width samples of depth bits.
  if (n >= 26 && std::memcmp(d, "8BPS", 4) == 0) {
    const std::uint64_t channels = (d[12] << 8) | d[13];
    const std::uint64_t height = read_be32(d + 14), width = read_be32(d + 18);
    const std::uint64_t depth = (d[22] << 8) | d[23];
    std::uint64_t at = 26;
    for (int section = 0; section < 3; ++section) {
      if (at + 4 > n) return at + 4;
      at += 4 + read_be32(d + at);
    }
    if (at + 2 > n) return at + 2;
    if (d[at] != 0 || d[at + 1] != 0) return 0;  // RLE planes: sizes vary
    return at + 2 + channels * height * width * ((depth + 7) / 8);
  }
  return 0;
}

void check_limits(const std::string& name, long long width, long long height, const ImageLimits& limits) {
  if (width <= 0 || height <= 0) {
    fail(name, "image header has an empty size " + std::to_string(width) + "x" + std::to_string(height));
  }
  const std::uint64_t pixels = static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height);
  if (pixels > limits.max_pixels) {
    fail(name,
         "image is " + std::to_string(width) + "x" + std::to_string(height) + " = " + std::to_string(pixels) +
             " pixels, more than the max_pixels limit of " + std::to_string(limits.max_pixels) + " pixels",
         ErrorKind::kLimit);
  }
}

Image allocate(int width, int height) {
  note_pixel_buffer();
  Image image;
  image.width = width;
  image.height = height;
  image.rgb.resize(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
  return image;
}

/// 8-bit samples with `channels` per pixel (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) to RGB:
/// gray replicated, alpha dropped without compositing (Pillow's convert("RGB")).
// --- binary PNM (P5 gray, P6 RGB), decoded as Pillow 9.4's PpmImagePlugin does -------------------
// stb_image 2.27 reads 16-bit samples in the wrong byte order and ignores maxval; Pillow scales
// samples to 8 bits (or, for 16-bit gray, to mode I, which convert("RGB") clips at 255).

bool is_pnm(const std::uint8_t* d, std::size_t n) { return n >= 2 && d[0] == 'P' && (d[1] == '5' || d[1] == '6'); }

struct PnmHeader {
  int channels = 0;
  std::uint64_t width = 0, height = 0, maxval = 0;
  std::size_t data = 0;  // offset of the first sample
};

PnmHeader read_pnm_header(const std::uint8_t* d, std::size_t n, const std::string& name) {
  auto space = [](std::uint8_t c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; };
  PnmHeader h;
  h.channels = d[1] == '6' ? 3 : 1;
  if (n < 3 || !space(d[2]))
    fail(name, "not a supported image: PNM magic P5/P6 must be followed by whitespace", ErrorKind::kUnsupported);
  std::size_t i = 2;
  std::uint64_t value[3] = {0, 0, 0};
  for (auto& v : value) {
    while (i < n && (space(d[i]) || d[i] == '#')) {
      if (d[i] == '#') {
        while (i < n && d[i] != '\n' && d[i] != '\r') ++i;
      } else {
        ++i;
      }
    }
    if (i >= n) fail(name, "image file is truncated: the PNM header ends early");
    std::size_t digits = 0;
    while (i < n && d[i] >= '0' && d[i] <= '9') {
      if (++digits > 10) fail(name, "corrupt PNM header: a number longer than 10 digits");
      v = v * 10 + (d[i++] - '0');
    }
    if (digits == 0) fail(name, "corrupt PNM header: expected a number at byte " + std::to_string(i));
    if (i >= n) fail(name, "image file is truncated: the PNM header ends early");
    if (!space(d[i])) fail(name, "corrupt PNM header: unexpected byte after a number at byte " + std::to_string(i));
  }
  h.width = value[0];
  h.height = value[1];
  h.maxval = value[2];
  if (h.maxval == 0 || h.maxval > 65535) {
    fail(name, "corrupt PNM header: maxval " + std::to_string(h.maxval) + " is not between 1 and 65535");
  }
  h.data = i + 1;  // one whitespace byte ends the header
  return h;
}

Image decode_pnm(const std::uint8_t* d, std::size_t n, const std::string& name, const ImageLimits& limits) {
  const PnmHeader h = read_pnm_header(d, n, name);
  check_limits(name, static_cast<long long>(h.width), static_cast<long long>(h.height), limits);
  const std::size_t sample_bytes = h.maxval > 255 ? 2 : 1;
  const std::size_t samples = static_cast<std::size_t>(h.width * h.height) * h.channels;
  const std::uint64_t needed = h.data + static_cast<std::uint64_t>(samples) * sample_bytes;
  if (needed > n) {
    fail(name, "image file is truncated: " + std::to_string(n) + " bytes, its " + std::to_string(h.width) + "x" +
                   std::to_string(h.height) + " pixels need " + std::to_string(needed));
  }
  const std::uint8_t* p = d + h.data;
  auto sample = [&](std::size_t k) -> std::uint32_t {
    return sample_bytes == 1 ? p[k] : (static_cast<std::uint32_t>(p[2 * k]) << 8) | p[2 * k + 1];
  };
  // Python: min(out_max, round(value / maxval * out_max)), round half to even (rint).
  const double maxval = static_cast<double>(h.maxval);
  auto scaled = [&](std::uint32_t v, double out_max) {
    return static_cast<std::uint32_t>(std::min(out_max, std::rint(static_cast<double>(v) / maxval * out_max)));
  };
  Image image = allocate(static_cast<int>(h.width), static_cast<int>(h.height));
  std::uint8_t* out = image.rgb.data();
  if (h.channels == 3) {
    for (std::size_t k = 0; k < samples; ++k) {
      out[k] = static_cast<std::uint8_t>(h.maxval == 255 ? sample(k) : scaled(sample(k), 255.0));
    }
    return image;
  }
  for (std::size_t k = 0; k < samples; ++k) {
    const std::uint32_t v = sample(k);
    std::uint32_t g;
    if (h.maxval == 255) {
      g = v;
    } else if (h.maxval < 255) {
      g = scaled(v, 255.0);
    } else {
      // Mode I: the sample itself at maxval 65535, else scaled to 16 bits; RGB conversion clips.
      g = std::min<std::uint32_t>(h.maxval == 65535 ? v : scaled(v, 65535.0), 255);
    }
    out[3 * k] = out[3 * k + 1] = out[3 * k + 2] = static_cast<std::uint8_t>(g);
  }
  return image;
}

Image rgb_from_8bit(const std::uint8_t* px, int width, int height, int channels) {
  Image image = allocate(width, height);
  const std::size_t count = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
  std::uint8_t* out = image.rgb.data();
  for (std::size_t i = 0; i < count; ++i, px += channels, out += 3) {
    if (channels >= 3) {
      out[0] = px[0];
      out[1] = px[1];
      out[2] = px[2];
    } else {
      out[0] = out[1] = out[2] = px[0];
    }
  }
  return image;
}

/// 16-bit samples to RGB as Pillow reduces them: RGB(A) and gray+alpha open as 8-bit modes that keep
/// the high byte ("RGB;16B", "LA;16B"); plain 16-bit gray opens as mode I / I;16, whose conversion to
/// RGB clips the value at 255 instead.
Image rgb_from_16bit(const std::uint16_t* px, int width, int height, int channels, bool gray_clips) {
  Image image = allocate(width, height);
  const std::size_t count = static_cast<std::size_t>(width) * static_cast<std::size_t>(height);
  std::uint8_t* out = image.rgb.data();
  for (std::size_t i = 0; i < count; ++i, px += channels, out += 3) {
    if (channels >= 3) {
      out[0] = static_cast<std::uint8_t>(px[0] >> 8);
      out[1] = static_cast<std::uint8_t>(px[1] >> 8);
      out[2] = static_cast<std::uint8_t>(px[2] >> 8);
    } else {
      const std::uint16_t v = px[0];
      out[0] = out[1] = out[2] = static_cast<std::uint8_t>(gray_clips ? std::min<std::uint16_t>(v, 255) : v >> 8);
    }
  }
  return image;
}

#ifdef VITMSN_WITH_TURBOJPEG
struct TjDestroy {
  void operator()(void* handle) const { tjDestroy(handle); }
};

/// Decodes a JPEG with libjpeg-turbo's defaults, as Pillow does. Returns false (and leaves `out`
/// alone) for CMYK/YCCK files, which are left to stb_image.
bool decode_jpeg_turbo(const std::uint8_t* data, std::size_t size, const std::string& name, const ImageLimits& limits,
                       Image* out) {
  std::unique_ptr<void, TjDestroy> handle(tjInitDecompress());
  if (!handle) fail(name, std::string("cannot initialise libjpeg-turbo: ") + tjGetErrorStr2(nullptr), ErrorKind::kIo);
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(handle.get(), data, static_cast<unsigned long>(size), &width, &height, &subsampling,
                          &colorspace) != 0) {
    fail(name, std::string("cannot read JPEG header: ") + tjGetErrorStr2(handle.get()));
  }
  check_limits(name, width, height, limits);
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) return false;
  const bool gray = colorspace == TJCS_GRAY;
  const int channels = gray ? 1 : 3;
  note_pixel_buffer();
  std::vector<std::uint8_t> pixels(static_cast<std::size_t>(width) * height * channels);
  if (tjDecompress2(handle.get(), data, static_cast<unsigned long>(size), pixels.data(), width, 0, height,
                    gray ? TJPF_GRAY : TJPF_RGB, 0) != 0 &&
      tjGetErrorCode(handle.get()) != TJERR_WARNING) {
    // Warnings (e.g. extraneous bytes before a marker) are not fatal for Pillow either.
    fail(name, std::string("cannot decode JPEG: ") + tjGetErrorStr2(handle.get()));
  }
  *out = rgb_from_8bit(pixels.data(), width, height, channels);
  return true;
}
#endif

void append_bytes(void* context, void* data, int size) {
  auto* bytes = static_cast<std::vector<std::uint8_t>*>(context);
  const auto* p = static_cast<const std::uint8_t*>(data);
  bytes->insert(bytes->end(), p, p + size);
}

}  // namespace

std::uint64_t detail::pixel_buffers_allocated() { return g_pixel_buffers.load(std::memory_order_relaxed); }

const char* jpeg_decoder_name() {
#ifdef VITMSN_WITH_TURBOJPEG
  return "libjpeg-turbo";
#else
  return "stb_image";
#endif
}

Image decode_image(const std::uint8_t* data, std::size_t size, const std::string& name, const ImageLimits& limits) {
  if (data == nullptr || size == 0) fail(name, "empty file, not an image");
  std::vector<std::uint8_t> without_empty_idat;
  if (is_png(data, size) && strip_empty_png_idat(data, size, &without_empty_idat)) {
    data = without_empty_idat.data();
    size = without_empty_idat.size();
  }
  if (size > static_cast<std::size_t>(INT_MAX)) {
    fail(name, "file is " + std::to_string(size) + " bytes, more than the decoder's 2 GiB limit", ErrorKind::kLimit);
  }
  int length = static_cast<int>(size);
  std::vector<std::uint8_t> with_standard_tables;
  const bool png = is_png(data, size);
  const bool jpeg = is_jpeg(data, size);

  // The header alone decides whether we go on: nothing is allocated for a 100000x100000 claim.
  long long width = 0, height = 0;
  PngHeader png_header;
  if (png) {
    if (!read_png_header(data, size, &png_header)) fail(name, "corrupt PNG: no IHDR header chunk");
    const std::string past_end = png_chunk_past_end(data, size);
    if (!past_end.empty()) fail(name, "truncated or corrupt PNG: " + past_end);
    width = png_header.width;
    height = png_header.height;
    check_limits(name, width, height, limits);
  } else if (jpeg) {
    std::uint32_t w = 0, h = 0;
    if (!read_jpeg_size(data, size, &w, &h)) fail(name, "truncated or corrupt JPEG: no frame header");
    width = w;
    height = h;
    check_limits(name, width, height, limits);
    if (!jpeg_reaches_end_marker(data, size)) {
      fail(name, "truncated or corrupt JPEG: the data end before the end-of-image marker");
    }
    if (!jpeg_huffman_tables_fit(data, size)) fail(name, "corrupt JPEG: a Huffman table has more than 256 codes");
    if (add_missing_standard_huffman_tables(data, size, name, &with_standard_tables)) {
      data = with_standard_tables.data();
      size = with_standard_tables.size();
      if (size > static_cast<std::size_t>(INT_MAX)) fail(name, "file is too large for the decoder", ErrorKind::kLimit);
      length = static_cast<int>(size);
    }
#ifdef VITMSN_WITH_TURBOJPEG
    Image image;
    if (decode_jpeg_turbo(data, size, name, limits, &image)) return image;
#endif
  } else if (is_pnm(data, size)) {
    return decode_pnm(data, size, name, limits);
  } else {
    if (stb_sniffs_jpeg(data, size))
      fail(name, "not a supported image: a JPEG must start with FF D8 FF", ErrorKind::kUnsupported);
    int w = 0, h = 0, n = 0;
    if (!stbi_info_from_memory(data, length, &w, &h, &n)) {
      fail(name,
           "not a supported image (PNG, JPEG, BMP, GIF, TGA, PSD, PNM) or corrupt "
           "header (" +
               stb_reason() + ")",
           ErrorKind::kUnsupported);
    }
    width = w;
    height = h;
    check_limits(name, width, height, limits);
    const std::uint64_t needed = uncompressed_size_needed(data, size);
    if (needed > size) {
      fail(name, "image file is truncated: " + std::to_string(size) + " bytes, its " + std::to_string(w) + "x" +
                     std::to_string(h) + " pixels need " + std::to_string(needed));
    }
  }
  const char* format = png ? "PNG" : jpeg ? "JPEG" : "image";

  int w = 0, h = 0, n = 0;
  note_pixel_buffer();
  if (stbi_is_16_bit_from_memory(data, length)) {
    std::unique_ptr<stbi_us, StbFree> px(stbi_load_16_from_memory(data, length, &w, &h, &n, 0));
    if (!px) fail(name, std::string("cannot decode ") + format + " (" + stb_reason() + ")");
    if (w != width || h != height) fail(name, "decoded size differs from the header");
    // PNG: the colour type decides (gray+tRNS also arrives as two channels). Other formats (16-bit
    // PGM): one channel is gray.
    const bool gray_clips = png ? png_header.color_type == 0 : n == 1;
    return rgb_from_16bit(px.get(), w, h, n, gray_clips);
  }
  std::unique_ptr<stbi_uc, StbFree> px(stbi_load_from_memory(data, length, &w, &h, &n, 0));
  if (!px) fail(name, std::string("cannot decode ") + format + " (" + stb_reason() + ")");
  if (w != width || h != height) fail(name, "decoded size differs from the header");
  return rgb_from_8bit(px.get(), w, h, n);
}

const std::vector<std::string>& image_file_extensions() {
  // Pillow's names for the formats decode_image() reads (PNM: binary P5/P6 only, so no .pbm).
  static const std::vector<std::string> kExtensions = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp",
                                                       ".gif", ".tga", ".psd",  ".ppm", ".pgm",  ".pnm"};
  return kExtensions;
}

Image read_image(const std::string& path, const ImageLimits& limits) {
  // Missing, unreadable, a directory, not a regular file: MappedFile throws naming the path.
  const detail::MappedFile file = detail::MappedFile::open(path);
  return decode_image(file.data(), file.size(), path, limits);
}

void write_png(const std::string& path, const Image& image) {
  if (image.width <= 0 || image.height <= 0) {
    fail(path, "cannot write an empty image (" + std::to_string(image.width) + "x" + std::to_string(image.height) + ")",
         ErrorKind::kArgument);
  }
  if (image.width > INT_MAX / 3 || image.rgb.size() != static_cast<std::size_t>(image.width) * image.height * 3) {
    fail(path,
         "image buffer holds " + std::to_string(image.rgb.size()) + " bytes, expected " + std::to_string(image.width) +
             "x" + std::to_string(image.height) + "x3",
         ErrorKind::kArgument);
  }
  std::vector<std::uint8_t> bytes;
  if (!stbi_write_png_to_func(&append_bytes, &bytes, image.width, image.height, 3, image.rgb.data(), image.width * 3)) {
    fail(path, "cannot encode PNG", ErrorKind::kIo);
  }
  // Temporary file in the same folder, renamed onto `path` when complete (removed on failure).
  detail::AtomicFile out(path);
  out.write(bytes.data(), bytes.size());
  out.commit();
}

}  // namespace vitmsn
