"""Fractional region masks from polygons (inversion.masks) — no DCW data needed.

Reference values are computed independently: for rectangles in longitude/latitude the
fraction of a cell inside is exact in closed form on the sphere,
|[λ₁,λ₂] ∩ [a,b]| · |[sin φ₁, sin φ₂] ∩ [sin c, sin d]| / ((λ₂ − λ₁)(sin φ₂ − sin φ₁)).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

shapely = pytest.importorskip("shapely", reason="building masks needs the regions extra (shapely)")
from shapely.geometry import MultiPolygon, Polygon, box  # noqa: E402

from inversion.gridspec import grid_like, parse_grid  # noqa: E402
from inversion.masks.build import build_masks, write_masks  # noqa: E402
from inversion.masks.fraction import region_fraction, region_fractions, resolve_overlaps  # noqa: E402
from inversion.masks.shapes import shape_from_lonlat  # noqa: E402
from inversion.regions import read_regions  # noqa: E402
from transport.errors import InputError  # noqa: E402
from transport.grid import Grid  # noqa: E402


def rectangle_fraction(grid: Grid, lon0: float, lon1: float, lat0: float, lat1: float) -> np.ndarray:
    """Closed-form fraction of each cell inside the lon/lat rectangle."""
    dx = np.clip(np.minimum(grid.lon_bounds[:, 1], lon1) - np.maximum(grid.lon_bounds[:, 0], lon0), 0, None)
    s = np.sin(np.radians(grid.lat_bounds))
    dy = np.clip(np.minimum(s[:, 1], np.sin(np.radians(lat1))) - np.maximum(s[:, 0], np.sin(np.radians(lat0))), 0, None)
    return np.outer(dy / (s[:, 1] - s[:, 0]), dx / (grid.lon_bounds[:, 1] - grid.lon_bounds[:, 0]))


GRID = Grid.regular(28.0, 36.0, 108.0, 118.0, 0.5, 0.5)


def test_rectangle_fraction_is_exact_on_the_sphere():
    shape = shape_from_lonlat("r", "r", "test", box(109.3, 29.1, 114.85, 33.77))
    got = region_fraction(shape, GRID)
    np.testing.assert_allclose(got, rectangle_fraction(GRID, 109.3, 114.85, 29.1, 33.77), rtol=0, atol=1e-12)
    assert got.max() == 1.0 and (got == 1.0).sum() > 50  # interior cells are exactly 1


def test_polygon_with_hole_and_island():
    outer = box(109.0, 29.0, 115.0, 34.0)
    hole = box(110.2, 30.3, 112.7, 32.1)
    island = box(116.1, 34.6, 117.3, 35.2)
    geom = MultiPolygon([Polygon(outer.exterior.coords, [hole.exterior.coords]), island])
    got = region_fraction(shape_from_lonlat("r", "r", "test", geom), GRID)
    expected = (rectangle_fraction(GRID, 109.0, 115.0, 29.0, 34.0) - rectangle_fraction(GRID, 110.2, 112.7, 30.3, 32.1)
                + rectangle_fraction(GRID, 116.1, 117.3, 34.6, 35.2))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_irregular_polygon_matches_cell_by_cell_overlay_and_its_area():
    """The recursive clipping equals a direct GEOS intersection with every cell, and the
    fractions times the cell areas add up to the polygon's area on the sphere."""
    rng = np.random.default_rng(3)
    angle = np.sort(rng.uniform(0, 2 * np.pi, 60))
    radius = rng.uniform(1.0, 3.5, 60)
    ring = np.column_stack([113 + radius * np.cos(angle), 32 + 0.8 * radius * np.sin(angle)])
    shape = shape_from_lonlat("blob", "blob", "test", Polygon(ring))
    got = region_fraction(shape, GRID)
    # direct: every cell as a rectangle in the equal-area plane, intersected with the polygon
    part = shapely.union_all(shape.parts)
    x = np.radians(GRID.lon_bounds)
    y = np.sin(np.radians(GRID.lat_bounds))
    cells = [box(x[j, 0], y[i, 0], x[j, 1], y[i, 1]) for i in range(GRID.shape[0]) for j in range(GRID.shape[1])]
    direct = shapely.area(shapely.intersection(np.array(cells), part)) / shapely.area(np.array(cells))
    np.testing.assert_allclose(got.ravel(), direct, rtol=0, atol=1e-12)
    assert (got * GRID.cell_area()).sum() == pytest.approx(shape.area_m2, rel=1e-12)
    # the same polygon's area does not depend on the grid it is measured on
    other = Grid.regular(25.05, 39.85, 105.1, 120.1, 0.37, 0.3)
    assert (region_fraction(shape, other) * other.cell_area()).sum() == pytest.approx(shape.area_m2, rel=1e-12)


def test_longitudes_0_360_and_180_give_the_same_mask():
    """A region straddling the antimeridian, given in 0–360° and as two −180–180° pieces, on a
    0–360° grid and on a −180–180° grid."""
    east = box(175.0, -20.0, 185.0, -15.0)  # 0–360 convention
    split = MultiPolygon([box(175.0, -20.0, 180.0, -15.0), box(-180.0, -20.0, -175.0, -15.0)])
    g360 = Grid.regular(-25.0, -10.0, 170.0, 190.0, 0.5, 0.5)
    g180 = Grid.regular(-25.0, -10.0, -180.0, 180.0, 0.5, 0.5)
    a = region_fraction(shape_from_lonlat("a", "a", "t", east), g360)
    b = region_fraction(shape_from_lonlat("b", "b", "t", split), g360)
    np.testing.assert_array_equal(a > 0, b > 0)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a, rectangle_fraction(g360, 175.0, 185.0, -20.0, -15.0), rtol=0, atol=1e-12)
    c = region_fraction(shape_from_lonlat("c", "c", "t", east), g180)
    cols = np.r_[np.arange(700, 720), np.arange(0, 20)]  # 170…180 then −180…−170 ≡ 180…190
    np.testing.assert_allclose(c[:, cols], a, rtol=0, atol=1e-12)
    assert (c * g180.cell_area()).sum() == pytest.approx((a * g360.cell_area()).sum(), rel=1e-12)


def test_overlaps_are_refused_or_shared_within_tolerance():
    a = shape_from_lonlat("A", "A", "t", box(109.0, 29.0, 113.0, 33.0))
    b = shape_from_lonlat("B", "B", "t", box(112.0, 30.0, 116.0, 34.0))
    f = region_fractions([a, b], GRID)
    with pytest.raises(InputError, match=r"regions overlap.*A \(with B\)"):
        resolve_overlaps(f, ["A", "B"], 0.01, GRID.cell_area())
    # a sliver 0.001° wide along a shared border: shared in proportion, sums to 1 at most
    c = shape_from_lonlat("C", "C", "t", box(113.0 - 0.001, 29.0, 116.0, 33.0))
    f = region_fractions([a, c], GRID)
    assert f.sum(axis=0).max() > 1.0
    fixed = resolve_overlaps(f, ["A", "C"], 0.01, GRID.cell_area())
    assert fixed.sum(axis=0).max() <= 1.0 + 1e-12
    np.testing.assert_allclose(fixed.sum(axis=0), np.minimum(f.sum(axis=0), 1.0), atol=1e-12)


def _frame(crs="EPSG:4326"):
    geopandas = pytest.importorskip("geopandas", reason="vector files need the regions extra (geopandas)")
    outer = box(109.0, 29.0, 113.5, 33.0)
    province = MultiPolygon([Polygon(outer.exterior.coords, [box(110.1, 30.2, 111.0, 31.3).exterior.coords]),
                             box(113.9, 29.2, 114.6, 29.9)])
    other = Polygon([(113.5, 30.0), (117.5, 31.0), (116.0, 35.5), (113.5, 34.0)])
    return geopandas.GeoDataFrame({"NAME_1": ["Alpha", "Beta"]}, geometry=[province, other], crs=crs)


def test_geojson_geopackage_and_shapely_give_identical_masks(tmp_path: Path):
    frame = _frame()
    frame.to_file(tmp_path / "p.geojson", driver="GeoJSON")
    frame.to_file(tmp_path / "p.gpkg", driver="GPKG")
    from_json = build_masks([f"{tmp_path / 'p.geojson'}:NAME_1"], GRID)
    from_gpkg = build_masks([f"{tmp_path / 'p.gpkg'}:NAME_1"], GRID)
    direct = region_fractions([shape_from_lonlat(n, n, "t", g) for n, g in zip(frame["NAME_1"], frame.geometry)], GRID)
    direct = resolve_overlaps(direct, ["Alpha", "Beta"], 0.01, GRID.cell_area())
    assert from_json.names == from_gpkg.names == ("Alpha", "Beta")
    np.testing.assert_allclose(from_json.fraction, direct, rtol=0, atol=1e-12)
    np.testing.assert_allclose(from_gpkg.fraction, direct, rtol=0, atol=1e-12)
    # a projected CRS that the file declares is reprojected: Web Mercator keeps these
    # rectangles' edges on parallels and meridians, so the masks agree
    frame.to_crs("EPSG:3857").to_file(tmp_path / "merc.gpkg", driver="GPKG")
    merc = build_masks([f"{tmp_path / 'merc.gpkg'}:NAME_1"], GRID)
    np.testing.assert_allclose(merc.fraction[0], direct[0], rtol=0, atol=1e-9)


@pytest.mark.filterwarnings("ignore:'crs' was not provided")  # writing the files without CRS is the point
def test_vector_file_errors(tmp_path: Path):
    frame = _frame()
    frame.to_crs("EPSG:3857").set_crs(None, allow_override=True).to_file(tmp_path / "nocrs.shp")
    assert not (tmp_path / "nocrs.prj").exists()
    with pytest.raises(InputError, match="no CRS information and coordinates span .*projected CRS"):
        build_masks([f"{tmp_path / 'nocrs.shp'}:NAME_1"], GRID)
    # metres in a GeoJSON (whose readers always report WGS 84)
    bad = frame.to_crs("EPSG:3857").set_crs("EPSG:4326", allow_override=True)
    bad.to_file(tmp_path / "metres.geojson", driver="GeoJSON")
    with pytest.raises(InputError, match="projected coordinates without CRS information"):
        build_masks([f"{tmp_path / 'metres.geojson'}:NAME_1"], GRID)
    # degrees without CRS: refused unless the CRS is given
    frame.set_crs(None, allow_override=True).to_file(tmp_path / "deg.shp")
    with pytest.raises(InputError, match="--crs"):
        build_masks([f"{tmp_path / 'deg.shp'}:NAME_1"], GRID)
    ok = build_masks([f"{tmp_path / 'deg.shp'}:NAME_1"], GRID, assume_crs="EPSG:4326")
    assert ok.names == ("Alpha", "Beta")
    with pytest.raises(InputError, match="name column not found.*NAME_1"):
        build_masks([f"{tmp_path / 'deg.shp'}:PROVINCE"], GRID, assume_crs="EPSG:4326")


def test_mask_file_round_trip_and_conservative_remap(tmp_path: Path):
    frame = _frame()
    frame.to_file(tmp_path / "p.gpkg", driver="GPKG")
    fine = Grid.regular(28.0, 36.0, 108.0, 118.0, 0.25, 0.25)
    masks = build_masks([f"{tmp_path / 'p.gpkg'}:NAME_1"], fine)
    write_masks(masks, tmp_path / "fine.nc")
    regions = read_regions(tmp_path / "fine.nc", fine, "test grid")
    assert regions.names == ("Alpha", "Beta")
    np.testing.assert_array_equal(regions.fraction, masks.fraction)
    ds = xr.open_dataset(tmp_path / "fine.nc", engine="h5netcdf")
    assert "region_code" in ds and "p.gpkg" in ds.attrs["sources"] and "sha256:p.gpkg" in ds.attrs
    # remapping the 0.25° mask onto the 0.5° grid gives the mask built on the 0.5° grid
    # (area fractions are exactly additive over nested cells)
    coarse = build_masks([str(tmp_path / "fine.nc")], GRID)
    direct = build_masks([f"{tmp_path / 'p.gpkg'}:NAME_1"], GRID)
    np.testing.assert_allclose(coarse.fraction, direct.fraction, rtol=0, atol=1e-12)
    # a mask on another grid is refused by the inversion, with the remedy
    with pytest.raises(InputError, match="tanhui regions build --like"):
        read_regions(tmp_path / "fine.nc", GRID, "footprints.h5")
    # a target grid the mask does not cover, with regions touching the mask's edge: refused
    touching = build_masks([f"{tmp_path / 'p.gpkg'}:NAME_1"], Grid.regular(29.0, 34.0, 109.0, 115.0, 0.25, 0.25))
    write_masks(touching, tmp_path / "touching.nc")
    with pytest.raises(InputError, match="does not cover the target grid"):
        build_masks([str(tmp_path / "touching.nc")], GRID)


def test_grid_options_and_empty_regions(tmp_path: Path):
    assert parse_grid("15,55,73,136,0.5,0.5").shape == (80, 126)
    with pytest.raises(InputError, match="--grid"):
        parse_grid("15,55,73,136,0.5")
    frame = _frame()
    frame.to_file(tmp_path / "p.geojson", driver="GeoJSON")
    with pytest.raises(InputError, match="no part on the grid.*Alpha"):
        build_masks([f"{tmp_path / 'p.geojson'}:NAME_1"], Grid.regular(-10.0, 0.0, 0.0, 10.0, 1.0, 1.0))
    write_masks(build_masks([f"{tmp_path / 'p.geojson'}:NAME_1"], GRID), tmp_path / "m.nc")
    grid, _ = grid_like(tmp_path / "m.nc")
    assert grid.same_as(GRID)
