"""CG-Lanczos, Ritz pairs, resumption and block CG (inversion.krylov)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from inversion.krylov import CGState, RitzPairs, block_cg, cg_lanczos, deflated_guess

N = 60


def _hessian(rng: np.random.Generator, g_eigenvalues: np.ndarray) -> np.ndarray:
    """A = I + G with G = U diag(g) Uᵀ, U a random orthogonal matrix (eigenvalues of A are 1 + g)."""
    u, _ = np.linalg.qr(rng.standard_normal((g_eigenvalues.size, g_eigenvalues.size)))
    a = (u * (1.0 + g_eigenvalues)) @ u.T
    return 0.5 * (a + a.T)


@pytest.fixture
def spread_hessian() -> np.ndarray:
    """Eigenvalues log-spaced in [1, 1e4]: hard enough that plain CG loses orthogonality."""
    return _hessian(np.random.default_rng(0), np.geomspace(1.0, 1e4, N) - 1.0)


@pytest.fixture
def outlier_hessian() -> np.ndarray:
    """Five large eigenvalues (observations constrain a few directions), the rest in [1, 2]."""
    rng = np.random.default_rng(3)
    g = np.concatenate([[1000.0, 400.0, 150.0, 60.0, 20.0], rng.uniform(0.0, 1.0, N - 5)])
    return _hessian(rng, g)


def test_solves_spd_system(spread_hessian):
    a = spread_hessian
    b = np.random.default_rng(1).standard_normal(N)
    result = cg_lanczos(lambda v: a @ v, b, tol=1e-12, max_iter=200)
    assert result.converged and result.reason == "converged"
    assert result.iterations <= N
    exact = scipy.linalg.solve(a, b, assume_a="pos")
    assert np.linalg.norm(result.x - exact) <= 1e-10 * np.linalg.norm(exact)
    assert result.residual_norms[0] == 1.0
    assert result.residual_norms[-1] <= 1e-12
    assert result.residual_norms.shape == (result.iterations + 1,)


def test_reorthogonalization_is_what_keeps_iterations_below_n(spread_hessian):
    a = spread_hessian
    b = np.random.default_rng(1).standard_normal(N)
    with_reorth = cg_lanczos(lambda v: a @ v, b, tol=1e-10, max_iter=10 * N)
    without = cg_lanczos(lambda v: a @ v, b, tol=1e-10, max_iter=10 * N, reorthogonalize=False)
    assert with_reorth.converged and with_reorth.iterations <= N
    # Plain CG needs well over n iterations on this spectrum (finite-precision loss of orthogonality).
    assert without.converged and without.iterations > 2 * N
    # q_0 … q_{k−1}, the vectors behind T_k, are orthonormal to rounding level.
    vectors = with_reorth.state.lanczos[: with_reorth.iterations]
    np.testing.assert_allclose(vectors @ vectors.T, np.eye(vectors.shape[0]), atol=1e-13)


def test_ritz_pairs_after_n_iterations_give_spectrum_and_inverse(spread_hessian):
    a = spread_hessian
    b = np.random.default_rng(2).standard_normal(N)
    result = cg_lanczos(lambda v: a @ v, b, tol=0.0, max_iter=N)
    ritz = result.ritz()
    assert ritz.values.shape == (N,) and ritz.vectors.shape == (N, N)
    eigenvalues = np.linalg.eigvalsh(a)
    np.testing.assert_allclose(ritz.values, eigenvalues, rtol=1e-8)
    np.testing.assert_allclose(ritz.vectors.T @ ritz.vectors, np.eye(N), atol=1e-12)
    inverse = np.linalg.inv(a)
    low_rank_inverse = (ritz.vectors / ritz.values) @ ritz.vectors.T
    assert np.abs(low_rank_inverse - inverse).max() <= 1e-8 * np.abs(inverse).max()
    # Each Ritz pair is an eigenpair: A v = θ v.
    assert ritz.converged_mask(lambda v: a @ v, 1e-8).all()


def test_ritz_tridiagonal_sign_convention(outlier_hessian):
    # T_k must equal Q_kᵀ A Q_k for the stored (unsigned) normalised residuals.
    a = outlier_hessian
    result = cg_lanczos(lambda v: a @ v, np.random.default_rng(4).standard_normal(N), tol=0.0, max_iter=10)
    q = result.state.lanczos[:10]
    projected = q @ a @ q.T
    ritz = result.ritz()
    np.testing.assert_allclose(ritz.values, np.linalg.eigvalsh(projected), rtol=1e-10)
    np.testing.assert_allclose(ritz.vectors.T @ a @ ritz.vectors, np.diag(ritz.values), atol=1e-9 * ritz.values[-1])


def test_top_ritz_pairs_converge_early(outlier_hessian):
    a = outlier_hessian
    result = cg_lanczos(lambda v: a @ v, np.random.default_rng(5).standard_normal(N), tol=0.0, max_iter=15)
    assert result.reason == "max_iter" and result.iterations == 15
    ritz = result.ritz()
    np.testing.assert_allclose(ritz.values[-3:], np.linalg.eigvalsh(a)[-3:], rtol=1e-6)
    mask = ritz.converged_mask(lambda v: a @ v, 1e-6)
    assert mask[-3:].all()
    # 15 Ritz values cannot all be eigenvalues of the 55-fold cluster in [1, 2].
    assert not mask.all()


def test_resume_is_bit_identical(outlier_hessian):
    a = outlier_hessian
    b = np.random.default_rng(6).standard_normal(N)
    full = cg_lanczos(lambda v: a @ v, b, tol=1e-12, max_iter=40)

    seen = []

    def stop_at_7(state):
        seen.append(state.iteration)
        return state.iteration == 7

    first = cg_lanczos(lambda v: a @ v, b, tol=1e-12, max_iter=40, callback=stop_at_7)
    assert seen == list(range(1, 8))
    assert (first.reason, first.iterations, first.converged) == ("interrupted", 7, False)

    # Copies stand in for the round trip through a checkpoint file.
    saved = {k: np.array(v) if isinstance(v, np.ndarray) else v for k, v in first.state.to_dict().items()}
    resumed = cg_lanczos(lambda v: a @ v, b, tol=1e-12, max_iter=40, state=CGState.from_dict(saved))

    assert resumed.reason == full.reason == "converged"
    assert resumed.iterations == full.iterations
    for key, value in full.state.to_dict().items():
        assert np.array_equal(resumed.state.to_dict()[key], value), key
    assert np.array_equal(resumed.ritz().vectors, full.ritz().vectors)


def test_state_round_trips_through_numpy_scalars():
    b = np.array([1.0, 2.0, 3.0])
    state = cg_lanczos(lambda v: 2.0 * v, b, max_iter=1).state
    data = {key: np.asarray(value) for key, value in state.to_dict().items()}  # as read from HDF5
    restored = CGState.from_dict(data)
    assert isinstance(restored.iteration, int) and isinstance(restored.rr, float)
    assert isinstance(restored.converged, bool)
    for key, value in state.to_dict().items():
        assert np.array_equal(restored.to_dict()[key], value), key


def test_resume_rejects_another_right_hand_side():
    a = np.diag(np.arange(1.0, 6.0))
    state = cg_lanczos(lambda v: a @ v, np.ones(5), max_iter=2).state
    with pytest.raises(ValueError, match="different right-hand side"):
        cg_lanczos(lambda v: a @ v, 2.0 * np.ones(5), state=state)


def test_max_iter_and_zero_rhs(spread_hessian):
    a = spread_hessian
    b = np.random.default_rng(7).standard_normal(N)
    result = cg_lanczos(lambda v: a @ v, b, tol=1e-12, max_iter=5)
    assert (result.converged, result.reason, result.iterations) == (False, "max_iter", 5)
    assert result.residual_norms[-1] > 1e-12

    calls = []
    zero = cg_lanczos(lambda v: calls.append(v) or a @ v, np.zeros(N))
    assert (zero.converged, zero.reason, zero.iterations, calls) == (True, "converged", 0, [])
    np.testing.assert_array_equal(zero.x, np.zeros(N))
    assert zero.ritz().values.shape == (0,) and zero.ritz().vectors.shape == (N, 0)


def test_indefinite_operator_is_reported():
    with pytest.raises(ValueError, match="not symmetric positive definite"):
        cg_lanczos(lambda v: -v, np.ones(4))


def test_block_cg_matches_single_solves(outlier_hessian):
    a = outlier_hessian
    rng = np.random.default_rng(8)
    rhs = rng.standard_normal((N, 4))
    rhs[:, 2] = 0.0
    widths = []

    def apply_block(v):
        widths.append(v.shape[1])
        return a @ v

    result = block_cg(apply_block, rhs, tol=1e-12, max_iter=200)
    assert result.converged.all()
    exact = scipy.linalg.solve(a, rhs, assume_a="pos")
    np.testing.assert_allclose(result.x, exact, rtol=0, atol=1e-10 * np.abs(exact).max())
    np.testing.assert_array_equal(result.x[:, 2], 0.0)
    assert len(widths) == result.iterations and max(widths) == 3  # the zero column never iterates
    for j in (0, 1, 3):
        single = cg_lanczos(lambda v: a @ v, rhs[:, j], tol=1e-12, max_iter=200, reorthogonalize=False)
        np.testing.assert_allclose(result.x[:, j], single.x, rtol=1e-10)
    assert result.residual_norms.shape == (result.iterations + 1, 4)
    assert np.all(result.residual_norms[-1] <= 1e-12)


def test_block_cg_freezes_converged_columns():
    a = np.diag([1.0, 2.0, 3.0, 4.0])
    rhs = np.column_stack([np.array([1.0, 0.0, 0.0, 0.0]), np.ones(4)])  # eigenvector: 1 step
    result = block_cg(lambda v: a @ v, rhs, tol=1e-12, max_iter=10)
    assert result.converged.all() and result.iterations == 4
    assert np.all(result.residual_norms[1:, 0] == result.residual_norms[1, 0])
    np.testing.assert_allclose(result.x, rhs / np.diag(a)[:, None], rtol=1e-12)


def test_block_cg_max_iter():
    a = np.diag(np.arange(1.0, 11.0))
    result = block_cg(lambda v: a @ v, np.ones((10, 2)), tol=1e-14, max_iter=3)
    assert result.iterations == 3 and not result.converged.any()


def test_deflated_guess_speeds_up_block_cg(outlier_hessian):
    a = outlier_hessian
    ritz = cg_lanczos(lambda v: a @ v, np.random.default_rng(9).standard_normal(N), tol=0.0, max_iter=15).ritz()
    rhs = np.random.default_rng(10).standard_normal((N, 3))
    guess = deflated_guess(ritz, rhs)
    np.testing.assert_allclose(guess, ritz.vectors @ np.diag(1 / ritz.values) @ ritz.vectors.T @ rhs, rtol=1e-12)
    np.testing.assert_allclose(deflated_guess(ritz, rhs[:, 0]), guess[:, 0], rtol=1e-14)

    cold = block_cg(lambda v: a @ v, rhs, tol=1e-10, max_iter=200)
    warm = block_cg(lambda v: a @ v, rhs, tol=1e-10, max_iter=200, x0=guess)
    assert cold.converged.all() and warm.converged.all()
    assert warm.iterations < cold.iterations
    np.testing.assert_allclose(warm.x, cold.x, rtol=0, atol=1e-8 * np.abs(cold.x).max())


def test_ritz_pairs_converged_mask_uses_true_residuals():
    a = np.diag([1.0, 2.0, 3.0])
    pairs = RitzPairs(np.array([1.0, 2.5]), np.eye(3)[:, :2])
    np.testing.assert_array_equal(pairs.converged_mask(lambda v: a @ v, 1e-12), [True, False])
