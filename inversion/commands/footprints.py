"""``tanhui footprints manifest|ingest|merge|inspect``: STILT/FLEXPART/NAME files → a store."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import EXIT_OK

NAME = "footprints"
HELP = "convert STILT/FLEXPART/NAME footprint files into a footprint store, and inspect stores"


def _verbose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Footprint files (STILT, FLEXPART grid_time and openghg/PARIS, NAME) → one footprint store "
                          "(HDF5) on the inversion grid and flux time axis; run in parallel over MPI ranks or as a Slurm "
                          "array over a manifest, resumably.")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    p = sub.add_parser("manifest", help="write the sorted list of footprint files matching patterns",
                       description="Write a stable, sorted list of the files matching PATTERN(s) (quote globs; ** recurses).")
    p.add_argument("patterns", nargs="+", metavar="PATTERN")
    p.add_argument("--out", type=Path, required=True, help="manifest file to write")
    _verbose(p)

    p = sub.add_parser("ingest", help="read footprint files into a store (parallel, resumable)",
                       description="Read footprint files (manifests, files or quoted globs), map them onto the grid and flux "
                       "time axis, write parts to OUT.parts/ (verified parts are skipped) and merge them into OUT. "
                       "Rejected files and records are listed in OUT.rejected.csv.")
    p.add_argument("inputs", nargs="+", metavar="MANIFEST_OR_GLOB")
    p.add_argument("--out", type=Path, required=True, help="footprint store to write (HDF5)")
    p.add_argument("--grid", required=True, metavar="SPEC",
                   help="target grid: LAT_MIN,LAT_MAX,LON_MIN,LON_MAX,DLAT,DLON (domain edges, degrees), a config "
                   "(.toml or case directory, its [grid]), a footprint store, or a NetCDF file on the grid")
    p.add_argument("--time", required=True, metavar="SPEC",
                   help="flux time axis: START,END,STEP (e.g. 2014-01-01,2014-04-01,1D), a footprint store, or "
                   "CONFIG,STEP (the config's run period)")
    p.add_argument("--regrid", action="store_true", help="remap footprints on another grid conservatively (else rejected)")
    p.add_argument("--truncate", action="store_true",
                   help="drop sensitivity outside the flux time axis (else such records are rejected)")
    p.add_argument("--boundary", choices=["auto", "require", "ignore"], default="auto",
                   help="boundary sensitivities: keep when every record has them (auto), reject records without "
                   "(require), or drop them (ignore)")
    p.add_argument("--strict", action="store_true", help="any rejected file or record is an error")
    p.add_argument("--parts", type=int, metavar="N", help="split the inputs into N parts (default from their count and size)")
    p.add_argument("--part", type=int, metavar="K", help="process only part K of N (a Slurm array task); merge later")
    p.add_argument("--no-merge", action="store_true", help="write the parts only")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    g = p.add_argument_group("reader options")
    g.add_argument("--format", choices=["auto", "stilt", "flexpart", "name"], default="auto",
                   help="footprint format (default: detected from the variables)")
    g.add_argument("--back-hours", type=float, metavar="H",
                   help="back-time of time-integrated footprints when the file does not state it (NAME: 720)")
    g.add_argument("--site", help="site code for files that do not carry one (STILT), or to override it")
    g.add_argument("--sort-times", action="store_true", help="sort non-increasing NAME/PARIS receptor times")
    g.add_argument("--time-resolved", action="store_true", help="NAME: read fp_HiTRes (hourly back-time) instead of fp")
    g.add_argument("--missing-hitres", choices=["error", "integrated"], default="error",
                   help="NAME fp_HiTRes all NaN at a time: error, or use the integrated fp")
    g.add_argument("--clip-negative-residual", action="store_true",
                   help="NAME fp_HiTRes: set negative residual-slot values to 0 (counted)")
    g.add_argument("--stilt-cell-coordinates", choices=["centre", "lower-left"], default="centre",
                   help="STILT lat/lon are cell centres (R-STILT v2) or lower-left corners (older/ICOS STILT)")
    g.add_argument("--stilt-v1-units", action="store_true",
                   help="read R-STILT v1 'Footprint' as ppm/(umol m-2 s-1) whatever its (wrong) units label says")
    p.add_argument("--comm", choices=["auto", "serial", "mpi"], default="auto",
                   help="communicator: MPI when launched by mpiexec/srun (auto), or force one")
    _verbose(p)

    p = sub.add_parser("merge", help="merge the verified parts of an ingestion into the store",
                       description="Merge OUT.parts/part-*.h5 (all parts must be present and verified) into OUT.")
    p.add_argument("--out", type=Path, required=True, help="footprint store to write (its parts are in OUT.parts/)")
    p.add_argument("--strict", action="store_true", help="any rejected file or record is an error")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    _verbose(p)

    p = sub.add_parser("inspect", help="summarise a footprint store",
                       description="Print observations per site and inlet, receptor time span, flux steps, grid, non-zeros "
                       "and density; optionally write the total sensitivity map.")
    p.add_argument("store", type=Path)
    p.add_argument("--map", type=Path, metavar="OUT.nc",
                   help="write the total sensitivity (sum over observations and flux steps per cell) as NetCDF")
    _verbose(p)


def _is_config(path: Path) -> bool:
    return path.is_dir() or path.suffix == ".toml"


def _grid(spec: str):
    from ..gridspec import grid_from_spec

    return grid_from_spec(spec)


def _time_axis(spec: str):
    from transport.errors import InputError
    from transport.grid import TimeAxis
    from transport.ingest import grid_from_file

    from ..config import load_config

    path, step = Path(spec), None
    if not path.exists() and "," in spec and Path(spec.rsplit(",", 1)[0]).exists():
        path, step = Path(spec.rsplit(",", 1)[0]), spec.rsplit(",", 1)[1]
    try:
        if path.exists():
            if _is_config(path):
                if step is None:
                    raise ValueError("a config gives the run period; add the flux step: CONFIG,STEP (e.g. cases/x,1D)")
                config = load_config(path)
                return TimeAxis.regular(config.run.start, config.run.end, step)
            axis = grid_from_file(path)[1]
            if axis is None:
                raise ValueError(f"{path} is not a footprint store")
            return axis
        parts = spec.split(",")
        if len(parts) != 3:
            raise ValueError("expected START,END,STEP")
        return TimeAxis.regular(*(p.strip() for p in parts))
    except ValueError as exc:
        raise InputError(None, "--time", f"{spec!r}: {exc}",
                         "e.g. --time 2014-01-01,2014-04-01,1D, --time store.h5 or --time cases/x,3h") from exc


def _reader_options(args):
    from transport.formats.common import ReaderOptions

    return ReaderOptions(format=args.format, back_hours=args.back_hours, site=args.site, sort=args.sort_times,
                         time_resolved=args.time_resolved, missing_hitres=args.missing_hitres,
                         clip_negative_residual=args.clip_negative_residual,
                         stilt_cell_coordinates=args.stilt_cell_coordinates.replace("-", "_"),
                         stilt_v1_units=args.stilt_v1_units)


class _Bar:
    """``progress(done, total)`` callback drawing inversion.progress.Progress on rank 0."""

    def __init__(self, comm):
        self.comm = comm
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        from ..progress import Progress

        if self.bar is None:
            self.bar = Progress(self.comm, "ingesting footprint files", total).__enter__()
        self.bar.update(done, "(this rank's share)" if self.comm.size > 1 else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _report(summary) -> None:
    from rich.console import Console

    console = Console()
    rejected = len(summary.rejected)
    console.print(f"[bold]{summary.store}[/bold]: {summary.n_obs:,} footprints from {summary.n_files:,} files "
                  f"({summary.n_parts} parts, {summary.parts_skipped} already done); boundary sensitivities "
                  f"{'stored' if summary.boundary else 'absent'}")
    if rejected:
        console.print(f"[yellow]{rejected} rejections ({summary.n_rejected_files} whole files) listed in "
                      f"{summary.rejected_csv}[/yellow]")


def _ingest(args, comm) -> int:
    import time

    from transport.errors import InputError
    from transport.ingest import IngestOptions, expand_inputs, ingest

    from ..progress import log

    if args.part is not None and args.parts is None:
        raise InputError(None, "--part", "--part K needs --parts N (the same N for every task)", "Add --parts N")
    options = IngestOptions(reader=_reader_options(args), regrid=args.regrid, truncate=args.truncate,
                            boundary=args.boundary, strict=args.strict)
    grid, axis = _grid(args.grid), _time_axis(args.time)
    files = expand_inputs(args.inputs)
    log.info("target grid %s; %d flux steps %s … %s", grid.describe(), axis.size, axis.start[0], axis.end[-1])
    bar = _Bar(comm)
    t0 = time.perf_counter()
    try:
        summary = ingest(files, args.out, grid, axis, options=options, comm=comm, n_parts=args.parts, part=args.part,
                         merge=not args.no_merge, overwrite=args.overwrite, progress=bar)
    finally:
        bar.close()
    if comm.is_root:
        if summary is None:
            log.info("parts written to %s.parts/ in %.1f s; merge with: tanhui footprints merge --out %s",
                     args.out, time.perf_counter() - t0, args.out)
        else:
            _report(summary)
    return EXIT_OK


def _inspect(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from transport.inspect import summarise, total_sensitivity
    from transport.store import FootprintStore

    from ..io import write_netcdf

    store = FootprintStore(args.store)
    info = summarise(store)
    console = Console()
    console.print(f"[bold]{info['path']}[/bold]: {info['n_obs']:,} observations, units {info['units']}")
    table = Table("site", "observations", "inlet heights (m)")
    for site, s in info["sites"].items():
        table.add_row(site, f"{s['count']:,}", ", ".join(f"{h:g}" for h in s["inlets_m"]))
    console.print(table)
    if info["receptor_times"]:
        console.print(f"receptor times {info['receptor_times'][0]} … {info['receptor_times'][1]}")
    steps = info["flux_steps"]
    console.print(f"flux steps: {steps['count']} from {steps['start']} to {steps['end']}, lengths "
                  f"{', '.join(f'{s / 3600:g} h' for s in steps['lengths_s'])}{' (with gaps)' if steps['gaps'] else ''}")
    console.print(f"grid {info['grid']}")
    console.print(f"non-zeros {info['nnz']:,} of {info['n_obs'] * info['n_columns']:,} ({100 * info['density']:.3g} % dense, "
                  f"sparsity {100 * (1 - info['density']):.4g} %), {info['nnz_per_obs']:,.0f} per observation")
    heights = info["boundary_heights_m"]
    console.print("boundary sensitivities: " + (f"{len(heights)} heights {heights[0]:g} … {heights[-1]:g} m" if heights else "none"))
    if args.map is not None:
        write_netcdf(total_sensitivity(store), args.map)
        console.print(f"total sensitivity map written to {args.map}")
    return EXIT_OK


def main(args, comm) -> int:
    from transport.ingest import merge_parts, write_manifest

    from ..progress import log

    if args.action == "manifest":
        files = write_manifest(args.patterns, args.out)
        log.info("%d files listed in %s", len(files), args.out)
        return EXIT_OK
    if args.action == "ingest":
        return _ingest(args, comm)
    if args.action == "merge":
        _report(merge_parts(args.out, strict=args.strict, overwrite=args.overwrite))
        return EXIT_OK
    return _inspect(args)
