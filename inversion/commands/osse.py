"""``tanhui osse``: calibration of the posterior intervals by twin experiments."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import EXIT_OK, add_case_arguments

NAME = "osse"
HELP = "check the posterior intervals by twin experiments (coverage, χ²/n, RMSE/σ)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Draw N truths from the prior B and observation noise from R, invert each with one factorisation of the "
        "case's H, and report the empirical coverage of the 68 % and 95 % posterior intervals (state elements "
        "and region totals), the distribution of χ²/n and RMSE/σ. Under MPI the ranks split the realisations "
        "(each rank reads the whole case). Writes osse_summary.json, osse_realisations.csv, osse_elements.csv and "
        "(with matplotlib) osse.png to RUN.OUTPUT_DIR/osse.")
    add_case_arguments(parser)
    parser.add_argument("--n", type=int, default=400, help="number of realisations (default 400)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random streams (default 0)")
    parser.add_argument("--misspecify", action="append", default=[], metavar="KEY=FACTOR",
                        help="make the inversion assume wrong errors: R=0.25 (observation error variances × 0.25), "
                             "B=4 (prior variances of the scaling factors × 4); repeatable")
    parser.add_argument("--batch", type=int, default=200, help="realisations per batch (memory: n_obs × batch)")
    parser.add_argument("--output-dir", type=Path, help="where to write (default: run.output_dir/osse)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier OSSE's outputs")


def main(args, comm) -> int:
    from transport.errors import InputError

    from ..config import load_config
    from ..osse import OUTPUT_FILES, Misspecification, run_osse, write_osse
    from ..parallel import SerialComm
    from ..problem import build_problem
    from ..progress import log

    config = load_config(args.config)
    try:
        misspecify = Misspecification.parse(args.misspecify)
    except ValueError as exc:
        raise InputError(None, "--misspecify", str(exc)) from None
    if args.n < 1 or args.batch < 1:
        raise InputError(None, "--n/--batch", "must be ≥ 1")
    out_dir = (args.output_dir or config.run.output_dir / "osse").resolve()
    found = [name for name in OUTPUT_FILES if (out_dir / name).exists()]
    if found and not args.overwrite:
        raise InputError(out_dir, None, f"already holds the outputs of an earlier OSSE ({', '.join(found)})",
                         "choose another --output-dir, or pass --overwrite to replace them")
    problem = build_problem(config, SerialComm())  # every rank holds the whole case
    result = run_osse(problem, args.n, seed=args.seed, comm=comm, misspecify=misspecify, batch=args.batch)
    if comm.is_root:
        paths = write_osse(result, out_dir)
        _print_summary(result.summary)
        log.info("outputs written to %s", ", ".join(str(p) for p in paths))
    comm.barrier()
    return EXIT_OK


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(100, Console().width))
    mis = s["misspecification"]
    title = f"twin calibration over {s['n_realisations']} realisations ({s['ranks']} rank(s), seed {s['seed']})"
    if (mis["R"], mis["B"]) != (1.0, 1.0):
        title += f", inversion assumes R × {mis['R']:g}, B × {mis['B']:g}"
    table = Table(title=title)
    table.add_column("coverage of")
    for q in s["levels"]:
        table.add_column(f"{int(q * 100)} % interval", justify="right")
    cov, bounds = s["coverage"], s["binomial_interval_999"]
    for key, label in (("state_mean", "state elements (mean)"), ("totals_mean", "region totals (mean)"),
                       ("domain_total", "domain total, whole run")):
        table.add_row(label, *[f"{100 * cov[key][str(q)]:.1f} %" for q in s["levels"]])
    table.add_row("99.9 % binomial interval", *[f"{100 * bounds[str(q)][0]:.1f}–{100 * bounds[str(q)][1]:.1f} %"
                                                for q in s["levels"]])
    console.print(table)
    c = s["chi2_per_obs"]
    r = s["rmse_over_sd"]
    console.print(f"χ²/n: mean {c['mean']:.3f} (99.9 % range of the mean for correct errors "
                  f"{c['mean_range_999'][0]:.3f}–{c['mean_range_999'][1]:.3f}), sd {c['sd']:.3f} (expected "
                  f"{c['expected_sd']:.3f}); RMSE/σ: state median {r['state_median']:.3f}, totals median "
                  f"{r['totals_median']:.3f}, domain total {r['domain_total']:.3f}")
    verdict = "[green]calibrated[/green]" if s["calibrated"] else "[red]MISCALIBRATED[/red]"
    failed = [k for k, ok in s["checks"].items() if not ok]
    console.print(f"{verdict}" + (f": outside the expected range: {', '.join(failed)}" if failed else ""))
