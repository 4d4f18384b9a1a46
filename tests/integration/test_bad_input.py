"""Every bad input is refused before heavy work, with exit code 2, a message naming the file,
the variable and what to do, and no output written.

One tiny twin case is generated per module; each test mutates a copy of it (config text with
string edits, NetCDF with xarray, the footprint store with h5py) and runs the CLI in-process
(``inversion.cli.main``, serial communicator); a few cases also run as a real subprocess.
"Before heavy work" is checked by spying on the footprint reads and on the solver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import pytest
import xarray as xr

import inversion.solvers
import transport.store
from inversion.cli import main
from inversion.config import StateConfig, load_config
from inversion.outputs import OUTPUT_FILES

try:
    from tests.casegen import make_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import make_case

EXIT_BAD_INPUT = 2
SUBPROCESS_TIMEOUT = 120


# --- fixtures and helpers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def base_case(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("bad-input") / "case")


@pytest.fixture
def case(base_case, tmp_path) -> Path:
    """A fresh copy of the generated case (inputs only)."""
    return Path(shutil.copytree(base_case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))


@dataclass
class Spy:
    footprint_reads: list = field(default_factory=list)
    solves: list = field(default_factory=list)


@pytest.fixture
def spy(monkeypatch) -> Spy:
    """Record footprint value reads and solver calls (both still run)."""
    spy = Spy()
    read_rows = transport.store.FootprintStore.read_rows
    solve = inversion.solvers.solve

    def spying_read_rows(self, start, stop, **kwargs):
        spy.footprint_reads.append((start, stop))
        return read_rows(self, start, stop, **kwargs)

    def spying_solve(*args, **kwargs):
        spy.solves.append(1)
        return solve(*args, **kwargs)

    monkeypatch.setattr(transport.store.FootprintStore, "read_rows", spying_read_rows)
    monkeypatch.setattr(inversion.solvers, "solve", spying_solve)
    return spy


def edit_config(case: Path, old: str, new: str) -> Path:
    path = case / "config.toml"
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found exactly once in {path}"
    path.write_text(text.replace(old, new))
    return path


def rewrite_netcdf(path: Path, change: Callable[[xr.Dataset], xr.Dataset]) -> Path:
    ds = xr.load_dataset(path, engine="h5netcdf")
    ds = change(ds)
    path.unlink()
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def set_obs_values(name: str, index: int, value) -> Callable[[xr.Dataset], xr.Dataset]:
    def change(ds: xr.Dataset) -> xr.Dataset:
        values = ds[name].values.copy()
        values[index] = value
        return ds.assign({name: (ds[name].dims, values, ds[name].attrs)})
    return change


def obs_id(case: Path, index: int) -> str:
    with xr.open_dataset(case / "data" / "observations.nc", engine="h5netcdf") as ds:
        return str(ds["obs_id"].values[index])


def footprint_row_and_index(store: Path, row: int) -> tuple[str, int]:
    """obs_id of store row ``row`` and the position of its middle non-zero in footprint/data."""
    with h5py.File(store, "r") as f:
        indptr = f["footprint/indptr"][()]
        ident = f["obs/obs_id"].asstr()[row]
    assert indptr[row + 1] > indptr[row], "test needs a row with non-zeros"
    return str(ident), int((indptr[row] + indptr[row + 1]) // 2)


def output_files(directory: Path) -> list[str]:
    """Everything in the output directory (nothing at all is expected after a refusal)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir())


def run_cli(case: Path, capsys, *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["run", str(case), "--comm", "serial", *extra])
    captured = capsys.readouterr()
    return code, captured.err + captured.out


# --- the bad inputs --------------------------------------------------------------------------

@dataclass
class Expect:
    file: Path                      # the file the message must name
    variable: str                   # the variable / key the message must name
    also: tuple[str, ...] = ()      # further words: what is wrong and what to do
    reads_footprints: bool = False  # the error may only come while reading footprint values


def typo_key(case):
    path = edit_config(case, "period_days = 4", "period_dayz = 4")
    allowed = ", ".join(sorted(StateConfig.model_fields))  # every key of [state], as listed in the message
    return Expect(path, "state.period_dayz", ("did you mean 'period_days'", "Allowed keys", allowed))


def missing_key(case):
    path = edit_config(case, 'optimised = ["bio"]\n', "")
    return Expect(path, "prior.optimised", ("required",))


def missing_file(case):
    path = case / "data" / "regions.nc"
    path.unlink()
    return Expect(path, "state.regions", ("not found", str((case / "config.toml").resolve())))


def store_units(case):
    path = case / "data" / "footprints.h5"
    with h5py.File(path, "r+") as f:
        f.attrs["units"] = "m2 s umol-1"
    return Expect(path, "units", ("m2 s umol-1", "m2 s mol-1"))


def prior_grid_shifted(case):
    path = rewrite_netcdf(case / "data" / "prior_flux.nc", lambda ds: ds.assign_coords(lat=ds["lat"] + 0.5))
    return Expect(path, "lat", ("differs", str(case / "data" / "footprints.h5"), "regrid"))


def grid_section(case):
    edit_config(case, "lat_max = 36.0", "lat_max = 37.0")
    return Expect(case / "data" / "footprints.h5", "grid", ("[grid]", str((case / "config.toml").resolve())))


def footprint_nan(case):
    path = case / "data" / "footprints.h5"
    ident, k = footprint_row_and_index(path, 5)
    with h5py.File(path, "r+") as f:
        f["footprint/data"][k] = np.nan
    return Expect(path, "footprint/data", ("NaN", ident, "rebuild"), reads_footprints=True)


def footprint_negative(case):
    path = case / "data" / "footprints.h5"
    ident, k = footprint_row_and_index(path, 40)
    with h5py.File(path, "r+") as f:
        f["footprint/data"][k] = -1e-3
    return Expect(path, "footprint/data", ("negative", ident, "rebuild"), reads_footprints=True)


def obs_nan(case):
    path = rewrite_netcdf(case / "data" / "observations.nc", set_obs_values("value", 3, np.nan))
    return Expect(path, "value", ("NaN", obs_id(case, 3)))


def obs_duplicate_ids(case):
    dup = obs_id(case, 3)
    path = rewrite_netcdf(case / "data" / "observations.nc", set_obs_values("obs_id", 4, dup))
    return Expect(path, "obs_id", ("duplicate", dup, "unique"))


def obs_outside_run(case):
    ident = obs_id(case, 2)
    path = rewrite_netcdf(case / "data" / "observations.nc",
                          set_obs_values("time", 2, np.datetime64("2024-08-01T00:00:00", "ns")))
    return Expect(path, "time", ("outside the run period", ident, "run.start"))


def obs_uncertainty(value):
    def mutate(case):
        path = rewrite_netcdf(case / "data" / "observations.nc", set_obs_values("uncertainty", 1, value))
        return Expect(path, "uncertainty", ("≤ 0", obs_id(case, 1), "positive"))
    mutate.__name__ = f"obs_uncertainty_{value}"
    return mutate


def obs_without_footprint(case):
    def add(ds):
        extra = ds.isel(obs=[0]).copy(deep=True)
        extra["obs_id"] = ("obs", np.array(["AAA-no-footprint"], dtype=object))
        return xr.concat([ds, extra], dim="obs")
    path = rewrite_netcdf(case / "data" / "observations.nc", add)
    return Expect(path, "obs_id", ("AAA-no-footprint", "no footprint", str(case / "data" / "footprints.h5")))


def site_mismatch_unknown_site(case):
    edit_config(case, 'model_data_mismatch = "1.0 ppm"',
                'model_data_mismatch = "1.0 ppm"\nsite_mismatch = { ZZZ = "2 ppm" }')
    return Expect(case / "data" / "observations.nc", "site", ("ZZZ", "AAA"))


def correlation_length_zero(case):
    path = edit_config(case, '"300 km"', '"0 km"')
    return Expect(path, "covariance.correlation_length", ("> 0",))


def correlation_length_negative(case):
    path = edit_config(case, '"300 km"', '"-5 km"')
    return Expect(path, "covariance.correlation_length", ("> 0",))


def correlation_time_zero(case):
    path = edit_config(case, '"5 day"', '"0 day"')
    return Expect(path, "covariance.correlation_time", ("> 0",))


def sigma_zero(case):
    path = edit_config(case, "sigma = 0.5", "sigma = 0")
    return Expect(path, "covariance.sigma", ("> 0",))


def sigma_negative(case):
    path = edit_config(case, "sigma = 0.5", "sigma = -0.5")
    return Expect(path, "covariance.sigma", ("> 0",))


def unknown_unit(case):
    path = edit_config(case, '"300 km"', '"1.5 bogons"')
    return Expect(path, "covariance.correlation_length", ("bogons", "unknown unit"))


def wrong_dimension_unit(case):
    path = edit_config(case, 'model_data_mismatch = "1.0 ppm"', 'model_data_mismatch = "1.0 km"')
    return Expect(path, "observations.model_data_mismatch", ("km", "mol mol-1"))


BAD_INPUTS = [typo_key, missing_key, missing_file, store_units, prior_grid_shifted, grid_section, footprint_nan,
              footprint_negative, obs_nan, obs_duplicate_ids, obs_outside_run, obs_uncertainty(0.0),
              obs_uncertainty(-0.3), obs_without_footprint, site_mismatch_unknown_site, correlation_length_zero,
              correlation_length_negative, correlation_time_zero, sigma_zero, sigma_negative, unknown_unit,
              wrong_dimension_unit]


def check_message(message: str, expect: Expect) -> None:
    assert str(expect.file) in message or str(Path(expect.file).resolve()) in message, \
        f"message does not name the file {expect.file}:\n{message}"
    assert expect.variable in message, f"message does not name {expect.variable!r}:\n{message}"
    for word in expect.also:
        assert word in message, f"message lacks {word!r}:\n{message}"


@pytest.mark.parametrize("mutate", BAD_INPUTS, ids=lambda f: f.__name__)
def test_bad_input_is_refused_before_heavy_work(case, mutate, capsys, spy):
    expect = mutate(case)
    code, message = run_cli(case, capsys)
    assert code == EXIT_BAD_INPUT, message
    assert "error" in message
    check_message(message, expect)
    assert spy.solves == [], "the solver ran before the bad input was refused"
    if expect.reads_footprints:
        assert spy.footprint_reads, "the spy saw no footprint read (is it still wired to the store?)"
    else:
        assert spy.footprint_reads == [], "footprint values were read before a cheap check refused the input"
    assert output_files(case / "output") == []


@pytest.mark.parametrize("mutate", [typo_key, obs_duplicate_ids, footprint_nan], ids=lambda f: f.__name__)
def test_bad_input_exit_code_of_the_real_command(case, mutate, tmp_path):
    expect = mutate(case)
    proc = subprocess.run([sys.executable, "-m", "inversion", "run", str(case)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=SUBPROCESS_TIMEOUT, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    check_message(proc.stderr, expect)
    assert "Traceback" not in proc.stderr
    assert output_files(case / "output") == []


@pytest.mark.parametrize("mutate", [footprint_nan, footprint_negative, obs_without_footprint, grid_section],
                         ids=lambda f: f.__name__)
def test_validate_refuses_bad_input(case, mutate, capsys):
    expect = mutate(case)
    capsys.readouterr()
    code = main(["validate", str(case), "--comm", "serial"])
    captured = capsys.readouterr()
    assert code == EXIT_BAD_INPUT
    check_message(captured.err + captured.out, expect)
    assert "all inputs valid" not in captured.out


def test_unit_that_pint_knows_is_accepted(case, capsys):
    edit_config(case, '"300 km"', '"3 furlongs"')
    config = load_config(case)
    # 1 furlong = 201.168 m (pint uses the US survey furlong, 2 ppm longer)
    assert config.covariance.length_km == pytest.approx(3 * 0.201168, rel=1e-5)
    code, message = run_cli(case, capsys)
    assert code == 0, message
    assert output_files(case / "output") == sorted(OUTPUT_FILES)


def _duplicate_first_region(ds: xr.Dataset) -> xr.Dataset:
    """Split region 0 into two regions with identical masks (half of each cell each): the
    fractions still sum to ≤ 1, but both regions have the same centroid, so the spatial
    correlation exp(−d/ℓ) has two identical rows and B is singular."""
    frac = ds["region_fraction"].values
    names = [str(n) for n in ds["region"].values]
    new = np.concatenate([0.5 * frac[:1], 0.5 * frac[:1], frac[1:]])
    return xr.Dataset({"region_fraction": (("region", "lat", "lon"), new, ds["region_fraction"].attrs)},
                      coords={"region": [names[0] + "a", names[0] + "b"] + names[1:], "lat": ds["lat"],
                              "lon": ds["lon"]})


def _non_pd_case(case: Path) -> Path:
    path = rewrite_netcdf(case / "data" / "regions.nc", _duplicate_first_region)
    # the twin's truth has the original regions; not needed to show the covariance problem
    edit_config(case, 'truth = "data/truth_state.nc"', "")
    return path


def test_non_positive_definite_covariance_is_refused(case, capsys, spy):
    _non_pd_case(case)
    code, message = run_cli(case, capsys)
    assert code == EXIT_BAD_INPUT, message
    assert "positive definite" in message or "singular" in message
    assert "Traceback" not in message
    assert spy.footprint_reads == [] and spy.solves == []
    assert output_files(case / "output") == []


def test_non_positive_definite_covariance_message_names_file_and_regions(case, capsys):
    regions = _non_pd_case(case)
    code, message = run_cli(case, capsys)
    assert code == EXIT_BAD_INPUT
    assert str(regions) in message or str((case / "config.toml").resolve()) in message
    assert "B01a" in message and "B01b" in message


def test_footprint_error_lists_plain_obs_ids(case, capsys):
    expect = footprint_nan(case)
    code, message = run_cli(case, capsys)
    assert code == EXIT_BAD_INPUT
    check_message(message, expect)
    assert "np.str_" not in message


def test_output_dir_with_another_runs_outputs_is_refused_untouched(case, capsys, spy):
    out = case / "output"
    out.mkdir()
    foreign = {name: f"another run's {name}\n" for name in ("totals.csv", "config.resolved.toml")}
    for name, text in foreign.items():
        (out / name).write_text(text)
    before = {name: (out / name).stat().st_mtime_ns for name in foreign}
    code, message = run_cli(case, capsys)
    assert code == EXIT_BAD_INPUT, message
    assert str(out) in message
    assert "--overwrite" in message
    assert spy.footprint_reads == [] and spy.solves == []
    assert sorted(p.name for p in out.iterdir()) == sorted(foreign)
    for name, text in foreign.items():
        assert (out / name).read_text() == text
        assert (out / name).stat().st_mtime_ns == before[name]


def test_no_temporary_files_left_after_refusals(case, capsys):
    footprint_nan(case)
    code, _ = run_cli(case, capsys)
    assert code == EXIT_BAD_INPUT
    leftovers = [p for p in case.rglob(".*.tmp-*")]
    assert leftovers == []
