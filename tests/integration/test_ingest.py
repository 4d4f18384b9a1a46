"""Ingestion of footprint files into a store: boundary round trip, the space/time mapping
rule, rejections, serial == parts + merge == MPI, resuming, and ``tanhui footprints``."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import xarray as xr

from inversion.cli import main as cli_main
from transport.errors import InputError
from transport.formats.common import ReaderOptions
from transport.formats.detect import read_footprints
from transport.grid import Grid, TimeAxis
from transport.ingest import IngestOptions, ingest, parts_dir
from transport.regrid import ConservativeRegridder
from transport.store import FootprintStore

try:
    from tests import footprint_files as ff
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import footprint_files as ff

EXIT_BAD_INPUT = 2
GRID = Grid.regular(40.0, 41.2, -113.0, -111.8, 0.1, 0.1)  # 12 × 12 cells
AXIS = TimeAxis.regular("2015-06-17T00:00", "2015-06-19T00:00", "3h")
SITES = {"SLC": (40.77, -111.85, 5.0), "WBB": (40.76, -111.85, 35.0), "HDP": (40.56, -111.65, 20.0)}


def stilt_values(seed: int, n_slot: int) -> np.ndarray:
    values = np.random.default_rng(seed).gamma(0.4, 1e-3, size=(n_slot, *GRID.shape))
    values[values < 2e-4] = 0.0  # footprints are sparse
    return values


def write_stilt_files(directory: Path, n_per_site: int = 8, n_slot: int = 6, step_h: int = 1) -> list[Path]:
    """Time-resolved R-STILT v2 files: ``n_slot`` slots of ``step_h`` hours before each receptor."""
    paths = []
    for s, (site, (lat, lon, zagl)) in enumerate(SITES.items()):
        for i in range(n_per_site):
            t = np.datetime64("2015-06-18T12:00", "s") + np.timedelta64(i, "h")
            times = t - np.arange(1, n_slot + 1)[::-1] * np.timedelta64(step_h, "h")
            name = f"{str(t).replace('-', '').replace('T', '').replace(':', '')[:12]}_{lon}_{lat}_{zagl:g}_foot.nc"
            paths.append(ff.stilt_v2(directory / site / name, stilt_values(100 * s + i, n_slot), GRID.lat, GRID.lon, times,
                                     attrs={"site": site}))
    return paths


def store_contents(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of a store (attributes such as the creation time excluded)."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def assert_same_store(a: Path, b: Path) -> None:
    ca, cb = store_contents(a), store_contents(b)
    assert sorted(ca) == sorted(cb)
    for name in ca:
        assert np.array_equal(ca[name], cb[name]), name


def tanhui(*args: str) -> int:
    return cli_main(["footprints", *args])


def ingest_args(inputs, out: Path, *extra: str) -> list[str]:
    return ["ingest", *map(str, inputs), "--out", str(out), "--grid", "40,41.2,-113,-111.8,0.1,0.1",
            "--time", "2015-06-17T00:00,2015-06-19T00:00,3h", "--comm", "serial", *extra]


def read_rejected(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def stilt_files(tmp_path_factory) -> list[Path]:
    return write_stilt_files(tmp_path_factory.mktemp("stilt"))


@pytest.fixture(scope="module")
def reference(stilt_files, tmp_path_factory) -> Path:
    """The serial ingestion of all files through the CLI (one part per file count default)."""
    out = tmp_path_factory.mktemp("reference") / "store.h5"
    assert tanhui(*ingest_args(stilt_files, out)) == 0
    return out


# --- the store's boundary group --------------------------------------------------------------

def test_store_boundary_round_trip_and_all_or_nothing(tmp_path):
    grid = Grid.regular(0, 3, 0, 4, 1, 1)
    axis = TimeAxis.regular("2020-01-01", "2020-01-02", "12h")
    n = 5
    obs = {"obs_id": [f"A-{i}" for i in range(n)], "time": np.full(n, np.datetime64("2020-01-01T12", "s")),
           "site": ["A"] * n, "latitude": np.ones(n), "longitude": np.ones(n), "height": np.full(n, 10.0)}
    heights = np.array([500.0, 1500.0])
    rng = np.random.default_rng(0)
    edges = {e: rng.uniform(0, 0.2, size=(n, 2, 4 if e in "ns" else 3)).astype(np.float32) for e in "nsew"}
    rows = sp.random(n, axis.size * grid.size, density=0.3, random_state=1, format="csr")
    with FootprintStore.create(tmp_path / "b.h5", grid, axis, obs, boundary_height=heights) as w:
        w.append(rows[:2], boundary={e: v[:2] for e, v in edges.items()})
        with pytest.raises(ValueError, match="all-or-nothing"):
            w.append(rows[2:])
        with pytest.raises(InputError, match="outside \\[0, 1\\]"):
            w.append(rows[2:], boundary={e: v[2:] + (2.0 if e == "n" else 0.0) for e, v in edges.items()})
        w.append(rows[2:], boundary={e: v[2:] for e, v in edges.items()})
    store = FootprintStore(tmp_path / "b.h5")
    assert store.has_boundary
    np.testing.assert_array_equal(store.boundary_height, heights)
    part = store.read_boundary(1, 4)
    for e in "nsew":
        np.testing.assert_array_equal(part[e], edges[e][1:4])
    with pytest.raises(ValueError, match="all-or-nothing"), FootprintStore.create(tmp_path / "c.h5", grid, axis, obs) as w:
        w.append(rows, boundary=edges)
    with FootprintStore.create(tmp_path / "d.h5", grid, axis, obs) as w:
        w.append(rows)
    plain = FootprintStore(tmp_path / "d.h5")
    assert not plain.has_boundary
    with pytest.raises(InputError, match="no boundary sensitivities"):
        plain.read_boundary(0, 1)


# --- the mapping rule ------------------------------------------------------------------------

def expected_row(record, grid: Grid, axis: TimeAxis) -> np.ndarray:
    """K_k = Σ_s K_s |slot_s ∩ step_k| / |slot_s|, written out with loops."""
    out = np.zeros((axis.size, *grid.shape))
    for s in range(record.slots.size):
        a, b = record.slots.start[s], record.slots.end[s]
        for k in range(axis.size):
            overlap = (min(b, axis.end[k]) - max(a, axis.start[k])).astype(np.int64)
            if overlap > 0:
                out[k] += record.values[s] * overlap / (b - a).astype(np.int64)
    return out.ravel()


def test_time_mapping_splits_slots_over_flux_steps(tmp_path):
    # 2-hourly slots on 3-hourly steps: every other slot straddles a step boundary
    (path,) = write_stilt_files(tmp_path / "in", n_per_site=1, n_slot=5, step_h=2)[:1]
    out = tmp_path / "store.h5"
    ingest([path], out, GRID, AXIS, options=IngestOptions(reader=ReaderOptions(site="SLC")))
    (record,) = read_footprints(path, site="SLC")
    row = FootprintStore(out).read_rows(0, 1).toarray().ravel()
    np.testing.assert_allclose(row, expected_row(record, GRID, AXIS), rtol=1e-6)
    assert row.sum() == pytest.approx(record.values.sum(), rel=1e-6)


def test_time_mapping_on_an_axis_with_gaps(tmp_path):
    # flux steps 03–06 h and 09–15 h only: slot parts in the gaps are outside the axis
    axis = TimeAxis(start=np.array(["2015-06-18T03", "2015-06-18T09"], "datetime64[s]"),
                    end=np.array(["2015-06-18T06", "2015-06-18T15"], "datetime64[s]"))
    (path,) = write_stilt_files(tmp_path / "in", n_per_site=1, n_slot=5, step_h=2)[:1]  # slots 02:00 … 12:00
    (record,) = read_footprints(path, site="SLC")
    with pytest.raises(InputError, match="no footprint was ingested"):
        ingest([path], tmp_path / "gap.h5", GRID, axis)
    ingest([path], tmp_path / "gap.h5", GRID, axis, options=IngestOptions(truncate=True), overwrite=True)
    row = FootprintStore(tmp_path / "gap.h5").read_rows(0, 1).toarray().ravel()
    np.testing.assert_allclose(row, expected_row(record, GRID, axis), rtol=1e-6)
    kept = expected_row(record, GRID, axis).sum() / record.values.sum()
    assert 0 < kept < 1


def test_integrated_footprints_spread_over_steps_or_are_rejected_outside_the_axis(tmp_path):
    values = stilt_values(7, 1)
    t = np.datetime64("2015-06-17T12:00", "s")
    path = ff.stilt_v2(tmp_path / "201506171200_-111.85_40.77_5_foot.nc", values, GRID.lat, GRID.lon, [t],
                       attrs={"backtime": "24 hours"})  # 12 h of its back-time lie before the axis starts
    out = tmp_path / "store.h5"
    with pytest.raises(InputError, match="no footprint was ingested"):
        ingest([path], out, GRID, AXIS, options=IngestOptions(reader=ReaderOptions(site="SLC")))
    (rejection,) = read_rejected(out.with_name("store.h5.rejected.csv"))
    assert rejection["obs_id"] == "SLC-5m-20150617T1200" and "50 % of its sensitivity" in rejection["reason"]
    assert "--truncate" in rejection["reason"]
    summary = ingest([path], out, GRID, AXIS, options=IngestOptions(reader=ReaderOptions(site="SLC"), truncate=True),
                     overwrite=True)
    assert summary.n_obs == 1 and summary.rejected == []
    row = FootprintStore(out).read_rows(0, 1).toarray().reshape(AXIS.size, -1)
    np.testing.assert_allclose(row[:4].sum(axis=0), 0.5 * values[0].ravel(), rtol=1e-6)  # 4 steps of 3 h = half of 24 h
    np.testing.assert_allclose(row[0], values[0].ravel() / 8, rtol=1e-6)
    assert row[4:].sum() == 0


def test_regridding_conserves_the_sum_over_a_covering_target(tmp_path):
    path = write_stilt_files(tmp_path / "in", n_per_site=1)[0]
    (record,) = read_footprints(path)
    coarse = Grid.regular(40.0, 41.2, -113.0, -111.8, 0.3, 0.4)
    out = tmp_path / "coarse.h5"
    with pytest.raises(InputError, match="no footprint was ingested"):
        ingest([path], out, coarse, AXIS)
    (rejection,) = read_rejected(out.with_name("coarse.h5.rejected.csv"))
    assert "differs from the store grid" in rejection["reason"] and "--regrid" in rejection["reason"]
    ingest([path], out, coarse, AXIS, options=IngestOptions(regrid=True), overwrite=True)
    row = FootprintStore(out).read_rows(0, 1).toarray()
    assert row.sum() == pytest.approx(record.values.sum(), rel=1e-6)
    # cell by cell: each coarse cell holds the sum of the fine cells inside it (aligned edges)
    fine = record.values.sum(axis=0)
    coarse_sum = fine.reshape(4, 3, 3, 4).sum(axis=(1, 3))
    np.testing.assert_allclose(row.reshape(AXIS.size, 4, 3).sum(axis=0), coarse_sum, rtol=1e-5)
    # a covering target larger than the source keeps everything too
    wide = Grid.regular(39.0, 42.0, -114.0, -111.0, 0.5, 0.5)
    ingest([path], tmp_path / "wide.h5", wide, AXIS, options=IngestOptions(regrid=True))
    assert FootprintStore(tmp_path / "wide.h5").read_rows(0, 1).sum() == pytest.approx(record.values.sum(), rel=1e-6)


def test_boundary_is_remapped_along_the_edges_of_a_coarser_grid(tmp_path):
    lat = 51.0 + 0.25 * np.arange(8) + 0.125
    lon = -1.0 + 0.25 * np.arange(6) + 0.125
    times = np.datetime64("2014-02-10T00", "s") + np.arange(2) * np.timedelta64(2, "h")
    rng = np.random.default_rng(4)
    edges = {e: rng.uniform(0, 0.01, size=(20, lon.size if e in "ns" else lat.size, 2)) for e in "nesw"}
    path = ff.name_file(tmp_path / "MHD-10magl_EUROPE_201402.nc", rng.gamma(0.5, 0.05, size=(8, 6, 2)), lat, lon, times,
                        boundary=edges)
    axis = TimeAxis.regular("2014-01-01", "2014-03-01", "1D")
    coarse = Grid.regular(51.0, 53.0, -1.0, 0.5, 0.5, 0.5)
    options = IngestOptions(reader=ReaderOptions(back_hours=720), regrid=True)
    ingest([path], tmp_path / "c.h5", coarse, axis, options=options)
    b = FootprintStore(tmp_path / "c.h5").read_boundary(0, 2)
    for e in "nesw":
        np.testing.assert_allclose(b[e].sum(axis=2), np.asarray(edges[e], np.float32).sum(axis=1).T, rtol=1e-5)
    # a different domain: the edge fractions do not apply; auto refuses to mix, ignore drops them
    sub = Grid.regular(51.5, 52.5, -0.5, 0.5, 0.25, 0.25)
    with pytest.raises(InputError, match="--boundary ignore"):
        ingest([path], tmp_path / "s.h5", sub, axis, options=options)
    summary = ingest([path], tmp_path / "s.h5", sub, axis, overwrite=True,
                     options=IngestOptions(reader=ReaderOptions(back_hours=720), regrid=True, boundary="ignore"))
    assert summary.n_obs == 2 and not summary.boundary and not FootprintStore(tmp_path / "s.h5").has_boundary
    assert any("outside the store grid" in note for note in summary.note_counts)


# --- the CLI: rejections, parts, resume, MPI, inspect -----------------------------------------

def test_corrupt_and_foreign_files_are_reported_not_ingested(stilt_files, reference, tmp_path):
    corrupt = tmp_path / "corrupt_foot.nc"
    corrupt.write_bytes(stilt_files[0].read_bytes()[:3000])  # a truncated copy
    foreign = ff.write(xr.Dataset({"flux": (("time", "lat", "lon"), np.ones((1, *GRID.shape)), {"units": "mol m-2 s-1"})},
                                  coords={"lat": GRID.lat, "lon": GRID.lon}), tmp_path / "flux.nc")
    text = tmp_path / "notes.txt.nc"
    text.write_text("not a netcdf file\n")
    manifest = tmp_path / "manifest.txt"
    manifest.write_text("\n".join(map(str, [*stilt_files, corrupt, foreign])) + "\n")
    out = tmp_path / "store.h5"
    assert tanhui(*ingest_args([manifest, text], out)) == 0
    assert FootprintStore(out).n_obs == FootprintStore(reference).n_obs == len(stilt_files)
    assert_same_store(out, reference)
    rejected = {Path(r["file"]).name: r["reason"] for r in read_rejected(Path(f"{out}.rejected.csv"))}
    assert set(rejected) == {"corrupt_foot.nc", "flux.nc", "notes.txt.nc"}
    assert "cannot read the file as NetCDF" in rejected["corrupt_foot.nc"]
    assert "not a STILT, FLEXPART or NAME footprint file" in rejected["flux.nc"]
    assert "not a NetCDF file" in rejected["notes.txt.nc"]
    assert tanhui(*ingest_args([manifest], tmp_path / "strict.h5", "--strict")) == EXIT_BAD_INPUT
    assert not (tmp_path / "strict.h5").exists() and (tmp_path / "strict.h5.rejected.csv").is_file()


def test_duplicate_obs_ids_are_rejected_in_manifest_order(stilt_files, tmp_path):
    copy = tmp_path / "copy" / stilt_files[3].name
    copy.parent.mkdir()
    shutil.copy(stilt_files[3], copy)
    out = tmp_path / "store.h5"
    assert tanhui(*ingest_args([*stilt_files, copy], out)) == 0
    (rejection,) = read_rejected(Path(f"{out}.rejected.csv"))
    assert rejection["file"] == str(copy) and rejection["reason"].startswith("duplicate obs_id SLC-5m-20150618T1500")
    assert FootprintStore(out).n_obs == len(stilt_files)


def test_array_tasks_then_merge_equal_the_serial_ingestion(stilt_files, reference, tmp_path):
    manifest = tmp_path / "manifest.txt"
    assert tanhui("manifest", str(stilt_files[0].parent.parent / "*" / "*_foot.nc"), "--out", str(manifest)) == 0
    listed = [line for line in manifest.read_text().splitlines() if not line.startswith("#")]
    assert listed == sorted(map(str, stilt_files))
    out = tmp_path / "store.h5"
    for k in range(4):
        assert tanhui(*ingest_args([manifest], out, "--parts", "4", "--part", str(k))) == 0
        assert not out.exists()  # array tasks never merge
    assert tanhui("merge", "--out", str(out)) == 0
    assert_same_store(out, reference)
    order = FootprintStore(out).obs
    keys = list(zip(order["time"].values, order["site"].values))
    assert keys == sorted(keys)  # sorted by receptor time, then site


def test_interrupted_ingestion_resumes_and_skips_verified_parts(stilt_files, reference, tmp_path):
    shutil.copytree(stilt_files[0].parent.parent, tmp_path / "in")  # this test changes an input file
    stilt_files = [tmp_path / "in" / p.parent.name / p.name for p in stilt_files]
    out = tmp_path / "store.h5"
    assert tanhui(*ingest_args(stilt_files, out, "--parts", "4", "--no-merge")) == 0
    parts = sorted(parts_dir(out).glob("part-*.h5"))
    assert len(parts) == 4 and not out.exists()
    stamps = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in parts}
    parts[2].unlink()  # as if the job was killed before part 2 was written
    assert tanhui(*ingest_args(stilt_files, out, "--parts", "4")) == 0
    after = {p.name: (p.stat().st_mtime_ns, p.stat().st_ino) for p in sorted(parts_dir(out).glob("part-*.h5"))}
    assert {k: v for k, v in after.items() if k != parts[2].name} == {k: v for k, v in stamps.items() if k != parts[2].name}
    assert parts[2].name in after
    assert_same_store(out, reference)

    # an input file that changed invalidates its part only
    ff.stilt_v2(stilt_files[0], stilt_values(999, 6), GRID.lat, GRID.lon,
                np.datetime64("2015-06-18T12:00", "s") - np.arange(6, 0, -1) * np.timedelta64(1, "h"), attrs={"site": "SLC"})
    before = {p.name: p.stat().st_mtime_ns for p in parts_dir(out).glob("part-*.h5")}
    assert tanhui(*ingest_args(stilt_files, out, "--parts", "4", "--overwrite")) == 0
    changed = sorted(p.name for p in parts_dir(out).glob("part-*.h5") if p.stat().st_mtime_ns != before[p.name])
    assert changed == ["part-00000.h5"]
    meta = json.loads((parts_dir(out) / "part-00000.json").read_text())
    assert meta["inputs"][0]["path"] == str(stilt_files[0])

    # split differently: the parts of the old split are replaced, none is left over
    assert tanhui(*ingest_args(stilt_files, out, "--parts", "2", "--overwrite")) == 0
    assert sorted(p.name for p in parts_dir(out).iterdir()) == ["part-00000.h5", "part-00000.json",
                                                                "part-00001.h5", "part-00001.json"]


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.is_file() else shutil.which("mpiexec")


@pytest.mark.mpi
@pytest.mark.skipif(_mpiexec() is None, reason="no mpiexec beside the Python interpreter or on PATH (pip install mpich)")
def test_two_mpi_ranks_equal_the_serial_ingestion(stilt_files, reference, tmp_path):
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install 'tanhui[mpi]')")
    out = tmp_path / "store.h5"
    args = [a for a in ingest_args(stilt_files, out, "--parts", "3") if a not in ("--comm", "serial")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "MPI_LOCALNRANKS", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    command = [_mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "inversion", "footprints", *args, "--comm", "mpi"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("mpiexec ingestion did not end within 180 s")
    assert proc.returncode == 0, stderr
    metas = [json.loads(p.read_text()) for p in sorted(parts_dir(out).glob("part-*.json"))]
    assert {m["world_size"] for m in metas} == {2}  # one world of two ranks, not two worlds of one
    assert sorted(m["rank"] for m in metas) == [0, 0, 1]  # parts 0, 2 on rank 0; part 1 on rank 1
    assert_same_store(out, reference)


CONFIG = """\
[run]
name = "grid from a config"
start = 2015-06-17T00:00:00Z
end = 2015-06-19T00:00:00Z
[grid]
lat_min = 40.0
lat_max = 41.2
lon_min = -113.0
lon_max = -111.8
dlat = 0.1
dlon = 0.1
[transport]
footprints = "store.h5"
[observations]
file = "obs.nc"
[prior]
file = "prior.nc"
optimised = ["bio"]
[state]
regions = "regions.nc"
"""


def test_grid_and_time_axis_from_a_config_or_a_store(stilt_files, reference, tmp_path):
    (tmp_path / "config.toml").write_text(CONFIG)
    out = tmp_path / "store.h5"
    args = ["ingest", *map(str, stilt_files), "--out", str(out), "--comm", "serial"]
    assert tanhui(*args, "--grid", str(tmp_path), "--time", f"{tmp_path / 'config.toml'},3h") == 0
    assert_same_store(out, reference)
    assert tanhui(*args, "--grid", str(reference), "--time", str(reference), "--overwrite") == 0
    assert_same_store(out, reference)
    assert tanhui(*args, "--grid", str(tmp_path), "--time", str(tmp_path / "config.toml"), "--overwrite") == EXIT_BAD_INPUT
    assert tanhui(*args, "--grid", "1,2,3", "--time", str(reference), "--overwrite") == EXIT_BAD_INPUT


def test_inspect_prints_the_summary_and_writes_the_total_sensitivity_map(reference, tmp_path, capsys):
    capsys.readouterr()
    assert tanhui("inspect", str(reference), "--map", str(tmp_path / "map.nc")) == 0
    text = capsys.readouterr().out
    store = FootprintStore(reference)
    assert f"{store.n_obs} observations" in text
    for site in SITES:
        assert site in text
    assert "flux steps: 16 from 2015-06-17T00:00:00 to 2015-06-19T00:00:00, lengths 3 h" in text
    assert f"non-zeros {store.nnz:,}" in text
    with xr.open_dataset(tmp_path / "map.nc", engine="h5netcdf") as ds:
        total = ds["total_sensitivity"]
        assert total.attrs["units"] == "m2 s mol-1" and total.shape == GRID.shape
        assert float(total.sum()) == pytest.approx(float(store.read_rows(0, store.n_obs).astype(np.float64).sum()), rel=1e-9)


def sparse_product_row(record, grid: Grid, axis: TimeAxis) -> sp.csr_matrix:
    """The store row computed independently as the sparse product Wᵀ K of the (slot × step)
    overlap fractions W (written out with loops) and the record's (slot × cell) values — the
    way ingestion computed it before it summed densely — its exact zeros dropped, float32."""
    n_slot = record.slots.size
    weights = sp.lil_matrix((n_slot, axis.size))
    for s in range(n_slot):
        a, b = record.slots.start[s].astype(np.int64), record.slots.end[s].astype(np.int64)
        for k in range(axis.size):
            overlap = min(b, axis.end[k].astype(np.int64)) - max(a, axis.start[k].astype(np.int64))
            if overlap > 0:
                weights[s, k] = overlap / (b - a)
    values = record.values
    if not record.grid.same_as(grid, atol_deg=1e-3 * 0.1):
        values = ConservativeRegridder(record.grid, grid).extensive(values)
    steps = (weights.tocsr().T @ sp.csr_matrix(values.reshape(n_slot, -1))).tocoo()
    columns = steps.row.astype(np.int64) * grid.size + steps.col
    return sp.csr_matrix((steps.data.astype(np.float32), (np.zeros_like(columns), columns)), shape=(1, axis.size * grid.size))


@pytest.mark.parametrize("target", ["same", "coarse"])
def test_stored_rows_equal_the_sparse_product_bit_for_bit(tmp_path, target):
    # 2-hourly slots on 3-hourly steps (weights ½ and 1), on the source grid and regridded
    paths = write_stilt_files(tmp_path / "in", n_per_site=2, n_slot=7, step_h=2)
    grid = GRID if target == "same" else Grid.regular(40.0, 41.2, -113.0, -111.8, 0.3, 0.4)
    out = tmp_path / "store.h5"
    ingest(paths, out, grid, AXIS, options=IngestOptions(regrid=True))
    store = FootprintStore(out)
    rows = store.read_rows(0, store.n_obs)
    records = {r.receptor.obs_id: r for p in paths for r in read_footprints(p)}
    assert store.n_obs == len(records) == len(paths)
    for i, obs_id in enumerate(store.obs["obs_id"].values):
        expected, got = sparse_product_row(records[obs_id], grid, AXIS), rows[i]
        assert expected.nnz > 0 and np.array_equal(got.indices, expected.indices), obs_id
        assert got.data.dtype == np.float32 and np.array_equal(got.data, expected.data), obs_id
