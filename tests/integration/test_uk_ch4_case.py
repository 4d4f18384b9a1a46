"""The real case cases/uk_ch4_2014 end to end: prepare (NAME ingestion, region mask), the
observations and background through the store, both solvers.  Skipped when the external data
(../shared/data/external) are absent."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.cli import main as cli
from inversion.config import load_config
from inversion.problem import open_inputs
from inversion.testing import assert_allclose_rel
from transport.store import FootprintStore

REPO = Path(__file__).resolve().parents[2]
CASE = REPO / "cases" / "uk_ch4_2014"
DATA_ROOT = (REPO / ".." / "shared" / "data" / "external").resolve()


def _prepare_module():
    spec = importlib.util.spec_from_file_location("uk_ch4_2014_prepare", CASE / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PREPARE = _prepare_module()
MISSING = PREPARE.missing_inputs(DATA_ROOT)
pytestmark = pytest.mark.skipif(bool(MISSING), reason=f"external data of uk_ch4_2014 absent under {DATA_ROOT}: "
                                f"{len(MISSING)} files missing")


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """The case's config in a temporary directory, its data prepared there, TANHUI_DATA set."""
    path = tmp_path_factory.mktemp("uk_ch4_2014")
    shutil.copy(CASE / "config.toml", path / "config.toml")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(PREPARE.DATA_ENV, str(DATA_ROOT))
        assert PREPARE.main(["--out", str(path / "data")]) == 0
        yield path


def test_prepared_store_and_regions(case):
    store = FootprintStore(case / "data" / "footprints.h5")
    assert store.n_obs == 12 and store.has_boundary
    assert sorted(set(store.obs["site"].values.tolist())) == ["MHD", "TAC"]
    regions = xr.open_dataset(case / "data" / "regions.nc", engine="h5netcdf")
    assert regions["region"].values.tolist() == ["UK", "IRELAND", "NW_EUROPE", "REST_OF_DOMAIN"]
    np.testing.assert_array_equal(regions["region_fraction"].sum("region"), 1.0)
    # the UK mask: Great Britain and Northern Ireland cells, Mace Head (Ireland) outside it
    uk = regions["region_fraction"].sel(region="UK")
    assert float(uk.sel(lat=51.5, lon=-0.1, method="nearest")) == 1.0  # London
    assert float(uk.sel(lat=53.33, lon=-9.9, method="nearest")) == 0.0
    assert float(regions["region_fraction"].sel(region="IRELAND").sel(lat=53.35, lon=-6.26, method="nearest")) == 1.0


def test_background_through_the_store_matches_acrg(case):
    """The acrg benchmark bc (MHD, Feb 2014) from the ingested particle-exit fractions and the
    MOZART curtains, through load_observations (month mapping)."""
    inputs = open_inputs(load_config(case))
    obs = inputs.obs
    mhd_feb = (obs["site"] == "MHD") & (obs["time"] < np.datetime64("2014-03-01"))
    assert_allclose_rel(obs["background"].values[mhd_feb.values] * 1e9, np.array([2080.6752, 2073.4096, 2070.8722]),
                        1e-6, "MHD Feb 2014 background vs acrg (ppb)")
    np.testing.assert_allclose(obs["background_edge"].sum("edge"), obs["background"], rtol=1e-14)
    assert obs.sizes["obs"] == 12 and (obs["n_samples"] >= 2).all()
    reports = {r["site"]: r for r in json.loads(obs.attrs["selection"])}
    assert reports["TAC"]["inlet_action"].startswith("warn")
    assert (reports["TAC"]["inlet_height_obs"], reports["TAC"]["inlet_height_footprints"]) == (185.0, 100.0)
    for r in reports.values():  # every sample is accounted for
        assert r["samples"] == (r["missing_value"] + r["flagged"] + r["outside_run"] + r["unmatched"]
                                + r["outside_hours"] + r["too_few_in_window"] + r["used"])
    # observations are ~1900–2000 ppb, the MOZART background ~2050–2080 ppb: the reason for boundary scaling
    assert (obs["value"] < obs["background"]).all()


def test_both_solvers_agree_on_the_uk_total(case, capsys):
    totals = {}
    for solver in ("analytical", "variational"):
        out = case / f"output-{solver}"
        assert cli(["run", str(case), "--solver", solver, "--output-dir", str(out)]) == 0
        printed = capsys.readouterr().out
        assert "UK" in printed and "Gg CH4 yr-1" in printed
        rows = [line.split(",") for line in (out / "totals.csv").read_text().splitlines()]
        header = rows[0]
        table = {(r[0], r[1]): dict(zip(header, r)) for r in rows[1:]}
        totals[solver] = table[("UK", "whole_run")]
        state = xr.open_dataset(out / "posterior_state.nc", engine="h5netcdf")
        assert state["posterior_boundary_scaling"].dims == ("edge", "period")
        selection = json.loads((out / "diagnostics.json").read_text())["observation_selection"]
        assert sorted(r["site"] for r in selection) == ["MHD", "TAC"] and sum(r["observations"] for r in selection) == 12
    a, v = totals["analytical"], totals["variational"]
    for key in ("prior", "posterior", "posterior_sd"):
        assert_allclose_rel(float(v[key]), float(a[key]), 1e-6, f"UK {key}: variational vs analytical")
    prior, prior_sd, post_sd = float(a["prior"]), float(a["prior_sd"]), float(a["posterior_sd"])
    assert_allclose_rel(prior_sd, 0.5 * prior, 1e-9, "prior σ of the UK total = covariance.sigma × prior (csv: 10 digits)")
    assert 0 < post_sd < prior_sd


def test_missing_data_root_lists_the_files(tmp_path, capsys):
    assert PREPARE.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "MHD-10magl_EUROPE_201402.nc" in err and "ch4_EUROPE_201403.nc" in err and "TANHUI_DATA" in err
    assert not (tmp_path / "data").exists()
