"""NAME reader: integrated ``fp``, time-resolved ``fp_HiTRes`` (H_back slots and residual),
boundary sensitivities, receptor metadata, non-monotonic/duplicated times, refusals, and
the real acrg and openghg files."""

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

LAT = 51.211 + 0.234 * np.arange(5)
LON = -0.396 + 0.352 * np.arange(6)
T0 = np.datetime64("2014-02-01T00:00", "s")
TIMES = T0 + np.array([0, 2, 4], dtype="timedelta64[h]")


def fp_values(n_time, seed=0):
    return np.random.default_rng(seed).gamma(0.5, 0.05, size=(LAT.size, LON.size, n_time))


def edges(n_time, seed=1):
    rng = np.random.default_rng(seed)
    return {e: rng.uniform(0, 0.01, size=(20, LON.size if e in "ns" else LAT.size, n_time)) for e in "nesw"}


def name_path(tmp_path, name="MHD-10magl_EUROPE_201402.nc", **kwargs):
    kwargs.setdefault("fp", fp_values(len(kwargs.get("times", TIMES))))
    kwargs.setdefault("times", TIMES)
    return ff.name_file(tmp_path / name, lat=LAT, lon=LON, **kwargs)


def test_integrated_fp_records_receptors_and_boundary(tmp_path):
    fp, b = fp_values(3), edges(3)
    path = name_path(tmp_path, fp=fp, boundary=b)
    with pytest.raises(InputError, match="720"):  # the back-time is not in NAME files: must be given
        list(read_footprints(path))
    records = list(read_footprints(path, back_hours=720))
    assert [r.receptor.obs_id for r in records] == ["MHD-10m-20140201T0000", "MHD-10m-20140201T0200", "MHD-10m-20140201T0400"]
    for k, record in enumerate(records):
        r = record.receptor
        assert (r.site, r.height, r.time) == ("MHD", 10.0, TIMES[k])
        assert r.latitude == pytest.approx(53.32611, abs=1e-5) and r.longitude == pytest.approx(-9.90387, abs=1e-5)
        np.testing.assert_array_equal(record.values[0], np.asarray(fp[:, :, k], np.float32))
        assert record.slots.start[0] == TIMES[k] - np.timedelta64(30, "D") and record.slots.end[0] == TIMES[k]
        for e in "nesw":
            np.testing.assert_array_equal(record.boundary[e], np.asarray(b[e][:, :, k], np.float32))
        np.testing.assert_array_equal(record.boundary_height, ff.HEIGHTS)
    np.testing.assert_allclose(records[0].grid.lon, np.asarray(LON, np.float32), rtol=0, atol=0)


def test_site_and_inlet_from_attributes_win_over_the_file_name(tmp_path):
    path = name_path(tmp_path, name="TAC-100magl_UKV_TEST_201607.nc", attrs={"site": "TAC", "inlet_height": "185magl"})
    (first, *_) = read_footprints(path, back_hours=720)
    assert (first.receptor.site, first.receptor.height) == ("TAC", 185.0)
    assert any("file name says inlet 100 m, attribute 185 m" in n for n in first.notes)
    anonymous = name_path(tmp_path, name="footprint.nc")
    with pytest.raises(InputError, match="site"):
        list(read_footprints(anonymous, back_hours=720))


def test_release_position_disagreeing_with_the_attribute_is_refused(tmp_path):
    path = name_path(tmp_path, attrs={"release_lat": 52.0})
    with pytest.raises(InputError, match="release_lat.*global attribute"):
        list(read_footprints(path, back_hours=720))


def test_non_monotonic_times_refused_or_sorted(tmp_path):
    times = T0 + np.array([4, 0, 2], dtype="timedelta64[h]")  # an old file with an extra, earlier period
    fp = fp_values(3)
    path = name_path(tmp_path, times=times, fp=fp)
    with pytest.raises(InputError, match="not increasing.*--sort-times"):
        list(read_footprints(path, back_hours=720))
    records = list(read_footprints(path, back_hours=720, sort=True))
    assert [r.receptor.time for r in records] == sorted(times.tolist())
    np.testing.assert_array_equal(records[0].values[0], np.asarray(fp[:, :, 1], np.float32))


def test_duplicated_times_sorted_only_when_identical(tmp_path):
    times = T0 + np.array([0, 2, 2], dtype="timedelta64[h]")
    fp = fp_values(3)
    fp[:, :, 2] = fp[:, :, 1]
    path = name_path(tmp_path / "same", times=times, fp=fp)
    with pytest.raises(InputError, match="1 repeats"):
        list(read_footprints(path, back_hours=720))
    records = list(read_footprints(path, back_hours=720, sort=True))
    assert len(records) == 2 and "an identical duplicate of this receptor time was dropped (sort=True)" in records[1].notes
    fp[0, 0, 2] += 1.0
    path = name_path(tmp_path / "different", times=times, fp=fp)
    with pytest.raises(InputError, match="appears twice with different footprints"):
        list(read_footprints(path, back_hours=720, sort=True))


def test_nan_inside_fp_and_nested_files_are_refused(tmp_path):
    fp = fp_values(3)
    fp[1, 1, 0] = np.nan
    with pytest.raises(InputError, match="NaN values inside"):
        list(read_footprints(name_path(tmp_path / "a", fp=fp), back_hours=720))
    ds = xr.Dataset({"fp_low": (("lat", "lon", "time"), fp_values(1), {"units": "(mol/mol)/(mol/m2/s)"})},
                    coords={"lat": LAT, "lon": LON, "time": ("time", [0.0], {"units": "seconds since 2014-01-01"})})
    with pytest.raises(InputError, match="nested NAME"):
        list(read_footprints(ff.write(ds, tmp_path / "MHD-10magl_EUROPE_201402.nc"), back_hours=720))


def hitres_values(n_time, n_back, seed=5):
    return np.random.default_rng(seed).gamma(0.5, 0.01, size=(LAT.size, LON.size, n_time, n_back))


def test_hitres_slots_follow_h_back_and_the_residual(tmp_path):
    h_back = np.arange(0, 26, 1)  # 0…24 resolved hours + the residual (25 slots as in openghg files)
    hitres = hitres_values(3, 25)
    path = name_path(tmp_path, hitres=hitres, h_back=h_back[:25])
    records = list(read_footprints(path, back_hours=720, time_resolved=True))
    for k, record in enumerate(records):
        t = TIMES[k]
        assert record.slots.size == 25
        # oldest first: the residual [t − 30 d, t − 23 h), then H_back = 23 … 0 as [t − h, t − h + 1 h)
        assert record.slots.start[0] == t - np.timedelta64(720, "h") and record.slots.end[0] == t - np.timedelta64(23, "h")
        assert record.slots.start[-1] == t and record.slots.end[-1] == t + np.timedelta64(1, "h")
        assert record.slots.start[1] == t - np.timedelta64(23, "h")
        np.testing.assert_array_equal(record.values, np.moveaxis(hitres[:, :, k, ::-1], -1, 0))
        assert "fp_HiTRes has no units attribute: read in the units of fp ((mol/mol)/(mol/m2/s))" in record.notes


def test_hitres_all_nan_times_and_negative_residuals_need_explicit_options(tmp_path):
    hitres = hitres_values(3, 14)
    hitres[:, :, 1, :] = np.nan  # openghg computes fp_HiTRes every other hour
    hitres[0, 0, 2, -1] = -1e-4  # residual computed by subtraction
    fp = fp_values(3)
    path = name_path(tmp_path, fp=fp, hitres=hitres, h_back=np.arange(0, 28, 2))
    with pytest.raises(InputError, match="all NaN at receptor time 2014-02-01T02:00:00.*--missing-hitres"):
        list(read_footprints(path, back_hours=720, time_resolved=True))
    with pytest.raises(InputError, match="negative values in the residual slot.*--clip-negative-residual"):
        list(read_footprints(path, back_hours=720, time_resolved=True, missing_hitres="integrated"))
    records = list(read_footprints(path, back_hours=720, time_resolved=True, missing_hitres="integrated",
                                   clip_negative_residual=True))
    assert [r.slots.size for r in records] == [14, 1, 14]
    assert records[0].slots.end[-1] == TIMES[0] + np.timedelta64(2, "h")  # H_back spacing 2 h
    np.testing.assert_array_equal(records[1].values[0], np.asarray(fp[:, :, 1], np.float32))
    assert any("integrated fp used" in n for n in records[1].notes)
    assert records[2].values[0, 0, 0] == 0 and any("1 negative residual-slot values" in n for n in records[2].notes)


ACRG = sorted(ff.ACRG_FOOTPRINTS.glob("*.nc")) if ff.ACRG_FOOTPRINTS.is_dir() else []


@pytest.mark.skipif(len(ACRG) != 4, reason=f"acrg NAME footprints not found under {ff.ACRG_FOOTPRINTS}")
@pytest.mark.parametrize("path", ACRG, ids=[p.name for p in ACRG])
def test_real_acrg_name_files(path):
    records = list(read_footprints(path, back_hours=720))
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        fp = ds["fp"].values
        times = ds["time"].values.astype("datetime64[s]")
        release = ds["release_lat"].values, ds["release_lon"].values
        edges = {e: ds[f"particle_locations_{e}"].values for e in "nesw"}
    site, inlet = path.name.split("_")[0].split("-")
    assert len(records) == 3
    for k, record in enumerate(records):
        r = record.receptor
        assert (r.site, r.height, r.time) == (site, float(inlet.removesuffix("magl")), times[k])
        assert (r.latitude, r.longitude) == (float(release[0][k]), float(release[1][k]))
        np.testing.assert_array_equal(record.values[0], fp[:, :, k])
        np.testing.assert_array_equal(record.boundary["n"], edges["n"][:, :, k])
        assert record.grid.shape == (293, 391) and record.notes == ()


TAC_CO2 = ff.OPENGHG_FOOTPRINTS / "TAC-100magl_UKV_co2_TEST_201407.nc"


@pytest.mark.skipif(not TAC_CO2.is_file(), reason=f"openghg NAME sample not found at {TAC_CO2}")
def test_real_openghg_hitres_sample():
    with pytest.raises(InputError, match="negative values in the residual slot"):
        list(read_footprints(TAC_CO2, back_hours=720, time_resolved=True))
    with pytest.raises(InputError, match="all NaN"):  # the odd hours have no fp_HiTRes
        list(read_footprints(TAC_CO2, back_hours=720, time_resolved=True, clip_negative_residual=True))
    records = list(read_footprints(TAC_CO2, back_hours=720, time_resolved=True, missing_hitres="integrated",
                                   clip_negative_residual=True))
    assert len(records) == 73
    assert [r.slots.size for r in records[:4]] == [14, 1, 14, 1]
    with xr.open_dataset(TAC_CO2, engine="h5netcdf") as ds:
        hitres = ds["fp_HiTRes"].isel(time=0).transpose("H_back", "lat", "lon").values[::-1]
    hitres[0] = np.maximum(hitres[0], 0.0)
    np.testing.assert_array_equal(records[0].values, hitres)
    assert all(r.receptor.site == "TAC" and r.receptor.height == 100.0 for r in records)
