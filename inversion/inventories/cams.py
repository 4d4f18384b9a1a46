"""CAMS global CO₂ inversion surface fluxes (``cams73_…_sfc_…nc``).

Variables ``flux_foss`` (fossil, prescribed), ``flux_apos_bio`` / ``flux_apri_bio`` (posterior /
prior land biosphere), ``flux_apos_ocean`` / ``flux_apri_ocean`` (ocean), on a regular
latitude/longitude grid.  Units differ between versions ("kgC m-2 month-1" or per second):
they are read from each variable's ``units`` attribute; a per-month unit is converted with
the calendar length of each month.  The grid-cell ``area`` variable is not needed (fluxes are
per m²; areas come from the sphere).

Sign convention: positive upward (to the atmosphere); ocean and land uptake negative.
Read as a CF file (:mod:`inversion.inventories.cf`), time stamps at step starts unless
time bounds say otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Inventory, netcdf_inventory

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES = ("flux_foss", "flux_apos_bio", "flux_apri_bio", "flux_apos_ocean", "flux_apri_ocean")
DEFAULT_VARIABLE = None
TIME_STAMP = "start"


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    return netcdf_inventory(path, variable, species, units=sector.units, stamp=sector.time_stamp or TIME_STAMP,
                            time_step=sector.time_step)
