"""NAME footprints (openghg / InTEM layout) and the receptor-time-series reader they share
with openghg's FLEXPART "PARIS" files.

A file holds one site and many receptor times: ``fp(lat, lon, time)`` in
(mol/mol)/(mol/m2/s) ≡ m² s mol⁻¹; each ``time`` (the start of the receptor's averaging
period, ``label = "left"``) is one record.

* **Integrated** ``fp``: the footprint is integrated over the back-time B, so its one slot
  is [t − B, t).  The files do not state B (the acrg and openghg samples carry no such
  attribute), so it must be given: option ``back_hours`` (the UK Met Office NAME runs used by
  acrg/openghg integrate 30 days: ``back_hours=720``).  Without it the file is refused.
* **Time-resolved** ``fp_HiTRes(lat, lon, time, H_back)`` (option ``time_resolved``): the
  ``H_back`` values h (hours, evenly spaced by Δ) except the last are resolved slots
  [t − h, t − h + Δ) — the alignment openghg uses (H_back = 0 meets the flux step starting
  at t); the last ``H_back`` is the residual, everything older: [t − B, t − h_last) with
  h_last the oldest resolved slot.  ``fp_HiTRes`` without a units attribute takes the
  units of ``fp`` (same quantity; noted).  A receptor time whose ``fp_HiTRes`` is all NaN
  (openghg samples compute it every other hour) is an error unless
  ``missing_hitres="integrated"``, which uses that time's ``fp`` as one slot (noted).
  Negative values in the residual slot (it is computed by subtraction; the openghg sample
  has some) are an error unless ``clip_negative_residual=True`` sets them to 0 (noted).
* **Boundary sensitivities** ``particle_locations_n|s(height, lon, time)``,
  ``particle_locations_e|w(height, lat, time)`` (any dim order), fractions (units "", "1"
  or absent), with heights in m (``height``; NAME files omit its units: m, per the format).
* **Receptor**: site and inlet from the global attributes ``site`` and ``inlet_height``
  ("100magl"), else from the file name ``{SITE}-{inlet}magl_...`` (a disagreement is
  noted; the attributes win); position from ``release_lat``/``release_lon`` (checked against
  ``release_lat``/``release_lon``/``station_latitude``/``station_longitude`` global
  attributes when present: more than 0.01° apart is an error); obs ids from an ``obs_id``
  variable when present, else ``{site}-{inlet}m-{YYYYmmddTHHMM}``.
* **Times** must increase strictly.  Old NAME files carry extra months (non-monotonic or
  duplicated times): an error, unless ``sort=True``, which sorts them (logged) and drops a
  duplicated time only when its footprint is identical to the kept one (noted).
* Nested NAME files (``fp_low``/``fp_high`` only) are not supported.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transport.errors import InputError
from transport.formats import FootprintRecord, Receptor
from transport.formats.common import (
    ReaderOptions,
    SourceGrid,
    attr_text,
    clean_slots,
    footprint_factor,
    parse_inlet,
    path_text,
    receptor_id,
    slot_axis,
    source_grid,
    time_variable,
    values_of,
)
from transport.formats.netcdf import NcDataset, NcVariable
from transport.units import conversion_factor

log = logging.getLogger(__name__)

_FILE_NAME = re.compile(r"^(?P<site>[A-Za-z0-9]+)-(?P<inlet>\d+(?:\.\d+)?)magl_")
EDGES = {"n": "lon", "s": "lon", "e": "lat", "w": "lat"}
_POSITION_TOLERANCE_DEG = 0.01


def _site_and_inlet(ds: NcDataset, path: Path, options: ReaderOptions) -> tuple[str, float, list[str]]:
    notes: list[str] = []
    match = _FILE_NAME.match(path.name)
    site_attr = attr_text(ds.attrs, "site")
    inlet_attr = ds.attrs.get("inlet_height", ds.attrs.get("inlet"))
    if isinstance(inlet_attr, bytes | np.bytes_):
        inlet_attr = inlet_attr.decode("utf-8", "replace")
    inlet_attr = None if inlet_attr is None else parse_inlet(inlet_attr, path, "attribute inlet_height")
    site = options.site or site_attr or (match.group("site") if match else None)
    inlet = inlet_attr if inlet_attr is not None else (float(match.group("inlet")) if match else None)
    if site is None or inlet is None:
        raise InputError(path, "attributes site/inlet_height", "the file names neither its site and inlet nor follows "
                         "{SITE}-{inlet}magl_{DOMAIN}_{YYYYMM}.nc", "Add site/inlet_height attributes or rename the file")
    if match and site_attr and match.group("site").upper() != site_attr.upper():
        notes.append(f"file name says site {match.group('site')}, attribute {site_attr}: attribute used")
    if match and inlet_attr is not None and float(match.group("inlet")) != inlet_attr:
        notes.append(f"file name says inlet {match.group('inlet')} m, attribute {inlet_attr:g} m: attribute used")
    return site, inlet, notes


def _degrees(ds: NcDataset, path: Path, name: str, kind: str, order: np.ndarray) -> np.ndarray:
    if name not in ds.variables:
        raise InputError(path, name, "missing", "NAME/PARIS footprints give the receptor position as release_lat/release_lon")
    units = attr_text(ds[name].attrs, "units")
    if units is not None and not units.lower().startswith("degree"):
        raise InputError(path, name, f"units {units!r} are not degrees", f"Give {name} in degrees")
    values = np.asarray(values_of(ds[name], path, name), dtype=np.float64).reshape(-1)[order]
    if not np.all(np.isfinite(values)):
        raise InputError(path, name, "contains NaN", "Every receptor needs a position")
    for key in (name, f"station_{kind}itude"):
        text = ds.attrs.get(key)
        if text is not None and np.any(np.abs(values - float(np.asarray(text).item())) > _POSITION_TOLERANCE_DEG):
            raise InputError(path, name, f"differs from the global attribute {key} = {text} by more than "
                             f"{_POSITION_TOLERANCE_DEG}°", "Fix the receptor position in the file")
    return values


def _order(times: np.ndarray, path: Path, options: ReaderOptions) -> np.ndarray:
    steps = np.diff(times.astype(np.int64))
    if np.all(steps > 0):
        return np.arange(times.size)
    bad = int((steps < 0).sum()), int((steps == 0).sum())
    if not options.sort:
        first = int(np.flatnonzero(steps <= 0)[0])
        raise InputError(path, "time", f"receptor times are not increasing ({bad[0]} decreases, {bad[1]} repeats; "
                         f"e.g. {times[first]} then {times[first + 1]})",
                         "Old NAME files may carry extra months: fix the file or pass --sort-times (sort=True) to sort them")
    log.warning("%s: %d decreasing and %d repeated receptor times sorted (sort=True)", path, *bad)
    return np.argsort(times, kind="stable")


def _boundary(ds: NcDataset, path: Path, sgrid: SourceGrid, order: np.ndarray):
    """(edges by record index → arrays, heights) or (None, None) when the file has none."""
    names = {edge: f"particle_locations_{edge}" for edge in EDGES}
    present = [n for n in names.values() if n in ds.variables]
    if not present:
        return None, None
    if len(present) != 4:
        raise InputError(path, ", ".join(sorted(set(names.values()) - set(present))), "missing while other edges are present",
                         "Boundary sensitivities need all four edges n, e, s, w")
    if "height" not in ds.variables:
        raise InputError(path, "height", "missing", "Boundary sensitivities need their height levels")
    h_units = attr_text(ds["height"].attrs, "units")
    heights = np.asarray(values_of(ds["height"], path, "height"), dtype=np.float64)
    heights = heights * (conversion_factor(h_units, "m", path=path, variable="height") if h_units else 1.0)
    edges = {}
    for edge, axis in EDGES.items():
        name = names[edge]
        var = ds[name]
        cell_dim = sgrid.lat_dim if axis == "lat" else sgrid.lon_dim
        if set(var.dims) != {"time", "height", cell_dim}:
            raise InputError(path, name, f"dims {var.dims} are not (height, {cell_dim}, time)", "Check the file layout")
        units = attr_text(var.attrs, "units")
        factor = conversion_factor(units, "1", path=path, variable=name) if units else 1.0
        values = np.asarray(values_of(var.transpose("time", "height", cell_dim), path, name), dtype=np.float64) * factor
        cell_order = sgrid.lat_order if axis == "lat" else sgrid.lon_order
        values = values[order][:, :, cell_order]
        if not np.all(np.isfinite(values)) or (values < 0).any():
            raise InputError(path, name, "contains NaN, inf or negative values", "Boundary sensitivities are fractions ≥ 0")
        edges[edge] = values
    return edges, heights


def _hitres(ds: NcDataset, path: Path, sgrid: SourceGrid, units: str | None):
    if "fp_HiTRes" not in ds.variables:
        raise InputError(path, "fp_HiTRes", "missing", "The file has no time-resolved footprint: drop --time-resolved")
    var = ds["fp_HiTRes"]
    if set(var.dims) != {"time", "H_back", sgrid.lat_dim, sgrid.lon_dim}:
        raise InputError(path, "fp_HiTRes", f"dims {var.dims} are not (lat, lon, time, H_back)", "Check the file layout")
    notes = []
    if attr_text(var.attrs, "units") is None:
        notes.append(f"fp_HiTRes has no units attribute: read in the units of fp ({units})")
    factor = footprint_factor(var, path, "fp_HiTRes", None if attr_text(var.attrs, "units") else units)
    h_back = np.asarray(values_of(ds["H_back"], path, "H_back"), dtype=np.float64)
    steps = np.diff(h_back)
    if h_back.size < 2 or steps.min() <= 0 or np.ptp(steps) > 1e-9:
        raise InputError(path, "H_back", f"values {h_back} are not evenly spaced hours", "Check the file")
    return var.transpose("time", "H_back", sgrid.lat_dim, sgrid.lon_dim), factor, h_back, float(steps[0]), notes


def _identical_duplicates(var: NcVariable, times: np.ndarray, order: np.ndarray, path: Path, name: str) -> set[int]:
    """Positions (in ``order``) of repeated times whose footprints equal the kept one."""
    drop = set()
    sorted_times = times[order]
    for pos in np.flatnonzero(sorted_times[1:] == sorted_times[:-1]) + 1:
        kept, other = (values_of(var.isel(time=int(order[i])), path, name) for i in (pos - 1, pos))
        if not np.array_equal(kept, other, equal_nan=True):
            raise InputError(path, "time", f"receptor time {sorted_times[pos]} appears twice with different footprints",
                             "Remove the duplicate from the file (old NAME files carry extra months)")
        drop.add(int(pos))
    return drop


def read_series(ds: NcDataset, path: Path, options: ReaderOptions, variable: str, *,
                time_resolved: bool = False) -> Iterator[FootprintRecord]:
    """Records of a receptor-time-series footprint file (NAME layout; see the module docstring)."""
    if variable not in ds.variables:
        raise InputError(path, variable, "missing", "Is this a NAME or openghg footprint file?")
    var = ds[variable]
    sgrid = source_grid(ds, path, variable)
    if set(var.dims) != {"time", sgrid.lat_dim, sgrid.lon_dim}:
        raise InputError(path, variable, f"dims {var.dims} are not (lat, lon, time)", "Check the file layout")
    units = attr_text(var.attrs, "units")
    factor = footprint_factor(var, path, variable)
    var = var.transpose("time", sgrid.lat_dim, sgrid.lon_dim)
    times = time_variable(ds, path)
    order = _order(times, path, options)
    duplicates = _identical_duplicates(var, times, order, path, variable) if options.sort else set()
    site, inlet, file_notes = _site_and_inlet(ds, path, options)
    lats = _degrees(ds, path, "release_lat", "lat", order)
    lons = _degrees(ds, path, "release_lon", "lon", order)
    if options.back_hours is None:
        raise InputError(path, variable, "the back-time of the integrated footprints is not stated in the file",
                         "Give it with --back-hours (back_hours); the Met Office NAME runs used by acrg/openghg integrate 30 days: 720")
    back = np.timedelta64(round(options.back_hours * 3600), "s")
    boundary, heights = _boundary(ds, path, sgrid, order)
    ids = None
    if "obs_id" in ds.variables and ds["obs_id"].dims == ("time",):
        ids = [str(v.decode() if isinstance(v, bytes) else v).strip() for v in values_of(ds["obs_id"], path, "obs_id")[order]]
    if time_resolved:
        hitres, h_factor, h_back, h_step, h_notes = _hitres(ds, path, sgrid, units)
        file_notes = file_notes + h_notes
        h_resolved = h_back[:-1]
        if back <= np.timedelta64(round(h_resolved[-1] * 3600), "s"):
            raise InputError(path, "H_back", f"back-time {options.back_hours:g} h does not exceed the resolved {h_resolved[-1]:g} h",
                             "Give the total back-time of the footprints with --back-hours")

    for pos, index in enumerate(order):
        if pos in duplicates:
            continue
        t = times[index]
        notes = list(file_notes)
        if pos + 1 in duplicates:
            notes.append("an identical duplicate of this receptor time was dropped (sort=True)")
        raw, slot_factor = None, factor
        if time_resolved:
            candidate = values_of(hitres.isel(time=int(index)), path, "fp_HiTRes")
            if not np.isnan(candidate).all():
                raw, slot_factor = candidate[::-1].copy(), h_factor  # oldest first: residual, then h_last … 0
                negative = raw[0] < 0
                if negative.any():
                    if not options.clip_negative_residual:
                        raise InputError(path, "fp_HiTRes", f"{int(negative.sum())} negative values in the residual slot "
                                         f"(H_back = {h_back[-1]:g}) at receptor time {t} (min {raw[0].min():g})",
                                         "They come from computing the residual by subtraction: pass "
                                         "--clip-negative-residual to set them to 0 (counted), or fix the file")
                    notes.append(f"{int(negative.sum())} negative residual-slot values (sum {raw[0][negative].sum():g}) "
                                 "set to 0 (clip_negative_residual)")
                    raw[0][negative] = 0.0
                starts = [t - back] + [t - np.timedelta64(round(h * 3600), "s") for h in h_resolved[::-1]]
                ends = starts[1:] + [t + np.timedelta64(round(h_step * 3600), "s")]
                slots = slot_axis(starts, ends, path, "H_back")
            elif options.missing_hitres == "integrated":
                notes.append("fp_HiTRes all NaN at this time: the integrated fp used as one slot (missing_hitres)")
            else:
                raise InputError(path, "fp_HiTRes", f"all NaN at receptor time {t}",
                                 "Pass --missing-hitres integrated to use the integrated fp for such times, or drop --time-resolved")
        if raw is None:
            raw = values_of(var.isel(time=int(index)), path, variable)[None]
            slots = slot_axis([t - back], [t], path, "time")
        values, cleaning = clean_slots(sgrid.orient(raw), hitres if raw.shape[0] > 1 else var, path,
                                       "fp_HiTRes" if raw.shape[0] > 1 else variable)
        receptor = Receptor(obs_id=ids[pos] if ids else receptor_id(site, inlet, t), time=t, site=site,
                            latitude=float(lats[pos]), longitude=float(lons[pos]), height=inlet)
        yield FootprintRecord(
            receptor=receptor, grid=sgrid.grid, slots=slots, values=values * slot_factor, source=path_text(path),
            boundary=None if boundary is None else {edge: a[pos] for edge, a in boundary.items()},
            boundary_height=heights, notes=tuple(notes + cleaning),
        )


def read_name(ds: NcDataset, path: Path, options: ReaderOptions) -> Iterator[FootprintRecord]:
    """Records of a NAME footprint file (one per receptor time; see the module docstring)."""
    if "fp" not in ds.variables and ("fp_low" in ds.variables or "fp_high" in ds.variables):
        raise InputError(path, "fp_low/fp_high", "nested NAME footprints are not supported",
                         "Use the single-resolution fp (or regrid the nested footprints onto one grid first)")
    yield from read_series(ds, path, options, "fp", time_resolved=options.time_resolved)
