"""FLEXPART reader: grid_time ``spec001_mr`` (s m³ kg⁻¹ → m² s mol⁻¹ by hand), release
metadata, refusals, and the openghg/PARIS ``srr`` layout (synthetic and the real sample)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from transport.errors import InputError
from transport.formats.common import open_dataset
from transport.formats.detect import detect_format, read_footprints

try:
    from tests import footprint_files as ff
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import footprint_files as ff

LAT = 51.0 + 0.25 * np.arange(6) + 0.125
LON = -10.0 + 0.25 * np.arange(7) + 0.125
SIM_START = np.datetime64("2018-09-02T00:00", "s")
TIMES = SIM_START - np.array([3, 2, 1], dtype="timedelta64[h]")  # backward: output times before the start
HEIGHTS = [100.0, 500.0]
RELEASES = [
    {"name": "MHD", "lon1": -9.91, "lon2": -9.89, "lat1": 53.32, "lat2": 53.34, "z1": 5.0, "z2": 15.0, "kindz": 1,
     "start": "2018-09-01T23:00", "end": "2018-09-02T00:00"},
    {"name": "TAC", "lon1": 1.13, "lon2": 1.15, "lat1": 52.51, "lat2": 52.53, "z1": 90.0, "z2": 110.0, "kindz": 1,
     "start": "2018-09-01T22:00", "end": "2018-09-01T23:00"},
]


def spec_values(seed=1):
    return np.random.default_rng(seed).gamma(0.5, 50.0, size=(2, 2, 3, 2, LAT.size, LON.size))  # s m3 kg-1


def grid_time(tmp_path, spec=None, **kwargs):
    spec = spec_values() if spec is None else spec
    return ff.flexpart_grid_time(tmp_path / "grid_time_20180902000000.nc", spec, LAT, LON, TIMES, HEIGHTS, RELEASES,
                                 **kwargs), spec


def test_grid_time_conversion_by_hand_and_release_metadata(tmp_path):
    path, spec = grid_time(tmp_path)
    records = list(read_footprints(path))
    assert len(records) == 2
    m_air, h = 0.0289647, 100.0  # kg mol-1; depth of the lowest layer = top of level 1 (m)
    for p, record in enumerate(records):
        expected = np.asarray(spec, np.float32).astype(np.float64)[:, p, :, 0].sum(axis=0) * m_air / h
        np.testing.assert_allclose(record.values, expected, rtol=1e-12)
        assert list(record.slots.start) == list(TIMES) and list(record.slots.end) == list(TIMES + np.timedelta64(1, "h"))
    mhd, tac = (r.receptor for r in records)
    assert (mhd.site, mhd.time, mhd.height) == ("MHD", np.datetime64("2018-09-01T23:00"), 10.0)
    assert mhd.latitude == pytest.approx(53.33, abs=1e-5) and mhd.longitude == pytest.approx(-9.90, abs=1e-5)
    assert mhd.obs_id == "MHD-10m-20180901T2300"
    assert (tac.site, tac.time, tac.height) == ("TAC", np.datetime64("2018-09-01T22:00"), 100.0)
    np.testing.assert_allclose(records[0].grid.lat, LAT, atol=1e-6)  # FLEXPART ≥ 10 writes cell centres
    (override, _) = read_footprints(path, site="XYZ")
    assert override.receptor.site == "XYZ" and override.receptor.obs_id.startswith("XYZ-10m-")


@pytest.mark.parametrize("units", ["ng m-3", "pptv", "s"])
def test_grid_time_other_output_units_are_refused(tmp_path, units):
    path, _ = grid_time(tmp_path, units=units)
    with pytest.raises(InputError, match="spec001_mr") as info:
        list(read_footprints(path))
    assert units in str(info.value)


def test_grid_time_forward_runs_and_unknown_release_heights_are_refused(tmp_path):
    path, _ = grid_time(tmp_path / "a", ldirect=1)
    with pytest.raises(InputError, match="forward run"):
        list(read_footprints(path))
    releases = [dict(r, kindz=2) for r in RELEASES]
    path = ff.flexpart_grid_time(tmp_path / "b" / "grid_time_20180902000000.nc", spec_values(), LAT, LON, TIMES, HEIGHTS,
                                 releases)
    with pytest.raises(InputError, match="RELKINDZ"):
        list(read_footprints(path))


def test_grid_time_nan_slot_is_zero_and_noted(tmp_path):
    spec = spec_values()
    spec[:, 0, 1] = np.nan  # one output time without particles for release 0
    path, _ = grid_time(tmp_path, spec=spec)
    first, second = read_footprints(path)
    assert np.all(first.values[1] == 0) and "1 all-NaN back-time slots set to 0" in first.notes
    assert second.notes == ()


def boundary(n_time, seed=2):
    rng = np.random.default_rng(seed)
    edges = {e: rng.uniform(0, 0.01, size=(n_time, 20, LON.size if e in "ns" else LAT.size)) for e in "nesw"}
    return edges


def test_paris_layout_records_boundary_and_units(tmp_path):
    times = np.datetime64("2018-09-02T00:00", "s") + np.arange(3) * np.timedelta64(1, "h")
    srr = np.random.default_rng(3).gamma(0.5, 1e-2, size=(3, LAT.size, LON.size))
    edges = boundary(3)
    path = ff.paris_file(tmp_path / "MHD-10magl_FLEXPART_ECMWFHRES_TEST_inert_201809.nc", srr, LAT, LON, times,
                         boundary=edges)
    with pytest.raises(InputError, match="--back-hours"):
        list(read_footprints(path))
    records = list(read_footprints(path, back_hours=240))
    assert [r.receptor.obs_id for r in records] == ["MHD-10m-20180902T0000", "MHD-10m-20180902T0100", "MHD-10m-20180902T0200"]
    for k, record in enumerate(records):
        np.testing.assert_array_equal(record.values[0], np.asarray(srr[k], np.float32))
        assert record.slots.end[0] == times[k] and record.slots.start[0] == times[k] - np.timedelta64(240, "h")
        for e in "nesw":
            np.testing.assert_array_equal(record.boundary[e], np.asarray(edges[e][k], np.float32))
        np.testing.assert_array_equal(record.boundary_height, ff.HEIGHTS)
    assert records[0].receptor.height == 10.0 and records[0].receptor.latitude == pytest.approx(53.32669, abs=1e-5)


def test_paris_variable_renamed_fp_is_still_flexpart(tmp_path):
    times = np.datetime64("2018-09-02T00:00", "s") + np.arange(2) * np.timedelta64(1, "h")
    srr = np.random.default_rng(4).gamma(0.5, 1e-2, size=(2, LAT.size, LON.size))
    path = ff.paris_file(tmp_path / "MHD-10magl_FLEXPART_EUROPE_201809.nc", srr, LAT, LON, times, variable="fp")
    with open_dataset(path) as ds:
        assert detect_format(ds, path) == "flexpart"  # fp on latitude/longitude, not NAME's lat/lon
    records = list(read_footprints(path, back_hours=240))
    np.testing.assert_array_equal(records[1].values[0], np.asarray(srr[1], np.float32))


@pytest.mark.skipif(not (ff.OPENGHG_FOOTPRINTS / "MHD-10magl_FLEXPART_ECMWFHRES_TEST_inert_201809.nc").is_file(),
                    reason="openghg FLEXPART/PARIS sample not found under ../shared/data/external")
def test_real_openghg_paris_sample():
    path = ff.OPENGHG_FOOTPRINTS / "MHD-10magl_FLEXPART_ECMWFHRES_TEST_inert_201809.nc"
    records = list(read_footprints(path, back_hours=240))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        srr = ds["srr"].transpose("time", "latitude", "longitude").values
        times = ds["time"].values.astype("datetime64[s]")
        units = ds["srr"].attrs["units"]
        edges = {e: ds[f"particle_locations_{e}"].values for e in "nesw"}
    assert units == "(mol/mol)/(mol/m2/s)"  # the real attribute, converted by transport.units with factor 1
    assert len(records) == srr.shape[0] == 49
    for k, record in enumerate(records):
        assert record.receptor.time == times[k] and record.receptor.site == "MHD" and record.receptor.height == 10.0
        np.testing.assert_array_equal(record.values[0], srr[k])
        np.testing.assert_array_equal(record.boundary["e"], edges["e"][k])
    totals = np.array([sum(r.boundary[e].sum() for e in "nesw") for r in records])
    assert np.all(totals <= 1 + 1e-6) and np.any(totals > 0)  # fractions of the released particles
    assert records[0].grid.shape == (12, 12)
