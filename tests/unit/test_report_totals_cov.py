"""Report totals and their covariances (inversion.report.totals, inversion.aggregates).

* a constant flux over a rectangle gives the analytic area integral R²Δλ(sin φ₂ − sin φ₁)·φ₀,
  for every report period (also ones that cut state periods);
* annual totals from intervals split at the year boundary equal the direct mean of the gridded
  flux over the year's flux steps;
* aggregate variances (region × period, annual, whole run, ALL) equal aᵀ A a with A a dense
  textbook posterior covariance, for the analytical solver and the variational solver's exact
  extra solves; the variational low-rank value is reported beside them;
* annual-mean and trend uncertainties agree with a Monte Carlo over posterior samples;
* unit conversions, checked by hand.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inversion.aggregates import combine, split_periods, trend_weights
from inversion.config import load_config
from inversion.covariance import Dense
from inversion.posterior import DensePosteriorCovariance, Posterior
from inversion.prior import PriorFlux
from inversion.problem import build_problem, open_inputs
from inversion.parallel import SerialComm
from inversion.regions import Regions
from inversion.report.totals import base_aggregates, elementary_intervals, make_base_totals, mole_rate_factor, \
    optimised_part, report_periods, report_units, summary_statistics
from inversion.sampling import aggregate_samples, posterior_samples
from inversion.solvers import solve
from inversion.state import StateSpace, state_periods
from transport.errors import InputError
from transport.grid import EARTH_RADIUS_M, Grid, TimeAxis

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

JULIAN_YEAR_S = 365.25 * 86400


def synthetic_state(rng, *, start, end, step, period_days, pattern=None, fixed=True) -> StateSpace:
    """3 × 4 grid of 1° cells, two whole-cell regions (A: west half, B: east half but one cell
    left out), one optimised sector (random, or ``pattern``) and a fixed one."""
    grid = Grid.regular(30.0, 33.0, 110.0, 114.0, 1.0, 1.0)
    time = TimeAxis.regular(start, end, step)
    shape = (time.size,) + grid.shape
    bio = rng.normal(0.0, 3e-6, shape) if pattern is None else np.broadcast_to(pattern, shape).copy()
    sectors = {"bio": bio}
    if fixed:
        sectors["fossil"] = rng.uniform(1e-7, 1e-6, shape)
    fraction = np.zeros((2,) + grid.shape)
    fraction[0, :, :2] = 1.0
    fraction[1, :, 2:] = 1.0
    fraction[1, 0, 3] = 0.0
    regions = Regions(names=("A", "B"), fraction=fraction, grid=grid)
    periods = state_periods(np.datetime64(start, "s"), np.datetime64(end, "s"), period_days, time, "test")
    return StateSpace(sectors=("bio",), regions=regions, periods=periods, sites=(),
                      prior=PriorFlux(sectors=sectors, grid=grid, time=time),
                      fixed_sectors=("fossil",) if fixed else ())


def base_from(state, A, x_a, kinds=("annual",), truth=None):
    """BaseTotals of ``state`` for a dense posterior covariance A (B = the identity)."""
    intervals = elementary_intervals(kinds, state.periods)
    agg, sectors = base_aggregates(state, None, intervals)
    opt = optimised_part(agg, state)
    posterior = Posterior(x_b=state.prior_mean(), x_a=x_a, B=Dense(np.eye(state.size)),
                          covariance=DensePosteriorCovariance(A), diagnostics={})
    base = make_base_totals(species="co2", state=state, report=None, codes=state.regions.names, intervals=intervals,
                            agg=agg, sectors=sectors, totals=posterior.aggregate(opt), x_b=posterior.x_b,
                            x_a=posterior.x_a, truth=truth, solver="analytical")
    return base, agg, posterior


def random_spd(rng, n):
    Q = rng.normal(size=(n, n))
    return Q @ Q.T / n + 0.05 * np.eye(n)


# --- constant field ---------------------------------------------------------------------------

def test_totals_of_a_constant_field_equal_the_analytic_area_integral():
    phi0 = 2.5e-6  # mol m-2 s-1, every cell and step
    rng = np.random.default_rng(0)
    state = synthetic_state(rng, start="2023-12-20", end="2024-01-12", step="6h", period_days=5,
                            pattern=np.full((3, 4), phi0), fixed=False)
    base, _, _ = base_from(state, np.eye(state.size) * 0.01, state.prior_mean(), kinds=("period", "annual", "run"))
    periods = report_periods(["period", "annual", "run"], state.periods)
    assert list(periods.label[-3:]) == ["2023", "2024", "2023-12-20/2024-01-12"]
    # region A: lon 110–112, lat 30–33; region B: lon 112–114 minus the cell (30–31 N, 113–114 E)
    band = np.sin(np.radians(33.0)) - np.sin(np.radians(30.0))
    cell = (np.sin(np.radians(31.0)) - np.sin(np.radians(30.0))) * np.radians(1.0)
    area = {0: EARTH_RADIUS_M**2 * np.radians(2.0) * band,
            1: EARTH_RADIUS_M**2 * (np.radians(2.0) * band - cell)}
    groups = [[0], [1], [0, 1]]
    C = base.weights(sectors=["bio"], groups=groups, targets=base.mean_targets(periods.start, periods.end))
    totals = base.combine(C)["prior"].reshape(3, periods.size)  # mol s-1
    for g, expected in enumerate([area[0], area[1], area[0] + area[1]]):
        np.testing.assert_allclose(totals[g], phi0 * expected, rtol=1e-12)
    # one mol CO2 s-1 is 44.0095e-3 kg s-1 = 44.0095e-3 · 31 557 600 kg a-1 = 1.388834e-3 Tg CO2 a-1
    assert report_units("co2").factor == pytest.approx(44.0095e-3 * JULIAN_YEAR_S / 1e9, rel=1e-12)


def test_annual_totals_of_straddling_periods_equal_the_direct_mean_over_the_year():
    """7-day periods across 2023/2024: the annual rows come from intervals split at the year
    boundary and equal Σ_{t∈year} area·m_r·f(x)[t] Δt / Σ Δt computed from the gridded flux."""
    rng = np.random.default_rng(1)
    state = synthetic_state(rng, start="2023-12-20", end="2024-01-17", step="6h", period_days=7)
    intervals = elementary_intervals(["annual"], state.periods)
    assert intervals.size == state.n_period + 1  # one period straddles 1 January
    x = state.prior_mean() + rng.normal(0.0, 0.7, state.size)
    base, _, _ = base_from(state, np.eye(state.size), x)
    years = report_periods(["annual"], state.periods)
    C = base.weights(sectors=base.sectors, groups=[[0], [1]], targets=base.mean_targets(years.start, years.end))
    got = base.combine(C)["posterior"].reshape(2, years.size)
    flux = state.to_flux(x)
    area = state.regions.grid.cell_area()
    dt = state.flux_time.duration_s
    for r in range(2):
        per_step = np.einsum("tij,ij->t", flux, area * state.regions.fraction[r])
        for y in range(years.size):
            steps = (state.flux_time.start >= years.start[y]) & (state.flux_time.end <= years.end[y])
            expected = np.sum(per_step[steps] * dt[steps]) / np.sum(dt[steps])
            assert got[r, y] == pytest.approx(expected, rel=1e-12)


def test_split_periods_and_trend_weights():
    periods = TimeAxis(start=np.array(["2023-12-30", "2024-01-03"], dtype="datetime64[s]"),
                       end=np.array(["2024-01-03", "2024-01-05"], dtype="datetime64[s]"))
    out = split_periods(periods, np.array(["2024-01-01", "2030-01-01"], dtype="datetime64[s]"))
    assert [str(t)[:10] for t in out.start] == ["2023-12-30", "2024-01-01", "2024-01-03"]
    t = np.array([2019.0, 2020.0, 2021.0, 2022.0])
    w = trend_weights(t)
    assert w @ (3.0 + 2.5 * t) == pytest.approx(2.5)  # the slope of a line
    assert w @ np.ones(4) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="two distinct"):
        trend_weights(np.array([2020.0]))


# --- dense reference ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_case(tmp_path_factory):
    return make_case(tmp_path_factory.mktemp("report_cov") / "case", seed=3, period_days=2)


@pytest.mark.parametrize("method", ["analytical", "variational"])
def test_aggregate_variances_equal_the_dense_reference(tiny_case, method, record_property):
    """var of every report total (regions and ALL × state periods, the run, the year) equals
    aᵀ A a with A = (B⁻¹ + Hᵀ R⁻¹ H)⁻¹ formed densely; variational: exact solves equal it,
    the low-rank value is reported with its difference."""
    config = load_config(tiny_case)
    config = config.model_copy(update={"solver": config.solver.model_copy(update={"method": method})})
    inputs = open_inputs(config)
    problem = build_problem(config, SerialComm(), inputs)
    intervals = elementary_intervals(["period", "annual", "run"], problem.state.periods)
    agg, sectors = base_aggregates(problem.state, None, intervals)
    opt = optimised_part(agg, problem.state)
    posterior = solve(problem, opt)
    base = make_base_totals(species="co2", state=problem.state, report=None, codes=problem.state.regions.names,
                            intervals=intervals, agg=agg, sectors=sectors, totals=posterior.aggregate(opt),
                            x_b=posterior.x_b, x_a=posterior.x_a, truth=None, solver=method)
    # dense textbook reference
    H = problem.H.matrix.toarray()
    B = problem.B.apply(np.eye(problem.B.size))
    A = np.linalg.inv(np.linalg.inv(B) + H.T @ (H / problem.R.variance()[:, None]))
    periods = report_periods(["period", "annual", "run"], problem.state.periods)
    n = len(base.regions)
    groups = [[r] for r in range(n)] + [list(range(n))]
    C = base.weights(sectors=base.sectors, groups=groups, targets=base.mean_targets(periods.start, periods.end))
    res = base.combine(C)
    a = C @ base.matrix  # the totals as linear functions of the state
    reference = np.einsum("ij,jk,ik->i", a, A, a)
    got = np.diag(res["posterior_cov"])
    worst = float(np.max(np.abs(got - reference) / reference))
    record_property(f"max_rel_error_{method}", worst)
    print(f"{method}: max relative error of {got.size} aggregate variances vs dense aᵀAa: {worst:.2e}")
    assert worst < 1e-8
    # the means too, and the covariance between totals (not only the variances)
    np.testing.assert_allclose(res["posterior_cov"], a @ A @ a.T, rtol=1e-8, atol=1e-8 * reference.max())
    np.testing.assert_allclose(res["prior_cov"], a @ B @ a.T, rtol=1e-10, atol=1e-12 * reference.max())
    if method == "variational":
        lowrank = np.diag(res["posterior_cov_lowrank"])
        expected = np.diag(posterior.covariance.aggregate(a))  # L (I − V Λ Vᵀ) Lᵀ from the Ritz pairs
        np.testing.assert_allclose(lowrank, expected, rtol=1e-8)
        diff = float(np.max(np.abs(np.sqrt(lowrank) - np.sqrt(got)) / np.sqrt(got)))
        record_property("max_rel_sd_difference_lowrank_vs_exact", diff)
        print(f"variational: max relative difference low-rank vs exact σ: {diff:.2e}")
    else:
        assert res["posterior_cov_lowrank"] is None


# --- Monte Carlo ------------------------------------------------------------------------------

def test_annual_mean_and_trend_uncertainty_match_monte_carlo(record_property):
    """Three years of 45-day periods (straddling year boundaries), a dense posterior covariance
    with correlations across periods: σ of annual totals, the multi-year mean and the trend
    from C Σ Cᵀ agree with the spread of the same totals over posterior samples."""
    rng = np.random.default_rng(7)
    state = synthetic_state(rng, start="2021-01-01", end="2024-01-01", step="1D", period_days=45)
    A = random_spd(rng, state.size)
    x_a = state.prior_mean() + rng.normal(0.0, 0.3, state.size)
    base, agg, posterior = base_from(state, A, x_a)
    st = summary_statistics(base)
    assert st.labels == ("mean", "annual_mean", "trend")
    years = st.years
    assert list(years.label) == ["2021", "2022", "2023"]
    targets = np.vstack([base.mean_targets(years.start, years.end), st.targets])
    groups = [[0], [1], [0, 1]]
    C = base.weights(sectors=base.sectors, groups=groups, targets=targets)
    res = base.combine(C)
    sd = np.sqrt(np.diag(res["posterior_cov"]))
    n = 40_000
    samples = posterior_samples(posterior, np.random.default_rng(11), n)
    totals = aggregate_samples(combine(agg, C, region=np.zeros(C.shape[0]), period=np.zeros(C.shape[0]),
                                       start=np.zeros(C.shape[0]), end=np.zeros(C.shape[0])), samples)
    mc_mean, mc_sd = totals.mean(axis=1), totals.std(axis=1, ddof=1)
    # sampling errors: mean σ/√N, standard deviation ≈ σ/√(2N)
    z_mean = np.abs(mc_mean - res["posterior"]) / (sd / np.sqrt(n))
    rel_sd = np.abs(mc_sd / sd - 1.0)
    assert np.all(z_mean < 4.5), z_mean
    assert np.all(rel_sd < 4.5 / np.sqrt(2 * n)), rel_sd
    labels = [f"{g}:{t}" for g in ("A", "B", "ALL") for t in list(years.label) + list(st.labels)]
    worst = int(np.argmax(rel_sd))
    record_property("mc_max_rel_sd_error", float(rel_sd.max()))
    print(f"Monte Carlo ({n} samples): max |σ_MC/σ − 1| = {rel_sd.max():.4f} ({labels[worst]}), "
          f"expected sampling error 1/√(2N) = {1 / np.sqrt(2 * n):.4f}; trend σ (ALL) = {sd[-1]:.4g} mol s-1 yr-1")


# --- units ------------------------------------------------------------------------------------

def test_unit_conversions_by_hand():
    year = 365.25 * 86400.0
    co2 = report_units("co2")
    assert co2.label == "Tg CO2 yr-1" and co2.carbon_label == "Tg C yr-1"
    # 1000 mol CO2 s-1 = 44.0095 kg s-1 = 1.388834e9 kg a-1 = 1.388834 Tg CO2 a-1; 12.011 kg C s-1 = 0.379038 Tg C a-1
    assert 1000 * co2.factor == pytest.approx(1.388834, rel=1e-6)
    assert 1000 * co2.carbon_factor == pytest.approx(0.3790384, rel=1e-6)
    assert co2.carbon_factor / co2.factor == pytest.approx(12.011 / 44.0095, rel=1e-12)
    assert co2.kg_per_year == pytest.approx(44.0095e-3 * year, rel=1e-12)
    ch4 = report_units("ch4")
    assert ch4.label == "Gg CH4 yr-1" and ch4.carbon_label is None
    assert 1000 * ch4.factor == pytest.approx(16.0425e-3 * 1000 * year / 1e6, rel=1e-12)  # 506.26 Gg a-1
    # inventory units → mol s-1
    assert mole_rate_factor("Mt CO2 yr-1", "co2") == pytest.approx(1e12 / 44.0095 / year, rel=1e-12)  # 720.0 mol s-1
    assert mole_rate_factor("Tg CO2 yr-1", "co2") == pytest.approx(mole_rate_factor("Mt CO2 yr-1", "co2"), rel=1e-12)
    assert mole_rate_factor("Tg C yr-1", "co2") == pytest.approx(1e12 / 12.011 / year, rel=1e-12)
    assert mole_rate_factor("Tg C yr-1", "co2") * co2.factor == pytest.approx(44.0095 / 12.011, rel=1e-12)
    assert mole_rate_factor("kt CH4 yr-1", "ch4") == pytest.approx(1e9 / 16.0425 / year, rel=1e-12)
    assert mole_rate_factor("Gg CH4 yr-1", "ch4") * ch4.factor == pytest.approx(1.0, rel=1e-12)
    assert mole_rate_factor("mol s-1", "ch4") == 1.0
    for bad, species, match in (("kg yr-1", "co2", "of what"), ("Gg CH4 yr-1", "co2", "mass of CH4"),
                                ("Mt CO2e yr-1", "co2", "unknown unit"), ("Mt CO2", "co2", "not an emission rate")):
        with pytest.raises(InputError, match=match):
            mole_rate_factor(bad, species)
