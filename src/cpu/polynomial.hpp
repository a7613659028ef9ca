// Polynomials on vector registers, shared by the kernels' exp, exp2 and erf (src/cpu/gemm_blocked.hpp,
// src/cpu/attention_blocked.hpp). Internal linkage (anonymous namespace), as every header a kernel
// file of one ISA includes: each file gets its own copy (docs/DEVELOPING.md).
#pragma once

namespace vitmsn::detail {
namespace {

/// c0·x^n + c1·x^(n−1) + … + cn by Horner's rule: one fused multiply-add per coefficient after the
/// first, highest power first — the operations, and so the bits, of writing the FMAs out one after
/// the other. V: a traits type with R, set1 and fma; the coefficients are floats.
template <class V, class... C>
inline typename V::R horner(typename V::R x, float c0, C... c) {
  typename V::R p = V::set1(c0);
  ((p = V::fma(p, x, V::set1(c))), ...);
  return p;
}

}  // namespace
}  // namespace vitmsn::detail
