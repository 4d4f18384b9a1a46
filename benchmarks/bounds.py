"""Hardware bounds measured in the same run as the benchmarks.

* memory bandwidth, STREAM-like, numpy on arrays far larger than the caches (one thread:
  numpy's element-wise kernels and scipy's sparse products are single-threaded):
  copy  b ← a          2 · 8 B per element (read a, write b);
  triad a ← b + s · c  3 · 8 B per element (STREAM's count; numpy makes two passes, so this
                       underestimates what a fused kernel reaches);
  read  Σ a            8 B per element.
  The bound used for streaming kernels is the best of the three (byte/s).
* dense GEMM rate (flop/s) of the BLAS numpy uses, 2 n³ flops per n × n product, with the
  BLAS and thread count reported by threadpoolctl.
* local disk read rate (byte/s): a freshly written file read back after dropping it from
  the page cache with ``posix_fadvise(POSIX_FADV_DONTNEED)`` (a cold read) where the OS
  offers it, else a warm read, which the result says.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits


def _best(fn, repeats: int) -> float:
    """Shortest wall time of ``repeats`` calls (s)."""
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def memory_bandwidth(n_bytes: int = 400_000_000, repeats: int = 5) -> dict[str, float]:
    """Copy, triad and read bandwidth (byte/s) on float64 arrays of ``n_bytes`` each."""
    n = n_bytes // 8
    a, b, c = np.ones(n), np.full(n, 2.0), np.full(n, 3.0)  # touched: no page faults in the timing

    def triad():
        np.multiply(c, 3.0, out=a)
        np.add(a, b, out=a)

    copy_s = _best(lambda: np.copyto(b, a), repeats)
    triad_s = _best(triad, repeats)
    read_s = _best(lambda: a.sum(), repeats)
    out = {"copy": 16.0 * n / copy_s, "triad": 24.0 * n / triad_s, "read": 8.0 * n / read_s}
    out["best"] = max(out.values())
    return out


def gemm_rate(n: int = 3000, repeats: int = 3, threads: int | None = None) -> float:
    """Dense float64 matrix-product rate (flop/s) with ``threads`` BLAS threads (default: as set)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b  # warm up the BLAS threads
        seconds = _best(lambda: a @ b, repeats)
    return 2.0 * n**3 / seconds


def blas_info() -> list[dict[str, object]]:
    """BLAS libraries loaded and their thread counts (threadpoolctl)."""
    return [{k: v for k, v in info.items() if k in ("internal_api", "version", "num_threads", "architecture",
                                                   "threading_layer")}
            for info in threadpool_info() if info.get("user_api") == "blas"]


def drop_from_page_cache(path: Path) -> bool:
    """Ask the kernel to forget the cached pages of ``path``; False where it cannot be asked."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def read_file(path: Path, block: int = 16 << 20) -> int:
    """Read ``path`` sequentially; returns the bytes read."""
    total = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(block)
        view = memoryview(buf)
        while (n := f.readinto(view)):
            total += n
    return total


def disk_read_rate(directory: Path, n_bytes: int = 1 << 30) -> dict[str, object]:
    """Sequential read rate (byte/s) of a freshly written ``n_bytes`` file in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "disk-read-bound.bin"
    chunk = np.random.default_rng(0).integers(0, 256, 16 << 20, dtype=np.uint8).tobytes()  # incompressible
    with open(path, "wb") as f:
        for _ in range(max(1, n_bytes // len(chunk))):
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    try:
        cold = drop_from_page_cache(path)
        t0 = time.perf_counter()
        size = read_file(path)
        seconds = time.perf_counter() - t0
        warm_seconds = _best(lambda: read_file(path), 1)
    finally:
        path.unlink()
    return {"rate": size / seconds, "cold": cold, "bytes": size, "warm_rate": size / warm_seconds,
            "note": "cold read (page cache dropped with posix_fadvise DONTNEED)" if cold else
            "warm read (the page cache could not be dropped)"}


def measure(directory: Path, *, quick: bool = False) -> dict[str, object]:
    """Every bound; ``quick`` uses smaller arrays and files (smoke runs: the figures are then rough)."""
    cores = os.cpu_count() or 1
    bw = memory_bandwidth(n_bytes=40_000_000 if quick else 400_000_000, repeats=3 if quick else 5)
    gemm = gemm_rate(n=800 if quick else 3000, threads=cores)
    gemm_1 = gemm_rate(n=800 if quick else 3000, threads=1)
    disk = disk_read_rate(directory, n_bytes=(64 << 20) if quick else (1 << 30))
    return {"bandwidth": bw, "gemm_flops": gemm, "gemm_flops_1thread": gemm_1, "disk": disk, "cores": cores,
            "blas": blas_info(), "cpu": platform.processor() or platform.machine(), "quick": quick}
