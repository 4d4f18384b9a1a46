"""Selection and averaging of raw observations onto footprint times (inversion/selection.py),
checked against values computed by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.config import ObservationsConfig
from inversion.obs_formats import ObservationSeries
from inversion.selection import hour_of_day, select_observations
from transport.errors import InputError

START = np.datetime64("2014-02-01T00:00:00", "s")
END = np.datetime64("2014-02-02T00:00:00", "s")
PPB = 1e-9


def store_obs(rows) -> xr.Dataset:
    """Receptors (site, 'YYYY-mm-ddTHH:MM', height m, longitude) as a store's obs table."""
    sites, times, heights, lons = zip(*rows)
    return xr.Dataset({
        "obs_id": ("obs", [f"{s}-{h:g}m-{t}" for s, t, h, _ in rows]),
        "time": ("obs", np.array(times, dtype="datetime64[s]")),
        "site": ("obs", list(sites)),
        "latitude": ("obs", np.full(len(rows), 52.0)),
        "longitude": ("obs", np.array(lons, dtype=np.float64)),
        "height": ("obs", np.array(heights, dtype=np.float64)),
    })


def series(times, values_ppb, unc_ppb=None, usable=None, site="TAC", inlet=100.0) -> ObservationSeries:
    times = np.array(times, dtype="datetime64[ms]")
    n = times.size
    return ObservationSeries(
        path=Path(f"/data/{site.lower()}.nc"), format="openghg", site=site, time=times,
        value=np.array(values_ppb, dtype=np.float64) * PPB,
        uncertainty=None if unc_ppb is None else np.array(unc_ppb, dtype=np.float64) * PPB,
        usable=np.ones(n, dtype=bool) if usable is None else np.array(usable), inlet_height=inlet,
        uncertainty_source="ch4_repeatability" if unc_ppb is not None else "none")


def config(**kw) -> ObservationsConfig:
    kw.setdefault("file", Path("/data/obs.nc"))
    kw.setdefault("averaging_window", "2 h")
    return ObservationsConfig(**kw)


STORE = store_obs([("TAC", "2014-02-01T00:00", 100.0, 1.14), ("TAC", "2014-02-01T02:00", 100.0, 1.14),
                   ("MHD", "2014-02-01T00:00", 10.0, -9.9), ("TAC", "2014-02-01T12:00", 100.0, 1.14)])


def select(series_list, cfg, store=STORE):
    return select_observations(series_list, store, cfg, START, END, Path("/data/footprints.h5"))


def test_window_mean_repeatability_and_variability_by_hand():
    s = series(["2014-02-01T00:30", "2014-02-01T01:30", "2014-02-01T02:10", "2014-02-01T02:50", "2014-02-01T03:59"],
               [1900.0, 1910.0, 1950.0, 1953.0, 1956.0], unc_ppb=[2.0, 4.0, 1.0, 1.0, 1.0])
    out = select([s], config(measurement_uncertainty="both", min_samples=2, unmatched="drop"))
    assert out["obs_id"].values.tolist() == ["TAC-100m-2014-02-01T00:00", "TAC-100m-2014-02-01T02:00"]
    assert out["row"].values.tolist() == [0, 1]
    np.testing.assert_allclose(out["value"].values, [1905.0 * PPB, 1953.0 * PPB], rtol=1e-14)
    # window 1: repeatability √(2² + 4²)/2 = √5, variability √((5² + 5²)/1) = √50; both = √55
    # window 2: repeatability √3/3, variability √((3² + 0 + 3²)/2) = 3; both = √(1/3 + 9)
    np.testing.assert_allclose(out["measurement_sigma"].values, [np.sqrt(55.0) * PPB, np.sqrt(1 / 3 + 9) * PPB],
                               rtol=1e-12)
    assert out["n_samples"].values.tolist() == [2, 3]
    np.testing.assert_array_equal(out["time"].values, np.array(["2014-02-01T00:00", "2014-02-01T02:00"], "datetime64[s]"))


@pytest.mark.parametrize("method, expected", [("repeatability", np.sqrt(5.0)), ("variability", np.sqrt(50.0))])
def test_uncertainty_options(method, expected):
    s = series(["2014-02-01T00:30", "2014-02-01T01:30"], [1900.0, 1910.0], unc_ppb=[2.0, 4.0])
    out = select([s], config(measurement_uncertainty=method, min_samples=2 if method != "repeatability" else 1))
    np.testing.assert_allclose(out["measurement_sigma"].values, [expected * PPB], rtol=1e-12)


def test_alignment_centre_moves_the_window():
    # centred 2-h windows: [23:00, 01:00) and [01:00, 03:00)
    s = series(["2014-02-01T00:30", "2014-02-01T01:30"], [1900.0, 1910.0], unc_ppb=[1.0, 1.0])
    out = select([s], config(averaging_align="centre"))
    np.testing.assert_allclose(out["value"].values, [1900.0 * PPB, 1910.0 * PPB], rtol=1e-14)


def test_flags_missing_values_and_report_counts():
    s = series(["2014-02-01T00:10", "2014-02-01T00:20", "2014-02-01T00:30", "2014-02-01T00:40"],
               [1900.0, np.nan, 1990.0, 1910.0], unc_ppb=[1.0] * 4, usable=[True, True, False, True])
    out = select([s], config())
    np.testing.assert_allclose(out["value"].values, [1905.0 * PPB], rtol=1e-14)
    (report,) = json.loads(out.attrs["selection"])
    assert (report["missing_value"], report["flagged"], report["used"], report["observations"]) == (1, 1, 2, 1)
    assert report["footprints_without_samples"] == 2  # 02:00 and 12:00 got nothing
    with_flagged = select([s], config(use_flags=False))
    np.testing.assert_allclose(with_flagged["value"].values, [(1900.0 + 1990.0 + 1910.0) / 3 * PPB], rtol=1e-14)


def test_unmatched_samples_are_an_error_unless_dropped():
    s = series(["2014-02-01T00:30", "2014-02-01T05:00", "2014-02-01T06:00", "2014-02-03T00:00"],
               [1900.0, 1910.0, 1920.0, 1930.0], unc_ppb=[1.0] * 4)
    with pytest.raises(InputError) as info:
        select([s], config())
    message = str(info.value)
    assert "2 samples inside the run have no footprint window" in message and "tac.nc" in message
    assert "2014-02-01T05:00" in message and 'unmatched = "drop"' in message
    out = select([s], config(unmatched="drop"))
    (report,) = json.loads(out.attrs["selection"])
    assert (report["unmatched"], report["outside_run"], report["used"]) == (2, 1, 1)


def test_hours_on_utc_solar_and_fixed_clocks():
    times = np.array(["2014-02-01T12:00", "2014-02-01T23:30"], dtype="datetime64[s]")
    np.testing.assert_array_equal(hour_of_day(times, np.array([0.0, 0.0]), "utc"), [12, 23])
    np.testing.assert_array_equal(hour_of_day(times, np.array([120.0, 120.0]), "solar"), [20, 7])
    np.testing.assert_array_equal(hour_of_day(times, np.array([0.0, 0.0]), "-05:30"), [6, 18])
    s = series(["2014-02-01T00:30", "2014-02-01T12:30"], [1900.0, 1910.0], unc_ppb=[1.0, 1.0])
    out = select([s], config(hours=[12, 13, 14, 15]))
    assert out["obs_id"].values.tolist() == ["TAC-100m-2014-02-01T12:00"]
    (report,) = json.loads(out.attrs["selection"])
    assert report["outside_hours"] == 1
    # at 1.14° E local solar time is UTC + 4.6 min: the 12:00 UTC receptor is still hour 12
    assert select([s], config(hours=[12], hours_clock="solar"))["row"].values.tolist() == [3]
    assert select([s], config(hours=[12], hours_clock="+01:00"))["row"].values.size == 0


def test_min_samples_drops_thin_windows():
    s = series(["2014-02-01T00:30", "2014-02-01T02:30", "2014-02-01T02:40"], [1900.0, 1910.0, 1920.0],
               unc_ppb=[1.0] * 3)
    out = select([s], config(min_samples=2))
    assert out["row"].values.tolist() == [1]
    assert json.loads(out.attrs["selection"])[0]["too_few_in_window"] == 1


def test_inlet_mismatch_policy():
    s = series(["2014-02-01T00:30"], [1900.0], unc_ppb=[1.0], inlet=185.0)
    with pytest.raises(InputError) as info:
        select([s], config())
    assert "185 m" in str(info.value) and "100 m" in str(info.value) and 'inlet_mismatch = "warn"' in str(info.value)
    out = select([s], config(inlet_mismatch="warn"))
    (report,) = json.loads(out.attrs["selection"])
    assert out.sizes["obs"] == 1 and report["inlet_action"].startswith("warn")
    assert (report["inlet_height_obs"], report["inlet_height_footprints"]) == (185.0, 100.0)
    assert select([s], config(inlet_tolerance="90 m")).sizes["obs"] == 1


def test_store_with_several_heights_uses_the_matching_one():
    store = store_obs([("TAC", "2014-02-01T00:00", 54.0, 1.14), ("TAC", "2014-02-01T00:00", 185.0, 1.14),
                       ("TAC", "2014-02-01T00:00", 100.0, 1.14)])
    out = select([series(["2014-02-01T00:30"], [1900.0], unc_ppb=[1.0], inlet=185.0)], config(), store)
    assert out["row"].values.tolist() == [1]
    with pytest.raises(InputError, match="gives no inlet height"):
        select([series(["2014-02-01T00:30"], [1900.0], unc_ppb=[1.0], inlet=None)], config(), store)


def test_overlapping_windows_and_double_use_are_refused():
    s = series(["2014-02-01T00:30"], [1900.0], unc_ppb=[1.0])
    with pytest.raises(InputError, match="overlap"):
        select([s], config(averaging_window="3 h"))
    with pytest.raises(InputError, match="more than one file"):
        select([s, series(["2014-02-01T00:40"], [1901.0], unc_ppb=[1.0])], config())


def test_missing_per_sample_uncertainty_is_refused():
    with pytest.raises(InputError, match="no per-sample uncertainty"):
        select([series(["2014-02-01T00:30"], [1900.0])], config())
    with pytest.raises(InputError, match="1 of the samples used have no uncertainty"):
        select([series(["2014-02-01T00:30", "2014-02-01T00:40"], [1900.0, 1901.0], unc_ppb=[1.0, np.nan])], config())


def test_variability_needs_two_samples_and_a_window():
    with pytest.raises(ValueError, match="min_samples ≥ 2"):
        config(measurement_uncertainty="variability")
    with pytest.raises(InputError, match="averaging_window"):
        select([series(["2014-02-01T00:30"], [1900.0], unc_ppb=[1.0])], config(averaging_window=None))
