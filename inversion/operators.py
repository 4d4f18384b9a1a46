"""The observation operator H of the state, for this rank's observations.

    H x = K (E x_flux) + S x_offsets + X x_extras          (mol mol⁻¹)

K: footprints (m² s mol⁻¹, this rank's rows), E: state → gridded flux (mol m⁻² s⁻¹ per unit
scaling factor), S: one-hot site membership of each observation (background offsets), X: the
given columns of the state extras (e.g. each domain edge's contribution to the modelled
background, mol mol⁻¹ per unit boundary scaling factor).

The product K E is formed once as a sparse matrix: every row of E has at most
(sectors × regions overlapping the cell) non-zeros, so nnz(K E) ≤ nnz(K) · that number, and
applying it never touches the (time × lat × lon) grid space again.  This matters most for
blocks of vectors (exact aggregate variances), where the grid-space intermediate would be
n_columns × k dense.  The forward needs no communication; the adjoint reduces once over
ranks (one state-sized ``Allreduce``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from transport.operator import FootprintOperator


class ObservationOperator(LinearOperator):
    def __init__(self, K: FootprintOperator, E: sp.csr_matrix, site_index: np.ndarray, n_sites: int, comm,
                 extra_columns: sp.spmatrix | None = None):
        n_local = K.shape[0]
        blocks = [K.matrix @ E]
        if n_sites:
            blocks.append(sp.csr_matrix((np.ones(n_local), (np.arange(n_local), np.asarray(site_index, dtype=np.int64))),
                                        shape=(n_local, n_sites)))
        if extra_columns is not None and extra_columns.shape[1]:
            if extra_columns.shape[0] != n_local:
                raise ValueError(f"extra_columns has {extra_columns.shape[0]} rows, this rank has {n_local} observations")
            blocks.append(sp.csr_matrix(extra_columns, dtype=np.float64))
        self.matrix = sp.hstack(blocks, format="csr")
        self.matrix_T = self.matrix.T.tocsr()  # row-major transpose: fast adjoint products
        self.comm = comm
        super().__init__(dtype=np.float64, shape=self.matrix.shape)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """H x for this rank's rows: x of shape (n_state,) or (n_state, k), float64 (not
        checked: the solvers' inner loop calls this directly, without LinearOperator's
        dispatch).  A new array, which the caller may modify."""
        return self.matrix @ x

    def adjoint(self, lam: np.ndarray) -> np.ndarray:
        """Hᵀ λ summed over ranks (collective): λ of shape (n_local,) or (n_local, k), float64.
        A new array, which the caller may modify."""
        return self.comm.allreduce(self.matrix_T @ lam)

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(x, dtype=np.float64).ravel())

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self.forward(np.asarray(X, dtype=np.float64))

    def _rmatvec(self, lam: np.ndarray) -> np.ndarray:
        return self.adjoint(np.asarray(lam, dtype=np.float64).ravel())

    def _rmatmat(self, lam: np.ndarray) -> np.ndarray:
        return self.adjoint(np.asarray(lam, dtype=np.float64))

    def _adjoint(self) -> LinearOperator:
        return LinearOperator(shape=(self.shape[1], self.shape[0]), dtype=self.dtype,
                              matvec=self._rmatvec, rmatvec=self._matvec,
                              matmat=self._rmatmat, rmatmat=self._matmat)

    def jacobian_local(self) -> np.ndarray:
        """Dense H rows of this rank (n_local × n_state), for the analytical solver."""
        return self.matrix.toarray()
