"""Mapping inventory time steps onto the flux time axis: a sparse weight matrix W.

The flux of flux step k is f_k = Σ_j W[k, j] v_j, with v_j the inventory value of step j
(mol m⁻² s⁻¹, a rate, so averaging is the right operation).  Three methods:

* ``step`` (piecewise constant): f_k is the mean of the inventory over flux step k,
  W[k, j] = |k ∩ j| / |k|.  Exact for inventories coarser than the flux steps (monthly →
  3-hourly: every step of a month gets the month's value) and finer ones (hourly → 3-hourly:
  the mean of the three hours); the time integral over any union of whole flux steps is
  conserved.  Identical axes give W = I exactly.
* ``linear``: v is interpolated linearly in time between the midpoints m_j of the inventory
  steps (held constant before the first and after the last midpoint), and f_k is the exact
  mean of that interpolant over flux step k: W[k, j] = (1/|k|) ∫_k φ_j(t) dt with φ_j the
  hat function of node j.  Integrated exactly by the trapezoid rule on the sub-intervals
  between all step bounds and midpoints (the interpolant is linear on each).
* ``constant``: a single inventory field used for every flux step (W = 1); no time
  coverage is required.

``step`` and ``linear`` require every flux step to lie wholly inside the inventory's steps
(no extrapolation, no gaps): otherwise :class:`~transport.errors.InputError` names the first
uncovered flux step and the inventory's period.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from transport.errors import InputError
from transport.grid import TimeAxis

METHODS = ("step", "linear", "constant")


def _seconds(t: np.ndarray, origin: np.datetime64) -> np.ndarray:
    return (np.asarray(t).astype("datetime64[s]") - origin).astype(np.int64)


def _span(axis: TimeAxis) -> str:
    return f"{axis.start[0]}…{axis.end[-1]} ({axis.size} steps)"


def _pieces(source: TimeAxis, target: TimeAxis) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cut time at every step bound of both axes: (target step k, source step j, width in s)
    of each piece (−1 where no step holds it), plus target starts/ends in s."""
    origin = target.start[0]
    s0, s1 = _seconds(source.start, origin), _seconds(source.end, origin)
    t0, t1 = _seconds(target.start, origin), _seconds(target.end, origin)
    points = np.unique(np.concatenate([s0, s1, t0, t1]))
    left = points[:-1]
    return _locate(t0, t1, left), _locate(s0, s1, left), np.diff(points), t0, t1


def check_covered(source: TimeAxis, target: TimeAxis, *, path: Path, variable: str) -> None:
    """Every target step must lie inside the union of the source steps."""
    k, j, width, t0, t1 = _pieces(source, target)
    inside = (k >= 0) & (j >= 0)
    covered = np.bincount(k[inside], weights=width[inside], minlength=target.size)
    short = np.flatnonzero(covered < t1 - t0)
    if short.size:
        first = short[0]
        raise InputError(path, variable, f"the inventory does not cover the flux period: {short.size} of the "
                         f"{target.size} flux steps are not (fully) inside its time steps (first "
                         f"{target.start[first]}…{target.end[first]}; inventory {_span(source)}; flux axis "
                         f"{_span(target)})",
                         "give the inventory for the whole flux period (run period plus footprint back-time), or "
                         'use time_mapping = "constant" for a time-invariant field')


def time_weights(source: TimeAxis | None, target: TimeAxis, method: str, *, path: Path,
                 variable: str) -> sp.csr_matrix:
    """W (target.size × n_source) for ``method``; n_source = 1 when ``source`` is None."""
    if method not in METHODS:
        raise ValueError(f"time mapping must be one of {METHODS}, got {method!r}")
    if method == "constant":
        if source is not None and source.size != 1:
            raise InputError(path, variable, f'time_mapping = "constant" needs a single field, the inventory has '
                             f"{source.size} time steps ({_span(source)})", 'use time_mapping = "step" or "linear"')
        return sp.csr_matrix(np.ones((target.size, 1)))
    if source is None:
        raise InputError(path, variable, "the inventory's time steps are unknown (no time dimension, or a single "
                         "time stamp without bounds)", 'use time_mapping = "constant" for a time-invariant field, or '
                         'set time_step (e.g. "month") or year for this sector')
    check_covered(source, target, path=path, variable=variable)
    if method == "step":
        k, j, width, t0, t1 = _pieces(source, target)
        keep = (k >= 0) & (j >= 0)
        weight = width[keep] / (t1 - t0)[k[keep]]
        return sp.csr_matrix((weight, (k[keep], j[keep])), shape=(target.size, source.size))
    origin = target.start[0]
    s0, s1 = _seconds(source.start, origin), _seconds(source.end, origin)
    t0, t1 = _seconds(target.start, origin), _seconds(target.end, origin)
    # linear: trapezoid rule on sub-intervals between bounds and midpoints (all exact halves)
    mid = 0.5 * (s0 + s1).astype(np.float64)
    points = np.unique(np.concatenate([t0, t1, mid]).astype(np.float64))
    left, right = points[:-1], points[1:]
    k = _locate(t0, t1, left)
    inside = k >= 0
    left, right, k = left[inside], right[inside], k[inside]
    scale = 0.5 * (right - left) / (t1 - t0)[k]
    rows, cols, vals = [], [], []
    for x in (left, right):
        j0, j1, w1 = _hat_weights(mid, x)
        rows += [k, k]
        cols += [j0, j1]
        vals += [scale * (1.0 - w1), scale * w1]
    W = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(target.size, source.size))
    W.eliminate_zeros()
    return W


def _locate(start: np.ndarray, end: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the step [start, end) holding each x (−1 if none); steps sorted, disjoint."""
    i = np.searchsorted(start, x, side="right") - 1
    ok = (i >= 0) & (x < end[np.maximum(i, 0)])
    return np.where(ok, i, -1)


def _hat_weights(nodes: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation of node values at x, held constant outside the nodes:
    value(x) = (1 − w)·v[j0] + w·v[j1]."""
    n = nodes.size
    if n == 1:
        zero = np.zeros(x.shape, dtype=np.int64)
        return zero, zero, np.zeros(x.shape)
    j0 = np.clip(np.searchsorted(nodes, x, side="right") - 1, 0, n - 2)
    w = np.clip((x - nodes[j0]) / (nodes[j0 + 1] - nodes[j0]), 0.0, 1.0)
    return j0, j0 + 1, w
