"""The inventory table compared with the posterior totals (``tanhui report --inventory``).

CSV schema (UTF-8; lines starting with ``#`` are comments; one header line; one row per
region, category and period):

==============  =========  ===================================================================
column          required   meaning
==============  =========  ===================================================================
region          yes        region code or name of the report mask (case-insensitive), an ISO
                           3166 alpha-2/alpha-3 code of it, or ``ALL`` (sum of the regions)
period          yes        ``2023`` (calendar year), ``2023-07`` (month) or an ISO interval
                           ``2024-07-01/2024-07-08`` (end exclusive), UTC
category        yes        e.g. ``LULUCF``, ``net_land_flux``, ``total``; the rows of one
                           category are compared (``[report] inventory_category``)
value           yes        mean emission rate over the period, emissions positive, removals
                           (sinks) negative
unit            yes        an emission rate of a named substance: ``Mt CO2 yr-1``,
                           ``Tg CO2 yr-1``, ``Tg C yr-1``, ``Gg CH4 yr-1``, ``kt CH4 yr-1``…
sd              no         1σ uncertainty, in ``unit``
lower, upper    no         instead of ``sd``: a central range in ``unit`` …
interval        with them  … covering ``interval`` % (e.g. 95 for 2.5–97.5 %, 90 for 5–95 %);
                           σ = (upper − lower) / (2 Φ⁻¹(½ + interval/200)) (Gaussian)
source, note    no         free text
==============  =========  ===================================================================

An inventory row is compared with a report period whose nominal interval (the calendar year
or month, or the period itself) equals the row's period.  Refused with a message naming the
file, line and fix: a missing column, an unknown column, region or unit (with close matches),
an unparsable period or number, a range not containing the value, two rows of the compared
category whose periods overlap for one region, a table none of whose rows match a report
period.  Warned (with the line): a value whose sign contradicts its category (a "removal",
"sink" or "uptake" category with a positive value, an "emission" category with a negative
one), report periods with no inventory row for a region the table covers, rows matching no
report period (counted), asymmetric ranges (symmetrised).
"""

from __future__ import annotations

import csv
import difflib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from transport.errors import InputError

from ..aggregates import DOMAIN
from ..progress import log
from .totals import mole_rate_factor

REQUIRED = ("region", "period", "category", "value", "unit")
OPTIONAL = ("sd", "lower", "upper", "interval", "source", "note")
_REMOVAL_WORDS = ("removal", "sink", "uptake")
_EMISSION_WORDS = ("emission",)
_SYNONYMS = {"sigma": "sd", "std": "sd", "uncertainty": "sd", "error": "sd", "low": "lower", "high": "upper",
             "units": "unit", "year": "period", "country": "region"}


@dataclass(frozen=True)
class InventoryRow:
    """One row of the compared category: value and σ in mol s⁻¹ (σ NaN when not given)."""

    line: int
    region: str
    period: str
    start: np.datetime64
    end: np.datetime64
    value: float
    sd: float
    text: str  # the row as written, for messages


@dataclass(frozen=True)
class Inventory:
    path: Path
    category: str
    rows: tuple[InventoryRow, ...]
    other_categories: dict[str, int]  # rows of the categories not compared


def parse_period(text: str) -> tuple[np.datetime64, np.datetime64]:
    """"2023" → [2023-01-01, 2024-01-01); "2023-07" → the month; "A/B" → [A, B)."""
    text = text.strip()
    try:
        if "/" in text:
            a, b = (np.datetime64(part.strip().removesuffix("Z"), "s") for part in text.split("/"))
        elif len(text) == 4:
            a, b = np.datetime64(text, "Y"), np.datetime64(text, "Y") + 1
        elif len(text) == 7:
            a, b = np.datetime64(text, "M"), np.datetime64(text, "M") + 1
        else:
            raise ValueError(text)
    except ValueError:
        raise ValueError(f"period {text!r} is not YYYY, YYYY-MM or an ISO interval START/END") from None
    a, b = np.datetime64(a, "s"), np.datetime64(b, "s")
    if not a < b:
        raise ValueError(f"period {text!r} ends before it starts")
    return a, b


def _number(text: str, path: Path, column: str, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise InputError(path, f"{column} (line {line})", f"{text!r} is not a finite number",
                         "write a number, or remove the row")
    return value


def _sd(row: dict, path: Path, line: int, value: float) -> tuple[float, bool]:
    """σ in the row's unit (NaN when none is given) and whether a range was asymmetric."""
    sd, lower, upper, interval = (row.get(k, "") for k in ("sd", "lower", "upper", "interval"))
    if sd and (lower or upper):
        raise InputError(path, f"sd (line {line})", "both sd and a lower/upper range are given", "give one of them")
    if sd:
        sigma = _number(sd, path, "sd", line)
        if sigma < 0:
            raise InputError(path, f"sd (line {line})", f"negative σ {sd}", "σ must be ≥ 0")
        return sigma, False
    if not (lower or upper or interval):
        return math.nan, False
    if not (lower and upper and interval):
        raise InputError(path, f"lower/upper/interval (line {line})", "a range needs lower, upper and interval",
                         "e.g. lower = -1400, upper = -600, interval = 95 (for 2.5–97.5 %)")
    lo, hi, cover = (_number(row[k], path, k, line) for k in ("lower", "upper", "interval"))
    if not 0 < cover < 100:
        raise InputError(path, f"interval (line {line})", f"{cover} is not a percentage in (0, 100)",
                         "e.g. 95 for the 2.5–97.5 % range, 90 for 5–95 %")
    if not lo <= value <= hi:
        raise InputError(path, f"lower/upper (line {line})", f"the range [{lo}, {hi}] does not contain the value "
                         f"{value}", "check the signs (removals are negative) and the columns")
    z = stats.norm.ppf(0.5 + cover / 200)
    asymmetric = not math.isclose(hi - value, value - lo, rel_tol=0.1, abs_tol=1e-12 * max(abs(hi), abs(lo), 1))
    return (hi - lo) / (2 * z), asymmetric


def read_inventory(path: Path, species: str, category: str | None = None) -> Inventory:
    """Read, convert (mol s⁻¹ of ``species``) and check an inventory table (module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, None, "inventory table not found", "check [report] inventory or --inventory")
    with open(path, newline="", encoding="utf-8") as fh:
        numbered = [(n, line) for n, line in enumerate(fh, start=1)
                    if line.strip() and not line.lstrip().startswith("#")]
    if not numbered:
        raise InputError(path, None, "the inventory table is empty", "see the CSV schema in the README (Report)")
    reader = csv.DictReader([line for _, line in numbered], skipinitialspace=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputError(path, ", ".join(missing), "required column(s) missing",
                         f"the header must name {', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)})")
    unknown = [c for c in header if c not in REQUIRED + OPTIONAL]
    if unknown:
        guess = [_SYNONYMS[unknown[0].lower()]] if unknown[0].lower() in _SYNONYMS else \
            difflib.get_close_matches(unknown[0], REQUIRED + OPTIONAL, n=1)
        raise InputError(path, unknown[0], "unknown column" + (f" (did you mean {guess[0]!r}?)" if guess else ""),
                         f"allowed columns: {', '.join(REQUIRED + OPTIONAL)}")
    raw = []
    for (line, text), row in zip(numbered[1:], reader):
        row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
        for column in REQUIRED:
            if not row.get(column):
                raise InputError(path, f"{column} (line {line})", "empty", "every row needs region, period, category, "
                                 "value and unit")
        raw.append((line, text.strip(), row))
    categories: dict[str, int] = {}
    for _, _, row in raw:
        categories[row["category"]] = categories.get(row["category"], 0) + 1
    if category is None:
        if len(categories) > 1:
            raise InputError(path, "category", f"the table has several categories ({', '.join(sorted(categories))})",
                             "choose the one comparable with the posterior: [report] inventory_category")
        category = next(iter(categories))
    elif category not in categories:
        guess = difflib.get_close_matches(category, list(categories), n=1)
        raise InputError(path, "category", f"no row of category {category!r}"
                         + (f" (did you mean {guess[0]!r}?)" if guess else ""),
                         f"categories in the table: {', '.join(sorted(categories))}")
    rows, asymmetric = [], []
    factors: dict[str, float] = {}
    for line, text, row in raw:
        if row["category"] != category:
            continue
        try:
            start, end = parse_period(row["period"])
        except ValueError as exc:
            raise InputError(path, f"period (line {line})", str(exc), "e.g. 2023, 2023-07 or 2024-07-01/2024-07-08") \
                from None
        value = _number(row["value"], path, "value", line)
        sd, skewed = _sd(row, path, line, value)
        if skewed:
            asymmetric.append(line)
        unit = row["unit"]
        if unit not in factors:
            factors[unit] = mole_rate_factor(unit, species, path=path, variable=f"unit (line {line})")
        _check_sign(row["category"], value, path, line, text)
        rows.append(InventoryRow(line=line, region=row["region"], period=row["period"], start=start, end=end,
                                 value=value * factors[unit], sd=sd * factors[unit], text=text))
    if asymmetric:
        log.warning("%s: %d asymmetric ranges (lines %s) were read as Gaussian σ = (upper − lower) / (2 z)", path,
                    len(asymmetric), ", ".join(map(str, asymmetric[:10])))
    _check_overlaps(rows, path)
    others = {c: n for c, n in categories.items() if c != category}
    if others:
        log.info("%s: comparing category %r (%d rows); not compared: %s", path, category, len(rows),
                 ", ".join(f"{c} ({n} rows)" for c, n in sorted(others.items())))
    return Inventory(path=path, category=category, rows=tuple(rows), other_categories=others)


def _check_sign(category: str, value: float, path: Path, line: int, text: str) -> None:
    """Warn (with the row) when the sign contradicts the category under the convention
    emissions positive, removals negative."""
    lower = category.lower()
    if value > 0 and any(w in lower for w in _REMOVAL_WORDS):
        log.warning("%s line %d (%s): category %r is a removal but the value is positive; removals are negative "
                    "here (emissions positive) — negate the values if the table lists removals as positive numbers",
                    path, line, text, category)
    elif value < 0 and any(w in lower for w in _EMISSION_WORDS) and "net" not in lower:
        log.warning("%s line %d (%s): category %r is an emission but the value is negative; emissions are positive "
                    "here", path, line, text, category)


def _check_overlaps(rows: list[InventoryRow], path: Path) -> None:
    by_region: dict[str, list[InventoryRow]] = {}
    for row in rows:
        by_region.setdefault(row.region.casefold(), []).append(row)
    for group in by_region.values():
        group = sorted(group, key=lambda r: (r.start, r.end))
        for a, b in zip(group, group[1:]):
            if b.start < a.end:
                raise InputError(path, f"period (lines {a.line} and {b.line})", f"periods {a.period} and {b.period} of "
                                 f"region {a.region} overlap", "keep one row per region, category and period (put "
                                 "annual and monthly values in separate tables)")


def _iso_alternatives(code: str) -> set[str]:
    """ISO 3166 alpha-2 ↔ alpha-3 spellings of a country code (iso3166 package), casefolded."""
    try:
        import iso3166
    except ImportError:  # optional: without it only the codes as written match
        return set()
    try:
        country = iso3166.countries.get(code)
    except KeyError:
        return set()
    return {country.alpha2.casefold(), country.alpha3.casefold()}


def match_regions(inventory: Inventory, names, codes) -> dict[str, int]:
    """Region of the table → index into ``names + [ALL]``; an unknown region is refused with
    close matches."""
    keys: dict[str, int] = {}
    for k, (name, code) in enumerate(zip(names, codes)):
        for key in {name.casefold(), code.casefold()} | _iso_alternatives(code):
            keys.setdefault(key, k)
    keys[DOMAIN.casefold()] = len(names)
    out = {}
    for row in inventory.rows:
        key = row.region.casefold()
        if key not in keys:
            choices = list(names) + list(codes) + [DOMAIN]
            guess = difflib.get_close_matches(row.region, choices, n=3, cutoff=0.5)
            raise InputError(inventory.path, f"region (line {row.line})", f"unknown region {row.region!r}"
                             + (f"; close matches: {', '.join(guess)}" if guess else ""),
                             f"use a region name or code of the report mask ({len(names)} regions, e.g. "
                             f"{', '.join(list(names)[:5])}) or {DOMAIN}")
        out[row.region] = keys[key]
    return out


def check_inventory(path: Path, config, names, codes) -> Inventory:
    """Read the table and match its regions (``tanhui run`` calls this before heavy work)."""
    inventory = read_inventory(path, config.run.species, config.report.inventory_category)
    match_regions(inventory, names, codes)
    return inventory


@dataclass(frozen=True)
class Comparison:
    """Inventory values on the report's (region + ALL, period) grid, mol s⁻¹; NaN where the
    table has no row (``present`` False); σ NaN where the row gives none."""

    value: np.ndarray
    sd: np.ndarray
    present: np.ndarray
    lines: np.ndarray  # line number of the matched row, 0 where none


def compare_periods(inventory: Inventory, region_index: dict[str, int], n_region: int, nominal_start: np.ndarray,
                    nominal_end: np.ndarray, kinds: np.ndarray, labels: np.ndarray, *,
                    refuse_if_none: bool = True, warn: bool = True) -> Comparison:
    """Match every row to the report periods with the same nominal interval (module docstring);
    log the rows that match none and, per region the table covers, the periods of a kind it
    matches elsewhere but not there."""
    shape = (n_region, nominal_start.size)
    value, sd = np.full(shape, np.nan), np.full(shape, np.nan)
    lines = np.zeros(shape, dtype=np.int64)
    unmatched = []
    for row in inventory.rows:
        hits = np.flatnonzero((nominal_start == row.start) & (nominal_end == row.end))
        if hits.size == 0:
            unmatched.append(row)
            continue
        r = region_index[row.region]
        value[r, hits], sd[r, hits], lines[r, hits] = row.value, row.sd, row.line
    present = lines > 0
    if refuse_if_none and inventory.rows and not present.any():
        periods = sorted({r.period for r in inventory.rows})
        raise InputError(inventory.path, "period", "no row matches a report period (the table has "
                         f"{', '.join(periods[:6])}"
                         f"{' …' if len(periods) > 6 else ''}; the report has {', '.join(labels[:6])}"
                         f"{' …' if labels.size > 6 else ''})", "add [report] periods of the inventory's kind "
                         '(e.g. periods = ["annual"] for yearly values) or give rows for the report periods')
    if not warn:
        return Comparison(value=value, sd=sd, present=present, lines=lines)
    if unmatched:
        log.warning("%s: %d of %d rows match no report period and are not compared (e.g. line %d, period %s)",
                    inventory.path, len(unmatched), len(inventory.rows), unmatched[0].line, unmatched[0].period)
    for r in np.flatnonzero(present.any(axis=1)):
        for kind in np.unique(kinds[present[r]]):
            gaps = np.flatnonzero((kinds == kind) & ~present[r])
            if gaps.size:
                name = next(k for k, v in region_index.items() if v == r)
                log.warning("%s: region %s has no %s inventory value for %s", inventory.path, name, kind,
                            ", ".join(labels[gaps][:8]) + (" …" if gaps.size > 8 else ""))
    return Comparison(value=value, sd=sd, present=present, lines=lines)
