import numpy as np
import pytest
import scipy.sparse as sp

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.synthetic import plume_footprint_blocks, plume_footprints

GRID = Grid.regular(20, 45, 100, 125, 0.5, 0.5)
AXIS = TimeAxis.regular("2020-01-01", "2020-01-05", "3h")  # 32 steps
NLAT, NLON = GRID.shape


def receptors(n=120, seed=0):
    rng = np.random.default_rng(seed)
    sites = np.array(["AAA", "BBB", "CCC", "DDD"])
    lat = np.array([30.0, 35.0, 40.0, 27.5])
    lon = np.array([105.0, 112.5, 120.0, 118.0])
    which = rng.integers(0, 4, n)
    seconds = rng.integers(0, 4 * 86400, n)
    return {
        "time": np.datetime64("2020-01-01", "s") + seconds.astype("timedelta64[s]"),
        "latitude": lat[which],
        "longitude": lon[which],
        "site": sites[which],
    }


def one_receptor(lat, lon, time="2020-01-05T00"):
    return {"time": np.array([time], "datetime64[s]"), "latitude": [lat], "longitude": [lon], "site": ["R"]}


def step_of_columns(K):
    return K.indices // (NLAT * NLON)


@pytest.fixture(scope="module")
def footprints():
    rec = receptors()
    return rec, plume_footprints(GRID, AXIS, rec, rng=np.random.default_rng(42))


def test_shape_values_and_sparsity(footprints):
    rec, K = footprints
    assert K.shape == (120, AXIS.size * GRID.size) and K.dtype == np.float64 and K.format == "csr"
    assert np.all(np.isfinite(K.data)) and np.all(K.data > 0)
    per_row = K.getnnz(axis=1)
    assert per_row.max() > 0 and per_row.mean() < 0.1 * K.shape[1]
    # even within its back window a row covers well under half of the cells
    t_obs = rec["time"]
    first = np.searchsorted(AXIS.start, t_obs - np.timedelta64(96, "h"))
    steps = np.maximum(np.searchsorted(AXIS.end, t_obs, side="right") - first, 0)
    assert np.all(per_row <= 0.4 * steps * GRID.size)


def test_only_steps_inside_the_back_window_are_sensitive(footprints):
    rec, K = footprints
    t_obs = rec["time"]
    rows = np.repeat(np.arange(K.shape[0]), np.diff(K.indptr))
    step = step_of_columns(K)
    assert np.all(AXIS.start[step] >= t_obs[rows] - np.timedelta64(96, "h"))
    assert np.all(AXIS.end[step] <= t_obs[rows])
    # and the window is used: each receptor sees its most recent complete step
    last_step = np.searchsorted(AXIS.end, t_obs, side="right") - 1
    for row in np.flatnonzero(last_step >= 0):
        assert last_step[row] in step[K.indptr[row] : K.indptr[row + 1]]


def test_row_totals_never_exceed_the_total_sensitivity(footprints):
    _, K = footprints
    totals = np.asarray(K.sum(axis=1)).ravel()
    assert np.all(totals <= 20.0 * (1 + 1e-12))
    assert totals.max() > 5.0


def test_same_seed_same_result_and_receptor_order_does_not_matter(footprints):
    rec, K = footprints
    again = plume_footprints(GRID, AXIS, rec, rng=np.random.default_rng(42))
    assert (K != again).nnz == 0
    order = np.random.default_rng(7).permutation(len(rec["time"]))
    shuffled = plume_footprints(GRID, AXIS, {k: np.asarray(v)[order] for k, v in rec.items()}, rng=np.random.default_rng(42))
    assert abs(shuffled - K[order]).max() == 0.0


def test_blocks_stack_to_the_whole_matrix_and_leave_rng_as_the_whole_call(footprints):
    rec, K = footprints
    rng = np.random.default_rng(42)
    blocks = plume_footprint_blocks(GRID, AXIS, rec, rng=rng, rows_per_block=50)
    after_call = rng.random()  # winds are drawn at the call, before any block is consumed
    blocks = list(blocks)
    assert [b.shape[0] for b in blocks] == [50, 50, 20]
    stacked = sp.vstack(blocks, format="csr")
    assert stacked.shape == K.shape and (stacked != K).nnz == 0
    whole = np.random.default_rng(42)
    plume_footprints(GRID, AXIS, rec, rng=whole)
    assert whole.random() == after_call


def test_different_seeds_differ(footprints):
    rec, K = footprints
    other = plume_footprints(GRID, AXIS, rec, rng=np.random.default_rng(43))
    assert abs(other - K).max() > 1e-3


def test_plume_starts_at_the_receptor_and_moves_upwind():
    lat_r, lon_r, speed = 32.5, 117.5, 5.0
    K = plume_footprints(
        GRID, AXIS, one_receptor(lat_r, lon_r), rng=np.random.default_rng(0),
        wind_speed_range=(speed, speed), prevailing_from_deg=270.0, direction_spread_deg=0.0,
    )
    field = K.toarray().reshape(AXIS.size, NLAT, NLON)
    km_per_deg_lon = 111.195 * np.cos(np.deg2rad(lat_r))
    previous = np.inf
    for back in (1, 3, 6, 9):  # steps back from t_obs: τ = 1.5, 7.5, 16.5, 25.5 h
        weights = field[AXIS.size - back]
        total = weights.sum()
        centroid_lat = (weights.sum(axis=1) @ GRID.lat) / total
        centroid_lon = (weights.sum(axis=0) @ GRID.lon) / total
        tau = 3.0 * back - 1.5
        expected_lon = lon_r - speed * tau * 3.6 / km_per_deg_lon
        assert centroid_lat == pytest.approx(lat_r, abs=0.05)
        assert centroid_lon == pytest.approx(expected_lon, abs=0.1)
        assert centroid_lon < previous
        previous = centroid_lon
    # the first back step is within half a cell of the receptor
    assert abs(lon_r - (field[-1].sum(axis=0) @ GRID.lon) / field[-1].sum()) < 0.5


def test_receptor_in_a_large_domain_keeps_its_total_sensitivity():
    big = Grid.regular(0, 80, 60, 200, 1.0, 1.0)
    rec = one_receptor(40.0, 150.0)  # the 96 h window ends exactly at the end of the axis
    options = dict(wind_speed_range=(5.0, 5.0), direction_spread_deg=0.0)
    exact = plume_footprints(big, AXIS, rec, rng=np.random.default_rng(0), cutoff=0.0, **options)
    assert exact.sum() == pytest.approx(20.0, rel=1e-6)
    sparse = plume_footprints(big, AXIS, rec, rng=np.random.default_rng(0), **options)
    # dropping cells below 1e-3 of the peak loses about 0.1% of a Gaussian's mass
    assert 0.99 * 20.0 < sparse.sum() < 20.0
    assert sparse.nnz < 0.2 * exact.nnz


def test_plume_leaving_the_domain_loses_sensitivity():
    rec = one_receptor(32.5, 101.0)  # near the western edge, westerly wind
    K = plume_footprints(GRID, AXIS, rec, rng=np.random.default_rng(0), direction_spread_deg=0.0)
    assert 0.0 < K.sum() < 0.6 * 20.0


def test_receptor_without_steps_in_its_window_has_an_empty_row():
    K = plume_footprints(GRID, AXIS, one_receptor(30.0, 110.0, "2020-01-01T02"), rng=np.random.default_rng(0))
    assert K.shape == (1, AXIS.size * GRID.size) and K.nnz == 0


def test_bad_receptors_are_refused():
    rec = one_receptor(30.0, 110.0)
    del rec["site"]
    with pytest.raises(InputError, match="site"):
        plume_footprints(GRID, AXIS, rec, rng=np.random.default_rng(0))
    with pytest.raises(InputError, match="NaT"):
        plume_footprints(GRID, AXIS, one_receptor(30.0, 110.0, "NaT"), rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="cutoff"):
        plume_footprints(GRID, AXIS, one_receptor(30.0, 110.0), rng=np.random.default_rng(0), cutoff=1.5)
