#include "vitmsn/io.hpp"

#include <cstring>

#include "base/file_util.hpp"
#include "formats/io.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {

namespace detail {

std::string npy_header(const std::string& path, const std::vector<std::int64_t>& shape, std::uint64_t* count) {
  std::string dims;
  std::uint64_t n = 1;
  for (auto d : shape) {
    if (d < 0) throw Error(ErrorKind::kArgument, path + ": negative dimension in npy shape", path);
    dims += std::to_string(d) + ", ";
    n *= static_cast<std::uint64_t>(d);
  }
  // numpy's own spelling: "(3, 4)", "(3,)", "()".
  if (shape.size() > 1)
    dims.resize(dims.size() - 2);
  else if (shape.size() == 1)
    dims.resize(dims.size() - 1);
  std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + dims + "), }";
  // magic(6) + version(2) + length(2) + header + '\n', padded with spaces to a multiple of 64.
  const std::size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header += '\n';
  std::string head = "\x93NUMPY";
  head += '\x01';
  head += '\x00';
  head += static_cast<char>(header.size() & 0xff);
  head += static_cast<char>((header.size() >> 8) & 0xff);
  *count = n;
  return head + header;
}

}  // namespace detail

void write_npy(const std::string& path, const std::vector<std::int64_t>& shape, const float* values) {
  std::uint64_t n = 0;
  const std::string head = detail::npy_header(path, shape, &n);
  detail::AtomicFile f(path);
  f.write(head.data(), head.size());
  if (n) f.write(values, static_cast<std::size_t>(n) * sizeof(float));
  f.commit();
}

namespace {

// The header of a .npy file is a Python dict literal, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 1024), }
// This reads exactly that grammar (string keys; string, True/False or tuple-of-int values) and
// nothing else; every failure names the file.
class NpyHeader {
 public:
  NpyHeader(const std::string& text, const std::string& path) : s_(text), path_(path) {}

  void parse(std::string* descr, bool* fortran, std::vector<std::int64_t>* shape) {
    bool have_descr = false, have_fortran = false, have_shape = false;
    skip_space();
    expect('{');
    while (true) {
      skip_space();
      if (peek() == '}') break;
      const std::string key = quoted();
      skip_space();
      expect(':');
      skip_space();
      if (key == "descr") {
        *descr = quoted();
        have_descr = true;
      } else if (key == "fortran_order") {
        *fortran = boolean();
        have_fortran = true;
      } else if (key == "shape") {
        *shape = tuple();
        have_shape = true;
      } else {
        fail("unknown key '" + key + "'");
      }
      skip_space();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      skip_space();
      if (peek() != '}') fail("expected ',' or '}'");
    }
    ++i_;
    skip_space();
    if (i_ != s_.size()) fail("text after the header dict");
    if (!have_descr || !have_fortran || !have_shape) fail("the header lacks descr, fortran_order or shape");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(ErrorKind::kMalformed, path_ + ": bad .npy header (" + what + " at byte " + std::to_string(i_) + ")",
                path_);
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_space() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const std::size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string out = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  std::vector<std::int64_t> tuple() {
    std::vector<std::int64_t> dims;
    expect('(');
    while (true) {
      skip_space();
      if (peek() == ')') break;
      if (peek() < '0' || peek() > '9') fail("expected a dimension");
      std::int64_t d = 0;
      while (peek() >= '0' && peek() <= '9') {
        if (d > (std::int64_t{1} << 50)) fail("dimension too large");
        d = d * 10 + (peek() - '0');
        ++i_;
      }
      if (peek() == 'L') ++i_;  // Python 2 longs
      dims.push_back(d);
      if (dims.size() > 32) fail("more than 32 dimensions");
      skip_space();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      if (peek() != ')') fail("expected ',' or ')'");
    }
    ++i_;
    return dims;
  }

  const std::string& s_;
  const std::string& path_;
  std::size_t i_ = 0;
};

std::string shape_text(const std::vector<std::int64_t>& dims) {
  std::string s = "(";
  for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + (dims.size() == 1 ? ",)" : ")");
}

}  // namespace

std::vector<float> read_npy(const std::string& path, std::vector<std::int64_t>* shape) {
  const detail::MappedFile m = detail::MappedFile::open(path);
  const auto* p = m.data();
  if (m.size() < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0)
    throw Error(ErrorKind::kMalformed, path + ": not a .npy file", path);
  std::size_t hlen = 0, start = 0;
  if (p[6] == 1) {
    hlen = p[8] | (p[9] << 8);
    start = 10;
  } else if (p[6] == 2 || p[6] == 3) {
    if (m.size() < 12) throw Error(ErrorKind::kMalformed, path + ": truncated .npy header", path);
    hlen = p[8] | (p[9] << 8) | (static_cast<std::size_t>(p[10]) << 16) | (static_cast<std::size_t>(p[11]) << 24);
    start = 12;
  } else {
    throw Error(ErrorKind::kUnsupported, path + ": unsupported .npy version " + std::to_string(p[6]), path);
  }
  if (hlen > m.size() - start)
    throw Error(ErrorKind::kMalformed, path + ": .npy header runs past the end of the file", path);
  const std::string h(reinterpret_cast<const char*>(p + start), hlen);
  std::string descr;
  bool fortran = true;
  std::vector<std::int64_t> dims;
  NpyHeader(h, path).parse(&descr, &fortran, &dims);
  if (descr != "<f4")
    throw Error(ErrorKind::kUnsupported, path + ": .npy dtype is '" + descr + "', not little-endian float32 ('<f4')",
                path);
  if (fortran) throw Error(ErrorKind::kUnsupported, path + ": .npy is in Fortran order", path);
  // The element count, checked against the bytes that are there before anything is allocated.
  const std::size_t data_bytes = m.size() - start - hlen;
  // n never exceeds the data's float count: the product cannot overflow.
  std::size_t n = 1;
  bool empty = false;
  for (const std::int64_t d : dims) empty = empty || d == 0;
  if (empty) {
    n = 0;
  } else {
    for (const std::int64_t d : dims) {
      const auto ud = static_cast<std::size_t>(d);
      if (n > data_bytes / sizeof(float) / ud)
        throw Error(ErrorKind::kMalformed,
                    path + ": .npy shape " + shape_text(dims) + " needs more data than the file's " +
                        std::to_string(data_bytes) + " bytes",
                    path);
      n *= ud;
    }
  }
  if (data_bytes != n * sizeof(float))
    throw Error(ErrorKind::kMalformed,
                path + ": .npy holds " + std::to_string(data_bytes) + " data bytes, shape " + shape_text(dims) +
                    " needs " + std::to_string(n * sizeof(float)),
                path);
  std::vector<float> out(n);
  if (n) std::memcpy(out.data(), p + start + hlen, n * sizeof(float));
  if (shape) *shape = dims;
  return out;
}

void write_text_file(const std::string& path, const std::string& text) {
  detail::AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

int remove_unfinished_outputs() noexcept { return detail::remove_registered_temp_files(); }

}  // namespace vitmsn
