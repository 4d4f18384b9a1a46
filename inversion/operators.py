"""The observation operator H of the state, for this rank's observations.

    H x = K (E x_flux) + S x_offsets          (mol mol⁻¹)

K: footprints (m² s mol⁻¹, this rank's rows), E: state → gridded flux (mol m⁻² s⁻¹ per unit
scaling factor), S: one-hot site membership of each observation (background offsets).
The forward needs no communication.  The adjoint applies Kᵀ and Eᵀ locally and then reduces
once over ranks, so the only message is one state-sized ``Allreduce``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from transport.operator import FootprintOperator


class ObservationOperator(LinearOperator):
    def __init__(self, K: FootprintOperator, E: sp.csr_matrix, site_index: np.ndarray, n_sites: int, comm):
        self.K = K
        self.E = E
        self.site_index = np.asarray(site_index, dtype=np.int64)
        self.n_sites = n_sites
        self.comm = comm
        self.n_flux = E.shape[1]
        super().__init__(dtype=np.float64, shape=(K.shape[0], self.n_flux + n_sites))

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64).ravel()
        out = self.K.matvec(self.E @ x[: self.n_flux])
        if self.n_sites:
            out = out + x[self.n_flux:][self.site_index]
        return out

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        out = self.K.matmat(self.E @ X[: self.n_flux])
        if self.n_sites:
            out = out + X[self.n_flux:][self.site_index]
        return out

    def _local_adjoint(self, lam: np.ndarray) -> np.ndarray:
        flux = self.E.T @ self.K.rmatmat_local(lam) if lam.ndim == 2 else self.E.T @ self.K.rmatvec_local(lam)
        if not self.n_sites:
            return flux
        shape = (self.n_sites,) + lam.shape[1:]
        offsets = np.zeros(shape)
        np.add.at(offsets, self.site_index, lam)
        return np.concatenate([flux, offsets])

    def _rmatvec(self, lam: np.ndarray) -> np.ndarray:
        return self.comm.allreduce(self._local_adjoint(np.asarray(lam, dtype=np.float64).ravel()))

    def _rmatmat(self, lam: np.ndarray) -> np.ndarray:
        return self.comm.allreduce(self._local_adjoint(np.asarray(lam, dtype=np.float64)))

    def _adjoint(self) -> LinearOperator:
        return LinearOperator(shape=(self.shape[1], self.shape[0]), dtype=self.dtype,
                              matvec=self._rmatvec, rmatvec=self._matvec,
                              matmat=self._rmatmat, rmatmat=self._matmat)

    def jacobian_local(self) -> np.ndarray:
        """Dense H rows of this rank (n_local × n_state), for the analytical solver."""
        flux = (self.K.matrix @ self.E).toarray()
        offsets = np.zeros((self.shape[0], self.n_sites))
        offsets[np.arange(self.shape[0]), self.site_index] = 1.0
        return np.hstack([flux, offsets])
