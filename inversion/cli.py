"""Command-line interface: ``tanhui {run,validate,demo}`` (also ``python -m inversion``).

Under MPI launch it as ``mpiexec -n N python -m mpi4py -m inversion run CONFIG`` so an
unhandled exception on one rank aborts the job instead of hanging it.  Exit codes: 0 done,
2 bad input or configuration (message names the file, variable and fix), 1 other failure.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from . import __version__

DEFAULT_CASE = "cases/demo"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tanhui", description="tanhui — top-down atmospheric inversion of carbon "
                                "sinks (Lagrangian footprints, analytical and 4D-Var solvers, MPI).")
    p.add_argument("--version", action="version", version=f"tanhui {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("config", nargs="?", default=DEFAULT_CASE,
                        help=f"config TOML file or case directory holding config.toml (default: {DEFAULT_CASE})")
        sp.add_argument("--comm", choices=["auto", "serial", "mpi"], default="auto",
                        help="communicator: MPI when launched by mpiexec/srun (auto), or force one")
        sp.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    run = sub.add_parser("run", help="run the inversion of a case and write its outputs",
                         description="Validate every input, build H, B, R, solve, and write posterior_state.nc, "
                         "posterior_flux.nc, totals.csv, diagnostics.json and config.resolved.toml.")
    common(run)
    run.add_argument("--output-dir", type=Path, help="override run.output_dir")
    run.add_argument("--solver", choices=["analytical", "variational"], help="override solver.method")
    run.add_argument("--overwrite", action="store_true", help="replace another run's outputs in the output dir")

    val = sub.add_parser("validate", help="check every input and estimate memory and time per solver",
                         description="Check the configuration and every input file (including every footprint "
                         "value), print problem sizes and the memory and time each solver would need, then exit.")
    common(val)

    demo = sub.add_parser("demo", help="generate the inputs of a synthetic twin case",
                          description="Generate (deterministically, from twin.toml) the footprints, prior, "
                          "regions, observations and truth of a twin case.")
    demo.add_argument("case", nargs="?", default=DEFAULT_CASE, help=f"case directory (default: {DEFAULT_CASE})")
    demo.add_argument("--make-data", action="store_true", required=True, help="write the case's input files")
    demo.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def _blas_threads(comm) -> None:
    """Ranks × BLAS threads must not exceed the cores: unless the user set a thread count,
    give each rank an equal share."""
    if comm.size == 1 or any(v in os.environ for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")):
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(max(1, (os.cpu_count() or 1) // comm.size))


def _cmd_run(args, comm) -> int:
    from .aggregates import WHOLE_RUN, region_totals, report_unit
    from .config import load_config, provenance
    from .outputs import check_output_dir, site_statistics, totals_table, write_outputs
    from .problem import build_problem, open_inputs, read_truth
    from .progress import log
    from .solvers import solve

    t0 = time.perf_counter()
    config = load_config(args.config)
    updates = {}
    if args.output_dir is not None:
        updates["output_dir"] = args.output_dir.resolve()
    if updates:
        config = config.model_copy(update={"run": config.run.model_copy(update=updates)})
    if args.solver:
        config = config.model_copy(update={"solver": config.solver.model_copy(update={"method": args.solver})})
    out_dir = config.run.output_dir
    check_output_dir(out_dir, args.overwrite)
    inputs = open_inputs(config)
    truth = read_truth(config, inputs.state)
    t_inputs = time.perf_counter()
    problem = build_problem(config, comm, inputs)
    t_build = time.perf_counter()
    aggregates = region_totals(problem.state)
    posterior = solve(problem, aggregates)
    t_solve = time.perf_counter()
    sites = site_statistics(problem, posterior)
    if comm.is_root:
        hashes = provenance(config)
        rows = totals_table(config, aggregates, posterior, truth)
        diagnostics = {**posterior.diagnostics, "sites": sites, "tanhui_version": __version__,
                       "timings_s": {"validate_inputs": t_inputs - t0, "build_problem": t_build - t_inputs,
                                     "solve": t_solve - t_build}}
        write_outputs(out_dir, problem, posterior, rows, diagnostics, truth, hashes)
        diagnostics["timings_s"]["total"] = time.perf_counter() - t0
        _print_summary(config, rows, posterior.diagnostics, truth is not None, report_unit(config.run.species)[0],
                       WHOLE_RUN)
        log.info("outputs written to %s (%.1f s)", out_dir, time.perf_counter() - t0)
    comm.barrier()
    return EXIT_OK


def _print_summary(config, rows, diag, has_truth, unit, whole) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{config.run.name}: net flux {str(config.run.start)[:10]} … {str(config.run.end)[:10]} "
                  f"({unit}, positive = emission)")
    table.add_column("region")
    table.add_column("prior ± 1σ", justify="right")
    table.add_column("posterior ± 1σ", justify="right")
    if has_truth:
        table.add_column("truth", justify="right")
    table.add_column("σ reduction", justify="right")
    for r in rows:
        if r["period"] != "whole_run":
            continue
        cells = [r["region"], f"{r['prior']:.2f} ± {r['prior_sd']:.2f}", f"{r['posterior']:.2f} ± {r['posterior_sd']:.2f}"]
        if has_truth:
            cells.append(f"{r['truth']:.2f}")
        cells.append(f"{100 * r['uncertainty_reduction']:.0f} %")
        table.add_row(*cells)
    console = Console(width=max(100, Console().width))
    console.print(table)
    lo, hi = diag["chi2_per_obs_95"]
    extra = f", iterations {diag['iterations']}" if "iterations" in diag else ""
    console.print(f"solver {diag['solver']}{' (' + diag['form'] + ' form)' if 'form' in diag else ''}{extra}; "
                  f"χ²/n = {diag['chi2_per_obs']:.3f} (95 % range for correct errors {lo:.3f}–{hi:.3f}); "
                  f"DOFS = {diag['dofs']:.1f} of {diag['n_state']}; n_obs = {diag['n_obs']}")


def _cmd_validate(args, comm) -> int:
    from rich.console import Console
    from rich.table import Table

    from .config import load_config
    from .estimate import estimates, human_bytes, measure_rates
    from .problem import open_inputs, prior_covariance, read_truth
    from .progress import Progress

    config = load_config(args.config)
    inputs = open_inputs(config)
    read_truth(config, inputs.state)
    prior_covariance(config, inputs.state)  # positive definiteness
    store = inputs.store
    blocks = list(store.iter_row_blocks())
    t0 = time.perf_counter()
    with Progress(comm, "checking footprint values", len(blocks)) as bar:
        for k, (start, stop) in enumerate(blocks):
            store.read_rows(start, stop, check=True)
            bar.update(k + 1)
    read_seconds = time.perf_counter() - t0
    console = Console()
    state = inputs.state
    console.print(f"[bold]{config.source}[/bold]: all inputs valid")
    console.print(f"  grid {store.grid.describe()}; flux steps {store.time_axis.size}; footprint non-zeros {store.nnz:,}")
    console.print(f"  observations {inputs.obs.sizes['obs']:,} at {len(set(inputs.obs['site'].values.tolist()))} sites; "
                  f"state {state.size:,} = {state.n_sector} sectors × {state.n_period} periods × "
                  f"{state.n_region} regions + {len(state.sites)} offsets")
    rates = measure_rates()
    est = estimates(state.size, inputs.obs.sizes["obs"], store.nnz, state.n_sector, comm.size,
                    config.solver.max_iterations, rates, read_seconds)
    table = Table(title=f"estimated needs on {comm.size} rank(s) (measured now: GEMM {rates['gemm_flops'] / 1e9:.0f} "
                  f"GFLOP/s, copy {rates['bandwidth_bytes'] / 1e9:.0f} GB/s, footprint read "
                  f"{store.nnz / read_seconds / 1e6:.0f} M non-zeros/s)")
    table.add_column("solver")
    table.add_column("memory per rank", justify="right")
    table.add_column("time", justify="right")
    for name, e in est.items():
        t = f"{e['seconds']:.2g} s" + (f" ({e['seconds_per_iteration']:.2g} s/iteration, ≤ {config.solver.max_iterations} "
                                      "iterations)" if "seconds_per_iteration" in e else "")
        table.add_row(name, human_bytes(e["memory_bytes"]), t)
    console.print(table)
    return EXIT_OK


def _cmd_demo(args, comm) -> int:
    from .progress import log
    from .twin import make_twin_data

    t0 = time.perf_counter()
    paths = make_twin_data(Path(args.case))
    log.info("twin inputs written in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(str(p) for p in paths.values()))
    return EXIT_OK


COMMANDS = {"run": _cmd_run, "validate": _cmd_validate, "demo": _cmd_demo}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from transport.errors import InputError

    from .config import ConfigError
    from .linalg import CovarianceError
    from .parallel import world
    from .progress import log, setup_logging


    comm = world(getattr(args, "comm", "serial") if args.command != "demo" else "serial")
    setup_logging(comm, args.verbose)
    _blas_threads(comm)
    try:
        return COMMANDS[args.command](args, comm)
    except (InputError, ConfigError, CovarianceError) as exc:
        if comm.size == 1:
            print(f"tanhui: error: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
        # Under MPI the other ranks may be waiting in a collective: end the whole job.
        log.error("%s", exc)
        comm.abort(EXIT_BAD_INPUT)
        return EXIT_BAD_INPUT
