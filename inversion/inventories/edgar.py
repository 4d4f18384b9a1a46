"""EDGAR gridded emissions, 0.1°×0.1° NetCDF.

* v8 and later: ``fluxes`` in the ``…_flx.nc`` files (e.g.
  ``v8.0_FT2022_GHG_CO2_2022_TOTALS_flx.nc``);
* v7 and earlier: ``emi_co2`` / ``emi_ch4`` (e.g. ``v6.0_CH4_2015_TOTALS.0.1x0.1.nc``,
  monthly ``v6.0_CH4_2015_1_ENE.0.1x0.1.nc``).

Units **kg m⁻² s⁻¹ of the substance** (kg CO₂ or kg CH₄, as the EDGAR readme defines): a
plain "kg m-2 s-1" attribute is read as a mass of the run's species, and
mol m⁻² s⁻¹ = v · 1000 / M (M = 44.0095 g mol⁻¹ for CO₂, 16.0425 for CH₄).  A file whose name
names the other gas is refused.  Longitudes may be 0–360° (handled by the regridder's
wrapping) or −180–180°.

Time: a CF time coordinate when the variable has one; otherwise the grid map covers the
year (or, with ``_YYYY_M_`` in the name, the month) given by the file name or the sector's
``year`` key.  The variable defaults to ``fluxes``, or ``emi_<species>`` in files without it.

Sign convention: emissions, positive upward.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from transport.errors import InputError

from ..progress import log
from .base import (
    Inventory,
    calendar_steps,
    netcdf_inventory,
    open_dataset,
    year_in_name,
)

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES = ("fluxes", "emi_co2", "emi_ch4")
DEFAULT_VARIABLE = "fluxes"
DOCUMENTED_UNITS = "kg m-2 s-1"
_GAS = re.compile(r"(?<![A-Za-z])(CO2|CH4)(?![A-Za-z0-9])", re.IGNORECASE)


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    gases = {g.lower() for g in _GAS.findall(path.name)}
    if gases and gases != {species}:
        raise InputError(path, variable, f"the file name names {', '.join(sorted(gases)).upper()}, the run's species "
                         f"is {species.upper()}", "use the EDGAR file of the run's species (run.species)")
    with open_dataset(path) as ds:
        if variable == DEFAULT_VARIABLE and variable not in ds.data_vars and f"emi_{species}" in ds.data_vars:
            log.info("%s: no %r variable; reading the EDGAR ≤ v7 variable emi_%s", path, variable, species)
            variable = f"emi_{species}"
        has_time = variable in ds.data_vars and "time" in ds[variable].dims
    time = None
    if not has_time:
        year, month = year_in_name(path, sector.year)
        if month is None:
            time = calendar_steps([f"{year:04d}"], "Y")
        else:
            time = calendar_steps([f"{year:04d}-{month:02d}"], "M")
    return netcdf_inventory(path, variable, species, units=sector.units, stamp=sector.time_stamp or "start",
                            time_step=sector.time_step, documented_units=DOCUMENTED_UNITS, mass_of=species, time=time)
