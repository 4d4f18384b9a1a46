"""Format auto-detection and the one entry point of the footprint readers.

Detection looks at the variables only (never at the file name):

=========================================  ==========
variables                                  format
=========================================  ==========
``foot`` or ``Footprint``                  STILT
``spec001_mr``, ``srr``, or ``fp`` on      FLEXPART (grid_time, openghg/PARIS)
``latitude``/``longitude``
``fp``, ``fp_HiTRes`` on ``lat``/``lon``   NAME
=========================================  ==========

Anything else (a flux or observation file, say) is refused as a foreign file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from transport.errors import InputError
from transport.formats import FootprintRecord
from transport.formats.common import ReaderOptions, open_dataset
from transport.formats.flexpart import read_flexpart
from transport.formats.name import read_name
from transport.formats.netcdf import NcDataset
from transport.formats.stilt import read_stilt

READERS = {"stilt": read_stilt, "flexpart": read_flexpart, "name": read_name}


def detect_format(ds: NcDataset, path: str | os.PathLike) -> str:
    """``"stilt"``, ``"flexpart"`` or ``"name"`` from the variables of an open file."""
    names = set(map(str, ds.variables))
    if names & {"foot", "Footprint"}:
        return "stilt"
    if names & {"spec001_mr", "srr"}:
        return "flexpart"
    if "fp" in names and {"latitude", "longitude"} & set(ds["fp"].dims):
        return "flexpart"
    if names & {"fp", "fp_HiTRes", "fp_low", "fp_high"}:
        return "name"
    shown = ", ".join(sorted(names)[:12]) + (", …" if len(names) > 12 else "")
    raise InputError(path, None, f"not a STILT, FLEXPART or NAME footprint file (variables: {shown})",
                     "Remove it from the manifest, or check that it is a footprint file")


def read_footprints(path: str | os.PathLike, **options) -> Iterator[FootprintRecord]:
    """Yield the footprint records of one file (STILT, FLEXPART or NAME), in m² s mol⁻¹.

    ``options`` are the fields of :class:`transport.formats.common.ReaderOptions`
    (``format="auto"`` detects the format from the variables; unknown option names raise
    TypeError).  Bad input raises :class:`InputError` naming the file and the variable.
    """
    reader_options = ReaderOptions.from_kwargs(options)
    path = Path(path)
    with open_dataset(path) as ds:
        fmt = detect_format(ds, path) if reader_options.format == "auto" else reader_options.format
        yield from READERS[fmt](ds, path, reader_options)
