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
    matrix: np.ndarray  # (n_agg, n_state), mol s⁻¹ per unit of x
    offset: np.ndarray  # (n_agg,), mol s⁻¹

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
                      end=np.concatenate([a.end for a in parts]), matrix=np.vstack([a.matrix for a in parts]),
                      offset=np.concatenate([a.offset for a in parts]))


def combine(agg: Aggregates, weights: np.ndarray, *, region, period, start, end) -> Aggregates:
    """Totals that are linear combinations of ``agg``'s rows: T' = W T (matrix W M, offset W c),
    labelled by ``region``, ``period``, ``start`` and ``end`` (one per row of W)."""
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 2 or weights.shape[1] != agg.size:
        raise ValueError(f"weights must have shape (n, {agg.size}), got {weights.shape}")
    return Aggregates(region=tuple(region), period=np.asarray(period), start=np.asarray(start),
                      end=np.asarray(end), matrix=weights @ agg.matrix, offset=weights @ agg.offset)


def region_totals(state: StateSpace, report: Regions | None = None) -> Aggregates:
    """Totals of every report region (default: the state regions) and of ``ALL``, for each
    period and for the whole run.  ``report`` must be on the state's grid."""
    grid = state.regions.grid
    if report is not None and not report.grid.same_as(grid):
        raise ValueError("report regions must be on the state's grid")
    if report is not None and report.names == state.regions.names and np.array_equal(report.fraction,
                                                                                      state.regions.fraction):
        report = None  # the state regions themselves: exact overlap
    area = grid.cell_area().ravel()
    m_state = sp.csr_matrix(state.regions.fraction.reshape(state.n_region, -1))
    m_report = m_state if report is None else sp.csr_matrix(report.fraction.reshape(report.size, -1))
    names = list(state.regions.names if report is None else report.names)
    n_rep = len(names)
    dt = state.flux_time.duration_s
    pos = state.period_of_step
    inside = pos >= 0
    # Averaging over the flux steps of each period: (n_period × nt), weights Δt / T_p.
    average = sp.csr_matrix((dt[inside] / state.period_seconds[pos[inside]], (pos[inside], np.flatnonzero(inside))),
                            shape=(state.n_period, state.flux_time.size))

    def period_mean(name: str) -> np.ndarray:
        return average @ state.prior.sectors[name].reshape(state.flux_time.size, -1)  # (n_period, ncell)

    weight = m_report.multiply(area[None, :]).tocsr()  # m_R A_c, m²
    if report is None:
        uncovered = None
    else:
        coverage = np.asarray(m_state.sum(axis=0)).ravel()
        uncovered = weight.multiply((1.0 - coverage)[None, :]).tocsr()  # (m_R − Σ_r m_R m_r) A_c
    a = np.zeros((state.n_period, n_rep, state.size))
    fixed = np.zeros((state.n_period, n_rep))
    regions = np.arange(state.n_region)
    for s, name in enumerate(state.sectors):
        phi = period_mean(name)
        for p in range(state.n_period):
            columns = state.flux_index(s, p, regions)
            if report is None:  # o_Rr = δ_Rr m_r
                a[p, regions, columns] = weight @ phi[p]
            else:  # o_Rr = m_R m_r
                a[p][:, columns] = (weight.multiply(phi[p][None, :]) @ m_state.T).toarray()
                fixed[p] += uncovered @ phi[p]
    for name in state.fixed_sectors:
        fixed += (weight @ period_mean(name).T).T

    # Append the domain row (sum over regions) and the whole-run column (duration-weighted).
    a = np.concatenate([a, a.sum(axis=1, keepdims=True)], axis=1)
    fixed = np.concatenate([fixed, fixed.sum(axis=1, keepdims=True)], axis=1)
    tp = state.period_seconds
    frac = tp / tp.sum()
    a = np.concatenate([a, np.einsum("p,prn->rn", frac, a)[None]], axis=0)
    fixed = np.concatenate([fixed, (frac @ fixed)[None]], axis=0)

    names = names + [DOMAIN]
    n_p = state.n_period + 1
    period = np.tile(np.append(np.arange(state.n_period), WHOLE_RUN), len(names))
    start = np.append(state.periods.start, state.periods.start[0])
    end = np.append(state.periods.end, state.periods.end[-1])
    # Order rows region-major: for each region, its periods then the whole run.
    matrix = a.transpose(1, 0, 2).reshape(len(names) * n_p, state.size)
    offset = fixed.T.reshape(-1)
    return Aggregates(region=tuple(np.repeat(names, n_p)), period=period, start=np.tile(start, len(names)),
                      end=np.tile(end, len(names)), matrix=matrix, offset=offset)


def report_unit(species: str) -> tuple[str, float]:
    """Reporting unit and the factor from mol s⁻¹ of the species: Tg CO₂ yr⁻¹ (= Mt CO₂ yr⁻¹)
    for CO₂, Gg CH₄ yr⁻¹ for CH₄."""
    target = {"co2": "Tg a-1", "ch4": "Gg a-1"}[species]
    label = {"co2": "Tg CO2 yr-1", "ch4": "Gg CH4 yr-1"}[species]
    return label, MOLAR_MASS_KG_PER_MOL[species] * conversion_factor("kg s-1", target)
