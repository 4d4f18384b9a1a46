"""``tanhui report RUN_DIR``: the national sink report of a finished run.

Reads the run's outputs (never its inputs) and writes into ``RUN_DIR/report`` (or ``--out``):
the CSV tables and NetCDF files of :mod:`inversion.report.tables`, the PARIS files of
:mod:`inversion.report.paris` and the HTML page (:mod:`inversion.report.html`).  ``tanhui run``
calls :func:`make_report` as its last step.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import DEFAULT_CASE, EXIT_OK

NAME = "report"
HELP = "write the national sink report of a finished run (tables, PARIS files, HTML)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Write the report of a finished run: totals per region and period with their full "
                          "uncertainty, compared with an inventory table; site statistics, maps, PARIS files and "
                          "CSV tables; the HTML page. Reads only the run's outputs.")
    parser.add_argument("run_dir", nargs="?", default=DEFAULT_CASE, type=Path,
                        help="the run's output directory, or a case directory / config file whose run.output_dir "
                             f"holds a finished run (default: {DEFAULT_CASE})")
    parser.add_argument("--inventory", type=Path, metavar="CSV",
                        help="inventory table to compare with (overrides [report] inventory; schema in the README)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: RUN_DIR/report)")
    parser.add_argument("--comm", choices=["auto", "serial", "mpi"], default="auto",
                        help="communicator (the report is written by rank 0 alone)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def make_report(run_dir: Path, *, inventory: Path | None = None, out_dir: Path | None = None) -> Path:
    """Load the run's :class:`~inversion.report.data.ReportData` and write every report file;
    returns the report directory."""
    from ..outputs import REPORT_DIR
    from ..progress import log
    from ..report.data import load_report_data
    from ..report.paris import write_paris
    from ..report.tables import write_tables

    data = load_report_data(run_dir, inventory)
    out = Path(out_dir) if out_dir is not None else data.run_dir / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_tables(data, out)
    write_paris(data, out)
    try:
        from ..report.html import write_html_report
    except ModuleNotFoundError as exc:
        if exc.name != "inversion.report.html":
            raise
        log.info("HTML page skipped: inversion.report.html is not available in this version")
    else:
        write_html_report(data, out)
    log.info("report written to %s", out)
    return out


def main(args, comm) -> int:
    if comm.is_root:
        make_report(args.run_dir, inventory=args.inventory, out_dir=args.out)
    comm.barrier()
    return EXIT_OK
