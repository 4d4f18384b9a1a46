import math

import numpy as np
import pytest

from transport.grid import EARTH_RADIUS_M, Grid, TimeAxis, great_circle_km


def test_global_one_degree_areas_sum_to_the_sphere():
    grid = Grid.regular(-90, 90, -180, 180, 1.0, 1.0)
    assert grid.shape == (180, 360) and grid.size == 64800
    assert grid.cell_area().sum() == pytest.approx(4 * math.pi * EARTH_RADIUS_M**2, rel=1e-12)


def test_band_area_matches_the_formula():
    grid = Grid.regular(30, 31, 10, 12, 1.0, 0.5)
    expected = EARTH_RADIUS_M**2 * (math.sin(math.radians(31)) - math.sin(math.radians(30))) * math.radians(0.5)
    np.testing.assert_allclose(grid.cell_area(), np.full((1, 4), expected), rtol=1e-13)


def test_regular_grid_centres_and_bounds():
    grid = Grid.regular(20, 45, 100, 120, 0.5, 0.5)
    assert grid.shape == (50, 40)
    assert grid.lat[0] == 20.25 and grid.lon[-1] == 119.75
    assert grid.lat_bounds[-1, 1] == 45.0 and grid.lon_bounds[0, 0] == 100.0
    assert grid.describe() == "50 × 40 cells (lat × lon), lat 20…45, lon 100…120, 0.5° × 0.5°"


def test_from_centres_agrees_with_regular():
    regular = Grid.regular(20, 45, 100, 125, 0.5, 0.5)
    assert Grid.from_centres(regular.lat, regular.lon).same_as(regular)
    assert not Grid.from_centres(regular.lat + 0.01, regular.lon).same_as(regular)
    assert not Grid.regular(20, 44.5, 100, 125, 0.5, 0.5).same_as(regular)


def test_from_centres_clips_latitude_bounds_to_the_poles():
    grid = Grid.from_centres(np.arange(-90.0, 90.1, 30.0), [0.0, 1.0])
    assert grid.lat_bounds[0, 0] == -90.0 and grid.lat_bounds[-1, 1] == 90.0
    assert grid.lat_bounds[1, 0] == -75.0


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ([0.0, 2.0, 1.0], [0.0, 1.0], "strictly increasing"),
        ([0.0, 0.0, 1.0], [0.0, 1.0], "strictly increasing"),
        ([0.0, 1.0], [5.0, 1.0], "strictly increasing"),
        ([0.0], [0.0, 1.0], "at least two centres"),
        ([0.0, np.nan], [0.0, 1.0], "finite"),
    ],
)
def test_bad_centres_are_refused(lat, lon, message):
    with pytest.raises(ValueError, match=message):
        Grid.from_centres(lat, lon)


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="shape"):
        Grid(lat=[0.5, 1.5], lon=[0.5], lat_bounds=[[0, 1]], lon_bounds=[[0, 1]])
    with pytest.raises(ValueError, match="inside its bounds"):
        Grid(lat=[0.5], lon=[0.5], lat_bounds=[[1, 2]], lon_bounds=[[0, 1]])
    with pytest.raises(ValueError, match="overlap"):
        Grid(lat=[0.5, 1.5], lon=[0.5], lat_bounds=[[0, 1.2], [1, 2]], lon_bounds=[[0, 1]])
    with pytest.raises(ValueError, match=r"\[-90, 90\]"):
        Grid(lat=[89.5], lon=[0.5], lat_bounds=[[89, 91]], lon_bounds=[[0, 1]])


def test_regular_needs_a_whole_number_of_cells():
    with pytest.raises(ValueError, match="whole number"):
        Grid.regular(0, 10, 0, 10, 3.0, 1.0)
    with pytest.raises(ValueError, match="whole number"):
        Grid.regular(0, 10, 0, 10, 1.0, -1.0)


def test_grid_arrays_are_read_only_copies():
    lat = np.array([0.5, 1.5])
    grid = Grid.from_centres(lat, [0.5, 1.5])
    lat[0] = 99.0
    assert grid.lat[0] == 0.5
    with pytest.raises(ValueError):
        grid.lat[0] = 1.0


def test_great_circle_distances():
    assert great_circle_km(0.0, 0.0, 1.0, 0.0) == pytest.approx(111.19, abs=0.01)
    assert great_circle_km(45.0, 10.0, 45.0, 10.0) == 0.0
    assert great_circle_km(0.0, 0.0, 0.0, 180.0) == pytest.approx(math.pi * EARTH_RADIUS_M / 1000, rel=1e-12)
    # one degree of longitude shrinks with cos(latitude); arrays broadcast
    d = great_circle_km(np.array([[0.0], [60.0]]), 0.0, np.array([[0.0], [60.0]]), np.array([1.0, 2.0]))
    assert d.shape == (2, 2)
    assert d[1, 0] == pytest.approx(0.5 * d[0, 0], rel=1e-4)


def test_time_axis_regular_and_locate():
    axis = TimeAxis.regular("2020-01-01T00:00", "2020-01-02T00:00", "3h")
    assert axis.size == 8
    np.testing.assert_array_equal(axis.duration_s, np.full(8, 10800.0))
    assert axis.end[-1] == np.datetime64("2020-01-02T00:00", "s")
    times = np.array(
        ["2019-12-31T23:59:59", "2020-01-01T00:00", "2020-01-01T02:59:59", "2020-01-01T03:00", "2020-01-01T23:59", "2020-01-02T00:00"],
        dtype="datetime64[s]",
    )
    np.testing.assert_array_equal(axis.locate(times), [-1, 0, 0, 1, 7, -1])
    assert axis.locate(np.datetime64("NaT")) == -1
    # sub-second times are compared at their own resolution, not truncated onto a step
    assert axis.locate(np.datetime64("2020-01-01T02:59:59.999", "ms")) == 0
    assert axis.locate(np.datetime64("2019-12-31T23:59:59.5", "ms")) == -1


def test_time_axis_locate_in_a_gap_is_minus_one():
    axis = TimeAxis(start=np.array(["2020-01-01T00", "2020-01-01T12"], "datetime64[s]"),
                    end=np.array(["2020-01-01T06", "2020-01-01T18"], "datetime64[s]"))
    np.testing.assert_array_equal(axis.locate(np.array(["2020-01-01T05", "2020-01-01T08", "2020-01-01T12"], "datetime64[s]")), [0, -1, 1])


def test_time_axis_regular_accepts_numpy_and_python_steps():
    import datetime

    a = TimeAxis.regular(np.datetime64("2020-01-01"), np.datetime64("2020-01-03"), np.timedelta64(1, "D"))
    b = TimeAxis.regular("2020-01-01", "2020-01-03", datetime.timedelta(hours=24))
    assert a.same_as(b) and a.size == 2
    assert not a.same_as(TimeAxis.regular("2020-01-01", "2020-01-03", "12h"))


@pytest.mark.parametrize(
    ("start", "stop", "step"),
    [("2020-01-01", "2020-01-02", "5h"), ("2020-01-02", "2020-01-01", "1h"), ("2020-01-01", "2020-01-02", "1 month")],
)
def test_time_axis_regular_refuses_bad_ranges(start, stop, step):
    with pytest.raises(ValueError):
        TimeAxis.regular(start, stop, step)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (["2020-01-01T00", "2020-01-01T03"], ["2020-01-01T04", "2020-01-01T06"], "overlap"),
        (["2020-01-01T03", "2020-01-01T00"], ["2020-01-01T04", "2020-01-01T01"], "strictly increasing"),
        (["2020-01-01T03"], ["2020-01-01T03"], "end after it starts"),
        (["2020-01-01T03", "NaT"], ["2020-01-01T04", "2020-01-01T05"], "NaT"),
    ],
)
def test_time_axis_refuses_bad_steps(start, end, message):
    with pytest.raises(ValueError, match=message):
        TimeAxis(start=np.array(start, "datetime64[s]"), end=np.array(end, "datetime64[s]"))
