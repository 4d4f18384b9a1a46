"""Logging and progress: rich on rank 0 in a terminal, plain periodic lines otherwise.

Only rank 0 shows progress; every rank logs warnings and errors with its rank in the prefix.
With a log directory every rank also writes everything it logs (INFO, or DEBUG with
``--verbose``) to ``LOG_DIR/rank-K.log`` — where to look when one rank of a job failed.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("tanhui")


def setup_logging(comm, verbose: bool = False, log_dir: Path | None = None) -> None:
    file_level = logging.DEBUG if verbose else logging.INFO
    level = file_level if comm.is_root else logging.WARNING
    prefix = f"[rank {comm.rank}/{comm.size}] " if comm.size > 1 else ""
    if comm.is_root and sys.stderr.isatty():
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(show_path=False, log_time_format="%H:%M:%S")
        handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(message)s", "%H:%M:%S"))
    handler.setLevel(level)
    handlers = [handler]
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        per_rank = logging.FileHandler(Path(log_dir) / f"rank-{comm.rank}.log", encoding="utf-8")
        per_rank.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [rank {comm.rank}/{comm.size}] "
                                                "%(message)s", "%Y-%m-%dT%H:%M:%S"))
        per_rank.setLevel(file_level)
        handlers.append(per_rank)
    root = logging.getLogger("tanhui")
    root.handlers[:] = handlers
    root.setLevel(min(level, file_level if log_dir is not None else level))
    root.propagate = False


class Progress:
    """``with Progress(comm, "CG", total) as p: p.update(i, "‖r‖/‖b‖=…")``.

    Rank 0 in a terminal: a rich progress bar.  Otherwise rank 0 logs a line at most every
    ``interval`` seconds and at the end; other ranks stay silent.
    """

    def __init__(self, comm, description: str, total: int | None, interval: float = 5.0):
        self.active = comm.is_root
        self.description = description
        self.total = total
        self.interval = interval
        self._rich = None
        self._last = 0.0
        self._done = 0

    def __enter__(self) -> "Progress":
        if self.active and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._rich = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=True)
            self._rich.start()
            self._task = self._rich.add_task(self.description, total=self.total, info="")
        self._last = time.monotonic()
        return self

    def update(self, done: int, info: str = "") -> None:
        self._done = done
        if not self.active:
            return
        if self._rich is not None:
            self._rich.update(self._task, completed=done, info=info)
        elif time.monotonic() - self._last >= self.interval:
            self._last = time.monotonic()
            total = f"/{self.total}" if self.total else ""
            log.info("%s: %d%s %s", self.description, done, total, info)

    def __exit__(self, *exc) -> None:
        if self._rich is not None:
            self._rich.stop()
