"""The benchmark runner end to end at the ``smoke`` size (CI): it runs, writes a well-formed
report with a bound and a ratio for every figure, and the fast and naive answers agree.
Timings are not asserted (they belong to the benchmark itself)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 600


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str, Path]:
    work = tmp_path_factory.mktemp("bench")
    ranks = "1,2" if shutil.which("mpiexec") else "1"
    out = work / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--size", "smoke", "--ranks", ranks, "--out", str(out),
                           "--work-dir", str(work / "w"), "--naive", "always"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads(out.read_text()), out.with_suffix(".md").read_text(), work


def test_bounds_are_measured(report):
    data, _, _ = report
    b = data["bounds"]
    for key in ("copy", "triad", "read", "best"):
        assert _positive(b["bandwidth"][key])
    assert b["bandwidth"]["best"] == max(b["bandwidth"][k] for k in ("copy", "triad", "read"))
    assert _positive(b["gemm_flops"]) and _positive(b["gemm_flops_1thread"]) and _positive(b["disk"]["rate"])
    assert b["blas"], "threadpoolctl found no BLAS"


def test_every_run_has_its_bound_and_ratio(report):
    data, table, _ = report
    (size,) = data["sizes"]
    assert size["size"] == "smoke"
    ranks = set(data["ranks"])
    seen = {(r["task"], r["ranks"]) for r in size["results"]}
    assert seen == {(t, n) for t in ("analytical", "variational") for n in ranks}
    for r in size["results"]:
        assert "error" not in r, r.get("error")
        assert r["threads_per_rank"] * r["ranks"] == max(1, data["bounds"]["cores"] // r["ranks"]) * r["ranks"]
        f = r["figures"]
        names = ("solve", "factorise") if r["task"] == "analytical" else ("hessian", "iteration")
        for name in names:
            assert _positive(f[name]["seconds"]) and _positive(f[name]["bound_seconds"])
            assert f[name]["ratio"] == pytest.approx(f[name]["seconds"] / f[name]["bound_seconds"])
        mem = f["memory"]
        assert _positive(mem["predicted_bytes"]) and mem["peak_rss_bytes"] >= mem["measured_bytes"]
        assert mem["ratio"] == pytest.approx(mem["measured_bytes"] / mem["predicted_bytes"])
        for phase in ("build", "solve"):
            assert _positive(mem[f"{phase}_predicted_bytes"]) and mem[f"{phase}_measured_bytes"] <= mem["measured_bytes"]
        if r["task"] == "variational":
            assert r["converged"] and r["iterations"] >= 1
            h = f["hessian"]
            assert _positive(h["kron_flops"]) and h["bound_kron_seconds"] > h["bound_seconds"]
            assert h["ratio_kron"] == pytest.approx(h["seconds"] / h["bound_kron_seconds"])
    if len(ranks) > 1:
        assert size["scaling"]["analytical"]["solve@2"]["efficiency"] == pytest.approx(
            size["scaling"]["analytical"]["solve@2"]["speedup"] / 2)
    assert "| analytical solve" in table and "| variational: one Hessian product" in table


def test_naive_formula_agrees_with_the_solver(report):
    data, _, _ = report
    naive = data["sizes"][0]["naive"]
    assert "error" not in naive and "skipped" not in naive
    assert naive["x_a_max_diff_rel_increment"] < 1e-8
    assert naive["sd_max_rel_diff"] < 1e-8
    assert _positive(naive["speedup"])


def test_ingestion_is_measured_against_the_disk(report):
    data, table, _ = report
    ing = data["sizes"][0]["ingest"]
    assert ing["files"] > 0 and ing["bytes"] > 0
    for run in ing["runs"].values():
        assert _positive(run["seconds"]) and run["ratio"] == pytest.approx(run["seconds"] / run["bound_seconds"])
    assert "| ingestion of" in table


def test_generation_is_recorded_and_reports_merge(report):
    data, _, work = report
    (size,) = data["sizes"]
    assert _positive(size["generation"]["seconds"]) and _positive(size["generation"]["peak_rss_bytes"])
    out = work / "results.json"
    merged = work / "merged.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--from-json", f"{out},{out}", "--out", str(merged),
                           "--work-dir", str(work / "w")], cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(merged.read_text())
    assert [s["size"] for s in again["sizes"]] == ["smoke"]  # the same size twice: one entry
    assert again["sizes"][0]["naive"]["speedup"] == size["naive"]["speedup"]


def test_aggregates_only_analytical_task_agrees_with_the_dense_solve(report, tmp_path):
    """The worker's task for states too large for the dense A (size L20k-analytical): the
    observation form in blocks gives the same x_a, χ² and DOFS as the dense analytical solve."""
    _, _, work = report
    out = tmp_path / "agg.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", "--case", str(work / "w" / "smoke"), "--task",
                           "analytical-aggregates", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    fast, dense = json.loads(out.read_text()), json.loads((work / "w" / "smoke-analytical-1.json").read_text())
    assert fast["form"] == "observation" and _positive(fast["gram_flops"]) and _positive(fast["total_sd_mol_s"])
    assert fast["chi2_per_obs"] == pytest.approx(dense["chi2_per_obs"], rel=1e-10)
    assert fast["dofs"] == pytest.approx(dense["dofs"], rel=1e-10)
    x_fast, x_dense = np.load(out.with_suffix(".npz"))["x_a"], np.load(work / "w" / "smoke-analytical-1.npz")["x_a"]
    np.testing.assert_allclose(x_fast, x_dense, rtol=0, atol=1e-10 * np.abs(x_dense).max())
