"""Stochastic log-determinant of S = H B Hᵀ + R and the traces of its gradient, matrix-free.

For problems too large to factorise, the marginal likelihood of the error hyperparameters
(:mod:`inversion.hyper`) needs log det S and tr(S⁻¹ ∂S/∂θ) from products with H, Hᵀ, L, Lᵀ
and R only (B = L Lᵀ, G = Lᵀ Hᵀ R⁻¹ H L):

* **log det** (matrix determinant lemma): log det S = Σ log R_ii + log det(I + G), and
  log det(I + G) = tr log(I + G) by **stochastic Lanczos quadrature** (Ubaru, Chen & Saad,
  SIAM J. Matrix Anal. Appl. 38, 2017): for a Rademacher probe z ∈ {±1}ⁿ,

      zᵀ log(I + G) z ≈ ‖z‖² Σ_j τ_j² log θ_j,

  with θ_j the eigenvalues of the k-step Lanczos tridiagonal of I + G started at z/‖z‖ and
  τ_j the first components of its eigenvectors (k-point Gauss quadrature, exact for
  polynomials of degree 2k − 1; CG-Lanczos of :mod:`inversion.krylov` supplies the
  tridiagonal).  The mean over p probes estimates the trace; its **standard error** is the
  sample standard deviation / √p (so 4× the probes halve it).  The quadrature error with k
  steps is separate (a bias the standard error does not show); it is small once k exceeds a
  few times √cond(I + G), and the change of the estimate from 3k/4 to k nodes is reported as
  its indicator (``Estimate.quadrature_change``; raise k when it exceeds the standard error).
* **gradient** (Hutchinson): tr(S⁻¹ ∂S) = E[(S⁻¹z)ᵀ ∂S z] for Rademacher z in observation
  space, with ∂S = H ∂B Hᵀ + ∂R, so per probe (Hᵀ S⁻¹ z)ᵀ ∂B (Hᵀ z) + Σ_i (S⁻¹z)_i ∂R_ii z_i.
  S⁻¹ is applied by the Woodbury identity S⁻¹ D = R⁻¹(D − H L (I + G)⁻¹ Lᵀ Hᵀ R⁻¹ D) with one
  block-CG solve on I + G for all probes at once.

Observations are distributed over ranks: every reduction goes through ``problem.comm`` (the
products Hᵀ reduce once); state-space probes are replicated (every rank draws the same ones),
observation-space probes are drawn globally and sliced to this rank's rows, so the estimates
do not depend on the number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from .krylov import CGResult, block_cg, cg_lanczos
from .problem import Problem
from .solvers import hessian_operator

# CG-Lanczos for the quadrature stops early only once the residual is negligible: the Krylov
# space is then (numerically) invariant and the quadrature exact.
_LANCZOS_TOL = 1e-12


@dataclass(frozen=True)
class Estimate:
    """Monte Carlo estimate: ``value`` = mean of ``samples`` over probes (axis 0),
    ``stderr`` = sample standard deviation / √probes (itself uncertain with few probes: use
    ≥ 30 for a standard error to trust).  ``quadrature_change`` (Lanczos quadrature only): the
    mean change of the estimate between 3k/4 and k quadrature nodes, an indicator of the
    quadrature (bias) error that the standard error does not contain."""

    value: np.ndarray | float
    stderr: np.ndarray | float
    samples: np.ndarray
    quadrature_change: float = 0.0

    @classmethod
    def from_samples(cls, samples: np.ndarray, quadrature_change: float = 0.0) -> Estimate:
        samples = np.asarray(samples, dtype=np.float64)
        p = samples.shape[0]
        if p < 2:
            raise ValueError("a standard error needs at least 2 probes")
        return cls(samples.mean(axis=0), samples.std(axis=0, ddof=1) / np.sqrt(p), samples, quadrature_change)


def rademacher(rng: np.random.Generator, n: int, p: int) -> np.ndarray:
    """(n, p) array of independent ±1 (float64)."""
    return rng.choice(np.array([-1.0, 1.0]), size=(n, p))


def observation_probes(seed: np.random.SeedSequence, n_obs: int, p: int, obs_range: tuple[int, int]) -> np.ndarray:
    """This rank's rows of p global Rademacher probes in observation space: probe k is drawn
    whole from its own stream (``seed``'s child k, as ``seed.spawn`` would make, without
    changing ``seed``) and sliced, so the probes do not depend on the number of ranks."""
    start, stop = obs_range
    streams = [np.random.SeedSequence(seed.entropy, spawn_key=seed.spawn_key + (k,)) for k in range(p)]
    return np.column_stack([rademacher(np.random.default_rng(s), n_obs, 1)[start:stop, 0] for s in streams])


def _quadrature(res: CGResult, k: int, z: np.ndarray) -> float:
    """‖z‖² Σ_j τ_j² log θ_j from the first k Lanczos steps of ``res`` (started at z/‖z‖)."""
    ritz = CGResult(replace(res.state, iteration=k), res.reason).ritz()
    norm2 = float(z @ z)
    tau = ritz.vectors.T @ (z / np.sqrt(norm2))  # first components of T_k's eigenvectors
    return norm2 * float(np.sum(tau**2 * np.log(ritz.values)))


def slq_logdet(apply: Callable[[np.ndarray], np.ndarray], probes: np.ndarray, *, steps: int) -> Estimate:
    """log det A of a symmetric positive definite A (known by ``apply(v) = A v``) by
    stochastic Lanczos quadrature with ``steps`` Lanczos steps per probe column of ``probes``
    (n, p); see the module docstring.  Also reports the change from 3k/4 to k nodes."""
    samples, change = [], []
    for z in np.asarray(probes, dtype=np.float64).T:
        res = cg_lanczos(apply, z, tol=_LANCZOS_TOL, max_iter=steps, reorthogonalize=True)
        k = res.iterations
        samples.append(_quadrature(res, k, z))
        change.append(samples[-1] - _quadrature(res, max(1, k - max(1, k // 4)), z))
    return Estimate.from_samples(np.array(samples), float(np.mean(change)))


@dataclass(frozen=True)
class Derivative:
    """∂S/∂θ = H (∂B/∂θ) Hᵀ + ∂R/∂θ of one hyperparameter: ``dB`` the product X ↦ (∂B/∂θ) X
    on (n_state, k) arrays (None if B does not depend on θ), ``dR`` this rank's diagonal of
    ∂R/∂θ (None if R does not depend on θ)."""

    dB: Callable[[np.ndarray], np.ndarray] | None = None
    dR: np.ndarray | None = None


class MatrixFreeMarginal:
    """S = H B Hᵀ + R of ``problem`` (its B and diagonal R) through products only."""

    def __init__(self, problem: Problem, *, tol: float, max_iter: int):
        self.problem = problem
        self.r = problem.R.variance()
        self.apply = hessian_operator(problem, 1.0 / self.r)  # v ↦ (I + G) v
        self.tol = tol
        self.max_iter = max_iter
        self.converged = True

    def solve(self, D: np.ndarray) -> np.ndarray:
        """S⁻¹ D for local rows D (n_local, k), by block CG on I + G (Woodbury)."""
        p = self.problem
        rhs = p.B.sqrt_T(p.H.rmatmat(D / self.r[:, None]))
        res = block_cg(self.apply, rhs, tol=self.tol, max_iter=self.max_iter)
        self.converged = self.converged and bool(np.all(res.converged))
        return (D - p.H.matmat(p.B.sqrt(res.x))) / self.r[:, None]

    def logdet(self, probes: np.ndarray, *, steps: int) -> Estimate:
        """log det S = Σ log R_ii + log det(I + G), the latter by :func:`slq_logdet` with the
        replicated state-space ``probes`` (n_state, p)."""
        log_r = self.problem.comm.allreduce_scalar(float(np.sum(np.log(self.r))))
        est = slq_logdet(self.apply, probes, steps=steps)
        return Estimate(est.value + log_r, est.stderr, est.samples + log_r, est.quadrature_change)

    def trace_inverse_derivatives(self, Z: np.ndarray, SZ: np.ndarray,
                                  derivatives: Sequence[Derivative]) -> Estimate:
        """Hutchinson estimates of tr(S⁻¹ ∂S/∂θ_j) for each derivative, from this rank's rows
        of the observation probes Z (n_local, p) and SZ = S⁻¹ Z (:meth:`solve`)."""
        H, comm = self.problem.H, self.problem.comm
        HZ = H.rmatmat(Z) if any(d.dB is not None for d in derivatives) else None
        HSZ = H.rmatmat(SZ) if HZ is not None else None
        columns = []
        for d in derivatives:
            sample = np.zeros(Z.shape[1])
            if d.dB is not None:
                sample += np.einsum("ik,ik->k", HSZ, d.dB(HZ))
            if d.dR is not None:
                sample += comm.allreduce(np.einsum("ik,i,ik->k", SZ, d.dR, Z))
            columns.append(sample)
        return Estimate.from_samples(np.column_stack(columns))
