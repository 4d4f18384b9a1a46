"""Conformance checks that every linear operator and covariance in tanhui must pass.

Generic algorithms (CG, the analytical solver, posterior sampling) rely only on products and
inner products, so each operator is tested once against the same contract instead of each
algorithm being tested against each operator:

- :func:`check_linear_operator` — shapes, dtype, linearity, the dot-product (adjoint) test
  and agreement of block products with single products, serial or with observation rows
  distributed over MPI ranks;
- :func:`check_covariance` — the covariance contract of :mod:`inversion.covariance`;
- :func:`assert_allclose_rel` — comparison with a readable relative-error message.

All checks raise ``AssertionError`` with a message that says what failed and by how much.
Tolerances are *scale-aware*: an error is compared with the size of the quantities whose
rounding produced it, not with a result that may itself be small through cancellation.
"""

from __future__ import annotations

import copy

import numpy as np

from inversion.parallel import SerialComm

_BLOCK = 3  # columns of the block used to compare matmat with matvec


def assert_allclose_rel(actual, desired, rtol: float, what: str) -> None:
    """Assert max|actual − desired| ≤ rtol · max|desired| (same shape; NaN always fails)."""
    actual = np.asarray(actual, dtype=np.float64)
    desired = np.asarray(desired, dtype=np.float64)
    if actual.shape != desired.shape:
        raise AssertionError(f"{what}: shape {actual.shape}, expected {desired.shape}")
    error = np.abs(actual - desired)
    error = np.where(np.isnan(error), np.inf, error)
    scale = float(np.abs(desired).max(initial=0.0))
    worst = float(error.max(initial=0.0))
    if not worst <= rtol * scale:
        index = np.unravel_index(np.argmax(error), error.shape)
        relative = worst / scale if scale > 0 else np.inf
        raise AssertionError(
            f"{what}: max relative error {relative:.3e} > rtol {rtol:.1e} "
            f"(|actual - desired| = {worst:.3e} at index {tuple(int(i) for i in index)}: "
            f"actual {actual[index]!r}, desired {desired[index]!r}; max|desired| = {scale:.3e})"
        )


def check_linear_operator(
    op,
    rng: np.random.Generator,
    *,
    comm=None,
    distributed_rows: bool = False,
    rtol: float = 1e-12,
    n_trials: int = 3,
) -> None:
    """Check that ``op`` (with ``shape``, ``matvec``, ``rmatvec``, ``matmat``, optionally
    ``rmatmat``, as a scipy LinearOperator) is a linear map with a correct adjoint.

    For ``n_trials`` random x, x' (length n) and y (length m), and scalars a, c:

    - ``op.shape`` is a pair of ints (m, n); matvec returns a finite float64 (m,),
      rmatvec a finite float64 (n,);
    - linearity: ‖A(a x + c x') − a Ax − c Ax'‖ ≤ rtol · (|a|‖Ax‖ + |c|‖Ax'‖), and the same
      for Aᵀ;
    - dot-product test: |⟨Ax, y⟩ − ⟨x, Aᵀy⟩| ≤ rtol · max(‖Ax‖‖y‖, ‖x‖‖Aᵀy‖).  By
      Cauchy–Schwarz the right-hand norms bound every partial sum of the two inner products,
      so they, not the possibly cancelled ⟨Ax, y⟩, set the size of the rounding error;
    - matmat of an n × 3 block equals three matvecs, and rmatmat (when ``op`` has one) three
      rmatvecs, to rtol relative (Frobenius norm).

    With ``distributed_rows`` the rows (observations) are split over the ranks of ``comm``:
    ``op.shape[0]`` is this rank's number of rows, matvec returns this rank's rows of Ax,
    rmatvec takes this rank's rows of y and returns the complete Aᵀy (already summed over
    ranks) on every rank.  x is drawn from ``rng`` identically on every rank (callers seed it
    identically), y differs between ranks, and inner products and norms over rows are summed
    with ``comm.allreduce_scalar``.  Every rank takes every pass/fail decision together, so a
    failure raises on all ranks instead of leaving the others waiting in a collective call.
    """
    comm = SerialComm() if comm is None else comm
    shape = getattr(op, "shape", None)
    valid_shape = (
        isinstance(shape, tuple)
        and len(shape) == 2
        and all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in shape)
    )
    _require(comm, valid_shape, "shape", f"op.shape must be a pair of non-negative ints, got {shape!r}")
    m, n = (int(d) for d in shape)
    rows = _Space(comm, distributed_rows)
    cols = _Space(comm, False)

    for _ in range(n_trials):
        x, x2 = rng.standard_normal(n), rng.standard_normal(n)
        a, c = rng.standard_normal(2)
        x_block = rng.standard_normal((n, _BLOCK))
        # A generator derived from one draw of the shared rng, mixed with the rank, gives every
        # rank different rows of y while leaving ``rng`` in the same state on every rank.
        row_rng = np.random.default_rng([int(rng.integers(2**62)), comm.rank])
        y, y2 = row_rng.standard_normal(m), row_rng.standard_normal(m)
        y_block = row_rng.standard_normal((m, _BLOCK))

        ax = _output(comm, op.matvec(x), (m,), "matvec")
        aty = _output(comm, op.rmatvec(y), (n,), "rmatvec")
        _check_linearity(comm, op.matvec, x, ax, x2, a, c, rows, rtol, "matvec")
        _check_linearity(comm, op.rmatvec, y, aty, y2, a, c, cols, rtol, "rmatvec")

        forward = rows.dot(ax, y)
        backward = cols.dot(x, aty)
        bound = rtol * max(rows.norm(ax) * rows.norm(y), cols.norm(x) * cols.norm(aty))
        _require(
            comm,
            abs(forward - backward) <= bound,
            "adjoint (dot-product test)",
            f"<A x, y> = {forward!r} but <x, A^T y> = {backward!r}; difference "
            f"{abs(forward - backward):.3e} > {bound:.3e} = rtol * max(|Ax||y|, |x||A^T y|): "
            "rmatvec is not the adjoint of matvec",
        )

        _check_block(comm, op.matmat, op.matvec, x_block, (m, _BLOCK), rows, rtol, "matmat")
        if hasattr(op, "rmatmat"):
            _check_block(comm, op.rmatmat, op.rmatvec, y_block, (n, _BLOCK), cols, rtol, "rmatmat")


def check_covariance(cov, rng: np.random.Generator, *, rtol: float = 1e-12) -> None:
    """Check the covariance contract of :class:`inversion.covariance.Covariance`.

    - ``operator()`` passes :func:`check_linear_operator` (its rmatvec is B itself, so the
      dot-product test is a symmetry test of B); ``sqrt_operator()`` passes it (L and Lᵀ are
      an adjoint pair);
    - apply/sqrt/sqrt_T/solve return float64 arrays of the input's shape, (n,) or (n, k);
    - ``dense()`` is an (n, n) symmetric positive definite matrix and B x = dense() x;
    - L Lᵀ x = B x; the residual of solve is small: ‖B solve(x) − x‖ ≤ rtol ‖B‖ ‖solve(x)‖
      (a backward-error bound, independent of the condition number, unlike solve(Bx) = x);
    - ``variance()`` = diag(dense());
    - ``logdet()`` = log det dense() within rtol · n · cond(B) (first-order perturbation bound:
      an error ε‖B‖ in B moves log det B by at most n ε ‖B‖ / λ_min);
    - ``sample(rng)`` = sqrt(z) with z = rng.standard_normal(n) drawn from the same generator
      state, and ``sample(rng, k)`` has shape (n, k).

    Products of B are compared within rtol · ‖B‖₂ · ‖input‖.  Sample statistics are not
    checked here: they are statistical and belong in the tests.
    """
    n = cov.size
    check_linear_operator(cov.operator(), rng, rtol=rtol)
    check_linear_operator(cov.sqrt_operator(), rng, rtol=rtol)

    dense = np.asarray(cov.dense())
    if dense.shape != (n, n) or dense.dtype != np.float64:
        raise AssertionError(f"dense(): {dense.dtype} array of shape {dense.shape}, expected float64 ({n}, {n})")
    assert_allclose_rel(dense.T, dense, rtol, "dense() symmetry")
    eigenvalues = np.linalg.eigvalsh(dense)
    if not eigenvalues[0] > 0:
        raise AssertionError(f"dense() is not positive definite: smallest eigenvalue {eigenvalues[0]!r}")
    norm_b = eigenvalues[-1]

    def assert_product(actual, desired, argument, what):
        error = np.linalg.norm(actual - desired)
        bound = rtol * norm_b * np.linalg.norm(argument)
        if not error <= bound:
            raise AssertionError(f"{what}: error {error:.3e} > rtol * |B| * |x| = {bound:.3e}")

    for x in (rng.standard_normal(n), rng.standard_normal((n, _BLOCK))):
        for method in (cov.apply, cov.sqrt, cov.sqrt_T, cov.solve):
            out = method(x)
            if not (isinstance(out, np.ndarray) and out.shape == x.shape and out.dtype == np.float64):
                raise AssertionError(
                    f"{method.__name__}: returned {type(out).__name__} "
                    f"{getattr(out, 'dtype', '')} {getattr(out, 'shape', '')}, expected float64 {x.shape}"
                )
        bx = cov.apply(x)
        assert_product(bx, dense @ x, x, "apply(x) vs dense() @ x")
        assert_product(cov.sqrt(cov.sqrt_T(x)), bx, x, "sqrt(sqrt_T(x)) vs apply(x)")
        solution = cov.solve(x)
        assert_product(cov.apply(solution), x, solution, "residual of solve(x)")

    assert_allclose_rel(cov.variance(), np.diag(dense), rtol, "variance() vs diag(dense())")

    sign, reference = np.linalg.slogdet(dense)
    tolerance = rtol * n * norm_b / eigenvalues[0]
    if not (sign > 0 and abs(cov.logdet() - reference) <= tolerance):
        raise AssertionError(
            f"logdet() = {cov.logdet()!r} but slogdet(dense()) = ({sign}, {reference!r}); "
            f"tolerance {tolerance:.3e}"
        )

    twin = copy.deepcopy(rng)
    assert_allclose_rel(cov.sample(rng), cov.sqrt(twin.standard_normal(n)), rtol, "sample(rng) vs sqrt(z)")
    block = cov.sample(rng, _BLOCK)
    if block.shape != (n, _BLOCK) or not np.isfinite(block).all():
        raise AssertionError(f"sample(rng, {_BLOCK}): shape {block.shape}, expected ({n}, {_BLOCK}), finite")


class _Space:
    """Inner products and norms of vectors that are either replicated or split over ranks."""

    def __init__(self, comm, distributed: bool):
        self.comm = comm
        self.distributed = distributed

    def dot(self, u: np.ndarray, v: np.ndarray) -> float:
        local = float(np.vdot(u, v))
        return self.comm.allreduce_scalar(local) if self.distributed else local

    def norm(self, u: np.ndarray) -> float:
        return float(np.sqrt(self.dot(u, u)))


def _require(comm, ok: bool, what: str, detail: str) -> None:
    """Raise AssertionError on every rank if ``ok`` is False on any rank."""
    failures = comm.allreduce_scalar(0.0 if ok else 1.0)
    if failures:
        raise AssertionError(f"{what}: {detail}" if not ok else f"{what}: failed on {int(failures)} other rank(s)")


def _output(comm, value, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``value`` as an array after requiring a finite float64 array of ``shape``."""
    value = np.asarray(value)
    ok = value.shape == shape and value.dtype == np.float64 and bool(np.isfinite(value).all())
    _require(comm, ok, what, f"returned a {value.dtype} array of shape {value.shape}, expected finite float64 {shape}")
    return value


def _check_linearity(comm, f, u, fu, v, a, c, space: _Space, rtol: float, what: str) -> None:
    """f(a u + c v) = a f(u) + c f(v), given the already checked f(u)."""
    fv = _output(comm, f(v), fu.shape, what)
    combined = _output(comm, f(a * u + c * v), fu.shape, what)
    error = space.norm(combined - (a * fu + c * fv))
    bound = rtol * (abs(a) * space.norm(fu) + abs(c) * space.norm(fv))
    _require(
        comm,
        error <= bound,
        f"linearity of {what}",
        f"|f(a u + c v) - (a f(u) + c f(v))| = {error:.3e} > {bound:.3e} = rtol * (|a||f(u)| + |c||f(v)|)",
    )


def _check_block(comm, block_product, single_product, block, shape, space: _Space, rtol: float, what: str) -> None:
    result = _output(comm, block_product(block), shape, what)
    expected = np.column_stack([single_product(column) for column in block.T])
    error = space.norm(result - expected)
    bound = rtol * space.norm(expected)
    _require(
        comm,
        error <= bound,
        what,
        f"differs from column-by-column products: |difference| = {error:.3e} > {bound:.3e} = rtol * |expected|",
    )
