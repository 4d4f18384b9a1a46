"""Covariances (inversion.covariance) and their dense kernels (inversion.linalg)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse.linalg

from inversion import linalg
from inversion.covariance import (
    BlockDiagonal,
    Covariance,
    Dense,
    Diagonal,
    Kronecker,
    exponential_correlation,
    scaled_correlation,
)
from inversion.linalg import CovarianceError, cholesky_lower, solve_lower, solve_upper_T
from inversion.testing import check_covariance


def _pairwise(points: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)


def _time_covariance(n_t: int) -> Dense:
    """Monthly periods, σ = 0.5 (scaling factor), correlation length 2 months."""
    months = np.arange(n_t, dtype=float)
    return scaled_correlation(
        np.full(n_t, 0.5), exponential_correlation(np.abs(months[:, None] - months[None, :]), 2.0), name="time"
    )


def _space_covariance(rng: np.random.Generator, n_s: int) -> Dense:
    """Regions at random points in a 500 km square, σ in [0.3, 1.5], correlation length 200 km."""
    points = rng.uniform(0.0, 500.0, size=(n_s, 2))
    sigma = rng.uniform(0.3, 1.5, n_s)
    return scaled_correlation(sigma, exponential_correlation(_pairwise(points), 200.0), name="space")


FACTORIES = {
    "diagonal": lambda rng: Diagonal(rng.uniform(0.5, 2.0, 7)),
    "dense": lambda rng: _space_covariance(rng, 6),
    "kronecker": lambda rng: Kronecker(_time_covariance(4), _space_covariance(rng, 5)),
    "kronecker_diagonal_time": lambda rng: Kronecker(Diagonal([0.5, 1.0, 2.0]), _space_covariance(rng, 4)),
    "kronecker_nested": lambda rng: Kronecker(
        Diagonal([1.0, 3.0]), Kronecker(_time_covariance(3), _space_covariance(rng, 3))
    ),
    "block": lambda rng: BlockDiagonal(
        [Kronecker(_time_covariance(3), _space_covariance(rng, 4)), Diagonal([0.01, 0.04]), _space_covariance(rng, 3)]
    ),
}


@pytest.fixture(params=sorted(FACTORIES))
def cov(request) -> Covariance:
    return FACTORIES[request.param](np.random.default_rng(20240601))


def test_conformance(cov):
    # check_covariance includes check_linear_operator on operator() and sqrt_operator().
    check_covariance(cov, np.random.default_rng(1))


def test_operators_work_in_scipy(cov):
    rng = np.random.default_rng(2)
    b = rng.standard_normal(cov.size)
    x, info = scipy.sparse.linalg.cg(cov.operator(), b, rtol=1e-13, maxiter=10 * cov.size)
    assert info == 0
    np.testing.assert_allclose(x, cov.solve(b), rtol=1e-9, atol=0)
    root = cov.sqrt_operator()
    np.testing.assert_allclose(root.T.matvec(b), cov.sqrt_T(b), rtol=1e-14, atol=0)
    np.testing.assert_allclose((root @ root.T).matvec(b), cov.apply(b), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [None, 3])
def test_kronecker_matches_dense_kron(k):
    rng = np.random.default_rng(3)
    time, space = _time_covariance(4), _space_covariance(rng, 5)
    cov = Kronecker(time, space)
    b_t, b_s = time.dense(), space.dense()
    b = np.kron(b_t, b_s)
    root = np.kron(np.linalg.cholesky(b_t), np.linalg.cholesky(b_s))
    x = rng.standard_normal(20 if k is None else (20, k))

    np.testing.assert_allclose(cov.apply(x), b @ x, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov.sqrt(x), root @ x, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov.sqrt_T(x), root.T @ x, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov.solve(x), np.linalg.solve(b, x), rtol=1e-11, atol=0)
    np.testing.assert_allclose(cov.variance(), np.diag(b), rtol=1e-15)
    np.testing.assert_allclose(cov.logdet(), np.linalg.slogdet(b)[1], rtol=1e-12)
    np.testing.assert_array_equal(cov.dense(), b)


def test_kronecker_state_is_time_major():
    # index = t * n_space + s: the space index varies fastest.
    cov = Kronecker(Diagonal([1.0, 10.0]), Diagonal([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(cov.variance(), [1.0, 2.0, 3.0, 10.0, 20.0, 30.0])
    np.testing.assert_array_equal(cov.apply(np.eye(6)[:, 4]), np.eye(6)[:, 4] * 20.0)


@pytest.mark.parametrize("k", [None, 2])
def test_block_diagonal_matches_block_diag(k):
    rng = np.random.default_rng(4)
    blocks = [_space_covariance(rng, 3), Diagonal([0.1, 0.2]), Kronecker(_time_covariance(2), _space_covariance(rng, 2))]
    cov = BlockDiagonal(blocks)
    b = scipy.linalg.block_diag(*(block.dense() for block in blocks))
    # Each block's L is its lower Cholesky factor (for Kronecker, L_t ⊗ L_s is lower triangular).
    root = scipy.linalg.block_diag(*(np.linalg.cholesky(block.dense()) for block in blocks))
    x = rng.standard_normal(9 if k is None else (9, k))

    np.testing.assert_allclose(cov.apply(x), b @ x, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov.sqrt(x), root @ x, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov.sqrt_T(x), root.T @ x, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(cov.solve(x), np.linalg.solve(b, x), rtol=1e-11, atol=0)
    np.testing.assert_allclose(cov.variance(), np.diag(b), rtol=1e-15)
    np.testing.assert_allclose(cov.logdet(), np.linalg.slogdet(b)[1], rtol=1e-12)
    np.testing.assert_array_equal(cov.dense(), b)


def test_dense_and_diagonal_match_their_matrices():
    rng = np.random.default_rng(5)
    matrix = _space_covariance(rng, 5).dense()
    dense = Dense(matrix)
    np.testing.assert_array_equal(dense.dense(), matrix)
    np.testing.assert_allclose(dense.sqrt(np.eye(5)), np.linalg.cholesky(matrix), rtol=1e-13, atol=1e-15)
    diagonal = Diagonal([4.0, 9.0])
    np.testing.assert_array_equal(diagonal.dense(), np.diag([4.0, 9.0]))
    np.testing.assert_array_equal(diagonal.sqrt(np.ones(2)), [2.0, 3.0])
    assert diagonal.logdet() == pytest.approx(np.log(36.0), rel=1e-15)


def test_samples_have_covariance_b(cov):
    n_draws = 20_000
    b = cov.dense()
    z = cov.sample(np.random.default_rng(6), n_draws)
    assert z.shape == (cov.size, n_draws)
    # Mean is known (0), so S = Z Zᵀ / N is unbiased with standard error
    # se(S_ij) = sqrt((B_ii B_jj + B_ij²) / N) for Gaussian draws; allow 5 standard errors.
    sample_cov = z @ z.T / n_draws
    var = np.diag(b)
    standard_error = np.sqrt((np.outer(var, var) + b**2) / n_draws)
    assert np.all(np.abs(sample_cov - b) <= 5 * standard_error)
    assert np.all(np.abs(z.mean(axis=1)) <= 5 * np.sqrt(var / n_draws))


def test_sample_depends_only_on_the_generator():
    cov = Kronecker(_time_covariance(3), Diagonal([1.0, 2.0]))
    first = cov.sample(np.random.default_rng(7))
    np.testing.assert_array_equal(first, cov.sample(np.random.default_rng(7)))
    assert not np.array_equal(first, cov.sample(np.random.default_rng(8)))
    with pytest.raises(TypeError, match="numpy.random.Generator"):
        cov.sample(7)


def test_non_positive_definite_dense_names_the_matrix():
    with pytest.raises(CovarianceError, match=r"prior B is not positive definite \(Cholesky failed at a leading minor"):
        Dense([[1.0, 2.0], [2.0, 1.0]], name="prior B")


def test_duplicated_element_is_reported_even_when_lapack_succeeds():
    # Seven points, the last a copy of the third: the correlation matrix is exactly singular,
    # but LAPACK returns a factor with a rounding-noise pivot (checked below).
    points = np.random.default_rng(0).uniform(0.0, 10.0, size=(6, 2))
    correlation = exponential_correlation(_pairwise(np.vstack([points, points[2:3]])), 3.0)
    assert np.min(np.diag(scipy.linalg.cholesky(correlation, lower=True))) ** 2 < 1e-14
    with pytest.raises(CovarianceError, match="space B is numerically singular.*duplicated elements"):
        Dense(correlation, name="space B")


@pytest.mark.parametrize(
    "matrix, message",
    [
        ([[1.0, 0.5], [0.4, 1.0]], "B_x is not symmetric"),
        ([[1.0, np.nan], [np.nan, 1.0]], "B_x has 2 non-finite entries"),
        ([[1.0, 0.0, 0.0]], "B_x must be a non-empty square matrix"),
    ],
)
def test_invalid_dense_input(matrix, message):
    with pytest.raises(CovarianceError, match=message):
        Dense(matrix, name="B_x")


def test_nearly_symmetric_dense_is_symmetrised():
    matrix = np.array([[2.0, 0.5], [0.5 * (1 + 1e-13), 1.0]])
    cov = Dense(matrix)
    b = cov.dense()
    assert b[0, 1] == b[1, 0]
    check_covariance(cov, np.random.default_rng(9))


@pytest.mark.parametrize(
    "variance, message",
    [
        ([1.0, 0.0, 2.0], "1 of 3 variances are not finite and > 0 \\(first at index 1"),
        ([1.0, 2.0, -1.0, -3.0], "2 of 4 variances are not finite and > 0 \\(first at index 2"),
        ([np.nan, 1.0], "1 of 2 variances are not finite and > 0 \\(first at index 0"),
        ([np.inf], "1 of 1 variances"),
    ],
)
def test_invalid_variances(variance, message):
    with pytest.raises(CovarianceError, match=f"bc_scaling: {message}"):
        Diagonal(variance, name="bc_scaling")


@pytest.mark.parametrize("length", [0.0, -1.0, np.nan, np.inf])
def test_invalid_correlation_length(length):
    with pytest.raises(ValueError, match="correlation length must be > 0, got"):
        exponential_correlation(np.zeros((2, 2)), length)


def test_invalid_distances():
    with pytest.raises(ValueError, match="distances must be finite and >= 0: 1 are not"):
        exponential_correlation(np.array([[0.0, -1.0], [1.0, 0.0]]), 1.0)


def test_exponential_correlation_values():
    d = np.array([0.0, 100.0, 250.0])
    np.testing.assert_allclose(exponential_correlation(d, 100.0), [1.0, np.exp(-1.0), np.exp(-2.5)], rtol=1e-15)


def test_exponential_correlation_is_positive_definite_on_the_sphere_and_in_3d():
    rng = np.random.default_rng(10)
    lat = np.deg2rad(rng.uniform(-60.0, 60.0, 40))
    lon = np.deg2rad(rng.uniform(-180.0, 180.0, 40))
    cos_angle = np.sin(lat)[:, None] * np.sin(lat)[None, :] + np.cos(lat)[:, None] * np.cos(lat)[None, :] * np.cos(
        lon[:, None] - lon[None, :]
    )
    great_circle_km = 6371.0 * np.arccos(np.clip(cos_angle, -1.0, 1.0))
    points_3d = rng.uniform(0.0, 1.0, size=(40, 3))
    for distance, length in ((great_circle_km, 3000.0), (_pairwise(points_3d), 0.5)):
        correlation = exponential_correlation(distance, length)
        assert np.linalg.eigvalsh(correlation)[0] > 0
        check_covariance(Dense(correlation), rng, rtol=1e-11)


def test_scaled_correlation():
    sigma = np.array([1.0, 2.0, 3.0])
    correlation = exponential_correlation(np.abs(np.subtract.outer(np.arange(3.0), np.arange(3.0))), 1.0)
    cov = scaled_correlation(sigma, correlation, name="flux")
    assert cov.name == "flux"
    np.testing.assert_allclose(cov.dense(), np.diag(sigma) @ correlation @ np.diag(sigma), rtol=1e-15)
    with pytest.raises(CovarianceError, match="flux: 1 of 3 standard deviations are not finite and > 0"):
        scaled_correlation([1.0, 0.0, 1.0], correlation, name="flux")
    with pytest.raises(ValueError, match="flux: the correlation matrix must have a unit diagonal"):
        scaled_correlation(sigma, 4.0 * correlation, name="flux")
    with pytest.raises(ValueError, match="flux: 2 standard deviations but a correlation matrix of shape"):
        scaled_correlation(sigma[:2], correlation, name="flux")


def test_wrong_input_shapes_and_types():
    cov = Kronecker(Diagonal([1.0, 2.0]), Diagonal([1.0, 2.0, 3.0]), name="flux B")
    with pytest.raises(ValueError, match=r"flux B: expected an array of shape \(6,\) or \(6, k\), got \(5,\)"):
        cov.apply(np.ones(5))
    with pytest.raises(ValueError, match="expected an array"):
        cov.solve(np.ones((6, 2, 2)))
    with pytest.raises(TypeError, match="the space factor must be a Covariance"):
        Kronecker(Diagonal([1.0]), np.eye(2))
    with pytest.raises(ValueError, match="needs at least one block"):
        BlockDiagonal([])


def test_triangular_solves():
    rng = np.random.default_rng(11)
    factor = np.linalg.cholesky(_space_covariance(rng, 5).dense())
    for b in (rng.standard_normal(5), rng.standard_normal((5, 2))):
        np.testing.assert_allclose(factor @ solve_lower(factor, b), b, rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(factor.T @ solve_upper_T(factor, b), b, rtol=1e-13, atol=1e-14)


def test_large_cholesky_runs_single_threaded(monkeypatch):
    matrix = _space_covariance(np.random.default_rng(12), 6).dense()
    calls = []

    def recording_limits(limits, user_api):
        calls.append((limits, user_api))
        return contextlib.nullcontext()

    monkeypatch.setattr(linalg, "threadpool_limits", recording_limits)
    monkeypatch.setattr(linalg, "SINGLE_THREAD_CHOLESKY_N", 6)
    np.testing.assert_allclose(cholesky_lower(matrix, name="B"), np.linalg.cholesky(matrix), rtol=1e-13, atol=1e-15)
    assert calls == [(1, "blas")]
    cholesky_lower(matrix[:5, :5], name="B")
    assert calls == [(1, "blas")]
