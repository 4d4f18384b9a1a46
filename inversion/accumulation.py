"""The analytical solver's long phase as a resumable sequence of blocks of observation rows.

Both forms of :mod:`inversion.factorisation` build their matrix as a sum or a stack of
contributions of blocks of observation rows I:

* state form:        F = Σ_I H_Iᵀ R_I⁻¹ H_I        (n_state × n_state, mol⁻² mol² … per (state unit)²)
* observation form:  S[I, :] = H_I B Hᵀ            (n_obs × n_obs, mol² mol⁻²)

Each rank adds the blocks of its own observation rows into a local array; the sum over ranks
of those arrays is the matrix (for the observation form every row is computed by exactly one
rank, so the sum only stacks rows and is exact).  :class:`BlockState` is what a checkpoint
holds: that sum for the rows done so far, which rows are done, and — once the matrix is
complete and factorised — the Cholesky factor instead (a resume then skips the n³ phase).

Rows, not block numbers, are recorded, so a resume may use another block size or rank count:
each rank accumulates its rows not yet done (:func:`pending_blocks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Default block: rows whose dense working arrays (rows × max(n_state, n_obs) doubles) take
# about this many bytes — large enough for efficient BLAS, small enough to checkpoint often.
BLOCK_BYTES = 256 * 2**20


def default_block_rows(width: int) -> int:
    """Rows per block when ``solver.block_rows`` is not set: ≈ :data:`BLOCK_BYTES` of doubles
    for rows of ``width`` elements."""
    return max(1, BLOCK_BYTES // (8 * max(1, width)))


def pending_blocks(done: np.ndarray, start: int, stop: int, block_rows: int) -> list[tuple[int, int]]:
    """Contiguous row ranges (i₀, i₁) of at most ``block_rows`` rows covering the rows of
    ``start:stop`` that ``done`` (bool, one per observation) does not mark, in order."""
    todo = np.flatnonzero(~done[start:stop]) + start
    if todo.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(todo) > 1) + 1  # starts of contiguous runs
    blocks = []
    for run in np.split(todo, breaks):
        for i0 in range(int(run[0]), int(run[-1]) + 1, block_rows):
            blocks.append((i0, min(i0 + block_rows, int(run[-1]) + 1)))
    return blocks


@dataclass
class BlockState:
    """The analytical solver's accumulation after ``iteration`` steps (one block per rank each).

    ``form``: ``state`` or ``observation``; ``n_state``: the state size; ``done``: bool per
    observation, True where the row's contribution is in ``total``; ``total``: the sum over
    ranks of the accumulated arrays (F, or the rows of H B Hᵀ with zeros for rows not done) —
    or, when ``factored``, the lower Cholesky factor of I + G (state form) or of S.
    """

    form: str
    n_state: int
    done: np.ndarray
    total: np.ndarray
    iteration: int
    factored: bool = False

    @property
    def size(self) -> int:
        return self.n_state

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def to_dict(self) -> dict:
        # C order: HDF5 stores row-major, and a Fortran-ordered factor (LAPACK) writes ~2× slower
        return {"form": self.form, "n_state": self.n_state, "done": self.done.astype(np.uint8),
                "total": np.ascontiguousarray(self.total), "iteration": self.iteration, "factored": self.factored}

    @classmethod
    def from_dict(cls, data: dict) -> BlockState:
        return cls(form=str(data["form"]), n_state=int(data["n_state"]), done=np.asarray(data["done"]).astype(bool),
                   total=np.asarray(data["total"], dtype=np.float64), iteration=int(data["iteration"]),
                   factored=bool(data["factored"]))
