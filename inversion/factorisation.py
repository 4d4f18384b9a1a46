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
* **observation form** (n_obs < n_state): S = U Uᵀ directly.  Every rank gathers the sparse
  H (``H_all``), forms H B Hᵀ by blocks (:mod:`inversion.gram`: by weeks of each Kronecker
  block, never the dense n_obs × n_state H L) and factorises the n_obs × n_obs matrix itself,
  so no later product communicates: increments B Hᵀ S⁻¹ D (sparse Hᵀ, one B product), DOFS
  n_obs − Σ_i r_i (S⁻¹)_ii and diag(S⁻¹) from L⁻¹ (trtri), and the exact M A Mᵀ of any
  aggregates M (``aggregate_covariance``, ``aggregate_variance``) without forming A.

H (this rank's rows) may be a dense array or a scipy sparse matrix.  Sparse H is what makes
the state form cheap for region states: G = Lᵀ F L with F = Hᵀ R⁻¹ H formed by a sparse
product (≈ Σ_rows nnz_row² flops instead of 2 n_obs n_state² for the dense Gram of H L) and
L = L_t ⊗ L_s applied on both sides by reshaping (2 · 2 n² (n_t + n_s) flops); the dense
n_obs × n_state matrix H L is then formed only if :meth:`inverse_diagonal` asks for it.

The long phase — forming F (state form) or S (observation form) — runs over blocks of
observation rows (:mod:`inversion.accumulation`; ``block_rows`` per block, each rank its own
rows), then the sum over ranks is factorised on every rank.  With a
:class:`~inversion.checkpoint.Checkpointer` (``kind="analytical"``) the sum so far is saved
every ``checkpoint.every`` steps, when the accumulation is complete and when a stop is
requested (agreed by every rank at each block boundary; :class:`~inversion.checkpoint.Stopped`
is raised after the save), and the Cholesky factor once computed; a resumed factorisation
continues from the saved rows, or starts from the saved factor.

Methods take and return this rank's observation rows (``D`` of shape (n_local, k): k
right-hand sides) and replicated state-space arrays:

    solve(D)                 S⁻¹ D                                   (local rows)
    quadratic(D)             diag(Dᵀ S⁻¹ D), the χ² of each column   (global)
    increments(D)            B Hᵀ S⁻¹ D = x_a − x_b for departures D (n_state × k)
    posterior_covariance()   A = B − B Hᵀ S⁻¹ H B = L (I + G)⁻¹ Lᵀ
    inverse_diagonal()       diag(S⁻¹)                               (local rows)
    projected_inverse()      Hᵀ S⁻¹ H                                (n_state × n_state)
    dofs()                   trace(G (I + G)⁻¹) = trace(Hᵀ S⁻¹ H B), degrees of freedom for signal
    aggregate_covariance(M)  M A Mᵀ (observation form only; also aggregate_variance(M) = its diagonal)

Systems are solved with the Cholesky factor, never an explicit inverse; the state form's
posterior covariance is L (I + G)⁻¹ Lᵀ with (I + G)⁻¹ from the factor (LAPACK potri), the one
inverse that is itself the result.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import scipy.sparse as sp
from scipy import linalg

from transport.errors import InputError

from .accumulation import BlockState, default_block_rows, pending_blocks
from .checkpoint import Checkpointer, Stopped
from .covariance import Covariance
from .gram import ObservationGram
from .linalg import cholesky_inverse, cholesky_inverse_diagonal, cholesky_lower, cross_product, solve_lower
from .progress import Progress


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

    def __init__(self, H, B, r, comm, *, block_rows: int | None = None, checkpoint: Checkpointer | None = None):
        super().__init__(H, B, r, comm)
        run = _BlockRun(self.form, B.size, H.shape[0], comm, checkpoint)
        self.C = run.factor
        if self.C is None:
            n, start = B.size, run.start

            def add(acc, i0, i1):
                _add_weighted_gram(acc, H[i0 - start:i1 - start], r[i0 - start:i1 - start])

            F = run.accumulate((n, n), add, block_rows or default_block_rows(n), "F = Hᵀ R⁻¹ H")
            # G = Lᵀ F L; Lᵀ (Lᵀ F)ᵀ = Lᵀ F L as F is symmetric
            LtF = B.sqrt_T(F)
            del F
            G = B.sqrt_T(np.ascontiguousarray(LtF.T))
            del LtF
            G = 0.5 * (G + G.T)
            G[np.diag_indices_from(G)] += 1.0
            self.C = cholesky_lower(G, name="I + G (state-space Hessian)")
            del G
            run.factorised(self.C)
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
        return F - cross_product(M)

    def dofs(self):
        # trace(G (I + G)⁻¹) = n − trace((I + G)⁻¹)
        return self.n_state - float(np.trace(self._hessian_inverse))


class ObservationForm(Factorisation):
    """S = U Uᵀ (n_obs²), factorised on every rank from the gathered H L."""

    form = "observation"

    def __init__(self, H, B, r, comm, *, block_rows: int | None = None, checkpoint: Checkpointer | None = None):
        super().__init__(H, B, r, comm)
        run = _BlockRun(self.form, B.size, H.shape[0], comm, checkpoint)
        self._start, self._stop = run.start, run.stop
        H_all = self.H_all  # collective: gathered here, on every rank
        self.U = run.factor
        if self.U is None:
            # each rank forms the rows of H B Hᵀ of its own observations, block by block
            gram = ObservationGram(H_all, B)

            def add(acc, i0, i1):
                acc[i0:i1] = gram.rows(i0, i1)

            n = run.n_obs
            S = run.accumulate((n, n), add, block_rows or default_block_rows(max(n, B.size)), "rows of H B Hᵀ")
            S[np.diag_indices_from(S)] += self._gather(r)
            self.U = cholesky_lower(S, name="H B Hᵀ + R (observation-space matrix)")
            del S
            run.factorised(self.U)
        self.logdet = 2.0 * float(np.sum(np.log(np.diag(self.U))))

    def _gather(self, local: np.ndarray) -> np.ndarray:
        return np.concatenate(self.comm.allgather(np.ascontiguousarray(local)))

    @cached_property
    def H_all(self) -> sp.csr_matrix:
        """Every rank's rows of H, sparse (n_obs × n_state), replicated.  Collective the first
        time it is used (an allgather); the methods below call it only after the solver has."""
        parts = self.comm.allgather(sp.csr_matrix(self.H))
        return sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]

    @cached_property
    def _inverse_diagonal_all(self) -> np.ndarray:
        """diag(S⁻¹) for every observation, from the factor (n_obs³/3 flops, n_obs² scratch)."""
        return cholesky_inverse_diagonal(self.U)

    def _solve_all(self, D: np.ndarray) -> np.ndarray:
        return linalg.cho_solve((self.U, True), self._gather(D))

    def solve(self, D):
        return self._solve_all(D)[self._start:self._stop]

    def increments(self, D):
        # B Hᵀ S⁻¹ D: a sparse Hᵀ product and one B product (Kronecker factors), no H L
        return self.B.apply(np.asarray(self.H_all.T @ self._solve_all(D)))

    def _weighted_HBMt(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B Mᵀ, U⁻¹ H B Mᵀ) for dense rows of M (m × n_state)."""
        BMt = self.B.apply(np.ascontiguousarray(rows.T))
        return BMt, solve_lower(self.U, np.asarray(self.H_all @ BMt))

    def aggregate_covariance(self, M, block: int = 256) -> np.ndarray:
        """M A Mᵀ = M B Mᵀ − (U⁻¹ H B Mᵀ)ᵀ (U⁻¹ H B Mᵀ) (m × m) for M (m × n_state, dense or
        scipy sparse), exact, from the factor, by blocks of ``block`` rows of M: per row one B
        product, one sparse H product and a triangular solve (n_obs² flops).  Not collective."""
        parts = [self._weighted_HBMt(rows) for rows in _row_blocks(M, block)]
        BMt, W = np.hstack([p[0] for p in parts]), np.hstack([p[1] for p in parts])
        out = np.asarray(M @ BMt) - cross_product(W)
        return 0.5 * (out + out.T)

    def aggregate_variance(self, M, block: int = 256) -> np.ndarray:
        """diag(M A Mᵀ) (m,) for M (m × n_state, dense or scipy sparse), exact, by blocks of
        ``block`` rows of M (never m × m).  With M the identity this is diag(A): n_state B
        products plus n_obs² n_state flops in the triangular solves.  Not collective."""
        out = []
        for rows in _row_blocks(M, block):
            BMt, W = self._weighted_HBMt(rows)
            out.append(np.einsum("ij,ji->i", rows, BMt) - np.einsum("ij,ij->j", W, W))
        return np.concatenate(out) if out else np.zeros(0)

    def posterior_covariance(self):
        # A = B − (U⁻¹ H B)ᵀ (U⁻¹ H B): dense n_state², for states small enough to hold it
        X = solve_lower(self.U, np.ascontiguousarray(self.B.apply(self.H_all.T.toarray()).T))
        return self.B.dense() - cross_product(X)

    def inverse_diagonal(self):
        return self._inverse_diagonal_all[self._start:self._stop].copy()

    def projected_inverse(self):
        V = solve_lower(self.U, self.H_all.toarray())
        return cross_product(V)

    def dofs(self):
        # trace(S⁻¹ H B Hᵀ) = trace(S⁻¹ (S − R)) = n_obs − Σ_i r_i (S⁻¹)_ii
        return float(self.U.shape[0] - self._gather(self.r) @ self._inverse_diagonal_all)


def _dense(H) -> np.ndarray:
    return H.toarray() if sp.issparse(H) else H


def _row_blocks(M, block: int):
    """Dense float64 blocks of ``block`` rows of M (dense or scipy sparse, 2-D)."""
    M = M.tocsr() if sp.issparse(M) else np.atleast_2d(np.asarray(M, dtype=np.float64))
    for i in range(0, M.shape[0], block):
        yield np.asarray(_dense(M[i:i + block]), dtype=np.float64)


def _add_weighted_gram(acc: np.ndarray, H, r: np.ndarray) -> None:
    """acc += Hᵀ R⁻¹ H for rows H (dense, or scipy sparse: a sparse product whose non-zeros are
    added in place, so a block costs ≈ Σ_rows nnz_row², not n_state²)."""
    if H.shape[0] == 0:
        return
    if sp.issparse(H):
        F = sp.csr_matrix(H.T @ sp.diags(1.0 / r) @ H)
        F.sum_duplicates()  # each (row, column) once: the fancy-indexed += below adds every entry
        F = F.tocoo()
        acc.reshape(-1)[F.row.astype(np.int64) * acc.shape[1] + F.col] += F.data
    else:
        acc += H.T @ (H / r[:, None])


def _weighted_gram(H, r: np.ndarray, comm) -> np.ndarray:
    """Hᵀ R⁻¹ H summed over ranks, dense (n_state × n_state)."""
    F = np.zeros((H.shape[1],) * 2)
    _add_weighted_gram(F, H, r)
    return comm.allreduce(F)


class _BlockRun:
    """One checkpointable accumulation and factorisation (collective methods).

    ``factor``: the Cholesky factor saved by an earlier run (then nothing is accumulated), else
    None.  :meth:`accumulate` sums ``add(acc, i0, i1)`` over this rank's pending row blocks and
    over ranks; :meth:`factorised` saves the factor.  Without a checkpointer the same arithmetic
    runs with no saving and no stop checks.
    """

    def __init__(self, form: str, n_state: int, n_local: int, comm, checkpoint: Checkpointer | None):
        counts = comm.allgather(n_local)
        self.start = int(sum(counts[: comm.rank]))
        self.stop = self.start + n_local
        self.n_obs = int(sum(counts))
        self.form, self.n_state, self.comm, self.checkpoint = form, n_state, comm, checkpoint
        self.resume: BlockState | None = checkpoint.load(n_state) if checkpoint is not None else None
        if self.resume is not None and (self.resume.form != form or self.resume.done.size != self.n_obs):
            raise InputError(checkpoint.path, "form",
                             f"the checkpoint holds the {self.resume.form} form for {self.resume.done.size} "
                             f"observations, this run needs the {form} form for {self.n_obs}",
                             "start afresh with `tanhui run --restart` (discards the checkpoint)")
        self.iteration = self.resume.iteration if self.resume is not None else 0

    @property
    def factor(self) -> np.ndarray | None:
        return self.resume.total if self.resume is not None and self.resume.factored else None

    def accumulate(self, shape: tuple[int, int], add, block_rows: int, what: str) -> np.ndarray:
        """Σ over ranks of the arrays each rank accumulates with ``add`` over its row blocks not
        yet done; one step = one block per rank, every rank takes part in every step's checks."""
        comm, ck, resume = self.comm, self.checkpoint, self.resume
        done = resume.done.copy() if resume is not None else np.zeros(self.n_obs, dtype=bool)
        # the saved sum enters once, on rank 0; the other ranks add their new blocks to zeros
        acc = resume.total.copy() if resume is not None and comm.is_root else np.zeros(shape)
        blocks = pending_blocks(done, self.start, self.stop, block_rows)
        steps = max(comm.allgather(len(blocks)))
        total = None
        with Progress(comm, f"accumulating {what} ({block_rows}-row blocks)", steps) as bar:
            for j in range(steps):
                if j < len(blocks):
                    i0, i1 = blocks[j]
                    add(acc, i0, i1)
                    done[i0:i1] = True
                self.iteration += 1
                bar.update(j + 1)
                if ck is None:
                    continue
                save, stop = ck.decide(self.iteration, converged=j == steps - 1)
                if save:
                    snapshot = BlockState(self.form, self.n_state, comm.allreduce(done.astype(np.float64)) > 0,
                                          comm.allreduce(acc), self.iteration)
                    ck.save(snapshot)
                    total = snapshot.total if j == steps - 1 else None
                if stop:
                    raise Stopped(ck.path, self.iteration, ck.stop_reason, ck.kind.step)
        if ck is not None and steps and ck.stopping():  # asked during the last block: its sum is saved
            raise Stopped(ck.path, None, ck.stop_reason, "accumulation of every block")
        return comm.allreduce(acc) if total is None else total

    def factorised(self, factor: np.ndarray) -> None:
        """Save the factor (a resume then skips the n³ phase); stop here if asked meanwhile."""
        if self.checkpoint is None:
            return
        self.checkpoint.save(BlockState(self.form, self.n_state, np.ones(self.n_obs, dtype=bool), factor,
                                        self.iteration, factored=True))
        if self.checkpoint.stopping():
            raise Stopped(self.checkpoint.path, None, self.checkpoint.stop_reason, "Cholesky factorisation")


def factorise(H, B: Covariance, r: np.ndarray, comm, *, n_obs: int, form: str = "auto",
              block_rows: int | None = None, checkpoint: Checkpointer | None = None) -> Factorisation:
    """Factorise S = H B Hᵀ + diag(r) for this rank's rows ``H`` (dense array or scipy sparse
    matrix; sparse makes the state form cheap) of the observation operator and local variances
    ``r`` (``n_obs`` global observations); ``form`` is ``auto`` (the smaller space), ``state``
    or ``observation``.  ``block_rows``: observation rows per accumulated block (default ≈ 256 MiB
    of dense rows, :func:`inversion.accumulation.default_block_rows`).  ``checkpoint``: an
    analytical :class:`~inversion.checkpoint.Checkpointer` to resume from and save to (may raise
    :class:`~inversion.checkpoint.Stopped`).  Collective."""
    form = choose_form(B.size, n_obs, form)
    cls = StateForm if form == "state" else ObservationForm
    H = sp.csr_matrix(H, dtype=np.float64) if sp.issparse(H) else np.asarray(H, dtype=np.float64)
    return cls(H, B, np.asarray(r, dtype=np.float64), comm, block_rows=block_rows, checkpoint=checkpoint)
