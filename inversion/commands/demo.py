"""``tanhui demo --make-data``: generate the inputs of a synthetic twin case."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import DEFAULT_CASE, EXIT_OK

NAME = "demo"
HELP = "generate the inputs of a synthetic twin case"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Generate (deterministically, from twin.toml) the footprints, prior, regions, "
                          "observations and truth of a twin case.")
    parser.add_argument("case", nargs="?", default=DEFAULT_CASE, help=f"case directory (default: {DEFAULT_CASE})")
    parser.add_argument("--make-data", action="store_true", required=True, help="write the case's input files")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def main(args, comm) -> int:
    from ..progress import log
    from ..twin import make_twin_data

    t0 = time.perf_counter()
    paths = make_twin_data(Path(args.case))
    log.info("twin inputs written in %.1f s: %s", time.perf_counter() - t0,
             ", ".join(str(p) for p in paths.values()))
    return EXIT_OK
