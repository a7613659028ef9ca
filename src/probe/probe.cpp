#include "vitmsn/probe.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <utility>

#include "probe/lbfgs.hpp"
#include "vitmsn/error.hpp"
#include "vitmsn/safetensors.hpp"

namespace vitmsn {
namespace detail {

// Internals of the probe (not public API).

/// The same classifier over raw features: a head trained on standardised features z folded into
/// weight/scale and bias − (weight/scale)·mean, so that it applies to x directly.
LinearHead fold_standardization(const LinearHead& standardized_head, const Standardization& standardization);

/// Parameters in softmax_cross_entropy()'s layout → a head. \throws Error when the size is not K·(D+1).
LinearHead unpack_head(const Eigen::VectorXd& params, int num_classes, int dim);

/// Rows `rows` of `features` / entries of `labels`.
Eigen::MatrixXd select_rows(const Eigen::MatrixXd& features, const std::vector<int>& rows);
std::vector<int> select_labels(const std::vector<int>& labels, const std::vector<int>& rows);

}  // namespace detail

namespace {

using detail::minimize_lbfgs;
using detail::Objective;
using Eigen::Index;
using Eigen::MatrixXd;
using Eigen::VectorXd;
using RowMajorMatrixXd = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

std::string format_number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

// ---------------------------------------------------------------------------------------------------
// Line search

// One trial step along the search direction d: φ(α) = f(x + α·d), φ'(α) = ∇f(x + α·d)·d.
struct LinePoint {
  double alpha = 0;
  double value = 0;
  double slope = 0;
};

// The minimiser of the cubic through (a, φ(a), φ'(a)) and (b, φ(b), φ'(b)), kept inside the middle
// 80 % of [a, b] (else the midpoint): Nocedal & Wright eq. 3.59 with the safeguard of §3.5.
double cubic_step(const LinePoint& a, const LinePoint& b) {
  const double lo = std::min(a.alpha, b.alpha), hi = std::max(a.alpha, b.alpha);
  const double mid = 0.5 * (lo + hi), margin = 0.1 * (hi - lo);
  if (!std::isfinite(a.value) || !std::isfinite(b.value) || !std::isfinite(a.slope) || !std::isfinite(b.slope))
    return mid;
  const double d1 = a.slope + b.slope - 3 * (a.value - b.value) / (a.alpha - b.alpha);
  const double disc = d1 * d1 - a.slope * b.slope;
  if (!(disc >= 0)) return mid;
  const double d2 = std::copysign(std::sqrt(disc), b.alpha - a.alpha);
  const double denom = b.slope - a.slope + 2 * d2;
  if (denom == 0) return mid;
  const double t = b.alpha - (b.alpha - a.alpha) * (b.slope + d2 - d1) / denom;
  if (!std::isfinite(t) || t < lo + margin || t > hi - margin) return mid;
  return t;
}

// Strong-Wolfe line search (Nocedal & Wright algorithms 3.5 and 3.6). On success `xt`, `gt`, `ft`
// hold the accepted point. When the evaluation budget runs out inside zoom, the best point found
// that satisfies sufficient decrease is accepted (it may miss the curvature condition; the caller
// then skips the memory update). Returns false when no point with sufficient decrease was found.
class LineSearch {
 public:
  LineSearch(const Objective& f, const LbfgsOptions& o, int& evaluations) : f_(f), o_(o), evaluations_(evaluations) {}

  bool run(const VectorXd& x, double fx, const VectorXd& d, double slope0, double alpha0, VectorXd& xt, VectorXd& gt,
           double& ft) {
    x_ = &x;
    d_ = &d;
    f0_ = fx;
    s0_ = slope0;
    budget_ = o_.max_line_search;
    best_alpha_ = 0;
    LinePoint prev{0, fx, slope0};
    double alpha = alpha0;
    for (int i = 0; budget_ > 0; ++i) {
      const LinePoint cur = eval(alpha);
      if (!sufficient(cur) || (i > 0 && cur.value >= prev.value)) return zoom(prev, cur, xt, gt, ft);
      remember(cur);
      if (std::fabs(cur.slope) <= -o_.curvature * s0_) return accept(xt, gt, ft);
      if (cur.slope >= 0) return zoom(cur, prev, xt, gt, ft);
      prev = cur;
      // Still descending at a point of sufficient decrease: extrapolate (the bracket grows).
      alpha *= 2;
    }
    return accept(xt, gt, ft);
  }

 private:
  LinePoint eval(double alpha) {
    trial_x_ = *x_ + alpha * *d_;
    trial_g_.resize(trial_x_.size());
    double v = f_(trial_x_, trial_g_);
    ++evaluations_;
    --budget_;
    double s = trial_g_.dot(*d_);
    if (!std::isfinite(v) || !std::isfinite(s)) {
      v = std::numeric_limits<double>::infinity();
      s = std::numeric_limits<double>::quiet_NaN();
    }
    return {alpha, v, s};
  }
  bool sufficient(const LinePoint& p) const { return p.value <= f0_ + o_.armijo * p.alpha * s0_; }
  // Keeps the lowest point with sufficient decrease seen so far (the one last evaluated).
  void remember(const LinePoint& p) {
    if (best_alpha_ == 0 || p.value < best_value_) {
      best_alpha_ = p.alpha;
      best_value_ = p.value;
      best_x_ = trial_x_;
      best_g_ = trial_g_;
    }
  }
  bool accept(VectorXd& xt, VectorXd& gt, double& ft) {
    if (best_alpha_ == 0) return false;
    xt = best_x_;
    gt = best_g_;
    ft = best_value_;
    return true;
  }
  // lo: sufficient decrease, lowest value so far; the interval between lo and hi holds a point
  // satisfying the strong Wolfe conditions.
  bool zoom(LinePoint lo, LinePoint hi, VectorXd& xt, VectorXd& gt, double& ft) {
    while (budget_ > 0) {
      if (std::fabs(hi.alpha - lo.alpha) <= 1e-16 * std::max(1.0, std::fabs(lo.alpha))) break;
      const LinePoint cur = eval(cubic_step(lo, hi));
      if (!sufficient(cur) || cur.value >= lo.value) {
        hi = cur;
        continue;
      }
      remember(cur);
      if (std::fabs(cur.slope) <= -o_.curvature * s0_) return accept(xt, gt, ft);
      if (cur.slope * (hi.alpha - lo.alpha) >= 0) hi = lo;
      lo = cur;
    }
    return accept(xt, gt, ft);
  }

  const Objective& f_;
  const LbfgsOptions& o_;
  int& evaluations_;
  const VectorXd* x_ = nullptr;
  const VectorXd* d_ = nullptr;
  double f0_ = 0, s0_ = 0;
  int budget_ = 0;
  VectorXd trial_x_, trial_g_;
  double best_alpha_ = 0, best_value_ = 0;
  VectorXd best_x_, best_g_;
};

// ---------------------------------------------------------------------------------------------------
// Checks shared by the public entry points

void check_problem(const MatrixXd& features, const std::vector<int>& labels, int num_classes) {
  if (num_classes < 2)
    throw Error(ErrorKind::kArgument, "probe: needs at least 2 classes, got " + std::to_string(num_classes));
  if (features.rows() < 1 || features.cols() < 1)
    throw Error(ErrorKind::kArgument, "probe: no features (" + std::to_string(features.rows()) + " x " +
                                          std::to_string(features.cols()) + ")");
  if (static_cast<Index>(labels.size()) != features.rows())
    throw Error(ErrorKind::kArgument, "probe: " + std::to_string(labels.size()) + " labels for " +
                                          std::to_string(features.rows()) + " feature rows");
  std::vector<int> count(num_classes, 0);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes)
      throw Error(ErrorKind::kArgument, "probe: label " + std::to_string(labels[i]) + " of example " +
                                            std::to_string(i) + " is outside 0.." + std::to_string(num_classes - 1));
    ++count[labels[i]];
  }
  for (int k = 0; k < num_classes; ++k)
    if (count[k] == 0) throw Error(ErrorKind::kArgument, "probe: class " + std::to_string(k) + " has no examples");
  if (!features.allFinite()) {
    for (Index i = 0; i < features.rows(); ++i)
      for (Index j = 0; j < features.cols(); ++j)
        if (!std::isfinite(features(i, j)))
          throw Error(ErrorKind::kArgument, "probe: feature " + std::to_string(j) + " of example " + std::to_string(i) +
                                                " is " + (std::isnan(features(i, j)) ? "NaN" : "infinite"));
  }
}

void check_options(const ProbeOptions& o) {
  if (!(o.l2 >= 0) || !std::isfinite(o.l2))
    throw Error(ErrorKind::kArgument, "probe: l2 must be finite and >= 0, got " + format_number(o.l2));
  if (o.l2 == 0) {
    if (o.l2_grid.empty()) throw Error(ErrorKind::kArgument, "probe: the l2 grid is empty");
    for (double v : o.l2_grid)
      if (!(v > 0) || !std::isfinite(v))
        throw Error(ErrorKind::kArgument, "probe: l2 grid value " + format_number(v) + " is not positive");
    if (o.folds < 2)
      throw Error(ErrorKind::kArgument,
                  "probe: cross-validation needs at least 2 folds, got " + std::to_string(o.folds));
    if (!(o.fallback_l2 > 0) || !std::isfinite(o.fallback_l2))
      throw Error(ErrorKind::kArgument, "probe: fallback l2 must be positive, got " + format_number(o.fallback_l2));
  }
  if (!(o.min_std > 0))
    throw Error(ErrorKind::kArgument, "probe: min_std must be positive, got " + format_number(o.min_std));
}

std::vector<int> class_counts(const std::vector<int>& labels, int num_classes) {
  std::vector<int> count(num_classes, 0);
  for (int y : labels) ++count[y];
  return count;
}

// A seed for a sub-task (an outer fold's inner cross-validation) derived from the user's seed.
std::uint64_t derive_seed(std::uint64_t seed, std::uint64_t salt) {
  std::uint64_t z = seed + 0x9e3779b97f4a7c15ull * (salt + 1);  // splitmix64
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Fisher–Yates with the raw output of mt19937_64, whose sequence the standard fixes, so a seed gives
// the same order on every platform (std::shuffle's use of the engine is implementation-defined).
void shuffle(std::vector<int>& v, std::mt19937_64& rng) {
  for (std::size_t i = v.size(); i > 1; --i) std::swap(v[i - 1], v[rng() % i]);
}

std::vector<std::vector<int>> shuffled_classes(const std::vector<int>& labels, int num_classes, std::uint64_t seed) {
  std::vector<std::vector<int>> members(num_classes);
  for (std::size_t i = 0; i < labels.size(); ++i) members[labels[i]].push_back(static_cast<int>(i));
  std::mt19937_64 rng(seed);
  for (auto& m : members) shuffle(m, rng);
  return members;
}

void check_labels(const std::vector<int>& labels, int num_classes) {
  if (num_classes < 1)
    throw Error(ErrorKind::kArgument, "probe: needs at least 1 class, got " + std::to_string(num_classes));
  for (std::size_t i = 0; i < labels.size(); ++i)
    if (labels[i] < 0 || labels[i] >= num_classes)
      throw Error(ErrorKind::kArgument, "probe: label " + std::to_string(labels[i]) + " of example " +
                                            std::to_string(i) + " is outside 0.." + std::to_string(num_classes - 1));
}

// ---------------------------------------------------------------------------------------------------
// The objective, with buffers reused across evaluations

class SoftmaxObjective {
 public:
  SoftmaxObjective(const MatrixXd& x, const std::vector<int>& y, int k, double l2) : x_(x), y_(y), k_(k), l2_(l2) {}

  double operator()(const VectorXd& params, VectorXd* gradient) {
    const Index n = x_.rows(), d = x_.cols();
    const Eigen::Map<const RowMajorMatrixXd> w(params.data(), k_, d);  // [K, D]
    const Eigen::Map<const VectorXd> b(params.data() + k_ * d, k_);    // [K]
    // z = x·Wᵀ + b  [N, K]
    z_.noalias() = x_ * w.transpose();
    z_.rowwise() += b.transpose();
    // −log softmax(z)[y] = logsumexp(z) − z[y], with the row maximum subtracted for range; z becomes
    // the probabilities p = softmax(z).
    double loss = 0;
    for (Index i = 0; i < n; ++i) {
      const double m = z_.row(i).maxCoeff();
      const double zy = z_(i, y_[i]);
      z_.row(i) = (z_.row(i).array() - m).exp();
      const double s = z_.row(i).sum();
      loss += std::log(s) + m - zy;
      z_.row(i) /= s;
    }
    loss = loss / n + 0.5 * l2_ * w.squaredNorm();
    if (gradient) {
      // ∂L/∂z = (p − onehot(y)) / N;  ∂L/∂W = (∂L/∂z)ᵀ·x + l2·W;  ∂L/∂b = Σᵢ ∂L/∂zᵢ
      for (Index i = 0; i < n; ++i) z_(i, y_[i]) -= 1;
      z_ /= static_cast<double>(n);
      gradient->resize(params.size());
      Eigen::Map<RowMajorMatrixXd> gw(gradient->data(), k_, d);
      Eigen::Map<VectorXd> gb(gradient->data() + k_ * d, k_);
      gw.noalias() = z_.transpose() * x_;
      gw += l2_ * w;
      gb = z_.colwise().sum().transpose();
    }
    return loss;
  }

 private:
  const MatrixXd& x_;
  const std::vector<int>& y_;
  const int k_;
  const double l2_;
  MatrixXd z_;
};

// fit_softmax() without the input checks (callers have checked).
LbfgsResult fit(const MatrixXd& z, const std::vector<int>& y, int k, double l2, const LbfgsOptions& options,
                const VectorXd& initial) {
  SoftmaxObjective objective(z, y, k, l2);
  const Objective f = [&](const VectorXd& p, VectorXd& g) { return objective(p, &g); };
  VectorXd x0 = initial.size() ? initial : VectorXd::Zero(k * (z.cols() + 1));
  return minimize_lbfgs(f, std::move(x0), options);
}

std::vector<int> argmax_rows(const MatrixXd& logits) {
  std::vector<int> out(logits.rows());
  for (Index i = 0; i < logits.rows(); ++i) {
    Index best = 0;
    logits.row(i).maxCoeff(&best);
    out[i] = static_cast<int>(best);
  }
  return out;
}

struct Selection {
  double l2 = 0;
  std::vector<L2Score> scores;
};

// Chooses l2 from options.l2_grid by stratified `folds`-fold cross-validation. Along the grid the
// fits go from strong to weak regularisation, each warm-started from the previous solution.
Selection select_l2(const MatrixXd& x, const std::vector<int>& y, int k, int folds, const ProbeOptions& options) {
  const std::vector<double>& grid = options.l2_grid;
  const std::vector<int> fold = stratified_folds(y, k, folds, options.seed);
  std::vector<std::size_t> order(grid.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return grid[a] > grid[b]; });
  std::vector<long> correct(grid.size(), 0);
  std::vector<double> log_loss(grid.size(), 0.0);
  for (int f = 0; f < folds; ++f) {
    std::vector<int> train, test;
    for (std::size_t i = 0; i < y.size(); ++i) (fold[i] == f ? test : train).push_back(static_cast<int>(i));
    const MatrixXd x_train = detail::select_rows(x, train);
    const std::vector<int> y_train = detail::select_labels(y, train);
    const Standardization st = fit_standardization(x_train, options.min_std);
    const MatrixXd z_train = standardize(x_train, st), z_test = standardize(detail::select_rows(x, test), st);
    VectorXd warm;
    for (std::size_t g : order) {
      const LbfgsResult r = fit(z_train, y_train, k, grid[g], options.solver, warm);
      warm = r.x;
      const MatrixXd logits = detail::unpack_head(r.x, k, static_cast<int>(x.cols())).logits(z_test);
      for (Index i = 0; i < logits.rows(); ++i) {
        Index best = 0;
        const double m = logits.row(i).maxCoeff(&best);
        const int truth = y[test[i]];
        correct[g] += best == truth;
        log_loss[g] += std::log((logits.row(i).array() - m).exp().sum()) + m - logits(i, truth);
      }
    }
  }
  Selection s;
  std::size_t best = grid.size();
  for (std::size_t g = 0; g < grid.size(); ++g) {
    s.scores.push_back({grid[g], static_cast<double>(correct[g]) / y.size(), log_loss[g] / y.size()});
    if (best == grid.size() || correct[g] > correct[best] ||
        (correct[g] == correct[best] &&
         (log_loss[g] < log_loss[best] || (log_loss[g] == log_loss[best] && grid[g] > grid[best]))))
      best = g;
  }
  s.l2 = grid[best];
  return s;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// L-BFGS

const char* to_string(LbfgsStop stop) {
  switch (stop) {
    case LbfgsStop::kGradient:
      return "gradient";
    case LbfgsStop::kRelativeChange:
      return "relative change";
    case LbfgsStop::kMaxIterations:
      return "max iterations";
    case LbfgsStop::kLineSearchFailed:
      return "line search failed";
  }
  return "?";
}

LbfgsResult detail::minimize_lbfgs(const Objective& objective, Eigen::VectorXd x0, const LbfgsOptions& o) {
  if (o.memory < 1) throw Error(ErrorKind::kArgument, "lbfgs: memory must be >= 1, got " + std::to_string(o.memory));
  if (o.max_iterations < 0)
    throw Error(ErrorKind::kArgument, "lbfgs: max_iterations must be >= 0, got " + std::to_string(o.max_iterations));
  if (o.max_line_search < 1)
    throw Error(ErrorKind::kArgument, "lbfgs: max_line_search must be >= 1, got " + std::to_string(o.max_line_search));
  if (!(o.gradient_tolerance >= 0) || !(o.relative_tolerance >= 0))
    throw Error(ErrorKind::kArgument, "lbfgs: tolerances must be >= 0");
  if (!(0 < o.armijo && o.armijo < o.curvature && o.curvature < 1))
    throw Error(ErrorKind::kArgument, "lbfgs: needs 0 < armijo < curvature < 1, got " + format_number(o.armijo) + ", " +
                                          format_number(o.curvature));

  LbfgsResult r;
  const Index n = x0.size();
  VectorXd x = std::move(x0), g(n);
  double fx = objective(x, g);
  r.evaluations = 1;
  if (!std::isfinite(fx) || !g.allFinite())
    throw Error(ErrorKind::kArgument, "lbfgs: the objective or its gradient is not finite at the starting point");
  r.history.push_back(fx);

  // The last m correction pairs s = x₊ − x, y = g₊ − g in a ring, oldest first from `head`.
  const int m = o.memory;
  std::vector<VectorXd> s_mem(m), y_mem(m);
  std::vector<double> rho(m), coef(m);
  int stored = 0, head = 0;

  VectorXd d(n), xt(n), gt(n), s_new(n), y_new(n);
  LineSearch search(objective, o, r.evaluations);
  for (;;) {
    const double gnorm = g.norm();
    if (gnorm <= o.gradient_tolerance) {
      r.stop = LbfgsStop::kGradient;
      break;
    }
    if (r.iterations >= o.max_iterations) {
      r.stop = LbfgsStop::kMaxIterations;
      break;
    }
    // d = −H·g by the two-loop recursion, H₀ = γ·I with γ = sᵀy / yᵀy of the newest pair.
    d = -g;
    for (int j = stored - 1; j >= 0; --j) {
      const int p = (head + j) % m;
      coef[p] = rho[p] * s_mem[p].dot(d);
      d -= coef[p] * y_mem[p];
    }
    if (stored > 0) {
      const int newest = (head + stored - 1) % m;
      d *= s_mem[newest].dot(y_mem[newest]) / y_mem[newest].squaredNorm();
    }
    for (int j = 0; j < stored; ++j) {
      const int p = (head + j) % m;
      const double beta = rho[p] * y_mem[p].dot(d);
      d += (coef[p] - beta) * s_mem[p];
    }
    double slope = g.dot(d);
    if (!(slope < 0) || !std::isfinite(slope)) {  // not a descent direction: forget the curvature
      stored = head = 0;
      d = -g;
      slope = -gnorm * gnorm;
    }
    double ft = 0;
    bool ok = search.run(x, fx, d, slope, stored ? 1.0 : std::min(1.0, 1.0 / gnorm), xt, gt, ft);
    if (!ok && stored > 0) {  // retry once along the steepest descent with a fresh memory
      stored = head = 0;
      d = -g;
      ok = search.run(x, fx, d, -gnorm * gnorm, std::min(1.0, 1.0 / gnorm), xt, gt, ft);
    }
    if (!ok) {
      r.stop = LbfgsStop::kLineSearchFailed;
      break;
    }
    // New pair; kept only with positive curvature so that H stays positive definite.
    s_new = xt - x;
    y_new = gt - g;
    const double sy = s_new.dot(y_new);
    if (sy > std::numeric_limits<double>::epsilon() * y_new.squaredNorm()) {
      const int slot = stored < m ? (head + stored) % m : head;  // full: overwrite the oldest
      s_mem[slot].swap(s_new);
      y_mem[slot].swap(y_new);
      rho[slot] = 1.0 / sy;
      if (stored < m)
        ++stored;
      else
        head = (head + 1) % m;
    }
    const double f_prev = fx;
    x.swap(xt);
    g.swap(gt);
    fx = ft;
    ++r.iterations;
    r.history.push_back(fx);
    if (f_prev - fx <= o.relative_tolerance * std::max({std::fabs(f_prev), std::fabs(fx), 1.0})) {
      r.stop = LbfgsStop::kRelativeChange;
      break;
    }
  }
  r.x = std::move(x);
  r.value = fx;
  r.gradient_norm = g.norm();
  return r;
}

// ---------------------------------------------------------------------------------------------------
// Pieces

Standardization fit_standardization(const Eigen::MatrixXd& features, double min_std) {
  if (features.rows() < 1 || features.cols() < 1)
    throw Error(ErrorKind::kArgument, "standardization: no features to fit");
  if (!(min_std > 0))
    throw Error(ErrorKind::kArgument, "standardization: min_std must be positive, got " + format_number(min_std));
  Standardization s;
  s.mean = features.colwise().mean();
  // Population standard deviation (divide by N) about the mean.
  s.scale = ((features.rowwise() - s.mean).array().square().colwise().sum() / static_cast<double>(features.rows()))
                .sqrt()
                .max(min_std)
                .matrix();
  return s;
}

Eigen::MatrixXd standardize(const Eigen::MatrixXd& features, const Standardization& s) {
  if (features.cols() != s.mean.size())
    throw Error(ErrorKind::kArgument, "standardization: features have " + std::to_string(features.cols()) +
                                          " dimensions, fitted on " + std::to_string(s.mean.size()));
  return ((features.rowwise() - s.mean).array().rowwise() / s.scale.array()).matrix();
}

LinearHead detail::fold_standardization(const LinearHead& h, const Standardization& s) {
  if (h.weight.cols() != s.scale.size())
    throw Error(ErrorKind::kArgument, "standardization: head over " + std::to_string(h.weight.cols()) +
                                          " dimensions, fitted on " + std::to_string(s.scale.size()));
  // V·(x − μ)/σ + c = (V/σ)·x + (c − (V/σ)·μ)
  LinearHead out;
  out.weight = (h.weight.array().rowwise() / s.scale.array()).matrix();
  out.bias = h.bias - out.weight * s.mean.transpose();
  return out;
}

std::vector<int> predict(const LinearHead& head, const Eigen::MatrixXd& features) {
  if (features.cols() != head.weight.cols())
    throw Error(ErrorKind::kArgument, "probe: features have " + std::to_string(features.cols()) +
                                          " dimensions, the head " + std::to_string(head.weight.cols()));
  return argmax_rows(head.logits(features));
}

double softmax_cross_entropy(const Eigen::MatrixXd& features, const std::vector<int>& labels, int num_classes,
                             double l2, const Eigen::VectorXd& params, Eigen::VectorXd* gradient) {
  check_problem(features, labels, num_classes);
  if (params.size() != num_classes * (features.cols() + 1))
    throw Error(ErrorKind::kArgument, "probe: " + std::to_string(params.size()) + " parameters, expected K*(D+1) = " +
                                          std::to_string(num_classes * (features.cols() + 1)));
  SoftmaxObjective objective(features, labels, num_classes, l2);
  return objective(params, gradient);
}

LbfgsResult fit_softmax(const Eigen::MatrixXd& standardized_features, const std::vector<int>& labels, int num_classes,
                        double l2, const LbfgsOptions& options, const Eigen::VectorXd& initial) {
  check_problem(standardized_features, labels, num_classes);
  if (!(l2 >= 0) || !std::isfinite(l2))
    throw Error(ErrorKind::kArgument, "probe: l2 must be finite and >= 0, got " + format_number(l2));
  if (initial.size() && initial.size() != num_classes * (standardized_features.cols() + 1))
    throw Error(ErrorKind::kArgument,
                "probe: initial point has " + std::to_string(initial.size()) +
                    " values, expected K*(D+1) = " + std::to_string(num_classes * (standardized_features.cols() + 1)));
  return fit(standardized_features, labels, num_classes, l2, options, initial);
}

LinearHead detail::unpack_head(const Eigen::VectorXd& params, int num_classes, int dim) {
  if (num_classes < 1 || dim < 1 || params.size() != static_cast<Index>(num_classes) * (dim + 1))
    throw Error(ErrorKind::kArgument, "probe: " + std::to_string(params.size()) + " parameters do not make a head of " +
                                          std::to_string(num_classes) + " classes over " + std::to_string(dim) +
                                          " dimensions");
  LinearHead h;
  h.weight = Eigen::Map<const RowMajorMatrixXd>(params.data(), num_classes, dim);
  h.bias = params.tail(num_classes);
  return h;
}

// ---------------------------------------------------------------------------------------------------
// Training

std::vector<double> default_l2_grid() {
  std::vector<double> grid;
  for (int i = 0; i <= 12; ++i) grid.push_back(std::pow(10.0, -4.0 + 0.5 * i));
  return grid;
}

const char* to_string(L2Source source) {
  switch (source) {
    case L2Source::kGiven:
      return "given";
    case L2Source::kCrossValidation:
      return "cross-validation";
    case L2Source::kFallback:
      return "fallback";
  }
  return "?";
}

Probe train_probe(const Eigen::MatrixXd& features, const std::vector<int>& labels, int num_classes,
                  const ProbeOptions& options) {
  check_problem(features, labels, num_classes);
  check_options(options);
  Probe p;
  p.num_examples = static_cast<int>(features.rows());
  if (options.l2 > 0) {
    p.l2 = options.l2;
    p.l2_source = L2Source::kGiven;
  } else {
    const std::vector<int> count = class_counts(labels, num_classes);
    const int smallest = *std::min_element(count.begin(), count.end());
    if (smallest < 2) {
      p.l2 = options.fallback_l2;
      p.l2_source = L2Source::kFallback;
    } else {
      p.folds = std::min(options.folds, smallest);
      Selection s = select_l2(features, labels, num_classes, p.folds, options);
      p.l2 = s.l2;
      p.l2_source = L2Source::kCrossValidation;
      p.l2_scores = std::move(s.scores);
    }
  }
  p.standardization = fit_standardization(features, options.min_std);
  const MatrixXd z = standardize(features, p.standardization);
  p.solver = fit(z, labels, num_classes, p.l2, options.solver, VectorXd());
  p.standardized_head = detail::unpack_head(p.solver.x, num_classes, static_cast<int>(features.cols()));
  p.head = detail::fold_standardization(p.standardized_head, p.standardization);
  return p;
}

// ---------------------------------------------------------------------------------------------------
// Evaluation

double Evaluation::accuracy() const {
  const int n = total();
  return n ? static_cast<double>(correct()) / n : std::numeric_limits<double>::quiet_NaN();
}

double Evaluation::class_accuracy(int k) const {
  const int n = count(k);
  return n ? static_cast<double>(confusion(k, k)) / n : std::numeric_limits<double>::quiet_NaN();
}

Evaluation score_predictions(const std::vector<int>& labels, const std::vector<int>& predictions, int num_classes) {
  if (labels.size() != predictions.size())
    throw Error(ErrorKind::kArgument, "probe: " + std::to_string(predictions.size()) + " predictions for " +
                                          std::to_string(labels.size()) + " labels");
  check_labels(labels, num_classes);
  check_labels(predictions, num_classes);
  Evaluation e;
  e.confusion = Eigen::MatrixXi::Zero(num_classes, num_classes);
  for (std::size_t i = 0; i < labels.size(); ++i) ++e.confusion(labels[i], predictions[i]);
  e.predictions = predictions;
  return e;
}

Evaluation evaluate(const LinearHead& head, const Eigen::MatrixXd& features, const std::vector<int>& labels) {
  if (static_cast<Index>(labels.size()) != features.rows())
    throw Error(ErrorKind::kArgument, "probe: " + std::to_string(labels.size()) + " labels for " +
                                          std::to_string(features.rows()) + " feature rows");
  return score_predictions(labels, predict(head, features), head.num_classes());
}

std::vector<int> stratified_folds(const std::vector<int>& labels, int num_classes, int folds, std::uint64_t seed) {
  if (folds < 2)
    throw Error(ErrorKind::kArgument, "probe: cross-validation needs at least 2 folds, got " + std::to_string(folds));
  check_labels(labels, num_classes);
  std::vector<int> fold(labels.size(), 0);
  int next = 0;
  for (const auto& members : shuffled_classes(labels, num_classes, seed))
    for (int i : members) {
      fold[i] = next;
      next = (next + 1) % folds;
    }
  return fold;
}

HoldoutSplit stratified_holdout(const std::vector<int>& labels, int num_classes, double test_fraction,
                                std::uint64_t seed) {
  if (!(test_fraction > 0 && test_fraction < 1))
    throw Error(ErrorKind::kArgument,
                "probe: the test fraction must be in (0, 1), got " + format_number(test_fraction));
  check_labels(labels, num_classes);
  HoldoutSplit split;
  for (const auto& members : shuffled_classes(labels, num_classes, seed)) {
    const int n = static_cast<int>(members.size());
    const int n_test = n < 2 ? 0 : std::clamp(static_cast<int>(std::lround(test_fraction * n)), 1, n - 1);
    split.test.insert(split.test.end(), members.begin(), members.begin() + n_test);
    split.train.insert(split.train.end(), members.begin() + n_test, members.end());
  }
  if (split.test.empty())
    throw Error(ErrorKind::kArgument, "probe: the test split is empty: no class has 2 or more examples");
  std::sort(split.train.begin(), split.train.end());
  std::sort(split.test.begin(), split.test.end());
  return split;
}

Eigen::MatrixXd detail::select_rows(const Eigen::MatrixXd& features, const std::vector<int>& rows) {
  MatrixXd out(rows.size(), features.cols());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= features.rows())
      throw Error(ErrorKind::kArgument,
                  "probe: row " + std::to_string(rows[i]) + " is outside 0.." + std::to_string(features.rows() - 1));
    out.row(i) = features.row(rows[i]);
  }
  return out;
}

std::vector<int> detail::select_labels(const std::vector<int>& labels, const std::vector<int>& rows) {
  std::vector<int> out(rows.size());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    if (rows[i] < 0 || rows[i] >= static_cast<int>(labels.size()))
      throw Error(ErrorKind::kArgument,
                  "probe: row " + std::to_string(rows[i]) + " is outside 0.." + std::to_string(labels.size() - 1));
    out[i] = labels[rows[i]];
  }
  return out;
}

CrossValidation cross_validate(const Eigen::MatrixXd& features, const std::vector<int>& labels, int num_classes,
                               int folds, const ProbeOptions& options) {
  check_problem(features, labels, num_classes);
  check_options(options);
  if (folds < 2)
    throw Error(ErrorKind::kArgument, "probe: cross-validation needs at least 2 folds, got " + std::to_string(folds));
  const std::vector<int> count = class_counts(labels, num_classes);
  for (int k = 0; k < num_classes; ++k)
    if (count[k] < 2)
      throw Error(ErrorKind::kArgument,
                  "probe: class " + std::to_string(k) +
                      " has a single example; cross-validation needs at least 2 examples of every class");
  CrossValidation cv;
  cv.folds = std::min(folds, *std::min_element(count.begin(), count.end()));
  cv.fold = stratified_folds(labels, num_classes, cv.folds, options.seed);
  std::vector<int> predictions(labels.size(), 0);
  for (int f = 0; f < cv.folds; ++f) {
    std::vector<int> train, test;
    for (std::size_t i = 0; i < labels.size(); ++i) (cv.fold[i] == f ? test : train).push_back(static_cast<int>(i));
    ProbeOptions inner = options;
    inner.seed = derive_seed(options.seed, static_cast<std::uint64_t>(f));
    const Probe p =
        train_probe(detail::select_rows(features, train), detail::select_labels(labels, train), num_classes, inner);
    const std::vector<int> pred = predict(p.head, detail::select_rows(features, test));
    for (std::size_t i = 0; i < test.size(); ++i) predictions[test[i]] = pred[i];
    cv.fold_l2.push_back(p.l2);
    cv.fold_l2_source.push_back(p.l2_source);
  }
  cv.evaluation = score_predictions(labels, predictions, num_classes);
  return cv;
}

HoldoutEvaluation holdout_evaluate(const Eigen::MatrixXd& features, const std::vector<int>& labels, int num_classes,
                                   double test_fraction, const ProbeOptions& options) {
  check_problem(features, labels, num_classes);
  HoldoutEvaluation h;
  h.split = stratified_holdout(labels, num_classes, test_fraction, options.seed);
  ProbeOptions inner = options;
  inner.seed = derive_seed(options.seed, 0);
  h.probe = train_probe(detail::select_rows(features, h.split.train), detail::select_labels(labels, h.split.train),
                        num_classes, inner);
  h.evaluation =
      evaluate(h.probe.head, detail::select_rows(features, h.split.test), detail::select_labels(labels, h.split.test));
  return h;
}

// ---------------------------------------------------------------------------------------------------
// Saving

void write_head(const std::string& path, const Probe& probe, const std::vector<std::string>& labels,
                const std::map<std::string, std::string>& extra_metadata) {
  const LinearHead& h = probe.head;
  const Index k = h.weight.rows(), d = h.weight.cols();
  if (k < 1 || d < 1 || h.bias.size() != k)
    throw Error(ErrorKind::kArgument, path + ": the probe has no head to save", path);
  if (static_cast<Index>(labels.size()) != k)
    throw Error(ErrorKind::kArgument,
                path + ": " + std::to_string(labels.size()) + " labels for a head of " + std::to_string(k) + " classes",
                path);
  nlohmann::json id2label = nlohmann::json::object();
  for (std::size_t i = 0; i < labels.size(); ++i) {
    if (labels[i].empty()) throw Error(ErrorKind::kArgument, path + ": label " + std::to_string(i) + " is empty", path);
    id2label[std::to_string(i)] = labels[i];
  }
  if (!h.weight.allFinite() || !h.bias.allFinite())
    throw Error(ErrorKind::kArgument, path + ": the head has non-finite values", path);

  std::map<std::string, std::string> meta = {
      {"id2label", id2label.dump()},          {"pool", "cls"},
      {"l2", format_number(probe.l2)},        {"l2_source", to_string(probe.l2_source)},
      {"folds", std::to_string(probe.folds)}, {"num_examples", std::to_string(probe.num_examples)},
      {"num_classes", std::to_string(k)},     {"hidden_size", std::to_string(d)},
      {"standardization", "folded"},
  };
  for (const auto& [key, value] : extra_metadata)
    if (!meta.emplace(key, value).second)
      throw Error(ErrorKind::kArgument, path + ": metadata key '" + key + "' is reserved by write_head", path);

  using RowMajorMatrixXf = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const RowMajorMatrixXf w = h.weight.cast<float>();
  const Eigen::VectorXf b = h.bias.cast<float>();
  write_safetensors(
      path, {TensorData::f32("classifier.weight", {k, d}, w.data()), TensorData::f32("classifier.bias", {k}, b.data())},
      meta);
}

}  // namespace vitmsn
