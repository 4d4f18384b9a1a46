"""One conformance suite over every linear operator of tanhui.

Each operator is checked once against the same contract (:func:`inversion.testing.check_linear_operator`:
shapes, dtype, linearity, the dot-product adjoint test, block products = column products) at
rtol 1e-12, and every covariance additionally against :func:`inversion.testing.check_covariance`.
The operators are built from small synthetic data made here or from a tiny twin case
(``tests.casegen.make_case``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from inversion.config import load_config
from inversion.covariance import BlockDiagonal, Dense, Diagonal, Kronecker, exponential_correlation, scaled_correlation
from inversion.operators import ObservationOperator
from inversion.parallel import SerialComm
from inversion.problem import build_problem, open_inputs, prior_covariance
from inversion.solvers import hessian_operator
from inversion.testing import check_covariance, check_linear_operator
from transport.grid import Grid, TimeAxis
from transport.operator import FootprintOperator
from transport.store import FootprintStore

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

RTOL = 1e-12


# ---- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    """Tiny twin case with background offsets: 4 periods × 6 regions + 3 sites, 72 observations."""
    case = make_case(tmp_path_factory.mktemp("conformance_case"), seed=11, blocks="[2, 3]", period_days=2)
    return build_problem(load_config(case), SerialComm())


def _without_offsets(config):
    return config.model_copy(update={"state": config.state.model_copy(update={"background_offset": False})})


@pytest.fixture(scope="module")
def inputs_no_offsets(problem):
    """The inputs of the same case with background offsets switched off in the configuration."""
    return open_inputs(_without_offsets(problem.config))


@pytest.fixture(scope="module")
def problem_no_offsets(problem, inputs_no_offsets):
    """The same case without background offsets in the state (H = K E)."""
    return build_problem(_without_offsets(problem.config), SerialComm(), inputs_no_offsets)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A footprint store of 10 observations on a 3 × 4 grid with 5 flux steps, written with
    transport.store, and the float32 matrix that was written."""
    rng = np.random.default_rng(20)
    grid = Grid.regular(30.0, 33.0, 110.0, 114.0, 1.0, 1.0)
    axis = TimeAxis.regular("2024-07-01T00:00:00", "2024-07-02T06:00:00", "6h")
    n_obs = 10
    obs = {
        "obs_id": np.array([f"S-{i:02d}" for i in range(n_obs)]),
        "time": np.datetime64("2024-07-02T00:00:00", "s") + np.arange(n_obs).astype("timedelta64[m]"),
        "site": np.array(["S"] * n_obs),
        "latitude": np.full(n_obs, 31.5),
        "longitude": np.full(n_obs, 112.5),
        "height": np.full(n_obs, 50.0),
    }
    matrix = sp.random(n_obs, axis.size * grid.size, density=0.3, random_state=np.random.default_rng(21),
                       format="csr", dtype=np.float32)
    matrix.data = rng.uniform(0.0, 5.0, matrix.nnz).astype(np.float32)
    path = tmp_path_factory.mktemp("store") / "footprints.h5"
    with FootprintStore.create(path, grid, axis, obs) as writer:
        writer.append(matrix)
    return FootprintStore(path), matrix


# ---- covariances ---------------------------------------------------------------------------


def _space(rng: np.random.Generator, n: int) -> Dense:
    points = rng.uniform(0.0, 600.0, size=(n, 2))
    distance = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=-1)
    return scaled_correlation(rng.uniform(0.2, 1.5, n), exponential_correlation(distance, 250.0), name="space")


def _time(n: int) -> Dense:
    days = 7.0 * np.arange(n)
    return scaled_correlation(np.full(n, 0.5), exponential_correlation(np.abs(days[:, None] - days[None, :]), 10.0),
                              name="time")


def _case_prior_covariance(request, *, offsets: bool):
    """B of the tiny case: ⊕_sectors σ²(C_time ⊗ C_space) (⊕ diag(σ_bg²) with offsets)."""
    problem = request.getfixturevalue("problem")
    if offsets:
        return prior_covariance(problem.config, problem.state)
    return prior_covariance(_without_offsets(problem.config), request.getfixturevalue("inputs_no_offsets").state)


def _store_operator(request, start: int | None = None, stop: int | None = None, comm=None) -> FootprintOperator:
    store = request.getfixturevalue("store")[0]
    return FootprintOperator.from_store(store, start or 0, store.n_obs if stop is None else stop, comm)


COVARIANCES: dict[str, Callable] = {
    "Diagonal": lambda rng, request: Diagonal(rng.uniform(0.1, 3.0, 9), name="diag"),
    "Diagonal-tiny-variances": lambda rng, request: Diagonal(rng.uniform(0.5, 2.0, 5) * 1e-12, name="diag-ppm"),
    "Dense": lambda rng, request: _space(rng, 8),
    "Kronecker(Dense,Dense)": lambda rng, request: Kronecker(_time(4), _space(rng, 5)),
    "Kronecker(Diagonal,Dense)": lambda rng, request: Kronecker(Diagonal([0.5, 1.0, 2.0]), _space(rng, 4)),
    "BlockDiagonal(Kronecker,Dense,Diagonal)": lambda rng, request: BlockDiagonal(
        [Kronecker(_time(3), _space(rng, 4)), _space(rng, 3), Diagonal(rng.uniform(0.5, 1.0, 2) * 1e-12)]),
    "prior_covariance(tiny case)": lambda rng, request: _case_prior_covariance(request, offsets=True),
    "prior_covariance(tiny case, no offsets)": lambda rng, request: _case_prior_covariance(request, offsets=False),
}


# ---- linear operators ----------------------------------------------------------------------


def _random_footprints(rng: np.random.Generator) -> sp.csr_matrix:
    m = sp.random(15, 60, density=0.2, random_state=rng, format="csr", dtype=np.float64)
    m.data = rng.uniform(0.0, 10.0, m.nnz)
    return m


def _observation_operator_without_sites(p) -> ObservationOperator:
    """H = K E without background offsets, built with the arguments build_problem passes then
    (a zero site index per observation and n_sites = 0)."""
    K = FootprintOperator(_footprint_rows(p), comm=SerialComm())
    return ObservationOperator(K, p.state.E, np.zeros(K.shape[0], dtype=np.int64), 0, SerialComm())


def _observation_operator_with_extras(p, rng) -> ObservationOperator:
    """H = K E + S + X: offsets plus extra columns X (8 boundary-scaling-like columns of
    mole fractions per unit scaling, sparse as in build_problem: 4 edges × 2 periods)."""
    K = FootprintOperator(_footprint_rows(p), comm=SerialComm())
    n = K.shape[0]
    site_of = np.array([p.state.sites.index(s) for s in p.obs["site"].values])
    period = rng.integers(0, 2, n)
    X = sp.csr_matrix((rng.uniform(1e-8, 2e-6, 4 * n), (np.repeat(np.arange(n), 4),
                       (np.arange(4)[None, :] * 2 + period[:, None]).ravel())), shape=(n, 8))
    return ObservationOperator(K, p.state.E, site_of, len(p.state.sites), SerialComm(), extra_columns=X)


def _hessian(p) -> LinearOperator:
    """The variational solver's v ↦ (I + G) v as a LinearOperator; symmetric, so its adjoint is
    itself and the dot-product test checks the symmetry of the product as implemented."""
    apply = hessian_operator(p, 1.0 / p.R.variance())
    n = p.B.size
    return LinearOperator((n, n), matvec=apply, rmatvec=apply, matmat=apply, rmatmat=apply, dtype=np.float64)


def _footprint_rows(p):
    """The footprint rows of a problem's observations, re-read from its store."""
    store = FootprintStore(p.config.transport.footprints)
    rows = p.obs["row"].values
    return store.read_rows(0, store.n_obs)[rows]


OPERATORS: dict[str, Callable] = {
    "FootprintOperator(random sparse)": lambda rng, request: FootprintOperator(_random_footprints(rng)),
    "FootprintOperator(random sparse, SerialComm)": lambda rng, request: FootprintOperator(
        _random_footprints(rng), comm=SerialComm()),
    "FootprintOperator(random dense float32)": lambda rng, request: FootprintOperator(
        rng.uniform(0.0, 1.0, (6, 11)).astype(np.float32)),
    "FootprintOperator.from_store(all rows)": lambda rng, request: _store_operator(request, comm=SerialComm()),
    "FootprintOperator.from_store(rows 3-8)": lambda rng, request: _store_operator(request, 3, 8),
    "StateSpace.E_operator()": lambda rng, request: request.getfixturevalue("problem").state.E_operator(),
    "StateSpace.E_operator() (no offsets)": lambda rng, request: request.getfixturevalue(
        "inputs_no_offsets").state.E_operator(),
    "ObservationOperator problem.H": lambda rng, request: request.getfixturevalue("problem").H,
    "ObservationOperator problem.H (no offsets)": lambda rng, request: request.getfixturevalue("problem_no_offsets").H,
    "ObservationOperator(K, E, offsets, extra columns)": lambda rng, request: _observation_operator_with_extras(
        request.getfixturevalue("problem"), rng),
    "ObservationOperator(K, E, n_sites=0)": lambda rng, request: _observation_operator_without_sites(
        request.getfixturevalue("problem")),
    "hessian_operator(problem) = I + G (symmetric: rmatvec = matvec)": lambda rng, request: _hessian(
        request.getfixturevalue("problem")),
}
for _name, _factory in COVARIANCES.items():
    OPERATORS[f"{_name}.operator()"] = lambda rng, request, f=_factory: f(rng, request).operator()
    OPERATORS[f"{_name}.sqrt_operator()"] = lambda rng, request, f=_factory: f(rng, request).sqrt_operator()


@pytest.mark.parametrize("name", list(OPERATORS), ids=list(OPERATORS))
def test_linear_operator_conformance(name, request):
    rng = np.random.default_rng(1234)
    op = OPERATORS[name](rng, request)
    assert op.shape[0] > 0 and op.shape[1] > 0
    check_linear_operator(op, np.random.default_rng(99), rtol=RTOL)


@pytest.mark.parametrize("name", list(COVARIANCES), ids=list(COVARIANCES))
def test_covariance_conformance(name, request):
    cov = COVARIANCES[name](np.random.default_rng(1234), request)
    check_covariance(cov, np.random.default_rng(7), rtol=RTOL)


# ---- the suite is not vacuous: operators equal their explicit matrices --------------------


def test_footprint_operator_from_store_holds_the_written_rows(store):
    s, written = store
    op = FootprintOperator.from_store(s, 3, 8)
    np.testing.assert_array_equal(op.matrix.toarray(), written[3:8].toarray().astype(np.float64))


def test_observation_operator_is_K_E_plus_site_onehot(problem):
    K = _footprint_rows(problem).astype(np.float64).toarray()
    H = problem.H.jacobian_local()
    n_flux = problem.state.n_flux
    np.testing.assert_allclose(H[:, :n_flux], K @ problem.state.E.toarray(), rtol=1e-13, atol=0)
    site_of = np.array([problem.state.sites.index(s) for s in problem.obs["site"].values])
    np.testing.assert_array_equal(H[:, n_flux:], np.eye(len(problem.state.sites))[site_of])


def test_observation_operator_without_sites_is_K_E(problem):
    """build_problem passes n_sites=0 and a zero site index when background offsets are off;
    H must then be K E exactly, with no extra columns."""
    H = _observation_operator_without_sites(problem)
    K = _footprint_rows(problem).astype(np.float64).toarray()
    assert H.shape == (K.shape[0], problem.state.n_flux)
    np.testing.assert_allclose(H.jacobian_local(), K @ problem.state.E.toarray(), rtol=1e-13, atol=0)

