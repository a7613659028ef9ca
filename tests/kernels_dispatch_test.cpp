// The kernel dispatch: which instruction sets are available and how they are named, the default
// thread count (the CPU affinity), and the rate probes' FLOP counts (the FMA peak, gemm_bench's
// micro-kernel ceiling).
#include <gtest/gtest.h>
#include <sched.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>

#include "cpu/kernels.hpp"
#include "vitmsn/cpu.hpp"

namespace vitmsn::detail {
namespace {

TEST(Kernels, PortableIsAlwaysAvailableAndDetectedIsAvailable) {
  EXPECT_TRUE(isa_available(Isa::kPortable));
  EXPECT_TRUE(isa_available(detected_isa()));
  EXPECT_STREQ(isa_name(Isa::kPortable), "portable");
  EXPECT_STREQ(isa_name(Isa::kAvx2), "avx2");
  EXPECT_STREQ(isa_name(Isa::kAvx512), "avx512");
  std::printf("[ detected ] %s\n", isa_name(detected_isa()));
}

// The default thread count follows the process's CPU affinity, not the machine's CPU count: a child
// process limited to CPU 0 must get 1 (std::thread::hardware_concurrency() would still say all).
TEST(Kernels, DefaultThreadsFollowsTheCpuAffinity) {
  cpu_set_t all;
  CPU_ZERO(&all);
  ASSERT_EQ(sched_getaffinity(0, sizeof all, &all), 0);
  EXPECT_EQ(default_threads(), CPU_COUNT(&all));
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(0, &one);
    if (sched_setaffinity(0, sizeof one, &one) != 0) _exit(100);
    _exit(default_threads());
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 1) << "threads seen by a process pinned to one CPU (100: could not pin)";
}

// The peak probe counts exactly the FLOPs its chains do: 2 per lane and chain per round, linear in
// the rounds (a wrong lane or chain count would misstate every share of the peak vitmsn-bench prints).
// Portable: the scalar loop, 8 chains of 1 lane.
TEST(Kernels, FmaBurstCountsItsFlops) {
  struct Expect {
    Isa isa;
    double per_round;
  } cases[] = {{Isa::kPortable, 2.0 * 1 * 8}, {Isa::kAvx2, 2.0 * 8 * 12}, {Isa::kAvx512, 2.0 * 16 * 16}};
  for (const Expect& e : cases) {
    if (!isa_available(e.isa)) continue;
    EXPECT_EQ(kernels(e.isa).fma_burst(1), e.per_round) << isa_name(e.isa);
    EXPECT_EQ(kernels(e.isa).fma_burst(10), 10 * e.per_round) << isa_name(e.isa);
  }
}

// gemm_bench's micro-kernel ceiling: the burst counts exactly what one call of each table's
// micro-kernel does, 2 × its MR × NR tile × depth 128 (AVX-512 14×32, AVX2 6×16), linear in the calls;
// the portable table, which has no micro-kernel, runs the scalar FMA loop (8 chains, 2 FLOPs a round).
TEST(Kernels, MicrokernelBurstCountsItsFlops) {
  struct Expect {
    Isa isa;
    double per_call;
  } cases[] = {{Isa::kPortable, 2.0 * 8}, {Isa::kAvx2, 2.0 * 6 * 16 * 128}, {Isa::kAvx512, 2.0 * 14 * 32 * 128}};
  for (const Expect& e : cases) {
    if (!isa_available(e.isa)) continue;
    EXPECT_EQ(kernels(e.isa).microkernel_burst(1), e.per_call) << isa_name(e.isa);
    EXPECT_EQ(kernels(e.isa).microkernel_burst(10), 10 * e.per_call) << isa_name(e.isa);
  }
}

}  // namespace
}  // namespace vitmsn::detail
