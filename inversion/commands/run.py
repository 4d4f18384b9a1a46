"""``tanhui run``: validate every input, build H, B, R, solve, write the outputs.

Exit codes: 0 done; 75 (EX_TEMPFAIL) the run was stopped (SIGTERM/SIGUSR1, a STOP file,
``--stop-after``): during the solve after writing a checkpoint, before it with nothing to save —
run the same command again to resume; 2 bad input or configuration (including a checkpoint of a
different run); 1 any other failure (under MPI the job is aborted, and every rank's log names
the failing rank and the last checkpoint).

SIGTERM and SIGUSR1 only set a flag for the whole run (:class:`inversion.checkpoint.StopRequest`),
checked by every rank at the same safe points: after the inputs are validated, after the
problem is built, and inside the solver (each CG iteration or accumulated block).  A signal
during the output writing lets the (small, atomic) outputs finish: the run then exits 0.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .. import __version__
from . import EXIT_CHECKPOINTED, EXIT_OK, add_case_arguments

NAME = "run"
HELP = "run the inversion of a case and write its outputs"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Validate every input, build H, B, R, solve, and write posterior_state.nc, "
                          "posterior_flux.nc, totals.csv, diagnostics.json and config.resolved.toml.")
    add_case_arguments(parser)
    parser.add_argument("--output-dir", type=Path, help="override run.output_dir")
    parser.add_argument("--solver", choices=["analytical", "variational"], help="override solver.method")
    parser.add_argument("--overwrite", action="store_true", help="replace another run's outputs in the output dir")
    parser.add_argument("--restart", action="store_true",
                        help="discard a checkpoint of the solve instead of resuming from it")
    parser.add_argument("--no-report", action="store_true",
                        help="skip the report step (tanhui report OUTPUT_DIR makes it later)")
    parser.add_argument("--stop-after", type=int, metavar="N",
                        help="checkpoint and stop (exit 75) once N CG iterations (variational) or N accumulation "
                             "steps (analytical) are done in total: splits a long solve over several jobs, or "
                             "rehearses a preemption")
    parser.epilog = ("Both solvers resume automatically from a valid checkpoint in solver.checkpoint_dir (default "
                     "OUTPUT_DIR/checkpoint). SIGTERM/SIGUSR1 or a STOP file there stop the run at the next safe point. "
                     "Exit codes: 0 done, 75 stopped (rerun to resume), 2 bad input, 1 failure.")


def main(args, comm) -> int:
    from ..checkpoint import StopRequest

    t0 = time.perf_counter()
    # For the whole run a signal only sets a flag, checked at the safe points below (the STOP
    # file is added once the configuration names the checkpoint directory).
    stop = StopRequest(stop_after=args.stop_after)
    with stop:
        return _run(args, comm, stop, t0)


def _run(args, comm, stop, t0) -> int:
    from ..aggregates import WHOLE_RUN, report_unit
    from ..checkpoint import STOP_FILE, Checkpointer, Stopped, describe_files, fingerprint
    from transport.errors import InputError

    from ..config import ConfigError, load_config, provenance
    from ..outputs import check_output_dir, maps_dataset, modelled_observations, site_summary, totals_table, \
        write_outputs
    from ..report.inventory import check_inventory
    from ..report.totals import base_aggregates, base_totals_dataset, check_report_periods, make_base_totals, \
        net_aggregates, optimised_part, region_codes
    from .report import make_report
    from ..problem import build_problem, open_inputs, read_truth
    from ..progress import log
    from ..solvers import solve

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
    directory = config.solver.checkpoint_dir or out_dir / "checkpoint"
    stop.stop_file = directory / STOP_FILE if comm.is_root else None  # rank 0 only: spare a parallel file system
    checkpointer, resuming = None, False

    def safe_point(where: str) -> None:
        """Collective, outside the solver: stop here when any rank was signalled (or STOP exists)."""
        if checkpointer.stopping():
            raise Stopped(checkpointer.path if resuming else None, None, checkpointer.stop_reason, where)

    try:
        inputs = open_inputs(config, comm)
        truth = read_truth(config, inputs.state)
        # Report periods and the inventory table are checked before any heavy work.
        intervals = check_report_periods(config.report.periods, inputs.state, config.source)
        regions_file = config.report.regions or config.state.regions
        report_names = (inputs.report_regions if inputs.report_regions is not None else inputs.state.regions).names
        codes, mask_attributes = region_codes(regions_file, report_names)
        if config.report.inventory is not None:
            check_inventory(config.report.inventory, config, report_names, codes)
        t_inputs = time.perf_counter()
        hashes = comm.bcast(provenance(config) if comm.is_root else None)  # the inputs exist: checked above
        # a foreign checkpoint is refused before the heavy work
        checkpointer = Checkpointer(directory, comm, fingerprint(config, hashes), every=config.solver.checkpoint_every,
                                    stop=stop, files=describe_files(config), kind=config.solver.method)
        if args.restart:
            checkpointer.remove()
            comm.barrier()
        elif resuming := checkpointer.check():
            log.info("a checkpoint of this run exists: the solve resumes from %s", checkpointer.path)
        safe_point("input reading, before the solve")
        problem = build_problem(config, comm, inputs)
        t_build = time.perf_counter()
        safe_point("building of the problem, before the solve")
        # Base totals (sector, report region, interval); the variational solver computes the
        # exact covariance of the optimised rows by extra solves (every reported total is a
        # linear combination of them: inversion.report.totals).
        base_agg, sectors = base_aggregates(problem.state, inputs.report_regions, intervals)
        aggregates = optimised_part(base_agg, problem.state)
        posterior = solve(problem, aggregates, checkpoint=checkpointer)
    except Stopped as exc:
        log.warning("%s; exit code %d", exc, EXIT_CHECKPOINTED)
        from ..requeue import requeue_action

        requeue = requeue_action(comm, exc.reason, exc.path)  # rank 0 of a signalled, requeueable Slurm job
        if comm.size > 1:  # every rank stopped together: exit without MPI_Abort, requeue last
            comm.exit_all(EXIT_CHECKPOINTED, last=requeue)
        if requeue is not None:
            requeue()  # Slurm ends the job's processes at once: the last action
        return EXIT_CHECKPOINTED
    except Exception as exc:
        # Every rank's log (and per-rank file with --log-dir) says who failed, what, and what survives;
        # bad input in a serial run is only the CLI's message (file, variable, fix).
        if comm.size > 1 or not isinstance(exc, (InputError, ConfigError)):
            saved = (f"last checkpoint {checkpointer.path} (iteration {checkpointer.last_saved})"
                     if checkpointer is not None and checkpointer.last_saved is not None else "no checkpoint written")
            log.error("rank %d of %d failed: %s: %s; %s", comm.rank, comm.size, type(exc).__name__, exc, saved)
        raise
    t_solve = time.perf_counter()
    observations = modelled_observations(problem, posterior, inputs.store.obs)
    sites = site_summary(observations)
    if comm.is_root:
        base = make_base_totals(species=config.run.species, state=problem.state, report=inputs.report_regions,
                                codes=codes, intervals=intervals, agg=base_agg, sectors=sectors,
                                totals=posterior.aggregate(aggregates), x_b=posterior.x_b, x_a=posterior.x_a,
                                truth=truth, solver=config.solver.method, mask_attributes=mask_attributes)
        net_agg, net_totals = net_aggregates(base, base_agg)
        rows = totals_table(config, net_agg, net_totals, truth)
        diagnostics = {**posterior.diagnostics, "sites": sites, "tanhui_version": __version__,
                       "timings_s": {"validate_inputs": t_inputs - t0, "build_problem": t_build - t_inputs,
                                     "solve": t_solve - t_build}}
        if "selection" in inputs.obs.attrs:  # raw observation files: what the selection did, per file
            diagnostics["observation_selection"] = json.loads(inputs.obs.attrs["selection"])
        write_outputs(out_dir, problem, posterior, rows, diagnostics, truth, hashes, totals=base_totals_dataset(base),
                      maps=maps_dataset(problem, posterior), observations=observations)
        diagnostics["timings_s"]["total"] = time.perf_counter() - t0
        _print_summary(config, rows, posterior.diagnostics, truth is not None, report_unit(config.run.species)[0],
                       WHOLE_RUN)
        log.info("outputs written to %s (%.1f s)", out_dir, time.perf_counter() - t0)
        if not args.no_report:  # the last step: the report of this run
            make_report(out_dir)
    checkpointer.remove()
    comm.barrier()
    if stop.signal_name is not None:
        log.warning("signal %s arrived after the solve had completed (after its last safe point): the outputs in %s "
                    "are complete, nothing to resume; exit code %d", stop.signal_name, out_dir, EXIT_OK)
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