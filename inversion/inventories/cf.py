"""Any CF-conformant NetCDF flux with a units attribute.

Covers tanhui's own prior files (one ``(time, lat, lon)`` variable per sector), openghg flux
files (``flux(lat, lon, time)``, ``mol/m2/s``, time = "Start of time period") and any other
CF file: dimensions (time?, lat|latitude, lon|longitude) in any order, 1-D coordinates (CF
``bounds`` used when present), ``units`` convertible to a flux of the species
(:func:`transport.units.mole_flux_factor`; a plain mass flux such as "kg m-2 s-1" does not say
a mass of what and is refused — set ``units = "kg CH4 m-2 s-1"`` for the sector).

Time: CF time bounds when present, otherwise the stamps mark the **start** of each step
(``time_stamp = "middle"`` for files stamped at midpoints); a file without a time dimension
is a time-invariant field (``time_mapping = "constant"``).

Sign convention: positive upward (emissions positive, uptake negative), as CF's
``surface_upward_mole_flux_of_…``; a ``standard_name`` saying "downward" is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .base import Inventory, netcdf_inventory

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES: tuple[str, ...] = ()  # any variable; the default is the sector's name
DEFAULT_VARIABLE = None
TIME_STAMP = "start"


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    return netcdf_inventory(path, variable, species, units=sector.units, stamp=sector.time_stamp or TIME_STAMP,
                            time_step=sector.time_step)
