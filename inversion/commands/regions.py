"""``tanhui regions build|list``: region masks for a grid, and the DCW codes available."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from . import EXIT_OK

NAME = "regions"
HELP = "build region masks (countries, provinces, your polygons) for a grid; list DCW codes"

_SOURCES = """\
sources (repeat --source; regions are concatenated in order):
  dcw:GB,FR,DE        DCW countries by ISO 3166 alpha-2 code or name (Debian package gmt-dcw)
  dcw:CN.*            all provinces of China (CN.BJ … CN.ZJ); also dcw:CN.BJ,CN.TJ
  dcw:*               every country with land on the grid (e.g. a land mask)
  FILE[:COLUMN]       shapefile / GeoPackage / GeoJSON, one region per value of COLUMN (default: name)
  MASK.nc             an existing mask file (remapped conservatively if on another grid)
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = "Build fractional region masks on an inversion grid, or list the DCW countries/provinces."
    sub = parser.add_subparsers(dest="regions_command", required=True, metavar="{build,list}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--dcw", type=Path, help="DCW-GMT file (default: $TANHUI_DCW_FILE or "
                        "/usr/share/gmt-dcw/dcw-gmt.nc)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")

    build = sub.add_parser("build", parents=[common], help="write a region mask NetCDF for a grid",
                           description="Write region_fraction(region, lat, lon): the exact fraction of each grid "
                           "cell inside each region (atomically, with names, codes, areas and provenance).",
                           epilog=_SOURCES, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = build.add_mutually_exclusive_group(required=True)
    where.add_argument("--grid", help="lat_min,lat_max,lon_min,lon_max,dlat,dlon (cell edges, degrees)")
    where.add_argument("--like", type=Path, help="take the grid of a case (config TOML or directory), a footprint "
                       "store (.h5) or a NetCDF file with lat/lon")
    build.add_argument("--source", action="append", required=True, metavar="SOURCE", help="region source (see below)")
    build.add_argument("--out", type=Path, required=True, help="mask file to write (NetCDF)")
    build.add_argument("--overlap-tolerance", type=float, default=None, metavar="FRACTION",
                       help="accept overlaps between regions up to this fraction of a region's area and share them "
                       "in proportion (default 0.01, i.e. 1 %%: border slivers of digitised neighbours)")
    build.add_argument("--crs", help="CRS of vector files that carry none, e.g. EPSG:4326 (otherwise refused)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    listing = sub.add_parser("list", parents=[common], help="list DCW country codes, or the provinces of CC.*",
                             description="List the countries in DCW-GMT (codes, names, whether provinces/states "
                             "exist), or with PATTERN such as CN.* the provinces of one country.")
    listing.add_argument("pattern", nargs="?", help="CC.* for the provinces/states of country CC")


def main(args, comm) -> int:
    return _build(args) if args.regions_command == "build" else _list(args)


def _build(args) -> int:
    from transport.errors import InputError

    from ..gridspec import grid_like, parse_grid
    from ..masks.build import DEFAULT_OVERLAP_TOLERANCE, build_masks, write_masks
    from ..progress import log

    t0 = time.perf_counter()
    if args.out.exists() and not args.overwrite:
        raise InputError(args.out, None, "file exists", "pass --overwrite to replace it")
    tolerance = DEFAULT_OVERLAP_TOLERANCE if args.overlap_tolerance is None else args.overlap_tolerance
    if not 0 <= tolerance < 1:
        raise InputError(None, "--overlap-tolerance", f"{tolerance} is not in [0, 1)", "give a fraction such as 0.01")
    grid, grid_source = (parse_grid(args.grid), "--grid") if args.grid else grid_like(args.like)
    _require_shapely()
    masks = build_masks(args.source, grid, dcw_file=args.dcw, overlap_tolerance=tolerance, assume_crs=args.crs)
    write_masks(masks, args.out)
    coverage = masks.fraction.sum(axis=0)
    log.info("%s: %d regions on %s (from %s); %.1f %% of the grid's area in some region; %.1f s", args.out,
             len(masks.names), grid.describe(), grid_source,
             100 * float((coverage * grid.cell_area()).sum() / grid.cell_area().sum()), time.perf_counter() - t0)
    return EXIT_OK


def _require_shapely() -> None:
    try:
        import shapely  # noqa: F401
    except ImportError as exc:
        from transport.errors import InputError

        raise InputError(None, "shapely", "building masks from polygons needs shapely ≥ 2",
                         "install the regions extra: pip install 'tanhui[regions]'") from exc


def _list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    _require_shapely()
    from ..masks.dcw import Dcw

    dcw = Dcw(args.dcw)
    with_states = set(dcw.countries_with_states())
    if args.pattern:
        entries = dcw.resolve([args.pattern], "pattern")
        title = f"DCW {dcw.version}: {len(entries)} regions for {args.pattern} (use as dcw:{args.pattern} or dcw:CODE,…)"
    else:
        entries = [e for e in dcw.entries.values() if not e.is_state]
        title = (f"DCW {dcw.version}: {len(entries)} countries (use as dcw:CODE,…; provinces/states of "
                 f"{', '.join(sorted(with_states))} as dcw:CC.*)")
    table = Table(title=title)
    table.add_column("code")
    table.add_column("name")
    if not args.pattern:
        table.add_column("provinces/states")
    for e in entries:
        row = [e.code, e.name] + ([] if args.pattern else [f"dcw:{e.code}.*" if e.code in with_states else ""])
        table.add_row(*row)
    Console().print(table)
    return EXIT_OK
