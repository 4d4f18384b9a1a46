"""The footprint observation operator K as a ``scipy.sparse.linalg.LinearOperator``.

Observations are split across ranks in contiguous blocks, so each rank holds the rows of its
own observations, K_loc (n_local_rows × n_columns), while vectors over columns (gridded
fluxes, m⁻²-based: mol m⁻² s⁻¹) are replicated on every rank:

    forward   y_loc = K_loc x                         [mol mol⁻¹]   no communication
    adjoint   x̂ = Σ_ranks K_locᵀ λ_loc                [m² s mol⁻¹ × λ units]   one allreduce

``rmatvec_local`` returns K_locᵀ λ_loc without the reduction, for callers that compose K with
a state-space operator E and reduce once after Eᵀ (fewer and smaller messages).

The communicator is duck-typed (see ``inversion.parallel``): it needs ``allreduce(ndarray)``
returning the element-wise sum over ranks, plus ``rank`` and ``size``; ``None`` means serial.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

if TYPE_CHECKING:
    from transport.store import FootprintStore


class FootprintOperator(LinearOperator):
    """K restricted to this rank's rows; shape (n_local_rows, n_columns), dtype float64.

    ``matrix``: any scipy sparse matrix (or dense array) of footprints in m² s mol⁻¹.  It is
    kept as CSR in its own floating type, without a copy when it already is one: float32 (the
    store's type) stays float32, 8 B per non-zero with its int32 column index instead of 12.
    Products accumulate in float64 all the same (sums over many cells must not lose
    precision): vectors are taken as float64 and scipy multiplies in the wider type of the
    two, converting the float32 values of the operand (a temporary float64 copy of them per
    call, which is why the observation operator forms K E once instead of applying K per
    iteration).  Other types (integers) are converted to float64.
    """

    def __init__(self, matrix, comm=None):
        matrix = sp.csr_matrix(matrix)
        self._matrix = matrix if matrix.dtype in (np.float32, np.float64) else matrix.astype(np.float64)
        self.comm = comm
        super().__init__(dtype=np.float64, shape=self._matrix.shape)

    @classmethod
    def from_store(cls, store: FootprintStore, start: int, stop: int, comm=None) -> FootprintOperator:
        """Operator over rows [start, stop) of ``store`` (read and checked by ``read_rows``)."""
        return cls(store.read_rows(start, stop), comm)

    @property
    def matrix(self) -> sp.csr_matrix:
        """The local rows K_loc (CSR, float32 or float64 as given)."""
        return self._matrix

    def _reduce(self, a: np.ndarray) -> np.ndarray:
        return a if self.comm is None else self.comm.allreduce(a)

    def _matvec(self, x):
        return self._matrix @ np.asarray(x, dtype=np.float64)

    def _matmat(self, X):
        return self._matrix @ np.asarray(X, dtype=np.float64)

    def _rmatvec(self, lam):
        return self._reduce(self.rmatvec_local(lam))

    def _rmatmat(self, lam):
        return self._reduce(self.rmatmat_local(lam))

    def rmatvec_local(self, lam) -> np.ndarray:
        """K_locᵀ λ for this rank's rows only (no reduction over ranks)."""
        return self._matrix.T @ np.asarray(lam, dtype=np.float64).ravel()

    def rmatmat_local(self, lam) -> np.ndarray:
        """K_locᵀ Λ for a (n_local_rows, k) block, without reduction over ranks."""
        return self._matrix.T @ np.asarray(lam, dtype=np.float64)
