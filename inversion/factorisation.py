"""The marginal distribution of the departures, factorised once and reused for many right-hand sides.

For fixed (H, B, R) the departures d = y − H x_b are Gaussian,

    d ~ N(0, S),   S = H B Hᵀ + R      (mol² mol⁻², n_obs × n_obs),

and everything the exact error-hyperparameter likelihood (:mod:`inversion.hyper`) and the
twin-experiment calibration (:mod:`inversion.osse`) need follows from one Cholesky
factorisation, in whichever space is smaller (as the analytical solver chooses):

* **state form** (n_state ≤ n_obs): with B = L Lᵀ, G = Lᵀ Hᵀ R⁻¹ H L and I + G = C Cᵀ,

      log det S = log det R + log det(I + G)                     (determinant lemma)
      S⁻¹ D     = R⁻¹ (D − H L (I + G)⁻¹ Lᵀ Hᵀ R⁻¹ D)            (Woodbury)

  Observations stay distributed over ranks; each product reduces once over ranks.
* **observation form** (n_obs < n_state): S = U Uᵀ directly.  Every rank gathers the (small)
  H L and factorises the n_obs × n_obs matrix itself, so no later product communicates.

H (this rank's rows) may be a dense array or a scipy sparse matrix.  Sparse H is what makes
the state form cheap for region states: G = Lᵀ F L with F = Hᵀ R⁻¹ H formed by a sparse
product (≈ Σ_rows nnz_row² flops instead of 2 n_obs n_state² for the dense Gram of H L) and
L = L_t ⊗ L_s applied on both sides by reshaping (2 · 2 n² (n_t + n_s) flops); the dense
n_obs × n_state matrix H L is then formed only if :meth:`inverse_diagonal` asks for it.

Methods take and return this rank's observation rows (``D`` of shape (n_local, k): k
right-hand sides) and replicated state-space arrays:

    solve(D)                 S⁻¹ D                                   (local rows)
    quadratic(D)             diag(Dᵀ S⁻¹ D), the χ² of each column   (global)
    increments(D)            B Hᵀ S⁻¹ D = x_a − x_b for departures D (n_state × k)
    posterior_covariance()   A = B − B Hᵀ S⁻¹ H B = L (I + G)⁻¹ Lᵀ
    inverse_diagonal()       diag(S⁻¹)                               (local rows)
    projected_inverse()      Hᵀ S⁻¹ H                                (n_state × n_state)
    dofs()                   trace(G (I + G)⁻¹) = trace(Hᵀ S⁻¹ H B), degrees of freedom for signal

Systems are solved with the Cholesky factor, never an explicit inverse; the state form's
posterior covariance is L (I + G)⁻¹ Lᵀ with (I + G)⁻¹ from the factor (LAPACK potri), the one
inverse that is itself the result.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy import linalg

from .covariance import Covariance
from .linalg import cholesky_inverse, cholesky_lower, solve_lower


def choose_form(n_state: int, n_obs: int, form: str) -> str:
    """``auto`` → the smaller space (state when n_state ≤ n_obs), else ``form`` itself."""
    if form != "auto":
        return form
    return "state" if n_state <= n_obs else "observation"


class Factorisation:
    """Common part of the two forms; build with :func:`factorise`."""

    form: str
    logdet: float  # log det S (global)

    def __init__(self, H, B: Covariance, r: np.ndarray, comm):
        self.H = H          # local rows of H (n_local × n_state), dense or scipy sparse
        self.B = B
        self.r = r          # local diagonal of R
        self.comm = comm

    @property
    def n_state(self) -> int:
        return self.B.size

    @cached_property
    def HL(self) -> np.ndarray:
        """Local rows of H L, dense (n_local × n_state)."""
        return self.B.sqrt_T(np.ascontiguousarray(_dense(self.H).T)).T

    def _LT_HT(self, D: np.ndarray) -> np.ndarray:
        """Lᵀ Hᵀ D for local rows D (n_local × k), without reduction over ranks."""
        if sp.issparse(self.H):
            return self.B.sqrt_T(np.asarray(self.H.T @ D))
        return self.HL.T @ D

    def _HL_times(self, X: np.ndarray) -> np.ndarray:
        """H L X, local rows, for X (n_state × k)."""
        return np.asarray(self.H @ self.B.sqrt(X)) if sp.issparse(self.H) else self.HL @ X

    def quadratic(self, D: np.ndarray) -> np.ndarray:
        """Dᵀ S⁻¹ D per column (χ² of each set of departures), on every rank."""
        return self.comm.allreduce(np.einsum("ik,ik->k", D, self.solve(D)))

    def solve(self, D: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def increments(self, D: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def posterior_covariance(self) -> np.ndarray:
        raise NotImplementedError

    def inverse_diagonal(self) -> np.ndarray:
        raise NotImplementedError

    def projected_inverse(self) -> np.ndarray:
        raise NotImplementedError

    def dofs(self) -> float:
        raise NotImplementedError


class StateForm(Factorisation):
    """I + G = C Cᵀ (n_state²), observations distributed over ranks."""

    form = "state"

    def __init__(self, H, B, r, comm):
        super().__init__(H, B, r, comm)
        if sp.issparse(H):
            # G = Lᵀ F L, F = Hᵀ R⁻¹ H (sparse product); Lᵀ (Lᵀ F)ᵀ = Lᵀ F L as F is symmetric
            LtF = B.sqrt_T(_weighted_gram(H, r, comm))
            G = B.sqrt_T(np.ascontiguousarray(LtF.T))
            del LtF
            G = 0.5 * (G + G.T)
        else:
            W = self.HL / np.sqrt(r)[:, None]
            G = comm.allreduce(W.T @ W)
        G[np.diag_indices_from(G)] += 1.0
        self.C = cholesky_lower(G, name="I + G (state-space Hessian)")
        self.logdet = comm.allreduce_scalar(float(np.sum(np.log(r)))) + 2.0 * float(np.sum(np.log(np.diag(self.C))))

    def _control(self, D: np.ndarray) -> np.ndarray:
        """(I + G)⁻¹ Lᵀ Hᵀ R⁻¹ D (n_state × k)."""
        b = self.comm.allreduce(self._LT_HT(D / self.r[:, None]))
        return linalg.cho_solve((self.C, True), b)

    def solve(self, D):
        return (D - self._HL_times(self._control(D))) / self.r[:, None]

    def increments(self, D):
        return self.B.sqrt(self._control(D))

    @cached_property
    def _hessian_inverse(self) -> np.ndarray:
        """(I + G)⁻¹, the posterior covariance in control space (from the factor, potri)."""
        return cholesky_inverse(self.C)

    def posterior_covariance(self):
        # A = L (I + G)⁻¹ Lᵀ: L applied to both sides by B's own (Kronecker) square root
        X = self.B.sqrt(self._hessian_inverse)
        return self.B.sqrt(np.ascontiguousarray(X.T))

    def inverse_diagonal(self):
        Q = solve_lower(self.C, self.HL.T)  # C⁻¹ (H L)ᵀ, n_state × n_local
        return 1.0 / self.r - np.sum(Q**2, axis=0) / self.r**2

    def projected_inverse(self):
        # Hᵀ S⁻¹ H = F − Fᵀ L (I + G)⁻¹ Lᵀ F with F = Hᵀ R⁻¹ H.
        F = _weighted_gram(self.H, self.r, self.comm)
        M = solve_lower(self.C, self.B.sqrt_T(F))
        return F - M.T @ M

    def dofs(self):
        # trace(G (I + G)⁻¹) = n − trace((I + G)⁻¹)
        return self.n_state - float(np.trace(self._hessian_inverse))


class ObservationForm(Factorisation):
    """S = U Uᵀ (n_obs²), factorised on every rank from the gathered H L."""

    form = "observation"

    def __init__(self, H, B, r, comm):
        super().__init__(H, B, r, comm)
        counts = comm.allgather(H.shape[0])
        self._start = int(sum(counts[: comm.rank]))
        self._stop = self._start + H.shape[0]
        self.HL_all = self._gather(self.HL)
        S = self.HL_all @ self.HL_all.T
        S[np.diag_indices_from(S)] += self._gather(r)
        self.U = cholesky_lower(S, name="H B Hᵀ + R (observation-space matrix)")
        self.logdet = 2.0 * float(np.sum(np.log(np.diag(self.U))))

    def _gather(self, local: np.ndarray) -> np.ndarray:
        return np.concatenate(self.comm.allgather(np.ascontiguousarray(local)))

    def _solve_all(self, D: np.ndarray) -> np.ndarray:
        return linalg.cho_solve((self.U, True), self._gather(D))

    def solve(self, D):
        return self._solve_all(D)[self._start:self._stop]

    def increments(self, D):
        return self.B.sqrt(self.HL_all.T @ self._solve_all(D))

    def posterior_covariance(self):
        LPt = self.B.sqrt(np.ascontiguousarray(solve_lower(self.U, self.HL_all).T))  # L (U⁻¹ H L)ᵀ
        return self.B.dense() - LPt @ LPt.T

    def inverse_diagonal(self):
        Uinv = solve_lower(self.U, np.eye(self.U.shape[0]))
        return np.sum(Uinv**2, axis=0)[self._start:self._stop]

    def projected_inverse(self):
        V = solve_lower(self.U, self._gather(_dense(self.H)))
        return V.T @ V

    def dofs(self):
        # trace(Lᵀ Hᵀ S⁻¹ H L) = ‖U⁻¹ H L‖²_F
        return float(np.sum(solve_lower(self.U, self.HL_all) ** 2))


def _dense(H) -> np.ndarray:
    return H.toarray() if sp.issparse(H) else H


def _weighted_gram(H, r: np.ndarray, comm) -> np.ndarray:
    """Hᵀ R⁻¹ H summed over ranks, dense (n_state × n_state); a sparse product for sparse H."""
    if sp.issparse(H):
        F = (H.T @ sp.diags(1.0 / r) @ H).toarray() if H.shape[0] else np.zeros((H.shape[1],) * 2)
    else:
        F = H.T @ (H / r[:, None])
    return comm.allreduce(F)


def factorise(H, B: Covariance, r: np.ndarray, comm, *, n_obs: int, form: str = "auto") -> Factorisation:
    """Factorise S = H B Hᵀ + diag(r) for this rank's rows ``H`` (dense array or scipy sparse
    matrix; sparse makes the state form cheap) of the observation operator and local variances ``r`` (``n_obs`` global observations); ``form`` is
    ``auto`` (the smaller space), ``state`` or ``observation``.  Collective."""
    form = choose_form(B.size, n_obs, form)
    cls = StateForm if form == "state" else ObservationForm
    H = sp.csr_matrix(H, dtype=np.float64) if sp.issparse(H) else np.asarray(H, dtype=np.float64)
    return cls(H, B, np.asarray(r, dtype=np.float64), comm)
