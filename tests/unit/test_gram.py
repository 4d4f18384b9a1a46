"""Rows of H B Hᵀ (inversion.gram) against the dense formula H_dense @ B.dense() @ H_denseᵀ.

H is generated footprint-like: each observation touches one or two consecutive periods
("weeks") of a time-major Kronecker block and a handful of nearby cells, so the per-week
slices are sparse in rows and columns, as in a grid-cell state; some rows are empty.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from inversion.covariance import BlockDiagonal, Dense, Diagonal, Kronecker, exponential_correlation
from inversion.gram import ObservationGram, observation_gram_flops


def _time(n_t: int, diagonal: bool) -> Dense | Diagonal:
    if diagonal:
        return Diagonal(np.linspace(0.5, 1.5, n_t), name="time")
    d = np.abs(np.subtract.outer(np.arange(n_t), np.arange(n_t))).astype(float)
    return Dense(exponential_correlation(d, 1.5), name="time")


def _space(n_s: int, rng: np.random.Generator, diagonal: bool = False) -> Dense | Diagonal:
    if diagonal:
        return Diagonal(rng.uniform(0.1, 0.3, n_s), name="space")
    xy = rng.uniform(0, 10, (n_s, 2))
    d = np.hypot(*(xy[:, None, :] - xy[None, :, :]).transpose(2, 0, 1))
    sd = rng.uniform(0.2, 0.6, n_s)
    return Dense(sd[:, None] * exponential_correlation(d, 2.0) * sd[None, :], name="space")


def _footprints(rng, n_obs: int, blocks: list[tuple[int, int, int]], n_extra: int) -> sp.csr_matrix:
    """Rows touching 1–2 consecutive weeks of one Kronecker block (c0, n_t, n_s), ~n_s/4 cells
    each, plus a random extra column; every 7th row is empty."""
    n_cols = max(c0 + n_t * n_s for c0, n_t, n_s in blocks) + n_extra
    rows, cols = [], []
    for i in range(n_obs):
        if i % 7 == 3:
            continue
        c0, n_t, n_s = blocks[rng.integers(len(blocks))]
        t = int(rng.integers(n_t))
        for week in {t, min(t + 1, n_t - 1)}:
            cells = rng.choice(n_s, size=max(1, n_s // 4), replace=False)
            cols += list(c0 + week * n_s + cells)
            rows += [i] * cells.size
        if n_extra:
            cols.append(n_cols - n_extra + int(rng.integers(n_extra)))
            rows.append(i)
    vals = rng.uniform(0.1, 2.0, len(rows))
    return sp.csr_matrix((vals, (rows, cols)), shape=(n_obs, n_cols))


def _reference(H, B) -> np.ndarray:
    Hd = H.toarray()
    return Hd @ B.dense() @ Hd.T


def _rel(a, b) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("n_t, n_s", [(1, 9), (4, 13), (9, 5)])
@pytest.mark.parametrize("time_diagonal", [False, True], ids=["Bt-dense", "Bt-diagonal"])
@pytest.mark.parametrize("space_diagonal", [False, True], ids=["Bs-dense", "Bs-diagonal"])
def test_kronecker_rows_match_the_dense_formula(n_t, n_s, time_diagonal, space_diagonal):
    rng = np.random.default_rng(n_t * 100 + n_s)
    B = Kronecker(_time(n_t, time_diagonal), _space(n_s, rng, space_diagonal))
    H = _footprints(rng, 40, [(0, n_t, n_s)], 0)
    S = _reference(H, B)
    gram = ObservationGram(H, B)
    for start, stop in [(0, 40), (0, 1), (5, 23), (39, 40), (17, 17)]:
        rows = gram.rows(start, stop)
        assert rows.shape == (stop - start, 40)
        if stop > start:
            assert _rel(rows, S[start:stop]) < 1e-13
    np.testing.assert_array_equal(gram.rows(3, 4), 0.0)  # an observation without footprint


def test_sectors_offsets_and_other_leaves_match_the_dense_formula():
    """B = ⊕ sectors (Kronecker) ⊕ offsets (Diagonal) ⊕ a Dense leaf (the generic path)."""
    rng = np.random.default_rng(11)
    n_t, n_s = 5, 8
    sectors = [Kronecker(_time(n_t, False), _space(n_s, rng)) for _ in range(2)]
    extra = Dense(np.array([[1.0, 0.3], [0.3, 2.0]]), name="extra")
    B = BlockDiagonal(sectors + [BlockDiagonal([Diagonal(np.full(3, 1e-2), name="offsets"), extra])])
    H = _footprints(rng, 50, [(0, n_t, n_s), (n_t * n_s, n_t, n_s)], 5)
    S = _reference(H, B)
    gram = ObservationGram(H, B)
    full = np.vstack([gram.rows(i, min(i + 16, 50)) for i in range(0, 50, 16)])
    assert _rel(full, S) < 1e-13
    np.testing.assert_allclose(full, full.T, rtol=0, atol=1e-13 * np.abs(S).max())
    # a dense H gives the same rows
    assert _rel(ObservationGram(H.toarray(), B).rows(10, 30), S[10:30]) < 1e-13


def test_generic_covariance_rows_match_the_dense_formula():
    rng = np.random.default_rng(3)
    B = _space(12, rng)
    H = sp.random(15, 12, density=0.3, random_state=4, format="csr")
    assert _rel(ObservationGram(H, B).rows(2, 9), _reference(H, B)[2:9]) < 1e-13


def test_flop_model_counts_the_three_products():
    """One observation touching cells {0, 1} of week 0 (n_t = 2, n_s = 5, dense B_t):
    Y = D B_s[C]: 2·1·2·5; mixing into weeks 0 and 1 (one row of Y, n_s wide): 2·1·5 each;
    final GEMMs on the 2 touched cells, 2·1·2·1 each (one observation on the right)."""
    rng = np.random.default_rng(0)
    B = Kronecker(_time(2, False), _space(5, rng))
    H = sp.csr_matrix((np.ones(4), ([0, 0, 1, 1], [0, 1, 5, 6])), shape=(2, 10))  # row 1 in week 1
    gram = ObservationGram(H, B)
    assert gram.flops(0, 1) == 2 * 1 * 2 * 5 + 2 * (2 * 1 * 5) + 2 * (2 * 1 * 2 * 1)
    # additive over row blocks; B_t diagonal mixes nothing across weeks
    assert observation_gram_flops(H, B) == gram.flops(0, 1) + gram.flops(1, 2)
    diag = ObservationGram(H, Kronecker(_time(2, True), _space(5, rng)))
    assert diag.flops(0, 1) == 2 * 1 * 2 * 5 + 2 * 1 * 5 + 2 * 1 * 2 * 1


def test_bad_arguments_are_refused():
    rng = np.random.default_rng(0)
    B = _space(4, rng)
    with pytest.raises(ValueError, match="columns"):
        ObservationGram(sp.csr_matrix((3, 5)), B)
    with pytest.raises(ValueError, match="outside"):
        ObservationGram(sp.csr_matrix((3, 4)), B).rows(2, 4)
