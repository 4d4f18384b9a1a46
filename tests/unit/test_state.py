"""The state space (inversion.state): E, the fixed flux, named views and state periods.

Two states are used: a synthetic one built here (two optimised sectors and a fixed one,
regions with partial cell fractions and uncovered cells, flux steps before the first period,
a shorter last period, background-offset sites) and the state of a tiny twin case.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inversion.config import load_config
from inversion.io import open_netcdf, write_netcdf
from inversion.prior import PriorFlux
from inversion.problem import open_inputs
from inversion.regions import Regions
from inversion.state import StateSpace, state_periods
from transport.errors import InputError
from transport.grid import Grid, TimeAxis

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

START = np.datetime64("2024-07-01T00:00:00", "s")
END = np.datetime64("2024-07-03T00:00:00", "s")


def synthetic_state(rng: np.random.Generator, *, sites=("AAA", "BBB")) -> StateSpace:
    """3 × 4 grid; 6-hourly flux steps from 12 h before the run; periods of 18 h (the last 12 h);
    3 regions with random partial fractions (summing to ≤ 1 per cell) and 2 uncovered cells."""
    grid = Grid.regular(30.0, 33.0, 110.0, 114.0, 1.0, 1.0)
    time = TimeAxis.regular(START - np.timedelta64(12, "h"), END, "6h")
    periods = state_periods(START, END, 0.75, time, "test")
    shape = (time.size,) + grid.shape
    sectors = {
        "bio": rng.normal(0.0, 5e-6, shape),     # changes sign
        "ocean": rng.normal(-1e-7, 1e-7, shape),
        "fossil": rng.uniform(1e-7, 1e-6, shape),
    }
    weights = rng.uniform(0.0, 1.0, (4,) + grid.shape)  # 3 regions + an "unoptimised" share
    fraction = weights[:3] / weights.sum(axis=0)
    fraction[:, 0, 0] = 0.0  # uncovered cells
    fraction[:, 2, 3] = 0.0
    fraction[1, 1, :] = 0.0  # region 1 absent from a row
    regions = Regions(names=("R1", "R2", "R3"), fraction=fraction, grid=grid)
    prior = PriorFlux(sectors=sectors, grid=grid, time=time)
    return StateSpace(sectors=("bio", "ocean"), regions=regions, periods=periods, sites=tuple(sites), prior=prior,
                      fixed_sectors=("fossil",))


@pytest.fixture
def state() -> StateSpace:
    return synthetic_state(np.random.default_rng(42))


@pytest.fixture(scope="module")
def case_state(tmp_path_factory) -> StateSpace:
    case = make_case(tmp_path_factory.mktemp("state_case"), seed=4, blocks="[2, 3]", period_days=2)
    return open_inputs(load_config(case)).state


def period_of(state: StateSpace, t: int) -> int:
    """Brute force: the period that contains flux step t entirely, or −1."""
    s, e = state.flux_time.start[t], state.flux_time.end[t]
    hits = [p for p in range(state.n_period) if state.periods.start[p] <= s and e <= state.periods.end[p]]
    assert len(hits) <= 1
    return hits[0] if hits else -1


def brute_force_E(state: StateSpace) -> np.ndarray:
    """E[(t,i,j), (s,p,r)] = φ_s(t,i,j) · m_r(i,j) · 1[t ∈ p], one entry at a time."""
    nt = state.flux_time.size
    nlat, nlon = state.regions.grid.shape
    E = np.zeros((nt * nlat * nlon, state.n_flux))
    for t in range(nt):
        p = period_of(state, t)
        if p < 0:
            continue
        for i in range(nlat):
            for j in range(nlon):
                row = (t * nlat + i) * nlon + j
                for s, name in enumerate(state.sectors):
                    for r in range(state.n_region):
                        col = (s * state.n_period + p) * state.n_region + r
                        E[row, col] = state.prior.sectors[name][t, i, j] * state.regions.fraction[r, i, j]
    return E


# ---- E ------------------------------------------------------------------------------------


def test_synthetic_layout(state):
    assert state.n_period == 3 and state.n_flux == 2 * 3 * 3 and state.size == 18 + 2
    np.testing.assert_array_equal(state.period_of_step, [-1, -1, 0, 0, 0, 1, 1, 1, 2, 2])
    np.testing.assert_array_equal(state.period_seconds, [18 * 3600, 18 * 3600, 12 * 3600])
    assert state.flux_index(1, 2, 0) == (1 * 3 + 2) * 3 + 0


def test_E_equals_brute_force_on_synthetic_state(state):
    E = state.E
    assert E.shape == (state.n_columns, state.n_flux)
    np.testing.assert_allclose(E.toarray(), brute_force_E(state), rtol=1e-15, atol=0)
    np.testing.assert_allclose(state.E_operator().matmat(np.eye(state.n_flux)), brute_force_E(state), rtol=1e-15,
                               atol=0)


def test_E_equals_brute_force_on_tiny_case(case_state):
    assert case_state.n_flux == 24 and (case_state.period_of_step < 0).any()
    np.testing.assert_allclose(case_state.E.toarray(), brute_force_E(case_state), rtol=1e-15, atol=0)


def test_E_has_no_rows_before_the_first_period(state):
    nper = state.regions.grid.size
    before = np.flatnonzero(state.period_of_step < 0)
    rows = state.E.tocsr()[before[0] * nper:(before[-1] + 1) * nper]
    assert rows.nnz == 0


# ---- to_flux -------------------------------------------------------------------------------


def _all_sectors(state: StateSpace) -> tuple[np.ndarray, np.ndarray]:
    """Σ of every sector's prior flux, and Σ |φ| (the scale of the rounding error of a sum)."""
    names = state.sectors + state.fixed_sectors
    return (sum(state.prior.sectors[n] for n in names), sum(np.abs(state.prior.sectors[n]) for n in names))


def assert_equal_to_rounding(actual: np.ndarray, desired: np.ndarray, scale: np.ndarray) -> None:
    """|actual − desired| ≤ 8 ε Σ|terms| element by element: equal up to summation order."""
    bound = 8 * np.finfo(np.float64).eps * scale
    excess = np.abs(actual - desired) - bound
    assert actual.shape == desired.shape and excess.max() <= 0, f"worst excess {excess.max():.3e}"


def test_to_flux_of_prior_mean_is_the_full_prior(state):
    """f(x_b) = every sector's prior flux, including uncovered cells and pre-period steps."""
    total, scale = _all_sectors(state)
    assert_equal_to_rounding(state.to_flux(state.prior_mean()), total, scale)


def test_to_flux_of_prior_mean_on_tiny_case(case_state):
    total, scale = _all_sectors(case_state)
    assert_equal_to_rounding(case_state.to_flux(case_state.prior_mean()), total, scale)


def test_to_flux_of_random_state_equals_direct_formula(state):
    """f = Σ_fixed φ + Σ_s φ_s · [(1 − Σ_r m_r) + Σ_r m_r x_{s,p(t),r}] in covered steps."""
    x = np.random.default_rng(1).normal(1.0, 0.7, state.size)
    factors = x[: state.n_flux].reshape(state.n_sector, state.n_period, state.n_region)
    m = state.regions.fraction
    expected = np.array(state.prior.sectors["fossil"])
    for s, name in enumerate(state.sectors):
        phi = state.prior.sectors[name]
        for t in range(state.flux_time.size):
            p = period_of(state, t)
            scale = np.ones(m.shape[1:]) if p < 0 else 1.0 - m.sum(axis=0) + np.einsum("r,rij->ij", factors[s, p], m)
            expected[t] += phi[t] * scale
    scale = sum(np.abs(state.prior.sectors[n]) for n in state.sectors + state.fixed_sectors) * np.abs(x).max()
    assert_equal_to_rounding(state.to_flux(x), expected, 4 * scale)
    # Background offsets do not change the flux.
    y = x.copy()
    y[state.n_flux:] += 1e-6
    np.testing.assert_array_equal(state.to_flux(y), state.to_flux(x))


# ---- named views --------------------------------------------------------------------------


def test_dataset_round_trip(state, tmp_path):
    x = np.random.default_rng(2).normal(size=state.size)
    ds = state.to_dataset(x, "truth")
    assert ds["truth_scaling_factor"].dims == ("sector", "period", "region")
    assert ds["truth_scaling_factor"].sel(sector="ocean", region="R2").values[2] == x[state.flux_index(1, 2, 1)]
    np.testing.assert_array_equal(ds["truth_background_offset"].values, x[state.n_flux:])
    np.testing.assert_array_equal(state.from_dataset(ds, "truth", "memory"), x)
    write_netcdf(ds, tmp_path / "truth.nc")
    np.testing.assert_array_equal(state.from_dataset(open_netcdf(tmp_path / "truth.nc", "truth"), "truth", "file"), x)


def test_dataset_round_trip_without_sites():
    state = synthetic_state(np.random.default_rng(3), sites=())
    x = np.random.default_rng(4).normal(size=state.size)
    assert state.size == state.n_flux
    ds = state.to_dataset(x, "posterior")
    assert "posterior_background_offset" not in ds
    np.testing.assert_array_equal(state.from_dataset(ds, "posterior", "memory"), x)


def test_from_dataset_refuses_another_state(state):
    x = np.zeros(state.size)
    ds = state.to_dataset(x, "truth")
    with pytest.raises(InputError, match="region"):
        state.from_dataset(ds.assign_coords(region=["R1", "R3", "R2"]), "truth", "f.nc")
    with pytest.raises(InputError, match="period"):
        state.from_dataset(ds.isel(period=slice(0, 2)), "truth", "f.nc")
    with pytest.raises(InputError, match="truth_scaling_factor"):
        state.from_dataset(ds.rename(truth_scaling_factor="other"), "truth", "f.nc")
    with pytest.raises(InputError, match="background_offset"):
        state.from_dataset(ds.assign_coords(site=["AAA", "CCC"]), "truth", "f.nc")


# ---- state periods --------------------------------------------------------------------------


def _flux_time() -> TimeAxis:
    return TimeAxis.regular(START - np.timedelta64(12, "h"), END, "6h")


def test_state_periods_on_flux_boundaries():
    periods = state_periods(START, END, 0.75, _flux_time(), "config.toml")
    hours = np.timedelta64(1, "h")
    np.testing.assert_array_equal((periods.start - START) / hours, [0, 18, 36])
    np.testing.assert_array_equal((periods.end - START) / hours, [18, 36, 48])  # last one shorter
    whole = state_periods(START, END, 2, _flux_time(), "config.toml")
    assert whole.size == 1 and whole.start[0] == START and whole.end[0] == END


@pytest.mark.parametrize(
    "start, end, days",
    [
        (START, END, 0.3),                                   # 7.2 h periods
        (START + np.timedelta64(3, "h"), END, 1),            # run starts inside a flux step
        (START, END - np.timedelta64(2, "h"), 1),            # run ends inside a flux step
        (START, END, 5 / 24),                                # 5 h periods on 6 h steps
    ],
    ids=["7.2h-periods", "start-off-step", "end-off-step", "5h-periods"],
)
def test_state_periods_refuse_boundaries_off_flux_steps(start, end, days):
    with pytest.raises(InputError, match="not a flux time-step boundary") as info:
        state_periods(start, end, days, _flux_time(), "config.toml")
    assert info.value.path == "config.toml"
