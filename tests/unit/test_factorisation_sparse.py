"""The factorisation from a sparse H (what the analytical solver passes) equals the one from
the same H dense, in both forms and for every product it offers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from inversion.covariance import BlockDiagonal, Dense, Diagonal, Kronecker, exponential_correlation
from inversion.factorisation import factorise
from inversion.parallel import SerialComm


def _problem(n_obs: int, rng):
    n_t, n_s = 4, 6
    pos = rng.uniform(0, 500, size=(n_s, 2))
    space = Dense(0.25 * exponential_correlation(np.hypot(*(pos[:, None] - pos[None]).transpose(2, 0, 1)), 200.0))
    time = Dense(exponential_correlation(np.abs(np.arange(n_t)[:, None] - np.arange(n_t)[None]) * 7.0, 7.0))
    B = BlockDiagonal([Kronecker(time, space), Diagonal(np.full(3, 0.5))])
    H = sp.random(n_obs, B.size, density=0.15, random_state=np.random.RandomState(1), format="csr")
    H.data = rng.uniform(0.1, 2.0, H.nnz)
    r = rng.uniform(0.5, 2.0, n_obs)
    return H, B, r


@pytest.mark.parametrize("n_obs", [10, 60])  # observation form, state form (auto)
def test_sparse_and_dense_H_give_the_same_factorisation(n_obs):
    rng = np.random.default_rng(3)
    H, B, r = _problem(n_obs, rng)
    comm = SerialComm()
    sparse = factorise(H, B, r, comm, n_obs=n_obs)
    dense = factorise(H.toarray(), B, r, comm, n_obs=n_obs)
    assert sparse.form == dense.form == ("state" if n_obs >= B.size else "observation")
    D = rng.standard_normal((n_obs, 3))
    tol = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(sparse.logdet, dense.logdet, **tol)
    np.testing.assert_allclose(sparse.solve(D), dense.solve(D), **tol)
    np.testing.assert_allclose(sparse.quadratic(D), dense.quadratic(D), **tol)
    np.testing.assert_allclose(sparse.increments(D), dense.increments(D), **tol)
    np.testing.assert_allclose(sparse.posterior_covariance(), dense.posterior_covariance(), **tol)
    np.testing.assert_allclose(sparse.inverse_diagonal(), dense.inverse_diagonal(), **tol)
    np.testing.assert_allclose(sparse.projected_inverse(), dense.projected_inverse(), **tol)
    np.testing.assert_allclose(sparse.dofs(), dense.dofs(), **tol)
    # and against the textbook formula with dense matrices
    Hd, Bd = H.toarray(), B.dense()
    S = Hd @ Bd @ Hd.T + np.diag(r)
    np.testing.assert_allclose(sparse.solve(D), np.linalg.solve(S, D), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(sparse.posterior_covariance(),
                               Bd - Bd @ Hd.T @ np.linalg.solve(S, Hd @ Bd), rtol=1e-9, atol=1e-12)


def test_an_empty_rank_block_is_accepted():
    rng = np.random.default_rng(0)
    _, B, _ = _problem(5, rng)
    fac = factorise(sp.csr_matrix((0, B.size)), B, np.zeros(0), SerialComm(), n_obs=0, form="state")
    np.testing.assert_allclose(fac.posterior_covariance(), B.dense(), rtol=1e-12, atol=1e-14)


def test_cholesky_inverse_is_the_inverse():
    from inversion.linalg import cholesky_inverse, cholesky_lower

    rng = np.random.default_rng(5)
    X = rng.standard_normal((40, 30))
    a = X.T @ X + 0.1 * np.eye(30)
    inv = cholesky_inverse(cholesky_lower(a, name="test matrix"))
    np.testing.assert_array_equal(inv, inv.T)
    np.testing.assert_allclose(inv @ a, np.eye(30), atol=1e-9)
