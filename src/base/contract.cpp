#include "base/contract.hpp"

#include <cstdio>
#include <cstdlib>

namespace vitmsn::detail {

void contract_failed(const char* condition, const char* what, const char* file, int line) noexcept {
  std::fprintf(stderr,
               "vitmsn: internal contract violated at %s:%d: %s (%s); this is a bug in vitmsn or in code using its "
               "internal headers\n",
               file, line, what, condition);
  std::fflush(stderr);
  std::abort();
}

}  // namespace vitmsn::detail
