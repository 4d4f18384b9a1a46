"""Calibration by twin experiments (inversion.osse, ``tanhui osse``).

* The one-factorisation, many-right-hand-sides posterior means equal full analytical solves of
  the same synthetic observations (both forms).
* 400 realisations of a correctly specified twin: the empirical coverage of the 68 % and 95 %
  intervals (mean over state elements, mean over region totals, the domain total) lies inside
  the 99.9 % binomial interval of Binomial(400, q)/400 (exact for one quantity, conservative
  for a mean over correlated elements); the mean χ²/n inside the 99.9 % interval of
  χ²(400 n)/(400 n); RMSE/σ inside the 99.9 % interval of √(χ²(400)/400).
* The inversion assuming R × 0.25 is detected: coverage below the interval, χ²/n ≈ 4.
* Results depend on the seed only (not on the batch size); the command writes the tables.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json

import numpy as np
import pytest
from scipy import stats

from inversion.cli import main as cli_main
from inversion.commands import EXIT_BAD_INPUT, EXIT_OK
from inversion.config import load_config
from inversion.factorisation import factorise
from inversion.osse import Misspecification, binomial_interval, run_osse
from inversion.parallel import SerialComm
from inversion.problem import build_problem
from inversion.solvers import solve_analytical
from tests.casegen import make_case

N = 400


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """4 periods × 6 regions + 3 offsets = 27 elements, 72 observations."""
    return make_case(tmp_path_factory.mktemp("osse") / "case", seed=12, blocks="[2, 3]", period_days=2)


@pytest.fixture(scope="module")
def problem(case):
    return build_problem(load_config(case), SerialComm())


@pytest.fixture(scope="module")
def calibrated(problem):
    return run_osse(problem, N, seed=7)


@pytest.fixture(scope="module")
def misspecified(problem):
    return run_osse(problem, N, seed=7, misspecify=Misspecification(R=0.25))


@pytest.mark.parametrize("form", ["state", "observation"])
def test_many_right_hand_sides_equal_full_solves(problem, form):
    H = problem.H.jacobian_local()
    fac = factorise(H, problem.B, problem.R.variance(), SerialComm(), n_obs=problem.n_obs, form=form)
    D = np.random.default_rng(0).standard_normal((problem.n_obs, 3)) * np.sqrt(problem.R.variance())[:, None]
    increments = fac.increments(D)
    A = fac.posterior_covariance()
    for k in range(3):
        y = problem.H.matvec(problem.x_b) + D[:, k]
        post = solve_analytical(dataclasses.replace(problem, y=y), form=form)
        scale = np.sqrt(np.diag(post.covariance.dense()))  # standardised: offsets are ~1e-6 of the factors
        np.testing.assert_allclose((increments[:, k] - (post.x_a - post.x_b)) / scale, 0, atol=1e-8)
        assert fac.quadratic(D[:, [k]])[0] == pytest.approx(post.diagnostics["chi2"], rel=1e-8)
    np.testing.assert_allclose(A / np.outer(scale, scale), post.covariance.dense() / np.outer(scale, scale), atol=1e-8)


def test_correctly_specified_twin_is_calibrated(calibrated, problem):
    s = calibrated.summary
    assert s["n_realisations"] == N and len(calibrated.realisations) == N
    for q in (0.68, 0.95):
        lo, hi = binomial_interval(N, q)
        assert (lo, hi) == tuple(s["binomial_interval_999"][str(q)])
        assert lo < q < hi and hi - lo < 0.2
        for what in ("state_mean", "totals_mean", "domain_total"):
            assert lo <= s["coverage"][what][str(q)] <= hi, (what, q, s["coverage"][what][str(q)])
    m = problem.n_obs
    c = s["chi2_per_obs"]
    assert stats.chi2.ppf(0.0005, N * m) / (N * m) <= c["mean"] <= stats.chi2.ppf(0.9995, N * m) / (N * m)
    assert c["sd"] == pytest.approx(np.sqrt(2 / m), rel=0.25)
    r_lo, r_hi = np.sqrt(stats.chi2.ppf([0.0005, 0.9995], N) / N)
    for key in ("state_median", "totals_median", "domain_total"):
        assert r_lo <= s["rmse_over_sd"][key] <= r_hi, (key, s["rmse_over_sd"][key])
    assert s["calibrated"] is True


def test_misspecified_R_is_detected(misspecified, calibrated):
    s = misspecified.summary
    assert s["misspecification"] == {"R": 0.25, "B": 1.0}
    for q in (0.68, 0.95):
        lo, _ = s["binomial_interval_999"][str(q)]
        assert s["coverage"]["state_mean"][str(q)] < lo
        assert s["coverage"]["totals_mean"][str(q)] < lo
    assert s["chi2_per_obs"]["mean"] > s["chi2_per_obs"]["mean_range_999"][1]
    assert s["rmse_over_sd"]["state_median"] > 1.3
    assert s["calibrated"] is False and not s["checks"]["chi2_mean"]
    # same truths and noise as the calibrated run (same seed): only the assumed errors differ
    assert [r["realisation"] for r in misspecified.realisations] == [r["realisation"] for r in calibrated.realisations]


def test_results_depend_on_the_seed_not_on_the_batch_size(problem, calibrated):
    again = run_osse(problem, N, seed=7, batch=33)
    assert again.summary["coverage"] == calibrated.summary["coverage"]
    np.testing.assert_allclose([r["chi2_per_obs"] for r in again.realisations],
                               [r["chi2_per_obs"] for r in calibrated.realisations], rtol=1e-12)
    other = run_osse(problem, 50, seed=8)
    assert other.realisations[0]["chi2_per_obs"] != calibrated.realisations[0]["chi2_per_obs"]


def test_misspecification_parsing():
    assert Misspecification.parse(["R=0.25", "B=4"]) == Misspecification(R=0.25, B=4.0)
    for bad in (["R=0"], ["R=-1"], ["X=2"], ["R"], ["R=abc"]):
        with pytest.raises(ValueError, match="R=FACTOR"):
            Misspecification.parse(bad)


def test_osse_command(case, tmp_path, capsys):
    out = tmp_path / "osse"
    code = cli_main(["osse", str(case), "--n", "40", "--misspecify", "R=0.25", "--output-dir", str(out),
                     "--comm", "serial"])
    assert code == EXIT_OK
    summary = json.loads((out / "osse_summary.json").read_text())
    assert summary["n_realisations"] == 40 and summary["misspecification"]["R"] == 0.25
    with open(out / "osse_realisations.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["realisation"]) for r in rows] == list(range(40))
    with open(out / "osse_elements.csv") as fh:
        kinds = {r["kind"] for r in csv.DictReader(fh)}
    assert kinds == {"state", "total"}
    printed = capsys.readouterr()
    assert "MISCALIBRATED" in printed.out
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "osse.png").stat().st_size > 10_000
    else:
        assert not (out / "osse.png").exists() and "matplotlib is not installed" in printed.err
    # bad input and existing outputs are refused with exit code 2
    assert cli_main(["osse", str(case), "--n", "5", "--misspecify", "R=zero", "--output-dir", str(tmp_path / "x"),
                     "--comm", "serial"]) == EXIT_BAD_INPUT
    assert cli_main(["osse", str(case), "--n", "5", "--output-dir", str(out), "--comm", "serial"]) == EXIT_BAD_INPUT
    assert "--overwrite" in capsys.readouterr().err
