"""Calibration by twin experiments (OSSE): are the posterior intervals right?

For N realisations k = 1 … N of a case's H (nothing is re-read or rebuilt per realisation):

    x_t = x_b + L z,     z ~ N(0, I)           truth drawn from the configured prior B = L Lᵀ
    y   = H x_t + ε,     ε ~ N(0, R)           noise drawn from the configured R
    x_a = x_b + B' Hᵀ S'⁻¹ (y − H x_b)         the inversion, with its *assumed* B', R'
                                               (S' = H B' Hᵀ + R'; B' = B, R' = R unless misspecified)

One factorisation of S' (:mod:`inversion.factorisation`) serves every realisation (many
right-hand sides, in batches), and the posterior covariance A' is the same for all of them.
With correctly specified errors x_a − x_t ~ N(0, A') exactly, so

* each state element, and each report total T = c + aᵀx (:func:`inversion.aggregates.region_totals`),
  lies in its central posterior interval x_a ± z_q σ_a with probability q (q = 0.68, 0.95):
  over N independent realisations the count is Binomial(N, q); the reported 99.9 % binomial
  interval is exact for one quantity and conservative for the mean over correlated elements;
* χ²/n = dᵀ S'⁻¹ d / n_obs ~ χ²(n_obs)/n_obs, mean 1;
* RMSE/σ = √(mean_k (x_a − x_t)²) / σ_a → 1.

``Misspecification`` makes the inversion assume R' = f_R·R and/or prior σ' = √f_B·σ for the
scaling factors, to show what miscalibration looks like (R too small: over-confident intervals,
coverage below nominal, χ²/n > 1).

Parallelism: realisations are split over the ranks of ``comm`` (balanced contiguous blocks);
each rank holds the whole (small) problem and draws from its own independent stream
``np.random.SeedSequence(seed).spawn(comm.size)[rank]``; rank 0 merges the counts.  Results
therefore depend on the seed and the number of ranks, not on the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from .aggregates import DOMAIN, WHOLE_RUN, region_totals
from .factorisation import factorise
from .parallel import SerialComm, partition
from .problem import Problem, with_flux_errors
from .progress import Progress, log

LEVELS = (0.68, 0.95)
BINOMIAL_CONFIDENCE = 0.999
OUTPUT_FILES = ("osse_summary.json", "osse_realisations.csv", "osse_elements.csv", "osse.png")


@dataclass(frozen=True)
class Misspecification:
    """Factors on the error variances the inversion assumes (the truth always uses the
    configured ones): ``R`` on every observation error variance, ``B`` on the prior variance
    of the scaling factors (σ → √B·σ; background offsets unchanged)."""

    R: float = 1.0
    B: float = 1.0

    @classmethod
    def parse(cls, items: Sequence[str]) -> Misspecification:
        """From ``["R=0.25", "B=4"]``; raises ValueError with the accepted form."""
        values: dict[str, float] = {}
        for item in items:
            key, sep, text = item.partition("=")
            key = key.strip()
            try:
                value = float(text)
            except ValueError:
                value = float("nan")
            if not sep or key not in ("R", "B") or not (np.isfinite(value) and value > 0):
                raise ValueError(f"--misspecify {item!r}: expected R=FACTOR or B=FACTOR with a factor > 0 "
                                 "(e.g. R=0.25: the inversion assumes observation error variances 4× too small)")
            values[key] = value
        return cls(**values)

    @property
    def active(self) -> bool:
        return self.R != 1.0 or self.B != 1.0


@dataclass
class OsseResult:
    summary: dict
    realisations: list[dict]
    elements: list[dict]


def _z(level: float) -> float:
    return float(stats.norm.ppf(0.5 + level / 2))


def binomial_interval(n: int, level: float, confidence: float = BINOMIAL_CONFIDENCE) -> list[float]:
    """Central ``confidence`` interval of the coverage fraction of one quantity over n realisations."""
    lo, hi = stats.binom.interval(confidence, n, level)
    return [float(lo) / n, float(hi) / n]


def run_osse(problem: Problem, n: int, *, seed: int, comm=None, misspecify: Misspecification = Misspecification(),
             batch: int = 200) -> OsseResult | None:
    """Run ``n`` twin realisations of ``problem`` (built with a serial communicator: every rank
    holds all observations), split over the ranks of ``comm``.  Collective over ``comm``;
    returns the merged result on rank 0 and None elsewhere."""
    comm = comm or SerialComm()
    if problem.comm.size != 1:
        raise ValueError("run_osse needs the whole problem on each rank: build it with SerialComm()")
    if n < 1:
        raise ValueError("the number of realisations must be ≥ 1")
    config = problem.config
    start, stop = partition(n, comm.size, comm.rank)
    rng = np.random.default_rng(np.random.SeedSequence(seed).spawn(comm.size)[comm.rank])

    B_true, r_true = problem.B, problem.R.variance()
    B_inv = B_true
    if misspecify.B != 1.0:
        cov = config.covariance
        B_inv = with_flux_errors(problem, sigma={s: config.prior.sigma_of(s, cov) * np.sqrt(misspecify.B)
                                                   for s in problem.state.sectors},
                                 length_km=cov.length_km, time_days=cov.time_days)
    r_inv = r_true * misspecify.R
    H = problem.H
    fac = factorise(H.jacobian_local(), B_inv, r_inv, SerialComm(), n_obs=problem.n_obs, form=config.solver.form)
    A = fac.posterior_covariance()
    sd = np.sqrt(np.maximum(np.diag(A), 0.0))
    agg = region_totals(problem.state)
    M = agg.matrix.toarray()  # small: A is dense here anyway
    sd_T = np.sqrt(np.maximum(np.einsum("ij,ij->i", M @ A, M), 0.0))
    domain = int(np.flatnonzero((np.array(agg.region) == DOMAIN) & (agg.period == WHOLE_RUN))[0])
    z = {q: _z(q) for q in LEVELS}

    inside = {q: np.zeros(sd.size) for q in LEVELS}
    inside_T = {q: np.zeros(sd_T.size) for q in LEVELS}
    sq, sq_T = np.zeros(sd.size), np.zeros(sd_T.size)
    rows: list[dict] = []
    m = problem.n_obs
    log.info("OSSE: %d realisations (%d on this rank), %s form, %d state elements, %d observations%s", n,
             stop - start, fac.form, sd.size, m,
             f", misspecified R × {misspecify.R:g}, B × {misspecify.B:g}" if misspecify.active else "")
    with Progress(comm, "twin realisations", stop - start) as bar:
        for b0 in range(start, stop, batch):
            k = min(batch, stop - b0)
            # Drawn realisation by realisation (truth, then noise), so results do not depend on the batch size.
            draws = [(rng.standard_normal(sd.size), rng.standard_normal(m)) for _ in range(k)]
            dx = B_true.sqrt(np.column_stack([z for z, _ in draws]))            # x_t − x_b
            D = H.matmat(dx) + np.sqrt(r_true)[:, None] * np.column_stack([e for _, e in draws])  # y − H x_b
            err = fac.increments(D) - dx                                        # x_a − x_t
            err_T = M @ err
            chi2 = fac.quadratic(D) / m
            for q in LEVELS:
                inside[q] += np.sum(np.abs(err) <= z[q] * sd[:, None], axis=1)
                inside_T[q] += np.sum(np.abs(err_T) <= z[q] * sd_T[:, None], axis=1)
            sq += np.sum(err**2, axis=1)
            sq_T += np.sum(err_T**2, axis=1)
            cover = {q: np.mean(np.abs(err) <= z[q] * sd[:, None], axis=0) for q in LEVELS}
            for j in range(k):
                rows.append({"realisation": b0 + j, "rank": comm.rank, "chi2_per_obs": float(chi2[j]),
                             "state_coverage_68": float(cover[0.68][j]), "state_coverage_95": float(cover[0.95][j]),
                             "domain_total_error_over_sd": float(err_T[domain, j] / sd_T[domain])})
            bar.update(b0 + k - start)

    local = (rows, {q: inside[q] for q in LEVELS}, {q: inside_T[q] for q in LEVELS}, sq, sq_T)
    parts = comm.gather(local, root=0)
    if not comm.is_root:
        return None
    rows = sorted((r for p in parts for r in p[0]), key=lambda r: r["realisation"])
    inside = {q: sum(p[1][q] for p in parts) / n for q in LEVELS}
    inside_T = {q: sum(p[2][q] for p in parts) / n for q in LEVELS}
    rmse = np.sqrt(sum(p[3] for p in parts) / n)
    rmse_T = np.sqrt(sum(p[4] for p in parts) / n)
    return _summarise(problem, agg, n, comm.size, seed, misspecify, fac.form, rows, sd, sd_T, inside, inside_T,
                      rmse, rmse_T, domain)


def _summarise(problem, agg, n, ranks, seed, misspecify, form, rows, sd, sd_T, inside, inside_T, rmse, rmse_T,
               domain) -> OsseResult:
    m = problem.n_obs
    chi2 = np.array([r["chi2_per_obs"] for r in rows])
    bounds = {str(q): binomial_interval(n, q) for q in LEVELS}
    # Mean of n independent χ²(m)/m: (χ² with n·m degrees of freedom)/(n·m).
    chi2_mean_range = [float(stats.chi2.ppf((1 - BINOMIAL_CONFIDENCE) / 2, n * m) / (n * m)),
                       float(stats.chi2.ppf((1 + BINOMIAL_CONFIDENCE) / 2, n * m) / (n * m))]
    coverage = {
        "state_mean": {str(q): float(inside[q].mean()) for q in LEVELS},
        "state_min": {str(q): float(inside[q].min()) for q in LEVELS},
        "state_max": {str(q): float(inside[q].max()) for q in LEVELS},
        "totals_mean": {str(q): float(inside_T[q].mean()) for q in LEVELS},
        "domain_total": {str(q): float(inside_T[q][domain]) for q in LEVELS},
    }
    checks = {f"{what}_{q}": bool(bounds[str(q)][0] <= coverage[what][str(q)] <= bounds[str(q)][1])
              for what in ("state_mean", "totals_mean", "domain_total") for q in LEVELS}
    checks["chi2_mean"] = bool(chi2_mean_range[0] <= chi2.mean() <= chi2_mean_range[1])
    ratio, ratio_T = rmse / sd, rmse_T / sd_T
    summary = {
        "n_realisations": n, "ranks": ranks, "seed": seed, "form": form,
        "misspecification": {"R": misspecify.R, "B": misspecify.B},
        "n_state": int(sd.size), "n_obs": m, "n_totals": int(sd_T.size),
        "levels": list(LEVELS),
        "coverage": coverage,
        "binomial_interval_999": bounds,
        "chi2_per_obs": {"mean": float(chi2.mean()), "sd": float(chi2.std(ddof=1)) if n > 1 else 0.0,
                         "percentiles_2.5_50_97.5": np.percentile(chi2, [2.5, 50, 97.5]).tolist(),
                         "expected_mean": 1.0, "expected_sd": float(np.sqrt(2.0 / m)),
                         "mean_range_999": chi2_mean_range},
        "rmse_over_sd": {"state_median": float(np.median(ratio)), "state_mean": float(ratio.mean()),
                         "totals_median": float(np.median(ratio_T)), "domain_total": float(ratio_T[domain])},
        "checks": checks,
        "calibrated": bool(all(checks.values())),
    }
    elements = []
    names = _element_names(problem)
    for i, name in enumerate(names):
        elements.append({"kind": "state", "name": name, "posterior_sd": float(sd[i]), "rmse": float(rmse[i]),
                         "rmse_over_sd": float(ratio[i]), "coverage_68": float(inside[0.68][i]),
                         "coverage_95": float(inside[0.95][i])})
    for i in range(sd_T.size):
        period = "whole_run" if agg.period[i] == WHOLE_RUN else str(int(agg.period[i]))
        elements.append({"kind": "total", "name": f"{agg.region[i]}/{period}", "posterior_sd": float(sd_T[i]),
                         "rmse": float(rmse_T[i]), "rmse_over_sd": float(ratio_T[i]),
                         "coverage_68": float(inside_T[0.68][i]), "coverage_95": float(inside_T[0.95][i])})
    return OsseResult(summary=summary, realisations=rows, elements=elements)


def _element_names(problem: Problem) -> list[str]:
    """Readable names of the state elements: sector/period/region, then offset/site."""
    st = problem.state
    names = [f"{s}/{p}/{r}" for s in st.sectors for p in range(st.n_period) for r in st.regions.names]
    names += [f"offset/{site}" for site in st.sites]
    return names + [f"element/{i}" for i in range(len(names), st.size)]


def write_osse(result: OsseResult, out_dir: Path) -> list[Path]:
    """osse_summary.json, osse_realisations.csv, osse_elements.csv and (with matplotlib) osse.png."""
    from .io import write_json, write_text
    from .outputs import _csv_text

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / name for name in OUTPUT_FILES[:3]]
    write_json(result.summary, paths[0])
    write_text(_csv_text(result.realisations), paths[1])
    write_text(_csv_text(result.elements), paths[2])
    plot = plot_osse(result, out_dir / OUTPUT_FILES[3])
    return paths + ([plot] if plot else [])


def plot_osse(result: OsseResult, path: Path) -> Path | None:
    """Three panels: χ²/n histogram against χ²(n)/n, coverage per element against nominal with
    the binomial interval, domain-total errors / σ against N(0, 1).  Skipped (logged) without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed (pip install 'tanhui[plots]'): %s not drawn", path.name)
        return None
    from .io import atomic_path

    s = result.summary
    m = s["n_obs"]
    chi2 = np.array([r["chi2_per_obs"] for r in result.realisations])
    zt = np.array([r["domain_total_error_over_sd"] for r in result.realisations])
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2))
    ax[0].hist(chi2, bins=30, density=True, alpha=0.6, label="realisations")
    grid = np.linspace(min(chi2.min(), stats.chi2.ppf(0.001, m) / m), max(chi2.max(), stats.chi2.ppf(0.999, m) / m), 200)
    ax[0].plot(grid, m * stats.chi2.pdf(grid * m, m), "k-", label=f"χ²({m})/{m}")
    ax[0].set(xlabel="χ²/n", ylabel="density", title="χ²/n of the departures")
    ax[0].legend()
    states = [e for e in result.elements if e["kind"] == "state"]
    for q, colour in zip(LEVELS, ("tab:blue", "tab:orange")):
        cov = np.array([e[f"coverage_{int(q * 100)}"] for e in states])
        lo, hi = s["binomial_interval_999"][str(q)]
        ax[1].plot(np.arange(cov.size), cov, ".", color=colour, label=f"{int(q * 100)} % interval")
        ax[1].axhspan(lo, hi, color=colour, alpha=0.2)
        ax[1].axhline(q, color=colour, lw=1)
    ax[1].set(xlabel="state element", ylabel="empirical coverage", ylim=(0, 1.02),
              title=f"coverage over {s['n_realisations']} realisations (band: 99.9 % binomial)")
    ax[1].legend(loc="lower left")
    ax[2].hist(zt, bins=30, density=True, alpha=0.6, label="realisations")
    g = np.linspace(-4, 4, 200)
    ax[2].plot(g, stats.norm.pdf(g), "k-", label="N(0, 1)")
    ax[2].set(xlabel="(posterior − truth) / σ", title="domain total, whole run")
    ax[2].legend()
    mis = s["misspecification"]
    fig.suptitle(f"twin calibration: {'calibrated' if s['calibrated'] else 'MISCALIBRATED'}"
                 + (f" (assumed R × {mis['R']:g}, B × {mis['B']:g})" if (mis["R"], mis["B"]) != (1.0, 1.0) else ""))
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
