"""FLEXPART backward-run footprints: ``grid_time_*.nc`` and openghg's "PARIS" layout.

**grid_time** (``grid_time_YYYYMMDDHHMMSS.nc``, nested ``grid_time_nest_…``): variable
``spec001_mr(nageclass, pointspec, time, height, latitude, longitude)`` in **s m³ kg⁻¹**
(residence time of a unit mass release, mixing-ratio receptor); one record per release
(``pointspec``; needs IOUTPUTFOREACHRELEASE = 1).  The surface sensitivity is the
residence time in the lowest output layer per unit air mass:

    K [m² s mol⁻¹] = Σ_ageclass spec001_mr[:, p, :, 0, :, :] · M_air / h

with M_air = 0.0289647 kg mol⁻¹ and h = ``height[0]`` the depth of the lowest layer (m;
FLEXPART's ``height`` is the top of each level).  The unit algebra is checked by
transport.units on "(<units>) kg mol-1 m-1" → m² s mol⁻¹, so other output units are refused.
Times: ``time`` (seconds since the simulation start) labels each output interval by its
earlier end; the slot is [t, t + Δ) with Δ = the ``loutaver`` attribute (s), else the
spacing of ``time``.  Coordinates are cell centres (FLEXPART ≥ 10 writes
``outlon0 + (i − ½)·dxout``).  Receptor: ``RELCOM`` (site, unless the ``site`` option is
given), centre of ``RELLNG1/2``, ``RELLAT1/2``, ``RELZZ1/2`` (m above ground: ``RELKINDZ``
must be 1) and, as time, the start of the release interval ``RELSTART``/``RELEND``
(relative to the simulation start), like the NAME receptor-time convention.  Forward runs
(``ldirect`` = 1) are refused.

**PARIS** (openghg): ``srr`` (or ``fp``) ``(time, latitude, longitude)`` in
(mol/mol)/(mol/m2/s): the NAME receptor-time-series layout with FLEXPART names, read by
:func:`transport.formats.name.read_series` (integrated footprints; ``back_hours`` needed).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from transport.errors import InputError
from transport.formats import FootprintRecord, Receptor
from transport.formats.common import (
    ReaderOptions,
    attr_text,
    clean_slots,
    decode_times,
    path_text,
    receptor_id,
    slot_axis,
    source_grid,
    time_variable,
    uniform_step_s,
    values_of,
)
from transport.formats.name import read_series
from transport.formats.netcdf import NcDataset
from transport.units import (
    FOOTPRINT_UNITS,
    MOLAR_MASS_DRY_AIR_KG_PER_MOL,
    conversion_factor,
)

_DIMS = {"nageclass", "pointspec", "time", "height", "latitude", "longitude"}
_RELEASE_VARIABLES = ("RELCOM", "RELLNG1", "RELLNG2", "RELLAT1", "RELLAT2", "RELZZ1", "RELZZ2", "RELSTART", "RELEND")


def _numbers(ds: NcDataset, path: Path, name: str, units_to: str | None = None) -> np.ndarray:
    values = np.asarray(values_of(ds[name], path, name), dtype=np.float64).reshape(-1)
    if units_to is not None:
        units = attr_text(ds[name].attrs, "units")
        if units is None:
            raise InputError(path, name, "no units attribute", f"FLEXPART writes {name} with units")
        values = values * conversion_factor(units, units_to, path=path, variable=name)
    return values


def _release_names(ds: NcDataset, path: Path) -> list[str]:
    raw = values_of(ds["RELCOM"], path, "RELCOM")
    if raw.dtype.kind in "SU" and raw.ndim == 2:  # (numpoint, nchar) character array
        raw = np.array([b"".join(row) if raw.dtype.kind == "S" else "".join(row) for row in raw])
    return [(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).strip() for v in raw.reshape(-1)]


def _grid_time(ds: NcDataset, path: Path, options: ReaderOptions) -> Iterator[FootprintRecord]:
    name = "spec001_mr"
    var = ds[name]
    if set(var.dims) != _DIMS:
        raise InputError(path, name, f"dims {var.dims} are not {sorted(_DIMS)}", "Is this FLEXPART grid_time output?")
    ldirect = ds.attrs.get("ldirect")
    if ldirect is not None and int(np.asarray(ldirect).item()) != -1:
        raise InputError(path, "attribute ldirect", f"is {ldirect}: a forward run, not a footprint",
                         "Footprints come from backward runs (LDIRECT = -1)")
    missing = [v for v in _RELEASE_VARIABLES if v not in ds.variables]
    if missing:
        raise InputError(path, ", ".join(missing), "release metadata missing", "FLEXPART writes the releases with write_releases")
    units = attr_text(var.attrs, "units")
    if units is None:
        raise InputError(path, name, "no units attribute", "FLEXPART backward runs write 's m3 kg-1'")
    unit_factor = conversion_factor(f"({units}) kg mol-1 m-1", FOOTPRINT_UNITS, path=path, variable=name)
    heights = _numbers(ds, path, "height", "m")
    if heights.size == 0 or not heights[0] > 0:
        raise InputError(path, "height", f"lowest level top {heights[:1]} is not positive", "Check the output heights")
    factor = unit_factor * MOLAR_MASS_DRY_AIR_KG_PER_MOL / heights[0]

    sgrid = source_grid(ds, path, name)
    times = time_variable(ds, path)
    loutaver = ds.attrs.get("loutaver")
    if loutaver is not None:
        step = abs(int(np.asarray(loutaver).item()))
    elif times.size >= 2:
        step = uniform_step_s(times.astype(np.int64), path, "time")
    else:
        raise InputError(path, "attribute loutaver", "one output time and no loutaver: the slot length is unknown",
                         "Keep FLEXPART's global attributes (loutaver) in the file")
    order = np.argsort(times)
    slots = slot_axis(times[order], times[order] + np.timedelta64(step, "s"), path, "time")

    n_release = var.sizes["pointspec"]
    names = _release_names(ds, path)
    lon = 0.5 * (_numbers(ds, path, "RELLNG1") + _numbers(ds, path, "RELLNG2"))
    lat = 0.5 * (_numbers(ds, path, "RELLAT1") + _numbers(ds, path, "RELLAT2"))
    zagl = 0.5 * (_numbers(ds, path, "RELZZ1", "m") + _numbers(ds, path, "RELZZ2", "m"))
    if "RELKINDZ" in ds.variables and np.any(_numbers(ds, path, "RELKINDZ") != 1):
        raise InputError(path, "RELKINDZ", "release heights are not above ground (RELKINDZ ≠ 1)",
                         "Release receptors in m above ground level")
    reference = attr_text(ds["time"].attrs, "units").split(" since ", 1)[1]
    start = decode_times(_numbers(ds, path, "RELSTART", "s"), f"seconds since {reference}", None, path, "RELSTART")
    end = decode_times(_numbers(ds, path, "RELEND", "s"), f"seconds since {reference}", None, path, "RELEND")
    if not all(a.size == n_release for a in (lon, lat, zagl, start, end)) or len(names) != n_release:
        raise InputError(path, "pointspec", f"{n_release} output releases but {len(names)} release descriptions",
                         "Run FLEXPART with IOUTPUTFOREACHRELEASE = 1 (one output field per release)")

    var = var.transpose("pointspec", "nageclass", "time", "height", sgrid.lat_dim, sgrid.lon_dim)
    for p in range(n_release):
        raw = values_of(var.isel(pointspec=p, height=0), path, name)  # (nageclass, time, lat, lon)
        if "_FillValue" in var.attrs and not np.isnan(float(np.asarray(var.attrs["_FillValue"]).ravel()[0])):
            raise InputError(path, name, "has a _FillValue, which FLEXPART output does not use", "Check the file")
        summed = raw.astype(np.float64).sum(axis=0)[order]  # the age classes partition the particles
        values, notes = clean_slots(sgrid.orient(summed), var, path, name)
        t = min(start[p], end[p])
        site = options.site or names[p]
        receptor = Receptor(obs_id=receptor_id(site, float(zagl[p]), t), time=t, site=site,
                            latitude=float(lat[p]), longitude=float(lon[p]), height=float(zagl[p]))
        yield FootprintRecord(receptor=receptor, grid=sgrid.grid, slots=slots, values=values * factor,
                              source=path_text(path), notes=tuple(notes))


def read_flexpart(ds: NcDataset, path: Path, options: ReaderOptions) -> Iterator[FootprintRecord]:
    """Records of a FLEXPART footprint file (see the module docstring)."""
    if "spec001_mr" in ds.variables:
        yield from _grid_time(ds, path, options)
        return
    variable = "srr" if "srr" in ds.variables else "fp"
    yield from read_series(ds, path, options, variable)
