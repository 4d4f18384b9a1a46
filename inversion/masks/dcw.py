"""Country and province polygons from GMT's Digital Chart of the World (DCW-GMT).

Debian's ``gmt-dcw`` installs ``/usr/share/gmt-dcw/dcw-gmt.nc`` (NetCDF-4) with the
outlines of 248 countries (ISO 3166-1 alpha-2 codes; DCW-GMT 2.1.1) and of the
states/provinces of 8 large countries (China included), plus ``dcw-countries.txt`` and
``dcw-states.txt`` with their names.  Codes are written as GMT writes them: ``GB``, ``CN``
for countries, ``CN.BJ`` (Beijing), ``US.TX`` for states.

File layout, as found in DCW-GMT 2.1.1 (checked by the tests): each entry is two uint16
variables ``<V>_lon`` and ``<V>_lat`` (V = ``GB``, or ``CNBJ`` for ``CN.BJ``) with attributes
``min`` and ``scale``; a coordinate is ``min + raw / scale`` degrees.  A raw longitude of
65535 starts a new ring; the raw latitude of that marker is 0 for an outer ring (perimeter)
and 1 for a hole (enclaves: San Marino and the Vatican in Italy, Lesotho in South Africa).
Every entry starts with a marker.  Rings are stored contiguously in longitude, some in 0–360°
(Russia, the USA, Fiji) — :mod:`.fraction` matches them to the grid by ±360° shifts; a ring
that circles a pole (Antarctica) is closed along the pole.

A region is the union of its perimeter rings minus its holes (GMT's own reading).  Rings
that repeat inside a mainland ring (several countries have such duplicates) are thereby
harmless.  Decoded areas come within about 0.3 % of official areas for the United Kingdom,
Switzerland and New Zealand; China (DCW code CN) is 9.376 million km² because DCW draws
Taiwan (TW) separately and South Tibet/Arunachal Pradesh in India (IN).
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from transport.errors import InputError

from ..progress import log
from .shapes import RegionShape, shape_from_rings, to_plane

DCW_FILE = Path("/usr/share/gmt-dcw/dcw-gmt.nc")
DCW_ENV = "TANHUI_DCW_FILE"
_MARKER = 65535
_INSTALL_HINT = ("install Debian's gmt-dcw (apt-get install gmt-dcw), or point --dcw / $TANHUI_DCW_FILE at a "
                 "dcw-gmt.nc from https://github.com/GenericMappingTools/dcw-gmt")


def default_dcw_file() -> Path:
    return Path(os.environ.get(DCW_ENV, DCW_FILE))


@dataclass(frozen=True)
class DcwEntry:
    """One DCW outline: ``code`` (``GB``, ``CN.BJ``), its name and the NetCDF variable stem."""

    code: str
    name: str
    variable: str

    @property
    def country(self) -> str:
        return self.code.split(".")[0]

    @property
    def is_state(self) -> bool:
        return "." in self.code


def _read_names(path: Path, states: bool) -> dict[str, str]:
    """``{code: name}`` from dcw-countries.txt (``continent code name``) or dcw-states.txt
    (``country state name``); an absent file gives {} (names then default to codes)."""
    if not path.is_file():
        return {}
    names = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        a, b, name = line.split(maxsplit=2)
        names[f"{a}.{b}" if states else b] = name.strip()
    return names


class Dcw:
    """The DCW-GMT file: catalogue of outlines, code resolution and decoding to shapes."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else default_dcw_file()
        if not self.path.is_file():
            raise InputError(self.path, None, "DCW-GMT country/province outlines not found", _INSTALL_HINT)

    def _open(self):
        import h5py

        try:
            return h5py.File(self.path, "r")
        except OSError as exc:
            raise InputError(self.path, None, f"cannot read the DCW file as NetCDF-4/HDF5 ({exc})", _INSTALL_HINT) from exc

    @cached_property
    def version(self) -> str:
        with self._open() as f:
            v = f.attrs.get("version", b"?")
        return v.decode() if isinstance(v, bytes) else str(v)

    @cached_property
    def entries(self) -> dict[str, DcwEntry]:
        """Every outline in the file by code, with names from the text files beside it."""
        countries = _read_names(self.path.with_name("dcw-countries.txt"), states=False)
        states = _read_names(self.path.with_name("dcw-states.txt"), states=True)
        with self._open() as f:
            stems = sorted({k[:-4] for k in f.keys() if k.endswith("_lon") and f"{k[:-4]}_lat" in f})
        out = {}
        for stem in stems:
            code = stem if len(stem) == 2 else f"{stem[:2]}.{stem[2:]}"
            out[code] = DcwEntry(code=code, name=(states if "." in code else countries).get(code, code), variable=stem)
        if not out:
            raise InputError(self.path, None, "no <code>_lon/<code>_lat variables: not a DCW-GMT file", _INSTALL_HINT)
        return out

    def countries_overlapping(self, lat: tuple[float, float], lon: tuple[float, float]) -> list[DcwEntry]:
        """Countries whose bounding box (``min``/``max`` attributes; longitudes also ±360°)
        overlaps the box lat × lon (degrees)."""
        out = []
        with self._open() as f:
            for e in self.entries.values():
                if e.is_state:
                    continue
                vlon, vlat = f[f"{e.variable}_lon"], f[f"{e.variable}_lat"]
                x0, x1 = (float(np.ravel(vlon.attrs[k])[0]) for k in ("min", "max"))
                y0, y1 = (float(np.ravel(vlat.attrs[k])[0]) for k in ("min", "max"))
                if y1 > lat[0] and y0 < lat[1] and any(x1 + s > lon[0] and x0 + s < lon[1] for s in (-360, 0, 360)):
                    out.append(e)
        return out

    def countries_with_states(self) -> list[str]:
        return sorted({e.country for e in self.entries.values() if e.is_state})

    # ---- code resolution ------------------------------------------------------------------
    def resolve(self, items: list[str], source: str) -> list[DcwEntry]:
        """Entries for codes (``GB``, ``CN.BJ``), ``CC.*`` (all states of CC) or exact names
        (case-insensitive); anything else is an InputError listing close matches."""
        by_code = {c.upper(): e for c, e in self.entries.items()}
        by_name: dict[str, list[DcwEntry]] = {}
        for e in self.entries.values():
            by_name.setdefault(e.name.casefold(), []).append(e)
        out: list[DcwEntry] = []
        for raw in items:
            item = raw.strip()
            key = item.upper()
            if key.endswith(".*"):
                found = [e for e in self.entries.values() if e.is_state and e.country == key[:-2]]
                if not found:
                    raise InputError(source, item, f"DCW has no states/provinces for {key[:-2]!r}",
                                     f"countries with states in DCW: {', '.join(self.countries_with_states())}")
                out += sorted(found, key=lambda e: e.code)
            elif key in by_code:
                out.append(by_code[key])
            elif item.casefold() in by_name and len(by_name[item.casefold()]) == 1:
                out.append(by_name[item.casefold()][0])
            elif item.casefold() in by_name:
                codes = ", ".join(e.code for e in by_name[item.casefold()])
                raise InputError(source, item, f"the name {item!r} is ambiguous in DCW ({codes})", "use one of the codes")
            else:
                raise InputError(source, item, "no such DCW country or province code or name", self._suggest(item))
        seen = set()
        dupes = [e.code for e in out if e.code in seen or seen.add(e.code)]
        if dupes:
            raise InputError(source, ", ".join(dupes), "listed more than once", "list each region once")
        return out

    def _suggest(self, item: str) -> str:
        keys: dict[str, str] = {}
        for e in self.entries.values():
            label = f"{e.code} ({e.name})"
            keys.setdefault(e.code.casefold(), label)
            keys.setdefault(e.name.casefold(), label)
        word = item.casefold()
        close = difflib.get_close_matches(word, list(keys), n=6, cutoff=0.6)
        close += [k for k in keys if len(word) >= 3 and word in k and k not in close][:4]
        matches = list(dict.fromkeys(keys[k] for k in close))
        hint = f"close matches: {', '.join(matches)}" if matches else "no close match"
        return hint + "; list codes and names with `tanhui regions list` (countries) or `tanhui regions list CN.*`"

    # ---- decoding -------------------------------------------------------------------------
    def rings(self, entry: DcwEntry) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Perimeter and hole rings of an entry as (n, 2) arrays of (lon, lat) degrees."""
        with self._open() as f:
            vlon, vlat = f[f"{entry.variable}_lon"], f[f"{entry.variable}_lat"]
            raw_lon, raw_lat = vlon[:].astype(np.int64), vlat[:].astype(np.int64)
            lon = float(np.ravel(vlon.attrs["min"])[0]) + raw_lon / float(np.ravel(vlon.attrs["scale"])[0])
            lat = float(np.ravel(vlat.attrs["min"])[0]) + raw_lat / float(np.ravel(vlat.attrs["scale"])[0])
        marker = np.flatnonzero(raw_lon == _MARKER)
        odd = raw_lat[marker][(raw_lat[marker] != 0) & (raw_lat[marker] != 1)]
        if odd.size:
            raise InputError(self.path, f"{entry.variable}_lat", f"ring markers with raw latitude {odd[:3]} "
                             "(expected 0 = perimeter or 1 = hole)", "this DCW-GMT version is not supported")
        # Each ring runs from just after its marker to the next marker; data before a first
        # marker (not seen in DCW-GMT 2.1.1) would be a perimeter.
        heads = marker.tolist()
        hole_flag = [bool(raw_lat[m] == 1) for m in heads]
        if not heads or heads[0] != 0:
            heads, hole_flag = [-1] + heads, [False] + hole_flag
        perimeters, holes, dropped = [], [], 0
        for a, b, is_hole in zip(heads, heads[1:] + [raw_lon.size], hole_flag):
            ring = _normalise_ring(lon[a + 1:b], lat[a + 1:b])
            if ring is None:
                dropped += 1
                continue
            (holes if is_hole else perimeters).append(ring)
        if dropped:
            log.debug("DCW %s: %d degenerate rings (< 3 points) skipped", entry.code, dropped)
        return perimeters, holes

    def shape(self, entry: DcwEntry) -> RegionShape:
        perimeters, holes = self.rings(entry)
        return shape_from_rings(entry.name, entry.code, f"dcw:{entry.code}",
                                [to_plane(r[:, 0], r[:, 1]) for r in perimeters],
                                [to_plane(r[:, 0], r[:, 1]) for r in holes])


def _normalise_ring(lon: np.ndarray, lat: np.ndarray) -> np.ndarray | None:
    """Ring (n, 2) in degrees with contiguous longitudes (no jump above 180°); a ring that
    circles a pole is closed along that pole.  None for fewer than 3 points (zero-area rings
    are dropped later, with the other empty pieces)."""
    closed = lon.size > 1 and lon[0] == lon[-1] and lat[0] == lat[-1]
    if lon.size - closed < 3:
        return None
    lon = np.degrees(np.unwrap(np.radians(lon)))
    if not np.isclose(lon[0], lon[-1], atol=1e-6) and np.isclose(abs(lon[-1] - lon[0]), 360.0, atol=1e-3):
        pole = -90.0 if lat.mean() < 0 else 90.0
        lon = np.concatenate([lon, [lon[-1], lon[0]]])
        lat = np.concatenate([lat, [pole, pole]])
    return np.column_stack([lon, lat])
