"""Observations: schema, validation, and alignment with the footprint store.

File format (NetCDF, dimension ``obs``):

===============  ==========  ===============================================================
variable         units       meaning
===============  ==========  ===============================================================
obs_id           –           unique id; must match an ``obs_id`` of the footprint store
time             datetime    sample time (must match the store's receptor time)
site             –           site code (must match the store)
value            mole frac.  observed dry-air mole fraction (mol mol-1, ppm or ppb)
uncertainty      mole frac.  measurement uncertainty (1σ, > 0)
background       mole frac.  background mole fraction entering the domain
===============  ==========  ===============================================================

All values are converted to mol mol⁻¹.  The total error of each observation is
σ = √(uncertainty² + mismatch(site)²) with the model–data mismatch from the configuration.
The returned dataset is ordered by footprint-store row, the order every rank partitions.

:func:`load_observations` dispatches on the configured format: the schema above is read by
:func:`read_observations`; raw files (ObsPack, openghg/AGAGE, CSV; :mod:`inversion.obs_formats`)
are selected and averaged onto the footprint receptor times (:mod:`inversion.selection`) and
get their background from ``[background]`` (:mod:`inversion.background`).  Either way the
result has ``obs_id, time, site, row, value, background, measurement_sigma, sigma`` (mol mol⁻¹),
plus ``background_edge(obs, edge)`` when the background comes from boundary curtains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.units import MOLE_FRACTION_UNITS, conversion_factor

from .background import (
    EDGE_NAMES,
    read_background_series,
    read_curtains,
    series_background,
    store_edge_contributions,
)
from .config import ObservationsConfig
from .io import open_netcdf, require_variables
from .obs_formats import detect_format, read_series
from .progress import log
from .selection import select_observations

REQUIRED = ["obs_id", "time", "site", "value", "uncertainty", "background"]
_MOLE_FRACTION_VARS = ("value", "uncertainty", "background")


def _first(ids: np.ndarray, mask: np.ndarray, n: int = 3) -> str:
    return ", ".join(map(str, ids[mask][:n]))


def read_observations(path: Path, cfg: ObservationsConfig, store_obs: xr.Dataset, start: np.datetime64,
                      end: np.datetime64, store_path: Path) -> xr.Dataset:
    """Read, validate and align observations; see the module docstring for the schema."""
    ds = open_netcdf(path, "observation")
    require_variables(ds, path, REQUIRED, "observation")
    if "obs" not in ds.dims:
        raise InputError(path, None, f"no 'obs' dimension (dims: {dict(ds.sizes)})", "use dimension name 'obs'")
    ids = np.asarray(ds["obs_id"].values).astype(str)
    values = {}
    for name in _MOLE_FRACTION_VARS:
        units = ds[name].attrs.get("units")
        if units is None:
            raise InputError(path, name, "no units attribute", "add units such as 'mol mol-1', 'ppm' or 'ppb'")
        v = np.asarray(ds[name].values, dtype=np.float64) * conversion_factor(
            units, MOLE_FRACTION_UNITS, path=path, variable=name)
        bad = ~np.isfinite(v)
        if bad.any():
            raise InputError(path, name, f"{int(bad.sum())} values are NaN or missing (first ids: {_first(ids, bad)})",
                             "remove those observations upstream or give them a value; tanhui never drops data silently")
        values[name] = v
    bad = values["uncertainty"] <= 0
    if bad.any():
        raise InputError(path, "uncertainty", f"{int(bad.sum())} uncertainties are ≤ 0 (first ids: {_first(ids, bad)})",
                         "every observation needs a positive 1σ measurement uncertainty")
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise InputError(path, "obs_id", f"{int((counts > 1).sum())} duplicate ids (e.g. {', '.join(unique[counts > 1][:3])})",
                         "every observation needs a unique id")
    times = np.asarray(ds["time"].values).astype("datetime64[s]")
    outside = (times < start) | (times >= end)
    if outside.any():
        raise InputError(path, "time", f"{int(outside.sum())} observations lie outside the run period "
                         f"{start}…{end} (first ids: {_first(ids, outside)})",
                         "select observations within [run.start, run.end) or change the run period")
    sites = np.asarray(ds["site"].values).astype(str)
    unknown_sites = sorted(set(cfg.site_mismatch) - set(sites))
    if unknown_sites:
        raise InputError(path, "site", f"observations.site_mismatch names sites with no observation: "
                         f"{', '.join(unknown_sites)}", f"sites present: {', '.join(sorted(set(sites)))}")

    store_ids = np.asarray(store_obs["obs_id"].values).astype(str)
    row_of = {oid: i for i, oid in enumerate(store_ids)}
    rows = np.array([row_of.get(oid, -1) for oid in ids], dtype=np.int64)
    missing = rows < 0
    if missing.any():
        raise InputError(path, "obs_id", f"{int(missing.sum())} observations have no footprint in {store_path} "
                         f"(first ids: {_first(ids, missing)})", "compute their footprints or remove them")
    store_times = np.asarray(store_obs["time"].values).astype("datetime64[s]")[rows]
    store_sites = np.asarray(store_obs["site"].values).astype(str)[rows]
    wrong = (store_times != times) | (store_sites != sites)
    if wrong.any():
        raise InputError(path, "time/site", f"{int(wrong.sum())} observations disagree with the footprint store "
                         f"on time or site (first ids: {_first(ids, wrong)})",
                         "the observation and its footprint must describe the same receptor")

    mismatch = np.array([cfg.mismatch(s) for s in sites])
    order = np.argsort(rows, kind="stable")
    out = xr.Dataset(
        {
            "obs_id": ("obs", ids),
            "time": ("obs", times),
            "site": ("obs", sites),
            "row": ("obs", rows),
            "value": ("obs", values["value"], {"units": MOLE_FRACTION_UNITS}),
            "background": ("obs", values["background"], {"units": MOLE_FRACTION_UNITS}),
            "measurement_sigma": ("obs", values["uncertainty"], {"units": MOLE_FRACTION_UNITS}),
            "sigma": ("obs", np.hypot(values["uncertainty"], mismatch), {"units": MOLE_FRACTION_UNITS}),
        }
    ).isel(obs=order)
    return out


def _check_site_mismatch(cfg: ObservationsConfig, sites: np.ndarray, where) -> None:
    unknown = sorted(set(cfg.site_mismatch) - set(sites.tolist()))
    if unknown:
        raise InputError(where, "site", f"observations.site_mismatch names sites with no observation: "
                         f"{', '.join(unknown)}", f"sites present: {', '.join(sorted(set(sites.tolist())))}")


def load_observations(config, store, comm=None) -> xr.Dataset:
    """The run's observations on the footprint ``store`` (a :class:`transport.store.FootprintStore`),
    from every configured source, with their background (see the module docstring).  ``comm``
    (optional) shows the progress of the background computation on its rank 0."""
    cfg, bg, run = config.observations, config.background, config.run
    sources = [(s, s.format if s.format != "auto" else detect_format(s.file, run.species)) for s in cfg.source_list()]
    paired = [s for s, fmt in sources if fmt == "tanhui"]
    if paired:
        if len(sources) != 1:
            raise InputError(", ".join(str(s.file) for s, _ in sources), "format", "a tanhui observation file "
                             "(already paired with its footprints) cannot be combined with other sources",
                             "give it alone as observations.file")
        obs = read_observations(paired[0].file, cfg, store.obs, run.start, run.end, store.path)
        if bg.method != "file":
            log.info("background from [background] method = %r replaces the background variable of %s",
                     bg.method, paired[0].file)
    else:
        if bg.method == "file":
            raise InputError(", ".join(str(s.file) for s, _ in sources), "background", "raw observation files "
                             "carry no background", 'add [background] with method = "curtains" or "series"')
        series = [one for s, fmt in sources for one in read_series(s.file, fmt, run.species, s.site)]
        obs = select_observations(series, store.obs, cfg, run.start, run.end, store.path)
        sites = obs["site"].values.astype(str)
        _check_site_mismatch(cfg, sites, ", ".join(str(s.file) for s, _ in sources))
        mismatch = np.array([cfg.mismatch(site) for site in sites])
        obs["sigma"] = ("obs", np.hypot(obs["measurement_sigma"].values, mismatch), {"units": MOLE_FRACTION_UNITS})
    if bg.method == "curtains":
        curtains = read_curtains(bg.curtains, store.grid, units_if_missing=bg.curtain_units, grid_source=str(store.path))
        edges = store_edge_contributions(store, obs["row"].values, obs["time"].values, curtains, bg.mapping, comm)
        obs["background_edge"] = (("obs", "edge"), edges, {"units": MOLE_FRACTION_UNITS,
                                                          "long_name": "background entering through each domain edge"})
        obs = obs.assign_coords(edge=list(EDGE_NAMES))
        obs["background"] = ("obs", edges.sum(axis=1), {"units": MOLE_FRACTION_UNITS})
    elif bg.method == "series":
        background = read_background_series(bg.series)
        obs["background"] = ("obs", series_background(background, obs["site"].values, obs["time"].values, bg.mapping),
                             {"units": MOLE_FRACTION_UNITS})
    return obs
