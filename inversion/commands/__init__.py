"""CLI commands, one module each.  A command module defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``main(args, comm) -> exit code``; :mod:`inversion.cli` lists
the modules in ``COMMAND_MODULES``.  Heavy imports happen inside ``main`` so that
``tanhui --help`` stays fast."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_CASE = "cases/demo"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
EXIT_CHECKPOINTED = 75  # EX_TEMPFAIL: stopped on request after a checkpoint; rerun to resume


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG positional (file or case directory), --comm and --verbose."""
    parser.add_argument("config", nargs="?", default=DEFAULT_CASE,
                        help=f"config TOML file or case directory holding config.toml (default: {DEFAULT_CASE})")
    parser.add_argument("--comm", choices=["auto", "serial", "mpi"], default="auto",
                        help="communicator: MPI when launched by mpiexec/srun (auto), or force one")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-dir", type=Path, metavar="DIR",
                        help="also write each rank's log to DIR/rank-K.log (e.g. logs/$SLURM_JOB_ID)")
