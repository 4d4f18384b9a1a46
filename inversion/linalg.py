"""Dense linear-algebra kernels shared by the covariances and the solvers.

Every symmetric positive definite matrix in tanhui is factorised here, as B = L Lᵀ with L
lower triangular, so input validation, error messages and the BLAS threading workaround
live in one place.  Inverses are never formed to solve systems (that is done with the
triangular factor); the one exception, :func:`cholesky_inverse`, is for when the inverse is
itself the result wanted, e.g. the posterior covariance (I + G)⁻¹ in control space.
"""

from __future__ import annotations

import contextlib

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_limits

# Largest tolerated relative asymmetry max|a_ij - a_ji| / max|a_ij| of a "symmetric" matrix:
# matrices assembled by floating-point arithmetic (e.g. diag(σ) C diag(σ)) are symmetric to a
# few ulps, while anything larger is a genuine error in the input.
SYMMETRY_RTOL = 1e-10

# On this project's CPUs the OpenBLAS bundled with numpy/scipy segfaults in dense Cholesky
# for n >= 16 000 with 2 threads; from this size on the factorisation runs single-threaded
# (a margin below the observed crash, and large enough that the lost speed-up is irrelevant
# next to a reliable run).
SINGLE_THREAD_CHOLESKY_N = 12_000

# Rows per block when scanning for asymmetry, so the check needs O(block · n) scratch memory
# instead of a second n × n matrix (a 16 000² matrix is already 2 GB).
_SYMMETRY_BLOCK = 512


_SINGULAR_HINT = (
    "check for duplicated elements, correlation lengths much larger than the element spacing, "
    "or zero variances"
)


class CovarianceError(ValueError):
    """A covariance matrix is not symmetric positive definite (or not even finite)."""


def check_symmetric(a, *, name: str) -> np.ndarray:
    """Return ``a`` as a float64 non-empty square matrix after checking that it is finite and symmetric.

    Symmetric means max|a_ij − a_ji| ≤ 1e-10 · max|a_ij|.  No copy is made when ``a`` is
    already a float64 array.  Raises :class:`CovarianceError` naming ``name`` otherwise.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.size == 0:
        raise CovarianceError(f"{name} must be a non-empty square matrix, got shape {a.shape}")
    finite = np.isfinite(a)
    if not finite.all():
        i, j = np.argwhere(~finite)[0]
        raise CovarianceError(
            f"{name} has {int(np.count_nonzero(~finite))} non-finite entries "
            f"(first at row {i}, column {j}): fill gaps in the variances and correlations"
        )
    n = a.shape[0]
    scale = max(a.max(), -a.min())
    asymmetry = 0.0
    for start in range(0, n, _SYMMETRY_BLOCK):
        stop = min(n, start + _SYMMETRY_BLOCK)
        asymmetry = max(asymmetry, float(np.abs(a[start:stop] - a[:, start:stop].T).max()))
    if asymmetry > SYMMETRY_RTOL * scale:
        raise CovarianceError(
            f"{name} is not symmetric: max|a_ij - a_ji| / max|a_ij| = {asymmetry / scale:.3e} "
            f"> {SYMMETRY_RTOL:g}; build it as a symmetric matrix (e.g. diag(sigma) C diag(sigma))"
        )
    return a


def cholesky_lower(a, *, name: str) -> np.ndarray:
    """Lower Cholesky factor L of a symmetric positive definite matrix, a = L Lᵀ.

    ``a`` is checked with :func:`check_symmetric`; LAPACK then reads only its lower triangle.
    Raises :class:`CovarianceError` naming ``name`` when ``a`` is not finite, not symmetric,
    not positive definite, or singular to working precision (a Cholesky pivot l_ii² below
    n·eps·a_ii, which LAPACK does not report).  Runs single-threaded for
    n ≥ ``SINGLE_THREAD_CHOLESKY_N`` (see the comment on that constant).
    """
    a = check_symmetric(a, name=name)
    n = a.shape[0]
    try:
        with _blas_guard(n):
            factor = scipy.linalg.cholesky(a, lower=True, check_finite=True)
    except np.linalg.LinAlgError as exc:
        raise CovarianceError(
            f"{name} is not positive definite (Cholesky failed at a leading minor: {exc}); {_SINGULAR_HINT}"
        ) from exc
    # The pivot l_ii² is the variance of element i conditional on elements 0..i-1, computed as
    # a_ii minus a sum of i terms, so its rounding error is up to about n·eps·a_ii.  A pivot below
    # that is noise: the matrix is singular to working precision (typically duplicated
    # elements), even though LAPACK happened to find a positive number.
    pivots = np.diag(factor) ** 2 / np.diag(a)
    worst = int(np.argmin(pivots))
    if pivots[worst] <= n * np.finfo(np.float64).eps:
        raise CovarianceError(
            f"{name} is numerically singular: the conditional variance of element {worst} given "
            f"the elements before it is {pivots[worst]:.1e} of its variance, below the rounding "
            f"level; {_SINGULAR_HINT}"
        )
    return factor


def _blas_guard(n: int):
    """One BLAS thread for dense factorisations and products of order ``n`` ≥
    ``SINGLE_THREAD_CHOLESKY_N`` (the OpenBLAS crash described at that constant), else as set."""
    return threadpool_limits(1, user_api="blas") if n >= SINGLE_THREAD_CHOLESKY_N else contextlib.nullcontext()


def _on_factor(routine, name: str, l: np.ndarray) -> np.ndarray:
    """LAPACK ``routine`` (dpotri or dtrtri) on the lower factor, guarded; singular → error."""
    with _blas_guard(l.shape[0]):
        out, info = routine(l, lower=1)
    if info != 0:
        raise np.linalg.LinAlgError(f"{name} failed (info = {info}): the Cholesky factor is singular")
    return out


def cholesky_inverse(l: np.ndarray) -> np.ndarray:
    """a⁻¹ = L⁻ᵀ L⁻¹ from the lower Cholesky factor L of a (LAPACK potri: n³ flops, against
    2 n³ for L⁻¹ by a triangular solve and n³ more for the product), symmetric.  Single-threaded
    from ``SINGLE_THREAD_CHOLESKY_N`` on, as the factorisation."""
    inv = _on_factor(scipy.linalg.lapack.dpotri, "potri", l)
    lower = np.tril(inv)
    return lower + np.tril(lower, -1).T


def cholesky_inverse_diagonal(l: np.ndarray) -> np.ndarray:
    """diag(a⁻¹) from the lower Cholesky factor L of a: a⁻¹ = L⁻ᵀ L⁻¹, so (a⁻¹)_jj is the
    squared norm of column j of L⁻¹ (LAPACK trtri, n³/3 flops and one n × n scratch, instead
    of the whole inverse).  Single-threaded from ``SINGLE_THREAD_CHOLESKY_N`` on, as the
    factorisation."""
    return _column_norms2_lower(_on_factor(scipy.linalg.lapack.dtrtri, "trtri", l))


def _column_norms2_lower(inv: np.ndarray, block: int = 2048) -> np.ndarray:
    """Σ_i inv[i, j]² over the lower triangle (i ≥ j), by row blocks (trtri leaves the upper
    triangle untouched, so it must not be read)."""
    n = inv.shape[0]
    out = np.zeros(n)
    for start in range(0, n, block):
        rows = np.tril(inv[start:start + block], k=start)
        out += np.einsum("ij,ij->j", rows, rows)
    return out


def cross_product(w: np.ndarray) -> np.ndarray:
    """wᵀ w (k × k) for w (n × k).  numpy computes this shape of product with BLAS syrk,
    which on this project's CPUs crashes like the Cholesky (segfault with 2 threads, seen for
    k = 20 000): single-threaded from ``SINGLE_THREAD_CHOLESKY_N`` on."""
    with _blas_guard(w.shape[1]):
        return w.T @ w


def solve_lower(l: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve L x = b for x, with L lower triangular; ``b`` of shape (n,) or (n, k)."""
    return scipy.linalg.solve_triangular(l, b, lower=True)


def solve_upper_T(l: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve Lᵀ x = b for x, given the lower triangular L; ``b`` of shape (n,) or (n, k)."""
    return scipy.linalg.solve_triangular(l, b, lower=True, trans="T")
