"""Solvers: ``solve(problem, ...) -> Posterior``, chosen by name in :data:`SOLVERS`.

Both work in the prior-preconditioned control space x = x_b + L w (B = L Lᵀ):

    J(w) = ½ wᵀw + ½ (H L w − d)ᵀ R⁻¹ (H L w − d),   Hessian I + G,   G = Lᵀ Hᵀ R⁻¹ H L,
    b = Lᵀ Hᵀ R⁻¹ d,   w_a = (I + G)⁻¹ b,   A = L (I + G)⁻¹ Lᵀ.

χ² = dᵀ (H B Hᵀ + R)⁻¹ d = dᵀR⁻¹d − bᵀ w_a (Woodbury), reported per observation;
DOFS = trace(G (I + G)⁻¹).

* **analytical** — exact, through :mod:`inversion.factorisation`: the state-space form
  factorises I + G (n_state²), the observation-space form H B Hᵀ + R (n_obs²); ``auto`` picks
  the smaller.  Cholesky and triangular solves only, never an explicit inverse.  When the
  dense n_state² A does not fit, the observation form keeps A as its factor: exact for the
  report aggregates (computed in the solve) and for any other aggregate on demand.
* **variational** — matrix-free CG with Lanczos on I + G: one H and one Hᵀ per iteration.
  The Ritz pairs give a low-rank A; the listed aggregates get exact covariances from extra
  (block) CG solves started from the deflated guess V diag(1/θ) Vᵀ b.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from scipy import stats

from .aggregates import Aggregates
from .checkpoint import Checkpointer, Stopped
from .krylov import block_cg, cg_lanczos, deflated_guess
from .factorisation import factorise
from .posterior import DensePosteriorCovariance, FactorisedPosteriorCovariance, LowRankPosteriorCovariance, \
    Posterior
from .problem import Problem
from .progress import Progress, log


def _common(problem: Problem) -> tuple[np.ndarray, np.ndarray, float]:
    """Local departures d, local R⁻¹ diagonal, and global dᵀR⁻¹d."""
    d = problem.departures()
    r_inv = 1.0 / problem.R.variance()
    dRd = problem.comm.allreduce_scalar(float(d @ (r_inv * d)))
    return d, r_inv, dRd


def _chi2(chi2: float, n_obs: int) -> dict:
    """χ² of the departures and its 95 % sampling interval for correctly specified errors."""
    return {
        "chi2": chi2,
        "chi2_per_obs": chi2 / n_obs,
        "chi2_per_obs_95": [stats.chi2.ppf(0.025, n_obs) / n_obs, stats.chi2.ppf(0.975, n_obs) / n_obs],
    }


def dense_posterior_fits(n_state: int) -> bool:
    """Whether the dense posterior covariance fits: A, B.dense() and a product of the same
    size (3 · 8 n² bytes) within half of the machine's physical memory."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 3 * 8 * n_state**2 <= memory // 2


def solve_analytical(problem: Problem, *, form: str = "auto", posterior_covariance: str = "auto",
                     aggregates: Aggregates | None = None, block_rows: int | None = None,
                     checkpoint: Checkpointer | None = None, **_ignored) -> Posterior:
    """Collective.  ``posterior_covariance``: ``dense`` (the n_state² A), ``aggregates`` (A kept
    as the observation-space factor: :class:`~inversion.posterior.FactorisedPosteriorCovariance`,
    with the exact M A Mᵀ of ``aggregates`` computed here) or ``auto`` (dense when it fits,
    :func:`dense_posterior_fits`, unless ``form`` is ``state``).  ``block_rows`` and ``checkpoint``
    (``kind="analytical"``): the block accumulation of the factorisation, saved and resumed; a
    requested stop raises :class:`inversion.checkpoint.Stopped` (:mod:`inversion.factorisation`)."""
    comm, B = problem.comm, problem.B
    d = problem.departures()[:, None]
    if posterior_covariance == "auto":
        posterior_covariance = "dense" if form == "state" or dense_posterior_fits(B.size) else "aggregates"
    if posterior_covariance == "aggregates":
        if form == "state":
            raise ValueError('the aggregates-only posterior needs the observation form, not form = "state"')
        form = "observation"
    # the sparse H: the state form then never forms the dense n_obs × n_state H L
    fac = factorise(problem.H.matrix, B, problem.R.variance(), comm, n_obs=problem.n_obs, form=form,
                    block_rows=block_rows, checkpoint=checkpoint)
    log.info("analytical solver, %s-space form (%d state elements, %d observations), %s posterior covariance",
             fac.form, B.size, problem.n_obs, posterior_covariance)
    x_a = problem.x_b + fac.increments(d)[:, 0]
    diagnostics = {"solver": "analytical", "form": fac.form, "n_obs": problem.n_obs, "n_state": B.size,
                   "ranks": comm.size, **_chi2(float(fac.quadratic(d)[0]), problem.n_obs), "dofs": fac.dofs(),
                   "posterior_covariance": posterior_covariance}
    if posterior_covariance == "dense":
        A = fac.posterior_covariance()
        return Posterior(x_b=problem.x_b, x_a=x_a, B=B, covariance=DensePosteriorCovariance(0.5 * (A + A.T)),
                         diagnostics=diagnostics)
    exact_cov = None
    if aggregates is not None:
        log.info("exact covariance of %d aggregates from the factor of H B Hᵀ + R", aggregates.size)
        exact_cov = fac.aggregate_covariance(aggregates.matrix)
    return Posterior(x_b=problem.x_b, x_a=x_a, B=B, covariance=FactorisedPosteriorCovariance(fac),
                     diagnostics=diagnostics, exact_for=aggregates if exact_cov is not None else None,
                     exact_cov=exact_cov)


def hessian_operator(problem: Problem, r_inv: np.ndarray):
    """v ↦ (I + G) v = v + Lᵀ Hᵀ R⁻¹ H L v for a float64 vector (n,) or block of columns (n, k).

    The inner loop of the variational solver: H's local products are called directly
    (:meth:`~inversion.operators.ObservationOperator.forward` / ``adjoint``: the CSR of H, then
    the CSR of Hᵀ, each one row-major stream, and one allreduce), R⁻¹ and the identity are
    applied in place on the fresh intermediates, so a product allocates only what the sparse
    and Kronecker products return."""
    B, H = problem.B, problem.H
    r_inv_block = r_inv[:, None]

    def apply(v: np.ndarray) -> np.ndarray:
        u = H.forward(B.sqrt(v))
        u *= r_inv if u.ndim == 1 else r_inv_block
        out = B.sqrt_T(H.adjoint(u))
        out += v
        return out

    return apply


def solve_variational(problem: Problem, *, tolerance: float = 1e-8, max_iterations: int = 500,
                      reorthogonalize: bool = True, aggregates: Aggregates | None = None,
                      checkpoint: Checkpointer | None = None, **_ignored) -> Posterior:
    """Collective.  With ``checkpoint``: resume from its saved CG state when there is one, save
    every ``checkpoint.every`` iterations and at convergence, and when any rank is asked to stop
    (SIGTERM/SIGUSR1, STOP file) save and raise :class:`inversion.checkpoint.Stopped`."""
    comm, B, H = problem.comm, problem.B, problem.H
    d, r_inv, dRd = _common(problem)
    b = B.sqrt_T(H.rmatvec(r_inv * d))
    apply = hessian_operator(problem, r_inv)
    log.info("variational solver: CG-Lanczos on I + G (%d state elements, %d observations, tol %.1e, ≤ %d "
             "iterations)", B.size, problem.n_obs, tolerance, max_iterations)
    start = checkpoint.load(B.size) if checkpoint is not None else None
    with Progress(comm, "CG iterations", max_iterations) as bar, \
            (checkpoint.stop if checkpoint is not None else contextlib.nullcontext()):
        def callback(state) -> bool:
            bar.update(state.iteration, f"‖r‖/‖b‖ = {state.residual_norms[-1]:.2e}")
            return checkpoint is not None and checkpoint.after_iteration(state)

        res = cg_lanczos(apply, b, tol=tolerance, max_iter=max_iterations, reorthogonalize=reorthogonalize,
                         state=start, callback=callback)
    if res.reason == "interrupted":
        raise Stopped(checkpoint.path, res.iterations, checkpoint.stop_reason or "requested")
    if not res.converged:
        log.warning("CG did not converge: %s after %d iterations (‖r‖/‖b‖ = %.2e > %.1e); the posterior is "
                    "approximate — raise solver.max_iterations", res.reason, res.iterations,
                    res.residual_norms[-1] if len(res.residual_norms) else np.nan, tolerance)
    ritz = res.ritz()
    lam = np.maximum(ritz.values - 1.0, 0.0)
    cov = LowRankPosteriorCovariance(B=B, vectors=ritz.vectors, eigenvalues=lam)
    w_a = res.x
    x_a = problem.x_b + B.sqrt(w_a)
    diagnostics = {"solver": "variational", "n_obs": problem.n_obs, "n_state": B.size, "ranks": comm.size,
                   **_chi2(dRd - b @ w_a, problem.n_obs), "dofs": float(np.sum(lam / (1.0 + lam))),
                   "dofs_note": "from Ritz values (a lower bound)", "iterations": res.iterations,
                   "converged": bool(res.converged), "stop_reason": res.reason,
                   "relative_residual": float(res.residual_norms[-1]) if len(res.residual_norms) else 0.0}
    exact_cov = None
    if aggregates is not None:
        rhs = B.sqrt_T(aggregates.matrix.T.toarray())  # Lᵀ Mᵀ, (n, k): dense for block CG
        log.info("exact covariance of %d aggregates by block CG", rhs.shape[1])
        block = block_cg(apply, rhs, tol=tolerance, max_iter=max_iterations, x0=deflated_guess(ritz, rhs))
        if not np.all(block.converged):
            log.warning("%d of %d aggregate solves did not converge", int(np.sum(~block.converged)), rhs.shape[1])
        exact_cov = rhs.T @ block.x
        exact_cov = 0.5 * (exact_cov + exact_cov.T)
        diagnostics["aggregate_iterations"] = int(block.iterations)
    return Posterior(x_b=problem.x_b, x_a=x_a, B=B, covariance=cov, diagnostics=diagnostics,
                     exact_for=aggregates if exact_cov is not None else None, exact_cov=exact_cov)


SOLVERS = {"analytical": solve_analytical, "variational": solve_variational}


def solve(problem: Problem, aggregates: Aggregates | None = None, checkpoint: Checkpointer | None = None) -> Posterior:
    """Run the solver named in the configuration (``checkpoint``, of the same kind: see
    :func:`solve_variational` and :func:`solve_analytical`)."""
    cfg = problem.config.solver
    extra = {"checkpoint": checkpoint} if checkpoint is not None else {}
    return SOLVERS[cfg.method](problem, form=cfg.form, tolerance=cfg.tolerance, max_iterations=cfg.max_iterations,
                               reorthogonalize=cfg.reorthogonalize, aggregates=aggregates,
                               posterior_covariance=cfg.posterior_covariance, block_rows=cfg.block_rows, **extra)
