import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.store import FootprintStore

GRID = Grid.regular(10, 14, 100, 105, 1.0, 1.0)
AXIS = TimeAxis.regular("2020-01-01", "2020-01-02", "6h")
N_COLUMNS = AXIS.size * GRID.size  # 4 × 4 × 5 = 80
N_OBS = 40


def make_obs(n=N_OBS):
    return {
        "obs_id": [f"SITE{i % 3}-{i:04d}" for i in range(n)],
        "time": np.datetime64("2020-01-01T18", "s") + np.arange(n).astype("timedelta64[m]"),
        "site": [f"SITE{i % 3}" for i in range(n)],
        "latitude": np.linspace(10.5, 13.5, n),
        "longitude": np.linspace(100.5, 104.5, n),
        "height": np.full(n, 100.0),
    }


def make_matrix(seed=0, n=N_OBS):
    matrix = sp.random(n, N_COLUMNS, density=0.15, random_state=seed, format="csr") * 5.0
    matrix = matrix.tolil()
    matrix[3, :] = 0.0  # an empty row inside
    matrix[n - 1, :] = 0.0  # and an empty last row
    matrix[n - 2, N_COLUMNS - 1] = 2.5  # the very last column is reachable
    return matrix.tocsr()


def write(path, matrix, obs=None, block=7, **kwargs):
    with FootprintStore.create(path, GRID, AXIS, make_obs() if obs is None else obs, **kwargs) as writer:
        for start in range(0, matrix.shape[0], block):
            writer.append(matrix[start : start + block])
    return FootprintStore(path)


@pytest.fixture
def stored(tmp_path):
    matrix = make_matrix()
    return write(tmp_path / "foot.h5", matrix), matrix


def test_round_trip_values_and_metadata(stored):
    store, matrix = stored
    expected = matrix.astype(np.float32)
    full = store.read_rows(0, N_OBS)
    assert full.shape == (N_OBS, N_COLUMNS) and full.dtype == np.float32
    np.testing.assert_array_equal(full.toarray(), expected.toarray())
    assert store.nnz == matrix.nnz and store.n_obs == N_OBS and store.n_columns == N_COLUMNS
    assert store.units == "m2 s mol-1"
    assert store.grid.same_as(GRID) and store.time_axis.same_as(AXIS)
    obs = make_obs()
    assert list(store.obs["obs_id"].values) == obs["obs_id"]
    assert list(store.obs["site"].values) == obs["site"]
    np.testing.assert_array_equal(store.obs["time"].values, obs["time"])
    assert store.obs["time"].dtype == np.dtype("datetime64[s]")
    for name in ("latitude", "longitude", "height"):
        np.testing.assert_array_equal(store.obs[name].values, obs[name])
    assert store.obs.sizes == {"obs": N_OBS}


def test_layout_follows_the_documented_format(stored):
    store, _ = stored
    with h5py.File(store.path) as f:
        assert f.attrs["format"] == "tanhui-footprint-store" and f.attrs["format_version"] == 1
        assert f.attrs["created_by"].startswith("tanhui ")
        assert f["footprint/indptr"].dtype == np.int64 and f["footprint/indptr"].shape == (N_OBS + 1,)
        assert f["footprint/indices"].dtype == np.int32 and f["footprint/data"].dtype == np.float32
        assert f["footprint/data"].chunks is not None and f["footprint/data"].compression is not None
        assert f["time/start"].dtype == np.int64 and f["time/start"][0] == np.datetime64("2020-01-01", "s").astype(np.int64)
        assert f["obs/height"].attrs["units"] == "m"
        assert h5py.check_string_dtype(f["obs/obs_id"].dtype).encoding == "utf-8"


@pytest.mark.parametrize(("start", "stop"), [(0, 1), (2, 5), (3, 4), (10, 31), (N_OBS - 1, N_OBS), (N_OBS - 2, N_OBS), (17, 17)])
def test_partial_reads_equal_slices_of_the_full_matrix(stored, start, stop):
    store, matrix = stored
    part = store.read_rows(start, stop)
    assert part.shape == (stop - start, N_COLUMNS)
    np.testing.assert_array_equal(part.toarray(), matrix[start:stop].astype(np.float32).toarray())


def test_rows_read_as_float64_are_the_stored_float32_values_and_still_checked(stored):
    store, matrix = stored
    part = store.read_rows(2, 9, dtype=np.float64)
    assert part.dtype == np.float64 and part.indices.dtype == np.int32
    np.testing.assert_array_equal(part.toarray(), matrix[2:9].astype(np.float32).astype(np.float64).toarray())
    corrupt(store.path, "footprint/data", matrix.indptr[4], np.inf)
    with pytest.raises(InputError, match="1 NaN or inf values in 1 observations"):
        store.read_rows(2, 9, dtype=np.float64)


def test_row_blocks_cover_all_rows_in_order(stored):
    store, matrix = stored
    blocks = list(store.iter_row_blocks(nnz_per_block=50))
    assert blocks[0][0] == 0 and blocks[-1][1] == N_OBS
    assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(blocks, blocks[1:]))
    # each block holds at most the budget unless it is a single row
    assert all(matrix[a:b].nnz <= 50 or b - a == 1 for a, b in blocks)
    assert len(blocks) >= matrix.nnz // 50


def test_read_bounds_are_checked(stored):
    store, _ = stored
    for start, stop in ((-1, 2), (5, 4), (0, N_OBS + 1)):
        with pytest.raises(ValueError):
            store.read_rows(start, stop)


def corrupt(path, name, position, value):
    with h5py.File(path, "r+") as f:
        f[name][position] = value


def test_partial_read_does_not_touch_corrupted_rows_elsewhere(stored):
    store, matrix = stored
    row = 30
    first_of_row = matrix.indptr[row]
    corrupt(store.path, "footprint/data", first_of_row, np.nan)
    # rows [0, 30) never read the bad value, so the check passes
    np.testing.assert_array_equal(store.read_rows(0, row).toarray(), matrix[:row].astype(np.float32).toarray())
    with pytest.raises(InputError) as info:
        store.read_rows(25, 35)
    message = str(info.value)
    assert info.value.variable == "footprint/data" and str(store.path) in message
    assert "1 NaN or inf values in 1 observations" in message and "SITE0-0030" in message
    assert "SITE1-0025" not in message
    assert np.isnan(store.read_rows(row, row + 1, check=False).data).any()


def test_negative_values_are_refused_on_read(stored):
    store, matrix = stored
    corrupt(store.path, "footprint/data", matrix.indptr[7], -1.0)
    with pytest.raises(InputError, match="negative values in 1 observations.*SITE1-0007"):
        store.read_rows(0, N_OBS)


def test_column_indices_out_of_range_are_refused(stored):
    store, matrix = stored
    corrupt(store.path, "footprint/indices", matrix.indptr[2], N_COLUMNS)
    with pytest.raises(InputError) as info:
        store.read_rows(0, 5)
    assert info.value.variable == "footprint/indices" and "SITE2-0002" in str(info.value)


def test_writer_refuses_nan_and_negative_rows(tmp_path):
    for bad in (np.nan, -0.5):
        matrix = make_matrix().tolil()
        matrix[5, 3] = bad
        with pytest.raises(InputError, match="SITE2-0005"):
            write(tmp_path / "bad.h5", matrix.tocsr())
        assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("units", "ok"),
    [("ppm (umol-1 m2 s)", True), ("(mol/mol)/(mol/m2/s)", True), ("s m3 kg-1", False), ("ppm m2 s mol-1", False), ("nonsense", False)],
)
def test_units_attribute_must_be_the_footprint_units(stored, units, ok):
    store, _ = stored
    with h5py.File(store.path, "r+") as f:
        f.attrs["units"] = units
    if ok:
        assert FootprintStore(store.path).units == units
    else:
        with pytest.raises(InputError, match="footprint readers") as info:
            FootprintStore(store.path)
        assert info.value.variable == "attribute units"


def test_files_that_are_not_stores_are_refused(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        FootprintStore(tmp_path / "missing.h5")
    assert str(tmp_path / "missing.h5") in str(info.value)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(InputError, match="not an HDF5 file"):
        FootprintStore(tmp_path / "text.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something else"
    with pytest.raises(InputError, match="not a tanhui footprint store"):
        FootprintStore(tmp_path / "other.h5")


@pytest.mark.parametrize("indptr_edit", ["decreasing", "wrong_end", "missing"])
def test_inconsistent_pointers_are_refused(stored, indptr_edit):
    store, _ = stored
    with h5py.File(store.path, "r+") as f:
        indptr = f["footprint/indptr"][()]
        del f["footprint/indptr"]
        if indptr_edit == "decreasing":
            indptr[5] = indptr[6] + 1
        elif indptr_edit == "wrong_end":
            indptr[-1] -= 1
        if indptr_edit != "missing":
            f["footprint/indptr"] = indptr
    with pytest.raises(InputError) as info:
        FootprintStore(store.path)
    assert info.value.variable == "footprint/indptr"


def test_exception_inside_the_writer_leaves_nothing(tmp_path):
    path = tmp_path / "foot.h5"
    with pytest.raises(RuntimeError, match="boom"):
        with FootprintStore.create(path, GRID, AXIS, make_obs()) as writer:
            writer.append(make_matrix()[:10])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_too_few_rows_leave_nothing(tmp_path):
    with pytest.raises(ValueError, match="10 rows were appended"):
        with FootprintStore.create(tmp_path / "foot.h5", GRID, AXIS, make_obs()) as writer:
            writer.append(make_matrix()[:10])
    assert list(tmp_path.iterdir()) == []


def test_wrong_number_of_columns_is_refused(tmp_path):
    with pytest.raises(ValueError, match="columns"):
        with FootprintStore.create(tmp_path / "foot.h5", GRID, AXIS, make_obs()) as writer:
            writer.append(sp.csr_matrix((2, N_COLUMNS + 1)))
    assert list(tmp_path.iterdir()) == []


def test_existing_path_needs_overwrite(stored):
    store, matrix = stored
    before = store.path.read_bytes()
    with pytest.raises(InputError, match="file exists"):
        FootprintStore.create(store.path, GRID, AXIS, make_obs())
    assert store.path.read_bytes() == before
    replaced = write(store.path, 2 * matrix, overwrite=True)
    np.testing.assert_array_equal(replaced.read_rows(0, N_OBS).toarray(), (2 * matrix).astype(np.float32).toarray())


def test_duplicate_obs_ids_are_refused(tmp_path, stored):
    obs = make_obs()
    obs["obs_id"][7] = obs["obs_id"][3]
    with pytest.raises(InputError, match="duplicated.*SITE0-0003"):
        FootprintStore.create(tmp_path / "dup.h5", GRID, AXIS, obs)
    # and a store whose ids were duplicated afterwards is refused when opened
    store, _ = stored
    with h5py.File(store.path, "r+") as f:
        f["obs/obs_id"][7] = f["obs/obs_id"][3]
    with pytest.raises(InputError, match="duplicated.*SITE0-0003"):
        FootprintStore(store.path)


def test_obs_may_be_a_dataset_and_duplicates_or_unsorted_entries_are_canonicalised(tmp_path):
    obs = xr.Dataset({name: ("obs", np.asarray(values)) for name, values in make_obs(2).items()})
    # row 0 holds column 5 twice and its columns out of order
    rows = sp.csr_matrix((np.array([1.0, 2.0, 0.5]), np.array([5, 1, 5]), np.array([0, 3, 3])), shape=(2, N_COLUMNS))
    with FootprintStore.create(tmp_path / "f.h5", GRID, AXIS, obs) as writer:
        writer.append(rows)
    read = FootprintStore(tmp_path / "f.h5").read_rows(0, 2)
    np.testing.assert_array_equal(read.indices, [1, 5])
    np.testing.assert_array_equal(read.data, np.array([2.0, 1.5], np.float32))


def test_blocks_of_empty_rows_can_be_appended(tmp_path):
    matrix = make_matrix()
    with FootprintStore.create(tmp_path / "f.h5", GRID, AXIS, make_obs()) as writer:
        writer.append(matrix[:10])
        writer.append(sp.csr_matrix((5, N_COLUMNS)))
        writer.append(matrix[15:])
    read = FootprintStore(tmp_path / "f.h5").read_rows(0, N_OBS)
    assert read[10:15].nnz == 0
    np.testing.assert_array_equal(read[15:].toarray(), matrix[15:].astype(np.float32).toarray())


def test_missing_obs_fields_are_named(tmp_path):
    obs = make_obs()
    del obs["height"]
    with pytest.raises(InputError, match="height"):
        FootprintStore.create(tmp_path / "f.h5", GRID, AXIS, obs)


def test_append_outside_the_context_is_an_error(tmp_path):
    writer = FootprintStore.create(tmp_path / "f.h5", GRID, AXIS, make_obs())
    with pytest.raises(RuntimeError, match="context manager"):
        writer.append(make_matrix())
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_the_old_store(stored):
    store, _ = stored
    before = store.path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with FootprintStore.create(store.path, GRID, AXIS, make_obs(), overwrite=True):
            raise RuntimeError("boom")
    assert store.path.read_bytes() == before
    assert sorted(p.name for p in store.path.parent.iterdir()) == [store.path.name]
