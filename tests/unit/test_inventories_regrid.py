"""Conservative regridding of inventories onto the inversion grid through the whole sector
mapping (window, longitude wrapping, coverage): the area integral is conserved globally and
per region to 1e-10, constant fields are exact, and 0–360° / −180–180° inputs agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.config import SectorConfig
from inversion.inventories import map_sector, open_sector, remap
from transport.errors import InputError
from transport.grid import EARTH_RADIUS_M, Grid, TimeAxis

TIME = TimeAxis.regular("2024-07-01", "2024-07-02", "6h")
CONSERVATION = 1e-10


def write_field(path: Path, lat: np.ndarray, lon: np.ndarray, values: np.ndarray) -> Path:
    ds = xr.Dataset({"flux": (("lat", "lon"), values, {"units": "mol m-2 s-1"})}, coords={"lat": lat, "lon": lon})
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def regrid(path: Path, grid: Grid, **keys) -> np.ndarray:
    sector = SectorConfig(file=path, variable="flux", time_mapping="constant", **keys)
    return map_sector("s", sector, "co2", grid, TIME, "footprints.h5")[0]


def centres(lo: float, hi: float, step: float) -> np.ndarray:
    return lo + step * (np.arange(round((hi - lo) / step)) + 0.5)


def rectangle_area(lat_bounds: np.ndarray, lon_bounds: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """Area (m²) of each cell's intersection with [lat0, lat1] × [lon0, lon1], by hand: R² Δ(sin φ) Δλ."""
    lat0, lat1, lon0, lon1 = rect
    dsin = np.clip(np.sin(np.radians(np.minimum(lat_bounds[:, 1], lat1)))
                   - np.sin(np.radians(np.maximum(lat_bounds[:, 0], lat0))), 0, None)
    dlon = np.clip(np.radians(np.minimum(lon_bounds[:, 1], lon1) - np.maximum(lon_bounds[:, 0], lon0)), 0, None)
    return EARTH_RADIUS_M**2 * np.outer(dsin, dlon)


@pytest.fixture(scope="module")
def global_field(tmp_path_factory) -> tuple[Path, Grid, np.ndarray]:
    """A rough random flux on a global 0.25° grid stored with 0–360° longitudes."""
    rng = np.random.default_rng(4)
    lat, lon = centres(-90, 90, 0.25), centres(0, 360, 0.25)
    values = rng.lognormal(size=(lat.size, lon.size)) * 1e-6 - 0.5e-6
    path = write_field(tmp_path_factory.mktemp("regrid") / "global.nc", lat, lon, values)
    return path, Grid.from_centres(lat, lon), values


def test_global_integral_is_conserved(global_field):
    path, source, values = global_field
    target = Grid.regular(-90, 90, -180, 180, 2.0, 2.5)
    flux = regrid(path, target)
    total_source = np.sum(values * source.cell_area())
    total_target = np.sum(flux * target.cell_area())
    assert abs(total_target - total_source) <= CONSERVATION * np.sum(np.abs(values) * source.cell_area())


REGIONS = [(-90, -30, -180, -60), (-30, 30, -60, 60), (30, 90, 60, 180), (40, 60, -20, 30),  # across 0°
           (-10, 10, 100, 180), (50, 52, -2.5, 2.5)]  # unions of target cells


@pytest.mark.parametrize("rect", REGIONS, ids=lambda r: f"lat{r[0]}..{r[1]}_lon{r[2]}..{r[3]}")
def test_region_integrals_are_conserved(global_field, rect):
    path, source, values = global_field
    target = Grid.regular(-90, 90, -180, 180, 1.0, 1.25)
    flux = regrid(path, target)
    inside = rectangle_area(target.lat_bounds, target.lon_bounds, rect)
    # the source is stored 0–360°: intersect with the region shifted by 0 and +360°
    lat0, lat1, lon0, lon1 = rect
    area_source = sum(rectangle_area(source.lat_bounds, source.lon_bounds, (lat0, lat1, lon0 + s, lon1 + s))
                      for s in (0.0, 360.0))
    reference = np.sum(values * area_source)
    assert abs(np.sum(flux * inside) - reference) <= CONSERVATION * np.sum(np.abs(values) * area_source)


def test_region_integrals_on_non_nested_grids(tmp_path):
    """A 0.3° × 0.7° inventory onto a 1° domain: region edges cut inventory cells."""
    rng = np.random.default_rng(7)
    lat, lon = centres(10, 40, 0.3), centres(90, 130.6, 0.7)
    values = rng.normal(size=(lat.size, lon.size))
    path = write_field(tmp_path / "regional.nc", lat, lon, values)
    source = Grid.from_centres(lat, lon)
    target = Grid.regular(15, 35, 100, 125, 1.0, 1.0)
    flux = regrid(path, target)
    for rect in [(15, 35, 100, 125), (15, 16, 100, 101), (20, 27, 103, 119), (31, 35, 121, 125)]:
        reference = np.sum(values * rectangle_area(source.lat_bounds, source.lon_bounds, rect))
        mapped = np.sum(flux * rectangle_area(target.lat_bounds, target.lon_bounds, rect))
        scale = np.sum(np.abs(values) * rectangle_area(source.lat_bounds, source.lon_bounds, rect))
        assert abs(mapped - reference) <= CONSERVATION * scale, rect


def test_constant_fields_are_exact(tmp_path):
    lat, lon = centres(-90, 90, 0.1), centres(0, 360, 0.1)
    path = write_field(tmp_path / "constant.nc", lat, lon, np.full((lat.size, lon.size), 3.7e-6))
    for target in (Grid.regular(22, 46, 104, 128, 0.5, 0.5), Grid.regular(50, 52, -2, 2, 0.5, 0.5),
                   Grid.regular(-90, 90, -180, 180, 2.0, 2.5), Grid.regular(-6, 6, 170, 190, 0.3, 0.4)):
        np.testing.assert_allclose(regrid(path, target), 3.7e-6, rtol=1e-14, atol=0)


@pytest.mark.parametrize("target", [Grid.regular(50, 52, -2, 2, 0.5, 0.5), Grid.regular(-5, 5, 170, 190, 0.5, 0.5),
                                    Grid.regular(-90, 90, -180, 180, 2.0, 2.5)],
                         ids=["across 0°", "across 180°", "global"])
def test_0_360_and_minus180_180_inventories_give_identical_results(tmp_path, global_field, target):
    path, source, values = global_field
    half = source.lon.size // 2
    other = write_field(tmp_path / "west.nc", source.lat, np.concatenate([source.lon[half:] - 360, source.lon[:half]]),
                        np.concatenate([values[:, half:], values[:, :half]], axis=1))
    np.testing.assert_allclose(regrid(path, target), regrid(other, target), rtol=1e-12, atol=0)


def test_an_inventory_on_the_inversion_grid_is_used_unchanged(tmp_path):
    grid = Grid.regular(30, 36, 110, 118, 1, 1)
    values = np.random.default_rng(1).normal(size=grid.shape)
    path = write_field(tmp_path / "same.nc", grid.lat, grid.lon, values)
    np.testing.assert_array_equal(regrid(path, grid), values)
    np.testing.assert_array_equal(regrid(path, grid, regrid=False), values)


def test_an_inventory_not_covering_the_domain_is_refused(tmp_path):
    lat, lon = centres(30, 40, 0.5), centres(100, 115, 0.5)
    path = write_field(tmp_path / "small.nc", lat, lon, np.ones((lat.size, lon.size)))
    with pytest.raises(InputError) as info:
        regrid(path, Grid.regular(32, 38, 110, 120, 1, 1))
    message = str(info.value)
    assert str(path) in message and "flux" in message and "does not cover the inversion domain" in message
    assert "30 of 60 cells" in message and "lat 32…38, lon 115…120" in message
    with pytest.raises(InputError, match="does not overlap the inversion domain"):
        regrid(path, Grid.regular(-10, 0, 0, 10, 1, 1))


def test_off_grid_file_with_regrid_false_is_refused(tmp_path):
    grid = Grid.regular(30, 36, 110, 118, 1, 1)
    path = write_field(tmp_path / "shifted.nc", grid.lat + 0.5, grid.lon, np.ones(grid.shape))
    with pytest.raises(InputError, match=r"lat/lon: the prior grid .* differs from the inversion grid of "
                       r"footprints.h5 .*regrid the file to the footprint grid"):
        regrid(path, grid, regrid=False)


def test_mapping_in_blocks_of_flux_steps_gives_the_same_flux_and_nan_count(tmp_path, monkeypatch):
    """Long periods are read in blocks; blocks sharing an inventory step count its NaN once."""
    lat, lon = centres(30, 36, 0.5), centres(110, 118, 0.5)
    stamps = np.arange("2024-06-29", "2024-07-03", np.timedelta64(1, "D"), dtype="datetime64[s]")
    values = np.random.default_rng(3).normal(size=(stamps.size, lat.size, lon.size))
    values[:, 4, 5] = np.nan
    ds = xr.Dataset({"flux": (("time", "lat", "lon"), values, {"units": "umol m-2 s-1"})},
                    coords={"time": stamps, "lat": lat, "lon": lon})
    path = tmp_path / "daily.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    sector = SectorConfig(file=path, variable="flux", nan="zero")
    grid, time = Grid.regular(31, 35, 111, 117, 1, 1), TimeAxis.regular("2024-06-29", "2024-07-03", "3h")

    def run():
        return remap.map_inventory(open_sector("s", sector, "co2"), grid, time, time_mapping="step", nan="zero",
                                   regrid=True, grid_source="footprints.h5", sector="s")

    whole = run()
    monkeypatch.setattr(remap, "MAX_BLOCK_VALUES", 1)  # one flux step per block: each day read 8 times
    blocks = run()
    np.testing.assert_array_equal(blocks.flux, whole.flux)
    assert blocks.nan_zeroed == whole.nan_zeroed == stamps.size and blocks.n_steps_read == stamps.size
