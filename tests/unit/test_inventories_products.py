"""Each inventory reader normalises its product to mol m-2 s-1 of the species, checked against
hand-computed values on synthetic files written here with the products' real variable names,
dimensions and units (and on the real openghg flux samples when they are present)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from inversion.config import SectorConfig
from inversion.inventories import map_sector, open_sector
from transport.errors import InputError
from transport.grid import Grid, TimeAxis

M_C, M_CO2, M_CH4 = 12.011, 44.0095, 16.0425  # g mol-1
EXTERNAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "external"


def mapped(path, product, grid, time, species="co2", name="sector", **keys):
    return map_sector(name, SectorConfig(product=product, file=path, **keys), species, grid, time, "footprints.h5")


def write(ds: xr.Dataset, path: Path) -> Path:
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def global_centres(step: float, west: float = -180.0) -> tuple[np.ndarray, np.ndarray]:
    n_lat, n_lon = round(180 / step), round(360 / step)
    return -90 + step * (np.arange(n_lat) + 0.5), west + step * (np.arange(n_lon) + 0.5)


# ---- ODIAC: land, intl_bunker (month, lat, lon), gC m-2 d-1, year in the file name --------------

def odiac_file(directory: Path, *, nan_cell: tuple[float, float] | None = None, netcdf3: bool = False) -> Path:
    lat, lon = global_centres(1.0)
    lat = lat[::-1]  # north to south: the reader must flip it
    month = np.arange(1, 13)
    pattern = 1.0 + 0.01 * (lat[:, None] + 90) + 0.001 * (lon[None, :] + 180)
    land = month[:, None, None] * pattern[None]
    if nan_cell is not None:
        land[:, np.flatnonzero(lat == nan_cell[0])[0], np.flatnonzero(lon == nan_cell[1])[0]] = np.nan
    ds = xr.Dataset(
        {"land": (("month", "lat", "lon"), land, {"units": "gC/m2/d", "long_name": "land emissions"}),
         "intl_bunker": (("month", "lat", "lon"), 0.5 * np.ones_like(land), {"units": "gC/m2/d"})},
        coords={"month": month, "lat": lat, "lon": lon})
    path = directory / "odiac2022_1x1d_2020.nc"
    if netcdf3:  # NetCDF-3 classic, as older ODIAC releases
        ds.to_netcdf(path, engine="scipy", format="NETCDF3_64BIT")
        return path
    return write(ds, path)


@pytest.mark.parametrize("netcdf3", [False, True], ids=["netcdf4", "netcdf3"])
def test_odiac_gc_per_day_by_calendar_month(tmp_path, netcdf3):
    path = odiac_file(tmp_path, netcdf3=netcdf3)
    grid = Grid.regular(20, 23, 100, 104, 1, 1)  # the ODIAC cells themselves
    time = TimeAxis.regular("2020-01-31T00", "2020-02-01T06", "3h")  # across the month boundary
    flux = mapped(path, "odiac", grid, time)
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    pattern = 1.0 + 0.01 * (lat + 90) + 0.001 * (lon + 180)
    for k, start in enumerate(time.start):
        month = 1 if start < np.datetime64("2020-02-01") else 2
        np.testing.assert_allclose(flux[k], month * pattern / (M_C * 86400), rtol=1e-12)
    both = mapped(path, "odiac", grid, time, variable=["land", "intl_bunker"])
    np.testing.assert_allclose(both - flux, 0.5 / (M_C * 86400), rtol=1e-9)


def test_odiac_nan_is_refused_or_zeroed_by_configuration(tmp_path):
    path = odiac_file(tmp_path, nan_cell=(21.5, 101.5))
    grid = Grid.regular(20, 23, 100, 104, 1, 1)
    time = TimeAxis.regular("2020-03-01", "2020-03-02", "6h")
    with pytest.raises(InputError) as info:
        mapped(path, "odiac", grid, time, name="fossil")
    message = str(info.value)
    assert str(path) in message and "land" in message and "1 of the 12 inventory values over the domain are NaN" in message
    assert "lat 21.5, lon 101.5" in message and 'nan = "zero"' in message and "[prior.sectors.fossil]" in message
    flux = mapped(path, "odiac", grid, time, nan="zero")
    i, j = np.flatnonzero(grid.lat == 21.5)[0], np.flatnonzero(grid.lon == 101.5)[0]
    assert np.all(flux[:, i, j] == 0.0) and np.all(flux[:, i + 1, j] > 0)


def test_odiac_year_comes_from_the_name_or_the_configuration(tmp_path):
    path = odiac_file(tmp_path)
    grid = Grid.regular(20, 23, 100, 104, 1, 1)
    time = TimeAxis.regular("2021-03-01", "2021-03-02", "6h")
    with pytest.raises(InputError, match="does not cover the flux period"):
        mapped(path, "odiac", grid, time)
    flux = mapped(path, "odiac", grid, time, year=2021)  # e.g. a climatological year reused
    assert np.all(flux > 0)
    renamed = path.rename(tmp_path / "odiac_1x1d.nc")
    with pytest.raises(InputError, match="set year = YYYY"):
        open_sector("fossil", SectorConfig(product="odiac", file=renamed), "co2")


# ---- EDGAR: fluxes (v8, _flx.nc) / emi_co2 (<= v7), kg m-2 s-1 of the substance, 0.1°, 0–360 -----

def edgar_field(lon: np.ndarray) -> np.ndarray:
    signed = np.where(lon > 180, lon - 360, lon)  # continuous across 0°
    return 1e-9 * (2.0 + signed / 100.0)


def edgar_file(directory: Path, name: str, *, west: float = 0.0, variable: str = "fluxes") -> Path:
    lat, lon = global_centres(0.1, west)
    values = np.broadcast_to(edgar_field(lon), (lat.size, lon.size))
    ds = xr.Dataset({variable: (("lat", "lon"), values, {"units": "kg m-2 s-1", "long_name": "Emissions of CO2"})},
                    coords={"lat": ("lat", lat, {"units": "degrees_north"}), "lon": ("lon", lon, {"units": "degrees_east"})})
    return write(ds, directory / name)


@pytest.fixture(scope="module")
def edgar_v8(tmp_path_factory) -> Path:
    return edgar_file(tmp_path_factory.mktemp("edgar"), "v8.0_FT2022_GHG_CO2_2022_TOTALS_flx.nc")


ACROSS_GREENWICH = Grid.regular(50, 52, -2, 2, 0.5, 0.5)
IN_2022 = TimeAxis.regular("2022-06-01", "2022-06-02", "6h")


def test_edgar_v8_kg_co2_with_0_360_longitudes(edgar_v8):
    flux = mapped(edgar_v8, "edgar", ACROSS_GREENWICH, IN_2022)
    # a field linear in longitude: each 0.5° cell's mean is its centre value (equal areas along a row)
    expected = edgar_field(ACROSS_GREENWICH.lon % 360) * 1e3 / M_CO2
    np.testing.assert_allclose(flux, np.broadcast_to(expected, flux.shape), rtol=1e-12)
    with pytest.raises(InputError, match="does not cover the flux period"):
        mapped(edgar_v8, "edgar", ACROSS_GREENWICH, TimeAxis.regular("2023-01-01", "2023-01-02", "6h"))


def test_edgar_0_360_and_minus180_180_give_identical_results(edgar_v8, tmp_path):
    other = edgar_file(tmp_path, edgar_v8.name, west=-180.0)
    a = mapped(edgar_v8, "edgar", ACROSS_GREENWICH, IN_2022)
    b = mapped(other, "edgar", ACROSS_GREENWICH, IN_2022)
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=0)


def test_edgar_v7_emi_co2_and_the_species_in_the_name(tmp_path):
    path = edgar_file(tmp_path, "v7.0_FT2021_CO2_excl_short-cycle_org_C_2021_TOTALS.0.1x0.1.nc", variable="emi_co2")
    time = TimeAxis.regular("2021-01-01", "2021-01-02", "1D")
    flux = mapped(path, "edgar", ACROSS_GREENWICH, time)  # default variable falls back to emi_<species>
    np.testing.assert_allclose(flux[0], np.broadcast_to(edgar_field(ACROSS_GREENWICH.lon % 360) * 1e3 / M_CO2,
                                                        flux[0].shape), rtol=1e-12)
    ch4 = path.rename(tmp_path / "v6.0_CH4_2021_TOTALS.0.1x0.1.nc")
    with pytest.raises(InputError, match="names CH4, the run's species is CO2"):
        mapped(ch4, "edgar", ACROSS_GREENWICH, time, variable="emi_co2")


def test_edgar_monthly_file_name(tmp_path):
    path = edgar_file(tmp_path, "v6.0_CO2_2015_3_ENE.0.1x0.1.nc", variable="emi_co2")
    inv = open_sector("fossil", SectorConfig(product="edgar", file=path), "co2")
    assert inv.time.start.tolist() == [np.datetime64("2015-03-01T00:00:00")]
    assert inv.time.end.tolist() == [np.datetime64("2015-04-01T00:00:00")]


# ---- CarbonTracker CT2022: mol m-2 s-1, latitude/longitude/time (older: date), mid-interval stamps -

def ct_file(directory: Path, day: str, *, time_name: str = "time") -> Path:
    lat, lon = global_centres(1.0)
    start = np.datetime64(day, "s")
    stamps = start + np.timedelta64(90, "m") + np.arange(8) * np.timedelta64(3, "h")
    hour = np.arange(8)[:, None, None] + 8 * (start - np.datetime64("2020-01-01", "s")) // np.timedelta64(1, "D")
    bio = -1e-6 * (1 + hour) * np.ones((8, lat.size, lon.size))
    ocean = np.full_like(bio, -2e-8)
    ocean[:, (lat > 30) & (lat < 32), :] = np.nan  # "land": no ocean flux
    ds = xr.Dataset(
        {"bio_flux_opt": ((time_name, "latitude", "longitude"), bio, {"units": "mol m-2 s-1"}),
         "ocn_flux_opt": ((time_name, "latitude", "longitude"), ocean, {"units": "mol m-2 s-1"})},
        coords={time_name: stamps, "latitude": lat, "longitude": lon})
    return write(ds, directory / f"CT2022.flux1x1.{day.replace('-', '')}.nc")


def test_carbontracker_three_hourly_mid_interval_stamps_and_a_series_of_files(tmp_path):
    ct_file(tmp_path, "2020-01-01")
    ct_file(tmp_path, "2020-01-02", time_name="date")  # an older release's coordinate name
    grid = Grid.regular(40, 42, 100, 103, 1, 1)
    time = TimeAxis.regular("2020-01-01T00", "2020-01-03T00", "6h")
    flux = mapped(tmp_path / "CT2022.flux1x1.2020010?.nc", "carbontracker", grid, time, variable="bio_flux_opt")
    # 6-hourly steps = mean of two 3-hourly CT intervals: −1e-6·(1 + (2k + 2k+1)/2)
    expected = -1e-6 * (1 + (2 * np.arange(8) + 0.5))
    np.testing.assert_allclose(flux, np.broadcast_to(expected[:, None, None], flux.shape), rtol=1e-12)


def test_carbontracker_ocean_nan_over_land(tmp_path):
    path = ct_file(tmp_path, "2020-01-01")
    grid = Grid.regular(29, 33, 120, 122, 1, 1)
    time = TimeAxis.regular("2020-01-01", "2020-01-02", "3h")
    with pytest.raises(InputError, match=r"32 of the 64 inventory values over the domain are NaN .*lat 30.5"):
        mapped(path, "carbontracker", grid, time, variable="ocn_flux_opt", name="ocean")
    flux = mapped(path, "carbontracker", grid, time, variable="ocn_flux_opt", nan="zero")
    land = (grid.lat > 30) & (grid.lat < 32)
    assert np.all(flux[:, land] == 0.0)
    np.testing.assert_allclose(flux[:, ~land], -2e-8, rtol=1e-12)
    with pytest.raises(InputError, match="cannot be a CH4 prior"):
        mapped(path, "carbontracker", grid, time, species="ch4", variable="bio_flux_opt")


def ct_monthly_file(directory: Path, month: str, value: float, *, bounds: bool) -> Path:
    lat, lon = global_centres(1.0)
    start = np.datetime64(month, "M")
    edges = np.array([start, start + 1]).astype("datetime64[s]")
    ds = xr.Dataset({"fossil_flux_imp": (("time", "latitude", "longitude"), np.full((1, lat.size, lon.size), value),
                                         {"units": "mol m-2 s-1"})},
                    coords={"time": ("time", [edges[0] + (edges[1] - edges[0]) // 2]), "latitude": lat, "longitude": lon})
    if bounds:
        ds["time"].attrs["bounds"] = "time_bnds"
        ds["time"].encoding.update(units="days since 2000-01-01 00:00:00", dtype="float64")  # as CarbonTracker
        ds["time_bnds"] = (("time", "nv"), edges[None, :])
    return write(ds, directory / f"CT2022.flux1x1.{month.replace('-', '')}.nc")


@pytest.mark.parametrize("bounds", [True, False], ids=["time_bnds", "mid-month stamp + time_step"])
def test_carbontracker_monthly_files(tmp_path, bounds):
    ct_monthly_file(tmp_path, "2020-01", 2e-9, bounds=bounds)
    ct_monthly_file(tmp_path, "2020-02", 5e-9, bounds=bounds)
    grid = Grid.regular(40, 42, 100, 103, 1, 1)
    time = TimeAxis.regular("2020-01-31T12", "2020-02-01T12", "6h")
    keys = {} if bounds else {"time_step": "month"}
    flux = mapped(tmp_path / "CT2022.flux1x1.2020??.nc", "carbontracker", grid, time, variable="fossil_flux_imp", **keys)
    expected = np.where(time.start < np.datetime64("2020-02-01"), 2e-9, 5e-9)
    np.testing.assert_allclose(flux, np.broadcast_to(expected[:, None, None], flux.shape), rtol=1e-12)


# ---- VPRM: GEE, RESP, NEE in µmol m-2 s-1, hourly; NEE = GEE + RESP -------------------------------

def vprm_file(directory: Path, *, gee_sign: float = -1.0) -> Path:
    lat, lon = 45.0 + 0.25 * (np.arange(16) + 0.5), 5.0 + 0.25 * (np.arange(16) + 0.5)
    hours = np.arange(48)
    time = np.datetime64("2018-07-01T00", "s") + hours * np.timedelta64(1, "h")
    gee = gee_sign * (5.0 + hours)[:, None, None] * np.ones((1, lat.size, lon.size))
    resp = np.full_like(gee, 3.0)
    attrs = {"units": "\u00b5mol m-2 s-1"}
    ds = xr.Dataset({"GEE": (("time", "lat", "lon"), gee, attrs), "RESP": (("time", "lat", "lon"), resp, attrs)},
                    coords={"time": time, "lat": lat, "lon": lon})
    return write(ds, directory / "VPRM_ECMWF_2018_07.nc")


def test_vprm_nee_is_gee_plus_resp_and_hourly_becomes_three_hourly(tmp_path):
    path = vprm_file(tmp_path)
    grid = Grid.regular(46, 48, 6, 8, 1, 1)
    time = TimeAxis.regular("2018-07-01", "2018-07-03", "3h")
    nee = mapped(path, "vprm", grid, time)  # NEE is the default variable; the file has GEE and RESP only
    hours = np.arange(48).reshape(16, 3).mean(axis=1)
    expected = 1e-6 * (-(5.0 + hours) + 3.0)
    np.testing.assert_allclose(nee, np.broadcast_to(expected[:, None, None], nee.shape), rtol=1e-12)
    gee = mapped(path, "vprm", grid, time, variable="GEE")
    resp = mapped(path, "vprm", grid, time, variable="RESP")
    np.testing.assert_allclose(gee + resp, nee, rtol=1e-12)
    assert np.all(gee < 0) and np.all(resp > 0)


def test_vprm_gee_with_the_opposite_sign_is_refused(tmp_path):
    path = vprm_file(tmp_path, gee_sign=1.0)
    grid = Grid.regular(46, 48, 6, 8, 1, 1)
    time = TimeAxis.regular("2018-07-01", "2018-07-02", "3h")
    with pytest.raises(InputError, match="GEE has positive values"):
        mapped(path, "vprm", grid, time)


# ---- GFED4.1s: HDF5 emissions/MM/C, g C m-2 month-1, 2-D lat/lon north to south -------------------

def gfed_file(directory: Path, monthly_c: dict[int, float], name: str = "GFED4.1s_2019.hdf5") -> Path:
    lat = 89.875 - 0.25 * np.arange(720)
    lon = -179.875 + 0.25 * np.arange(1440)
    path = directory / name
    with h5py.File(path, "w") as f:
        f["lat"] = np.repeat(lat[:, None], lon.size, axis=1)
        f["lon"] = np.repeat(lon[None, :], lat.size, axis=0)
        f["ancill/grid_cell_area"] = np.ones((lat.size, lon.size), dtype=np.float32)
        for month, value in monthly_c.items():
            c = np.zeros((lat.size, lon.size), dtype=np.float32)
            c[(lat > 20) & (lat < 24), :] = value  # a burning band
            f.create_dataset(f"emissions/{month:02d}/C", data=c, compression="gzip")
    return path


def test_gfed_g_carbon_per_month_with_month_lengths(tmp_path):
    path = gfed_file(tmp_path, {1: 100.0, 2: 50.0, 3: 10.0})
    grid = Grid.regular(20, 24, 100, 102, 1, 1)
    time = TimeAxis.regular("2019-01-31T12", "2019-02-01T12", "6h")
    flux = mapped(path, "gfed", grid, time)
    expected = np.where(time.start < np.datetime64("2019-02-01"), 100.0 / (M_C * 31 * 86400),
                        50.0 / (M_C * 28 * 86400))  # 2019: February has 28 days
    np.testing.assert_allclose(flux, np.broadcast_to(expected[:, None, None], flux.shape), rtol=1e-12)
    with pytest.raises(InputError, match="GFED carbon emissions give a CO2 prior only"):
        mapped(path, "gfed", grid, time, species="ch4")


# ---- CAMS: kgC m-2 month-1 from the units attribute ------------------------------------------------

def test_cams_carbon_per_month(tmp_path):
    lat, lon = global_centres(2.0)
    stamps = np.array(["2020-02-01", "2020-03-01"], dtype="datetime64[s]")
    flux = np.stack([np.full((lat.size, lon.size), -0.02), np.full((lat.size, lon.size), 0.01)])
    ds = xr.Dataset({"flux_apos_bio": (("time", "latitude", "longitude"), flux, {"units": "kgC m-2 month-1"})},
                    coords={"time": stamps, "latitude": lat, "longitude": lon})
    path = write(ds, tmp_path / "cams73_v22r2_co2_flux_surface_mm_202002.nc")
    grid = Grid.regular(30, 34, 110, 114, 1, 1)
    time = TimeAxis.regular("2020-02-28T18", "2020-03-01T06", "6h")
    out = mapped(path, "cams", grid, time, variable="flux_apos_bio")
    expected = np.where(time.start < np.datetime64("2020-03-01"), -20.0 / (M_C * 29 * 86400),
                        10.0 / (M_C * 31 * 86400))  # 2020 is a leap year
    np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), rtol=1e-12)


# ---- CF: units attribute required, any dimension order ---------------------------------------------

def cf_file(directory: Path, units: str | None, values: float = 2.0) -> Path:
    lat, lon = np.arange(30.5, 36), np.arange(110.5, 118)
    time = np.arange("2024-07-01", "2024-07-03", np.timedelta64(6, "h"), dtype="datetime64[s]")
    attrs = {} if units is None else {"units": units}
    ds = xr.Dataset({"flux": (("lat", "lon", "time"), np.full((lat.size, lon.size, time.size), values), attrs)},
                    coords={"lat": lat, "lon": lon, "time": time})
    return write(ds, directory / "flux.nc")


@pytest.mark.parametrize(("units", "factor"), [("umol m-2 s-1", 1e-6), ("nmol/m2/s", 1e-9),
                                               ("kg CO2 m-2 s-1", 1e3 / M_CO2), ("gC m-2 d-1", 1 / (M_C * 86400))])
def test_cf_units_attribute(tmp_path, units, factor):
    path = cf_file(tmp_path, units)
    grid = Grid.regular(31, 35, 111, 117, 1, 1)
    time = TimeAxis.regular("2024-07-01", "2024-07-02", "6h")
    np.testing.assert_allclose(mapped(path, "cf", grid, time, variable="flux"), 2.0 * factor, rtol=1e-12)


@pytest.mark.parametrize(("units", "words"), [
    (None, ("no units attribute", "units")),
    ("gCarbon m-2 d-1", ("unknown unit 'gCarbon m-2 d-1'",)),
    ("kg m-2 s-1", ("does not say a mass of what",)),
    ("mol m-2", ("not a flux per area and time",)),
])
def test_cf_bad_units_are_refused_naming_file_and_variable(tmp_path, units, words):
    path = cf_file(tmp_path, units)
    grid = Grid.regular(31, 35, 111, 117, 1, 1)
    time = TimeAxis.regular("2024-07-01", "2024-07-02", "6h")
    with pytest.raises(InputError) as info:
        mapped(path, "cf", grid, time, variable="flux")
    message = str(info.value)
    assert str(path) in message and "flux" in message
    for word in words:
        assert word in message
    # a configured unit is the explicit way out
    np.testing.assert_allclose(mapped(path, "cf", grid, time, variable="flux", units="umol m-2 s-1"), 2e-6, rtol=1e-12)


def test_cf_missing_variable_lists_what_the_file_has(tmp_path):
    path = cf_file(tmp_path, "mol m-2 s-1")
    with pytest.raises(InputError, match="set variable to one of: flux"):
        open_sector("bio", SectorConfig(file=path), "co2")  # cf's default variable is the sector's name


# ---- real openghg flux samples (CF: flux(lat, lon, time), mol/m2/s, time = step start) -----------

OPENGHG_FLUX = EXTERNAL / "openghg" / "tests" / "data" / "flux"
needs_openghg = pytest.mark.skipif(not OPENGHG_FLUX.is_dir(), reason=f"openghg flux samples absent ({OPENGHG_FLUX})")


@needs_openghg
def test_openghg_two_hourly_respiration_on_its_own_grid_to_three_hourly():
    path = OPENGHG_FLUX / "co2-rtot-cardamom-2hr_TEST_2014.nc"
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        raw = ds["flux"].transpose("time", "lat", "lon").values.astype(np.float64)
        grid = Grid.from_centres(ds["lat"].values, ds["lon"].values)
        stamps = ds["time"].values.astype("datetime64[s]")
    time = TimeAxis.regular("2014-07-01", "2014-07-03", "3h")
    flux = mapped(path, "cf", grid, time, variable="flux")
    two_h = {t: raw[i] for i, t in enumerate(stamps)}
    for k, start in enumerate(time.start):
        hour = (start - start.astype("datetime64[D]")) // np.timedelta64(1, "h")
        base = start - np.timedelta64(hour % 2, "h")  # 2-hourly step holding the start
        if hour % 2 == 0:  # [0,3) = [0,2) + half of [2,4)
            expected = (2 * two_h[base] + two_h[base + np.timedelta64(2, "h")]) / 3
        else:  # [3,6) = half of [2,4) + [4,6)
            expected = (two_h[base] + 2 * two_h[base + np.timedelta64(2, "h")]) / 3
        np.testing.assert_allclose(flux[k], expected, rtol=1e-12)


@needs_openghg
def test_openghg_monthly_ocean_flux_with_nan_over_land():
    path = OPENGHG_FLUX / "co2-nemo-ocean-mth_TEST_2014.nc"
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        raw = ds["flux"].isel(time=0).values.astype(np.float64)
        grid = Grid.from_centres(ds["lat"].values, ds["lon"].values)
    time = TimeAxis.regular("2014-07-01", "2014-07-04", "1h")
    with pytest.raises(InputError, match="time steps are unknown.*single time stamp"):
        mapped(path, "cf", grid, time, variable="flux", nan="zero")
    with pytest.raises(InputError, match=f"{int(np.isnan(raw).sum())} of the {raw.size} inventory values over the domain are NaN"):
        mapped(path, "cf", grid, time, variable="flux", time_step="month")
    flux = mapped(path, "cf", grid, time, variable="flux", time_step="month", nan="zero")
    np.testing.assert_array_equal(flux, np.broadcast_to(np.nan_to_num(raw, nan=0.0), flux.shape))
