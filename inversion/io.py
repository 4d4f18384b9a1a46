"""File plumbing shared by readers and writers: opening NetCDF with clear errors, checking
grids, and atomic writes (temporary name in the same directory, then ``os.replace``) so a
crash never leaves a file that looks complete."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid

NETCDF_ENGINE = "h5netcdf"


def open_netcdf(path: Path, what: str) -> xr.Dataset:
    """Open a NetCDF file fully into memory (inputs here are small) or raise InputError."""
    with netcdf_reader(path, what) as ds:
        try:
            return ds.load()
        except (OSError, ValueError) as exc:
            raise _unreadable(path, what, exc) from exc


@contextlib.contextmanager
def netcdf_reader(path: Path, what: str) -> Iterator[xr.Dataset]:
    """A NetCDF file opened lazily (a variable is read when its values are asked for, so a
    slice reads only that part), closed on exit; or InputError."""
    if not Path(path).is_file():
        raise InputError(path, None, f"{what} file not found", "check the path in the configuration")
    try:
        ds = xr.open_dataset(path, engine=NETCDF_ENGINE, decode_timedelta=False)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, what, exc) from exc
    with ds:
        yield ds


def _unreadable(path: Path, what: str, exc: Exception) -> InputError:
    return InputError(path, None, f"cannot read {what} as NetCDF-4/HDF5 ({exc})",
                      "write it as NetCDF-4 (xarray: ds.to_netcdf(path, engine='h5netcdf'))")


def require_variables(ds: xr.Dataset, path: Path, names: list[str], what: str) -> None:
    missing = [n for n in names if n not in ds.variables]
    if missing:
        raise InputError(path, ", ".join(missing), f"required {what} variable(s) missing",
                         f"the file has: {', '.join(sorted(map(str, ds.variables)))}")


def coordinate(ds: xr.Dataset, path: Path, names: tuple[str, ...]) -> np.ndarray:
    for name in names:
        if name in ds.coords or name in ds.variables:
            return np.asarray(ds[name].values, dtype=np.float64)
    raise InputError(path, "/".join(names), "coordinate not found", "name it lat/lon (or latitude/longitude)")


def check_same_grid(ds: xr.Dataset, path: Path, grid: Grid, what: str, grid_source: str) -> None:
    """The file's cell centres must equal the inversion grid's (1e-6°)."""
    lat = coordinate(ds, path, ("lat", "latitude"))
    lon = coordinate(ds, path, ("lon", "longitude"))
    same = (lat.shape == grid.lat.shape and lon.shape == grid.lon.shape
            and np.allclose(lat, grid.lat, atol=1e-6) and np.allclose(lon, grid.lon, atol=1e-6))
    if not same:
        found = Grid.from_centres(lat, lon).describe() if lat.size > 1 and lon.size > 1 else f"{lat.size}×{lon.size}"
        raise InputError(path, "lat/lon", f"the {what} grid ({found}) differs from the inversion grid "
                         f"of {grid_source} ({grid.describe()})",
                         "regrid the file to the footprint grid, or produce footprints on this grid")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, else remove it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_netcdf(ds: xr.Dataset, path: Path) -> None:
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine=NETCDF_ENGINE)


def write_text(text: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(obj: dict, path: Path) -> None:
    write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n", path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)
