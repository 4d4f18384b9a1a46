"""The decisions of inversion.requeue (self-requeue of a Slurm job stopped by a signal), with
``scontrol`` answers recorded from Slurm 22.05; the real requeue runs in tests/slurm."""

from __future__ import annotations

import logging
import subprocess
from types import SimpleNamespace

import pytest

from inversion.parallel import SerialComm
from inversion.requeue import requeue_action, requeue_exit_codes, scontrol_fields

JOB = ("JobId=42 JobName=tanhui-solve\n   UserId=root(0) GroupId=root(0) MCS_label=N/A\n"
       "   JobState=RUNNING Reason=None Dependency=(null)\n   Requeue={requeue} Restarts=0 BatchFlag={batch} Reboot=0 "
       "ExitCode=0:0\n")
CONFIG = "JobRequeue              = 1\nRequeueExit             = {exit}\nRequeueExitHold         = (null)\n"
SIGNAL = "signal SIGUSR1 (on 2 of 2 rank(s))"
ENV = {"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "0"}


@pytest.fixture(autouse=True)
def _propagate(monkeypatch):
    monkeypatch.setattr(logging.getLogger("tanhui"), "propagate", True)  # the CLI's setup_logging may have cut it


class Scontrol:
    """Answers ``scontrol show job|config`` and ``requeue`` like Slurm; records the calls."""

    def __init__(self, requeue="1", batch="1", requeue_exit="(null)", requeue_rc=0):
        self.answers = {"job": JOB.format(requeue=requeue, batch=batch), "config": CONFIG.format(exit=requeue_exit)}
        self.requeue_rc = requeue_rc
        self.calls: list[list[str]] = []

    def __call__(self, command, **kwargs) -> subprocess.CompletedProcess:
        self.calls.append(command)
        if command[1] == "show":
            return subprocess.CompletedProcess(command, 0, self.answers[command[2]], "")
        stderr = "" if self.requeue_rc == 0 else "Requested operation is presently disabled for job 42"
        return subprocess.CompletedProcess(command, self.requeue_rc, "", stderr)


def test_a_signalled_requeueable_batch_job_is_requeued_last(caplog):
    scontrol = Scontrol()
    with caplog.at_level(logging.INFO, logger="tanhui"):
        action = requeue_action(SerialComm(), SIGNAL, "ck/variational.h5", environ=ENV, run=scontrol)
    assert ["scontrol", "requeue", "42"] not in scontrol.calls  # deciding does not requeue yet
    assert "requeueing it with `scontrol requeue 42`; it resumes from the checkpoint ck/variational.h5" in caplog.text
    assert action() is True
    assert scontrol.calls[-1] == ["scontrol", "requeue", "42"]


@pytest.mark.parametrize("reason, environ, scontrol, message", [
    ("stop file ck/STOP (on 1 of 2 rank(s))", ENV, Scontrol(), "stopped on request"),
    ("--stop-after 3 (on 2 of 2 rank(s))", ENV, Scontrol(), "stopped on request"),
    (SIGNAL, {}, Scontrol(), None),
    (SIGNAL, ENV, Scontrol(requeue="0"), "was submitted with --no-requeue: not requeued"),
    (SIGNAL, ENV, Scontrol(batch="0"), "is not a batch job"),
    (SIGNAL, ENV, Scontrol(requeue_exit="75"), "the site requeues exit code 75 (RequeueExit)"),
])
def test_no_requeue_on_request_outside_slurm_when_forbidden_or_left_to_the_site(reason, environ, scontrol, message,
                                                                              caplog):
    with caplog.at_level(logging.INFO, logger="tanhui"):
        assert requeue_action(SerialComm(), reason, None, environ=environ, run=scontrol) is None
    assert all(call[1] != "requeue" for call in scontrol.calls)
    if message is None:
        assert scontrol.calls == [] and caplog.text == ""
    else:
        assert message in caplog.text and "from the start (nothing was checkpointed)" in caplog.text


def test_a_refused_requeue_is_a_warning_naming_the_checkpoint(caplog):
    action = requeue_action(SerialComm(), SIGNAL, "ck/variational.h5", environ=ENV, run=Scontrol(requeue_rc=1))
    with caplog.at_level(logging.WARNING, logger="tanhui"):
        assert action() is False
    assert "scontrol requeue 42 failed (exit 1: Requested operation is presently disabled" in caplog.text
    assert "resubmit the job to resume from the checkpoint ck/variational.h5" in caplog.text


def test_only_rank_0_acts():
    scontrol = Scontrol()
    assert requeue_action(SimpleNamespace(is_root=False), SIGNAL, None, environ=ENV, run=scontrol) is None
    assert scontrol.calls == []


def test_scontrol_parsing():
    assert requeue_exit_codes(CONFIG.format(exit="(null)")) == set()
    assert requeue_exit_codes(CONFIG.format(exit="75")) == {75}
    assert requeue_exit_codes(CONFIG.format(exit="1,75-77")) == {1, 75, 76, 77}
    fields = scontrol_fields(JOB.format(requeue="1", batch="1"))
    assert (fields["Requeue"], fields["BatchFlag"], fields["JobState"]) == ("1", "1", "RUNNING")
