"""ODIAC fossil-fuel CO₂ emissions, 1°×1° NetCDF (``odiac2022_1x1d_2020.nc``).

Variables ``land`` (land emissions) and ``intl_bunker`` (international aviation and
shipping), dims (month, lat, lon) for the 12 months of one year, units **gC m-2 d-1**
(grams of carbon per m² per day; the ``units`` attribute when present, else this documented
unit, logged).  Conversion: mol CO₂ m⁻² s⁻¹ = v / (12.011 g mol⁻¹ · 86 400 s d⁻¹) — each mole
of carbon is emitted as one mole of CO₂.

The year comes from the file name (``…_2020.nc``) or the sector's ``year`` key; the month
index (or a ``month`` coordinate holding 1…12) gives calendar-month steps.  Files with a CF
``time`` coordinate are read through it instead.  Ocean cells of ``land`` may be missing
(NaN): ``nan = "zero"`` for this sector if the domain includes sea.

Sign convention: emissions, positive upward.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from transport.errors import InputError

from .base import (
    Inventory,
    months_of_year,
    netcdf_inventory,
    open_dataset,
    require_variable,
    year_in_name,
)

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES = ("land", "intl_bunker")
DEFAULT_VARIABLE = "land"
DOCUMENTED_UNITS = "gC m-2 d-1"


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    if species != "co2":
        raise InputError(path, variable, f"ODIAC fossil CO2 cannot be a {species.upper()} prior",
                         "use an inventory of the run's species (run.species)")
    with open_dataset(path) as ds:
        da = require_variable(ds, path, variable, "ODIAC")
        if "month" in da.dims:
            months = (np.asarray(ds["month"].values, dtype=np.int64) if "month" in ds.coords
                      else np.arange(1, da.sizes["month"] + 1))
            if np.any(np.diff(months) != 1) or months.min() < 1 or months.max() > 12:
                raise InputError(path, "month", f"months {months.tolist()} are not consecutive months 1…12",
                                 "check the file")
            time = months_of_year(year_in_name(path, sector.year)[0], months.tolist())
            time_dims: tuple[str, ...] = ("month",)
        else:
            time, time_dims = None, ("time",)
    return netcdf_inventory(path, variable, species, units=sector.units, stamp=sector.time_stamp or "start",
                            time_step=sector.time_step, documented_units=DOCUMENTED_UNITS, mass_of="c", time=time,
                            time_dims=time_dims)
