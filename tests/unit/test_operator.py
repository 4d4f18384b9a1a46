import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import aslinearoperator

from transport.grid import Grid, TimeAxis
from transport.operator import FootprintOperator
from transport.store import FootprintStore


class DoublingComm:
    """Fake communicator: allreduce returns twice its input (as if two identical ranks)."""

    rank, size = 0, 2

    def __init__(self):
        self.calls = 0

    def allreduce(self, a):
        self.calls += 1
        return 2.0 * np.asarray(a, dtype=np.float64)


@pytest.fixture
def matrix():
    return sp.random(12, 30, density=0.3, random_state=3, format="csr", dtype=np.float32)


def test_forward_and_adjoint_equal_dense_products(matrix):
    rng = np.random.default_rng(0)
    op = FootprintOperator(matrix)
    dense = matrix.toarray().astype(np.float64)
    x, y = rng.normal(size=30), rng.normal(size=12)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(12, 3))
    assert op.shape == (12, 30) and op.dtype == np.float64
    np.testing.assert_allclose(op.matvec(x), dense @ x, rtol=1e-12)
    np.testing.assert_allclose(op.rmatvec(y), dense.T @ y, rtol=1e-12)
    np.testing.assert_allclose(op.matmat(X), dense @ X, rtol=1e-12)
    np.testing.assert_allclose(op.rmatmat(Y), dense.T @ Y, rtol=1e-12)
    np.testing.assert_allclose(op @ x, dense @ x, rtol=1e-12)
    np.testing.assert_allclose(op.H @ y, dense.T @ y, rtol=1e-12)
    # the adjoint identity <K x, y> = <x, Kᵀ y>
    assert np.dot(op.matvec(x), y) == pytest.approx(np.dot(x, op.rmatvec(y)), rel=1e-12)


def test_float32_rows_are_kept_without_copy_and_products_are_float64(matrix):
    op = FootprintOperator(matrix)
    assert sp.issparse(op.matrix) and op.matrix.format == "csr" and op.matrix.dtype == np.float32
    assert np.shares_memory(op.matrix.data, matrix.data)
    # float32 inputs too: the sums run in float64 over the float32 values
    x = np.random.default_rng(4).normal(size=30).astype(np.float32)
    exact = matrix.toarray().astype(np.float64) @ x.astype(np.float64)
    assert op.matvec(x).dtype == np.float64 and op.matmat(x[:, None]).dtype == np.float64
    np.testing.assert_allclose(op.matvec(x), exact, rtol=1e-13)  # float32 sums would be off by ~1e-7
    assert op.rmatvec(np.ones(12, np.float32)).dtype == np.float64


def test_integer_matrices_become_float64():
    op = FootprintOperator(sp.csr_matrix(np.eye(3, dtype=np.int64)))
    assert op.matrix.dtype == np.float64 and op.dtype == np.float64


def test_adjoint_reduces_exactly_once_and_local_adjoint_never(matrix):
    rng = np.random.default_rng(1)
    comm = DoublingComm()
    op = FootprintOperator(matrix, comm)
    y, Y = rng.normal(size=12), rng.normal(size=(12, 2))
    local = matrix.toarray().astype(np.float64).T @ y
    np.testing.assert_allclose(op.rmatvec(y), 2 * local, rtol=1e-12)
    assert comm.calls == 1
    np.testing.assert_allclose(op.rmatmat(Y), 2 * (matrix.toarray().T @ Y), rtol=1e-6)
    assert comm.calls == 2
    np.testing.assert_allclose(op.rmatvec_local(y), local, rtol=1e-12)
    np.testing.assert_allclose(op.rmatmat_local(Y), matrix.toarray().T @ Y, rtol=1e-6)
    op.matvec(rng.normal(size=30))
    op.matmat(rng.normal(size=(30, 2)))
    assert comm.calls == 2  # neither the local adjoints nor the forward communicate


def test_composition_with_other_operators(matrix):
    rng = np.random.default_rng(2)
    E = rng.normal(size=(30, 5))
    H = FootprintOperator(matrix) @ aslinearoperator(E)
    w = rng.normal(size=5)
    np.testing.assert_allclose(H.matvec(w), matrix.toarray() @ E @ w, rtol=1e-6)
    np.testing.assert_allclose(H.rmatvec(np.ones(12)), E.T @ matrix.toarray().T @ np.ones(12), rtol=1e-6)


def test_from_store_holds_the_stored_rows(tmp_path):
    grid = Grid.regular(0, 2, 0, 3, 1.0, 1.0)
    axis = TimeAxis.regular("2021-06-01", "2021-06-02", "12h")
    n = 9
    K = sp.random(n, axis.size * grid.size, density=0.4, random_state=5, format="csr")
    obs = {
        "obs_id": [f"o{i}" for i in range(n)],
        "time": np.full(n, np.datetime64("2021-06-01T23", "s")),
        "site": ["X"] * n,
        "latitude": np.ones(n),
        "longitude": np.ones(n),
        "height": np.full(n, 10.0),
    }
    with FootprintStore.create(tmp_path / "k.h5", grid, axis, obs) as writer:
        writer.append(K)
    store = FootprintStore(tmp_path / "k.h5")
    comm = DoublingComm()
    op = FootprintOperator.from_store(store, 3, 7, comm)
    assert op.shape == (4, 12) and op.comm is comm
    np.testing.assert_array_equal(op.matrix.toarray(), K[3:7].astype(np.float32).astype(np.float64).toarray())
