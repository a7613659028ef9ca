// SIGINT/SIGTERM while an output is being written: the programs' handlers (examples/cli.hpp) and the
// library's registry of unfinished outputs (remove_unfinished_outputs) leave no file behind.
// Each case runs in a forked child, which the signal really ends.
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <string>
#include <vector>

#include "base/file_util.hpp"
#include "cli.hpp"
#include "test_util.hpp"
#include "vitmsn/io.hpp"

namespace vitmsn {
namespace {

std::vector<std::string> files_in(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    ::closedir(d);
  }
  return names;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + " ";
  return s;
}

/// Forks; the child runs `body` and exits 0 if it returns. The parent gets the wait status.
template <class F>
int in_child(F body) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    // The child's stderr goes to /dev/null: the handler's message is tested through the programs.
    std::freopen("/dev/null", "w", stderr);
    try {
      body();
    } catch (...) {
      ::_exit(3);
    }
    ::_exit(0);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  return status;
}

TEST(Interrupt, UnfinishedOutputsAreRegisteredAndRemovedOnRequest) {
  const std::string dir = test::temp_dir();
  {
    detail::AtomicFile a(dir + "/a.npy");
    detail::AtomicFile b(dir + "/b.npy");
    a.write("abc", 3);
    ASSERT_EQ(files_in(dir).size(), 2u) << joined(files_in(dir));
    EXPECT_EQ(remove_unfinished_outputs(), 2);
    EXPECT_TRUE(files_in(dir).empty()) << joined(files_in(dir));
    EXPECT_EQ(remove_unfinished_outputs(), 0) << "removed twice";
  }  // the destructors find their files gone: no error, nothing left
  EXPECT_TRUE(files_in(dir).empty());
  {
    detail::AtomicFile c(dir + "/c.npy");
    c.write("xyz", 3);
    c.commit();
  }
  // A committed output is no longer anybody's temporary file.
  EXPECT_EQ(remove_unfinished_outputs(), 0);
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"c.npy"});
}

TEST(Interrupt, SignalDuringAWriteEndsTheProgramAndLeavesNothing) {
  for (int sig : {SIGINT, SIGTERM}) {
    const std::string dir = test::temp_dir("signal" + std::to_string(sig));
    const int status = in_child([&] {
      cli::install_immediate_interrupt_handler();
      detail::AtomicFile out(dir + "/features.npy");
      out.write("partial", 7);
      std::raise(sig);
      out.commit();  // not reached: the handler ends the process
    });
    ASSERT_TRUE(WIFSIGNALED(status)) << "signal " << sig << ": the child exited normally, status " << status;
    EXPECT_EQ(WTERMSIG(status), sig);
    EXPECT_TRUE(files_in(dir).empty()) << "signal " << sig << " left: " << joined(files_in(dir));
  }
}

TEST(Interrupt, FirstSignalLetsALoopFinishItsItemSecondStopsAtOnce) {
  const std::string dir = test::temp_dir();
  int pipe_fds[2];
  ASSERT_EQ(::pipe(pipe_fds), 0);
  const int status = in_child([&] {
    ::close(pipe_fds[0]);
    cli::install_interrupt_handler();
    detail::AtomicFile first(dir + "/first.npy");
    first.write("done", 4);
    std::raise(SIGINT);
    // Still alive: the loop sees the flag and finishes what it was doing.
    const char seen = cli::interrupted() ? 'y' : 'n';
    (void)!::write(pipe_fds[1], &seen, 1);
    first.commit();
    detail::AtomicFile second(dir + "/second.npy");
    second.write("half", 4);
    std::raise(SIGINT);
    second.commit();  // not reached
  });
  ::close(pipe_fds[1]);
  char seen = 0;
  EXPECT_EQ(::read(pipe_fds[0], &seen, 1), 1);
  ::close(pipe_fds[0]);
  EXPECT_EQ(seen, 'y') << "interrupted() was not set by the first SIGINT";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the second SIGINT did not end the child, status " << status;
  EXPECT_EQ(WTERMSIG(status), SIGINT);
  EXPECT_EQ(files_in(dir), std::vector<std::string>{"first.npy"}) << joined(files_in(dir));
}

}  // namespace
}  // namespace vitmsn
