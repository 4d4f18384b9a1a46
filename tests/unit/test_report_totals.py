"""Totals over report regions that differ from the state regions (inversion.aggregates).

For report region R with mask m_R the total over period p is, by definition,

    T_R,p(x) = Σ_c m_R(c) · area(c) · f̄(x)[p, c],   f̄ = Σ_{t∈p} f(x)[t] Δt / T_p,

with f(x) = state.to_flux(x) the gridded flux of all sectors; it is computed here directly
from the flux field and compared with the affine form c + a·x of region_totals.
"""

from __future__ import annotations

import numpy as np
import pytest

from inversion.aggregates import DOMAIN, WHOLE_RUN, region_totals
from inversion.prior import PriorFlux
from inversion.regions import Regions
from inversion.state import StateSpace, state_periods
from transport.grid import Grid, TimeAxis

START = np.datetime64("2024-07-01T00:00:00", "s")
END = np.datetime64("2024-07-03T00:00:00", "s")
GRID = Grid.regular(30.0, 34.0, 110.0, 115.0, 1.0, 1.0)


def make_state(rng: np.random.Generator, *, partial: bool) -> StateSpace:
    time = TimeAxis.regular(START - np.timedelta64(12, "h"), END, "6h")
    periods = state_periods(START, END, 0.75, time, "test")
    shape = (time.size,) + GRID.shape
    sectors = {"bio": rng.normal(0.0, 5e-6, shape), "ocean": rng.normal(-1e-7, 1e-7, shape),
               "fossil": rng.uniform(1e-7, 1e-6, shape)}
    if partial:
        w = rng.uniform(0.0, 1.0, (4,) + GRID.shape)
        fraction = w[:3] / w.sum(axis=0)
    else:  # whole-cell clusters, some cells in no region
        label = rng.integers(0, 4, GRID.shape)
        label[3, :4] = [0, 1, 2, 3]
        fraction = np.stack([(label == r).astype(float) for r in range(3)])
    regions = Regions(names=("S1", "S2", "S3"), fraction=fraction, grid=GRID)
    return StateSpace(sectors=("bio", "ocean"), regions=regions, periods=periods, sites=("AAA",),
                      prior=PriorFlux(sectors=sectors, grid=GRID, time=time), fixed_sectors=("fossil",))


def report_regions(rng: np.random.Generator) -> Regions:
    w = rng.uniform(0.0, 1.0, (3,) + GRID.shape)
    return Regions(names=("P1", "P2"), fraction=w[:2] / w.sum(axis=0), grid=GRID)


def direct_totals(state: StateSpace, report: Regions, x: np.ndarray) -> np.ndarray:
    """(n_report, n_period) mean net flux (mol s⁻¹) from the gridded flux field."""
    flux = state.to_flux(x)
    dt = state.flux_time.duration_s
    out = np.zeros((report.size, state.n_period))
    for p in range(state.n_period):
        steps = state.period_of_step == p
        mean = np.einsum("t,tij->ij", dt[steps], flux[steps]) / dt[steps].sum()
        out[:, p] = np.einsum("rij,ij->r", report.fraction, mean * GRID.cell_area())
    return out


@pytest.mark.parametrize("partial", [False, True])
def test_report_region_totals_equal_the_gridded_flux_integral(partial):
    rng = np.random.default_rng(11 + partial)
    state = make_state(rng, partial=partial)
    report = report_regions(rng)
    agg = region_totals(state, report)
    assert sorted(set(agg.region)) == sorted(report.names + (DOMAIN,))
    for _ in range(3):
        x = state.prior_mean() + rng.normal(0.0, 0.5, state.size)
        value = agg.offset + agg.matrix @ x
        expected = direct_totals(state, report, x)
        for k, (name, period) in enumerate(zip(agg.region, agg.period)):
            if name == DOMAIN or period == WHOLE_RUN:
                continue
            assert value[k] == pytest.approx(expected[report.names.index(name), period], rel=1e-10)
        # whole run: duration-weighted mean; ALL: the sum over report regions
        weights = state.period_seconds / state.period_seconds.sum()
        whole = {n: value[k] for k, (n, p) in enumerate(zip(agg.region, agg.period)) if p == WHOLE_RUN}
        assert whole["P1"] == pytest.approx(expected[0] @ weights, rel=1e-10)
        assert whole[DOMAIN] == pytest.approx(whole["P1"] + whole["P2"], rel=1e-12)
    # background offsets never enter a flux total
    assert not agg.matrix[:, state.n_flux:].toarray().any()


def test_report_mask_equal_to_the_state_mask_keeps_the_exact_state_totals():
    """Cells shared by state regions: the state's own totals scale each share by its own
    factor, which a report mask cannot express — an identical report mask is recognised."""
    rng = np.random.default_rng(5)
    state = make_state(rng, partial=True)
    same = Regions(names=state.regions.names, fraction=state.regions.fraction.copy(), grid=GRID)
    default, given = region_totals(state), region_totals(state, same)
    np.testing.assert_array_equal(default.matrix.toarray(), given.matrix.toarray())
    np.testing.assert_array_equal(default.offset, given.offset)
    # and the cell-mean formula would differ here (shared cells), so the distinction matters
    renamed = Regions(names=("X1", "X2", "X3"), fraction=state.regions.fraction.copy(), grid=GRID)
    assert not np.allclose(region_totals(state, renamed).matrix.toarray(), default.matrix.toarray())
