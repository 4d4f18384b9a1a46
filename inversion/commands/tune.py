"""``tanhui tune``: estimate the error settings from the data (type-II maximum likelihood)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import EXIT_OK, add_case_arguments

NAME = "tune"
HELP = "estimate prior σ, correlation lengths and model–data mismatch from the data (type-II ML)"
EXIT_NOT_CONVERGED = 3
OUTPUT_FILES = ("hyper.json", "tuned.toml")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Maximise the marginal likelihood of the observations, y ~ N(H x_b, H B Hᵀ + R), over the error "
        "hyperparameters listed in [hyper] (default: prior σ per sector and model–data mismatch per site). "
        "Writes hyper.json (estimates, 95 % intervals from the curvature, χ² per site before and after) and "
        "tuned.toml (the settings to paste into config.toml) to RUN.OUTPUT_DIR/tune. Exit code 3 when the search "
        "did not converge (the outputs are still written, flagged).")
    add_case_arguments(parser)
    parser.add_argument("--output-dir", type=Path, help="where to write (default: run.output_dir/tune)")
    parser.add_argument("--method", choices=["exact", "stochastic"], help="override hyper.method")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier tune's outputs")


def main(args, comm) -> int:
    import numpy as np

    from transport.errors import InputError

    from ..config import load_config
    from ..hyper import plan_hyperparameters, settings_toml, tune
    from ..io import write_json, write_text
    from ..problem import build_problem, open_inputs

    config = load_config(args.config)
    if args.method:
        config = config.model_copy(update={"hyper": config.hyper.model_copy(update={"method": args.method})})
    out_dir = (args.output_dir or config.run.output_dir / "tune").resolve()
    found = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if found and not args.overwrite:
        raise InputError(out_dir, None, f"already holds the outputs of an earlier tune ({', '.join(found)})",
                         "choose another --output-dir, or pass --overwrite to replace them")
    inputs = open_inputs(config)
    sites, counts = np.unique(inputs.obs["site"].values.astype(str), return_counts=True)
    plan = plan_hyperparameters(config, inputs.state, dict(zip(sites.tolist(), counts.tolist())))  # before footprints
    problem = build_problem(config, comm, inputs)
    result = tune(problem, plan)
    if comm.is_root:
        out_dir.mkdir(parents=True, exist_ok=True)
        write_json({"config": str(config.source), "ranks": comm.size, **result.to_dict()}, out_dir / OUTPUT_FILES[0])
        write_text(settings_toml(result), out_dir / OUTPUT_FILES[1])
        _print_summary(result)
    comm.barrier()
    return EXIT_OK if result.converged else EXIT_NOT_CONVERGED


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.4g}"


def _print_summary(result) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    table = Table(title=f"error hyperparameters by type-II maximum likelihood ({result.method})")
    for col in ("hyperparameter", "unit", "initial", "estimate ± 1σ", "95 % interval", "bounds", ""):
        table.add_column(col, justify="left" if col in ("hyperparameter", "unit", "") else "right")
    for row in result.parameter_rows():
        ci = "–" if row["ci95"] is None else f"{row['ci95'][0]:.4g} – {row['ci95'][1]:.4g}"
        table.add_row(row["name"], row["unit"], _fmt(row["initial"]), f"{row['estimate']:.4g} ± {_fmt(row['sd'])}",
                      ci, f"[{row['lower']:.3g}, {row['upper']:.3g}]", "at bound" if row["at_bound"] else "")
    console.print(table)
    sites = Table(title="χ²/n of the departures per site (expectation 1 for correct error settings)")
    for col in ("site", "group", "n_obs", "before", "after"):
        sites.add_column(col, justify="right" if col not in ("site", "group") else "left")
    for row in result.site_rows():
        sites.add_row(row["site"], row["group"], str(row["n_obs"]), f"{row['chi2_per_obs_initial']:.3f}",
                      f"{row['chi2_per_obs_final']:.3f}")
    console.print(sites)
    d = result.to_dict()
    lo, hi = d["chi2_per_obs"]["95_range"]
    console.print(f"χ²/n {d['chi2_per_obs']['initial']:.3f} → {d['chi2_per_obs']['final']:.3f} (95 % range "
                  f"{lo:.3f}–{hi:.3f}); −log L {result.initial.value:.6g} → {result.final.value:.6g}; "
                  f"{result.iterations} iterations, {result.evaluations} evaluations")
    status = "[green]converged[/green]" if result.converged else "[red]NOT CONVERGED[/red]"
    console.print(f"{status}: {result.message}")
    for note in result.notes:
        console.print(f"note: {note}")
