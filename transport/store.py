"""The footprint store: sparse per-observation footprints K in one HDF5 file.

K has one row per observation and one column per (flux time step, lat, lon) cell, flattened
as ``col = (t * nlat + i) * nlon + j`` (see :mod:`transport.grid`); its values are surface
sensitivities in m² s mol⁻¹, so that  Δy [mol mol⁻¹] = Σ_col K[row, col] · flux[col]
[mol m⁻² s⁻¹].  Rows are stored as CSR::

    / attrs: format="tanhui-footprint-store", format_version=1, units="m2 s mol-1",
             created_by, history
    /grid/lat, /grid/lat_bounds, /grid/lon, /grid/lon_bounds   float64, attr units
    /time/start, /time/end     int64 seconds since 1970-01-01T00:00:00Z
    /obs/obs_id, /obs/site     variable-length UTF-8 strings
    /obs/time                  int64 seconds since 1970-01-01T00:00:00Z
    /obs/latitude, /obs/longitude, /obs/height (m above ground)   float64
    /footprint/indptr  int64 (n_obs + 1)
    /footprint/indices int32 (int64 when n_columns >= 2**31), sorted within each row
    /footprint/data    float32
    /boundary/height           float64 (n_height,), m above ground              (optional)
    /boundary/n, /boundary/s   float32 (n_obs, n_height, nlon)  fraction of the particles
    /boundary/e, /boundary/w   float32 (n_obs, n_height, nlat)  leaving through each edge

``/boundary`` (boundary sensitivities, for the background) is optional and all-or-nothing:
either every row has its four edges or the group is absent.  Stores without it are read as
before (the format version is unchanged).

A rank reads only its own rows: ``read_rows`` touches ``indptr[start:stop+1]`` and the
matching slices of ``indices``/``data``, never the whole datasets.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.units import FOOTPRINT_UNITS, conversion_factor

FORMAT = "tanhui-footprint-store"
FORMAT_VERSION = 1
TIME_UNITS = "seconds since 1970-01-01T00:00:00Z"

# indices/data are chunked along their one axis and compressed.  Measured on a 5.0M-nnz store
# of synthetic plume footprints (1399 rows, 2^17-element chunks, 2 CPUs, warm page cache;
# rates for one whole read / for 9 reads of ~1/8 of the rows each):
#   gzip level 1 + shuffle  17.1 MiB   70 / 54 Mnnz/s   (write 10 Mnnz/s)
#   lzf                     39.5 MiB  106 / 82 Mnnz/s   (write 17 Mnnz/s)
#   lzf + shuffle           18.6 MiB   56 / 45 Mnnz/s
#   uncompressed            39.2 MiB  549 / 397 Mnnz/s
# lzf reads ~1.5x faster from cache but does not compress these values at all, so we take
# gzip 1 + shuffle: 2.3x smaller files (what counts on shared cluster file systems and for
# cold reads), still ~15 ms per million non-zeros, and a store is read once per run.
# Chunk sizes 2^16..2^18 measured within 10% of each other.
_COMPRESSION = dict(compression="gzip", compression_opts=1, shuffle=True)
_CHUNK = 1 << 17  # elements per chunk (512 KiB of float32)

_OBS_FIELDS = ("obs_id", "time", "site", "latitude", "longitude", "height")
BOUNDARY_EDGES = ("n", "s", "e", "w")  # n, s run along longitude; e, w along latitude
_OBS_UNITS = {"time": TIME_UNITS, "latitude": "degrees_north", "longitude": "degrees_east", "height": "m"}
_HINT_REBUILD = "Re-create the store with FootprintStore.create (or the footprint readers)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tanhui")
    except PackageNotFoundError:
        return "unknown"


def _seconds(times) -> np.ndarray:
    return np.asarray(times, dtype="datetime64[s]").astype(np.int64)


def _check_obs(obs, path) -> dict[str, np.ndarray]:
    """Validate the observation fields for a new store; returns them as numpy arrays."""
    missing = [name for name in _OBS_FIELDS if name not in obs]
    if missing:
        raise InputError(path, "obs", f"missing fields {missing}", f"Provide all of {list(_OBS_FIELDS)}")
    fields = {name: np.asarray(obs[name]) for name in _OBS_FIELDS}
    n_obs = fields["obs_id"].size
    for name, values in fields.items():
        if values.ndim != 1 or values.size != n_obs:
            raise InputError(path, f"obs/{name}", f"shape {values.shape} differs from obs_id ({n_obs},)", "Give one value per observation")
    fields["obs_id"] = fields["obs_id"].astype(str)
    fields["site"] = fields["site"].astype(str)
    _refuse_duplicates(fields["obs_id"], path)
    if fields["time"].dtype.kind != "M" or np.any(np.isnat(fields["time"])):
        raise InputError(path, "obs/time", "times must be datetime64 without NaT", "Convert the observation times to UTC datetime64")
    for name in ("latitude", "longitude", "height"):
        fields[name] = fields[name].astype(np.float64)
        if not np.all(np.isfinite(fields[name])):
            raise InputError(path, f"obs/{name}", "contains NaN or inf", "Drop observations without a receptor position")
    return fields


def _refuse_duplicates(obs_id: np.ndarray, path) -> None:
    ids, counts = np.unique(obs_id, return_counts=True)
    if np.any(counts > 1):
        dups = ids[counts > 1]
        raise InputError(
            path, "obs/obs_id", f"{dups.size} duplicated observation ids, e.g. {list(dups[:5])}", "Give every observation a unique obs_id"
        )


def _check_rows(data, indices, indptr, n_columns: int, obs_id: np.ndarray, path) -> None:
    """Raise InputError for column indices out of range, NaN/inf values or negative values.

    ``indptr`` is relative to ``data`` (starts at 0) and ``obs_id`` names its rows.
    """

    def offenders(bad: np.ndarray) -> str:
        rows = np.unique(np.searchsorted(indptr, np.flatnonzero(bad), side="right") - 1)
        return f"in {rows.size} observations, e.g. {', '.join(map(str, obs_id[rows[:5]]))}"

    # Scan in slices first: the masks below are 3 B per value, a lot beside 10⁸ values; the
    # whole-array masks are only built to word the error once something is wrong.
    step = 1 << 22
    if all(not ((indices[k:k + step] < 0) | (indices[k:k + step] >= n_columns)).any()
           and np.isfinite(data[k:k + step]).all() and not (data[k:k + step] < 0).any()
           for k in range(0, data.size, step)):
        return
    bad = (indices < 0) | (indices >= n_columns)
    if bad.any():
        raise InputError(
            path, "footprint/indices", f"{int(bad.sum())} column indices outside [0, {n_columns}) {offenders(bad)}",
            f"The footprints do not match the store's grid and time axis; {_HINT_REBUILD}",
        )
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(
            path, "footprint/data", f"{int(bad.sum())} NaN or inf values {offenders(bad)}",
            "Fix the source footprints (the readers must turn NaN/fill-value slots into absent entries) and rebuild the store",
        )
    bad = data < 0
    if bad.any():
        raise InputError(
            path, "footprint/data", f"{int(bad.sum())} negative values {offenders(bad)}",
            "Footprints are sensitivities and cannot be negative; fix the source footprints and rebuild the store",
        )


def _edge_length(edge: str, grid: Grid) -> int:
    return grid.lon.size if edge in ("n", "s") else grid.lat.size


def _check_boundary(boundary, n_rows: int, n_height: int, grid: Grid, obs_id: np.ndarray, path) -> dict[str, np.ndarray]:
    """Validate boundary fractions for ``n_rows`` rows; returns float32 arrays by edge."""
    if not isinstance(boundary, Mapping) or set(boundary) != set(BOUNDARY_EDGES):
        found = sorted(boundary) if isinstance(boundary, Mapping) else type(boundary).__name__
        raise ValueError(f"boundary must be a mapping with exactly the edges {BOUNDARY_EDGES}, got {found}")
    out = {}
    for edge in BOUNDARY_EDGES:
        values = np.asarray(boundary[edge], dtype=np.float32)
        shape = (n_rows, n_height, _edge_length(edge, grid))
        if values.shape != shape:
            raise ValueError(f"boundary[{edge!r}] has shape {values.shape}, expected {shape} (rows, height, cells along the edge)")
        bad = ~np.isfinite(values) | (values < 0) | (values > 1 + 1e-6)
        if bad.any():
            rows = np.unique(np.nonzero(bad)[0])
            raise InputError(
                path, f"boundary/{edge}", f"{int(bad.sum())} values that are NaN, inf or outside [0, 1] in {rows.size} "
                f"observations, e.g. {list(obs_id[rows[:5]])}", "Boundary sensitivities are fractions of particles; fix the source files",
            )
        out[edge] = values
    return out


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise InputError(path, None, "file exists", "Choose another path or pass overwrite=True")


class FootprintStore:
    """Read access to a footprint store (see the module docstring for the layout).

    Opening reads and validates only metadata: ``grid``, ``time_axis``, ``obs`` (an
    ``xarray.Dataset`` over dim ``obs``: obs_id, time datetime64[s], site, latitude,
    longitude, height), ``units``, ``n_obs``, ``n_columns`` (= nt·nlat·nlon), ``nnz`` and
    ``path``.  Anything wrong (missing file, not a store, units other than m² s mol⁻¹,
    inconsistent CSR pointers, duplicated obs ids) raises :class:`InputError`.
    The file is opened per read, so a store object is cheap to pickle and share.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(self.path, None, "footprint store not found", "Check the path, or build the store with the footprint readers")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(self.path, None, "not an HDF5 file", "Give the path of a tanhui footprint store (.h5)") from exc
        with f:
            self._read_metadata(f)

    def _dataset(self, f: h5py.File, name: str) -> h5py.Dataset:
        if not isinstance(f.get(name), h5py.Dataset):
            raise InputError(self.path, name, "missing", f"The store is incomplete; {_HINT_REBUILD}")
        return f[name]

    def _read_metadata(self, f: h5py.File) -> None:
        path = self.path
        if f.attrs.get("format") != FORMAT:
            raise InputError(
                path, "attribute format", "not a tanhui footprint store", "Convert footprints into a store with the footprint readers"
            )
        version = f.attrs.get("format_version")
        if version != FORMAT_VERSION:
            raise InputError(path, "attribute format_version", f"unsupported version {version!r}, expected {FORMAT_VERSION}", _HINT_REBUILD)
        self.units = str(f.attrs.get("units", ""))
        try:
            factor = conversion_factor(self.units, FOOTPRINT_UNITS, path=path, variable="attribute units")
        except InputError:
            factor = math.nan
        # the values are float32, so a factor within 1e-12 of one is exactly one for them
        if not math.isclose(factor, 1.0, rel_tol=1e-12):
            raise InputError(
                path, "attribute units", f"units {self.units!r} are not {FOOTPRINT_UNITS!r}",
                "Stores hold footprints in m2 s mol-1; convert the source files with the footprint readers",
            )
        grid_arrays = [self._dataset(f, f"grid/{n}")[()] for n in ("lat", "lon", "lat_bounds", "lon_bounds")]
        start, end = (self._dataset(f, f"time/{n}")[()] for n in ("start", "end"))
        try:
            self.grid = Grid(*grid_arrays)
        except ValueError as exc:
            raise InputError(path, "grid", str(exc), _HINT_REBUILD) from exc
        try:
            self.time_axis = TimeAxis(start=start.astype("datetime64[s]"), end=end.astype("datetime64[s]"))
        except ValueError as exc:
            raise InputError(path, "time", str(exc), _HINT_REBUILD) from exc

        columns = {}
        for name in _OBS_FIELDS:
            ds = self._dataset(f, f"obs/{name}")
            columns[name] = ds.asstr()[()].astype(str) if h5py.check_string_dtype(ds.dtype) else ds[()]
        self.n_obs = columns["obs_id"].size
        for name, values in columns.items():
            if values.shape != (self.n_obs,):
                raise InputError(path, f"obs/{name}", f"shape {values.shape} differs from obs/obs_id ({self.n_obs},)", _HINT_REBUILD)
        columns["time"] = columns["time"].astype("datetime64[s]")
        _refuse_duplicates(columns["obs_id"], path)
        self.obs = xr.Dataset({name: ("obs", values) for name, values in columns.items()})

        self.boundary_height = None
        if "boundary" in f:
            height = self._dataset(f, "boundary/height")[()]
            if height.ndim != 1 or height.size == 0:
                raise InputError(path, "boundary/height", f"shape {height.shape} is not a non-empty vector", _HINT_REBUILD)
            for edge in BOUNDARY_EDGES:
                shape = (self.n_obs, height.size, _edge_length(edge, self.grid))
                if self._dataset(f, f"boundary/{edge}").shape != shape:
                    raise InputError(path, f"boundary/{edge}", f"shape differs from (n_obs, n_height, n_cells) = {shape}", _HINT_REBUILD)
            self.boundary_height = height

        self.n_columns = self.time_axis.size * self.grid.size
        indptr_ds = self._dataset(f, "footprint/indptr")
        indices_ds, data_ds = self._dataset(f, "footprint/indices"), self._dataset(f, "footprint/data")
        self.nnz = data_ds.shape[0] if data_ds.ndim == 1 else -1
        if indices_ds.shape != (self.nnz,) or data_ds.dtype.kind != "f" or indices_ds.dtype.kind not in "iu":
            raise InputError(
                path, "footprint/indices", "indices and data must be 1-D integer and float arrays of equal length", _HINT_REBUILD
            )
        if indptr_ds.shape != (self.n_obs + 1,):
            raise InputError(path, "footprint/indptr", f"length {indptr_ds.shape} is not n_obs + 1 = {self.n_obs + 1}", _HINT_REBUILD)
        indptr = indptr_ds[()]  # n_obs + 1 integers: read once to validate, not kept
        if indptr[0] != 0 or indptr[-1] != self.nnz or np.any(np.diff(indptr) < 0):
            raise InputError(path, "footprint/indptr", f"must start at 0, never decrease and end at nnz = {self.nnz}", _HINT_REBUILD)

    def __repr__(self) -> str:
        return f"FootprintStore({str(self.path)!r}: {self.n_obs} obs × {self.n_columns} columns, nnz={self.nnz})"

    def read_rows(self, start: int, stop: int, *, check: bool = True, dtype=None) -> sp.csr_matrix:
        """Rows ``[start, stop)`` as a CSR matrix (stop − start, n_columns), float32 as stored
        or ``dtype`` (e.g. float64).

        Reads only ``indptr[start:stop+1]`` and the matching slices of indices/data.  With
        ``dtype`` HDF5 converts the values while reading (through its small conversion
        buffer), so memory holds only the converted rows, never a float32 copy beside them.
        With ``check``, column indices out of range, NaN/inf or negative values raise
        :class:`InputError` naming the offending obs ids.  Bad bounds raise ``ValueError``.
        """
        if not (0 <= start <= stop <= self.n_obs):
            raise ValueError(f"row range [{start}, {stop}) is not within [0, {self.n_obs}]")
        with h5py.File(self.path, "r") as f:
            indptr = f["footprint/indptr"][start : stop + 1]
            lo, hi = int(indptr[0]), int(indptr[-1])
            indices = f["footprint/indices"][lo:hi]
            values = f["footprint/data"]
            data = (values if dtype is None else values.astype(dtype))[lo:hi]
        indptr = indptr - lo
        if check:
            _check_rows(data, indices, indptr, self.n_columns, self.obs["obs_id"].values[start:stop], self.path)
        return sp.csr_matrix((data, indices, indptr), shape=(stop - start, self.n_columns))

    @property
    def has_boundary(self) -> bool:
        """True when the store holds boundary sensitivities (``/boundary``)."""
        return self.boundary_height is not None

    def read_boundary(self, start: int, stop: int) -> dict[str, np.ndarray]:
        """Boundary fractions of rows ``[start, stop)``: ``{"n"|"s": (rows, n_height, nlon),
        "e"|"w": (rows, n_height, nlat)}`` float32 (heights in ``boundary_height``, m).

        Reads only those rows.  A store without boundary sensitivities raises InputError.
        """
        if not self.has_boundary:
            raise InputError(
                self.path, "boundary", "the store has no boundary sensitivities",
                "Ingest footprints that carry particle_locations_n/e/s/w (NAME, FLEXPART/PARIS) to get them",
            )
        if not (0 <= start <= stop <= self.n_obs):
            raise ValueError(f"row range [{start}, {stop}) is not within [0, {self.n_obs}]")
        with h5py.File(self.path, "r") as f:
            return {edge: f[f"boundary/{edge}"][start:stop] for edge in BOUNDARY_EDGES}

    def iter_row_blocks(self, nnz_per_block: int = 1 << 22) -> Iterator[tuple[int, int]]:
        """Yield consecutive ``(start, stop)`` row ranges covering all rows, each holding
        about ``nnz_per_block`` non-zeros (at least one row per block)."""
        if nnz_per_block < 1:
            raise ValueError("nnz_per_block must be positive")
        with h5py.File(self.path, "r") as f:
            indptr = f["footprint/indptr"][()]
        start = 0
        while start < self.n_obs:
            stop = int(np.searchsorted(indptr, indptr[start] + nnz_per_block, side="right")) - 1
            stop = min(max(stop, start + 1), self.n_obs)
            yield start, stop
            start = stop

    @staticmethod
    def create(
        path: str | os.PathLike, grid: Grid, time_axis: TimeAxis, obs, *, overwrite: bool = False, boundary_height=None,
        compress: bool = True,
    ) -> StoreWriter:
        """Writer of a new store at ``path`` (use as a context manager, then ``append`` rows).

        ``obs``: mapping or ``xarray.Dataset`` with obs_id, time (datetime64), site,
        latitude, longitude, height (m above ground).  ``boundary_height`` (m, increasing):
        give it to store boundary sensitivities, which every ``append`` must then carry.
        ``compress=False`` writes the footprint and boundary datasets uncompressed (same
        layout, read the same way; for intermediate files written and read once, such as
        ingestion parts, where gzip costs more than the disk it saves).
        Everything is validated here, before any file is written: an existing ``path``
        without ``overwrite`` raises InputError.
        """
        return StoreWriter(Path(path), grid, time_axis, obs, overwrite=overwrite, boundary_height=boundary_height,
                           compress=compress)


class StoreWriter:
    """Writes a store into ``.{name}.tmp-{pid}`` beside ``path`` and moves it onto ``path``
    only when the context exits without error after all n_obs rows were appended; on any
    error the temporary file is removed and ``path`` is untouched."""

    def __init__(
        self, path: Path, grid: Grid, time_axis: TimeAxis, obs: Mapping | xr.Dataset, *, overwrite: bool, boundary_height=None,
        compress: bool = True,
    ):
        if not overwrite:
            _refuse_existing(path)
        if boundary_height is not None:
            boundary_height = np.asarray(boundary_height, dtype=np.float64)
            if boundary_height.ndim != 1 or boundary_height.size == 0 or not np.all(np.isfinite(boundary_height)) \
                    or np.any(np.diff(boundary_height) <= 0):
                raise ValueError(f"boundary_height must be a non-empty, finite, increasing vector, got {boundary_height!r}")
        self.boundary_height = boundary_height
        self.path = path
        self.grid = grid
        self.time_axis = time_axis
        self.obs = _check_obs(obs, path)
        self.overwrite = overwrite
        self._compression = _COMPRESSION if compress else {}
        self.n_obs = self.obs["obs_id"].size
        self.n_columns = time_axis.size * grid.size
        self._index_dtype = np.int32 if self.n_columns < 2**31 else np.int64
        self._tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self._file: h5py.File | None = None
        self._row_nnz: list[np.ndarray] = []
        self._rows = 0

    def __enter__(self) -> StoreWriter:
        self._file = f = h5py.File(self._tmp, "w")
        f.attrs.update(
            format=FORMAT,
            format_version=FORMAT_VERSION,
            units=FOOTPRINT_UNITS,
            created_by=f"tanhui {_version()}",
            history=f"{_dt.datetime.now(_dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ} created by tanhui transport.store",
        )
        for name, values, units in (
            ("grid/lat", self.grid.lat, "degrees_north"),
            ("grid/lat_bounds", self.grid.lat_bounds, "degrees_north"),
            ("grid/lon", self.grid.lon, "degrees_east"),
            ("grid/lon_bounds", self.grid.lon_bounds, "degrees_east"),
            ("time/start", _seconds(self.time_axis.start), TIME_UNITS),
            ("time/end", _seconds(self.time_axis.end), TIME_UNITS),
        ):
            f.create_dataset(name, data=values).attrs["units"] = units
        text = h5py.string_dtype("utf-8")
        for name, values in self.obs.items():
            ds = f.create_dataset(
                f"obs/{name}",
                data=_seconds(values) if name == "time" else values.astype(object) if values.dtype.kind == "U" else values,
                dtype=text if values.dtype.kind == "U" else None,
            )
            if name in _OBS_UNITS:
                ds.attrs["units"] = _OBS_UNITS[name]
        for name, dtype in (("footprint/indices", self._index_dtype), ("footprint/data", np.float32)):
            f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(_CHUNK,), **self._compression)
        if self.boundary_height is not None:
            f.create_dataset("boundary/height", data=self.boundary_height).attrs["units"] = "m"
            for edge in BOUNDARY_EDGES:
                cells = (self.boundary_height.size, _edge_length(edge, self.grid))
                rows_per_chunk = max(1, _CHUNK // (cells[0] * cells[1]))
                ds = f.create_dataset(f"boundary/{edge}", shape=(self.n_obs, *cells), maxshape=(None, *cells), dtype=np.float32,
                                      chunks=(rows_per_chunk, *cells), **self._compression)
                ds.attrs["units"] = "1"
        return self

    def append(self, rows, boundary: Mapping | None = None) -> None:
        """Append the next rows (any scipy sparse matrix with n_columns columns), in order.

        Values are stored as float32 with sorted, summed-duplicate column indices; NaN/inf,
        negative values or too many rows raise before anything is written.  ``boundary``
        (required exactly when the store was created with ``boundary_height``): the rows'
        edge fractions ``{"n"|"s": (rows, n_height, nlon), "e"|"w": (rows, n_height, nlat)}``
        in [0, 1].
        """
        if self._file is None:
            raise RuntimeError("use the StoreWriter as a context manager: with FootprintStore.create(...) as w: w.append(rows)")
        rows = sp.csr_matrix(rows, dtype=np.float32, copy=True)
        if rows.shape[1] != self.n_columns:
            raise ValueError(f"rows have {rows.shape[1]} columns, the store has {self.n_columns}")
        if self._rows + rows.shape[0] > self.n_obs:
            raise ValueError(f"appending {rows.shape[0]} rows exceeds n_obs = {self.n_obs}")
        rows.sum_duplicates()  # canonical CSR: sorted indices, no duplicates
        ids = self.obs["obs_id"][self._rows : self._rows + rows.shape[0]]
        _check_rows(rows.data, rows.indices, rows.indptr, self.n_columns, ids, self.path)
        if (boundary is None) != (self.boundary_height is None):
            raise ValueError("boundary sensitivities are all-or-nothing: pass boundary= to every append exactly when the "
                             "store was created with boundary_height")
        if boundary is not None:
            boundary = _check_boundary(boundary, rows.shape[0], self.boundary_height.size, self.grid, ids, self.path)
            for edge, values in boundary.items():
                self._file[f"boundary/{edge}"][self._rows : self._rows + rows.shape[0]] = values
        for name, values in (("footprint/indices", rows.indices.astype(self._index_dtype)), ("footprint/data", rows.data)):
            ds = self._file[name]
            ds.resize((ds.shape[0] + values.size,))
            ds[ds.shape[0] - values.size :] = values
        self._row_nnz.append(np.diff(rows.indptr))
        self._rows += rows.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None
            self._tmp.unlink(missing_ok=True)

    def _finish(self) -> None:
        if self._rows != self.n_obs:
            raise ValueError(f"{self._rows} rows were appended, the store has n_obs = {self.n_obs}")
        self._file.create_dataset("footprint/indptr", data=np.cumsum(np.concatenate([[0], *self._row_nnz]), dtype=np.int64))
        self._file.close()
        self._file = None
        if not self.overwrite:
            _refuse_existing(self.path)  # it may have appeared while we were writing
        os.replace(self._tmp, self.path)
