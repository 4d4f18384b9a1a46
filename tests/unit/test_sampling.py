"""Monte Carlo posterior samples (inversion.sampling) from the exact and the low-rank posterior.

The square roots are checked exactly (S Sᵀ = A to rounding), and the samples statistically:
the sample covariance Ĉ of N draws of N(x_a, A) has var(Ĉ_ij) = (A_ij² + A_ii A_jj)/N (Wishart),
so every entry must lie within 5 of those standard deviations of A_ij (≈ 400 distinct entries,
false alarm < 1e-3 in all), and the sample mean within 5 σ_i/√N of x_a.  A derived quantity
with a known answer (the probability that a total exceeds a threshold) must match the normal
CDF within 5 Monte Carlo standard errors.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from scipy import stats

from inversion.aggregates import region_totals
from inversion.config import load_config
from inversion.parallel import SerialComm
from inversion.posterior import DensePosteriorCovariance, Posterior
from inversion.problem import build_problem
from inversion.sampling import (
    aggregate_samples,
    exceedance_probability,
    posterior_samples,
    posterior_sqrt,
    summarise,
)
from inversion.solvers import solve_analytical, solve_variational
from inversion.testing import assert_allclose_rel
from tests.casegen import make_case

N_SAMPLES = 20_000
K_SIGMA = 5.0


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """4 periods × 6 regions + 3 offsets = 27 elements, 72 observations."""
    case = make_case(tmp_path_factory.mktemp("sampling"), seed=9, blocks="[2, 3]", period_days=2)
    return build_problem(load_config(case), SerialComm())


@pytest.fixture(scope="module")
def exact(problem):
    return solve_analytical(problem)


@pytest.fixture(scope="module")
def lowrank(problem):
    # a loose tolerance leaves a genuinely low-rank covariance (fewer Ritz pairs than elements)
    post = solve_variational(problem, tolerance=1e-3, max_iterations=8)
    assert post.covariance.vectors.shape[1] < problem.state.size
    return post


def _check_samples(samples: np.ndarray, mean: np.ndarray, A: np.ndarray) -> None:
    n = samples.shape[1]
    sd = np.sqrt(np.diag(A))
    assert np.all(np.abs(samples.mean(axis=1) - mean) <= K_SIGMA * sd / np.sqrt(n))
    C = np.cov(samples)
    bound = K_SIGMA * np.sqrt((A**2 + np.outer(np.diag(A), np.diag(A))) / n)
    worst = np.max(np.abs(C - A) / bound)
    assert worst <= 1.0, f"sample covariance off by {worst:.2f} × the {K_SIGMA}-sigma sampling bound"


def test_dense_square_root_is_exact(exact):
    A = exact.covariance.dense()
    S = posterior_sqrt(exact)(np.eye(A.shape[0]))
    # standardised comparison: the offsets' variances are ~1e-13 of the scaling factors'
    d = np.sqrt(np.diag(A))
    assert_allclose_rel((S @ S.T) / np.outer(d, d), A / np.outer(d, d), 1e-10, "S Sᵀ vs A (dense)")


def test_lowrank_square_root_is_the_closed_form(lowrank):
    """L (I − V diag(1 − 1/√(1+λ)) Vᵀ) squared gives L (I − V diag(λ/(1+λ)) Vᵀ) Lᵀ."""
    A = lowrank.covariance.dense()
    S = posterior_sqrt(lowrank)(np.eye(A.shape[0]))
    d = np.sqrt(np.diag(A))
    assert_allclose_rel((S @ S.T) / np.outer(d, d), A / np.outer(d, d), 1e-10, "S Sᵀ vs A (low rank)")


@pytest.mark.parametrize("which", ["exact", "lowrank"])
def test_samples_reproduce_the_posterior_covariance(which, request):
    post = request.getfixturevalue(which)
    samples = posterior_samples(post, np.random.default_rng(1), N_SAMPLES)
    assert samples.shape == (post.x_a.size, N_SAMPLES)
    _check_samples(samples, post.x_a, post.covariance.dense())


def test_the_check_detects_a_wrong_covariance(exact):
    """The sampling bound is tight enough to reject samples with variances 10 % too large."""
    A = exact.covariance.dense()
    wrong = Posterior(x_b=exact.x_b, x_a=exact.x_a, B=exact.B, covariance=DensePosteriorCovariance(1.1 * A),
                      diagnostics={})
    samples = posterior_samples(wrong, np.random.default_rng(2), N_SAMPLES)
    with pytest.raises(AssertionError, match="sampling bound"):
        _check_samples(samples, exact.x_a, A)


def test_derived_quantities_of_totals(problem, exact):
    agg = region_totals(problem.state)
    totals = exact.aggregate(agg)
    samples = aggregate_samples(agg, posterior_samples(exact, np.random.default_rng(3), N_SAMPLES))
    summary = summarise(samples)
    sd = np.sqrt(np.diag(totals["posterior_cov"]))
    assert np.all(np.abs(summary["mean"] - totals["posterior"]) <= K_SIGMA * summary["mean_stderr"])
    np.testing.assert_allclose(summary["sd"], sd, rtol=K_SIGMA / np.sqrt(2 * N_SAMPLES))
    np.testing.assert_allclose(summary["quantiles"][0.5], totals["posterior"], atol=K_SIGMA * 1.25 * sd.max() / np.sqrt(N_SAMPLES))
    # P(total > threshold) for a threshold half a σ above the mean of the domain total
    k = int(np.argmax(sd))
    threshold = totals["posterior"][k] + 0.5 * sd[k]
    p, se = exceedance_probability(samples[k], threshold)
    assert abs(p - stats.norm.sf(0.5)) <= K_SIGMA * se


def test_singular_to_rounding_covariance_is_sampled_with_a_warning(caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("tanhui"), "propagate", True)  # the CLI's setup_logging may have cut it
    v = np.array([1.0, 2.0, 3.0])
    A = np.outer(v, v) + np.diag([0.0, 1e-30, 0.0])  # rank one: Cholesky must fail
    post = Posterior(x_b=np.zeros(3), x_a=np.ones(3), B=None, covariance=DensePosteriorCovariance(A), diagnostics={})
    with caplog.at_level(logging.WARNING, logger="tanhui"):
        S = posterior_sqrt(post)(np.eye(3))
    assert "eigenvalues" in caplog.text
    np.testing.assert_allclose(S @ S.T, A, atol=1e-12)


def test_bad_arguments(exact):
    with pytest.raises(TypeError, match="Generator"):
        posterior_samples(exact, 42, 10)
    with pytest.raises(ValueError, match="n_samples"):
        posterior_samples(exact, np.random.default_rng(0), 0)
