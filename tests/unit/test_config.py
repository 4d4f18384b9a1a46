"""load_config: path resolution, $VARS, dates, run period, case directories, unknown keys,
site mismatches.  Only config.toml is written (load_config opens no input file)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from inversion.config import (
    CONFIG_NAME,
    Config,
    ConfigError,
    GridConfig,
    ObservationsConfig,
    StateConfig,
    load_config,
)
from transport.errors import InputError

try:
    from tests.casegen import write_case
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests.casegen import write_case

START_LINE = "start = 2024-07-01T00:00:00Z"
END_LINE = "end = 2024-07-09T00:00:00Z"


def _case(tmp_path: Path) -> Path:
    return write_case(tmp_path / "case")


def _edit(case: Path, old: str, new: str) -> Path:
    path = case / CONFIG_NAME
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found exactly once in the test config"
    path.write_text(text.replace(old, new))
    return path


# --- paths -----------------------------------------------------------------------------------

def test_paths_resolve_relative_to_the_config_file_not_the_cwd(tmp_path, monkeypatch):
    case = _case(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(case / CONFIG_NAME)
    root = case.resolve()
    assert config.source == root / CONFIG_NAME
    assert Path(config.transport.footprints) == root / "data" / "footprints.h5"
    assert Path(config.observations.file) == root / "data" / "observations.nc"
    assert Path(config.prior.file) == root / "data" / "prior_flux.nc"
    assert Path(config.state.regions) == root / "data" / "regions.nc"
    assert Path(config.report.truth) == root / "data" / "truth_state.nc"
    assert Path(config.run.output_dir) == root / "output"
    for path in config.input_paths().values():
        assert Path(path).is_absolute()


def test_absolute_paths_are_kept(tmp_path):
    case = _case(tmp_path)
    target = tmp_path / "somewhere" / "fp.h5"
    _edit(case, 'footprints = "data/footprints.h5"', f'footprints = "{target.as_posix()}"')
    assert Path(load_config(case).transport.footprints) == target


def test_relative_config_path_argument(tmp_path, monkeypatch):
    case = _case(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("case") / CONFIG_NAME)
    assert Path(config.prior.file) == case.resolve() / "data" / "prior_flux.nc"


@pytest.mark.parametrize("syntax", ["$TANHUI_TEST_STORE", "${TANHUI_TEST_STORE}"])
def test_environment_variables_expand_in_paths(tmp_path, monkeypatch, syntax):
    case = _case(tmp_path)
    store_dir = tmp_path / "shared" / "footprints"
    monkeypatch.setenv("TANHUI_TEST_STORE", str(store_dir))
    _edit(case, 'footprints = "data/footprints.h5"', f'footprints = "{syntax}/fp.h5"')
    assert Path(load_config(case).transport.footprints) == store_dir / "fp.h5"


def test_relative_expansion_is_relative_to_the_config_file(tmp_path, monkeypatch):
    case = _case(tmp_path)
    monkeypatch.setenv("TANHUI_TEST_SUBDIR", "inputs")
    _edit(case, 'regions = "data/regions.nc"', 'regions = "$TANHUI_TEST_SUBDIR/regions.nc"')
    assert Path(load_config(case).state.regions) == case.resolve() / "inputs" / "regions.nc"


def test_unset_environment_variable_is_an_error_naming_it(tmp_path, monkeypatch):
    case = _case(tmp_path)
    monkeypatch.delenv("TANHUI_TEST_UNSET", raising=False)
    path = _edit(case, 'file = "data/observations.nc"', 'file = "$TANHUI_TEST_UNSET/observations.nc"')
    with pytest.raises((InputError, ConfigError)) as info:
        load_config(case)
    message = str(info.value)
    assert "TANHUI_TEST_UNSET" in message
    assert "observations.file" in message
    assert str(path.resolve()) in message


def test_variables_are_not_expanded_outside_paths(tmp_path, monkeypatch):
    case = _case(tmp_path)
    monkeypatch.setenv("TANHUI_TEST_NAME", "expanded")
    _edit(case, 'name = "tiny twin"', 'name = "run $TANHUI_TEST_NAME"')
    assert load_config(case).run.name == "run $TANHUI_TEST_NAME"


# --- dates -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "toml_value",
    [
        "2024-07-01",                      # TOML local date
        "2024-07-01T00:00:00",             # TOML local date-time (naive = UTC)
        "2024-07-01T00:00:00Z",            # TOML offset date-time in UTC
        "2024-07-01T08:00:00+08:00",       # TOML offset date-time, Beijing time
        "2024-06-30T20:00:00-04:00",       # TOML offset date-time, negative offset
        '"2024-07-01"',                    # ISO strings
        '"2024-07-01T00:00:00"',
        '"2024-07-01T00:00:00Z"',
    ],
)
def test_run_start_accepts_toml_dates_datetimes_and_strings(tmp_path, toml_value):
    case = _case(tmp_path)
    _edit(case, START_LINE, f"start = {toml_value}")
    start = load_config(case).run.start
    assert isinstance(start, np.datetime64)
    assert start == np.datetime64("2024-07-01T00:00:00", "s")


@pytest.mark.filterwarnings("ignore:no explicit representation of timezones")
def test_string_with_utc_offset_is_converted_to_utc(tmp_path):
    case = _case(tmp_path)
    _edit(case, START_LINE, 'start = "2024-07-01T08:00:00+08:00"')
    assert load_config(case).run.start == np.datetime64("2024-07-01T00:00:00", "s")


@pytest.mark.parametrize("toml_value", ['"July 1st"', '"2024-13-01"', "12"])
def test_unparseable_date_is_a_config_error(tmp_path, toml_value):
    case = _case(tmp_path)
    _edit(case, START_LINE, f"start = {toml_value}")
    with pytest.raises(ConfigError, match=r"run\.start"):
        load_config(case)


@pytest.mark.parametrize("end", ["2024-07-01T00:00:00Z", "2024-06-30T00:00:00Z", "2024-07-01T07:59:59+08:00"])
def test_run_start_not_before_end_is_an_error(tmp_path, end):
    case = _case(tmp_path)
    path = _edit(case, END_LINE, f"end = {end}")
    with pytest.raises(ConfigError) as info:
        load_config(case)
    message = str(info.value)
    assert "run.start" in message and "run.end" in message
    assert str(path.resolve()) in message


# --- which file ------------------------------------------------------------------------------

def test_directory_argument_means_its_config_toml(tmp_path):
    case = _case(tmp_path)
    from_dir = load_config(case)
    from_file = load_config(case / CONFIG_NAME)
    assert from_dir.source == from_file.source == (case / CONFIG_NAME).resolve()
    assert from_dir.model_dump() == from_file.model_dump()


def test_directory_without_config_is_an_input_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as info:
        load_config(empty)
    assert CONFIG_NAME in str(info.value)


def test_invalid_toml_is_a_config_error_naming_the_file(tmp_path):
    case = _case(tmp_path)
    path = _edit(case, 'method = "analytical"', 'method = "analytical')
    with pytest.raises(ConfigError) as info:
        load_config(case)
    assert str(path.resolve()) in str(info.value)
    assert "TOML" in str(info.value)


# --- unknown keys ----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("old", "new", "where", "suggestion", "model"),
    [
        ("period_days", "period_dayz", "state.period_dayz", "period_days", StateConfig),
        ("model_data_mismatch", "model_data_mismatc", "observations.model_data_mismatc", "model_data_mismatch",
         ObservationsConfig),
        ("lat_max", "lat_mx", "grid.lat_mx", "lat_max", GridConfig),
        ("[solver]", "[solvr]", "solvr", "solver", Config),
    ],
)
def test_unknown_key_lists_allowed_keys_and_suggests_the_right_one(tmp_path, old, new, where, suggestion, model):
    case = _case(tmp_path)
    path = _edit(case, old, new)
    with pytest.raises(ConfigError) as info:
        load_config(case)
    message = str(info.value)
    assert str(path.resolve()) in message
    assert where in message
    assert f"did you mean {suggestion!r}" in message
    allowed = [k for k in model.model_fields if k != "source"]
    line = next(ln for ln in message.splitlines() if where in ln and "unknown key" in ln)
    for key in allowed:
        assert key in line, f"allowed key {key!r} missing from: {line}"


def test_missing_required_key_is_named(tmp_path):
    case = _case(tmp_path)
    _edit(case, 'footprints = "data/footprints.h5"\n', "")
    with pytest.raises(ConfigError) as info:
        load_config(case)
    assert "transport.footprints" in str(info.value)
    assert "missing" in str(info.value)


# --- site mismatch ---------------------------------------------------------------------------

def test_site_mismatch_is_parsed_into_mol_per_mol(tmp_path):
    case = _case(tmp_path)
    _edit(case, 'model_data_mismatch = "1.0 ppm"',
          'model_data_mismatch = "1.0 ppm"\nsite_mismatch = { AAA = "2 ppm", BBB = "500 ppb", CCC = "3e-6 mol mol-1" }')
    obs = load_config(case).observations
    assert obs.mismatch("AAA") == pytest.approx(2e-6, rel=1e-12)
    assert obs.mismatch("BBB") == pytest.approx(500e-9, rel=1e-12)
    assert obs.mismatch("CCC") == pytest.approx(3e-6, rel=1e-12)
    assert obs.mismatch("other") == pytest.approx(1e-6, rel=1e-12)  # falls back to model_data_mismatch


def test_site_mismatch_zero_is_allowed(tmp_path):
    case = _case(tmp_path)
    _edit(case, 'model_data_mismatch = "1.0 ppm"', 'model_data_mismatch = "1.0 ppm"\nsite_mismatch = { AAA = "0 ppm" }')
    assert load_config(case).observations.mismatch("AAA") == 0.0


@pytest.mark.parametrize("value", ['"-2 ppm"', '"2 km"', '"2"', '"2 bogons"'])
def test_bad_site_mismatch_is_a_config_error_naming_the_site(tmp_path, value):
    case = _case(tmp_path)
    _edit(case, 'model_data_mismatch = "1.0 ppm"',
          f'model_data_mismatch = "1.0 ppm"\nsite_mismatch = {{ AAA = {value} }}')
    with pytest.raises(ConfigError) as info:
        load_config(case)
    assert "site_mismatch" in str(info.value)
    assert "AAA" in str(info.value)
