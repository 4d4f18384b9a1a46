"""``tanhui validate``: check every input and estimate memory and time per solver."""

from __future__ import annotations

import argparse
import time

from . import EXIT_OK, add_case_arguments

NAME = "validate"
HELP = "check every input and estimate memory and time per solver"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Check the configuration and every input file (including every footprint value), print "
                          "problem sizes and the memory and time each solver would need, then exit.")
    add_case_arguments(parser)


def main(args, comm) -> int:
    from rich.console import Console
    from rich.table import Table

    from ..config import load_config
    from ..estimate import (
        INTERPRETER_NOTE,
        ProblemSizes,
        estimates,
        extra_h_nonzeros,
        human_bytes,
        measure_rates,
    )
    from ..problem import open_inputs, prior_covariance, read_truth
    from ..progress import Progress

    config = load_config(args.config)
    inputs = open_inputs(config)
    read_truth(config, inputs.state)
    prior_covariance(config, inputs.state)  # positive definiteness
    store = inputs.store
    state = inputs.state
    E = state.E
    blocks = list(store.iter_row_blocks())
    read_seconds, nnz_h = 0.0, 0
    with Progress(comm, "checking footprint values", len(blocks)) as bar:
        for k, (start, stop) in enumerate(blocks):
            t0 = time.perf_counter()
            rows = store.read_rows(start, stop, check=True)
            read_seconds += time.perf_counter() - t0
            nnz_h += (rows @ E).nnz  # H = K E is what the solvers stream: count it exactly
            bar.update(k + 1)
    n_obs = inputs.obs.sizes["obs"]
    nnz_h += extra_h_nonzeros(state, n_obs)
    console = Console()
    console.print(f"[bold]{config.source}[/bold]: all inputs valid")
    console.print(f"  grid {store.grid.describe()}; flux steps {store.time_axis.size}; footprint non-zeros {store.nnz:,}; "
                  f"non-zeros of H = K E {nnz_h:,}")
    console.print(f"  observations {inputs.obs.sizes['obs']:,} at {len(set(inputs.obs['site'].values.tolist()))} sites; "
                  f"state {state.size:,} = {state.n_sector} sectors × {state.n_period} periods × "
                  f"{state.n_region} regions + {len(state.sites)} offsets"
                  + "".join(f" + {e.size} {e.name.replace('_', ' ')}" for e in state.extras))
    rates = measure_rates()
    est = estimates(ProblemSizes.of(state, n_obs, store.nnz, nnz_h), comm.size, config.solver.max_iterations,
                    rates, read_seconds)
    table = Table(title=f"estimated needs on {comm.size} rank(s) (measured now: GEMM {rates['gemm_flops'] / 1e9:.0f} "
                  f"GFLOP/s, copy {rates['bandwidth_bytes'] / 1e9:.0f} GB/s, footprint read "
                  f"{store.nnz / read_seconds / 1e6:.0f} M non-zeros/s)")
    table.add_column("solver")
    table.add_column(f"memory per rank ({INTERPRETER_NOTE})", justify="right")
    table.add_column("time", justify="right")
    for name, e in est.items():
        t = f"{e['seconds']:.2g} s" + (f" ({e['seconds_per_iteration']:.2g} s/iteration, ≤ {config.solver.max_iterations} "
                                      "iterations)" if "seconds_per_iteration" in e else "")
        table.add_row(name, human_bytes(e["memory_bytes"]), t)
    console.print(table)
    return EXIT_OK