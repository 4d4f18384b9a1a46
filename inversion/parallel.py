"""Communicators: the only module that imports mpi4py.

Observations (and their footprint rows) are split across ranks in contiguous blocks; the
state vector and everything in control space is replicated on every rank.  Every other
module receives a communicator as a parameter and uses only the methods below, which the
serial stand-in and the MPI wrapper both provide:

    rank, size, is_root
    allreduce(a)          element-wise sum of a float array over ranks (new array)
    allreduce_scalar(v)   sum of a Python float over ranks
    bcast(obj, root=0)    any picklable object from ``root``
    gather(obj, root=0)   list of every rank's object on ``root`` (None elsewhere)
    allgather(obj)        list of every rank's object on every rank
    barrier()
    abort(code)           end the whole job (no hang when one rank fails)
    exit_all(code, last)  every rank agreed to end with ``code``: finalise and exit, no abort
                          (``last()``, if given, runs after MPI_Finalize, just before the exit)

mpi4py is imported lazily by :func:`world`, never at import time, so laptops and unit tests
need no MPI and importing tanhui never initialises MPI.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

# Environment variables that MPI launchers (MPICH/Hydra, Open MPI, Slurm srun, PMIx) set in
# every rank; if one says size > 1 and mpi4py is missing we must refuse, not run N serial copies.
_LAUNCHER_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


class SerialComm:
    """Single-process stand-in with the same methods as :class:`MPIComm`."""

    rank = 0
    size = 1
    is_root = True
    name = "serial"

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        return np.array(a, dtype=np.float64, copy=True)

    def allreduce_scalar(self, value: float) -> float:
        return float(value)

    def bcast(self, obj: Any, root: int = 0) -> Any:
        return obj

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return [obj]

    def allgather(self, obj: Any) -> list:
        return [obj]

    def barrier(self) -> None:
        return None

    def abort(self, code: int = 1) -> None:
        sys.exit(code)

    def exit_all(self, code: int, last: Callable[[], object] | None = None) -> None:
        if last is not None:
            last()
        sys.exit(code)


class MPIComm:
    """Wrapper of an mpi4py communicator exposing the methods of :class:`SerialComm`."""

    name = "mpi"

    def __init__(self, comm: Any):
        self._comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()
        self.is_root = self.rank == 0

    def allreduce(self, a: np.ndarray) -> np.ndarray:
        from mpi4py import MPI

        send = np.ascontiguousarray(a, dtype=np.float64)
        recv = np.empty_like(send)
        self._comm.Allreduce(send, recv, op=MPI.SUM)
        return recv

    def allreduce_scalar(self, value: float) -> float:
        return float(self.allreduce(np.array([value], dtype=np.float64))[0])

    def bcast(self, obj: Any, root: int = 0) -> Any:
        # Arrays travel through the buffer interface (no pickling of large data); a small
        # pickled header tells the receivers whether, and what shape, to expect.
        header = None
        if self.rank == root:
            header = (obj.shape, obj.dtype.str) if isinstance(obj, np.ndarray) else None
        header = self._comm.bcast(header, root=root)
        if header is None:
            return self._comm.bcast(obj, root=root)
        buf = np.ascontiguousarray(obj) if self.rank == root else np.empty(header[0], np.dtype(header[1]))
        self._comm.Bcast(buf, root=root)
        return buf

    def gather(self, obj: Any, root: int = 0) -> list | None:
        return self._comm.gather(obj, root=root)

    def allgather(self, obj: Any) -> list:
        return self._comm.allgather(obj)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self._comm.Abort(code)

    def exit_all(self, code: int, last: Callable[[], object] | None = None) -> None:
        """Collective: end every rank with ``code`` after MPI_Finalize.  A non-zero SystemExit
        would make ``python -m mpi4py`` call MPI_Abort, which srun reports as killed tasks
        (exit 137) instead of the code the ranks agreed on (e.g. 75, checkpointed).  ``last``
        runs after MPI_Finalize (the MPI library has released its shared-memory segments), for
        an action that may kill the job's processes at once (``scontrol requeue``)."""
        import logging

        from mpi4py import MPI

        self._comm.Barrier()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        MPI.Finalize()
        if last is not None:
            last()
        os._exit(code)


def _launched_size() -> int:
    for var in _LAUNCHER_SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def world(kind: str = "auto") -> SerialComm | MPIComm:
    """Return the communicator of this process.

    ``kind``: ``"serial"`` (never touch MPI), ``"mpi"`` (require mpi4py) or ``"auto"``
    (MPI when mpi4py is importable, else serial; but refuse when a launcher started
    several ranks and mpi4py is missing, because N independent serial runs would each
    write the same outputs).
    """
    if kind == "serial":
        return SerialComm()
    try:
        from mpi4py import MPI
    except ImportError as exc:
        if kind == "mpi" or _launched_size() > 1:
            raise RuntimeError(
                "this process was started by an MPI launcher (or --comm mpi was given) but "
                "mpi4py cannot be imported: install the MPI extra (pip install 'tanhui[mpi]')"
            ) from exc
        return SerialComm()
    comm = MPIComm(MPI.COMM_WORLD)
    if comm.size == 1 and kind == "auto":
        return SerialComm()
    return comm


def partition(n: int, size: int, rank: int) -> tuple[int, int]:
    """Balanced contiguous block ``[start, stop)`` of ``n`` items for ``rank`` of ``size``.

    The first ``n % size`` ranks get one extra item, so block lengths differ by at most one.
    """
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"invalid rank {rank} of size {size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
