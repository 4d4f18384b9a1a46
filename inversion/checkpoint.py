"""Checkpoint and resume of the solvers' long phases, and stopping on preemption.

A checkpoint is one HDF5 file written by rank 0 through a temporary sibling and ``os.replace``
(a crash never leaves a half-written file under the real name), one file per solver
(:data:`KINDS`):

* ``variational.h5``: the CG-Lanczos state (:class:`inversion.krylov.CGState`: control vector
  w_k, residual, search direction, Lanczos vectors, α/β, residual history, iteration k);
* ``analytical.h5``: the block accumulation of the analytical solver
  (:class:`inversion.accumulation.BlockState`: the form, the summed blocks of F = Hᵀ R⁻¹ H or
  the rows of H B Hᵀ done so far, which observation rows are done; once factorised, the
  Cholesky factor itself).

Both hold the fingerprint of the run (sha256 of the config file and of every input file, from
:func:`inversion.config.provenance`, plus the solver settings that change the arithmetic), the
code version and the rank count.  Neither solver draws random numbers, so there is no RNG state
to save (recorded as such in the file).

Resuming continues the same recurrence from w_k, so the resumed run repeats the arithmetic of an
uninterrupted one: bit-identical with the same rank count and BLAS threads, and equal to
rounding (≤ 1e-10 relative) with another rank count.  A checkpoint whose fingerprint differs from
the current run is refused with an :class:`~transport.errors.InputError` naming what changed.

Stopping: SIGTERM and SIGUSR1 (Slurm's ``--signal``, ``scancel --signal=TERM``, preemption) only
set a flag — the handler does no I/O and may interrupt anything.  At each safe point (after each
CG iteration or accumulated block, and the points ``tanhui run`` checks outside the solver) the
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
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from transport.errors import InputError

from . import __version__
from .accumulation import BlockState
from .krylov import CGState
from .progress import log

FORMAT = "tanhui-checkpoint-1"
STOP_FILE = "STOP"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


@dataclass(frozen=True)
class Kind:
    """One solver's checkpoint: its file, its state class (``to_dict``/``from_dict``, ``iteration``:
    the steps done, ``size``: the state dimension checked on resume) and the name of one step in
    messages."""

    file_name: str
    state: type
    step: str


KINDS = {"variational": Kind("variational.h5", CGState, "CG iteration"),
         "analytical": Kind("analytical.h5", BlockState, "accumulation step")}
FILE_NAME = KINDS["variational"].file_name


class Stopped(Exception):
    """The run was stopped on request (exit code 75 in the CLI): after writing a checkpoint, or
    (``path`` None) before the solve started, when there is nothing to save."""

    def __init__(self, path: Path | None, iteration: int | None, reason: str, step: str = "CG iteration"):
        where = f"at {step} {iteration}" if iteration is not None else f"after the {step}"
        if path is None:
            message = (f"stopped {where} ({reason}); nothing was checkpointed yet: the run can simply be resubmitted "
                       "(the same command)")
        else:
            message = f"stopped {where} ({reason}); checkpoint {path}: rerun the same command (or requeue the job) to resume"
        super().__init__(message)
        self.path, self.iteration, self.reason = path, iteration, reason


class StopRequest:
    """Why this rank should stop at the next safe point, or None.

    ``with StopRequest(...)`` installs handlers for SIGTERM and SIGUSR1 that only record the
    signal, and restores the previous handlers when the outermost ``with`` ends (re-entrant:
    ``tanhui run`` holds it for the whole run, the solver enters it again).  ``stop_file``: a
    file whose existence asks to stop (checked on rank 0 only, to spare a parallel file system).
    ``stop_after``: stop once this many iterations (in total) are done.
    """

    def __init__(self, *, stop_file: Path | None = None, stop_after: int | None = None, check_file: bool = True):
        self.stop_file = stop_file if check_file else None
        self.stop_after = stop_after
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._depth = 0

    def _handler(self, signum, frame) -> None:
        self.signal_name = signal.Signals(signum).name  # no I/O in a signal handler

    def __enter__(self) -> StopRequest:
        self._depth += 1
        if self._depth == 1 and threading.current_thread() is threading.main_thread():  # signals reach it only
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth == 0:
            for sig, previous in self._previous.items():
                signal.signal(sig, previous)
            self._previous.clear()

    def reason(self, iteration: int | None) -> str | None:
        """``iteration`` None: a safe point outside the iterations (``stop_after`` does not apply)."""
        if self.signal_name is not None:
            return f"signal {self.signal_name}"
        if self.stop_file is not None and self.stop_file.exists():
            return f"stop file {self.stop_file}"
        if self.stop_after is not None and iteration is not None and iteration >= self.stop_after:
            return f"--stop-after {self.stop_after}"
        return None

    def agreed(self, comm, iteration: int | None) -> str | None:
        """Collective: the reason to stop when any rank has one (every rank gets it), else None.
        Every rank must call this at the same points, or the allreduce hangs."""
        local = self.reason(iteration)
        if comm.allreduce_scalar(1.0 if local else 0.0) == 0:
            return None
        reasons = [r for r in comm.allgather(local) if r]
        return f"{reasons[0]} (on {len(reasons)} of {comm.size} rank(s))"


def fingerprint(config, hashes: dict[str, str]) -> dict[str, str]:
    """What a checkpoint must match to be resumed: the file hashes (``provenance(config)``) and
    the solver settings that change the arithmetic."""
    s = config.solver
    if s.method == "analytical":  # the block size does not matter: the saved rows say what is done
        return {**hashes, "solver": f"method={s.method} form={s.form}"}
    return {**hashes,
            "solver": f"tolerance={s.tolerance!r} reorthogonalize={s.reorthogonalize} method={s.method}"}


def describe_files(config) -> dict[str, Path]:
    """Config key → file, to name the file whose hash changed."""
    files = dict(config.input_paths())
    if config.source:
        files["config"] = config.source
    return files


class Checkpointer:
    """Load, save and decide when to checkpoint one solve (collective methods); ``kind`` names
    the solver (:data:`KINDS`: the file and the state saved).

    ``every``: save after every ``every``-th iteration or accumulation step (0: only when
    stopping); the converged state (the complete accumulation, the factor) is always saved, so a
    preemption afterwards costs only the work that follows.  ``files`` maps fingerprint keys to
    paths for the refusal message.
    """

    def __init__(self, directory: Path, comm, fingerprint: dict[str, str], *, every: int = 10,
                 stop: StopRequest | None = None, files: dict[str, Path] | None = None,
                 kind: str = "variational"):
        self.kind = KINDS[kind]
        self.name = kind
        self.directory = Path(directory)
        self.path = self.directory / self.kind.file_name
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

    def load(self, n: int):
        """The saved state (on every rank; a :class:`CGState` or :class:`BlockState`), None when
        there is no checkpoint; refuses a foreign one (``n``: the state size of this run)."""
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
        state = self.kind.state.from_dict(data)
        if meta["code_version"] != __version__:
            log.warning("checkpoint %s was written by tanhui %s, this is %s", self.path, meta["code_version"],
                        __version__)
        log.info("resuming the %s solve from %s (%s %d, written by %d rank(s) at %s)", self.name, self.path,
                 self.kind.step, state.iteration, meta["ranks"], meta["written"])
        self.last_saved = state.iteration
        return state

    # -- during the solve ------------------------------------------------------------------
    def decide(self, iteration: int, converged: bool) -> tuple[bool, bool]:
        """Collective, at each step boundary: (save now?, stop now?).  A converged state is not
        stopped (nothing is left to do) but always saved."""
        reason = self.stop.agreed(self.comm, iteration) if not converged else None
        if reason:
            self.stop_reason = reason
        return bool(reason or converged or (self.every and iteration % self.every == 0)), bool(reason)

    def after_iteration(self, state) -> bool:
        """Collective, after each CG iteration: save when due; True when the solve must stop."""
        save, stop = self.decide(state.iteration, state.converged)
        if save:
            self.save(state)
        return stop

    def stopping(self) -> bool:
        """Collective, at a safe point between steps: True (with :attr:`stop_reason`) when any rank
        was signalled or a STOP file exists (``stop_after`` counts steps only)."""
        self.stop_reason = self.stop.agreed(self.comm, None)
        return self.stop_reason is not None

    def save(self, state) -> None:
        """Rank 0 writes the state atomically; every rank returns after it is on disk."""
        if self.comm.is_root:
            t0 = time.perf_counter()
            self.directory.mkdir(parents=True, exist_ok=True)
            _write(self.path, state, self.fingerprint, self.comm.size, self.name)
            what = f"at {self.kind.step} {state.iteration}"
            if getattr(state, "factored", False):  # the analytical solver's last save
                what = f"of the Cholesky factor (after {self.kind.step} {state.iteration})"
            log.info("checkpoint %s written to %s (%.2f s)", what, self.path, time.perf_counter() - t0)
        self.comm.barrier()
        self.last_saved = state.iteration

    def remove(self) -> None:
        """Rank 0 deletes the checkpoint (and a STOP file) once the run's outputs are written."""
        if self.comm.is_root:
            for path in (self.path, self.directory / STOP_FILE):
                path.unlink(missing_ok=True)
            if self.directory.is_dir() and not any(self.directory.iterdir()):
                self.directory.rmdir()


def _write(path: Path, state, fp: dict[str, str], ranks: int, solver: str) -> None:
    from .io import atomic_path

    data = state.to_dict()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["solver"] = solver
            f.attrs["n"] = state.size
            f.attrs["code_version"] = __version__
            f.attrs["ranks"] = ranks
            f.attrs["written"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            f.attrs["fingerprint"] = json.dumps(fp, sort_keys=True)
            f.attrs["rng_state"] = f"none: the {solver} solver draws no random numbers"
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
                    "n": int(f.attrs["n"])}
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
        raise InputError(path, "n", f"the checkpoint's state vector has {meta['n']} elements, this run's {n}",
                         "start afresh with `tanhui run --restart` (discards the checkpoint)")
