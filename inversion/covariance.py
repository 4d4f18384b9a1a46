"""Prior error covariances B = L Lᵀ and their square roots.

A covariance of size n is an object with

    apply(x)    = B x           sqrt(w)   = L w          sqrt_T(x) = Lᵀ x
    solve(x)    = B⁻¹ x         variance()= diag(B)      logdet()  = log det B
    sample(rng) = L z, z ~ N(0, I)                       dense()   = B (n × n)
    operator()  → LinearOperator of B,   sqrt_operator() → LinearOperator of L (rmatvec = Lᵀ)

Vector arguments have shape (n,) or (n, k); the k columns are independent vectors and the
result has the same shape, float64.  The square root L is fixed once per object (the
solvers work in the control space x = x_b + L w, so every call must use the same L).
B carries the squared units of the state (e.g. (mol m-2 s-1)² for fluxes, 1 for scaling
factors).

Classes: :class:`Diagonal`, :class:`Dense`, :class:`Kronecker` (time ⊗ space) and
:class:`BlockDiagonal` (direct sum); :func:`exponential_correlation` and
:func:`scaled_correlation` build the usual dense blocks.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import LinearOperator

from inversion.linalg import CovarianceError, check_symmetric, cholesky_lower, solve_lower, solve_upper_T


class Covariance(abc.ABC):
    """Symmetric positive definite n × n matrix B with a fixed square root L (B = L Lᵀ).

    Subclasses implement the four products on 2-D arrays of shape (n, k)
    (``_apply``, ``_sqrt``, ``_sqrt_T``, ``_solve``) plus :meth:`variance`,
    :meth:`logdet` and :meth:`dense`; this base class validates shapes, handles 1-D vectors
    and builds samples and LinearOperators.
    """

    def __init__(self, size: int, name: str):
        self.size = int(size)
        self.name = name

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, size={self.size})"

    @property
    def shape(self) -> tuple[int, int]:
        return (self.size, self.size)

    # -- products -------------------------------------------------------------------------

    def apply(self, x: np.ndarray) -> np.ndarray:
        """B x."""
        return self._vectorwise(self._apply, x)

    def sqrt(self, w: np.ndarray) -> np.ndarray:
        """L w (control space → state space)."""
        return self._vectorwise(self._sqrt, w)

    def sqrt_T(self, x: np.ndarray) -> np.ndarray:
        """Lᵀ x (the adjoint of :meth:`sqrt`)."""
        return self._vectorwise(self._sqrt_T, x)

    def solve(self, x: np.ndarray) -> np.ndarray:
        """B⁻¹ x, through the factor (never an explicit inverse)."""
        return self._vectorwise(self._solve, x)

    def sample(self, rng: np.random.Generator, n_samples: int | None = None) -> np.ndarray:
        """Draws L z with z ~ N(0, I) from ``rng``: shape (n,), or (n, n_samples) if given."""
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"{self.name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")
        shape = (self.size,) if n_samples is None else (self.size, int(n_samples))
        return self.sqrt(rng.standard_normal(shape))

    def operator(self) -> LinearOperator:
        """B as a scipy LinearOperator (symmetric: rmatvec = matvec)."""
        return self._linear_operator(self.apply, self.apply)

    def sqrt_operator(self) -> LinearOperator:
        """L as a scipy LinearOperator, with rmatvec = Lᵀ."""
        return self._linear_operator(self.sqrt, self.sqrt_T)

    @abc.abstractmethod
    def variance(self) -> np.ndarray:
        """diag(B), shape (n,)."""

    @abc.abstractmethod
    def logdet(self) -> float:
        """log det B."""

    @abc.abstractmethod
    def dense(self) -> np.ndarray:
        """B as an (n, n) array (for small problems and tests)."""

    @abc.abstractmethod
    def _apply(self, x: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _sqrt(self, w: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _sqrt_T(self, x: np.ndarray) -> np.ndarray: ...

    @abc.abstractmethod
    def _solve(self, x: np.ndarray) -> np.ndarray: ...

    # -- helpers ----------------------------------------------------------------------------

    def _vectorwise(self, product: Callable[[np.ndarray], np.ndarray], x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim not in (1, 2) or x.shape[0] != self.size:
            raise ValueError(
                f"{self.name}: expected an array of shape ({self.size},) or ({self.size}, k), got {x.shape}"
            )
        columns = product(x.reshape(self.size, -1))
        return columns.reshape(x.shape)

    def _linear_operator(self, forward, adjoint) -> LinearOperator:
        # dtype is given so that scipy does not probe the operator with a trial product.
        return LinearOperator(
            self.shape, matvec=forward, rmatvec=adjoint, matmat=forward, rmatmat=adjoint, dtype=np.float64
        )


def _positive_vector(values, *, what: str, name: str, allow_empty: bool = False) -> np.ndarray:
    """``values`` as a float64 vector whose entries are all finite and > 0."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or (values.size == 0 and not allow_empty):
        raise CovarianceError(f"{name}: {what} must be a non-empty 1-D array, got shape {values.shape}")
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise CovarianceError(
            f"{name}: {int(bad.sum())} of {values.size} {what} are not finite and > 0 "
            f"(first at index {first}: {values[first]!r}); every element needs a positive "
            "uncertainty (use a small one, not zero, to keep an element close to its prior)"
        )
    return values


class Diagonal(Covariance):
    """B = diag(variance): uncorrelated errors; L = diag(√variance).

    ``allow_empty``: the local block of a distributed covariance (R on a rank that holds no
    observations) may have size 0."""

    def __init__(self, variance, *, name: str = "diagonal", allow_empty: bool = False):
        self._variance = _positive_vector(variance, what="variances", name=name, allow_empty=allow_empty)
        self._std = np.sqrt(self._variance)
        super().__init__(self._variance.size, name)

    def _apply(self, x):
        return self._variance[:, None] * x

    def _sqrt(self, w):
        return self._std[:, None] * w

    def _sqrt_T(self, x):
        return self._std[:, None] * x

    def _solve(self, x):
        return x / self._variance[:, None]

    def variance(self):
        return self._variance.copy()

    def logdet(self):
        return float(np.sum(np.log(self._variance)))

    def dense(self):
        return np.diag(self._variance)


def _left_product(matrix: np.ndarray, x: np.ndarray) -> np.ndarray:
    """matrix @ x.  An F-ordered x (the transposed view :class:`Kronecker` passes, n × m with
    m ≪ n) is multiplied as (xᵀ matrixᵀ)ᵀ: the same GEMM with the m vectors as rows, which
    OpenBLAS runs 1.5–2× faster than with them as columns (1 200² factor, m = 7: 0.9 vs
    1.4–2 ms), without copying x; the result is the F-ordered transpose of a C array."""
    if x.flags.f_contiguous and not x.flags.c_contiguous:
        return (x.T @ matrix.T).T
    return matrix @ x


def _triangular_product(lower: np.ndarray, x: np.ndarray, *, transpose: bool) -> np.ndarray:
    """L x, or Lᵀ x with ``transpose``, for the lower triangular L (either memory order) and x of
    shape (n, m).  For m ≥ 2 through BLAS trmm: n² m flops instead of GEMM's 2 n² m, and only the
    triangle is read (1 200² factor, m = 7: 0.5 vs 1.0 ms).  L is handed to BLAS in the
    Fortran order it has (LAPACK's factor), or as its transposed view Lᵀ (upper) when it is
    C-ordered, so it is never copied; the result is F-ordered.  For one vector trmm is slower
    than GEMV, so :func:`_left_product` does it."""
    if x.shape[1] < 2:
        return _left_product(lower.T if transpose else lower, x)
    if lower.flags.f_contiguous:
        return scipy.linalg.blas.dtrmm(1.0, lower, x, side=0, lower=1, trans_a=1 if transpose else 0)
    return scipy.linalg.blas.dtrmm(1.0, lower.T, x, side=0, lower=0, trans_a=0 if transpose else 1)


class Dense(Covariance):
    """A full symmetric positive definite matrix; L is its lower Cholesky factor.

    The O(n³) factorisation runs once, in the constructor, so that an ill-posed matrix is
    reported when the covariance is built rather than in the middle of a solve.  Input that is
    symmetric to 1e-10 relative is replaced by its exactly symmetric part (a + aᵀ)/2, so that
    B and L Lᵀ describe the same matrix.
    """

    def __init__(self, matrix, *, name: str = "dense"):
        matrix = check_symmetric(matrix, name=name)
        self._matrix = 0.5 * (matrix + matrix.T)
        self._factor = cholesky_lower(self._matrix, name=name)
        super().__init__(self._matrix.shape[0], name)

    def _apply(self, x):
        return _left_product(self._matrix, x)

    def _sqrt(self, w):
        return _triangular_product(self._factor, w, transpose=False)

    def _sqrt_T(self, x):
        return _triangular_product(self._factor, x, transpose=True)

    def _solve(self, x):
        return solve_upper_T(self._factor, solve_lower(self._factor, x))

    def variance(self):
        return np.diag(self._matrix).copy()

    def logdet(self):
        return float(2.0 * np.sum(np.log(np.diag(self._factor))))

    def dense(self):
        return self._matrix.copy()


class Kronecker(Covariance):
    """B = B_t ⊗ B_s for a state flattened time-major (index = t · n_space + s).

    With X the (n_t, n_s) array of a vector, (A ⊗ C) vec(X) = vec(A X Cᵀ), so every product
    is one product of the time factor and one of the space factor on reshaped arrays, and the
    n × n matrix is never formed (except by :meth:`dense`).  L = L_t ⊗ L_s, B⁻¹ = B_t⁻¹ ⊗ B_s⁻¹,
    diag(B) = diag(B_t) ⊗ diag(B_s), log det B = n_s log det B_t + n_t log det B_s.
    """

    def __init__(self, time: Covariance, space: Covariance, *, name: str = "kronecker"):
        for role, factor in (("time", time), ("space", space)):
            if not isinstance(factor, Covariance):
                raise TypeError(f"{name}: the {role} factor must be a Covariance, got {type(factor).__name__}")
        self.time = time
        self.space = space
        super().__init__(time.size * space.size, name)

    def _kron(self, product: Callable[[Covariance, np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
        """(P_t ⊗ P_s) x for the (n, k) array x, where P = ``product`` of each factor."""
        n_t, n_s, k = self.time.size, self.space.size, x.shape[1]
        # Space acts on axis 1 of X[t, s, j]: the n_t·k columns (t, j) are independent vectors.
        # For one vector (k = 1, every CG iteration) this (n_s, n_t) array is the transposed
        # view of X, no copy, and a Dense factor multiplies it by one BLAS-3 call (trmm for L
        # and Lᵀ, GEMM for B) without copying it either (_triangular_product, _left_product).
        y = product(self.space, x.reshape(n_t, n_s, k).transpose(1, 0, 2).reshape(n_s, n_t * k))
        # Time acts on axis 0: the n_s·k columns (s, j); again a view for k = 1.
        y = product(self.time, y.reshape(n_s, n_t, k).transpose(1, 0, 2).reshape(n_t, n_s * k))
        return y.reshape(n_t * n_s, k)

    def _apply(self, x):
        return self._kron(Covariance.apply, x)

    def _sqrt(self, w):
        return self._kron(Covariance.sqrt, w)

    def _sqrt_T(self, x):
        return self._kron(Covariance.sqrt_T, x)

    def _solve(self, x):
        return self._kron(Covariance.solve, x)

    def variance(self):
        return np.kron(self.time.variance(), self.space.variance())

    def logdet(self):
        return self.space.size * self.time.logdet() + self.time.size * self.space.logdet()

    def dense(self):
        return np.kron(self.time.dense(), self.space.dense())


class BlockDiagonal(Covariance):
    """Direct sum B = diag(B_1, …, B_m); the state is the concatenation of the blocks' states.

    Used for state vectors made of independent parts (e.g. fluxes ⊕ boundary-condition
    scalings); L = diag(L_1, …, L_m).
    """

    def __init__(self, blocks: Sequence[Covariance], *, name: str = "block"):
        blocks = list(blocks)
        if not blocks:
            raise ValueError(f"{name}: needs at least one block")
        for i, block in enumerate(blocks):
            if not isinstance(block, Covariance):
                raise TypeError(f"{name}: block {i} must be a Covariance, got {type(block).__name__}")
        self.blocks = blocks
        self._bounds = np.concatenate([[0], np.cumsum([block.size for block in blocks])])
        super().__init__(int(self._bounds[-1]), name)

    def _blockwise(self, product: Callable[[Covariance, np.ndarray], np.ndarray], x: np.ndarray) -> np.ndarray:
        out = np.empty_like(x)
        for block, start, stop in zip(self.blocks, self._bounds[:-1], self._bounds[1:]):
            out[start:stop] = product(block, x[start:stop])
        return out

    def _apply(self, x):
        return self._blockwise(Covariance.apply, x)

    def _sqrt(self, w):
        return self._blockwise(Covariance.sqrt, w)

    def _sqrt_T(self, x):
        return self._blockwise(Covariance.sqrt_T, x)

    def _solve(self, x):
        return self._blockwise(Covariance.solve, x)

    def variance(self):
        return np.concatenate([block.variance() for block in self.blocks])

    def logdet(self):
        return float(sum(block.logdet() for block in self.blocks))

    def dense(self):
        return scipy.linalg.block_diag(*(block.dense() for block in self.blocks))


def exponential_correlation(distance, length: float) -> np.ndarray:
    """Correlation exp(−d/ℓ) for distances d ≥ 0 and correlation length ℓ > 0 (same units).

    The exponential kernel is positive definite for Euclidean distances in any dimension and
    for great-circle distances on the sphere, so a matrix of pairwise distances between
    distinct points gives a valid correlation matrix (it becomes ill-conditioned when ℓ is
    much larger than the point spacing).
    """
    length = float(length)
    if not (np.isfinite(length) and length > 0):
        raise ValueError(f"correlation length must be > 0, got {length!r}")
    distance = np.asarray(distance, dtype=np.float64)
    bad = ~(np.isfinite(distance) & (distance >= 0))
    if bad.any():
        raise ValueError(
            f"distances must be finite and >= 0: {int(bad.sum())} are not "
            f"(first: {distance.ravel()[np.flatnonzero(bad)[0]]!r})"
        )
    return np.exp(-distance / length)


def scaled_correlation(sigma, correlation, *, name: str) -> Dense:
    """Dense covariance B = diag(σ) C diag(σ), i.e. B_ij = σ_i C_ij σ_j.

    σ (> 0, the prior uncertainties, in state units) and C (a correlation matrix, unit
    diagonal) give B in squared state units.
    """
    sigma = _positive_vector(sigma, what="standard deviations", name=name)
    correlation = check_symmetric(correlation, name=f"{name} correlation")
    if correlation.shape[0] != sigma.size:
        raise ValueError(
            f"{name}: {sigma.size} standard deviations but a correlation matrix of shape {correlation.shape}"
        )
    # A unit diagonal catches a covariance passed where a correlation is expected (σ applied twice).
    if not np.allclose(np.diag(correlation), 1.0, rtol=0.0, atol=1e-12):
        raise ValueError(f"{name}: the correlation matrix must have a unit diagonal")
    return Dense(sigma[:, None] * correlation * sigma[None, :], name=name)
