"""Linear aggregates of the state: region totals per period and over the whole run.

A total is affine in the state: T = c + aᵀx (mol s⁻¹, the mean net flux of all sectors over
the region and period), so its prior and posterior mean and covariance follow exactly from
those of x: mean c + A x, covariance A P Aᵀ.  With Φ_s[p, c] = Σ_{t∈p} φ_s(t, c) Δt / T_p the
period-mean prior flux of sector s in cell c (mol m⁻² s⁻¹), F its sum over the fixed sectors,
A_c the cell area and o_Rr(c) the fraction of cell c lying both in report region R and in
state region r, the total of report region R with mask m_R is

    a[s, p', r] = δ_pp' Σ_c o_Rr(c) A_c Φ_s[p, c]
    c[R, p]     = Σ_c m_R A_c F[p, c] + Σ_s Σ_c (m_R − Σ_r o_Rr)(c) A_c Φ_s[p, c]

(the last term: optimised flux of R's share of a cell that no state region covers, which
keeps its prior).  A mask gives no sub-cell geometry, so o has two cases:

* report regions = the state regions (the default, or a report mask with the same names and
  fractions): o_Rr = δ_Rr m_r, the flux of region r's share of a cell is scaled by x_r only —
  exact also in cells shared by several regions;
* other report regions (``[report] regions``, e.g. provinces over grid-cell clusters):
  o_Rr = m_R m_r, i.e. T_R = Σ_c m_R A_c f̄(x)[p, c] with f̄ the period-mean gridded flux.
  Exact when each cell's flux is uniform within the cell — always the case where no cell is
  shared by two state regions (whole-cell clusters).

The whole-run total is the duration-weighted mean of the period totals; the row ``ALL`` sums
all report regions (the region-covered part of the domain).

Rows may cover other intervals than the state periods (``intervals``, tiling the run on
flux-step boundaries): Φ_s then averages over the steps of interval i that lie in period p,
Φ_s[i, p, c] = Σ_{t∈i∩p} φ_s(t, c) Δt / T_i, and a[s, p, r] of row i gathers every period the
interval overlaps — exact also when a state period straddles, e.g., a year boundary.  Any
total over a union of such intervals is then exactly a linear combination of their rows
(:func:`combine`): the duration-weighted mean over report period P,

    T_P = Σ_i W[P, i] T_i,   W[P, i] = |i ∩ P| / Σ_j |j ∩ P|,

(annual, monthly, whole-run totals: :func:`mean_weights`), a multi-year mean (equal weights
over years) or the least-squares linear trend of a series of totals T_k at times t_k (years),

    slope = Σ_k w_k T_k,   w_k = (t_k − t̄) / Σ_j (t_j − t̄)²     (:func:`trend_weights`),

each with mean W μ and covariance W Σ Wᵀ from the rows' mean μ and covariance Σ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from transport.grid import TimeAxis
from transport.units import MOLAR_MASS_KG_PER_MOL, conversion_factor

from .regions import Regions
from .state import StateSpace

DOMAIN = "ALL"
WHOLE_RUN = -1


@dataclass(frozen=True, eq=False)
class Aggregates:
    """Rows of totals: ``region[k]``, ``period[k]`` (index, or WHOLE_RUN), ``start``/``end``."""

    region: tuple[str, ...]
    period: np.ndarray
    start: np.ndarray
    end: np.ndarray
    matrix: sp.csr_matrix  # (n_agg, n_state), mol s⁻¹ per unit of x (a dense array given is stored as CSR)
    offset: np.ndarray  # (n_agg,), mol s⁻¹

    def __post_init__(self) -> None:
        # A total touches the elements of its regions and periods only: sparse, whatever the state size.
        object.__setattr__(self, "matrix", sp.csr_matrix(self.matrix, dtype=np.float64))

    @property
    def size(self) -> int:
        return len(self.region)

    def whole_run_rows(self) -> np.ndarray:
        return np.flatnonzero(self.period == WHOLE_RUN)

    def take(self, rows) -> "Aggregates":
        """The rows ``rows`` (indices or a boolean mask), in that order."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        return Aggregates(region=tuple(self.region[k] for k in rows), period=self.period[rows], start=self.start[rows],
                          end=self.end[rows], matrix=self.matrix[rows], offset=self.offset[rows])


def concatenate(parts: list[Aggregates]) -> Aggregates:
    """The rows of every part, one after the other."""
    return Aggregates(region=tuple(r for a in parts for r in a.region),
                      period=np.concatenate([a.period for a in parts]), start=np.concatenate([a.start for a in parts]),
                      end=np.concatenate([a.end for a in parts]), matrix=sp.vstack([a.matrix for a in parts], format="csr"),
                      offset=np.concatenate([a.offset for a in parts]))


def combine(agg: Aggregates, weights: np.ndarray, *, region, period, start, end) -> Aggregates:
    """Totals that are linear combinations of ``agg``'s rows: T' = W T (matrix W M, offset W c),
    labelled by ``region``, ``period``, ``start`` and ``end`` (one per row of W)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != agg.size:
        raise ValueError(f"weights must have shape (n, {agg.size}), got {weights.shape}")
    return Aggregates(region=tuple(region), period=np.asarray(period), start=np.asarray(start),
                      end=np.asarray(end), matrix=sp.csr_matrix(weights) @ agg.matrix, offset=weights @ agg.offset)


def region_totals(state: StateSpace, report: Regions | None = None, *, sectors=None,
                  intervals: TimeAxis | None = None) -> Aggregates:
    """Totals of every report region (default: the state regions) and of ``ALL``, for each
    interval and for the whole run.  ``report`` must be on the state's grid.  ``sectors``: the
    sectors whose flux is summed (default every optimised and fixed sector, the net flux);
    ``intervals``: the periods of the rows (default the state periods), contiguous, tiling the
    run, on flux-step boundaries (:func:`split_periods` makes such intervals)."""
    grid = state.regions.grid
    if report is not None and not report.grid.same_as(grid):
        raise ValueError("report regions must be on the state's grid")
    if report is not None and report.same_as(state.regions):
        report = None  # the state regions themselves: exact overlap
    every = tuple(state.sectors) + tuple(state.fixed_sectors)
    included = set(every if sectors is None else sectors)
    if included - set(every):
        raise ValueError(f"unknown sectors {sorted(included - set(every))}; the state has {list(every)}")
    intervals = state.periods if intervals is None else intervals
    _check_intervals(state, intervals)
    area = grid.cell_area().ravel()
    m_state = state.regions.matrix
    m_report = m_state if report is None else report.matrix
    names = list(state.regions.names if report is None else report.names)
    n_rep, n_int, nt = len(names), intervals.size, state.flux_time.size
    dt = state.flux_time.duration_s
    pos = state.period_of_step
    inside = np.flatnonzero(pos >= 0)
    where = intervals.locate(state.flux_time.start)[inside]
    seconds = np.bincount(where, weights=dt[inside], minlength=n_int)  # T_i
    # Averaging over the flux steps of each interval, (n_int × nt), and over the steps of each
    # (interval, period) pair that overlap, (n_pair × nt); weights Δt / T_i.
    average = sp.csr_matrix((dt[inside] / seconds[where], (where, inside)), shape=(n_int, nt))
    pairs, pair_of_step = np.unique(where * state.n_period + pos[inside], return_inverse=True)
    average_pair = sp.csr_matrix((dt[inside] / seconds[where], (pair_of_step, inside)), shape=(pairs.size, nt))
    pair_interval, pair_period = np.divmod(pairs, state.n_period)

    def pattern(name: str) -> np.ndarray:
        return state.prior.sectors[name].reshape(nt, -1)

    weight = m_report.multiply(area[None, :]).tocsr()  # m_R A_c, m²
    if report is None:
        uncovered = None
    else:
        coverage = np.asarray(m_state.sum(axis=0)).ravel()
        uncovered = weight.multiply((1.0 - coverage)[None, :]).tocsr()  # (m_R − Σ_r m_R m_r) A_c
    # a as triplets: row (R, i) = R·n_int + i (region-major), column (s, p, r) of the state.
    rows, cols, vals = [], [], []
    fixed = np.zeros((n_int, n_rep))
    regions = np.arange(state.n_region)
    for s, name in enumerate(state.sectors):
        if name not in included:
            continue
        phi = average_pair @ pattern(name)  # (n_pair, ncell)
        if report is None:  # o_Rr = δ_Rr m_r: a[(r, i), (s, p, r)] = Σ_c m_r A_c Φ_s[(i, p), c]
            value = weight @ phi.T  # (n_region, n_pair)
            rows.append((regions[:, None] * n_int + pair_interval[None, :]).ravel())
            cols.append(state.flux_index(s, pair_period[None, :], regions[:, None]).ravel())
            vals.append(value.ravel())
        else:  # o_Rr = m_R m_r: a[(R, i), (s, p, r)] = Σ_c m_R A_c Φ_s[(i, p), c] m_r
            for k, (i, p) in enumerate(zip(pair_interval, pair_period)):
                overlap = (weight.multiply(phi[k][None, :]) @ m_state.T).tocoo()  # (n_rep, n_region)
                rows.append(overlap.row * n_int + i)
                cols.append(state.flux_index(s, p, overlap.col))
                vals.append(overlap.data)
            fixed += (uncovered @ (average @ pattern(name)).T).T
    for name in state.fixed_sectors:
        if name in included:
            fixed += (weight @ (average @ pattern(name)).T).T
    empty = [np.zeros(0, dtype=np.int64)]
    a = sp.csr_matrix((np.concatenate(vals or [np.zeros(0)]), (np.concatenate(rows or empty),
                       np.concatenate(cols or empty))), shape=(n_rep * n_int, state.size))
    a.eliminate_zeros()

    # Append the domain row (sum over regions) and the whole-run row (duration-weighted mean):
    # rows (R', i') = kron([I; 1ᵀ], [I; wᵀ]) rows (R, i), w_i = T_i / Σ T_i, region-major.
    frac = seconds / seconds.sum()
    add_domain = sp.vstack([sp.identity(n_rep), np.ones((1, n_rep))])
    add_whole_run = sp.vstack([sp.identity(n_int), frac[None, :]])
    extend = sp.kron(add_domain, add_whole_run, format="csr")
    matrix = (extend @ a).tocsr()
    offset = extend @ fixed.T.ravel()

    names = names + [DOMAIN]
    n_p = n_int + 1
    period = np.tile(np.append(np.arange(n_int), WHOLE_RUN), len(names))
    start = np.append(intervals.start, intervals.start[0])
    end = np.append(intervals.end, intervals.end[-1])
    return Aggregates(region=tuple(np.repeat(names, n_p)), period=period, start=np.tile(start, len(names)),
                      end=np.tile(end, len(names)), matrix=matrix, offset=offset)


def _check_intervals(state: StateSpace, intervals: TimeAxis) -> None:
    """``intervals`` must be contiguous, tile the run (the state periods) and start and end on
    flux-step boundaries, so each flux step of the run lies in exactly one interval."""
    periods = state.periods
    if intervals.start[0] != periods.start[0] or intervals.end[-1] != periods.end[-1] \
            or np.any(intervals.end[:-1] != intervals.start[1:]):
        raise ValueError(f"intervals must tile the run {periods.start[0]} … {periods.end[-1]} without gaps")
    boundaries = set(state.flux_time.start.tolist()) | set(state.flux_time.end.tolist())
    off = [b for b in intervals.start.tolist() + [intervals.end[-1].item()] if b not in boundaries]
    if off:
        raise ValueError(f"interval boundary {off[0]} is not a flux time-step boundary")


def split_periods(periods: TimeAxis, boundaries) -> TimeAxis:
    """``periods`` (contiguous) split at every boundary that falls strictly inside one of them:
    the coarsest intervals of which both the periods and the spans between boundaries are
    unions."""
    cuts = np.asarray(boundaries, dtype="datetime64[s]")
    edges = np.unique(np.concatenate([periods.start, periods.end[-1:],
                                      cuts[(cuts > periods.start[0]) & (cuts < periods.end[-1])]]))
    return TimeAxis(start=edges[:-1], end=edges[1:])


def calendar_periods(start: np.datetime64, end: np.datetime64, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Nominal [start, end) of each calendar month (``kind = "monthly"``) or year (``"annual"``)
    that overlaps [start, end), UTC, as datetime64[s] arrays."""
    unit = {"monthly": "M", "annual": "Y"}[kind]
    first = np.datetime64(start, unit)
    last = np.datetime64(np.datetime64(end, "s") - np.timedelta64(1, "s"), unit)
    nominal = np.arange(first, last + 2).astype("datetime64[s]")
    return nominal[:-1], nominal[1:]


def mean_weights(intervals: TimeAxis, seconds: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """W (n_target × n_interval) with W[P, i] = T_i / Σ_{j⊂P} T_j for the intervals i inside
    target P = [start, end) and 0 for the others: the duration-weighted mean of the interval
    totals over the part of P that the intervals cover (``seconds`` = T_i).  Each interval must
    lie inside or outside each target (split them first with :func:`split_periods`); a target
    covering no interval is refused."""
    start = np.asarray(start, dtype="datetime64[s]")[:, None]
    end = np.asarray(end, dtype="datetime64[s]")[:, None]
    inside = (intervals.start[None, :] >= start) & (intervals.end[None, :] <= end)
    disjoint = (intervals.end[None, :] <= start) | (intervals.start[None, :] >= end)
    if np.any(~inside & ~disjoint):
        raise ValueError("an interval straddles a target period boundary: split the intervals first")
    w = inside * np.asarray(seconds, dtype=np.float64)[None, :]
    total = w.sum(axis=1, keepdims=True)
    if np.any(total == 0):
        raise ValueError("a target period covers no interval")
    return w / total


def trend_weights(times: np.ndarray) -> np.ndarray:
    """w with slope = Σ_k w_k T_k the ordinary least-squares slope of T_k against t_k (needs at
    least two distinct times): w_k = (t_k − t̄) / Σ_j (t_j − t̄)²."""
    t = np.asarray(times, dtype=np.float64)
    centred = t - t.mean()
    denominator = np.sum(centred**2)
    if t.size < 2 or denominator == 0:
        raise ValueError("a trend needs at least two distinct times")
    return centred / denominator


def report_unit(species: str) -> tuple[str, float]:
    """Reporting unit and the factor from mol s⁻¹ of the species: Tg CO₂ yr⁻¹ (= Mt CO₂ yr⁻¹)
    for CO₂, Gg CH₄ yr⁻¹ for CH₄."""
    target = {"co2": "Tg a-1", "ch4": "Gg a-1"}[species]
    label = {"co2": "Tg CO2 yr-1", "ch4": "Gg CH4 yr-1"}[species]
    return label, MOLAR_MASS_KG_PER_MOL[species] * conversion_factor("kg s-1", target)
