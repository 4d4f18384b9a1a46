"""Twin experiments: statistical properties of the analytical posterior over many draws.

Construction.  ``inversion.twin`` makes a case's data as

    x_t = x_b + L z, z ~ N(0, I)   (a draw from B),    y = H x_t + ε, ε ~ N(0, R),

where y is what the solvers see (value − background − K f_fixed).  Regenerating a case per
seed costs ~1 s, so instead we keep ONE case's H, B, R and x_b and make many twins of exactly
that construction ourselves — x_t = x_b + ``problem.B.sample(rng)``, ε = √R ⊙ N(0, I) — and
solve each with the analytical solver on the problem with y replaced.  A first test checks
that the case's own generated truth and observations fit this construction.  Two cases are
used: 72 observations > 27 state elements (state-space form) and 12 < 27 (observation form).

When the error statistics are right, for every draw:
  * e_a = x_a − x_t ~ N(0, A), so e_aᵀ A⁻¹ e_a ~ χ²(n) and each component of C⁻¹ e_a
    (A = C Cᵀ) is an independent N(0, 1); e_b = x_b − x_t ~ N(0, B), e_bᵀ B⁻¹ e_b ~ χ²(n);
  * d = y − H x_b ~ N(0, H B Hᵀ + R), so χ² = dᵀ(H B Hᵀ + R)⁻¹d ~ χ²(n_obs);
  * x_t,i lies in x_a,i ± z σ_a,i with probability 0.95 (z = 1.96) or 0.68 (z = 0.994).

Coverage over (element, draw) pairs: pairs within a draw are correlated (posterior errors
are), so the number of pairs overstates the information.  The fraction f is the mean over N
independent draws of per-draw fractions f_j ∈ [0, 1] with mean p, and var f_j ≤ p(1 − p), so
binomial bounds with N trials are conservative for f; we use those (two-sided 99.9 %).  The
whitened components are independent, so for them binomial bounds over all pairs are exact.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from inversion import solvers
from inversion.aggregates import region_totals
from inversion.config import load_config
from inversion.covariance import Diagonal
from inversion.parallel import SerialComm
from inversion.problem import Problem, build_problem, read_truth

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

N_DRAWS = 300
ALPHA = 1e-3  # two-sided level of every sampling bound below
CASES = {
    "state-form-72obs": {"seed": 21, "blocks": "[2, 3]", "period_days": 2},
    "observation-form-12obs": {"seed": 22, "blocks": "[2, 3]", "period_days": 1, "hours": "[6]",
                               "end": "2024-07-05T00:00:00Z"},
}


def binomial_bounds(p: float, trials: int) -> tuple[float, float]:
    """Two-sided 1 − ALPHA sampling interval of a binomial fraction."""
    return (stats.binom.ppf(ALPHA / 2, trials, p) / trials, stats.binom.isf(ALPHA / 2, trials, p) / trials)


def chi2_bounds(dof: int, alpha: float = ALPHA) -> tuple[float, float]:
    return float(stats.chi2.ppf(alpha / 2, dof)), float(stats.chi2.isf(alpha / 2, dof))


def z_of(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


@dataclass
class Draws:
    problem: Problem
    x_t: np.ndarray          # (N, n)
    x_a: np.ndarray          # (N, n)
    A: np.ndarray            # (n, n), identical for every draw
    sd_a: np.ndarray         # (n,)
    chi2: np.ndarray         # (N,)
    chi2_per_obs: np.ndarray  # (N,)
    chi2_per_obs_95: tuple[float, float]
    dofs: float
    totals_true: np.ndarray  # (N, n_agg)
    totals_post: np.ndarray  # (N, n_agg)
    totals_sd: np.ndarray    # (n_agg,)
    form: str


def run_twins(problem: Problem, rng: np.random.Generator, *, r_scale: float = 1.0) -> Draws:
    """N twins drawn with the case's R; the inversion uses R / r_scale."""
    inversion = problem if r_scale == 1.0 else dataclasses.replace(
        problem, R=Diagonal(problem.R.variance() / r_scale, name="R (misspecified)"))
    sigma_obs = np.sqrt(problem.R.variance())
    agg = region_totals(problem.state)
    x_t, x_a, chi2, chi2_n, tt, tp = [], [], [], [], [], []
    A = totals_cov = diag = None
    for _ in range(N_DRAWS):
        truth = problem.x_b + problem.B.sample(rng)
        y = problem.H.matvec(truth) + sigma_obs * rng.standard_normal(problem.n_obs)
        post = solvers.solve_analytical(dataclasses.replace(inversion, y=y))
        cov = post.covariance.dense()
        if A is None:
            A, diag = cov, post.diagnostics
        else:
            np.testing.assert_array_equal(cov, A)  # A does not depend on the data
        totals = post.aggregate(agg)
        totals_cov = totals["posterior_cov"]
        x_t.append(truth)
        x_a.append(post.x_a)
        chi2.append(post.diagnostics["chi2"])
        chi2_n.append(post.diagnostics["chi2_per_obs"])
        tt.append(agg.offset + agg.matrix @ truth)
        tp.append(totals["posterior"])
    return Draws(problem=problem, x_t=np.array(x_t), x_a=np.array(x_a), A=A, sd_a=np.sqrt(np.diag(A)),
                 chi2=np.array(chi2), chi2_per_obs=np.array(chi2_n), chi2_per_obs_95=tuple(diag["chi2_per_obs_95"]),
                 dofs=diag["dofs"], totals_true=np.array(tt), totals_post=np.array(tp),
                 totals_sd=np.sqrt(np.diag(totals_cov)), form=diag["form"])


_PROBLEMS: dict[str, Problem] = {}


def case_problem(name: str, tmp_path_factory) -> Problem:
    """The tiny case ``name``, generated once per session."""
    if name not in _PROBLEMS:
        case = make_case(tmp_path_factory.mktemp(name), **CASES[name])
        _PROBLEMS[name] = build_problem(load_config(case), SerialComm())
    return _PROBLEMS[name]


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def problem(request, tmp_path_factory) -> Problem:
    return case_problem(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def draws(problem) -> Draws:
    return run_twins(problem, np.random.default_rng(314159))


@pytest.fixture(scope="module")
def misspecified(tmp_path_factory) -> Draws:
    """Truth noise from R, but the inversion believes R / 4 (errors half as large).

    On the 72-observation case: 72 receptors see only 27 state elements, so in at least 45
    directions of observation space the departures are pure noise and a wrong R shows.  (On
    the 12-observation case H B Hᵀ ≫ R in every direction — the prior spread of the fluxes seen
    at 12 receptors is far larger than the noise — so shrinking R barely changes the
    statistics of d, and no test could see it.)"""
    problem = case_problem("state-form-72obs", tmp_path_factory)
    H = problem.H.jacobian_local()
    HBH = H @ problem.B.apply(np.ascontiguousarray(H.T))
    R = problem.R.dense()
    expected = np.trace(np.linalg.solve(HBH + R / 4, HBH + R)) / problem.n_obs  # E[χ²/n] as misspecified
    assert expected > 2.0  # the case can show the misspecification
    return run_twins(problem, np.random.default_rng(271828), r_scale=4.0)


# ---- the construction ------------------------------------------------------------------------


def test_case_data_follow_the_twin_construction(problem):
    """The generated case is y = H x_t + ε with x_t its stored truth and ε ~ N(0, R)."""
    truth = read_truth(problem.config, problem.state)
    residual = (problem.y - problem.H.matvec(truth)) / np.sqrt(problem.R.variance())
    lo, hi = chi2_bounds(problem.n_obs)
    assert lo <= residual @ residual <= hi
    prior = problem.B.solve(truth - problem.x_b) @ (truth - problem.x_b)
    lo, hi = chi2_bounds(problem.state.size)
    assert lo <= prior <= hi


def test_solver_form(draws):
    expected = "state" if draws.problem.state.size <= draws.problem.n_obs else "observation"
    assert draws.form == expected


# ---- correctly specified errors -----------------------------------------------------------


def test_posterior_error_below_prior_error(draws):
    p = draws.problem
    n = p.state.size
    e_a = draws.x_a - draws.x_t
    e_b = p.x_b - draws.x_t
    post_b = np.einsum("ij,ji->i", e_a, p.B.solve(e_a.T))  # e_aᵀ B⁻¹ e_a per draw
    prior_b = np.einsum("ij,ji->i", e_b, p.B.solve(e_b.T))
    assert post_b.mean() < prior_b.mean()
    assert np.mean(post_b < prior_b) > 0.9
    # Each at its expected size: E[e_bᵀB⁻¹e_b] = n exactly (sum over draws ~ χ²(nN)) ...
    lo, hi = chi2_bounds(n * N_DRAWS)
    assert lo <= prior_b.sum() <= hi
    # ... and E[e_aᵀB⁻¹e_a] = trace(B⁻¹A) = n − DOFS, sd per draw √(2 trace((B⁻¹A)²)).
    BinvA = p.B.solve(draws.A)
    assert np.trace(BinvA) == pytest.approx(n - draws.dofs, rel=1e-8)
    se = np.sqrt(2 * np.trace(BinvA @ BinvA) / N_DRAWS)
    assert abs(post_b.mean() - (n - draws.dofs)) <= 4 * se


def test_posterior_errors_are_distributed_as_A(draws):
    """e_a ~ N(0, A): Σ_draws e_aᵀA⁻¹e_a ~ χ²(nN), and whitened components are N(0, 1)."""
    n = draws.problem.state.size
    C = np.linalg.cholesky(draws.A)
    white = np.linalg.solve(C, (draws.x_a - draws.x_t).T)  # (n, N), independent N(0, 1)
    lo, hi = chi2_bounds(n * N_DRAWS)
    assert lo <= np.sum(white**2) <= hi
    for level in (0.95, 0.68):
        inside = np.mean(np.abs(white) <= z_of(level))
        lo, hi = binomial_bounds(level, white.size)
        assert lo <= inside <= hi, f"{level:.0%} whitened coverage {inside:.4f} outside [{lo:.4f}, {hi:.4f}]"


def test_chi2_per_obs_within_sampling_bounds(draws):
    m = draws.problem.n_obs
    lo, hi = (b / m for b in chi2_bounds(m, alpha=0.01))  # 99 % sampling interval of χ²/n
    inside = np.mean((draws.chi2_per_obs >= lo) & (draws.chi2_per_obs <= hi))
    assert inside >= binomial_bounds(0.99, N_DRAWS)[0] >= 0.95
    # The 95 % interval the solver reports holds χ²/n in 95 % of the draws.
    lo95, hi95 = draws.chi2_per_obs_95
    assert (lo95, hi95) == pytest.approx(tuple(b / m for b in chi2_bounds(m, alpha=0.05)), rel=1e-12)
    inside95 = np.mean((draws.chi2_per_obs >= lo95) & (draws.chi2_per_obs <= hi95))
    lo, hi = binomial_bounds(0.95, N_DRAWS)
    assert lo <= inside95 <= hi
    # And the mean of χ² is n_obs (sum over draws ~ χ²(n_obs N)).
    lo, hi = chi2_bounds(m * N_DRAWS)
    assert lo <= draws.chi2.sum() <= hi


@pytest.mark.parametrize("level", [0.95, 0.68])
def test_state_coverage(draws, level):
    inside = np.mean(np.abs(draws.x_a - draws.x_t) <= z_of(level) * draws.sd_a)
    lo, hi = binomial_bounds(level, N_DRAWS)  # conservative: N draws, not N·n pairs
    assert lo <= inside <= hi, f"{level:.0%} coverage {inside:.4f} outside [{lo:.4f}, {hi:.4f}]"


@pytest.mark.parametrize("level", [0.95, 0.68])
def test_region_total_coverage(draws, level):
    """Region totals (every region and ALL, per period and whole run) in mol s⁻¹."""
    inside = np.mean(np.abs(draws.totals_post - draws.totals_true) <= z_of(level) * draws.totals_sd)
    lo, hi = binomial_bounds(level, N_DRAWS)
    assert lo <= inside <= hi, f"{level:.0%} coverage of totals {inside:.4f} outside [{lo:.4f}, {hi:.4f}]"


# ---- misspecified errors are detected --------------------------------------------------------


def test_misspecified_R_is_detected_by_chi2(misspecified):
    m = misspecified.problem.n_obs
    lo, hi = (b / m for b in chi2_bounds(m, alpha=0.01))
    chi = misspecified.chi2_per_obs
    inside = np.mean((chi >= lo) & (chi <= hi))
    assert inside < 0.5
    assert np.median(chi) > hi
    assert np.mean(chi > misspecified.chi2_per_obs_95[1]) > 0.5


def test_misspecified_R_gives_overconfident_posterior(misspecified):
    inside = np.mean(np.abs(misspecified.x_a - misspecified.x_t) <= z_of(0.95) * misspecified.sd_a)
    assert inside < 0.9
    assert inside < binomial_bounds(0.95, N_DRAWS)[0] - 0.03
    totals = np.mean(np.abs(misspecified.totals_post - misspecified.totals_true)
                     <= z_of(0.95) * misspecified.totals_sd)
    assert totals < 0.9
    n = misspecified.problem.state.size
    white = np.linalg.solve(np.linalg.cholesky(misspecified.A), (misspecified.x_a - misspecified.x_t).T)
    assert np.sum(white**2) > 1.5 * chi2_bounds(n * N_DRAWS)[1]
