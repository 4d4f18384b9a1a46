"""Machine-readable outputs in the PARIS Lagrangian inversion layout (European national
verification).

Flux file ``paris_flux.nc`` — dims ``longitude, latitude, time, percentile, countrynumber,
nchar`` (and ``bnds`` for the CF cell and time bounds):

* ``flux_total_prior|posterior(time, latitude, longitude)``, mol m-2 s-1: the period-mean
  flux of all sectors (time = the state periods, ``time_bnds``, ``cell_methods = "time: mean"``);
* ``percentile_flux_total_prior|posterior(time, percentile, latitude, longitude)``: Gaussian
  percentiles μ + Φ⁻¹(q) σ per cell (σ of ``posterior_flux.nc``), q = ``[report] percentiles``
  (default 0.025, 0.975);
* ``country_fraction(countrynumber, latitude, longitude)``, 1: the report region masks (and
  ``ALL``, their sum), ``country(countrynumber, nchar)``: ISO 3166 alpha-3 where the region
  code is a country code, else the region code (nchar = the longest, ≥ 3);
* ``country_flux_total_prior|posterior(time, countrynumber)``, kg a-1 of the species (CO₂ or
  CH₄), the net flux of every region; ``percentile_country_flux_total_prior|posterior(time,
  percentile, countrynumber)``; ``covariance_country_flux_total_posterior(time, countrynumber,
  countrynumber)``, kg2 yr-2 (exact, :mod:`inversion.report.totals`);
* globals ``title, institution, source, transport_model, inversion_system, experiment,
  Conventions = "CF-1.8", license, history`` (institution, license and transport model from
  ``[report]``).

The covariance uses the dimension ``countrynumber`` twice, as the layout prescribes; xarray
reads such a variable but warns that it does not support duplicate dimension names.

Concentration file per site ``paris_concentration_<SITE>.nc`` — dim ``time``: ``Yobs``,
``uYobs_repeatability`` (the measurement uncertainty of the observation), ``uYmod`` (the
model–data mismatch, √(σ² − u_obs²)), ``uYtotal`` (σ), ``Yapriori``, ``Yapost`` (modelled
with background), ``YaprioriBC``, ``YapostBC`` (background), all mol mol-1.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from .. import __version__
from ..io import open_netcdf, write_netcdf
from .data import ReportData
from .totals import TOTALS_FILE, read_base_totals, report_units

FLUX_FILE = "paris_flux.nc"
CONCENTRATION_PREFIX = "paris_concentration_"


def country_code(code: str) -> str:
    """ISO 3166 alpha-3 of a country code or name (iso3166 package), else ``code`` itself."""
    try:
        import iso3166
    except ImportError:  # optional: the region codes are written as they are
        return code
    try:
        return iso3166.countries.get(code).alpha3
    except KeyError:
        return code


def _globals(data: ReportData, title: str) -> dict:
    report = data.config.report
    return {"title": title, "institution": report.institution, "source": f"tanhui {__version__}",
            "transport_model": report.transport_model, "inversion_system": "tanhui",
            "experiment": data.config.run.name, "Conventions": "CF-1.8", "license": report.license,
            "history": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} tanhui report {data.run_dir}"}


def paris_flux_dataset(data: ReportData) -> xr.Dataset:
    """The PARIS flux file of a run (module docstring)."""
    base = read_base_totals(data.run_dir / TOTALS_FILE)
    flux = open_netcdf(data.run_dir / "posterior_flux.nc", "posterior flux")
    units = report_units(data.species)
    q = np.asarray(data.config.report.percentiles, dtype=np.float64)
    z = stats.norm.ppf(q)
    periods = base.state_periods
    groups = [[r] for r in range(len(base.regions))] + [list(range(len(base.regions)))]
    C = base.weights(sectors=base.sectors, groups=groups, targets=base.mean_targets(periods.start, periods.end))
    res = base.combine(C)
    n_c, n_t = len(groups), periods.size
    mean = {k: (res[k] * units.kg_per_year).reshape(n_c, n_t).T for k in ("prior", "posterior")}  # (time, country)
    cov = {k: (res[f"{k}_cov"] * units.kg_per_year**2).reshape(n_c, n_t, n_c, n_t) for k in ("prior", "posterior")}
    sd = {k: np.sqrt(np.maximum(np.einsum("ctct->tc", cov[k]), 0.0)) for k in cov}
    codes = [country_code(c) for c in base.codes] + ["ALL"]  # ALL: nchar ≥ 3 whatever the codes
    fraction = np.concatenate([base.fraction, base.fraction.sum(axis=0, keepdims=True)])
    grid = ("time", "latitude", "longitude")
    pgrid = ("time", "percentile", "latitude", "longitude")
    kg = {"units": "kg a-1"}
    variables = {
        "country_fraction": (("countrynumber", "latitude", "longitude"), fraction,
                             {"units": "1", "long_name": "fraction of each grid cell in the country or region"}),
        "country": ("countrynumber", np.array(codes), {"long_name": "ISO 3166-1 alpha-3 code (or region code)"}),
        "country_name": ("countrynumber", np.array(list(base.regions) + ["ALL"], dtype=object),
                         {"long_name": "region name"}),
        "time_bnds": (("time", "bnds"), np.stack([periods.start, periods.end], axis=1)),
        "latitude_bnds": (("latitude", "bnds"), base.grid.lat_bounds, {"units": "degrees_north"}),
        "longitude_bnds": (("longitude", "bnds"), base.grid.lon_bounds, {"units": "degrees_east"}),
    }
    for k in ("prior", "posterior"):
        mu = flux[f"flux_{k}"].transpose("time", "lat", "lon").values
        sigma = flux[f"flux_{k}_standard_error"].transpose("time", "lat", "lon").values
        variables[f"flux_total_{k}"] = (grid, mu, {"units": "mol m-2 s-1", "cell_methods": "time: mean",
                                                   "long_name": f"{k} total flux (all sectors), positive upward"})
        variables[f"percentile_flux_total_{k}"] = (pgrid, mu[:, None] + z[None, :, None, None] * sigma[:, None],
                                                   {"units": "mol m-2 s-1", "cell_methods": "time: mean",
                                                    "long_name": f"Gaussian percentiles of the {k} flux"})
        variables[f"country_flux_total_{k}"] = (("time", "countrynumber"), mean[k],
                                                {**kg, "long_name": f"{k} net flux of each country or region "
                                                 f"(kg {data.species.upper()} per year, positive = emission)"})
        variables[f"percentile_country_flux_total_{k}"] = (
            ("time", "percentile", "countrynumber"), mean[k][:, None, :] + z[None, :, None] * sd[k][:, None, :],
            {**kg, "long_name": f"Gaussian percentiles of the {k} country flux"})
    with warnings.catch_warnings():  # the layout repeats countrynumber; xarray warns about it
        warnings.filterwarnings("ignore", message="Duplicate dimension names")
        variables["covariance_country_flux_total_posterior"] = (
            ("time", "countrynumber", "countrynumber"), np.einsum("ctdt->tcd", cov["posterior"]),
            {"units": "kg2 yr-2", "long_name": "posterior covariance of the country fluxes (exact)"})
        ds = xr.Dataset(variables, coords={
            "time": ("time", periods.start, {"standard_name": "time", "bounds": "time_bnds"}),
            "latitude": ("latitude", base.grid.lat, {"standard_name": "latitude", "units": "degrees_north",
                                                     "bounds": "latitude_bnds"}),
            "longitude": ("longitude", base.grid.lon, {"standard_name": "longitude", "units": "degrees_east",
                                                       "bounds": "longitude_bnds"}),
            "percentile": ("percentile", q, {"units": "1", "long_name": "cumulative probability"})})
    for name in ("time", "time_bnds"):
        ds[name].encoding["units"] = "seconds since 1970-01-01 00:00:00"
    ds["country"].encoding.update({"dtype": "S1", "char_dim_name": "nchar"})  # char array (countrynumber, nchar)
    if data.species == "co2":
        for k in ("prior", "posterior"):
            ds[f"flux_total_{k}"].attrs["standard_name"] = "surface_upward_mole_flux_of_carbon_dioxide"
    ds.attrs.update(_globals(data, f"tanhui {data.species.upper()} flux: {data.config.run.name}"))
    return ds


def paris_concentration_datasets(data: ReportData) -> dict[str, xr.Dataset]:
    """One PARIS concentration dataset per site (module docstring)."""
    sites = data.sites
    scale = {"ppm": 1e-6, "ppb": 1e-9}[sites["observed"].attrs["units"]]
    code = sites["site"].values.astype(str)
    out = {}
    for site in sorted(set(code.tolist())):
        sel = sites.isel(obs=np.flatnonzero(code == site))
        u_obs, sigma = sel["measurement_uncertainty"].values * scale, sel["sigma"].values * scale
        values = {
            "Yobs": (sel["observed"], "observed mole fraction"),
            "uYobs_repeatability": (u_obs, "measurement uncertainty of the observation (1 sigma)"),
            "uYmod": (np.sqrt(np.maximum(sigma**2 - u_obs**2, 0.0)), "model-data mismatch (1 sigma)"),
            "uYtotal": (sigma, "total observation error (1 sigma)"),
            "Yapriori": (sel["prior_model"], "prior modelled mole fraction (with background)"),
            "Yapost": (sel["posterior_model"], "posterior modelled mole fraction (with background)"),
            "YaprioriBC": (sel["background"], "prior background mole fraction"),
            "YapostBC": (sel["posterior_background"], "posterior background mole fraction"),
        }
        ds = xr.Dataset(coords={"time": ("time", sel["time"].values.astype("datetime64[s]"),
                                         {"standard_name": "time"})})
        for name, (value, text) in values.items():
            array = np.asarray(value) * (scale if isinstance(value, xr.DataArray) else 1.0)
            ds[name] = ("time", array, {"units": "mol mol-1", "long_name": text})
        ds["time"].encoding["units"] = "seconds since 1970-01-01 00:00:00"
        ds.attrs.update(_globals(data, f"tanhui mole fractions at {site}: {data.config.run.name}"))
        ds.attrs["site"] = site
        for name in ("latitude", "longitude", "height"):
            if name in sel:
                ds.attrs[f"site_{name}"] = float(sel[name].values[0])
        out[site] = ds
    return out


def write_paris(data: ReportData, out_dir: Path) -> list[Path]:
    """Write the flux file and one concentration file per site into ``out_dir``."""
    out_dir = Path(out_dir)
    paths = [out_dir / FLUX_FILE]
    with warnings.catch_warnings():  # the repeated countrynumber dimension (module docstring)
        warnings.filterwarnings("ignore", message="Duplicate dimension names")
        write_netcdf(paris_flux_dataset(data), paths[0])
    for site, ds in paris_concentration_datasets(data).items():
        paths.append(out_dir / f"{CONCENTRATION_PREFIX}{site}.nc")
        write_netcdf(ds, paths[-1])
    return paths
