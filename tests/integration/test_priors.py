"""Multi-sector priors from real inventory formats, end to end: a tiny twin case whose [prior]
is replaced by three sectors (VPRM hourly NEE on a finer grid, a monthly CF fire flux mapped
linearly, EDGAR annual fossil on a global 0–360° grid), each with its own σ.  Checks the prior
fluxes the state is built on (conservation of the inventories' integrals, hand values), B's
diagonal, a full run, bad input through the CLI, and a real openghg prior when present."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.cli import main
from inversion.config import CONFIG_NAME, ConfigError, load_config
from inversion.inventories import map_sector, open_sector
from inversion.outputs import OUTPUT_FILES
from inversion.parallel import SerialComm
from inversion.problem import build_problem
from transport.grid import EARTH_RADIUS_M, Grid, TimeAxis

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

EXIT_BAD_INPUT = 2
M_C, M_CO2 = 12.011, 44.0095
EXTERNAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "external"

SHORTHAND = '''[prior]
file = "data/prior_flux.nc"
optimised = ["bio"]
fixed = ["fossil"]
'''
SECTORS = '''[prior.sectors.bio]
product = "vprm"
file = "inventories/VPRM_CHINA_2024_*.nc"
sigma = 0.8

[prior.sectors.fire]
product = "cf"
file = "inventories/fire_monthly.nc"
variable = "emission"
time_mapping = "linear"
sigma = 1.5

[prior.sectors.fossil]
product = "edgar"
file = "inventories/v8.0_FT2024_GHG_CO2_2024_TOTALS_flx.nc"
optimise = false
'''


def centres(lo: float, hi: float, step: float) -> np.ndarray:
    return lo + step * (np.arange(round((hi - lo) / step)) + 0.5)


def write(ds: xr.Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def write_vprm(directory: Path, start: str = "2024-06-27", days_per_file: int = 7, files: int = 2) -> None:
    """Hourly GEE and RESP (µmol m-2 s-1) on a 0.5° grid a little larger than the domain."""
    rng = np.random.default_rng(11)
    lat, lon = centres(29, 37, 0.5), centres(109, 119, 0.5)
    veg = 0.5 + rng.random((lat.size, lon.size))
    for k in range(files):
        t0 = np.datetime64(start, "s") + np.timedelta64(k * days_per_file, "D")
        time = t0 + np.arange(24 * days_per_file) * np.timedelta64(1, "h")
        hour = ((time - time.astype("datetime64[D]")) / np.timedelta64(1, "h"))[:, None, None]
        gee = -12.0 * np.clip(np.sin(np.pi * (hour + 8 - 6) / 12), 0, None) * veg  # Beijing daylight
        resp = 3.0 * veg * np.ones_like(hour)
        attrs = {"units": "umol m-2 s-1"}
        write(xr.Dataset({"GEE": (("time", "lat", "lon"), gee, attrs), "RESP": (("time", "lat", "lon"), resp, attrs)},
                         coords={"time": time, "lat": lat, "lon": lon}),
              directory / f"VPRM_CHINA_2024_{k:02d}.nc")


def write_fire(directory: Path) -> Path:
    lat, lon = centres(28, 38, 2.0), centres(108, 120, 2.0)
    stamps = np.array(["2024-06-01", "2024-07-01", "2024-08-01"], dtype="datetime64[s]")
    values = np.stack([np.full((lat.size, lon.size), v) for v in (0.3, 0.9, 0.6)])
    return write(xr.Dataset({"emission": (("time", "lat", "lon"), values, {"units": "gC m-2 d-1"})},
                            coords={"time": stamps, "lat": lat, "lon": lon}), directory / "fire_monthly.nc")


def write_edgar(directory: Path, nan_at: tuple[float, float] | None = None) -> Path:
    rng = np.random.default_rng(5)
    lat, lon = centres(-90, 90, 0.5), centres(0, 360, 0.5)
    fluxes = rng.lognormal(size=(lat.size, lon.size)) * 1e-9  # kg CO2 m-2 s-1
    if nan_at is not None:
        fluxes[np.flatnonzero(lat == nan_at[0])[0], np.flatnonzero(lon == nan_at[1])[0]] = np.nan
    return write(xr.Dataset({"fluxes": (("lat", "lon"), fluxes, {"units": "kg m-2 s-1"})},
                            coords={"lat": lat, "lon": lon}),
                 directory / "v8.0_FT2024_GHG_CO2_2024_TOTALS_flx.nc")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    case = make_case(tmp_path_factory.mktemp("priors") / "case")
    inventories = case / "inventories"
    write_vprm(inventories)
    write_fire(inventories)
    write_edgar(inventories)
    path = case / CONFIG_NAME
    text = path.read_text().replace(SHORTHAND, SECTORS)
    # the twin's truth has the shorthand's sectors; this case has other sectors
    path.write_text(text.replace('truth = "data/truth_state.nc"\n', ""))
    return case


@pytest.fixture(scope="module")
def problem(case):
    return build_problem(load_config(case), SerialComm())


def test_sectors_and_per_sector_sigma_reach_B(problem):
    state = problem.state
    assert state.sectors == ("bio", "fire") and state.fixed_sectors == ("fossil",)
    n = state.n_period * state.n_region
    variance = problem.B.variance()
    np.testing.assert_allclose(variance[:n], 0.8**2, rtol=1e-14)
    np.testing.assert_allclose(variance[n:2 * n], 1.5**2, rtol=1e-14)
    np.testing.assert_allclose(variance[2 * n:], (1e-6) ** 2, rtol=1e-12)  # background offsets, 1 ppm


def test_a_sectors_sigma_in_two_places_is_refused(case, tmp_path):
    copy = Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))
    path = copy / CONFIG_NAME
    path.write_text(path.read_text().replace("[covariance]\n", "[covariance]\nsector_sigma = { fire = 2.0 }\n"))
    with pytest.raises(ConfigError, match=r"sector\(s\) fire is set both in covariance.sector_sigma"):
        load_config(copy)


def test_covariance_sector_sigma_sets_a_sector_without_its_own_sigma(case, tmp_path):
    copy = Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))
    path = copy / CONFIG_NAME
    text = path.read_text()
    assert "sigma = 1.5" in text  # the fire sector's own σ, removed here
    path.write_text(text.replace("sigma = 1.5\n", "", 1).replace("[covariance]\n", "[covariance]\nsector_sigma = { fire = 2.0 }\n"))
    problem = build_problem(load_config(copy), SerialComm())
    n = problem.state.n_period * problem.state.n_region
    np.testing.assert_allclose(problem.B.variance()[:2 * n], np.repeat([0.8**2, 2.0**2], n), rtol=1e-14)


def _integral(flux: np.ndarray, grid: Grid, seconds: np.ndarray) -> float:
    """∫∫ flux dA dt over the grid and steps (mol)."""
    return float(np.einsum("tij,ij,t->", flux, grid.cell_area(), seconds))


def test_vprm_integral_over_domain_and_period_is_conserved(problem, case):
    state = problem.state
    grid, time = state.regions.grid, state.flux_time
    mapped = _integral(state.prior.sectors["bio"], grid, time.duration_s)
    reference = 0.0
    for path in sorted((case / "inventories").glob("VPRM_CHINA_2024_*.nc")):
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            nee = (ds["GEE"] + ds["RESP"]).sel(lat=slice(30, 36), lon=slice(110, 118))  # cells inside the domain
            inside = (ds["time"].values >= time.start[0]) & (ds["time"].values < time.end[-1])
            cells = Grid.from_centres(nee["lat"].values, nee["lon"].values).cell_area()
            reference += float(np.einsum("tij,ij->", nee.values[inside], cells)) * 3600 * 1e-6
    assert mapped == pytest.approx(reference, rel=1e-10)


def test_edgar_fossil_integral_and_hand_value(problem, case):
    state = problem.state
    grid = state.regions.grid
    fossil = state.prior.sectors["fossil"]
    assert np.all(fossil == fossil[0])  # annual: the same field for every flux step
    with xr.open_dataset(case / "inventories" / "v8.0_FT2024_GHG_CO2_2024_TOTALS_flx.nc", engine="h5netcdf") as ds:
        box = ds["fluxes"].sel(lat=slice(30, 36), lon=slice(110, 118)).values
    source = Grid.regular(30, 36, 110, 118, 0.5, 0.5)
    reference = np.sum(box * source.cell_area()) * 1e3 / M_CO2
    assert np.sum(fossil[0] * grid.cell_area()) == pytest.approx(reference, rel=1e-10)
    # cell (30–31 N, 110–111 E) is the area-weighted mean of its four 0.5° cells
    weights = source.cell_area()[:2, :2]
    assert fossil[0, 0, 0] == pytest.approx(np.sum(box[:2, :2] * weights) / weights.sum() * 1e3 / M_CO2, rel=1e-12)


def test_fire_linear_between_month_midpoints(problem):
    state = problem.state
    fire = state.prior.sectors["fire"]
    time = state.flux_time
    mid_jun, mid_jul = np.datetime64("2024-06-16T00", "s"), np.datetime64("2024-07-16T12", "s")
    centre = time.start + (time.end - time.start) / 2
    value = 0.3 + (0.9 - 0.3) * ((centre - mid_jun) / (mid_jul - mid_jun))  # gC m-2 d-1, all steps before 16 Jul
    np.testing.assert_allclose(fire[:, 2, 3], value / (M_C * 86400), rtol=1e-12)


def test_run_with_inventory_priors(case, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", str(case), "--output-dir", str(out), "--comm", "serial"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    resolved = (out / "config.resolved.toml").read_text()
    assert "VPRM_CHINA_2024_*.nc" in resolved and "prior.sectors.bio.file[1]" in resolved


def _copy(case: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))


def test_inventory_not_covering_the_period_is_refused_by_the_cli(case, tmp_path, capsys):
    copy = _copy(case, tmp_path)
    for path in (copy / "inventories").glob("VPRM_*.nc"):
        path.unlink()
    write_vprm(copy / "inventories", start="2024-07-01", days_per_file=4)  # misses the footprint back-time
    code = main(["run", str(copy), "--comm", "serial"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "VPRM_CHINA_2024_00.nc" in err and "does not cover the flux period" in err and "back-time" in err
    assert not (copy / "output").exists() or not any((copy / "output").iterdir())


def test_nan_in_an_inventory_is_refused_by_the_cli_unless_configured(case, tmp_path, capsys):
    copy = _copy(case, tmp_path)
    write_edgar(copy / "inventories", nan_at=(33.25, 114.75))
    code = main(["validate", str(copy), "--comm", "serial"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert "v8.0_FT2024_GHG_CO2_2024_TOTALS_flx.nc" in err and "fluxes" in err and 'nan = "zero"' in err
    path = copy / CONFIG_NAME
    path.write_text(path.read_text().replace("optimise = false\n", 'optimise = false\nnan = "zero"\n'))
    fossil = build_problem(load_config(copy), SerialComm()).state.prior.sectors["fossil"]
    assert np.all(np.isfinite(fossil))


# ---- a real prior: openghg_inversions' EDGAR v7 CH4 total (EUROPE grid, one time) ---------------

EDGAR_CH4 = EXTERNAL / "openghg_inversions" / "tests" / "data" / "flux_total_ch4_europe_edgar7_2019-01-01_2019-12-31_data.nc"


@pytest.mark.skipif(not EDGAR_CH4.is_file(), reason=f"real openghg_inversions prior absent ({EDGAR_CH4})")
def test_real_edgar_ch4_prior_regridded_conserves_region_totals():
    from inversion.config import SectorConfig

    sector = SectorConfig(file=EDGAR_CH4, variable="flux", time_mapping="constant")
    source = open_sector("total", sector, "ch4").grid
    with xr.open_dataset(EDGAR_CH4, engine="h5netcdf") as ds:
        raw = ds["flux"].isel(time=0).transpose("lat", "lon").values.astype(np.float64)
    target = Grid.regular(36, 66, -12, 24, 1.0, 1.5)  # a 1° × 1.5° inversion grid over western Europe
    time = TimeAxis.regular("2019-01-01", "2019-01-02", "2h")
    flux = map_sector("total", sector, "ch4", target, time, "footprints.h5")
    assert np.all(flux == flux[0])

    def area(g: Grid, rect) -> np.ndarray:
        lat0, lat1, lon0, lon1 = rect
        dsin = np.clip(np.sin(np.radians(np.minimum(g.lat_bounds[:, 1], lat1)))
                       - np.sin(np.radians(np.maximum(g.lat_bounds[:, 0], lat0))), 0, None)
        dlon = np.clip(np.radians(np.minimum(g.lon_bounds[:, 1], lon1) - np.maximum(g.lon_bounds[:, 0], lon0)), 0, None)
        return EARTH_RADIUS_M**2 * np.outer(dsin, dlon)

    # the whole domain, a British Isles box and a central-European box (unions of target cells)
    for rect in [(36, 66, -12, 24), (49, 61, -10.5, 3), (45, 55, 4.5, 18)]:
        reference = np.sum(raw * area(source, rect))
        assert np.sum(flux[0] * area(target, rect)) == pytest.approx(reference, rel=1e-10), rect
