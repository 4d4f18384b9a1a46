"""Prior flux inventories: one reader per product, and the mapping of a configured sector
onto the inversion grid and flux time axis.

``PRODUCTS`` names the reader module of each ``product`` of ``[prior.sectors.NAME]``; each
module documents its file layout, units, sign convention and time stamps and provides
``read(path, variable, sector, species) -> Inventory`` plus ``DEFAULT_VARIABLE``.
:func:`map_sector` reads a sector (all its files and variables), checks and maps it, and
returns its flux in mol m⁻² s⁻¹ on (flux step, lat, lon).
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from transport.errors import InputError
from transport.grid import Grid, TimeAxis

from ..progress import log
from . import cams, carbontracker, cf, edgar, gfed, odiac, vprm
from .base import Inventory, series, summed
from .remap import map_inventory

if TYPE_CHECKING:
    from ..config import SectorConfig

PRODUCTS: dict[str, ModuleType] = {
    "cf": cf,
    "odiac": odiac,
    "edgar": edgar,
    "carbontracker": carbontracker,
    "vprm": vprm,
    "gfed": gfed,
    "cams": cams,
}


def sector_variables(name: str, sector: SectorConfig) -> list[str]:
    """The variables summed into the sector: ``variable`` (a name or a list), else the
    product's default (for ``cf``: the sector's name)."""
    if sector.variable is not None:
        return [sector.variable] if isinstance(sector.variable, str) else list(sector.variable)
    module = PRODUCTS[sector.product]
    if sector.product == "cf":
        return [name]
    if module.DEFAULT_VARIABLE is None:
        raise InputError(sector.file, f"prior.sectors.{name}.variable", f"product {sector.product!r} has several flux "
                         "variables", f"set variable to one of: {', '.join(module.VARIABLES)}")
    return [module.DEFAULT_VARIABLE]


def open_sector(name: str, sector: SectorConfig, species: str) -> Inventory:
    """The sector's inventory: each variable read from every file (a series in time), summed."""
    files = sector.files()
    if not files:
        raise InputError(sector.file, f"prior.sectors.{name}.file", "no file matches the pattern",
                         "check the path (relative to the configuration file) and the pattern")
    module = PRODUCTS[sector.product]
    return summed([series([module.read(f, v, sector, species) for f in files]) for v in sector_variables(name, sector)])


def map_sector(name: str, sector: SectorConfig, species: str, grid: Grid, time: TimeAxis,
               grid_source: str) -> np.ndarray:
    """Sector ``name`` on ``grid`` × ``time``: (time.size, nlat, nlon) mol m⁻² s⁻¹, positive upward."""
    inv = open_sector(name, sector, species)
    mapped = map_inventory(inv, grid, time, time_mapping=sector.time_mapping, nan=sector.nan, regrid=sector.regrid,
                           grid_source=grid_source, sector=name)
    steps = "time-invariant" if inv.time is None else f"{inv.time.size} steps {inv.time.start[0]}…{inv.time.end[-1]}"
    log.info("prior sector %s: %s %s [%s] from %s (%s, %s), %s; %s → %d flux steps (%s)%s", name, sector.product,
             inv.variable, inv.units, inv.path, inv.grid.describe(), "regridded" if mapped.regridded else
             "on the inversion grid", steps, f"{mapped.n_steps_read} read", time.size, sector.time_mapping,
             f"; {mapped.nan_zeroed} NaN set to 0" if mapped.nan_zeroed else "")
    return mapped.flux


__all__ = ["PRODUCTS", "Inventory", "map_sector", "open_sector", "sector_variables"]
