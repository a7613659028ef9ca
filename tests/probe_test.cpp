// The linear probe: L-BFGS, the softmax objective, cross-validated training, evaluation helpers,
// the saved head (merged into the tiny model), and vitmsn-probe end to end on an ImageFolder.
#include "vitmsn/probe.hpp"

#include <gtest/gtest.h>
#include <sys/wait.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "probe/lbfgs.hpp"
#include "test_util.hpp"
#include "vitmsn/convert.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/identity.hpp"
#include "vitmsn/image.hpp"
#include "vitmsn/model.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace {

using detail::minimize_lbfgs;
using detail::Objective;
using Eigen::MatrixXd;
using Eigen::VectorXd;

// Labelled features of Gaussian blobs: class means N(0, separation²) in the first `informative`
// dimensions (0 in the others), examples the mean plus N(0, 1) noise; then every dimension is rescaled and shifted by
// its own wide-ranging factor (1e-2..1e2) so that standardisation matters.
struct Blobs {
  MatrixXd x;
  std::vector<int> y;
};

Blobs make_blobs(int classes, int per_class, int dim, double separation, std::uint64_t seed,
                 std::uint64_t geometry_seed = 7, int informative = -1) {
  if (informative < 0) informative = dim;
  std::mt19937_64 geometry(geometry_seed), rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> log_scale(-2.0, 2.0), shift(-50.0, 50.0);
  MatrixXd means(classes, dim);
  for (int c = 0; c < classes; ++c)
    for (int d = 0; d < dim; ++d) means(c, d) = d < informative ? separation * normal(geometry) : 0.0;
  Eigen::RowVectorXd scale(dim), offset(dim);
  for (int d = 0; d < dim; ++d) {
    scale(d) = std::pow(10.0, log_scale(geometry));
    offset(d) = shift(geometry);
  }
  Blobs b;
  b.x.resize(classes * per_class, dim);
  for (int c = 0; c < classes; ++c)
    for (int i = 0; i < per_class; ++i) {
      const int row = c * per_class + i;
      for (int d = 0; d < dim; ++d) b.x(row, d) = (means(c, d) + normal(rng)) * scale(d) + offset(d);
      b.y.push_back(c);
    }
  return b;
}

// ---------------------------------------------------------------------------------------------------
// The objective and the optimiser

TEST(LogisticRegression, GradientMatchesCentralFiniteDifferences) {
  const Blobs b = make_blobs(4, 3, 6, 1.0, 1);
  const MatrixXd z = standardize(b.x, fit_standardization(b.x));
  const int k = 4, d = 6;
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 0.7);
  VectorXd p(k * (d + 1));
  for (Eigen::Index i = 0; i < p.size(); ++i) p(i) = normal(rng);
  const double l2 = 0.3;
  VectorXd g;
  softmax_cross_entropy(z, b.y, k, l2, p, &g);
  ASSERT_EQ(g.size(), p.size());
  const double h = 1e-6;
  double worst = 0;
  for (Eigen::Index i = 0; i < p.size(); ++i) {
    VectorXd plus = p, minus = p;
    plus(i) += h;
    minus(i) -= h;
    const double numeric =
        (softmax_cross_entropy(z, b.y, k, l2, plus) - softmax_cross_entropy(z, b.y, k, l2, minus)) / (2 * h);
    worst = std::max(worst, std::fabs(numeric - g(i)) / std::max(1.0, std::fabs(numeric)));
  }
  EXPECT_LT(worst, 1e-7) << "largest relative difference between analytic and finite-difference gradient";
}

TEST(LogisticRegression, LossIsLogKAtZeroAndTheBiasIsNotRegularised) {
  const Blobs b = make_blobs(3, 4, 5, 1.0, 2);
  VectorXd p = VectorXd::Zero(3 * 6);
  EXPECT_NEAR(softmax_cross_entropy(b.x, b.y, 3, 10.0, p), std::log(3.0), 1e-12);
  p.tail(3) << 1.0, -2.0, 0.5;  // bias only: the penalty must not change
  const double with_bias_l2 = softmax_cross_entropy(b.x, b.y, 3, 10.0, p);
  const double without_l2 = softmax_cross_entropy(b.x, b.y, 3, 0.0, p);
  EXPECT_DOUBLE_EQ(with_bias_l2, without_l2);
}

TEST(LogisticRegression, LbfgsConvergesWithAMonotonicallyDecreasingLoss) {
  const Blobs b = make_blobs(5, 6, 64, 1.0, 4);
  const MatrixXd z = standardize(b.x, fit_standardization(b.x));
  LbfgsOptions o;
  o.gradient_tolerance = 1e-8;
  o.relative_tolerance = 0;  // only the gradient may stop it
  const LbfgsResult r = fit_softmax(z, b.y, 5, 1e-2, o);
  EXPECT_EQ(r.stop, LbfgsStop::kGradient) << to_string(r.stop) << " after " << r.iterations << " iterations";
  EXPECT_LE(r.gradient_norm, 1e-8);
  EXPECT_LT(r.iterations, o.max_iterations);
  ASSERT_EQ(r.history.size(), static_cast<std::size_t>(r.iterations) + 1);
  EXPECT_NEAR(r.history.front(), std::log(5.0), 1e-12);
  for (std::size_t i = 1; i < r.history.size(); ++i)
    EXPECT_LE(r.history[i], r.history[i - 1]) << "loss went up at iteration " << i;
  EXPECT_DOUBLE_EQ(r.history.back(), r.value);
  VectorXd g;
  softmax_cross_entropy(z, b.y, 5, 1e-2, r.x, &g);
  EXPECT_NEAR(g.norm(), r.gradient_norm, 1e-12);
}

TEST(LogisticRegression, LbfgsFindsTheMinimumOfTheRosenbrockValley) {
  // f = (1 − a)² + 100 (b − a²)², minimum 0 at (1, 1); the classic hard case for the line search.
  const Objective f = [](const VectorXd& x, VectorXd& g) {
    const double a = x(0), b = x(1);
    g(0) = -2 * (1 - a) - 400 * a * (b - a * a);
    g(1) = 200 * (b - a * a);
    return (1 - a) * (1 - a) + 100 * (b - a * a) * (b - a * a);
  };
  VectorXd x0(2);
  x0 << -1.2, 1.0;
  LbfgsOptions o;
  o.gradient_tolerance = 1e-10;
  o.relative_tolerance = 0;
  const LbfgsResult r = minimize_lbfgs(f, x0, o);
  EXPECT_EQ(r.stop, LbfgsStop::kGradient) << to_string(r.stop);
  EXPECT_NEAR(r.x(0), 1.0, 1e-8);
  EXPECT_NEAR(r.x(1), 1.0, 1e-8);
  EXPECT_LT(r.iterations, 100);
  for (std::size_t i = 1; i < r.history.size(); ++i) EXPECT_LE(r.history[i], r.history[i - 1]);
}

TEST(LogisticRegression, LbfgsRejectsANonFiniteStartAndBadOptions) {
  const Objective f = [](const VectorXd& x, VectorXd& g) {
    g = x;
    return std::log(x(0));
  };
  try {
    minimize_lbfgs(f, VectorXd::Constant(1, -1.0));
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("not finite at the starting point"), std::string::npos) << e.what();
  }
  LbfgsOptions o;
  o.curvature = 1e-5;  // below armijo
  EXPECT_THROW(minimize_lbfgs(f, VectorXd::Constant(1, 1.0), o), Error);
}

TEST(LogisticRegression, LbfgsShortensStepsThatLeaveTheDomain) {
  // f = 10x − log x on x > 0 (minimum at 0.1), +inf elsewhere: from x = 1 the first trial step
  // (length 1/|g| · |g| = 1) lands on x = 0, outside.
  int outside = 0;
  const Objective f = [&](const VectorXd& x, VectorXd& g) {
    g(0) = 10 - 1 / x(0);
    if (x(0) <= 0) ++outside;
    return x(0) > 0 ? 10 * x(0) - std::log(x(0)) : std::numeric_limits<double>::infinity();
  };
  const LbfgsResult r = minimize_lbfgs(f, VectorXd::Constant(1, 1.0));
  EXPECT_GE(outside, 1);
  EXPECT_NEAR(r.x(0), 0.1, 1e-7) << to_string(r.stop);
  for (std::size_t i = 1; i < r.history.size(); ++i) EXPECT_LE(r.history[i], r.history[i - 1]);
}

// ---------------------------------------------------------------------------------------------------
// Training

TEST(LogisticRegression, FitsFewShotBlobsPerfectlyAndGeneralisesToHeldOutExamples) {
  // 4 classes, 5 examples each, 64 dimensions: the few-label regime of a linear probe.
  const Blobs train = make_blobs(4, 5, 64, 0.6, 10), test = make_blobs(4, 100, 64, 0.6, 11);
  const Probe p = train_probe(train.x, train.y, 4);
  EXPECT_EQ(p.l2_source, L2Source::kCrossValidation);
  EXPECT_EQ(p.folds, 5);
  EXPECT_EQ(evaluate(p.head, train.x, train.y).accuracy(), 1.0);
  const Evaluation e = evaluate(p.head, test.x, test.y);
  EXPECT_GE(e.accuracy(), 0.95) << "held-out accuracy with l2 " << p.l2;
  for (int k = 0; k < 4; ++k) EXPECT_GE(e.class_accuracy(k), 0.85) << "class " << k;
}

TEST(LogisticRegression, FoldingTheStandardisationIntoTheHeadKeepsEveryLogit) {
  const Blobs b = make_blobs(3, 8, 64, 0.5, 12), other = make_blobs(3, 20, 64, 0.5, 13);
  ProbeOptions o;
  o.l2 = 1e-2;
  const Probe p = train_probe(b.x, b.y, 3, o);
  for (const MatrixXd* x : {&b.x, &other.x}) {
    const MatrixXd folded = p.head.logits(*x);
    const MatrixXd standardized = p.standardized_head.logits(standardize(*x, p.standardization));
    const double scale = standardized.cwiseAbs().maxCoeff();
    EXPECT_LE((folded - standardized).cwiseAbs().maxCoeff(), 1e-9 * std::max(1.0, scale));
    EXPECT_EQ(predict(p.head, *x), predict(p.standardized_head, standardize(*x, p.standardization)));
  }
}

TEST(LogisticRegression, CrossValidationPicksAnL2WithNearTheBestHeldOutAccuracy) {
  // 30 examples per class of a weak signal spread over all 64 dimensions: weak regularisation
  // overfits the noise, strong regularisation averages it out. The cross-validated choice must do
  // nearly as well on new data as the best grid value (an oracle that looks at the test set), and
  // clearly better than the weakest.
  for (const std::uint64_t geometry : {23, 24}) {
    const Blobs train = make_blobs(3, 30, 64, 0.3, 20 + geometry, geometry);
    const Blobs test = make_blobs(3, 300, 64, 0.3, 22, geometry);
    const Probe p = train_probe(train.x, train.y, 3);
    ASSERT_EQ(p.l2_scores.size(), default_l2_grid().size());
    double best_test = 0, weakest_test = 0;
    for (double l2 : default_l2_grid()) {
      ProbeOptions o;
      o.l2 = l2;
      const double acc = evaluate(train_probe(train.x, train.y, 3, o).head, test.x, test.y).accuracy();
      best_test = std::max(best_test, acc);
      if (l2 == default_l2_grid().front()) weakest_test = acc;
    }
    const double chosen_test = evaluate(p.head, test.x, test.y).accuracy();
    EXPECT_GE(p.l2, 0.1) << "geometry " << geometry;
    EXPECT_GE(chosen_test, best_test - 0.03) << "geometry " << geometry << ", chosen l2 " << p.l2;
    EXPECT_GE(chosen_test, weakest_test + 0.03) << "geometry " << geometry << ", chosen l2 " << p.l2;
    // The choice is a grid value with the highest cross-validated accuracy.
    double best_cv = 0;
    for (const L2Score& s : p.l2_scores) best_cv = std::max(best_cv, s.accuracy);
    for (const L2Score& s : p.l2_scores)
      if (s.l2 == p.l2) EXPECT_EQ(s.accuracy, best_cv);
  }
}

TEST(LogisticRegression, TheSameSeedGivesBitIdenticalResults) {
  const Blobs b = make_blobs(3, 7, 32, 0.4, 30);
  ProbeOptions o;
  o.seed = 42;
  const Probe a = train_probe(b.x, b.y, 3, o), c = train_probe(b.x, b.y, 3, o);
  EXPECT_EQ(a.l2, c.l2);
  EXPECT_TRUE(a.head.weight == c.head.weight);
  EXPECT_TRUE(a.head.bias == c.head.bias);
  const CrossValidation cv1 = cross_validate(b.x, b.y, 3, 4, o), cv2 = cross_validate(b.x, b.y, 3, 4, o);
  EXPECT_EQ(cv1.fold, cv2.fold);
  EXPECT_EQ(cv1.evaluation.predictions, cv2.evaluation.predictions);
  EXPECT_NE(stratified_folds(b.y, 3, 4, 42), stratified_folds(b.y, 3, 4, 43)) << "the seed should shuffle";
}

TEST(LogisticRegression, AClassWithASingleExampleFallsBackToTheDefaultL2) {
  Blobs b = make_blobs(3, 4, 16, 1.0, 40);
  b.x.conservativeResize(9, Eigen::NoChange);  // class 2 keeps one example
  b.y.resize(9);
  const Probe p = train_probe(b.x, b.y, 3);
  EXPECT_EQ(p.l2_source, L2Source::kFallback);
  EXPECT_EQ(p.l2, ProbeOptions().fallback_l2);
  EXPECT_EQ(evaluate(p.head, b.x, b.y).accuracy(), 1.0);
  try {
    cross_validate(b.x, b.y, 3, 5);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("class 2 has a single example"), std::string::npos) << e.what();
  }
}

TEST(LogisticRegression, FoldsAreReducedToTheSmallestClass) {
  const Blobs b = make_blobs(3, 3, 16, 1.0, 41);
  const Probe p = train_probe(b.x, b.y, 3);
  EXPECT_EQ(p.folds, 3);
  EXPECT_EQ(cross_validate(b.x, b.y, 3, 10).folds, 3);
}

TEST(LogisticRegression, BadInputsAreErrorsThatSayWhatIsWrong) {
  const Blobs b = make_blobs(3, 4, 8, 1.0, 50);
  auto message = [](auto&& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(no error)");
  };
  EXPECT_NE(message([&] { train_probe(b.x, std::vector<int>(12, 0), 1); }).find("at least 2 classes, got 1"),
            std::string::npos);
  MatrixXd nan = b.x;
  nan(5, 3) = std::nan("");
  EXPECT_NE(message([&] { train_probe(nan, b.y, 3); }).find("feature 3 of example 5 is NaN"), std::string::npos);
  std::vector<int> bad = b.y;
  bad[7] = 3;
  EXPECT_NE(message([&] { train_probe(b.x, bad, 3); }).find("label 3 of example 7 is outside 0..2"), std::string::npos);
  EXPECT_NE(message([&] { train_probe(b.x, b.y, 4); }).find("class 3 has no examples"), std::string::npos);
  EXPECT_NE(message([&] { train_probe(b.x.topRows(11), b.y, 3); }).find("12 labels for 11 feature rows"),
            std::string::npos);
  EXPECT_NE(message([&] { stratified_holdout(b.y, 3, 1.0, 0); }).find("test fraction must be in (0, 1)"),
            std::string::npos);
}

// ---------------------------------------------------------------------------------------------------
// Evaluation helpers

TEST(LogisticRegression, StratifiedFoldsDealEveryClassEvenlyOverTheFolds) {
  std::vector<int> y;
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 7 + 3 * c; ++i) y.push_back(c);  // 7, 10, 13 examples
  const std::vector<int> fold = stratified_folds(y, 3, 4, 5);
  std::vector<std::vector<int>> per(3, std::vector<int>(4, 0));
  std::vector<int> size(4, 0);
  for (std::size_t i = 0; i < y.size(); ++i) ++per[y[i]][fold[i]], ++size[fold[i]];
  for (int c = 0; c < 3; ++c) {
    const auto [lo, hi] = std::minmax_element(per[c].begin(), per[c].end());
    EXPECT_LE(*hi - *lo, 1) << "class " << c;
  }
  const auto [lo, hi] = std::minmax_element(size.begin(), size.end());
  EXPECT_LE(*hi - *lo, 1);
}

TEST(LogisticRegression, HoldoutSplitTestsEveryClassWithTwoOrMoreExamples) {
  std::vector<int> y = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2};
  const HoldoutSplit s = stratified_holdout(y, 3, 0.3, 9);
  EXPECT_EQ(s.train.size() + s.test.size(), y.size());
  std::vector<int> tested(3, 0), trained(3, 0);
  for (int i : s.test) ++tested[y[i]];
  for (int i : s.train) ++trained[y[i]];
  EXPECT_EQ(tested, (std::vector<int>{3, 1, 0}));
  EXPECT_EQ(trained, (std::vector<int>{7, 1, 1}));
  EXPECT_TRUE(std::is_sorted(s.test.begin(), s.test.end()));
}

TEST(LogisticRegression, EvaluationCountsAccuracyPerClassAndConfusion) {
  const Evaluation e = score_predictions({0, 0, 0, 1, 1, 2}, {0, 1, 0, 1, 1, 0}, 3);
  EXPECT_EQ(e.total(), 6);
  EXPECT_EQ(e.correct(), 4);
  EXPECT_DOUBLE_EQ(e.accuracy(), 4.0 / 6);
  EXPECT_DOUBLE_EQ(e.class_accuracy(0), 2.0 / 3);
  EXPECT_DOUBLE_EQ(e.class_accuracy(1), 1.0);
  EXPECT_DOUBLE_EQ(e.class_accuracy(2), 0.0);
  EXPECT_EQ(e.confusion(0, 1), 1);
  EXPECT_EQ(e.confusion(2, 0), 1);
  EXPECT_TRUE(std::isnan(score_predictions({0, 0}, {0, 0}, 2).class_accuracy(1)));
}

TEST(LogisticRegression, HoldoutEvaluationScoresOnlyTheTestPart) {
  const Blobs b = make_blobs(3, 20, 64, 1.0, 60);
  const HoldoutEvaluation h = holdout_evaluate(b.x, b.y, 3, 0.3, {});
  EXPECT_EQ(h.evaluation.total(), static_cast<int>(h.split.test.size()));
  EXPECT_EQ(h.split.test.size(), 18u);
  EXPECT_EQ(h.probe.num_examples, 42);
  EXPECT_GE(h.evaluation.accuracy(), 0.95);
}

// ---------------------------------------------------------------------------------------------------
// The saved head

TEST(ProbeHead, SavesClassifierTensorsWithLabelsAndSettingsInTheMetadata) {
  const Blobs b = make_blobs(3, 4, 64, 1.0, 70);
  ProbeOptions o;
  o.l2 = 0.05;
  const Probe p = train_probe(b.x, b.y, 3, o);
  const std::string dir = test::temp_dir();
  write_head(dir + "/head.safetensors", p, {"cat", "dog", "hummingbird"}, {{"data", "somewhere"}});
  const SafetensorsFile f = SafetensorsFile::open(dir + "/head.safetensors");
  EXPECT_EQ(f.names().size(), 2u);
  const TensorView& w = f.get("classifier.weight");
  const TensorView& bias = f.get("classifier.bias");
  EXPECT_EQ(w.dtype, DType::kF32);
  EXPECT_EQ(w.shape, (std::vector<std::int64_t>{3, 64}));
  EXPECT_EQ(bias.shape, (std::vector<std::int64_t>{3}));
  EXPECT_FLOAT_EQ(w.value(64 + 5), static_cast<float>(p.head.weight(1, 5)));
  EXPECT_FLOAT_EQ(bias.value(2), static_cast<float>(p.head.bias(2)));
  const auto labels = nlohmann::json::parse(f.metadata().at("id2label"));
  EXPECT_EQ(labels, (nlohmann::json{{"0", "cat"}, {"1", "dog"}, {"2", "hummingbird"}}));
  EXPECT_EQ(f.metadata().at("pool"), "cls");
  EXPECT_EQ(f.metadata().at("l2"), "0.05");
  EXPECT_EQ(f.metadata().at("l2_source"), "given");
  EXPECT_EQ(f.metadata().at("data"), "somewhere");
  EXPECT_THROW(write_head(dir + "/bad.safetensors", p, {"cat", "dog"}), Error);
  EXPECT_THROW(write_head(dir + "/bad.safetensors", p, {"cat", "dog", "x"}, {{"pool", "mean"}}), Error);
  EXPECT_FALSE(std::ifstream(dir + "/bad.safetensors").good());
}

TEST(ProbeHead, MergedIntoTheTinyModelGivesTheHeadsLogitsOnTheClsFeature) {
  // Train on real CLS features of the tiny model, merge with convert_checkpoint, and check that the
  // model's own classifier computes W·cls + b of the probe: the folding and the file format agree.
  const Model model = Model::load(test::data_path("models/tiny"));
  const std::vector<std::string> images = {"chelsea.png", "coffee.png", "astronaut.png",
                                           "camera.png",  "horse.png",  "rocket.jpg"};
  MatrixXd x(images.size(), 64);
  std::vector<Image> decoded;
  for (std::size_t i = 0; i < images.size(); ++i) {
    decoded.push_back(read_image(test::data_path("images/" + images[i])));
    x.row(i) = model.extract_features(decoded.back()).cls().cast<double>();
  }
  const std::vector<int> y = {0, 0, 1, 1, 2, 2};
  ProbeOptions o;
  o.l2 = 1e-3;
  const Probe p = train_probe(x, y, 3, o);
  const std::string dir = test::temp_dir();
  write_head(dir + "/head.safetensors", p, {"cats", "people", "things"});
  ConvertOptions co;
  co.classifier = dir + "/head.safetensors";
  convert_checkpoint(test::data_path("models/tiny"), dir + "/model.safetensors", co);
  const Model merged = Model::load(dir + "/model.safetensors");
  EXPECT_EQ(merged.labels(), (std::vector<std::string>{"cats", "people", "things"}));
  for (std::size_t i = 0; i < images.size(); ++i) {
    const Vector got = merged.classify(decoded[i]);
    const Eigen::VectorXd want = p.head.logits(x.row(i)).row(0).transpose();
    ASSERT_EQ(got.size(), 3);
    for (int k = 0; k < 3; ++k) EXPECT_NEAR(got(k), want(k), 1e-3 * std::max(1.0, std::fabs(want(k)))) << images[i];
    Eigen::Index best = 0;
    got.maxCoeff(&best);
    EXPECT_EQ(best, y[i]) << images[i];
  }
}

// ---------------------------------------------------------------------------------------------------
// vitmsn-probe end to end

#ifdef VITMSN_PROGRAM_DIR

using test::ProgramRun;
using test::run;

const std::vector<std::string> kClasses = test::probe_class_names();

// The percentage on the "overall" line of the first evaluation table.
double overall_accuracy(const std::string& output) {
  std::smatch m;
  if (!std::regex_search(output, m, std::regex(R"(\n\s*overall\s+(\d+)\s+([\d.]+)%)"))) return -1;
  return std::stod(m[2]) / 100;
}

TEST(ProbeProgram, SaysWhichImagesOfTheDataFolderItIgnores) {
  const std::string dir = test::temp_dir();
  std::system(("mkdir -p " + dir + "/data/cats " + dir + "/data/horses").c_str());
  test::write_bytes(dir + "/data/cats/a.png", test::read_text(test::data_path("images/chelsea.png")));
  test::write_bytes(dir + "/data/horses/b.png", test::read_text(test::data_path("images/horse.png")));
  test::write_bytes(dir + "/data/stray.png", test::read_text(test::data_path("images/coffee.png")));  // no class
  const ProgramRun r = run("vitmsn-probe --model " + test::data_path("models/tiny") + " --data " + dir +
                           "/data --output " + dir + "/h.safetensors --cache " + dir + "/cache");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("note: " + dir + "/data: ignored 1 image outside the class folders (" + dir +
                          "/data/stray.png); only images inside a class sub-folder are used"),
            std::string::npos)
      << r.output;
}

TEST(ProbeProgram, TrainsAHeadThatTheTinyModelLoadsAndClassifiesTheTrainingImagesWith) {
  const std::string dir = test::temp_dir();
  const std::string data = test::make_probe_image_folder(dir), head = dir + "/head.safetensors";
  const std::string cmd = "vitmsn-probe --model " + test::data_path("models/tiny") + " --data " + data + " --output " +
                          head + " --folds 3 --seed 1";
  ProgramRun r = run(cmd);
  std::printf("%s", r.output.c_str());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("18 extracted, 0 cached, 0 failed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("cross-validation (3-fold"), std::string::npos) << r.output;
  EXPECT_GE(overall_accuracy(r.output), 0.9) << r.output;
  for (const auto& c : kClasses) EXPECT_NE(r.output.find("\n  " + c + " "), std::string::npos) << c;
  EXPECT_NE(r.output.find("training accuracy 100.0%"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("vitmsn-convert --add-classifier " + head + " " + test::data_path("models/tiny") +
                          " OUT.safetensors"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("vitmsn-classify --model OUT.safetensors IMAGE"), std::string::npos) << r.output;

  // The head records the backbone it was trained on, which convert checks before merging.
  const auto meta = SafetensorsFile::open(head).metadata();
  EXPECT_EQ(meta.count(kBackboneMetadataKey) ? meta.at(kBackboneMetadataKey) : "(none)",
            backbone_identity(test::data_path("models/tiny")));

  // The head merges into the model, which then names and recognises the classes.
  ConvertOptions co;
  co.classifier = head;
  convert_checkpoint(test::data_path("models/tiny"), dir + "/model.safetensors", co);
  const Model model = Model::load(dir + "/model.safetensors");
  EXPECT_EQ(model.labels(), kClasses);
  for (int c = 0; c < 3; ++c)
    for (int i = 0; i < 6; ++i) {
      const std::string path = data + "/" + kClasses[c] + (i >= 4 ? "/sub/" : "/") + std::to_string(i) + ".png";
      Eigen::Index best = 0;
      model.classify(read_image(path)).maxCoeff(&best);
      EXPECT_EQ(best, c) << path;
    }

  // A second run extracts nothing and writes the same head.
  const std::string first = test::read_text(head);
  r = run(cmd + " --force");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("0 extracted, 18 cached, 0 failed"), std::string::npos) << r.output;
  EXPECT_EQ(test::read_text(head), first) << "the cached features should give a byte-identical head";
}

TEST(ProbeProgram, HeldOutEvaluationAndASkippedBadImage) {
  const std::string dir = test::temp_dir();
  const std::string data = test::make_probe_image_folder(dir), head = dir + "/head.safetensors";
  test::write_bytes(data + "/red_disk/broken.png", "\x89PNG\r\n\x1a\nnot really");
  const ProgramRun r = run("vitmsn-probe --model " + test::data_path("models/tiny") + " --data " + data + " --output " +
                           head + " --test-fraction 0.34 --cache " + dir + "/cache");
  std::printf("%s", r.output.c_str());
  EXPECT_EQ(r.status, 3) << r.output;  // the head written, one image failed
  EXPECT_NE(r.output.find("error: " + data + "/red_disk/broken.png"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("18 extracted, 0 cached, 1 failed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("held-out evaluation (stratified, test fraction 0.34: 6 test / 12 training"),
            std::string::npos)
      << r.output;
  EXPECT_GE(overall_accuracy(r.output), 0.8) << r.output;
  EXPECT_TRUE(SafetensorsFile::open(head).contains("classifier.weight"));
  EXPECT_FALSE(std::ifstream(data + "/.vitmsn-cache").good()) << "--cache should be used instead";
}

TEST(ProbeProgram, BadFlagsAndInputsGiveClearErrors) {
  const std::string dir = test::temp_dir();
  const std::string tiny = test::data_path("models/tiny");
  ProgramRun r = run("vitmsn-probe --bogus");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("error: unknown option --bogus"), std::string::npos) << r.output;
  r = run("vitmsn-probe --model " + tiny + " --output " + dir + "/h.safetensors");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("error: --data DIR is required"), std::string::npos) << r.output;
  r = run("vitmsn-probe --model " + tiny + " --data " + dir + " --output x --folds 3 --test-fraction 0.2");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("not both"), std::string::npos) << r.output;
  r = run("vitmsn-probe --model " + tiny + " --data " + dir + " --output x --test-fraction 1.5");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--test-fraction"), std::string::npos) << r.output;
  r = run("vitmsn-probe --model " + tiny + " --data " + dir + " --output x --folds 1");
  EXPECT_EQ(r.status, 2);
  r = run("vitmsn-probe --model " + tiny + " --data " + dir + " --output x --l2 -1");
  EXPECT_EQ(r.status, 2);
  // One class folder only.
  std::system(("mkdir -p '" + dir + "/one/only'").c_str());
  write_png(dir + "/one/only/a.png", test::probe_picture(0, 0));
  r = run("vitmsn-probe --model " + tiny + " --data " + dir + "/one --output " + dir + "/h.safetensors");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("error: " + dir + "/one: found 1 class folder; a probe needs at least 2 classes"),
            std::string::npos)
      << r.output;
  r = run("vitmsn-probe --help");
  EXPECT_EQ(r.status, 0);
  EXPECT_NE(r.output.find("usage: vitmsn-probe"), std::string::npos);
}

TEST(ProbeProgram, AClassWhoseImagesAllFailIsLeftOutWhenTwoOthersCanBeTrained) {
  const std::string dir = test::temp_dir();
  const std::string data = test::make_probe_image_folder(dir), head = dir + "/head.safetensors";
  std::system(("mkdir -p " + data + "/zz_broken").c_str());
  for (const char* name : {"/zz_broken/a.png", "/zz_broken/b.png"})
    test::write_bytes(data + name, "\x89PNG\r\n\x1a\nnot really");
  const std::string tiny = " --model " + test::data_path("models/tiny") + " --cache " + dir + "/cache";
  ProgramRun r = run("vitmsn-probe" + tiny + " --data " + data + " --output " + head);
  EXPECT_EQ(r.status, 3) << r.output;  // the head written, a class left out
  EXPECT_NE(r.output.find("warning: left out 1 class none of whose images could be read: " + data +
                          "/zz_broken; the head has 3 classes"),
            std::string::npos)
      << r.output;
  ASSERT_TRUE(std::ifstream(head).good()) << r.output;
  const SafetensorsFile h = SafetensorsFile::open(head);
  EXPECT_EQ(h.get("classifier.bias").shape, (std::vector<std::int64_t>{3}));
  EXPECT_EQ(h.metadata().at("id2label").find("zz_broken"), std::string::npos) << h.metadata().at("id2label");
  // With one class left, nothing can be trained: an error, nothing written.
  for (const auto& c : {kClasses[1], kClasses[2]}) std::system(("rm -r " + data + "/" + c).c_str());
  r = run("vitmsn-probe" + tiny + " --data " + data + " --output " + dir + "/h2.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: none of the images of 1 class could be read (" + data +
                          "/zz_broken), which leaves 1 class: a probe needs at least 2 (nothing was written)"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::ifstream(dir + "/h2.safetensors").good());
}

TEST(ProbeProgram, AFolderOfLooseImagesSaysSoAndTheLayoutItNeeds) {
  const std::string dir = test::temp_dir();
  std::system(("mkdir -p " + dir + "/flat").c_str());
  for (int i = 0; i < 3; ++i) write_png(dir + "/flat/" + std::to_string(i) + ".png", test::probe_picture(i, 0));
  const ProgramRun r = run("vitmsn-probe --model " + test::data_path("models/tiny") + " --data " + dir +
                           "/flat --output " + dir + "/h.safetensors");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: " + dir + "/flat: found 0 class folders and 3 images directly in it (not in a " +
                          "class folder); a probe needs at least 2 classes, each a sub-folder of images named after " +
                          "its class (" + dir + "/flat/cat/1.jpg, " + dir + "/flat/dog/2.jpg, ...)"),
            std::string::npos)
      << r.output;
}

TEST(ProbeProgram, AnInterruptSaysTheFeaturesSoFarAreCachedAndHowToContinue) {
  const std::string dir = test::temp_dir();
  const std::string data = test::make_probe_image_folder(dir), head = dir + "/head.safetensors";
  const std::string cmd = std::string(VITMSN_PROGRAM_DIR) + "/vitmsn-probe --model " + test::data_path("models/tiny") +
                          " --data " + data + " --output " + head + " --cache " + dir + "/cache";
  // The test hook stops the run as Ctrl-C would, after 5 images, the same on any machine.
  ProgramRun r = test::run_command("VITMSN_TEST_INTERRUPT_AFTER=5 " + cmd);
  EXPECT_EQ(r.status, 130) << r.output;
  EXPECT_NE(r.output.find("interrupted after 5 of 18 images; " + head + " was not written. 5 features extracted " +
                          "in this run are kept in the cache " + dir + "/cache/"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("; run the same command again to continue (cached features are not extracted again)"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::ifstream(head).good());
  r = test::run_command(cmd);
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("features: 13 extracted, 5 cached, 0 failed"), std::string::npos) << r.output;
}

#endif  // VITMSN_PROGRAM_DIR

}  // namespace
}  // namespace vitmsn
