"""NOAA CarbonTracker CT2022 (and earlier) 1°×1° fluxes (``CT2022.flux1x1.YYYYMM.nc`` monthly,
``CT2022.flux1x1.YYYYMMDD.nc`` 3-hourly).

Variables ``bio_flux_opt`` / ``bio_flux_prior`` (land biosphere, optimised / prior),
``ocn_flux_opt`` (ocean), ``fossil_flux_imp`` (fossil, imposed), ``fire_flux_imp`` (fires,
imposed); dims (time, latitude, longitude), older releases ``date`` for ``time``; units
mol m⁻² s⁻¹ (from the ``units`` attribute when present).

Sign convention: positive upward (into the atmosphere): land and ocean uptake are negative,
fossil and fire emissions positive — tanhui's convention, so values are used as they are.
Over land the ocean flux is missing (NaN) in some releases: set ``nan = "zero"`` for that
sector (counted and logged) rather than letting it fail.

Time: CT stamps are the **middle** of each averaging interval (e.g. 01:30 for 00–03 h, mid-
month for monthly files) unless the file has time bounds; a file holding a single month
needs ``time_step = "month"``.  Several files (a glob pattern) form one series.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from transport.errors import InputError

from .base import Inventory, netcdf_inventory

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES = ("bio_flux_opt", "bio_flux_prior", "ocn_flux_opt", "fossil_flux_imp", "fire_flux_imp")
DEFAULT_VARIABLE = None
TIME_STAMP = "middle"
DOCUMENTED_UNITS = "mol m-2 s-1"


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    if species != "co2":
        raise InputError(path, variable, f"CarbonTracker CO2 fluxes cannot be a {species.upper()} prior",
                         "use an inventory of the run's species (run.species)")
    return netcdf_inventory(path, variable, species, units=sector.units, stamp=sector.time_stamp or TIME_STAMP,
                            time_step=sector.time_step, documented_units=DOCUMENTED_UNITS, time_dims=("time", "date"))
