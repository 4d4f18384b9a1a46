"""Time mapping of inventory steps onto the flux time axis (step, linear, constant) and the
inference of inventory steps from time stamps, against hand-computed values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inversion.inventories.base import calendar_steps, steps_from_stamps
from inversion.inventories.timemap import time_weights
from transport.errors import InputError
from transport.grid import TimeAxis

HOUR = np.timedelta64(1, "h")


def weights(source, target, method):
    return time_weights(source, target, method, path=Path("inventory.nc"), variable="flux").toarray()


def months(*names):
    return calendar_steps(np.array(names, dtype="datetime64[M]"), "M")


def hours_since(axis: TimeAxis, origin: str) -> np.ndarray:
    return (axis.start - np.datetime64(origin, "s")) / HOUR


# ---- step (piecewise constant) -------------------------------------------------------------------

def test_step_monthly_to_three_hourly_takes_each_months_value():
    source = months("2024-06", "2024-07")
    target = TimeAxis.regular("2024-06-30T18", "2024-07-01T06", "3h")
    f = weights(source, target, "step") @ np.array([10.0, 20.0])
    np.testing.assert_array_equal(f, [10.0, 10.0, 20.0, 20.0])


def test_step_hourly_to_three_hourly_is_the_mean_of_three_hours():
    source = TimeAxis.regular("2024-07-01", "2024-07-02", "1h")
    target = TimeAxis.regular("2024-07-01", "2024-07-02", "3h")
    v = np.arange(24.0) ** 2
    f = weights(source, target, "step") @ v
    np.testing.assert_allclose(f, v.reshape(8, 3).mean(axis=1), rtol=1e-15)


def test_step_two_hourly_to_three_hourly_splits_the_straddling_step():
    source = TimeAxis.regular("2024-07-01", "2024-07-01T06", "2h")
    target = TimeAxis.regular("2024-07-01", "2024-07-01T06", "3h")
    v = np.array([1.0, 4.0, 16.0])
    f = weights(source, target, "step") @ v
    np.testing.assert_allclose(f, [(2 * 1.0 + 4.0) / 3, (4.0 + 2 * 16.0) / 3], rtol=1e-15)


def test_step_daily_to_six_hourly_and_the_time_integral_is_conserved():
    source = TimeAxis.regular("2024-07-01", "2024-07-04", "1D")
    target = TimeAxis.regular("2024-07-01", "2024-07-04", "6h")
    v = np.array([3.0, -1.0, 7.0])
    f = weights(source, target, "step") @ v
    np.testing.assert_array_equal(f, np.repeat(v, 4))
    assert f @ target.duration_s == pytest.approx(v @ source.duration_s, rel=1e-15)


def test_step_on_identical_axes_is_exactly_the_identity():
    axis = TimeAxis.regular("2024-07-01", "2024-07-05", "3h")
    np.testing.assert_array_equal(weights(axis, axis, "step"), np.eye(axis.size))


def test_step_from_an_annual_field():
    source = calendar_steps(np.array(["2022"], dtype="datetime64[Y]"), "Y")
    target = TimeAxis.regular("2022-12-31", "2023-01-01", "6h")
    np.testing.assert_array_equal(weights(source, target, "step"), np.ones((4, 1)))


# ---- linear ----------------------------------------------------------------------------------------

def test_linear_monthly_to_three_hourly_interpolates_between_month_midpoints():
    source = months("2024-06", "2024-07", "2024-08")
    target = TimeAxis.regular("2024-07-10", "2024-07-11", "3h")
    v = np.array([0.0, 31.0, 62.0])
    f = weights(source, target, "linear") @ v
    # July's midpoint is 16 Jul 12:00, June's 16 Jun 00:00 (30 days), August's 16 Aug 12:00 (31 days).
    mid_jun, mid_jul = np.datetime64("2024-06-16T00", "s"), np.datetime64("2024-07-16T12", "s")
    centre = target.start + np.timedelta64(90, "m")
    expected = 0.0 + 31.0 * ((centre - mid_jun) / (mid_jul - mid_jun))  # a linear function: mean = centre value
    np.testing.assert_allclose(f, expected, rtol=1e-13)


def test_linear_hourly_to_three_hourly_by_hand():
    source = TimeAxis.regular("2024-07-01", "2024-07-01T06", "1h")
    target = TimeAxis.regular("2024-07-01", "2024-07-01T06", "3h")
    v = np.array([0.0, 1.0, 2.0, 3.0, 5.0, 9.0])  # at midpoints 0.5, 1.5, … h
    f = weights(source, target, "linear") @ v
    # [0, 3): constant 0 on [0, 0.5], then v(t) = t − 0.5 up to 2.5, then 2 + (t − 2.5) to 3 → ∫ = 0 + 2 + 1.125
    first = (0.5 * 0.0 + 0.5 * (0.0 + 2.0) * 2.0 + 0.5 * (2.0 + 2.5) * 0.5) / 3
    # [3, 6): from t = 3 (2.5) to 3.5 (3), 3.5→4.5 (3→5), 4.5→5.5 (5→9), then constant 9 for 0.5 h
    second = (0.5 * (2.5 + 3.0) * 0.5 + 0.5 * (3.0 + 5.0) + 0.5 * (5.0 + 9.0) + 9.0 * 0.5) / 3
    np.testing.assert_allclose(f, [first, second], rtol=1e-14)


def test_linear_reproduces_linear_signals_and_rows_sum_to_one():
    source = TimeAxis.regular("2024-07-01", "2024-07-03", "1h")
    target = TimeAxis.regular("2024-07-01T03", "2024-07-02T21", "3h")
    W = weights(source, target, "linear")
    np.testing.assert_allclose(W.sum(axis=1), 1.0, rtol=1e-14)
    slope = hours_since(source, "2024-07-01") + 0.5  # value = time of the hourly midpoint
    np.testing.assert_allclose(W @ slope, hours_since(target, "2024-07-01") + 1.5, rtol=1e-13)


# ---- constant and coverage ------------------------------------------------------------------------

def test_constant_uses_a_single_field_for_every_step_without_period_check():
    target = TimeAxis.regular("2014-02-01", "2014-02-02", "2h")
    np.testing.assert_array_equal(weights(None, target, "constant"), np.ones((12, 1)))
    one_step = calendar_steps(np.array(["2013"], dtype="datetime64[Y]"), "Y")
    np.testing.assert_array_equal(weights(one_step, target, "constant"), np.ones((12, 1)))
    with pytest.raises(InputError, match='"constant" needs a single field'):
        weights(months("2014-01", "2014-02"), target, "constant")


def test_a_time_invariant_field_needs_the_constant_mapping():
    target = TimeAxis.regular("2014-02-01", "2014-02-02", "2h")
    with pytest.raises(InputError, match='time steps are unknown.*time_mapping = "constant"'):
        weights(None, target, "step")


@pytest.mark.parametrize("method", ["step", "linear"])
def test_an_inventory_not_covering_the_period_is_refused(method):
    source = months("2024-07")
    target = TimeAxis.regular("2024-06-28", "2024-07-05", "3h")  # footprint back-time reaches into June
    with pytest.raises(InputError) as info:
        weights(source, target, method)
    message = str(info.value)
    assert "inventory.nc" in message and "flux" in message and "does not cover the flux period" in message
    assert "24 of the 56 flux steps" in message and "first 2024-06-28T00:00:00" in message
    assert "2024-07-01T00:00:00…2024-08-01T00:00:00" in message


def test_a_gap_in_the_inventory_is_refused():
    source = TimeAxis(start=np.array(["2024-07-01", "2024-07-03"], dtype="datetime64[s]"),
                      end=np.array(["2024-07-02", "2024-07-04"], dtype="datetime64[s]"))
    target = TimeAxis.regular("2024-07-01", "2024-07-04", "12h")
    with pytest.raises(InputError, match="2 of the 6 flux steps.*first 2024-07-02T00:00:00"):
        weights(source, target, "step")


# ---- inventory steps from time stamps ---------------------------------------------------------------

def stamps(*values):
    return np.array(values, dtype="datetime64[s]")


def infer(values, stamp="start", time_step="auto"):
    return steps_from_stamps(values, stamp=stamp, time_step=time_step, path=Path("f.nc"), variable="v")


def test_month_start_stamps_are_calendar_months():
    axis = infer(stamps("2024-01-01", "2024-02-01", "2024-03-01"))
    assert axis.end.tolist() == stamps("2024-02-01", "2024-03-01", "2024-04-01").tolist()


def test_mid_month_stamps_of_carbontracker_are_calendar_months():
    axis = infer(stamps("2020-01-16T12", "2020-02-15T12", "2020-03-16T12"), stamp="middle")
    assert axis.start.tolist() == stamps("2020-01-01", "2020-02-01", "2020-03-01").tolist()
    assert axis.end[-1] == np.datetime64("2020-04-01T00:00:00")


def test_regular_stamps_at_starts_and_midpoints():
    hourly = infer(stamps("2024-07-01T00", "2024-07-01T01", "2024-07-01T02"))
    assert hourly.end[-1] == np.datetime64("2024-07-01T03:00:00")
    ct = infer(stamps("2020-01-01T01:30", "2020-01-01T04:30"), stamp="middle")
    assert ct.start.tolist() == stamps("2020-01-01T00", "2020-01-01T03").tolist()


def test_a_single_stamp_needs_a_time_step():
    with pytest.raises(InputError, match="single time stamp"):
        infer(stamps("2014-07-01"))
    axis = infer(stamps("2014-07-01"), time_step="month")
    assert axis.end[0] == np.datetime64("2014-08-01T00:00:00")
    day = infer(stamps("2014-07-01T12"), stamp="middle", time_step="1 day")
    assert day.start[0] == np.datetime64("2014-07-01T00:00:00")


def test_irregular_or_unsorted_stamps_are_refused():
    with pytest.raises(InputError, match="irregular time stamps"):
        infer(stamps("2024-07-01T00", "2024-07-01T01", "2024-07-01T03"))
    with pytest.raises(InputError, match="not strictly increasing"):
        infer(stamps("2024-02-01", "2024-01-01"))
    with pytest.raises(InputError, match="not at the start of a calendar month"):
        infer(stamps("2024-01-15"), time_step="month")
