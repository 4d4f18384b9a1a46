"""``tanhui run`` with a test hook on entering one phase, for the signal tests (serial or MPI).

Usage (serial, or under mpiexec)::

    python -m mpi4py tests/signalled_run.py PHASE ACTION [--rank R] -- RUN-ARGUMENTS…

PHASE is ``build_problem`` or ``write_outputs`` (wrapped where ``tanhui run`` imports it from).
ACTION on rank R (default 0) when it enters the phase:

* ``self:TERM`` (or ``self:USR1``): the process sends itself that signal (``os.kill``);
* ``wait:FIFO``: log "hook: waiting in PHASE" and block until a line is written to the named
  pipe FIFO, so that a test can signal the process from outside at a known point.

The exit code is that of ``tanhui run``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--")
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["build_problem", "write_outputs"])
    p.add_argument("action")
    p.add_argument("--rank", type=int, default=0)
    args = p.parse_args(argv[:split])
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from inversion import outputs, problem
    from inversion.cli import main as cli_main
    from inversion.progress import log

    module = problem if args.phase == "build_problem" else outputs
    original = getattr(module, args.phase)
    kind, _, value = args.action.partition(":")

    def hooked(*a, **k):
        rank = int(os.environ.get("PMI_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))
        if rank == args.rank:
            if kind == "self":
                os.kill(os.getpid(), getattr(signal, f"SIG{value}"))
            else:
                log.warning("hook: waiting in %s", args.phase)
                with open(value) as fifo:  # blocks until the test opens the pipe for writing
                    fifo.read()
        return original(*a, **k)

    setattr(module, args.phase, hooked)
    return cli_main(["run", *argv[split + 1:]])


if __name__ == "__main__":
    sys.exit(main())
