"""Blocks of the observation-space prior covariance H B Hᵀ (mol² mol⁻², n_obs × n_obs).

The observation form of the analytical solver factorises S = H B Hᵀ + R.  It is formed a
block of rows at a time, so that the dense n_obs × n_state matrix H L (70 GB for 20 000
observations of a 436 800-element grid-cell state) is never needed and a long accumulation
can be checkpointed between blocks:

    S[I, :] = H_I B Hᵀ          for the rows I = start:stop.

``H_all`` is the whole observation operator (every rank's rows, dense array or scipy sparse
matrix, n_obs × n_state); ``B`` any :class:`inversion.covariance.Covariance`.  B is split into
its :class:`~inversion.covariance.BlockDiagonal` leaves (one per sector, the background
offsets, the extras), each acting on its own columns of H, and each leaf is handled by its kind:

* **Kronecker** B_t ⊗ B_s (state index t · n_s + s, time-major, as in
  :class:`~inversion.covariance.Kronecker`), with H_t the columns of week t (n_obs × n_s, a
  footprint touches ~2 weeks and a few thousand cells):

      H B Hᵀ = Σ_t' (Σ_t B_t[t', t] H_t B_s) H_t'ᵀ

  For the rows I: Y_t = H_{I,t} B_s, one GEMM of the rows of I touching week t by the cells
  they touch (2 |r_t| |C_{I,t}| n_s flops; all n_s columns once half are touched); then per
  week t' the mixture V_t' = Σ_t B_t[t', t] Y_t (a sparse mixing matrix times the stacked Y,
  2 |r_t| n_s per pair with B_t[t', t] ≠ 0: B_t diagonal or banded mixes nothing); then
  S[I, rows_t'] += V_t' D_t'ᵀ, one GEMM with D_t' the dense week slice of all observations
  touching t' on its touched cells (2 |active| |C_t'| |rows_t'| flops).  Only the touched rows
  and columns of H are ever densified, and the work is GEMM-shaped.
* **Diagonal** diag(v): H_I diag(v) Hᵀ by a sparse product.
* anything else: the generic B H_Iᵀ (one B product of the block's dense rows) and one sparse
  product with H.

:class:`ObservationGram` keeps H's column layout (and, when they fit in
``DENSE_CACHE_FRACTION`` of the memory, the dense week slices D_t') between blocks: build it
once when forming S block by block.
Its ``row_width`` is the working memory per row of a block in doubles (≈ n_obs + 3 n_s per
Kronecker leaf, not n_state), from which to size the blocks.
:meth:`ObservationGram.flops` counts the multiply-adds of the dense products (×2) for a block,
so a benchmark can compare the measured time with the GEMM rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .covariance import BlockDiagonal, Covariance, Diagonal, Kronecker


# Fraction of the physical memory that the dense week slices of H may keep between blocks.
DENSE_CACHE_FRACTION = 0.125


def _physical_memory() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class _Slice:
    """The non-zeros of one column range of H (CSC, ``a:b`` of ``csc``) and their footprint:
    the rows and the columns (relative to ``a``) that hold at least one non-zero."""

    csc: sp.csc_matrix
    a: int
    b: int
    rows: np.ndarray
    cols: np.ndarray

    @classmethod
    def of(cls, csc: sp.csc_matrix, a: int, b: int) -> "_Slice":
        ptr = csc.indptr[a:b + 1]
        rows = np.unique(csc.indices[ptr[0]:ptr[-1]])
        return cls(csc, a, b, rows, np.flatnonzero(np.diff(ptr)))

    def dense_wide(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """(dense rows over all ``n`` columns, None) when at least half the columns are touched
        (no column gather needed), else (:meth:`dense`, cols)."""
        if 2 * self.cols.size < n:
            return self.dense(), self.cols
        out = np.zeros((self.rows.size, n))
        out[:, self.cols] = self.dense()
        return out, None

    def dense(self) -> np.ndarray:
        """The slice restricted to its rows and columns, dense (|rows| × |cols|)."""
        ptr = self.csc.indptr[self.a:self.b + 1]
        lo, hi = ptr[0], ptr[-1]
        out = np.zeros((self.rows.size, self.cols.size))
        col_pos = np.repeat(np.arange(self.b - self.a), np.diff(ptr))
        col_pos = np.searchsorted(self.cols, col_pos)
        out[np.searchsorted(self.rows, self.csc.indices[lo:hi]), col_pos] = self.csc.data[lo:hi]
        return out


def _leaves(B: Covariance, offset: int = 0) -> list[tuple[int, Covariance]]:
    """(first column, covariance) of every non-BlockDiagonal leaf of B, in state order."""
    if not isinstance(B, BlockDiagonal):
        return [(offset, B)]
    out = []
    for block in B.blocks:
        out += _leaves(block, offset)
        offset += block.size
    return out


class ObservationGram:
    """Rows of H B Hᵀ for a fixed H (all observations, n_obs × n_state) and B."""

    def __init__(self, H_all, B: Covariance):
        if H_all.shape[1] != B.size:
            raise ValueError(f"H has {H_all.shape[1]} columns, B has size {B.size}")
        H = sp.csr_matrix(H_all, dtype=np.float64)
        H.sum_duplicates()
        self.H = H
        self.B = B
        self.n_obs = H.shape[0]
        self.leaves = _leaves(B)
        kron = [(c0, leaf) for c0, leaf in self.leaves if isinstance(leaf, Kronecker)]
        csc = H.tocsc() if kron else None
        # Per Kronecker leaf: its factors (dense time, dense-or-diagonal space) and the week slices.
        self._kron = {}
        for c0, leaf in kron:
            n_t, n_s = leaf.time.size, leaf.space.size
            weeks = [_Slice.of(csc, c0 + t * n_s, c0 + (t + 1) * n_s) for t in range(n_t)]
            space = leaf.space.variance() if isinstance(leaf.space, Diagonal) else leaf.space.dense()
            self._kron[c0] = (leaf.time.dense(), space, weeks)
        # The dense week slices D_t' of all observations are the right operand of every block:
        # kept between blocks when they fit in DENSE_CACHE_FRACTION of the memory, else rebuilt.
        dense_bytes = sum(8 * w.rows.size * (w.cols.size if 2 * w.cols.size < w.b - w.a else w.b - w.a)
                          for _, _, weeks in self._kron.values() for w in weeks)
        self._dense_cache: dict | None = {} if dense_bytes <= DENSE_CACHE_FRACTION * _physical_memory() else None
        # Doubles of working memory per row of a block (Y and V of the touched weeks, the row of
        # S; generic leaves: B H_Iᵀ): choose the block size from this, not from n_state.
        self.row_width = self.n_obs + sum(3 * leaf.space.size if isinstance(leaf, Kronecker) else leaf.size
                                          for _, leaf in self.leaves if not isinstance(leaf, Diagonal))

    # -- rows ----------------------------------------------------------------------------------

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of H B Hᵀ, dense (stop − start) × n_obs."""
        start, stop = self._check(start, stop)
        H_I = self.H[start:stop]
        # Kronecker leaves accumulate Sᵀ[:, I] (row-contiguous per observation of the right side)
        acc = np.zeros((self.n_obs, stop - start))
        for c0, leaf in self.leaves:
            if isinstance(leaf, Kronecker):
                self._kronecker_rows(acc, H_I, c0)
        out = np.ascontiguousarray(acc.T)
        del acc
        for c0, leaf in self.leaves:
            cols = slice(c0, c0 + leaf.size)
            if isinstance(leaf, Kronecker):
                continue
            elif isinstance(leaf, Diagonal):
                part = H_I[:, cols] @ sp.diags(leaf.variance()) @ self.H[:, cols].T
                out += part.toarray()
            else:
                BHt = leaf.apply(np.ascontiguousarray(H_I[:, cols].toarray().T))  # leaf × k
                out += np.asarray(self.H[:, cols] @ BHt).T
        return out

    def _kronecker_rows(self, outT: np.ndarray, H_I: sp.csr_matrix, c0: int) -> None:
        """outT (n_obs × k) += (H_I B_leaf H_leafᵀ)ᵀ for the Kronecker leaf at column c0."""
        Bt, Bs, weeks = self._kron[c0]
        n_t, n_s = Bt.shape[0], weeks[0].b - weeks[0].a
        csc_I = H_I.tocsc()
        left = [_Slice.of(csc_I, c0 + t * n_s, c0 + (t + 1) * n_s) for t in range(n_t)]
        touched = [t for t in range(n_t) if left[t].rows.size]
        if not touched:
            return
        # Y_t = H_{I,t} B_s for the rows of I that touch week t, stacked: Y (Σ_t |r_t| × n_s).
        counts = [left[t].rows.size for t in touched]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        Y = np.empty((int(offsets[-1]), n_s))
        for t, a, b in zip(touched, offsets[:-1], offsets[1:]):
            if Bs.ndim == 1:  # diagonal space factor: scale the touched cells
                Y[a:b] = 0.0
                Y[a:b, left[t].cols] = left[t].dense() * Bs[left[t].cols]
                continue
            D, cols = left[t].dense_wide(n_s)
            if cols is None:
                np.matmul(D, Bs, out=Y[a:b])
            else:
                np.matmul(D, Bs[cols], out=Y[a:b])
        row_of = np.concatenate([left[t].rows for t in touched])
        week_of = np.repeat(touched, counts)
        # Per week t': V = Σ_t B_t[t', t] Y_t (a sparse mixing matrix W times Y, rows of I that
        # touch a week correlated with t'), then S[I, rows_t']ᵀ += D_t' Vᵀ (one GEMM).
        for t2, right in enumerate(weeks):
            if not right.rows.size:
                continue
            coef = Bt[t2, week_of]
            mix = np.flatnonzero(coef)
            if not mix.size:
                continue
            active = np.unique(row_of[mix])
            W = sp.csr_matrix((coef[mix], (np.searchsorted(active, row_of[mix]), mix)), shape=(active.size, Y.shape[0]))
            V = np.asarray(W @ Y)
            D, cols = self._week_dense(c0, t2, right)
            P = D @ (V if cols is None else V[:, cols]).T  # |rows_t'| × |active|
            if active.size == outT.shape[1]:
                outT[right.rows] += P
            else:
                outT[np.ix_(right.rows, active)] += P

    def _week_dense(self, c0: int, t: int, week: _Slice) -> tuple[np.ndarray, np.ndarray | None]:
        n_s = week.b - week.a
        if self._dense_cache is None:
            return week.dense_wide(n_s)
        if (c0, t) not in self._dense_cache:
            self._dense_cache[(c0, t)] = week.dense_wide(n_s)
        return self._dense_cache[(c0, t)]

    # -- flop model ----------------------------------------------------------------------------

    def flops(self, start: int, stop: int) -> float:
        """Floating-point operations of :meth:`rows` ``(start, stop)`` in its dense products
        (2 per multiply-add): for Kronecker leaves the three GEMM terms of the module
        docstring, for Diagonal leaves 2 Σ_i nnz(H_i,leaf) n_obs at most (a sparse product),
        for other leaves the B product of the block (2 n_leaf² k) and the sparse product
        (2 nnz(H_leaf) k)."""
        start, stop = self._check(start, stop)
        k = stop - start
        H_I = self.H[start:stop]
        total = 0.0
        for c0, leaf in self.leaves:
            cols = slice(c0, c0 + leaf.size)
            if isinstance(leaf, Kronecker):
                Bt, Bs, weeks = self._kron[c0]
                n_t, n_s = Bt.shape[0], leaf.space.size
                csc_I = H_I.tocsc()
                left = [_Slice.of(csc_I, c0 + t * n_s, c0 + (t + 1) * n_s) for t in range(n_t)]
                for sl in left:
                    width = sl.cols.size if Bs.ndim == 1 or 2 * sl.cols.size < n_s else n_s
                    total += 2.0 * sl.rows.size * width * (1 if Bs.ndim == 1 else n_s)
                for t2, right in enumerate(weeks):
                    mixing = [t for t, sl in enumerate(left) if sl.rows.size and Bt[t2, t] != 0.0]
                    if not mixing or not right.rows.size:
                        continue
                    active = np.unique(np.concatenate([left[t].rows for t in mixing])).size
                    width = right.cols.size if 2 * right.cols.size < n_s else n_s
                    total += 2.0 * sum(left[t].rows.size for t in mixing) * n_s
                    total += 2.0 * active * width * right.rows.size
            elif isinstance(leaf, Diagonal):
                total += 2.0 * H_I[:, cols].nnz * self.n_obs
            else:
                total += 2.0 * leaf.size**2 * k + 2.0 * self.H[:, cols].nnz * k
        return total

    def _check(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_obs:
            raise ValueError(f"rows {start}:{stop} outside 0:{self.n_obs}")
        return start, stop


def observation_gram_flops(H_all, B: Covariance, start: int = 0, stop: int | None = None) -> float:
    """The flop count of :meth:`ObservationGram.rows` for rows ``start:stop`` (default all),
    see :meth:`ObservationGram.flops`."""
    gram = ObservationGram(H_all, B)
    return gram.flops(start, gram.n_obs if stop is None else stop)
