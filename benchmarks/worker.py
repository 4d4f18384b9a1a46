"""One benchmark measurement in its own process (so peak RSS is its own, BLAS threads are set
before numpy loads, and a crash is reported instead of killing the runner).

    python -m benchmarks.worker --case DIR --task analytical|variational|naive --out RESULT.json
    mpiexec -n 2 python -m mpi4py -m benchmarks.worker ...     (analytical, variational)

Phases, each timed between barriers and with its peak RSS (VmHWM, reset before the phase by
writing 5 to /proc/self/clear_refs), maximum over ranks:

* ``build``: ``build_problem`` (reads and checks the store rows of this rank, forms H = K E);
* analytical: ``solve`` (the library's analytical solver, end to end), then ``factorise``
  alone, as the solver calls it (state form: F = Hᵀ R⁻¹ H, G = Lᵀ F L, Cholesky; observation
  form: H L, its Gram matrix, Cholesky), for the ratio to the GEMM rate;
* variational: ``solve`` (CG-Lanczos to the configured tolerance, no aggregates), then
  ``hessian``: the mean time of one I + G product (H and Hᵀ once each, B's square roots),
  and ``allreduce``: the mean time of one state-sized allreduce (the adjoint's reduction);
* naive (serial): the textbook dense formula x_a = x_b + B Hᵀ (H B Hᵀ + R)⁻¹ (y − H x_b),
  A = B − B Hᵀ (H B Hᵀ + R)⁻¹ H B with dense B and ``numpy.linalg.inv``.

Rank 0 writes the JSON and (analytical, naive) ``RESULT.npz`` with x_a and the posterior σ,
so the runner checks that the fast and naive answers agree.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _status(key: str) -> int:
    """A /proc/self/status value in bytes (0 where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _reset_peak() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


class Phases:
    """Wall time (max over ranks) and peak RSS (max over ranks) of named phases."""

    def __init__(self, comm):
        self.comm = comm
        self.results: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn):
        self.comm.barrier()
        _reset_peak()
        before = _status("VmRSS")
        t0 = time.perf_counter()
        out = fn()
        self.comm.barrier()
        seconds = time.perf_counter() - t0
        per_rank = self.comm.allgather((_status("VmHWM"), before))
        self.results[name] = {"seconds": seconds, "peak_rss_bytes": max(p for p, _ in per_rank),
                              "rss_before_bytes": max(b for _, b in per_rank)}
        return out


def _naive(problem) -> tuple[np.ndarray, np.ndarray]:
    """The textbook formula with dense matrices and an explicit inverse (what not to do)."""
    H = problem.H.jacobian_local()
    B = problem.B.dense()
    R = np.diag(problem.R.variance())
    gain = B @ H.T @ np.linalg.inv(H @ B @ H.T + R)
    x_a = problem.x_b + gain @ (problem.y - H @ problem.x_b)
    A = B - gain @ H @ B
    return x_a, np.sqrt(np.diag(A))


def naive_flops(n_obs: int, n: int) -> float:
    """Flops of :func:`_naive`: H B, (H B) Hᵀ, the inverse (2 m³), B Hᵀ, (B Hᵀ) S⁻¹, K H, (K H) B."""
    m = float(n_obs)
    return 2 * m * n * n + 2 * m * m * n + 2 * m**3 + 2 * n * n * m + 2 * n * m * m + 2 * n * m * n + 2.0 * n**3


def naive_bytes(n_obs: int, n: int) -> float:
    """Peak dense storage of :func:`_naive` (float64): H, B, H B, S, S⁻¹, B Hᵀ, the gain, K H, A."""
    m = float(n_obs)
    return 8.0 * (4 * m * n + 2 * m * m + 4 * n * n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=Path, required=True)
    parser.add_argument("--task", choices=("analytical", "analytical-aggregates", "variational", "naive"),
                        required=True)
    parser.add_argument("--form", default="auto", choices=("auto", "state", "observation"))
    parser.add_argument("--comm", default="serial", choices=("serial", "mpi"))
    parser.add_argument("--hessian-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from threadpoolctl import threadpool_info

    from inversion.config import load_config
    from inversion.factorisation import factorise
    from inversion.parallel import world
    from inversion.problem import build_problem
    from inversion.solvers import hessian_operator, solve_analytical, solve_variational

    comm = world(args.comm)
    config = load_config(args.case)
    phases = Phases(comm)
    problem = phases.run("build", lambda: build_problem(config, comm))
    H = problem.H
    result: dict[str, object] = {
        "task": args.task, "ranks": comm.size, "n_obs": problem.n_obs, "n_state": problem.B.size,
        "n_sector": problem.state.n_sector, "n_period": problem.state.n_period, "n_region": problem.state.n_region,
        "blas_threads": [i.get("num_threads") for i in threadpool_info() if i.get("user_api") == "blas"],
    }
    from dataclasses import asdict

    from inversion.estimate import ProblemSizes
    from transport.store import FootprintStore

    result["nnz_footprints"] = int(FootprintStore(config.transport.footprints).nnz)
    result["nnz_H"] = int(comm.allreduce_scalar(float(H.matrix.nnz)))
    # what `tanhui validate` predicts from (it counts nnz(H) by the same product, block by block)
    result["sizes"] = asdict(ProblemSizes.of(problem.state, problem.n_obs, result["nnz_footprints"], result["nnz_H"]))
    # Bytes one H product streams: CSR values (8 B) and column indices, plus row pointers.
    local_bytes = H.matrix.data.nbytes + H.matrix.indices.nbytes + H.matrix.indptr.nbytes
    result["H_bytes_local_max"] = max(comm.allgather(int(local_bytes)))
    # Σ_rows nnz_row²: the multiply-adds of the sparse Hᵀ R⁻¹ H (state form)
    result["H_row_nnz_sq_sum"] = comm.allreduce_scalar(float(np.sum(np.diff(H.matrix.indptr).astype(float) ** 2)))
    arrays = {}
    if args.task == "analytical":
        post = phases.run("solve", lambda: solve_analytical(problem, form=args.form))
        result["form"] = post.diagnostics["form"]
        result["chi2_per_obs"] = post.diagnostics["chi2_per_obs"]
        result["dofs"] = post.diagnostics["dofs"]
        phases.run("factorise", lambda: factorise(H.matrix, problem.B, problem.R.variance(), comm,
                                                  n_obs=problem.n_obs, form=args.form))
        arrays = {"x_a": post.x_a, "posterior_sd": post.posterior_sd()}
    elif args.task == "analytical-aggregates":
        # States too large for the dense A (size L20k): the observation form in blocks (Gram
        # H B Hᵀ + Cholesky) timed alone, then x_a, χ², DOFS and the exact σ of the whole-run
        # domain total (the ALL row), never the n_state² A nor per-element σ.
        from inversion.aggregates import region_totals
        from inversion.gram import observation_gram_flops

        fac = phases.run("factorise", lambda: factorise(H.matrix, problem.B, problem.R.variance(), comm,
                                                        n_obs=problem.n_obs, form="observation"))
        result["form"] = fac.form
        result["gram_flops"] = observation_gram_flops(fac.H_all, problem.B)
        d = problem.departures()[:, None]

        def rest():
            agg = region_totals(problem.state)
            total = agg.take([k for k in agg.whole_run_rows() if agg.region[k] == "ALL"])
            return (problem.x_b + fac.increments(d)[:, 0], float(fac.quadratic(d)[0]), fac.dofs(),
                    float(np.sqrt(fac.aggregate_variance(total.matrix)[0])))

        x_a, chi2, dofs, total_sd = phases.run("solve", rest)
        result.update({"chi2_per_obs": chi2 / problem.n_obs, "dofs": dofs, "total_sd_mol_s": total_sd})
        arrays = {"x_a": x_a}
    elif args.task == "variational":
        post = phases.run("solve", lambda: solve_variational(problem, tolerance=config.solver.tolerance,
                                                             max_iterations=config.solver.max_iterations))
        result.update({k: post.diagnostics[k] for k in ("iterations", "converged", "relative_residual",
                                                        "chi2_per_obs")})
        apply = hessian_operator(problem, 1.0 / problem.R.variance())
        v = np.random.default_rng(0).standard_normal(problem.B.size)
        apply(v)  # warm
        phases.run("hessian", lambda: [apply(v) for _ in range(args.hessian_repeats)])
        phases.results["hessian"]["seconds"] /= args.hessian_repeats
        # the communication term of the scaling model: one allreduce of a state-sized vector
        w = np.ones(problem.B.size)
        phases.run("allreduce", lambda: [comm.allreduce(w) for _ in range(20)])
        phases.results["allreduce"]["seconds"] /= 20
        arrays = {"x_a": post.x_a}
    else:
        if comm.size != 1:
            raise SystemExit("the naive formula runs on one rank")
        x_a, sd = phases.run("solve", lambda: _naive(problem))
        arrays = {"x_a": x_a, "posterior_sd": sd}
    result["phases"] = phases.results
    result["rss_baseline_bytes"] = min(p["rss_before_bytes"] for p in phases.results.values())
    if comm.rank == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        np.savez(args.out.with_suffix(".npz"), **arrays)


if __name__ == "__main__":
    main()
