"""Readers of raw observation files: ObsPack NetCDF, openghg/AGAGE NetCDF and plain CSV.

Each reader turns one file into :class:`ObservationSeries` (one per site) in mol mol⁻¹, with
the file's per-sample uncertainty, its quality flags interpreted as "assimilable or not", and
the site metadata found in the file.  Nothing is selected or averaged here (that is
:mod:`inversion.selection`); missing values stay NaN so that the selection can count them.

================  =========================================================================
format            what is read
================  =========================================================================
``obspack``       record dim ``obs`` (NOAA) or ``time`` (ICOS); ``time`` = interval midpoint;
                  ``value`` (units attribute, normally ``mol mol-1``); per-sample 1σ from
                  ``value_unc``, else ``value_std_dev``; ``obs_flag`` (1 = assimilable) or,
                  without it, ``qcflag`` (assimilable when its first character is ``.``);
                  values with |v| ≥ 1e33 (the ObsPack −1e34 fill) are missing; global
                  attributes ``site_code``, ``site_latitude``, ``site_longitude``,
                  ``dataset_parameter``; inlet from ``intake_height`` (m agl, one value per
                  file) or the attribute ``dataset_intake_ht``.
``openghg``       openghg / AGAGE / DECC files: dim ``time``; the species variable (``ch4``,
                  ``co2``) with its units (``1e-9`` = ppb); per-sample 1σ from
                  ``<sp>_repeatability``, else ``<sp>_variability``; status flag
                  ``<sp>_status_flag`` or ``status_flag`` (0 = unflagged; the GC
                  ``integration_flag`` is not a quality flag and is ignored); when ``time``
                  has ``label = "left"`` and ``sampling_period_seconds``, the sample time is
                  moved to the middle of its sampling period; global attributes ``site``,
                  ``station_latitude``, ``station_longitude``, ``species`` and the inlet from
                  ``inlet_height_magl``, ``inlet`` or ``inlet_magl`` (``"185"``, ``"185m"``).
``csv``           see :func:`read_csv`.
================  =========================================================================

Times must increase strictly within a series: duplicated or unordered times are refused with
the first offending time (sort or de-duplicate the file explicitly).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.units import MOLE_FRACTION_UNITS, conversion_factor, parse_quantity

from .io import open_netcdf

FORMATS = ("obspack", "openghg", "csv")
OBSPACK_FILL = 1e33  # ObsPack writes −1e34 for missing; anything this large is not a mole fraction
SAMPLE_TIME = "datetime64[ms]"  # sub-second midpoints (AGAGE GC samples last 75 s)


@dataclass(frozen=True, eq=False)
class ObservationSeries:
    """One site's raw samples from one file.

    ``time``: sample midpoints (UTC); ``value`` and ``uncertainty`` (per-sample 1σ, or None
    when the file has none) in mol mol⁻¹, NaN where the file marks a value missing;
    ``usable``: the file's flags say the sample is assimilable; ``inlet_height`` in m above
    ground (None when the file does not say).  ``notes`` record what the reader did.
    """

    path: Path
    format: str
    site: str
    time: np.ndarray
    value: np.ndarray
    uncertainty: np.ndarray | None
    usable: np.ndarray
    inlet_height: float | None = None
    latitude: float | None = None
    longitude: float | None = None
    uncertainty_source: str = "none"
    flag_source: str = "none"
    notes: tuple[str, ...] = field(default=())

    @property
    def size(self) -> int:
        return self.time.size


# ---- shared helpers -----------------------------------------------------------------------


def _mole_fraction(da: xr.DataArray, path: Path, name: str, fill: float | None = None) -> np.ndarray:
    """Values of ``da`` in mol mol⁻¹; its ``units`` attribute is required.  With ``fill``,
    values with |v| ≥ fill (before conversion) become NaN (a declared missing-value code)."""
    units = da.attrs.get("units")
    if units is None or str(units).strip() == "":
        raise InputError(path, name, "no units attribute", "add units such as 'mol mol-1', 'ppm', 'ppb' or '1e-9'")
    values = np.asarray(da.values, dtype=np.float64)
    if fill is not None:
        values = np.where(np.abs(values) >= fill, np.nan, values)
    return values * conversion_factor(str(units), MOLE_FRACTION_UNITS, path=path, variable=name)


def check_times(time: np.ndarray, path, variable: str = "time") -> None:
    """Times must be valid and strictly increasing (no duplicates)."""
    if np.any(np.isnat(time)):
        raise InputError(path, variable, f"{int(np.isnat(time).sum())} times are missing (NaT)", "give every sample a time")
    step = np.diff(time.astype(np.int64))
    if (step == 0).any():
        i = int(np.flatnonzero(step == 0)[0])
        raise InputError(path, variable, f"duplicated time {time[i]} (samples {i} and {i + 1})",
                         "remove or merge duplicated samples before reading")
    if (step < 0).any():
        i = int(np.flatnonzero(step < 0)[0])
        raise InputError(path, variable, f"times are not increasing: {time[i]} is followed by {time[i + 1]} "
                         f"(sample {i + 1})", "sort the file by time")


def _decoded_times(ds: xr.Dataset, path: Path) -> np.ndarray:
    if "time" not in ds.variables:
        raise InputError(path, "time", "variable missing", "observation files need a time variable")
    values = np.asarray(ds["time"].values)
    if values.dtype.kind != "M":
        raise InputError(path, "time", "times are not decodable (no CF units such as 'seconds since 1970-01-01')",
                         "add a CF units attribute to time")
    return values.astype(SAMPLE_TIME)


def _attr_float(attrs: dict, names: tuple[str, ...]) -> float | None:
    for name in names:
        if name in attrs:
            try:
                return float(attrs[name])
            except (TypeError, ValueError):
                return None
    return None


def _height_attribute(value, path: Path, name: str) -> float:
    """A height attribute in metres: a number (the attribute name says m agl) or a string
    with or without unit ("185", "185m", "10 m")."""
    if isinstance(value, (int, float, np.number)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        return parse_quantity(text, "m", path=path, variable=f"attribute {name}")


def _check_site(found: str | None, configured: str | None, path: Path, where: str) -> str:
    if found and configured and found.upper() != configured.upper():
        raise InputError(path, where, f"the file says site {found!r}, the configuration says {configured!r}",
                         "fix observations.sources[].site or use the right file")
    site = found or configured
    if not site:
        raise InputError(path, where, "the file does not name its site",
                         "give the site code in the configuration: [[observations.sources]] site = \"MHD\"")
    return site.strip().upper()


def _check_species(found, species: str, path: Path, where: str) -> None:
    if found is not None and str(found).strip().lower() != species.lower():
        raise InputError(path, where, f"the file holds {str(found)!r}, the run is for {species!r}",
                         "use observation files of the run's species (run.species)")


def _single_value(values: np.ndarray, path: Path, name: str, what: str = "intake heights") -> float | None:
    """The one value a per-sample site property takes in a file (None when all are missing)."""
    finite = np.unique(values[np.isfinite(values) & (np.abs(values) < OBSPACK_FILL)])
    if finite.size > 1:
        raise InputError(path, name, f"the file mixes {what} {finite.tolist()[:5]}",
                         "split the file so that each series has one site and one inlet")
    return float(finite[0]) if finite.size else None


# ---- ObsPack ------------------------------------------------------------------------------


def read_obspack(path: Path, species: str, site: str | None = None) -> list[ObservationSeries]:
    """One ObsPack NetCDF file (see the module docstring)."""
    ds = open_netcdf(path, "ObsPack observation")
    dim = "obs" if "obs" in ds.dims else "time" if "time" in ds.dims else None
    if dim is None:
        raise InputError(path, None, f"no record dimension 'obs' or 'time' (dims: {dict(ds.sizes)})",
                         "ObsPack files have a record dimension 'obs' (NOAA) or 'time' (ICOS)")
    if "value" not in ds.variables:
        raise InputError(path, "value", "variable missing", f"the file has: {', '.join(sorted(map(str, ds.variables)))}")
    _check_species(ds.attrs.get("dataset_parameter"), species, path, "attribute dataset_parameter")
    notes = []
    time = _decoded_times(ds, path)
    check_times(time, path)
    value = _mole_fraction(ds["value"], path, "value", fill=OBSPACK_FILL)
    uncertainty, unc_source = None, "none"
    for name in ("value_unc", "value_std_dev"):
        if name in ds.variables:
            uncertainty, unc_source = _mole_fraction(ds[name], path, name, fill=OBSPACK_FILL), name
            break
    if "obs_flag" in ds.variables:
        usable, flag_source = np.asarray(ds["obs_flag"].values) == 1, "obs_flag == 1"
    elif "qcflag" in ds.variables:
        flags = np.asarray(ds["qcflag"].values)
        text = np.char.decode(flags.astype("S"), "ascii") if flags.dtype.kind == "S" else flags.astype(str)
        usable, flag_source = np.char.startswith(text, "."), "qcflag starts with '.'"
    else:
        usable, flag_source = np.ones(time.size, dtype=bool), "none"
        notes.append("no obs_flag or qcflag: every sample counts as assimilable")
    inlet = None
    if "intake_height" in ds.variables:
        height = ds["intake_height"]
        factor = conversion_factor(height.attrs["units"], "m", path=path, variable="intake_height") \
            if "units" in height.attrs else 1.0
        if "units" not in height.attrs:
            notes.append("intake_height has no units attribute: metres above ground, as the ObsPack standard defines")
        inlet = _single_value(np.asarray(height.values, dtype=np.float64), path, "intake_height")
        inlet = None if inlet is None else inlet * factor
    if inlet is None and "dataset_intake_ht" in ds.attrs:
        inlet = _height_attribute(ds.attrs["dataset_intake_ht"], path, "dataset_intake_ht")
    return [ObservationSeries(
        path=Path(path), format="obspack", site=_check_site(ds.attrs.get("site_code"), site, path, "attribute site_code"),
        time=time, value=value, uncertainty=uncertainty, usable=np.asarray(usable, dtype=bool), inlet_height=inlet,
        latitude=_attr_float(ds.attrs, ("site_latitude",)), longitude=_attr_float(ds.attrs, ("site_longitude",)),
        uncertainty_source=unc_source, flag_source=flag_source, notes=tuple(notes))]


# ---- openghg / AGAGE ----------------------------------------------------------------------


def read_openghg(path: Path, species: str, site: str | None = None) -> list[ObservationSeries]:
    """One openghg/AGAGE/DECC NetCDF file (see the module docstring)."""
    ds = open_netcdf(path, "openghg observation")
    sp = species.lower()
    if sp not in ds.variables:
        raise InputError(path, sp, "variable of the run's species missing",
                         f"openghg files hold the mole fraction in a variable named after the species; "
                         f"the file has: {', '.join(sorted(map(str, ds.variables)))}")
    _check_species(ds.attrs.get("species"), species, path, "attribute species")
    notes = []
    time = _decoded_times(ds, path)
    check_times(time, path)
    label = ds["time"].attrs.get("label")
    period = _attr_float(ds["time"].attrs, ("sampling_period_seconds",))
    if label == "left" and period is not None and period > 0:
        time = time + np.timedelta64(round(period * 500), "ms")
        notes.append(f"time labels the start of a {period:g} s sampling period: moved to its middle")
    elif label not in (None, "left"):
        raise InputError(path, "time", f"unsupported label {label!r}", "openghg files label the start of the sampling "
                         "period (label = 'left'); convert the times")
    else:
        notes.append("time taken as the sample time (no sampling period given)")
    value = _mole_fraction(ds[sp], path, sp)
    uncertainty, unc_source = None, "none"
    for name in (f"{sp}_repeatability", f"{sp}_variability"):
        if name in ds.variables:
            uncertainty, unc_source = _mole_fraction(ds[name], path, name), name
            break
    for name in (f"{sp}_status_flag", "status_flag"):
        if name in ds.variables:
            usable, flag_source = np.asarray(ds[name].values) == 0, f"{name} == 0"
            break
    else:
        usable, flag_source = np.ones(time.size, dtype=bool), "none"
        notes.append("no status flag: every sample counts as assimilable")
    inlet = None
    for name in ("inlet_height_magl", "inlet", "inlet_magl"):
        if name in ds.attrs:
            inlet = _height_attribute(ds.attrs[name], path, name)
            break
    return [ObservationSeries(
        path=Path(path), format="openghg", site=_check_site(ds.attrs.get("site"), site, path, "attribute site"),
        time=time, value=value, uncertainty=uncertainty, usable=np.asarray(usable, dtype=bool), inlet_height=inlet,
        latitude=_attr_float(ds.attrs, ("station_latitude",)), longitude=_attr_float(ds.attrs, ("station_longitude",)),
        uncertainty_source=unc_source, flag_source=flag_source, notes=tuple(notes))]


# ---- plain CSV ----------------------------------------------------------------------------

_COLUMN = re.compile(r"^\s*(?P<name>[A-Za-z_]+)\s*(?:\[(?P<units>[^\]]*)\])?\s*$")
CSV_COLUMNS = {
    "time": "sample midpoint, ISO 8601; UTC unless it carries an offset (2014-02-01T00:40:00Z)",
    "site": "site code (MHD)",
    "value": "mole fraction, units in brackets: value [ppb]",
    "uncertainty": "optional per-sample 1σ, units in brackets: uncertainty [ppb]",
    "flag": "optional: 1 = assimilable, 0 = not (the ObsPack obs_flag convention)",
    "inlet_height": "optional inlet height above ground, units in brackets: inlet_height [m]",
    "latitude": "optional, degrees north",
    "longitude": "optional, degrees east",
}
_MISSING = {"", "nan", "NaN", "NA"}


def _parse_time(text: str, path: Path, line: int) -> np.datetime64:
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise InputError(path, f"time (line {line})", f"not an ISO 8601 time: {text!r}",
                         "write times like 2014-02-01T00:40:00Z") from exc
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
    return np.datetime64(value, "ms")


@dataclass(frozen=True, eq=False)
class CsvTable:
    """Cells of a CSV file by column name, with the units written in brackets in the header."""

    path: Path
    cells: dict[str, list[str]]
    units: dict[str, str | None]
    lines: list[int]  # file line of each row

    def numbers(self, name: str, units_to: str | None = None) -> np.ndarray:
        """Column ``name`` as float64 (missing cells NaN), converted to ``units_to`` when
        given (the column must then carry units)."""
        factor = 1.0
        if units_to is not None:
            units = self.units[name]
            if not units or not units.strip():
                raise InputError(self.path, f"column {name!r}", "no units",
                                 f"write the units in brackets in the header, e.g. '{name} [{_EXAMPLE_UNITS.get(units_to, units_to)}]'")
            factor = conversion_factor(units, units_to, path=self.path, variable=f"column {name}")
        out = np.empty(len(self.lines))
        for i, (text, line) in enumerate(zip(self.cells[name], self.lines)):
            text = text.strip()
            if text in _MISSING:
                out[i] = np.nan
                continue
            try:
                out[i] = float(text)
            except ValueError as exc:
                raise InputError(self.path, f"{name} (line {line})", f"not a number: {text!r}",
                                 "write a number or leave the cell empty") from exc
        out[np.abs(out) >= OBSPACK_FILL] = np.nan  # the −1e34 fill value, in any spelling
        return out * factor

    def times(self, name: str = "time") -> np.ndarray:
        return np.array([_parse_time(t, self.path, line) for t, line in zip(self.cells[name], self.lines)],
                        dtype=SAMPLE_TIME).reshape(-1)


_EXAMPLE_UNITS = {MOLE_FRACTION_UNITS: "ppb", "m": "m"}


def read_csv_table(path: Path, allowed: dict[str, str], required: tuple[str, ...]) -> CsvTable:
    """Read a CSV file: lines starting with ``#`` are comments, the first other line is the
    header ``name`` or ``name [units]`` per column (names from ``allowed``), one row per line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "file not found", "check the path in the configuration")
    with open(path, newline="", encoding="utf-8") as fh:
        rows = [(i + 1, row) for i, row in enumerate(csv.reader(fh)) if row and not row[0].lstrip().startswith("#")]
    if not rows:
        raise InputError(path, None, "no header line", "the first non-comment line names the columns")
    header_line, header = rows[0]
    index: dict[str, int] = {}
    units: dict[str, str | None] = {}
    for i, text in enumerate(header):
        match = _COLUMN.match(text)
        if match is None or match.group("name") not in allowed:
            raise InputError(path, f"column {text!r} (line {header_line})", "unknown column",
                             f"allowed columns: {', '.join(allowed)}, with units in brackets where needed")
        name = match.group("name")
        if name in index:
            raise InputError(path, f"column {name!r}", "given twice", "name every column once")
        index[name], units[name] = i, match.group("units")
    missing = [name for name in required if name not in index]
    if missing:
        raise InputError(path, ", ".join(missing), "required column(s) missing",
                         f"the header needs {', '.join(required)} (units in brackets), e.g. '{','.join(required)} [ppb]'")
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise InputError(path, f"line {line}", f"{len(row)} fields, the header has {len(header)}", "fix the row")
    cells = {name: [row[i] for _, row in rows[1:]] for name, i in index.items()}
    return CsvTable(path=path, cells=cells, units=units, lines=[line for line, _ in rows[1:]])


def read_csv(path: Path, species: str, site: str | None = None) -> list[ObservationSeries]:
    """A plain CSV file (:func:`read_csv_table`) with the columns of :data:`CSV_COLUMNS`:
    ``time``, ``site``, ``value [units]`` required; ``uncertainty [units]``, ``flag``,
    ``inlet_height [units]``, ``latitude``, ``longitude`` optional.  Units are written in
    brackets in the column name and are required for mole fractions and heights.  Empty
    cells, ``NaN`` and ``-1e34`` are missing values.  Rows of several sites give one series
    per site, in order of appearance."""
    table = read_csv_table(path, CSV_COLUMNS, ("time", "site", "value"))
    path = table.path
    codes = np.array([c.strip().upper() for c in table.cells["site"]], dtype=str)
    if (codes == "").any():
        raise InputError(path, f"site (line {table.lines[int(np.flatnonzero(codes == '')[0])]})", "empty site code",
                         "give every row its site")
    if site is not None and set(codes.tolist()) - {site.upper()}:
        raise InputError(path, "site", f"the file holds sites {sorted(set(codes.tolist()))}, the configuration says "
                         f"{site!r}", "give one site per source or omit observations.sources[].site")
    time = table.times()
    value = table.numbers("value", MOLE_FRACTION_UNITS)
    uncertainty = table.numbers("uncertainty", MOLE_FRACTION_UNITS) if "uncertainty" in table.cells else None
    flag = table.numbers("flag") if "flag" in table.cells else None
    if flag is not None and not np.isin(flag, (0.0, 1.0)).all():
        raise InputError(path, "flag", f"{int((~np.isin(flag, (0.0, 1.0))).sum())} flags are not 0 or 1",
                         "write 1 for assimilable samples and 0 for the others")
    inlet = table.numbers("inlet_height", "m") if "inlet_height" in table.cells else None
    coords = {name: table.numbers(name) for name in ("latitude", "longitude") if name in table.cells}
    out = []
    for code in dict.fromkeys(codes.tolist()):
        m = codes == code
        check_times(time[m], path, f"time (site {code})")
        out.append(ObservationSeries(
            path=path, format="csv", site=code, time=time[m], value=value[m],
            uncertainty=None if uncertainty is None else uncertainty[m],
            usable=np.ones(int(m.sum()), dtype=bool) if flag is None else flag[m] == 1,
            inlet_height=None if inlet is None else _single_value(inlet[m], path, "inlet_height", "inlet heights"),
            latitude=_single_value(coords["latitude"][m], path, "latitude", "latitudes") if "latitude" in coords else None,
            longitude=_single_value(coords["longitude"][m], path, "longitude", "longitudes") if "longitude" in coords else None,
            uncertainty_source="uncertainty" if uncertainty is not None else "none",
            flag_source="flag == 1" if flag is not None else "none"))
    return out


# ---- dispatch -----------------------------------------------------------------------------

READERS = {"obspack": read_obspack, "openghg": read_openghg, "csv": read_csv}


def detect_format(path: Path, species: str) -> str:
    """``tanhui`` (the paired observation schema of :mod:`inversion.observations`), ``csv``,
    ``obspack`` or ``openghg``, from the file's contents (and ``.csv`` suffix); anything
    ambiguous or unknown is an error asking for an explicit ``format``."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        return "csv"
    ds = open_netcdf(path, "observation")
    found = []
    if {"obs_id", "uncertainty", "background"} <= set(map(str, ds.variables)):
        found.append("tanhui")
    if "value" in ds.variables and ("obs_flag" in ds.variables or "site_code" in ds.attrs):
        found.append("obspack")
    if species.lower() in ds.variables:
        found.append("openghg")
    if len(found) != 1:
        what = "matches several formats: " + ", ".join(found) if found else "matches no known observation format"
        raise InputError(path, None, f"the file {what}",
                         "set observations.format (or observations.sources[].format) to one of tanhui, "
                         + ", ".join(FORMATS))
    return found[0]


def read_series(path: Path, format: str, species: str, site: str | None = None) -> list[ObservationSeries]:
    """Read one raw observation file with the reader of ``format`` (``obspack``, ``openghg``,
    ``csv``)."""
    if format not in READERS:
        raise InputError(path, "format", f"unknown observation format {format!r}", f"use one of {', '.join(FORMATS)}")
    return READERS[format](Path(path), species, site)
