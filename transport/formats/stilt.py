"""STILT footprints: R-STILT v2 ``<id>_foot.nc``, R-STILT v1 ``Footprint`` and ICOS STILT.

One file is one receptor.  The footprint variable is ``foot`` (or ``Footprint``) on
``lat|latitude`` × ``lon|longitude`` (cell centres unless ``stilt_cell_coordinates =
"lower_left"``), in ppm per (µmol m⁻² s⁻¹) ≡ m² s mol⁻¹ (factor exactly 1):

* **time-resolved** (≥ 2 times): ``time`` is the start of each backward interval, so slot
  s covers [time_s, time_s + Δ) with Δ the (uniform) spacing of the times (1 h in R-STILT,
  3 h in ICOS STILT); the receptor time is the end of the newest slot;
* **integrated** (one time, or none): ``time`` is the receptor time t and the one slot
  covers [t − B, t), with the back-time B from the ``backtime`` attribute ("240 hours",
  ICOS STILT) or the ``back_hours`` option; when neither exists the file is refused.

Receptor position: attributes ``r_lati``/``r_long``/``r_zagl`` when present, else the file
name — R-STILT ``YYYYmmddHHMM_<lon>_<lat>_<zagl>`` (longitude first, as the R-STILT code
writes it; a position outside the footprint domain whose swap is inside is refused as a
probable lat/lon swap) or ICOS ``foot{Y}x{m}x{d}x{H}x{lat}{N|S}x{lon}{E|W}x{alt:05d}``.  A
receptor time in the file name that disagrees with the contents is noted; contents win.
Site: the ``site`` option, else a ``site``/``station`` attribute, else the ICOS directory
layout ``Footprints/<STATION>/``, else the file is refused.

R-STILT v1 ``Footprint`` carries a wrong units label although its values are ppm per
(µmol m⁻² s⁻¹): unless the label already converts with factor 1, the file is **refused**,
and read as ppm/(µmol m⁻² s⁻¹) only with the explicit option ``stilt_v1_units=True``.
Projected x/y grids are refused.  Fill values: −1 (R-STILT v2), −1e30 (ICOS STILT R code)
and −1e34 are the documented ones (read as 0, counted).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transport.errors import InputError
from transport.formats import FootprintRecord, Receptor
from transport.formats.common import (
    ReaderOptions,
    attr_text,
    clean_slots,
    footprint_factor,
    hours_text,
    path_text,
    receptor_id,
    refuse_projected,
    slot_axis,
    source_grid,
    time_variable,
    uniform_step_s,
    values_of,
)
from transport.formats.netcdf import NcDataset, NcVariable

DOCUMENTED_FILL_VALUES = (-1.0, -1e30, -1e34)

_RSTILT_ID = re.compile(
    r"^(?P<time>\d{12})_(?P<lon>-?\d+(?:\.\d+)?)_(?P<lat>-?\d+(?:\.\d+)?)_(?P<zagl>\d+(?:\.\d+)?)(?:_foot)?\.nc$"
)
_ICOS_NAME = re.compile(
    r"^foot(?P<Y>\d{4})x(?P<m>\d{2})x(?P<d>\d{2})x(?P<H>\d{2})x(?P<lat>\d+(?:\.\d+)?)(?P<ns>[NS])"
    r"x(?P<lon>\d+(?:\.\d+)?)(?P<ew>[EW])x(?P<alt>\d+)(?:_aggreg)?\.nc$"
)


def _from_file_name(path: Path) -> dict | None:
    """Receptor (time, lat, lon, height, layout) encoded in a STILT file name, or None."""
    match = _RSTILT_ID.match(path.name)
    if match:
        t = match.group("time")
        return {"time": np.datetime64(f"{t[:4]}-{t[4:6]}-{t[6:8]}T{t[8:10]}:{t[10:12]}", "s"),
                "lat": float(match.group("lat")), "lon": float(match.group("lon")),
                "height": float(match.group("zagl")), "layout": "R-STILT"}
    match = _ICOS_NAME.match(path.name)
    if match:
        g = match.groupdict()
        return {"time": np.datetime64(f"{g['Y']}-{g['m']}-{g['d']}T{g['H']}:00", "s"),
                "lat": float(g["lat"]) * (1 if g["ns"] == "N" else -1),
                "lon": float(g["lon"]) * (1 if g["ew"] == "E" else -1),
                "height": float(g["alt"]), "layout": "ICOS"}
    return None


def _back_seconds(ds: NcDataset, path: Path, options: ReaderOptions) -> float:
    """Back-time B (s) of an integrated footprint: attribute ``backtime`` or the option."""
    text = attr_text(ds.attrs, "backtime")
    from_attr = abs(hours_text(text, path, "attribute backtime")) if text else None
    if from_attr is not None and options.back_hours is not None and not math.isclose(from_attr, options.back_hours):
        raise InputError(path, "attribute backtime", f"says {text!r} but back_hours = {options.back_hours:g} was given",
                         "Drop the option (the file states its back-time) or fix the file")
    hours = from_attr if from_attr is not None else options.back_hours
    if hours is None:
        raise InputError(path, "attribute backtime", "a time-integrated footprint without a stated back-time",
                         "Give the STILT back-time with --back-hours (e.g. --back-hours 240 for 10 days)")
    return hours * 3600.0


def _units_factor(var: NcVariable, path: Path, name: str, options: ReaderOptions) -> tuple[float, list[str]]:
    if name == "foot":
        return footprint_factor(var, path, name), []
    label = attr_text(var.attrs, "units")
    try:
        factor = footprint_factor(var, path, name)
    except InputError:
        factor = math.nan
    if math.isclose(factor, 1.0, rel_tol=1e-12):
        return 1.0, []
    if not options.stilt_v1_units:
        raise InputError(
            path, name, f"R-STILT v1 'Footprint' labelled {label!r}: the label is known to be wrong (the values are "
            "ppm per (umol m-2 s-1))", "Pass --stilt-v1-units (stilt_v1_units=True) to read it as ppm/(umol m-2 s-1)",
        )
    return 1.0, [f"units label {label!r} ignored: read as ppm/(umol m-2 s-1) (stilt_v1_units)"]


def _site(ds: NcDataset, path: Path, options: ReaderOptions) -> str:
    if options.site:
        return options.site
    for key in ("site", "station"):
        if attr_text(ds.attrs, key):
            return attr_text(ds.attrs, key)
    parent = path.resolve().parent
    if parent.parent.name == "Footprints":
        return parent.name
    raise InputError(path, "attribute site", "the file does not name its site",
                     "Give the site code with --site (or store STILT files as Footprints/<SITE>/...)")


def _inside(grid, lat: float, lon: float) -> bool:
    return bool(grid.lat_bounds[0, 0] <= lat <= grid.lat_bounds[-1, 1] and grid.lon_bounds[0, 0] <= lon <= grid.lon_bounds[-1, 1])


def read_stilt(ds: NcDataset, path: Path, options: ReaderOptions) -> Iterator[FootprintRecord]:
    """Yield the one record of a STILT footprint file (see the module docstring)."""
    name = next((n for n in ("foot", "Footprint") if n in ds.variables), None)
    if name is None:
        raise InputError(path, "foot", "no STILT footprint variable (foot or Footprint)", "Is this a STILT footprint file?")
    refuse_projected(ds, path, name)
    var = ds[name]
    factor, notes = _units_factor(var, path, name, options)
    sgrid = source_grid(ds, path, name, options.stilt_cell_coordinates)
    extra = set(var.dims) - {"time", sgrid.lat_dim, sgrid.lon_dim}
    if extra:
        raise InputError(path, name, f"unexpected dimensions {sorted(extra)}", "STILT footprints are (time, lat, lon)")
    has_time = "time" in var.dims
    var = var.transpose(*(("time",) if has_time else ()), sgrid.lat_dim, sgrid.lon_dim)
    raw = values_of(var, path, name)
    raw = raw if has_time else raw[None]
    times = time_variable(ds, path) if "time" in ds.variables else None
    named = _from_file_name(path)

    if has_time and raw.shape[0] >= 2:
        starts = times.astype(np.int64)
        step = uniform_step_s(starts, path, "time")
        order = np.argsort(starts)  # R-STILT writes the slots newest first
        raw, starts = raw[order], starts[order]
        slots = slot_axis(starts, starts + step, path, "time")
        t_receptor = slots.end[-1]
    else:
        if times is not None and times.size == 1:
            t_receptor = times[0]
        elif named is not None:
            t_receptor = named["time"]
            notes.append("receptor time from the file name (the file has no time)")
        else:
            raise InputError(path, "time", "no receptor time in the contents or the file name", "Add a time coordinate")
        back = np.timedelta64(round(_back_seconds(ds, path, options)), "s")
        slots = slot_axis([t_receptor - back], [t_receptor], path, "time")
    if named is not None and named["time"] != t_receptor:
        notes.append(f"file name says receptor time {named['time']}, contents {t_receptor}: contents used")

    values, cleaning = clean_slots(sgrid.orient(raw), var, path, name, documented_fills=DOCUMENTED_FILL_VALUES)
    position = [ds.attrs.get(k) for k in ("r_lati", "r_long", "r_zagl")]
    if all(v is not None for v in position):
        lat, lon, height = (float(np.asarray(v).item()) for v in position)
    elif named is not None:
        lat, lon, height = named["lat"], named["lon"], named["height"]
        if named["layout"] == "R-STILT" and not _inside(sgrid.grid, lat, lon) and _inside(sgrid.grid, lon, lat):
            raise InputError(path, "file name", f"receptor lon {lon:g}, lat {lat:g} (R-STILT order, longitude first) lies "
                             "outside the footprint domain but the swapped position lies inside",
                             "Rename the file with longitude first (YYYYmmddHHMM_<lon>_<lat>_<zagl>) or add r_lati/r_long/r_zagl attributes")
        notes.append(f"receptor position from the {named['layout']} file name")
    else:
        raise InputError(path, "r_lati/r_long/r_zagl", "no receptor position in the attributes or the file name",
                         "Name the file YYYYmmddHHMM_<lon>_<lat>_<zagl>_foot.nc or add r_lati/r_long/r_zagl attributes")
    site = _site(ds, path, options)
    obs_id = attr_text(ds.attrs, "obs_id") or receptor_id(site, height, t_receptor)
    receptor = Receptor(obs_id=obs_id, time=np.datetime64(t_receptor, "s"), site=site, latitude=lat, longitude=lon, height=height)
    yield FootprintRecord(receptor=receptor, grid=sgrid.grid, slots=slots, values=values * factor,
                          source=path_text(path), notes=tuple(notes + cleaning))
