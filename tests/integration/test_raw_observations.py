"""Raw observations (CSV / openghg) + background from curtains (+ boundary scaling) through
build_problem, both solvers and the CLI, on a tiny synthetic case written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

from inversion.background import EDGES
from inversion.cli import main as cli
from inversion.config import load_config
from inversion.parallel import SerialComm
from inversion.problem import build_problem, open_inputs
from transport.grid import Grid, TimeAxis
from transport.store import FootprintStore

GRID = Grid.regular(50.0, 54.0, -4.0, 2.0, 1.0, 1.0)  # 4 lat × 6 lon
HEIGHT = np.array([500.0, 1500.0])
AXIS = TimeAxis.regular("2014-01-31T00:00:00", "2014-03-02T00:00:00", "1D")
RECEPTORS = [("MHD", 10.0, -3.5, 53.3), ("TAC", 100.0, 1.1, 52.5)]
T_RECEPTOR = [np.datetime64("2014-02-01T12:00", "s") + np.timedelta64(2 * d, "D") for d in range(14)]

CONFIG = """\
[run]
name = "raw observations"
species = "ch4"
start = 2014-02-01T00:00:00Z
end = 2014-03-01T00:00:00Z

[transport]
footprints = "footprints.h5"

[observations]
averaging_window = "2 h"
measurement_uncertainty = "repeatability"
unmatched = "drop"
inlet_mismatch = "warn"
model_data_mismatch = "10 ppb"
{sources}

[background]
method = "curtains"
curtains = ["bc_201402.nc"]
curtain_units = "mol mol-1"

[prior]
file = "prior.nc"
optimised = ["flux"]

[state]
regions = "regions.nc"
period_days = 14
boundary_scaling = {scaling}
boundary_scaling_sigma = 0.01

[covariance]
sigma = 0.5
correlation_length = "100 km"
correlation_time = "7 day"

[solver]
tolerance = 1e-12
max_iterations = 200
"""

SOURCES = """
[[observations.sources]]
file = "mhd.csv"

[[observations.sources]]
file = "tac.nc"
site = "TAC"
format = "openghg"
"""


def _write_case(case: Path, rng: np.random.Generator, *, scaling: bool = True) -> dict:
    case.mkdir(parents=True, exist_ok=True)
    obs, rows, boundary = [], [], {e: [] for e in EDGES}
    for site, height, lon, lat in RECEPTORS:
        for t in T_RECEPTOR:
            obs.append((f"{site}-{height:g}magl-{t}", t, site, lat, lon, height))
            row = np.zeros((AXIS.size, *GRID.shape))
            day = int((t - AXIS.start[0]) // np.timedelta64(1, "D"))
            row[day - 1: day + 1] = rng.uniform(0.0, 2.0, (2, *GRID.shape))  # m2 s mol-1, two days back
            rows.append(row.ravel())
            raw = {e: rng.uniform(0.0, 1.0, (HEIGHT.size, GRID.shape[1] if e in "ns" else GRID.shape[0])) for e in EDGES}
            total = sum(v.sum() for v in raw.values())
            for e in EDGES:
                boundary[e].append(raw[e] / total)
    table = {k: np.array(v) for k, v in zip(("obs_id", "time", "site", "latitude", "longitude", "height"), zip(*obs))}
    table["time"] = table["time"].astype("datetime64[s]")
    with FootprintStore.create(case / "footprints.h5", GRID, AXIS, table, boundary_height=HEIGHT) as writer:
        writer.append(sp.csr_matrix(np.array(rows)), boundary={e: np.array(v) for e, v in boundary.items()})
    curtains = {e: 1.9e-6 + 2e-8 * rng.standard_normal((HEIGHT.size, GRID.shape[1] if e in "ns" else GRID.shape[0], 1))
                for e in EDGES}
    xr.Dataset({f"vmr_{e}": (("height", "lon" if e in "ns" else "lat", "time"), v) for e, v in curtains.items()},
               coords={"height": HEIGHT, "lat": GRID.lat, "lon": GRID.lon,
                       "time": [np.datetime64("2014-02-01", "ns")]}).to_netcdf(case / "bc_201402.nc", engine="h5netcdf")
    flux = 1e-8 * (1 + rng.uniform(0, 1, (1, *GRID.shape))).repeat(AXIS.size, axis=0)
    xr.Dataset({"flux": (("time", "lat", "lon"), flux, {"units": "mol m-2 s-1"})},
               coords={"time": AXIS.start, "lat": GRID.lat, "lon": GRID.lon}).to_netcdf(case / "prior.nc", engine="h5netcdf")
    fraction = np.zeros((2, *GRID.shape))
    fraction[0, :, :3], fraction[1, :, 3:] = 1.0, 1.0
    xr.Dataset({"region_fraction": (("region", "lat", "lon"), fraction)},
               coords={"region": ["WEST", "EAST"], "lat": GRID.lat, "lon": GRID.lon}).to_netcdf(
        case / "regions.nc", engine="h5netcdf")
    # MHD: CSV, one sample per hour around each receptor (in and out of its 2-h window)
    lines = ["time,site,value [ppb],uncertainty [ppb],inlet_height [m]"]
    for t in T_RECEPTOR:
        for minutes in (-30, 30, 90, 150):
            when = t + np.timedelta64(minutes, "m")
            lines.append(f"{np.datetime_as_string(when, unit='s')}Z,MHD,{1900 + rng.normal(0, 5):.3f},2.0,10")
    (case / "mhd.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # TAC: openghg/DECC layout at 185 m (footprints at 100 m), one-minute samples from 11:00 to 15:00
    times = np.concatenate([t + np.arange(-60, 180).astype("timedelta64[m]") for t in T_RECEPTOR])
    seconds = (times - np.datetime64("2013-01-01T00:00:00", "s")).astype(np.int64) - 30
    xr.Dataset({"ch4": ("time", 1950 + rng.normal(0, 3, times.size), {"units": "1e-9"}),
                "ch4_variability": ("time", np.full(times.size, 1.5), {"units": "1e-9"})},
               coords={"time": ("time", seconds, {"units": "seconds since 2013-01-01", "label": "left",
                                                   "sampling_period_seconds": 60})},
               attrs={"inlet_height_magl": 185.0, "species": "ch4"}).to_netcdf(case / "tac.nc", engine="h5netcdf")
    (case / "config.toml").write_text(CONFIG.format(sources=SOURCES, scaling="true" if scaling else "false"),
                                      encoding="utf-8")
    return {"curtains": curtains, "boundary": boundary}


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    path = tmp_path_factory.mktemp("raw") / "case"
    return path, _write_case(path, np.random.default_rng(42))


def test_observations_background_and_boundary_columns(case):
    path, truth = case
    config = load_config(path)
    problem = build_problem(config, SerialComm())
    obs = problem.obs
    assert obs.sizes["obs"] == 2 * len(T_RECEPTOR)
    mhd = obs.where(obs["site"] == "MHD", drop=True)
    assert (mhd["n_samples"].values == 2).all()  # :30 and :90 of the 12:00–14:00 window
    tac = obs.where(obs["site"] == "TAC", drop=True)
    assert (tac["n_samples"].values == 120).all()
    # background = Σ_e Σ_hk p · c, recomputed here from what was written
    store = FootprintStore(path / "footprints.h5")
    rows = obs["row"].values
    by_hand = np.array([[np.sum(truth["boundary"][e][r] * truth["curtains"][e][..., 0]) for e in EDGES] for r in rows])
    np.testing.assert_allclose(obs["background_edge"].values, by_hand, rtol=2e-7)  # exit fractions stored as float32
    np.testing.assert_allclose(obs["background"].values, by_hand.sum(axis=1), rtol=2e-7)
    # H = [K E | X]: the boundary columns hold each edge's contribution in the observation's period
    H = problem.H.jacobian_local()
    K = store.read_rows(0, store.n_obs)[rows].toarray().astype(np.float64)
    n_flux = problem.state.n_flux
    np.testing.assert_allclose(H[:, :n_flux], K @ problem.state.E.toarray(), rtol=1e-12)
    period = problem.state.periods.locate(obs["time"].values)
    X = np.zeros((rows.size, 4 * problem.state.n_period))
    for k in range(4):
        X[np.arange(rows.size), k * problem.state.n_period + period] = obs["background_edge"].values[:, k]
    np.testing.assert_array_equal(H[:, n_flux:], X)
    # the background is modelled (scaled), so y does not subtract it
    np.testing.assert_allclose(problem.y, obs["value"].values - problem.fixed_model, rtol=1e-15)
    np.testing.assert_allclose(problem.simulate(problem.x_b) - problem.fixed_model - H[:, :n_flux] @ problem.x_b[:n_flux],
                               obs["background"].values, rtol=1e-12)
    assert problem.B.size == problem.state.size == n_flux + 8
    np.testing.assert_allclose(problem.B.variance()[n_flux:], 0.01**2)


def test_both_solvers_agree_and_write_the_boundary_scaling(case, tmp_path):
    path, _ = case
    out = {}
    for solver in ("analytical", "variational"):
        assert cli(["run", str(path), "--solver", solver, "--output-dir", str(tmp_path / solver)]) == 0
        out[solver] = xr.open_dataset(tmp_path / solver / "posterior_state.nc", engine="h5netcdf").load()
    a, v = out["analytical"], out["variational"]
    assert a["posterior_boundary_scaling"].dims == ("edge", "period")
    assert a["edge"].values.tolist() == ["N", "E", "S", "W"]
    np.testing.assert_allclose(v["posterior_boundary_scaling"], a["posterior_boundary_scaling"], rtol=1e-8)
    np.testing.assert_allclose(v["posterior_scaling_factor"], a["posterior_scaling_factor"], rtol=1e-8)
    np.testing.assert_array_equal(a["prior_boundary_scaling"], 1.0)
    assert (a["posterior_sd_boundary_scaling"] <= 0.01 + 1e-15).all()


def test_without_scaling_the_background_is_subtracted(tmp_path):
    _write_case(tmp_path / "case", np.random.default_rng(7), scaling=False)
    problem = build_problem(load_config(tmp_path / "case"), SerialComm())
    assert problem.state.size == problem.state.n_flux
    np.testing.assert_allclose(problem.y, problem.obs["value"].values - problem.obs["background"].values
                               - problem.fixed_model, rtol=1e-15)


def test_selection_report_and_bad_policies_through_the_cli(case, tmp_path, capsys):
    path, _ = case
    inputs = open_inputs(load_config(path))
    reports = {r["site"]: r for r in json.loads(inputs.obs.attrs["selection"])}
    assert reports["TAC"]["inlet_action"].startswith("warn") and reports["TAC"]["inlet_height_obs"] == 185.0
    assert reports["TAC"]["unmatched"] == len(T_RECEPTOR) * 120  # the second hour after each window
    assert reports["MHD"]["unmatched"] == 2 * len(T_RECEPTOR)
    strict = tmp_path / "strict.toml"
    text = (path / "config.toml").read_text().replace('unmatched = "drop"', 'unmatched = "error"')
    strict.write_text(text.replace('"footprints.h5"', f'"{path}/footprints.h5"').replace('"bc_201402.nc"', f'"{path}/bc_201402.nc"')
                      .replace('"prior.nc"', f'"{path}/prior.nc"').replace('"regions.nc"', f'"{path}/regions.nc"')
                      .replace('"mhd.csv"', f'"{path}/mhd.csv"').replace('"tac.nc"', f'"{path}/tac.nc"'))
    assert cli(["run", str(strict), "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "have no footprint window" in err and "mhd.csv" in err and 'unmatched = "drop"' in err
    strict.write_text(strict.read_text().replace('inlet_mismatch = "warn"', 'inlet_mismatch = "error"'))
    assert cli(["run", str(strict), "--output-dir", str(tmp_path / "y")]) == 2
    assert "185 m above ground" in capsys.readouterr().err


def test_state_extras_round_trip_through_the_dataset(case):
    path, _ = case
    state = open_inputs(load_config(path)).state
    x = np.random.default_rng(3).normal(1.0, 0.1, state.size)
    ds = state.to_dataset(x, "truth")
    assert ds["truth_boundary_scaling"].dims == ("edge", "period")
    np.testing.assert_array_equal(ds["truth_boundary_scaling"].values.ravel(), x[state.extra_slice("boundary_scaling")])
    np.testing.assert_array_equal(state.from_dataset(ds, "truth", "twin.nc"), x)
    with pytest.raises(Exception, match="truth_boundary_scaling"):
        state.from_dataset(ds.drop_vars("truth_boundary_scaling"), "truth", "twin.nc")


def test_background_series_method(case, tmp_path):
    path, _ = case
    lines = ["time,site,background [ppb]"]
    for site, base in (("MHD", 1890.0), ("TAC", 1895.0)):
        lines += [f"2014-02-01T00:00:00Z,{site},{base}", f"2014-03-01T00:00:00Z,{site},{base + 28}"]
    (tmp_path / "bg.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    text = (path / "config.toml").read_text()
    text = text.replace('method = "curtains"\ncurtains = ["bc_201402.nc"]\ncurtain_units = "mol mol-1"',
                        f'method = "series"\nseries = ["{tmp_path}/bg.csv"]').replace("boundary_scaling = true",
                                                                                   "boundary_scaling = false")
    for name in ("footprints.h5", "prior.nc", "regions.nc", "mhd.csv", "tac.nc"):
        text = text.replace(f'"{name}"', f'"{path / name}"')
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    obs = open_inputs(load_config(tmp_path)).obs
    days = (obs["time"].values - np.datetime64("2014-02-01T00:00:00")) / np.timedelta64(1, "D")
    expected = np.where(obs["site"].values == "MHD", 1890.0, 1895.0) + days  # 28 ppb over 28 days
    np.testing.assert_allclose(obs["background"].values, expected * 1e-9, rtol=1e-12)
    assert "background_edge" not in obs
