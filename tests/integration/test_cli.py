"""The command line, as a user runs it (``python -m inversion`` in a subprocess) and in-process
(``inversion.cli.main``), on a tiny generated twin case."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

import inversion.outputs
from inversion.cli import main
from inversion.config import Config, load_config
from inversion.outputs import OUTPUT_FILES

try:
    from tests.casegen import make_case, write_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case, write_case

TIMEOUT = 180
EXIT_BAD_INPUT = 2
CF_FLUX_NAME = "surface_upward_mole_flux_of_carbon_dioxide"


def tanhui(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m inversion ARGS`` as a user would run it (wide terminal so rich does not wrap)."""
    env = {**os.environ, "COLUMNS": "200", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "inversion", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=TIMEOUT)


def temporary_files(*directories: Path) -> list[Path]:
    return [p for d in directories if d.exists() for p in d.rglob(".*.tmp-*")]


def read_totals(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Contents, mtime and inode of each entry (a directory, e.g. report/: its sorted file names)."""
    return {p.name: (p.read_bytes() if p.is_file() else "\n".join(sorted(q.name for q in p.iterdir())).encode(),
                     p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(directory.iterdir())}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("cli") / "case")


@pytest.fixture(scope="module")
def first_run(case, tmp_path_factory):
    """``python -m inversion run CASE`` into the configured output dir (case/output)."""
    proc = tanhui("run", str(case), cwd=tmp_path_factory.mktemp("cwd"))
    assert proc.returncode == 0, proc.stderr
    return proc, case / "output"


def copy_inputs(case: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))


# --- help ------------------------------------------------------------------------------------

HELP = {
    (): ["run", "validate", "demo", "--version"],
    ("run",): ["--output-dir", "--solver", "analytical", "variational", "--overwrite", "--comm", "--verbose", "config"],
    ("validate",): ["--comm", "--verbose", "config", "memory"],
    ("demo",): ["--make-data", "--verbose", "case"],
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "tanhui")
def test_help_subprocess(command, tmp_path):
    proc = tanhui(*command, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tanhui")
    for option in HELP[command]:
        assert option in proc.stdout, f"{option} missing from help of {command}"


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "tanhui")
def test_help_in_process(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for option in HELP[command]:
        assert option in out


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["invert"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- demo --make-data ------------------------------------------------------------------------

def _generated(case: Path) -> dict[str, np.ndarray]:
    data = case / "data"
    out = {}
    with h5py.File(data / "footprints.h5", "r") as f:
        for name in ("data", "indices", "indptr"):
            out[f"footprint/{name}"] = f[f"footprint/{name}"][()]
    with xr.open_dataset(data / "observations.nc", engine="h5netcdf") as ds:
        out["obs_id"] = ds["obs_id"].values.astype(str)
        for name in ("value", "uncertainty", "background"):
            out[name] = ds[name].values
    with xr.open_dataset(data / "prior_flux.nc", engine="h5netcdf") as ds:
        out["prior_bio"] = ds["bio"].values
    with xr.open_dataset(data / "truth_state.nc", engine="h5netcdf") as ds:
        out["truth"] = ds["truth_scaling_factor"].values
    return out


def test_demo_make_data_regenerates_identical_inputs(tmp_path, capsys):
    case = write_case(tmp_path / "a", seed=7)
    assert main(["demo", "--make-data", str(case)]) == 0
    first = _generated(case)
    assert first["footprint/data"].size > 0 and np.all(np.isfinite(first["value"]))

    proc = tanhui("demo", "--make-data", str(case), cwd=tmp_path)  # regenerate in place, real command
    assert proc.returncode == 0, proc.stderr
    again = _generated(case)
    assert again.keys() == first.keys()
    for name in first:
        assert again[name].dtype == first[name].dtype, name
        assert np.array_equal(again[name], first[name]), f"{name} differs after regeneration with the same seed"

    other = write_case(tmp_path / "b", seed=8)
    assert main(["demo", "--make-data", str(other)]) == 0
    different = _generated(other)
    assert not np.array_equal(different["value"], first["value"]), "another seed gave the same observations"
    assert temporary_files(case, other) == []


# --- run -------------------------------------------------------------------------------------

def test_run_writes_all_outputs_and_prints_the_region_table(first_run, case):
    proc, out = first_run
    assert sorted(p.name for p in out.iterdir()) == sorted(OUTPUT_FILES)
    with xr.open_dataset(case / "data" / "regions.nc", engine="h5netcdf") as ds:
        regions = [str(r) for r in ds["region"].values]
    assert len(regions) >= 2
    for name in regions + ["ALL"]:
        assert re.search(rf"\b{name}\b", proc.stdout), f"region {name} missing from the printed table"
    assert "χ²/n" in proc.stdout
    assert "DOFS" in proc.stdout
    assert "tiny twin" in proc.stdout
    assert temporary_files(out, case / "data") == []


def test_diagnostics_json(first_run):
    _, out = first_run
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["solver"] == "analytical"
    assert diag["ranks"] == 1
    assert diag["n_obs"] > 0 and 0 < diag["dofs"] <= diag["n_state"]
    assert diag["chi2_per_obs"] == pytest.approx(diag["chi2"] / diag["n_obs"], rel=1e-12)
    lo, hi = diag["chi2_per_obs_95"]
    assert 0 < lo < 1 < hi
    assert set(diag["sites"]) == {"AAA", "BBB", "CCC"}
    assert sum(s["n_obs"] for s in diag["sites"].values()) == diag["n_obs"]


def test_totals_csv_is_consistent(first_run):
    _, out = first_run
    rows = read_totals(out / "totals.csv")
    for column in ("region", "period", "prior", "prior_sd", "posterior", "posterior_sd", "uncertainty_reduction",
                   "truth", "unit"):
        assert column in rows[0]
    assert {r["unit"] for r in rows} == {"Tg CO2 yr-1"}
    periods = sorted({r["period"] for r in rows if r["period"] != "whole_run"})
    regions = sorted({r["region"] for r in rows if r["region"] != "ALL"})
    get = {(r["region"], r["period"]): r for r in rows}
    for r in rows:
        prior_sd, post_sd = float(r["prior_sd"]), float(r["posterior_sd"])
        assert 0 < post_sd <= prior_sd
        assert float(r["uncertainty_reduction"]) == pytest.approx(1 - post_sd / prior_sd, abs=1e-8)
    for period in periods + ["whole_run"]:  # ALL = sum over regions (means add up; σ do not)
        for q in ("prior", "posterior", "truth"):
            parts = [float(get[(reg, period)][q]) for reg in regions]
            scale = sum(abs(p) for p in parts)
            assert float(get[("ALL", period)][q]) == pytest.approx(sum(parts), abs=1e-8 * scale)
    for region in regions + ["ALL"]:  # whole run = duration-weighted mean of the periods
        weights = np.array([(np.datetime64(get[(region, p)]["period_end"]) -
                             np.datetime64(get[(region, p)]["period_start"])) / np.timedelta64(1, "s")
                            for p in periods])
        values = np.array([float(get[(region, p)]["posterior"]) for p in periods])
        whole = float(get[(region, "whole_run")]["posterior"])
        assert whole == pytest.approx(weights @ values / weights.sum(), abs=1e-8 * np.abs(values).sum())


def test_posterior_flux_is_cf(first_run):
    _, out = first_run
    with xr.open_dataset(out / "posterior_flux.nc", engine="h5netcdf", decode_cf=False) as ds:
        assert ds.attrs["Conventions"] == "CF-1.8"
        for name in ("flux_prior", "flux_posterior"):
            var = ds[name]
            assert var.dims == ("time", "lat", "lon")
            assert var.attrs["standard_name"] == CF_FLUX_NAME
            assert var.attrs["units"] == "mol m-2 s-1"
            ancillary = var.attrs["ancillary_variables"].split()
            assert ancillary == [f"{name}_standard_error"]
            err = ds[ancillary[0]]
            assert err.dims == var.dims
            assert err.attrs["units"] == "mol m-2 s-1"
            assert err.attrs["standard_name"] == f"{CF_FLUX_NAME} standard_error"
            assert np.all(np.isfinite(var.values)) and np.all(err.values >= 0)
        # the posterior is never less certain than the prior
        post_se, prior_se = ds["flux_posterior_standard_error"].values, ds["flux_prior_standard_error"].values
        assert np.all(post_se <= prior_se * (1 + 1e-12))
        for coord in ("time", "lat", "lon"):
            bounds = ds[coord].attrs["bounds"]
            assert bounds in ds.variables
            b = ds[bounds].values
            assert b.shape == (ds.sizes[coord], 2)
            centre = ds[coord].values
            assert np.all(b[:, 0] <= centre) and np.all(centre <= b[:, 1]) and np.all(b[:, 0] < b[:, 1])
        assert ds["lat"].attrs["units"] == "degrees_north" and ds["lon"].attrs["units"] == "degrees_east"
        assert ds["time"].attrs["standard_name"] == "time" and "since" in ds["time"].attrs["units"]
        # time bounds are stored in the same encoding as the time coordinate (they carry no units of their own)
        assert "units" not in ds["time_bnds"].attrs or ds["time_bnds"].attrs["units"] == ds["time"].attrs["units"]
        assert np.array_equal(ds["time_bnds"].values[:, 0], ds["time"].values)
        assert ds["cell_area"].attrs["units"] == "m2" and np.all(ds["cell_area"].values > 0)


def test_config_resolved_records_config_and_input_hashes(first_run, case):
    _, out = first_run
    resolved = tomllib.loads((out / "config.resolved.toml").read_text())
    config = load_config(case)
    provenance = resolved["provenance"]
    assert provenance["config"] == "sha256:" + sha256(case / "config.toml")
    inputs = config.input_paths()
    assert len(inputs) == 5
    for key, path in inputs.items():
        assert provenance[key] == "sha256:" + sha256(path), key
    assert resolved["transport"]["footprints"] == str(config.transport.footprints)
    assert Path(resolved["run"]["output_dir"]).is_absolute()
    # everything but the provenance is the configuration that ran, with absolute paths
    again = Config.model_validate({k: v for k, v in resolved.items() if k != "provenance"})
    assert again.model_dump() == config.model_copy(update={"source": None}).model_dump()


def test_second_run_without_overwrite_fails_and_keeps_outputs(case, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(case), "--output-dir", str(out), "--comm", "serial"]) == 0
    before = snapshot(out)
    assert sorted(before) == sorted(OUTPUT_FILES)

    proc = tanhui("run", str(case), "--output-dir", str(out), cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert "--overwrite" in proc.stderr
    assert str(out) in proc.stderr
    assert snapshot(out) == before

    capsys.readouterr()
    assert main(["run", str(case), "--output-dir", str(out), "--overwrite", "--comm", "serial"]) == 0
    after = snapshot(out)
    assert sorted(after) == sorted(OUTPUT_FILES)
    for name in OUTPUT_FILES:
        assert after[name][1:] != before[name][1:], f"{name} was not rewritten by --overwrite"
    assert after["totals.csv"][0] == before["totals.csv"][0]  # same case, same numbers
    assert temporary_files(out) == []


def test_failed_overwrite_does_not_leave_a_complete_looking_mix(case, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert main(["run", str(case), "--output-dir", str(out), "--comm", "serial"]) == 0
    before = snapshot(out)

    def fail(*args, **kwargs):
        raise RuntimeError("simulated failure while writing posterior_flux.nc")

    monkeypatch.setattr(inversion.outputs, "_flux_dataset", fail)
    with pytest.raises(RuntimeError, match="simulated failure"):
        main(["run", str(case), "--output-dir", str(out), "--overwrite", "--solver", "variational", "--comm", "serial"])
    after = snapshot(out) if out.exists() else {}
    if "config.resolved.toml" in after:
        changed = [name for name in after if after[name] != before.get(name)]
        assert changed == [], f"marker of a complete run present, but {changed} come from the failed run"
    assert temporary_files(out) == []


def test_variational_solver_agrees_with_analytical(first_run, case, tmp_path, capsys):
    _, analytical_out = first_run
    out = tmp_path / "var"
    assert main(["run", str(case), "--output-dir", str(out), "--solver", "variational", "--comm", "serial"]) == 0
    assert "χ²/n" in capsys.readouterr().out
    diag = json.loads((out / "diagnostics.json").read_text())
    assert diag["solver"] == "variational" and diag["converged"] is True
    ana, var = read_totals(analytical_out / "totals.csv"), read_totals(out / "totals.csv")
    assert [(r["region"], r["period"]) for r in var] == [(r["region"], r["period"]) for r in ana]
    assert "posterior_sd_lowrank" in var[0]
    for a, v in zip(ana, var, strict=True):
        scale = float(a["prior_sd"])
        for q in ("prior", "prior_sd"):
            assert float(v[q]) == pytest.approx(float(a[q]), rel=1e-9)
        for q in ("posterior", "posterior_sd"):
            assert abs(float(v[q]) - float(a[q])) <= 1e-6 * max(abs(float(a[q])), scale), (a["region"], a["period"], q)
    resolved = tomllib.loads((out / "config.resolved.toml").read_text())
    assert resolved["solver"]["method"] == "variational"
    with xr.open_dataset(out / "posterior_state.nc", engine="h5netcdf") as ds:
        assert "ritz_vectors" in ds and "posterior_covariance" not in ds


def test_validate_prints_estimates_and_writes_nothing(case, tmp_path):
    case = copy_inputs(case, tmp_path)
    files_before = sorted(str(p.relative_to(case)) for p in case.rglob("*"))
    proc = tanhui("validate", str(case), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "all inputs valid" in proc.stdout
    memory = r"\d[\d.]* (?:B|KiB|MiB|GiB|TiB)"
    seconds = r"\d[\d.]*(?:e[-+]?\d+)? s"
    for solver in (r"analytical \(state form\)", r"analytical \(observation form\)", "variational"):
        assert re.search(rf"{solver}\W+{memory}\W+{seconds}", proc.stdout), \
            f"no memory/time for {solver}:\n{proc.stdout}"
    assert "memory" in proc.stdout and "time" in proc.stdout
    assert sorted(str(p.relative_to(case)) for p in case.rglob("*")) == files_before


def test_validate_in_process(case, capsys):
    assert main(["validate", str(case), "--comm", "serial"]) == 0
    out = capsys.readouterr().out
    assert "all inputs valid" in out
    assert "variational" in out


def test_relative_output_dir_is_relative_to_the_cwd(case, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(case), "--output-dir", "rel-out", "--comm", "serial"]) == 0
    assert sorted(p.name for p in (tmp_path / "rel-out").iterdir()) == sorted(OUTPUT_FILES)
