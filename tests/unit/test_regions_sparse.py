"""Sparse region masks (inversion.regions): the region matrix M against the dense
computations it replaced, mask files read in slices of regions, grid-cell states
(``state.regions = "grid"``) built without any dense (n_region, nlat, nlon) array, and sparse
aggregate matrices."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

import inversion.regions as regions_module
from inversion.aggregates import region_totals
from inversion.config import load_config
from inversion.io import write_netcdf
from inversion.parallel import SerialComm
from inversion.prior import PriorFlux
from inversion.problem import build_problem, open_inputs, prior_covariance
from inversion.regions import Regions, read_regions
from inversion.state import StateSpace, state_periods
from transport.errors import InputError
from transport.grid import Grid, TimeAxis, great_circle_km

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started without the repository root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

START = np.datetime64("2024-07-01T00:00:00", "s")
END = np.datetime64("2024-07-03T00:00:00", "s")


def random_fraction(rng: np.random.Generator, grid: Grid, n_region: int) -> np.ndarray:
    """Partial fractions (Σ_r ≤ 1), shared cells, one uncovered cell, regions absent from rows."""
    weights = rng.uniform(0.0, 1.0, (n_region + 1,) + grid.shape)
    weights[:n_region] *= rng.uniform(size=(n_region,) + grid.shape) < 0.5  # each region covers ~half the cells
    fraction = weights[:n_region] / weights.sum(axis=0)
    fraction[:, 0, 0] = 0.0
    for r in range(n_region):  # every region keeps at least one cell
        fraction[r, 1 + r % (grid.shape[0] - 1), r % grid.shape[1]] = 0.5 / n_region
    return fraction / np.maximum(fraction.sum(axis=0), 1.0)


def mask_file(path: Path, grid: Grid, fraction: np.ndarray, names) -> Path:
    write_netcdf(xr.Dataset({"region_fraction": (("region", "lat", "lon"), fraction, {"units": "1"})},
                            coords={"region": list(names), "lat": grid.lat, "lon": grid.lon}), path)
    return path


def dense_centroids(fraction: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The former dense computation: einsum over (region, lat, lon)."""
    lat, lon = np.meshgrid(np.radians(grid.lat), np.radians(grid.lon), indexing="ij")
    xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
    v = np.einsum("rij,cij->rc", fraction * grid.cell_area(), xyz)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.degrees(np.arcsin(v[:, 2])), np.degrees(np.arctan2(v[:, 1], v[:, 0]))


def dense_loop_E(state: StateSpace, fraction: np.ndarray) -> np.ndarray:
    """The former per-region loop (dense fractions), kept here as the reference."""
    ncell = state.regions.grid.size
    steps = np.flatnonzero(state.period_of_step >= 0)
    E = np.zeros((state.n_columns, state.n_flux))
    for r in range(state.n_region):
        frac = fraction[r].ravel()
        cells = np.flatnonzero(frac)
        row = (steps[:, None] * ncell + cells[None, :]).ravel()
        for s, name in enumerate(state.sectors):
            pattern = state.prior.sectors[name].reshape(state.flux_time.size, ncell)
            col = state.flux_index(s, 0, r) + state.period_of_step[steps] * state.n_region
            E[row, np.repeat(col, cells.size)] = (pattern[steps][:, cells] * frac[cells]).ravel()
    return E


def make_state(regions: Regions, rng: np.random.Generator, *, zeros: bool = False) -> StateSpace:
    grid = regions.grid
    time = TimeAxis.regular(START - np.timedelta64(12, "h"), END, "6h")
    periods = state_periods(START, END, 0.75, time, "test")
    shape = (time.size,) + grid.shape
    bio = rng.normal(0.0, 5e-6, shape)
    if zeros:
        bio[:, 1, :] = 0.0  # zero prior flux: no stored entries in E
    sectors = {"bio": bio, "ocean": rng.normal(-1e-7, 1e-7, shape), "fossil": rng.uniform(1e-7, 1e-6, shape)}
    return StateSpace(sectors=("bio", "ocean"), regions=regions, periods=periods, sites=("AAA",),
                      prior=PriorFlux(sectors=sectors, grid=grid, time=time), fixed_sectors=("fossil",))


@pytest.fixture
def grid() -> Grid:
    return Grid.regular(30.0, 34.0, 110.0, 115.0, 1.0, 1.0)


def test_region_matrix_matches_the_dense_fractions(grid):
    rng = np.random.default_rng(1)
    fraction = random_fraction(rng, grid, 4)
    regions = Regions(names=("A", "B", "C", "D"), fraction=fraction, grid=grid)
    assert sp.isspmatrix_csr(regions.matrix) and regions.matrix.dtype == np.float64
    assert regions.matrix.shape == (4, grid.size) and regions.matrix.nnz == np.count_nonzero(fraction)
    assert regions.matrix.has_sorted_indices
    np.testing.assert_array_equal(regions.fraction, fraction)
    np.testing.assert_allclose(regions.coverage(), fraction.sum(axis=0), rtol=1e-15)
    np.testing.assert_allclose(regions.area_m2(), np.einsum("rij,ij->r", fraction, grid.cell_area()), rtol=1e-13)
    lat, lon = regions.centroids()
    ref_lat, ref_lon = dense_centroids(fraction, grid)
    np.testing.assert_allclose(lat, ref_lat, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lon, ref_lon, rtol=0, atol=1e-10)
    np.testing.assert_allclose(regions.distance_km(), great_circle_km(
        ref_lat[:, None], ref_lon[:, None], ref_lat[None, :], ref_lon[None, :]), rtol=1e-9, atol=1e-6)
    # same_as: identical names and fractions only
    assert regions.same_as(Regions(names=regions.names, matrix=regions.matrix.copy(), grid=grid))
    assert not regions.same_as(Regions(names=("A", "B", "C", "X"), fraction=fraction, grid=grid))
    changed = fraction.copy()
    changed[0, 2, 2] *= 0.5
    assert not regions.same_as(Regions(names=regions.names, fraction=changed, grid=grid))
    with pytest.raises(ValueError, match="exactly one"):
        Regions(names=("A",), grid=grid)
    with pytest.raises(ValueError, match="shape"):
        Regions(names=("A",), matrix=sp.csr_matrix((2, grid.size)), grid=grid)


def test_mask_file_read_in_slices_equals_the_whole_read(grid, tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    fraction = random_fraction(rng, grid, 7)
    names = [f"R{k}" for k in range(7)]
    path = mask_file(tmp_path / "mask.nc", grid, fraction, names)
    whole = read_regions(path, grid, "test grid")
    monkeypatch.setattr(regions_module, "_CHUNK_VALUES", 2 * grid.size)  # slices of 2 regions: 4 reads
    sliced = read_regions(path, grid, "test grid")
    assert sliced.names == tuple(names) and sliced.same_as(whole)
    np.testing.assert_array_equal(sliced.fraction, fraction)
    # bad values in several slices are all counted
    bad = fraction.copy()
    bad[0, 1, 1], bad[5, 2, 2], bad[6, 3, 3] = np.nan, -0.1, 1.5
    with pytest.raises(InputError, match="3 values are NaN or outside"):
        read_regions(mask_file(tmp_path / "bad.nc", grid, bad, names), grid, "test grid")
    empty = fraction.copy()
    empty[4] = 0.0
    with pytest.raises(InputError, match="no cell on the grid: R4"):
        read_regions(mask_file(tmp_path / "empty.nc", grid, empty, names), grid, "test grid")
    over = fraction.copy()
    over[:, 3, 4] = 0.5  # 7 × 0.5 in one cell, regions in different slices
    with pytest.raises(InputError, match="fractions of 1 cells sum to more than 1"):
        read_regions(mask_file(tmp_path / "over.nc", grid, over, names), grid, "test grid")


def test_E_equals_the_former_per_region_loop(grid):
    rng = np.random.default_rng(3)
    fraction = random_fraction(rng, grid, 5)
    state = make_state(Regions(names=tuple("ABCDE"), fraction=fraction, grid=grid), rng, zeros=True)
    E = state.E
    assert sp.isspmatrix_csr(E) and E.has_sorted_indices and np.all(E.data != 0)
    np.testing.assert_array_equal(E.toarray(), dense_loop_E(state, fraction))
    expected_fixed = sum(state.prior.sectors[s] for s in state.fixed_sectors) + sum(
        state.prior.sectors[s] * (1 - fraction.sum(axis=0) * (state.period_of_step >= 0)[:, None, None])
        for s in state.sectors)
    np.testing.assert_allclose(state.fixed_flux, expected_fixed.ravel(), rtol=1e-14, atol=1e-22)


def test_grid_cell_state_never_builds_dense_fractions(monkeypatch):
    """One region per cell on 30 × 40: M = I (nnz = cells), E has one entry per (step, cell,
    sector), the totals are sparse, and no code path asks for the dense fractions."""
    grid = Grid.regular(20.0, 35.0, 100.0, 120.0, 0.5, 0.5)
    assert grid.shape == (30, 40)
    regions = Regions.grid_cells(grid)
    assert sp.isspmatrix_csr(regions.matrix) and regions.matrix.nnz == grid.size == regions.size == 1200
    assert regions.names[0] == "cell_00_00" and regions.names[41] == "cell_01_01"

    def refuse(self):
        raise AssertionError("the dense region fractions were materialised")

    monkeypatch.setattr(Regions, "fraction", property(refuse))
    rng = np.random.default_rng(4)
    state = make_state(regions, rng)
    E = state.E
    steps = np.flatnonzero(state.period_of_step >= 0)
    assert E.nnz == steps.size * grid.size * state.n_sector
    t, c = steps[-1], 567
    s, p = 1, state.period_of_step[steps[-1]]
    assert E[t * grid.size + c, state.flux_index(s, p, c)] == state.prior.sectors["ocean"].reshape(-1, grid.size)[t, c]
    np.testing.assert_allclose(state.fixed_flux.reshape((-1,) + grid.shape)[steps],
                               state.prior.sectors["fossil"][steps], rtol=1e-15)
    lat, _ = regions.centroids()
    np.testing.assert_allclose(lat.reshape(grid.shape), np.broadcast_to(grid.lat[:, None], grid.shape), atol=1e-9)
    agg = region_totals(state)
    assert sp.isspmatrix_csr(agg.matrix) and agg.matrix.shape == (agg.size, state.size)
    # per (cell, period): n_sector entries; whole run: all periods; ALL rows: every cell
    n_int = state.n_period
    assert agg.matrix.nnz <= 2 * (state.n_sector * grid.size * 2 * n_int) + 2 * state.n_flux
    x = rng.normal(1.0, 0.3, state.size)
    flux = state.to_flux(x)
    area = grid.cell_area().ravel()
    dt = state.flux_time.duration_s
    k = agg.region.index("cell_05_07")
    inside = state.period_of_step == 0
    direct = np.sum(dt[inside] * flux[inside].reshape(-1, grid.size)[:, 5 * 40 + 7]) / dt[inside].sum() * area[207]
    assert agg.offset[k] + agg.matrix[[k]] @ x == pytest.approx(direct, rel=1e-12)


def test_state_regions_grid_equals_a_mask_of_single_cells(tmp_path):
    """``state.regions = "grid"`` builds the same problem as a mask file with one region per
    cell (in C order), without reading or needing any mask file."""
    case = make_case(tmp_path / "case", seed=6, blocks="[6, 8]", period_days=4)  # 6 × 8 grid: a block per cell
    text = (case / "config.toml").read_text()
    assert 'regions = "data/regions.nc"' in text
    (case / "grid.toml").write_text(text.replace('regions = "data/regions.nc"', 'regions = "grid"'))
    config, config_grid = load_config(case / "config.toml"), load_config(case / "grid.toml")
    assert config_grid.state.regions == "grid" and "state.regions" not in config_grid.input_paths()
    a, b = open_inputs(config).state, open_inputs(config_grid).state
    assert b.n_region == a.n_region == 48 and b.regions.names[:2] == ("cell_0_0", "cell_0_1")
    assert (a.regions.matrix != b.regions.matrix).nnz == 0
    assert (a.E != b.E).nnz == 0
    np.testing.assert_array_equal(a.fixed_flux, b.fixed_flux)
    np.testing.assert_allclose(prior_covariance(config_grid, b).dense(), prior_covariance(config, a).dense(),
                               rtol=1e-12, atol=1e-15)
    ta, tb = region_totals(a), region_totals(b)
    assert (ta.matrix != tb.matrix).nnz == 0
    pa, pb = build_problem(config, SerialComm()), build_problem(config_grid, SerialComm())
    assert (pa.H.matrix != pb.H.matrix).nnz == 0
    np.testing.assert_array_equal(pa.y, pb.y)
