"""Checkpoint and resume of the variational solver, and stopping on preemption.

A checkpoint is one HDF5 file written by rank 0 through a temporary sibling and ``os.replace``
(a crash never leaves a half-written file under the real name).  It holds the CG-Lanczos state
(:class:`inversion.krylov.CGState`: control vector w_k, residual, search direction, Lanczos
vectors, α/β, residual history, iteration k), the fingerprint of the run (sha256 of the config
file and of every input file, from :func:`inversion.config.provenance`, plus the solver settings
that change the arithmetic), the code version and the rank count.  The variational solver draws
no random numbers, so there is no RNG state to save (recorded as such in the file).

Resuming continues the same recurrence from w_k, so the resumed run repeats the arithmetic of an
uninterrupted one: bit-identical with the same rank count and BLAS threads, and equal to
rounding (≤ 1e-10 relative) with another rank count.  A checkpoint whose fingerprint differs from
the current run is refused with an :class:`~transport.errors.InputError` naming what changed.

Stopping: SIGTERM and SIGUSR1 (Slurm's ``--signal``, ``scancel --signal=TERM``, preemption) only
set a flag — the handler does no I/O and may interrupt anything.  After each CG iteration the
ranks agree by an allreduce whether any of them was asked to stop (signal, a ``STOP`` file in
the checkpoint directory seen by rank 0, or a requested iteration count); then rank 0 writes the
checkpoint and :class:`Stopped` is raised, which ``tanhui run`` turns into exit code 75.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import h5py
import numpy as np

from transport.errors import InputError

from . import __version__
from .krylov import CGState
from .progress import log

FORMAT = "tanhui-checkpoint-1"
FILE_NAME = "variational.h5"
STOP_FILE = "STOP"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Stopped(Exception):
    """The solve was stopped on request after writing a checkpoint (exit code 75 in the CLI)."""

    def __init__(self, path: Path, iteration: int, reason: str):
        super().__init__(f"stopped at CG iteration {iteration} ({reason}); checkpoint {path}")
        self.path, self.iteration, self.reason = path, iteration, reason


class StopRequest:
    """Why this rank should stop at the next iteration boundary, or None.

    ``with StopRequest(...)`` installs handlers for SIGTERM and SIGUSR1 that only record the
    signal (restoring the previous handlers on exit, so outside the CG loop a SIGTERM kills the
    process as usual and a requeued job resumes from the last checkpoint).  ``stop_file``: a
    file whose existence asks to stop (checked on rank 0 only, to spare a parallel file system).
    ``stop_after``: stop once this many iterations (in total) are done.
    """

    def __init__(self, *, stop_file: Path | None = None, stop_after: int | None = None, check_file: bool = True):
        self.stop_file = stop_file if check_file else None
        self.stop_after = stop_after
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name  # no I/O in a signal handler

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def reason(self, iteration: int) -> str | None:
        if self.signal_name is not None:
            return f"signal {self.signal_name}"
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop file {self.stop_file}"
        if self.stop_after is not None and iteration >= self.stop_after:
            return f"--stop-after {self.stop_after}"
        return None


def fingerprint(config, hashes: dict[str, str]) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the file hashes (``provenance(config)``) and
    the solver settings that change the arithmetic."""
    s = config.solver
    return {**hashes,
            "solver": f"tolerance={s.tolerance!r} reorthogonalize={s.reorthogonalize} method={s.method}"}


def describe_files(config) -> dict[str, Path]:
    """Config key → file, to name the file whose hash changed."""
    files = dict(config.input_paths())
    if config.source:
        files["config"] = config.source
    return files


class Checkpointer:
    """Load, save and decide when to checkpoint one variational solve (collective methods).

    ``every``: save after every ``every``-th iteration (0: only when stopping); the converged
    state is always saved, so a preemption during the aggregate solves that follow costs only
    those.  ``files`` maps fingerprint keys to paths for the refusal message.
    """

    def __init__(self, directory: Path, comm, fingerprint: dict[str, str], *, every: int = 10,
                 stop: StopRequest | None = None, files: dict[str, Path] | None = None):
        self.directory = Path(directory)
        self.path = self.directory / FILE_NAME
        self.comm = comm
        self.fingerprint = dict(fingerprint)
        self.every = every
        self.stop = stop or StopRequest()
        self.files = files or {}
        self.last_saved: int | None = None
        self.stop_reason: str | None = None

    # -- resume ----------------------------------------------------------------------------
    def check(self) -> bool:
        """Collective, cheap (metadata only): is there a checkpoint to resume?  Refuses a foreign
        one with an InputError — call it before heavy work."""
        error, found = None, False
        if self.comm.is_root and self.path.exists():
            try:
                _check(self.path, _read(self.path, arrays=False)[0], self.fingerprint, None, self.files)
                found = True
            except InputError as exc:
                error = exc
        error = self.comm.bcast(error)
        if error is not None:
            raise error
        return bool(self.comm.bcast(found))

    def load(self, n: int) -> CGState | None:
        """The saved state (on every rank), None when there is no checkpoint; refuses a foreign one."""
        error, meta, arrays = None, None, None
        if self.comm.is_root and self.path.exists():
            try:
                meta, arrays = _read(self.path)
                _check(self.path, meta, self.fingerprint, n, self.files)
            except InputError as exc:
                error = exc
        error = self.comm.bcast(error)
        if error is not None:
            raise error
        meta = self.comm.bcast(meta)
        if meta is None:
            return None
        data = {}
        for key in sorted(meta["array_keys"]):
            data[key] = self.comm.bcast(arrays[key] if self.comm.is_root else None)
        data.update(meta["scalars"])
        state = CGState.from_dict(data)
        if meta["code_version"] != __version__:
            log.warning("checkpoint %s was written by tanhui %s, this is %s", self.path, meta["code_version"],
                        __version__)
        log.info("resuming the variational solve from %s (iteration %d, written by %d rank(s) at %s)",
                 self.path, state.iteration, meta["ranks"], meta["written"])
        self.last_saved = state.iteration
        return state

    # -- during the solve ------------------------------------------------------------------
    def after_iteration(self, state: CGState) -> bool:
        """Collective, after each CG iteration: save when due; True when the solve must stop."""
        local = self.stop.reason(state.iteration) if not state.converged else None
        stop = self.comm.allreduce_scalar(1.0 if local else 0.0) > 0
        if stop:
            reasons = [r for r in self.comm.allgather(local) if r]
            self.stop_reason = f"{reasons[0]} (on {len(reasons)} of {self.comm.size} rank(s))"
        if stop or state.converged or (self.every and state.iteration % self.every == 0):
            self.save(state)
        return stop

    def save(self, state: CGState) -> None:
        """Rank 0 writes the state atomically; every rank returns after it is on disk."""
        if self.comm.is_root:
            t0 = time.perf_counter()
            self.directory.mkdir(parents=True, exist_ok=True)
            _write(self.path, state, self.fingerprint, self.comm.size)
            log.info("checkpoint at CG iteration %d written to %s (%.2f s)", state.iteration, self.path,
                     time.perf_counter() - t0)
        self.comm.barrier()
        self.last_saved = state.iteration

    def remove(self) -> None:
        """Rank 0 deletes the checkpoint (and a STOP file) once the run's outputs are written."""
        if self.comm.is_root:
            for path in (self.path, self.directory / STOP_FILE):
                path.unlink(missing_ok=True)
            if self.directory.is_dir() and not any(self.directory.iterdir()):
                self.directory.rmdir()


def _write(path: Path, state: CGState, fp: dict[str, str], ranks: int) -> None:
    from .io import atomic_path

    data = state.to_dict()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["code_version"] = __version__
            f.attrs["ranks"] = ranks
            f.attrs["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.attrs["fingerprint"] = json.dumps(fp, sort_keys=True)
            f.attrs["rng_state"] = "none: the variational solver draws no random numbers"
            scalars = {}
            for key, value in data.items():
                if isinstance(value, np.ndarray):
                    f.create_dataset(key, data=value)
                else:
                    scalars[key] = value
            f.attrs["scalars"] = json.dumps(scalars)
        with open(tmp, "rb+") as fh:  # on disk before the rename makes it visible
            os.fsync(fh.fileno())


def _read(path: Path, arrays: bool = True) -> tuple[dict, dict]:
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise InputError(path, "format", f"not a tanhui checkpoint ({f.attrs.get('format')!r})",
                                 "delete it or start afresh with `tanhui run --restart`")
            meta = {"code_version": str(f.attrs["code_version"]), "ranks": int(f.attrs["ranks"]),
                    "written": str(f.attrs["written"]), "fingerprint": json.loads(f.attrs["fingerprint"]),
                    "scalars": json.loads(f.attrs["scalars"]), "array_keys": list(f.keys()),
                    "n": int(f["x"].size)}
            arrays = {key: f[key][()] for key in f.keys()} if arrays else {}
    except (OSError, KeyError) as exc:
        raise InputError(path, None, f"cannot read the checkpoint ({exc})",
                         "delete it or start afresh with `tanhui run --restart`") from exc
    return meta, arrays


def _check(path: Path, meta: dict, fp: dict[str, str], n: int | None, files: dict[str, Path]) -> None:
    saved = meta["fingerprint"]
    changed = []
    for key in sorted(set(saved) | set(fp)):
        old, new = saved.get(key), fp.get(key)
        if old == new:
            continue
        where = f" ({files[key]})" if key in files else ""
        if key == "solver":
            changed.append(f"solver settings changed: {old} → {new}")
        elif old is None or new is None:
            changed.append(f"{key}{where} {'added' if old is None else 'removed'}")
        else:
            changed.append(f"{key}{where} changed: sha256 {old[:12]}… → {new[:12]}…")
    if changed:
        raise InputError(path, ", ".join(k.split(":")[0] for k in changed),
                         "the checkpoint belongs to a different run: " + "; ".join(changed),
                         "restore the original inputs to resume, or start afresh with `tanhui run --restart` "
                         "(discards the checkpoint)")
    if n is not None and meta["n"] != n:
        raise InputError(path, "x", f"the checkpoint's control vector has {meta['n']} elements, this run's {n}",
                         "start afresh with `tanhui run --restart` (discards the checkpoint)")
