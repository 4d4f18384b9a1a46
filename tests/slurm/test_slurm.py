"""The slurm/ job scripts and ``tanhui submit`` on a real one-node Slurm cluster.

Starts ``../shared/tools/slurm-local/start.sh`` (root and apt-get needed, else skipped with the
reason; ``SLURM_CI_MPI_DEFAULT=pmi2`` so that ``srun`` wires up the PyPI mpich wheel) and submits
the real scripts: a 2-rank solve equals the serial run; a 4-task ingestion array + merge equals
the serial ingestion; ``tanhui submit --ingest`` chains ingest array → merge → MPI solve → report
over R-STILT files and equals the serial ingestion and run, and a failing first job (the array)
cancels the rest; ``scancel --signal=TERM`` mid-iteration of a ``--no-requeue`` job leaves a
checkpoint from which a resubmitted job finishes with the same answer; ``scancel --signal=USR1``
of a requeueable job makes it requeue itself and resume to the same answer; a rank failing on bad
input ends the 2-rank job with a non-zero exit code.  Every MPI job asserts its world size;
states come from ``scontrol show job`` (no accounting database, no sacct).

Run them with ``python -m pytest tests/slurm -v -s`` (they print the measured preemption costs).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from inversion.checkpoint import FILE_NAME
from inversion.cli import main as cli_main
from inversion.commands import EXIT_CHECKPOINTED
from inversion.config import load_config
from inversion.parallel import SerialComm, partition
from inversion.problem import open_inputs
from inversion.requeue import scontrol_fields
from tests import footprint_files as ff
from tests.casegen import make_case
from tests.checkpoint_solve import solve_case
from tests.integration.test_ingest import assert_same_store, tanhui
from transport.store import FootprintStore

REPO = Path(__file__).resolve().parents[2]
START = REPO / ".." / "shared" / "tools" / "slurm-local" / "start.sh"
SLURM_DIR = REPO / "slurm"
FAST_CONF = Path("/tmp/slurm-ci/etc/slurm-fastwait.conf")
JOB_TIMEOUT = 180
REQUEUE_RELEASE_S = 2.0  # wait after a requeue before releasing Slurm's hold on the job

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


def job_fields(env, job: str) -> dict[str, str]:
    """``scontrol show job`` as KEY → VALUE (no accounting database here: no sacct)."""
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True, env=env).stdout
    return scontrol_fields(out)


def job_field(env, job: str, key: str) -> str:
    return job_fields(env, job).get(key, "?")


def job_state(env, job: str) -> tuple[str, str]:
    fields = job_fields(env, job)
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


def stilt_case(directory: Path) -> tuple[Path, list[Path]]:
    """A tiny variational twin case whose footprints exist only as R-STILT v2 files (one per
    receptor, 6 h slots over the 48 h back-time, obs_id and site as attributes): its
    ``data/footprints.h5`` is what an ingestion writes."""
    case = make_case(directory / "case", method="variational", hours="[6, 12]")
    store_path = case / "data" / "footprints.h5"
    store = FootprintStore(store_path)
    K = store.read_rows(0, store.n_obs).toarray().reshape(store.n_obs, store.time_axis.size, *store.grid.shape)
    starts, obs, files = store.time_axis.start, store.obs, []
    for i in range(store.n_obs):
        t = np.datetime64(obs["time"].values[i], "s")
        (slots,) = np.nonzero((starts < t) & (starts >= t - np.timedelta64(48, "h")))
        lat, lon, height = (float(obs[k].values[i]) for k in ("latitude", "longitude", "height"))
        site = str(obs["site"].values[i])
        name = f"{str(t).replace('-', '').replace('T', '').replace(':', '')[:12]}_{lon}_{lat}_{height:g}_foot.nc"
        files.append(ff.stilt_v2(directory / "stilt" / site / name, K[i, slots][::-1], store.grid.lat, store.grid.lon,
                                 starts[slots][::-1], attrs={"site": site, "obs_id": str(obs["obs_id"].values[i])}))
    store_path.unlink()
    return case, files


def test_submit_chain_ingest_merge_solve_report_equals_serial_and_a_failed_first_job_cancels_the_rest(cluster,
                                                                                                     tmp_path):
    case, files = stilt_case(tmp_path)
    config, store = case / "config.toml", case / "data" / "footprints.h5"
    manifest = tmp_path / "manifest.txt"
    assert tanhui("manifest", str(tmp_path / "stilt" / "*" / "*_foot.nc"), "--out", str(manifest)) == 0
    assert sorted(line for line in manifest.read_text().splitlines() if not line.startswith("#")) == \
        sorted(map(str, files))
    # the serial reference on the same inputs: ingestion, then the run
    assert tanhui("ingest", str(manifest), "--out", str(store), "--grid", str(config), "--time", f"{config},6h",
                  "--truncate", "--comm", "serial") == 0
    assert cli_main(["run", str(case), "--comm", "serial", "--output-dir", str(tmp_path / "serial"),
                     "--no-report"]) == 0
    store.rename(tmp_path / "serial.h5")  # the chain writes the store afresh

    profile = tmp_path / "profile.toml"
    profile.write_text('[site]\nmpi = "pmi2"\n[ingest]\nparts = 4\ntime_step = "6h"\nargs = ["--truncate"]\n'
                       '[solve]\nntasks = 2\nsignal_seconds = 60\n')
    submit = [sys.executable, "-m", "inversion", "submit", str(case), "--profile", str(profile),
              "--slurm-dir", str(SLURM_DIR), "--ingest", str(manifest)]
    proc = subprocess.run(submit, capture_output=True, text=True, env=cluster, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    jobs = dict(line.split() for line in proc.stdout.splitlines())
    assert list(jobs) == ["ingest", "merge", "solve", "report"]
    for previous, step in zip(jobs, list(jobs)[1:]):  # each job waits for the previous one (until it is done)
        dependency = job_field(cluster, jobs[step], "Dependency")
        assert dependency == "(null)" or dependency.startswith(f"afterok:{jobs[previous]}"), (step, dependency)
    states = wait_for_jobs(cluster, list(jobs.values()))
    assert states == dict.fromkeys(jobs.values(), "COMPLETED"), logs(tmp_path)
    assert all(job_state(cluster, job)[1] == "0:0" for job in jobs.values())
    assert len(list((tmp_path / "logs").glob("tanhui-ingest-*_*.out"))) == 4  # four array tasks ran
    assert_same_store(store, tmp_path / "serial.h5")
    assert json.loads((case / "output" / "diagnostics.json").read_text())["ranks"] == 2  # one world of two ranks
    serial, chained = posterior(tmp_path / "serial"), posterior(case / "output")
    for name in serial:
        scale = np.max(np.abs(serial[name])) or 1.0
        np.testing.assert_allclose(chained[name], serial[name], rtol=0, atol=1e-10 * scale, err_msg=name)
    assert (case / "output" / "report").is_dir()

    # a manifest that does not exist: every ingest task fails, merge, solve and report are cancelled
    submit[-1] = str(tmp_path / "missing-manifest.txt")
    profile.write_text(profile.read_text().replace("parts = 4", "parts = 2"))
    proc = subprocess.run(submit, capture_output=True, text=True, env=cluster, cwd=tmp_path, timeout=60)
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
#SBATCH {requeue}
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1
exec srun --mpi=pmi2 {python} -m mpi4py {script} {case} {out} {directory} --expect-size 2 --every 3 --sleep 0.2 \\
    --log-dir "logs/{name}-$SLURM_JOB_ID.ranks"
"""


def test_scancel_term_mid_iteration_checkpoints_and_the_resubmitted_job_finishes(cluster, case, tmp_path, capsys):
    """The same checkpointed solve as `tanhui run` (tests/checkpoint_solve.py), slowed to 0.2 s per
    Hessian product so that Slurm's SIGTERM lands mid-iteration."""
    directory = tmp_path / "ck"
    script = tmp_path / "sleepy.sbatch"

    def submit(out: Path, name: str) -> subprocess.Popen:
        script.write_text(SLEEPY.format(name=name, python=sys.executable, script=REPO / "tests" / "checkpoint_solve.py",
                                        case=case, out=out, directory=directory, requeue="--no-requeue"))
        (tmp_path / "logs").mkdir(exist_ok=True)
        return subprocess.Popen(["sbatch", "--wait", "--parsable", str(script)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=cluster, cwd=tmp_path)

    reference = solve_case(case, SerialComm(), tmp_path / "serial")
    name = f"tanhui-sleepy-{os.getpid()}"  # unique: another test run may share the cluster
    first = submit(tmp_path / "first.json", f"{name}-1")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (directory / FILE_NAME).exists():  # the job is iterating
        assert first.poll() is None and time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.05)
    job = subprocess.run(["squeue", "-h", "-o", "%i", "-n", f"{name}-1"], capture_output=True, text=True,
                         env=cluster).stdout.strip()
    t_signal = time.monotonic()
    subprocess.run(["scancel", "--signal=TERM", job], check=True, env=cluster)
    first.communicate(timeout=JOB_TIMEOUT)
    t_end = time.monotonic()
    assert first.returncode == EXIT_CHECKPOINTED, logs(tmp_path)
    stopped = json.loads((tmp_path / "first.json").read_text())
    assert stopped["status"] == "stopped" and stopped["sizes"] == [2, 2]
    assert stopped["reason"] == "signal SIGTERM (on 2 of 2 rank(s))"  # srun forwarded it to both ranks
    assert f"Slurm job {job} was submitted with --no-requeue: not requeued" in logs(tmp_path)

    second = submit(tmp_path / "second.json", f"{name}-2")
    second.communicate(timeout=JOB_TIMEOUT)
    t_done = time.monotonic()
    assert second.returncode == 0, logs(tmp_path)
    resumed = json.loads((tmp_path / "second.json").read_text())
    assert resumed["status"] == "done" and resumed["sizes"] == [2, 2]
    for key in ("x_a", "posterior_sd", "aggregate_sd"):
        ref = np.asarray(reference[key])
        np.testing.assert_allclose(resumed[key], ref, rtol=0, atol=1e-10 * np.max(np.abs(ref)), err_msg=key)

    second_log = next((tmp_path / "logs").glob(f"{name}-2-*.ranks")) / "rank-0.log"
    resumed_from = int(re.search(r"resuming the variational solve from \S+ \(CG iteration (\d+)",
                                 second_log.read_text()).group(1))
    assert resumed_from == stopped["iteration"] > 0  # nothing redone: the checkpoint is the stop
    with capsys.disabled():
        print(f"\npreemption (resubmitted): stopped at CG iteration {stopped['iteration']} "
              f"(of {resumed['iterations']}), "
              f"resumed from {resumed_from}; scancel → job end {t_end - t_signal:.1f} s; the resubmitted job "
              f"{t_done - t_end:.1f} s (start-up included)")


def test_a_signalled_solve_requeues_its_own_job_which_resumes_to_the_same_answer(cluster, case, tmp_path, capsys):
    """``scancel --signal=USR1`` mid-iteration: rank 0 writes the checkpoint and requeues the job
    (``scontrol requeue``, :mod:`inversion.requeue`, as ``tanhui run`` does); the requeued job
    (``SLURM_RESTART_COUNT=1``) resumes from that iteration and ends with the uninterrupted answer.
    Slurm holds a requeued job for about 2 minutes (EligibleTime); the test releases it at once
    (``scontrol update StartTime=now``) and reports that delay separately."""
    directory = tmp_path / "ck"
    name = "tanhui-requeue"
    script = tmp_path / "requeue.sbatch"
    out = tmp_path / "run-${SLURM_RESTART_COUNT:-0}.json"  # one result file per run of the job
    script.write_text(SLEEPY.format(name=name, python=sys.executable, script=REPO / "tests" / "checkpoint_solve.py",
                                    case=case, out=out, directory=directory, requeue="--requeue"))
    reference = solve_case(case, SerialComm(), tmp_path / "serial")
    proc = sbatch(cluster, tmp_path, "--parsable", str(script), wait=False)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip()
    rank0 = tmp_path / "logs" / f"{name}-{job}.ranks" / "rank-0.log"
    deadline = time.monotonic() + JOB_TIMEOUT
    while not (directory / FILE_NAME).exists():  # the job is iterating
        assert job_state(cluster, job)[0] in ("PENDING", "RUNNING") and time.monotonic() < deadline, logs(tmp_path)
        time.sleep(0.05)
    t_signal = time.monotonic()
    subprocess.run(["scancel", "--signal=USR1", job], check=True, env=cluster)
    while (fields := job_fields(cluster, job)).get("Restarts") != "1" or fields["JobState"] != "PENDING":
        assert fields.get("JobState") in ("RUNNING", "COMPLETING", "PENDING") and time.monotonic() < deadline, \
            (fields.get("JobState"), logs(tmp_path))
        time.sleep(0.1)
    t_requeued = time.monotonic()
    eligible = np.datetime64(fields["EligibleTime"]) - np.datetime64(time.strftime("%Y-%m-%dT%H:%M:%S"))
    # slurmd refuses a job credential issued in the second the job was killed ("Job credential revoked")
    time.sleep(REQUEUE_RELEASE_S)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, env=cluster)
    t_resume = None
    while (state := job_state(cluster, job)[0]) != "COMPLETED":
        assert state in ("PENDING", "RUNNING", "COMPLETING") and time.monotonic() < deadline, (state, logs(tmp_path))
        if t_resume is None and "resuming the variational solve" in rank0.read_text():
            t_resume = time.monotonic()
        time.sleep(0.1)
    t_resume = t_resume or time.monotonic()
    assert job_state(cluster, job)[1] == "0:0"

    first = json.loads((tmp_path / "run-0.json").read_text())
    assert first["status"] == "stopped" and first["sizes"] == [2, 2] and first["slurm_restart_count"] is None
    assert first["reason"] == "signal SIGUSR1 (on 2 of 2 rank(s))"  # srun forwarded it to both ranks
    log = rank0.read_text()
    assert f"requeueing it with `scontrol requeue {job}`" in log
    resumed_from = int(re.search(r"resuming the variational solve from \S+ \(CG iteration (\d+)", log).group(1))
    assert resumed_from == first["iteration"] > 0  # nothing redone: the checkpoint is the stop
    second = json.loads((tmp_path / "run-1.json").read_text())
    assert second["status"] == "done" and second["sizes"] == [2, 2] and second["slurm_restart_count"] == "1"
    for key in ("x_a", "posterior_sd", "aggregate_sd"):
        ref = np.asarray(reference[key])
        np.testing.assert_allclose(second[key], ref, rtol=0, atol=1e-10 * np.max(np.abs(ref)), err_msg=key)
    with capsys.disabled():
        print(f"\nself-requeue: stopped at CG iteration {first['iteration']} (of {second['iterations']}), resumed "
              f"from {resumed_from} (0 redone); signal → job requeued {t_requeued - t_signal:.1f} s, → resumed "
              f"{t_resume - t_signal:.1f} s without Slurm's requeue hold of {eligible / np.timedelta64(1, 's'):.0f} s")


def test_a_rank_failing_on_bad_input_ends_the_two_rank_job_with_a_non_zero_exit_code(cluster, case, tmp_path):
    """A footprint row of rank 1's block (of 2) is NaN — a real input error only rank 1 meets:
    the whole job ends (MPI_Abort; no rank left waiting in a collective) with a non-zero exit
    code, and rank 1's log names the rank, the file, the variable, the observation and the
    checkpoint state."""
    bad = Path(shutil.copytree(case, tmp_path / "case", ignore=shutil.ignore_patterns("output")))
    store = bad / "data" / "footprints.h5"
    obs = open_inputs(load_config(bad)).obs  # ordered by store row, split in contiguous blocks over the ranks
    start, stop = partition(obs.sizes["obs"], 2, 1)
    rows = np.asarray(obs["row"].values)
    with h5py.File(store, "r+") as f:
        indptr = f["footprint/indptr"][()]
        row = int(rows[(start + stop) // 2])
        k = int((indptr[row] + indptr[row + 1]) // 2)
        assert indptr[row] < indptr[row + 1]
        assert not any(indptr[r] <= k < indptr[r + 1] for r in rows[:start])  # rank 0's rows stay clean
        f["footprint/data"][k] = np.nan
        bad_id = f["obs/obs_id"].asstr()[row]

    proc = sbatch(cluster, tmp_path, "--parsable", "--ntasks=2", str(SLURM_DIR / "solve.sbatch"), str(bad),
                  "--output-dir", str(tmp_path / "out"))  # a hang would fail on JOB_TIMEOUT
    job = proc.stdout.strip().split(";")[0]
    assert proc.returncode != 0, logs(tmp_path)
    state, exit_code = job_state(cluster, job)
    assert state == "FAILED" and exit_code != "0:0", (state, exit_code)
    ranks = tmp_path / "logs" / f"tanhui-solve-{job}.ranks"
    assert sorted(p.name for p in ranks.glob("rank-*.log")) == ["rank-0.log", "rank-1.log"]  # one world of 2
    failed = (ranks / "rank-1.log").read_text()
    assert "ERROR [rank 1/2]" in failed
    assert str(store) in failed and "footprint/data" in failed and bad_id in failed
    assert "no checkpoint written" in failed
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
