#pragma once
// nlohmann_json's exceptions in words: "[json.exception.parse_error.101] parse error at line 1,
// column 9: syntax error while parsing value - invalid literal; last read: '<raw bytes>'" becomes
// "syntax error at byte 9, near 'tru\x80e'": position, what is wrong, bytes escaped. Internal.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

namespace vitmsn::detail {

/// Printable ASCII as it is, every other byte as \xNN (and \ as \\), at most `max` bytes ("…" after).
inline std::string escape_bytes(const char* p, std::size_t n, std::size_t max = 40) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::size_t i = 0; i < n && i < max; ++i) {
    const auto c = static_cast<unsigned char>(p[i]);
    if (c == '\\') {
      out += "\\\\";
    } else if (c >= 0x20 && c < 0x7f) {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  if (n > max) out += "…";
  return out;
}

/// Offset of the first byte that is not part of well-formed UTF-8 in [p, p+n), or n.
inline std::size_t first_non_utf8(const char* p, std::size_t n) {
  const auto* s = reinterpret_cast<const std::uint8_t*>(p);
  for (std::size_t i = 0; i < n;) {
    const std::uint8_t c = s[i];
    std::size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (len == 0 || (len == 2 && c < 0xc2) || (len == 4 && c > 0xf4) || i + len > n) return i;
    for (std::size_t k = 1; k < len; ++k)
      if ((s[i + k] & 0xc0) != 0x80) return i;
    i += len;
  }
  return n;
}

/// What is wrong with `text` (which nlohmann::json::parse refused with `e`), in words.
inline std::string describe_json_error(const nlohmann::json::exception& e, const char* text, std::size_t n) {
  if (const auto bad = first_non_utf8(text, n); bad < n) {
    const std::size_t from = bad > 16 ? bad - 16 : 0;
    return "byte " + std::to_string(bad + 1) + " is 0x" + escape_bytes(text + bad, 1).substr(2) +
           ", not UTF-8 text (near '" + escape_bytes(text + from, std::min<std::size_t>(n - from, 32), 32) + "')";
  }
  if (const auto* pe = dynamic_cast<const nlohmann::json::parse_error*>(&e)) {
    if (pe->byte > n) return "the text ends before the JSON is complete (" + std::to_string(n) + " bytes)";
    const std::size_t at = pe->byte == 0 ? 0 : pe->byte - 1;  // nlohmann counts bytes from 1
    const std::size_t from = at > 20 ? at - 20 : 0;
    return "syntax error at byte " + std::to_string(at + 1) + " of " + std::to_string(n) + ", near '" +
           escape_bytes(text + from, std::min<std::size_t>(n - from, at - from + 12), 40) + "'";
  }
  // out_of_range (a number like 1e400) and the rest: nlohmann's words without its "[json.exception…] " tag.
  std::string what = e.what();
  if (!what.empty() && what[0] == '[')
    if (const auto close = what.find("] "); close != std::string::npos) what = what.substr(close + 2);
  return escape_bytes(what.data(), what.size(), 200);
}

inline std::string describe_json_error(const nlohmann::json::exception& e, const std::string& text) {
  return describe_json_error(e, text.data(), text.size());
}

}  // namespace vitmsn::detail
