// Long runs that can be trusted: vitmsn-extract and vitmsn-merge refuse to mix rows of different
// models or settings, one writer per output, inputs checked before the first image, interrupted work
// kept. Every scenario runs the programs for real; concurrency is made deterministic with the test
// hook VITMSN_TEST_PAUSE_AFTER_LOCK (a FIFO), never with sleeps.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "test_util.hpp"
#include "vitmsn/io.hpp"

#ifdef VITMSN_PROGRAM_DIR

namespace vitmsn {
namespace {

using test::ProgramRun;
using test::run;

std::string tiny() { return test::data_path("models/tiny"); }
bool exists(const std::string& p) { return ::access(p.c_str(), F_OK) == 0; }
bool found(const ProgramRun& r, const std::string& text) { return r.output.find(text) != std::string::npos; }
// Whether a program started on the images (its progress line), i.e. failed late.
bool started_images(const ProgramRun& r) { return found(r, "[0/"); }

// `n` fixture images under distinct names in the test's folder imgs/; returns that folder.
std::string images(int n = 6) {
  const std::string folder = test::temp_dir("imgs");
  const char* src[] = {"chelsea.png", "coffee.png", "camera.png", "horse.png", "green_palette.png", "astronaut.png"};
  for (int i = 0; i < n; ++i)
    test::write_bytes(folder + "/img" + std::to_string(10 + i) + ".png",
                      test::read_text(test::data_path(std::string("images/") + src[i % 6])));
  return folder;
}

std::string extract(const std::string& args) { return "vitmsn-extract --threads 1 " + args; }

// A part saved by a shard killed right after its first chunk (the test hook makes it the same on any
// machine): what a resume then finds.
void kill_after_first_chunk(const std::string& args) {
  const ProgramRun r =
      test::run_command("VITMSN_TEST_KILL_AFTER_CHUNK=0 " + std::string(VITMSN_PROGRAM_DIR) + "/" + extract(args));
  ASSERT_EQ(r.status, 128 + SIGKILL) << r.output;
}

// The tiny model converted to `dtype` (a file of the same backbone identity).
std::string converted(const std::string& dir, const std::string& dtype) {
  const std::string out = dir + "/tiny_" + dtype + ".safetensors";
  const ProgramRun r = run("vitmsn-convert --dtype " + dtype + " " + tiny() + " " + out);
  EXPECT_EQ(r.status, 0) << r.output;
  return out;
}

TEST(RunIntegrity, ResumeWithOtherSettingsIsRefusedAndSaysWhatDiffers) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images();
  const std::string out = dir + "/f.npy", part = dir + "/f.part-00000.safetensors";
  const std::string common = " --chunk 2 --output " + out + " " + imgs;
  kill_after_first_chunk("--model " + tiny() + " --pool cls" + common);
  ASSERT_TRUE(exists(part));
  const std::string bf16 = converted(dir, "bf16");
  struct Case {
    std::string args, differs;
  } cases[] = {
      {"--model " + tiny() + " --pool mean", "options.pool: cls (saved) vs mean (this run)"},
      {"--model " + bf16 + " --pool cls", "model.dtype: F32 (saved) vs BF16 (this run)"},
      {"--model " + tiny() + " --pool cls --size 112x112", "options.preprocessor."},
      {"--model " + test::data_path("models/tiny-cls") + " --pool cls", "model."},
  };
  for (const Case& c : cases) {
    const ProgramRun r = run(extract(c.args + common));
    EXPECT_EQ(r.status, 1) << c.args << "\n" << r.output;
    EXPECT_TRUE(found(r, "error: " + part + ": the saved work was made with other settings: ")) << r.output;
    EXPECT_TRUE(found(r, c.differs)) << c.args << "\n" << r.output;
    EXPECT_TRUE(found(r, "Use --force to start over, or another --output to keep both")) << r.output;
    EXPECT_FALSE(started_images(r)) << r.output;
    EXPECT_FALSE(exists(out)) << c.args;
    EXPECT_TRUE(exists(part)) << "a refused resume must keep the saved work: " << c.args;
  }
  // The same settings resume; the result is byte for byte an uninterrupted run's.
  ProgramRun r = run(extract("--model " + tiny() + " --pool cls" + common));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(found(r, "resuming " + out + ": 2 of 6 inputs already done")) << r.output;
  r = run(extract("--model " + tiny() + " --pool cls --output " + dir + "/g.npy " + imgs));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(test::read_text(out), test::read_text(dir + "/g.npy"));
  // --force starts over with the new settings.
  kill_after_first_chunk("--model " + tiny() + " --pool cls --chunk 2 --output " + dir + "/h.npy " + imgs);
  r = run(extract("--force --model " + tiny() + " --pool mean --chunk 2 --output " + dir + "/h.npy " + imgs));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(found(r, "--force: discarded 1 part of saved work")) << r.output;
}

TEST(RunIntegrity, AFinishedShardIsNotRedoneWithOtherSettings) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images();
  const std::string shard = " --shard 0/2 --output " + dir + "/f.npy " + imgs;
  ASSERT_EQ(run(extract("--model " + tiny() + " --pool cls" + shard)).status, 0);
  ProgramRun r = run(extract("--model " + tiny() + " --pool mean" + shard));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(found(r, "this shard was finished with other settings: options.pool: cls (done) vs mean (this run)"))
      << r.output;
  r = run(extract("--model " + tiny() + " --pool cls" + shard));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(found(r, "already complete")) << r.output;
  // A list that no longer belongs to its features (edited, or from another run) is found.
  test::write_bytes(dir + "/f-00000-of-00002.files.txt", "other.png\n");
  r = run(extract("--model " + tiny() + " --pool cls" + shard));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(found(r, dir + "/f-00000-of-00002.files.txt: does not match " + dir + "/f-00000-of-00002.manifest.json"))
      << r.output;
}

TEST(RunIntegrity, MergeRefusesShardsOfOtherSettingsModelsOrKernels) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images();
  const std::string int8 = converted(dir, "int8");
  auto shard = [&](int i, const std::string& name, const std::string& args) {
    const ProgramRun r =
        run(extract(args + " --shard " + std::to_string(i) + "/2 --output " + dir + "/" + name + ".npy " + imgs));
    EXPECT_EQ(r.status, 0) << r.output;
    return " " + dir + "/" + name + "-0000" + std::to_string(i) + "-of-00002.npy";
  };
  const std::string good0 = shard(0, "a", "--model " + tiny() + " --pool cls");
  struct Case {
    std::string name, args, differs;
  } cases[] = {
      {"pool", "--model " + tiny() + " --pool mean", "options.pool: cls (shard 0) vs mean (shard 1)"},
      {"dtype", "--model " + int8 + " --pool cls", "model.dtype: F32 (shard 0) vs I8 (shard 1)"},
      {"size", "--model " + tiny() + " --pool cls --size 112x112", "options.preprocessor.size.height"},
  };
  for (const Case& c : cases) {
    // Each wrong shard under the shard names of job "a": a copy of its three files.
    const std::string other = shard(1, c.name, c.args);
    for (const char* ext : {".npy", ".files.txt", ".manifest.json"})
      test::write_bytes(dir + "/a-00001-of-00002" + ext, test::read_text(dir + "/" + c.name + "-00001-of-00002" + ext));
    const ProgramRun r = run("vitmsn-merge --output " + dir + "/m.npy" + good0 + " " + dir + "/a-00001-of-00002.npy");
    EXPECT_EQ(r.status, 1) << c.name << ": " << r.output;
    EXPECT_TRUE(found(r, "made with other settings than")) << c.name << ": " << r.output;
    EXPECT_TRUE(found(r, c.differs)) << c.name << ": " << r.output;
    EXPECT_TRUE(found(r, "nothing written")) << r.output;
    EXPECT_FALSE(exists(dir + "/m.npy")) << c.name;
  }
  // Kernels that round differently are refused too (the manifest is edited as a run on another CPU
  // would have written it: same bytes, other kernels).
  shard(1, "a", "--force --model " + tiny() + " --pool cls");
  std::string m = test::read_text(dir + "/a-00001-of-00002.manifest.json");
  const auto at = m.find("\"kernels\": \"");
  ASSERT_NE(at, std::string::npos) << m;
  m.replace(at, m.find('"', at + 12) - at + 1, "\"kernels\": \"other-isa\"");
  test::write_bytes(dir + "/a-00001-of-00002.manifest.json", m);
  ProgramRun r = run("vitmsn-merge --output " + dir + "/m.npy" + good0 + " " + dir + "/a-00001-of-00002.npy");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(found(r, "vs other-isa (shard 1) [the kernels of each CPU round differently; VITMSN_ISA=")) << r.output;
  // Shards of the same settings merge, with a manifest of their own that merge --inputs reads.
  shard(1, "a", "--force --model " + tiny() + " --pool cls");
  r = run("vitmsn-merge --output " + dir + "/m.npy" + good0 + " " + dir + "/a-00001-of-00002.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(found(r, "merged 2 shards, 6 images")) << r.output;
  ASSERT_EQ(run(extract("--model " + tiny() + " --pool cls --output " + dir + "/single.npy " + imgs)).status, 0);
  EXPECT_EQ(test::read_text(dir + "/m.npy"), test::read_text(dir + "/single.npy"));
  r = run("vitmsn-merge --inputs " + dir + "/single.manifest.json --output " + dir + "/m2.npy" + good0 + " " + dir +
          "/a-00001-of-00002.npy");
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(RunIntegrity, MergeRefusesShardsWithoutAManifestOrOfAnotherInputList) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images();
  for (int i : {0, 1})
    ASSERT_EQ(run(extract("--model " + tiny() + " --pool cls --shard " + std::to_string(i) + "/2 --output " + dir +
                          "/f.npy " + imgs))
                  .status,
              0);
  // Shard 1 of a job over one image more: same settings, another input list.
  test::write_bytes(imgs + "/img99.png", test::read_text(test::data_path("images/coffee.png")));
  ASSERT_EQ(run(extract("--model " + tiny() + " --pool cls --shard 1/2 --output " + dir + "/g.npy " + imgs)).status, 0);
  for (const char* ext : {".npy", ".files.txt", ".manifest.json"})
    test::write_bytes(dir + "/f-00001-of-00002" + ext, test::read_text(dir + "/g-00001-of-00002" + ext));
  const std::string shards = " " + dir + "/f-00000-of-00002.npy " + dir + "/f-00001-of-00002.npy";
  ProgramRun r = run("vitmsn-merge --output " + dir + "/m.npy" + shards);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(found(r, "job.inputs")) << r.output;
  // An old shard (a .done record, no manifest) is named as such.
  std::remove((dir + "/f-00001-of-00002.manifest.json").c_str());
  test::write_bytes(dir + "/f-00001-of-00002.done", "x\n");
  r = run("vitmsn-merge --output " + dir + "/m.npy" + shards);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(found(r, "written by an older vitmsn, without a manifest: redo the shard")) << r.output;
}

// The FIFO of VITMSN_TEST_PAUSE_AFTER_LOCK: open for writing returns once the paused program holds
// its lock; closing it lets the program go on. The poll only guards against a program that never
// gets there (a hang would otherwise block the suite).
class PausedRun {
 public:
  PausedRun(const std::string& dir, const std::string& args) : fifo_(dir + "/pause.fifo") {
    EXPECT_EQ(::mkfifo(fifo_.c_str(), 0600), 0);
    thread_ = std::thread([this, args] {
      result_ = test::run_command("VITMSN_TEST_PAUSE_AFTER_LOCK=" + fifo_ + " " + std::string(VITMSN_PROGRAM_DIR) +
                                  "/" + args);
    });
    for (int i = 0; i < 6000 && fd_ < 0; ++i) {
      fd_ = ::open(fifo_.c_str(), O_WRONLY | O_NONBLOCK);
      if (fd_ < 0) usleep(10000);
    }
    EXPECT_GE(fd_, 0) << "the paused run never took its lock";
  }
  /// Lets the paused run finish; its result.
  ProgramRun finish() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    thread_.join();
    return result_;
  }
  ~PausedRun() {
    if (thread_.joinable()) finish();
  }

 private:
  std::string fifo_;
  int fd_ = -1;
  std::thread thread_;
  ProgramRun result_{-1, ""};
};

TEST(RunIntegrity, TwoRunsIntoOneOutputExactlyOneWrites) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images();
  const std::string out = dir + "/f.npy";
  PausedRun a(dir, extract("--model " + tiny() + " --pool cls --output " + out + " " + imgs));
  // B while A holds the output: refused at once, naming A; nothing of B's is written.
  const ProgramRun b = run(extract("--model " + tiny() + " --pool mean --output " + out + " " + imgs + "/img10.png"));
  EXPECT_EQ(b.status, 1) << b.output;
  EXPECT_TRUE(found(b, "error: " + out + ": another run is writing it: vitmsn-extract (pid ")) << b.output;
  EXPECT_TRUE(found(b, "holds " + dir + "/f.lock; wait for it to finish, or give this run another --output"))
      << b.output;
  EXPECT_FALSE(started_images(b)) << b.output;
  const ProgramRun ra = a.finish();
  ASSERT_EQ(ra.status, 0) << ra.output;
  // A's output is whole: 6 CLS rows, its list and manifest agree, the lock is gone.
  std::vector<std::int64_t> shape;
  read_npy(out, &shape);
  EXPECT_EQ(shape, (std::vector<std::int64_t>{6, 64}));
  const std::string list = test::read_text(dir + "/f.files.txt");
  EXPECT_EQ(std::count(list.begin(), list.end(), '\n'), 6) << list;
  EXPECT_NE(test::read_text(dir + "/f.manifest.json").find("\"pool\": \"cls\""), std::string::npos);
  EXPECT_FALSE(exists(dir + "/f.lock"));
}

TEST(RunIntegrity, AnOutputThatAppearsDuringTheRunIsNotReplaced) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images();
  const std::string out = dir + "/f.npy";
  PausedRun a(dir, extract("--model " + tiny() + " --pool cls --output " + out + " " + imgs));
  test::write_bytes(out, "written by someone else");
  const ProgramRun ra = a.finish();
  EXPECT_EQ(ra.status, 1) << ra.output;
  EXPECT_TRUE(found(ra, out + ": appeared while this run was working (another program wrote it); not replaced"))
      << ra.output;
  EXPECT_TRUE(found(ra, "the features of this run are saved in " + dir + "/f.part-00000.safetensors")) << ra.output;
  EXPECT_EQ(test::read_text(out), "written by someone else");
  EXPECT_FALSE(exists(dir + "/f.manifest.json"));
  EXPECT_EQ(std::system(("ls -a " + dir + " | grep -q staged").c_str()) == 0, false) << "staged files left behind";
  // Moved away, the same command writes the saved features without computing them again.
  std::remove(out.c_str());
  const ProgramRun again = run(extract("--model " + tiny() + " --pool cls --output " + out + " " + imgs));
  EXPECT_EQ(again.status, 0) << again.output;
  EXPECT_TRUE(found(again, "6 of 6 inputs already done")) << again.output;
}

TEST(RunIntegrity, AStaleLockOfADeadRunIsReportedAndTakenOver) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images(2);
  test::write_bytes(dir + "/f.lock",
                    R"({"program": "vitmsn-extract", "pid": 999999, "host": "node7", "started": "2026-01-02"})");
  const ProgramRun r = run(extract("--model " + tiny() + " --pool cls --output " + dir + "/f.npy " + imgs));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(found(r, "note: " + dir +
                           "/f.npy: the run that last wrote it ended without finishing "
                           "(vitmsn-extract (pid 999999 on node7, started 2026-01-02) is no longer "
                           "running); this run takes over"))
      << r.output;
  EXPECT_FALSE(exists(dir + "/f.lock"));
}

TEST(RunIntegrity, InputsNamedTwiceAreFoundBeforeTheFirstImage) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images(3);
  test::write_bytes(dir + "/list.txt", imgs + "/img10.png\n" + imgs + "/img11.png\n" + imgs + "/../imgs/img10.png\n");
  for (const std::string shard : {"", " --shard 0/2"}) {
    const ProgramRun r = run(extract("--model " + tiny() + " --pool cls" + shard + " --output " + dir +
                                     "/f.npy --list " + dir + "/list.txt"));
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_TRUE(found(r, "1 input is named twice: " + imgs + "/../imgs/img10.png (= " + imgs + "/img10.png)"))
        << r.output;
    EXPECT_TRUE(found(r, "give --dedupe to keep the first of each (nothing was run)")) << r.output;
    EXPECT_FALSE(started_images(r)) << r.output;
  }
  const ProgramRun r = run(extract("--model " + tiny() + " --pool cls --dedupe --output " + dir + "/f.npy --list " +
                                   dir + "/list.txt " + imgs + "/img12.png"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(found(r, "note: --dedupe: dropped 1 input named twice")) << r.output;
  // Arguments first, then the list's entries, each once.
  EXPECT_EQ(test::read_text(dir + "/f.files.txt"),
            imgs + "/img12.png\n" + imgs + "/img10.png\n" + imgs + "/img11.png\n");
}

TEST(RunIntegrity, ANameWithALineBreakIsRefusedUpFrontForLineBasedLists) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images(2);
  test::write_bytes(imgs + "/two\nlines.png", test::read_text(test::data_path("images/camera.png")));
  ProgramRun r = run(extract("--model " + tiny() + " --pool cls --output " + dir + "/f.npy " + imgs));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(found(r, "1 input name contains a line break, which the line-based " + dir +
                           "/f.files.txt cannot hold: " + imgs + "/two\\nlines.png; rename the file"))
      << r.output;
  EXPECT_FALSE(started_images(r)) << r.output;
  // Per-image tensors (--pool none, .safetensors) have no list: the name is a key, kept exactly.
  r = run(extract("--model " + tiny() + " --output " + dir + "/f.safetensors " + imgs));
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(RunIntegrity, FileNamesThatAreNotUtf8SurviveTheManifest) {
  const std::string dir = test::temp_dir();
  const std::string imgs = images(1);
  const std::string odd = imgs + "/caf\xe9.png";
  test::write_bytes(odd, test::read_text(test::data_path("images/camera.png")));
  for (int i : {0, 1})
    ASSERT_EQ(run(extract("--model " + tiny() + " --pool cls --shard " + std::to_string(i) + "/2 --output " + dir +
                          "/f.npy " + imgs))
                  .status,
              0);
  const ProgramRun r =
      run("vitmsn-merge --output " + dir + "/m.npy " + dir + "/f-00000-of-00002.npy " + dir + "/f-00001-of-00002.npy");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(test::read_text(dir + "/m.manifest.json").find("\"hex\": \""), std::string::npos) << "bytes kept as hex";
  EXPECT_NE(test::read_text(dir + "/m.files.txt").find(odd + "\n"), std::string::npos) << "the list keeps the bytes";
}

}  // namespace
}  // namespace vitmsn

#endif  // VITMSN_PROGRAM_DIR
