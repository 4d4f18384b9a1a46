"""Country and province masks from Debian's gmt-dcw (DCW-GMT), checked against official areas.

Areas are Σ fraction × cell area on a grid finer than the country's features matter for
(the fractions are exact, so the grid only has to cover the country).  Reference areas
(total area, inland water included, as DCW outlines include lakes):

* United Kingdom 242 495 km² (ONS), Switzerland 41 285 km² (Swiss Federal Statistical Office),
  New Zealand 268 021 km² (Stats NZ), South Africa 1 221 037 km² (Stats SA);
* China: 9 596 961 km² (UN Demographic Yearbook, the "9.6 million km²") counts South Tibet
  (Arunachal Pradesh, 83 743 km²), which DCW draws in India (IN); the union of DCW's
  provinces (Taiwan, Hong Kong and Macao included) is compared with 9 596 961 − 83 743 km².
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("shapely", reason="building masks needs the regions extra (shapely)")

from inversion.masks.build import build_masks  # noqa: E402
from inversion.masks.dcw import Dcw, default_dcw_file  # noqa: E402
from inversion.masks.fraction import region_fraction  # noqa: E402
from transport.errors import InputError  # noqa: E402
from transport.grid import Grid  # noqa: E402

pytestmark = pytest.mark.skipif(not default_dcw_file().is_file(),
                                reason=f"{default_dcw_file()} absent: install Debian's gmt-dcw (.ci/run does)")


@pytest.fixture(scope="module")
def dcw() -> Dcw:
    return Dcw()


def area_km2(dcw: Dcw, code: str, grid: Grid) -> float:
    shape = dcw.shape(dcw.resolve([code], "test")[0])
    return float((region_fraction(shape, grid) * grid.cell_area()).sum() / 1e6)


@pytest.mark.parametrize("code, grid, reference_km2", [
    ("GB", Grid.regular(49.0, 61.0, -9.0, 2.0, 0.1, 0.1), 242_495.0),
    ("CH", Grid.regular(45.5, 48.0, 5.5, 11.0, 0.05, 0.05), 41_285.0),
    ("NZ", Grid.regular(-53.0, -29.0, 165.0, 180.0, 0.1, 0.1), 268_021.0),
    ("ZA", Grid.regular(-35.0, -22.0, 16.0, 33.0, 0.1, 0.1), 1_221_037.0),  # with Lesotho as a hole
])
def test_country_area_matches_official_area(dcw, code, grid, reference_km2):
    assert area_km2(dcw, code, grid) == pytest.approx(reference_km2, rel=0.015)


def test_china_provinces_area_and_masks(dcw):
    grid = Grid.regular(16.0, 56.0, 72.0, 136.0, 0.25, 0.25)
    masks = build_masks(["dcw:CN.*"], grid)
    assert len(masks.names) == 34 and {"Beijing", "Xinjiang", "Taiwan", "Aomen (Macao)"} <= set(masks.names)
    assert masks.codes[masks.names.index("Beijing")] == "CN.BJ"
    total = masks.fraction.sum(axis=0)
    assert total.max() <= 1.0 + 1e-12  # border slivers between provinces were shared
    china_km2 = float((total * grid.cell_area()).sum() / 1e6)
    assert china_km2 == pytest.approx(9_596_961.0 - 83_743.0, rel=0.015)
    # the whole region fits on the grid, so its area on the grid is that of its polygons
    np.testing.assert_allclose(np.einsum("rij,ij->r", masks.fraction, grid.cell_area()), masks.area_m2, rtol=2e-3)
    beijing = masks.area_m2[masks.names.index("Beijing")] / 1e6
    assert beijing == pytest.approx(16_410.0, rel=0.015)  # Beijing municipality, 16 410 km²


def test_holes_are_cut_out(dcw):
    """Lesotho is a hole of South Africa and San Marino one of Italy: the masks do not overlap."""
    grid = Grid.regular(-31.0, -28.0, 26.5, 30.0, 0.05, 0.05)
    za, ls = (region_fraction(dcw.shape(dcw.resolve([c], "t")[0]), grid) for c in ("ZA", "LS"))
    overlap = np.maximum(za + ls - 1.0, 0.0) * grid.cell_area()
    assert overlap.sum() / (ls * grid.cell_area()).sum() < 1e-3
    assert (ls * grid.cell_area()).sum() / 1e6 == pytest.approx(30_355.0, rel=0.015)  # Lesotho
    grid = Grid.regular(43.5, 44.5, 12.0, 13.0, 0.01, 0.01)
    it, sm = (region_fraction(dcw.shape(dcw.resolve([c], "t")[0]), grid) for c in ("IT", "SM"))
    assert (np.maximum(it + sm - 1.0, 0.0) * grid.cell_area()).sum() / (sm * grid.cell_area()).sum() < 1e-2


def test_0_360_storage_and_the_antimeridian(dcw):
    """Fiji is stored in 0–360° and straddles 180°: the same mask on a 0–360° and a −180–180° grid."""
    g360 = Grid.regular(-21.0, -12.0, 176.0, 186.0, 0.1, 0.1)
    g180 = Grid.regular(-21.0, -12.0, -180.0, 180.0, 0.1, 0.1)
    shape = dcw.shape(dcw.resolve(["FJ"], "t")[0])
    a, b = region_fraction(shape, g360), region_fraction(shape, g180)
    cols = np.r_[np.arange(3560, 3600), np.arange(0, 60)]  # 176…180 then −180…−174
    np.testing.assert_allclose(b[:, cols], a, rtol=0, atol=1e-12)
    assert (a * g360.cell_area()).sum() / 1e6 == pytest.approx(18_274.0, rel=0.015)  # Fiji, 18 274 km²


def test_polar_ring_is_closed_along_the_pole(dcw):
    grid = Grid.regular(-90.0, -60.0, -180.0, 180.0, 1.0, 1.0)
    f = region_fraction(dcw.shape(dcw.resolve(["AQ"], "t")[0]), grid)
    assert (f[:5] == 1.0).all()  # 85–90° S is all Antarctica
    assert (f[-1] == 0.0).all()  # 61–60° S is ocean


def test_codes_names_and_close_matches(dcw):
    assert [e.code for e in dcw.resolve(["gb", "Switzerland", "CN.BJ"], "t")] == ["GB", "CH", "CN.BJ"]
    with pytest.raises(InputError, match=r"Chna.*close matches: CN \(China\)"):
        dcw.resolve(["Chna"], "dcw:Chna")
    with pytest.raises(InputError, match=r"CN\.XX.*close matches:.*CN\.X"):
        dcw.resolve(["CN.XX"], "dcw:CN.XX")
    with pytest.raises(InputError, match="no states/provinces for 'FR'.*CN"):
        dcw.resolve(["FR.*"], "dcw:FR.*")
    with pytest.raises(InputError, match="listed more than once"):
        dcw.resolve(["GB", "United Kingdom"], "t")
    with pytest.raises(InputError, match=r"regions overlap.*Beijing \(with China\)"):
        build_masks(["dcw:CN,CN.BJ"], Grid.regular(38.0, 42.0, 114.0, 119.0, 0.25, 0.25))


def test_missing_dcw_file_names_the_package(tmp_path: Path):
    with pytest.raises(InputError, match="gmt-dcw"):
        Dcw(tmp_path / "dcw-gmt.nc")
