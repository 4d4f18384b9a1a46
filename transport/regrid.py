"""Exact area-conservative remapping between rectilinear latitude/longitude grids.

On the sphere the area of the intersection of source cell (i, j) and target cell (k, l) is
separable:

    A_ov[k,l,i,j] = R² · O_φ[k,i] · O_λ[l,j],
    O_φ[k,i] = |[sin φ_k⁻, sin φ_k⁺] ∩ [sin φ_i⁻, sin φ_i⁺]|,   O_λ[l,j] = overlap of the
    longitude intervals in radians (source shifted by −360°, 0, +360° so 0–360° and
    −180–180° grids meet),

so remapping is two sparse matrix products and is exact to rounding (no sub-sampling, no
great-circle-edge approximation: the cell edges *are* parallels and meridians).  Two kinds
of field:

* **intensive** (per area: fluxes in mol m⁻² s⁻¹, sensitivity densities): the target value
  is the area-weighted mean over the covered part of the target cell,
  f_t = Σ_s A_ov f_s / Σ_s A_ov;  Σ_t f_t A_t = Σ_s f_s A_s when the target lies inside the
  source domain;
* **extensive** (per cell: footprints in m² s mol⁻¹, which are a sensitivity density in
  s mol⁻¹ times the cell area, masses): each source cell is split by area,
  K_t = Σ_s (A_ov / A_s) K_s, so Σ_t K_t = Σ_s K_s over the overlapping part.

:meth:`ConservativeRegridder.coverage` tells which target cells the source covers, so that a
reader can refuse (or account for) a source that does not cover the domain.

Why hand-written rather than a library: for rectilinear lat/lon grids this is exact in ~40
lines of numpy/scipy.  xESMF needs the ESMF C library (not installable from PyPI), and
xarray-regrid's conservative method is fine but adds a dependency for no gain in exactness.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from transport.grid import EARTH_RADIUS_M, Grid


def _overlap(target: np.ndarray, source: np.ndarray) -> sp.csr_matrix:
    """Lengths of the intersections of target intervals (n_t, 2) with source intervals (n_s, 2)."""
    lo = np.maximum(target[:, None, 0], source[None, :, 0])
    hi = np.minimum(target[:, None, 1], source[None, :, 1])
    return sp.csr_matrix(np.clip(hi - lo, 0.0, None))


class ConservativeRegridder:
    """Remap fields from ``source`` to ``target`` grid; fields have trailing dims (lat, lon)."""

    def __init__(self, source: Grid, target: Grid):
        self.source = source
        self.target = target
        self._o_lat = _overlap(np.sin(np.radians(target.lat_bounds)), np.sin(np.radians(source.lat_bounds)))
        o_lon = sp.csr_matrix((target.lon.size, source.lon.size))
        for shift in (-360.0, 0.0, 360.0):
            o_lon = o_lon + _overlap(np.radians(target.lon_bounds), np.radians(source.lon_bounds + shift))
        self._o_lon = o_lon.tocsr()
        # Covered area of each target cell (m²) and its fraction of the cell.
        self._covered = EARTH_RADIUS_M**2 * np.outer(self._o_lat.sum(axis=1).A1, self._o_lon.sum(axis=1).A1)
        self._source_area = source.cell_area()

    def coverage(self) -> np.ndarray:
        """Fraction (0…1) of each target cell that the source grid covers."""
        return np.clip(self._covered / self.target.cell_area(), 0.0, 1.0)

    def _apply(self, field: np.ndarray) -> np.ndarray:
        """Σ_s A_ov[t, s] · field[s] for fields of shape (..., nlat_s, nlon_s)."""
        field = np.asarray(field, dtype=np.float64)
        nlat_s, nlon_s = self.source.shape
        if field.shape[-2:] != (nlat_s, nlon_s):
            raise ValueError(f"field shape {field.shape} does not end with the source grid shape {(nlat_s, nlon_s)}")
        lead = field.shape[:-2]
        f = field.reshape(-1, nlat_s, nlon_s)
        # Latitude first: (nlat_t, nlat_s) @ (nlat_s, n·nlon_s), then longitude.
        tmp = self._o_lat @ f.transpose(1, 0, 2).reshape(nlat_s, -1)
        tmp = tmp.reshape(-1, f.shape[0], nlon_s).transpose(1, 0, 2)  # (n, nlat_t, nlon_s)
        out = (self._o_lon @ tmp.reshape(-1, nlon_s).T).T  # (n·nlat_t, nlon_t)
        return EARTH_RADIUS_M**2 * out.reshape(lead + self.target.shape)

    def intensive(self, field: np.ndarray) -> np.ndarray:
        """Per-area field (e.g. mol m⁻² s⁻¹): area-weighted mean over the covered part of each
        target cell (NaN where the source covers nothing)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self._apply(field) / np.where(self._covered > 0, self._covered, np.nan)

    def extensive(self, field: np.ndarray) -> np.ndarray:
        """Per-cell field (e.g. footprints in m² s mol⁻¹): each source cell is split by area."""
        return self._apply(np.asarray(field, dtype=np.float64) / self._source_area)
