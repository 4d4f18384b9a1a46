"""Linear aggregates of the state: region totals per period and over the whole run.

A total is affine in the state: T = c + aᵀx (mol s⁻¹, the mean net flux of all sectors over
the region and period), where c is the fixed-sector contribution and

    a[s, p', r'] = δ_rr' δ_pp' Σ_{t∈p} Σ_cells m_r φ_s Δt · area / T_p      (mol s⁻¹)

so its prior and posterior mean and covariance follow exactly from those of x:
mean c + A x, covariance A P Aᵀ.  The whole-run total is the duration-weighted mean of the
period totals; the row ``ALL`` sums all regions (the region-covered part of the domain).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transport.units import MOLAR_MASS_KG_PER_MOL, conversion_factor

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


def region_totals(state: StateSpace) -> Aggregates:
    """Totals of every region and of ``ALL``, for each period and for the whole run."""
    grid_area = state.regions.grid.cell_area()
    weights = state.regions.fraction * grid_area  # (n_region, nlat, nlon) m²
    dt = state.flux_time.duration_s
    pos = state.period_of_step
    inside = pos >= 0
    tp = state.period_seconds

    def per_period(field: np.ndarray) -> np.ndarray:
        """Σ_t∈p Σ_cells m_r field Δt area / T_p → (n_period, n_region), for field (t, lat, lon)."""
        spatial = np.einsum("tij,rij->tr", field, weights)  # mol s⁻¹ per step
        out = np.zeros((state.n_period, state.n_region))
        np.add.at(out, pos[inside], spatial[inside] * dt[inside, None])
        return out / tp[:, None]

    a = np.zeros((state.n_period, state.n_region, state.size))
    for s, name in enumerate(state.sectors):
        w = per_period(state.prior.sectors[name])
        for p in range(state.n_period):
            for r in range(state.n_region):
                a[p, r, state.flux_index(s, p, r)] = w[p, r]
    fixed = np.zeros((state.n_period, state.n_region))
    for name in state.fixed_sectors:
        fixed += per_period(state.prior.sectors[name])

    # Append the domain row (sum over regions) and the whole-run column (duration-weighted).
    a = np.concatenate([a, a.sum(axis=1, keepdims=True)], axis=1)
    fixed = np.concatenate([fixed, fixed.sum(axis=1, keepdims=True)], axis=1)
    frac = tp / tp.sum()
    a = np.concatenate([a, np.einsum("p,prn->rn", frac, a)[None]], axis=0)
    fixed = np.concatenate([fixed, (frac @ fixed)[None]], axis=0)

    names = list(state.regions.names) + [DOMAIN]
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
