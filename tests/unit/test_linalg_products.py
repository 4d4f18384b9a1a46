"""inversion.linalg: diag(a⁻¹) from the Cholesky factor and the guarded cross product wᵀw,
both on the multi-threaded path and (threshold lowered) on the single-threaded one that
protects n ≥ SINGLE_THREAD_CHOLESKY_N from the OpenBLAS crash."""

from __future__ import annotations

import numpy as np
import pytest

from inversion import linalg


@pytest.mark.parametrize("threshold", [linalg.SINGLE_THREAD_CHOLESKY_N, 1], ids=["threaded", "single-thread"])
def test_inverse_diagonal_from_the_factor(monkeypatch, threshold):
    monkeypatch.setattr(linalg, "SINGLE_THREAD_CHOLESKY_N", threshold)
    rng = np.random.default_rng(0)
    for n in (1, 7, 2500):  # 2500 > the 2048-row blocks of the column norms
        x = rng.standard_normal((n, n + 3))
        a = x @ x.T + n * np.eye(n)
        expected = np.diag(np.linalg.inv(a))
        np.testing.assert_allclose(linalg.cholesky_inverse_diagonal(linalg.cholesky_lower(a, name="a")), expected,
                                   rtol=1e-11)


@pytest.mark.parametrize("threshold", [linalg.SINGLE_THREAD_CHOLESKY_N, 1], ids=["threaded", "single-thread"])
def test_cross_product(monkeypatch, threshold):
    monkeypatch.setattr(linalg, "SINGLE_THREAD_CHOLESKY_N", threshold)
    w = np.random.default_rng(1).standard_normal((300, 40))
    expected = np.einsum("ki,kj->ij", w, w)
    np.testing.assert_allclose(linalg.cross_product(w), expected, rtol=1e-12, atol=1e-12)
