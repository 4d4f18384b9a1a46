"""VPRM biosphere fluxes (Vegetation Photosynthesis and Respiration Model), hourly NetCDF.

Variables ``GEE`` (gross ecosystem exchange), ``RESP`` (ecosystem respiration) and ``NEE``
(net ecosystem exchange), units **µmol m⁻² s⁻¹** of CO₂ (the ``units`` attribute), dims
(time, lat|latitude, lon|longitude) on a regular latitude/longitude grid (projected VPRM
grids must be regridded to latitude/longitude first).

Sign convention (VPRM's, which is tanhui's): positive upward; GEE ≤ 0 (uptake), RESP ≥ 0 and
NEE = GEE + RESP.  A ``GEE`` with positive values (a GPP-like "uptake positive" variant) is
refused rather than silently mis-signed.  When ``NEE`` is asked for and the file holds only
``GEE`` and ``RESP``, NEE is their sum.

Time: CF time bounds when present, otherwise hourly stamps at the **start** of each hour
(``time_stamp = "middle"`` for files stamped at half past).  Monthly files of hourly data
form one series through a glob pattern.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transport.errors import InputError

from ..progress import log
from .base import Inventory, netcdf_inventory, open_dataset, summed

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES = ("GEE", "RESP", "NEE")
DEFAULT_VARIABLE = "NEE"
TIME_STAMP = "start"
# GEE values above this fraction of the largest |GEE| count as positive (not rounding noise).
_GEE_POSITIVE = 1e-6


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    if species != "co2":
        raise InputError(path, variable, f"VPRM CO2 fluxes cannot be a {species.upper()} prior",
                         "use an inventory of the run's species (run.species)")
    with open_dataset(path) as ds:
        names = set(map(str, ds.data_vars))
    if variable == "NEE" and "NEE" not in names and {"GEE", "RESP"} <= names:
        log.info("%s: no NEE variable; NEE = GEE + RESP", path)
        return summed([read(path, "GEE", sector, species), read(path, "RESP", sector, species)])
    inv = netcdf_inventory(path, variable, species, units=sector.units, stamp=sector.time_stamp or TIME_STAMP,
                           time_step=sector.time_step)
    if variable != "GEE":
        return inv

    def read_gee(t: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        values = inv.read(t, rows, cols)
        finite = values[np.isfinite(values)]
        if finite.size and finite.max() > _GEE_POSITIVE * np.abs(finite).max():
            raise InputError(path, "GEE", f"GEE has positive values (up to {finite.max():.3g} mol m-2 s-1)",
                             "VPRM's GEE is uptake, negative (NEE = GEE + RESP); give GEE with that sign")
        return values

    return Inventory(path=inv.path, variable=inv.variable, units=inv.units, grid=inv.grid, time=inv.time, read=read_gee)
