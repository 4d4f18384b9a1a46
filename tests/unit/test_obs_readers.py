"""Observation readers (inversion/obs_formats.py): ObsPack, openghg/AGAGE, CSV.

Synthetic files carry the exact variable names and attributes of the real formats
(../shared/docs/FORMATS.md); the real samples in ../shared/data/external are read when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.obs_formats import (
    detect_format,
    read_csv,
    read_obspack,
    read_openghg,
    read_series,
)
from transport.errors import InputError

EXTERNAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "external"
ACRG_OBS = EXTERNAL / "acrg" / "tests" / "files" / "obs"
OI_DATA = EXTERNAL / "openghg_inversions" / "tests" / "data"
T0 = np.datetime64("2014-02-01T00:00:00", "s")


def _seconds_since_1970(times) -> np.ndarray:
    return (np.asarray(times, dtype="datetime64[s]") - np.datetime64("1970-01-01T00:00:00", "s")).astype(np.int64)


def write_obspack(path: Path, *, record_dim: str = "obs", values=(4.0e-4, 4.1e-4, -1e34, 4.2e-4),
                  flags=(1, 0, 1, 1), qcflag=None, units: str | None = "mol mol-1", times=None, intake=(100.0,) * 4,
                  site_code: str | None = "LAN", parameter: str = "co2") -> Path:
    """An ObsPack file with the NOAA/ICOS names: value in mol mol-1, −1e34 missing, obs_flag."""
    n = len(values)
    times = T0 + np.arange(n) * np.timedelta64(3600, "s") + np.timedelta64(1800, "s") if times is None else times
    value_attrs = {"long_name": "measured_mole_fraction_of_trace_gas_in_dry_air"}
    if units is not None:
        value_attrs["units"] = units
    data = {
        "time": (record_dim, _seconds_since_1970(times), {"units": "seconds since 1970-01-01T00:00:00Z",
                                                          "long_name": "Sample time (interval midpoint)"}),
        "value": (record_dim, np.array(values, dtype=np.float32), value_attrs),
        "value_std_dev": (record_dim, np.full(n, 0.3e-6, np.float32), {"units": "mol mol-1"}),
        "value_unc": (record_dim, np.array([0.1e-6, 0.2e-6, -1e34, 0.1e-6][:n], np.float32), {"units": "mol mol-1"}),
        "nvalue": (record_dim, np.full(n, 60, np.int32)),
        "latitude": (record_dim, np.full(n, 30.3)), "longitude": (record_dim, np.full(n, 119.73)),
        "altitude": (record_dim, np.full(n, 238.0), {"units": "m"}),
        "intake_height": (record_dim, np.array(intake, dtype=np.float32), {"units": "m"}),
        "obspack_id": (record_dim, np.array([f"obspack_co2_1_{i}" for i in range(n)])),
    }
    if flags is not None:
        data["obs_flag"] = (record_dim, np.array(flags, dtype=np.int8),
                            {"long_name": "data quality flag", "flag_meanings": "not_assimilable assimilable"})
    if qcflag is not None:
        data["qcflag"] = (record_dim, np.array(qcflag, dtype="S3"))
    attrs = {"site_name": "Lin'an", "site_latitude": 30.3, "site_longitude": 119.73, "site_elevation": 138.0,
             "dataset_intake_ht": "100.0", "dataset_calibration_scale": "WMO CO2 X2019", "dataset_parameter": parameter}
    if site_code is not None:
        attrs["site_code"] = site_code
    xr.Dataset(data, attrs=attrs).to_netcdf(path, engine="h5netcdf", encoding={"time": {"dtype": "int64"}})
    return path


def write_openghg(path: Path, *, species: str = "ch4", values=(1900.0, 1905.0, 1910.0), uncertainty="repeatability",
                  flags=(0, 1, 0), units: str | None = "1e-9", label: str | None = "left", period=75,
                  site: str | None = None, inlet_attr=("inlet_height_magl", 10.0), times=None) -> Path:
    """An AGAGE/openghg file with the acrg names: ch4 in '1e-9', ch4_repeatability, status flag."""
    n = len(values)
    times = T0 + np.arange(n) * np.timedelta64(2400, "s") if times is None else np.asarray(times, "datetime64[s]")
    seconds = (times - np.datetime64("1994-01-01T00:00:00", "s")).astype(np.float64)
    time_attrs = {"standard_name": "time", "units": "seconds since 1994-01-01", "calendar": "proleptic_gregorian",
                  "comment": "Time stamp corresponds to beginning of sampling period."}
    if label is not None:
        time_attrs["label"] = label
    if period is not None:
        time_attrs["sampling_period_seconds"] = np.int64(period)
    ch4_attrs = {"long_name": "mole_fraction_of_methane_in_air"}
    if units is not None:
        ch4_attrs["units"] = units
    data = {
        species: ("time", np.array(values, dtype=np.float32), ch4_attrs),
        f"{species}_{uncertainty}": ("time", np.full(n, 2.0, np.float32), {"units": "1e-9"}),
        f"{species}_integration_flag": ("time", np.ones(n, np.float32), {"flag_meaning": "0 = area, 1 = height"}),
    }
    if flags is not None:
        data[f"{species}_status_flag"] = ("time", np.array(flags, np.float32), {"flag_meaning": "0 = unflagged, 1 = flagged"})
    attrs = {"species": species, "station_latitude": 53.32611, "station_longitude": -9.90389,
             "station_long_name": "Mace Head, Ireland", "Calibration_scale": "TU1987"}
    if inlet_attr is not None:
        attrs[inlet_attr[0]] = inlet_attr[1]
    if site is not None:
        attrs["site"] = site
    ds = xr.Dataset(data, coords={"time": ("time", seconds, time_attrs)}, attrs=attrs)
    ds.to_netcdf(path, engine="h5netcdf")
    return path


# ---- ObsPack ------------------------------------------------------------------------------


@pytest.mark.parametrize("record_dim", ["obs", "time"])
def test_obspack_values_flags_missing_and_site(tmp_path, record_dim):
    path = write_obspack(tmp_path / f"co2_lan_tower-insitu_1_allvalid_{record_dim}.nc", record_dim=record_dim)
    (s,) = read_obspack(path, "co2")
    assert s.site == "LAN" and s.inlet_height == 100.0 and s.latitude == 30.3 and s.longitude == 119.73
    np.testing.assert_allclose(s.value[[0, 1, 3]], np.float32([4.0e-4, 4.1e-4, 4.2e-4]), rtol=0)
    assert np.isnan(s.value[2])  # −1e34 is missing, never a mole fraction
    assert s.uncertainty_source == "value_unc" and np.isnan(s.uncertainty[2])
    np.testing.assert_array_equal(s.usable, [True, False, True, True])
    assert s.time[0] == np.datetime64("2014-02-01T00:30:00")  # ObsPack time is already the midpoint


def test_obspack_without_obs_flag_uses_qcflag(tmp_path):
    path = write_obspack(tmp_path / "qc.nc", flags=None, qcflag=[b"...", b".C.", b"A..", b"..."])
    (s,) = read_obspack(path, "co2")
    np.testing.assert_array_equal(s.usable, [True, True, False, True])
    assert "qcflag" in s.flag_source


def test_obspack_ppm_units_are_converted(tmp_path):
    path = write_obspack(tmp_path / "ppm.nc", values=(400.0, 401.0), flags=(1, 1), units="ppm", intake=(10.0, 10.0))
    (s,) = read_obspack(path, "co2")
    np.testing.assert_allclose(s.value, [400e-6, 401e-6], rtol=1e-7)


@pytest.mark.parametrize("units, problem", [(None, "no units attribute"), ("zorgs", "unknown unit"),
                                            ("m s-1", "expected units compatible")])
def test_obspack_bad_units_are_refused(tmp_path, units, problem):
    path = write_obspack(tmp_path / "bad.nc", units=units)
    with pytest.raises(InputError) as info:
        read_obspack(path, "co2")
    assert str(path) in str(info.value) and "value" in str(info.value) and problem in str(info.value)


def test_obspack_mixed_intake_heights_and_wrong_species_are_refused(tmp_path):
    with pytest.raises(InputError, match="mixes intake heights"):
        read_obspack(write_obspack(tmp_path / "h.nc", intake=(10.0, 10.0, 100.0, 100.0)), "co2")
    with pytest.raises(InputError, match="dataset_parameter.*'co2'.*'ch4'"):
        read_obspack(write_obspack(tmp_path / "sp.nc"), "ch4")


@pytest.mark.parametrize("times, problem", [
    (["2014-02-01T01:00", "2014-02-01T00:00", "2014-02-01T02:00", "2014-02-01T03:00"], "not increasing"),
    (["2014-02-01T01:00", "2014-02-01T01:00", "2014-02-01T02:00", "2014-02-01T03:00"], "duplicated time"),
])
def test_non_monotonic_or_duplicated_times_are_refused(tmp_path, times, problem):
    path = write_obspack(tmp_path / "t.nc", times=np.array(times, dtype="datetime64[s]"))
    with pytest.raises(InputError, match=problem) as info:
        read_obspack(path, "co2")
    assert str(path) in str(info.value)


def test_site_from_configuration_must_agree_with_the_file(tmp_path):
    path = write_obspack(tmp_path / "s.nc")
    assert read_obspack(path, "co2", site="lan")[0].site == "LAN"
    with pytest.raises(InputError, match="the file says site 'LAN'"):
        read_obspack(path, "co2", site="SDZ")
    with pytest.raises(InputError, match="does not name its site"):
        read_obspack(write_obspack(tmp_path / "nosite.nc", site_code=None), "co2")


# ---- openghg / AGAGE ----------------------------------------------------------------------


def test_openghg_agage_file(tmp_path):
    path = write_openghg(tmp_path / "AGAGE-GCFID_MHD_20140201_ch4-20140401.nc")
    (s,) = read_openghg(path, "ch4", site="MHD")
    np.testing.assert_allclose(s.value, np.array([1900.0, 1905.0, 1910.0]) * 1e-9, rtol=1e-12)
    np.testing.assert_allclose(s.uncertainty, 2e-9, rtol=1e-12)
    assert s.uncertainty_source == "ch4_repeatability"
    np.testing.assert_array_equal(s.usable, [True, False, True])  # status flag 0 = unflagged
    # label 'left' + 75 s sampling period: the sample time is the middle of the period
    assert s.time[0] == np.datetime64("2014-02-01T00:00:37.500")
    assert s.inlet_height == 10.0 and s.site == "MHD"


@pytest.mark.parametrize("attr", [("inlet_height_magl", "185"), ("inlet", "185m"), ("inlet_magl", "185 m")])
def test_openghg_picarro_variability_and_inlet_spellings(tmp_path, attr):
    path = write_openghg(tmp_path / "tac.nc", uncertainty="variability", flags=None, period=60, site="tac",
                         inlet_attr=attr)
    (s,) = read_openghg(path, "ch4")
    assert s.site == "TAC" and s.inlet_height == 185.0
    assert s.uncertainty_source == "ch4_variability" and s.flag_source == "none" and s.usable.all()
    assert s.time[0] == np.datetime64("2014-02-01T00:00:30")


def test_openghg_bad_inputs(tmp_path):
    with pytest.raises(InputError, match="ch4: no units attribute"):
        read_openghg(write_openghg(tmp_path / "u.nc", units=None), "ch4", site="MHD")
    with pytest.raises(InputError, match="co2: variable of the run's species missing"):
        read_openghg(write_openghg(tmp_path / "s.nc"), "co2", site="MHD")
    with pytest.raises(InputError, match="unsupported label"):
        read_openghg(write_openghg(tmp_path / "l.nc", label="right"), "ch4", site="MHD")
    times = T0 + np.array([0, 7200, 3600]) * np.timedelta64(1, "s")
    with pytest.raises(InputError, match="not increasing"):
        read_openghg(write_openghg(tmp_path / "t.nc", times=times), "ch4", site="MHD")


# ---- CSV ----------------------------------------------------------------------------------


def test_csv_units_in_column_names_and_several_sites(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text("# tanhui observation CSV\n"
                    "time,site,value [ppb],uncertainty [ppb],flag,inlet_height [m]\n"
                    "2014-02-01T00:30:00Z,MHD,1900.5,2.0,1,10\n"
                    "2014-02-01T02:30:00+01:00,MHD,,2.0,1,10\n"
                    "2014-02-01T02:30:00Z,MHD,1901.0,2.0,0,10\n"
                    "2014-02-01T00:30:00Z,tac,1950.0,1.0,1,185\n", encoding="utf-8")
    mhd, tac = read_csv(path, "ch4")
    assert (mhd.site, tac.site) == ("MHD", "TAC")
    np.testing.assert_allclose(mhd.value[[0, 2]], [1900.5e-9, 1901.0e-9], rtol=1e-12)
    assert np.isnan(mhd.value[1])
    assert mhd.time[1] == np.datetime64("2014-02-01T01:30:00")  # +01:00 converted to UTC
    np.testing.assert_array_equal(mhd.usable, [True, True, False])
    assert mhd.inlet_height == 10.0 and tac.inlet_height == 185.0
    np.testing.assert_allclose(tac.uncertainty, [1e-9], rtol=1e-12)


def test_csv_without_optional_columns(tmp_path):
    path = tmp_path / "plain.csv"
    path.write_text("time,site,value [mol mol-1]\n2024-07-01T06:00:00,LAN,4.1e-4\n", encoding="utf-8")
    (s,) = read_csv(path, "co2")
    assert s.uncertainty is None and s.inlet_height is None and s.usable.all()
    assert s.value[0] == 4.1e-4


@pytest.mark.parametrize("header, row, problem", [
    ("time,site,value", "2014-02-01T00:00:00Z,MHD,1900", "no units"),
    ("time,site,value [zorgs]", "2014-02-01T00:00:00Z,MHD,1900", "unknown unit"),
    ("time,site,value [ppb],colour", "2014-02-01T00:00:00Z,MHD,1900,red", "unknown column"),
    ("time,value [ppb]", "2014-02-01T00:00:00Z,1900", "required column"),
    ("time,site,value [ppb]", "yesterday,MHD,1900", "not an ISO 8601 time"),
    ("time,site,value [ppb]", "2014-02-01T00:00:00Z,MHD,high", "not a number"),
    ("time,site,value [ppb],flag", "2014-02-01T00:00:00Z,MHD,1900,2", "not 0 or 1"),
])
def test_csv_bad_input(tmp_path, header, row, problem):
    path = tmp_path / "bad.csv"
    path.write_text(f"{header}\n{row}\n", encoding="utf-8")
    with pytest.raises(InputError, match=problem) as info:
        read_csv(path, "ch4")
    assert str(path) in str(info.value)


def test_csv_non_monotonic_times_are_refused(tmp_path):
    path = tmp_path / "order.csv"
    path.write_text("time,site,value [ppb]\n2014-02-01T02:00:00Z,MHD,1900\n2014-02-01T01:00:00Z,MHD,1901\n")
    with pytest.raises(InputError, match="time \\(site MHD\\).*not increasing"):
        read_csv(path, "ch4")


# ---- detection ----------------------------------------------------------------------------


def test_detect_format(tmp_path):
    assert detect_format(write_obspack(tmp_path / "a.nc"), "co2") == "obspack"
    assert detect_format(write_openghg(tmp_path / "b.nc"), "ch4") == "openghg"
    assert detect_format(tmp_path / "c.csv", "ch4") == "csv"
    xr.Dataset({"x": ("t", [1.0])}).to_netcdf(tmp_path / "d.nc", engine="h5netcdf")
    with pytest.raises(InputError, match="matches no known observation format"):
        detect_format(tmp_path / "d.nc", "ch4")
    with pytest.raises(InputError, match="unknown observation format"):
        read_series(tmp_path / "d.nc", "icartt", "ch4")


# ---- the real samples ---------------------------------------------------------------------

needs_acrg = pytest.mark.skipif(not ACRG_OBS.is_dir(), reason=f"real observation samples not found at {ACRG_OBS}")
needs_oi = pytest.mark.skipif(not OI_DATA.is_dir(), reason=f"openghg_inversions samples not found at {OI_DATA}")


@needs_acrg
def test_real_agage_mhd_file():
    path = ACRG_OBS / "MHD" / "AGAGE-GCFID_MHD_20140201_ch4-20140401.nc"
    assert detect_format(path, "ch4") == "openghg"
    (s,) = read_series(path, "openghg", "ch4", site="MHD")
    assert s.size == 2043 and s.inlet_height == 10.0 and s.usable.all()
    assert 1838e-9 < np.nanmin(s.value) and np.nanmax(s.value) < 2035e-9
    assert s.uncertainty_source == "ch4_repeatability" and np.all(s.uncertainty > 0)
    assert s.time[0] == np.datetime64("2014-02-01T00:10:00")  # 00:09:22.5 + 75 s / 2


@needs_acrg
def test_real_decc_tac_file_is_at_185_m():
    path = ACRG_OBS / "TAC" / "DECC-picarro_TAC_20140201_ch4-185m-20210401.nc"
    (s,) = read_series(path, "openghg", "ch4", site="TAC")
    assert s.size == 25120 and s.inlet_height == 185.0
    assert s.uncertainty_source == "ch4_variability" and s.flag_source == "none"


@needs_oi
def test_real_openghg_files_name_their_site():
    (tac,) = read_series(OI_DATA / "obs_tac_ch4_185m_2019-01-01_2019-02-01_data.nc", "openghg", "ch4")
    (mhd,) = read_series(OI_DATA / "obs_mhd_ch4_10m_2019-01-01_2019-01-07_data.nc", "openghg", "ch4")
    assert (tac.site, tac.inlet_height, tac.size) == ("TAC", 185.0, 25095)
    assert (mhd.site, mhd.inlet_height, mhd.size) == ("MHD", 10.0, 238)
    assert mhd.flag_source == "status_flag == 0"
