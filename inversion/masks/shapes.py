"""Region polygons in the Lambert cylindrical equal-area plane.

Every region is held as polygons in the plane x = λ (radians), y = sin φ.  This map is
equal-area: a region's area on the sphere of radius R is R² times its planar area, and a grid
cell [λ₁, λ₂] × [φ₁, φ₂] is the rectangle [λ₁, λ₂] × [sin φ₁, sin φ₂] of planar area
(λ₂ − λ₁)(sin φ₂ − sin φ₁) = cell area / R².  So the fraction of a cell inside a region is the
exact ratio of two planar areas (see :mod:`.fraction`).  Polygon edges are straight segments
between vertices in this plane; for boundaries digitised every ~0.1–1 km (DCW, official
shapefiles) the difference to straight segments in (λ, φ) is far below a square metre per edge.

A :class:`RegionShape` holds **valid, pairwise non-overlapping** polygons (``parts``), so the
region's area and its cell fractions are plain sums over parts.  Building one:

* rings are made valid (GEOS ``make_valid``, method ``structure``: self-touching coastlines
  are common in digitised data);
* parts whose interiors intersect (duplicated rings, an islet ring drawn inside a mainland
  ring) are merged by union, per connected group only, which keeps countries with thousands of
  disjoint islands fast;
* holes (enclaves, flagged in the source) are subtracted from the parts they intersect.

shapely is imported here, so this module is only imported by ``tanhui regions`` commands.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from transport.grid import EARTH_RADIUS_M

TWO_PI = 2.0 * np.pi


def to_plane(lon_deg: np.ndarray, lat_deg: np.ndarray) -> np.ndarray:
    """(n, 2) equal-area plane coordinates (λ in radians, sin φ) of points in degrees."""
    return np.column_stack([np.radians(lon_deg), np.sin(np.radians(lat_deg))])


def _plane_transform(coords: np.ndarray) -> np.ndarray:
    return to_plane(coords[:, 0], coords[:, 1])


@dataclass(frozen=True, eq=False)
class RegionShape:
    """A named region: valid, pairwise non-overlapping polygons in the equal-area plane."""

    name: str
    code: str
    parts: np.ndarray  # object array of shapely Polygons
    source: str

    @property
    def area_m2(self) -> float:
        """Area on the sphere (m²): R² × planar area."""
        return float(EARTH_RADIUS_M**2 * shapely.area(self.parts).sum())


def _polygons_only(geometries: np.ndarray) -> np.ndarray:
    """Explode (multi)polygons and collections into single non-empty polygons."""
    parts = shapely.get_parts(np.asarray(geometries, dtype=object))
    # make_valid may return collections; flatten once more and keep areal pieces.
    parts = shapely.get_parts(parts)
    keep = (shapely.get_type_id(parts) == shapely.GeometryType.POLYGON) & (shapely.area(parts) > 0)
    return parts[keep]


def disjoint_parts(polygons: np.ndarray) -> np.ndarray:
    """Valid polygons covering the union of ``polygons`` with no two overlapping.

    Polygons are repaired with ``make_valid`` (structure method), then merged by union within
    each connected group of polygons whose interiors intersect (STRtree query + connected
    components)."""
    polys = _polygons_only(shapely.make_valid(np.asarray(polygons, dtype=object), method="structure",
                                              keep_collapsed=False))
    if polys.size <= 1:
        return polys
    # Candidate pairs by bounding box, then the exact test with the larger polygon prepared
    # (testing a 445 000-vertex mainland unprepared against each islet is quadratic).
    i, j = shapely.STRtree(polys).query(polys)
    i, j = i[i < j], j[i < j]
    size = shapely.get_num_coordinates(polys)
    big, small = np.where(size[i] >= size[j], i, j), np.where(size[i] >= size[j], j, i)
    shapely.prepare(polys)
    # Only interiors that intersect matter: pieces touching at a point or along an edge
    # (common after make_valid splits a self-touching ring) add up without double counting.
    hit = shapely.intersects(polys[big], polys[small]) & ~shapely.touches(polys[big], polys[small])
    shapely.destroy_prepared(polys)
    i, j = big[hit], small[hit]
    graph = coo_matrix((np.ones(i.size), (i, j)), shape=(polys.size, polys.size))
    n_groups, label = connected_components(graph, directed=False)
    if n_groups == polys.size:
        return polys
    merged = [polys[label == g][0] if np.count_nonzero(label == g) == 1 else shapely.union_all(polys[label == g])
              for g in range(n_groups)]
    return _polygons_only(np.array(merged, dtype=object))


def subtract_holes(parts: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """Remove the hole polygons from the parts they intersect."""
    if holes.size == 0:
        return parts
    hole = shapely.union_all(shapely.make_valid(holes, method="structure", keep_collapsed=False))
    hit = shapely.intersects(parts, hole)
    if not hit.any():
        return parts
    out = parts.copy()
    out[hit] = shapely.difference(parts[hit], hole)
    return _polygons_only(out)


def shape_from_rings(name: str, code: str, source: str, perimeters: list[np.ndarray],
                     holes: list[np.ndarray]) -> RegionShape:
    """Region from rings given as (n, 2) equal-area plane coordinates: union of the
    perimeter rings minus the hole rings."""
    outer = np.array([shapely.polygons(r) for r in perimeters], dtype=object)
    inner = np.array([shapely.polygons(r) for r in holes], dtype=object)
    parts = subtract_holes(disjoint_parts(outer), inner)
    return RegionShape(name=name, code=code, parts=parts, source=source)


def shape_from_lonlat(name: str, code: str, source: str, geometries) -> RegionShape:
    """Region from shapely (multi)polygons in longitude/latitude degrees (EPSG:4326 axis
    order x = lon, y = lat), e.g. from a GeoJSON file or built by hand."""
    geoms = np.atleast_1d(np.asarray(geometries, dtype=object))
    plane = shapely.transform(geoms, _plane_transform)
    return RegionShape(name=name, code=code, parts=disjoint_parts(plane), source=source)
