"""tanhui transport: grids, footprint stores and the footprint observation operator.

This package never imports :mod:`inversion`; communicators are passed in (duck-typed, see
``inversion.parallel``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transport.errors import InputError
    from transport.grid import Grid, TimeAxis, great_circle_km
    from transport.operator import FootprintOperator
    from transport.store import FootprintStore, StoreWriter
    from transport.synthetic import plume_footprints

# Public names and their modules, imported on first access: scipy, h5py and xarray cost about
# a second to import, which a command such as `tanhui --help` should not pay.
_EXPORTS = {
    "Grid": "transport.grid",
    "TimeAxis": "transport.grid",
    "great_circle_km": "transport.grid",
    "FootprintStore": "transport.store",
    "StoreWriter": "transport.store",
    "FootprintOperator": "transport.operator",
    "InputError": "transport.errors",
    "plume_footprints": "transport.synthetic",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'transport' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups bypass __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
