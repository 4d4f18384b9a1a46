"""Memory and time each solver would need, printed by ``tanhui validate``.

Rates are measured on this machine in a fraction of a second (dense GEMM, memory copy), so
the estimates follow the hardware rather than constants.  Counts (float64 = 8 bytes):

* footprints in memory while H = K E is formed (``build_problem``): nnz · 28 B per rank (the
  float32 rows as read, 8 B, their row selection, 8 B, and the float64 CSR copy, 12 B); H
  itself has nnz_H ≤ min(n_obs · n, nnz · n_sector) non-zeros (12 B each).  Peak memory is
  the larger of this build phase and the solver's own;
* analytical, state form (sparse H): H, F = Hᵀ R⁻¹ H, Lᵀ F, G, its factor, (I + G)⁻¹, L (I + G)⁻¹
  and A (6 · n² · 8 B); flops ≈ 2 n_obs (nnz_H / n_obs)² (F, at most) + n³/3 (Cholesky) +
  2 n³/3 ((I + G)⁻¹) + Kronecker products of L (small next to n³);
* analytical, observation form: H L gathered on rank 0 (n_obs · n · 8 B, twice), H B Hᵀ + R
  (n_obs² · 8 B), A (n² · 8 B); flops ≈ 2 n_obs² n + n_obs³/3 + 2 n_obs² n + 2 n² n_obs;
* variational: H and its transpose (2 · nnz_H · 12 B) and Lanczos vectors (iterations · n · 8 B);
  time per iteration ≈ streaming H twice (forward and adjoint): 2 · nnz_H · 12 B / bandwidth,
  at most min(max_iterations, n) iterations.
"""

from __future__ import annotations

import time

import numpy as np


def measure_rates() -> dict[str, float]:
    """Dense GEMM rate (flop/s) and memory copy bandwidth (byte/s), measured quickly."""
    n = 800
    a = np.random.default_rng(0).standard_normal((n, n))
    a @ a  # warm up the BLAS
    t0 = time.perf_counter()
    for _ in range(3):
        a @ a
    gemm = 3 * 2 * n**3 / (time.perf_counter() - t0)
    buf = np.ones(25_000_000)  # 200 MB
    out = np.zeros_like(buf)  # touched, so the timed copy pays no page faults
    np.copyto(out, buf)
    t0 = time.perf_counter()
    np.copyto(out, buf)
    bandwidth = 2 * buf.nbytes / (time.perf_counter() - t0)
    return {"gemm_flops": gemm, "bandwidth_bytes": bandwidth}


def estimates(n_state: int, n_obs: int, nnz: int, n_sector: int, ranks: int, max_iterations: int,
              rates: dict[str, float], read_seconds: float) -> dict[str, dict[str, float]]:
    """Memory per rank and wall time of each solver; ``read_seconds`` is the measured time to
    read and check every footprint once (each rank reads its share)."""
    n, m = float(n_state), float(n_obs)
    build_bytes = nnz * 28.0 / ranks
    h_bytes = min(m * n, float(nnz) * n_sector) * 12.0 / ranks
    gemm, bw = rates["gemm_flops"], rates["bandwidth_bytes"]
    read = read_seconds / ranks
    nnz_h = h_bytes * ranks / 12.0
    state_form = {"memory_bytes": max(build_bytes, h_bytes + 6 * n * n * 8),
                  "seconds": read + (2 * nnz_h**2 / max(m, 1.0) / ranks + n**3) / gemm}
    obs_form = {"memory_bytes": max(build_bytes, h_bytes + 2 * m * n * 8 + m * m * 8 + n * n * 8),
                "seconds": read + (4 * m * m * n + m**3 / 3 + 2 * n * n * m) / gemm}
    per_iter = 2 * h_bytes / bw
    variational = {"memory_bytes": max(build_bytes, 2 * h_bytes + min(max_iterations, n_state) * n * 8),
                   "seconds_per_iteration": per_iter, "seconds": read + per_iter * min(max_iterations, n_state)}
    return {"analytical (state form)": state_form, "analytical (observation form)": obs_form,
            "variational": variational}


def human_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"
