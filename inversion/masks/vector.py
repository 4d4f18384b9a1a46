"""Regions from a user's vector file (shapefile, GeoPackage, GeoJSON, … — anything GDAL reads)
through geopandas/pyogrio.

* One region per distinct value of the name column (default ``name``); features sharing a
  name are merged (e.g. a province given as several islands).
* Coordinates must end up as longitude/latitude: a file in a projected CRS is reprojected to
  EPSG:4326 (its vertices; edges stay straight between them), a geographic CRS other than
  WGS 84 likewise.  A file without CRS information is refused unless ``assume_crs`` names
  one; a file whose coordinates cannot be degrees (|lat| > 90 or |lon| > 540) is refused as
  "projected coordinates without CRS" — GeoJSON readers report WGS 84 for every GeoJSON, so
  that is the only way to catch metres in a GeoJSON.
* Empty or missing geometries, non-polygon geometries and missing names are errors (nothing
  is dropped silently).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from transport.errors import InputError

from ..progress import log
from .shapes import RegionShape, shape_from_lonlat

DEFAULT_NAME_COLUMN = "name"
_EXTRA_HINT = "install the regions extra: pip install 'tanhui[regions]'"


def read_vector_regions(path: Path, name_column: str | None = None, assume_crs: str | None = None) -> list[RegionShape]:
    """Region shapes from a vector file, in the file's order of first appearance of each name."""
    try:
        import geopandas
    except ImportError as exc:
        raise InputError(path, None, "reading vector files needs geopandas and pyogrio", _EXTRA_HINT) from exc
    path = Path(path)
    if not path.exists():
        raise InputError(path, None, "vector file not found", "check the path given to --source")
    try:
        gdf = geopandas.read_file(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError/DataLayerError types
        raise InputError(path, None, f"cannot read as a vector file ({exc})",
                         "give a shapefile, GeoPackage or GeoJSON readable by GDAL") from exc
    column = name_column or DEFAULT_NAME_COLUMN
    if column not in gdf.columns:
        attrs = [c for c in gdf.columns if c != gdf.geometry.name]
        raise InputError(path, column, "name column not found",
                         f"name the column after a colon, e.g. {path.name}:COLUMN; columns: {', '.join(attrs) or 'none'}")
    gdf = _to_lonlat(gdf, path, assume_crs)
    geom = gdf.geometry
    missing = np.flatnonzero(geom.isna().to_numpy() | geom.is_empty.to_numpy())
    if missing.size:
        raise InputError(path, "geometry", f"{missing.size} features have no geometry (e.g. feature {missing[0]})",
                         "remove them or give them polygons")
    kinds = set(geom.geom_type) - {"Polygon", "MultiPolygon"}
    if kinds:
        raise InputError(path, "geometry", f"non-polygon geometries ({', '.join(sorted(kinds))})",
                         "regions must be polygons or multipolygons")
    names = gdf[column]
    if names.isna().any():
        raise InputError(path, column, f"{int(names.isna().sum())} features have no name", "give every feature a name")
    labels = names.astype(str).to_numpy()
    out = []
    for label in dict.fromkeys(labels):
        out.append(shape_from_lonlat(label, label, f"{path.name}:{column}", geom.to_numpy()[labels == label]))
    log.info("%s: %d features → %d regions (column %r, CRS %s)", path, len(gdf), len(out), column, gdf.crs)
    return out


def _to_lonlat(gdf, path: Path, assume_crs: str | None):
    """The frame in EPSG:4326 degrees, or an InputError."""
    x0, y0, x1, y1 = gdf.total_bounds
    looks_projected = not (-90.0 <= y0 and y1 <= 90.0 and -540.0 <= x0 and x1 <= 540.0)
    crs = gdf.crs
    if crs is None and assume_crs is None:
        problem = (f"coordinates span x {x0:.6g}…{x1:.6g}, y {y0:.6g}…{y1:.6g}: a projected CRS"
                   if looks_projected else "the coordinates could be degrees")
        raise InputError(path, "crs", f"no CRS information and {problem}",
                         "add the CRS to the file (e.g. the .prj of a shapefile: ogr2ogr -a_srs EPSG:NNNN), or "
                         "pass --crs EPSG:NNNN to say which CRS the coordinates are in")
    if crs is None:
        gdf = gdf.set_crs(assume_crs)
        crs = gdf.crs
    if crs.is_geographic and looks_projected:
        raise InputError(path, "crs", f"the file says {crs.name} (degrees) but its coordinates span x "
                         f"{x0:.6g}…{x1:.6g}, y {y0:.6g}…{y1:.6g}: projected coordinates without CRS information",
                         "write the file with its real CRS (GeoJSON: reproject to EPSG:4326 first), or pass "
                         "a shapefile/GeoPackage that carries its CRS")
    if crs.to_epsg() != 4326:
        log.info("%s: reprojecting from %s to EPSG:4326", path, crs.name)
        gdf = gdf.to_crs("EPSG:4326")
    return gdf
