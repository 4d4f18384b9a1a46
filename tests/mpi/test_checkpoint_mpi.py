"""Checkpoint and resume under MPI (2 ranks, mpiexec): a stopped-and-resumed solve equals the
uninterrupted one (bit for bit on 2 ranks, ≤ 1e-10 on 1 rank), a SIGTERM raised on one rank
mid-iteration or sent from outside to one mpiexec'd process stops every rank after a checkpoint
(exit 75), and a rank that raises ends the job promptly with a non-zero exit code.

Every launch asserts the world size it got."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from inversion.checkpoint import FILE_NAME
from inversion.parallel import SerialComm
from tests.casegen import make_case
from tests.checkpoint_solve import EXIT_CHECKPOINTED, solve_case
from tests.mpi.test_mpi import FAILURE_TIMEOUT, HAVE_MPI4PY, MPIEXEC, assert_close, child_env, mpiexec

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install 'tanhui[mpi]')"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside the Python interpreter or on PATH"),
]

SCRIPT = Path(__file__).resolve().parents[1] / "checkpoint_solve.py"
SOLVE = (sys.executable, "-m", "mpi4py", str(SCRIPT))


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("ckmpi") / "case", method="variational")


def run2(case: Path, out: Path, directory: Path, *extra: str, timeout: float = 180) -> tuple[int, dict]:
    proc = mpiexec(2, *SOLVE, str(case), str(out), str(directory), "--expect-size", "2", *extra,
                   cwd=out.parent, timeout=timeout)
    assert proc.returncode in (0, EXIT_CHECKPOINTED), f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert result["sizes"] == [2, 2]  # one world of two ranks, not two worlds of one
    return proc.returncode, result


@pytest.fixture(scope="module")
def reference2(case, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("ref2")
    code, result = run2(case, tmp / "ref.json", tmp / "ck")
    assert code == 0 and result["status"] == "done"
    return result


def same(a: dict, b: dict) -> None:
    for key in ("x_a", "posterior_sd", "posterior", "aggregate_sd"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_two_ranks_stop_and_resume_bit_for_bit_and_on_one_rank_to_rounding(case, reference2, tmp_path):
    code, stopped = run2(case, tmp_path / "a.json", tmp_path / "ck", "--stop-after", "4")
    assert (code, stopped["status"], stopped["iteration"]) == (EXIT_CHECKPOINTED, "stopped", 4)
    shutil.copytree(tmp_path / "ck", tmp_path / "ck1")
    code, resumed = run2(case, tmp_path / "b.json", tmp_path / "ck")
    assert code == 0
    same(resumed, reference2)
    # the same checkpoint resumed on one rank: equal to the serial run up to rounding
    serial = solve_case(case, SerialComm(), tmp_path / "serial")
    resumed1 = solve_case(case, SerialComm(), tmp_path / "ck1")
    for key in ("x_a", "posterior_sd", "aggregate_sd"):
        assert_close(resumed1[key], serial[key], key, rtol=1e-10, scale=np.max(np.abs(serial[key])))


def test_sigterm_on_one_rank_mid_iteration_stops_both_after_a_checkpoint(case, reference2, tmp_path):
    code, stopped = run2(case, tmp_path / "a.json", tmp_path / "ck", "--signal-at", "5", "--signal-rank", "1")
    assert code == EXIT_CHECKPOINTED and stopped["reason"] == "signal SIGTERM (on 1 of 2 rank(s))"
    assert (tmp_path / "ck" / FILE_NAME).is_file()
    code, resumed = run2(case, tmp_path / "b.json", tmp_path / "ck")
    assert code == 0
    same(resumed, reference2)


def _rank_pids(marker: str) -> list[int]:
    """PIDs of the python ranks whose command line contains ``marker`` (the output path)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # a rank is "python -m mpi4py SCRIPT …" (the launcher's own command line names it too)
            if cmd[1:4] == [b"-m", b"mpi4py", str(SCRIPT).encode()] and marker.encode() in cmd:
                pids.append(int(entry.name))
    return pids


def test_sigterm_sent_from_outside_to_one_process(case, reference2, tmp_path):
    """os.kill on one of the mpiexec'd processes while it sleeps inside a Hessian product."""
    out, directory = tmp_path / "a.json", tmp_path / "ck"
    command = [MPIEXEC, "-n", "2", *SOLVE, str(case), str(out), str(directory), "--expect-size", "2",
               "--every", "2", "--sleep", "0.1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(),
                            cwd=tmp_path, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (directory / FILE_NAME).exists():  # a first checkpoint: the solve is iterating
            assert proc.poll() is None and time.monotonic() < deadline, "the solve ended before it could be signalled"
            time.sleep(0.05)
        pids = _rank_pids(str(out))
        assert len(pids) == 2, pids
        os.kill(max(pids), signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == EXIT_CHECKPOINTED, err
    stopped = json.loads(out.read_text())
    assert stopped["status"] == "stopped" and stopped["reason"] == "signal SIGTERM (on 1 of 2 rank(s))"
    code, resumed = run2(case, tmp_path / "b.json", directory)
    assert code == 0
    same(resumed, reference2)


def test_a_rank_that_raises_ends_the_job_promptly(case, tmp_path):
    # ``mpiexec`` fails the test if the job has not ended by itself within FAILURE_TIMEOUT (a hang)
    proc = mpiexec(2, *SOLVE, str(case), str(tmp_path / "a.json"), str(tmp_path / "ck"), "--expect-size", "2",
                   "--fail-at", "4", "--signal-rank", "1", cwd=tmp_path, timeout=FAILURE_TIMEOUT)
    assert proc.returncode not in (0, EXIT_CHECKPOINTED)
    assert "injected failure on rank 1" in proc.stderr
    assert not (tmp_path / "a.json").exists()


def test_tanhui_run_under_mpiexec_exits_75_without_abort_then_resumes(case, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    run = (sys.executable, "-m", "mpi4py", "-m", "inversion", "run", str(case), "--output-dir", str(out),
           "--log-dir", str(logs))
    proc = mpiexec(2, *run, "--stop-after", "3", cwd=tmp_path)
    assert proc.returncode == EXIT_CHECKPOINTED, proc.stderr
    assert "MPI_Abort" not in proc.stderr and (out / "checkpoint" / FILE_NAME).is_file()
    assert "stopped at CG iteration 3" in (logs / "rank-0.log").read_text()
    assert "[rank 1/2]" in (logs / "rank-1.log").read_text()
    proc = mpiexec(2, *run, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    diagnostics = json.loads((out / "diagnostics.json").read_text())
    assert diagnostics["ranks"] == 2 and diagnostics["iterations"] > 3
    assert not (out / "checkpoint").exists()
