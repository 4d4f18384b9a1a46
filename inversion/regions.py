"""Region masks: the fraction of each grid cell in each region.

File format (NetCDF): ``region_fraction(region, lat, lon)`` in [0, 1] with a string
coordinate ``region`` (names); per cell the fractions sum to at most 1 (the rest is not
optimised).  Cells outside every region keep their prior flux.  Masks written by
``tanhui regions build`` (:mod:`inversion.masks`) also carry ``region_code``, areas, cell
bounds and provenance, which are not needed here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from transport.errors import InputError
from transport.grid import Grid, great_circle_km

from .io import check_same_grid, open_netcdf, require_variables

_SUM_TOLERANCE = 1e-6


@dataclass(frozen=True, eq=False)
class Regions:
    names: tuple[str, ...]
    fraction: np.ndarray  # (n_region, nlat, nlon), dimensionless in [0, 1]
    grid: Grid

    @property
    def size(self) -> int:
        return len(self.names)

    def centroids(self) -> tuple[np.ndarray, np.ndarray]:
        """Area-weighted centroid (lat, lon in degrees) of each region, via 3-D unit vectors."""
        area = self.grid.cell_area()
        lat, lon = np.meshgrid(np.radians(self.grid.lat), np.radians(self.grid.lon), indexing="ij")
        xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])
        w = self.fraction * area  # (n_region, nlat, nlon)
        v = np.einsum("rij,cij->rc", w, xyz)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return np.degrees(np.arcsin(v[:, 2])), np.degrees(np.arctan2(v[:, 1], v[:, 0]))

    def distance_km(self) -> np.ndarray:
        """Great-circle distance between region centroids (n_region × n_region, km)."""
        lat, lon = self.centroids()
        return great_circle_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])


def read_regions(path: Path, grid: Grid, grid_source: str) -> Regions:
    ds = open_netcdf(path, "region mask")
    require_variables(ds, path, ["region_fraction"], "region mask")
    try:
        check_same_grid(ds, path, grid, "region mask", grid_source)
    except InputError as exc:
        raise InputError(path, exc.variable, exc.problem, f"remap it (exactly, conservatively) with `tanhui regions "
                         f"build --like {grid_source} --source {path} --out NEW.nc`, or rebuild it from its "
                         "polygons for this grid") from None
    var = ds["region_fraction"]
    if var.dims[0] != "region" or var.ndim != 3:
        raise InputError(path, "region_fraction", f"dimensions are {var.dims}", "expected (region, lat, lon)")
    fraction = np.asarray(var.values, dtype=np.float64)
    names = tuple(str(n) for n in ds["region"].values) if "region" in ds.coords else ()
    if len(names) != fraction.shape[0]:
        raise InputError(path, "region", "region names missing", "add a string coordinate 'region'")
    if len(set(names)) != len(names):
        raise InputError(path, "region", "duplicate region names", "give every region a unique name")
    bad = ~np.isfinite(fraction) | (fraction < 0) | (fraction > 1 + _SUM_TOLERANCE)
    if bad.any():
        raise InputError(path, "region_fraction", f"{int(bad.sum())} values are NaN or outside [0, 1]",
                         "fractions must be finite numbers in [0, 1]")
    total = fraction.sum(axis=0)
    if (total > 1 + _SUM_TOLERANCE).any():
        raise InputError(path, "region_fraction", f"fractions of {int((total > 1 + _SUM_TOLERANCE).sum())} "
                         f"cells sum to more than 1 (max {total.max():.6f})", "regions must not overlap")
    empty = [n for n, f in zip(names, fraction) if not f.any()]
    if empty:
        raise InputError(path, "region_fraction", f"regions with no cell on the grid: {', '.join(empty[:5])}",
                         "drop them from the mask")
    return Regions(names=names, fraction=np.clip(fraction, 0.0, 1.0), grid=grid)
