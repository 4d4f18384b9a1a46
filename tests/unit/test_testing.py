"""The conformance suite itself: it must pass correct operators and catch broken ones."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from inversion.covariance import Dense, Diagonal
from inversion.parallel import SerialComm
from inversion.testing import assert_allclose_rel, check_covariance, check_linear_operator

M, N = 7, 5


@pytest.fixture
def matrix() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((M, N))


def _operator(matvec, rmatvec, matmat=None, rmatmat=None) -> LinearOperator:
    return LinearOperator((M, N), matvec=matvec, rmatvec=rmatvec, matmat=matmat, rmatmat=rmatmat, dtype=np.float64)


def test_correct_operator_passes(matrix):
    check_linear_operator(aslinearoperator(matrix), np.random.default_rng(1))
    check_linear_operator(_operator(lambda x: matrix @ x, lambda y: matrix.T @ y), np.random.default_rng(1))


def test_wrong_adjoint_fails(matrix):
    perturbed = matrix + 1e-6 * np.random.default_rng(2).standard_normal(matrix.shape)
    op = _operator(lambda x: matrix @ x, lambda y: perturbed.T @ y)
    with pytest.raises(AssertionError, match=r"adjoint \(dot-product test\).*rmatvec is not the adjoint of matvec"):
        check_linear_operator(op, np.random.default_rng(1))


def test_nonlinear_map_fails(matrix):
    op = _operator(lambda x: matrix @ (x + 0.1 * x**2), lambda y: matrix.T @ y)
    with pytest.raises(AssertionError, match="linearity of matvec"):
        check_linear_operator(op, np.random.default_rng(1))


def test_affine_adjoint_fails(matrix):
    op = _operator(lambda x: matrix @ x, lambda y: matrix.T @ y + 1e-3)
    with pytest.raises(AssertionError, match="linearity of rmatvec"):
        check_linear_operator(op, np.random.default_rng(1))


def test_wrong_matmat_fails(matrix):
    op = _operator(lambda x: matrix @ x, lambda y: matrix.T @ y, matmat=lambda x: matrix @ x[:, ::-1])
    with pytest.raises(AssertionError, match="matmat: differs from column-by-column products"):
        check_linear_operator(op, np.random.default_rng(1))


def test_wrong_rmatmat_fails(matrix):
    op = _operator(lambda x: matrix @ x, lambda y: matrix.T @ y, rmatmat=lambda y: 2.0 * matrix.T @ y)
    with pytest.raises(AssertionError, match="rmatmat: differs"):
        check_linear_operator(op, np.random.default_rng(1))


class _DuckOperator:
    """Not a scipy LinearOperator, so nothing reshapes or casts its outputs."""

    def __init__(self, matrix, shape=None, dtype=np.float64):
        self.matrix = matrix
        self.shape = matrix.shape if shape is None else shape
        self.dtype = dtype

    def matvec(self, x):
        return (self.matrix @ x).astype(self.dtype)

    def rmatvec(self, y):
        return self.matrix.T @ y

    def matmat(self, x):
        return self.matrix @ x


def test_duck_typed_operator_without_rmatmat_passes(matrix):
    check_linear_operator(_DuckOperator(matrix), np.random.default_rng(1))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"shape": [M, N]}, "shape: op.shape must be a pair of non-negative ints"),
        ({"shape": (M, 2.5)}, "shape: op.shape must be a pair"),
        ({"dtype": np.float32}, "matvec: returned a float32 array"),
    ],
)
def test_bad_shape_or_dtype_fails(matrix, kwargs, message):
    with pytest.raises(AssertionError, match=message):
        check_linear_operator(_DuckOperator(matrix, **kwargs), np.random.default_rng(1))


def test_non_finite_output_fails(matrix):
    op = _operator(lambda x: matrix @ x / 0.0, lambda y: matrix.T @ y)
    with np.errstate(divide="ignore", invalid="ignore"), pytest.raises(AssertionError, match="expected finite float64"):
        check_linear_operator(op, np.random.default_rng(1))


class _TwoIdenticalRanks(SerialComm):
    """Rank 0 of two ranks that hold identical data: every sum over ranks is twice the local value."""

    size = 2

    def allreduce_scalar(self, value: float) -> float:
        return 2.0 * float(value)


def test_distributed_rows_use_the_communicator(matrix):
    comm = _TwoIdenticalRanks()
    # The global operator stacks the same rows twice, so its adjoint is 2 Aᵀy.
    reduced = _operator(lambda x: matrix @ x, lambda y: 2.0 * matrix.T @ y, rmatmat=lambda y: 2.0 * matrix.T @ y)
    check_linear_operator(reduced, np.random.default_rng(1), comm=comm, distributed_rows=True)
    # An adjoint that forgets the reduction over ranks fails.
    with pytest.raises(AssertionError, match="adjoint"):
        check_linear_operator(aslinearoperator(matrix), np.random.default_rng(1), comm=comm, distributed_rows=True)
    # Without distributed_rows the local (unreduced) operator is the right one.
    check_linear_operator(aslinearoperator(matrix), np.random.default_rng(1), comm=comm)


def test_rank_that_passes_still_raises_when_another_rank_fails(matrix):
    class _OtherRankFailed(SerialComm):
        def allreduce_scalar(self, value: float) -> float:
            return float(value) + 1.0  # pretend one other rank reported a failure

    with pytest.raises(AssertionError, match="shape: failed on 1 other rank"):
        check_linear_operator(aslinearoperator(matrix), np.random.default_rng(1), comm=_OtherRankFailed())


def test_covariance_checks_pass_and_catch_broken_covariances():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((6, 6))
    good = Dense(a @ a.T + 6 * np.eye(6))
    check_covariance(good, rng)

    class WrongVariance(Diagonal):
        def variance(self):
            return 2.0 * super().variance()

    class WrongLogdet(Dense):
        def logdet(self):
            return super().logdet() + 1e-6

    class AsymmetricRoot(Dense):
        def _sqrt_T(self, x):
            return self._factor @ x  # L instead of Lᵀ

    class WrongSolve(Dense):
        def _solve(self, x):
            return x / np.diag(self._matrix)[:, None]

    class NotTheSquareRoot(Diagonal):
        def _sqrt(self, w):
            return self._variance[:, None] * w

        def _sqrt_T(self, x):
            return self._variance[:, None] * x

    class ColumnForVector(Diagonal):
        # scipy's LinearOperator reshapes the (n, 1) result of a vector back to (n,), so only
        # the direct shape check can see this.
        def apply(self, x):
            return super().apply(x).reshape(self.size, -1)

    spd = a @ a.T + 6 * np.eye(6)
    cases = [
        (WrongVariance([1.0, 2.0, 3.0]), "variance"),
        (WrongLogdet(spd), "logdet"),
        (AsymmetricRoot(spd), "adjoint"),
        (WrongSolve(spd), "residual of solve"),
        (NotTheSquareRoot([1.0, 2.0, 3.0]), r"sqrt\(sqrt_T\(x\)\) vs apply\(x\)"),
        (ColumnForVector([1.0, 2.0]), r"apply: returned ndarray float64 \(2, 1\)"),
    ]
    for cov, message in cases:
        with pytest.raises(AssertionError, match=message):
            check_covariance(cov, np.random.default_rng(4))


def test_assert_allclose_rel():
    assert_allclose_rel([1.0, 2.0], [1.0, 2.0 + 1e-13], 1e-12, "x")
    assert_allclose_rel(np.zeros(3), np.zeros(3), 1e-12, "zeros")
    with pytest.raises(AssertionError, match=r"x: max relative error 5\.000e-01 > rtol 1\.0e-12 .*at index \(1,\)"):
        assert_allclose_rel([1.0, 3.0], [1.0, 2.0], 1e-12, "x")
    with pytest.raises(AssertionError, match="y: shape"):
        assert_allclose_rel(np.ones(2), np.ones(3), 1e-12, "y")
    with pytest.raises(AssertionError, match="nan"):
        assert_allclose_rel([np.nan], [1.0], 1e-12, "z")
    with pytest.raises(AssertionError, match="max relative error inf"):
        assert_allclose_rel([1e-300], [0.0], 1e-12, "z")
    with pytest.raises(AssertionError, match=r"scalar: max relative error 1\.000e-01 .*at index \(\)"):
        assert_allclose_rel(1.1, 1.0, 1e-3, "scalar")
