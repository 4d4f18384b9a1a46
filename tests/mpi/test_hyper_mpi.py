"""``tanhui tune`` and ``tanhui osse`` under a real MPI launcher (2 ranks).

* tune: observations are distributed over the ranks and every reduction goes through the
  communicator, so the estimates and their uncertainties equal the serial run's (1e-8 relative:
  the optimiser sees sums in another order).
* osse: the ranks split the realisations, each with its own stream from one seed; every
  realisation appears exactly once, drawn by the rank that owns its block.
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from inversion.cli import main as cli_main
from inversion.parallel import partition
from tests.mpi.test_mpi import HAVE_MPI4PY, MPIEXEC, mpiexec

pytestmark = [
    pytest.mark.mpi,
    pytest.mark.skipif(not HAVE_MPI4PY, reason="mpi4py is not installed (pip install 'tanhui[mpi]')"),
    pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec beside the Python interpreter or on PATH"),
]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    from tests.casegen import make_case

    return make_case(tmp_path_factory.mktemp("hyper-mpi") / "case", seed=21, hours="[2, 4, 6, 8, 10]")


def test_tune_under_mpi_equals_serial(case, tmp_path, capsys):
    serial, parallel = tmp_path / "serial", tmp_path / "mpi"
    assert cli_main(["tune", str(case), "--output-dir", str(serial), "--comm", "serial"]) == 0
    capsys.readouterr()
    proc = mpiexec(2, sys.executable, "-m", "mpi4py", "-m", "inversion", "tune", str(case), "--output-dir",
                   str(parallel), cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    s = json.loads((serial / "hyper.json").read_text())
    m = json.loads((parallel / "hyper.json").read_text())
    assert (s["ranks"], m["ranks"]) == (1, 2)
    assert m["converged"] and s["converged"]
    for a, b in zip(s["parameters"], m["parameters"], strict=True):
        assert a["name"] == b["name"]
        for key in ("estimate", "sd"):
            assert b[key] == pytest.approx(a[key], rel=1e-8), (a["name"], key)
    assert [x["chi2_per_obs_final"] for x in m["sites"]] == pytest.approx(
        [x["chi2_per_obs_final"] for x in s["sites"]], rel=1e-8)


def test_osse_ranks_split_the_realisations(case, tmp_path):
    n = 41
    proc = mpiexec(2, sys.executable, "-m", "mpi4py", "-m", "inversion", "osse", str(case), "--n", str(n),
                   "--output-dir", str(tmp_path / "osse"), cwd=tmp_path)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads((tmp_path / "osse" / "osse_summary.json").read_text())
    assert summary["ranks"] == 2 and summary["n_realisations"] == n
    with open(tmp_path / "osse" / "osse_realisations.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["realisation"]) for r in rows] == list(range(n))
    for rank in (0, 1):
        start, stop = partition(n, 2, rank)
        assert {int(r["rank"]) for r in rows[start:stop]} == {rank}
    chi2 = np.array([float(r["chi2_per_obs"]) for r in rows])
    assert len(set(chi2.round(12))) == n  # independent streams: no realisation repeated across ranks
