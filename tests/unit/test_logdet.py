"""Stochastic log-determinant (Lanczos quadrature) and Hutchinson traces against exact values.

Oracles are dense: numpy.linalg.slogdet / eigh of small matrices, and S = H B Hᵀ + R formed
from ``problem.H.jacobian_local()``, ``B.dense()`` and ``R.variance()`` of a tiny twin case.
A stochastic estimate must lie within 4 of its own standard errors of the exact value (over a
few seeds); the quadrature itself must be exact per probe once the Lanczos steps span the space.
"""

from __future__ import annotations

import numpy as np
import pytest

from inversion.config import load_config
from inversion.logdet import (
    Derivative,
    Estimate,
    MatrixFreeMarginal,
    observation_probes,
    rademacher,
    slq_logdet,
)
from inversion.parallel import SerialComm, partition
from inversion.problem import build_problem
from tests.casegen import make_case

SE_BOUND = 4.0  # |estimate − exact| ≤ 4 standard errors (false alarm ≈ 6e-5 per comparison)


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Tiny twin: 4 periods × 6 regions + 3 offsets = 27 elements, 120 observations."""
    case = make_case(tmp_path_factory.mktemp("logdet"), seed=3, blocks="[2, 3]", period_days=2,
                     hours="[2, 4, 6, 8, 10]")
    return build_problem(load_config(case), SerialComm())


@pytest.fixture(scope="module")
def dense(problem):
    H = problem.H.jacobian_local()
    B = problem.B.dense()
    r = problem.R.variance()
    S = H @ B @ H.T + np.diag(r)
    return H, B, r, S


def _spd(rng, n, cond):
    """Random SPD matrix with eigenvalues log-spaced in [1, cond] (like I + G)."""
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return (Q * np.logspace(0, np.log10(cond), n)) @ Q.T


def test_rademacher_probes():
    z = rademacher(np.random.default_rng(0), 50, 7)
    assert z.shape == (50, 7) and z.dtype == np.float64
    assert set(np.unique(z)) == {-1.0, 1.0}


def test_quadrature_is_exact_per_probe_when_lanczos_spans_the_space():
    rng = np.random.default_rng(1)
    A = _spd(rng, 30, 1e3)
    w, V = np.linalg.eigh(A)
    logA = (V * np.log(w)) @ V.T
    z = rademacher(rng, 30, 3)
    est = slq_logdet(lambda v: A @ v, z, steps=30)
    np.testing.assert_allclose(est.samples, np.einsum("ik,ij,jk->k", z, logA, z), rtol=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_slq_matches_slogdet_within_its_standard_error(seed):
    rng = np.random.default_rng(seed)
    A = _spd(rng, 200, 1e4)
    exact = np.linalg.slogdet(A)[1]
    est = slq_logdet(lambda v: A @ v, rademacher(rng, 200, 30), steps=40)
    assert est.stderr > 0
    assert abs(est.value - exact) <= SE_BOUND * est.stderr, (est.value, exact, est.stderr)


def test_standard_error_shrinks_with_the_number_of_probes():
    """SE ∝ 1/√p: 16× the probes must give a much smaller standard error (expected ratio 1/4)."""
    rng = np.random.default_rng(5)
    A = _spd(rng, 100, 1e3)
    few = slq_logdet(lambda v: A @ v, rademacher(rng, 100, 8), steps=30)
    many = slq_logdet(lambda v: A @ v, rademacher(rng, 100, 128), steps=30)
    assert 0.1 < many.stderr / few.stderr < 0.5


def test_estimate_needs_two_probes():
    with pytest.raises(ValueError, match="at least 2"):
        Estimate.from_samples(np.array([1.0]))
    e = Estimate.from_samples(np.array([1.0, 3.0]))
    assert e.value == 2.0 and e.stderr == pytest.approx(np.sqrt(2.0) / np.sqrt(2.0))


def test_observation_probes_do_not_depend_on_the_rank_split():
    seed = np.random.SeedSequence(42)
    full = observation_probes(seed, 101, 5, (0, 101))
    for size in (2, 3):
        parts = [observation_probes(seed, 101, 5, partition(101, size, r)) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate(parts), full)


def test_matrix_free_solve_matches_dense(problem, dense):
    _, _, _, S = dense
    mf = MatrixFreeMarginal(problem, tol=1e-12, max_iter=500)
    D = np.random.default_rng(0).standard_normal((problem.n_obs, 3)) * np.sqrt(problem.R.variance())[:, None]
    np.testing.assert_allclose(mf.solve(D), np.linalg.solve(S, D), rtol=1e-7, atol=1e-7 * np.abs(np.linalg.solve(S, D)).max())
    assert mf.converged


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logdet_of_S_within_its_standard_error(problem, dense, seed):
    _, _, _, S = dense
    exact = np.linalg.slogdet(S)[1]
    mf = MatrixFreeMarginal(problem, tol=1e-10, max_iter=500)
    est = mf.logdet(rademacher(np.random.default_rng(seed), problem.B.size, 24), steps=27)
    assert abs(est.value - exact) <= SE_BOUND * est.stderr, (est.value, exact, est.stderr)
    assert abs(est.value - exact) < 0.02 * abs(exact)


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_traces_within_their_standard_errors(problem, dense, seed):
    """tr(S⁻¹ ∂S) for a B-derivative (∂B = B restricted to the flux block) and an R-derivative
    (∂R = R on the first site's observations), against dense traces."""
    H, B, r, S = dense
    n_flux = problem.state.n_flux
    dB = np.zeros_like(B)
    dB[:n_flux, :n_flux] = B[:n_flux, :n_flux]
    mask = (problem.obs["site"].values == "AAA").astype(float)
    dR = 2.0 * r * mask
    Sinv = np.linalg.inv(S)  # test oracle only
    exact = [np.trace(Sinv @ H @ dB @ H.T), np.sum(np.diag(Sinv) * dR)]
    mf = MatrixFreeMarginal(problem, tol=1e-12, max_iter=500)
    Z = observation_probes(np.random.SeedSequence(seed), problem.n_obs, 64, problem.obs_range)
    est = mf.trace_inverse_derivatives(Z, mf.solve(Z), [Derivative(dB=lambda X: dB @ X), Derivative(dR=dR)])
    assert np.all(est.stderr > 0)
    assert np.all(np.abs(est.value - exact) <= SE_BOUND * est.stderr), (est.value, exact, est.stderr)


def test_quadrature_change_flags_too_few_lanczos_steps():
    """With too few steps the quadrature is biased beyond the standard error; the reported
    change between 3k/4 and k nodes shows it, and vanishes once the steps suffice."""
    rng = np.random.default_rng(7)
    A = _spd(rng, 150, 1e3)
    exact = np.linalg.slogdet(A)[1]
    probes = rademacher(rng, 150, 32)
    short = slq_logdet(lambda v: A @ v, probes, steps=5)
    assert abs(short.value - exact) > SE_BOUND * short.stderr  # the bias the SE does not contain
    assert abs(short.quadrature_change) > short.stderr
    long = slq_logdet(lambda v: A @ v, probes, steps=40)
    assert abs(long.quadrature_change) < long.stderr
    assert abs(long.value - exact) <= SE_BOUND * long.stderr
