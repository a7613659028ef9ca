#pragma once
// The L-BFGS solver the probes fit with (probe.cpp): a general optimiser, not ViT-MSN API, so not in
// include/vitmsn/ (its settings and result, LbfgsOptions and LbfgsResult, are: ProbeOptions::solver,
// Probe::solver). Tests and programs reach it here (vitmsn_probe).

#include <Eigen/Core>
#include <functional>

#include "vitmsn/probe.hpp"

namespace vitmsn::detail {

/// An objective: returns f(x) and writes ∇f(x) into `gradient` (already sized like x). A
/// non-finite value is treated by the line search as "too far" (the step is shortened).
using Objective = std::function<double(const Eigen::VectorXd& x, Eigen::VectorXd& gradient)>;

/// Minimises `objective` from `x0` by limited-memory BFGS: two-loop recursion with the scaling
/// γ = sᵀy / yᵀy, a strong-Wolfe line search (bracketing, then zoom by safeguarded cubic
/// interpolation; Nocedal & Wright, Numerical Optimization, algorithms 3.5/3.6), first step
/// min(1, 1/‖g‖), pairs with sᵀy ≤ ε·yᵀy not stored, memory reset to steepest descent when a
/// search fails. Every accepted step satisfies sufficient decrease, so `history` never increases.
/// \throws Error on invalid options or a non-finite f or ∇f at x0.
LbfgsResult minimize_lbfgs(const Objective& objective, Eigen::VectorXd x0, const LbfgsOptions& options = {});

}  // namespace vitmsn::detail
