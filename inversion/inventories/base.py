"""What every inventory reader returns, and the pieces readers share.

A reader turns one variable of one product file into an :class:`Inventory`:

* ``grid``: cell centres and bounds with latitudes ascending and longitudes increasing over
  any 360° window (0–360° and −180–180° are both fine: the regridder wraps).  Files storing
  latitudes north to south are flipped on reading.
* ``time``: the inventory's steps ``[start, end)`` (:class:`~transport.grid.TimeAxis`), or
  None for a time-invariant field.
* ``read(t, rows, cols)``: values in **mol m⁻² s⁻¹ of the species, positive upward**
  (emissions positive, uptake negative), shape (len(t), rows, cols); ``t`` indexes
  ``time`` (``[0]`` for a time-invariant field), ``rows``/``cols`` are slices of ``grid``.
  Nothing is read before this is called, so a reader is cheap to open and the mapping reads
  only the window of the domain and the steps it needs.

Units come, in this order, from the sector's ``units`` key (a configured override, logged),
the variable's ``units`` attribute, or the product's documented unit (logged); a flux
without any of these is refused.  Conversion goes through
:func:`transport.units.mole_flux_factor`; a per-month unit uses the calendar length of each
step's month.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.units import mole_flux_factor, parse_quantity

from ..progress import log

Read = Callable[[np.ndarray, slice, slice], np.ndarray]


@dataclass(frozen=True, eq=False)
class Inventory:
    """One flux variable (or a sum of variables, or a series of files) ready for mapping."""

    path: Path          # the (first) file, for messages
    variable: str       # variable name(s), for messages
    units: str          # units as found or configured, for logs
    grid: Grid
    time: TimeAxis | None
    read: Read

    @property
    def n_time(self) -> int:
        return 1 if self.time is None else self.time.size


# ---- grids ----------------------------------------------------------------------------------

def grid_from_coordinates(path: Path, lat: np.ndarray, lon: np.ndarray, lat_bounds: np.ndarray | None = None,
                          lon_bounds: np.ndarray | None = None) -> tuple[Grid, bool]:
    """Grid from 1-D centres (and optional (n, 2) bounds); returns (grid, lat_descending).

    Latitudes stored north to south are reversed (the caller flips the data); longitudes
    must increase.  Without bounds, edges lie midway between centres (exact for regular
    grids)."""
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    descending = lat.size > 1 and lat[0] > lat[-1]
    if descending:
        lat = lat[::-1]
        lat_bounds = None if lat_bounds is None else np.asarray(lat_bounds, dtype=np.float64)[::-1, ::-1]
    if lon.size > 1 and np.any(np.diff(lon) <= 0):
        raise InputError(path, "lon", "longitudes are not strictly increasing",
                         "store the grid west to east (0–360° or −180–180° are both accepted)")
    try:
        inferred = Grid.from_centres(lat, lon) if lat_bounds is None or lon_bounds is None else None
        grid = Grid(lat=lat, lon=lon,
                    lat_bounds=inferred.lat_bounds if lat_bounds is None else np.sort(lat_bounds, axis=1),
                    lon_bounds=inferred.lon_bounds if lon_bounds is None else np.sort(lon_bounds, axis=1))
    except ValueError as exc:
        raise InputError(path, "lat/lon", f"not a rectilinear latitude/longitude grid ({exc})",
                         "give 1-D lat/lon cell centres (and bounds); projected grids must be regridded first") from exc
    return grid, descending


# ---- time -----------------------------------------------------------------------------------

def calendar_steps(starts: np.ndarray, unit: str) -> TimeAxis:
    """Calendar months (unit "M") or years ("Y") starting at ``starts``."""
    starts = np.asarray(starts).astype(f"datetime64[{unit}]")
    return TimeAxis(start=starts.astype("datetime64[s]"), end=(starts + 1).astype("datetime64[s]"))


def months_of_year(year: int, months=range(1, 13)) -> TimeAxis:
    return calendar_steps(np.array([f"{year:04d}-{m:02d}" for m in months], dtype="datetime64[M]"), "M")


def month_seconds(time: TimeAxis | None) -> np.ndarray | None:
    """Length (s) of each step when every step is one calendar month, else None."""
    if time is None:
        return None
    month = time.start.astype("datetime64[M]")
    if not (np.array_equal(month.astype("datetime64[s]"), time.start)
            and np.array_equal((month + 1).astype("datetime64[s]"), time.end)):
        return None
    return time.duration_s


def _marks_calendar(stamps: np.ndarray, unit: str, stamp: str) -> bool:
    """Stamps mark consecutive calendar months ("M") or years ("Y"): their starts, or (for
    ``middle`` stamps) times within a day of their midpoints."""
    period = stamps.astype(f"datetime64[{unit}]")
    if np.any(np.diff(period.astype(np.int64)) != 1):
        return False
    start, end = period.astype("datetime64[s]"), (period + 1).astype("datetime64[s]")
    if stamp == "start":
        return np.array_equal(start, stamps)
    return bool(np.all(np.abs(stamps - (start + (end - start) // 2)) <= np.timedelta64(1, "D")))


def steps_from_stamps(stamps: np.ndarray, *, stamp: str, time_step: str, path: Path, variable: str) -> TimeAxis:
    """Inventory steps from time stamps that mark each step's ``start`` or ``middle``.

    ``time_step`` "month"/"year": calendar months/years (the one starting at a ``start``
    stamp, or the one containing a ``middle`` stamp); a duration ("3 h", "1 day"): steps of
    that length; "auto": calendar months or years when the stamps step through consecutive
    ones, otherwise the (single, regular) spacing of the stamps.  A single stamp needs an
    explicit ``time_step``."""
    stamps = np.asarray(stamps).astype("datetime64[s]")
    if np.any(np.diff(stamps) <= np.timedelta64(0, "s")):
        raise InputError(path, "time", "time stamps are not strictly increasing",
                         "sort the file by time and remove duplicate steps")
    if time_step == "auto":
        if stamps.size < 2:
            raise InputError(path, "time", f"{variable} has a single time stamp, so its step length is unknown",
                             'set time_step (e.g. "month", "year", "1 day") for this sector, or time_mapping = '
                             '"constant" to use the field for every flux step')
        if _marks_calendar(stamps, "M", stamp):
            time_step = "month"
        elif _marks_calendar(stamps, "Y", stamp):
            time_step = "year"
        else:
            spacing = np.unique(np.diff(stamps))
            if spacing.size != 1:
                raise InputError(path, "time", f"{variable} has irregular time stamps (spacings "
                                 f"{', '.join(str(s) for s in spacing[:4])}…)",
                                 "add time bounds (a time_bnds variable) or set time_step for this sector")
            return _regular(stamps, spacing[0], stamp)
    if time_step in ("month", "year"):
        unit = "M" if time_step == "month" else "Y"
        period = stamps.astype(f"datetime64[{unit}]")
        if stamp == "start" and not np.array_equal(period.astype("datetime64[s]"), stamps):
            raise InputError(path, "time", f"time_step = {time_step!r} with start stamps, but a stamp of {variable} is "
                             f"not at the start of a calendar {time_step}", 'set time_stamp = "middle" or fix time_step')
        if np.any(np.diff(period.astype(np.int64)) < 1):
            raise InputError(path, "time", f"two stamps of {variable} fall in the same calendar {time_step}",
                             "check time_step and time_stamp of this sector")
        return calendar_steps(period, unit)
    step = np.timedelta64(round(parse_quantity(time_step, "s", path=path, variable="time_step")), "s")
    return _regular(stamps, step, stamp)


def _regular(stamps: np.ndarray, step: np.timedelta64, stamp: str) -> TimeAxis:
    start = stamps if stamp == "start" else stamps - step // 2
    return TimeAxis(start=start, end=start + step)


def year_in_name(path: Path, configured: int | None) -> tuple[int, int | None]:
    """(year, month or None) of a product file: the sector's ``year`` if set, otherwise a
    stand-alone 4-digit year in the file name (``…_2022_…``, ``…_2015_1_ENE…`` for month 1,
    ``odiac2022_1x1d_2020.nc``), refused when absent or ambiguous."""
    if configured is not None:
        return configured, None
    found = {(int(m.group(1)), int(m.group(2)) if m.group(2) else None)
             for m in re.finditer(r"(?<![0-9A-Za-z.])((?:19|20)\d\d)(?:_(1[0-2]|[1-9])(?=_))?(?=[_.])", path.name)}
    if len(found) != 1:
        raise InputError(path, "year", "cannot tell the year of the file from its name"
                         + (f" (candidates {sorted(found)})" if found else ""),
                         "set year = YYYY in this sector's configuration")
    return found.pop()


# ---- NetCDF -----------------------------------------------------------------------------------

def open_dataset(path: Path) -> xr.Dataset:
    """Open NetCDF-4/HDF5 (h5netcdf) or NetCDF-3 classic (scipy) lazily; InputError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "inventory file not found", "check the file (or pattern) of this sector")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    engine = "scipy" if magic[:3] == b"CDF" else "h5netcdf"
    try:
        return xr.open_dataset(path, engine=engine, decode_timedelta=False)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(path, None, f"cannot read the inventory as NetCDF ({exc})",
                         "give a NetCDF-3 or NetCDF-4 file") from exc


LAT_NAMES = ("lat", "latitude")
LON_NAMES = ("lon", "longitude")


def _dim(da: xr.DataArray, names: tuple[str, ...]) -> str | None:
    found = [d for d in da.dims if d in names]
    return found[0] if found else None


def _bounds(ds: xr.Dataset, coord: str) -> np.ndarray | None:
    name = ds[coord].attrs.get("bounds")
    return np.asarray(ds[name].values) if name is not None and name in ds.variables else None


def require_variable(ds: xr.Dataset, path: Path, variable: str, what: str) -> xr.DataArray:
    if variable not in ds.data_vars:
        raise InputError(path, variable, f"{what} variable not found",
                         f"set variable to one of: {', '.join(sorted(map(str, ds.data_vars)))}")
    return ds[variable]


def resolve_units(path: Path, variable: str, attrs: dict, override: str | None, documented: str | None) -> str:
    """The units of a variable: configured override > ``units`` attribute > product documentation."""
    if override is not None:
        log.info("%s: %s: using the configured units %r (file says %r)", path, variable, override, attrs.get("units"))
        return override
    units = attrs.get("units")
    if isinstance(units, bytes):
        units = units.decode()
    if units is not None and str(units).strip():
        return str(units)
    if documented is not None:
        log.info("%s: %s: no units attribute; using the product's documented units %r", path, variable, documented)
        return documented
    raise InputError(path, variable, "no units attribute", 'add one (e.g. "mol m-2 s-1") or set units in this sector')


def flux_factor(path: Path, variable: str, units: str, species: str, time: TimeAxis | None,
                mass_of: str | None) -> np.ndarray:
    """(n_time,) factor to mol m⁻² s⁻¹ of ``species`` (per-month units use each month's length)."""
    factor = mole_flux_factor(units, species, mass_of=mass_of, month_seconds=month_seconds(time), path=path,
                              variable=variable)
    return np.broadcast_to(np.asarray(factor, dtype=np.float64), (1 if time is None else time.size,)).copy()


def netcdf_inventory(path: Path, variable: str, species: str, *, units: str | None, stamp: str, time_step: str,
                     documented_units: str | None = None, mass_of: str | None = None,
                     time: TimeAxis | None = None, time_dims: tuple[str, ...] = ("time",)) -> Inventory:
    """An :class:`Inventory` of a (time?, lat, lon) variable of a CF-like NetCDF file, in any
    dimension order.  ``time`` overrides the file's time axis (e.g. ODIAC's ``month``);
    otherwise CF time bounds are used if present, else the stamps (``stamp`` = "start" or
    "middle", ``time_step`` as in :func:`steps_from_stamps`)."""
    with open_dataset(path) as ds:
        da = require_variable(ds, path, variable, "flux")
        lat_dim, lon_dim = _dim(da, LAT_NAMES), _dim(da, LON_NAMES)
        time_dim = _dim(da, time_dims)
        other = [d for d in da.dims if d not in (lat_dim, lon_dim, time_dim)]
        if lat_dim is None or lon_dim is None or other:
            raise InputError(path, variable, f"dimensions are {da.dims}",
                             "expected (time, lat, lon) in any order, with lat|latitude and lon|longitude")
        grid, descending = grid_from_coordinates(path, ds[lat_dim].values, ds[lon_dim].values,
                                                 _bounds(ds, lat_dim), _bounds(ds, lon_dim))
        if time is None and time_dim is not None:
            if time_dim not in ds.coords:
                raise InputError(path, time_dim, "time dimension without a time coordinate",
                                 "add a CF time coordinate (or set the product that defines it)")
            stamps = ds[time_dim].values
            if stamps.dtype.kind != "M":
                raise InputError(path, time_dim, f"time is not a CF date-time (dtype {stamps.dtype}, calendar "
                                 f"{ds[time_dim].encoding.get('calendar', '?')})",
                                 'use units "seconds since …" and a standard/gregorian calendar')
            bounds = _bounds(ds, time_dim)
            if bounds is not None and bounds.dtype.kind == "M":
                try:
                    time = TimeAxis(start=bounds[:, 0], end=bounds[:, 1])
                except ValueError as exc:
                    raise InputError(path, ds[time_dim].attrs["bounds"], f"invalid time bounds ({exc})",
                                     "fix the bounds or remove them") from exc
            elif stamps.size == 1 and time_step == "auto":
                time = None  # one field of unknown period: usable with time_mapping = "constant" only
            else:
                time = steps_from_stamps(stamps, stamp=stamp, time_step=time_step, path=path, variable=variable)
        elif time is not None and time.size != (1 if time_dim is None else da.sizes[time_dim]):
            raise InputError(path, variable, f"expected {time.size} time steps, found dims {dict(da.sizes)}",
                             "check the file against the product's format")
        if "downward" in str(da.attrs.get("standard_name", "")):
            raise InputError(path, variable, f"standard_name {da.attrs['standard_name']!r} is positive downward",
                             "tanhui fluxes are positive upward (emissions positive): store the flux with the upward "
                             "sign convention")
        units_text = resolve_units(path, variable, da.attrs, units, documented_units)
    factor = flux_factor(path, variable, units_text, species, time, mass_of)
    order = tuple(d for d in (time_dim, lat_dim, lon_dim) if d is not None)

    def stored(t: np.ndarray, file_rows: slice, cols: slice) -> np.ndarray:
        with open_dataset(path) as ds:
            index = {lat_dim: file_rows, lon_dim: cols}
            if time_dim is not None:
                index[time_dim] = t
            values = np.asarray(ds[variable].transpose(*order).isel(index).values)
        return values if time_dim is not None else values[None]

    return Inventory(path=path, variable=variable, units=units_text, grid=grid, time=time,
                     read=oriented(stored, grid.lat.size, descending, factor))


def oriented(stored: Read, nlat: int, descending: bool, factor: np.ndarray) -> Read:
    """``Inventory.read`` from a reader of stored values (rows in the file's latitude order):
    translates and flips the rows of north-to-south files and applies the unit factor."""

    def read(t: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        t = np.asarray(t)
        file_rows = slice(nlat - rows.stop, nlat - rows.start) if descending else rows
        values = np.asarray(stored(t, file_rows, cols), dtype=np.float64)
        if descending:
            values = values[:, ::-1, :]
        return values * factor[t][:, None, None]

    return read


# ---- combining ----------------------------------------------------------------------------------

def summed(parts: list[Inventory]) -> Inventory:
    """The sum of variables on one grid and time axis (e.g. ODIAC land + intl_bunker)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    for p in parts[1:]:
        same_time = (p.time is None and first.time is None) or (
            p.time is not None and first.time is not None and p.time.same_as(first.time))
        if not p.grid.same_as(first.grid) or not same_time:
            raise InputError(p.path, p.variable, f"grid or time steps differ from those of {first.variable}",
                             "sum only variables on the same grid and time steps (or use separate sectors)")

    def read(t: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        return sum(p.read(t, rows, cols) for p in parts)

    return Inventory(path=first.path, variable=" + ".join(p.variable for p in parts),
                     units=", ".join(sorted({p.units for p in parts})), grid=first.grid, time=first.time, read=read)


def series(parts: list[Inventory]) -> Inventory:
    """Files holding consecutive time steps of one variable (e.g. one CarbonTracker file a day)."""
    if len(parts) == 1:
        return parts[0]
    for p in parts:
        if p.time is None:
            raise InputError(p.path, p.variable, "a file without time steps among several files",
                             "several files of a sector must each have time steps")
    parts = sorted(parts, key=lambda p: p.time.start[0])
    first = parts[0]
    for p in parts:
        if not p.grid.same_as(first.grid):
            raise InputError(p.path, p.variable, f"grid differs from that of {first.path}",
                             "all files of a sector must share one grid")
    try:
        time = TimeAxis(start=np.concatenate([p.time.start for p in parts]),
                        end=np.concatenate([p.time.end for p in parts]))
    except ValueError as exc:
        raise InputError(first.path, first.variable, f"the files' time steps overlap ({exc})",
                         "give each time step in one file only") from exc
    offsets = np.cumsum([0] + [p.n_time for p in parts])

    def read(t: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
        t = np.asarray(t)
        out = []
        for k, p in enumerate(parts):
            local = t[(t >= offsets[k]) & (t < offsets[k + 1])] - offsets[k]
            if local.size:
                out.append(p.read(local, rows, cols))
        return np.concatenate(out, axis=0)

    return Inventory(path=first.path, variable=first.variable, units=first.units, grid=first.grid, time=time,
                     read=read)
