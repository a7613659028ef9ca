#pragma once
// VITMSN_DASSERT(condition, what): a precondition of an internal function — a kernel's shapes, the
// number of stacked weight segments, a packing's alignment. A failure is a bug in vitmsn (or in code
// calling the internal headers), never a user error — user input is checked earlier and reported as a
// vitmsn::Error. It prints the condition, `what`, file and line on stderr and aborts.
//
// Checked in every build by default: the checks sit at the entries of kernels (once per call, not per
// element), where they cost nothing measurable next to the work. -DVITMSN_CONTRACTS=OFF compiles
// them out (the condition is then not evaluated). tests/contracts_test.cpp makes each one fail.

namespace vitmsn::detail {

/// Reports a failed VITMSN_DASSERT and aborts. The one place the library writes to stderr.
[[noreturn]] void contract_failed(const char* condition, const char* what, const char* file, int line) noexcept;

/// Whether VITMSN_DASSERT checks are compiled in (for tests).
constexpr bool contracts_enabled() {
#if defined(VITMSN_CONTRACTS) && VITMSN_CONTRACTS
  return true;
#else
  return false;
#endif
}

}  // namespace vitmsn::detail

#if defined(VITMSN_CONTRACTS) && VITMSN_CONTRACTS
#define VITMSN_DASSERT(condition, what)              \
  (__builtin_expect(static_cast<bool>(condition), 1) \
       ? (void)0                                     \
       : ::vitmsn::detail::contract_failed(#condition, what, __FILE__, __LINE__))
#else
#define VITMSN_DASSERT(condition, what) ((void)sizeof(static_cast<bool>(condition)))
#endif
