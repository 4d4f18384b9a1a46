"""Background mole fractions: from boundary curtains × particle-exit fractions, or from a
background time series per site.

**Curtains** (``[background] method = "curtains"``).  A Lagrangian model records, for each
receptor, the fraction p_e[h, k] of its particles that left the domain through edge
e ∈ {N, E, S, W} at height level h and along-edge cell k (k runs over longitude for N/S and
latitude for E/W).  With the curtain mole fractions c_e[h, k] (mol mol⁻¹) of a global model on
those edges, the background of the receptor is

    bg = Σ_e bg_e,     bg_e = Σ_h Σ_k p_e[h, k] · c_e[h, k](t)                (mol mol⁻¹)

bg_e is the contribution of edge e, the column of H of that edge's scaling factor when
``state.boundary_scaling`` is on.  The curtain at the receptor time t comes from the curtain
files by ``background.time_mapping``:

* ``month`` (default): the curtain stamped in the receptor's calendar month; exactly one per
  month is required.  This is what acrg's ``footprints_data_merge`` does with its monthly
  MOZART curtains (it forward-fills the monthly curtain onto the footprint times) and what
  reproduces its benchmark values;
* ``linear``: linear interpolation in time between the two curtains around t;
* ``constant``: one curtain for every time (a file with a single time or no time axis).

Receptor times the mapping cannot serve are refused, never extrapolated.  Curtain files hold
``vmr_n|s(height, lon[, time])`` and ``vmr_e|w(height, lat[, time])`` in any dimension order,
on the footprint grid's lon/lat and the footprints' particle heights (matched by value).  The
MOZART and CAMS files carry no ``units`` attribute: ``background.curtain_units`` must then say
what they are (the choice is logged), otherwise they are refused.

**Series** (``method = "series"``): a background time series per site, as CSV (columns
``time``, ``site``, ``background [units]``) or NetCDF (``background(time)`` with a global
attribute ``site``, or ``background(site, time)`` with a string coordinate ``site``; units
attribute required), mapped onto each receptor time by ``time_mapping`` (default ``linear``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.units import MOLE_FRACTION_UNITS, conversion_factor

from .io import open_netcdf
from .obs_formats import check_times, read_csv_table
from .progress import Progress, log
from .state import StateExtra

EDGES = ("n", "e", "s", "w")
EDGE_NAMES = ("N", "E", "S", "W")
_ALONG = {"n": "lon", "s": "lon", "e": "lat", "w": "lat"}
_HEIGHT_RTOL = 1e-6


@dataclass(frozen=True, eq=False)
class Curtains:
    """Boundary mole fractions (mol mol⁻¹) on the domain edges: ``vmr[edge]`` has shape
    (n_time, n_height, n_along); ``time`` (datetime64[s], sorted; one NaT for a file without
    time axis), ``height`` (m, the particle-height levels), ``lat``/``lon`` along the edges."""

    time: np.ndarray
    height: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    vmr: dict[str, np.ndarray]
    paths: tuple[str, ...]


def _curtain_file(path: Path, units_if_missing: str | None) -> tuple[np.ndarray, np.ndarray, dict, xr.Dataset]:
    ds = open_netcdf(path, "boundary curtain")
    missing = [f"vmr_{e}" for e in EDGES if f"vmr_{e}" not in ds.variables] + [
        c for c in ("height", "lat", "lon") if c not in ds.variables]
    if missing:
        raise InputError(path, ", ".join(missing), "boundary curtain variable(s) missing",
                         "curtain files hold vmr_n, vmr_s (height, lon, time), vmr_e, vmr_w (height, lat, time) "
                         "and the coordinates height, lat, lon")
    height = np.asarray(ds["height"].values, dtype=np.float64)
    if "units" in ds["height"].attrs:
        height = height * conversion_factor(ds["height"].attrs["units"], "m", path=path, variable="height")
    has_time = "time" in ds.variables and "time" in ds.dims
    times = np.asarray(ds["time"].values).astype("datetime64[s]") if has_time else np.array(["NaT"], "datetime64[s]")
    vmr, unlabelled = {}, []
    for e in EDGES:
        name = f"vmr_{e}"
        var = ds[name]
        dims = ("time", "height", _ALONG[e]) if has_time else ("height", _ALONG[e])
        if set(var.dims) != set(dims):
            raise InputError(path, name, f"dimensions are {var.dims}", f"expected {dims} (in any order)")
        units = var.attrs.get("units")
        if units is None or not str(units).strip():
            if units_if_missing is None:
                raise InputError(path, name, "no units attribute",
                                 'say what the curtain values are with background.curtain_units (e.g. "mol mol-1")')
            units = units_if_missing
            unlabelled.append(name)
        values = np.asarray(var.transpose(*dims).values, dtype=np.float64)
        values = values * conversion_factor(str(units), MOLE_FRACTION_UNITS, path=path, variable=name)
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(path, name, f"{int(bad.sum())} values are NaN or infinite", "fill the curtain completely")
        vmr[e] = values if has_time else values[None]
    if unlabelled:
        log.info("%s: %s without units attribute: background.curtain_units = %r used", path, ", ".join(unlabelled),
                 units_if_missing)
    return times, height, vmr, ds


def _check_edges(ds: xr.Dataset, path: Path, grid: Grid, grid_source: str) -> None:
    """The curtains' lon (N, S edges) and lat (E, W edges) must be the grid's cell centres,
    within 0.1 % of a cell (files store float32 coordinates, ~1e-6° off the float64 grid)."""
    for name, centres, bounds in (("lat", grid.lat, grid.lat_bounds), ("lon", grid.lon, grid.lon_bounds)):
        values = np.asarray(ds[name].values, dtype=np.float64)
        tolerance = 1e-3 * float(np.diff(bounds, axis=1).min())
        if values.shape != centres.shape or not np.allclose(values, centres, rtol=0.0, atol=tolerance):
            found = f"{values.size} values {values.min():.4f}…{values.max():.4f}" if values.size else "empty"
            raise InputError(path, name, f"curtain {name} ({found}) differs from the footprint grid of {grid_source} "
                             f"({centres.size} cells {centres[0]:.4f}…{centres[-1]:.4f})",
                             "give curtains on the footprints' domain edges (the same lat/lon cells)")


def read_curtains(paths: list[Path], grid: Grid, *, units_if_missing: str | None = None,
                  grid_source: str = "the footprint store") -> Curtains:
    """Read and concatenate curtain files along time (sorted; a duplicated time is refused).
    Their lat/lon must be the footprint grid's and their heights must agree."""
    if not paths:
        raise InputError(None, "background.curtains", "no curtain file given", "list the curtain files")
    times, heights, parts = [], None, {e: [] for e in EDGES}
    for path in paths:
        t, h, vmr, ds = _curtain_file(Path(path), units_if_missing)
        _check_edges(ds, Path(path), grid, grid_source)
        if heights is None:
            heights = h
        elif h.shape != heights.shape or not np.allclose(h, heights, rtol=_HEIGHT_RTOL):
            raise InputError(path, "height", f"heights {h.tolist()} differ from those of {paths[0]}",
                             "give curtains on the same height levels")
        times.append(t)
        for e in EDGES:
            parts[e].append(vmr[e])
    time = np.concatenate(times)
    if np.isnat(time).any() and time.size > 1:
        raise InputError(", ".join(map(str, paths)), "time", "a curtain without time axis cannot be combined with others",
                         "give one time-less curtain (time_mapping = \"constant\") or curtains with times")
    order = np.argsort(time, kind="stable")
    time = time[order]
    dup = np.flatnonzero(np.diff(time.astype(np.int64)) == 0)
    if dup.size:
        raise InputError(", ".join(map(str, paths)), "time", f"curtain time {time[dup[0]]} appears twice",
                         "give each curtain time once")
    vmr = {e: np.concatenate(parts[e])[order] for e in EDGES}
    return Curtains(time=time, height=heights, lat=grid.lat, lon=grid.lon, vmr=vmr, paths=tuple(map(str, paths)))


def time_weights(source_times: np.ndarray, times: np.ndarray, mapping: str, where: str) -> sp.csr_matrix:
    """W (n × n_source) with  value(t_i) = Σ_j W[i, j] · value_j  for the ``mapping``
    month | linear | constant (see the module docstring); times it cannot serve are refused."""
    times = np.asarray(times).astype("datetime64[s]")
    n, m = times.size, source_times.size
    if mapping == "constant":
        if m != 1:
            raise InputError(where, "time", f'time_mapping = "constant" needs a single time, found {m}',
                             'use time_mapping = "month" or "linear"')
        return sp.csr_matrix((np.ones(n), (np.arange(n), np.zeros(n, dtype=np.int64))), shape=(n, 1))
    if np.isnat(source_times).any():
        raise InputError(where, "time", "no time axis", 'a time-less input needs time_mapping = "constant"')
    if mapping == "month":
        months = source_times.astype("datetime64[M]")
        if np.unique(months).size != m:
            raise InputError(where, "time", "several times in one calendar month",
                             'time_mapping = "month" needs one time per month; use "linear"')
        index = np.searchsorted(months, times.astype("datetime64[M]"))
        ok = (index < m) & (months[np.minimum(index, m - 1)] == times.astype("datetime64[M]"))
        if not ok.all():
            missing = sorted({str(t) for t in times[~ok].astype("datetime64[M]")})
            raise InputError(where, "time", f"no time in month(s) {', '.join(missing)} "
                             f"({int((~ok).sum())} receptor times)", "add the inputs of those months")
        return sp.csr_matrix((np.ones(n), (np.arange(n), index)), shape=(n, m))
    if mapping == "linear":
        t = times.astype(np.int64).astype(np.float64)
        s = source_times.astype(np.int64).astype(np.float64)
        outside = (t < s[0]) | (t > s[-1])
        if outside.any():
            raise InputError(where, "time", f"{int(outside.sum())} receptor times lie outside {source_times[0]} … "
                             f"{source_times[-1]} (first {times[outside][0]})",
                             "extend the inputs over the run; tanhui does not extrapolate")
        if m == 1:
            return sp.csr_matrix((np.ones(n), (np.arange(n), np.zeros(n, dtype=np.int64))), shape=(n, 1))
        j = np.clip(np.searchsorted(s, t, side="right") - 1, 0, m - 2)
        w = (t - s[j]) / (s[j + 1] - s[j])
        rows = np.repeat(np.arange(n), 2)
        cols = np.stack([j, j + 1], axis=1).ravel()
        vals = np.stack([1 - w, w], axis=1).ravel()
        return sp.csr_matrix((vals, (rows, cols)), shape=(n, m))
    raise ValueError(f"unknown time mapping {mapping!r}")


def edge_contributions(fractions: dict[str, np.ndarray], weights: sp.csr_matrix, curtains: Curtains) -> np.ndarray:
    """bg_e (n × 4, mol mol⁻¹, edges N, E, S, W) of n receptors from their exit fractions
    ``fractions[e]`` (n, n_height, n_along) and the curtain weights (n × n_curtain_time)."""
    n = weights.shape[0]
    out = np.zeros((n, len(EDGES)))
    used = np.unique(weights.indices)
    for k, e in enumerate(EDGES):
        p = np.asarray(fractions[e], dtype=np.float64)
        if p.shape != (n,) + curtains.vmr[e].shape[1:]:
            raise ValueError(f"exit fractions of edge {e} have shape {p.shape}, expected {(n,) + curtains.vmr[e].shape[1:]}")
        per_time = np.zeros((n, curtains.time.size))
        for j in used:
            per_time[:, j] = np.einsum("ihk,hk->i", p, curtains.vmr[e][j])
        out[:, k] = np.asarray(weights.multiply(per_time).sum(axis=1)).ravel()
    return out


def store_edge_contributions(store, rows: np.ndarray, times: np.ndarray, curtains: Curtains, mapping: str,
                             comm=None, block: int = 256) -> np.ndarray:
    """bg_e (n × 4) of the store ``rows`` (receptor ``times``), reading the exit fractions in
    blocks of consecutive rows (each row is ~2·n_height·(nlat + nlon) numbers)."""
    if not store.has_boundary:
        raise InputError(store.path, "boundary", "the footprint store holds no particle-exit fractions",
                         "ingest footprints that carry particle_locations_n/e/s/w (NAME), or use "
                         '[background] method = "series" or "file"')
    height = np.asarray(store.boundary_height, dtype=np.float64)
    if height.shape != curtains.height.shape or not np.allclose(height, curtains.height, rtol=_HEIGHT_RTOL):
        raise InputError(curtains.paths[0], "height", f"curtain heights {curtains.height.tolist()} m differ from the "
                         f"footprints' particle heights {height.tolist()} m in {store.path}",
                         "give curtains on the footprints' height levels")
    weights = time_weights(curtains.time, times, mapping, ", ".join(curtains.paths))
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    out = np.zeros((rows.size, len(EDGES)))
    position = 0
    progress = Progress(comm, "background from curtains", rows.size) if comm is not None else None
    with progress or contextlib.nullcontext():
        while position < rows.size:
            first = ordered[position]
            stop = np.searchsorted(ordered, first + block, side="left")
            chunk = order[position:stop]
            fractions = store.read_boundary(int(first), int(ordered[stop - 1]) + 1)
            local = {e: fractions[e][rows[chunk] - first] for e in EDGES}
            out[chunk] = edge_contributions(local, weights[chunk], curtains)
            position = stop
            if progress is not None:
                progress.update(position)
    return out


# ---- boundary scaling elements of the state -------------------------------------------------

BOUNDARY_SCALING = "boundary_scaling"


def boundary_scaling_extra(periods: TimeAxis, sigma: float) -> StateExtra:
    """One scaling factor per domain edge (N, E, S, W) and state period, prior N(1, σ²):
    the modelled background is Σ_e x[e, p(t)] · bg_e."""
    return StateExtra(name=BOUNDARY_SCALING, dims=("edge", "period"), shape=(len(EDGES), periods.size),
                      coords={"edge": list(EDGE_NAMES)}, prior_mean=1.0, prior_sd=sigma, units="1",
                      long_name="scaling factor of the background entering through each domain edge")


def boundary_scaling_columns(edge_background: np.ndarray, times: np.ndarray, periods: TimeAxis) -> sp.csr_matrix:
    """Columns of H of the boundary scaling factors (n × 4·n_period, edge-major):
    H[i, (e, p)] = bg_e[i] · 1[t_i ∈ p]  (mol mol⁻¹ per unit scaling)."""
    edge_background = np.asarray(edge_background, dtype=np.float64)
    n = edge_background.shape[0]
    period = periods.locate(np.asarray(times).astype("datetime64[s]"))
    if (period < 0).any():
        raise ValueError(f"{int((period < 0).sum())} observation times lie in no state period")
    rows = np.repeat(np.arange(n), len(EDGES))
    cols = (np.arange(len(EDGES))[None, :] * periods.size + period[:, None]).ravel()
    return sp.csr_matrix((edge_background.ravel(), (rows, cols)), shape=(n, len(EDGES) * periods.size))


# ---- background time series per site ------------------------------------------------------


@dataclass(frozen=True, eq=False)
class BackgroundSeries:
    """Background mole fraction (mol mol⁻¹) per site: ``series[site] = (time, value)``."""

    series: dict[str, tuple[np.ndarray, np.ndarray]]
    paths: tuple[str, ...]


def _series_from_netcdf(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ds = open_netcdf(path, "background series")
    if "background" not in ds.variables:
        raise InputError(path, "background", "variable missing", "background series files hold background(time) "
                         "with a global attribute site, or background(site, time)")
    var = ds["background"]
    units = var.attrs.get("units")
    if units is None:
        raise InputError(path, "background", "no units attribute", "add units such as 'ppb' or 'mol mol-1'")
    factor = conversion_factor(str(units), MOLE_FRACTION_UNITS, path=path, variable="background")
    time = np.asarray(ds["time"].values).astype("datetime64[s]")
    if var.dims == ("time",):
        if "site" not in ds.attrs:
            raise InputError(path, "attribute site", "missing", "a background(time) file names its site in a global attribute")
        return {str(ds.attrs["site"]).upper(): (time, np.asarray(var.values, dtype=np.float64) * factor)}
    if set(var.dims) != {"site", "time"} or "site" not in ds.variables:
        raise InputError(path, "background", f"dimensions are {var.dims}", "expected (time) or (site, time) with a site coordinate")
    values = np.asarray(var.transpose("site", "time").values, dtype=np.float64) * factor
    return {str(s).upper(): (time, v) for s, v in zip(ds["site"].values, values)}


def _series_from_csv(path: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    table = read_csv_table(path, {"time": "", "site": "", "background": ""}, ("time", "site", "background"))
    time = table.times().astype("datetime64[s]")
    value = table.numbers("background", MOLE_FRACTION_UNITS)
    codes = np.array([c.strip().upper() for c in table.cells["site"]], dtype=str)
    return {code: (time[codes == code], value[codes == code]) for code in dict.fromkeys(codes.tolist())}


def read_background_series(paths: list[Path]) -> BackgroundSeries:
    """Read background series files (CSV or NetCDF, see the module docstring): times strictly
    increasing per site, no missing value, each site in one file only."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for path in map(Path, paths):
        part = _series_from_csv(path) if path.suffix.lower() == ".csv" else _series_from_netcdf(path)
        for site, (time, value) in part.items():
            if site in out:
                raise InputError(path, "site", f"site {site} appears in more than one background file", "give each site once")
            check_times(time, path, f"time (site {site})")
            bad = ~np.isfinite(value)
            if bad.any():
                raise InputError(path, f"background (site {site})", f"{int(bad.sum())} values are missing",
                                 "give a background value at every time; tanhui does not fill gaps")
            out[site] = (time, value)
    return BackgroundSeries(series=out, paths=tuple(map(str, paths)))


def series_background(background: BackgroundSeries, sites: np.ndarray, times: np.ndarray, mapping: str) -> np.ndarray:
    """Background (mol mol⁻¹) of each observation from its site's series at its time."""
    sites = np.char.upper(np.asarray(sites).astype(str))
    missing = sorted(set(sites.tolist()) - set(background.series))
    if missing:
        raise InputError(", ".join(background.paths), "site", f"no background series for site(s) {', '.join(missing)}",
                         f"sites in the files: {', '.join(sorted(background.series))}")
    out = np.empty(sites.size)
    for site, (time, value) in background.series.items():
        m = sites == site
        if m.any():
            out[m] = time_weights(time, np.asarray(times)[m], mapping, f"{', '.join(background.paths)} (site {site})") @ value
    return out
