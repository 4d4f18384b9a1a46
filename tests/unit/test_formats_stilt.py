"""STILT reader: R-STILT v2 (time-resolved and integrated), R-STILT v1 ``Footprint``, ICOS
STILT, and the refusals (projected grids, wrong units, unknown fill values, NaN)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from transport.errors import InputError
from transport.formats.detect import read_footprints

try:
    from tests import footprint_files as ff
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import footprint_files as ff

LAT = np.arange(40.05, 41.0, 0.1)  # 10 centres, 0.1°
LON = np.arange(-112.95, -111.9, 0.1)  # 11 centres
RECEPTOR = np.datetime64("2015-06-18T22:00", "s")


def rng_values(shape, seed=0):
    return np.random.default_rng(seed).gamma(0.5, 1e-3, size=shape)


def test_time_resolved_rstilt_v2_slots_and_fill_values(tmp_path):
    values = rng_values((4, LAT.size, LON.size))
    values[0, 0, :3] = -1.0  # the documented fill value (R-STILT: cells never written)
    values[2] = np.nan  # a slot without particles: written as the fill value -1, as ncdf4 writes NA
    times = RECEPTOR - np.arange(1, 5) * np.timedelta64(1, "h")  # R-STILT writes newest first
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times)
    (record,) = read_footprints(path, site="SLC")

    r = record.receptor
    assert (r.time, r.latitude, r.longitude, r.height, r.site) == (RECEPTOR, 40.5, -112.5, 5.0, "SLC")
    assert r.obs_id == "SLC-5m-20150618T2200"
    assert list(record.slots.start) == list(times[::-1]) and list(record.slots.end) == list(times[::-1] + np.timedelta64(1, "h"))
    expected = np.asarray(values, np.float32).astype(np.float64)[::-1]  # oldest first
    expected[expected == -1.0] = 0.0
    expected[np.isnan(expected)] = 0.0
    np.testing.assert_array_equal(record.values, expected)
    assert any(f"{3 + LAT.size * LON.size} cells at the documented fill value -1 set to 0" in n for n in record.notes)
    np.testing.assert_allclose(record.grid.lat, LAT)
    np.testing.assert_allclose(record.grid.lat_bounds[0], [40.0, 40.1])


def test_nan_slots_are_zero_and_counted_and_an_all_nan_footprint_is_refused(tmp_path):
    values = rng_values((3, LAT.size, LON.size))
    values[1] = np.nan
    times = RECEPTOR - np.arange(3, 0, -1) * np.timedelta64(1, "h")
    path = ff.stilt_v2(tmp_path / "a" / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times, fill=np.nan)
    (record,) = read_footprints(path, site="SLC")
    assert record.notes == ("receptor position from the R-STILT file name", "1 all-NaN back-time slots set to 0")
    assert np.all(record.values[1] == 0) and np.all(np.isfinite(record.values))
    values[:] = np.nan
    path = ff.stilt_v2(tmp_path / "b" / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times, fill=np.nan)
    with pytest.raises(InputError, match="every value is NaN"):
        list(read_footprints(path, site="SLC"))


def test_integrated_footprint_needs_its_back_time(tmp_path):
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", rng_values((1, LAT.size, LON.size)), LAT, LON,
                       [RECEPTOR])
    with pytest.raises(InputError, match="--back-hours"):
        list(read_footprints(path, site="SLC"))
    (record,) = read_footprints(path, site="SLC", back_hours=24)
    assert record.slots.size == 1
    assert record.slots.start[0] == RECEPTOR - np.timedelta64(24, "h") and record.slots.end[0] == RECEPTOR

    stated = ff.stilt_v2(tmp_path / "b" / "201506182200_-112.5_40.5_5_foot.nc", rng_values((1, LAT.size, LON.size)), LAT,
                         LON, [RECEPTOR], attrs={"backtime": "240 hours"})
    (record,) = read_footprints(stated, site="SLC")
    assert record.slots.start[0] == RECEPTOR - np.timedelta64(240, "h")
    with pytest.raises(InputError, match="backtime"):
        list(read_footprints(stated, site="SLC", back_hours=48))  # contradicts the file


def test_projected_grid_is_refused(tmp_path):
    ds = xr.Dataset(
        {"foot": (("time", "y", "x"), np.zeros((1, 3, 4), np.float32), {"units": "ppm (umol-1 m2 s)"}),
         "projection": ((), 0, {"grid_mapping_name": "lambert_conformal_conic"})},
        coords={"time": ("time", [1.4e9], {"units": "seconds since 1970-01-01 00:00:00Z"}),
                "x": ("x", np.arange(4) * 1000.0, {"units": "m"}), "y": ("y", np.arange(3) * 1000.0, {"units": "m"})},
    )
    path = ff.write(ds, tmp_path / "201506182200_-112.5_40.5_5_foot.nc")
    with pytest.raises(InputError, match="projected x/y grid.*lambert_conformal_conic") as info:
        list(read_footprints(path, site="SLC", back_hours=24))
    assert "foot" in str(info.value) and "longitude/latitude" in str(info.value)


@pytest.mark.parametrize("units", ["ppm", "umol m-2 s-1", "bananas"])
def test_wrong_or_unknown_units_are_refused(tmp_path, units):
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", rng_values((2, LAT.size, LON.size)), LAT, LON,
                       [RECEPTOR - np.timedelta64(2, "h"), RECEPTOR - np.timedelta64(1, "h")], units=units)
    with pytest.raises(InputError, match="foot") as info:
        list(read_footprints(path, site="SLC"))
    assert units in str(info.value)


def test_missing_units_are_refused(tmp_path):
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", rng_values((2, LAT.size, LON.size)), LAT, LON,
                       [RECEPTOR - np.timedelta64(2, "h"), RECEPTOR - np.timedelta64(1, "h")], units=None)
    with pytest.raises(InputError, match="no units attribute"):
        list(read_footprints(path, site="SLC"))


def test_rstilt_v1_footprint_with_wrong_label_needs_the_explicit_option(tmp_path):
    values = rng_values((LAT.size, LON.size))
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, None, variable="Footprint",
                       dims=("latitude", "longitude"), units="umol m-2 s-1")
    with pytest.raises(InputError, match="--stilt-v1-units"):
        list(read_footprints(path, site="SLC", back_hours=24))
    (record,) = read_footprints(path, site="SLC", back_hours=24, stilt_v1_units=True)
    np.testing.assert_array_equal(record.values[0], np.asarray(values, np.float32))
    assert record.receptor.time == RECEPTOR  # from the file name: the file has no time
    assert any("ignored" in n for n in record.notes)


def test_undocumented_fill_values_partial_nan_and_negatives_are_refused(tmp_path):
    values = rng_values((2, LAT.size, LON.size))
    values[0, 1, 1] = -999.0
    times = [RECEPTOR - np.timedelta64(2, "h"), RECEPTOR - np.timedelta64(1, "h")]
    path = ff.stilt_v2(tmp_path / "a" / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times, fill=-999.0)
    with pytest.raises(InputError, match="_FillValue -999"):
        list(read_footprints(path, site="SLC"))
    values[0, 1, 1] = np.nan  # a NaN inside a valid slot
    path = ff.stilt_v2(tmp_path / "b" / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times, fill=np.nan)
    with pytest.raises(InputError, match="1 NaN values inside"):
        list(read_footprints(path, site="SLC"))
    values[0, 1, 1] = -0.5
    path = ff.stilt_v2(tmp_path / "c" / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times)
    with pytest.raises(InputError, match="negative"):
        list(read_footprints(path, site="SLC"))


def test_latitude_first_file_name_is_refused_as_a_swap(tmp_path):
    path = ff.stilt_v2(tmp_path / "201506182200_40.5_-112.5_5_foot.nc", rng_values((1, LAT.size, LON.size)), LAT, LON,
                       [RECEPTOR])
    with pytest.raises(InputError, match="swapped"):
        list(read_footprints(path, site="SLC", back_hours=24))


def test_netcdf3_files_are_read_like_netcdf4(tmp_path):
    values = rng_values((2, LAT.size, LON.size))
    times = [RECEPTOR - np.timedelta64(2, "h"), RECEPTOR - np.timedelta64(1, "h")]
    nc4 = ff.stilt_v2(tmp_path / "4" / "201506182200_-112.5_40.5_5_foot.nc", values, LAT, LON, times)
    with xr.open_dataset(nc4, engine="h5netcdf", mask_and_scale=False, decode_times=False) as ds:
        nc3 = tmp_path / "3" / nc4.name
        nc3.parent.mkdir()
        ds.to_netcdf(nc3, engine="scipy", format="NETCDF3_64BIT")
    assert nc3.read_bytes()[:3] == b"CDF"
    (a,), (b,) = read_footprints(nc4, site="SLC"), read_footprints(nc3, site="SLC")
    np.testing.assert_array_equal(a.values, b.values)
    assert vars(a.receptor) == vars(b.receptor)


def test_unknown_reader_options_and_forced_formats(tmp_path):
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", rng_values((1, LAT.size, LON.size)), LAT, LON,
                       [RECEPTOR])
    with pytest.raises(TypeError, match="back_hour"):
        list(read_footprints(path, site="SLC", back_hour=24))  # a typo is an error, not ignored
    with pytest.raises(InputError, match="fp"):
        list(read_footprints(path, site="SLC", back_hours=24, format="name"))  # forced: no guessing back
    (record,) = read_footprints(path, site="SLC", back_hours=24, format="stilt")
    assert record.receptor.site == "SLC"


def test_missing_site_is_refused(tmp_path):
    path = ff.stilt_v2(tmp_path / "201506182200_-112.5_40.5_5_foot.nc", rng_values((1, LAT.size, LON.size)), LAT, LON,
                       [RECEPTOR])
    with pytest.raises(InputError, match="--site"):
        list(read_footprints(path, back_hours=24))


def test_icos_stilt_name_lower_left_grid_and_station_directory(tmp_path):
    lat_ll = 33.0 + np.arange(6) / 12.0
    lon_ll = -15.0 + np.arange(5) / 8.0
    values = rng_values((6, 5))
    path = ff.icos_stilt(tmp_path / "Footprints" / "JFJ" / "foot2012x12x08x18x46.55Nx007.98Ex00720_aggreg.nc", values,
                         lat_ll, lon_ll, np.datetime64("2012-12-08T18:00"))
    (record,) = read_footprints(path, stilt_cell_coordinates="lower_left")
    r = record.receptor
    assert (r.site, r.latitude, r.longitude, r.height) == ("JFJ", 46.55, 7.98, 720.0)
    assert r.time == np.datetime64("2012-12-08T18:00") and r.obs_id == "JFJ-720m-20121208T1800"
    assert record.slots.start[0] == np.datetime64("2012-11-28T18:00")  # "240 hours"
    np.testing.assert_allclose(record.grid.lat_bounds[:, 0], lat_ll)
    np.testing.assert_allclose(record.grid.lon_bounds[-1, 1], -15.0 + 5 / 8.0)
    np.testing.assert_array_equal(record.values[0], values)
    (centred,) = read_footprints(path)  # the default reads the same coordinates as centres
    np.testing.assert_allclose(centred.grid.lon, lon_ll)


@pytest.mark.skipif(not ff.ICOS_STILT.is_file(), reason=f"real ICOS STILT sample not found at {ff.ICOS_STILT}")
def test_real_icos_stilt_sample():
    (record,) = read_footprints(ff.ICOS_STILT, stilt_cell_coordinates="lower_left")
    with xr.open_dataset(ff.ICOS_STILT, engine="h5netcdf") as ds:
        raw = ds["foot"].values
    r = record.receptor
    assert (r.site, r.latitude, r.longitude, r.height) == ("XXX", 46.55, 7.98, 720.0)
    assert r.time == np.datetime64("2012-12-08T18:00")
    assert record.slots.end[0] - record.slots.start[0] == np.timedelta64(240, "h")
    # the ICOS STILT domain is −15…35° E, 33…73° N at 1/8° × 1/12° (README of the sample)
    np.testing.assert_allclose([record.grid.lon_bounds[0, 0], record.grid.lon_bounds[-1, 1]], [-15.0, 35.0], atol=1e-9)
    np.testing.assert_allclose([record.grid.lat_bounds[0, 0], record.grid.lat_bounds[-1, 1]], [33.0, 73.0], atol=1e-9)
    assert record.values.shape == (1, 480, 400)
    np.testing.assert_array_equal(record.values, raw)  # "ppm per (micromol m-2 s-1)" is m2 s mol-1, factor 1
    assert record.values.sum() == pytest.approx(0.5283, rel=1e-3)
