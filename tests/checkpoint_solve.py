"""Solve of a case with checkpointing, for the checkpoint tests (serial, MPI, Slurm).

Usage (serial, or under mpiexec / srun)::

    python -m mpi4py tests/checkpoint_solve.py CASE OUTJSON CHECKPOINT_DIR [--every N]
        [--stop-after K] [--signal-at K --signal-rank R [--signal TERM]] [--sleep S] [--expect-size N]
        [--analytical FORM --block-rows N]

Variational by default; ``--analytical state|observation`` runs the analytical solver in that
form with blocks of ``--block-rows`` observation rows, and then "product K" below is the K-th
block this rank accumulates.

``--fail-at K`` makes rank ``--signal-rank`` raise there instead.
``--log-dir DIR``: per-rank logs as ``tanhui run --log-dir`` writes them.  When a signal stopped
the solve, rank 0 requeues a requeueable Slurm batch job exactly as ``tanhui run`` does
(:func:`inversion.requeue.requeue_action`); OUTJSON records ``SLURM_RESTART_COUNT``.
``--signal-at K --signal-rank R``: rank R sends itself a real signal (``os.kill``) in the middle
of CG iteration K (between the forward and the adjoint product), the way a preemption lands
at an arbitrary point.  ``--sleep S`` makes every Hessian product take S seconds longer, so a
signal from outside (``scancel --signal=TERM``) lands mid-iteration.  Rank 0 writes OUTJSON:
the world size, and either the posterior (status "done") or the iteration it stopped at
(status "stopped", exit code 75).

:func:`solve_case` is imported by the serial tests, so every path runs the same code.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

EXIT_CHECKPOINTED = 75
TOLERANCE = 1e-12


def solve_case(case, comm, directory, *, every=5, stop_after=None, signal_at=None, signal_rank=0,
               signal_name="TERM", sleep=0.0, fail_at=None, analytical=None, block_rows=None) -> dict:
    """Collective.  Returns {"status": "done", x_a, posterior_sd, aggregate_sd, iterations} or
    {"status": "stopped", "iteration", "reason"}.  ``analytical``: the form of an analytical solve
    (else variational)."""
    import numpy as np

    from inversion import factorisation, solvers
    from inversion.aggregates import region_totals
    from inversion.checkpoint import Checkpointer, Stopped, StopRequest, describe_files, fingerprint
    from inversion.config import load_config, provenance
    from inversion.problem import build_problem

    config = load_config(case)
    if analytical is not None:
        config = config.model_copy(update={"solver": config.solver.model_copy(
            update={"method": "analytical", "form": analytical, "block_rows": block_rows})})
    problem = build_problem(config, comm)
    calls = {"n": 0}

    def hooked(product):
        def wrapped(*args):  # a CG iteration's forward product, or one accumulated block
            calls["n"] += 1
            if sleep:
                time.sleep(sleep)
            if signal_at is not None and calls["n"] == signal_at and comm.rank == signal_rank:
                os.kill(os.getpid(), getattr(signal, f"SIG{signal_name}"))
            if fail_at is not None and calls["n"] == fail_at and comm.rank == signal_rank:
                raise RuntimeError(f"injected failure on rank {comm.rank} in product {fail_at}")
            return product(*args)

        return wrapped

    restore = {}
    if signal_at is not None or sleep or fail_at is not None:
        if analytical is None:  # first call: the RHS uses the adjoint only (the solver calls H.forward)
            problem.H.forward = hooked(problem.H.forward)
        else:
            restore = {"_add_weighted_gram": factorisation._add_weighted_gram,
                       "ObservationGram": factorisation.ObservationGram}
            factorisation._add_weighted_gram = hooked(factorisation._add_weighted_gram)
            gram_class = factorisation.ObservationGram

            class HookedGram(gram_class):
                rows = hooked(gram_class.rows)

            factorisation.ObservationGram = HookedGram
    stop = StopRequest(stop_file=Path(directory) / "STOP", stop_after=stop_after, check_file=comm.is_root)
    fp = fingerprint(config, comm.bcast(provenance(config) if comm.is_root else None))
    checkpointer = Checkpointer(directory, comm, fp, every=every, stop=stop, files=describe_files(config),
                                kind=config.solver.method)
    aggregates = region_totals(problem.state)
    try:
        if analytical is None:
            post = solvers.solve_variational(problem, tolerance=TOLERANCE,
                                             max_iterations=config.solver.max_iterations, aggregates=aggregates,
                                             checkpoint=checkpointer)
        else:
            with stop:  # as ``tanhui run`` does for the whole run
                post = solvers.solve_analytical(problem, form=analytical, posterior_covariance="dense",
                                                block_rows=block_rows, checkpoint=checkpointer)
    except Stopped as exc:
        return {"status": "stopped", "iteration": exc.iteration, "reason": exc.reason, "size": comm.size}
    finally:
        for name, value in restore.items():
            setattr(factorisation, name, value)
    totals = post.aggregate(aggregates)
    return {"status": "done", "size": comm.size, "x_a": post.x_a.tolist(),
            "posterior_sd": post.posterior_sd().tolist(), "posterior": totals["posterior"].tolist(),
            "aggregate_sd": np.sqrt(np.diag(totals["posterior_cov"])).tolist(),
            "iterations": int(post.diagnostics.get("iterations", 0)), "last_saved": checkpointer.last_saved}


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("case")
    p.add_argument("out", type=Path)
    p.add_argument("directory", type=Path)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--stop-after", type=int)
    p.add_argument("--signal-at", type=int)
    p.add_argument("--signal-rank", type=int, default=0)
    p.add_argument("--signal", default="TERM")
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--fail-at", type=int, help="rank --signal-rank raises in its K-th forward product")
    p.add_argument("--expect-size", type=int)
    p.add_argument("--analytical", choices=["state", "observation"], help="analytical solve in this form")
    p.add_argument("--block-rows", type=int, help="observation rows per accumulated block (analytical)")
    p.add_argument("--log-dir", type=Path, help="per-rank logs DIR/rank-K.log (as tanhui run --log-dir)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inversion.parallel import world

    comm = world("mpi" if (args.expect_size or 1) > 1 else "auto")
    if args.expect_size is not None and comm.size != args.expect_size:
        raise SystemExit(f"launched with world size {comm.size}, expected {args.expect_size}")
    if args.log_dir is not None:
        from inversion.progress import setup_logging

        setup_logging(comm, False, args.log_dir)
    t0 = time.time()
    result = solve_case(args.case, comm, args.directory, every=args.every, stop_after=args.stop_after,
                        signal_at=args.signal_at, signal_rank=args.signal_rank, signal_name=args.signal,
                        sleep=args.sleep, fail_at=args.fail_at, analytical=args.analytical,
                        block_rows=args.block_rows)
    result["sizes"] = comm.allgather(comm.size)
    result["wall_s"] = time.time() - t0
    result["slurm_restart_count"] = os.environ.get("SLURM_RESTART_COUNT")
    if comm.is_root:
        args.out.write_text(json.dumps(result))
    if result["status"] == "stopped":
        from inversion.checkpoint import KINDS
        from inversion.requeue import requeue_action

        kind = KINDS["analytical" if args.analytical else "variational"]
        requeue = requeue_action(comm, result["reason"], args.directory / kind.file_name)
        comm.exit_all(EXIT_CHECKPOINTED, last=requeue)  # all ranks agreed; under MPI without MPI_Abort
    return 0


if __name__ == "__main__":
    sys.exit(main())
