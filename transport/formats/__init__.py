"""Footprint readers (STILT, FLEXPART, NAME) and the record they all produce.

Every reader turns a source file into :class:`FootprintRecord` objects, one per receptor, in
the common physical unit m² s mol⁻¹ (units are converted through :mod:`transport.units`).
Ingestion then maps each record onto the store's grid and flux time axis:

* space: if the record's grid differs from the store grid, the footprint is remapped as an
  **extensive** field (``ConservativeRegridder.extensive``: a footprint is a sensitivity
  density in s mol⁻¹ times the cell area, so each source cell is split by overlapping area);
* time: a record's slot s covers [start_s, end_s) and its values are the sensitivity to a
  flux held constant over the slot, so on flux step k

      K_k = Σ_s K_s · |slot_s ∩ step_k| / |slot_s|

  which is exact both for slots finer than the flux steps (hourly STILT/NAME back-time on
  3-hourly steps: slots are summed) and for coarser ones (a time-integrated footprint is
  spread over the steps it covers in proportion to their overlap).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from transport.grid import Grid, TimeAxis


@dataclass(frozen=True, eq=False)
class Receptor:
    """Where and when the air was sampled (from the file contents, not its name)."""

    obs_id: str
    time: np.datetime64  # datetime64[s], UTC
    site: str
    latitude: float  # degrees_north
    longitude: float  # degrees_east
    height: float  # inlet height, m above ground


@dataclass(frozen=True, eq=False)
class FootprintRecord:
    """One receptor's footprint on its source grid and back-time slots.

    ``values``: (n_slot, nlat, nlon) in m² s mol⁻¹, finite and ≥ 0 (readers handle fill
    values and NaN slots explicitly, counting what they did).  ``boundary``: optional
    fraction of particles leaving through each edge, ``{"n"|"s": (height, lon),
    "e"|"w": (height, lat)}`` with ``boundary_height`` (m) — used for the background.
    """

    receptor: Receptor
    grid: Grid
    slots: TimeAxis
    values: np.ndarray
    source: str
    boundary: dict[str, np.ndarray] | None = None
    boundary_height: np.ndarray | None = None
    notes: tuple[str, ...] = field(default=())  # what the reader did (e.g. "3 NaN slots set to 0")
