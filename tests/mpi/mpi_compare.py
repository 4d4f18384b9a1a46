"""Solve a case on the MPI world and write every result that must not depend on the rank count.

Usage (under a launcher)::

    mpiexec -n N python tests/mpi/mpi_compare.py CASE OUTJSON [--solver NAME ...] [--expect-size N]

Builds the problem with ``inversion.parallel.world("mpi")``, solves it with each requested
solver (``analytical-state``, ``analytical-observation``, ``variational``; default all three;
the variational solver at tolerance 1e-12), and rank 0 writes a JSON with the world size seen by
every rank, and per solver: posterior mean, prior and posterior σ, χ², DOFS and the region totals
(``inversion.aggregates.region_totals``: prior, posterior and their σ).

:func:`compute` is also imported by the tests and called with ``SerialComm`` for the serial
reference, so both sides run exactly the same code except the communicator.  Nothing here
imports mpi4py at import time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

SOLVER_NAMES = ("analytical-state", "analytical-observation", "variational")
VARIATIONAL_TOLERANCE = 1e-12


def compute(case: str | Path, comm, solvers=SOLVER_NAMES) -> dict:
    """Collective: every rank must call it; the result is complete on every rank."""
    from inversion.aggregates import region_totals
    from inversion.config import load_config
    from inversion.problem import build_problem
    from inversion.solvers import solve_analytical, solve_variational

    config = load_config(case)
    problem = build_problem(config, comm)
    aggregates = region_totals(problem.state)
    out: dict = {"n_obs": problem.n_obs, "n_state": problem.state.size,
                 "local_obs": comm.allgather(int(problem.obs_range[1] - problem.obs_range[0])), "solvers": {}}
    for name in solvers:
        if name == "analytical-state":
            post = solve_analytical(problem, form="state")
        elif name == "analytical-observation":
            post = solve_analytical(problem, form="observation")
        elif name == "variational":
            post = solve_variational(problem, tolerance=VARIATIONAL_TOLERANCE,
                                     max_iterations=config.solver.max_iterations, reorthogonalize=True,
                                     aggregates=aggregates)
        else:
            raise ValueError(f"unknown solver {name!r}; choose from {SOLVER_NAMES}")
        totals = post.aggregate(aggregates)
        out["solvers"][name] = {
            "ranks": int(post.diagnostics["ranks"]),
            "form": post.diagnostics.get("form"),
            "x_a": post.x_a.tolist(),
            "prior_sd": post.prior_sd().tolist(),
            "posterior_sd": post.posterior_sd().tolist(),
            "chi2": float(post.diagnostics["chi2"]),
            "dofs": float(post.diagnostics["dofs"]),
            "totals_region": list(aggregates.region),
            "totals_prior": totals["prior"].tolist(),
            "totals_prior_sd": np.sqrt(np.diag(totals["prior_cov"])).tolist(),
            "totals_posterior": totals["posterior"].tolist(),
            "totals_posterior_sd": np.sqrt(np.maximum(np.diag(totals["posterior_cov"]), 0.0)).tolist(),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case")
    parser.add_argument("out_json", type=Path)
    parser.add_argument("--solver", action="append", choices=SOLVER_NAMES,
                        help="solver to run (repeatable; default: all)")
    parser.add_argument("--expect-size", type=int, help="fail unless the MPI world has this many ranks")
    args = parser.parse_args(argv)

    from inversion.parallel import world

    comm = world("mpi")
    sizes = comm.allgather(comm.size)
    ranks = comm.allgather(comm.rank)
    if args.expect_size is not None and comm.size != args.expect_size:
        # Every rank of a misconfigured launch (N separate size-1 worlds) ends up here.
        print(f"mpi_compare: world size {comm.size}, expected {args.expect_size}", file=sys.stderr)
        return 3
    result = compute(args.case, comm, tuple(args.solver or SOLVER_NAMES))
    if comm.is_root:
        result.update({"comm_size": comm.size, "sizes_seen": sizes, "ranks_seen": ranks, "comm_name": comm.name})
        tmp = args.out_json.with_name(args.out_json.name + ".part")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.out_json)
    comm.barrier()
    return 0


if __name__ == "__main__":
    sys.exit(main())
