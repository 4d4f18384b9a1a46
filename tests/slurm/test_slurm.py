"""The slurm/ job scripts and ``tanhui submit`` on a real one-node Slurm cluster.

Starts ``../shared/tools/slurm-local/start.sh`` (root and apt-get needed, else skipped with the
reason; ``SLURM_CI_MPI_DEFAULT=pmi2`` so that ``srun`` wires up the PyPI mpich wheel) and submits
the real scripts with ``sbatch --wait``: a 2-rank solve equals the serial run, a 4-task ingestion
array + merge equals the serial ingestion, ``tanhui submit`` chains solve → report and a failing
first job cancels the rest, and ``scancel --signal=TERM`` mid-iteration leaves a checkpoint from
which a resubmitted job finishes with the same answer.  Every MPI job asserts its world size.

Run them with ``python -m pytest tests/slurm -v -s`` (they print the measured preemption cost).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.checkpoint import FILE_NAME
from inversion.cli import main as cli_main
from inversion.commands import EXIT_CHECKPOINTED
from inversion.parallel import SerialComm
from tests.casegen import make_case
from tests.checkpoint_solve import solve_case
from tests.integration.test_ingest import assert_same_store, ingest_args, tanhui, write_stilt_files

REPO = Path(__file__).resolve().parents[2]
START = REPO / ".." / "shared" / "tools" / "slurm-local" / "start.sh"
SLURM_DIR = REPO / "slurm"
FAST_CONF = Path("/tmp/slurm-ci/etc/slurm-fastwait.conf")
JOB_TIMEOUT = 180

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                       reason="the local Slurm cluster needs root (it installs Debian packages and starts daemons)"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="no apt-get to install slurm-wlm for the local cluster"),
    pytest.mark.skipif(not START.is_file(), reason=f"{START} not found (../shared/tools/slurm-local)"),
    pytest.mark.skipif(os.environ.get("TANHUI_SLURM_TESTS") == "0", reason="TANHUI_SLURM_TESTS=0"),
]


@pytest.fixture(scope="module")
def cluster():
    """Start (or find running) the local cluster; the environment for sbatch and the jobs.
    A cluster these tests started is stopped afterwards (``stop.sh``)."""
    env = dict(os.environ, SLURM_CI_MPI_DEFAULT="pmi2")
    try:
        running = shutil.which("sinfo") is not None and subprocess.run(
            ["sinfo"], capture_output=True, env=dict(env, SLURM_CONF="/tmp/slurm-ci/etc/slurm.conf"),
            timeout=30).returncode == 0
    except subprocess.TimeoutExpired:
        running = False
    proc = subprocess.run(["bash", str(START)], capture_output=True, text=True, env=env, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"start.sh failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_", "SLURM_"))}
    env.update(SLURM_CONF=str(FAST_CONF) if FAST_CONF.is_file() else "/tmp/slurm-ci/etc/slurm.conf",
               TANHUI_PYTHON=sys.executable, TANHUI_SRUN_MPI="pmi2", PYTHONPATH=str(REPO), COLUMNS="200")
    yield env
    if not running:
        subprocess.run(["bash", str(START.with_name("stop.sh"))], capture_output=True, timeout=120)


def sbatch(env, cwd: Path, *args: str, wait: bool = True) -> subprocess.CompletedProcess:
    (cwd / "logs").mkdir(exist_ok=True)
    command = ["sbatch", *(["--wait"] if wait else []), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=JOB_TIMEOUT)


def logs(cwd: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted((cwd / "logs").glob("*.out")))


def job_state(env, job: str) -> tuple[str, str]:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    fields = dict(item.split("=", 1) for item in out.split() if "=" in item)
    return fields.get("JobState", "?"), fields.get("ExitCode", "?")


def wait_for_jobs(env, jobs: list[str], timeout: float = JOB_TIMEOUT) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while True:
        states = {job: job_state(env, job)[0] for job in jobs}
        if all(s not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING") for s in states.values()):
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"jobs did not finish within {timeout} s: {states}")
        time.sleep(0.5)


def posterior(out_dir: Path) -> dict[str, np.ndarray]:
    with xr.open_dataset(out_dir / "posterior_state.nc", engine="h5netcdf") as ds:
        return {name: ds[name].values for name in ds.data_vars}


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("slurm") / "case", method="variational")


def test_two_rank_solve_job_equals_the_serial_run(cluster, case, tmp_path):
    assert cli_main(["run", str(case), "--comm", "serial", "--output-dir", str(tmp_path / "serial")]) == 0
    proc = sbatch(cluster, tmp_path, "--ntasks=2", str(SLURM_DIR / "solve.sbatch"), str(case),
                  "--output-dir", str(tmp_path / "mpi"))
    assert proc.returncode == 0, proc.stderr + logs(tmp_path)
    diagnostics = json.loads((tmp_path / "mpi" / "diagnostics.json").read_text())
    assert diagnostics["ranks"] == 2  # one world of two ranks, not two serial runs
    ranks = sorted(p.name for p in (tmp_path / "logs").glob("*.ranks/rank-*.log"))
    assert ranks == ["rank-0.log", "rank-1.log"]
    serial, mpi = posterior(tmp_path / "serial"), posterior(tmp_path / "mpi")
    for name in serial:
        scale = np.max(np.abs(serial[name])) or 1.0
        np.testing.assert_allclose(mpi[name], serial[name], rtol=0, atol=1e-10 * scale, err_msg=name)


def test_ingestion_array_of_four_tasks_and_merge_equal_the_serial_ingestion(cluster, tmp_path):
    files = write_stilt_files(tmp_path / "stilt")
    assert tanhui(*ingest_args(files, tmp_path / "serial.h5")) == 0
    manifest = tmp_path / "manifest.txt"
    assert tanhui("manifest", str(tmp_path / "stilt" / "*" / "*_foot.nc"), "--out", str(manifest)) == 0
    out = tmp_path / "array.h5"
    proc = sbatch(cluster, tmp_path, "--parsable", "--array=0-3", str(SLURM_DIR / "ingest.sbatch"),
                  *ingest_args([manifest], out, "--parts", "4", "--no-merge")[1:])
    assert proc.returncode == 0, proc.stderr + logs(tmp_path)
    assert len(list((tmp_path / "logs").glob("tanhui-ingest-*_*.out"))) == 4  # four array tasks ran
    assert not out.exists()
    proc = sbatch(cluster, tmp_path, str(SLURM_DIR / "merge.sbatch"), "--out", str(out))
    assert proc.returncode == 0, proc.stderr + logs(tmp_path)
    assert_same_store(out, tmp_path / "serial.h5")


def test_submit_chains_solve_and_report_and_a_failed_first_job_cancels_the_rest(cluster, case, tmp_path):
    profile = tmp_path / "profile.toml"
    profile.write_text('[site]\nmpi = "pmi2"\nsetup = ["export TANHUI_SETUP_RAN=yes"]\n'
                       '[solve]\nntasks = 2\nsignal_seconds = 60\nargs = ["--overwrite"]\n[ingest]\nparts = 4\n')
    submit = [sys.executable, "-m", "inversion", "submit", str(case), "--profile", str(profile),
              "--slurm-dir", str(SLURM_DIR)]
    proc = subprocess.run(submit, capture_output=True, text=True, env=cluster, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.splitlines())
    assert list(jobs) == ["solve", "report"]
    states = wait_for_jobs(cluster, list(jobs.values()))
    assert states == {jobs["solve"]: "COMPLETED", jobs["report"]: "COMPLETED"}, logs(tmp_path)
    assert json.loads((case / "output" / "diagnostics.json").read_text())["ranks"] == 2
    assert (case / "output" / "report").is_dir()

    # a manifest that does not exist: every ingest task fails, merge, solve and report are cancelled
    proc = subprocess.run([*submit, "--ingest", str(tmp_path / "missing-manifest.txt")], capture_output=True,
                          text=True, env=cluster, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.splitlines())
    assert list(jobs) == ["ingest", "merge", "solve", "report"]
    states = wait_for_jobs(cluster, list(jobs.values()))
    assert states[jobs["ingest"]] == "FAILED"
    assert [states[jobs[k]] for k in ("merge", "solve", "report")] == ["CANCELLED"] * 3, states


SLEEPY = """#!/bin/bash
#SBATCH --job-name={name}
#SBATCH --ntasks=2
#SBATCH --output=logs/%x-%j.out
#SBATCH --open-mode=append
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
exec srun --mpi=pmi2 {python} -m mpi4py {script} {case} {out} {directory} --expect-size 2 --every 3 --sleep 0.2
"""


def test_scancel_term_mid_iteration_checkpoints_and_the_resubmitted_job_finishes(cluster, case, tmp_path, capsys):
    """The same checkpointed solve as `tanhui run` (tests/checkpoint_solve.py), slowed to 0.2 s per
    Hessian product so that Slurm's SIGTERM lands mid-iteration."""
    directory = tmp_path / "ck"
    script = tmp_path / "sleepy.sbatch"

    def submit(out: Path, name: str) -> subprocess.Popen:
        script.write_text(SLEEPY.format(name=name, python=sys.executable, script=REPO / "tests" / "checkpoint_solve.py",
                                        case=case, out=out, directory=directory))
        (tmp_path / "logs").mkdir(exist_ok=True)
        return subprocess.Popen(["sbatch", "--wait", "--parsable", str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cluster, cwd=tmp_path)

    reference = solve_case(case, SerialComm(), tmp_path / "serial")
    t0 = time.monotonic()
    first = submit(tmp_path / "first.json", "tanhui-sleepy-1")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (directory / FILE_NAME).exists():  # the job is iterating
        assert first.poll() is None and time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.05)
    job = subprocess.run(["squeue", "-h", "-o", "%i", "-n", "tanhui-sleepy-1"], capture_output=True, text=True,
                         env=cluster).stdout.strip()
    t_signal = time.monotonic()
    subprocess.run(["scancel", "--signal=TERM", job], check=True, env=cluster)
    first.communicate(timeout=JOB_TIMEOUT)
    t_end = time.monotonic()
    assert first.returncode == EXIT_CHECKPOINTED, logs(tmp_path)
    stopped = json.loads((tmp_path / "first.json").read_text())
    assert stopped["status"] == "stopped" and stopped["sizes"] == [2, 2]
    assert stopped["reason"] == "signal SIGTERM (on 2 of 2 rank(s))"  # srun forwarded it to both ranks

    second = submit(tmp_path / "second.json", "tanhui-sleepy-2")
    second.communicate(timeout=JOB_TIMEOUT)
    t_done = time.monotonic()
    assert second.returncode == 0, logs(tmp_path)
    resumed = json.loads((tmp_path / "second.json").read_text())
    assert resumed["status"] == "done" and resumed["sizes"] == [2, 2]
    for key in ("x_a", "posterior_sd", "aggregate_sd"):
        ref = np.asarray(reference[key])
        np.testing.assert_allclose(resumed[key], ref, rtol=0, atol=1e-10 * np.max(np.abs(ref)), err_msg=key)

    t0_ref = time.monotonic()
    proc = sbatch(cluster, tmp_path, str(_uninterrupted(script, tmp_path)))
    t_ref = time.monotonic() - t0_ref
    assert proc.returncode == 0, logs(tmp_path)
    with capsys.disabled():
        print(f"\npreemption: stopped at CG iteration {stopped['iteration']} (of {resumed['iterations']}), "
              f"scancel → job end {t_end - t_signal:.1f} s; interrupted + resumed jobs {t_done - t0:.1f} s vs "
              f"uninterrupted job {t_ref:.1f} s: {t_done - t0 - t_ref:.1f} s lost (iterations redone: 0)")


def _uninterrupted(script: Path, tmp_path: Path) -> Path:
    """The same job with its own (empty) checkpoint directory: the uninterrupted reference."""
    text = script.read_text().replace(str(tmp_path / "ck"), str(tmp_path / "ck-ref"))
    text = text.replace(str(tmp_path / "second.json"), str(tmp_path / "ref.json"))
    ref = tmp_path / "reference.sbatch"
    ref.write_text(text)
    return ref
