"""The inner loop of the variational solver: the Hessian product (I + G) v against its dense
formula (its conformance as a linear operator is in test_conformance_all.py), the Kronecker
square root on the transposed-view path (trmm / GEMM without copies), and the Gram–Schmidt
re-orthogonalisation with its second pass only when needed."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inversion.config import load_config
from inversion.covariance import (
    Dense,
    Kronecker,
    _left_product,
    _triangular_product,
    exponential_correlation,
)
from inversion.krylov import DGKS_KEEP, orthogonalise
from inversion.parallel import SerialComm
from inversion.problem import build_problem
from inversion.solvers import hessian_operator

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.casegen import make_case


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Tiny twin case with background offsets (Kronecker ⊕ diagonal B, sparse H)."""
    case = make_case(tmp_path_factory.mktemp("hessian_case"), seed=5, blocks="[2, 3]", period_days=2)
    return build_problem(load_config(case), SerialComm())


def _dense_hessian(problem) -> np.ndarray:
    n = problem.B.size
    L = problem.B.sqrt(np.eye(n))
    H = problem.H.jacobian_local()
    return np.eye(n) + L.T @ H.T @ (H @ L / problem.R.variance()[:, None])


def test_hessian_product_equals_the_dense_formula_for_vectors_and_blocks(problem):
    rng = np.random.default_rng(0)
    reference = _dense_hessian(problem)
    apply = hessian_operator(problem, 1.0 / problem.R.variance())
    v = rng.standard_normal(problem.B.size)
    kept = v.copy()
    np.testing.assert_allclose(apply(v), reference @ v, rtol=1e-11, atol=1e-11 * np.abs(reference @ v).max())
    np.testing.assert_array_equal(v, kept)  # the in-place steps work on intermediates only
    block = rng.standard_normal((problem.B.size, 4))
    np.testing.assert_allclose(apply(block), reference @ block, rtol=1e-11,
                               atol=1e-11 * np.abs(reference @ block).max())


@pytest.mark.parametrize("k", [1, 3])
def test_kronecker_square_root_on_the_gemm_path_equals_the_dense_kronecker_product(k):
    rng = np.random.default_rng(1)
    days = np.arange(5.0)
    time = Dense(exponential_correlation(np.abs(days[:, None] - days[None, :]), 3.0))
    xy = rng.uniform(0.0, 500.0, (40, 2))
    space = Dense(exponential_correlation(np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1)), 150.0))
    cov = Kronecker(time, space)
    L = np.kron(np.linalg.cholesky(time.dense()), np.linalg.cholesky(space.dense()))
    x = rng.standard_normal((cov.size, k))[:, 0] if k == 1 else rng.standard_normal((cov.size, k))
    for got, want in ((cov.sqrt(x), L @ x), (cov.sqrt_T(x), L.T @ x), (cov.apply(x), cov.dense() @ x)):
        assert got.shape == x.shape and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


def test_left_product_of_a_transposed_view_is_the_matrix_product_without_copying_the_input():
    rng = np.random.default_rng(2)
    m = rng.standard_normal((30, 30))
    rows = rng.standard_normal((4, 30))
    view = rows.T  # F-ordered (30, 4), as Kronecker passes one vector's (n_s, n_t) array
    assert view.flags.f_contiguous and not view.flags.c_contiguous
    np.testing.assert_allclose(_left_product(m, view), m @ np.ascontiguousarray(view), rtol=1e-13, atol=1e-13)
    c_order = np.ascontiguousarray(view)
    np.testing.assert_array_equal(_left_product(m, c_order), m @ c_order)


@pytest.mark.parametrize("m", [1, 2, 6])
@pytest.mark.parametrize("layout", ["C", "F"])
@pytest.mark.parametrize("factor_layout", ["C", "F"])
def test_triangular_product_equals_the_dense_product(m, layout, factor_layout):
    rng = np.random.default_rng(6)
    lower = np.tril(rng.standard_normal((25, 25))) + 5 * np.eye(25)
    lower = np.asfortranarray(lower) if factor_layout == "F" else np.ascontiguousarray(lower)
    x = rng.standard_normal((25, m)) if layout == "C" else rng.standard_normal((m, 25)).T
    for transpose, want in ((False, lower @ x), (True, lower.T @ x)):
        got = _triangular_product(lower, x, transpose=transpose)
        assert got.shape == (25, m) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * np.abs(want).max())


def test_orthogonalise_makes_one_pass_when_it_keeps_the_norm_and_two_after_cancellation():
    rng = np.random.default_rng(4)
    n, k = 200, 12
    q = np.linalg.qr(rng.standard_normal((n, k)))[0].T.copy()  # orthonormal rows, C order
    r = rng.standard_normal(n)
    assert orthogonalise(r, q) == 1
    assert np.abs(q @ r).max() <= 1e-14 * np.linalg.norm(r)
    # mostly in the span of q: the first pass cancels > 1 − DGKS_KEEP of ‖r‖ and leaves rounding
    # components of size ε‖r_before‖ that are large relative to what remains; the second removes them
    coefficients = rng.standard_normal(k)
    r = q.T @ coefficients * 1e6 + rng.standard_normal(n)
    before = np.linalg.norm(r)
    assert orthogonalise(r, q) == 2
    assert np.linalg.norm(r) < DGKS_KEEP * before
    assert np.abs(q @ r).max() <= 1e-14 * np.linalg.norm(r)
    assert orthogonalise(rng.standard_normal(n), q[:0]) == 0
