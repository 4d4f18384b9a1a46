"""Both solvers (all forms) against a dense textbook reference on tiny twin cases.

The oracle is built here from dense matrices only — H = problem.H.jacobian_local(),
B = problem.B.dense(), R = diag(problem.R.variance()), d = problem.departures() — with
numpy.linalg.solve (an explicit test oracle, unlike the solvers, which use Cholesky factors
or Krylov iterations):

    x_a = x_b + B Hᵀ (H B Hᵀ + R)⁻¹ d,        A = (B⁻¹ + Hᵀ R⁻¹ H)⁻¹,
    χ² = dᵀ (H B Hᵀ + R)⁻¹ d,                  DOFS = trace(I − A B⁻¹).

The state mixes scaling factors (σ ≈ 0.5) and background offsets in mol mol⁻¹ (σ = 1e-6), so B
has a condition number of ~1e12 from units alone.  The oracle therefore evaluates the same
formulas in standardised variables x̃ = D⁻¹x, D = diag(√diag B) (B̃ = D⁻¹BD⁻¹, H̃ = HD; then
x_a − x_b = D B̃ H̃ᵀ(H̃B̃H̃ᵀ + R)⁻¹d and A = D (B̃⁻¹ + H̃ᵀR⁻¹H̃)⁻¹ D, algebraically identical).
Agreement is measured as max|actual − reference| / max|reference| both on the raw quantities
and on the standardised ones (D⁻¹(x_a − x_b), D⁻¹AD⁻¹), because in raw units the offsets are
a millionth of the scaling factors and would not be seen.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from inversion import solvers
from inversion.aggregates import Aggregates
from inversion.config import SolverConfig, load_config
from inversion.parallel import SerialComm
from inversion.problem import Problem, build_problem

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

AGREEMENT = 1e-8  # required relative agreement with the dense reference

# Tiny cases: 4 periods × 6 regions (+ 3 site offsets) = 24 or 27 state elements.
CASES = {
    # 3 sites × 8 days × 3 hours = 72 observations > state: "auto" picks the state form.
    "offsets-72obs": {"seed": 5, "blocks": "[2, 3]", "period_days": 2, "offsets": True},
    # 3 sites × 4 days × 1 hour = 12 observations < state: "auto" picks the observation form.
    "offsets-12obs": {"seed": 6, "blocks": "[2, 3]", "period_days": 1, "hours": "[6]",
                      "end": "2024-07-05T00:00:00Z", "offsets": True},
    "no-offsets-72obs": {"seed": 7, "blocks": "[2, 3]", "period_days": 2, "offsets": False},
    "no-offsets-12obs": {"seed": 8, "blocks": "[2, 3]", "period_days": 1, "hours": "[6]",
                         "end": "2024-07-05T00:00:00Z", "offsets": False},
}


def _build(tmp_path_factory, name: str) -> Problem:
    kwargs = dict(CASES[name])
    offsets = kwargs.pop("offsets")
    case = make_case(tmp_path_factory.mktemp(name), **kwargs)  # the twin itself is generated with offsets
    config = load_config(case)
    if not offsets:
        config = config.model_copy(update={"state": config.state.model_copy(update={"background_offset": False})})
    problem = build_problem(config, SerialComm())
    assert problem.state.size == 24 + (3 if offsets else 0)
    return problem


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def problem(request, tmp_path_factory) -> Problem:
    return _build(tmp_path_factory, request.param)


@pytest.fixture(scope="module")
def problem72(tmp_path_factory) -> Problem:
    return _build(tmp_path_factory, "offsets-72obs")


# ---- the dense oracle -----------------------------------------------------------------------


@dataclass
class Reference:
    x_b: np.ndarray
    x_a: np.ndarray
    A: np.ndarray
    chi2: float
    dofs: float
    scale: np.ndarray  # D = √diag(B)
    rank_G: int


def reference(problem: Problem) -> Reference:
    H = problem.H.jacobian_local()
    B = problem.B.dense()
    r = problem.R.variance()
    d = problem.departures()
    n = B.shape[0]
    D = np.sqrt(np.diag(B))
    Bs = B / np.outer(D, D)
    Hs = H * D
    S = Hs @ Bs @ Hs.T + np.diag(r)  # = H B Hᵀ + R
    x_a = problem.x_b + D * (Bs @ Hs.T @ np.linalg.solve(S, d))
    Bs_inv = np.linalg.solve(Bs, np.eye(n))
    As = np.linalg.solve(Bs_inv + Hs.T @ (Hs / r[:, None]), np.eye(n))
    # The oracle agrees with itself: Woodbury form B − B Hᵀ S⁻¹ H B of the same matrix.
    woodbury = Bs - Bs @ Hs.T @ np.linalg.solve(S, Hs @ Bs)
    assert _rel(woodbury, As) < 1e-10
    W = Hs / np.sqrt(r)[:, None]
    eig_G = np.linalg.eigvalsh(W @ Bs @ W.T)  # non-zero eigenvalues of G = Lᵀ Hᵀ R⁻¹ H L
    rank_G = int(np.sum(eig_G > 1e-10 * eig_G.max()))  # exact zeros come out as ~eps · max
    return Reference(x_b=problem.x_b, x_a=x_a, A=As * np.outer(D, D), chi2=float(d @ np.linalg.solve(S, d)),
                     dofs=float(np.trace(np.eye(n) - As @ Bs_inv)), scale=D, rank_G=rank_G)


def _rel(actual, desired) -> float:
    """max|actual − desired| / max|desired|."""
    actual, desired = np.asarray(actual, dtype=float), np.asarray(desired, dtype=float)
    assert actual.shape == desired.shape
    return float(np.abs(actual - desired).max() / np.abs(desired).max())


def assert_mean_agrees(x_a: np.ndarray, ref: Reference, rtol: float = AGREEMENT) -> None:
    raw = _rel(x_a, ref.x_a)
    standardised = _rel((x_a - ref.x_b) / ref.scale, (ref.x_a - ref.x_b) / ref.scale)
    assert raw <= rtol and standardised <= rtol, f"x_a: relative difference {raw:.2e} (raw), {standardised:.2e} (standardised)"


def assert_covariance_agrees(A: np.ndarray, ref: Reference, rtol: float = AGREEMENT) -> None:
    raw = _rel(A, ref.A)
    D2 = np.outer(ref.scale, ref.scale)
    standardised = _rel(A / D2, ref.A / D2)
    assert raw <= rtol and standardised <= rtol, f"A: relative difference {raw:.2e} (raw), {standardised:.2e} (standardised)"


def identity_aggregates(n: int) -> Aggregates:
    """Aggregates whose matrix is I and offset 0: their covariance is A itself."""
    return Aggregates(region=tuple(f"x{i}" for i in range(n)), period=np.zeros(n, dtype=np.int64),
                      start=np.zeros(n, dtype="datetime64[s]"), end=np.zeros(n, dtype="datetime64[s]"),
                      matrix=np.eye(n), offset=np.zeros(n))


def with_random_departures(problem: Problem, rng: np.random.Generator) -> Problem:
    """The same problem with y = H x_b + ε, ε ~ N(0, R): departures d = ε are random, so
    b = Lᵀ Hᵀ R⁻¹ d has (almost surely) a non-zero component on every eigenvector of G."""
    noise = np.sqrt(problem.R.variance()) * rng.standard_normal(problem.n_obs)
    return dataclasses.replace(problem, y=problem.H.matvec(problem.x_b) + noise)


# ---- analytical -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["state", "observation"])
def test_analytical_matches_dense_reference(problem, form):
    ref = reference(problem)
    post = solvers.solve_analytical(problem, form=form)
    assert post.diagnostics["form"] == form
    assert_mean_agrees(post.x_a, ref)
    assert_covariance_agrees(post.covariance.dense(), ref)
    np.testing.assert_allclose(post.posterior_sd(), np.sqrt(np.diag(ref.A)), rtol=AGREEMENT)
    assert post.diagnostics["chi2"] == pytest.approx(ref.chi2, rel=1e-10)
    assert post.diagnostics["chi2_per_obs"] == pytest.approx(ref.chi2 / problem.n_obs, rel=1e-10)
    assert post.diagnostics["dofs"] == pytest.approx(ref.dofs, rel=1e-10)


def test_auto_form_picks_the_smaller_system(problem):
    post = solvers.solve_analytical(problem, form="auto")
    expected = "state" if problem.state.size <= problem.n_obs else "observation"
    assert post.diagnostics["form"] == expected


def test_analytical_forms_agree_with_each_other(problem):
    state = solvers.solve_analytical(problem, form="state")
    obs = solvers.solve_analytical(problem, form="observation")
    ref = reference(problem)
    assert_mean_agrees(state.x_a, Reference(**{**ref.__dict__, "x_a": obs.x_a}))
    assert_covariance_agrees(state.covariance.dense(), Reference(**{**ref.__dict__, "A": obs.covariance.dense()}))


# ---- variational ----------------------------------------------------------------------------


def test_variational_mean_chi2_and_exact_covariance_through_identity_aggregates(problem):
    """With aggregates = I the extra block-CG solves give L (I + G)⁻¹ Lᵀ = A column by column."""
    ref = reference(problem)
    n = problem.state.size
    agg = identity_aggregates(n)
    post = solvers.solve_variational(problem, tolerance=1e-12, max_iterations=400, aggregates=agg)
    assert post.diagnostics["converged"] is True
    assert_mean_agrees(post.x_a, ref)
    totals = post.aggregate(agg)
    assert "posterior_cov_lowrank" in totals  # the exact path was taken
    assert_covariance_agrees(totals["posterior_cov"], ref)
    np.testing.assert_array_equal(totals["posterior"], post.x_a)
    np.testing.assert_allclose(totals["prior_cov"], problem.B.dense(), rtol=1e-12, atol=0)
    assert post.diagnostics["chi2"] == pytest.approx(ref.chi2, rel=AGREEMENT)


def test_lowrank_covariance_is_exact_once_krylov_space_holds_range_of_G(problem):
    """A ≈ L (I − V diag(λ/(1+λ)) Vᵀ) Lᵀ is exact when the Ritz vectors span range(G): the
    directions never explored are then exactly the null space of G (eigenvalue 1 of I + G,
    λ = 0), where the posterior keeps the prior variance, which the formula does.  The Krylov
    space of b = Lᵀ Hᵀ R⁻¹ d contains range(G) after rank(G) iterations when b has a component
    on every eigenvector of G with λ > 0 and those eigenvalues are distinct — true almost
    surely for random departures d.

    CG is run to n iterations by switching the residual test off (tol = 1e-300; it then stops
    only at n iterations or at an exactly zero residual): with a practical tolerance it may
    stop as soon as the remaining directions no longer matter for the *mean* — on these cases
    at 1e-12 it skips an eigenvector with λ ≈ 3e-5 — and the low-rank A then misses it.  Once
    the Krylov space is exhausted the extra Lanczos vectors are rounding noise in the null
    space of G, whose Ritz values ≈ 1 (λ ≈ 0) leave A unchanged."""
    p = with_random_departures(problem, np.random.default_rng(2024))
    ref = reference(p)
    n = p.state.size
    post = solvers.solve_variational(p, tolerance=1e-300, max_iterations=n)
    assert ref.rank_G <= post.diagnostics["iterations"] <= n
    assert_covariance_agrees(post.covariance.dense(), ref)
    np.testing.assert_allclose(post.posterior_sd(), np.sqrt(np.diag(ref.A)), rtol=AGREEMENT)
    assert_mean_agrees(post.x_a, ref)
    assert post.diagnostics["dofs"] == pytest.approx(ref.dofs, rel=AGREEMENT)

    # Control: stopped after a few iterations, the low-rank covariance is far from exact (so
    # the comparison above can fail).
    early = solvers.solve_variational(p, tolerance=1e-300, max_iterations=3)
    assert _rel(early.covariance.dense(), ref.A) > 1e-3


def test_variational_dofs_from_ritz_values_are_a_lower_bound(problem):
    """Σ λ_i/(1+λ_i) over Ritz values after k iterations ≤ trace(G(I+G)⁻¹) (Cauchy interlacing:
    the i-th largest Ritz value of I + G never exceeds the i-th largest eigenvalue, and
    λ/(1+λ) is increasing), non-decreasing in k, and equal once the Krylov space holds
    range(G) (n iterations, see the test above)."""
    ref = reference(problem)
    n = problem.state.size
    previous = 0.0
    for k in range(1, n + 1):
        post = solvers.solve_variational(problem, tolerance=1e-300, max_iterations=k)
        dofs = post.diagnostics["dofs"]
        assert 0.0 < dofs <= ref.dofs * (1 + 1e-12)
        assert dofs >= previous * (1 - 1e-12)  # more iterations never lower the bound
        if k <= 2:
            assert dofs < ref.dofs * (1 - 1e-3)  # early on it is strictly below
        previous = dofs
    assert previous == pytest.approx(ref.dofs, rel=AGREEMENT)
    # At a practical tolerance the Ritz DOFS is still a lower bound, close to the exact value.
    converged = solvers.solve_variational(problem, tolerance=1e-12, max_iterations=400)
    assert converged.diagnostics["converged"] is True
    assert ref.dofs * (1 - 1e-4) <= converged.diagnostics["dofs"] <= ref.dofs * (1 + 1e-12)


# ---- dispatch and diagnostics -------------------------------------------------------------


def _with_solver(problem: Problem, **solver) -> Problem:
    return dataclasses.replace(problem, config=problem.config.model_copy(update={"solver": SolverConfig(**solver)}))


def test_solve_dispatches_on_config_method(problem72):
    ref = reference(problem72)
    analytical = solvers.solve(_with_solver(problem72, method="analytical", form="observation"))
    assert analytical.diagnostics["solver"] == "analytical"
    assert analytical.diagnostics["form"] == "observation"
    variational = solvers.solve(_with_solver(problem72, method="variational", tolerance=1e-12))
    assert variational.diagnostics["solver"] == "variational"
    assert variational.diagnostics["converged"] is True
    for post in (analytical, variational):
        assert_mean_agrees(post.x_a, ref)


def test_solve_forwards_the_solver_settings(problem72, monkeypatch):
    calls = []

    def spy(problem, **kwargs):
        calls.append(kwargs)
        return "sentinel"

    monkeypatch.setitem(solvers.SOLVERS, "variational", spy)
    agg = identity_aggregates(problem72.state.size)
    out = solvers.solve(_with_solver(problem72, method="variational", form="state", tolerance=1e-5,
                                     max_iterations=7, reorthogonalize=False), aggregates=agg)
    assert out == "sentinel"
    assert calls == [{"form": "state", "tolerance": 1e-5, "max_iterations": 7, "reorthogonalize": False, "aggregates": agg,
                      "posterior_covariance": "auto", "block_rows": None}]


def test_non_converged_variational_run_says_so(problem72):
    post = solvers.solve(_with_solver(problem72, method="variational", tolerance=1e-12, max_iterations=2))
    diag = post.diagnostics
    assert diag["converged"] is False
    assert diag["iterations"] == 2
    assert diag["stop_reason"] == "max_iter"
    assert diag["relative_residual"] > 1e-12
    assert len(post.covariance.eigenvalues) == 2


# ---- analytical, aggregates-only posterior (A never formed) -----------------------------------


def _random_aggregates(n: int, k: int, rng: np.random.Generator) -> Aggregates:
    return Aggregates(region=tuple(f"a{i}" for i in range(k)), period=np.zeros(k, dtype=np.int64),
                      start=np.zeros(k, dtype="datetime64[s]"), end=np.zeros(k, dtype="datetime64[s]"),
                      matrix=rng.standard_normal((k, n)), offset=rng.standard_normal(k))


def test_aggregates_only_posterior_is_exact_for_every_aggregate(problem):
    """posterior_covariance = "aggregates": the observation form, the mean of the dense route,
    M A Mᵀ of the report aggregates from the solve and of any other aggregate on demand, the
    per-element σ, χ² and DOFS (n_obs − trace(S⁻¹ R)) all equal the dense reference."""
    from inversion.posterior import FactorisedPosteriorCovariance

    ref = reference(problem)
    n = problem.state.size
    agg = _random_aggregates(n, 5, np.random.default_rng(1))
    post = solvers.solve_analytical(problem, posterior_covariance="aggregates", aggregates=agg)
    assert post.diagnostics["form"] == "observation"
    assert post.diagnostics["posterior_covariance"] == "aggregates"
    assert isinstance(post.covariance, FactorisedPosteriorCovariance)
    assert_mean_agrees(post.x_a, ref)
    M = agg.matrix.toarray() if hasattr(agg.matrix, "toarray") else agg.matrix
    totals = post.aggregate(agg)
    assert "posterior_cov_lowrank" not in totals  # nothing approximate to show beside it
    assert _rel(totals["posterior_cov"], M @ ref.A @ M.T) < AGREEMENT
    assert _rel(post.covariance.aggregate_variance(M), np.diag(M @ ref.A @ M.T)) < AGREEMENT
    assert_covariance_agrees(post.aggregate(identity_aggregates(n))["posterior_cov"], ref)  # on demand
    np.testing.assert_allclose(post.posterior_sd(), np.sqrt(np.diag(ref.A)), rtol=AGREEMENT)
    assert post.diagnostics["chi2"] == pytest.approx(ref.chi2, rel=1e-10)
    assert post.diagnostics["dofs"] == pytest.approx(ref.dofs, rel=1e-8)


def test_auto_posterior_covariance_falls_back_to_aggregates_when_dense_does_not_fit(problem72, monkeypatch):
    from inversion.posterior import DensePosteriorCovariance, FactorisedPosteriorCovariance

    agg = identity_aggregates(problem72.state.size)
    assert isinstance(solvers.solve_analytical(problem72, aggregates=agg).covariance, DensePosteriorCovariance)
    monkeypatch.setattr(solvers, "dense_posterior_fits", lambda n_state: False)
    post = solvers.solve_analytical(problem72, aggregates=agg)
    assert isinstance(post.covariance, FactorisedPosteriorCovariance)
    assert post.diagnostics["form"] == "observation"  # auto form, although n_state ≤ n_obs here
    assert post.exact_for is agg
    # an explicit state form keeps the dense A (it factorises n_state² anyway)
    assert isinstance(solvers.solve_analytical(problem72, form="state").covariance, DensePosteriorCovariance)
    with pytest.raises(ValueError, match="observation form"):
        solvers.solve_analytical(problem72, form="state", posterior_covariance="aggregates")
    with pytest.raises(ValueError, match="observation"):
        SolverConfig(form="state", posterior_covariance="aggregates")


def test_aggregates_only_state_file_has_sigma_but_no_covariance(problem72, tmp_path):
    from inversion.outputs import _state_dataset

    dense = solvers.solve_analytical(problem72, posterior_covariance="dense")
    post = solvers.solve_analytical(problem72, posterior_covariance="aggregates")
    ds = _state_dataset(problem72.state, post, None, problem72.config.run.species)
    assert "posterior_covariance" not in ds and "ritz_vectors" not in ds
    assert "not stored" in ds.attrs["posterior_covariance"]
    np.testing.assert_allclose(ds["posterior_sd_scaling_factor"].values,
                               _state_dataset(problem72.state, dense, None, "co2")["posterior_sd_scaling_factor"].values,
                               rtol=1e-8)
