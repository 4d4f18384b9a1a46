"""Configuration of observation sources, selection, background and boundary scaling."""

from __future__ import annotations

from pathlib import Path

import pytest

from inversion.config import ConfigError, load_config

BASE = """\
[run]
name = "t"
species = "ch4"
start = 2014-02-01
end = 2014-03-01

[transport]
footprints = "fp.h5"

[prior]
file = "prior.nc"
optimised = ["flux"]

[state]
regions = "regions.nc"
"""

SOURCES = """
[observations]
averaging_window = "2 h"

[[observations.sources]]
file = "${TANHUI_TEST_OBS:-obs}/mhd.nc"
site = "MHD"
format = "openghg"

[[observations.sources]]
file = "tac.csv"
"""

CURTAINS = """
[background]
method = "curtains"
curtains = ["$TANHUI_TEST_BC/bc_201402.nc", "bc_201403.nc"]
curtain_units = "mol mol-1"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_sources_curtains_and_default_variables_resolve(tmp_path, monkeypatch):
    monkeypatch.delenv("TANHUI_TEST_OBS", raising=False)
    monkeypatch.setenv("TANHUI_TEST_BC", "/data/bc")
    config = load_config(write(tmp_path, BASE + SOURCES + CURTAINS))
    first, second = config.observations.source_list()
    assert first.file == tmp_path / "obs" / "mhd.nc" and first.site == "MHD" and first.format == "openghg"
    assert second.file == tmp_path / "tac.csv" and second.format == "auto"  # observations.format
    assert config.background.curtains == [Path("/data/bc/bc_201402.nc"), tmp_path / "bc_201403.nc"]
    assert config.background.mapping == "month"
    paths = config.input_paths()
    assert paths["observations.sources[1].file"] == tmp_path / "tac.csv"
    assert paths["background.curtains[0]"] == Path("/data/bc/bc_201402.nc")
    assert config.observations.averaging_window_s == 7200.0
    monkeypatch.setenv("TANHUI_TEST_OBS", "/elsewhere")
    assert load_config(write(tmp_path, BASE + SOURCES)).observations.sources[0].file == Path("/elsewhere/mhd.nc")


@pytest.mark.parametrize("extra, problem", [
    ('\n[observations]\nfile = "o.nc"\n\n[[observations.sources]]\nfile = "a.nc"\n', "either observations.file"),
    ("\n[observations]\n", "either observations.file"),
    ('\n[observations]\nfile = "o.nc"\nhours = [24]\n', "hours must list"),
    ('\n[observations]\nfile = "o.nc"\nhours_clock = "CET"\n', "hours_clock"),
    ('\n[observations]\nfile = "o.nc"\naveraging_window = "0 h"\n', "averaging_window must be > 0"),
    ('\n[observations]\nfile = "o.nc"\nmeasurement_uncertainty = "both"\n', "min_samples ≥ 2"),
    ('\n[observations]\nfile = "o.nc"\ninlet_mismatch = "ignore"\n', "inlet_mismatch"),
    ('\n[observations]\nfile = "o.nc"\n\n[background]\nmethod = "curtains"\n', "needs curtains"),
    ('\n[observations]\nfile = "o.nc"\n\n[background]\ncurtains = ["a.nc"]\n', "used only with method"),
    ('\n[observations]\nfile = "o.nc"\n\n[background]\ntime_mapping = "month"\n', "time_mapping is used only"),
    ('\n[observations]\nfile = "o.nc"\n\n[background]\nmethod = "series"\nseries = ["s.csv"]\ncurtain_units = "ppb"\n',
     "used only with method"),
])
def test_bad_observation_and_background_settings(tmp_path, extra, problem):
    with pytest.raises(ConfigError, match=problem):
        load_config(write(tmp_path, BASE + extra))


def test_boundary_scaling_needs_curtains(tmp_path, monkeypatch):
    monkeypatch.setenv("TANHUI_TEST_BC", "/data/bc")
    text = BASE.replace('regions = "regions.nc"', 'regions = "regions.nc"\nboundary_scaling = true')
    with pytest.raises(ConfigError, match="boundary_scaling.*curtains"):
        load_config(write(tmp_path, text + '\n[observations]\nfile = "o.nc"\n'))
    config = load_config(write(tmp_path, text + SOURCES + CURTAINS))
    assert config.state.boundary_scaling and config.state.boundary_scaling_sigma == 0.1


def test_unknown_key_in_a_source_lists_the_allowed_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, BASE + SOURCES.replace('site = "MHD"', 'sight = "MHD"')))
    assert "did you mean 'site'" in str(info.value) and "file, format, site" in str(info.value)


def test_curtain_units_must_be_a_mole_fraction(tmp_path, monkeypatch):
    monkeypatch.setenv("TANHUI_TEST_BC", "/data/bc")
    with pytest.raises(ConfigError, match="curtain_units"):
        load_config(write(tmp_path, BASE + SOURCES + CURTAINS.replace('"mol mol-1"', '"kg"')))
