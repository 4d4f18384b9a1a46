"""``tanhui report`` and the report step of ``tanhui run`` on tiny twins: the files, CSV tables
that agree with the NetCDF outputs and the run's totals, the inventory comparison, the
variational solver's exact and low-rank σ, and bad input (refused before heavy work, or warned)."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.cli import main
from inversion.outputs import OUTPUT_FILES
from inversion.report.data import load_report_data
from inversion.report.totals import report_units

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

EXIT_BAD_INPUT = 2
REPORT_FILES = ("report_totals.csv", "report_totals_tgc.csv", "report_summary.csv", "report_summary_tgc.csv",
                "report_sectors.csv", "report_sites.csv", "report_observations.csv", "report_maps.csv",
                "report_regions.csv", "report_totals.nc", "report_summary.nc", "report_metadata.json",
                "paris_flux.nc")


def tanhui(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "inversion", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=300)


def add_report_keys(case: Path, text: str) -> None:
    with open(case / "config.toml", "a") as fh:  # [report] is the last table of the generated config
        fh.write(text)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    case = make_case(tmp_path_factory.mktemp("report") / "case", seed=4, period_days=2)
    add_report_keys(case, 'periods = ["period", "run"]\n')
    return case


@pytest.fixture(scope="module")
def run_dir(case) -> Path:
    assert main(["run", str(case), "--comm", "serial"]) == 0
    return case / "output"


def write_inventory(path: Path, rows: list[str]) -> Path:
    path.write_text("region,period,category,value,unit,sd,lower,upper,interval\n" + "\n".join(rows) + "\n")
    return path


def test_help():
    proc = tanhui("report", "--help", cwd=Path.cwd())
    assert proc.returncode == 0
    for option in ("--inventory", "--out", "RUN_DIR"):
        assert option in proc.stdout.replace("run_dir", "RUN_DIR")


def test_run_ends_with_the_report(run_dir):
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(OUTPUT_FILES)
    names = {p.name for p in (run_dir / "report").iterdir()}
    assert set(REPORT_FILES) <= names
    assert {f"paris_concentration_{s}.nc" for s in ("AAA", "BBB", "CCC")} <= names


def test_csv_tables_agree_with_the_netcdf_outputs_and_the_run_totals(run_dir):
    report = run_dir / "report"
    with xr.open_dataset(report / "report_totals.nc", engine="h5netcdf") as ds:
        totals = ds.load()
    rows = read_csv(report / "report_totals.csv")
    assert len(rows) == totals.sizes["region"] * totals.sizes["period"]
    carbon = read_csv(report / "report_totals_tgc.csv")
    factor = report_units("co2").carbon_factor / report_units("co2").factor
    for row, crow in zip(rows, carbon, strict=True):
        r = list(totals["region"].values).index(row["region"])
        p = list(totals["period_label"].values).index(row["period_label"])
        for name in ("prior", "prior_sd", "posterior", "posterior_sd", "p025", "p16", "p84", "p975", "truth",
                     "uncertainty_reduction"):
            assert float(row[name]) == pytest.approx(float(totals[name].values[r, p]), rel=1e-9), name
        assert float(crow["posterior"]) == pytest.approx(float(row["posterior"]) * factor, rel=1e-9)
        assert row["unit"] == "Tg CO2 yr-1" and crow["unit"] == "Tg C yr-1"
    # the "period" rows are the run's totals.csv (net flux per state period), the "run" row its whole_run
    run_rows = {(r["region"], r["period"]): r for r in read_csv(run_dir / "totals.csv")}
    for row in rows:
        key = "whole_run" if row["period_kind"] == "run" else None
        if key is None:
            starts = [r["period_start"] for (reg, _), r in run_rows.items() if reg == row["region"]]
            key = str(starts.index(row["period_start"]))
        ref = run_rows[(row["region"], key)]
        for name in ("prior", "prior_sd", "posterior", "posterior_sd", "truth"):
            assert float(row[name]) == pytest.approx(float(ref[name]), rel=1e-8), (row["region"], key, name)
    # summary, sites and maps tables against their NetCDF sources
    with xr.open_dataset(report / "report_summary.nc", engine="h5netcdf") as ds:
        summary = ds.load()
    for row in read_csv(report / "report_summary.csv"):
        r = list(summary["region"].values).index(row["region"])
        k = list(summary["statistic"].values).index(row["statistic"])
        assert float(row["posterior_sd"]) == pytest.approx(float(summary["posterior_sd"].values[r, k]), rel=1e-9)
    with xr.open_dataset(run_dir / "maps.nc", engine="h5netcdf") as ds:
        maps = ds.load()
    cells = read_csv(report / "report_maps.csv")
    assert len(cells) == maps.sizes["lat"] * maps.sizes["lon"]
    got = np.array([float(c["sensitivity [m2 s mol-1]"]) for c in cells]).reshape(maps["sensitivity"].shape)
    np.testing.assert_allclose(got, maps["sensitivity"].values, rtol=1e-9)
    with xr.open_dataset(run_dir / "observations_modelled.nc", engine="h5netcdf") as ds:
        obs = ds.load()
    sites = read_csv(report / "report_sites.csv")
    for row in sites:
        m = obs["site"].values.astype(str) == row["site"]
        res = obs["observed"].values[m] - obs["posterior_model"].values[m]
        assert float(row["posterior_rmse [ppm]"]) == pytest.approx(np.sqrt(np.mean(res**2)), rel=1e-9)
        assert int(row["n"]) == m.sum()


def test_observation_sensitivity_is_the_sum_of_all_footprints(run_dir, case):
    import h5py

    with h5py.File(case / "data" / "footprints.h5", "r") as f:
        data, indices = f["footprint/data"][()], f["footprint/indices"][()]
        nlat, nlon = f["grid/lat"].shape[0], f["grid/lon"].shape[0]
    total = np.bincount(indices % (nlat * nlon), weights=data.astype(np.float64), minlength=nlat * nlon)
    with xr.open_dataset(run_dir / "maps.nc", engine="h5netcdf") as ds:
        np.testing.assert_allclose(ds["sensitivity"].values.ravel(), total, rtol=1e-10)


def test_report_command_compares_an_inventory(run_dir, tmp_path):
    """An inventory built around the posterior: one value inside the 95 % range, one far outside,
    one in Tg C, and the ALL row; read through the real CLI."""
    data = load_report_data(run_dir)
    run = data.totals.isel(period=-1)  # the whole run
    post = {r: float(run["posterior"].sel(region=r)) for r in ("B01", "B02", "B03", "ALL")}
    sd = {r: float(run["posterior_sd"].sel(region=r)) for r in post}
    label = str(run["period_label"].values)
    tgc = report_units("co2").carbon_factor / report_units("co2").factor
    inventory = write_inventory(tmp_path / "inv.csv", [
        f"B01,{label},net,{post['B01'] + 0.5 * sd['B01']},Mt CO2 yr-1,{sd['B01']},,,",
        f"B02,{label},net,{post['B02'] + 10 * sd['B02']},Mt CO2 yr-1,,,,",
        f"B03,{label},net,{post['B03'] * tgc},Tg C yr-1,,{(post['B03'] - 1) * tgc},{(post['B03'] + 1) * tgc},95",
        f"ALL,{label},net,{post['ALL']},Mt CO2 yr-1,{sd['ALL']},,,",
    ])
    out = tmp_path / "report-out"
    proc = tanhui("report", str(run_dir), "--inventory", str(inventory), "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = {(r["region"], r["period_label"]): r for r in read_csv(out / "report_totals.csv")}
    b1, b2, b3, all_ = (rows[(r, label)] for r in ("B01", "B02", "B03", "ALL"))
    assert b1["inventory_inside_95"] == "True" and b1["consistent_95"] == "True"
    assert float(b1["difference"]) == pytest.approx(-0.5 * sd["B01"], rel=1e-6)
    assert float(b1["difference_sd"]) == pytest.approx(np.sqrt(2) * sd["B01"], rel=1e-6)
    assert b2["inventory_inside_95"] == "False" and b2["consistent_95"] == "False"
    assert float(b2["difference_sd"]) == pytest.approx(sd["B02"], rel=1e-9)  # no inventory σ given
    assert float(b3["inventory"]) == pytest.approx(post["B03"], rel=1e-6)  # Tg C → Tg CO2
    assert float(b3["inventory_sd"]) == pytest.approx(1 / 1.959963984540054, rel=1e-6)
    assert all_["inventory_inside_95"] == "True"
    assert rows[("B04", label)]["has_inventory"] == "False" and rows[("B04", label)]["inventory"] == "nan"
    # the whole-run statistic compares with the same rows
    summary = {(r["region"], r["statistic"]): r for r in read_csv(out / "report_summary.csv")}
    assert float(summary[("B01", "mean")]["inventory"]) == pytest.approx(float(b1["inventory"]), rel=1e-12)
    # the weekly periods have no inventory row: warned, not refused
    assert "has no period inventory value" not in proc.stderr  # no row of that kind: nothing to warn about


def test_report_of_a_case_directory_and_bad_inventories(case, run_dir, tmp_path):
    bad = write_inventory(tmp_path / "bad.csv", ["B1,2024-07,net,1,Mt CO2 yr-1,,,,"])
    proc = tanhui("report", str(case), "--inventory", str(bad), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "unknown region 'B1'" in proc.stderr and "B01" in proc.stderr and "line 2" in proc.stderr
    none = write_inventory(tmp_path / "none.csv", ["B01,2019,net,1,Mt CO2 yr-1,,,,"])
    proc = tanhui("report", str(case), "--inventory", str(none), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT and "no row matches a report period" in proc.stderr
    proc = tanhui("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT and "not the output directory of a completed run" in proc.stderr


def test_run_refuses_a_bad_inventory_before_any_heavy_work(case, tmp_path):
    other = Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))
    write_inventory(other / "inv.csv", ["B01,2024-07,net,1,Mt CO2e yr-1,,,,"])
    add_report_keys(other, 'inventory = "inv.csv"\n')
    proc = tanhui("run", str(other), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "inv.csv: unit (line 2): unknown unit 'Mt CO2e yr-1'" in proc.stderr
    assert not (other / "output").exists()


def test_variational_report_has_exact_and_low_rank_sd(case, run_dir, tmp_path):
    out = tmp_path / "var"
    assert main(["run", str(case), "--output-dir", str(out), "--solver", "variational", "--comm", "serial"]) == 0
    data = load_report_data(out)
    assert data.totals.attrs["solver"] == "variational"
    exact, lowrank = data.totals["posterior_sd"].values, data.totals["posterior_sd_lowrank"].values
    assert np.all(np.isfinite(lowrank)) and np.all(lowrank > 0)
    np.testing.assert_allclose(lowrank, exact, rtol=1e-6)  # Ritz pairs span the tiny control space
    rows = read_csv(out / "report" / "report_totals.csv")
    assert all(float(r["lowrank_minus_exact_sd"]) == pytest.approx(float(r["posterior_sd_lowrank"])
                                                                   - float(r["posterior_sd"]), abs=1e-9) for r in rows)
    analytical = load_report_data(run_dir)
    np.testing.assert_allclose(exact, analytical.totals["posterior_sd"].values, rtol=1e-7)


def test_unresolvable_report_region_is_warned_with_its_sensitivity_coverage(case, tmp_path):
    """A report region of one cell inside a state block of twelve cannot be resolved by the
    state: warned with ρ and the fraction of its area the observations see."""
    other = Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))
    with xr.open_dataset(other / "data" / "regions.nc", engine="h5netcdf") as ds:
        masks = ds.load()
    fraction = np.zeros((2,) + masks["region_fraction"].shape[1:])
    fraction[0, 0, 0] = 1.0
    fraction[1] = 1.0 - fraction[0]
    report = xr.Dataset({"region_fraction": (("region", "lat", "lon"), fraction)},
                        coords={"region": ["TINY", "REST"], "lat": masks["lat"].values, "lon": masks["lon"].values})
    report.to_netcdf(other / "data" / "report_regions.nc", engine="h5netcdf")
    add_report_keys(other, 'regions = "data/report_regions.nc"\n')
    proc = tanhui("run", str(other), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "region TINY" in line]
    assert len(lines) == 1 and "the state cannot resolve it" in lines[0], proc.stderr
    assert "of its area is covered by the observations' sensitivity" in lines[0]
    assert "region REST" not in proc.stderr
    data = load_report_data(other / "output")
    rho = float(data.regions["resolution"].sel(region="TINY"))
    assert 0 < rho < 0.5 and float(data.regions["resolution"].sel(region="REST")) > 0.5
    assert data.metadata["warnings"] == [lines[0].split("WARNING ", 1)[-1]]
