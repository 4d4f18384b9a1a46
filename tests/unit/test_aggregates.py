"""Region totals (inversion.aggregates) against direct computations from gridded fluxes.

A region total over a period is the mean net flux of all sectors over the region,

    T_{r,p}(x) = Σ_{t∈p} Σ_cells area · m_r · f_r(x)[t] · Δt / T_p      (mol s⁻¹),

where f_r is the flux inside region r.  For a mask of whole cells (m_r ∈ {0, 1}) that is the
gridded flux ``state.to_flux(x)``; for partial cells the flux of the region's share of a cell
is Σ_fixed φ + Σ_s φ_s x_{s,p,r} (the rest of the cell belongs to other regions or keeps its
prior), which is checked separately.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inversion.aggregates import DOMAIN, WHOLE_RUN, region_totals, report_unit
from inversion.config import load_config
from inversion.prior import PriorFlux
from inversion.problem import open_inputs
from inversion.regions import Regions
from inversion.state import StateSpace, state_periods
from transport.grid import Grid, TimeAxis

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

START = np.datetime64("2024-07-01T00:00:00", "s")
END = np.datetime64("2024-07-03T00:00:00", "s")


def make_state(rng: np.random.Generator, *, partial: bool) -> StateSpace:
    """4 × 5 grid, 6-hourly flux steps from 12 h before the run, periods of 18, 18 and 12 h,
    optimised sectors bio and ocean, fixed fossil, 3 regions and some uncovered cells, and one
    background-offset site (which must not enter any total)."""
    grid = Grid.regular(30.0, 34.0, 110.0, 115.0, 1.0, 1.0)
    time = TimeAxis.regular(START - np.timedelta64(12, "h"), END, "6h")
    periods = state_periods(START, END, 0.75, time, "test")
    shape = (time.size,) + grid.shape
    sectors = {"bio": rng.normal(0.0, 5e-6, shape), "ocean": rng.normal(-1e-7, 1e-7, shape),
               "fossil": rng.uniform(1e-7, 1e-6, shape)}
    if partial:
        weights = rng.uniform(0.0, 1.0, (4,) + grid.shape)  # the 4th share stays unoptimised
        fraction = weights[:3] / weights.sum(axis=0)
    else:
        label = rng.integers(0, 4, grid.shape)  # label 3: no region
        label[3, :4] = [0, 1, 2, 3]  # every region has a cell, and so has "no region"
        fraction = np.stack([(label == r).astype(float) for r in range(3)])
    fraction[:, 0, 0] = 0.0  # an uncovered cell
    assert fraction.sum(axis=0).max() <= 1.0 + 1e-12
    regions = Regions(names=("R1", "R2", "R3"), fraction=fraction, grid=grid)
    return StateSpace(sectors=("bio", "ocean"), regions=regions, periods=periods, sites=("AAA",),
                      prior=PriorFlux(sectors=sectors, grid=grid, time=time), fixed_sectors=("fossil",))


def row(agg, region: str, period: int) -> int:
    hits = np.flatnonzero((np.array(agg.region) == region) & (agg.period == period))
    assert hits.size == 1
    return int(hits[0])


def time_mean(state: StateSpace, field: np.ndarray, steps: np.ndarray) -> float:
    """Σ_{t ∈ steps} field[t] Δt / Σ Δt for a per-step series."""
    dt = state.flux_time.duration_s
    return float(np.sum(field[steps] * dt[steps]) / np.sum(dt[steps]))


def period_steps(state: StateSpace, p: int) -> np.ndarray:
    """Flux steps inside period p (brute force), or inside the run for WHOLE_RUN."""
    s, e = state.flux_time.start, state.flux_time.end
    if p == WHOLE_RUN:
        return np.flatnonzero((s >= state.periods.start[0]) & (e <= state.periods.end[-1]))
    return np.flatnonzero((s >= state.periods.start[p]) & (e <= state.periods.end[p]))


@pytest.fixture(scope="module")
def case_state(tmp_path_factory) -> StateSpace:
    case = make_case(tmp_path_factory.mktemp("aggregates_case"), seed=9, blocks="[2, 3]", period_days=2)
    return open_inputs(load_config(case)).state


@pytest.mark.parametrize("source", ["synthetic", "tiny-case"])
def test_totals_equal_direct_computation_from_gridded_flux(source, case_state):
    """Whole-cell masks: offset + M x equals the area-, mask- and duration-weighted mean of
    state.to_flux(x) for every region, period, the whole run and ALL (union of the regions)."""
    state = make_state(np.random.default_rng(5), partial=False) if source == "synthetic" else case_state
    agg = region_totals(state)
    area = state.regions.grid.cell_area()
    names = list(state.regions.names) + [DOMAIN]
    masks = list(state.regions.fraction) + [state.regions.fraction.sum(axis=0)]
    assert agg.size == len(names) * (state.n_period + 1)
    assert agg.matrix.shape == (agg.size, state.size)
    rng = np.random.default_rng(6)
    for x in (state.prior_mean(), state.prior_mean() + rng.normal(0.0, 0.8, state.size)):
        totals = agg.offset + agg.matrix @ x
        flux = state.to_flux(x)  # (t, lat, lon) mol m-2 s-1
        for name, mask in zip(names, masks):
            per_step = np.einsum("tij,ij->t", flux, area * mask)  # mol s-1
            for p in list(range(state.n_period)) + [WHOLE_RUN]:
                expected = time_mean(state, per_step, period_steps(state, p))
                got = totals[row(agg, name, p)]
                assert got == pytest.approx(expected, rel=1e-12, abs=1e-12 * np.abs(per_step).max()), (name, p)


def test_totals_with_partial_cells_equal_the_region_share_formula():
    """m_r ∈ (0, 1): T_{r,p} = Σ_{t∈p} Σ_cells area m_r (φ_fossil + Σ_s φ_s x_{s,p,r}) Δt / T_p."""
    state = make_state(np.random.default_rng(7), partial=True)
    agg = region_totals(state)
    area = state.regions.grid.cell_area()
    x = state.prior_mean() + np.random.default_rng(8).normal(0.0, 0.8, state.size)
    factors = x[: state.n_flux].reshape(state.n_sector, state.n_period, state.n_region)
    totals = agg.offset + agg.matrix @ x
    dt = state.flux_time.duration_s
    domain = np.zeros(state.n_period)
    for r, name in enumerate(state.regions.names):
        w = area * state.regions.fraction[r]
        for p in range(state.n_period):
            steps = period_steps(state, p)
            flux = state.prior.sectors["fossil"][steps] + sum(
                state.prior.sectors[s][steps] * factors[k, p, r] for k, s in enumerate(state.sectors))
            expected = float(np.sum(np.einsum("tij,ij->t", flux, w) * dt[steps]) / np.sum(dt[steps]))
            assert totals[row(agg, name, p)] == pytest.approx(expected, rel=1e-12)
            domain[p] += expected
    for p in range(state.n_period):
        assert totals[row(agg, DOMAIN, p)] == pytest.approx(domain[p], rel=1e-12)
    T = state.period_seconds
    assert totals[row(agg, DOMAIN, WHOLE_RUN)] == pytest.approx(float(domain @ T / T.sum()), rel=1e-12)


def test_row_layout_and_background_offsets():
    state = make_state(np.random.default_rng(9), partial=False)
    agg = region_totals(state)
    n_p = state.n_period + 1
    assert agg.region == tuple(np.repeat(["R1", "R2", "R3", DOMAIN], n_p))
    np.testing.assert_array_equal(agg.period, np.tile([0, 1, 2, WHOLE_RUN], 4))
    np.testing.assert_array_equal(agg.whole_run_rows(), [3, 7, 11, 15])
    np.testing.assert_array_equal(agg.start[:n_p], np.append(state.periods.start, state.periods.start[0]))
    np.testing.assert_array_equal(agg.end[:n_p], np.append(state.periods.end, state.periods.end[-1]))
    # Offsets (last state element, mol mol-1) never enter a flux total; x_s,p,r enters only
    # its own region's rows for period p (plus ALL and the whole run).
    np.testing.assert_array_equal(agg.matrix[:, state.n_flux:].toarray(), 0.0)
    col = state.flux_index(1, 2, 1)  # ocean, period 2, R2
    assert set(np.flatnonzero(agg.matrix[:, col].toarray())) == {row(agg, "R2", 2), row(agg, "R2", WHOLE_RUN),
                                                       row(agg, DOMAIN, 2), row(agg, DOMAIN, WHOLE_RUN)}


def test_report_unit():
    label, factor = report_unit("co2")
    assert label == "Tg CO2 yr-1"
    assert factor == pytest.approx(44.0095e-3 * 365.25 * 86400 / 1e9, rel=1e-12)
    label, factor = report_unit("ch4")
    assert label == "Gg CH4 yr-1"
    assert factor == pytest.approx(16.0425e-3 * 365.25 * 86400 / 1e6, rel=1e-12)
