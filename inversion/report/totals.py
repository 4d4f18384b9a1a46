"""Report totals: every reported number is an exact linear combination of the run's base totals.

**Base totals** (written by ``tanhui run`` to ``totals.nc``, :func:`base_totals_dataset`): for
each sector s (optimised and fixed), report region r and elementary interval i (the state
periods split at every calendar-month and -year boundary, :func:`elementary_intervals`),

    T[s, r, i] = c[s, r, i] + a[s, r, i] · x        (mol s⁻¹, the mean flux over the interval)

from :func:`inversion.aggregates.region_totals`, with the prior and posterior mean, the truth of
a twin, and the covariances of the rows of the optimised sectors (fixed sectors have none):

* prior  Σ_b = M B Mᵀ;
* posterior, analytical solver: Σ_a = M A Mᵀ from the exact A;
* posterior, variational solver: Σ_a = (Lᵀ Mᵀ)ᵀ (I + G)⁻¹ (Lᵀ Mᵀ), exact, from extra block-CG
  solves in the run; and the low-rank Σ_lr = M L (I − V diag(λ/(1+λ)) Vᵀ) Lᵀ Mᵀ (kept beside it).

**Reported totals** T' = C T for a combination matrix C (:meth:`BaseTotals.weights`):
sectors summed (the reported quantity), regions summed (``ALL``), intervals averaged with
duration weights over a report period (:func:`inversion.aggregates.mean_weights`), years
averaged or their least-squares trend taken (:func:`inversion.aggregates.trend_weights`).
Mean C μ, covariance C Σ Cᵀ — exact whenever Σ is, nothing is sampled.

**Ranges** are Gaussian (the posterior is Gaussian for a linear model): the p-quantile is
μ + z_p σ with z_p = Φ⁻¹(p); 16–84 % is μ ± 0.994 σ, 2.5–97.5 % is μ ± 1.960 σ.

**Units** (:func:`report_units`): mol s⁻¹ × M (kg mol⁻¹) → kg s⁻¹ → Tg CO₂ yr⁻¹ (= Mt CO₂ yr⁻¹)
and Tg C yr⁻¹ for CO₂ (M_C = 12.011 g mol⁻¹: one mole of CO₂ holds one mole of C), Gg CH₄ yr⁻¹
for CH₄; kg yr⁻¹ of the species for the PARIS files.  A year is the Julian year (365.25 d), as
in :mod:`transport.units`.  Sign: positive = emission (flux to the atmosphere), negative = sink.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.units import MOLAR_MASS_KG_PER_MOL, conversion_factor, parse_units

from ..aggregates import DOMAIN, WHOLE_RUN, Aggregates, calendar_periods, combine, concatenate, mean_weights, \
    region_totals, report_unit, split_periods, trend_weights
from ..regions import Regions
from ..state import StateSpace

TOTALS_FILE = "totals.nc"
SIGN_CONVENTION = "positive = emission to the atmosphere, negative = sink (removal from the atmosphere)"
RANGES = {"p025": 0.025, "p16": 0.16, "p84": 0.84, "p975": 0.975}


# --- units ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Units:
    """Reporting units of a species and the factors from mol s⁻¹."""

    label: str              # "Tg CO2 yr-1" / "Gg CH4 yr-1"
    factor: float           # value[label] = factor · value[mol s⁻¹]
    carbon_label: str | None  # "Tg C yr-1" for CO₂, else None
    carbon_factor: float | None
    kg_per_year: float      # value[kg a⁻¹ of the species] = kg_per_year · value[mol s⁻¹]


def report_units(species: str) -> Units:
    """Units of the report for ``species`` ("co2" or "ch4"), all through :mod:`transport.units`."""
    label, factor = report_unit(species)
    kg_per_year = MOLAR_MASS_KG_PER_MOL[species] * conversion_factor("kg s-1", "kg a-1")
    if species == "co2":
        return Units(label, factor, "Tg C yr-1", MOLAR_MASS_KG_PER_MOL["c"] * conversion_factor("kg s-1", "Tg a-1"),
                     kg_per_year)
    return Units(label, factor, None, None, kg_per_year)


_RATE_KINDS = {"[carbon_mass]": ("c", "gC"), "[co2_mass]": ("co2", "gCO2"), "[ch4_mass]": ("ch4", "gCH4")}


def mole_rate_factor(units: str, species: str, *, path=None, variable: str | None = None) -> float:
    """f with value[mol s⁻¹ of ``species``] = f · value[``units``] for an emission rate such as
    "Mt CO2 yr-1", "Tg C yr-1", "Gg CH4 yr-1", "kt CH4 yr-1" or "mol s-1".  A mass of carbon
    counts one mole of the species per mole of C; the other species' mass, a plain mass
    ("kg yr-1": of what?), CO₂-equivalents and anything not per time are refused."""
    quantity = parse_units(units, path=path, variable=variable)
    dims = dict(quantity.dimensionality)
    if dims == {"[substance]": 1, "[time]": -1}:
        return conversion_factor(units, "mol s-1", path=path, variable=variable)
    kinds = [k for k in _RATE_KINDS if dims == {k: 1, "[time]": -1}]
    if not kinds:
        plain = dims == {"[mass]": 1, "[time]": -1}
        raise InputError(path, variable, f"{units!r} is not an emission rate of a named substance"
                         + (" (a plain mass: of what?)" if plain else ""),
                         f'write e.g. "Mt CO2 yr-1", "Tg C yr-1", "Gg CH4 yr-1" or "kt CH4 yr-1" '
                         f"({species.upper()} run; CO2-equivalents are not converted)")
    substance, gram = _RATE_KINDS[kinds[0]]
    if substance not in ("c", species):
        raise InputError(path, variable, f"{units!r} is a mass of {substance.upper()}, but the run's species is "
                         f"{species.upper()}", "compare an inventory of the run's species")
    grams_per_s = conversion_factor(units, f"{gram} s-1", path=path, variable=variable)
    return grams_per_s / (MOLAR_MASS_KG_PER_MOL[substance] * 1e3)


def gaussian_ranges(mean: np.ndarray, sd: np.ndarray, probabilities=RANGES.values()) -> list[np.ndarray]:
    """μ + Φ⁻¹(p) σ for each probability p."""
    return [mean + stats.norm.ppf(p) * sd for p in probabilities]


# --- report periods ---------------------------------------------------------------------------

@dataclass(frozen=True)
class ReportPeriods:
    """The periods of the report tables, in the order of ``report.periods`` kinds.

    ``start``/``end``: the part covered by the run (what the totals average over);
    ``nominal_start``/``nominal_end``: the calendar month or year (or the period itself), what
    an inventory row names; ``coverage`` = covered / nominal duration."""

    kind: np.ndarray
    label: np.ndarray
    start: np.ndarray
    end: np.ndarray
    nominal_start: np.ndarray
    nominal_end: np.ndarray

    @property
    def size(self) -> int:
        return self.kind.size

    @property
    def coverage(self) -> np.ndarray:
        return (self.end - self.start).astype(np.float64) / (self.nominal_end - self.nominal_start).astype(np.float64)


def interval_label(start: np.datetime64, end: np.datetime64) -> str:
    """ISO 8601 interval "2024-07-01/2024-07-08" (dates when both are midnights)."""
    text = [np.datetime_as_string(np.datetime64(t, "s"), unit="s") for t in (start, end)]
    if all(t.endswith("T00:00:00") for t in text):
        text = [t[:10] for t in text]
    return "/".join(text)


def report_periods(kinds, state_periods: TimeAxis) -> ReportPeriods:
    """Report periods of each kind: ``period`` (the state periods), ``monthly`` and ``annual``
    (calendar months and years overlapping the run, UTC, cut to the run), ``run`` (the run)."""
    run_start, run_end = state_periods.start[0], state_periods.end[-1]
    parts = []
    for kind in kinds:
        if kind == "period":
            s, e = state_periods.start, state_periods.end
            ns, ne = s, e
            labels = [interval_label(a, b) for a, b in zip(s, e)]
        elif kind == "run":
            s = ns = np.array([run_start])
            e = ne = np.array([run_end])
            labels = [interval_label(run_start, run_end)]
        else:
            ns, ne = calendar_periods(run_start, run_end, kind)
            s, e = np.maximum(ns, run_start), np.minimum(ne, run_end)
            width = 7 if kind == "monthly" else 4
            labels = [np.datetime_as_string(t, unit="D")[:width] for t in ns]
        parts.append((np.full(len(labels), kind), np.array(labels), s, e, ns, ne))
    k, lab, s, e, ns, ne = (np.concatenate(x) for x in zip(*parts))
    as_s = lambda a: np.asarray(a, dtype="datetime64[s]")  # noqa: E731
    return ReportPeriods(kind=k, label=lab, start=as_s(s), end=as_s(e), nominal_start=as_s(ns), nominal_end=as_s(ne))


def elementary_intervals(kinds, state_periods: TimeAxis) -> TimeAxis:
    """The state periods split at every boundary of the report periods and of calendar years
    (the multi-year statistics always need annual totals)."""
    run_start, run_end = state_periods.start[0], state_periods.end[-1]
    cuts = [calendar_periods(run_start, run_end, "annual")[0]]
    if "monthly" in kinds:
        cuts.append(calendar_periods(run_start, run_end, "monthly")[0])
    return split_periods(state_periods, np.concatenate(cuts))


def check_report_periods(kinds, state: StateSpace, source) -> TimeAxis:
    """The elementary intervals of a run, or InputError when a report-period boundary falls
    inside a flux time step (before any heavy work)."""
    intervals = elementary_intervals(kinds, state.periods)
    boundaries = set(state.flux_time.start.tolist()) | set(state.flux_time.end.tolist())
    off = [b for b in intervals.start.tolist() if b not in boundaries]
    if off:
        raise InputError(source, "report.periods", f"the report period boundary {off[0]} (a calendar month or year) "
                         "falls inside a flux time step", "use flux time steps that start at 00:00 UTC, or report "
                         'periods = ["period"] or ["run"]')
    return intervals


# --- multi-year statistics ---------------------------------------------------------------------

ANNUAL_MIN_COVERAGE = 0.9  # a year enters the multi-year statistics when the run covers ≥ 90 % of it


@dataclass(frozen=True)
class Statistics:
    """The summary statistics of a run as interval combinations (rows of ``targets``, n_stat ×
    n_interval): ``mean`` (whole run, duration-weighted), ``annual_mean`` (equal weight per
    year covered to ≥ 90 %; with ≥ 1 such year) and ``trend`` (least-squares slope of those
    annual totals against the year, per year; with ≥ 2 such years).  ``year_weights[label]``
    combines the annual values of ``years`` into the statistic (for the inventory's values)."""

    labels: tuple[str, ...]
    targets: np.ndarray
    per_year: tuple[bool, ...]  # the statistic is a rate of change (unit per year)
    descriptions: tuple[str, ...]
    start: np.ndarray
    end: np.ndarray
    years: ReportPeriods  # the complete years used
    year_weights: dict


def summary_statistics(base: "BaseTotals") -> Statistics:
    run = (base.intervals.start[0], base.intervals.end[-1])
    all_years = report_periods(["annual"], base.state_periods)
    keep = np.flatnonzero(all_years.coverage >= ANNUAL_MIN_COVERAGE)
    years = ReportPeriods(*(getattr(all_years, f)[keep] for f in ("kind", "label", "start", "end", "nominal_start",
                                                                   "nominal_end")))
    rows, labels, per_year = [base.mean_targets(np.array([run[0]]), np.array([run[1]]))], ["mean"], [False]
    text, start, end, weights = ["mean over the whole run (duration-weighted)"], [run[0]], [run[1]], {}
    used = " ".join(years.label)
    if years.size:
        annual = base.mean_targets(years.start, years.end)
        weights["annual_mean"] = np.full(years.size, 1.0 / years.size)
        if years.size >= 2:
            weights["trend"] = trend_weights(years.nominal_start.astype("datetime64[Y]").astype(np.int64) + 1970)
        for label, w in weights.items():
            rows.append(w[None, :] @ annual)
            labels.append(label)
            per_year.append(label == "trend")
            text.append(f"mean of the annual totals of {used} (years covered to >= {ANNUAL_MIN_COVERAGE:.0%})"
                        if label == "annual_mean" else f"least-squares linear trend of the annual totals of {used}")
            start.append(years.nominal_start[0])
            end.append(years.nominal_end[-1])
    return Statistics(labels=tuple(labels), targets=np.vstack(rows), per_year=tuple(per_year),
                      descriptions=tuple(text), start=np.array(start, dtype="datetime64[s]"),
                      end=np.array(end, dtype="datetime64[s]"), years=years, year_weights=weights)


# --- base totals ------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class BaseTotals:
    """Totals per (sector, region, interval), rows flattened in that order (C order); the
    covariances are over the rows of the optimised sectors (:attr:`opt_rows`), mol² s⁻²."""

    species: str
    sectors: tuple[str, ...]
    optimised: np.ndarray  # (n_sector,) bool
    regions: tuple[str, ...]
    codes: tuple[str, ...]
    intervals: TimeAxis
    seconds: np.ndarray  # (n_interval,) T_i, s
    state_periods: TimeAxis
    matrix: np.ndarray  # (n_row, n_state), mol s⁻¹ per unit of x
    offset: np.ndarray  # (n_row,), mol s⁻¹
    prior: np.ndarray
    posterior: np.ndarray
    truth: np.ndarray | None
    prior_cov: np.ndarray
    posterior_cov: np.ndarray
    posterior_cov_lowrank: np.ndarray | None
    fraction: np.ndarray  # (n_region, nlat, nlon) report region masks
    grid: Grid
    solver: str
    area: np.ndarray  # (n_region,) Σ_c m_R A_c, m²
    resolution: np.ndarray  # (n_region,) ρ_R, see :func:`resolution`
    mask_attributes: dict

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.sectors), len(self.regions), self.intervals.size

    @property
    def opt_rows(self) -> np.ndarray:
        rows = np.arange(int(np.prod(self.shape))).reshape(self.shape)
        return rows[self.optimised].ravel()

    def weights(self, *, sectors, groups, targets: np.ndarray) -> np.ndarray:
        """C (n_group · n_target × n_row) with C[(g, P), (s, r, i)] = [s ∈ sectors] [r ∈ groups[g]]
        targets[P, i]: the sum over ``sectors`` and over the regions of each group of the
        interval combination ``targets`` (n_target × n_interval)."""
        n_s, n_r, n_i = self.shape
        if targets.shape[1] != n_i:
            raise ValueError(f"targets must have {n_i} columns, got {targets.shape}")
        sel = np.array([s in set(sectors) for s in self.sectors], dtype=np.float64)
        member = np.zeros((len(groups), n_r))
        for g, regions in enumerate(groups):
            member[g, list(regions)] = 1.0
        return np.einsum("s,gr,pi->gpsri", sel, member, targets).reshape(len(groups) * targets.shape[0], -1)

    def combine(self, C: np.ndarray) -> dict[str, np.ndarray | None]:
        """Means and covariances of T' = C T (mol s⁻¹, mol² s⁻²)."""
        Co = C[:, self.opt_rows]

        def cov(S):
            if S is None:
                return None
            out = Co @ S @ Co.T
            return 0.5 * (out + out.T)

        return {"prior": C @ self.prior, "posterior": C @ self.posterior,
                "truth": None if self.truth is None else C @ self.truth,
                "prior_cov": cov(self.prior_cov), "posterior_cov": cov(self.posterior_cov),
                "posterior_cov_lowrank": cov(self.posterior_cov_lowrank)}

    def mean_targets(self, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Duration-weighted means over [start, end) (see :func:`inversion.aggregates.mean_weights`)."""
        return mean_weights(self.intervals, self.seconds, start, end)


def base_aggregates(state: StateSpace, report: Regions | None,
                    intervals: TimeAxis) -> tuple[Aggregates, tuple[str, ...]]:
    """The base rows (sector, region, interval) as one :class:`Aggregates` (no ``ALL``, no
    whole run), sectors in the order optimised then fixed."""
    sectors = tuple(state.sectors) + tuple(state.fixed_sectors)
    parts = []
    for s in sectors:
        agg = region_totals(state, report, sectors=(s,), intervals=intervals)
        parts.append(agg.take((agg.period != WHOLE_RUN) & (np.array(agg.region) != DOMAIN)))
    return concatenate(parts), sectors


def optimised_part(agg: Aggregates, state: StateSpace) -> Aggregates:
    """The rows of the optimised sectors (the first ``n_sector`` blocks of :func:`base_aggregates`)."""
    block = agg.size // (state.n_sector + len(state.fixed_sectors))  # rows per sector
    return agg.take(np.arange(state.n_sector * block))


def resolution(state: StateSpace, report: Regions | None) -> np.ndarray:
    """ρ_R = Σ_r O_Rr² / (|R| |r|) per report region R: the area-weighted mean share of the state
    regions overlapping R that lies in R (O_Rr = Σ_c o_Rr A_c, the overlap of
    :mod:`inversion.aggregates`; |R| = Σ_c m_R A_c).  1 when R is a union of state regions (or
    they are the state regions); 0.2 when R is a fifth of one state region, whose total then
    follows that region's scaling factors: the state cannot resolve R."""
    area = state.regions.grid.cell_area().ravel()
    if report is None or report.same_as(state.regions):
        return np.ones(state.n_region)
    overlap = report.matrix.multiply(area[None, :]).tocsr() @ state.regions.matrix.T  # O_Rr, m², sparse
    size_r = state.regions.area_m2()
    size_R = report.area_m2()
    share = overlap.multiply(overlap).multiply(1.0 / np.where(size_r > 0, size_r, np.inf)[None, :])
    return np.asarray(share.sum(axis=1)).ravel() / size_R


def make_base_totals(*, species: str, state: StateSpace, report: Regions | None, codes, intervals: TimeAxis,
                     agg: Aggregates, sectors, totals: dict, x_b: np.ndarray, x_a: np.ndarray,
                     truth: np.ndarray | None, solver: str, mask_attributes: dict | None = None) -> BaseTotals:
    """Assemble :class:`BaseTotals` from the run (``totals`` = ``posterior.aggregate`` of the
    optimised rows)."""
    regions = report if report is not None else state.regions
    dt = state.flux_time.duration_s
    inside = state.period_of_step >= 0
    where = intervals.locate(state.flux_time.start[inside])
    seconds = np.bincount(where, weights=dt[inside], minlength=intervals.size)
    return BaseTotals(
        species=species, sectors=sectors, optimised=np.array([s in state.sectors for s in sectors]),
        regions=tuple(regions.names), codes=tuple(codes), intervals=intervals, seconds=seconds,
        state_periods=state.periods, matrix=agg.matrix.toarray(), offset=agg.offset,
        prior=agg.offset + agg.matrix @ x_b,
        posterior=agg.offset + agg.matrix @ x_a, truth=None if truth is None else agg.offset + agg.matrix @ truth,
        prior_cov=totals["prior_cov"], posterior_cov=totals["posterior_cov"],
        posterior_cov_lowrank=totals.get("posterior_cov_lowrank"), fraction=regions.fraction, grid=regions.grid,
        solver=solver, area=regions.area_m2(),
        resolution=resolution(state, report), mask_attributes=dict(mask_attributes or {}))


def net_aggregates(base: BaseTotals, agg: Aggregates) -> tuple[Aggregates, dict]:
    """Net-flux totals of every region and ``ALL`` for each state period and the whole run (the
    rows of the run's ``totals.csv``): the :class:`Aggregates` (for the truth) and their means
    and covariances from the base totals."""
    periods = base.state_periods
    starts = np.append(periods.start, periods.start[0])
    ends = np.append(periods.end, periods.end[-1])
    targets = base.mean_targets(starts, ends)
    groups = [[r] for r in range(len(base.regions))] + [list(range(len(base.regions)))]
    C = base.weights(sectors=base.sectors, groups=groups, targets=targets)
    names = list(base.regions) + [DOMAIN]
    n_p = periods.size + 1
    net = combine(agg, C, region=np.repeat(names, n_p), period=np.tile(np.append(np.arange(periods.size), WHOLE_RUN),
                                                                          len(names)),
                  start=np.tile(starts, len(names)), end=np.tile(ends, len(names)))
    return net, base.combine(C)


def region_codes(path: Path, names) -> tuple[tuple[str, ...], dict]:
    """``region_code`` of a mask file written by ``tanhui regions build`` (else the names) and
    the file's attributes (its provenance: sources, method, DCW version); the names for
    ``state.regions = "grid"`` (no file).  Reads only the codes, not the fractions."""
    from ..io import netcdf_reader
    from ..regions import GRID_CELLS

    if str(path) == GRID_CELLS:
        return tuple(names), {"file": "none: every grid cell is a region (state.regions = \"grid\")"}
    with netcdf_reader(path, "region mask") as ds:
        attrs = {str(k): str(v) for k, v in ds.attrs.items()}
        attrs["file"] = str(path)
        if "region_code" in ds and ds["region_code"].sizes.get("region") == len(names):
            return tuple(str(c) for c in ds["region_code"].values), attrs
    return tuple(names), attrs


# --- totals.nc --------------------------------------------------------------------------------

def base_totals_dataset(base: BaseTotals) -> xr.Dataset:
    """``totals.nc``: the base totals, their covariances, the aggregate matrix and offset (any
    other linear total of the state can be recomputed from ``posterior_state.nc``), and the
    report region masks."""
    dims = ("sector", "region", "interval")
    shape = base.shape
    mol = {"units": "mol s-1"}
    ds = xr.Dataset(
        {
            "sector_optimised": ("sector", base.optimised.astype(np.int8), {"long_name": "1: optimised, 0: fixed"}),
            "region_code": ("region", np.array(base.codes)),
            "region_area": ("region", base.area, {"units": "m2", "long_name": "sum of fraction x cell area"}),
            "region_resolution": ("region", base.resolution, {"units": "1", "long_name": "area-weighted mean share "
                                  "of the overlapping state regions inside the region (1: resolved by the state)"}),
            "interval_seconds": ("interval", base.seconds, {"units": "s"}),
            "prior": (dims, base.prior.reshape(shape), {**mol, "long_name": "prior mean flux over the interval"}),
            "posterior": (dims, base.posterior.reshape(shape), {**mol, "long_name": "posterior mean flux"}),
            "offset": (dims, base.offset.reshape(shape), {**mol, "long_name": "c in T = c + a.x"}),
            "matrix": (dims + ("element",), base.matrix.reshape(shape + (-1,)),
                       {**mol, "long_name": "a in T = c + a.x (per unit of each state element)"}),
            "prior_covariance": (("row", "row_"), base.prior_cov, {"units": "mol2 s-2"}),
            "posterior_covariance": (("row", "row_"), base.posterior_cov,
                                     {"units": "mol2 s-2", "method": "exact (analytical solver)" if base.solver == "analytical"
                                      else "exact (block-CG solves with I + G)"}),
            "region_fraction": (("region", "lat", "lon"), base.fraction, {"units": "1"}),
            "lat_bnds": (("lat", "bnds"), base.grid.lat_bounds, {"units": "degrees_north"}),
            "lon_bnds": (("lon", "bnds"), base.grid.lon_bounds, {"units": "degrees_east"}),
        },
        coords={"sector": list(base.sectors), "region": list(base.regions),
                "interval": ("interval", base.intervals.start), "interval_end": ("interval", base.intervals.end),
                "period": ("period", base.state_periods.start), "period_end": ("period", base.state_periods.end),
                "lat": ("lat", base.grid.lat, {"units": "degrees_north"}),
                "lon": ("lon", base.grid.lon, {"units": "degrees_east"})},
    )
    if base.truth is not None:
        ds["truth"] = (dims, base.truth.reshape(shape), {**mol, "long_name": "true mean flux (twin experiment)"})
    if base.posterior_cov_lowrank is not None:
        ds["posterior_covariance_lowrank"] = (("row", "row_"), base.posterior_cov_lowrank,
                                              {"units": "mol2 s-2", "method": "low-rank (Ritz pairs of G)"})
    for name in ("interval", "interval_end", "period", "period_end"):
        ds[name].encoding["units"] = "seconds since 1970-01-01 00:00:00"
    ds.attrs.update({"title": "tanhui base totals: mean flux per sector, report region and interval",
                     "species": base.species, "solver": base.solver, "sign_convention": SIGN_CONVENTION,
                     "row_order": "covariance rows: (optimised sector, region, interval) flattened in C order",
                     "intervals": "the state periods split at calendar-month and -year boundaries",
                     **{f"mask_{k}": v for k, v in base.mask_attributes.items()}})
    return ds


def read_base_totals(path: Path) -> BaseTotals:
    """Inverse of :func:`base_totals_dataset` (InputError naming the file when it is not one)."""
    from ..io import open_netcdf, require_variables

    ds = open_netcdf(path, "base totals")
    require_variables(ds, path, ["prior", "posterior", "offset", "matrix", "prior_covariance", "posterior_covariance",
                                 "region_fraction", "sector_optimised", "interval_seconds"], "base totals")

    def as_s(v: str) -> np.ndarray:
        return np.asarray(ds[v].values).astype("datetime64[s]")

    def flat(v: str) -> np.ndarray:
        return np.asarray(ds[v].transpose("sector", "region", "interval").values, dtype=np.float64).ravel()

    grid = Grid(ds["lat"].values, ds["lon"].values, ds["lat_bnds"].values, ds["lon_bnds"].values)
    lowrank = ds["posterior_covariance_lowrank"].values if "posterior_covariance_lowrank" in ds else None
    n_elem = ds.sizes["element"]
    return BaseTotals(
        species=str(ds.attrs["species"]), sectors=tuple(str(s) for s in ds["sector"].values),
        optimised=ds["sector_optimised"].values.astype(bool), regions=tuple(str(r) for r in ds["region"].values),
        codes=tuple(str(c) for c in ds["region_code"].values),
        intervals=TimeAxis(start=as_s("interval"), end=as_s("interval_end")),
        seconds=ds["interval_seconds"].values.astype(np.float64),
        state_periods=TimeAxis(start=as_s("period"), end=as_s("period_end")),
        matrix=ds["matrix"].transpose("sector", "region", "interval", "element").values.reshape(-1, n_elem),
        offset=flat("offset"), prior=flat("prior"), posterior=flat("posterior"),
        truth=flat("truth") if "truth" in ds else None, prior_cov=ds["prior_covariance"].values,
        posterior_cov=ds["posterior_covariance"].values, posterior_cov_lowrank=lowrank,
        fraction=ds["region_fraction"].transpose("region", "lat", "lon").values, grid=grid,
        solver=str(ds.attrs["solver"]), area=ds["region_area"].values, resolution=ds["region_resolution"].values,
        mask_attributes={k[5:]: str(v) for k, v in ds.attrs.items() if k.startswith("mask_")})
