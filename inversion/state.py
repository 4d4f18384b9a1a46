"""The state space: what the inversion estimates and how it maps to gridded flux.

State vector x = [flux part ; extras]:

* flux part, flattened (sector, period, region) with region fastest: x[s, p, r] is the
  dimensionless **scaling factor** of the prior flux of optimised sector s inside region r
  during period p (prior mean 1);
* one **background offset** per site (mol mol⁻¹, prior mean 0) when enabled;
* further **extras** (:class:`StateExtra`), each a named block of elements that enter H as
  given columns and B as their own diagonal block, e.g. one boundary-condition scaling factor
  per domain edge and period (prior mean 1).

Order: [flux (sector, period, region) ; offsets (site) ; extra 1 (its dims, C order) ; …].

Gridded flux (mol m⁻² s⁻¹) over the flux time axis, flattened (time, lat, lon):

    f(x) = f_fixed + E x_flux,
    E[(t,i,j), (s,p,r)] = φ_s(t,i,j) · m_r(i,j) · 1[t ∈ p]

with φ_s the prior flux of sector s and m_r the region fraction.  f_fixed holds the fixed
sectors plus the optimised sectors where no (region, period) covers them (cells outside all
regions, flux steps before the first period during footprint back-time), so f(x_b) is the
full prior flux.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp
import xarray as xr
from scipy.sparse.linalg import LinearOperator, aslinearoperator

from transport.errors import InputError
from transport.grid import TimeAxis
from transport.units import MOLE_FRACTION_UNITS

from .prior import PriorFlux
from .regions import Regions


def state_periods(start: np.datetime64, end: np.datetime64, period_days: float, flux_time: TimeAxis,
                  source: str) -> TimeAxis:
    """Periods of ``period_days`` from ``start`` (the last one may be shorter), aligned with
    flux-step boundaries so each flux step lies in exactly one period."""
    step = np.timedelta64(int(round(period_days * 86400)), "s")
    starts = np.arange(start, end, step).astype("datetime64[s]")
    ends = np.minimum(starts + step, end).astype("datetime64[s]")
    boundaries = set(flux_time.start.tolist()) | set(flux_time.end.tolist())
    off = [b for b in np.concatenate([starts, ends[-1:]]).tolist() if b not in boundaries]
    if off:
        raise InputError(source, "state.period_days / run.start / run.end",
                         f"period boundary {off[0]} is not a flux time-step boundary",
                         "choose run times and a period length that fall on flux step boundaries")
    return TimeAxis(start=starts, end=ends)


@dataclass(frozen=True, eq=False)
class StateExtra:
    """A block of extra state elements: named columns of H (built by whoever adds the
    block, see :mod:`inversion.problem`) with a diagonal prior block σ² I in B.

    ``dims`` label the block's axes (flattened in C order) with ``coords[dim]`` for every dim
    that is not already a state coordinate (``period`` is shared with the flux part);
    ``prior_mean`` and ``prior_sd`` hold for every element, in ``units``."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    coords: dict[str, list]
    prior_mean: float
    prior_sd: float
    units: str
    long_name: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True, eq=False)
class StateSpace:
    sectors: tuple[str, ...]
    regions: Regions
    periods: TimeAxis
    sites: tuple[str, ...]
    prior: PriorFlux
    fixed_sectors: tuple[str, ...] = ()
    extras: tuple[StateExtra, ...] = ()

    # ---- sizes and indexing -------------------------------------------------------------
    @property
    def n_sector(self) -> int:
        return len(self.sectors)

    @property
    def n_period(self) -> int:
        return self.periods.size

    @property
    def n_region(self) -> int:
        return self.regions.size

    @property
    def n_flux(self) -> int:
        return self.n_sector * self.n_period * self.n_region

    @property
    def size(self) -> int:
        return self.n_flux + len(self.sites) + sum(e.size for e in self.extras)

    def extra_slice(self, name: str) -> slice:
        """Where the extra block ``name`` sits in the state vector."""
        start = self.n_flux + len(self.sites)
        for extra in self.extras:
            if extra.name == name:
                return slice(start, start + extra.size)
            start += extra.size
        raise KeyError(f"no state extra {name!r} (extras: {[e.name for e in self.extras]})")

    @property
    def flux_time(self) -> TimeAxis:
        return self.prior.time

    @property
    def n_columns(self) -> int:
        return self.flux_time.size * self.regions.grid.size

    def flux_index(self, sector: int, period: int, region: int) -> int:
        return (sector * self.n_period + period) * self.n_region + region

    @cached_property
    def period_of_step(self) -> np.ndarray:
        """Period index of each flux time step (−1 when the step is in no period)."""
        return self.periods.locate(self.flux_time.start)

    @cached_property
    def period_seconds(self) -> np.ndarray:
        """Duration of each period covered by flux steps (s)."""
        out = np.zeros(self.n_period)
        inside = self.period_of_step >= 0
        np.add.at(out, self.period_of_step[inside], self.flux_time.duration_s[inside])
        return out

    def prior_mean(self) -> np.ndarray:
        return np.concatenate([np.ones(self.n_flux), np.zeros(len(self.sites))]
                              + [np.full(e.size, e.prior_mean) for e in self.extras])

    # ---- flux mapping ---------------------------------------------------------------------
    @cached_property
    def E(self) -> sp.csr_matrix:
        """E as a sparse matrix (n_columns × n_flux), mol m⁻² s⁻¹ per unit scaling factor.

        Built directly in CSR from the region matrix M: row (t, c) of a step t inside a period
        holds, for each sector s (in order) and each region r with m_r(c) > 0 (ascending), the
        value φ_s(t, c) m_r(c) in column (s, p(t), r); rows of other steps are empty.  Memory:
        the result plus one (cells × sectors) template, never n_region × n_cell."""
        nt, ncell = self.flux_time.size, self.regions.grid.size
        steps = np.flatnonzero(self.period_of_step >= 0)
        by_cell = self.regions.matrix.T.tocsr()  # (n_cell × n_region), regions ascending per cell
        by_cell.sort_indices()
        per_cell = np.diff(by_cell.indptr)  # regions covering each cell
        cell_of = np.repeat(np.arange(ncell), per_cell)
        # One step's entries, ordered (cell, sector, region): index k into by_cell's entries.
        n_s = self.n_sector
        order = np.argsort(np.add.outer(np.arange(n_s), cell_of * n_s).ravel(), kind="stable")
        sector, k = np.divmod(order, by_cell.nnz)
        cell, region, frac = cell_of[k], by_cell.indices[k], by_cell.data[k]
        itype = np.int32 if max(self.n_flux, steps.size * order.size, self.n_columns) < 2**31 else np.int64
        base = (sector * self.n_period * self.n_region + region).astype(itype)
        indices = base[None, :] + (self.period_of_step[steps] * self.n_region).astype(itype)[:, None]
        data = np.empty((steps.size, order.size))
        for s, name in enumerate(self.sectors):
            mine = sector == s
            value = self.prior.sectors[name].reshape(nt, ncell)[np.ix_(steps, cell[mine])]
            value *= frac[mine]
            data[:, mine] = value
            del value
        indptr = np.zeros(self.n_columns + 1, dtype=itype)
        counts = indptr[1:].reshape(nt, ncell)
        counts[steps] = n_s * per_cell
        np.cumsum(indptr, out=indptr)
        matrix = sp.csr_matrix((data.ravel(), indices.ravel(), indptr), shape=(self.n_columns, self.n_flux))
        matrix.eliminate_zeros()
        return matrix

    def E_operator(self) -> LinearOperator:
        return aslinearoperator(self.E)

    @cached_property
    def fixed_flux(self) -> np.ndarray:
        """f_fixed (n_columns,), mol m⁻² s⁻¹: fixed sectors + uncovered optimised flux."""
        nt = self.flux_time.size
        coverage = self.regions.coverage()[None, :, :] * (self.period_of_step >= 0)[:, None, None]
        total = np.zeros((nt,) + self.regions.grid.shape)
        for name in self.fixed_sectors:
            total += self.prior.sectors[name]
        for name in self.sectors:
            total += self.prior.sectors[name] * (1.0 - coverage)
        return total.ravel()

    def to_flux(self, x: np.ndarray) -> np.ndarray:
        """Total gridded flux f(x), shape (n_time, nlat, nlon), mol m⁻² s⁻¹."""
        f = self.fixed_flux + self.E @ x[: self.n_flux]
        return f.reshape((self.flux_time.size,) + self.regions.grid.shape)

    # ---- named views ----------------------------------------------------------------------
    def coords(self) -> dict:
        return {
            "sector": list(self.sectors),
            "period": self.periods.start,
            "period_end": ("period", self.periods.end),
            "region": list(self.regions.names),
            "site": list(self.sites),
            **{dim: labels for e in self.extras for dim, labels in e.coords.items()},
        }

    def to_dataset(self, x: np.ndarray, name: str) -> xr.Dataset:
        """x as named arrays: ``{name}_scaling_factor(sector, period, region)``,
        ``{name}_background_offset(site)`` (mol mol⁻¹) and ``{name}_{extra.name}(extra.dims)``
        for every extra (e.g. ``posterior_boundary_scaling(edge, period)``)."""
        flux = x[: self.n_flux].reshape(self.n_sector, self.n_period, self.n_region)
        ds = xr.Dataset(coords=self.coords())
        ds[f"{name}_scaling_factor"] = (("sector", "period", "region"), flux, {"units": "1"})
        if self.sites:
            ds[f"{name}_background_offset"] = (("site",), x[self.n_flux:self.n_flux + len(self.sites)],
                                               {"units": MOLE_FRACTION_UNITS})
        for extra in self.extras:
            ds[f"{name}_{extra.name}"] = (extra.dims, x[self.extra_slice(extra.name)].reshape(extra.shape),
                                          {"units": extra.units, "long_name": extra.long_name})
        return ds

    def from_dataset(self, ds: xr.Dataset, name: str, source: str) -> np.ndarray:
        """Inverse of :meth:`to_dataset` (used to read a twin's truth); checks the labels."""
        var = f"{name}_scaling_factor"
        if var not in ds:
            raise InputError(source, var, "variable missing", f"write it with StateSpace.to_dataset(x, {name!r})")
        da = ds[var]
        for dim, labels in (("sector", self.sectors), ("region", self.regions.names)):
            if tuple(str(v) for v in da[dim].values) != tuple(labels):
                raise InputError(source, dim, "labels differ from this run's state", "regenerate the file for this case")
        if da.sizes["period"] != self.n_period or not np.array_equal(
                np.asarray(da["period"].values).astype("datetime64[s]"), self.periods.start):
            raise InputError(source, "period", "periods differ from this run's state", "regenerate the file for this case")
        parts = [np.asarray(da.transpose("sector", "period", "region").values, dtype=np.float64).ravel()]
        if self.sites:
            off = f"{name}_background_offset"
            if off not in ds or tuple(str(v) for v in ds["site"].values) != self.sites:
                raise InputError(source, off, "missing or its sites differ", "regenerate the file for this case")
            parts.append(np.asarray(ds[off].values, dtype=np.float64))
        for extra in self.extras:
            var = f"{name}_{extra.name}"
            if var not in ds or ds[var].dims != extra.dims or ds[var].shape != extra.shape:
                raise InputError(source, var, f"missing or not of dims {extra.dims} and shape {extra.shape}",
                                 "regenerate the file for this case")
            parts.append(np.asarray(ds[var].values, dtype=np.float64).ravel())
        return np.concatenate(parts)
