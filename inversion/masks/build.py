"""``tanhui regions build``: region sources → one mask NetCDF on an inversion grid.

Sources (each ``--source``; their regions are concatenated in order):

==============================  ==============================================================
``dcw:GB,FR,DE``                DCW countries by ISO alpha-2 code or exact name
``dcw:CN.*``                    all provinces of China (``CN.BJ`` … ``CN.ZJ``); ``dcw:CN.BJ,CN.TJ``
``dcw:*``                       every country with land on the grid (e.g. a land mask)
``FILE[:COLUMN]``               shapefile / GeoPackage / GeoJSON, one region per value of COLUMN
                                (default ``name``)
``MASK.nc``                     an existing mask (``region_fraction``); on another grid it is
                                remapped conservatively (exact for area fractions)
==============================  ==============================================================

The written file (atomically) holds ``region_fraction(region, lat, lon)`` (1), the region
names as the ``region`` coordinate, ``region_code(region)``, ``region_area(region)`` (m², the
whole polygon, also outside the grid) and ``region_area_on_grid(region)``, ``lat_bnds``,
``lon_bnds``, ``cell_area`` and provenance attributes (sources, DCW version, sha256 of input
files, method, tanhui version, history).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid
from transport.regrid import ConservativeRegridder

from .. import __version__
from ..gridspec import netcdf_grid
from ..io import open_netcdf, require_variables, write_netcdf
from ..parallel import SerialComm
from ..progress import Progress, log

METHOD = ("exact area fraction of each cell inside each polygon: polygon ∩ cell areas in the Lambert cylindrical "
          "equal-area plane (x = lon, y = sin lat), GEOS rectangle clipping via shapely")
DEFAULT_OVERLAP_TOLERANCE = 0.01


@dataclass(frozen=True, eq=False)
class Masks:
    """Region masks on a grid, with where each came from."""

    names: tuple[str, ...]
    codes: tuple[str, ...]
    fraction: np.ndarray  # (n_region, nlat, nlon), in [0, 1], Σ_r ≤ 1
    area_m2: np.ndarray   # (n_region,) whole region (NaN when only a mask was given)
    grid: Grid
    sources: tuple[str, ...]
    provenance: dict[str, str]


# ---- sources ------------------------------------------------------------------------------
def _split_vector_spec(spec: str) -> tuple[Path, str | None]:
    """``FILE[:COLUMN]``: the part after the last colon is a column unless it is part of an
    existing path."""
    if Path(spec).exists() or ":" not in spec:
        return Path(spec), None
    path, column = spec.rsplit(":", 1)
    return Path(path), (column or None)


def _shapes_masks(shapes, grid: Grid, source: str) -> tuple[list[str], list[str], list[np.ndarray], list[float]]:
    from .fraction import region_fraction

    fractions = []
    with Progress(SerialComm(), f"masks from {source}", len(shapes)) as bar:
        for k, shape in enumerate(shapes):
            fractions.append(region_fraction(shape, grid))
            bar.update(k + 1, shape.name)
    return [s.name for s in shapes], [s.code for s in shapes], fractions, [s.area_m2 for s in shapes]


def _mask_file(path: Path, grid: Grid) -> tuple[list[str], list[str], list[np.ndarray], list[float]]:
    """Regions of an existing mask file, remapped to ``grid`` when its grid differs."""
    ds = open_netcdf(path, "region mask")
    require_variables(ds, path, ["region_fraction"], "region mask")
    var = ds["region_fraction"]
    if var.ndim != 3 or var.dims[0] != "region":
        raise InputError(path, "region_fraction", f"dimensions are {var.dims}", "expected (region, lat, lon)")
    names = [str(n) for n in ds["region"].values] if "region" in ds.coords else []
    if len(names) != var.shape[0]:
        raise InputError(path, "region", "region names missing", "add a string coordinate 'region'")
    codes = [str(c) for c in ds["region_code"].values] if "region_code" in ds else names
    area = [float(a) for a in ds["region_area"].values] if "region_area" in ds else [np.nan] * len(names)
    fraction = np.asarray(var.values, dtype=np.float64)
    if not np.all(np.isfinite(fraction)) or fraction.min() < 0 or fraction.max() > 1 + 1e-6:
        raise InputError(path, "region_fraction", "values are NaN or outside [0, 1]", "fractions must lie in [0, 1]")
    source_grid = netcdf_grid(ds, path)
    if source_grid.same_as(grid):
        return names, codes, list(fraction), area
    regrid = ConservativeRegridder(source_grid, grid)
    covered = regrid.coverage()
    on_border = np.concatenate([fraction[:, [0, -1], :].ravel(), fraction[:, :, [0, -1]].ravel()]).max()
    if (covered < 1 - 1e-9).any() and on_border > 0:
        raise InputError(path, "lat/lon", f"the mask's grid ({source_grid.describe()}) does not cover the target grid "
                         f"({grid.describe()}) and its regions reach the edge of its grid, so their extent outside "
                         "it is unknown", "build the mask on a grid that covers the target grid")
    # Area-weighted mean over the covered part × covered share = Σ A_ov m / A_target; uncovered
    # parts lie outside every region (the regions end inside the source grid).
    with np.errstate(invalid="ignore"):
        out = np.nan_to_num(regrid.intensive(fraction)) * covered[None]
    log.info("%s: remapped conservatively from %s to %s", path, source_grid.describe(), grid.describe())
    return names, codes, list(np.clip(out, 0.0, 1.0)), area


def build_masks(sources: list[str], grid: Grid, *, dcw_file: Path | None = None,
                overlap_tolerance: float = DEFAULT_OVERLAP_TOLERANCE, assume_crs: str | None = None) -> Masks:
    """Masks of every region of ``sources`` on ``grid`` (see the module docstring)."""
    if not sources:
        raise InputError(None, "--source", "no region source given", "give at least one --source")
    names: list[str] = []
    codes: list[str] = []
    fractions: list[np.ndarray] = []
    areas: list[float] = []
    provenance: dict[str, str] = {}
    for spec in sources:
        if spec.startswith("dcw:"):
            from .dcw import Dcw

            dcw = Dcw(dcw_file)
            items = [i for i in spec[4:].split(",") if i.strip()]
            if not items:
                raise InputError(None, spec, "no DCW code given", "e.g. dcw:CN.* or dcw:GB,FR,DE")
            if items == ["*"]:  # every country on the grid, e.g. for a land mask
                entries = dcw.countries_overlapping((grid.lat_bounds[0, 0], grid.lat_bounds[-1, 1]),
                                                    (grid.lon_bounds[0, 0], grid.lon_bounds[-1, 1]))
            else:
                entries = dcw.resolve(items, spec)
            shapes = [dcw.shape(e) for e in entries]
            n, c, f, a = _shapes_masks(shapes, grid, spec)
            if items == ["*"]:  # bounding boxes overlap the grid but the country may not
                keep = [k for k, m in enumerate(f) if m.any()]
                n, c, f, a = [n[k] for k in keep], [c[k] for k in keep], [f[k] for k in keep], [a[k] for k in keep]
            provenance["dcw_file"] = str(dcw.path)
            provenance["dcw_version"] = dcw.version
        elif spec.endswith(".nc") and Path(spec).is_file():
            n, c, f, a = _mask_file(Path(spec), grid)
            provenance[f"sha256:{Path(spec).name}"] = _sha256(Path(spec))
        else:
            from .vector import read_vector_regions

            path, column = _split_vector_spec(spec)
            shapes = read_vector_regions(path, column, assume_crs)
            n, c, f, a = _shapes_masks(shapes, grid, spec)
            provenance[f"sha256:{path.name}"] = _sha256(path) if path.is_file() else "directory"
        names += n
        codes += c
        fractions += f
        areas += a
    dupes = sorted({x for x in names if names.count(x) > 1})
    if dupes:
        raise InputError(None, "--source", f"region names occur more than once: {', '.join(dupes[:5])}",
                         "each region may come from one source only")
    fraction = np.stack(fractions)
    empty = [x for x, m in zip(names, fraction) if not m.any()]
    if empty:
        raise InputError(None, "--grid", f"regions with no part on the grid ({grid.describe()}): {', '.join(empty[:8])}",
                         "enlarge the grid or leave these regions out")
    from .fraction import resolve_overlaps

    fraction = resolve_overlaps(fraction, names, overlap_tolerance, grid.cell_area())
    on_grid = np.einsum("rij,ij->r", fraction, grid.cell_area())
    for x, inside, whole in zip(names, on_grid, areas):
        if np.isfinite(whole) and inside < 0.995 * whole:
            log.warning("region %s: only %.1f %% of its area lies on the grid; its totals cover that part only",
                        x, 100 * inside / whole)
    return Masks(names=tuple(names), codes=tuple(codes), fraction=fraction, area_m2=np.array(areas), grid=grid,
                 sources=tuple(sources), provenance=provenance)


def _sha256(path: Path) -> str:
    from ..config import file_sha256

    return file_sha256(path)


def mask_dataset(masks: Masks) -> xr.Dataset:
    grid = masks.grid
    area = grid.cell_area()
    ds = xr.Dataset(
        {
            "region_fraction": (("region", "lat", "lon"), masks.fraction,
                                {"units": "1", "long_name": "fraction of the grid cell's area inside the region"}),
            "region_code": (("region",), list(masks.codes)),
            "region_area": (("region",), masks.area_m2, {"units": "m2", "long_name": "area of the whole region"}),
            "region_area_on_grid": (("region",), np.einsum("rij,ij->r", masks.fraction, area),
                                    {"units": "m2", "long_name": "area of the region on the grid"}),
            "cell_area": (("lat", "lon"), area, {"standard_name": "cell_area", "units": "m2"}),
            "lat_bnds": (("lat", "bnds"), grid.lat_bounds, {"units": "degrees_north"}),
            "lon_bnds": (("lon", "bnds"), grid.lon_bounds, {"units": "degrees_east"}),
        },
        coords={
            "region": ("region", list(masks.names)),
            "lat": ("lat", grid.lat, {"standard_name": "latitude", "units": "degrees_north", "bounds": "lat_bnds"}),
            "lon": ("lon", grid.lon, {"standard_name": "longitude", "units": "degrees_east", "bounds": "lon_bnds"}),
        },
    )
    ds.attrs.update({
        "title": "tanhui region masks",
        "Conventions": "CF-1.8",
        "sources": " ".join(masks.sources),
        "method": METHOD,
        "source": f"tanhui {__version__}",
        "history": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} tanhui regions build "
                   + " ".join(f"--source {s}" for s in masks.sources),
        **masks.provenance,
    })
    return ds


def write_masks(masks: Masks, path: Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_netcdf(mask_dataset(masks), path)
