"""An inventory onto the inversion grid and flux time axis: window, checks, regridding, time.

For one :class:`~inversion.inventories.base.Inventory` and the footprint grid / flux time
axis, :func:`map_inventory`

1. finds the window of inventory cells that overlap the domain (with longitude wrapping:
   a 0–360° inventory and a domain across 0° give one contiguous window) and checks, before
   reading any value, that the inventory covers every inversion cell
   (:meth:`ConservativeRegridder.coverage` ≥ 1 − ``COVERAGE_TOLERANCE``) and every flux step;
2. reads only that window and the inventory steps the time mapping needs, in blocks of flux
   steps holding at most ``MAX_BLOCK_VALUES`` inventory values (a year of hourly fluxes on a
   fine grid does not have to fit in memory at once);
3. applies the sector's NaN policy to the cells in the window (``error``: refuse, naming the
   count and the first place; ``zero``: set them to 0, counted and logged) — infinities are
   always refused;
4. regrids conservatively (``ConservativeRegridder.intensive``: the area-weighted mean, so
   the area integral of the flux over the domain and over any union of inversion cells is
   that of the inventory, to rounding); an inventory already on the inversion grid is used
   as is;
5. maps time with the weights of :mod:`inversion.inventories.timemap`.

The result is (n_flux_steps, nlat, nlon) in mol m⁻² s⁻¹, positive upward.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.regrid import ConservativeRegridder

from ..io import check_same_grid
from .base import Inventory
from .timemap import time_weights

# A cell counts as covered when at most this fraction of its area lies outside the inventory
# (float32 coordinates in files are good to ~2e-5°, i.e. 4e-5 of a 0.5° cell).
COVERAGE_TOLERANCE = 1e-3
# Inventory cells overlapping the domain by less than this fraction of their area are left out.
SLIVER = 1e-6
# Inventory values read at once (float64: 128 MiB); longer periods are mapped in blocks of flux steps.
MAX_BLOCK_VALUES = 2**24


@dataclass(frozen=True)
class Window:
    """Inventory cells overlapping the domain: rows and columns to read (slices of the
    inventory grid), the column order that makes longitudes increase, and their grid."""

    rows: slice
    cols: slice
    order: np.ndarray | None  # column indices (into the inventory grid) after reading ``cols``
    grid: Grid


def window(source: Grid, target: Grid, *, path: Path, variable: str) -> Window:
    """The smallest block of ``source`` cells overlapping ``target`` (a wrapped block of a
    global grid, e.g. 350°…370° for a domain over −10°…10°, is rotated to be contiguous)."""
    # Source cells overlapping the domain by more than a rounding sliver of their area.
    overlaps = ConservativeRegridder(target, source).coverage() > SLIVER
    rows, cols = np.flatnonzero(overlaps.any(axis=1)), np.flatnonzero(overlaps.any(axis=0))
    if rows.size == 0 or cols.size == 0:
        raise InputError(path, variable, f"the inventory ({source.describe()}) does not overlap the inversion domain "
                         f"({target.describe()})", "use an inventory that covers the domain")
    row_slice = slice(int(rows[0]), int(rows[-1]) + 1)
    nlon = source.lon.size
    gaps = np.flatnonzero(np.diff(cols) > 1)
    global_lon = abs(source.lon_bounds[-1, 1] - source.lon_bounds[0, 0] - 360.0) < 1e-6
    lat, lat_b = source.lat[row_slice], source.lat_bounds[row_slice]
    if gaps.size == 1 and global_lon and cols[0] == 0 and cols[-1] == nlon - 1:
        split = gaps[0] + 1
        order = np.concatenate([cols[split:], cols[:split]])
        shift = np.concatenate([np.zeros(cols.size - split), np.full(split, 360.0)])
        grid = Grid(lat=lat, lon=source.lon[order] + shift, lat_bounds=lat_b,
                    lon_bounds=source.lon_bounds[order] + shift[:, None])
        return Window(rows=row_slice, cols=slice(0, nlon), order=order, grid=grid)
    col_slice = slice(int(cols[0]), int(cols[-1]) + 1)
    grid = Grid(lat=lat, lon=source.lon[col_slice], lat_bounds=lat_b, lon_bounds=source.lon_bounds[col_slice])
    return Window(rows=row_slice, cols=col_slice, order=None, grid=grid)


def _range(values: np.ndarray) -> str:
    return f"{values.min():g}…{values.max():g}"


def check_coverage(regridder: ConservativeRegridder, *, path: Path, variable: str) -> None:
    """Refuse an inventory that leaves inversion cells uncovered."""
    coverage = regridder.coverage()
    bad = coverage < 1.0 - COVERAGE_TOLERANCE
    if bad.any():
        i, j = np.nonzero(bad)
        target = regridder.target
        raise InputError(path, variable, f"the inventory does not cover the inversion domain: {int(bad.sum())} of "
                         f"{bad.size} cells are not (fully) covered, within lat {_range(target.lat_bounds[i].ravel())}, "
                         f"lon {_range(target.lon_bounds[j].ravel())} (inventory lat "
                         f"{_range(regridder.source.lat_bounds)}, lon {_range(regridder.source.lon_bounds)})",
                         "use an inventory that covers the whole domain, or a smaller domain")


@dataclass(frozen=True)
class Mapped:
    """A sector on the inversion grid and flux time axis, and what was done to get there."""

    flux: np.ndarray    # (n_flux_steps, nlat, nlon), mol m⁻² s⁻¹, positive upward
    nan_zeroed: int     # NaN values set to 0 (nan = "zero")
    regridded: bool     # False when the inventory was already on the inversion grid
    n_steps_read: int   # inventory steps read


def map_inventory(inv: Inventory, grid: Grid, time: TimeAxis, *, time_mapping: str, nan: str, regrid: bool,
                  grid_source: str, sector: str) -> Mapped:
    """Map ``inv`` onto ``grid`` × ``time`` (see the module docstring)."""
    if not regrid:  # the file must be on the inversion grid (cell centres as inversion.io checks them)
        check_same_grid(xr.Dataset(coords={"lat": inv.grid.lat, "lon": inv.grid.lon}), inv.path, grid, "prior",
                        grid_source)
        win = Window(rows=slice(0, grid.lat.size), cols=slice(0, grid.lon.size), order=None, grid=grid)
    else:
        win = window(inv.grid, grid, path=inv.path, variable=inv.variable)
    same = win.grid.same_as(grid)
    regridder = None if same else ConservativeRegridder(win.grid, grid)
    if regridder is not None:
        check_coverage(regridder, path=inv.path, variable=inv.variable)
    W = time_weights(inv.time, time, time_mapping, path=inv.path, variable=inv.variable).tocsr()
    flux = np.empty((time.size,) + grid.shape)
    counted = np.zeros(W.shape[1], dtype=bool)  # inventory steps whose NaN are already counted
    nan_zeroed = 0
    for block in _blocks(W, win.grid.size):
        Wb = W[block]
        used = np.flatnonzero(Wb.getnnz(axis=0))
        values = inv.read(used, win.rows, win.cols)
        if win.order is not None:
            values = values[:, :, win.order]
        nan_zeroed += _apply_nan_policy(values, inv, win.grid, used, nan, sector, counted[used])
        counted[used] = True
        mapped = values if regridder is None else regridder.intensive(values)
        flux[block] = (Wb[:, used] @ mapped.reshape(used.size, -1)).reshape((-1,) + grid.shape)
    return Mapped(flux=flux, nan_zeroed=nan_zeroed, regridded=regridder is not None,
                  n_steps_read=int(counted.sum()))


def _blocks(W, cells: int) -> list[slice]:
    """Consecutive flux steps whose inventory steps (a contiguous range, as both axes increase)
    hold at most ``MAX_BLOCK_VALUES`` values of the window (at least one flux step each)."""
    blocks, start, lo, hi = [], 0, None, None
    for k in range(W.shape[0]):
        cols = W.indices[W.indptr[k]:W.indptr[k + 1]]
        new_lo, new_hi = (cols.min(), cols.max()) if lo is None else (min(lo, cols.min()), max(hi, cols.max()))
        if k > start and (new_hi - new_lo + 1) * cells > MAX_BLOCK_VALUES:
            blocks.append(slice(start, k))
            start, new_lo, new_hi = k, cols.min(), cols.max()
        lo, hi = new_lo, new_hi
    blocks.append(slice(start, W.shape[0]))
    return blocks


def _apply_nan_policy(values: np.ndarray, inv: Inventory, grid: Grid, used: np.ndarray, nan: str, sector: str,
                      counted: np.ndarray) -> int:
    """Refuse or zero the NaN values in place; infinities are always refused.  Returns the
    number of NaN set to 0 in inventory steps not ``counted`` before (blocks may share steps)."""
    infinite = np.isinf(values)
    if infinite.any():
        t, i, j = (int(a[0]) for a in np.nonzero(infinite))
        raise InputError(inv.path, inv.variable, f"{int(infinite.sum())} of the {values.size} inventory values over the "
                         f"domain are infinite (first at lat {grid.lat[i]:g}, lon {grid.lon[j]:g}, "
                         f"{_when(inv, used[t])})", "fix the file")
    missing = np.isnan(values)
    count = int(missing.sum())
    if not count:
        return 0
    if nan == "error":
        t, i, j = (int(a[0]) for a in np.nonzero(missing))
        raise InputError(inv.path, inv.variable, f"{count} of the {values.size} inventory values over the domain are "
                         f"NaN (first at lat {grid.lat[i]:g}, lon {grid.lon[j]:g}, {_when(inv, used[t])})",
                         f'if NaN means "no flux here" (e.g. an ocean flux over land), set nan = "zero" in '
                         f"[prior.sectors.{sector}]; otherwise fix the file")
    values[missing] = 0.0
    return int(missing[~counted].sum())


def _when(inv: Inventory, t: int) -> str:
    return "time-invariant field" if inv.time is None else f"step {inv.time.start[t]}"
