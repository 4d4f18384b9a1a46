"""The posterior: mean, a covariance representation, diagnostics, and aggregates.

Covariance representations (all replicated on every rank):

* :class:`DensePosteriorCovariance` — the exact A (n × n) from the analytical solver;
* :class:`FactorisedPosteriorCovariance` — the exact A of the analytical observation form
  kept as its factorisation, for states too large for the dense n × n A: exact for any
  aggregate, computed on demand;
* :class:`LowRankPosteriorCovariance` — from the variational solver's Ritz pairs (V, λ) of
  G = Lᵀ Hᵀ R⁻¹ H L:  A ≈ L (I − V diag(λ/(1+λ)) Vᵀ) Lᵀ.  Directions that the Lanczos
  process has not explored keep their prior variance.  The approximation is exact once the
  Ritz pairs span the whole control space, but before that it is neither an upper nor a
  lower bound in general (on the demo at tol 1e-8 one period total is 0.8 % low while most
  are high), which is why the variational solver also computes exact covariances of the
  report aggregates by extra solves.

Aggregates T = c + M x (e.g. region totals) have mean c + M x and covariance M A Mᵀ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .aggregates import Aggregates
from .covariance import Covariance


@dataclass(frozen=True, eq=False)
class DensePosteriorCovariance:
    matrix: np.ndarray

    def variance(self) -> np.ndarray:
        return np.diag(self.matrix).copy()

    def aggregate(self, M: np.ndarray) -> np.ndarray:
        return M @ self.matrix @ M.T

    def aggregate_variance(self, M: np.ndarray) -> np.ndarray:
        """diag(M A Mᵀ) without forming the m × m matrix."""
        return np.einsum("ij,ij->i", M @ self.matrix, M)

    def dense(self) -> np.ndarray:
        return self.matrix


@dataclass(frozen=True, eq=False)
class LowRankPosteriorCovariance:
    B: Covariance
    vectors: np.ndarray  # (n, k) orthonormal Ritz vectors of I + G
    eigenvalues: np.ndarray  # (k,) λ of G (Ritz value of I + G minus 1)

    @property
    def _shrink(self) -> np.ndarray:
        return self.eigenvalues / (1.0 + self.eigenvalues)

    def variance(self) -> np.ndarray:
        LV = self.B.sqrt(self.vectors)
        return self.B.variance() - (LV**2) @ self._shrink

    def aggregate(self, M: np.ndarray) -> np.ndarray:
        LtMt = self.B.sqrt_T(np.ascontiguousarray(M.T))  # (n, m)
        proj = self.vectors.T @ LtMt  # (k, m)
        return LtMt.T @ LtMt - proj.T @ (self._shrink[:, None] * proj)

    def aggregate_variance(self, M: np.ndarray) -> np.ndarray:
        """diag(M A Mᵀ) without forming the m × m matrix."""
        LtMt = self.B.sqrt_T(np.ascontiguousarray(M.T))
        return np.sum(LtMt**2, axis=0) - self._shrink @ (self.vectors.T @ LtMt) ** 2

    def dense(self) -> np.ndarray:
        return self.aggregate(np.eye(self.B.size))


@dataclass(frozen=True, eq=False)
class FactorisedPosteriorCovariance:
    """The exact A of the analytical observation-space form, never formed: for states whose
    n² A does not fit in memory (``solver.posterior_covariance = "aggregates"``).

        M A Mᵀ = M B Mᵀ − (U⁻¹ H B Mᵀ)ᵀ (U⁻¹ H B Mᵀ),   S = H B Hᵀ + R = U Uᵀ

    from the factorisation (:class:`inversion.factorisation.ObservationForm`), by blocks of
    rows of M: per aggregate one B product, one sparse H product and a triangular solve
    (n_obs² flops).  The report aggregates are computed once in the solve
    (``Posterior.exact_for``); anything else on demand, at that cost.  Per-element variances
    (``variance``, M = I by blocks of 256 rows) cost n_state B products plus n_obs² n_state
    flops in the solves: for 20 000 observations of a 436 800-element Kronecker state
    (2 n (n_t + n_s) ≈ 7 × 10⁹ flops per B product) ≈ 3.4 × 10¹⁵ flops, days — fine for
    states of a few ten thousand elements, not for a national grid."""

    factorisation: object  # an ObservationForm (replicated U and H_all: no communication)

    def variance(self) -> np.ndarray:
        n = self.factorisation.n_state
        out = np.empty(n)
        for start in range(0, n, 256):  # identity rows by blocks: 256 × n scratch
            rows = np.zeros((min(256, n - start), n))
            rows[np.arange(rows.shape[0]), start + np.arange(rows.shape[0])] = 1.0
            out[start:start + rows.shape[0]] = self.factorisation.aggregate_variance(rows)
        return out

    def aggregate(self, M: np.ndarray) -> np.ndarray:
        return self.factorisation.aggregate_covariance(M)

    def aggregate_variance(self, M: np.ndarray) -> np.ndarray:
        return self.factorisation.aggregate_variance(M)


@dataclass(frozen=True, eq=False)
class Posterior:
    x_b: np.ndarray
    x_a: np.ndarray
    B: Covariance
    covariance: DensePosteriorCovariance | LowRankPosteriorCovariance | FactorisedPosteriorCovariance
    diagnostics: dict
    # Exact covariance of one set of aggregates from extra solves (variational solver).
    exact_for: Aggregates | None = None
    exact_cov: np.ndarray | None = None

    def prior_sd(self) -> np.ndarray:
        return np.sqrt(self.B.variance())

    def posterior_sd(self) -> np.ndarray:
        return np.sqrt(np.maximum(self.covariance.variance(), 0.0))

    def uncertainty_reduction(self) -> np.ndarray:
        """1 − σ_a/σ_b per state element."""
        return 1.0 - self.posterior_sd() / self.prior_sd()

    def aggregate(self, agg: Aggregates) -> dict[str, np.ndarray]:
        """Prior and posterior totals with their covariances (units of ``agg``)."""
        M = agg.matrix.toarray()  # the covariance products below take a dense M (n_agg × n_state)
        prior_cov = M @ self.B.apply(np.ascontiguousarray(M.T))
        out = {
            "prior": agg.offset + M @ self.x_b,
            "prior_cov": 0.5 * (prior_cov + prior_cov.T),
            "posterior": agg.offset + M @ self.x_a,
        }
        if agg is self.exact_for and not isinstance(self.covariance, LowRankPosteriorCovariance):
            out["posterior_cov"] = self.exact_cov  # computed in the solve: nothing to add
            return out
        approx = self.covariance.aggregate(M)
        approx = 0.5 * (approx + approx.T)
        if agg is self.exact_for:
            out["posterior_cov"] = self.exact_cov
            out["posterior_cov_lowrank"] = approx
        else:
            out["posterior_cov"] = approx
        return out
