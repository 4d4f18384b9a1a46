"""Ingestion throughput on a few thousand small synthetic STILT files (run by hand).

    python benchmarks/ingest_stilt.py [--files 2000] [--ranks 2] [--dir /tmp/tanhui-bench-stilt] [--breakdown N]

(also the ingestion benchmark of ``python -m benchmarks``, through :func:`measure`).

Writes ``--files`` time-resolved R-STILT v2 footprints (24 hourly slots on a 50 × 50 grid of
0.1°, ~2/3 of the cells zero, float32, the real variable names and attributes) for 10 sites,
then runs ``tanhui footprints ingest`` on them serially and under ``mpiexec -n RANKS`` (fresh
output each time, so no part is skipped) onto 3-hourly flux steps, and prints files/s and
MB/s (input bytes / wall time of the whole command, start-up included) and the MPI/serial
speed-up.  The input files are dropped from the page cache before each run (a cold read).
Prints figures; asserts nothing but that both stores are identical.

``--breakdown N`` also times each stage of ingesting one file, in-process on N of the files
(CPU seconds, the best of 3 passes: robust to a shared machine), and the start-up of a
process (CPU): where the time goes that the disk does not account for.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.footprint_files import stilt_v2  # the test fixtures' writer: the exact STILT names

LAT = 40.0 + 0.1 * np.arange(50) + 0.05
LON = -113.0 + 0.1 * np.arange(50) + 0.05
N_SLOT = 24
T0 = np.datetime64("2015-06-01T00:00", "s")


def write_files(directory: Path, n_files: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n_files):
        site = f"S{i % 10:02d}"
        t = T0 + np.timedelta64(24 + i // 10, "h")
        stamp = np.datetime_as_string(t, unit="m").replace("-", "").replace("T", "").replace(":", "")
        values = rng.gamma(0.4, 1e-3, size=(N_SLOT, LAT.size, LON.size))
        values[values < 3e-4] = 0.0
        times = t - np.arange(N_SLOT, 0, -1) * np.timedelta64(1, "h")
        name = f"{stamp}_{LON[i % 50]:.2f}_{LAT[(7 * i) % 50]:.2f}_{10 + i % 10}_foot.nc"
        paths.append(stilt_v2(directory / site / name, values, LAT, LON, times, attrs={"site": site}))
    return paths


def run(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds of ``command`` and the CPU seconds (user + system) of it and its children
    (less sensitive than wall time to other work on a shared machine)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr}")
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def contents(path: Path) -> dict:
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def measure(directory: Path, n_files: int, ranks: tuple[int, ...] = (1, 2), *, cold: bool = True) -> dict:
    """Write ``n_files`` STILT files under ``directory`` (kept when already there), then ingest
    them with each number of ``ranks`` (fresh output each time) and check the stores are
    identical.  With ``cold``, the input files are dropped from the page cache before each
    run (``posix_fadvise``), so the read is from disk.  Returns the input size and, per rank
    count, the wall time and the CPU time of the whole command and the ingestion seconds of
    each rank."""
    from benchmarks.bounds import drop_from_page_cache

    inputs = directory / "inputs"
    if not inputs.is_dir() or len(list(inputs.rglob("*_foot.nc"))) != n_files:
        shutil.rmtree(directory, ignore_errors=True)
        write_files(inputs, n_files)
    files = sorted(inputs.rglob("*_foot.nc"))
    n_bytes = sum(f.stat().st_size for f in files)
    manifest = directory / "manifest.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    run([sys.executable, "-m", "inversion", "footprints", "manifest", str(inputs / "*" / "*_foot.nc"), "--out",
         str(manifest)], env)
    common = ["ingest", str(manifest), "--grid", "40,45,-113,-108,0.1,0.1", "--time", "2015-06-01,2015-06-12,3h"]
    out: dict = {"files": len(files), "bytes": n_bytes, "runs": {}}
    stores = []
    for n in ranks:
        prefix = [sys.executable, "-m", "inversion", "footprints"] if n == 1 else \
            [shutil.which("mpiexec") or "mpiexec", "-n", str(n), sys.executable, "-m", "mpi4py", "-m", "inversion",
             "footprints"]
        store = directory / f"store-{n}.h5"
        shutil.rmtree(f"{store}.parts", ignore_errors=True)
        store.unlink(missing_ok=True)
        dropped = all(drop_from_page_cache(f) for f in files) if cold else False
        load = os.getloadavg()[0]
        seconds, cpu = run([*prefix, *common, "--out", str(store), "--comm", "serial" if n == 1 else "mpi"], env)
        per_rank: dict[int, float] = {}
        for meta in (json.loads(m.read_text()) for m in Path(f"{store}.parts").glob("part-*.json")):
            per_rank[meta["rank"]] = per_rank.get(meta["rank"], 0.0) + meta["seconds"]
        out["runs"][n] = {"seconds": seconds, "cpu_seconds": cpu, "rank_seconds": [per_rank[r] for r in sorted(per_rank)],
                          "store_bytes": store.stat().st_size, "cold": dropped, "load_before": load}
        stores.append(store)
    reference = contents(stores[0])
    for other in stores[1:]:
        c = contents(other)
        assert sorted(c) == sorted(reference) and all(np.array_equal(c[k], reference[k]) for k in c), "stores differ"
    return out


def _best_cpu(fn, items, repeats: int = 3) -> float:
    """Best (over ``repeats`` passes) CPU seconds per item of ``fn`` over ``items``."""
    best = math.inf
    for _ in range(repeats):
        t0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - t0)
    return best / len(items)


def breakdown(directory: Path, n_files: int) -> dict[str, float]:
    """CPU seconds per file of each ingestion stage, on ``n_files`` of the files written by
    :func:`measure` (read from the page cache), and the CPU seconds of starting a process."""
    from transport.formats.common import open_dataset
    from transport.formats.detect import read_footprints
    from transport.grid import Grid, TimeAxis
    from transport.ingest import IngestOptions, RecordMapper, _sha256, ingest, merge_parts

    files = sorted((directory / "inputs").rglob("*_foot.nc"))[:n_files]
    grid = Grid.regular(40, 45, -113, -108, 0.1, 0.1)
    axis = TimeAxis.regular("2015-06-01", "2015-06-12", "3h")
    mapper = RecordMapper(grid, axis, IngestOptions())
    records = [r for f in files for r in read_footprints(f)]

    def opened(path):
        with open_dataset(path):
            pass

    out: dict[str, float] = {"files": len(files)}
    out["sha256 of the input (part verification)"] = _best_cpu(_sha256, files)
    out["netCDF open + close"] = _best_cpu(opened, files)
    out["read, check, decode (STILT reader), without open/close"] = \
        _best_cpu(lambda f: list(read_footprints(f)), files) - out["netCDF open + close"]
    out["map onto the store axes (time weights, CSR row)"] = _best_cpu(mapper.map, records)
    store = directory / "breakdown.h5"
    part_cpu, merge_cpu = math.inf, math.inf
    for _ in range(3):
        shutil.rmtree(f"{store}.parts", ignore_errors=True)
        t0 = time.process_time()
        ingest(files, store, grid, axis, merge=False)
        part_cpu = min(part_cpu, time.process_time() - t0)
        t0 = time.process_time()
        merge_parts(store, overwrite=True)
        merge_cpu = min(merge_cpu, time.process_time() - t0)
    stages = sum(v for k, v in out.items() if k != "files")
    out["part bookkeeping and uncompressed write (rest of the parts' time)"] = max(part_cpu / len(files) - stages, 0.0)
    out["merge (read the parts, sort, write the gzip store)"] = merge_cpu / len(files)
    shutil.rmtree(f"{store}.parts", ignore_errors=True)
    store.unlink(missing_ok=True)
    startup = math.inf
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", ("import inversion.cli, transport.ingest\n"
                                               "from transport.units import unit_registry\nunit_registry()")], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        startup = min(startup, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    out["process start-up: imports and the pint registry (CPU, once per process)"] = startup
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/tanhui-bench-stilt"))
    parser.add_argument("--breakdown", type=int, default=0, metavar="N",
                        help="also time each stage of ingesting one file (CPU, in-process, on N of the files)")
    args = parser.parse_args()
    result = measure(args.dir, args.files, (1, args.ranks))
    n_files, n_bytes = result["files"], result["bytes"]
    print(f"{n_files} files, {n_bytes / 1e6:.1f} MB ({n_bytes / n_files / 1e3:.1f} kB each), "
          f"{N_SLOT} hourly slots on {LAT.size} × {LON.size} cells")
    for n, r in result["runs"].items():
        seconds = r["seconds"]
        print(f"{n:>3} rank(s): {seconds:6.1f} s  {n_files / seconds:7.1f} files/s  {n_bytes / 1e6 / seconds:6.2f} MB/s  "
              f"(CPU {r['cpu_seconds']:.1f} s; store {r['store_bytes'] / 1e6:.1f} MB; parts {', '.join(f'{v:.1f}' for v in r['rank_seconds'])} s "
              f"per rank, the rest is start-up and the merge; load average before {r['load_before']:.1f} on "
              f"{os.cpu_count()} CPUs)")
    s1, s2 = (r["seconds"] for r in result["runs"].values())
    print(f"speed-up {s1 / s2:.2f}× on {args.ranks} ranks; the two stores are identical")
    if args.breakdown:
        parts = breakdown(args.dir, args.breakdown)
        print(f"per-file CPU time by stage ({parts.pop('files')} files, best of 3 passes):")
        startup = parts.popitem()
        for name, seconds in parts.items():
            print(f"  {1e3 * seconds:7.3f} ms  {name}")
        print(f"  {1e3 * sum(parts.values()):7.3f} ms  total per file;  {startup[1]:.2f} s {startup[0]}")


if __name__ == "__main__":
    main()
