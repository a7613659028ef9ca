// The programs in examples/, run as a user runs them: exit status, messages, and output files.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <regex>
#include <string>
#include <vector>

#include "cli.hpp"
#include "test_util.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/io.hpp"
#include "vitmsn/safetensors.hpp"
#include "vitmsn/version.hpp"

#ifdef VITMSN_PROGRAM_DIR

namespace vitmsn {
namespace {

using test::ProgramRun;
using test::run;

std::string pixel_value_args() {
  std::string s;
  for (int i = 0; i < 3; ++i)
    s += " --pixel-values " + test::data_path("expected/preprocess." + std::to_string(i) + ".safetensors");
  return s;
}

bool exists(const std::string& p) { return std::ifstream(p).good(); }

TEST(ExtractProgram, ReproducesEveryTinyOutputFromPixelValues) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/tiny.safetensors", out_cls = dir + "/tiny_cls.safetensors";
  ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + out +
                     pixel_value_args() + " --hidden-states --cls-attention");
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("vitmsn-extract --model " + test::data_path("models/tiny-cls") + " --output " + out_cls + pixel_value_args());
  ASSERT_EQ(r.status, 0) << r.output;
  const SafetensorsFile a = SafetensorsFile::open(out), b = SafetensorsFile::open(out_cls);
  const SafetensorsFile ref = SafetensorsFile::open(test::data_path("expected/tiny_outputs.safetensors"));
  int compared = 0;
  for (const auto& key : ref.names()) {
    const bool is_logits = key.size() > 7 && key.compare(key.size() - 7, 7, ".logits") == 0;
    const SafetensorsFile& f = is_logits ? b : a;
    ASSERT_TRUE(f.contains(key)) << "vitmsn-extract did not write " << key;
    const auto got = f.get(key).to_float(), want = ref.get(key).to_float();
    ASSERT_EQ(got.size(), want.size()) << key;
    const double err = test::max_abs_diff(got.data(), want.data(), want.size());
    EXPECT_LE(err, 1e-4) << key << ": max abs error " << err;
    ++compared;
  }
  EXPECT_EQ(compared, 30);
}

TEST(ExtractProgram, ReportsABadImageAndStillProcessesTheOthers) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/f.safetensors";
  const ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + out + " " +
                           test::data_path("images/truncated.jpg") + " " + test::data_path("images/chelsea.png"));
  EXPECT_EQ(r.status, 3) << r.output;  // written, with a failure
  EXPECT_NE(r.output.find("error: " + test::data_path("images/truncated.jpg")), std::string::npos) << r.output;
  ASSERT_TRUE(exists(out)) << r.output;
  const SafetensorsFile f = SafetensorsFile::open(out);
  EXPECT_TRUE(f.contains("chelsea.last_hidden_state"));
  EXPECT_FALSE(f.contains("truncated.last_hidden_state"));
}

TEST(ExtractProgram, ImagesGiveHuggingFaceFeatures) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/f.safetensors";
  const ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + out + " " +
                           test::data_path("images/chelsea.png") + " " + test::data_path("images/horse.png") + " " +
                           test::data_path("images/green_palette.png") + " --save-pixel-values");
  ASSERT_EQ(r.status, 0) << r.output;
  const SafetensorsFile f = SafetensorsFile::open(out);
  for (const std::string c : {"chelsea", "horse", "green_palette"}) {
    const auto got = f.get(c + ".last_hidden_state").to_float(),
               want = test::tiny_output(c + ".last_hidden_state").to_float();
    ASSERT_EQ(got.size(), want.size());
    const double err = test::max_abs_diff(got.data(), want.data(), want.size());
    EXPECT_LE(err, 1e-4) << c << ": max abs error " << err;
    const auto px = f.get(c + ".pixel_values").to_float(),
               px_want = test::preprocess_fixture(c + ".pixel_values").to_float();
    EXPECT_LE(test::max_abs_diff(px.data(), px_want.data(), px_want.size()), 1e-6) << c;
  }
}

TEST(ExtractProgram, FolderInputWithClashingStemsIsAnErrorNamingBoth) {
  const std::string dir = test::temp_dir();
  std::ifstream a(test::data_path("images/chelsea.png"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(a)), std::istreambuf_iterator<char>());
  std::system(("mkdir -p " + dir + "/in/sub").c_str());
  test::write_bytes(dir + "/in/cat.png", bytes);
  test::write_bytes(dir + "/in/sub/cat.png", bytes);
  const ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + dir +
                           "/f.safetensors " + dir + "/in");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find(dir + "/in/cat.png"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(dir + "/in/sub/cat.png"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(dir + "/f.safetensors"));
}

TEST(ExtractProgram, DoesNotOverwriteWithoutForce) {
  const std::string dir = test::temp_dir();
  const std::string out = dir + "/f.safetensors";
  test::write_bytes(out, "keep me");
  ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + out + " " +
                     test::data_path("images/camera.png"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("already exists"), std::string::npos) << r.output;
  std::ifstream in(out);
  std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(content, "keep me");
  r = run("vitmsn-extract --force --model " + test::data_path("models/tiny") + " --output " + out + " " +
          test::data_path("images/camera.png"));
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(SafetensorsFile::open(out).contains("camera.last_hidden_state"));
}

TEST(ExtractProgram, BadFlagsGiveUsageErrors) {
  const std::string out = test::temp_dir() + "/x.safetensors";
  ProgramRun r = run("vitmsn-extract --bogus");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("error: unknown option --bogus"), std::string::npos) << r.output;
  r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + out + " --size 100x7 " +
          test::data_path("images/camera.png"));
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("multiples of the patch size"), std::string::npos) << r.output;
  r = run("vitmsn-extract --threads zero --output " + out + " x.png");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--threads"), std::string::npos) << r.output;
  r = run("vitmsn-extract --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.output.find("usage: vitmsn-extract"), std::string::npos);
}

TEST(ExtractProgram, MissingModelIsAClearError) {
  const ProgramRun r = run("vitmsn-extract --model /nonexistent/model --output " + test::temp_dir() +
                           "/x.safetensors " + test::data_path("images/camera.png"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("error: /nonexistent/model"), std::string::npos) << r.output;
}

TEST(ExtractProgram, OtherSizeUsesInterpolatedPositions) {
  const std::string dir = test::temp_dir();
  const ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + dir +
                           "/f.safetensors --size 280x280 " + test::data_path("images/chelsea.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto got = SafetensorsFile::open(dir + "/f.safetensors").get("chelsea.last_hidden_state").to_float();
  const auto want = test::tiny_output("chelsea.280x280.last_hidden_state").to_float();
  ASSERT_EQ(got.size(), want.size());
  const double err = test::max_abs_diff(got.data(), want.data(), want.size());
  EXPECT_LE(err, 1e-4) << "chelsea 280x280 from the image: max abs error " << err;
}

TEST(ExtractProgram, PooledNpyWithListFileAndBatchesHasOneRowPerImageInOrder) {
  const std::string dir = test::temp_dir();
  test::write_bytes(dir + "/list.txt", "# more images\n" + test::data_path("images/camera.png") + "\n\n" +
                                           test::data_path("images/horse.png") + "\n");
  const ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + dir +
                           "/f.npy --pool cls --batch 2 " + test::data_path("images/chelsea.png") + " " +
                           test::data_path("images/coffee.png") + " --list " + dir + "/list.txt");
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<std::int64_t> shape;
  const std::vector<float> f = read_npy(dir + "/f.npy", &shape);
  ASSERT_EQ(shape, (std::vector<std::int64_t>{4, 64}));
  std::ifstream side(dir + "/f.files.txt");
  std::string line;
  std::vector<std::string> names;
  while (std::getline(side, line)) names.push_back(line);
  ASSERT_EQ(names.size(), 4u);
  const std::string cases[] = {"chelsea", "coffee", "camera", "horse"};
  for (int i = 0; i < 4; ++i) {
    EXPECT_NE(names[i].find(cases[i]), std::string::npos) << names[i];
    const auto want = test::tiny_output(cases[i] + ".last_hidden_state").to_float();  // row 0 = CLS
    const double err = test::max_abs_diff(f.data() + i * 64, want.data(), 64);
    EXPECT_LE(err, 1e-4) << cases[i] << " CLS: max abs error " << err;
  }
}

TEST(ExtractProgram, MeanPoolingToSafetensorsAveragesThePatchTokens) {
  const std::string dir = test::temp_dir();
  const ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + dir +
                           "/f.safetensors --pool mean " + test::data_path("images/astronaut.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto got = SafetensorsFile::open(dir + "/f.safetensors").get("features").to_float();
  const auto tokens = test::tiny_output("astronaut.last_hidden_state").to_float();
  ASSERT_EQ(got.size(), 64u);
  for (int d = 0; d < 64; ++d) {
    double mean = 0;
    for (int t = 1; t < 1025; ++t) mean += tokens[t * 64 + d];
    EXPECT_NEAR(got[d], mean / 1024, 1e-4) << "dimension " << d;
  }
}

TEST(ExtractProgram, AllTokensNpyIsImagesByTokensByHidden) {
  const std::string dir = test::temp_dir();
  const ProgramRun r =
      run("vitmsn-extract --model " + test::data_path("models/tiny") + " --output " + dir + "/f.npy --batch 2 " +
          test::data_path("images/chelsea.png") + " " + test::data_path("images/green_palette.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<std::int64_t> shape;
  const std::vector<float> f = read_npy(dir + "/f.npy", &shape);
  ASSERT_EQ(shape, (std::vector<std::int64_t>{2, 1025, 64}));
  const auto want = test::tiny_output("green_palette.last_hidden_state").to_float();
  EXPECT_LE(test::max_abs_diff(f.data() + 1025 * 64, want.data(), want.size()), 1e-4);
}

TEST(ClassifyProgram, PrintsTopClassesWithLabels) {
  const ProgramRun r = run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + " --top 2 " +
                           test::data_path("images/rocket.jpg"));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("rocket.jpg"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("%  rocket"), std::string::npos) << r.output;
  // --top 2: exactly two class lines.
  std::size_t lines = 0;
  for (std::size_t p = r.output.find(" %  "); p != std::string::npos; p = r.output.find(" %  ", p + 1)) ++lines;
  EXPECT_EQ(lines, 2u) << r.output;
}

TEST(ClassifyProgram, ModelWithoutHeadGetsAClearMessage) {
  const ProgramRun r =
      run("vitmsn-classify --model " + test::data_path("models/tiny") + " " + test::data_path("images/rocket.jpg"));
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("has no classifier head"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("vitmsn-probe"), std::string::npos) << r.output;
}

TEST(ConvertProgram, ConvertsTheTorchBinToAWorkingSingleFileModel) {
  const std::string dir = test::temp_dir();
  ProgramRun r =
      run("vitmsn-convert " + test::data_path("models/tiny") + "/pytorch_model.bin " + dir + "/m.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;  // config.json beside the .bin is picked up
  EXPECT_NE(r.output.find("config.json"), std::string::npos) << r.output;
  r = run("vitmsn-convert --dtype bf16 " + test::data_path("models/tiny") + " " + dir + "/m16.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("38 tensors"), std::string::npos) << r.output;
  r = run("vitmsn-extract --model " + dir + "/m16.safetensors --output " + dir + "/f.safetensors " +
          test::data_path("images/chelsea.png"));
  EXPECT_EQ(r.status, 0) << r.output;
  r = run("vitmsn-convert --dtype int4 a b");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--dtype"), std::string::npos) << r.output;
  // The panel layout: says its width; a bad layout or one with another dtype is a usage error
  // before anything is read.
  r = run("vitmsn-convert --layout panels " + test::data_path("models/tiny") + " " + dir + "/p.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(", panels of "), std::string::npos) << r.output;
  r = run("vitmsn-extract --model " + dir + "/p.safetensors --output " + dir + "/p.npy " +
          test::data_path("images/chelsea.png"));
  EXPECT_EQ(r.status, 0) << r.output;
  r = run("vitmsn-convert --layout columns a b");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--layout: unknown weight layout 'columns'"), std::string::npos) << r.output;
  r = run("vitmsn-convert --layout panels --dtype int8 a b");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--layout panels stores float32 weights"), std::string::npos) << r.output;
}

TEST(DemoProgram, FallsBackToTheBundledModelAndSaysSo) {
  unsetenv("VITMSN_MODEL");  // the demo must not find real weights here (the test's folder has none)
  const ProgramRun r = run("vitmsn-demo");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("bundled tiny test model"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("last_hidden_state [1025, 64]"), std::string::npos) << r.output;
}

TEST(AttentionProgram, WritesAHeatMapOfTheImagesSize) {
  const std::string dir = test::temp_dir();
  const std::string in = test::data_path("images/chelsea.png");
  ProgramRun r = run("vitmsn-attention --model " + test::data_path("models/tiny") + " --output " + dir +
                     "/a.png --no-legend --layer 0 " + in);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("layer 0, mean of heads, 32x32 patches"), std::string::npos) << r.output;
  const Image src = read_image(in), heat = read_image(dir + "/a.png");
  ASSERT_EQ(heat.width, src.width);
  ASSERT_EQ(heat.height, src.height);
  std::size_t changed = 0;
  for (std::size_t i = 0; i < src.rgb.size(); ++i) changed += src.rgb[i] != heat.rgb[i];
  EXPECT_GT(changed, src.rgb.size() / 2) << "the heat map must be visible over most of the image";
  r = run("vitmsn-attention --model " + test::data_path("models/tiny") + " --output " + dir +
          "/b.png --no-legend --head 3 --alpha 0 " + in);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(read_image(dir + "/b.png").rgb, src.rgb) << "alpha 0 must leave the image unchanged";
  r = run("vitmsn-attention --model " + test::data_path("models/tiny") + " --output " + dir + "/c.png --layer 2 " + in);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--layer"), std::string::npos) << r.output;
}

// A folder of 12 images (copies of the fixtures under distinct names) for the sharding tests.
std::string shard_images(const std::string& dir) {
  std::system(("mkdir -p " + dir + "/imgs").c_str());
  const char* src[] = {"chelsea.png", "coffee.png", "camera.png", "horse.png", "green_palette.png", "astronaut.png"};
  for (int i = 0; i < 12; ++i) {
    std::ifstream in(test::data_path(std::string("images/") + src[i % 6]), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    test::write_bytes(dir + "/imgs/img" + std::to_string(i / 10) + std::to_string(i % 10) + ".png", bytes);
  }
  return dir + "/imgs";
}

TEST(Sharding, FourParallelShardsMergeToTheSingleProcessResultBitForBit) {
  const std::string dir = test::temp_dir();
  const std::string imgs = shard_images(dir);
  const std::string model = " --model " + test::data_path("models/tiny") + " --threads 1 --pool cls ";
  ProgramRun r = run("vitmsn-extract" + model + "--output " + dir + "/single.safetensors " + imgs);
  ASSERT_EQ(r.status, 0) << r.output;
  // Four shard processes at once, as a scheduler would start them.
  std::string cmd;
  for (int i = 0; i < 4; ++i)
    cmd += std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract" + model + "--chunk 2 --shard " + std::to_string(i) +
           "/4 --output " + dir + "/f.safetensors " + imgs + " > " + dir + "/log" + std::to_string(i) + " 2>&1 & ";
  ASSERT_EQ(std::system(("bash -c '" + cmd + "wait'").c_str()), 0);
  std::string shards;
  for (int i = 0; i < 4; ++i) shards += " " + dir + "/f-0000" + std::to_string(i) + "-of-00004.safetensors";
  r = run("vitmsn-merge --output " + dir + "/merged.safetensors" + shards);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("merged 4 shards, 12 images"), std::string::npos) << r.output;
  const SafetensorsFile merged = SafetensorsFile::open(dir + "/merged.safetensors");
  const TensorView& a = merged.get("features");
  const SafetensorsFile single = SafetensorsFile::open(dir + "/single.safetensors");
  const TensorView& b = single.get("features");
  ASSERT_EQ(a.shape, b.shape);
  EXPECT_EQ(std::memcmp(a.data, b.data, a.nbytes), 0) << "merged shards differ from the single-process run";
  std::ifstream fa(dir + "/merged.files.txt"), fb(dir + "/single.files.txt");
  EXPECT_EQ(std::string(std::istreambuf_iterator<char>(fa), {}), std::string(std::istreambuf_iterator<char>(fb), {}));
  // Re-running a finished shard does nothing.
  r = run("vitmsn-extract" + model + "--chunk 2 --shard 2/4 --output " + dir + "/f.safetensors " + imgs);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("already complete"), std::string::npos) << r.output;
}

TEST(Sharding, AKilledShardResumesFromItsSavedChunks) {
  const std::string dir = test::temp_dir();
  const std::string imgs = shard_images(dir);
  const std::string args = " --model " + test::data_path("models/tiny") +
                           " --threads 1 --pool mean --chunk 1 --shard 0/1 --output " + dir + "/f.npy " + imgs;
  // The shard dies by SIGKILL (no chance to clean up) right after saving its third chunk: the test
  // hook makes the kill land at that point on any machine.
  ProgramRun r =
      test::run_command("VITMSN_TEST_KILL_AFTER_CHUNK=2 " + std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract" + args);
  ASSERT_EQ(r.status, 128 + SIGKILL) << "the shard should have died by SIGKILL (the shell reports 137): " << r.output;
  for (int k = 0; k < 3; ++k)
    EXPECT_TRUE(exists(dir + "/f-00000-of-00001.part-0000" + std::to_string(k) + ".safetensors")) << "chunk " << k;
  EXPECT_FALSE(exists(dir + "/f-00000-of-00001.part-00003.safetensors"));
  ASSERT_FALSE(exists(dir + "/f-00000-of-00001.npy")) << "a killed shard must leave no output";
  // Resume: the saved chunks are reused, the rest computed; the result equals a fresh single run.
  r = run("vitmsn-extract" + args);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resuming shard 0/1: 3 of 12 inputs already done"), std::string::npos) << r.output;
  EXPECT_LT(r.output.find("resuming"), r.output.find("[1/9]")) << "the resume must be announced before the work";
  r = run("vitmsn-extract --model " + test::data_path("models/tiny") + " --threads 1 --pool mean --output " + dir +
          "/single.npy " + imgs);
  ASSERT_EQ(r.status, 0) << r.output;
  std::vector<std::int64_t> sa, sb;
  const auto a = read_npy(dir + "/f-00000-of-00001.npy", &sa), b = read_npy(dir + "/single.npy", &sb);
  EXPECT_EQ(sa, (std::vector<std::int64_t>{12, 64}));
  EXPECT_EQ(sa, sb);
  EXPECT_EQ(a, b) << "resumed shard differs from a fresh run";
  EXPECT_FALSE(exists(dir + "/f-00000-of-00001.part-00000.safetensors")) << "part files must be removed when done";
}

TEST(Sharding, ACorruptSavedChunkIsRedoneWithANote) {
  const std::string dir = test::temp_dir();
  const std::string imgs = shard_images(dir);
  const std::string args = " --model " + test::data_path("models/tiny") +
                           " --threads 1 --pool cls --chunk 1 --shard 0/1 --output " + dir + "/f.npy " + imgs;
  // A part for the first image whose manifest is damaged (row_size is not a number), and one saved by
  // an older vitmsn-extract (no manifest): both are redone, never trusted.
  const std::string part = dir + "/f-00000-of-00001.part-00000.safetensors";
  const std::vector<float> zeros(64, 0.0f);
  write_safetensors(
      part, {TensorData::f32("__rows__", {1, 64}, zeros.data())},
      {{"vitmsn_part", R"({"part": {"first": 0, "end": 1, "row_size": "banana"}, "rows": [], "failed": []})"}});
  ProgramRun r = run("vitmsn-extract" + args);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("note: redoing the work from part 0 on: " + part + ": damaged manifest in a saved part"),
            std::string::npos)
      << r.output;
  write_safetensors(part, {TensorData::f32("__rows__", {1, 64}, zeros.data())},
                    {{"inputs", imgs + "/img00.png\n"}, {"rows", imgs + "/img00.png"}, {"row_size", "64"}});
  r = run("vitmsn-extract --force" + args);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("note: --force: discarded 1 part of saved work"), std::string::npos) << r.output;
  write_safetensors(part, {TensorData::f32("__rows__", {1, 64}, zeros.data())},
                    {{"inputs", imgs + "/img00.png\n"}, {"rows", imgs + "/img00.png"}, {"row_size", "64"}});
  std::remove((dir + "/f-00000-of-00001.manifest.json").c_str());
  std::remove((dir + "/f-00000-of-00001.npy").c_str());
  r = run("vitmsn-extract" + args);
  EXPECT_EQ(r.status, 1) << "a list without its manifest is a torn output: " << r.output;
  EXPECT_NE(r.output.find("f-00000-of-00001.files.txt: exists without its manifest"), std::string::npos) << r.output;
  std::remove((dir + "/f-00000-of-00001.files.txt").c_str());
  r = run("vitmsn-extract" + args);
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find(part + ": saved by an older vitmsn-extract, without a manifest"), std::string::npos)
      << r.output;
  const ProgramRun single = run("vitmsn-extract --model " + test::data_path("models/tiny") +
                                " --threads 1 --pool cls --output " + dir + "/single.npy " + imgs);
  ASSERT_EQ(single.status, 0) << single.output;
  EXPECT_EQ(read_npy(dir + "/f-00000-of-00001.npy", nullptr), read_npy(dir + "/single.npy", nullptr));
}

TEST(Sharding, MergeReportsMissingShardsAndImages) {
  const std::string dir = test::temp_dir();
  const std::string imgs = shard_images(dir);
  const std::string model = " --model " + test::data_path("models/tiny") + " --threads 1 --pool cls ";
  for (int i : {0, 2}) {
    const ProgramRun r = run("vitmsn-extract" + model + "--shard " + std::to_string(i) + "/3 --output " + dir +
                             "/f.safetensors " + imgs);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  std::string list;
  for (int i = 0; i < 12; ++i) list += imgs + "/img" + std::to_string(i / 10) + std::to_string(i % 10) + ".png\n";
  test::write_bytes(dir + "/inputs.txt", list);
  const ProgramRun r = run("vitmsn-merge --inputs " + dir + "/inputs.txt --output " + dir + "/m.safetensors " + dir +
                           "/f-00000-of-00003.safetensors " + dir + "/f-00002-of-00003.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("missing shard 1 of 3"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("img04.png is in no shard"), std::string::npos) << r.output;
  EXPECT_FALSE(exists(dir + "/m.safetensors"));
}

TEST(Sharding, MergeReadsShardNamesExactlyAndRefusesOthers) {
  const std::string dir = test::temp_dir();
  // A NAME that itself looks like a shard name: only the last "-IIIII-of-NNNNN" counts.
  const std::string imgs = shard_images(dir);
  ProgramRun r = run("vitmsn-extract --model " + test::data_path("models/tiny") +
                     " --threads 1 --pool cls --shard 0/1 "
                     "--output " +
                     dir + "/x-00003-of-00007.npy " + imgs);
  ASSERT_EQ(r.status, 0) << r.output;
  r = run("vitmsn-merge --output " + dir + "/m.npy " + dir + "/x-00003-of-00007-00000-of-00001.npy");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("merged 1 shard, 12 images"), std::string::npos) << r.output;
  for (const std::string bad :
       {"f-0001-of-00002.npy", "f-00001-of-0002.npy", "f-00001_of-00002.npy", "f-00001-of-00002.bin",
        "f00001-of-00002.npy", "f-0a001-of-00002.npy", "-of-00002.npy"}) {
    r = run("vitmsn-merge --output " + dir + "/m2.npy " + dir + "/" + bad);
    EXPECT_EQ(r.status, 1) << bad << ": " << r.output;
    EXPECT_NE(r.output.find(bad + ": not a shard output"), std::string::npos) << bad << ": " << r.output;
  }
}

TEST(Sharding, TaskIndexComesFromSlurmOrKubernetes) {
  const std::string dir = test::temp_dir();
  const std::string imgs = shard_images(dir);
  const std::string model = " --model " + test::data_path("models/tiny") + " --threads 1 --pool cls ";
  ProgramRun r = run("vitmsn-extract" + model + "--output " + dir + "/s.safetensors " + imgs);
  const std::string prog = std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract" + model;
  ASSERT_EQ(std::system(("SLURM_ARRAY_TASK_ID=5 SLURM_ARRAY_TASK_MIN=4 SLURM_ARRAY_TASK_COUNT=2 " + prog + "--output " +
                         dir + "/s.safetensors " + imgs + " > /dev/null 2>&1")
                            .c_str()),
            0);
  EXPECT_TRUE(exists(dir + "/s-00001-of-00002.safetensors"));
  ASSERT_EQ(std::system(("JOB_COMPLETION_INDEX=0 " + prog + "--shards 2 --output " + dir + "/s.safetensors " + imgs +
                         " > /dev/null 2>&1")
                            .c_str()),
            0);
  EXPECT_TRUE(exists(dir + "/s-00000-of-00002.safetensors"));
  r = run("vitmsn-extract" + model + "--shard 4/4 --output " + dir + "/s.safetensors " + imgs);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("outside 0..3"), std::string::npos) << r.output;
}

// Starts vitmsn-extract on 40 images, sends `signal` once two are done; it must stop after the
// current image, keep what it computed in a resumable part (no output, no temporary file), say how
// far it got and how to go on; the same command then finishes the run, and its output is byte for
// byte the one an uninterrupted run writes.
void expect_clean_stop_on(const std::string& signal) {
  const std::string dir = test::temp_dir();
  std::system(("mkdir -p " + dir + "/imgs").c_str());
  std::ifstream in(test::data_path("images/chelsea.png"), std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (int i = 0; i < 40; ++i) test::write_bytes(dir + "/imgs/c" + std::to_string(100 + i) + ".png", bytes);
  const std::string command = std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract --threads 1 --model " +
                              test::data_path("models/tiny") + " --pool mean --output " + dir + "/f.npy " + dir +
                              "/imgs";
  const std::string pid = test::start_in_background(command, dir + "/log");
  ASSERT_FALSE(pid.empty());
  auto log = [&] { return test::read_text(dir + "/log"); };
  for (int i = 0; i < 600 && log().find("[2/40]") == std::string::npos; ++i) usleep(50000);
  std::system(("kill -" + signal + " " + pid).c_str());
  for (int i = 0; i < 200 && log().find("interrupted") == std::string::npos; ++i) usleep(50000);
  const std::string text = log();
  EXPECT_NE(text.find("interrupted: "), std::string::npos) << signal << ": " << text;
  EXPECT_NE(text.find("of 40 inputs done for " + dir + "/f.npy, saved in " + dir +
                      "/f.part-*; run the same command again to continue"),
            std::string::npos)
      << signal << ": " << text;
  EXPECT_FALSE(exists(dir + "/f.npy")) << signal;
  EXPECT_TRUE(exists(dir + "/f.part-00000.safetensors")) << signal;
  // No temporary files left behind either.
  EXPECT_EQ(std::system(("ls -a " + dir + " | grep -q -e tmp -e staged").c_str()) == 0, false) << signal;
  const ProgramRun resumed = test::run_command(command);
  ASSERT_EQ(resumed.status, 0) << resumed.output;
  EXPECT_NE(resumed.output.find("resuming " + dir + "/f.npy: "), std::string::npos) << resumed.output;
  EXPECT_FALSE(exists(dir + "/f.part-00000.safetensors")) << "parts must be removed once the output is written";
  const ProgramRun fresh =
      test::run_command(std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract --threads 1 --model " +
                        test::data_path("models/tiny") + " --pool mean --output " + dir + "/g.npy " + dir + "/imgs");
  ASSERT_EQ(fresh.status, 0) << fresh.output;
  EXPECT_EQ(test::read_text(dir + "/f.npy"), test::read_text(dir + "/g.npy")) << "resumed output differs";
  EXPECT_EQ(test::read_text(dir + "/f.files.txt"), test::read_text(dir + "/g.files.txt"));
}

TEST(ExtractProgram, InterruptedRunLeavesNoPartialOutputAndSaysWhatWasDone) { expect_clean_stop_on("INT"); }

TEST(ExtractProgram, TerminatedRunLeavesNoPartialOutputAndSaysWhatWasDone) { expect_clean_stop_on("TERM"); }

// ---------------------------------------------------------------------------------------------------
// The programs as a newcomer meets them (issue #13)

const std::string kAllPrograms[] = {"vitmsn-extract", "vitmsn-merge",     "vitmsn-classify", "vitmsn-probe",
                                    "vitmsn-convert", "vitmsn-attention", "vitmsn-bench",    "vitmsn-demo"};

std::string tiny() { return test::data_path("models/tiny"); }

// Copies a fixture image to `dest` (folders created).
void copy_image(const std::string& fixture, const std::string& dest) {
  std::system(("mkdir -p '" + dest.substr(0, dest.find_last_of('/')) + "'").c_str());
  test::write_bytes(dest, test::read_text(test::data_path("images/" + fixture)));
}

// True when the program started on images: the progress line's first line ("[0/N]") was printed.
bool started_images(const ProgramRun& r) { return r.output.find("[0/") != std::string::npos; }

TEST(Programs, CheckTheirOutputBeforeAnyImage) {
  const std::string dir = test::temp_dir();
  const std::string img = test::data_path("images/chelsea.png");
  test::temp_dir("dir.npy");
  struct Case {
    std::string command, message;
  } cases[] = {
      {"vitmsn-extract --model " + tiny() + " --output " + dir + "/nodir/x.npy " + img,
       dir + "/nodir/x.npy: the folder " + dir + "/nodir does not exist"},
      {"vitmsn-extract --model " + tiny() + " --force --output " + dir + "/dir.npy " + img,
       dir + "/dir.npy: is a folder; give --output a file name"},
      {"vitmsn-extract --model " + tiny() + " --output /sys/x.npy " + img,
       "/sys/x.npy: cannot create files in the folder /sys"},
      {"vitmsn-attention --model " + tiny() + " --output " + dir + "/x.jpg " + img,
       "--output " + dir + "/x.jpg: the name must end in .png, the format written (not .jpg)"},
      {"vitmsn-convert " + tiny() + " " + dir + "/x.bin",
       "the name must end in .safetensors, the format written (not .bin)"},
      {"vitmsn-convert " + tiny() + " " + dir + "/x.onnx",
       "the name must end in .safetensors, the format written (not .onnx)"},
      {"vitmsn-convert " + tiny() + " " + dir + "/x",
       "the name must end in .safetensors, the format written (it has no extension)"},
      {"vitmsn-probe --model " + tiny() + " --data " + dir + " --output " + dir + "/nodir/h.safetensors",
       "the folder " + dir + "/nodir does not exist"},
      {"vitmsn-merge --output " + dir + "/nodir/m.npy " + dir + "/f-00000-of-00001.npy",
       "the folder " + dir + "/nodir does not exist"},
  };
  for (const Case& c : cases) {
    const ProgramRun r = run(c.command);
    EXPECT_NE(r.status, 0) << c.command << "\n" << r.output;
    EXPECT_NE(r.output.find("error: "), std::string::npos) << c.command << "\n" << r.output;
    EXPECT_NE(r.output.find(c.message), std::string::npos) << c.command << "\n" << r.output;
    EXPECT_FALSE(started_images(r)) << "checked only after starting on the images: " << c.command << "\n" << r.output;
  }
  EXPECT_FALSE(exists(dir + "/x.jpg"));
  EXPECT_FALSE(exists(dir + "/x.bin"));
}

TEST(ConvertProgram, RefusesAHeadOfAnotherBackboneAndSaysWhatItReplaces) {
  const std::string dir = test::temp_dir();
  const std::string cls = test::data_path("models/tiny-cls");
  auto head = [&](const std::string& name, const std::string& backbone) {
    return test::write_tiny_head(dir + "/" + name, {"yes", "no"}, backbone);
  };
  // A head recording tiny's backbone, merged into tiny-cls (other weights): refused, nothing written.
  const std::string other = head("other.safetensors", backbone_identity(tiny()));
  ProgramRun r = run("vitmsn-convert --add-classifier " + other + " " + cls + " " + dir + "/m.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + other + ": this head was trained on the features of another model"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(dir + "/m.safetensors"));
  // --force merges it, with a warning; tiny-cls's own head is said to be replaced.
  r = run("vitmsn-convert --force --add-classifier " + other + " " + cls + " " + dir + "/m.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + other + " was trained on another backbone"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("replaced  the classifier head of " + cls +
                          " (5 classes: cat, astronaut, coffee, rocket, camera) by "),
            std::string::npos)
      << r.output;
  // A head without a recorded backbone: merged, with a warning that it could not be checked.
  const std::string old = head("old.safetensors", "");
  r = run("vitmsn-convert --add-classifier " + old + " " + tiny() + " " + dir + "/o.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("warning: " + old + " records no backbone"), std::string::npos) << r.output;
  // The output records the backbone it was converted from.
  EXPECT_NE(r.output.find("backbone  " + backbone_identity(tiny()).substr(0, 16) + "… (computed from the weights)"),
            std::string::npos)
      << r.output;
  EXPECT_EQ(SafetensorsFile::open(dir + "/o.safetensors").metadata().at("backbone_sha256"), backbone_identity(tiny()));
}

TEST(ExtractProgram, SizesAreCheckedOnceBeforeAnyImage) {
  const std::string dir = test::temp_dir();
  const std::string base =
      "vitmsn-extract --model " + tiny() + " --output " + dir + "/f.npy " + test::data_path("images") + " --size ";
  struct Case {
    std::string size, message;
  } cases[] = {
      {"0x0",
       "option --size 0x0: height and width must be positive multiples of the patch size 7; the nearest "
       "valid size is 7x7"},
      {"320x240",
       "option --size 320x240: height and width must be positive multiples of the patch size 7; the "
       "nearest valid size is 322x238"},
      {"7000x7000", "option --size 7000x7000 makes 1000001 tokens at patch size 7, more than the limit of 65537"},
      {"224by224", "option --size needs HEIGHTxWIDTH (e.g. 224x224), got '224by224'"},
  };
  for (const Case& c : cases) {
    const ProgramRun r = run(base + c.size);
    EXPECT_EQ(r.status, 2) << c.size << ": " << r.output;
    EXPECT_NE(r.output.find("error: " + c.message), std::string::npos) << c.size << ": " << r.output;
    EXPECT_FALSE(started_images(r)) << c.size << ": " << r.output;
  }
  const ProgramRun r = run("vitmsn-attention --model " + tiny() + " --output " + dir + "/a.png --size 320x240 " +
                           test::data_path("images/chelsea.png"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("322x238"), std::string::npos) << r.output;
}

TEST(Programs, AModelThatIsNotSafetensorsIsNamedWithWhatToDo) {
  const std::string dir = test::temp_dir();
  test::write_bytes(dir + "/notes.txt", "my model notes\nfetched from the hub\n");
  struct Case {
    std::string model, message;
  } cases[] = {
      {tiny() + "/pytorch_model.bin",
       "a PyTorch checkpoint (torch.save zip, like pytorch_model.bin), not a safetensors file; convert it into one "
       "with: vitmsn-convert " +
           tiny() + "/pytorch_model.bin " + tiny() + "/model.safetensors"},
      {test::data_path("images/chelsea.png"), "a PNG image, not a model"},
      {dir + "/notes.txt", "a text file, not a safetensors model"},
  };
  for (const Case& c : cases) {
    const ProgramRun r = run("vitmsn-extract --model " + c.model + " --output " + dir + "/f.npy " +
                             test::data_path("images/chelsea.png"));
    EXPECT_EQ(r.status, 1) << r.output;
    EXPECT_NE(r.output.find("error: " + c.model + ": " + c.message), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("header length"), std::string::npos) << r.output;
  }
}

TEST(ExtractProgram, AFolderWithOnlyPytorchBinGetsACommandThatFixesIt) {
  const std::string dir = test::temp_dir();
  const std::string model = test::temp_dir("ptonly");
  for (const char* f : {"pytorch_model.bin", "config.json"})
    test::write_bytes(model + "/" + f, test::read_text(tiny() + "/" + f));
  const std::string extract =
      "vitmsn-extract --model " + model + " --output " + dir + "/f.npy " + test::data_path("images/chelsea.png");
  ProgramRun r = run(extract);
  ASSERT_EQ(r.status, 1) << r.output;
  const std::string hint = "convert it first: ";
  const auto at = r.output.find(hint);
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string fix = r.output.substr(at + hint.size(), r.output.find('\n', at) - at - hint.size());
  EXPECT_EQ(fix, "vitmsn-convert " + model + " " + model + "/model.safetensors");
  // The command as printed, run in the test's folder (so that a wrong hint cannot write elsewhere).
  r = test::run_command("cd '" + dir + "' && " + std::string(VITMSN_PROGRAM_DIR) + "/" + fix);
  ASSERT_EQ(r.status, 0) << fix << "\n" << r.output;
  r = run(extract);
  EXPECT_EQ(r.status, 0) << "the same --model still fails after the printed fix:\n" << r.output;
}

TEST(Programs, AUsageErrorIsOneLineAndAPointerToHelp) {
  for (const std::string& p : kAllPrograms) {
    const ProgramRun r = run(p + " --bogus");
    EXPECT_EQ(r.status, 2) << p;
    EXPECT_EQ(r.output, "error: unknown option --bogus\n(" + p + " --help lists the options)\n") << p;
  }
}

TEST(Programs, VersionNamesTheLibraryTheKernelsAndTheJpegDecoder) {
  for (const std::string& p : kAllPrograms) {
    const ProgramRun r = run(p + " --version");
    EXPECT_EQ(r.status, 0) << p;
    EXPECT_EQ(r.output.rfind(p + " (vitmsn " + kVersionString + "): kernels ", 0), 0u) << p << ": " << r.output;
    EXPECT_NE(r.output.find(std::string(", JPEG decoder ") + jpeg_decoder_name() + "\n"), std::string::npos)
        << r.output;
  }
}

TEST(Programs, MessagesSayWhatHappenedInPlainWords) {
  const std::string dir = test::temp_dir();
  // convert: the hint to --force, like every other program.
  test::write_bytes(dir + "/exists.safetensors", "x");
  ProgramRun r = run("vitmsn-convert " + tiny() + " " + dir + "/exists.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("exists.safetensors: already exists (use --force to overwrite)"), std::string::npos)
      << r.output;
  // extract on an empty folder: no word of --pixel-values, which was not given.
  test::temp_dir("empty");
  r = run("vitmsn-extract --model " + tiny() + " --output " + dir + "/f.npy " + dir + "/empty");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: nothing to do: no images in " + dir + "/empty"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("pixel-values"), std::string::npos) << r.output;
  // merge with a shard file that is not there: no such file, not "not complete"; one problem, singular.
  r = run("vitmsn-merge --output " + dir + "/m.npy " + dir + "/f-00000-of-00001.npy");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + dir + "/f-00000-of-00001.npy: no such file\n1 problem; nothing written"),
            std::string::npos)
      << r.output;
  // probe on a folder that does not exist.
  r = run("vitmsn-probe --model " + tiny() + " --data " + dir + "/nodata --output " + dir + "/h.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + dir + "/nodata: does not exist"), std::string::npos) << r.output;
  // Ranges as numbers are written.
  r = run("vitmsn-attention --model " + tiny() + " --output " + dir + "/a.png --alpha 2 " +
          test::data_path("images/chelsea.png"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("option --alpha needs a number in [0, 1], got '2'"), std::string::npos) << r.output;
  // A missing input is named before any work.
  r = run("vitmsn-extract --model " + tiny() + " --output " + dir + "/f.npy " + test::data_path("images/chelsea.png") +
          " " + dir + "/typo.png");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: 1 input does not exist: " + dir + "/typo.png (nothing was run)"), std::string::npos)
      << r.output;
  EXPECT_FALSE(started_images(r)) << r.output;
}

TEST(BenchProgram, TakesTheModelFromVitmsnModelLikeTheOtherPrograms) {
  const ProgramRun r = test::run_command("VITMSN_MODEL=" + tiny() + " " + std::string(VITMSN_PROGRAM_DIR) +
                                         "/vitmsn-bench --runs 1 --warmup 0 --no-peak --threads 1");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("vitmsn-bench: " + tiny() + "\n"), std::string::npos) << r.output;
}

TEST(ClassifyProgram, TakesFoldersAndListFilesWithAProgressLine) {
  const std::string dir = test::temp_dir();
  copy_image("rocket.jpg", dir + "/in/a.jpg");
  copy_image("chelsea.png", dir + "/in/sub/b.png");
  copy_image("coffee.png", dir + "/more/c.png");
  test::write_bytes(dir + "/list.txt", dir + "/more/c.png\n");
  const ProgramRun r = run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + " --top 1 " + dir +
                           "/in --list " + dir + "/list.txt");
  ASSERT_EQ(r.status, 0) << r.output;
  for (const std::string f : {"/in/a.jpg\n", "/in/sub/b.png\n", "/more/c.png\n"})
    EXPECT_NE(r.output.find(dir + f + "  "), std::string::npos) << f << r.output;
  EXPECT_NE(r.output.find("[0/3] images: starting"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("[3/3] " + dir + "/more/c.png ("), std::string::npos) << r.output;
}

TEST(ExtractProgram, FolderScansSayWhatTheySkipAndPickUpEveryDecodedFormat) {
  const std::string dir = test::temp_dir();
  copy_image("chelsea.png", dir + "/in/a.png");
  copy_image("chelsea.png", dir + "/in/.hidden.png");     // hidden file (e.g. macOS ._ files)
  copy_image("chelsea.png", dir + "/in/.thumbs/t.png");   // hidden folder
  test::write_bytes(dir + "/in/b.webp", "RIFF....WEBP");  // a format vitmsn does not decode
  test::write_bytes(dir + "/in/notes.txt", "hello");
  test::write_bytes(dir + "/in/c.psd", test::psd_bytes(read_image(test::data_path("formats/rgb.png"))));
  const ProgramRun r =
      run("vitmsn-extract --model " + tiny() + " --pool cls --output " + dir + "/f.npy " + dir + "/in");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("note: " + dir + "/in: skipped 2 files of formats vitmsn does not decode (1 .txt, 1 .webp)"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("note: " + dir + "/in: skipped 2 hidden files or folders ("), std::string::npos) << r.output;
  EXPECT_EQ(test::read_text(dir + "/f.files.txt"), dir + "/in/a.png\n" + dir + "/in/c.psd\n");
}

TEST(ExtractProgram, ProgressShowsAFirstLineBeforeTheFirstImageAndAnEta) {
  const std::string dir = test::temp_dir();
  const ProgramRun r = run("vitmsn-extract --model " + tiny() + " --pool cls --output " + dir + "/f.npy " +
                           test::data_path("images/chelsea.png") + " " + test::data_path("images/horse.png"));
  ASSERT_EQ(r.status, 0) << r.output;
  const auto first = r.output.find("[0/2] images: starting\n"), second = r.output.find("[1/2] ");
  ASSERT_NE(first, std::string::npos) << r.output;
  ASSERT_NE(second, std::string::npos) << r.output;
  EXPECT_LT(first, second) << r.output;
  EXPECT_TRUE(
      std::regex_search(r.output, std::regex(R"(\[1/2\] \S+chelsea\.png \([\d.]+ images/s, ETA \d+:\d\d:\d\d\))")))
      << r.output;
}

TEST(AttentionProgram, DrawsAColourBarWithTheAttentionScaleBelowTheImage) {
  const std::string dir = test::temp_dir();
  const std::string in = test::data_path("images/chelsea.png");
  const ProgramRun r = run("vitmsn-attention --model " + tiny() + " --output " + dir + "/a.png " + in);
  ASSERT_EQ(r.status, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(colour bar ([\d.e-]+)% to ([\d.e-]+)%)"))) << r.output;
  EXPECT_LT(std::stod(m[1]), std::stod(m[2]));
  const Image src = read_image(in), out = read_image(dir + "/a.png");
  ASSERT_EQ(out.width, src.width);
  ASSERT_GT(out.height, src.height + 10) << "no room for a colour bar below the image";
  // The bar's ends have the colours the help names: dark blue for the least attention, yellow for the most.
  int bar_row = -1;
  for (int y = src.height; y < out.height && bar_row < 0; ++y)
    if (out.at(y, out.width / 2, 0) != 255 || out.at(y, out.width / 2, 2) != 255) bar_row = y;
  ASSERT_GE(bar_row, 0) << "no colour bar under the image";
  int left = 0, right = out.width - 1;
  while (left < out.width && out.at(bar_row, left, 0) == 255 && out.at(bar_row, left, 1) == 255) ++left;
  while (right > 0 && out.at(bar_row, right, 0) == 255 && out.at(bar_row, right, 1) == 255) --right;
  EXPECT_LT(out.at(bar_row, left, 0), 40) << "left end not dark blue";
  EXPECT_GT(out.at(bar_row, left, 2), 100) << "left end not dark blue";
  EXPECT_GT(out.at(bar_row, right, 0), 200) << "right end not yellow";
  EXPECT_GT(out.at(bar_row, right, 1), 200) << "right end not yellow";
  EXPECT_LT(out.at(bar_row, right, 2), 80) << "right end not yellow";
  // The scale's numbers are written under the bar (dark pixels on the white panel).
  std::size_t dark = 0;
  for (int y = bar_row; y < out.height; ++y)
    for (int x = 0; x < out.width; ++x) dark += out.at(y, x, 0) == 0 && out.at(y, x, 1) == 0 && out.at(y, x, 2) == 0;
  EXPECT_GT(dark, 20u) << "no labels under the colour bar";
  const ProgramRun help = run("vitmsn-attention --help");
  EXPECT_NE(help.output.find("dark blue (the least attention)"), std::string::npos) << help.output;
  EXPECT_NE(help.output.find("to yellow (the most)"), std::string::npos) << help.output;
}

TEST(Programs, UnknownValuesOfTheTuningVariablesAreErrorsNamingTheAllowedOnes) {
  const std::string prog = std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract";
  const std::string args = " --model " + tiny() + " --output " + test::temp_dir() + "/f.npy --pool cls " +
                           test::data_path("images/chelsea.png");
  ProgramRun r = test::run_command("VITMSN_ISA=avx51 " + prog + args);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: VITMSN_ISA=avx51: unknown kernel set; use portable, avx2 or avx512"),
            std::string::npos)
      << r.output;
  for (const std::string bad : {"512,224", "512,224,x", "0,224,2097152", "512,224,2097152,9"}) {
    r = test::run_command("VITMSN_GEMM_BLOCKING=" + bad + " " + prog + args);
    EXPECT_EQ(r.status, 1) << bad << ": " << r.output;
    EXPECT_NE(r.output.find("error: VITMSN_GEMM_BLOCKING=" + bad + ": expected three positive integers"),
              std::string::npos)
        << r.output;
  }
  r = test::run_command("VITMSN_ISA=portable VITMSN_GEMM_BLOCKING=256,64,1048576 " + prog + args);
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(WeightsScript, FailsFastAndClearlyWhenTheHubIsUnreachable) {
  const std::string script = std::string(VITMSN_TEST_DATA_DIR) + "/../../weights/fetch_vit_msn_large_7.sh";
  // "Fast" without a clock: a curl wrapper first on PATH logs every call the script makes, then runs
  // the real curl. Offline, the script must make exactly one request, bounded by both timeouts.
  const std::string dir = test::temp_dir();
  const std::string log = dir + "/curl-calls.txt";
  test::write_bytes(dir + "/curl", "#!/bin/sh\necho \"$*\" >> '" + log + "'\nexec /usr/bin/curl \"$@\"\n");
  ASSERT_EQ(::chmod((dir + "/curl").c_str(), 0755), 0);
  // Port 9 on loopback: nothing listens, the connection is refused at once (no outside traffic).
  const ProgramRun r = test::run_command("PATH='" + dir + "':\"$PATH\" HF_ENDPOINT=http://127.0.0.1:9 bash " + script +
                                         " --convert " + std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-convert");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: cannot reach http://127.0.0.1:9"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("resolve/main/config.json"), std::string::npos) << r.output;
  const std::string calls = test::read_text(log);
  EXPECT_EQ(std::count(calls.begin(), calls.end(), '\n'), 1) << "curl calls:\n" << calls;
  EXPECT_NE(calls.find("-fsSI "), std::string::npos) << "expected one HEAD request: " << calls;
  EXPECT_NE(calls.find("--connect-timeout "), std::string::npos) << calls;
  EXPECT_NE(calls.find("--max-time "), std::string::npos) << calls;
}

// --- The programs, second pass -----------------------------------------------------------------------

// Printable ASCII and line breaks only: no raw bytes of a file in a message.
bool printable(const std::string& s) {
  return std::all_of(s.begin(), s.end(),
                     [](char c) {
                       const auto u = static_cast<unsigned char>(c);
                       return (u >= 0x20 && u < 0x7f) || c == '\n' || u >= 0x80;  // UTF-8 punctuation (…) is allowed
                     }) &&
         s.find("\x89PNG") == std::string::npos;
}

TEST(Programs, AFileGivenToTheWrongOptionIsNamedForWhatItIs) {
  const std::string dir = test::temp_dir();
  const std::string png = test::data_path("images/chelsea.png"), out = dir + "/f.safetensors";
  const std::string cls = test::data_path("models/tiny-cls");
  const std::string head = test::write_tiny_head(dir + "/head.safetensors", {"a", "b"}, "");
  auto expect = [](const ProgramRun& r, const std::vector<std::string>& needles) {
    EXPECT_EQ(r.status, 1) << r.output;
    for (const auto& n : needles)
      EXPECT_NE(r.output.find(n), std::string::npos) << "missing '" << n << "' in\n" << r.output;
    EXPECT_TRUE(printable(r.output)) << r.output;
    EXPECT_EQ(r.output.find("::"), std::string::npos) << r.output;
  };
  expect(run("vitmsn-classify --model " + cls + " --list " + png),
         {"error: --list " + png + ": a PNG image, not a list file (one path per line)"});
  expect(run("vitmsn-classify --model " + cls + " --list " + test::data_path("images")),
         {"--list " + test::data_path("images") + ": a folder, not a list file", "give the folder as an argument"});
  expect(run("vitmsn-extract --model " + tiny() + " --output " + out + " --pixel-values " + png),
         {"--pixel-values " + png + ": a PNG image", "give images as arguments"});
  test::write_bytes(dir + "/feats.npy", std::string("\x93NUMPY\x01\x00", 8) + "{'descr': '<f4'}");
  expect(run("vitmsn-extract --model " + tiny() + " --output " + out + " --pixel-values " + dir + "/feats.npy"),
         {"a NumPy .npy array, not a pixel-values safetensors file"});
  expect(run("vitmsn-convert " + png + " " + dir + "/m.safetensors"), {"INPUT " + png + ": a PNG image, not a model"});
  for (const auto& r : {run("vitmsn-classify --model " + head + " " + png),
                        run("vitmsn-convert " + head + " " + dir + "/m.safetensors")})
    expect(r, {head + ": a classifier head", "vitmsn-convert --add-classifier " + head + " MODEL OUT.safetensors"});
  expect(run("vitmsn-extract --model " + tiny() + " --output " + out + " --preprocessor " + png + " " + png),
         {"--preprocessor " + png + ": a PNG image, not a preprocessor_config.json"});
  expect(run("vitmsn-extract --model " + tiny() + " --output " + out + " --preprocessor " + tiny() + "/config.json " +
             png),
         {"--preprocessor " + tiny() + "/config.json: a model config", "not a preprocessor_config.json"});
  expect(test::run_command("VITMSN_MODEL=" + dir + "/nonexistent " + std::string(VITMSN_PROGRAM_DIR) +
                           "/vitmsn-extract --output " + out + " " + png),
         {dir + "/nonexistent: no such model file or folder (from $VITMSN_MODEL)"});
  // The head of another backbone: the option, not the C++ name.
  const std::string other = test::write_tiny_head(dir + "/other.safetensors", {"a", "b"}, std::string(64, 'a'));
  expect(run("vitmsn-convert --add-classifier " + other + " " + tiny() + " " + dir + "/m.safetensors"),
         {"vitmsn-convert --force"});
  EXPECT_FALSE(exists(out));
}

TEST(Programs, AnOptionGivenTwiceOrTwoThatConflictAreUsageErrors) {
  const std::string dir = test::temp_dir();
  const std::string base = "vitmsn-extract --model " + tiny() + " --pool cls " + test::data_path("images/chelsea.png");
  ProgramRun r = run(base + " --output " + dir + "/x.npy --output " + dir + "/y.npy");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("error: option --output is given twice ('" + dir + "/x.npy', then '" + dir + "/y.npy')"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(exists(dir + "/x.npy") || exists(dir + "/y.npy"));
  r = run(base + " --output " + dir + "/x.npy --shard 1/2 --shards 3");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("error: options --shard and --shards conflict"), std::string::npos) << r.output;
  r = run(base + " --output " + dir + "/x.npy --force --force");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("error: option --force is given twice; give it once"), std::string::npos) << r.output;
  // What is meant to repeat still does.
  test::write_bytes(dir + "/a.txt", test::data_path("images/horse.png") + "\n");
  test::write_bytes(dir + "/b.txt", test::data_path("images/camera.png") + "\n");
  r = run(base + " --output " + dir + "/x.npy --list " + dir + "/a.txt --list " + dir + "/b.txt");
  EXPECT_EQ(r.status, 0) << r.output;
  const std::string rows = test::read_text(dir + "/x.files.txt");
  EXPECT_EQ(std::count(rows.begin(), rows.end(), '\n'), 3) << rows;
}

TEST(ExtractProgram, APreprocessorOfASizeTheModelCannotTakeIsRefusedBeforeAnyImage) {
  const std::string dir = test::temp_dir();
  test::write_bytes(dir + "/pre.json", R"({"size": {"height": 100, "width": 100}})");
  const ProgramRun r = run("vitmsn-extract --model " + tiny() + " --output " + dir + "/f.npy --preprocessor " + dir +
                           "/pre.json " + test::data_path("images"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("error: --preprocessor " + dir + "/pre.json makes images of 100x100"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("the nearest valid size is 98x98"), std::string::npos) << r.output;
  EXPECT_FALSE(started_images(r)) << r.output;
}

TEST(Programs, SymlinkedFoldersAreFollowedOnceByEveryProgram) {
  const std::string dir = test::temp_dir();
  copy_image("chelsea.png", dir + "/in/a.png");
  copy_image("horse.png", dir + "/elsewhere/b.png");
  ASSERT_EQ(::symlink((dir + "/elsewhere").c_str(), (dir + "/in/link").c_str()), 0);
  ASSERT_EQ(::symlink((dir + "/elsewhere").c_str(), (dir + "/in/link2").c_str()), 0);  // the same folder again
  ASSERT_EQ(::symlink((dir + "/in").c_str(), (dir + "/in/loop").c_str()), 0);          // back up the tree
  ProgramRun r = run("vitmsn-extract --model " + tiny() + " --pool cls --output " + dir + "/f.npy " + dir + "/in");
  ASSERT_EQ(r.status, 0) << r.output;
  const std::string files = test::read_text(dir + "/f.files.txt");
  EXPECT_NE(files.find("/in/a.png"), std::string::npos) << files;
  EXPECT_NE(files.find("/in/link/b.png"), std::string::npos) << files;
  EXPECT_EQ(std::count(files.begin(), files.end(), '\n'), 2) << files;
  r = run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + " " + dir + "/in");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("/in/link/b.png"), std::string::npos) << r.output;
  for (const std::string p : {"vitmsn-extract", "vitmsn-classify", "vitmsn-probe"})
    EXPECT_NE(run(p + " --help").output.find("Symbolic links to files and folders are followed"), std::string::npos)
        << p;
}

TEST(Programs, AListEntryThatExistsBesideTheListIsSuggested) {
  const std::string dir = test::temp_dir();
  copy_image("chelsea.png", dir + "/sub/cat.png");
  test::write_bytes(dir + "/sub/list.txt", "cat.png\n");
  const ProgramRun r =
      run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + " --list " + dir + "/sub/list.txt");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: 1 input does not exist: cat.png (nothing was run); relative paths in a list are "
                          "read from the current folder, not the list's folder; did you mean " +
                          dir + "/sub/cat.png?"),
            std::string::npos)
      << r.output;
}

TEST(Sharding, MergeComparesInputsAsFilesNotAsWritten) {
  const std::string dir = test::temp_dir();
  const std::string imgs = shard_images(dir);
  ProgramRun r = run("vitmsn-extract --model " + tiny() + " --threads 1 --pool cls --shard 0/1 --output " + dir +
                     "/f.npy " + imgs);
  ASSERT_EQ(r.status, 0) << r.output;
  std::string list;  // the same files, spelled otherwise
  for (int i = 0; i < 12; ++i)
    list += imgs + "/../imgs/./img" + std::to_string(i / 10) + std::to_string(i % 10) + ".png\n";
  test::write_bytes(dir + "/inputs.txt", list);
  r = run("vitmsn-merge --inputs " + dir + "/inputs.txt --output " + dir + "/m.npy " + dir + "/f-00000-of-00001.npy");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_EQ(r.output.find("in no shard"), std::string::npos) << r.output;
}

TEST(Programs, SomeFailedInputsExitWith3InExtractClassifyAndProbe) {
  const std::string dir = test::temp_dir();
  const std::string bad = test::data_path("images/truncated.jpg"), good = test::data_path("images/chelsea.png");
  ProgramRun r = run("vitmsn-extract --model " + tiny() + " --pool cls --output " + dir + "/f.npy " + bad + " " + good);
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_TRUE(exists(dir + "/f.npy"));
  r = run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + " " + bad + " " + good);
  EXPECT_EQ(r.status, 3) << r.output;
  const std::string data = test::make_probe_image_folder(dir);
  copy_image("truncated.jpg", data + "/" + test::probe_class_names()[0] + "/broken.jpg");
  r = run("vitmsn-probe --model " + tiny() + " --data " + data + " --output " + dir + "/h.safetensors --cache " + dir +
          "/cache --folds 2");
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_TRUE(exists(dir + "/h.safetensors")) << r.output;
  for (const std::string p : {"vitmsn-extract", "vitmsn-classify", "vitmsn-probe"}) {
    const std::string help = run(p + " --help").output;
    EXPECT_NE(help.find("Exit status: 0 every input done; 3 "), std::string::npos) << p << "\n" << help;
  }
}

TEST(DemoProgram, AUsageErrorComesWithoutTheNoteOnTheBundledModel) {
  unsetenv("VITMSN_MODEL");
  for (const std::string args : {"--threads 0", "--threads two", "--bogus", "a.png b.png", "--model"}) {
    const ProgramRun r = run("vitmsn-demo " + args);
    EXPECT_EQ(r.status, 2) << args << "\n" << r.output;
    EXPECT_EQ(r.output.find("note:"), std::string::npos) << args << "\n" << r.output;
    EXPECT_EQ(r.output.rfind("error: ", 0), 0u) << args << "\n" << r.output;  // the error comes first
  }
}

TEST(DemoProgram, AnImageThatIsMissingOrNotAnImageIsRefusedWithoutTheNote) {
  unsetenv("VITMSN_MODEL");
  const std::string dir = test::temp_dir();
  const std::string config = test::data_path("models/tiny/config.json");
  ProgramRun r = run("vitmsn-demo " + config);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "error: 1 input is not an image vitmsn decodes (PNG, JPEG, BMP, GIF, TGA, PSD, PNM): " + config +
                          " is a JSON file (nothing was run)\n");
  r = run("vitmsn-demo " + dir + "/missing.png");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "error: 1 input does not exist: " + dir + "/missing.png (nothing was run)\n");
  r = run("vitmsn-demo " + test::data_path("images"));
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output.rfind("error: " + test::data_path("images") + ": a folder, not an image", 0), 0u) << r.output;
}

// Files that are not images, as people give them by mistake, and what each is said to be.
struct NotAnImage {
  std::string path, what;
};

std::vector<NotAnImage> not_images(const std::string& dir) {
  std::vector<NotAnImage> v = {
      {test::data_path("models/tiny/model.safetensors"), "is a safetensors file"},
      {test::data_path("models/tiny/config.json"), "is a JSON file"},
      {test::data_path("models/tiny/pytorch_model.bin"), "is a PyTorch checkpoint (a zip archive)"},
      {dir + "/feats.npy", "is a NumPy .npy array"},
      {dir + "/empty.png", "is empty"},
      {dir + "/page.jpg", "is an HTML page"},
      {dir + "/notes.txt", "is a text file"},
      {dir + "/b.webp", "is a WebP image (vitmsn does not decode that format)"},
      {dir + "/noise.bmp.gz", "starts like none of them"},
      {dir + "/fifo.png", "is not a regular file"},
  };
  test::write_bytes(dir + "/feats.npy", std::string("\x93NUMPY\x01\x00", 8) + "{'descr': '<f4'}");
  test::write_bytes(dir + "/empty.png", "");
  test::write_bytes(dir + "/page.jpg", "\n<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n");
  test::write_bytes(dir + "/notes.txt", "cat.png\ndog.png\n");
  test::write_bytes(dir + "/b.webp", std::string("RIFF\x10\0\0\0WEBPVP8 ", 16));
  test::write_bytes(dir + "/noise.bmp.gz", std::string("\x1f\x8b\x08\x00\x01\x02\xff\xfe", 8));
  EXPECT_EQ(::mkfifo((dir + "/fifo.png").c_str(), 0600), 0);  // would block a reader: not opened for reading
  if (::geteuid() != 0) {                                     // root reads every file
    test::write_bytes(dir + "/locked.png", test::read_text(test::data_path("images/chelsea.png")));
    ::chmod((dir + "/locked.png").c_str(), 0);
    v.push_back({dir + "/locked.png", "cannot be read (Permission denied)"});
  }
  return v;
}

void expect_refused(const ProgramRun& r, const std::vector<NotAnImage>& bad, const std::string& command) {
  EXPECT_EQ(r.status, 1) << command << "\n" << r.output;
  EXPECT_NE(r.output.find("error: " + std::to_string(bad.size()) +
                          " inputs are not images vitmsn decodes (PNG, JPEG, BMP, GIF, TGA, PSD, PNM): "),
            std::string::npos)
      << command << "\n"
      << r.output;
  for (const auto& b : bad)
    EXPECT_NE(r.output.find(b.path + " " + b.what + (&b == &bad.back() ? " (nothing was run)" : "; ")),
              std::string::npos)
        << "missing '" << b.path << " " << b.what << "' in " << command << "\n"
        << r.output;
  EXPECT_FALSE(started_images(r)) << command << "\n" << r.output;
  EXPECT_TRUE(printable(r.output)) << r.output;  // never the file's bytes
  EXPECT_EQ(std::count(r.output.begin(), r.output.end(), '\n'), 1) << command << "\n" << r.output;
}

TEST(Programs, InputsThatAreNotImagesAreRefusedBeforeTheFirstImageEachNamedForWhatItIs) {
  const std::string dir = test::temp_dir();
  const std::string good = test::data_path("images/chelsea.png"), cls = test::data_path("models/tiny-cls");
  const std::vector<NotAnImage> bad = not_images(dir);
  std::string args, list = good + "\n";
  for (const auto& b : bad) {
    args += " " + b.path;
    list += b.path + "\n";
  }
  test::write_bytes(dir + "/list.txt", list);
  for (const std::string& c :
       {"vitmsn-extract --model " + tiny() + " --pool cls --output " + dir + "/f.npy " + good + args,
        "vitmsn-extract --model " + tiny() + " --output " + dir + "/f.safetensors --list " + dir + "/list.txt",
        "vitmsn-classify --model " + cls + " " + good + args,
        "vitmsn-classify --model " + cls + " --list " + dir + "/list.txt"})
    expect_refused(run(c), bad, c);
  EXPECT_FALSE(exists(dir + "/f.npy") || exists(dir + "/f.safetensors") || exists(dir + "/f.manifest.json"));
  for (const std::string p : {"vitmsn-extract", "vitmsn-classify", "vitmsn-probe"})
    EXPECT_NE(run(p + " --help").output.find("start like an image"), std::string::npos) << p;
}

TEST(Programs, FilesFoundInFoldersAreCheckedTooAndAtMostTenAreNamed) {
  const std::string dir = test::temp_dir();
  copy_image("chelsea.png", dir + "/in/a.png");
  for (int i = 0; i < 12; ++i)  // a failed download saved under an image's name
    test::write_bytes(dir + "/in/page" + std::to_string(10 + i) + ".jpg",
                      "<html><body>Too Many Requests</body></html>");
  const std::string c = "vitmsn-extract --model " + tiny() + " --pool cls --output " + dir + "/f.npy " + dir + "/in";
  const ProgramRun r = run(c);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: 12 inputs are not images vitmsn decodes (PNG, JPEG, BMP, GIF, TGA, PSD, PNM): " +
                          dir + "/in/page10.jpg is an HTML page; "),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find(dir + "/in/page19.jpg is an HTML page; and 2 more (nothing was run)\n"), std::string::npos)
      << r.output;
  EXPECT_EQ(r.output.find("page20.jpg"), std::string::npos) << r.output;
  EXPECT_FALSE(started_images(r)) << r.output;
  EXPECT_FALSE(exists(dir + "/f.npy"));
  // vitmsn-probe: an ImageFolder's files, before the model is loaded.
  const std::string data = test::make_probe_image_folder(dir);
  test::write_bytes(data + "/" + test::probe_class_names()[1] + "/x.png", "not an image");
  const ProgramRun p = run("vitmsn-probe --model " + tiny() + " --data " + data + " --output " + dir +
                           "/h.safetensors --cache " + dir + "/cache");
  EXPECT_EQ(p.status, 1) << p.output;
  EXPECT_NE(p.output.find("error: 1 input is not an image vitmsn decodes (PNG, JPEG, BMP, GIF, TGA, PSD, PNM): " +
                          data + "/" + test::probe_class_names()[1] + "/x.png is a text file (nothing was run)"),
            std::string::npos)
      << p.output;
  EXPECT_FALSE(started_images(p)) << p.output;
  EXPECT_FALSE(exists(dir + "/h.safetensors"));
}

TEST(AttentionProgram, AnImageThatIsNotOneIsRefusedBeforeTheModelLoads) {
  const std::string dir = test::temp_dir();
  const std::string st = test::data_path("models/tiny/model.safetensors");
  // The model does not exist: the image's error comes first, as the other checks made before any work.
  const ProgramRun r = run("vitmsn-attention --model " + dir + "/nomodel --output " + dir + "/a.png " + st);
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "error: 1 input is not an image vitmsn decodes (PNG, JPEG, BMP, GIF, TGA, PSD, PNM): " + st +
                          " is a safetensors file (nothing was run)\n");
  EXPECT_FALSE(exists(dir + "/a.png"));
}

TEST(Programs, EveryFileTheDecoderReadsPassesTheCheckOfFirstBytes) {
  // The check never refuses what the decoder reads: every file under tests/data (fixtures, fuzz seeds,
  // models) and an image of each format, including TGA, which has no signature.
  const std::string dir = test::temp_dir();
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(test::data_path("")))
    if (e.is_regular_file()) files.push_back(e.path().string());
  const Image rgb = read_image(test::data_path("formats/rgb.png"));
  test::write_bytes(dir + "/rgb.psd", test::psd_bytes(rgb));
  files.push_back(dir + "/rgb.psd");
  std::size_t decoded = 0;
  for (const auto& f : files) {
    try {
      read_image(f);
    } catch (const Error&) {
      continue;
    }
    ++decoded;
    EXPECT_EQ(cli::not_an_image(f), "") << f;
  }
  EXPECT_GE(decoded, 40u);
  std::string images;
  for (const char* f : {"formats/rgb.tga", "formats/rgb_rle.tga", "formats/gray.tga", "formats/rgb.bmp",
                        "formats/rgb.ppm", "formats/gray.pgm", "pillow/palette.gif", "images/chelsea_q90.jpg"})
    images += " " + test::data_path(f);
  const ProgramRun r =
      run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + images + " " + dir + "/rgb.psd");
  EXPECT_EQ(r.status, 0) << r.output;
}

TEST(AttentionProgram, ASmallImageIsScaledUpSoTheColourBarIsReadable) {
  const std::string dir = test::temp_dir();
  Image small;
  small.width = small.height = 10;
  small.rgb.assign(300, 128);
  write_png(dir + "/small.png", small);
  const ProgramRun r = run("vitmsn-attention --model " + tiny() + " --output " + dir + "/a.png " + dir + "/small.png");
  ASSERT_EQ(r.status, 0) << r.output;
  const Image out = read_image(dir + "/a.png");
  EXPECT_GE(out.width, 160);
  EXPECT_GE(out.height, 160 + 20);
  EXPECT_NE(run("vitmsn-attention --help").output.find("narrower than\n160 pixels is scaled up"), std::string::npos);
}

TEST(ConvertProgram, SizesAreInMegabytesOfAMillionBytes) {
  const std::string dir = test::temp_dir();
  const ProgramRun r = run("vitmsn-convert " + tiny() + " " + dir + "/m.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.output, m, std::regex(R"(, ([\d.]+) MB,)"))) << r.output;
  struct stat st {};
  ASSERT_EQ(::stat((dir + "/m.safetensors").c_str(), &st), 0);
  EXPECT_NEAR(std::stod(m[1]), st.st_size / 1e6, 0.0051) << r.output;  // 1 MB = 10^6 bytes, not 2^20
  for (const std::string p : {"vitmsn-convert", "vitmsn-synth", "vitmsn-bench"})
    EXPECT_NE(run(p + " --help").output.find("1 MB = 10^6 bytes"), std::string::npos) << p;
}

TEST(ConvertProgram, EachLineOfItsLogIsWrittenWhenPrinted) {
  // Into a pipe (a log file, a scheduler's capture), lines come in the order printed: the warning on
  // stderr after the lines before it on stdout, not before a buffer flushed at exit.
  const std::string dir = test::temp_dir();
  const std::string head = test::write_tiny_head(dir + "/head.safetensors", {"a", "b"}, "");
  const ProgramRun r = run("vitmsn-convert --add-classifier " + head + " " + tiny() + " " + dir + "/m.safetensors");
  ASSERT_EQ(r.status, 0) << r.output;
  const auto read = r.output.find("read "), warning = r.output.find("warning: "), wrote = r.output.find("wrote ");
  ASSERT_NE(warning, std::string::npos) << r.output;
  EXPECT_LT(read, warning) << r.output;
  EXPECT_LT(warning, wrote) << r.output;
}

TEST(WeightsScript, HelpIsTheHeaderCommentWithEveryDtype) {
  const std::string script = std::string(VITMSN_TEST_DATA_DIR) + "/../../weights/fetch_vit_msn_large_7.sh";
  const ProgramRun r = test::run_command("bash " + script + " --help");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("--dtype f32|bf16|f16|int8"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("set -euo"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("# "), std::string::npos) << r.output;
}

// ---------------------------------------------------------------------------------------------------
// --pool none streams the features to disk (issue #24)

// The file as write_safetensors() writes the same tensors and metadata from memory.
std::string safetensors_from_memory(const std::string& path, const std::string& copy) {
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::vector<TensorData> tensors;
  for (const auto& name : f.names()) tensors.push_back(f.get(name).to_tensor_data());
  write_safetensors(copy, tensors, f.metadata());
  return test::read_text(copy);
}

TEST(ExtractProgram, StreamedOutputsAreTheBytesTheInMemoryWritersWrite) {
  const std::string dir = test::temp_dir();
  // Input order (by path) is not the tensors' name order: a/zebra comes before b/apple.
  copy_image("horse.png", dir + "/in/a/zebra.png");
  copy_image("chelsea.png", dir + "/in/b/apple.png");
  copy_image("green_palette.png", dir + "/in/b/mango.png");
  copy_image("truncated.jpg", dir + "/in/b/broken.jpg");
  copy_image("coffee.png", dir + "/in/c/kiwi.png");
  const std::string in = " " + dir + "/in";
  const std::string model = "vitmsn-extract --threads 1 --model " + tiny();
  ProgramRun r = run(model + " --batch 2 --hidden-states --cls-attention --output " + dir + "/f.safetensors" + in);
  ASSERT_EQ(r.status, 3) << r.output;  // written, the broken image named
  EXPECT_EQ(test::read_text(dir + "/f.safetensors"), safetensors_from_memory(dir + "/f.safetensors", dir + "/m1"));
  EXPECT_EQ(SafetensorsFile::open(dir + "/f.safetensors").names().size(), 4u * (1 + 3 + 2));
  r = run(model + " --output " + dir + "/n.npy" + in);
  ASSERT_EQ(r.status, 3) << r.output;
  std::vector<std::int64_t> shape;
  const std::vector<float> values = read_npy(dir + "/n.npy", &shape);
  EXPECT_EQ(shape, (std::vector<std::int64_t>{4, 1025, 64}));
  write_npy(dir + "/m2.npy", shape, values.data());
  EXPECT_EQ(test::read_text(dir + "/n.npy"), test::read_text(dir + "/m2.npy"));
  // In chunks (each saved as a part, then joined): the same bytes.
  r = run(model + " --chunk 2 --batch 2 --hidden-states --cls-attention --output " + dir + "/g.safetensors" + in);
  ASSERT_EQ(r.status, 3) << r.output;
  EXPECT_EQ(test::read_text(dir + "/g.safetensors"), test::read_text(dir + "/f.safetensors"));
  r = run(model + " --chunk 3 --output " + dir + "/h.npy" + in);
  ASSERT_EQ(r.status, 3) << r.output;
  EXPECT_EQ(test::read_text(dir + "/h.npy"), test::read_text(dir + "/n.npy"));
  EXPECT_NE(std::system(("ls -a " + dir + " | grep -q -e staged -e part-").c_str()), 0) << "files left behind";
}

TEST(ExtractProgram, AShardCountOfZeroIsNamedAsGiven) {
  const ProgramRun r = run("vitmsn-extract --model " + tiny() + " --output " + test::temp_dir() +
                           "/f.npy --shard 1/0 " + test::data_path("images/horse.png"));
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("error: --shard I/N needs N of at least 1 (the number of shards), got '1/0'"),
            std::string::npos)
      << r.output;
}

TEST(ExtractProgram, FeaturesHeldInMemoryDoNotGrowWithTheNumberOfImages) {
  // The test hook reports the most bytes of feature values the run held at once (cli::peak_held_bytes:
  // a batch's features, the copy buffer that joins the output). 2 and 8 images: the same.
  const std::string dir = test::temp_dir();
  auto held = [&](int images, const std::string& output) -> long long {
    std::string in;
    for (int i = 0; i < images; ++i) {
      copy_image(i % 2 ? "horse.png" : "chelsea.png",
                 dir + "/in" + std::to_string(images) + "/" + std::to_string(i) + ".png");
    }
    const ProgramRun r =
        test::run_command("VITMSN_TEST_REPORT_HELD_BYTES=1 " + std::string(VITMSN_PROGRAM_DIR) +
                          "/vitmsn-extract --threads 1 --hidden-states --model " + tiny() + " --output " + dir + "/" +
                          output + " " + dir + "/in" + std::to_string(images));
    EXPECT_EQ(r.status, 0) << r.output;
    std::smatch m;
    if (!std::regex_search(r.output, m, std::regex(R"(test hook: at most (\d+) bytes of features held in memory)")))
      return -1;
    return std::stoll(m[1]);
  };
  const long long two = held(2, "two.safetensors"), eight = held(8, "eight.safetensors");
  const long long image = 1025LL * 64 * 4 * (1 + 3);  // last_hidden_state and 3 hidden states, float32
  ASSERT_GT(two, 0);
  EXPECT_EQ(two, eight) << "the features held in memory grow with the number of images";
  EXPECT_LE(eight, std::max<long long>(image, 1 << 20)) << "more than one image's features or the copy buffer";
  EXPECT_GE(SafetensorsFile::open(dir + "/eight.safetensors").file_size(), static_cast<std::size_t>(8 * image));
}

// The largest resident set of `command` (run by /bin/sh, output discarded) in kilobytes, from its own
// rusage (wait4); -1 when it did not exit with status 0.
long max_rss_kb(const std::string& command) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      dup2(null, 1);
      dup2(null, 2);
    }
    execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  struct rusage ru {};
  if (pid < 0 || wait4(pid, &status, 0, &ru) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
  return ru.ru_maxrss;
}

TEST(ExtractProgram, MemoryDoesNotGrowWithTheNumberOfImages) {
  // A long run must not grow: the forward pass's large buffers once came from glibc's heap after its
  // mmap threshold rose, fragmented by the small allocations between images (47 MB max RSS after 50
  // tiny-model images, 212 MB after 200). 40 and 160 images, each image once, the same settings.
  const std::string dir = test::temp_dir();
  auto rss = [&](int images) {
    const std::string in = dir + "/in" + std::to_string(images);
    for (int i = 0; i < images; ++i)
      copy_image(i % 2 ? "horse.png" : "chelsea.png", in + "/" + std::to_string(i) + ".png");
    return max_rss_kb(std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-extract --threads 1 --model " + tiny() + " --output " +
                      dir + "/out" + std::to_string(images) + ".safetensors " + in);
  };
  const long few = rss(40), many = rss(160);
  ASSERT_GT(few, 0) << "vitmsn-extract over 40 images failed";
  ASSERT_GT(many, 0) << "vitmsn-extract over 160 images failed";
  std::printf("[ extract ] max RSS %ld kB after 40 images, %ld kB after 160\n", few, many);
  EXPECT_LT(many - few, 8 * 1024) << "max RSS grew by " << (many - few) << " kB over 120 more images";
}

// --- Messages name what a command-line user has (#24) --------------------------------------------------

// A C++ name (LoadOptions::compute, Model::load) means nothing to someone at a shell.
void expect_no_cpp_names(const std::string& what, const std::string& text) {
  EXPECT_EQ(text.find("::"), std::string::npos) << what << ":\n" << text;
  EXPECT_FALSE(std::regex_search(text, std::regex("[A-Z][a-z]+Options"))) << what << ": a C++ struct:\n" << text;
  EXPECT_EQ(text.find(") ("), std::string::npos) << what << ": two parentheses in a row:\n" << text;
  EXPECT_TRUE(printable(text)) << what << ":\n" << text;
}

TEST(Programs, HelpNamesFlagsNotCppNames) {
  std::vector<std::string> programs(std::begin(kAllPrograms), std::end(kAllPrograms));
  programs.push_back("vitmsn-synth");
  for (const std::string& p : programs) {
    const ProgramRun r = run(p + " --help");
    EXPECT_EQ(r.status, 0) << p;
    expect_no_cpp_names(p + " --help", r.output);
  }
  EXPECT_NE(run("vitmsn-synth --help").output.find("Every program given --model OUT_DIR gives the same outputs"),
            std::string::npos);
}

TEST(ClassifyProgram, EveryImageFailingExitsWith3AsItsHelpSays) {
  const std::string bad = test::data_path("images/truncated.jpg");
  const ProgramRun r = run("vitmsn-classify --model " + test::data_path("models/tiny-cls") + " " + bad);
  EXPECT_EQ(r.status, 3) << r.output;
  EXPECT_NE(r.output.find("1 of 1 image failed: " + bad), std::string::npos) << r.output;
  const std::string help = run("vitmsn-classify --help").output;
  EXPECT_NE(help.find("Exit status: 0 every input done; 3 some or all images failed, each named (the others "
                      "printed);"),
            std::string::npos)
      << help;
}

TEST(Programs, ErrorMessagesNameFlagsNotCppNames) {
  const std::string dir = test::temp_dir();
  const std::string png = test::data_path("images/chelsea.png"), cls = test::data_path("models/tiny-cls");
  const std::string out = " --output " + dir + "/f.npy ";
  test::write_bytes(dir + "/exists.safetensors", "x");
  test::write_bytes(dir + "/list.txt", dir + "/missing.png\n");
  const std::string other = test::write_tiny_head(dir + "/other.safetensors", {"a", "b"}, std::string(64, 'a'));
  const std::vector<std::string> commands = {
      "vitmsn-extract --model " + dir + "/nonexistent" + out + png,
      "vitmsn-extract --model " + png + out + png,
      "vitmsn-extract --model " + tiny() + out + "--preprocessor " + png + " " + png,
      "vitmsn-extract --model " + tiny() + out + "--pixel-values " + png,
      "vitmsn-extract --model " + tiny() + out + "--compute f16 " + png,
      "vitmsn-extract --model " + tiny() + out + "--pool max " + png,
      "vitmsn-extract --model " + tiny() + out + "--size 100x100 " + png,
      "vitmsn-extract --model " + tiny() + out + "--threads 2 --threads 3 " + png,
      "vitmsn-extract --model " + tiny() + out + "--list " + dir + "/list.txt",
      "vitmsn-classify --model " + tiny() + " " + png,
      "vitmsn-classify --model " + cls + " --top 0 " + png,
      "vitmsn-convert " + tiny() + " " + dir + "/exists.safetensors",
      "vitmsn-convert --dtype f8 " + tiny() + " " + dir + "/m.safetensors",
      "vitmsn-convert --add-classifier " + other + " " + tiny() + " " + dir + "/m.safetensors",
      "vitmsn-bench --model " + tiny() + " --compute f16 --runs 1 --warmup 0 --no-peak",
      "vitmsn-probe --model " + tiny() + " --data " + dir + "/nodata --output " + dir + "/h.safetensors",
      "vitmsn-attention --model " + tiny() + " --output " + dir + "/a.png --layer 99 " + png,
      "vitmsn-merge --output " + dir + "/m.npy " + png,
      "vitmsn-synth --dtype f8 " + dir + "/synth",
      "vitmsn-synth --config " + png + " " + dir + "/synth",
      "vitmsn-demo " + dir + "/missing.png",
  };
  for (const auto& c : commands) {
    const ProgramRun r = run(c);
    EXPECT_NE(r.status, 0) << c << "\n" << r.output;
    EXPECT_NE(r.output.find("error: "), std::string::npos) << c << "\n" << r.output;
    expect_no_cpp_names(c, r.output);
  }
  // Found by that pass: a file of another kind given as --config was quoted as escaped bytes, and a
  // shard index out of range did not say where it came from.
  ProgramRun r = run("vitmsn-synth --config " + png + " " + dir + "/synth");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_EQ(r.output, "error: --config " + png + ": a PNG image, not a model's config.json\n");
  r = run("vitmsn-extract --model " + tiny() + out + "--shard 3/2 " + png);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("error: --shard 3/2: shard index 3 is outside 0..1 (2 shards)\n"), std::string::npos)
      << r.output;
}

}  // namespace
}  // namespace vitmsn

#endif  // VITMSN_PROGRAM_DIR
