"""The analytical solver's checkpoint under MPI (2 ranks, mpiexec): a 2-rank accumulation
stopped (``--stop-after``, or a SIGTERM on one rank mid-block) and resumed on 2 ranks, or on
1 rank, equals the serial solve (≤ 1e-10); and a SIGTERM on one rank while ``tanhui run``
builds the problem stops both ranks with exit 75 before the solve.

Every launch asserts the world size it got."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from inversion.checkpoint import KINDS
from inversion.parallel import SerialComm
from tests.casegen import make_case
from tests.checkpoint_solve import EXIT_CHECKPOINTED, solve_case
from tests.mpi.test_mpi import HAVE_MPI4PY, MPIEXEC, assert_close, mpiexec

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install 'tanhui[mpi]')"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside the Python interpreter or on PATH"),
]

TESTS = Path(__file__).resolve().parents[1]
SOLVE = (sys.executable, "-m", "mpi4py", str(TESTS / "checkpoint_solve.py"))
FILE = KINDS["analytical"].file_name
KEYS = ("x_a", "posterior_sd", "aggregate_sd")


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("ackmpi") / "case")


def run2(case: Path, out: Path, directory: Path, form: str, *extra: str) -> tuple[int, dict]:
    proc = mpiexec(2, *SOLVE, str(case), str(out), str(directory), "--expect-size", "2", "--analytical", form,
                   "--block-rows", "10", *extra, cwd=out.parent)
    assert proc.returncode in (0, EXIT_CHECKPOINTED), f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(out.read_text())
    assert result["sizes"] == [2, 2]  # one world of two ranks, not two worlds of one
    return proc.returncode, result


def close(result: dict, reference: dict) -> None:
    for key in KEYS:
        ref = np.asarray(reference[key])
        assert_close(result[key], ref, key, rtol=1e-10, scale=np.max(np.abs(ref)))


@pytest.mark.parametrize("form, stop, reason", [
    ("state", ("--stop-after", "2"), "--stop-after 2 (on 2 of 2 rank(s))"),
    ("observation", ("--signal-at", "2", "--signal-rank", "1"), "signal SIGTERM (on 1 of 2 rank(s))"),
])
def test_two_rank_accumulation_stops_and_resumes_on_two_ranks_or_one(case, form, stop, reason, tmp_path):
    serial = solve_case(case, SerialComm(), tmp_path / "serial", analytical=form, block_rows=10)
    code, stopped = run2(case, tmp_path / "a.json", tmp_path / "ck", form, "--every", "0", *stop)
    assert (code, stopped["status"], stopped["iteration"], stopped["reason"]) == (
        EXIT_CHECKPOINTED, "stopped", 2, reason)
    # 36 rows per rank in blocks of 10: rows 0–19 and 36–55 are done
    import h5py

    with h5py.File(tmp_path / "ck" / FILE) as f:
        assert f.attrs["ranks"] == 2
        np.testing.assert_array_equal(np.flatnonzero(f["done"][()]), np.r_[0:20, 36:56])
    shutil.copytree(tmp_path / "ck", tmp_path / "ck1")
    code, resumed = run2(case, tmp_path / "b.json", tmp_path / "ck", form)
    assert code == 0 and resumed["status"] == "done"
    close(resumed, serial)
    resumed1 = solve_case(case, SerialComm(), tmp_path / "ck1", analytical=form, block_rows=10)  # on one rank
    close(resumed1, serial)


def test_sigterm_on_one_rank_during_build_problem_stops_both_before_the_solve(case, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    proc = mpiexec(2, sys.executable, "-m", "mpi4py", str(TESTS / "signalled_run.py"), "build_problem", "self:TERM",
                   "--rank", "1", "--", str(case), "--no-report", "--output-dir", str(out), "--log-dir", str(logs),
                   cwd=tmp_path)
    assert proc.returncode == EXIT_CHECKPOINTED, proc.stderr
    assert "MPI_Abort" not in proc.stderr
    for rank in (0, 1):
        text = (logs / f"rank-{rank}.log").read_text()
        assert f"[rank {rank}/2]" in text
        assert ("stopped after the building of the problem, before the solve (signal SIGTERM (on 1 of 2 rank(s))); "
                "nothing was checkpointed yet") in text
    assert not (out / "posterior_state.nc").exists() and not (out / "checkpoint" / FILE).exists()
