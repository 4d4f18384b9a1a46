"""Memory and time each solver would need, printed by ``tanhui validate``.

Rates are measured on this machine in a fraction of a second (dense GEMM, memory copy), so
the estimates follow the hardware rather than constants.  Memory is per rank, above the
interpreter's own (≈ 150 MiB with numpy, scipy and xarray loaded), and follows what
:func:`inversion.problem.build_problem` and the solvers hold (float64 = 8 B, CSR = 12 B per
non-zero with int32 indices, 8 B with float32 values):

* **resident inputs**, replicated on every rank: the prior flux of every sector
  (n_prior_sectors · n_columns · 8 B), f_fixed (n_columns · 8 B), E (12 B per non-zero +
  4 B per flux column) and B's dense factors (matrix and Cholesky factor of each:
  2 · (n_period² + n_sector · n_region²) · 8 B);
* **building B** (before the footprints are read): the distances, the correlations, their
  scaled and symmetrised copies and the factor, at most ≈ 5 · n_region² · 8 B at once (an
  upper estimate, not measured apart: on the benchmarks the build phase is larger);
* **build phase**: the footprint rows of this rank, read as float64 (12 B per non-zero, the
  store's float32 converted by HDF5 while reading, no second copy), and forming H = K E: the
  product, its copy with the offset columns and the transpose (3 · 12 B per non-zero of H),
  and the sensitivity Kᵀ1 (n_columns · 8 B); K is dropped when ``build_problem`` returns;
* **variational**: H and Hᵀ (2 · 12 B per non-zero of H) and the Lanczos basis, one vector
  per iteration ((k + 1) · n · 8 B), and the Ritz vectors (k · n · 8 B) at the end, with
  k = min(max_iterations, n) (an upper bound: CG usually stops earlier);
* **analytical, state form**: H, F = Hᵀ R⁻¹ H, Lᵀ F, G, its factor, (I + G)⁻¹, L (I + G)⁻¹ and
  A (6 · n² · 8 B); flops ≈ 2 Σ_rows nnz_row² (F) + n³/3 (Cholesky) + 2 n³/3 ((I + G)⁻¹);
* **analytical, observation form**: H L gathered (n_obs · n · 8 B, twice), H B Hᵀ + R
  (n_obs² · 8 B), A and its symmetrised copy (2 · n² · 8 B); flops ≈ 4 n_obs² n + n_obs³/3
  + 2 n² n_obs.

Peak = resident inputs + the largest of (building B, the build phase, the solver).  Time per
variational iteration ≈ streaming H twice (forward and adjoint) at the memory bandwidth plus
the Kronecker products of B's square root, 2 · 2 · n_sector (n_period² n_region +
n_period n_region²) flops, at the GEMM rate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

CSR_BYTES = 12.0  # float64 value + int32 column index per non-zero
INTERPRETER_NOTE = "above the interpreter's own ≈ 150 MiB"


@dataclass(frozen=True)
class ProblemSizes:
    """The counts the estimates need.  ``nnz``: footprint non-zeros (all ranks); ``nnz_h``:
    non-zeros of H = K E with its offset and extra columns (all ranks; ``tanhui validate``
    counts them block by block while checking the footprints); ``n_columns``: flux time steps
    × grid cells; ``nnz_e``: non-zeros of E."""

    n_state: int
    n_obs: int
    nnz: int
    nnz_h: int
    n_columns: int
    nnz_e: int
    n_prior_sectors: int
    n_sector: int
    n_period: int
    n_region: int

    @classmethod
    def of(cls, state, n_obs: int, nnz: int, nnz_h: int) -> ProblemSizes:
        """From a :class:`~inversion.state.StateSpace` (builds its E if not built yet)."""
        return cls(n_state=state.size, n_obs=int(n_obs), nnz=int(nnz), nnz_h=int(nnz_h), n_columns=state.n_columns,
                   nnz_e=int(state.E.nnz), n_prior_sectors=len(state.prior.sectors), n_sector=state.n_sector,
                   n_period=state.n_period, n_region=state.n_region)


def extra_h_nonzeros(state, n_obs: int) -> int:
    """Non-zeros of H beside K E: one per observation for its site's background offset, and
    per observation one per element of each extra block within the observation's period (e.g.
    the 4 domain edges of the boundary scaling)."""
    per_obs = bool(state.sites) + sum(e.size // (state.n_period if "period" in e.dims else 1) for e in state.extras)
    return int(n_obs) * per_obs


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


def memory_phases(sizes: ProblemSizes, ranks: int, max_iterations: int) -> dict[str, float]:
    """Bytes per rank of each phase (see the module docstring); ``resident`` is held
    throughout, the others are what each phase adds on top of it."""
    s = sizes
    n, m = float(s.n_state), float(s.n_obs)
    resident = (8.0 * s.n_columns * (s.n_prior_sectors + 1) + CSR_BYTES * s.nnz_e + 4.0 * s.n_columns
                + 16.0 * (s.n_period**2 + s.n_sector * float(s.n_region) ** 2))
    h = CSR_BYTES * s.nnz_h / ranks
    k = float(min(max_iterations, s.n_state))
    return {
        "resident": resident,
        "covariance": 5.0 * 8.0 * float(s.n_region) ** 2,
        "build": CSR_BYTES * s.nnz / ranks + 3.0 * h + 8.0 * s.n_columns,
        "variational": 2.0 * h + (2.0 * k + 1.0) * n * 8.0,
        "analytical (state form)": h + 6.0 * n * n * 8.0,
        "analytical (observation form)": h + 8.0 * (2.0 * m * n + m * m + 2.0 * n * n),
    }


def estimates(sizes: ProblemSizes, ranks: int, max_iterations: int, rates: dict[str, float],
              read_seconds: float) -> dict[str, dict[str, float]]:
    """Memory per rank (``memory_bytes``; by phase: :func:`memory_phases`) and wall time of each solver;
    ``read_seconds`` is the measured time to read and check every footprint once (each rank
    reads its share)."""
    s = sizes
    n, m = float(s.n_state), float(s.n_obs)
    phases = memory_phases(s, ranks, max_iterations)
    gemm, bw = rates["gemm_flops"], rates["bandwidth_bytes"]
    read = read_seconds / ranks

    def peak(solver: str) -> float:
        return phases["resident"] + max(phases["covariance"], phases["build"], phases[solver])

    row_nnz_sq = s.nnz_h**2 / max(m, 1.0)  # Σ_rows nnz_row² for rows of equal length
    kron = 2.0 * 2.0 * s.n_sector * (s.n_period**2 * s.n_region + s.n_period * float(s.n_region) ** 2)
    per_iter = 2.0 * CSR_BYTES * s.nnz_h / ranks / bw + kron / gemm
    k = min(max_iterations, s.n_state)
    return {
        "analytical (state form)": {"memory_bytes": peak("analytical (state form)"),
                                    "seconds": read + (2 * row_nnz_sq / ranks + n**3) / gemm},
        "analytical (observation form)": {"memory_bytes": peak("analytical (observation form)"),
                                          "seconds": read + (4 * m * m * n + m**3 / 3 + 2 * n * n * m) / gemm},
        "variational": {"memory_bytes": peak("variational"), "seconds_per_iteration": per_iter,
                        "seconds": read + per_iter * k},
    }


def human_bytes(b: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if b < 1024 or unit == "TiB":
            return f"{b:.1f} {unit}"
        b /= 1024
    return f"{b:.1f} TiB"
