"""Horizontal grid, flux time axis and great-circle distance.

Column convention (used by the whole project).  A gridded field over (time, lat, lon) with
``nt`` time steps on an ``nlat × nlon`` grid is flattened in C order::

    col = (t * nlat + i) * nlon + j        n_columns = nt * nlat * nlon

so footprint rows, flux vectors and ``field.reshape(nt, nlat, nlon)`` all agree.

Angles are in degrees (latitude degrees_north, longitude degrees_east), lengths in m unless a
name says km, times are ``datetime64[s]`` (UTC) and time steps are half-open ``[start, end)``.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

import numpy as np

EARTH_RADIUS_M = 6_371_008.8  # IUGG mean radius R1, m


def _frozen_array(values, dtype, name: str, ndim: int) -> np.ndarray:
    array = np.array(values, dtype=dtype)  # a private copy, so callers cannot mutate us
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {array.shape}")
    array.setflags(write=False)
    return array


def _regular_edges(name: str, lo: float, hi: float, step: float) -> np.ndarray:
    count = (hi - lo) / step if step > 0 else float("nan")
    n = round(count) if np.isfinite(count) else 0
    if n < 1 or abs(count - n) > 1e-6:
        raise ValueError(f"{name}: ({hi} - {lo}) / {step} = {count} is not a positive whole number of cells")
    edges = lo + step * np.arange(n + 1, dtype=np.float64)
    edges[-1] = hi  # avoid an accumulated rounding error on the last edge
    return edges


def _bounds_from_centres(name: str, centres: np.ndarray) -> np.ndarray:
    if centres.ndim != 1 or centres.size < 2:
        raise ValueError(f"{name}: at least two centres are needed to infer cell bounds")
    mid = 0.5 * (centres[1:] + centres[:-1])
    edges = np.concatenate(([centres[0] - (mid[0] - centres[0])], mid, [centres[-1] + (centres[-1] - mid[-1])]))
    return np.column_stack((edges[:-1], edges[1:]))


@dataclass(frozen=True, eq=False)
class Grid:
    """A rectilinear lat/lon grid: cell centres ``lat`` (nlat,), ``lon`` (nlon,) and bounds.

    Centres are strictly increasing; ``lat_bounds`` (nlat, 2) and ``lon_bounds`` (nlon, 2)
    hold each cell's [lower, upper] edge, with the centre inside and neighbours not
    overlapping.  Latitudes lie in [-90, 90] and the longitudes span at most 360°.
    Invalid input raises ``ValueError``.  Arrays are read-only float64 copies.
    """

    lat: np.ndarray
    lon: np.ndarray
    lat_bounds: np.ndarray
    lon_bounds: np.ndarray

    def __post_init__(self) -> None:
        for name, ndim in (("lat", 1), ("lon", 1), ("lat_bounds", 2), ("lon_bounds", 2)):
            object.__setattr__(self, name, _frozen_array(getattr(self, name), np.float64, name, ndim))
        for axis in ("lat", "lon"):
            centres, bounds = getattr(self, axis), getattr(self, f"{axis}_bounds")
            if centres.size == 0 or not np.all(np.isfinite(centres)) or not np.all(np.isfinite(bounds)):
                raise ValueError(f"{axis} must be non-empty and finite")
            if np.any(np.diff(centres) <= 0):
                raise ValueError(f"{axis} centres must be strictly increasing")
            if bounds.shape != (centres.size, 2):
                raise ValueError(f"{axis}_bounds must have shape ({centres.size}, 2), got {bounds.shape}")
            if np.any(bounds[:, 0] > centres) or np.any(centres > bounds[:, 1]) or np.any(bounds[:, 0] >= bounds[:, 1]):
                raise ValueError(f"each {axis} centre must lie inside its bounds [lower, upper] with lower < upper")
            if np.any(bounds[1:, 0] < bounds[:-1, 1] - 1e-9):
                raise ValueError(f"neighbouring {axis} cells overlap")
        if self.lat_bounds.min() < -90 or self.lat_bounds.max() > 90:
            raise ValueError("latitude bounds must lie within [-90, 90]")
        if self.lon_bounds[-1, 1] - self.lon_bounds[0, 0] > 360 + 1e-9:
            raise ValueError("longitudes span more than 360 degrees")

    @classmethod
    def regular(cls, lat_min: float, lat_max: float, lon_min: float, lon_max: float, dlat: float, dlon: float) -> Grid:
        """Regular grid from its domain EDGES and spacings (degrees).

        The number of cells ``(max - min) / d`` along each axis must be a positive integer
        (within 1e-6), else ``ValueError``.
        """
        lat_edges = _regular_edges("lat", lat_min, lat_max, dlat)
        lon_edges = _regular_edges("lon", lon_min, lon_max, dlon)
        return cls(
            lat=0.5 * (lat_edges[:-1] + lat_edges[1:]),
            lon=0.5 * (lon_edges[:-1] + lon_edges[1:]),
            lat_bounds=np.column_stack((lat_edges[:-1], lat_edges[1:])),
            lon_bounds=np.column_stack((lon_edges[:-1], lon_edges[1:])),
        )

    @classmethod
    def from_centres(cls, lat, lon) -> Grid:
        """Grid from cell centres (at least two per axis): bounds lie midway between centres,
        the outer ones half a spacing beyond the end centres, latitude bounds clipped to ±90."""
        lat = np.asarray(lat, dtype=np.float64)
        lon = np.asarray(lon, dtype=np.float64)
        return cls(
            lat=lat,
            lon=lon,
            lat_bounds=np.clip(_bounds_from_centres("lat", lat), -90.0, 90.0),
            lon_bounds=_bounds_from_centres("lon", lon),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(nlat, nlon)"""
        return (self.lat.size, self.lon.size)

    @property
    def size(self) -> int:
        """nlat · nlon"""
        return self.lat.size * self.lon.size

    def cell_area(self) -> np.ndarray:
        """(nlat, nlon) cell areas in m², exact on the sphere of radius ``EARTH_RADIUS_M``:
        A = R² (sin φ₂ − sin φ₁)(λ₂ − λ₁), angles in radians."""
        lat_b = np.deg2rad(self.lat_bounds)
        band = np.sin(lat_b[:, 1]) - np.sin(lat_b[:, 0])
        width = np.deg2rad(self.lon_bounds[:, 1] - self.lon_bounds[:, 0])
        return EARTH_RADIUS_M**2 * np.outer(band, width)

    def same_as(self, other: Grid, atol_deg: float = 1e-6) -> bool:
        """True when shapes match and centres and bounds agree within ``atol_deg`` degrees."""
        return self.shape == other.shape and all(
            np.allclose(getattr(self, name), getattr(other, name), rtol=0.0, atol=atol_deg)
            for name in ("lat", "lon", "lat_bounds", "lon_bounds")
        )

    def describe(self) -> str:
        """One line for logs, e.g. "50 × 40 cells (lat × lon), lat 20…45, lon 100…120, 0.5° × 0.5°"."""

        def spacing(bounds: np.ndarray) -> str:
            widths = bounds[:, 1] - bounds[:, 0]
            return f"{widths[0]:g}°" if np.ptp(widths) <= 1e-6 else f"{widths.min():g}–{widths.max():g}°"

        nlat, nlon = self.shape
        return (
            f"{nlat} × {nlon} cells (lat × lon), lat {self.lat_bounds[0, 0]:g}…{self.lat_bounds[-1, 1]:g}, "
            f"lon {self.lon_bounds[0, 0]:g}…{self.lon_bounds[-1, 1]:g}, {spacing(self.lat_bounds)} × {spacing(self.lon_bounds)}"
        )


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km between points given in degrees (haversine; arrays
    broadcast), on the sphere of radius ``EARTH_RADIUS_M``."""
    phi1, lam1, phi2, lam2 = (np.deg2rad(np.asarray(v, dtype=np.float64)) for v in (lat1, lon1, lat2, lon2))
    h = np.sin(0.5 * (phi2 - phi1)) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(0.5 * (lam2 - lam1)) ** 2
    # rounding can push h a hair above 1 for antipodal points; arcsin would then give NaN
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.minimum(h, 1.0))) / 1000.0


_STEP = re.compile(r"\s*(\d+)\s*([WDhms])\s*")


def _as_timedelta(step) -> np.timedelta64:
    if isinstance(step, str):
        match = _STEP.fullmatch(step)
        if match is None:
            raise ValueError(f"time step {step!r} must look like '3h', '30m', '1D', '600s' or '1W'")
        return np.timedelta64(int(match.group(1)), match.group(2)).astype("timedelta64[s]")
    if isinstance(step, (np.timedelta64, _dt.timedelta)):
        return np.timedelta64(step).astype("timedelta64[s]")
    raise ValueError(f"time step must be a numpy.timedelta64, datetime.timedelta or a string like '3h', got {step!r}")


@dataclass(frozen=True, eq=False)
class TimeAxis:
    """Flux time steps ``[start[k], end[k])``, ``datetime64[s]`` (UTC), shape (nt,).

    Contract: start < end, start strictly increasing, and steps do not overlap
    (end[k] <= start[k+1]); gaps are allowed.  Invalid input raises ``ValueError``.
    """

    start: np.ndarray
    end: np.ndarray

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            object.__setattr__(self, name, _frozen_array(getattr(self, name), "datetime64[s]", name, 1))
        if self.start.size == 0 or self.start.shape != self.end.shape:
            raise ValueError(f"start and end must be non-empty and of equal length, got {self.start.size} and {self.end.size}")
        if np.any(np.isnat(self.start)) or np.any(np.isnat(self.end)):
            raise ValueError("time steps must not contain NaT")
        if np.any(self.end <= self.start):
            raise ValueError("every time step must end after it starts")
        if np.any(self.start[1:] <= self.start[:-1]):
            raise ValueError("time step starts must be strictly increasing")
        if np.any(self.end[:-1] > self.start[1:]):
            raise ValueError("time steps overlap: end[k] must be <= start[k+1]")

    @classmethod
    def regular(cls, start, stop, step) -> TimeAxis:
        """Contiguous steps of length ``step`` covering [start, stop).

        ``start``/``stop``: numpy datetime64 or ISO 8601 strings (UTC); ``step``: numpy
        timedelta64, ``datetime.timedelta`` or a string such as "3h", "30m", "1D".
        (stop − start) must be a positive multiple of step, else ``ValueError``.
        """
        t0, t1 = np.datetime64(start, "s"), np.datetime64(stop, "s")
        dt = _as_timedelta(step)
        if dt <= np.timedelta64(0, "s") or t1 <= t0 or (t1 - t0) % dt != np.timedelta64(0, "s"):
            raise ValueError(f"({t1} - {t0}) is not a positive multiple of the step {dt}")
        starts = np.arange(t0, t1, dt)
        return cls(start=starts, end=starts + dt)

    @property
    def size(self) -> int:
        """Number of steps nt."""
        return self.start.size

    @property
    def duration_s(self) -> np.ndarray:
        """(nt,) float64 length of each step in seconds."""
        return (self.end - self.start).astype(np.float64)

    def locate(self, times) -> np.ndarray:
        """Index of the step with start <= t < end for each time (int64, same shape), −1 when
        no step contains t (before, after, in a gap, or NaT)."""
        t = np.asarray(times)
        if t.dtype.kind != "M":
            t = t.astype("datetime64[s]")
        # compare at the finer of the two resolutions so sub-second times are not truncated
        unit = np.promote_types(t.dtype, self.start.dtype)
        t, start, end = t.astype(unit), self.start.astype(unit), self.end.astype(unit)
        index = np.searchsorted(start, t, side="right") - 1
        inside = (index >= 0) & (t < end[np.maximum(index, 0)])
        return np.where(inside, index, -1).astype(np.int64)

    def same_as(self, other: TimeAxis) -> bool:
        """True when both axes have identical steps."""
        return np.array_equal(self.start, other.start) and np.array_equal(self.end, other.end)
