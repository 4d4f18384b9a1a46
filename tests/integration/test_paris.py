"""The PARIS Lagrangian inversion files of the report (inversion.report.paris) on a tiny twin:
names, dimensions and units exactly as ../shared/docs/REPORTING.md lists them, a round trip
through xarray, and agreement with the report totals and the observations."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import h5netcdf
import numpy as np
import pytest
import xarray as xr

from inversion.cli import main
from inversion.report.data import load_report_data
from inversion.report.paris import CONCENTRATION_PREFIX, FLUX_FILE, paris_flux_dataset

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

# REPORTING.md, "Machine-readable outputs"
FLUX_SCHEMA = {
    "flux_total_prior": (("time", "latitude", "longitude"), "mol m-2 s-1"),
    "flux_total_posterior": (("time", "latitude", "longitude"), "mol m-2 s-1"),
    "percentile_flux_total_prior": (("time", "percentile", "latitude", "longitude"), "mol m-2 s-1"),
    "percentile_flux_total_posterior": (("time", "percentile", "latitude", "longitude"), "mol m-2 s-1"),
    "country_fraction": (("countrynumber", "latitude", "longitude"), "1"),
    "country_flux_total_prior": (("time", "countrynumber"), "kg a-1"),
    "country_flux_total_posterior": (("time", "countrynumber"), "kg a-1"),
    "percentile_country_flux_total_prior": (("time", "percentile", "countrynumber"), "kg a-1"),
    "percentile_country_flux_total_posterior": (("time", "percentile", "countrynumber"), "kg a-1"),
    "covariance_country_flux_total_posterior": (("time", "countrynumber", "countrynumber"), "kg2 yr-2"),
    "country": (("countrynumber", "nchar"), None),
}
FLUX_DIMS = ("longitude", "latitude", "time", "percentile", "countrynumber", "nchar")
GLOBALS = ("title", "institution", "source", "transport_model", "inversion_system", "experiment", "Conventions",
           "license", "history")
CONCENTRATION_VARIABLES = ("Yobs", "uYobs_repeatability", "uYmod", "uYtotal", "Yapriori", "Yapost", "YaprioriBC",
                           "YapostBC")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    case = make_case(tmp_path_factory.mktemp("paris") / "case", seed=5, period_days=2)
    with open(case / "config.toml", "a") as fh:  # [report] is the last table of the generated config
        fh.write('periods = ["period", "run"]\ninstitution = "test institute"\nlicense = "CC-BY-4.0"\n'
                 'transport_model = "synthetic plumes"\n')
    assert main(["run", str(case), "--comm", "serial"]) == 0
    return case / "output"


def open_xr(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():  # the layout's repeated countrynumber dimension
        warnings.filterwarnings("ignore", message="Duplicate dimension names")
        with xr.open_dataset(path, engine="h5netcdf") as ds:
            return ds.load()


def test_flux_file_has_the_paris_names_dims_and_units(run_dir):
    path = run_dir / "report" / FLUX_FILE
    with h5netcdf.File(path, "r") as f:  # the file itself, not xarray's view of it
        for name, (dims, units) in FLUX_SCHEMA.items():
            assert name in f.variables, name
            assert tuple(f.variables[name].dimensions) == dims, name
            if units is not None:
                assert f.variables[name].attrs["units"] == units, name
        assert set(FLUX_DIMS) <= set(f.dimensions)
        assert f.dimensions["nchar"].size == 3
        assert f.dimensions["percentile"].size == 2
        np.testing.assert_allclose(f.variables["percentile"][:], [0.025, 0.975])
        for name in GLOBALS:
            assert name in f.attrs, name
        assert f.attrs["Conventions"] == "CF-1.8"
        assert f.attrs["institution"] == "test institute" and f.attrs["transport_model"] == "synthetic plumes"
        assert f.variables["flux_total_posterior"].attrs["cell_methods"] == "time: mean"


def test_flux_file_round_trips_and_agrees_with_the_report_totals(run_dir):
    data = load_report_data(run_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate dimension names")
        made = paris_flux_dataset(data)
    back = open_xr(run_dir / "report" / FLUX_FILE)
    for name in FLUX_SCHEMA:
        if name == "country":
            continue
        np.testing.assert_array_equal(back[name].values, made[name].values, err_msg=name)
    codes = [c.decode() if isinstance(c, bytes) else str(c) for c in back["country"].values]
    assert codes == list(data.totals["region_code"].values)  # B01 … B04, ALL

    # country totals (kg a-1) = the report totals of the state periods (Tg CO2 a-1 × 1e9)
    totals = data.totals.isel(period=np.flatnonzero(data.totals["period_kind"].values == "period"))
    for k in ("prior", "posterior"):
        np.testing.assert_allclose(back[f"country_flux_total_{k}"].values.T, totals[k].values * 1e9, rtol=1e-10)
    cov = back["covariance_country_flux_total_posterior"].values  # (time, c, c)
    np.testing.assert_allclose(np.sqrt(np.einsum("tcc->ct", cov)), totals["posterior_sd"].values * 1e9, rtol=1e-10)
    pct = back["percentile_country_flux_total_posterior"].values
    np.testing.assert_allclose(pct[:, 0].T, totals["p025"].values * 1e9, rtol=1e-10)
    np.testing.assert_allclose(pct[:, 1].T, totals["p975"].values * 1e9, rtol=1e-10)
    # country_fraction = the report masks, ALL their sum; gridded flux = posterior_flux.nc
    np.testing.assert_allclose(back["country_fraction"].values[:-1], data.regions["region_fraction"].values)
    np.testing.assert_allclose(back["country_fraction"].values[-1], data.regions["region_fraction"].values.sum(0))
    flux = open_xr(run_dir / "posterior_flux.nc")
    np.testing.assert_array_equal(back["flux_total_posterior"].values, flux["flux_posterior"].values)
    lo = flux["flux_posterior"].values - 1.959963984540054 * flux["flux_posterior_standard_error"].values
    np.testing.assert_allclose(back["percentile_flux_total_posterior"].values[:, 0], lo, rtol=1e-12, atol=1e-20)


def test_one_concentration_file_per_site(run_dir):
    observations = open_xr(run_dir.parent / "data" / "observations.nc")
    sites = sorted(set(observations["site"].values.astype(str)))
    files = sorted((run_dir / "report").glob(f"{CONCENTRATION_PREFIX}*.nc"))
    assert [p.name for p in files] == [f"{CONCENTRATION_PREFIX}{s}.nc" for s in sites]
    for site, path in zip(sites, files):
        ds = open_xr(path)
        assert set(CONCENTRATION_VARIABLES) <= set(ds.data_vars)
        for name in CONCENTRATION_VARIABLES:
            assert ds[name].dims == ("time",) and ds[name].attrs["units"] == "mol mol-1", name
        for name in GLOBALS:
            assert name in ds.attrs
        mine = observations.isel(obs=np.flatnonzero(observations["site"].values.astype(str) == site))
        order = np.argsort(mine["time"].values)
        np.testing.assert_array_equal(ds["time"].values, mine["time"].values[order])
        np.testing.assert_allclose(ds["Yobs"].values, mine["value"].values[order] * 1e-6, rtol=1e-12)
        np.testing.assert_allclose(ds["uYobs_repeatability"].values, mine["uncertainty"].values[order] * 1e-6,
                                   rtol=1e-12)
        np.testing.assert_allclose(ds["uYmod"].values, 1.0e-6, rtol=1e-9)  # model_data_mismatch = "1.0 ppm"
        np.testing.assert_allclose(ds["uYtotal"].values ** 2, ds["uYobs_repeatability"].values ** 2
                                   + ds["uYmod"].values ** 2, rtol=1e-12)
        # the prior background is the file's (prior offsets are 0); the posterior adds the site's offset
        np.testing.assert_allclose(ds["YaprioriBC"].values, mine["background"].values[order] * 1e-6, rtol=1e-12)
        shift = ds["YapostBC"].values - ds["YaprioriBC"].values
        np.testing.assert_allclose(shift, shift[0], atol=1e-15)
