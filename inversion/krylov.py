"""Conjugate gradients with Lanczos, resumable, and block CG for several right-hand sides.

Both solve A w = b for a symmetric positive definite A known only through its products.
In tanhui A = I + G = I + Lᵀ Hᵀ R⁻¹ H L, the Hessian of the cost function in the
prior-preconditioned control space (eigenvalues ≥ 1); each product costs one forward and one
adjoint transport run, so everything else here is cheap by comparison.

CG and Lanczos (Saad, *Iterative Methods for Sparse Linear Systems*, §6.7): with
r_0 = b, p_0 = r_0 and for j = 0, 1, …

    α_j = r_jᵀ r_j / p_jᵀ A p_j,   x_{j+1} = x_j + α_j p_j,   r_{j+1} = r_j − α_j A p_j,
    β_j = r_{j+1}ᵀ r_{j+1} / r_jᵀ r_j,   p_{j+1} = r_{j+1} + β_j p_j.

The normalised residuals q_j = r_j / ‖r_j‖ are orthonormal Lanczos vectors, and
A Q_k = Q_k T_k + (residual in the direction of q_k) with the symmetric tridiagonal

    T_jj = 1/α_j + β_{j−1}/α_{j−1}   (β_{−1}/α_{−1} = 0),     T_{j,j+1} = −√β_j / α_j.

(The minus sign belongs to q_j = +r_j/‖r_j‖; texts that alternate the signs of q_j get +√β_j/α_j.)
The eigenpairs (θ, s) of T_k give Ritz pairs (θ, Q_k s) of A, which approximate the extreme
eigenpairs of A and therefore the leading directions of the posterior covariance.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg

Apply = Callable[[np.ndarray], np.ndarray]


@dataclass
class CGState:
    """Everything needed to continue a CG-Lanczos solve exactly where it stopped.

    After k iterations: iterate ``x`` = x_k, residual ``r`` = r_k = b − A x_k, search direction
    ``p`` = p_k, ``rr`` = r_kᵀ r_k, ``b_norm`` = ‖b‖, ``lanczos`` the normalised residuals
    q_0 … q_k as rows (shape (k+1, n); fewer when a residual became exactly zero),
    ``alphas`` and ``betas`` α_0 … α_{k−1} and β_0 … β_{k−1}, ``residual_norms``
    ‖r_j‖/‖b‖ for j = 0 … k, and ``converged``.

    The solver never modifies a state's arrays in place, so a state handed to a callback stays
    valid while the solve continues.
    """

    x: np.ndarray
    r: np.ndarray
    p: np.ndarray
    iteration: int
    rr: float
    b_norm: float
    lanczos: np.ndarray
    alphas: np.ndarray
    betas: np.ndarray
    residual_norms: np.ndarray
    converged: bool

    @property
    def size(self) -> int:
        """The dimension n of the control vector."""
        return self.x.size

    @classmethod
    def initial(cls, b: np.ndarray, tol: float) -> CGState:
        """The state before the first iteration, starting from x_0 = 0."""
        rr = float(b @ b)
        b_norm = float(np.sqrt(rr))
        started = b_norm > 0  # for b = 0 the solution is w = 0: nothing to iterate, no q_0
        return cls(
            x=np.zeros_like(b),
            r=b.copy(),
            p=b.copy(),
            iteration=0,
            rr=rr,
            b_norm=b_norm,
            lanczos=(b / b_norm)[None, :] if started else np.empty((0, b.size)),
            alphas=np.empty(0),
            betas=np.empty(0),
            residual_norms=np.array([1.0 if started else 0.0]),
            converged=not started or 1.0 <= tol,
        )

    def to_dict(self) -> dict:
        """The state as numpy arrays and Python scalars (shared, not copied), e.g. for HDF5."""
        return {
            "x": self.x,
            "r": self.r,
            "p": self.p,
            "iteration": self.iteration,
            "rr": self.rr,
            "b_norm": self.b_norm,
            "lanczos": self.lanczos,
            "alphas": self.alphas,
            "betas": self.betas,
            "residual_norms": self.residual_norms,
            "converged": self.converged,
        }

    @classmethod
    def from_dict(cls, data: dict) -> CGState:
        """Inverse of :meth:`to_dict`; accepts numpy scalars and arrays read back from a file."""
        n = np.asarray(data["x"]).size
        return cls(
            x=np.asarray(data["x"], dtype=np.float64),
            r=np.asarray(data["r"], dtype=np.float64),
            p=np.asarray(data["p"], dtype=np.float64),
            iteration=int(data["iteration"]),
            rr=float(data["rr"]),
            b_norm=float(data["b_norm"]),
            lanczos=np.asarray(data["lanczos"], dtype=np.float64).reshape(-1, n),
            alphas=np.asarray(data["alphas"], dtype=np.float64),
            betas=np.asarray(data["betas"], dtype=np.float64),
            residual_norms=np.asarray(data["residual_norms"], dtype=np.float64),
            converged=bool(data["converged"]),
        )


@dataclass
class RitzPairs:
    """Ritz values θ (ascending, shape (k,)) and Ritz vectors (orthonormal columns, (n, k))."""

    values: np.ndarray
    vectors: np.ndarray

    def converged_mask(self, apply: Apply, tol: float) -> np.ndarray:
        """Which pairs satisfy ‖A v − θ v‖ ≤ tol · θ (k products with A)."""
        residuals = np.array(
            [np.linalg.norm(apply(v) - theta * v) for theta, v in zip(self.values, self.vectors.T)]
        )
        return residuals <= tol * self.values


@dataclass
class CGResult:
    """Outcome of :func:`cg_lanczos`; ``reason`` is "converged", "max_iter" or "interrupted"."""

    state: CGState
    reason: str

    @property
    def x(self) -> np.ndarray:
        return self.state.x

    @property
    def iterations(self) -> int:
        return self.state.iteration

    @property
    def converged(self) -> bool:
        return self.state.converged

    @property
    def residual_norms(self) -> np.ndarray:
        """Relative residual norms ‖r_j‖/‖b‖, j = 0 … iterations."""
        return self.state.residual_norms

    def ritz(self) -> RitzPairs:
        """Ritz pairs from the k×k Lanczos tridiagonal T_k of the iterations done so far."""
        s = self.state
        k = s.iteration
        if k == 0:
            return RitzPairs(np.empty(0), np.empty((s.x.size, 0)))
        alphas, betas = s.alphas[:k], s.betas[:k]
        diagonal = 1.0 / alphas
        diagonal[1:] += betas[:-1] / alphas[:-1]
        off_diagonal = -np.sqrt(betas[:-1]) / alphas[:-1]
        theta, s_vectors = scipy.linalg.eigh_tridiagonal(diagonal, off_diagonal)
        return RitzPairs(theta, s.lanczos[:k].T @ s_vectors)


# Daniel–Gragg–Kaufman–Stewart (1976): a Gram–Schmidt pass that keeps at least this fraction of
# ‖r‖ leaves r orthogonal to the basis to working precision (error ≲ ε ‖r_before‖/‖r_after‖);
# below it, cancellation may have left components of size ε‖r_before‖ and a second pass (which
# is then enough: "twice is enough") removes them.
DGKS_KEEP = 1.0 / np.sqrt(2.0)


def orthogonalise(r: np.ndarray, q: np.ndarray) -> int:
    """Remove from ``r`` (in place, shape (n,)) its components along the orthonormal rows of
    ``q`` (shape (k, n), C order): r ← r − qᵀ (q r), classical Gram–Schmidt (two GEMVs), repeated
    once when the pass shrank ‖r‖ below :data:`DGKS_KEEP` of what it was.  A CG residual is
    orthogonal to the earlier ones up to rounding, so the second pass is rarely needed: this
    halves the replicated n·k work per iteration against always orthogonalising twice.
    Returns the number of passes made (0 for an empty basis)."""
    if q.shape[0] == 0:
        return 0
    before = float(r @ r)
    for passes in (1, 2):
        r -= q.T @ (q @ r)
        after = float(r @ r)
        if after >= DGKS_KEEP**2 * before:
            break
        before = after
    return passes


def cg_lanczos(
    apply: Apply,
    b: np.ndarray,
    *,
    tol: float = 1e-8,
    max_iter: int = 200,
    reorthogonalize: bool = True,
    state: CGState | None = None,
    callback: Callable[[CGState], bool | None] | None = None,
) -> CGResult:
    """Solve A w = b by conjugate gradients from w_0 = 0, keeping the Lanczos vectors.

    ``apply(v)`` returns A v for v of shape (n,).  Stops when ‖r_k‖ ≤ tol · ‖b‖ (recurrence
    residual), after ``max_iter`` iterations in total (counting those of a resumed ``state``),
    or when ``callback(state)``, called after every iteration, returns True (reason
    "interrupted", unless that iteration converged).

    With ``reorthogonalize`` each new residual is orthogonalised against the stored
    q_0 … q_k (:func:`orthogonalise`: classical Gram–Schmidt, a second pass only when the
    first one removed a large part of it): in floating point plain CG loses the orthogonality
    of its residuals as soon as Ritz values converge, which delays convergence and produces
    spurious copies of Ritz values.  The vectors are stored for the Ritz vectors anyway (rows
    of one preallocated C-order array), so this costs 4·k·n flops per iteration (8·k·n when
    the second pass runs), two GEMVs each reading the k × n basis once, and no extra memory.

    ``state`` continues an earlier solve of the same b; called with the same ``apply``, ``tol``
    and ``reorthogonalize``, the continuation repeats exactly the arithmetic of an
    uninterrupted run, so results are bit-identical (on the same BLAS with the same number of
    threads).  b = 0 returns w = 0 at once.
    """
    b = np.asarray(b, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"b must be a vector, got shape {b.shape}")
    n = b.size
    if state is None:
        state = CGState.initial(b, tol)
    elif state.x.shape != (n,) or abs(np.linalg.norm(b) - state.b_norm) > 1e-12 * state.b_norm:
        raise ValueError("the state to resume belongs to a different right-hand side b")

    # Room for every Lanczos vector of this solve, filled row by row; np.empty only reserves
    # address space, so rows never reached cost no memory.
    capacity = max(max_iter, state.iteration) + 1
    buffer = np.empty((capacity, n))
    stored = state.lanczos.shape[0]
    buffer[:stored] = state.lanczos

    interrupted = False
    while not state.converged and state.iteration < max_iter and not interrupted:
        k = state.iteration
        ap = np.asarray(apply(state.p), dtype=np.float64)
        if ap.shape != (n,):
            raise ValueError(f"apply returned shape {ap.shape}, expected ({n},)")
        curvature = float(state.p @ ap)
        if not curvature > 0:
            raise ValueError(
                f"pᵀAp = {curvature} at CG iteration {k}: the operator is not symmetric positive "
                "definite or returned non-finite values"
            )
        alpha = state.rr / curvature
        x = state.x + alpha * state.p
        r = state.r - alpha * ap
        if reorthogonalize:
            orthogonalise(r, buffer[:stored])
        rr = float(r @ r)
        beta = rr / state.rr
        residual_norm = np.sqrt(rr) / state.b_norm
        if rr > 0:
            buffer[stored] = r / np.sqrt(rr)
            stored += 1
        state = CGState(
            x=x,
            r=r,
            p=r + beta * state.p,
            iteration=k + 1,
            rr=rr,
            b_norm=state.b_norm,
            lanczos=buffer[:stored],
            alphas=np.append(state.alphas, alpha),
            betas=np.append(state.betas, beta),
            residual_norms=np.append(state.residual_norms, residual_norm),
            converged=bool(residual_norm <= tol),
        )
        interrupted = bool(callback is not None and callback(state))

    if state.converged:
        reason = "converged"
    elif interrupted:
        reason = "interrupted"
    else:
        reason = "max_iter"
    return CGResult(state, reason)


@dataclass
class BlockCGResult:
    """Outcome of :func:`block_cg`.

    ``x`` (n, k) solutions, ``iterations`` number of block products (excluding the one for
    the initial residual of ``x0``), ``converged`` (k,) per column, ``residual_norms``
    (iterations + 1, k) relative residuals ‖r_j‖/‖b_j‖ (frozen columns repeat their last value).
    """

    x: np.ndarray
    iterations: int
    converged: np.ndarray
    residual_norms: np.ndarray


def block_cg(
    apply_block: Callable[[np.ndarray], np.ndarray],
    B: np.ndarray,
    *,
    tol: float = 1e-8,
    max_iter: int = 200,
    x0: np.ndarray | None = None,
) -> BlockCGResult:
    """Solve A X = B column by column with independent CG recurrences sharing the products.

    Each iteration makes one call ``apply_block(V)`` (V of shape (n, m) → A V) on the search
    directions of the m columns still iterating, so an expensive operator is applied to a
    block (e.g. one sparse × dense product instead of m sparse × vector ones).  Each column
    has its own α and β and is frozen once ‖r_j‖ ≤ tol · ‖b_j‖.  ``x0`` is a starting guess,
    e.g. :func:`deflated_guess`; a zero column of B has the solution 0 whatever x0 says.

    Typical use: exact variances of aggregates, var(aᵀx) = (Lᵀa)ᵀ (I + G)⁻¹ (Lᵀa).
    """
    B = np.asarray(B, dtype=np.float64)
    if B.ndim != 2:
        raise ValueError(f"B must be an (n, k) array, got shape {B.shape}")

    def product(v: np.ndarray) -> np.ndarray:
        av = np.asarray(apply_block(v), dtype=np.float64)
        if av.shape != v.shape:
            raise ValueError(f"apply_block returned shape {av.shape} for input of shape {v.shape}")
        return av

    b_norms = np.linalg.norm(B, axis=0)
    nonzero = b_norms > 0
    if x0 is None:
        X = np.zeros_like(B)
        R = B.copy()
    else:
        X = np.array(x0, dtype=np.float64)
        if X.shape != B.shape:
            raise ValueError(f"x0 has shape {X.shape}, B has shape {B.shape}")
        X[:, ~nonzero] = 0.0  # so that their residual b − A·0 is exactly 0
        R = B - product(X)
    P = R.copy()
    rr = np.einsum("ij,ij->j", R, R)
    # Zero columns have rr = 0 and count as converged; dividing by 1 keeps them at 0.
    relative = np.sqrt(rr) / np.where(nonzero, b_norms, 1.0)
    history = [relative]
    active = relative > tol

    iterations = 0
    while active.any() and iterations < max_iter:
        cols = np.flatnonzero(active)
        p = P[:, cols]
        ap = product(p)
        curvature = np.einsum("ij,ij->j", p, ap)
        if not np.all(curvature > 0):
            raise ValueError(
                f"pᵀAp = {curvature.min()} at block-CG iteration {iterations}: the operator is not "
                "symmetric positive definite or returned non-finite values"
            )
        alpha = rr[cols] / curvature
        X[:, cols] += alpha * p
        r = R[:, cols] - alpha * ap
        rr_new = np.einsum("ij,ij->j", r, r)
        R[:, cols] = r
        P[:, cols] = r + (rr_new / rr[cols]) * p
        rr[cols] = rr_new
        relative = relative.copy()
        relative[cols] = np.sqrt(rr_new) / b_norms[cols]
        history.append(relative)
        active = relative > tol
        iterations += 1

    return BlockCGResult(X, iterations, ~active, np.array(history))


def deflated_guess(ritz: RitzPairs, B: np.ndarray) -> np.ndarray:
    """Starting guess X_0 = V diag(1/θ) Vᵀ B from Ritz pairs (θ, V) of A.

    This is the solution of A X = B restricted to the span of the Ritz vectors, so CG started
    from it only has to resolve the remaining (better-conditioned) part of the spectrum.
    ``B`` of shape (n,) or (n, k).
    """
    coefficients = ritz.vectors.T @ np.asarray(B, dtype=np.float64)
    scale = ritz.values if coefficients.ndim == 1 else ritz.values[:, None]
    return ritz.vectors @ (coefficients / scale)
