"""Checkpoint and resume of the variational solver (serial): a resumed solve repeats the
uninterrupted one bit for bit, a real SIGTERM mid-iteration stops it after a checkpoint,
a changed config or input is refused by name, and ``tanhui run`` exits 75 then resumes."""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from inversion.checkpoint import FILE_NAME, STOP_FILE
from inversion.cli import main as cli_main
from inversion.commands import EXIT_BAD_INPUT, EXIT_CHECKPOINTED, EXIT_OK
from inversion.parallel import SerialComm
from transport.errors import InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.casegen import make_case  # noqa: E402
from tests.checkpoint_solve import solve_case  # noqa: E402


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    return make_case(tmp_path_factory.mktemp("ckpt") / "case", method="variational")


@pytest.fixture
def case(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "case"))


def assert_same(a: dict, b: dict) -> None:
    for key in ("x_a", "posterior_sd", "posterior", "aggregate_sd"):
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)  # bit-identical, same rank count
    assert a["iterations"] == b["iterations"]


def test_resumed_solve_equals_the_uninterrupted_one_bit_for_bit(case, tmp_path):
    comm = SerialComm()
    reference = solve_case(case, comm, tmp_path / "ref")
    assert reference["status"] == "done" and reference["iterations"] > 6
    stopped = solve_case(case, comm, tmp_path / "ck", every=0, stop_after=4)
    assert stopped == {"status": "stopped", "iteration": 4, "reason": "--stop-after 4 (on 1 of 1 rank(s))", "size": 1}
    with h5py.File(tmp_path / "ck" / FILE_NAME) as f:
        assert f.attrs["scalars"] and f["x"].shape == (len(reference["x_a"]),) and f["lanczos"].shape[0] == 5
        assert "config" in f.attrs["fingerprint"] and "transport.footprints" in f.attrs["fingerprint"]
    stopped_again = solve_case(case, comm, tmp_path / "ck", every=0, stop_after=6)  # resumes, stops again
    assert stopped_again["iteration"] == 6
    assert_same(solve_case(case, comm, tmp_path / "ck"), reference)


def test_a_real_sigterm_mid_iteration_checkpoints_then_resumes(case, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    stopped = solve_case(case, SerialComm(), tmp_path / "ck", every=100, signal_at=5)
    assert stopped["status"] == "stopped" and stopped["reason"].startswith("signal SIGTERM")
    assert signal.getsignal(signal.SIGTERM) is before  # the solver's handler is gone after the solve
    assert (tmp_path / "ck" / FILE_NAME).is_file()
    assert_same(solve_case(case, SerialComm(), tmp_path / "ck"), solve_case(case, SerialComm(), tmp_path / "ref"))


def test_sigusr1_and_a_stop_file_also_stop_the_solve(case, tmp_path):
    assert solve_case(case, SerialComm(), tmp_path / "a", signal_at=3, signal_name="USR1")["reason"].startswith(
        "signal SIGUSR1")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / STOP_FILE).touch()
    stopped = solve_case(case, SerialComm(), tmp_path / "b")
    assert stopped["iteration"] == 1 and stopped["reason"].startswith("stop file")


def test_resume_is_refused_after_an_input_or_config_change(case, tmp_path):
    assert solve_case(case, SerialComm(), tmp_path / "ck", stop_after=3)["status"] == "stopped"
    obs_file = case / "data" / "observations.nc"
    obs = xr.load_dataset(obs_file, engine="h5netcdf")
    obs["value"] = obs["value"] * (1 + 1e-9)  # attributes (units) kept
    obs.to_netcdf(obs_file, engine="h5netcdf")
    with pytest.raises(InputError, match=r"observations\.file \(.*observations\.nc\) changed: sha256") as err:
        solve_case(case, SerialComm(), tmp_path / "ck")
    assert "--restart" in str(err.value)
    config = case / "config.toml"
    config.write_text(config.read_text().replace("max_iterations = 400", "max_iterations = 399"))
    with pytest.raises(InputError, match=r"config \(.*config\.toml\) changed"):
        solve_case(case, SerialComm(), tmp_path / "ck")


def test_a_foreign_file_is_not_resumed(case, tmp_path):
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / FILE_NAME).write_bytes(b"not HDF5")
    with pytest.raises(InputError, match="cannot read the checkpoint"):
        solve_case(case, SerialComm(), tmp_path / "ck")


def _posterior(out: Path) -> dict[str, np.ndarray]:
    with xr.open_dataset(out / "posterior_state.nc", engine="h5netcdf") as ds:
        return {name: ds[name].values for name in ds.data_vars}


def test_cli_exits_75_then_resumes_to_the_same_outputs(case, tmp_path, capsys):
    assert cli_main(["run", str(case), "--comm", "serial", "--output-dir", str(tmp_path / "ref")]) == EXIT_OK
    out = tmp_path / "out"
    args = ["run", str(case), "--comm", "serial", "--output-dir", str(out), "--log-dir", str(tmp_path / "logs")]
    assert cli_main([*args, "--stop-after", "3"]) == EXIT_CHECKPOINTED
    assert (out / "checkpoint" / FILE_NAME).is_file() and not (out / "posterior_state.nc").exists()
    log = (tmp_path / "logs" / "rank-0.log").read_text()
    assert "checkpoint at CG iteration 3 written" in log and "[rank 0/1]" in log
    assert cli_main(args) == EXIT_OK
    assert "resuming the variational solve" in (tmp_path / "logs" / "rank-0.log").read_text()
    assert not (out / "checkpoint").exists()  # removed once the outputs are written
    ref, got = _posterior(tmp_path / "ref"), _posterior(out)
    assert ref.keys() == got.keys()
    for name in ref:
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


def test_cli_refuses_a_changed_config_with_exit_2_and_restart_discards(case, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["run", str(case), "--comm", "serial", "--output-dir", str(out)]
    assert cli_main([*args, "--stop-after", "2"]) == EXIT_CHECKPOINTED
    config = case / "config.toml"
    config.write_text(config.read_text().replace("tolerance = 1e-12", "tolerance = 1e-10"))
    capsys.readouterr()
    assert cli_main(args) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "config.toml) changed" in err and "checkpoint belongs to a different run" in err
    assert cli_main([*args, "--restart"]) == EXIT_OK
    assert (out / "posterior_state.nc").is_file()


def test_the_signal_handler_only_sets_a_flag(tmp_path):
    from inversion.checkpoint import StopRequest

    with StopRequest(stop_after=None) as stop:
        assert stop.reason(0) is None
        os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.reason(0) == "signal SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
