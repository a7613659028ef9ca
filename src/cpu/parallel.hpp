#pragma once
// One fork for the kernels' static work splits: part(t, nt) runs on each of `threads` OpenMP
// threads (t = 0..nt-1), or once as part(0, 1) when threads <= 1 or OpenMP is off. Each kernel
// divides its own work by (t, nt), so results never depend on how many threads ran.
#ifdef _OPENMP
#include <omp.h>
#endif

// Internal linkage for the reason buffer.hpp gives.
namespace vitmsn::detail {
namespace {

template <class Part>
inline void run_split(int threads, const Part& part) {
#ifdef _OPENMP
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    part(omp_get_thread_num(), omp_get_num_threads());
    return;
  }
#endif
  (void)threads;
  part(0, 1);
}

/// The [begin, end) share of `count` items that part t of nt takes (contiguous, sizes differ by ≤ 1).
inline int split_begin(int count, int t, int nt) { return static_cast<int>(static_cast<long long>(count) * t / nt); }

}  // namespace
}  // namespace vitmsn::detail
