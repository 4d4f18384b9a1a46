"""The national sink report: one self-contained HTML page, ``index.html`` in the report
directory (``RUN_DIR/report`` by default, :mod:`inversion.commands.report`).

Everything is inside the file — CSS inline, figures as base64 PNG ``data:`` URIs, no script,
no external URL — so it opens offline, can be mailed or archived in an inventory report's
annex, and looks the same everywhere.  Contents, top to bottom:

1. **In short**: per region, in plain words, whether the inventory is consistent with the
   atmosphere at 95 % (``consistent_95``: |posterior − inventory| ≤ 1.96 σ of the difference,
   both uncertainties combined; and whether it lies inside the posterior 2.5–97.5 % range),
   whether the region is a source or a sink at 95 %, and how sure we are (uncertainty
   reduction 1 − σ_post/σ_prior: ≥ 70 % well, 30–70 % partly, < 30 % weakly constrained);
   sign convention, units and the compared quantity; the loader's warnings (regions the
   state or the observations do not resolve) and a warning when χ²/n is outside its 95 %
   range;
2. **Totals**: the whole-run statistics (mean, multi-year annual mean, trend) and the table
   of every report period (prior, posterior, 16–84 % and 2.5–97.5 % ranges, inventory,
   posterior − inventory, uncertainty reduction; Tg C yr⁻¹ beside Tg CO₂ yr⁻¹ for CO₂);
3. **Time series** per region (the finest report periods): inventory vs prior vs posterior
   with bands;
4. **Maps**: prior, posterior, posterior − prior, uncertainty reduction, total observation
   sensitivity with the sites (:mod:`.figures`, cartopy offline or plain lat/lon with a note);
5. **Observations**: observed vs modelled mole fractions per site and the site statistics;
6. **Diagnostics** (χ²/n with its range, DOFS, solver, iterations) and **metadata**.

:func:`write_html_report` takes the :class:`~inversion.report.data.ReportData` of a run and
reads only these of its fields: ``totals`` (region × period: ``prior``, ``prior_sd``,
``posterior``, ``posterior_sd``, ``p025``, ``p16``, ``p84``, ``p975``, ``inventory``,
``inventory_sd``, ``has_inventory``, ``difference``, ``difference_sd``,
``inventory_inside_95``, ``consistent_95``, ``uncertainty_reduction``, optional
``posterior_sd_lowrank`` and ``truth``; coords ``period_kind``, ``period_label``,
``period_start``, ``period_end``, ``period_coverage``; attrs ``sign_convention``,
``comparable_quantity``, ``carbon_units``, ``carbon_factor``), ``summary`` (region ×
statistic, the same variables; coords ``statistic_unit``, ``statistic_description``),
``sites``, ``site_stats``, ``maps``, ``regions``, ``diagnostics``, ``metadata``, ``unit``,
``species``.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
from pathlib import Path
from string import Template

import numpy as np

from transport.errors import InputError
from transport.units import conversion_factor

from .. import __version__
from ..io import write_text
from ..progress import log
from . import figures

MINUS = "\u2212"
Z95 = 1.959964  # Φ⁻¹(0.975)
_PANELS_PER_FIGURE = 12  # time-series panels per image (3 columns × 4 rows)
_SITES_PER_FIGURE = 6
_FLUX_DISPLAY = {"co2": ("umol m-2 s-1", "µmol m⁻² s⁻¹"), "ch4": ("nmol m-2 s-1", "nmol m⁻² s⁻¹")}
_SENSITIVITY_DISPLAY = {"co2": ("ppm per (umol m-2 s-1)", "ppm per µmol m⁻² s⁻¹"),
                        "ch4": ("ppb per (nmol m-2 s-1)", "ppb per nmol m⁻² s⁻¹")}
_STRONG, _WEAK = 0.7, 0.3  # uncertainty reduction: "well constrained" / "weakly constrained"
_KIND_ORDER = ("period", "monthly", "annual", "run")  # finest first


def write_html_report(data, out_dir: Path) -> Path:
    """Write ``out_dir/index.html`` (atomically; ``out_dir`` is the report directory) and
    return its path."""
    path = Path(out_dir) / "index.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(render_html(data), path)
    log.info("HTML report written to %s", path)
    return path


def render_html(data, *, basemap: figures.Basemap | None = None) -> str:
    """The report page as a string (``basemap`` overrides the map background, for tests)."""
    if basemap is None:
        basemap = figures.make_basemap(data.regions)
    meta = dict(data.metadata or {})
    diag = dict(data.diagnostics or {})
    title = f"{meta.get('run_name') or 'tanhui inversion'}: {data.species.upper()} fluxes"
    sections = [
        _summary_section(data, diag, meta),
        _totals_section(data),
        _timeseries_section(data, series_periods(data.totals)),
        _maps_section(data, basemap),
        _sites_section(data),
        _diagnostics_section(diag),
        _metadata_section(meta, basemap),
    ]
    return _PAGE.substitute(
        title=_e(title), heading=_e(title), period=_e(_span_text(*_run_span(data))),
        generated=_e(f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"), version=_e(__version__),
        body="\n".join(sections))


# ---- periods --------------------------------------------------------------------------------
def series_periods(totals) -> list[int]:
    """Indices of the periods drawn as time series: those of the finest kind present
    (state periods, then months, then years, then the run)."""
    kinds = [str(k) for k in totals["period_kind"].values]
    for kind in _KIND_ORDER:
        if kind in kinds:
            return [j for j, k in enumerate(kinds) if k == kind]
    return list(range(len(kinds)))


def _run_span(data) -> tuple[np.datetime64, np.datetime64]:
    s = data.summary
    mean = list(s["statistic"].values).index("mean")
    return s["statistic_start"].values[mean], s["statistic_end"].values[mean]


def _span_text(start, end) -> str:
    return f"{_date(start)} to {_date(end)} (end exclusive)"


def _date(t) -> str:
    text = str(np.datetime64(t, "s"))
    return text[:10] if text.endswith("T00:00:00") else text.replace("T", " ")[:16]


def _period_label(totals, j: int) -> str:
    label = str(totals["period_label"].values[j])
    if "period_coverage" in totals.coords:
        cover = float(totals["period_coverage"].values[j])
        if cover < 0.999:
            label += f" ({100 * cover:.0f} % covered: {_date(totals['period_start'].values[j])} to " \
                     f"{_date(totals['period_end'].values[j])})"
    return label


# ---- numbers --------------------------------------------------------------------------------
def _e(text) -> str:
    return html.escape(str(text), quote=True)


def fmt(value, digits: int | None = None) -> str:
    """A number for a reader: about 3 significant figures (no exponent for totals), a true
    minus sign, '–' for a missing value."""
    if value is None:
        return "–"
    v = float(value)
    if not np.isfinite(v):
        return "–"
    if digits is None:
        a = abs(v)
        digits = 0 if a >= 100 else 1 if a >= 10 else 2 if a >= 1 else 3
    text = f"{v:,.{digits}f}".replace(",", "\u202f")  # narrow no-break space as thousands separator
    if text.lstrip("-").strip("0.\u202f") == "":
        text = text.lstrip("-")  # no "−0.0"
    return text.replace("-", MINUS)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def pretty_unit(unit: str, alias: bool = True) -> str:
    """A unit string for readers: "Tg CO2 yr-1" → "Tg CO₂ yr⁻¹ (= Mt CO₂ yr⁻¹)" (the
    alternative name only with ``alias``)."""
    words = []
    for word in str(unit).split():
        word = word.replace("CO2", "CO₂").replace("CH4", "CH₄")
        m = re.fullmatch(r"([A-Za-zµ]+)(-?\d+)", word)
        words.append(m.group(1) + m.group(2).translate(_SUPERSCRIPT) if m else word)
    text = " ".join(words)
    if alias and text.startswith("Tg CO₂"):
        text += f" (= Mt{text[2:]})"
    return text


def _pct(value) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{100 * float(value):.0f} %"


def _has(ds, name) -> bool:
    """``ds`` has variable ``name`` with at least one finite (or true) value."""
    if name not in ds:
        return False
    values = np.asarray(ds[name].values)
    return bool(np.isfinite(values).any() if values.dtype.kind in "fc" else values.any())


def _region_label(ds, i: int) -> str:
    name = str(ds["region"].values[i])
    return "ALL (all regions together)" if name == "ALL" else name


# ---- 1. summary -----------------------------------------------------------------------------
def _headline(data):
    """The totals the plain-language summary speaks of, a description and their time span:
    the whole-run mean, else the multi-year annual mean, when it has inventory values; else
    the one report period that has inventory values (e.g. the year of an annual inventory);
    else the whole-run mean."""
    summary, totals = data.summary, data.totals
    stats = [str(s) for s in summary["statistic"].values]
    for name in ("mean", "annual_mean"):
        if name in stats and summary["has_inventory"].sel(statistic=name).values.any():
            return _statistic_row(summary, name)
    with_inventory = np.flatnonzero(totals["has_inventory"].values.any(axis=0))
    if with_inventory.size == 1:
        j = int(with_inventory[0])
        return (totals.isel(period=j), f"report period {_period_label(totals, j)}",
                (totals["period_start"].values[j], totals["period_end"].values[j]))
    return _statistic_row(summary, "mean")


def _statistic_row(summary, name: str):
    k = [str(s) for s in summary["statistic"].values].index(name)
    return (summary.isel(statistic=k), str(summary["statistic_description"].values[k]),
            (summary["statistic_start"].values[k], summary["statistic_end"].values[k]))


def _verdicts(t, totals) -> list[dict]:
    """One plain-language verdict per region of ``t`` (a totals-like dataset over region).
    Without an inventory value in ``t``, the verdict counts the report periods in which the
    inventory is consistent (``consistent`` is then "all", "some" or "none")."""
    out = []
    for i in range(t.sizes["region"]):
        post, lo, hi = (float(t[k].values[i]) for k in ("posterior", "p025", "p975"))
        red = float(t["uncertainty_reduction"].values[i])
        v = {"region": _region_label(t, i), "posterior": post, "sd": float(t["posterior_sd"].values[i]),
             "lo": lo, "hi": hi, "reduction": red}
        if lo > 0:
            v["sign"] = "a net source (emits more than it takes up)"
        elif hi < 0:
            v["sign"] = "a net sink (takes up more than it emits)"
        else:
            v["sign"] = "cannot tell source from sink at 95 %"
        if not np.isfinite(red):
            v["sure"] = ("na", "no prior uncertainty (nothing optimised in this region)")
        elif red >= _STRONG:
            v["sure"] = ("strong", f"well constrained by the observations: uncertainty reduced by {_pct(red)}")
        elif red >= _WEAK:
            v["sure"] = ("partial", f"partly constrained: uncertainty reduced by {_pct(red)}")
        else:
            v["sure"] = ("weak", f"weakly constrained: uncertainty reduced by only {_pct(red)}; the result is "
                                 "mostly the prior's, so the comparison says little")
        # agreement per report period, where the inventory has a value
        has = np.asarray(totals["has_inventory"].values[i], bool)
        n_ok, n = int((np.asarray(totals["consistent_95"].values[i], bool) & has).sum()), int(has.sum())
        per_period = f"per report period: consistent in {n_ok} of {n}" if n else ""
        if bool(t["has_inventory"].values[i]):
            inv, inv_sd = float(t["inventory"].values[i]), float(t["inventory_sd"].values[i])
            ok = bool(t["consistent_95"].values[i])
            inside = bool(t["inventory_inside_95"].values[i])
            diff, dsd = float(t["difference"].values[i]), float(t["difference_sd"].values[i])
            where = "inside" if inside else ("above" if inv > hi else "below")
            v["consistent"] = ok
            value = f"inventory {fmt(inv)}" + (f" ± {fmt(inv_sd)}" if np.isfinite(inv_sd) else " (no σ given)")
            difference = f"posterior − inventory = {fmt(diff)} ± {fmt(Z95 * dsd)} (95 %)"
            if ok and inside:
                text = f"{value} lies inside the atmosphere's 95 % range; {difference}"
            elif ok:
                text = (f"{value}; {difference}: within the combined uncertainty, though the inventory lies {where} "
                        "the atmosphere's 95 % range")
            else:
                text = f"{value} lies {where} the atmosphere's 95 % range; {difference} exceeds the combined uncertainty"
            v["inventory_text"] = text + (f"; {per_period}" if n > 1 else "")
        elif n:
            v["consistent"] = "all" if n_ok == n else "none" if n_ok == 0 else "some"
            v["inventory_text"] = per_period + " (see Totals)"
        else:
            v["consistent"] = None
            v["inventory_text"] = "no inventory value to compare"
        out.append(v)
    return out


_BADGES = {True: ("ok", "consistent"), False: ("no", "not consistent"), None: ("na", "no inventory"),
           "all": ("ok", "consistent in every period"), "some": ("mid", "consistent in some periods"),
           "none": ("no", "not consistent in any period")}


def _summary_section(data, diag: dict, meta: dict) -> str:
    row, what, span = _headline(data)
    unit = pretty_unit(data.unit)
    verdicts = _verdicts(row, data.totals)
    compared = [v for v in verdicts if v["consistent"] is not None]
    lead = []
    if compared:
        ok = [v["region"] for v in compared if v["consistent"] in (True, "all")]
        some = [v["region"] for v in compared if v["consistent"] == "some"]
        bad = [v["region"] for v in compared if v["consistent"] in (False, "none")]
        lead.append(f"The inventory is <b>consistent with the atmosphere at 95 %</b> for {len(ok)} of {len(compared)} "
                    f"regions{': ' + _e(', '.join(ok)) if ok and len(ok) <= 12 else ''}"
                    + (f"; in some periods only for {_e(', '.join(some))}" if some else "")
                    + (f"; <b>not consistent</b> for {_e(', '.join(bad))}." if bad else "."))
    else:
        lead.append("No inventory was given for comparison: the report shows the atmosphere's estimate "
                    "(posterior) against the prior.")
    lead.append(f"Net flux in <b>{_e(unit)}</b>, {_e(what)}: {_e(_span_text(*span))}. Sign convention: "
                f"<b>{_e(data.totals.attrs.get('sign_convention', 'emissions positive, sinks negative'))}</b>.")
    if data.totals.attrs.get("comparable_quantity"):
        lead.append(f"Compared: {_e(data.totals.attrs['comparable_quantity'])}.")
    lead.append("<small>" + ("“Consistent” means the posterior and the inventory agree within their combined "
                "uncertainty at 95 % (|posterior − inventory| ≤ 1.96 σ, σ combining both uncertainties); the table "
                "also says whether the inventory lies inside the posterior 95 % range. " if compared else "")
                + "The 95 % range (2.5–97.5 %) holds the true total with 95 % probability according to the "
                "inversion. “How sure” is the uncertainty reduction 1 − σ<sub>posterior</sub>/σ<sub>prior</sub>: "
                "0 % means the observations taught us nothing about the region.</small>")
    warnings = [w for w in [_chi2_warning(diag)] if w] + [_e(w) for w in meta.get("warnings") or []]
    boxes = "".join(f"<p class=warn>{w}</p>" for w in warnings)

    rows = []
    for v in verdicts:
        css, word = _BADGES[v["consistent"]]
        sure = {"strong": "ok", "partial": "mid", "weak": "no", "na": "na"}[v["sure"][0]]
        rows.append(
            f"<tr><th scope=row>{_e(v['region'])}</th>"
            f"<td class=num>{fmt(v['posterior'])} ± {fmt(v['sd'])}</td>"
            f"<td class=num>{fmt(v['lo'])} to {fmt(v['hi'])}</td>"
            + (f"<td><span class='badge {css}'>{word}</span><br><small>{_e(v['inventory_text'])}</small></td>"
               if compared else "")
            + f"<td><small>{_e(v['sign'])}</small></td>"
            f"<td><span class='badge {sure}'>{_pct(v['reduction'])}</span><br><small>{_e(v['sure'][1])}</small></td></tr>")
    table = ("<table class=summary><thead><tr><th>region</th><th>the atmosphere says<br><small>posterior ± 1σ, "
             f"{_e(unit)}</small></th><th>95 % range</th>" + ("<th>inventory consistent?</th>" if compared else "")
             + "<th>source or sink?</th><th>how sure</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
    return "<section id=summary><h2>In short</h2>" + boxes + "".join(f"<p>{x}</p>" for x in lead) + table + \
        "</section>"


def _chi2_warning(diag: dict) -> str | None:
    chi2, rng = diag.get("chi2_per_obs"), diag.get("chi2_per_obs_95")
    if chi2 is None or rng is None:
        return None
    lo, hi = rng
    if lo <= chi2 <= hi:
        return None
    which = "too small (the uncertainties shown are too optimistic)" if chi2 > hi else \
        "too large (the uncertainties shown are too pessimistic)"
    return (f"Warning: χ²/n = {chi2:.2f} lies outside the range expected for correct error settings "
            f"({lo:.2f}–{hi:.2f}): the assumed errors are probably {which}; see Diagnostics.")


# ---- 2. totals tables ------------------------------------------------------------------------
def _columns(ds, carbon: tuple[str, float] | None) -> list[tuple[str, callable]]:
    """(header, cell(ds_row, i)) of a totals-like table (``ds`` already reduced to one period
    or statistic per call of the cell functions)."""
    inv = _has(ds, "has_inventory")

    def pm(a, b, factor=1.0):
        def cell(t, i):
            mean, sd = float(t[a].values[i]), float(t[b].values[i])
            if not np.isfinite(mean):
                return "–"
            return fmt(factor * mean) + (f" ± {fmt(factor * sd)}" if np.isfinite(sd) else "")
        return cell

    cols = []
    if inv:
        cols.append(("inventory ± 1σ", pm("inventory", "inventory_sd")))
    cols += [("prior ± 1σ", pm("prior", "prior_sd")), ("posterior ± 1σ", pm("posterior", "posterior_sd")),
             ("16–84 %", lambda t, i: f"{fmt(t['p16'].values[i])} to {fmt(t['p84'].values[i])}"),
             ("2.5–97.5 %", lambda t, i: f"{fmt(t['p025'].values[i])} to {fmt(t['p975'].values[i])}")]
    if carbon is not None:
        cols.append((f"posterior ± 1σ, {pretty_unit(carbon[0])}", pm("posterior", "posterior_sd", carbon[1])))
    if inv:
        cols += [("posterior − inventory ± 1σ", pm("difference", "difference_sd")),
                 ("consistent at 95 %?", lambda t, i: _flag(t, i, "consistent_95")),
                 ("inventory inside 95 % range?", lambda t, i: _flag(t, i, "inventory_inside_95"))]
    cols.append(("σ reduction", lambda t, i: _pct(t["uncertainty_reduction"].values[i])))
    if _has(ds, "posterior_sd_lowrank"):
        cols.append(("posterior σ, low-rank", lambda t, i: fmt(t["posterior_sd_lowrank"].values[i])))
    if _has(ds, "truth"):
        cols.append(("truth (twin)", lambda t, i: fmt(t["truth"].values[i])))
    return cols


def _flag(t, i, name) -> str:
    if not bool(t["has_inventory"].values[i]):
        return "–"
    return "yes" if bool(t[name].values[i]) else "<b>no</b>"


def _carbon(data) -> tuple[str, float] | None:
    label, factor = data.totals.attrs.get("carbon_units"), data.totals.attrs.get("carbon_factor")
    if label and factor is not None and np.isfinite(factor):
        return str(label), float(factor)
    return None


def _table(head_first: str, columns, rows: list[tuple[str, object, int]]) -> str:
    """rows: (row header, dataset reduced to one period/statistic, region index)."""
    head = "".join(f"<th>{_e(name)}</th>" for name, _ in columns)
    body = "".join("<tr><th scope=row>" + _e(label) + "</th>"
                   + "".join(f"<td class=num>{cell(t, i)}</td>" for _, cell in columns) + "</tr>"
                   for label, t, i in rows)
    return (f"<div class=wide><table><thead><tr><th>{_e(head_first)}</th>{head}</tr></thead><tbody>{body}</tbody>"
            "</table></div>")


def _totals_section(data) -> str:
    totals, summary = data.totals, data.summary
    carbon = _carbon(data)
    parts = [f"<section id=totals><h2>Totals</h2><p>Net flux of each region, "
             f"{_e(totals.attrs.get('sign_convention', 'emissions positive, sinks negative'))}. The ranges are the "
             "posterior 16–84 % (68 %) and 2.5–97.5 % (95 %) intervals; every uncertainty uses the full posterior "
             "covariance between regions and periods.</p>"]
    for k, statistic in enumerate(summary["statistic"].values):
        t = summary.isel(statistic=k)
        unit = pretty_unit(str(summary["statistic_unit"].values[k]))
        years = str(summary["statistic_years"].values[k]) if "statistic_years" in summary.coords else ""
        parts.append(f"<h3>{_e(str(summary['statistic_description'].values[k]).capitalize())} ({_e(unit)})</h3>")
        if statistic == "mean":
            parts.append(f"<p class=note>{_e(_span_text(*_run_span(data)))}</p>")
        elif years:
            parts.append(f"<p class=note>years: {_e(years)}</p>")
        cols = _columns(t, carbon if statistic != "trend" else None)
        parts.append(_table("region", cols, [(_region_label(t, i), t, i) for i in range(t.sizes["region"])]))
    per_period = []
    for i in range(totals.sizes["region"]):
        t = totals.isel(region=[i])
        rows = [(_period_label(totals, j), t.isel(period=j), 0) for j in range(totals.sizes["period"])]
        per_period.append(f"<h4>{_e(_region_label(totals, i))}</h4>" + _table("period", _columns(totals, carbon), rows))
    parts.append(f"<details><summary>Every report period ({totals.sizes['period']}), every region, "
                 f"{_e(pretty_unit(data.unit))}</summary>" + "".join(per_period) + "</details>")
    if _has(totals, "posterior_sd_lowrank"):
        parts.append("<p class=note>“posterior σ, low-rank” is the variational solver's approximate σ from its "
                     "Lanczos vectors; the σ and ranges used everywhere else are exact (extra solves).</p>")
    return "".join(parts) + "</section>"


# ---- 3. time series -------------------------------------------------------------------------
def _timeseries_section(data, idx: list[int]) -> str:
    """Panels over the series periods ``idx``; inventory values of any report period (a
    monthly or annual inventory beside weekly totals) are drawn over their own periods."""
    all_periods = data.totals
    totals = all_periods.isel(period=idx)
    truth = _has(totals, "truth")
    series = []
    for i in range(totals.sizes["region"]):
        t = totals.isel(region=i)
        inv = all_periods.isel(region=i)
        has = np.asarray(inv["has_inventory"].values, bool)
        arr = {k: np.asarray(t[k].values, float) for k in ("prior", "prior_sd", "posterior", "p025", "p16", "p84",
                                                            "p975")}
        series.append(figures.Series(
            region=_region_label(totals, i), start=np.asarray(t["period_start"].values),
            end=np.asarray(t["period_end"].values), truth=np.asarray(t["truth"].values, float) if truth else None,
            inventory=np.asarray(inv["inventory"].values, float)[has],
            inventory_sd=np.asarray(inv["inventory_sd"].values, float)[has],
            inventory_start=np.asarray(inv["period_start"].values)[has],
            inventory_end=np.asarray(inv["period_end"].values)[has], **arr))
    kind = str(totals["period_kind"].values[0]) if totals.sizes["period"] else ""
    images = []
    for k in range(0, len(series), _PANELS_PER_FIGURE):
        chunk = series[k:k + _PANELS_PER_FIGURE]
        images.append(_img(figures.timeseries_png(chunk, pretty_unit(data.unit, alias=False)),
                           "time series of " + ", ".join(s.region for s in chunk)))
    return ("<section id=timeseries><h2>Time series per region</h2><p>Net flux per "
            f"{_e({'period': 'state period', 'monthly': 'month', 'annual': 'year', 'run': 'run'}.get(kind, 'period'))} "
            f"({_e(pretty_unit(data.unit))}). Blue: the posterior (what the atmosphere says) with its 68 % (dark) "
            "and 95 % (light) ranges; orange dashed: the prior ± 1σ; green: the inventory over its period with its "
            "95 % range" + ("; purple crosses: the true flux of this twin experiment" if truth else "")
            + ". Each box spans the part of the period the run covers.</p>" + "".join(images) + "</section>")


# ---- 4. maps --------------------------------------------------------------------------------
def _maps_section(data, basemap: figures.Basemap) -> str:
    maps = data.maps
    lat, lon = np.asarray(maps["lat"].values, float), np.asarray(maps["lon"].values, float)
    sites = _site_positions(data.site_stats)
    target, label = _FLUX_DISPLAY[data.species]
    shown = {n: _converted(maps[n], target, n) for n in ("prior_flux", "posterior_flux", "difference")}
    limit = figures.symmetric_limit(shown["prior_flux"], shown["posterior_flux"])
    flux_label = f"{label} (positive = emission)"
    start, end = maps.attrs.get("period_start"), maps.attrs.get("period_end")
    when = f"mean over {_date(start)} to {_date(end)}" if start and end else "mean over the run"
    specs = [
        (shown["prior_flux"], "Prior flux", f"What we assumed before the observations ({when}).",
         figures.MapStyle("diverging", "RdBu_r", limit), flux_label),
        (shown["posterior_flux"], "Posterior flux", f"What the atmosphere says ({when}). Same colours as the "
         "prior: red emits, blue takes up.", figures.MapStyle("diverging", "RdBu_r", limit), flux_label),
        (shown["difference"], "Posterior − prior", "Where the observations changed the flux: orange = more "
         "emission (or less uptake) than assumed, purple = less emission (or more uptake).",
         figures.MapStyle("diverging", "PuOr_r"), flux_label),
        (np.asarray(maps["uncertainty_reduction"].values, float), "Uncertainty reduction 1 − σ_post/σ_prior",
         "How much the observations narrowed the uncertainty of each cell's flux (0 %: not at all; near 100 %: "
         "tightly constrained; blank: no flux optimised).", figures.MapStyle("fraction", "viridis"), "%"),
        (_converted(maps["sensitivity"], _SENSITIVITY_DISPLAY[data.species][0], "sensitivity"),
         "Total observation sensitivity", "The sum of all footprints: where the observed air has been. Fluxes far "
         "from the sites (pale) are hardly seen; triangles mark the sites.", figures.MapStyle("log", "YlGnBu"),
         _SENSITIVITY_DISPLAY[data.species][1]),
    ]
    cards = [_figure_card(figures.map_png(values, lat, lon, title=title, colorbar_label=bar, style=style,
                                          basemap=basemap, sites=sites), title, caption)
             for values, title, caption, style, bar in specs]
    note = f"<p class=warn>Maps without coastlines: {_e(basemap.note)}.</p>" if basemap.note else ""
    return ("<section id=maps><h2>Maps</h2>" + note
            + f"<p class=note>Region borders: {_e(basemap.border_source)}.</p><div class=grid>"
            + "".join(cards) + "</div></section>")


def _converted(var, target: str, name: str) -> np.ndarray:
    """Values of ``var`` in ``target`` units (its ``units`` attribute is required)."""
    units = var.attrs.get("units")
    if units is None:
        raise InputError(None, name, "no units attribute", "the report data must state the units of every field")
    return np.asarray(var.values, float) * conversion_factor(units, target, variable=name)


def _site_positions(stats) -> figures.Sites | None:
    if stats is None or "latitude" not in stats or "longitude" not in stats:
        return None
    return figures.Sites(tuple(str(s) for s in stats["site"].values), np.asarray(stats["latitude"].values, float),
                         np.asarray(stats["longitude"].values, float))


def _figure_card(png: bytes, title: str, caption: str) -> str:
    return f"<figure>{_img(png, title)}<figcaption><b>{_e(title)}.</b> {_e(caption)}</figcaption></figure>"


def _img(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{_e(alt)}">'


# ---- 5. sites -------------------------------------------------------------------------------
_STAT_LABELS = {"n": "observations", "prior_bias": "prior bias", "prior_rmse": "prior RMSE",
                "posterior_bias": "posterior bias", "posterior_rmse": "posterior RMSE",
                "prior_chi2_per_obs": "prior χ²/n", "posterior_chi2_per_obs": "posterior χ²/n",
                "prior_correlation": "prior r", "posterior_correlation": "posterior r", "height": "inlet height"}
_POSITIONS = {"latitude", "longitude"}  # drawn on the maps instead


def _sites_section(data) -> str:
    obs, stats = data.sites, data.site_stats
    target = {"co2": "ppm", "ch4": "ppb"}[data.species]
    names = ["observed", "prior_model", "posterior_model", "background", "sigma"]
    has_post_bg = "posterior_background" in obs
    values = {n: _converted(obs[n], target, n) for n in names + (["posterior_background"] if has_post_bg else [])}
    site = np.asarray(obs["site"].values).astype(str)
    panels = []
    for code in sorted(set(site)):
        m = site == code
        panels.append(figures.SiteSeries(
            site=code, time=np.asarray(obs["time"].values)[m], observed=values["observed"][m],
            prior=values["prior_model"][m], posterior=values["posterior_model"][m],
            background=values["background"][m], sigma=values["sigma"][m], caption=_site_caption(stats, code, target),
            posterior_background=values["posterior_background"][m] if has_post_bg else None))
    images = []
    for k in range(0, len(panels), _SITES_PER_FIGURE):
        chunk = panels[k:k + _SITES_PER_FIGURE]
        images.append(_img(figures.sites_png(chunk, target), "mole fractions at " + ", ".join(p.site for p in chunk)))
    return ("<section id=sites><h2>Observations</h2><p>Observed and modelled mole fractions at each site "
            f"({_e(target)}). The model adds the transported fluxes to the background; a good inversion brings "
            "the blue line (posterior) onto the black points, within their error bars, without chasing every "
            "point.</p>" + _site_table(stats) + "".join(images) + "</section>")


def _site_caption(stats, code: str, target: str) -> str:
    s = stats.sel(site=code)
    return (f"posterior bias {fmt(s['posterior_bias'].values)} {target}, RMSE {fmt(s['posterior_rmse'].values)} "
            f"{target}, χ²/n {float(s['posterior_chi2_per_obs'].values):.2f}, n = {int(s['n'].values)}")


def _site_table(stats) -> str:
    names = [n for n in stats.data_vars if stats[n].dims == ("site",) and n not in _POSITIONS
             and np.asarray(stats[n].values).dtype.kind in "fiu"]
    head = "".join(f"<th>{_e(_STAT_LABELS.get(n, n.replace('_', ' ')))}"
                   + (f"<br><small>{_e(stats[n].attrs['units'])}</small>" if stats[n].attrs.get("units", "1") != "1"
                      else "") + "</th>" for n in names)
    rows = []
    for k, code in enumerate(stats["site"].values):
        cells = "".join(f"<td class=num>{_stat_cell(stats[n].values[k], n)}</td>" for n in names)
        rows.append(f"<tr><th scope=row>{_e(code)}</th>{cells}</tr>")
    return (f"<table><thead><tr><th>site</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p class=note>Bias = mean(observed − modelled); RMSE = root mean square of observed − modelled; "
            "r = correlation of observed and modelled; χ²/n = mean of ((observed − modelled)/σ)², about 1 when the "
            "assumed errors σ are right.</p>")


def _stat_cell(value, name: str) -> str:
    if np.asarray(value).dtype.kind in "iu":
        return str(int(value))
    small = "correlation" in name or ("chi2" in name and abs(float(value)) < 10)
    return fmt(value, 2 if small else None)


# ---- 6. diagnostics and metadata ------------------------------------------------------------
def _diagnostics_section(diag: dict) -> str:
    rows = []
    if "chi2_per_obs" in diag:
        rng = diag.get("chi2_per_obs_95")
        inside = rng is not None and rng[0] <= diag["chi2_per_obs"] <= rng[1]
        rows.append(("χ²/n", f"{diag['chi2_per_obs']:.3f}" + (f" (95 % range for correct errors {rng[0]:.3f}–"
                     f"{rng[1]:.3f}: {'inside' if inside else '<b>outside</b>'})" if rng is not None else ""),
                     "Misfit of the prior to the observations, weighted by the assumed errors; ≈ 1 when the "
                     "error settings fit the data."))
    if "dofs" in diag:
        rows.append(("DOFS", f"{diag['dofs']:.1f}" + (f" of {diag['n_state']} state elements" if "n_state" in diag
                                                    else ""),
                     "Degrees of freedom for signal: how many independent pieces of information the observations "
                     "gave about the fluxes."))
    if "n_obs" in diag:
        rows.append(("observations", str(diag["n_obs"]), "Number of observations used."))
    solver = diag.get("solver")
    if solver:
        text = solver + (f" ({diag['form']} form)" if diag.get("form") else "")
        if "iterations" in diag:
            text += f", {diag['iterations']} iterations"
        if "converged" in diag:
            text += ", converged" if diag["converged"] else ", <b>not converged</b>"
        rows.append(("solver", text, "Analytical: exact posterior covariance. Variational: conjugate gradients "
                     "(4D-Var)."))
    body = "".join(f"<tr><th scope=row>{_e(k)}</th><td>{v}</td><td><small>{_e(h)}</small></td></tr>"
                   for k, v, h in rows)
    rest = {k: v for k, v in diag.items() if k not in {"sites", "chi2_per_obs", "chi2_per_obs_95", "dofs",
                                                        "n_obs", "solver", "form", "iterations", "converged"}}
    return ("<section id=diagnostics><h2>Diagnostics</h2><table><tbody>" + body + "</tbody></table>"
            + (f"<details><summary>All diagnostics</summary>{_nested(rest)}</details>" if rest else "")
            + "</section>")


def _metadata_section(meta: dict, basemap: figures.Basemap) -> str:
    maps = {"map coastlines": ", ".join(str(p) for p in basemap.coastlines) or "none (" + (basemap.note or "") + ")",
            "map borders": basemap.border_source}
    return ("<section id=metadata><h2>Metadata</h2><p>What went into this inversion, for the record and to "
            "reproduce it.</p>" + _nested({**meta, **maps}) + "</section>")


def _nested(value) -> str:
    """A dict as a two-column table (recursively), a list of dicts as a table with one row
    each, any other list as comma-separated items."""
    if isinstance(value, dict):
        if not value:
            return "–"
        rows = "".join(f"<tr><th scope=row>{_e(str(k).replace('_', ' '))}</th><td>{_nested(v)}</td></tr>"
                       for k, v in value.items())
        return f"<table class=meta><tbody>{rows}</tbody></table>"
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, dict) for v in value):
            keys = list(dict.fromkeys(k for v in value for k in v))
            head = "".join(f"<th>{_e(str(k).replace('_', ' '))}</th>" for k in keys)
            rows = "".join("<tr>" + "".join(f"<td>{_nested(v[k]) if k in v else '–'}</td>" for k in keys) + "</tr>"
                           for v in value)
            return f"<table class=meta><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
        return _e(", ".join(str(v) for v in value)) if value else "–"
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    text = str(value)
    if text.startswith("sha256:") or len(text) > 60 and " " not in text:
        return f"<code>{_e(text)}</code>"
    return _e(text)


_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="tanhui $version">
<title>$title</title>
<style>
body { font-family: "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; margin: 0; color: #1d1d1d;
       background: #fafafa; line-height: 1.45; }
main { max-width: 1240px; margin: 0 auto; padding: 1.2em 2em 3em; background: white; }
header { border-bottom: 3px solid #1b6ca8; margin-bottom: 1em; }
h1 { font-size: 1.7em; margin: 0.3em 0 0.1em; } h2 { border-bottom: 1px solid #ccc; margin-top: 1.8em; }
h4 { margin: 1em 0 0.3em; }
nav a { margin-right: 1.1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; }
th, td { border: 1px solid #d0d0d0; padding: 0.3em 0.55em; vertical-align: top; }
thead th { background: #eef3f8; text-align: center; }
tbody tr:nth-child(even) { background: #f7f7f7; }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.wide { overflow-x: auto; } .wide table { font-size: 0.82em; } .wide th, .wide td { padding: 0.25em 0.4em; }
table.summary td { max-width: 21em; }
.badge { display: inline-block; padding: 0.05em 0.5em; border-radius: 0.8em; font-size: 0.85em;
         font-weight: bold; white-space: nowrap; }
.badge.ok { background: #d9f0d3; color: #1b5e20; } .badge.no { background: #fbdada; color: #8e1b1b; }
.badge.mid { background: #fdf0c8; color: #6d4c00; } .badge.na { background: #e6e6e6; color: #444; }
.warn { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.4em 0.7em; display: block; }
.note { color: #555; font-size: 0.9em; }
img { max-width: 100%; height: auto; display: block; margin: 0.5em 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 1em; }
figure { margin: 0; border: 1px solid #e2e2e2; padding: 0.5em; }
figcaption { font-size: 0.88em; color: #333; }
table.meta { margin: 0.1em 0; font-size: 0.95em; } table.meta th { text-align: left; font-weight: 600; }
table.meta table.meta { margin: 0; } code { font-size: 0.85em; word-break: break-all; }
details { margin: 0.6em 0; } summary { cursor: pointer; color: #1b6ca8; }
footer { margin-top: 3em; font-size: 0.8em; color: #777; }
</style>
</head>
<body>
<main>
<header>
<h1>$heading</h1>
<p>Top-down (atmospheric inversion) estimate, $period. Generated $generated by tanhui $version.</p>
<nav><a href="#summary">In short</a><a href="#totals">Totals</a><a href="#timeseries">Time series</a>
<a href="#maps">Maps</a><a href="#sites">Observations</a><a href="#diagnostics">Diagnostics</a>
<a href="#metadata">Metadata</a></nav>
</header>
$body
<footer>This page is self-contained: figures are embedded, nothing is loaded from the network.</footer>
</main>
</body>
</html>
""")
