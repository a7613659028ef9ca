#include "formats/identity.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/model_files.hpp"
#include "formats/sha256.hpp"
#include "vitmsn/cpu.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/torch_checkpoint.hpp"

namespace vitmsn::detail {

// --- SHA-256 (FIPS 180-4) ---------------------------------------------------------------------------

namespace {

// The standard's constants are the first 32 bits of the fractional parts of the square roots (initial
// hash) and cube roots (round constants) of the first primes; computed exactly with integer roots
// rather than typed in.
struct Sha256Constants {
  std::array<std::uint32_t, 64> k{};
  std::array<std::uint32_t, 8> h0{};
  Sha256Constants() {
    std::vector<unsigned> primes;
    for (unsigned n = 2; primes.size() < 64; ++n) {
      bool prime = true;
      for (unsigned p : primes)
        if (n % p == 0) prime = false;
      if (prime) primes.push_back(n);
    }
    using U = unsigned __int128;
    auto iroot = [](U v, int degree) {  // floor(v^(1/degree)) by bisection
      U lo = 0, hi = U(1) << 40;
      while (lo < hi) {
        const U mid = (lo + hi + 1) / 2;
        U p = 1;
        for (int i = 0; i < degree; ++i) p *= mid;
        if (p <= v)
          lo = mid;
        else
          hi = mid - 1;
      }
      return lo;
    };
    for (int i = 0; i < 64; ++i) k[i] = static_cast<std::uint32_t>(iroot(U(primes[i]) << 96, 3));
    for (int i = 0; i < 8; ++i) h0[i] = static_cast<std::uint32_t>(iroot(U(primes[i]) << 64, 2));
  }
};

const Sha256Constants& sha256_constants() {
  static const Sha256Constants c;
  return c;
}

std::uint32_t rotr(std::uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

}  // namespace

Sha256::Sha256() { h_ = sha256_constants().h0; }

namespace {

// One 64-byte block into the state `h`: FIPS 180-4 §6.2.2, the message schedule kept as a 16-word
// ring and the eight rounds of a ring turn unrolled, so the working variables stay in registers.
void compress(std::uint32_t* h, const std::uint8_t* p, const std::uint32_t* k) {
  std::uint32_t w[16];
  for (int i = 0; i < 16; ++i)
    w[i] = std::uint32_t(p[4 * i]) << 24 | std::uint32_t(p[4 * i + 1]) << 16 | std::uint32_t(p[4 * i + 2]) << 8 |
           p[4 * i + 3];
  std::uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  // Round i with the letters rotated: T1 = h + Σ1(e) + Ch(e,f,g) + K[i] + W[i]; d += T1; h = T1 + Σ0(a) + Maj(a,b,c).
  auto round = [&](std::uint32_t& ra, std::uint32_t& rb, std::uint32_t& rc, std::uint32_t& rd, std::uint32_t& re,
                   std::uint32_t& rf, std::uint32_t& rg, std::uint32_t& rh, int i) {
    std::uint32_t wi;
    if (i < 16) {
      wi = w[i];
    } else {
      const std::uint32_t w15 = w[(i - 15) & 15], w2 = w[(i - 2) & 15];
      const std::uint32_t s0 = rotr(w15, 7) ^ rotr(w15, 18) ^ (w15 >> 3);
      const std::uint32_t s1 = rotr(w2, 17) ^ rotr(w2, 19) ^ (w2 >> 10);
      wi = w[i & 15] += s0 + w[(i - 7) & 15] + s1;
    }
    const std::uint32_t t1 = rh + (rotr(re, 6) ^ rotr(re, 11) ^ rotr(re, 25)) + (rg ^ (re & (rf ^ rg))) + k[i] + wi;
    const std::uint32_t t2 = (rotr(ra, 2) ^ rotr(ra, 13) ^ rotr(ra, 22)) + ((ra & rb) | (rc & (ra | rb)));
    rd += t1;
    rh = t1 + t2;
  };
  for (int i = 0; i < 64; i += 8) {
    round(a, b, c, d, e, f, g, hh, i);
    round(hh, a, b, c, d, e, f, g, i + 1);
    round(g, hh, a, b, c, d, e, f, i + 2);
    round(f, g, hh, a, b, c, d, e, i + 3);
    round(e, f, g, hh, a, b, c, d, i + 4);
    round(d, e, f, g, hh, a, b, c, i + 5);
    round(c, d, e, f, g, hh, a, b, i + 6);
    round(b, c, d, e, f, g, hh, a, i + 7);
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
  h[5] += f;
  h[6] += g;
  h[7] += hh;
}

}  // namespace

void Sha256::update(const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  const std::uint32_t* k = sha256_constants().k.data();
  total_ += n;
  if (used_) {
    const std::size_t take = std::min(n, 64 - used_);
    std::memcpy(buf_.data() + used_, p, take);
    used_ += take;
    p += take;
    n -= take;
    if (used_ < 64) return;
    compress(h_.data(), buf_.data(), k);
    used_ = 0;
  }
  for (; n >= 64; p += 64, n -= 64) compress(h_.data(), p, k);
  if (n) std::memcpy(buf_.data(), p, n);
  used_ = n;
}

std::string Sha256::hex() {
  const std::uint64_t bits = total_ * 8;
  const std::uint8_t one = 0x80, zero = 0;
  update(&one, 1);
  while (used_ != 56) update(&zero, 1);
  std::uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<std::uint8_t>(bits >> (56 - 8 * i));
  update(len, 8);
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  for (std::uint32_t w : h_)
    for (int shift = 28; shift >= 0; shift -= 4) out += kHex[(w >> shift) & 15];
  return out;
}

// --- Backbone identity ------------------------------------------------------------------------------

namespace {

constexpr const char* kIdentityVersion = "vitmsn backbone identity v1\n";

// SHA-256 of a tensor's values as little-endian float32 (F32 bytes as they are, other float types
// converted a tensor at a time).
std::string values_digest(const TensorView& t) {
  Sha256 h;
  if (t.dtype == DType::kF32) {
    h.update(t.data, t.nbytes);
  } else {
    const std::vector<float> v = t.to_float();
    h.update(v.data(), v.size() * sizeof(float));
  }
  return h.hex();
}

bool is_float(DType d) { return d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kF64; }

}  // namespace

std::string compute_backbone_identity(const Config& config, const TensorLookup& lookup, const std::string& source) {
  const std::string prefix = detect_prefix(lookup, source);
  struct Item {
    std::string name;  // without the prefix
    const TensorView* view;
    std::string digest;
  };
  std::vector<Item> items;
  for (const auto& [name, shape] : keys::encoder_tensors(config, prefix)) {
    const TensorView* v = lookup(name);
    if (!v) throw Error(ErrorKind::kMalformed, source + ": missing tensor '" + name + "'");
    if (!is_float(v->dtype))
      throw Error(ErrorKind::kUnsupported,
                  source + ": tensor '" + name + "' has dtype " + dtype_name(v->dtype) + ", expected a float type");
    items.push_back({name.substr(prefix.size()), v, ""});
  }
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.name < b.name; });
  // Largest tensors first, spread over the workers: each takes the next unhashed tensor.
  std::vector<std::size_t> order(items.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return items[a].view->nbytes > items[b].view->nbytes; });
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    for (std::size_t i = next++; i < order.size(); i = next++)
      items[order[i]].digest = values_digest(*items[order[i]].view);
  };
  const int workers = std::max(1, std::min(default_threads(), static_cast<int>(items.size())));
  std::vector<std::thread> threads;
  for (int t = 1; t < workers; ++t) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  Sha256 id;
  id.update(kIdentityVersion);
  for (const Item& it : items) id.update(it.name + " " + it.view->shape_string() + " " + it.digest + "\n");
  return id.hex();
}

std::string recorded_backbone_identity(const std::map<std::string, std::string>& metadata, const std::string& source) {
  const auto it = metadata.find(kBackboneMetadataKey);
  if (it == metadata.end()) return "";
  const std::string& v = it->second;
  const bool hex = v.size() == 64 && std::all_of(v.begin(), v.end(), [](char c) {
                     return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
                   });
  if (!hex)
    throw Error(ErrorKind::kMalformed,
                source + ": __metadata__ " + kBackboneMetadataKey + " is not a SHA-256 (64 lower-case hex digits)");
  return v;
}

}  // namespace vitmsn::detail

namespace vitmsn {

std::string backbone_identity(const std::string& model_path) {
  const detail::ModelFiles files = detail::resolve_model_files(model_path, detail::Checkpoints::kSafetensorsOrTorch);
  if (files.file) {
    const std::string recorded = detail::recorded_backbone_identity(files.file->metadata(), files.weights);
    if (!recorded.empty()) return recorded;
    const SafetensorsFile& f = *files.file;
    return detail::compute_backbone_identity(
        files.config, [&](const std::string& n) { return f.find(n); }, files.weights);
  }
  const std::vector<TensorData> tensors = read_torch_checkpoint(files.weights);
  std::map<std::string, TensorView> views;
  for (const auto& t : tensors) views[t.name] = t.view();
  return detail::compute_backbone_identity(
      files.config,
      [&](const std::string& n) -> const TensorView* {
        const auto it = views.find(n);
        return it == views.end() ? nullptr : &it->second;
      },
      files.weights);
}

}  // namespace vitmsn
