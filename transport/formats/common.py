"""What the footprint readers share: reader options, opening files with clear errors, units,
CF times, lat/lon grids, fill values and NaN slots, back-time, receptor ids and metadata.

Values policy (the same for every format, each case counted and noted on the record):

* a cell equal to the variable's ``_FillValue`` is set to 0 only when that fill value is the
  one the format documents (STILT: −1, and −1e30/−1e34 written by the STILT R code); any
  other fill value present in the data is an error;
* a back-time slot that is NaN everywhere carries no particles and is set to 0; a record
  whose every slot is NaN, a NaN inside an otherwise valid slot, ±inf or a negative value
  is an error (nothing is guessed).
"""

from __future__ import annotations

import functools
import math
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.formats.netcdf import NcDataset, NcVariable, open_netcdf
from transport.grid import Grid, TimeAxis
from transport.units import FOOTPRINT_UNITS, conversion_factor, parse_quantity

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_NETCDF3_SIGNATURES = (b"CDF\x01", b"CDF\x02", b"CDF\x05")
_DEGREE_UNITS = {"lat": {"degrees_north", "degree_north", "degrees_n", "degree_n", "degreesn", "degrees", "degree"},
                 "lon": {"degrees_east", "degree_east", "degrees_e", "degree_e", "degreese", "degrees", "degree"}}
_CF_CALENDARS = {None, "standard", "gregorian", "proleptic_gregorian"}

FORMATS = ("stilt", "flexpart", "name")
_TIME_CODER = xr.coders.CFDatetimeCoder(use_cftime=False)


@dataclass(frozen=True)
class ReaderOptions:
    """Options of :func:`transport.formats.detect.read_footprints` (all explicit choices).

    ``format``: ``auto`` (detected from the variables) or one of ``FORMATS``.
    ``back_hours``: back-time of a time-integrated footprint when the file does not state
    it (STILT ``backtime`` attribute); NAME and openghg/PARIS files never state it.
    ``site``: site code when the file does not carry one (STILT), or to override it.
    ``sort``: sort NAME/PARIS receptor times that are not increasing (else an error).
    ``time_resolved``: NAME: read ``fp_HiTRes`` instead of the integrated ``fp``.
    ``missing_hitres``: NAME ``fp_HiTRes`` all NaN at a receptor time: ``error``, or
    ``integrated`` to use that time's ``fp`` as one slot (noted on the record).
    ``clip_negative_residual``: NAME ``fp_HiTRes``: set negative values of the residual
    slot (an artefact of computing it by subtraction; the openghg sample has some) to 0,
    counted and noted; without it they are an error.
    ``stilt_cell_coordinates``: ``centre`` (R-STILT v2) or ``lower_left`` (older STILT and
    ICOS STILT files whose lat/lon are the cells' lower-left corners).
    ``stilt_v1_units``: accept R-STILT v1 ``Footprint`` as ppm/(µmol m⁻² s⁻¹) whatever its
    units attribute says (it is mislabelled); without it such a file is refused.
    """

    format: str = "auto"
    back_hours: float | None = None
    site: str | None = None
    sort: bool = False
    time_resolved: bool = False
    missing_hitres: str = "error"
    clip_negative_residual: bool = False
    stilt_cell_coordinates: str = "centre"
    stilt_v1_units: bool = False

    def __post_init__(self) -> None:
        choices = {"format": ("auto", *FORMATS), "missing_hitres": ("error", "integrated"),
                   "stilt_cell_coordinates": ("centre", "lower_left")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.back_hours is not None and not (math.isfinite(self.back_hours) and self.back_hours > 0):
            raise ValueError(f"back_hours must be a positive number of hours, got {self.back_hours!r}")

    @classmethod
    def from_kwargs(cls, options: dict) -> ReaderOptions:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise TypeError(f"unknown footprint reader option(s) {unknown}; known: {sorted(known)}")
        return cls(**options)


def open_dataset(path: Path) -> NcDataset:
    """Open a NetCDF-4/HDF5 or NetCDF-3 file lazily, undecoded (:mod:`transport.formats.netcdf`).

    Values keep their raw encoding (``_FillValue`` in ``attrs``) and times stay numbers:
    the readers decode both explicitly.  Unreadable or non-NetCDF files raise InputError.
    netCDF4 is used directly: it opens small files ~8× faster than h5netcdf, and without
    xarray's machinery around it ≈ 3× faster again (≈ 1.3 vs 3.7 ms per STILT file, which
    dominated ingesting thousands of them).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found", "Check the path or the manifest")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not (head.startswith(_HDF5_SIGNATURE) or head[:4] in _NETCDF3_SIGNATURES):
        raise InputError(path, None, "not a NetCDF file (no NetCDF-4/HDF5 or NetCDF-3 signature)",
                         "Give footprint files in NetCDF (STILT, FLEXPART or NAME output)")
    try:
        return open_netcdf(path)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise InputError(path, None, f"cannot read the file as NetCDF ({type(exc).__name__}: {exc})",
                         "The file may be truncated or corrupt: copy or regenerate it") from exc


def attr_text(attrs, name: str) -> str | None:
    """A string attribute (bytes decoded, whitespace stripped), or None when absent/empty."""
    value = attrs.get(name)
    if value is None:
        return None
    if isinstance(value, bytes | np.bytes_):
        value = value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.size == 1:
        value = value.item()
    text = str(value).strip()
    return text or None


def values_of(var: NcVariable, path: Path, name: str) -> np.ndarray:
    """Load a variable's raw values (I/O errors of a corrupt file become InputError)."""
    try:
        return np.asarray(var.values)
    except (OSError, ValueError, RuntimeError) as exc:
        raise InputError(path, name, f"cannot read the values ({type(exc).__name__}: {exc})",
                         "The file may be truncated or corrupt: copy or regenerate it") from exc


@functools.lru_cache(maxsize=64)
def _footprint_factor(units: str) -> float:
    return conversion_factor(units, FOOTPRINT_UNITS)  # cached: thousands of files share a few spellings


def footprint_factor(var: NcVariable, path: Path, name: str, units: str | None = None) -> float:
    """Factor converting the variable (its ``units`` attribute, or ``units``) to m² s mol⁻¹."""
    units = units if units is not None else attr_text(var.attrs, "units")
    if units is None:
        raise InputError(path, name, "no units attribute", f"Footprints must state their units (expected {FOOTPRINT_UNITS!r} "
                         "or an equivalent such as '(mol/mol)/(mol/m2/s)' or 'ppm (umol-1 m2 s)')")
    try:
        return _footprint_factor(units)
    except InputError:
        return conversion_factor(units, FOOTPRINT_UNITS, path=path, variable=name)  # the same error, naming the file


def unpack(raw: np.ndarray, var: NcVariable) -> np.ndarray:
    """Raw values → a float64 copy, applying CF ``scale_factor``/``add_offset`` when present."""
    values = np.array(raw, dtype=np.float64, copy=True)
    scale, offset = var.attrs.get("scale_factor"), var.attrs.get("add_offset")
    if scale is not None:
        values = values * float(np.asarray(scale).item())
    if offset is not None:
        values = values + float(np.asarray(offset).item())
    return values


def decode_times(values, units: str | None, calendar: str | None, path: Path, name: str) -> np.ndarray:
    """CF numeric times ("<unit> since <date>") → ``datetime64[s]`` rounded to the second."""
    if units is None or " since " not in units:
        raise InputError(path, name, f"time units {units!r} are not '<unit> since <date>'",
                         "Store times as CF numbers, e.g. 'seconds since 1970-01-01 00:00:00'")
    if calendar is not None and calendar.lower() not in _CF_CALENDARS:
        raise InputError(path, name, f"calendar {calendar!r} is not supported", "Use the standard (Gregorian) calendar")
    numbers = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if not np.all(np.isfinite(numbers)):
        raise InputError(path, name, "contains NaN or missing times", "Every footprint needs a valid time")
    linear = _linear_time_units(units, calendar)
    if linear is not None and np.all(numbers == np.trunc(numbers)) \
            and abs(linear[0]) + float(np.abs(numbers).max()) * linear[1] < _SAFE_NS:
        ns = linear[0] + numbers.astype(np.int64) * linear[1]
    else:
        try:
            ns = _coder_ns(numbers, units, calendar)
        except (ValueError, TypeError, OverflowError) as exc:
            raise InputError(path, name, f"cannot decode times with units {units!r} ({exc})", "Use CF time units") from exc
    return ((ns + 500_000_000) // 1_000_000_000).astype("datetime64[s]")


_SAFE_NS = 9.0e18  # inside datetime64[ns] (±9.22e18), with room for float rounding of the bound check


def _coder_ns(numbers: np.ndarray, units: str, calendar: str | None) -> np.ndarray:
    """CF times decoded by xarray's CF coder, as int64 ns since 1970 (ValueError when they do
    not decode to dates)."""
    attrs = {"units": units} if calendar is None else {"units": units, "calendar": calendar}
    decoded = _TIME_CODER.decode(xr.Variable(("n",), numbers, attrs)).values
    if decoded.dtype.kind != "M":
        raise ValueError("they did not decode to dates")
    return decoded.astype("datetime64[ns]").astype(np.int64)


@functools.lru_cache(maxsize=64)
def _linear_time_units(units: str, calendar: str | None) -> tuple[int, int] | None:
    """(t₀, u) in ns when the coder decodes whole numbers n to exactly t₀ + n·u (units of
    fixed length, seconds … days), else None.  Lets :func:`decode_times` decode integral
    times by integer arithmetic, with the coder's result, without its ≈ 1 ms per call
    (which was a tenth of ingesting a small STILT file)."""
    probe = np.array([0.0, 1.0, 2.0, 1000.0])
    try:
        ns = _coder_ns(probe, units, calendar)
    except (ValueError, TypeError, OverflowError):
        return None  # decode_times then calls the coder, which raises the error with the file's name
    origin, unit = int(ns[0]), int(ns[1] - ns[0])
    return (origin, unit) if unit > 0 and np.array_equal(ns, origin + probe.astype(np.int64) * unit) else None


def time_variable(ds: NcDataset, path: Path, name: str = "time") -> np.ndarray:
    if name not in ds.variables:
        raise InputError(path, name, "time coordinate missing", "Footprint files need a CF time coordinate")
    var = ds[name]
    return decode_times(values_of(var, path, name), attr_text(var.attrs, "units"), attr_text(var.attrs, "calendar"), path, name)


def hours_text(text: str, path: Path, name: str) -> float:
    """A duration such as "240 hours" or " 1.0 hours" in hours (through transport.units)."""
    return parse_quantity(text, "h", path=path, variable=name)


def find_name(ds: NcDataset, candidates: tuple[str, ...]) -> str | None:
    return next((n for n in candidates if n in ds.variables or n in ds.dims), None)


def refuse_projected(ds: NcDataset, path: Path, variable: str) -> None:
    """Projected x/y grids (metres) cannot be mapped onto a lat/lon store: say so."""
    dims = set(ds[variable].dims)
    if {"x", "y"} <= dims:
        mapping = next((attr_text(ds[v].attrs, "grid_mapping_name") for v in ds.variables
                        if attr_text(ds[v].attrs, "grid_mapping_name")), None)
        raise InputError(
            path, variable, f"footprint on a projected x/y grid (projection {mapping or 'unknown'!r}) is not supported",
            "Produce the footprints on a longitude/latitude grid (STILT: projection = '+proj=longlat')",
        )


def _axis(ds: NcDataset, path: Path, name: str, kind: str) -> np.ndarray:
    var = ds[name]
    units = attr_text(var.attrs, "units")
    if units is not None and units.lower().replace(" ", "_") not in _DEGREE_UNITS[kind]:
        raise InputError(path, name, f"coordinate units {units!r} are not degrees",
                         "Footprints must be on a longitude/latitude grid in degrees")
    values = np.asarray(values_of(var, path, name), dtype=np.float64)
    if values.ndim != 1 or values.size < 2 or not np.all(np.isfinite(values)):
        raise InputError(path, name, f"expected a 1-D coordinate of at least two finite values, got shape {values.shape}",
                         "Footprints must be on a rectilinear longitude/latitude grid")
    return values


@dataclass(frozen=True)
class SourceGrid:
    """A file's grid plus how to put its (…, lat, lon) values in increasing order."""

    grid: Grid
    lat_dim: str
    lon_dim: str
    lat_order: np.ndarray
    lon_order: np.ndarray

    def orient(self, values: np.ndarray) -> np.ndarray:
        """Reorder trailing (lat, lon) axes into increasing coordinates (no copy when they are)."""
        if self.lat_order[0] != 0:  # orders are either increasing or reversed
            values = values[..., ::-1, :]
        if self.lon_order[0] != 0:
            values = values[..., ::-1]
        return values


def source_grid(ds: NcDataset, path: Path, variable: str, cell_coordinates: str = "centre") -> SourceGrid:
    """The lat/lon grid of ``variable`` (dims lat|latitude and lon|longitude).

    ``cell_coordinates="lower_left"``: the coordinates are the cells' lower-left corners
    of a regular grid (bounds [c, c + Δ]); otherwise they are centres and bounds lie midway.
    Decreasing coordinates are accepted (``orient`` flips the values); any other order
    is an error.
    """
    refuse_projected(ds, path, variable)
    dims = ds[variable].dims
    lat_dim = next((d for d in ("lat", "latitude") if d in dims), None)
    lon_dim = next((d for d in ("lon", "longitude") if d in dims), None)
    if lat_dim is None or lon_dim is None:
        raise InputError(path, variable, f"dims {dims} lack lat|latitude and lon|longitude",
                         "Footprints must be on a longitude/latitude grid")
    for dim in (lat_dim, lon_dim):
        if dim not in ds.variables:
            raise InputError(path, dim, "coordinate variable missing", "Write the cell coordinates of the grid")
    lat, lon = _axis(ds, path, lat_dim, "lat"), _axis(ds, path, lon_dim, "lon")
    try:
        return _source_grid(lat.tobytes(), lon.tobytes(), lat_dim, lon_dim, cell_coordinates)
    except _GridProblem as exc:
        raise InputError(path, *exc.args) from exc


class _GridProblem(Exception):
    """(variable, problem, hint) of a grid that cannot be used, for :func:`source_grid`."""


@functools.lru_cache(maxsize=32)
def _source_grid(lat_bytes: bytes, lon_bytes: bytes, lat_dim: str, lon_dim: str, cell_coordinates: str) -> SourceGrid:
    """The checks and construction of :func:`source_grid` from the coordinate values, once
    per distinct coordinates (the files of a model run share a grid; the Grid checks cost
    as much as reading a small file).  The SourceGrid is immutable (its Grid's arrays are
    read-only), so records may share it."""
    axes = {}
    for dim, kind, raw in ((lat_dim, "lat", lat_bytes), (lon_dim, "lon", lon_bytes)):
        values = np.frombuffer(raw, dtype=np.float64)
        steps = np.diff(values)
        if np.all(steps > 0):
            order = np.arange(values.size)
        elif np.all(steps < 0):
            order = np.arange(values.size)[::-1]
        else:
            raise _GridProblem(dim, "coordinate is not monotonic", "Write the grid coordinates in order")
        order.flags.writeable = False
        axes[kind] = (values[order], order)
    (lat, lat_order), (lon, lon_order) = axes["lat"], axes["lon"]
    try:
        if cell_coordinates == "lower_left":
            bounds = {}
            for kind, values in (("lat", lat), ("lon", lon)):
                steps = np.diff(values)
                if np.ptp(steps) > 1e-6 * abs(steps.mean()):
                    raise _GridProblem(kind, "lower-left coordinates need a regular grid", "Use centre coordinates")
                bounds[kind] = np.column_stack((values, values + steps.mean()))
            grid = Grid(lat=bounds["lat"].mean(axis=1), lon=bounds["lon"].mean(axis=1),
                        lat_bounds=bounds["lat"], lon_bounds=bounds["lon"])
        else:
            grid = Grid.from_centres(lat, lon)
    except ValueError as exc:
        raise _GridProblem(f"{lat_dim}/{lon_dim}", f"not a valid grid: {exc}", "Check the grid coordinates") from exc
    return SourceGrid(grid, lat_dim, lon_dim, lat_order, lon_order)


def clean_slots(raw: np.ndarray, var: NcVariable, path: Path, variable: str, *, documented_fills=()) -> tuple[np.ndarray, list[str]]:
    """Apply the values policy of the module docstring to raw (n_slot, nlat, nlon) values of
    ``var`` (its ``_FillValue``, ``scale_factor`` and ``add_offset`` attributes).

    Returns float64 values (finite, ≥ 0) and the notes saying what was done.
    """
    raw = np.asarray(raw)
    notes: list[str] = []
    fill_value = var.attrs.get("_FillValue")
    is_fill = None
    if fill_value is not None and not np.isnan(np.asarray(fill_value, dtype=np.float64)).any():
        fill = float(np.asarray(fill_value, dtype=np.float64).ravel()[0])
        is_fill = raw == np.asarray(fill_value).astype(raw.dtype)
        n_fill = int(is_fill.sum())
        if n_fill and not any(np.isclose(fill, f, rtol=1e-6, atol=0) for f in documented_fills):
            raise InputError(path, variable, f"{n_fill} cells equal the _FillValue {fill:g}, which this format does not document",
                             "Fill or remove those cells; only the documented STILT fill values are read as 0")
        if n_fill:
            notes.append(f"{n_fill} cells at the documented fill value {fill:g} set to 0")
    values = unpack(raw, var)
    if is_fill is not None:
        values[is_fill] = 0.0
    nan = np.isnan(values)
    if nan.any():
        slot_all = nan.reshape(nan.shape[0], -1).all(axis=1)
        if slot_all.all():
            raise InputError(path, variable, "every value is NaN", "The footprint was not computed; regenerate it")
        partial = nan & ~slot_all[:, None, None]
        if partial.any():
            raise InputError(path, variable, f"{int(partial.sum())} NaN values inside otherwise valid back-time slots",
                             "Only whole NaN slots (no particles) are read as 0; fix the footprint")
        values[slot_all] = 0.0
        notes.append(f"{int(slot_all.sum())} all-NaN back-time slots set to 0")
    if np.isinf(values).any():
        raise InputError(path, variable, f"{int(np.isinf(values).sum())} infinite values", "Fix the footprint")
    if (values < 0).any():
        raise InputError(path, variable, f"{int((values < 0).sum())} negative values (min {values.min():g})",
                         "Footprints are sensitivities and cannot be negative")
    return values, notes


def slot_axis(start, end, path: Path, variable: str) -> TimeAxis:
    try:
        return TimeAxis(start=np.asarray(start, dtype="datetime64[s]"), end=np.asarray(end, dtype="datetime64[s]"))
    except ValueError as exc:
        raise InputError(path, variable, f"invalid back-time slots: {exc}", "Check the time coordinate") from exc


def uniform_step_s(times_s: np.ndarray, path: Path, variable: str) -> int:
    """The common spacing (s) of ≥ 2 increasing times; irregular spacing is an error."""
    steps = np.diff(np.sort(times_s.astype(np.int64)))
    if steps.size == 0 or steps.min() <= 0 or steps.min() != steps.max():
        raise InputError(path, variable, f"back-time slots are not evenly spaced (spacings {np.unique(steps)[:5]} s)",
                         "Footprint slots must have one length")
    return int(steps[0])


_INLET = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(?:m|magl|m\s*agl|m_agl)?\s*$", re.IGNORECASE)


def parse_inlet(text, path: Path, name: str) -> float:
    """Inlet height in m from "100magl", "10m", "100" or a number."""
    if isinstance(text, int | float | np.integer | np.floating):
        return float(text)
    match = _INLET.match(str(text))
    if match is None:
        raise InputError(path, name, f"cannot read an inlet height from {text!r}", "Write it like '100magl' or '100'")
    return float(match.group(1))


def receptor_id(site: str, height_m: float, time: np.datetime64) -> str:
    """Deterministic obs id ``{site}-{inlet}m-{YYYYmmddTHHMM}``, e.g. ``MHD-10m-20140201T0000``."""
    stamp = np.datetime_as_string(np.datetime64(time, "m"), unit="m").replace("-", "").replace(":", "")
    return f"{site}-{height_m:g}m-{stamp}"


def path_text(path: Path) -> str:
    return os.fspath(path)
