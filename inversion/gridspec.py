"""Grids named on the command line: ``LAT_MIN,LAT_MAX,LON_MIN,LON_MAX,DLAT,DLON`` or "like"
an existing case, footprint store or NetCDF file (used by ``tanhui regions build`` and
``tanhui footprints ingest``)."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from transport.errors import InputError
from transport.grid import Grid

from .io import coordinate, open_netcdf


def parse_grid(text: str, option: str = "--grid") -> Grid:
    """``lat_min,lat_max,lon_min,lon_max,dlat,dlon`` (cell edges and spacing, degrees)."""
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [float(p) for p in parts]
        if len(values) != 6:
            raise ValueError(f"expected 6 numbers, got {len(values)}")
        return Grid.regular(*values)
    except ValueError as exc:
        raise InputError(None, option, f"{text!r} is neither an existing file nor six numbers ({exc})",
                         "write lat_min,lat_max,lon_min,lon_max,dlat,dlon (e.g. 15,55,73,136,0.5,0.5), or name a "
                         "case, footprint store or NetCDF file on the grid") from None


def grid_like(path: Path) -> tuple[Grid, str]:
    """The inversion grid of a case (config TOML or directory: its [grid], else its footprint
    store), of a footprint store (.h5) or of a NetCDF file with lat/lon; and a description."""
    from transport.store import FootprintStore

    path = Path(path)
    if path.is_dir() or path.suffix == ".toml":
        from .config import load_config

        config = load_config(path)
        if config.grid is not None:
            return config.grid.to_grid(), f"[grid] of {config.source}"
        return FootprintStore(config.transport.footprints).grid, str(config.transport.footprints)
    if path.suffix in (".h5", ".hdf5"):
        return FootprintStore(path).grid, str(path)
    return netcdf_grid(open_netcdf(path, "grid template"), path), str(path)


def netcdf_grid(ds: xr.Dataset, path: Path) -> Grid:
    """The grid of a NetCDF file's lat/lon coordinates (its lat_bnds/lon_bnds when present)."""
    lat = coordinate(ds, path, ("lat", "latitude"))
    lon = coordinate(ds, path, ("lon", "longitude"))
    try:
        if "lat_bnds" in ds and "lon_bnds" in ds:
            return Grid(lat=lat, lon=lon, lat_bounds=ds["lat_bnds"].values, lon_bounds=ds["lon_bnds"].values)
        return Grid.from_centres(lat, lon)
    except ValueError as exc:
        raise InputError(path, "lat/lon", f"not a usable lat/lon grid ({exc})", "give a rectilinear grid") from None


def grid_from_spec(spec: str, option: str = "--grid") -> Grid:
    """An existing path means :func:`grid_like`; anything else must be six numbers."""
    return grid_like(Path(spec))[0] if Path(spec).exists() else parse_grid(spec, option)
