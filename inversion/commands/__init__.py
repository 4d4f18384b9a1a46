"""CLI commands, one module each.  A command module defines ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``main(args, comm) -> exit code``; :mod:`inversion.cli` lists
the modules in ``COMMAND_MODULES``.  Heavy imports happen inside ``main`` so that
``tanhui --help`` stays fast."""

from __future__ import annotations

import argparse

DEFAULT_CASE = "cases/demo"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def add_case_arguments(parser: argparse.ArgumentParser) -> None:
    """CONFIG positional (file or case directory), --comm and --verbose."""
    parser.add_argument("config", nargs="?", default=DEFAULT_CASE,
                        help=f"config TOML file or case directory holding config.toml (default: {DEFAULT_CASE})")
    parser.add_argument("--comm", choices=["auto", "serial", "mpi"], default="auto",
                        help="communicator: MPI when launched by mpiexec/srun (auto), or force one")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
