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

Methods take and return this rank's observation rows (``D`` of shape (n_local, k): k
right-hand sides) and replicated state-space arrays:

    solve(D)                 S⁻¹ D                                   (local rows)
    quadratic(D)             diag(Dᵀ S⁻¹ D), the χ² of each column   (global)
    increments(D)            B Hᵀ S⁻¹ D = x_a − x_b for departures D (n_state × k)
    posterior_covariance()   A = B − B Hᵀ S⁻¹ H B = L (I + G)⁻¹ Lᵀ
    inverse_diagonal()       diag(S⁻¹)                               (local rows)
    projected_inverse()      Hᵀ S⁻¹ H                                (n_state × n_state)
    dofs()                   trace(G (I + G)⁻¹) = trace(Hᵀ S⁻¹ H B), degrees of freedom for signal

Nothing is ever inverted explicitly; only triangular solves with the Cholesky factor.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from .covariance import Covariance
from .linalg import cholesky_lower, solve_lower


def choose_form(n_state: int, n_obs: int, form: str) -> str:
    """``auto`` → the smaller space (state when n_state ≤ n_obs), else ``form`` itself."""
    if form != "auto":
        return form
    return "state" if n_state <= n_obs else "observation"


class Factorisation:
    """Common part of the two forms; build with :func:`factorise`."""

    form: str
    logdet: float  # log det S (global)

    def __init__(self, H: np.ndarray, B: Covariance, r: np.ndarray, comm):
        self.H = H          # local rows of H (n_local × n_state), dense
        self.B = B
        self.r = r          # local diagonal of R
        self.comm = comm
        self.HL = B.sqrt_T(np.ascontiguousarray(H.T)).T  # local rows of H L

    @property
    def n_state(self) -> int:
        return self.B.size

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
        W = self.HL / np.sqrt(r)[:, None]
        G = comm.allreduce(W.T @ W)
        self.C = cholesky_lower(np.eye(self.n_state) + G, name="I + G (state-space Hessian)")
        self.logdet = comm.allreduce_scalar(float(np.sum(np.log(r)))) + 2.0 * float(np.sum(np.log(np.diag(self.C))))

    def _control(self, D: np.ndarray) -> np.ndarray:
        """(I + G)⁻¹ Lᵀ Hᵀ R⁻¹ D (n_state × k)."""
        b = self.comm.allreduce(self.HL.T @ (D / self.r[:, None]))
        return linalg.cho_solve((self.C, True), b)

    def solve(self, D):
        return (D - self.HL @ self._control(D)) / self.r[:, None]

    def increments(self, D):
        return self.B.sqrt(self._control(D))

    def posterior_covariance(self):
        M = solve_lower(self.C, self.B.sqrt_T(np.eye(self.n_state)))  # C⁻¹ Lᵀ, so A = Mᵀ M
        return M.T @ M

    def inverse_diagonal(self):
        Q = solve_lower(self.C, self.HL.T)  # C⁻¹ (H L)ᵀ, n_state × n_local
        return 1.0 / self.r - np.sum(Q**2, axis=0) / self.r**2

    def projected_inverse(self):
        # Hᵀ S⁻¹ H = F − Fᵀ L (I + G)⁻¹ Lᵀ F with F = Hᵀ R⁻¹ H.
        F = self.comm.allreduce(self.H.T @ (self.H / self.r[:, None]))
        M = solve_lower(self.C, self.B.sqrt_T(F))
        return F - M.T @ M

    def dofs(self):
        # trace(G (I + G)⁻¹) = n − trace((I + G)⁻¹) = n − ‖C⁻¹‖²_F
        return self.n_state - float(np.sum(solve_lower(self.C, np.eye(self.n_state)) ** 2))


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
        V = solve_lower(self.U, self._gather(self.H))
        return V.T @ V

    def dofs(self):
        # trace(Lᵀ Hᵀ S⁻¹ H L) = ‖U⁻¹ H L‖²_F
        return float(np.sum(solve_lower(self.U, self.HL_all) ** 2))


def factorise(H: np.ndarray, B: Covariance, r: np.ndarray, comm, *, n_obs: int, form: str = "auto") -> Factorisation:
    """Factorise S = H B Hᵀ + diag(r) for this rank's dense rows ``H`` of the observation
    operator and local variances ``r`` (``n_obs`` global observations); ``form`` is
    ``auto`` (the smaller space), ``state`` or ``observation``.  Collective."""
    form = choose_form(B.size, n_obs, form)
    cls = StateForm if form == "state" else ObservationForm
    return cls(np.asarray(H, dtype=np.float64), B, np.asarray(r, dtype=np.float64), comm)
