"""Ingestion: thousands of footprint files → one footprint store, in parts, in parallel,
idempotently.

::

    files (manifest order) ─split─► parts (contiguous blocks of the manifest)
        ─ranks or array tasks─► {out}.parts/part-K.h5 (+ part-K.json) ─merge─► {out}
                                                                  {out}.rejected.csv

**Mapping** (:class:`RecordMapper`, the rule of :mod:`transport.formats`): a record on
another grid is remapped as an extensive field (``ConservativeRegridder.extensive``) only
with ``regrid=True``, else rejected; sensitivity falling outside the store grid is noted.
Back-time slot s spreads over flux step k with weight |slot_s ∩ step_k| / |slot_s|; a
record with sensitivity outside the flux time axis is rejected (with the fraction) unless
``truncate=True``, which drops that part (noted).  Boundary sensitivities follow the same
grid when the domain edges coincide (remapped along each edge); ``boundary="auto"`` keeps
them when every record has them (a mix is an error at the merge), ``"require"`` rejects
records without them, ``"ignore"`` drops them (counted).

**Parts**: part K holds the records of its files sorted by (receptor time, site, file,
record); ``part-K.json`` records the sha256 of every input file and of ``part-K.h5``, the
options and target fingerprint, the rejections and notes.  A part whose JSON, inputs and
store all verify is skipped, so an interrupted ingestion resumes where it stopped.  With a
communicator, rank r processes parts r, r + size, …; rank 0 merges.

**Merge**: parts are concatenated in manifest order and sorted by receptor time then site
(ties in manifest order), so the store does not depend on how the work was split.  A
repeated obs id is rejected (the first in that order is kept).  Rejections (file,
obs_id, reason) are written to ``{out}.rejected.csv`` — never dropped silently;
``strict=True`` turns any rejection into an error (after writing the CSV, before the store).

The communicator is duck-typed (``rank``, ``size``, ``barrier()``, ``bcast(obj)``,
``allgather(obj)``); ``None``
means serial.  Nothing here imports :mod:`inversion`.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from transport.errors import InputError
from transport.formats import FootprintRecord, Receptor
from transport.formats.common import ReaderOptions, open_dataset, source_grid
from transport.formats.detect import read_footprints
from transport.grid import Grid, TimeAxis
from transport.regrid import ConservativeRegridder
from transport.store import BOUNDARY_EDGES, FootprintStore

log = logging.getLogger("tanhui.ingest")

MANIFEST_HEADER = "# tanhui footprint manifest"
PART_FORMAT = "tanhui-ingest-part"
PART_FORMAT_VERSION = 1
# Default part size.  A part's mapped footprints are held in memory (float32 CSR) until it
# is written sorted, so parts are bounded by input bytes as well as by file count.
FILES_PER_PART = 64
BYTES_PER_PART = 256 << 20
_LOST_TOLERANCE = 1e-9  # relative sensitivity below which nothing is considered lost
_BLOCK_NNZ = 1 << 22  # merge block size (non-zeros)
NO_BOUNDARY = "the file has no boundary sensitivities"
IGNORED_BOUNDARY = "ignored (--boundary ignore)"


# --------------------------------------------------------------------------- inputs


_DATA_SUFFIXES = {".nc", ".nc4", ".cdf", ".h5", ".hdf5"}


def _is_manifest(path: Path) -> bool:
    """A manifest is a text file: not NetCDF/HDF5 by name or by signature."""
    if path.suffix.lower() in _DATA_SUFFIXES:
        return False
    with open(path, "rb") as fh:
        head = fh.read(8)
    return not (head.startswith(b"\x89HDF") or head[:3] == b"CDF")


def read_manifest(path: str | os.PathLike) -> list[Path]:
    """Files listed in a manifest (one per line; ``#`` comments and blank lines ignored;
    relative paths are relative to the manifest's directory)."""
    path = Path(path)
    base = path.resolve().parent
    files = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            p = Path(line).expanduser()
            files.append(p if p.is_absolute() else base / p)
    return files


def expand_inputs(specs: Sequence[str | os.PathLike]) -> list[Path]:
    """Input files from manifests, NetCDF files or glob patterns, in the given order (globs
    sorted), as absolute paths.  An existing file is a manifest unless it is NetCDF/HDF5 by
    suffix (.nc, .nc4, .cdf, .h5, .hdf5) or signature; a pattern matching nothing or a
    repeated file is an error."""
    files: list[Path] = []
    for spec in specs:
        p = Path(spec)
        if p.is_file():
            files.extend(read_manifest(p) if _is_manifest(p) else [p])
        else:
            matches = sorted(glob.glob(os.fspath(spec), recursive=True))
            if not matches:
                raise InputError(spec, None, "no such file and the pattern matches nothing", "Check the path or quote the glob")
            files.extend(Path(m) for m in matches)
    files = [Path(os.path.abspath(f)) for f in files]
    counts = Counter(files)
    repeated = [str(f) for f, n in counts.items() if n > 1]
    if repeated:
        raise InputError(repeated[0], None, f"{len(repeated)} files listed more than once", "List every file once")
    return files


def write_manifest(patterns: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[Path]:
    """Write the sorted list of files matching ``patterns`` to ``out`` (atomically).

    The list is sorted by absolute path, so the same files always give the same manifest
    and hence the same parts.
    """
    files = sorted(set(expand_inputs(patterns)), key=os.fspath)
    text = f"{MANIFEST_HEADER}: {len(files)} files\n" + "".join(f"{f}\n" for f in files)
    _write_atomic(Path(out), text)
    return files


def _write_atomic(path: Path, text: str) -> None:
    # transport cannot use inversion.io.atomic_path; same pattern: temporary sibling + rename
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _reason(exc: Exception) -> str:
    """An error as a rejection reason (the file is in its own column)."""
    if isinstance(exc, InputError):
        text = ": ".join(p for p in (exc.variable, exc.problem) if p)
        return f"{text}. {exc.hint}" if exc.hint else text
    return f"{type(exc).__name__}: {exc}"


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def grid_from_file(path: str | os.PathLike) -> tuple[Grid, TimeAxis | None]:
    """Grid (and time axis, for a store) of a footprint store or of a NetCDF file's first
    variable on lat|latitude × lon|longitude (cell centres)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found", "Give a footprint store or a NetCDF file on the target grid")
    with open(path, "rb") as fh:
        is_hdf5 = fh.read(4) == b"\x89HDF"
    if is_hdf5:
        with h5py.File(path, "r") as f:
            is_store = f.attrs.get("format") == "tanhui-footprint-store"
        if is_store:
            store = FootprintStore(path)
            return store.grid, store.time_axis
    with open_dataset(path) as ds:
        for name, var in ds.data_vars.items():
            dims = set(var.dims)
            if dims & {"lat", "latitude"} and dims & {"lon", "longitude"}:
                return source_grid(ds, path, name).grid, None
    raise InputError(path, None, "no variable on a lat/lon grid", "Give a NetCDF file with lat/lon coordinates")


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True)
class IngestOptions:
    """Choices of an ingestion (see the module docstring).  ``reader`` options go to
    :func:`transport.formats.detect.read_footprints`."""

    reader: ReaderOptions = field(default_factory=ReaderOptions)
    regrid: bool = False
    truncate: bool = False
    boundary: str = "auto"
    strict: bool = False

    def __post_init__(self) -> None:
        if self.boundary not in ("auto", "require", "ignore"):
            raise ValueError(f"boundary must be auto, require or ignore, got {self.boundary!r}")


class RecordRejected(Exception):
    """A record that cannot go into the store; the message is the reason."""


@dataclass
class MappedRecord:
    row: sp.csr_matrix  # (1, n_columns) m² s mol⁻¹
    boundary: dict[str, np.ndarray] | None  # edges on the store grid, or None
    boundary_height: np.ndarray | None
    boundary_missing: str | None  # why there is no boundary (None when there is one or none was read)
    notes: list[str]


def _grid_tolerance(grid: Grid) -> float:
    """Grids match when centres and bounds agree within 0.1 % of the smallest cell (NAME
    files store float32 coordinates, off by ~1e-6° from the float64 grid)."""
    widths = np.concatenate((np.diff(grid.lat_bounds, axis=1).ravel(), np.diff(grid.lon_bounds, axis=1).ravel()))
    return 1e-3 * float(widths.min())


def _index_dtype(n_columns: int) -> type:
    return np.int32 if n_columns < 2**31 else np.int64


def _band(grid: Grid, axis: str, lo: float, hi: float) -> Grid:
    """The cells of ``grid`` along ``axis`` as a one-cell-wide band spanning [lo, hi]."""
    band = np.array([[lo, hi]])
    if axis == "lon":
        return Grid(lat=[0.5 * (lo + hi)], lon=grid.lon, lat_bounds=band, lon_bounds=grid.lon_bounds)
    return Grid(lat=grid.lat, lon=[0.5 * (lo + hi)], lat_bounds=grid.lat_bounds, lon_bounds=band)


class RecordMapper:
    """Maps records onto the store grid and flux time axis (one per part; caches, per source
    grid, whether it is the store grid and else its regridders).

        K[k, cell] = Σ_s w[s, k] · K_s[cell],   w[s, k] = |slot_s ∩ step_k| / |slot_s|
    """

    def __init__(self, grid: Grid, time_axis: TimeAxis, options: IngestOptions):
        self.grid = grid
        self.axis = time_axis
        self.options = options
        self.tolerance = _grid_tolerance(grid)
        self._sources: dict[bytes, tuple | None] = {}
        self._step_start = time_axis.start.astype(np.int64)
        self._step_end = time_axis.end.astype(np.int64)

    def _source(self, source: Grid):
        """None when ``source`` is the store grid (within the tolerance), else its regridders
        (cell and edge).  Decided and built once per source grid: the thousands of files of a
        model run share one grid, so the comparison and the overlap matrices are reused."""
        key = b"".join(getattr(source, n).tobytes() for n in ("lat", "lon", "lat_bounds", "lon_bounds"))
        if key not in self._sources:
            self._sources[key] = None if source.same_as(self.grid, atol_deg=self.tolerance) else self._regridders_for(source)
        return self._sources[key]

    def _regridders_for(self, source: Grid):
        edges_match = all(
            abs(getattr(source, f"{a}_bounds")[i, j] - getattr(self.grid, f"{a}_bounds")[i, j]) <= self.tolerance
            for a in ("lat", "lon") for i, j in ((0, 0), (-1, 1))
        )
        edge = None
        if edges_match:
            lat_lo, lat_hi = self.grid.lat_bounds[0, 0], self.grid.lat_bounds[-1, 1]
            lon_lo, lon_hi = self.grid.lon_bounds[0, 0], self.grid.lon_bounds[-1, 1]
            edge = {"lon": ConservativeRegridder(_band(source, "lon", lat_lo, lat_hi), _band(self.grid, "lon", lat_lo, lat_hi)),
                    "lat": ConservativeRegridder(_band(source, "lat", lon_lo, lon_hi), _band(self.grid, "lat", lon_lo, lon_hi))}
        return ConservativeRegridder(source, self.grid), edge

    def _weights(self, slots: TimeAxis) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """w[s, k], the fraction of slot s inside flux step k, as its non-zeros (s, k, w)
        ordered by s then k."""
        start, end = slots.start.astype(np.int64), slots.end.astype(np.int64)
        k0 = np.searchsorted(self._step_end, start, side="right")  # first step ending after the slot starts
        k1 = np.searchsorted(self._step_start, end, side="left")  # past the last step starting before it ends
        counts = np.maximum(k1 - k0, 0)
        rows = np.repeat(np.arange(start.size), counts)
        cols = np.repeat(k0, counts) + (np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
        overlap = np.minimum(end[rows], self._step_end[cols]) - np.maximum(start[rows], self._step_start[cols])
        keep = overlap > 0  # steps of an axis with gaps may touch a slot without overlapping it
        rows, cols = rows[keep], cols[keep]
        return rows, cols, overlap[keep] / (end - start)[rows]

    def map(self, record: FootprintRecord) -> MappedRecord:
        notes = list(record.notes)
        values = record.values
        regridders = self._source(record.grid)
        if regridders is not None:
            if not self.options.regrid:
                raise RecordRejected(f"footprint grid ({record.grid.describe()}) differs from the store grid "
                                     f"({self.grid.describe()}); pass --regrid to remap it conservatively")
            total = values.sum()
            values = regridders[0].extensive(values)
            lost = 1.0 - values.sum() / total if total > 0 else 0.0
            if lost > _LOST_TOLERANCE:
                notes.append(f"regridded: {100 * lost:.3g} % of the sensitivity lies outside the store grid (dropped)")
            else:
                notes.append("regridded conservatively onto the store grid")
        n_slot, n_cell = values.shape[0], self.grid.size
        flat = values.reshape(n_slot, n_cell)
        slot, step, w = self._weights(record.slots)
        per_slot = flat.sum(axis=1)
        total = per_slot.sum()
        inside = np.bincount(slot, weights=w, minlength=n_slot)
        outside = float(((1.0 - inside) * per_slot).sum() / total) if total > 0 else 0.0
        if outside > _LOST_TOLERANCE:
            message = (f"{100 * outside:.3g} % of its sensitivity lies in back-time slots outside the flux time axis "
                       f"[{self.axis.start[0]}, {self.axis.end[-1]}) (slots {record.slots.start[0]} … {record.slots.end[-1]})")
            if not self.options.truncate:
                raise RecordRejected(message + "; extend the time axis or pass --truncate to drop that part")
            notes.append(message + " (dropped: truncate)")
        boundary, height, missing = self._boundary(record, regridders)
        return MappedRecord(self._steps(flat, slot, step, w), boundary, height, missing, notes)

    def _steps(self, flat: np.ndarray, slot: np.ndarray, step: np.ndarray, w: np.ndarray) -> sp.csr_matrix:
        """The record's store row: K[k, cell] = Σ_s w[s, k] · K_s[cell] (float64, summed over s
        in increasing order, then float32), its exact zeros dropped, as a (1, nt · n_cell) CSR
        row with sorted columns ``k · n_cell + cell``.  Dense over the few steps the slots
        touch (the same sums, in the same order, as a sparse product, so stores do not
        depend on how it is computed)."""
        n_columns = self.axis.size * flat.shape[1]
        if step.size == 0:
            return sp.csr_matrix((1, n_columns), dtype=np.float32)
        k_lo = int(step.min())
        acc = np.zeros((int(step.max()) - k_lo + 1, flat.shape[1]))
        for s, k, weight in zip(slot.tolist(), (step - k_lo).tolist(), w.tolist()):  # a few dozen (slot, step) pairs
            acc[k] += weight * flat[s]
        acc = acc.ravel()
        where = np.flatnonzero(acc)
        columns = where + k_lo * flat.shape[1]
        return sp.csr_matrix((acc[where].astype(np.float32), columns.astype(_index_dtype(n_columns)),
                              np.array([0, where.size])), shape=(1, n_columns))

    def _boundary(self, record: FootprintRecord, regridders):
        if record.boundary is None:
            return None, None, NO_BOUNDARY
        if self.options.boundary == "ignore":
            return None, None, IGNORED_BOUNDARY
        if regridders is None:
            return dict(record.boundary), np.asarray(record.boundary_height, dtype=np.float64), None
        edge = regridders[1]
        if edge is None:
            return None, None, "the footprint domain differs from the store domain, so its edge fractions do not apply"
        mapped = {}
        for name in BOUNDARY_EDGES:
            axis = "lon" if name in ("n", "s") else "lat"
            values = np.asarray(record.boundary[name], dtype=np.float64)  # (height, cells)
            band = values[:, None, :] if axis == "lon" else values[:, :, None]
            out = edge[axis].extensive(band)
            mapped[name] = out[:, 0, :] if axis == "lon" else out[:, :, 0]
        return mapped, np.asarray(record.boundary_height, dtype=np.float64), None


# --------------------------------------------------------------------------- parts


def _fingerprint(grid: Grid, time_axis: TimeAxis, options: IngestOptions) -> str:
    payload = {
        "grid": [getattr(grid, n).tolist() for n in ("lat", "lon", "lat_bounds", "lon_bounds")],
        "time": [time_axis.start.astype(np.int64).tolist(), time_axis.end.astype(np.int64).tolist()],
        "options": dataclasses.asdict(options) | {"strict": None},  # strict only matters at the merge
        "part_format": PART_FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def parts_dir(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def split_parts(files: Sequence[Path], n_parts: int) -> list[list[tuple[int, Path]]]:
    """Contiguous blocks of (manifest index, path); the first ``n % n_parts`` get one more."""
    blocks = np.array_split(np.arange(len(files)), n_parts)
    return [[(int(i), files[i]) for i in block] for block in blocks]


def _part_paths(out: Path, k: int) -> tuple[Path, Path]:
    d = parts_dir(out)
    return d / f"part-{k:05d}.h5", d / f"part-{k:05d}.json"


def _remove_parts_beyond(out: Path, n_parts: int) -> None:
    """Parts numbered ≥ n_parts are left from an ingestion split differently: remove them."""
    for path in parts_dir(out).glob("part-*.*"):
        match = re.fullmatch(r"part-(\d+)\.(h5|json)", path.name)
        if match and int(match.group(1)) >= n_parts:
            path.unlink(missing_ok=True)
            log.info("removed %s (left from an ingestion with more parts)", path)


def _verified(out: Path, k: int, files: list[tuple[int, Path]], fingerprint: str) -> dict | None:
    """The part's metadata when part-K.h5/.json exist and match the inputs, else None."""
    store_path, meta_path = _part_paths(out, k)
    if not (store_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if meta.get("format") != PART_FORMAT or meta.get("fingerprint") != fingerprint:
        return None
    if [(i["index"], i["path"]) for i in meta.get("inputs", [])] != [(i, os.fspath(p)) for i, p in files]:
        return None
    if any(_sha256(p) != i["sha256"] for (_, p), i in zip(files, meta["inputs"])):
        return None
    return meta if _sha256(store_path) == meta.get("store_sha256") else None


@dataclass
class _Accepted:
    """A mapped record (its source values are not kept: only the store row)."""

    key: tuple
    receptor: Receptor
    source: str
    mapped: MappedRecord
    file_index: int


def _read_file(path: Path, mapper: RecordMapper, reader: dict, file_index: int):
    """(accepted, record rejections) of one file (``reader``: the reader options as keyword
    arguments); a file-level error raises InputError."""
    accepted, rejected = [], []
    for r, record in enumerate(read_footprints(path, **reader)):
        try:
            mapped = mapper.map(record)
        except RecordRejected as exc:
            rejected.append((os.fspath(path), record.receptor.obs_id, str(exc)))
            continue
        key = (record.receptor.time.astype(np.int64).item(), record.receptor.site, file_index, r)
        accepted.append(_Accepted(key, record.receptor, record.source, mapped, file_index))
    return accepted, rejected


def _dedupe(keys_ids_files: list[tuple[tuple, str, str]]) -> tuple[list[int], list[tuple[str, str, str]]]:
    """Order by key; keep the first of each obs id.  Returns kept positions and rejections."""
    order = sorted(range(len(keys_ids_files)), key=lambda i: keys_ids_files[i][0])
    first: dict[str, str] = {}
    kept, rejected = [], []
    for i in order:
        _, obs_id, source = keys_ids_files[i]
        if obs_id in first:
            rejected.append((source, obs_id, f"duplicate obs_id {obs_id} (kept the one from {first[obs_id]})"))
        else:
            first[obs_id] = source
            kept.append(i)
    return kept, rejected


def ingest_part(out: Path, k: int, files: list[tuple[int, Path]], grid: Grid, time_axis: TimeAxis,
                options: IngestOptions, fingerprint: str, *, n_parts: int, rank: int = 0, size: int = 1,
                on_file: Callable[[], None] | None = None) -> dict:
    """Read, map and write part ``k`` (``files`` = its (manifest index, path) pairs); returns
    the part metadata (also written to part-K.json).  See the module docstring."""
    t0 = time.perf_counter()
    store_path, meta_path = _part_paths(out, k)
    meta_path.unlink(missing_ok=True)  # a stale JSON must never vouch for a new store
    mapper = RecordMapper(grid, time_axis, options)
    reader = dataclasses.asdict(options.reader)
    accepted: list[_Accepted] = []
    rejected: list[tuple[str, str, str]] = []
    inputs, n_bytes = [], 0
    for index, path in files:
        inputs.append({"index": index, "path": os.fspath(path), "sha256": _sha256(path)})
        try:
            n_bytes += path.stat().st_size
            got, refused = _read_file(path, mapper, reader, index)
        except (InputError, OSError) as exc:
            rejected.append((os.fspath(path), "", _reason(exc)))
        else:
            accepted.extend(got)
            rejected.extend(refused)
        if on_file is not None:
            on_file()

    kept, duplicates = _dedupe([(a.key, a.receptor.obs_id, a.source) for a in accepted])
    rejected.extend(duplicates)
    accepted = [accepted[i] for i in kept]
    with_boundary = [a for a in accepted if a.mapped.boundary is not None]
    heights = with_boundary[0].mapped.boundary_height if with_boundary else None
    for a in with_boundary:
        if not np.array_equal(a.mapped.boundary_height, heights):
            a.mapped.boundary, a.mapped.boundary_missing = None, "its boundary heights differ from the other records'"
    if options.boundary == "require":
        keep = [a for a in accepted if a.mapped.boundary is not None]
        rejected.extend((a.source, a.receptor.obs_id, f"no boundary sensitivities ({a.mapped.boundary_missing}); --boundary require")
                        for a in accepted if a.mapped.boundary is None)
        accepted = keep
    n_with = sum(a.mapped.boundary is not None for a in accepted)
    store_boundary = bool(accepted) and n_with == len(accepted) and options.boundary != "ignore"

    receptors = [a.receptor for a in accepted]
    obs = {
        "obs_id": np.array([r.obs_id for r in receptors], dtype=str),
        "time": np.array([r.time for r in receptors], dtype="datetime64[s]"),
        "site": np.array([r.site for r in receptors], dtype=str),
        "latitude": np.array([r.latitude for r in receptors], dtype=np.float64),
        "longitude": np.array([r.longitude for r in receptors], dtype=np.float64),
        "height": np.array([r.height for r in receptors], dtype=np.float64),
    }
    store_path.parent.mkdir(parents=True, exist_ok=True)
    # Parts are intermediates, written once and read once by the merge: uncompressed, as
    # gzip would cost more CPU (≈ 90 ns per non-zero to write and 15 to read back) than
    # the disk it saves is worth; the merged store is compressed.
    with FootprintStore.create(store_path, grid, time_axis, obs, overwrite=True,
                               boundary_height=heights if store_boundary else None, compress=False) as writer:
        for start in range(0, len(accepted), 256):
            block = accepted[start:start + 256]
            rows = sp.vstack([a.mapped.row for a in block], format="csr") if block else None
            boundary = ({e: np.stack([a.mapped.boundary[e] for a in block]) for e in BOUNDARY_EDGES}
                        if store_boundary else None)
            writer.append(rows, boundary=boundary)
    missing_reasons = Counter(a.mapped.boundary_missing for a in accepted if a.mapped.boundary is None)
    meta = {
        "format": PART_FORMAT, "version": PART_FORMAT_VERSION, "part": k, "n_parts": n_parts,
        "fingerprint": fingerprint, "options": dataclasses.asdict(options),
        "inputs": inputs, "n_bytes": n_bytes, "n_obs": len(accepted),
        "rows": [[a.file_index, a.key[3]] for a in accepted],
        "sources": [a.source for a in accepted],
        "rejected": [list(r) for r in rejected],
        "notes": [[a.receptor.obs_id, n] for a in accepted for n in a.mapped.notes],
        "boundary": {"with": n_with, "without": len(accepted) - n_with, "stored": store_boundary,
                     "missing_reasons": dict(missing_reasons)},
        "rank": rank, "world_size": size, "seconds": time.perf_counter() - t0,
        "store_sha256": _sha256(store_path),
    }
    _write_atomic(meta_path, json.dumps(meta, indent=1) + "\n")
    return meta


# --------------------------------------------------------------------------- merge


@dataclass
class IngestSummary:
    """What an ingestion did (returned on every rank)."""

    store: Path
    n_files: int
    n_obs: int
    rejected: list[tuple[str, str, str]]
    rejected_csv: Path
    n_parts: int
    parts_skipped: int = 0
    boundary: bool = False
    note_counts: dict[str, int] = field(default_factory=dict)

    @property
    def n_rejected_files(self) -> int:
        return sum(1 for _, obs_id, _ in self.rejected if not obs_id)


def _note_category(note: str) -> str:
    return re.sub(r"-?\d[\d.]*(?:e[-+]?\d+)?", "#", note)


def _write_rejected(path: Path, rejected: list[tuple[str, str, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "obs_id", "reason"])
    writer.writerows(rejected)
    _write_atomic(path, buffer.getvalue())


def merge_parts(out: str | os.PathLike, *, strict: bool = False, overwrite: bool = False) -> IngestSummary:
    """Merge the verified parts in ``{out}.parts/`` into the store ``out`` (module docstring)."""
    out = Path(out)
    metas = []
    for meta_path in sorted(parts_dir(out).glob("part-*.json")):
        try:
            metas.append(json.loads(meta_path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise InputError(meta_path, None, f"unreadable part metadata ({exc})", "Delete it and re-run the ingestion") from exc
    if not metas:
        raise InputError(parts_dir(out), None, "no ingested parts", "Run 'tanhui footprints ingest' first")
    n_parts = metas[0]["n_parts"]
    if any(m["n_parts"] != n_parts or m["fingerprint"] != metas[0]["fingerprint"] for m in metas):
        raise InputError(parts_dir(out), None, "parts from different ingestions (part count, grid, time axis or options differ)",
                         "Delete the parts directory and ingest again")
    done = {m["part"]: m for m in metas}
    missing = sorted(set(range(n_parts)) - set(done))
    if missing:
        raise InputError(parts_dir(out), None, f"{len(missing)} of {n_parts} parts missing, e.g. {missing[:10]}",
                         "Run the ingestion for those parts (--parts N --part K) before merging")
    metas = [done[k] for k in range(n_parts)]
    for m in metas:
        store_path, _ = _part_paths(out, m["part"])
        if _sha256(store_path) != m["store_sha256"]:
            raise InputError(store_path, None, "does not match its recorded sha256", "Delete it and re-run the ingestion")
    if out.exists() and not overwrite:
        raise InputError(out, None, "file exists", "Choose another --out or pass --overwrite")

    stores = [FootprintStore(_part_paths(out, m["part"])[0]) for m in metas]
    offsets = np.concatenate([[0], np.cumsum([s.n_obs for s in stores])])
    grid, axis = stores[0].grid, stores[0].time_axis
    entries = []  # (key, obs_id, source) over all parts, with (part, local row)
    where = []
    for p, (m, store) in enumerate(zip(metas, stores)):
        times = store.obs["time"].values.astype(np.int64)
        sites = store.obs["site"].values
        ids = store.obs["obs_id"].values
        for local in range(store.n_obs):
            file_index, record_index = m["rows"][local]
            entries.append(((int(times[local]), str(sites[local]), file_index, record_index), str(ids[local]), m["sources"][local]))
            where.append((p, local))
    kept, duplicates = _dedupe(entries)
    files_order = {i["path"]: i["index"] for m in metas for i in m["inputs"]}
    rejected = [tuple(r) for m in metas for r in m["rejected"]] + duplicates
    rejected.sort(key=lambda r: (files_order.get(r[0], -1), r[1]))
    csv_path = out.with_name(out.name + ".rejected.csv")
    _write_rejected(csv_path, rejected)
    n_files = sum(len(m["inputs"]) for m in metas)
    notes = Counter(_note_category(n) for m in metas for _, n in m["notes"])
    if rejected:
        n_file_level = sum(1 for r in rejected if not r[1])
        log.warning("%d rejections (%d whole files, %d records) listed in %s; e.g. %s: %s", len(rejected), n_file_level,
                    len(rejected) - n_file_level, csv_path, rejected[0][0], rejected[0][2])
    for note, count in notes.most_common():
        log.info("%d records: %s", count, note)
    if strict and rejected:
        raise InputError(csv_path, None, f"{len(rejected)} rejections and --strict was given", "Fix or remove the files listed")
    if not kept:
        raise InputError(csv_path, None, f"no footprint was ingested: every file or record of the {n_files} files was rejected",
                         "See the reasons listed")

    boundary = _boundary_decision(metas, stores, out)
    order = [where[i] for i in kept]
    flat = np.array([offsets[p] + local for p, local in order], dtype=np.int64)
    obs = {name: np.concatenate([s.obs[name].values for s in stores])[flat]
           for name in ("obs_id", "time", "site", "latitude", "longitude", "height")}
    with FootprintStore.create(out, grid, axis, obs, overwrite=overwrite,
                               boundary_height=stores[0].boundary_height if boundary else None) as writer:
        for rows, edges in _merged_blocks(stores, order, flat, boundary):
            writer.append(rows, boundary=edges)
    log.info("wrote %s: %d observations from %d files (%d parts), boundary sensitivities %s", out, len(order), n_files,
             n_parts, "stored" if boundary else "absent")
    return IngestSummary(store=out, n_files=n_files, n_obs=len(order), rejected=rejected, rejected_csv=csv_path,
                         n_parts=n_parts, boundary=boundary, note_counts=dict(notes))


def _boundary_decision(metas, stores, out: Path) -> bool:
    """Whether the merged store carries boundary sensitivities (all-or-nothing): in ``auto``
    mode a mix, or sensitivities that could not be mapped, is an error."""
    used = [(m, s) for m, s in zip(metas, stores) if s.n_obs > 0]
    with_b = sum(m["boundary"]["with"] for m, _ in used)
    total = sum(s.n_obs for _, s in used)
    reasons = Counter()
    for m, _ in used:
        reasons.update(m["boundary"]["missing_reasons"])
    if metas[0]["options"]["boundary"] == "ignore":
        if reasons.get(IGNORED_BOUNDARY):
            log.info("boundary sensitivities of %d records ignored (--boundary ignore)", reasons[IGNORED_BOUNDARY])
        return False
    if with_b == 0 and set(reasons) <= {NO_BOUNDARY}:
        return False
    if with_b < total or not all(s.has_boundary for _, s in used):
        raise InputError(out, "boundary", f"{with_b} of {total} records carry usable boundary sensitivities "
                         f"({'; '.join(f'{n}: {r}' for r, n in reasons.most_common(3))})",
                         "Pass --boundary ignore to drop them, or --boundary require to reject the records without them")
    heights = [s.boundary_height for _, s in used]
    if any(not np.array_equal(h, heights[0]) for h in heights):
        raise InputError(out, "boundary/height", "parts have different boundary height levels",
                         "Ingest files with the same height levels together (or --boundary ignore)")
    return True


def _merged_blocks(stores, order: list[tuple[int, int]], flat: np.ndarray, boundary: bool):
    """Yield (rows, boundary) blocks in the merged order (``flat``: row index over all
    parts); each part is read in increasing row ranges (its kept rows are increasing in the
    merged order)."""
    nnz = np.concatenate([np.diff(_indptr(s)) for s in stores])
    start = 0
    while start < len(order):
        stop = start + 1
        budget = nnz[flat[start]]
        while stop < len(order) and budget + nnz[flat[stop]] <= _BLOCK_NNZ:
            budget += nnz[flat[stop]]
            stop += 1
        block = order[start:stop]
        pieces, edges, positions = [], {e: [] for e in BOUNDARY_EDGES}, []
        for p in sorted({q for q, _ in block}):
            locals_ = np.array([l for q, l in block if q == p])
            lo, hi = int(locals_.min()), int(locals_.max()) + 1
            pieces.append(stores[p].read_rows(lo, hi, check=False)[locals_ - lo])
            if boundary:
                b = stores[p].read_boundary(lo, hi)
                for e in BOUNDARY_EDGES:
                    edges[e].append(b[e][locals_ - lo])
            positions.extend(i for i, (q, _) in enumerate(block) if q == p)
        inverse = np.argsort(np.array(positions))
        rows = sp.vstack(pieces, format="csr")[inverse]
        yield rows, ({e: np.concatenate(v)[inverse] for e, v in edges.items()} if boundary else None)
        start = stop


def _indptr(store: FootprintStore) -> np.ndarray:
    with h5py.File(store.path, "r") as f:
        return f["footprint/indptr"][()]


# --------------------------------------------------------------------------- driver


class _Serial:
    rank, size = 0, 1

    def barrier(self) -> None:
        return None

    def bcast(self, obj, root: int = 0):
        return obj

    def allgather(self, obj) -> list:
        return [obj]


def ingest(files: Sequence[Path], out: str | os.PathLike, grid: Grid, time_axis: TimeAxis, *,
           options: IngestOptions = IngestOptions(), comm=None, n_parts: int | None = None, part: int | None = None,
           merge: bool = True, overwrite: bool = False,
           progress: Callable[[int, int], None] | None = None) -> IngestSummary | None:
    """Ingest ``files`` (manifest order) into the store ``out`` (see the module docstring).

    ``n_parts``: how the manifest is split (default: the larger of ⌈files / 64⌉, ⌈input bytes /
    256 MiB⌉ and the number of ranks; a part's footprints are held in memory until written);
    ``part``: process only that part (a Slurm array task; no merge); otherwise every rank
    processes its parts (k % size == rank) and, with ``merge``, rank 0 merges.  Verified
    parts are skipped.  ``progress(done, total)`` is called on rank 0 after each file of
    its share.  Returns the merge summary on every rank (None when not merging).
    """
    comm = comm if comm is not None else _Serial()
    out = Path(out)
    files = [Path(f) for f in files]
    if not files:
        raise InputError(out, None, "no input files", "Give footprint files, a glob or a manifest")
    if n_parts is None:
        n_bytes = sum(f.stat().st_size for f in files if f.is_file())
        n_parts = max(comm.size, math.ceil(len(files) / FILES_PER_PART), math.ceil(n_bytes / BYTES_PER_PART))
    n_parts = min(n_parts, len(files))
    if part is not None and not 0 <= part < n_parts:
        raise InputError(out, "--part", f"part {part} is not in [0, {n_parts})", "Give --part K with 0 ≤ K < --parts")
    if part is not None and comm.size > 1:
        raise InputError(out, "--part", f"one part on {comm.size} MPI ranks", "Run array tasks as single processes, "
                         "or drop --part to spread all parts over the ranks")
    if merge and out.exists() and not overwrite:
        raise InputError(out, None, "file exists", "Choose another --out or pass --overwrite")
    fingerprint = _fingerprint(grid, time_axis, options)
    blocks = split_parts(files, n_parts)
    mine = [part] if part is not None else [k for k in range(n_parts) if k % comm.size == comm.rank]
    total = sum(len(blocks[k]) for k in mine)
    done = [0]
    skipped = 0

    def tick() -> None:
        done[0] += 1
        if progress is not None and comm.rank == 0:
            progress(done[0], total)

    log.info("ingesting %d files in %d parts on %d rank(s) into %s", len(files), n_parts, comm.size, out)
    if comm.rank == 0:
        _remove_parts_beyond(out, n_parts)
    for k in mine:
        if _verified(out, k, blocks[k], fingerprint) is not None:
            skipped += 1
            log.info("part %d verified (inputs and store unchanged): skipped", k)
            for _ in blocks[k]:
                tick()
            continue
        ingest_part(out, k, blocks[k], grid, time_axis, options, fingerprint, n_parts=n_parts,
                    rank=comm.rank, size=comm.size, on_file=tick)
    skipped = sum(comm.allgather(skipped))  # also the barrier before the merge
    if not merge or part is not None:
        return None
    summary = None
    if comm.rank == 0:
        summary = merge_parts(out, strict=options.strict, overwrite=overwrite)
        summary.parts_skipped = skipped
    return comm.bcast(summary)
