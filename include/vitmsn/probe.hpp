#pragma once
/// \file
/// Linear probes: multinomial logistic regression on frozen features (e.g. the CLS embedding), the
/// label-efficient evaluation MSN is built for. Features are standardised, the L2-regularised softmax
/// cross-entropy is minimised with full-batch L-BFGS in double precision, the regularisation is chosen
/// by stratified k-fold cross-validation, and the result is folded back into one head over the
/// ORIGINAL features (logits = W·x + b) — what Model loads as `classifier.weight` / `classifier.bias`.
///
/// Everything here is deterministic: the same inputs and seed give bit-identical results. Functions
/// are thread-safe (no shared state); the library never prints.

#include <Eigen/Core>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "vitmsn/export.hpp"

namespace vitmsn {

// ---------------------------------------------------------------------------------------------------
// The solver: full-batch L-BFGS in double precision

/// Settings of the L-BFGS solver the probes are fitted with (ProbeOptions::solver, fit_softmax()).
struct LbfgsOptions {
  int memory = 10;                    ///< correction pairs (s, y) kept, m ≥ 1
  int max_iterations = 1000;          ///< iterations (accepted steps), ≥ 0
  double gradient_tolerance = 1e-6;   ///< stop when ‖∇f(x)‖₂ ≤ this
  double relative_tolerance = 1e-12;  ///< stop when f_prev − f ≤ this · max(|f_prev|, |f|, 1)
  int max_line_search = 40;           ///< objective evaluations per line search, ≥ 1
  double armijo = 1e-4;               ///< c₁ of the strong Wolfe conditions (sufficient decrease)
  double curvature = 0.9;             ///< c₂ of the strong Wolfe conditions, c₁ < c₂ < 1
};

/// Why the solver stopped.
enum class LbfgsStop {
  kGradient,          ///< ‖∇f‖₂ ≤ gradient_tolerance: converged
  kRelativeChange,    ///< the last step decreased f by less than relative_tolerance: converged
  kMaxIterations,     ///< max_iterations reached
  kLineSearchFailed,  ///< no step along the steepest descent decreased f (f flat to rounding)
};

/// "gradient", "relative change", "max iterations", "line search failed".
VITMSN_API const char* to_string(LbfgsStop stop);

/// What the solver returns (Probe::solver, fit_softmax()).
struct LbfgsResult {
  Eigen::VectorXd x;         ///< the last accepted point
  double value = 0;          ///< f(x)
  double gradient_norm = 0;  ///< ‖∇f(x)‖₂
  int iterations = 0;        ///< accepted steps
  int evaluations = 0;       ///< objective evaluations, line searches included
  LbfgsStop stop = LbfgsStop::kGradient;
  std::vector<double> history;  ///< f at the start, then after every accepted step (non-increasing)
};

// ---------------------------------------------------------------------------------------------------
// The probe's pieces

/// Per-dimension standardisation z = (x − mean) / scale, fitted on a training set.
struct Standardization {
  Eigen::RowVectorXd mean;   ///< [D] mean of each feature over the training examples
  Eigen::RowVectorXd scale;  ///< [D] population standard deviation, floored at the `min_std` of the fit
};

/// Mean and standard deviation of each column of `features` [N, D] (N ≥ 1); standard deviations
/// below `min_std` (constant features) become `min_std`. \throws Error when `features` is empty or
/// `min_std` is not positive.
VITMSN_API Standardization fit_standardization(const Eigen::MatrixXd& features, double min_std = 1e-6);

/// (features − mean) / scale row by row, [N, D]. \throws Error when D differs from the fit's.
VITMSN_API Eigen::MatrixXd standardize(const Eigen::MatrixXd& features, const Standardization& standardization);

/// A linear classifier: logits = weight·x + bias for a feature row x [D].
struct LinearHead {
  Eigen::MatrixXd weight;  ///< [K, D]
  Eigen::VectorXd bias;    ///< [K]

  int num_classes() const { return static_cast<int>(weight.rows()); }
  int dim() const { return static_cast<int>(weight.cols()); }
  /// Logits of every row of `features` [N, D] → [N, K]. Shapes are not checked.
  Eigen::MatrixXd logits(const Eigen::MatrixXd& features) const {
    return (features * weight.transpose()).rowwise() + bias.transpose();
  }
};

/// Index of the largest logit per row (the first on ties), [N]. \throws Error when D ≠ head.dim().
VITMSN_API std::vector<int> predict(const LinearHead& head, const Eigen::MatrixXd& features);

/// The training objective on (already standardised) features [N, D], labels [N] in 0..K−1:
///   L(W, b) = (1/N) Σᵢ −log softmax(W·xᵢ + b)[yᵢ] + (l2/2)·‖W‖²_F   (the bias is not regularised)
/// `params` holds W row-major (K·D values) then b (K values). When `gradient` is not null it
/// receives ∇L in the same layout. Shapes are checked. \throws Error on mismatched sizes.
VITMSN_API double softmax_cross_entropy(const Eigen::MatrixXd& features, const std::vector<int>& labels,
                                        int num_classes, double l2, const Eigen::VectorXd& params,
                                        Eigen::VectorXd* gradient = nullptr);

/// Fits the objective above by L-BFGS from `initial` (zeros when empty) and returns the
/// solver's result (x in softmax_cross_entropy()'s layout: W row-major, then b). Inputs are checked
/// as for train_probe().
VITMSN_API LbfgsResult fit_softmax(const Eigen::MatrixXd& standardized_features, const std::vector<int>& labels,
                                   int num_classes, double l2, const LbfgsOptions& options = {},
                                   const Eigen::VectorXd& initial = {});

// ---------------------------------------------------------------------------------------------------
// Training with cross-validated regularisation

/// 13 values 1e-4, 10^-3.5, …, 1e2: the default candidates for the L2 strength.
VITMSN_API std::vector<double> default_l2_grid();

/// How train_probe() chooses and fits.
struct ProbeOptions {
  /// The L2 strength (see softmax_cross_entropy()); 0 = choose it by cross-validation over `l2_grid`.
  double l2 = 0;
  /// Candidates for the cross-validated choice (positive); default_l2_grid() by default.
  std::vector<double> l2_grid = default_l2_grid();
  /// Folds of the stratified cross-validation that chooses l2 (≥ 2). Reduced to the size of the
  /// smallest class when that is smaller.
  int folds = 5;
  /// Used when l2 = 0 but the smallest class has a single example, so that no stratified
  /// cross-validation exists: 0.1, the geometric middle of the default grid.
  double fallback_l2 = 0.1;
  /// Seeds the shuffles of fold assignments and held-out splits (std::mt19937_64).
  std::uint64_t seed = 0;
  /// Floor of the per-feature standard deviation (see fit_standardization()).
  double min_std = 1e-6;
  /// The solver; its defaults converge tightly (‖∇L‖ ≤ 1e-6).
  LbfgsOptions solver;
};

/// Where a probe's l2 came from.
enum class L2Source {
  kGiven,            ///< ProbeOptions::l2 was set
  kCrossValidation,  ///< best of the grid by stratified k-fold cross-validation
  kFallback,         ///< ProbeOptions::fallback_l2: a class had a single example
};

/// "given", "cross-validation", "fallback".
VITMSN_API const char* to_string(L2Source source);

/// Cross-validated score of one l2 candidate.
struct L2Score {
  double l2 = 0;
  double accuracy = 0;  ///< fraction of examples predicted right by the fold that held them out
  double log_loss = 0;  ///< mean −log p(true class) on held-out examples
};

/// A trained probe.
struct Probe {
  LinearHead head;               ///< over the ORIGINAL features (standardisation folded in): what write_head() writes
  LinearHead standardized_head;  ///< the same classifier over standardised features
  Standardization standardization;  ///< fitted on all training examples, folded into `head`
  double l2 = 0;                    ///< the L2 strength of the final fit
  L2Source l2_source = L2Source::kGiven;
  int folds = 0;                   ///< folds of the l2 choice (0 unless kCrossValidation)
  std::vector<L2Score> l2_scores;  ///< one per grid value, in grid order (kCrossValidation only)
  LbfgsResult solver;              ///< the final fit on all examples (x in softmax_cross_entropy()'s layout)
  int num_examples = 0;
};

/// Trains a multinomial logistic-regression probe on `features` [N, D] (e.g. CLS embeddings) with
/// `labels` [N] in 0..K−1 (`num_classes` = K ≥ 2, every class present): standardises, chooses l2
/// (unless given) by stratified `folds`-fold cross-validation — highest held-out accuracy, ties to
/// the lower held-out log-loss, then to the larger l2 — and refits on all examples.
/// \throws Error when K < 2, a class has no example, sizes disagree, a label is out of range, a
/// feature is NaN or infinite (naming the example and dimension), or an option is out of range.
VITMSN_API Probe train_probe(const Eigen::MatrixXd& features, const std::vector<int>& labels, int num_classes,
                             const ProbeOptions& options = {});

// ---------------------------------------------------------------------------------------------------
// Evaluation

/// Predictions scored against the truth.
struct VITMSN_API Evaluation {
  Eigen::MatrixXi confusion;     ///< [K, K]: row = true class, column = predicted class
  std::vector<int> predictions;  ///< [N] predicted class per example (out-of-fold for cross_validate())

  int num_classes() const { return static_cast<int>(confusion.rows()); }
  /// Examples evaluated.
  int total() const { return confusion.sum(); }
  /// Examples predicted right.
  int correct() const { return confusion.trace(); }
  /// correct() / total(); NaN when nothing was evaluated.
  double accuracy() const;
  /// Examples of class k evaluated.
  int count(int k) const { return confusion.row(k).sum(); }
  /// Fraction of class k's examples predicted as k (recall); NaN when count(k) is 0.
  double class_accuracy(int k) const;
};

/// Scores `predictions` against `labels` (both [N], values in 0..K−1). \throws Error on mismatch.
VITMSN_API Evaluation score_predictions(const std::vector<int>& labels, const std::vector<int>& predictions,
                                        int num_classes);

/// Scores `head` on `features` [N, D] with `labels`. \throws Error on mismatched sizes.
VITMSN_API Evaluation evaluate(const LinearHead& head, const Eigen::MatrixXd& features, const std::vector<int>& labels);

/// Stratified fold of every example, [N] in 0..folds−1: each class's examples are shuffled (seeded)
/// and dealt round-robin, continuing from where the previous class stopped so folds have equal sizes
/// ±1. \throws Error when folds < 2 or a label is out of range.
VITMSN_API std::vector<int> stratified_folds(const std::vector<int>& labels, int num_classes, int folds,
                                             std::uint64_t seed);

/// Example indices of a stratified held-out split.
struct HoldoutSplit {
  std::vector<int> train;  ///< ascending
  std::vector<int> test;   ///< ascending
};

/// Per class: round(test_fraction · n) of its (shuffled) examples to `test`, at least 1 and at most
/// n − 1, so every class with ≥ 2 examples is both trained on and tested; a class with one example
/// goes to `train`. \throws Error when test_fraction is not in (0, 1) or the test set would be empty.
VITMSN_API HoldoutSplit stratified_holdout(const std::vector<int>& labels, int num_classes, double test_fraction,
                                           std::uint64_t seed);

/// What cross_validate() measured.
struct CrossValidation {
  Evaluation evaluation;        ///< out-of-fold predictions of all N examples
  int folds = 0;                ///< folds used (requested, reduced to the smallest class)
  std::vector<int> fold;        ///< [N] fold of each example
  std::vector<double> fold_l2;  ///< l2 each fold's probe used
  std::vector<L2Source> fold_l2_source;
};

/// Stratified k-fold estimate of train_probe()'s accuracy: every fold trains a probe on the other
/// folds — choosing l2 by its own inner cross-validation unless options.l2 is set, so the estimate
/// is not biased by the choice — and predicts its held-out examples. `folds` is reduced to the size
/// of the smallest class. \throws Error when a class has fewer than 2 examples (naming it), and as
/// train_probe().
VITMSN_API CrossValidation cross_validate(const Eigen::MatrixXd& features, const std::vector<int>& labels,
                                          int num_classes, int folds, const ProbeOptions& options = {});

/// What holdout_evaluate() measured.
struct HoldoutEvaluation {
  HoldoutSplit split;
  Probe probe;            ///< trained on split.train only
  Evaluation evaluation;  ///< on split.test; predictions are in split.test order
};

/// Trains train_probe() on a stratified_holdout() training part (seed: options.seed) and scores it
/// on the rest. \throws Error as those two.
VITMSN_API HoldoutEvaluation holdout_evaluate(const Eigen::MatrixXd& features, const std::vector<int>& labels,
                                              int num_classes, double test_fraction, const ProbeOptions& options = {});

// ---------------------------------------------------------------------------------------------------
// Saving

/// Writes `probe.head` as a classifier head file that vitmsn-convert / convert_checkpoint() merge
/// into a model: tensors `classifier.weight` F32 [K, D] and `classifier.bias` F32 [K]; `__metadata__`
/// "id2label" (JSON object {"0": labels[0], …}), "pool" ("cls": the head applies to the CLS
/// embedding after the final layer norm), "l2", "l2_source", "folds", "num_examples", "num_classes",
/// "hidden_size", "standardization" ("folded"), plus `extra_metadata`. Written atomically
/// (write_safetensors()). \throws Error naming `path` when labels.size() ≠ K, a label is empty, an
/// extra key collides with one above, the head is not finite, or the file cannot be written.
VITMSN_API void write_head(const std::string& path, const Probe& probe, const std::vector<std::string>& labels,
                           const std::map<std::string, std::string>& extra_metadata = {});

}  // namespace vitmsn
