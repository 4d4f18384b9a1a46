"""Region masks: the fraction of each grid cell in each region.

File format (NetCDF): ``region_fraction(region, lat, lon)`` in [0, 1] with a string
coordinate ``region`` (names); per cell the fractions sum to at most 1 (the rest is not
optimised).  Cells outside every region keep their prior flux.  Masks written by
``tanhui regions build`` (:mod:`inversion.masks`) also carry ``region_code``, areas, cell
bounds and provenance, which are not needed here.

In memory the masks are one sparse matrix M (n_region × n_cell, CSR), M[r, c] = m_r(c) the
fraction of cell c (flattened (lat, lon), C order) inside region r: a region covers few cells,
so M holds Σ_r (cells of r) values where a dense (n_region, nlat, nlon) array would hold
n_region × n_cell (564 MB for one region per cell of a 70 × 120 grid).  ``state.regions =
"grid"`` makes every cell its own region (M = I) without a file (:meth:`Regions.grid_cells`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from transport.errors import InputError
from transport.grid import Grid, great_circle_km

from .io import check_same_grid, netcdf_reader, require_variables

_SUM_TOLERANCE = 1e-6
_CHUNK_VALUES = 1 << 22  # values of region_fraction read per slice of regions (32 MB as float64)
GRID_CELLS = "grid"  # state.regions value: every grid cell is a region


@dataclass(frozen=True, eq=False, init=False)
class Regions:
    """``names`` (n_region,), ``matrix`` M (n_region × n_cell CSR, float64, dimensionless in
    [0, 1], no stored zeros, sorted indices) on ``grid``.

    Built from M (``matrix=``) or, for small sets, from a dense (n_region, nlat, nlon)
    ``fraction=`` array."""

    names: tuple[str, ...]
    matrix: sp.csr_matrix
    grid: Grid

    def __init__(self, names, grid: Grid, matrix=None, *, fraction: np.ndarray | None = None):
        if (matrix is None) == (fraction is None):
            raise ValueError("give exactly one of matrix (n_region × n_cell sparse) and fraction (dense)")
        names = tuple(names)
        if fraction is not None:
            fraction = np.asarray(fraction, dtype=np.float64)
            if fraction.shape != (len(names),) + grid.shape:
                raise ValueError(f"fraction has shape {fraction.shape}, expected {(len(names),) + grid.shape}")
            matrix = fraction.reshape(len(names), grid.size)
        matrix = sp.csr_matrix(matrix, dtype=np.float64)
        if matrix.shape != (len(names), grid.size):
            raise ValueError(f"matrix has shape {matrix.shape}, expected ({len(names)}, {grid.size})")
        matrix.sum_duplicates()  # canonical: sorted indices, no duplicates
        matrix.eliminate_zeros()
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "grid", grid)

    @classmethod
    def grid_cells(cls, grid: Grid) -> Regions:
        """Every grid cell its own region (M = I), named ``cell_<lat index>_<lon index>``
        (0-based, zero-padded), in the cells' C order."""
        nlat, nlon = grid.shape
        wi, wj = len(str(nlat - 1)), len(str(nlon - 1))
        names = tuple(f"cell_{i:0{wi}d}_{j:0{wj}d}" for i in range(nlat) for j in range(nlon))
        return cls(names, grid, sp.identity(grid.size, dtype=np.float64, format="csr"))

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def fraction(self) -> np.ndarray:
        """M as a dense (n_region, nlat, nlon) array, a new copy of n_region × n_cell × 8 B:
        for small region sets only (report files, tests); computations use :attr:`matrix`."""
        return self.matrix.toarray().reshape((self.size,) + self.grid.shape)

    def coverage(self) -> np.ndarray:
        """Σ_r m_r per cell (nlat, nlon): the share of each cell that some region covers."""
        return np.asarray(self.matrix.sum(axis=0)).reshape(self.grid.shape)

    def area_m2(self) -> np.ndarray:
        """Area of each region on the grid, Σ_c m_r(c) A_c (m²)."""
        return self.matrix @ self.grid.cell_area().ravel()

    def same_as(self, other: Regions) -> bool:
        """Same names, grid and fractions (exactly)."""
        return (self.names == other.names and self.grid.same_as(other.grid)
                and (self.matrix != other.matrix).nnz == 0)

    def centroids(self) -> tuple[np.ndarray, np.ndarray]:
        """Area-weighted centroid (lat, lon in degrees) of each region, via 3-D unit vectors."""
        lat, lon = np.meshgrid(np.radians(self.grid.lat), np.radians(self.grid.lon), indexing="ij")
        xyz = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1).reshape(-1, 3)
        w = self.matrix.multiply(self.grid.cell_area().reshape(1, -1)).tocsr()  # m_r A_c, m²
        v = w @ xyz  # (n_region, 3)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return np.degrees(np.arcsin(v[:, 2])), np.degrees(np.arctan2(v[:, 1], v[:, 0]))

    def distance_km(self) -> np.ndarray:
        """Great-circle distance between region centroids (n_region × n_region, km)."""
        lat, lon = self.centroids()
        return great_circle_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])


def state_regions(spec: Path | str, grid: Grid, grid_source: str) -> Regions:
    """The regions of ``state.regions``: :meth:`Regions.grid_cells` for ``"grid"``, else the
    mask file (:func:`read_regions`)."""
    if str(spec) == GRID_CELLS:
        return Regions.grid_cells(grid)
    return read_regions(Path(spec), grid, grid_source)


def read_regions(path: Path, grid: Grid, grid_source: str) -> Regions:
    """Read and check a mask file.  ``region_fraction`` is read in slices of regions (about
    2²² values each) and kept sparse, so memory follows the non-zero fractions, not
    n_region × n_cell."""
    with netcdf_reader(path, "region mask") as ds:
        require_variables(ds, path, ["region_fraction"], "region mask")
        try:
            check_same_grid(ds, path, grid, "region mask", grid_source)
        except InputError as exc:
            raise InputError(path, exc.variable, exc.problem, f"remap it (exactly, conservatively) with `tanhui "
                             f"regions build --like {grid_source} --source {path} --out NEW.nc`, or rebuild it from "
                             "its polygons for this grid") from None
        var = ds["region_fraction"]
        if var.dims[0] != "region" or var.ndim != 3:
            raise InputError(path, "region_fraction", f"dimensions are {var.dims}", "expected (region, lat, lon)")
        names = tuple(str(n) for n in ds["region"].values) if "region" in ds.coords else ()
        n_region = var.shape[0]
        if len(names) != n_region:
            raise InputError(path, "region", "region names missing", "add a string coordinate 'region'")
        if len(set(names)) != len(names):
            raise InputError(path, "region", "duplicate region names", "give every region a unique name")
        step = max(1, _CHUNK_VALUES // grid.size)
        blocks, bad, total = [], 0, np.zeros(grid.size)
        for k0 in range(0, n_region, step):
            chunk = np.asarray(var[k0:k0 + step].values, dtype=np.float64).reshape(-1, grid.size)
            wrong = ~np.isfinite(chunk) | (chunk < 0) | (chunk > 1 + _SUM_TOLERANCE)
            bad += int(wrong.sum())
            if bad:
                continue  # count every bad value, build nothing more
            total += chunk.sum(axis=0)
            blocks.append(sp.csr_matrix(np.minimum(chunk, 1.0)))
    if bad:
        raise InputError(path, "region_fraction", f"{bad} values are NaN or outside [0, 1]",
                         "fractions must be finite numbers in [0, 1]")
    if (total > 1 + _SUM_TOLERANCE).any():
        raise InputError(path, "region_fraction", f"fractions of {int((total > 1 + _SUM_TOLERANCE).sum())} "
                         f"cells sum to more than 1 (max {total.max():.6f})", "regions must not overlap")
    matrix = sp.vstack(blocks, format="csr") if blocks else sp.csr_matrix((0, grid.size))
    empty = [names[r] for r in np.flatnonzero(np.diff(matrix.indptr) == 0)]
    if empty:
        raise InputError(path, "region_fraction", f"regions with no cell on the grid: {', '.join(empty[:5])}",
                         "drop them from the mask")
    return Regions(names, grid, matrix)
