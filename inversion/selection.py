"""Selection of raw observations and their averaging onto the footprint receptor times.

For each :class:`~inversion.obs_formats.ObservationSeries` (one site, one file):

1. **footprints**: the store rows of the same site (codes compared in upper case) whose
   receptor time lies in the run [start, end).  If the store holds several inlet heights for
   the site, the one within ``inlet_tolerance`` of the file's inlet height is used; if none is,
   ``inlet_mismatch = "error"`` refuses and ``"warn"`` uses the nearest height (logged and
   counted).  A file without an inlet height can only use a site with one footprint height.
2. **windows**: each footprint row r with receptor time t_r averages the samples whose
   midpoint lies in  [t_r + a, t_r + a + w)  with w = ``averaging_window`` and a = 0, −w/2, −w
   for ``averaging_align`` = start (NAME: the receptor time starts the release period),
   centre, end.  Windows of one site must not overlap (a sample would be used twice).
3. **samples**: missing values (NaN, fill values) are skipped; with ``use_flags`` the samples
   the file flags as not assimilable are skipped; a sample in no window is *unmatched*
   (inside the run) or *outside the run*.  Unmatched samples are an error unless
   ``unmatched = "drop"``.  Windows whose receptor hour (``hours_clock``: UTC, local solar
   time UTC + longitude/15 h, or a fixed offset) is not in ``hours`` are skipped, as are
   windows with fewer than ``min_samples`` samples.  Every count is reported.
4. **averaging** of the n samples v_i (per-sample 1σ u_i) of a window:

       value         = (1/n) Σ v_i
       repeatability = √(Σ u_i²) / n              (error of the mean of independent samples)
       variability   = √(Σ (v_i − value)² / (n − 1))   (spread within the window, n ≥ 2)
       measurement σ = repeatability | variability | √(repeatability² + variability²)

   for ``measurement_uncertainty`` = repeatability | variability | both (mol mol⁻¹).

The result has one observation per used footprint row: ``obs_id``, ``time`` and ``site`` of
the footprint, ``row``, ``value``, ``measurement_sigma``, ``n_samples``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import xarray as xr

from transport.errors import InputError

from .config import ObservationsConfig
from .obs_formats import SAMPLE_TIME, ObservationSeries
from .progress import log


@dataclass
class SeriesReport:
    """What the selection did with one series (counts of samples unless said otherwise)."""

    file: str
    site: str
    format: str
    samples: int = 0
    missing_value: int = 0
    flagged: int = 0
    outside_run: int = 0
    unmatched: int = 0
    outside_hours: int = 0
    too_few_in_window: int = 0
    used: int = 0
    observations: int = 0  # windows kept = observations produced
    footprints_without_samples: int = 0  # footprint rows of this site and height with no usable sample
    inlet_height_obs: float | None = None
    inlet_height_footprints: float | None = None
    inlet_action: str = "match"
    uncertainty_source: str = ""
    flag_source: str = ""
    unmatched_examples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        inlet = "" if self.inlet_action == "match" else (
            f"; inlet {self.inlet_height_obs:g} m vs footprints {self.inlet_height_footprints:g} m: {self.inlet_action}")
        return (f"{self.site} ({self.file}, {self.format}): {self.samples} samples — {self.missing_value} missing, "
                f"{self.flagged} flagged, {self.outside_run} outside the run, {self.unmatched} without footprint, "
                f"{self.outside_hours} outside the selected hours, {self.too_few_in_window} in windows with too few "
                f"samples; {self.used} used in {self.observations} observations; "
                f"{self.footprints_without_samples} footprints without samples{inlet}")


def _clock_offset(clock: str, longitude: np.ndarray) -> np.ndarray:
    """Offset (ms, int64) from UTC to the clock whose hours are selected."""
    if clock == "utc":
        return np.zeros(longitude.shape, dtype=np.int64)
    if clock == "solar":
        return np.round(longitude / 15.0 * 3_600_000).astype(np.int64)
    match = re.fullmatch(r"([+-])(\d{2}):(\d{2})", clock)
    sign = 1 if match.group(1) == "+" else -1
    return np.full(longitude.shape, sign * (int(match.group(2)) * 3600 + int(match.group(3)) * 60) * 1000, dtype=np.int64)


def hour_of_day(times: np.ndarray, longitude: np.ndarray, clock: str) -> np.ndarray:
    """Hour of day (0…23) of UTC ``times`` on ``clock`` (utc, solar or "+HH:MM")."""
    ms = times.astype("datetime64[ms]").astype(np.int64) + _clock_offset(clock, np.asarray(longitude, dtype=np.float64))
    return (ms // 3_600_000) % 24


def _footprint_rows(series: ObservationSeries, store_obs: xr.Dataset, cfg: ObservationsConfig, start, end,
                    report: SeriesReport, store_path) -> np.ndarray:
    """Store rows of the series' site (and matching inlet height) with receptor time in the run."""
    sites = np.char.upper(np.asarray(store_obs["site"].values).astype(str))
    times = np.asarray(store_obs["time"].values).astype("datetime64[s]")
    rows = np.flatnonzero((sites == series.site) & (times >= start) & (times < end))
    if rows.size == 0:
        return rows
    heights = np.asarray(store_obs["height"].values, dtype=np.float64)[rows]
    available = np.unique(heights)
    inlet = series.inlet_height
    if inlet is None:
        if available.size > 1:
            raise InputError(series.path, "inlet height", f"the file gives no inlet height and the footprint store has "
                             f"site {series.site} at {available.tolist()} m",
                             "add the inlet height to the file (or split the store per height)")
        report.inlet_action = f"file gives no inlet height: footprints at {available[0]:g} m used"
        report.inlet_height_footprints = float(available[0])
        return rows
    nearest = available[np.argmin(np.abs(available - inlet))]
    report.inlet_height_obs, report.inlet_height_footprints = float(inlet), float(nearest)
    if abs(nearest - inlet) > cfg.inlet_tolerance_m:
        problem = (f"observations of site {series.site} are at {inlet:g} m above ground, the nearest footprints "
                   f"in {store_path} at {nearest:g} m (tolerance {cfg.inlet_tolerance})")
        if cfg.inlet_mismatch == "error":
            raise InputError(series.path, "inlet height", problem,
                             'compute footprints at the inlet height, or set observations.inlet_mismatch = "warn" '
                             "to use the nearest ones (logged and counted)")
        report.inlet_action = "warn: nearest footprints used"
        log.warning("%s: %s; using them (observations.inlet_mismatch = \"warn\")", series.path, problem)
    return rows[heights == nearest]


def _windows(rows: np.ndarray, store_obs: xr.Dataset, cfg: ObservationsConfig, series: ObservationSeries):
    """Window starts and ends (datetime64[ms]) of ``rows``, sorted by start, and that order."""
    width = np.timedelta64(round(cfg.averaging_window_s * 1000), "ms")
    shift = {"start": 0, "centre": -width // 2, "end": -width}[cfg.averaging_align]
    receptor = np.asarray(store_obs["time"].values).astype("datetime64[ms]")[rows]
    order = np.argsort(receptor, kind="stable")
    starts = receptor[order] + shift
    ends = starts + width
    overlap = np.flatnonzero(starts[1:] < ends[:-1])
    if overlap.size:
        i = overlap[0]
        raise InputError(series.path, "observations.averaging_window",
                         f"averaging windows of site {series.site} overlap ({cfg.averaging_window} windows around "
                         f"footprints at {receptor[order][i]} and {receptor[order][i + 1]}): samples would be used twice",
                         "choose an averaging_window no longer than the spacing of the footprints")
    return starts, ends, order


def _window_statistics(value, uncertainty, window, n_windows, cfg: ObservationsConfig, series: ObservationSeries):
    """Per window: sample count, mean and measurement σ (module docstring, step 4)."""
    n = np.bincount(window, minlength=n_windows).astype(np.float64)
    if n_windows == 0:
        return n, n.copy(), n.copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(window, value, n_windows) / n
        parts = []
        if cfg.measurement_uncertainty in ("repeatability", "both"):
            if uncertainty is None:
                raise InputError(series.path, "uncertainty", "the file has no per-sample uncertainty "
                                 f"({series.format}: {series.uncertainty_source})",
                                 'use observations.measurement_uncertainty = "variability" with min_samples ≥ 2')
            missing = ~np.isfinite(uncertainty)
            if missing.any():
                raise InputError(series.path, series.uncertainty_source, f"{int(missing.sum())} of the samples used "
                                 "have no uncertainty value", 'use observations.measurement_uncertainty = "variability" '
                                 "(min_samples ≥ 2) or give those samples an uncertainty")
            parts.append(np.sqrt(np.bincount(window, uncertainty**2, n_windows)) / n)
        if cfg.measurement_uncertainty in ("variability", "both"):
            parts.append(np.sqrt(np.bincount(window, (value - mean[window]) ** 2, n_windows) / (n - 1)))
    sigma = np.sqrt(sum(p**2 for p in parts))
    return n, mean, sigma


def select_series(series: ObservationSeries, store_obs: xr.Dataset, cfg: ObservationsConfig, start: np.datetime64,
                  end: np.datetime64, store_path) -> tuple[dict[str, np.ndarray], SeriesReport]:
    """Observations of one series on its footprints (see the module docstring): arrays
    ``row``, ``value``, ``measurement_sigma``, ``n_samples`` and the report."""
    report = SeriesReport(file=str(series.path.name), site=series.site, format=series.format, samples=series.size,
                          uncertainty_source=series.uncertainty_source, flag_source=series.flag_source)
    for note in series.notes:
        log.info("%s: %s", series.path, note)
    keep = np.isfinite(series.value)
    report.missing_value = int((~keep).sum())
    if cfg.use_flags:
        report.flagged = int((keep & ~series.usable).sum())
        keep &= series.usable
    rows = _footprint_rows(series, store_obs, cfg, start, end, report, store_path)
    time = series.time.astype(SAMPLE_TIME)
    if rows.size:
        starts, ends, order = _windows(rows, store_obs, cfg, series)
        rows = rows[order]
    else:
        starts = ends = np.array([], dtype="datetime64[ms]")
    window = np.searchsorted(starts, time, side="right") - 1
    inside = keep & (window >= 0)
    inside[inside] = time[inside] < ends[window[inside]]
    in_run = (time >= start) & (time < end)
    lost = keep & ~inside
    report.outside_run = int((lost & ~in_run).sum())
    unmatched = lost & in_run
    report.unmatched = int(unmatched.sum())
    report.unmatched_examples = [str(t) for t in time[unmatched][:3]]

    longitude = np.asarray(store_obs["longitude"].values, dtype=np.float64)[rows]
    receptor = np.asarray(store_obs["time"].values)[rows]
    hour_ok = (np.isin(hour_of_day(receptor, longitude, cfg.hours_clock), cfg.hours) if cfg.hours is not None
               else np.ones(rows.size, dtype=bool))
    counts = np.bincount(window[inside], minlength=rows.size)
    report.outside_hours = int(counts[~hour_ok].sum())
    enough = counts >= cfg.min_samples
    report.too_few_in_window = int(counts[hour_ok & ~enough].sum())
    report.footprints_without_samples = int((hour_ok & (counts == 0)).sum())
    used_window = hour_ok & enough
    use = inside.copy()
    use[inside] = used_window[window[inside]]
    report.used = int(use.sum())

    kept = np.flatnonzero(used_window)
    renumber = np.full(rows.size, -1)
    renumber[kept] = np.arange(kept.size)
    w = renumber[window[use]]
    unc = None if series.uncertainty is None else series.uncertainty[use]
    n, mean, sigma = _window_statistics(series.value[use], unc, w, kept.size, cfg, series)
    bad = ~(sigma > 0) | ~np.isfinite(sigma)
    if bad.any():
        first = receptor[kept][bad][0]
        raise InputError(series.path, "measurement uncertainty", f"{int(bad.sum())} averaged observations of site "
                         f"{series.site} have a zero or undefined uncertainty (first at {first})",
                         "use another observations.measurement_uncertainty, or samples with a positive uncertainty")
    report.observations = int(kept.size)
    log.info("%s", report.summary())
    return {"row": rows[kept], "value": mean, "measurement_sigma": sigma, "n_samples": n.astype(np.int64)}, report


def select_observations(series_list: list[ObservationSeries], store_obs: xr.Dataset, cfg: ObservationsConfig,
                        start: np.datetime64, end: np.datetime64, store_path) -> xr.Dataset:
    """All series on their footprints: one observation per used footprint row, ordered by row,
    with ``obs_id``, ``time``, ``site`` taken from the store.  The per-series reports are
    logged and kept (JSON) in the attribute ``selection``.  Unmatched samples raise
    :class:`InputError` unless ``unmatched = "drop"``; two series on the same footprints are
    refused."""
    if cfg.averaging_window_s is None:
        raise InputError(None, "observations.averaging_window", "raw observation files need an averaging window "
                         "onto the footprint times", 'set e.g. averaging_window = "2 h" (the spacing of the footprints)')
    parts, reports = [], []
    for series in series_list:
        part, report = select_series(series, store_obs, cfg, start, end, store_path)
        parts.append(part)
        reports.append(report)
    rows = np.concatenate([p["row"] for p in parts]) if parts else np.array([], dtype=np.int64)
    unique, counts = np.unique(rows, return_counts=True)
    if (counts > 1).any():
        ids = np.asarray(store_obs["obs_id"].values).astype(str)[unique[counts > 1]]
        files = sorted({r.file for r, p in zip(reports, parts) if np.isin(p["row"], unique[counts > 1]).any()})
        raise InputError(", ".join(files), "site", f"{int((counts > 1).sum())} footprints receive observations from "
                         f"more than one file (e.g. {', '.join(ids[:3])})", "give each site and inlet one observation file")
    unmatched = [r for r in reports if r.unmatched]
    if unmatched:
        listing = "; ".join(f"{r.site} ({r.file}): {r.unmatched} samples, e.g. {', '.join(r.unmatched_examples)}"
                            for r in unmatched)
        total = sum(r.unmatched for r in unmatched)
        if cfg.unmatched == "error":
            raise InputError(", ".join(r.file for r in unmatched), "time",
                             f"{total} samples inside the run have no footprint window: {listing}",
                             'compute their footprints, or set observations.unmatched = "drop" to leave them out '
                             "(counted and logged)")
        log.warning("%d samples without a footprint left out (observations.unmatched = \"drop\"): %s", total, listing)
    store_sites = set(np.char.upper(np.asarray(store_obs["site"].values).astype(str)).tolist())
    without = sorted(store_sites - {s.site for s in series_list})
    if without:
        log.info("footprint store sites without observation files (not used): %s", ", ".join(without))
    order = np.argsort(rows, kind="stable")
    rows = rows[order]
    data = {k: np.concatenate([p[k] for p in parts])[order] for k in ("value", "measurement_sigma", "n_samples")}
    ds = xr.Dataset({
        "obs_id": ("obs", np.asarray(store_obs["obs_id"].values).astype(str)[rows]),
        "time": ("obs", np.asarray(store_obs["time"].values).astype("datetime64[s]")[rows]),
        "site": ("obs", np.asarray(store_obs["site"].values).astype(str)[rows]),
        "row": ("obs", rows.astype(np.int64)),
        "value": ("obs", data["value"], {"units": "mol mol-1"}),
        "measurement_sigma": ("obs", data["measurement_sigma"], {"units": "mol mol-1"}),
        "n_samples": ("obs", data["n_samples"], {"long_name": "samples averaged into the observation"}),
    })
    ds.attrs["selection"] = json.dumps([asdict(r) for r in reports])
    return ds
