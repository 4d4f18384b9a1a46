"""Type-II maximum likelihood of the error hyperparameters (inversion.hyper).

* the exact −log L equals scipy's multivariate normal log-density of the departures with S
  formed densely (both factorisation forms), and its analytic gradient equals central finite
  differences, for every kind of hyperparameter;
* on synthetic data generated from the model with chosen θ (σ ≠ the configured one, a
  different mismatch per site), the estimates recover θ within 2 of their reported standard
  errors for at least 80 % of 20 seeds (expected ≈ 95 % for a correct Laplace approximation);
* the stochastic method agrees with the exact one; tuned settings pasted into the config
  reproduce B(θ̂) and R(θ̂);
* bad input: bounds that make B or R singular, too few observations per site (refuse or pool),
  unknown names, an optimiser that does not converge (flag and exit code 3).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib

import numpy as np
import pytest
from scipy import stats

from inversion.cli import main as cli_main
from inversion.commands import EXIT_BAD_INPUT, EXIT_OK
from inversion.commands.tune import EXIT_NOT_CONVERGED
from inversion.config import ConfigError, load_config
from inversion.hyper import (
    Likelihood,
    plan_hyperparameters,
    settings_toml,
    site_counts,
    tune,
)
from inversion.parallel import SerialComm
from inversion.problem import build_problem, open_inputs, prior_covariance
from tests.casegen import make_case
from transport.errors import InputError

ALL_KINDS = ["sigma", "correlation_length", "correlation_time", "mismatch"]
TRUTH = {"sigma:bio": 0.8, "mismatch:AAA": 0.6e-6, "mismatch:BBB": 1.0e-6, "mismatch:CCC": 1.6e-6}


def with_hyper(config, **updates):
    return config.model_copy(update={"hyper": config.hyper.model_copy(update=updates)})


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """3 sites × 8 days × 10 hours = 240 observations; 4 periods × 9 regions + 3 offsets = 39 elements."""
    return make_case(tmp_path_factory.mktemp("hyper") / "case", seed=4, blocks="[3, 3]", period_days=2,
                     hours="[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]")


@pytest.fixture(scope="module")
def problem(case):
    config = with_hyper(load_config(case), estimate=["sigma", "mismatch"])
    return build_problem(config, SerialComm())


@pytest.fixture(scope="module")
def plan(problem):
    return plan_hyperparameters(problem.config, problem.state, site_counts(problem))


def synthetic(problem, lik: Likelihood, phi: np.ndarray, seed: int):
    """The problem with observations drawn from the model with hyperparameters exp(φ)."""
    B, r = lik.covariances(phi)
    rng = np.random.default_rng(seed)
    departures = problem.H.matvec(B.sqrt(rng.standard_normal(B.size))) + np.sqrt(r) * rng.standard_normal(r.size)
    return dataclasses.replace(problem, y=problem.H.matvec(problem.x_b) + departures)


# ---- the objective and its gradient -------------------------------------------------------


@pytest.fixture(scope="module")
def all_kinds(problem):
    config = with_hyper(problem.config, estimate=ALL_KINDS)
    p = dataclasses.replace(problem, config=config)
    return p, plan_hyperparameters(config, p.state, site_counts(p))


@pytest.mark.parametrize("form", ["state", "observation"])
def test_exact_objective_is_the_gaussian_log_density(all_kinds, form):
    problem, plan = all_kinds
    lik = Likelihood(problem, plan, form=form)
    phi = np.log([p.initial for p in plan.parameters]) + np.linspace(-0.3, 0.3, len(plan.parameters))
    B, r = lik.covariances(phi)
    H = problem.H.jacobian_local()
    S = H @ B.dense() @ H.T + np.diag(r)
    reference = -stats.multivariate_normal(np.zeros(problem.n_obs), S).logpdf(problem.departures())
    e = lik(phi)
    assert e.value == pytest.approx(reference, rel=1e-10)
    assert e.chi2 == pytest.approx(problem.departures() @ np.linalg.solve(S, problem.departures()), rel=1e-8)
    assert e.site_chi2.sum() == pytest.approx(e.chi2, rel=1e-10)


@pytest.mark.parametrize("form", ["state", "observation"])
def test_analytic_gradient_equals_finite_differences(all_kinds, form):
    problem, plan = all_kinds
    assert [p.kind for p in plan.parameters] == ["sigma", "correlation_length", "correlation_time"] + ["mismatch"] * 3
    lik = Likelihood(problem, plan, form=form)
    phi = np.log([p.initial for p in plan.parameters]) + np.linspace(0.2, -0.2, len(plan.parameters))
    g = lik(phi).gradient
    h = 1e-5
    fd = np.array([(lik(phi + h * e).value - lik(phi - h * e).value) / (2 * h) for e in np.eye(phi.size)])
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


def test_stochastic_objective_and_gradient_within_their_standard_errors(all_kinds):
    problem, plan = all_kinds
    phi = np.log([p.initial for p in plan.parameters])
    exact = Likelihood(problem, plan)(phi)
    est = Likelihood(problem, plan, method="stochastic", probes=48, steps=39, seed=1, tol=1e-12)(phi)
    assert est.value_stderr > 0 and np.all(est.gradient_stderr > 0)
    assert abs(est.value - exact.value) <= 4 * est.value_stderr
    assert np.all(np.abs(est.gradient - exact.gradient) <= 4 * est.gradient_stderr + 1e-9)
    assert est.chi2 == pytest.approx(exact.chi2, rel=1e-8)  # α = S⁻¹d by CG, not stochastic


# ---- recovery of known hyperparameters -----------------------------------------------------


def test_estimates_recover_the_truth_within_their_uncertainty(problem, plan):
    assert plan.names == list(TRUTH)
    lik = Likelihood(problem, plan)
    phi_true = np.log([TRUTH[n] for n in plan.names])
    inside = []
    for seed in range(20):
        result = tune(synthetic(problem, lik, phi_true, seed), plan)
        assert result.converged, result.message
        assert not result.at_bound.any() and result.hessian_positive_definite
        assert np.all(np.isfinite(result.log_sd)) and np.all(result.log_sd > 0)
        inside.append(np.abs(result.phi - phi_true) <= 2 * result.log_sd)
    fraction = np.mean(inside, axis=0)
    assert np.all(fraction >= 0.8), dict(zip(plan.names, fraction))


def test_stochastic_search_agrees_with_the_exact_one(problem, plan):
    lik = Likelihood(problem, plan)
    data = synthetic(problem, lik, np.log([TRUTH[n] for n in plan.names]), seed=100)
    exact = tune(data, plan)
    stochastic = tune(data, plan, problem.config.hyper.model_copy(update={"method": "stochastic", "probes": 32}))
    assert exact.converged and stochastic.converged
    # the stochastic optimum moves by (gradient error) / curvature, a small fraction of the estimate's sd
    assert np.all(np.abs(stochastic.phi - exact.phi) <= 0.25 * exact.log_sd)
    np.testing.assert_allclose(stochastic.log_sd, exact.log_sd, rtol=0.1)


def test_tuned_settings_reproduce_B_and_R_when_pasted_into_the_config(problem, plan, tmp_path):
    result = tune(problem, plan)
    text = settings_toml(result)
    tuned = tomllib.loads(text)
    config = problem.config
    raw = config.model_copy(update={
        "covariance": config.covariance.model_copy(update=tuned["covariance"]),
        "observations": config.observations.model_copy(update=tuned["observations"]),
    })
    B_expected, r_expected = Likelihood(problem, plan).covariances(result.phi)
    assert np.allclose(prior_covariance(raw, problem.state).dense(), B_expected.dense(), rtol=1e-5, atol=0)
    rebuilt = build_problem(raw, SerialComm(), open_inputs(raw))
    np.testing.assert_allclose(rebuilt.R.variance(), r_expected, rtol=1e-5)


# ---- bad input -----------------------------------------------------------------------------


def _write_hyper(case, text: str):
    path = case / "config.toml"
    original = path.read_text()
    path.write_text(original + "\n" + text)
    return path, original


@pytest.mark.parametrize("text, key", [
    ("[hyper.bounds]\nsigma = [0.0, 2.0]", "hyper.bounds.sigma"),
    ("[hyper.bounds]\nmismatch = [\"0 ppm\", \"5 ppm\"]", "hyper.bounds.mismatch"),
    ("[hyper.bounds]\ncorrelation_length = [\"-10 km\", \"500 km\"]", "hyper.bounds.correlation_length"),
    ("[hyper.bounds]\ncorrelation_time = [\"0 day\", \"5 day\"]", "hyper.bounds.correlation_time"),
])
def test_bounds_that_make_B_or_R_singular_are_refused(case, text, key):
    path, original = _write_hyper(case, text)
    try:
        with pytest.raises(ConfigError) as err:
            load_config(case)
    finally:
        path.write_text(original)
    message = str(err.value)
    assert key in message and "must be > 0" in message and "singular" in message
    assert str(path) in message


def test_unknown_names_are_refused(case, problem):
    path, original = _write_hyper(case, '[hyper]\nestimate = ["sigma:nosuch"]')
    try:
        with pytest.raises(ConfigError, match="nosuch"):
            load_config(case)
    finally:
        path.write_text(original)
    with pytest.raises(InputError, match="mismatch:XYZ names no site"):
        plan_hyperparameters(with_hyper(problem.config, estimate=["mismatch:XYZ"]), problem.state, site_counts(problem))
    with pytest.raises(InputError, match="site 'XYZ' has no observation"):
        plan_hyperparameters(with_hyper(problem.config, site_groups={"g": ["AAA", "XYZ"]}), problem.state,
                             site_counts(problem))


def test_upper_correlation_bound_that_makes_B_singular_is_refused(problem):
    config = with_hyper(problem.config, estimate=["correlation_length"],
                        bounds=problem.config.hyper.bounds.model_copy(update={"correlation_length": ("1 km", "1e20 km")}))
    with pytest.raises(InputError, match="hyper.bounds.correlation_length.*singular"):
        plan_hyperparameters(config, problem.state, site_counts(problem))


def test_too_few_observations_per_site_refused_or_pooled(problem, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("tanhui"), "propagate", True)  # the CLI's setup_logging may have cut it
    counts = {"AAA": 80, "BBB": 12, "CCC": 15}
    config = with_hyper(problem.config, min_obs_per_group=20)
    with pytest.raises(InputError) as err:
        plan_hyperparameters(config, problem.state, counts)
    assert "BBB (12 observations)" in str(err.value) and "CCC (15 observations)" in str(err.value)
    assert "at least 20" in str(err.value) and "few_obs" in str(err.value)

    with caplog.at_level(logging.WARNING, logger="tanhui"):
        plan = plan_hyperparameters(with_hyper(config, few_obs="pool"), problem.state, counts)
    assert plan.names == ["sigma:bio", "mismatch:AAA", "mismatch:pooled"]
    assert plan.groups.pooled == ("BBB", "CCC") and plan.groups.n_obs["pooled"] == 27
    assert "pooled" in caplog.text and "BBB" in caplog.text

    with pytest.raises(InputError, match="even pooled together"):
        plan_hyperparameters(with_hyper(config, few_obs="pool", min_obs_per_group=40), problem.state, counts)


def test_site_groups_share_one_mismatch(problem):
    config = with_hyper(problem.config, site_groups={"south": ["AAA", "BBB"]})
    plan = plan_hyperparameters(config, problem.state, site_counts(problem))
    assert plan.names == ["sigma:bio", "mismatch:CCC", "mismatch:south"]
    result = tune(dataclasses.replace(problem, config=config), plan)
    assert result.converged
    groups = {row["site"]: row["group"] for row in result.site_rows()}
    assert groups == {"AAA": "south", "BBB": "south", "CCC": "CCC"}


def test_optimiser_that_does_not_converge_is_reported(problem, plan):
    result = tune(problem, plan, problem.config.hyper.model_copy(update={"max_iterations": 1}))
    assert not result.converged
    assert "ITERATIONS" in result.message.upper()
    assert result.to_dict()["converged"] is False
    # the reported point is where the search stopped, not silently the start
    assert not np.array_equal(result.phi, np.log([p.initial for p in plan.parameters]))


# ---- the command ---------------------------------------------------------------------------


def test_tune_command(case, tmp_path, capsys):
    out = tmp_path / "tune"
    assert cli_main(["tune", str(case), "--output-dir", str(out), "--comm", "serial"]) == EXIT_OK
    report = json.loads((out / "hyper.json").read_text())
    assert report["converged"] is True
    assert [p["name"] for p in report["parameters"]] == ["sigma:bio", "mismatch:AAA", "mismatch:BBB", "mismatch:CCC"]
    for p in report["parameters"]:
        assert p["ci95"][0] < p["estimate"] < p["ci95"][1] and p["sd"] > 0
    assert {s["site"] for s in report["sites"]} == {"AAA", "BBB", "CCC"}
    assert "site_mismatch" in (out / "tuned.toml").read_text()
    assert "χ²/n" in capsys.readouterr().out
    # an earlier tune's outputs are not overwritten silently
    assert cli_main(["tune", str(case), "--output-dir", str(out), "--comm", "serial"]) == EXIT_BAD_INPUT
    assert "--overwrite" in capsys.readouterr().err


def test_tune_command_exit_code_when_not_converged(case, tmp_path):
    path, original = _write_hyper(case, "[hyper]\nmax_iterations = 1")
    try:
        code = cli_main(["tune", str(case), "--output-dir", str(tmp_path), "--comm", "serial"])
    finally:
        path.write_text(original)
    assert code == EXIT_NOT_CONVERGED
    assert json.loads((tmp_path / "hyper.json").read_text())["converged"] is False
