"""GFED4.1s fire emissions, HDF5 (``GFED4.1s_2020.hdf5``, ``GFED4.1s_2020_beta.hdf5``).

Layout: 2-D ``lat`` and ``lon`` (720 × 1440 cell centres, 0.25°, latitudes north to south),
``ancill/grid_cell_area`` (m²) and one group per month ``emissions/MM`` holding ``C``
(carbon emitted, **g C m⁻² month⁻¹**; the dataset's ``units`` attribute when present, else
this documented unit, logged).  The year comes from the file name or the sector's ``year``.

Conversion, for the calendar month m of n_m days:
mol CO₂ m⁻² s⁻¹ = C / (12.011 g mol⁻¹ · 86 400 · n_m s) — all emitted carbon is counted as
CO₂ (one mole of CO₂ per mole of carbon; GFED's CO₂ emission factor puts ~90 % of the
carbon in CO₂, the rest mostly in CO and CH₄, so this is the total-carbon upper bound).
CH₄ needs dry matter × emission factors and is not derived here.  ``grid_cell_area`` is not
needed: fluxes are per m² and areas come from the sphere (:mod:`transport.grid`).

Sign convention: emissions, positive upward.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from transport.errors import InputError

from .base import (
    Inventory,
    flux_factor,
    grid_from_coordinates,
    months_of_year,
    oriented,
    resolve_units,
    year_in_name,
)

if TYPE_CHECKING:
    from ..config import SectorConfig

VARIABLES = ("C",)
DEFAULT_VARIABLE = "C"
DOCUMENTED_UNITS = "gC m-2 month-1"


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise InputError(path, None, f"cannot read the GFED file as HDF5 ({exc})", "give a GFED4.1s .hdf5 file") from exc


def read(path: Path, variable: str, sector: SectorConfig, species: str) -> Inventory:
    if species != "co2":
        raise InputError(path, variable, "GFED carbon emissions give a CO2 prior only",
                         "for CH4 derive the flux from dry matter and emission factors and give it as a CF file")
    if variable not in VARIABLES:
        raise InputError(path, variable, "not a GFED carbon-flux variable", "use variable = \"C\"")
    year = year_in_name(path, sector.year)[0]
    with _open(path) as f:
        for name in ("lat", "lon", "emissions"):
            if name not in f:
                raise InputError(path, name, "missing from the GFED file", "give a GFED4.1s .hdf5 file")
        lat2d, lon2d = f["lat"][()], f["lon"][()]
        months = sorted(int(m) for m in f["emissions"] if m.isdigit() and variable in f["emissions"][m])
        if not months:
            raise InputError(path, f"emissions/MM/{variable}", "no month holds this variable", "check the file")
        units = resolve_units(path, f"emissions/{months[0]:02d}/{variable}",
                              dict(f[f"emissions/{months[0]:02d}/{variable}"].attrs), sector.units, DOCUMENTED_UNITS)
    if lat2d.ndim != 2 or not (np.all(lat2d == lat2d[:, :1]) and np.all(lon2d == lon2d[:1, :])):
        raise InputError(path, "lat/lon", "2-D lat/lon do not describe a rectilinear grid", "give a GFED4.1s file")
    grid, descending = grid_from_coordinates(path, lat2d[:, 0], lon2d[0, :])
    time = months_of_year(year, months)
    factor = flux_factor(path, variable, units, species, time, mass_of="c")

    def stored(t: np.ndarray, file_rows: slice, cols: slice) -> np.ndarray:
        with _open(path) as f:
            return np.stack([f[f"emissions/{months[k]:02d}/{variable}"][file_rows, cols] for k in t])

    return Inventory(path=path, variable=f"emissions/MM/{variable}", units=units, grid=grid, time=time,
                     read=oriented(stored, grid.lat.size, descending, factor))
