"""Monte Carlo samples of the posterior, for derived quantities without a closed form.

Totals are linear in the state, so their mean and covariance are exact (:mod:`inversion.posterior`);
ratios (e.g. sink / emission), thresholds ("is the sink larger than X?"), maxima or any other
non-linear function of the state need samples:

    x = x_a + A^{1/2} z,   z ~ N(0, I),   so that cov(x) = A.

* **dense** A (analytical solver): A^{1/2} = D C with Ã = D⁻¹ A D⁻¹ = C Cᵀ (Cholesky of the
  correlation-scaled matrix, D = diag(σ_a), so state elements in very different units — scaling
  factors and background offsets in mol mol⁻¹ — do not spoil the factorisation);
* **low-rank** A ≈ L (I − V diag(λ/(1+λ)) Vᵀ) Lᵀ (variational solver; V orthonormal Ritz
  vectors, λ ≥ 0): A^{1/2} = L (I − V diag(1 − 1/√(1+λ)) Vᵀ), the closed-form square root,
  since with D = diag(1 − 1/√(1+λ)), (I − V D Vᵀ)² = I − V (2D − D²) Vᵀ and
  2D − D² = 1 − (1 − D)² = λ/(1+λ).  Sampling costs one L product per sample, nothing is
  factorised.

The state is replicated on every rank; pass the same generator state on every rank (or sample on
rank 0 only).  Monte Carlo error: a mean has standard error sd/√N, a probability p has
√(p(1−p)/N), a covariance entry √((A_ij² + A_ii A_jj)/N).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from .aggregates import Aggregates
from .linalg import CovarianceError, cholesky_lower
from .posterior import DensePosteriorCovariance, LowRankPosteriorCovariance, Posterior
from .progress import log


def _dense_sqrt(A: np.ndarray) -> np.ndarray:
    """S with S Sᵀ = A for a symmetric positive semi-definite A (n × n)."""
    sd = np.sqrt(np.maximum(np.diag(A), 0.0))
    if np.any(sd == 0):
        raise CovarianceError(f"posterior covariance has {int(np.sum(sd == 0))} zero variances: nothing to sample")
    scaled = A / np.outer(sd, sd)
    try:
        return sd[:, None] * cholesky_lower(scaled, name="posterior correlation")
    except CovarianceError:
        # Positive semi-definite to rounding (elements determined almost exactly by the data):
        # use the eigen-decomposition and zero the round-off negative eigenvalues, counted.
        w, V = np.linalg.eigh(0.5 * (scaled + scaled.T))
        negative = w < 0
        log.warning("posterior correlation matrix is singular to rounding: %d of %d eigenvalues < 0 (smallest "
                    "%.1e) set to 0 for sampling", int(negative.sum()), w.size, float(w.min()))
        w[negative] = 0.0
        return sd[:, None] * (V * np.sqrt(w))


def posterior_sqrt(posterior: Posterior) -> Callable[[np.ndarray], np.ndarray]:
    """The product Z ↦ A^{1/2} Z for Z of shape (n_state, k) (see the module docstring)."""
    cov = posterior.covariance
    if isinstance(cov, DensePosteriorCovariance):
        S = _dense_sqrt(cov.matrix)
        return lambda Z: S @ Z
    if isinstance(cov, LowRankPosteriorCovariance):
        V = cov.vectors
        shrink = 1.0 - 1.0 / np.sqrt(1.0 + np.maximum(cov.eigenvalues, 0.0))
        return lambda Z: cov.B.sqrt(Z - V @ (shrink[:, None] * (V.T @ Z)))
    raise TypeError(f"cannot sample a posterior covariance of type {type(cov).__name__}")


def posterior_samples(posterior: Posterior, rng: np.random.Generator, n_samples: int) -> np.ndarray:
    """``n_samples`` draws of the state from N(x_a, A): shape (n_state, n_samples)."""
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    if n_samples < 1:
        raise ValueError("n_samples must be ≥ 1")
    z = rng.standard_normal((posterior.x_a.size, int(n_samples)))
    return posterior.x_a[:, None] + posterior_sqrt(posterior)(z)


def aggregate_samples(agg: Aggregates, samples: np.ndarray) -> np.ndarray:
    """Totals T = c + M x of each sample: shape (n_agg, n_samples), units of ``agg``."""
    return agg.offset[:, None] + agg.matrix @ samples


def summarise(values: np.ndarray, probabilities: Sequence[float] = (0.025, 0.16, 0.5, 0.84, 0.975)) -> dict:
    """Mean, standard deviation and quantiles along the last axis (the samples), with the Monte
    Carlo standard error of the mean."""
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    sd = values.std(axis=-1, ddof=1) if n > 1 else np.zeros(values.shape[:-1])
    return {"mean": values.mean(axis=-1), "sd": sd, "mean_stderr": sd / np.sqrt(n), "n_samples": n,
            "quantiles": {float(p): np.quantile(values, p, axis=-1) for p in probabilities}}


def exceedance_probability(values: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """P(value > threshold) along the last axis and its Monte Carlo standard error √(p(1−p)/N)."""
    values = np.asarray(values, dtype=np.float64)
    p = np.mean(values > threshold, axis=-1)
    return p, np.sqrt(p * (1 - p) / values.shape[-1])
