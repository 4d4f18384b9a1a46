"""Command-line interface: ``tanhui COMMAND`` (also ``python -m inversion``).

Under MPI launch it as ``mpiexec -n N python -m mpi4py -m inversion run CONFIG`` so an
unhandled exception on one rank aborts the job instead of hanging it.  Exit codes: 0 done,
2 bad input or configuration (message names the file, variable and fix), 1 other failure,
75 (EX_TEMPFAIL) stopped on request after writing a checkpoint (``tanhui run``; rerun to resume).
"""

from __future__ import annotations

import argparse
import os
import sys

from . import __version__
from .commands import EXIT_BAD_INPUT, demo, footprints, osse, regions, report, run, submit, tune, validate

COMMAND_MODULES = (run, validate, demo, tune, osse, footprints, regions, report, submit)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tanhui", description="tanhui — top-down atmospheric inversion of carbon "
                                "sinks (Lagrangian footprints, analytical and 4D-Var solvers, MPI).")
    p.add_argument("--version", action="version", version=f"tanhui {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_arguments(sub.add_parser(module.NAME, help=module.HELP))
    return p


def _blas_threads(comm) -> None:
    """Ranks × BLAS threads must not exceed the cores: unless the user set a thread count,
    give each rank an equal share."""
    if comm.size == 1 or any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(max(1, (os.cpu_count() or 1) // comm.size))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from transport.errors import InputError

    from .config import ConfigError
    from .linalg import CovarianceError
    from .parallel import world
    from .progress import log, setup_logging

    comm = world(getattr(args, "comm", "serial"))
    setup_logging(comm, args.verbose, getattr(args, "log_dir", None))
    _blas_threads(comm)
    command = {m.NAME: m for m in COMMAND_MODULES}[args.command]
    try:
        return command.main(args, comm)
    except (InputError, ConfigError, CovarianceError) as exc:
        if comm.size == 1:
            print(f"tanhui: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        # Under MPI the other ranks may be waiting in a collective: end the whole job.
        log.error("%s", exc)
        comm.abort(EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
