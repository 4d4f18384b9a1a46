"""The posterior: mean, a covariance representation, diagnostics, and aggregates.

Covariance representations (both replicated on every rank):

* :class:`DensePosteriorCovariance` — the exact A (n × n) from the analytical solver;
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
class Posterior:
    x_b: np.ndarray
    x_a: np.ndarray
    B: Covariance
    covariance: DensePosteriorCovariance | LowRankPosteriorCovariance
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
        M = agg.matrix
        prior_cov = M @ self.B.apply(np.ascontiguousarray(M.T))
        out = {
            "prior": agg.offset + M @ self.x_b,
            "prior_cov": 0.5 * (prior_cov + prior_cov.T),
            "posterior": agg.offset + M @ self.x_a,
        }
        approx = self.covariance.aggregate(M)
        approx = 0.5 * (approx + approx.T)
        if agg is self.exact_for:
            out["posterior_cov"] = self.exact_cov
            out["posterior_cov_lowrank"] = approx
        else:
            out["posterior_cov"] = approx
        return out
