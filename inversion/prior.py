"""Prior fluxes on the inversion grid and flux time axis.

Each sector of ``[prior]`` (:class:`~inversion.config.PriorConfig`) is read from its
inventory, checked, regridded conservatively and mapped onto the flux time axis by
:func:`inversion.inventories.map_sector`; the result is mol m⁻² s⁻¹ of the run's species,
positive upward (emissions positive, sinks negative), on (flux step, lat, lon).

The shorthand ``prior.file`` is a tanhui/CF NetCDF already on the footprint grid: one
``(time, lat, lon)`` variable per sector with a ``units`` attribute, ``time`` holding the
start of each step, every flux step present (extra steps are ignored); NaN is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transport.grid import Grid, TimeAxis

from .config import PriorConfig
from .inventories import map_sector


@dataclass(frozen=True, eq=False)
class PriorFlux:
    """Sector fluxes (mol m-2 s-1), each (n_time, nlat, nlon) on the footprint time axis."""

    sectors: dict[str, np.ndarray]
    grid: Grid
    time: TimeAxis


def read_prior(prior: PriorConfig, species: str, grid: Grid, time: TimeAxis, grid_source: str) -> PriorFlux:
    """Every sector of ``prior`` on ``grid`` × ``time`` (``grid_source`` names the file the
    grid comes from, for messages)."""
    sectors = {name: map_sector(name, sector, species, grid, time, grid_source)
               for name, sector in prior.sector_configs.items()}
    return PriorFlux(sectors=sectors, grid=grid, time=time)
