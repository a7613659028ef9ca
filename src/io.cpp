#include "vitmsn/io.hpp"

#include <cstring>

#include "file_util.hpp"
#include "vitmsn/error.hpp"

namespace vitmsn {

void write_npy(const std::string& path, const std::vector<std::int64_t>& shape, const float* values) {
  std::string dims;
  std::size_t n = 1;
  for (auto d : shape) {
    if (d < 0) throw Error(path + ": negative dimension in npy shape");
    dims += std::to_string(d) + ", ";
    n *= static_cast<std::size_t>(d);
  }
  // numpy's own spelling: "(3, 4)", "(3,)", "()".
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  else if (shape.size() == 1) dims.resize(dims.size() - 1);
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
  detail::AtomicFile f(path);
  f.write(head.data(), head.size());
  f.write(header.data(), header.size());
  if (n) f.write(values, n * sizeof(float));
  f.commit();
}

std::vector<float> read_npy(const std::string& path, std::vector<std::int64_t>* shape) {
  const detail::MappedFile m = detail::MappedFile::open(path);
  const auto* p = m.data();
  if (m.size() < 10 || std::memcmp(p, "\x93NUMPY", 6) != 0) throw Error(path + ": not a .npy file");
  std::size_t hlen = 0, start = 0;
  if (p[6] == 1) {
    hlen = p[8] | (p[9] << 8);
    start = 10;
  } else if (p[6] == 2 || p[6] == 3) {
    if (m.size() < 12) throw Error(path + ": truncated .npy header");
    hlen = p[8] | (p[9] << 8) | (static_cast<std::size_t>(p[10]) << 16) | (static_cast<std::size_t>(p[11]) << 24);
    start = 12;
  } else {
    throw Error(path + ": unsupported .npy version " + std::to_string(p[6]));
  }
  if (start + hlen > m.size()) throw Error(path + ": .npy header runs past the end of the file");
  const std::string h(reinterpret_cast<const char*>(p + start), hlen);
  if (h.find("'descr': '<f4'") == std::string::npos) throw Error(path + ": .npy dtype is not little-endian float32");
  if (h.find("'fortran_order': False") == std::string::npos) throw Error(path + ": .npy is in Fortran order");
  const auto open = h.find('(', h.find("'shape'")), close = h.find(')', open);
  if (open == std::string::npos || close == std::string::npos) throw Error(path + ": .npy header has no shape");
  std::vector<std::int64_t> dims;
  std::size_t n = 1;
  for (std::size_t i = open + 1; i < close;) {
    while (i < close && (h[i] == ' ' || h[i] == ',')) ++i;
    if (i >= close) break;
    std::size_t used = 0;
    const long long d = std::stoll(h.substr(i, close - i), &used);
    if (d < 0 || used == 0) throw Error(path + ": bad .npy shape");
    dims.push_back(d);
    n *= static_cast<std::size_t>(d);
    i += used;
  }
  const std::size_t data = start + hlen;
  if (m.size() - data != n * sizeof(float))
    throw Error(path + ": .npy holds " + std::to_string(m.size() - data) + " data bytes, shape needs " +
                std::to_string(n * sizeof(float)));
  std::vector<float> out(n);
  if (n) std::memcpy(out.data(), p + data, n * sizeof(float));
  if (shape) *shape = dims;
  return out;
}

void write_text_file(const std::string& path, const std::string& text) {
  detail::AtomicFile f(path);
  f.write(text.data(), text.size());
  f.commit();
}

}  // namespace vitmsn
