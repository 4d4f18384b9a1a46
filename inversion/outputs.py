"""Run outputs, each written atomically (temporary name, then rename) by rank 0.

=========================  ==================================================================
file                       content
=========================  ==================================================================
posterior_state.nc         prior/posterior state (scaling factors, background offsets), σ,
                           uncertainty reduction, truth (twins), posterior covariance
                           (analytical, when it fits) or Ritz pairs (variational)
posterior_flux.nc          CF-1.8 period-mean gridded flux: prior, posterior and its standard
                           error (mol m-2 s-1, positive upward), cell_area, bounds
totals.csv                 region × period totals: prior, posterior, σ (and truth)
totals.nc                  base totals per (sector, report region, interval) with their
                           prior and posterior covariances (exact; variational: also the
                           low-rank one), the aggregate matrix, the report region masks
                           (:mod:`inversion.report.totals`)
maps.nc                    run-mean prior and posterior flux and their σ per cell, total
                           observation sensitivity Σ_obs Σ_t K per cell
observations_modelled.nc   per observation: observed, prior and posterior modelled mole
                           fraction, prior and posterior background, σ (ppm / ppb)
diagnostics.json           χ², DOFS, solver and convergence, per-site statistics, timings
config.resolved.toml       the configuration with absolute paths + sha256 of config/inputs;
                           written last, so its presence marks a complete run
report/                    the report (``tanhui report``), made after the run's outputs
=========================  ==================================================================
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import xarray as xr

from transport.errors import InputError

from . import __version__
from .aggregates import WHOLE_RUN, Aggregates, report_unit
from .config import Config
from .io import write_json, write_netcdf, write_text
from .posterior import DensePosteriorCovariance, LowRankPosteriorCovariance, Posterior
from .problem import Problem
from .state import StateSpace

OUTPUT_FILES = ("posterior_state.nc", "posterior_flux.nc", "totals.csv", "totals.nc", "maps.nc",
                "observations_modelled.nc", "diagnostics.json", "config.resolved.toml", "report")
REPORT_DIR = "report"  # the last entry: made by the report step after the run's outputs

_CF_FLUX_NAME = {"co2": "surface_upward_mole_flux_of_carbon_dioxide"}  # CF has no name for CH4 mole flux


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse (before any heavy work) to mix this run's outputs with another run's."""
    found = [name for name in OUTPUT_FILES if (Path(path) / name).exists()]
    if found and not overwrite:
        raise InputError(path, None, f"output directory already holds another run's outputs ({', '.join(found)})",
                         "choose another run.output_dir / --output-dir, or pass --overwrite to replace them")


def observation_units(species: str) -> tuple[str, float]:
    """Units of reported mole fractions and the factor from mol mol⁻¹: ppm for CO₂, ppb for CH₄."""
    return ("ppm", 1e6) if species == "co2" else ("ppb", 1e9)


def modelled_observations(problem: Problem, posterior: Posterior, store_obs: xr.Dataset | None = None) -> xr.Dataset:
    """Every observation (all ranks, in store-row order; collective, replicated): observed and
    modelled mole fractions in ppm (CO₂) or ppb (CH₄).

    prior_model / posterior_model = value − (y − H x) for x = x_b / x_a, i.e. the background
    (scaled by the state with boundary scaling) + K f_fixed + H x; background / posterior_background
    = the background part alone (file or curtain background, plus the background offsets or
    times the boundary scalings of x_b / x_a).  ``store_obs`` (the footprint store's receptors)
    adds latitude, longitude and height."""
    unit, scale = observation_units(problem.config.run.species)
    state, H, obs = problem.state, problem.H, problem.obs
    scaled = problem.config.state.boundary_scaling
    value = obs["value"].values

    def background_part(x: np.ndarray) -> np.ndarray:
        only = np.array(x, dtype=np.float64, copy=True)
        only[: state.n_flux] = 0.0  # background offsets and boundary scalings only
        return (0.0 if scaled else obs["background"].values) + H.matvec(only)

    local = {
        "obs_id": obs["obs_id"].values.astype(str), "row": obs["row"].values, "time": obs["time"].values,
        "site": obs["site"].values.astype(str), "observed": value * scale,
        "prior_model": (value - (problem.y - H.matvec(posterior.x_b))) * scale,
        "posterior_model": (value - (problem.y - H.matvec(posterior.x_a))) * scale,
        "background": background_part(posterior.x_b) * scale,
        "posterior_background": background_part(posterior.x_a) * scale,
        "measurement_uncertainty": obs["measurement_sigma"].values * scale, "sigma": obs["sigma"].values * scale,
    }
    parts = problem.comm.allgather(local)
    merged = {k: np.concatenate([part[k] for part in parts]) for k in local}
    described = {
        "observed": "observed mole fraction", "prior_model": "prior modelled mole fraction (with background)",
        "posterior_model": "posterior modelled mole fraction (with background)",
        "background": "prior background mole fraction", "posterior_background": "posterior background mole fraction",
        "measurement_uncertainty": "1-sigma measurement uncertainty",
        "sigma": "1-sigma total observation error (measurement and model-data mismatch in quadrature)"}
    ds = xr.Dataset({k: ("obs", merged[k]) for k in ("obs_id", "row", "time", "site")})
    for name, text in described.items():
        ds[name] = ("obs", merged[name], {"units": unit, "long_name": text})
    if store_obs is not None:
        rows = merged["row"]
        for name, units in (("latitude", "degrees_north"), ("longitude", "degrees_east"), ("height", "m")):
            ds[name] = ("obs", np.asarray(store_obs[name].values, dtype=np.float64)[rows], {"units": units})
    ds["time"].encoding["units"] = "seconds since 1970-01-01 00:00:00"
    ds.attrs.update({"title": "tanhui observed and modelled mole fractions", "species": problem.config.run.species,
                     "residual_convention": "bias = mean(observed - modelled)", "source": f"tanhui {__version__}"})
    return ds


def site_summary(sites: xr.Dataset) -> dict[str, dict]:
    """Per site of a :func:`modelled_observations` dataset: n, bias and RMSE of observed −
    modelled (prior, posterior), their correlation, and χ²/n of the prior and posterior
    residuals r/σ, in the dataset's units."""
    unit = sites["observed"].attrs.get("units", "")
    site = sites["site"].values.astype(str)
    obs, sig = sites["observed"].values, sites["sigma"].values
    out = {}
    for s in sorted(set(site.tolist())):
        m = site == s
        row: dict = {"n_obs": int(m.sum()), "units": unit}
        for name in ("prior", "posterior"):
            model = sites[f"{name}_model"].values[m]
            res = obs[m] - model
            corr = np.corrcoef(obs[m], model)[0, 1] if m.sum() > 1 and obs[m].std() > 0 and model.std() > 0 \
                else float("nan")  # undefined for a single or constant series: stated as NaN
            row.update({f"{name}_bias": float(res.mean()), f"{name}_rmse": float(np.sqrt(np.mean(res**2))),
                        f"{name}_correlation": float(corr),
                        f"{name}_chi2_per_obs": float(np.mean((res / sig[m]) ** 2))})
        out[s] = row
    return out


def maps_dataset(problem: Problem, posterior: Posterior) -> xr.Dataset:
    """Run-mean maps (rank 0): prior and posterior flux f̄ = c̄ + M̄ x with M̄ = Σ_p w_p M_p the
    duration-weighted mean over the state periods of the period-mean flux matrix, their σ per
    cell from diag(M̄ B M̄ᵀ) and diag(M̄ A M̄ᵀ) (the full covariance across periods; variational
    solver: the low-rank A), and the total observation sensitivity Σ_obs Σ_t K per cell."""
    state = problem.state
    grid = state.regions.grid
    M, c = period_mean_flux_matrix(state)
    w = state.period_seconds / state.period_seconds.sum()
    mean_over_periods = sp.kron(sp.csr_matrix(w[None, :]), sp.identity(grid.size, format="csr"), format="csr")
    Md = (mean_over_periods @ M).toarray()
    c_run = mean_over_periods @ c
    prior_var = np.einsum("ij,ij->i", posterior.B.apply(np.ascontiguousarray(Md.T)).T, Md)
    post_var = posterior.covariance.aggregate_variance(Md)
    flux = {"units": "mol m-2 s-1", "cell_methods": "time: mean"}
    dims = ("lat", "lon")
    ds = xr.Dataset(
        {
            "prior_flux": (dims, (c_run + Md @ posterior.x_b).reshape(grid.shape), {**flux, "long_name": "prior flux"}),
            "posterior_flux": (dims, (c_run + Md @ posterior.x_a).reshape(grid.shape),
                               {**flux, "long_name": "posterior flux"}),
            "prior_flux_sd": (dims, np.sqrt(np.maximum(prior_var, 0)).reshape(grid.shape),
                              {**flux, "long_name": "prior 1-sigma uncertainty of the run-mean flux"}),
            "posterior_flux_sd": (dims, np.sqrt(np.maximum(post_var, 0)).reshape(grid.shape),
                                  {**flux, "long_name": "posterior 1-sigma uncertainty of the run-mean flux",
                                   "method": "low-rank posterior covariance (Ritz pairs)"
                                   if isinstance(posterior.covariance, LowRankPosteriorCovariance) else "exact"}),
            "sensitivity": (dims, problem.sensitivity, {"units": "m2 s mol-1", "long_name": "total observation "
                                                        "sensitivity: sum of all footprints over all flux steps"}),
            "cell_area": (dims, grid.cell_area(), {"standard_name": "cell_area", "units": "m2"}),
            "lat_bnds": (("lat", "bnds"), grid.lat_bounds, {"units": "degrees_north"}),
            "lon_bnds": (("lon", "bnds"), grid.lon_bounds, {"units": "degrees_east"}),
        },
        coords={"lat": ("lat", grid.lat, {"standard_name": "latitude", "units": "degrees_north",
                                          "bounds": "lat_bnds"}),
                "lon": ("lon", grid.lon, {"standard_name": "longitude", "units": "degrees_east",
                                          "bounds": "lon_bnds"})},
    )
    ds.attrs.update({"title": "tanhui run-mean maps", "period_start": str(state.periods.start[0]),
                     "period_end": str(state.periods.end[-1]),
                     "sign_convention": "positive upward: emissions positive, sinks negative",
                     "source": f"tanhui {__version__}"})
    return ds


def _totals_rows(config: Config, agg: Aggregates, totals: dict, truth: np.ndarray | None) -> list[dict]:
    unit, factor = report_unit(config.run.species)
    prior_sd = np.sqrt(np.diag(totals["prior_cov"]))
    post_sd = np.sqrt(np.maximum(np.diag(totals["posterior_cov"]), 0))
    lowrank = totals.get("posterior_cov_lowrank")
    rows = []
    for k in range(agg.size):
        row = {"region": agg.region[k],
               "period": "whole_run" if agg.period[k] == WHOLE_RUN else int(agg.period[k]),
               "period_start": str(agg.start[k]), "period_end": str(agg.end[k]), "quantity": "net_flux",
               "unit": unit, "prior": totals["prior"][k] * factor, "prior_sd": prior_sd[k] * factor,
               "posterior": totals["posterior"][k] * factor, "posterior_sd": post_sd[k] * factor,
               "uncertainty_reduction": 1 - post_sd[k] / prior_sd[k]}
        if lowrank is not None:
            row["posterior_sd_lowrank"] = np.sqrt(max(lowrank[k, k], 0.0)) * factor
        if truth is not None:
            row["truth"] = (agg.offset[k] + agg.matrix[[k]] @ truth)[0] * factor
        rows.append(row)
    return rows


def _csv_text(rows: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.10g}" if isinstance(v, float) else v) for k, v in row.items()})
    return buf.getvalue()


def _state_dataset(state: StateSpace, posterior: Posterior, truth: np.ndarray | None, species: str) -> xr.Dataset:
    ds = xr.Dataset(coords=state.coords())
    parts = [(posterior.x_b, "prior"), (posterior.x_a, "posterior"), (posterior.prior_sd(), "prior_sd"),
             (posterior.posterior_sd(), "posterior_sd"), (posterior.uncertainty_reduction(), "uncertainty_reduction")]
    if truth is not None:
        parts.append((truth, "truth"))
    for values, name in parts:
        ds = ds.assign(state.to_dataset(values, name).data_vars)
    ds["element"] = np.arange(state.size)
    if isinstance(posterior.covariance, DensePosteriorCovariance):
        ds["posterior_covariance"] = (("element", "element_"), posterior.covariance.dense(),
                                      {"long_name": "posterior error covariance of the flattened state"})
    elif isinstance(posterior.covariance, LowRankPosteriorCovariance):
        ds["ritz_vectors"] = (("element", "mode"), posterior.covariance.vectors)
        ds["ritz_eigenvalues"] = (("mode",), posterior.covariance.eigenvalues,
                                  {"long_name": "eigenvalues of G = L^T H^T R^-1 H L from Lanczos"})
    else:  # analytical, aggregates-only: A is never formed (solver.posterior_covariance)
        ds.attrs["posterior_covariance"] = ("not stored (too large): exact for the totals in totals.nc; posterior_sd "
                                            "computed exactly from the factor of H B H^T + R")
    ds.attrs.update({"title": f"tanhui posterior state ({species})", "Conventions": "CF-1.8",
                     "state_order": "flux elements flattened (sector, period, region), region fastest; "
                                    "then one background offset per site"
                                    + "".join(f"; then {e.name} {e.dims} (C order)" for e in state.extras),
                     "source": f"tanhui {__version__}"})
    return ds


def period_mean_flux_matrix(state: StateSpace) -> tuple[sp.csr_matrix, np.ndarray]:
    """M (n_period·ncell × n_state) and c with period-mean gridded flux = c + M x (mol m⁻² s⁻¹)."""
    nt, ncell = state.flux_time.size, state.regions.grid.size
    pos, dts = state.period_of_step, state.flux_time.duration_s
    inside = np.flatnonzero(pos >= 0)
    # Averaging operator over steps in each period: (n_period × nt) sparse.
    avg = sp.csr_matrix((dts[inside] / state.period_seconds[pos[inside]], (pos[inside], inside)),
                        shape=(state.n_period, nt))
    E = state.E.tocoo()
    t, cell = np.divmod(E.row, ncell)
    keep = pos[t] >= 0
    weight = dts[t[keep]] / state.period_seconds[pos[t[keep]]]
    M = sp.csr_matrix((E.data[keep] * weight, (pos[t[keep]] * ncell + cell[keep], E.col[keep])),
                      shape=(state.n_period * ncell, state.size))
    c = (avg @ state.fixed_flux.reshape(nt, ncell)).ravel()
    return M, c


def _flux_dataset(state: StateSpace, posterior: Posterior, species: str) -> xr.Dataset:
    grid = state.regions.grid
    M, c = period_mean_flux_matrix(state)
    Md = M.toarray()
    shape = (state.n_period,) + grid.shape
    prior = (c + M @ posterior.x_b).reshape(shape)
    post = (c + M @ posterior.x_a).reshape(shape)
    var = posterior.covariance.aggregate_variance(Md)
    prior_var = np.einsum("ij,ij->i", posterior.B.apply(np.ascontiguousarray(Md.T)).T, Md)
    sd = np.sqrt(np.maximum(var, 0)).reshape(shape)
    sd_b = np.sqrt(np.maximum(prior_var, 0)).reshape(shape)
    std_name = _CF_FLUX_NAME.get(species)
    label = {"co2": "CO2", "ch4": "CH4"}[species]
    dims = ("time", "lat", "lon")

    def attrs(long: str, extra: dict | None = None) -> dict:
        a = {"long_name": long, "units": "mol m-2 s-1", "cell_methods": "time: mean"}
        if std_name:
            a["standard_name"] = std_name
        return {**a, **(extra or {})}

    ds = xr.Dataset(
        {
            "flux_prior": (dims, prior, attrs(f"prior surface upward {label} mole flux (all sectors)",
                                              {"ancillary_variables": "flux_prior_standard_error"})),
            "flux_posterior": (dims, post, attrs(f"posterior surface upward {label} mole flux (all sectors)",
                                                 {"ancillary_variables": "flux_posterior_standard_error"})),
            "flux_prior_standard_error": (dims, sd_b, attrs(f"prior 1-sigma uncertainty of the {label} flux")),
            "flux_posterior_standard_error": (dims, sd, attrs(f"posterior 1-sigma uncertainty of the {label} flux")),
            "cell_area": (("lat", "lon"), grid.cell_area(), {"standard_name": "cell_area", "units": "m2"}),
            "time_bnds": (("time", "bnds"), np.stack([state.periods.start, state.periods.end], axis=1)),
            "lat_bnds": (("lat", "bnds"), grid.lat_bounds, {"units": "degrees_north"}),
            "lon_bnds": (("lon", "bnds"), grid.lon_bounds, {"units": "degrees_east"}),
        },
        coords={
            "time": ("time", state.periods.start, {"standard_name": "time", "bounds": "time_bnds"}),
            "lat": ("lat", grid.lat, {"standard_name": "latitude", "units": "degrees_north", "bounds": "lat_bnds"}),
            "lon": ("lon", grid.lon, {"standard_name": "longitude", "units": "degrees_east", "bounds": "lon_bnds"}),
        },
    )
    for name in ("time", "time_bnds"):  # one time encoding for the coordinate and its bounds (CF)
        ds[name].encoding["units"] = "seconds since 1970-01-01 00:00:00"
    if std_name:
        for v in ("flux_prior_standard_error", "flux_posterior_standard_error"):
            ds[v].attrs["standard_name"] = f"{std_name} standard_error"
    ds.attrs.update({"Conventions": "CF-1.8", "title": f"tanhui period-mean {label} flux",
                     "sign_convention": "positive upward: emissions positive, sinks negative",
                     "source": f"tanhui {__version__}",
                     "history": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} tanhui run"})
    return ds


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, np.datetime64):
        return f"{np.datetime_as_string(v, unit='s')}Z"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(k)


def resolved_config_text(config: Config, hashes: dict[str, str]) -> str:
    lines = [f"# resolved by tanhui {__version__} from {config.source}", ""]
    data = config.model_dump(exclude={"source"}, exclude_none=True)
    for section, table in data.items():
        lines.append(f"[{section}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items()]
        lines.append("")
    lines.append("[provenance]")
    lines.append(f"tanhui_version = {_toml_value(__version__)}")
    lines += [f"{_toml_key(k)} = {_toml_value('sha256:' + v)}" for k, v in hashes.items()]
    return "\n".join(lines) + "\n"


def totals_table(config: Config, agg: Aggregates, totals: dict, truth: np.ndarray | None) -> list[dict]:
    """Rows of ``totals.csv`` for ``agg`` with ``totals`` = its means and covariances
    (:meth:`Posterior.aggregate`, or :func:`inversion.report.totals.net_aggregates`)."""
    return _totals_rows(config, agg, totals, truth)


def write_outputs(out_dir: Path, problem: Problem, posterior: Posterior, rows: list[dict], diagnostics: dict,
                  truth: np.ndarray | None, hashes: dict[str, str], *, totals: xr.Dataset, maps: xr.Dataset,
                  observations: xr.Dataset) -> list[Path]:
    """Write every output (rank 0 only); config.resolved.toml last marks completion (the
    report directory is made afterwards by the report step)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # An overwritten run must never look complete with a mix of old and new files: remove the
    # completion marker first, then every old output, before writing the new ones.
    for name in reversed(OUTPUT_FILES):
        if name == REPORT_DIR:
            shutil.rmtree(out_dir / name, ignore_errors=True)  # the old report describes the old run
        else:
            (out_dir / name).unlink(missing_ok=True)
    config, state, species = problem.config, problem.state, problem.config.run.species
    write_netcdf(_state_dataset(state, posterior, truth, species), out_dir / "posterior_state.nc")
    write_netcdf(_flux_dataset(state, posterior, species), out_dir / "posterior_flux.nc")
    write_text(_csv_text(rows), out_dir / "totals.csv")
    write_netcdf(totals, out_dir / "totals.nc")
    write_netcdf(maps, out_dir / "maps.nc")
    write_netcdf(observations, out_dir / "observations_modelled.nc")
    write_json(diagnostics, out_dir / "diagnostics.json")
    write_text(resolved_config_text(config, hashes), out_dir / "config.resolved.toml")
    return [out_dir / name for name in OUTPUT_FILES if name != REPORT_DIR]
