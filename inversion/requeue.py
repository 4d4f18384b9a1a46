"""Self-requeue of a Slurm batch job that a signal stopped after a checkpoint.

Slurm requeues a job that exits with 75 ("checkpointed", :data:`inversion.commands.EXIT_CHECKPOINTED`)
only when the site sets ``RequeueExit=75`` in ``slurm.conf``; most sites do not.  So when a
signal (preemption's SIGTERM, the ``--signal=B:USR1@N`` warning before the time limit,
``scancel --signal``) stopped ``tanhui run`` after its checkpoint was written, rank 0 asks Slurm
to requeue the job itself (``scontrol requeue $SLURM_JOB_ID``); the requeued job runs the same
script and resumes from the checkpoint.

The job's own ``Requeue`` flag is the switch: ``#SBATCH --requeue`` (``slurm/solve.sbatch``,
profile ``[solve] requeue = true``) allows it, ``sbatch --no-requeue`` forbids it.  Not
requeued: a stop on request (a ``STOP`` file, ``--stop-after``: requeueing would only stop
again), a process outside a Slurm batch job, and a site whose ``RequeueExit`` covers 75 (Slurm
requeues it on the exit code).  ``scontrol requeue`` ends the running job at once (Slurm
cancels its steps), so it is the last thing done: after the checkpoint is on disk and after
MPI_Finalize (:meth:`inversion.parallel.MPIComm.exit_all` runs it last): with ranks killed
before MPI_Finalize, the requeued job (same job and step id) failed in MPI_Init on the test
cluster (MPICH, UCX address exchange), presumably on the shared-memory state they left behind.
The requeued job becomes eligible after Slurm's requeue hold (about 2 minutes in Slurm 22.05).
Every decision is logged; a failed requeue is a warning naming the checkpoint to resume from by
resubmitting.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping

from .commands import EXIT_CHECKPOINTED as EXIT_CODE
from .progress import log

SIGNAL_PREFIX = "signal "  # how inversion.checkpoint.StopRequest.reason names a stop by a signal
SCONTROL_TIMEOUT_S = 60


def scontrol_fields(text: str) -> dict[str, str]:
    """``KEY=VALUE`` tokens of ``scontrol show job`` output (the last occurrence wins)."""
    return dict(token.split("=", 1) for token in text.split() if "=" in token)


def requeue_exit_codes(config_text: str) -> set[int]:
    """Exit codes of ``RequeueExit`` in ``scontrol show config`` output (``75``, ``75,80-82``,
    ``(null)``)."""
    codes: set[int] = set()
    for line in config_text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() != "RequeueExit":
            continue
        for item in value.strip().split(","):
            lo, _, hi = item.strip().partition("-")
            if lo.isdigit() and (not hi or hi.isdigit()):
                codes.update(range(int(lo), int(hi or lo) + 1))
    return codes


def requeue_action(comm, reason: str, checkpoint: object | None, *, environ: Mapping[str, str] | None = None,
                   run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> Callable[[], bool] | None:
    """Rank 0: when a signal stopped the run of a requeueable Slurm batch job, the action that
    requeues it (returns True when Slurm accepted); otherwise None.  Every decision is logged.

    ``reason``: the agreed stop reason (:attr:`inversion.checkpoint.Stopped.reason`);
    ``checkpoint``: the path the requeued job resumes from (None: nothing saved yet, the
    requeued job starts afresh).  Call it on every rank after the checkpoint is on disk (other
    ranks get None) and run the action last: ``comm.exit_all(75, last=action)``.  ``run`` is
    the process runner (``subprocess.run``).
    """
    if not comm.is_root:
        return None
    environ = os.environ if environ is None else environ
    job = environ.get("SLURM_JOB_ID")
    if not job:
        return None  # not a Slurm job: rerun the command to resume (the stop message says so)
    resume_from = f"the checkpoint {checkpoint}" if checkpoint is not None else "the start (nothing was checkpointed)"
    if not reason.startswith(SIGNAL_PREFIX):
        log.info("Slurm job %s stopped on request (%s): not requeued; resubmit it to resume from %s", job, reason,
                 resume_from)
        return None

    def scontrol(*args: str) -> subprocess.CompletedProcess | None:
        try:
            return run(["scontrol", *args], capture_output=True, text=True, timeout=SCONTROL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("scontrol %s failed (%s)", " ".join(args), exc)
            return None

    shown = scontrol("show", "job", job)
    if shown is None or shown.returncode != 0:
        log.warning("cannot read Slurm job %s (%s): not requeued; resubmit it to resume from %s", job,
                    shown.stderr.strip() if shown is not None else "scontrol unavailable", resume_from)
        return None
    fields = scontrol_fields(shown.stdout)
    if fields.get("BatchFlag") != "1":
        log.info("Slurm job %s is not a batch job: not requeued; resubmit it to resume from %s", job, resume_from)
        return None
    if fields.get("Requeue") != "1":
        log.warning("Slurm job %s was submitted with --no-requeue: not requeued; resubmit it to resume from %s", job,
                    resume_from)
        return None
    config = scontrol("show", "config")
    if config is not None and config.returncode == 0 and EXIT_CODE in requeue_exit_codes(config.stdout):
        log.info("the site requeues exit code %d (RequeueExit): Slurm requeues job %s, which resumes from %s",
                 EXIT_CODE, job, resume_from)
        return None
    log.warning("%s stopped Slurm job %s (restart %s): requeueing it with `scontrol requeue %s`; it resumes from %s",
                reason, job, environ.get("SLURM_RESTART_COUNT", "0"), job, resume_from)

    def requeue() -> bool:
        done = scontrol("requeue", job)
        if done is None or done.returncode != 0:
            log.warning("scontrol requeue %s failed%s: resubmit the job to resume from %s", job,
                        f" (exit {done.returncode}: {done.stderr.strip()})" if done is not None else "", resume_from)
            return False
        return True

    return requeue
