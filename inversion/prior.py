"""Prior fluxes on the inversion grid and flux time axis.

File format (NetCDF): one variable per sector with dims ``(time, lat, lon)`` and a ``units``
attribute convertible to mol m-2 s-1 (positive upward: emissions positive, sinks negative).
``time`` holds the start of each flux step; every step of the footprint time axis must be
present (extra steps are ignored).  NaN is refused: a sector without flux somewhere (e.g. an
ocean flux over land) must store 0 there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.units import FLUX_UNITS, conversion_factor

from .io import check_same_grid, open_netcdf, require_variables


@dataclass(frozen=True, eq=False)
class PriorFlux:
    """Sector fluxes (mol m-2 s-1), each (n_time, nlat, nlon) on the footprint time axis."""

    sectors: dict[str, np.ndarray]
    grid: Grid
    time: TimeAxis


def read_prior(path: Path, sectors: list[str], grid: Grid, time: TimeAxis, grid_source: str) -> PriorFlux:
    ds = open_netcdf(path, "prior flux")
    require_variables(ds, path, sectors + ["time"], "prior flux")
    check_same_grid(ds, path, grid, "prior flux", grid_source)
    file_times = np.asarray(ds["time"].values).astype("datetime64[s]")
    position = {t: i for i, t in enumerate(file_times)}
    missing = [t for t in time.start if t not in position]
    if missing:
        raise InputError(path, "time", f"{len(missing)} of the {time.size} footprint time steps are missing "
                         f"(first {missing[0]}, prior covers {file_times.min()}…{file_times.max()})",
                         "provide the prior on the footprint time axis (step starts)")
    index = np.array([position[t] for t in time.start])
    out: dict[str, np.ndarray] = {}
    for name in sectors:
        var = ds[name]
        if var.dims != ("time", "lat", "lon") and var.dims != ("time", "latitude", "longitude"):
            raise InputError(path, name, f"dimensions are {var.dims}", "expected (time, lat, lon)")
        units = var.attrs.get("units")
        if units is None:
            raise InputError(path, name, "no units attribute", f"add units (e.g. '{FLUX_UNITS}')")
        factor = conversion_factor(units, FLUX_UNITS, path=path, variable=name)
        values = np.asarray(var.values, dtype=np.float64)[index] * factor
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError(path, name, f"{int(bad.sum())} values are NaN or infinite",
                             "store 0 where the sector has no flux (e.g. ocean flux over land)")
        out[name] = values
    return PriorFlux(sectors=out, grid=grid, time=time)
