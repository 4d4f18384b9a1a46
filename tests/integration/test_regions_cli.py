"""``tanhui regions build|list`` and a scaled-down China provinces case end to end.

The national case (cases/china_provinces_osse: 34 provinces, a year) takes minutes; here the
same preparation chain — province masks and a land mask from DCW with ``tanhui regions
build``, a seasonal twin with ``tanhui demo --make-data``, ``tanhui run`` — runs on five
provinces for four weeks, with report regions (two halves from a GeoJSON) that differ from
the state regions (the provinces).
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import xarray as xr

pytest.importorskip("shapely", reason="building masks needs the regions extra (shapely)")
geopandas = pytest.importorskip("geopandas", reason="vector files need the regions extra (geopandas)")

from shapely.geometry import box  # noqa: E402

from inversion.aggregates import report_unit  # noqa: E402
from inversion.cli import main  # noqa: E402
from inversion.masks.dcw import default_dcw_file  # noqa: E402
from inversion.regions import read_regions  # noqa: E402
from transport.grid import Grid  # noqa: E402

needs_dcw = pytest.mark.skipif(not default_dcw_file().is_file(),
                               reason=f"{default_dcw_file()} absent: install Debian's gmt-dcw (.ci/run does)")

CONFIG = """\
[run]
name = "mini China provinces"
species = "co2"
start = 2023-07-01T00:00:00Z
end = 2023-07-29T00:00:00Z
output_dir = "output"

[grid]
lat_min = 33.0
lat_max = 44.0
lon_min = 108.0
lon_max = 122.0
dlat = 1.0
dlon = 1.0

[transport]
footprints = "data/footprints.h5"

[observations]
file = "data/observations.nc"
model_data_mismatch = "1.5 ppm"

[prior]
file = "data/prior_flux.nc"
optimised = ["bio"]
fixed = ["fossil"]

[state]
regions = "data/provinces.nc"
period_days = 7
background_offset = false

[covariance]
sigma = 0.5
correlation_length = "300 km"
correlation_time = "7 day"

[report]
truth = "data/truth_state.nc"
regions = "data/halves.nc"
"""

TWIN = """\
seed = 7
flux_step_hours = 6
back_hours = 48
obs_hours_utc = [6]
regions_from_file = true
prior_pattern = "seasonal"
land_mask = "data/land.nc"

[[sites]]
code = "SDZ"
name = "Shangdianzi"
lat = 40.65
lon = 117.12
height = 80.0
[[sites]]
code = "TAI"
name = "Mount Tai"
lat = 36.25
lon = 117.10
height = 20.0
[[sites]]
code = "XLG"
name = "Xinglong"
lat = 40.40
lon = 117.58
height = 30.0

[[cities]]
name = "Beijing"
lat = 39.90
lon = 116.40
peak = 40.0
"""


def test_build_from_geojson_and_errors(tmp_path: Path, capsys):
    frame = geopandas.GeoDataFrame({"name": ["west", "east"]}, geometry=[box(110, 30, 113, 34), box(113, 30, 117, 34)],
                                   crs="EPSG:4326")
    frame.to_file(tmp_path / "two.geojson", driver="GeoJSON")
    out = tmp_path / "two.nc"
    assert main(["regions", "build", "--grid", "28,36,108,118,0.5,0.5", "--source", str(tmp_path / "two.geojson"),
                 "--out", str(out)]) == 0
    regions = read_regions(out, Grid.regular(28, 36, 108, 118, 0.5, 0.5), "test")
    assert regions.names == ("west", "east")
    assert regions.fraction.sum(axis=0).max() == pytest.approx(1.0)
    # refuses to overwrite, a bad grid, a missing column: exit code 2 with the reason
    assert main(["regions", "build", "--grid", "28,36,108,118,0.5,0.5", "--source", str(tmp_path / "two.geojson"),
                 "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["regions", "build", "--grid", "28,36,108,0.5", "--source", "x.geojson", "--out", "y.nc"]) == 2
    assert "lat_min,lat_max,lon_min,lon_max,dlat,dlon" in capsys.readouterr().err
    assert main(["regions", "build", "--grid", "28,36,108,118,0.5,0.5", "--source",
                 f"{tmp_path / 'two.geojson'}:PROVINCE", "--out", str(tmp_path / "z.nc")]) == 2
    assert "name column not found" in capsys.readouterr().err
    assert not (tmp_path / "z.nc").exists()


@needs_dcw
def test_list_and_unknown_code(tmp_path: Path, capsys):
    assert main(["regions", "list", "CN.*"]) == 0
    text = capsys.readouterr().out
    assert "CN.BJ" in text and "Beijing" in text and "Xinjiang" in text
    assert main(["regions", "build", "--grid", "30,45,110,125,1,1", "--source", "dcw:CN.BJ,CN.TJN",
                 "--out", str(tmp_path / "x.nc")]) == 2
    assert "CN.TJ (Tianjin)" in capsys.readouterr().err


@needs_dcw
def test_mini_china_provinces_case(tmp_path: Path):
    case = tmp_path / "mini"
    (case / "data").mkdir(parents=True)
    (case / "config.toml").write_text(CONFIG)
    (case / "twin.toml").write_text(TWIN)
    halves = geopandas.GeoDataFrame({"name": ["south", "north"]}, geometry=[box(100, 20, 130, 38.3), box(100, 38.3, 130, 50)],
                                    crs="EPSG:4326")
    halves.to_file(tmp_path / "halves.geojson", driver="GeoJSON")
    data = case / "data"
    assert main(["regions", "build", "--like", str(case), "--source", "dcw:CN.BJ,CN.TJ,CN.HE,CN.SD,CN.SX",
                 "--out", str(data / "provinces.nc")]) == 0
    assert main(["regions", "build", "--like", str(case), "--source", "dcw:*", "--out", str(data / "land.nc")]) == 0
    assert main(["regions", "build", "--like", str(case), "--source", str(tmp_path / "halves.geojson"),
                 "--out", str(data / "halves.nc")]) == 0
    assert main(["demo", "--make-data", str(case)]) == 0
    assert main(["run", str(case)]) == 0

    rows = list(csv.DictReader(open(case / "output" / "totals.csv")))
    assert {r["region"] for r in rows} == {"south", "north", "ALL"}
    # report totals = Σ m_R · area · period-mean posterior flux (posterior_flux.nc)
    grid = Grid.regular(33.0, 44.0, 108.0, 122.0, 1.0, 1.0)
    report = read_regions(data / "halves.nc", grid, "test")
    flux = xr.open_dataset(case / "output" / "posterior_flux.nc", engine="h5netcdf")
    factor = report_unit("co2")[1]  # mol s⁻¹ → Tg CO₂ yr⁻¹
    for r, name in enumerate(report.names):
        for p in range(4):
            row = next(x for x in rows if x["region"] == name and x["period"] == str(p))
            for column, var in (("prior", "flux_prior"), ("posterior", "flux_posterior")):
                direct = float((report.fraction[r] * grid.cell_area() * flux[var].values[p]).sum()) * factor
                assert float(row[column]) == pytest.approx(direct, rel=1e-6, abs=1e-9)
    whole = {r["region"]: r for r in rows if r["period"] == "whole_run"}
    assert float(whole["ALL"]["posterior"]) == pytest.approx(
        float(whole["south"]["posterior"]) + float(whole["north"]["posterior"]), rel=1e-6)
    # the observations constrain the provinces: their uncertainty shrinks
    assert 0.0 < float(whole["ALL"]["uncertainty_reduction"]) < 1.0
    state = xr.open_dataset(case / "output" / "posterior_state.nc", engine="h5netcdf")
    assert list(state["region"].values) == ["Beijing", "Tianjin", "Hebei", "Shandong", "Shanxi"]
    assert (state["posterior_sd_scaling_factor"].values < state["prior_sd_scaling_factor"].values).all()
