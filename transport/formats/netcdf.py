"""A lazy, read-only, undecoded view of a NetCDF file for the footprint readers.

The readers need little of xarray: variable and dimension names, attributes, a variable's
dims and raw values, ``transpose`` and integer ``isel``.  Going through ``xarray.open_dataset``
cost ≈ 4 ms per file (its file manager, lazy-array and Dataset machinery; measured on
257 kB R-STILT files, ``benchmarks/ingest_stilt.py``), more than everything else an
ingestion does with a file, so :func:`open_netcdf` wraps ``netCDF4.Dataset`` directly and
returns exactly what ``xarray.open_dataset(engine="netcdf4", mask_and_scale=False,
decode_times=False, decode_coords=False)`` gave the readers:

* attributes as netCDF4 returns them (``_FillValue``, ``scale_factor`` … kept raw);
* values with netCDF4's automatic masking, scaling and char→string conversion off;
* character arrays (dtype ``S1``) joined along their last dimension into fixed-width byte
  strings, which drops that dimension, and decoded to ``str`` when the variable has an
  ``_Encoding`` attribute (an object array of ``str``; the attribute is then removed) —
  xarray's ``concat_characters``.

Nothing is read until asked for: ``[name].values`` reads that variable (or the selected
part of it) when called.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Self

import netCDF4
import numpy as np


class NcVariable:
    """One variable: ``dims`` (tuple), ``sizes``, ``shape``, ``attrs`` (dict), ``values``
    (numpy, read on access), ``transpose(*dims)`` and ``isel(dim=int, …)`` (lazy views)."""

    def __init__(self, var: netCDF4.Variable, dims: tuple[str, ...], shape: tuple[int, ...], attrs: dict,
                 key: tuple | None = None, order: tuple[int, ...] | None = None, loaded: np.ndarray | None = None):
        self._var = var
        self._key = key if key is not None else (slice(None),) * len(shape)  # per original dim
        self._base_dims = dims  # after any int selection, before ``order``
        self._base_shape = shape
        self._order = order if order is not None else tuple(range(len(dims)))
        self._loaded = loaded  # character arrays: already joined (the char dim is gone)
        self.attrs = attrs

    @property
    def dims(self) -> tuple[str, ...]:
        return tuple(self._base_dims[i] for i in self._order)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._base_shape[i] for i in self._order)

    @property
    def sizes(self) -> dict[str, int]:
        return dict(zip(self.dims, self.shape))

    def _view(self, key, dims, shape, order) -> NcVariable:
        return NcVariable(self._var, dims, shape, self.attrs, key, order, self._loaded)

    def transpose(self, *dims: str) -> NcVariable:
        if sorted(dims) != sorted(self.dims):
            raise ValueError(f"transpose dims {dims} are not a permutation of {self.dims}")
        return self._view(self._key, self._base_dims, self._base_shape, tuple(self._base_dims.index(d) for d in dims))

    def isel(self, **indexers: int) -> NcVariable:
        key, dims, shape = list(self._key), [], []
        free = [i for i, k in enumerate(self._key) if isinstance(k, slice)]  # original positions of base dims
        for position, (dim, size) in enumerate(zip(self._base_dims, self._base_shape)):
            if dim in indexers:
                index = int(indexers[dim])
                if not -size <= index < size:
                    raise IndexError(f"index {index} is out of bounds for dimension {dim!r} of size {size}")
                key[free[position]] = index % size
            else:
                dims.append(dim)
                shape.append(size)
        unknown = set(indexers) - set(self._base_dims)
        if unknown:
            raise ValueError(f"dimensions {sorted(unknown)} do not exist; the variable has {self._base_dims}")
        kept = [d for d in self.dims if d not in indexers]
        return self._view(tuple(key), tuple(dims), tuple(shape), tuple(dims.index(d) for d in kept))

    @property
    def values(self) -> np.ndarray:
        if self._loaded is not None:
            raw = self._loaded[(*self._key, Ellipsis)]  # a 0-d array, not a scalar, when every dim is selected
        else:
            raw = np.asarray(self._var[self._key] if self._key else self._var[...])
        return np.transpose(raw, self._order) if self._order != tuple(range(raw.ndim)) else raw


class NcDataset:
    """A NetCDF file's root group: ``variables`` and ``data_vars`` (name → variable),
    ``dims`` (name → size), ``attrs``, ``ds[name]``; a context manager closing the file."""

    def __init__(self, path: str | os.PathLike):
        self._nc = netCDF4.Dataset(os.fspath(path), "r")
        try:
            self._nc.set_auto_maskandscale(False)
            self._nc.set_auto_chartostring(False)
            # as xarray: the dimensions of the variables (a character array's last one is
            # joined away), not every dimension the file defines
            sizes = {name: len(dim) for name, dim in self._nc.dimensions.items()}
            self.dims = {d: sizes[d] for var in self._nc.variables.values()
                         for d in (var.dimensions[:-1] if var.dtype == np.dtype("S1") else var.dimensions)}
            self.attrs = {k: self._nc.getncattr(k) for k in self._nc.ncattrs()}
        except BaseException:
            self._nc.close()
            raise
        self._cache: dict[str, NcVariable] = {}
        self.variables = _Variables(self)
        self.data_vars = _Variables(self, data_only=True)

    def __getitem__(self, name: str) -> NcVariable:
        if name not in self._cache:
            var = self._nc.variables[name]
            attrs = {k: var.getncattr(k) for k in var.ncattrs()}
            dims, shape, loaded = tuple(var.dimensions), tuple(var.shape), None
            if var.dtype == np.dtype("S1") and dims:
                chars = np.ascontiguousarray(np.asarray(var[...]))
                loaded = chars.view(f"S{max(shape[-1], 1)}").reshape(shape[:-1]) if shape[-1] else \
                    np.zeros(shape[:-1], dtype="S1")
                encoding = attrs.pop("_Encoding", None)
                if encoding is not None:
                    loaded = np.vectorize(lambda b: b.decode(encoding), otypes=[object])(loaded)  # object, as xarray
                dims, shape = dims[:-1], shape[:-1]
            self._cache[name] = NcVariable(var, dims, shape, attrs, loaded=loaded)
        return self._cache[name]

    def close(self) -> None:
        self._nc.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _Variables(Mapping):
    """Names of the variables (``data_only``: those that are not a dimension's coordinate)."""

    def __init__(self, ds: NcDataset, data_only: bool = False):
        self._ds = ds
        self._names = [n for n, v in ds._nc.variables.items() if not (data_only and v.dimensions == (n,))]

    def __getitem__(self, name: str) -> NcVariable:
        if name not in self._names:
            raise KeyError(name)
        return self._ds[name]

    def __contains__(self, name) -> bool:
        return name in self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


def open_netcdf(path: str | os.PathLike) -> NcDataset:
    """Open a NetCDF-3 or NetCDF-4/HDF5 file as an :class:`NcDataset` (see the module docstring)."""
    return NcDataset(path)
