"""Checkpoint and resume of the analytical solver's block accumulation (serial), and signals
outside the solver in ``tanhui run``: a stopped-and-resumed factorisation equals the
uninterrupted one (bit for bit with the same blocks), a saved factor is reused without
accumulating again, a changed config is refused, and a signal during the input reading stops
the run with exit 75 while one during the output writing lets it finish."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from inversion import factorisation, outputs
from inversion.accumulation import pending_blocks
from inversion.checkpoint import KINDS, STOP_FILE, StopRequest
from inversion.cli import main as cli_main
from inversion.commands import EXIT_BAD_INPUT, EXIT_CHECKPOINTED, EXIT_OK
from inversion.parallel import SerialComm
from transport.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from tests.casegen import make_case  # noqa: E402
from tests.checkpoint_solve import solve_case  # noqa: E402

FILE = KINDS["analytical"].file_name
KEYS = ("x_a", "posterior_sd", "posterior", "aggregate_sd")
N_OBS = 72  # the tiny case: 3 sites × 3 hours × 8 days


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("ackpt") / "case")


@pytest.fixture
def case(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "case"))


@pytest.fixture(scope="module")
def references(template, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("aref")
    return {form: solve_case(template, SerialComm(), tmp / form, analytical=form, block_rows=10)
            for form in ("state", "observation")}


def same(a: dict, b: dict) -> None:
    for key in KEYS:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_pending_blocks_cover_exactly_the_rows_not_done():
    done = np.zeros(20, dtype=bool)
    done[3:7] = True
    done[12] = True
    blocks = pending_blocks(done, 2, 16, 3)
    assert all(i1 - i0 <= 3 for i0, i1 in blocks)
    rows = np.concatenate([np.arange(i0, i1) for i0, i1 in blocks])
    np.testing.assert_array_equal(rows, [2, 7, 8, 9, 10, 11, 13, 14, 15])
    assert pending_blocks(np.ones(5, dtype=bool), 0, 5, 2) == []


@pytest.mark.parametrize("form", ["state", "observation"])
def test_stopped_then_resumed_factorisation_equals_the_uninterrupted_one(form, case, references, tmp_path):
    reference = references[form]
    assert reference["status"] == "done" and reference["last_saved"] == 8  # ⌈72 / 10⌉ steps, then the factor
    stopped = solve_case(case, SerialComm(), tmp_path / "ck", analytical=form, block_rows=10, every=0, stop_after=3)
    assert stopped == {"status": "stopped", "iteration": 3, "reason": "--stop-after 3 (on 1 of 1 rank(s))", "size": 1}
    with h5py.File(tmp_path / "ck" / FILE) as f:
        assert f.attrs["solver"] == "analytical" and "config" in f.attrs["fingerprint"]
        done = f["done"][()].astype(bool)
        np.testing.assert_array_equal(np.flatnonzero(done), np.arange(30))  # three blocks of ten rows
        assert f["total"].shape == ((11, 11) if form == "state" else (N_OBS, N_OBS))
        if form == "observation":  # the rows not yet accumulated are zero, the others are not
            assert not f["total"][30:].any() and np.all(np.any(f["total"][:30] != 0, axis=1))
    # a SIGTERM in the middle of the second block of the next run: it finishes the block, saves, stops
    again = solve_case(case, SerialComm(), tmp_path / "ck", analytical=form, block_rows=10, every=0, signal_at=2)
    assert again["iteration"] == 5 and again["reason"] == "signal SIGTERM (on 1 of 1 rank(s))"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone after the solve
    same(solve_case(case, SerialComm(), tmp_path / "ck", analytical=form, block_rows=10), reference)


@pytest.mark.parametrize("form", ["state", "observation"])
def test_resume_with_another_block_size_equals_to_rounding(form, case, references, tmp_path):
    assert solve_case(case, SerialComm(), tmp_path / "ck", analytical=form, block_rows=7, stop_after=4,
                      every=2)["iteration"] == 4
    resumed = solve_case(case, SerialComm(), tmp_path / "ck", analytical=form, block_rows=25)
    for key in KEYS:
        ref = np.asarray(references[form][key])
        np.testing.assert_allclose(resumed[key], ref, rtol=0, atol=1e-10 * np.max(np.abs(ref)), err_msg=key)


def test_a_saved_factor_is_resumed_without_accumulating_again(case, references, tmp_path, monkeypatch):
    """A signal during the Cholesky factorisation: the factor is saved, then the run stops; the
    resumed run starts from the factor (no block is accumulated again)."""
    cholesky = factorisation.cholesky_lower

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return cholesky(*args, **kwargs)

    monkeypatch.setattr(factorisation, "cholesky_lower", signalled)
    stopped = solve_case(case, SerialComm(), tmp_path / "ck", analytical="state", block_rows=10, every=0)
    assert stopped["iteration"] is None and stopped["reason"] == "signal SIGUSR1 (on 1 of 1 rank(s))"
    with h5py.File(tmp_path / "ck" / FILE) as f:
        assert f["done"][()].all() and '"factored": true' in f.attrs["scalars"]
    monkeypatch.setattr(factorisation, "cholesky_lower", cholesky)
    blocks = []
    add = factorisation._add_weighted_gram
    monkeypatch.setattr(factorisation, "_add_weighted_gram", lambda *a: blocks.append(a) or add(*a))
    resumed = solve_case(case, SerialComm(), tmp_path / "ck", analytical="state", block_rows=10)
    assert blocks == []
    same(resumed, references["state"])


def test_resume_is_refused_after_a_config_or_form_change(case, tmp_path):
    assert solve_case(case, SerialComm(), tmp_path / "ck", analytical="state", block_rows=10,
                      stop_after=2)["status"] == "stopped"
    with pytest.raises(InputError, match="solver settings changed: method=analytical form=state → "
                                         "method=analytical form=observation"):
        solve_case(case, SerialComm(), tmp_path / "ck", analytical="observation", block_rows=10)
    config = case / "config.toml"
    config.write_text(config.read_text().replace('sigma = 0.5', 'sigma = 0.6'))
    with pytest.raises(InputError, match=r"config \(.*config\.toml\) changed: sha256") as err:
        solve_case(case, SerialComm(), tmp_path / "ck", analytical="state", block_rows=10)
    assert "--restart" in str(err.value)


def _posterior(out: Path) -> dict[str, np.ndarray]:
    with xr.open_dataset(out / "posterior_state.nc", engine="h5netcdf") as ds:
        return {name: ds[name].values for name in ds.data_vars}


def _set_blocks(case: Path, rows: int) -> None:
    config = case / "config.toml"
    config.write_text(config.read_text().replace("[solver]\n", f"[solver]\nblock_rows = {rows}\n"))


def test_cli_exits_75_then_resumes_the_analytical_solve_and_refuses_a_changed_config(case, tmp_path):
    _set_blocks(case, 16)
    base = ["run", str(case), "--comm", "serial", "--no-report"]
    assert cli_main([*base, "--output-dir", str(tmp_path / "ref")]) == EXIT_OK
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = [*base, "--output-dir", str(out), "--log-dir", str(logs)]
    assert cli_main([*args, "--stop-after", "2"]) == EXIT_CHECKPOINTED
    assert (out / "checkpoint" / FILE).is_file() and not (out / "posterior_state.nc").exists()
    text = (logs / "rank-0.log").read_text()
    assert "checkpoint at accumulation step 2 written" in text and "stopped at accumulation step 2" in text
    config = case / "config.toml"
    original = config.read_text()
    config.write_text(original.replace("block_rows = 16", "block_rows = 17"))
    assert cli_main(args) == EXIT_BAD_INPUT  # any config change is refused, even the block size
    config.write_text(original)
    assert cli_main(args) == EXIT_OK
    assert "resuming the analytical solve" in (logs / "rank-0.log").read_text()
    assert not (out / "checkpoint").exists()  # removed once the outputs are written
    ref, got = _posterior(tmp_path / "ref"), _posterior(out)
    assert ref.keys() == got.keys()
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_a_stop_file_before_the_solve_stops_with_nothing_checkpointed(case, tmp_path):
    out, logs = tmp_path / "out", tmp_path / "logs"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / STOP_FILE).touch()
    args = ["run", str(case), "--comm", "serial", "--no-report", "--output-dir", str(out), "--log-dir", str(logs)]
    assert cli_main(args) == EXIT_CHECKPOINTED
    text = (logs / "rank-0.log").read_text()
    assert "stopped after the input reading, before the solve (stop file" in text
    assert "nothing was checkpointed yet: the run can simply be resubmitted" in text
    assert not (out / "checkpoint" / FILE).exists() and not (out / "posterior_state.nc").exists()


def test_sigterm_to_a_run_blocked_in_build_problem_exits_75(case, tmp_path):
    """The signal is sent from outside while the run waits (test hook) inside build_problem."""
    fifo, out, logs = tmp_path / "fifo", tmp_path / "out", tmp_path / "logs"
    os.mkfifo(fifo)
    command = [sys.executable, str(ROOT / "tests" / "signalled_run.py"), "build_problem", f"wait:{fifo}", "--",
               str(case), "--comm", "serial", "--no-report", "--output-dir", str(out), "--log-dir", str(logs)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        log = logs / "rank-0.log"
        while not (log.exists() and "hook: waiting in build_problem" in log.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)  # the handler runs while open() blocks; then release the hook
        with open(fifo, "w") as pipe:
            pipe.write("go\n")
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_CHECKPOINTED, err
    assert ("stopped after the building of the problem, before the solve (signal SIGTERM (on 1 of 1 rank(s))); "
            "nothing was checkpointed yet") in err
    assert not (out / "posterior_state.nc").exists() and not (out / "checkpoint" / FILE).exists()


def test_a_signal_during_the_output_writing_lets_the_run_finish(case, tmp_path, monkeypatch):
    write = outputs.write_outputs

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # would kill the process without the run's handler
        return write(*args, **kwargs)

    monkeypatch.setattr(outputs, "write_outputs", signalled)
    out, logs = tmp_path / "out", tmp_path / "logs"
    args = ["run", str(case), "--comm", "serial", "--no-report", "--output-dir", str(out), "--log-dir", str(logs)]
    assert cli_main(args) == EXIT_OK
    assert (out / "posterior_state.nc").is_file() and (out / "diagnostics.json").is_file()
    assert "signal SIGTERM arrived after the solve had completed" in (logs / "rank-0.log").read_text()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_stop_request_is_reentrant():
    stop = StopRequest()
    with stop:
        with stop:
            pass
        assert signal.getsignal(signal.SIGTERM) == stop._handler  # still held by the outer ``with``
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason(None) == "signal SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_factorise_resumes_a_dense_operator_and_refuses_a_checkpoint_of_the_other_form(tmp_path):
    """The library call itself (dense H, a dense B): stopped after one step, resumed to the same
    factor as without a checkpointer; a checkpoint of the state form is not resumed as the
    observation form (``auto`` may resolve differently on another machine)."""
    from inversion.checkpoint import Checkpointer, Stopped
    from inversion.covariance import Dense

    rng = np.random.default_rng(3)
    n, m = 6, 23
    X = rng.normal(size=(n, n))
    B = Dense(X @ X.T + n * np.eye(n))
    H, r = rng.normal(size=(m, n)), rng.uniform(0.5, 2.0, m)
    plain = factorisation.factorise(H, B, r, SerialComm(), n_obs=m, form="state", block_rows=5)

    def checkpointer(stop_after=None):
        return Checkpointer(tmp_path, SerialComm(), {"case": "synthetic"}, every=0,
                            stop=StopRequest(stop_after=stop_after), kind="analytical")

    with pytest.raises(Stopped, match="stopped at accumulation step 1"):
        factorisation.factorise(H, B, r, SerialComm(), n_obs=m, form="state", block_rows=5,
                                checkpoint=checkpointer(stop_after=1))
    with pytest.raises(InputError, match="the checkpoint holds the state form for 23 observations, this run needs "
                                         "the observation form for 23"):
        factorisation.factorise(H, B, r, SerialComm(), n_obs=m, form="observation", checkpoint=checkpointer())
    resumed = factorisation.factorise(H, B, r, SerialComm(), n_obs=m, form="state", block_rows=5,
                                      checkpoint=checkpointer())
    np.testing.assert_array_equal(resumed.C, plain.C)
    assert resumed.logdet == plain.logdet
    S = H @ B.dense() @ H.T + np.diag(r)  # the textbook log det S
    assert resumed.logdet == pytest.approx(np.linalg.slogdet(S)[1], rel=1e-12)
