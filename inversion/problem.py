"""``build_problem(config, comm)``: the one place where the roles are wired together.

Cheap checks of every input (metadata, units, grids, observation table, prior, regions,
covariance positive-definiteness) run first, on every rank; only then does each rank read its
own contiguous block of footprint rows (validated as they are read).

The linear model, per observation (mol mol⁻¹):

    value − background = K f_fixed + H x + ε,   ε ~ N(0, R),  x ~ N(x_b, B)

so the solvers see y = value − background − K f_fixed and the departures d = y − H x_b.
With ``state.boundary_scaling`` the background is itself modelled, Σ_e x[e, p] · bg_e (one
scaling factor per domain edge and period, prior mean 1), so it moves into H x and
y = value − K f_fixed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.operator import FootprintOperator
from transport.store import FootprintStore
from transport.units import MOLE_FRACTION_UNITS, parse_quantity

from .background import boundary_scaling_columns, boundary_scaling_extra
from .config import Config
from .covariance import BlockDiagonal, Covariance, Dense, Diagonal, Kronecker, exponential_correlation, scaled_correlation
from .linalg import CovarianceError
from .observations import load_observations
from .operators import ObservationOperator
from .parallel import partition
from .prior import read_prior
from .progress import log
from .regions import Regions, read_regions, state_regions
from .state import StateSpace, state_periods


@dataclass(frozen=True, eq=False)
class Problem:
    """Everything a solver needs.  Observation-space arrays hold this rank's rows only;
    state-space arrays are replicated on every rank."""

    config: Config
    comm: object
    state: StateSpace
    x_b: np.ndarray
    B: Covariance
    H: ObservationOperator
    y: np.ndarray          # local: value − background − K f_fixed (mol mol⁻¹); background not subtracted when scaled
    R: Diagonal            # local observation error covariance
    obs: xr.Dataset        # local observations (ordered by store row)
    fixed_model: np.ndarray  # local K f_fixed (mol mol⁻¹)
    n_obs: int             # global number of observations
    obs_range: tuple[int, int]  # this rank's block [start, stop) of the global observations
    # Σ_obs Σ_t K per grid cell (nlat, nlon), m² s mol⁻¹, summed over all ranks (replicated).
    sensitivity: np.ndarray | None = None

    def departures(self) -> np.ndarray:
        """d = y − H x_b (local)."""
        return self.y - self.H.matvec(self.x_b)

    def simulate(self, x: np.ndarray) -> np.ndarray:
        """K f_fixed + H x (local, mol mol⁻¹): the modelled mole fraction above the background that
        y excludes (with boundary scaling, the scaled background is part of H x)."""
        return self.fixed_model + self.H.matvec(x)


def prior_covariance(config: Config, state: StateSpace) -> Covariance:
    """B = ⊕_sectors σ_s²·(C_time ⊗ C_space) ⊕ diag(σ_bg²), exponential correlations in days
    between period midpoints and in km between region centroids; σ_s of each sector from
    :meth:`~inversion.config.PriorConfig.sigma_of`."""
    cov = config.covariance
    try:
        blocks = flux_covariance_blocks(state, sigma={s: config.prior.sigma_of(s, cov) for s in state.sectors},
                                        length_km=cov.length_km, time_days=cov.time_days)
    except CovarianceError as exc:
        d = state.regions.distance_km() + np.diag(np.full(state.n_region, np.inf))
        i, j = np.unravel_index(np.argmin(d), d.shape)
        raise InputError(config.state.regions, "region_fraction",
                         f"the prior covariance of the regions is not positive definite ({exc}); the closest "
                         f"regions, {state.regions.names[i]} and {state.regions.names[j]}, have centroids "
                         f"{d[i, j]:.3g} km apart", "merge or remove duplicated regions, or reduce "
                         f"covariance.correlation_length ({cov.correlation_length}) in {config.source}") from None
    if state.sites:
        sd = parse_quantity(config.state.background_offset_sigma, MOLE_FRACTION_UNITS)
        blocks.append(Diagonal(np.full(len(state.sites), sd**2), name="B[background offsets]"))
    blocks += [Diagonal(np.full(e.size, e.prior_sd**2), name=f"B[{e.name}]") for e in state.extras]
    return BlockDiagonal(blocks, name="B")


def period_separation_days(state: StateSpace) -> np.ndarray:
    """|Δt| between period midpoints (days), n_period × n_period."""
    mid = state.periods.start + (state.periods.end - state.periods.start) / 2
    return (np.abs(mid[:, None] - mid[None, :]) / np.timedelta64(1, "D")).astype(np.float64)


def flux_covariance_blocks(state: StateSpace, *, sigma: Mapping[str, float], length_km: float,
                           time_days: float) -> list[Covariance]:
    """The first blocks of B, one per optimised sector: σ_s²·(C_time ⊗ C_space) with
    exponential correlations (e-folding ``time_days`` between period midpoints, ``length_km``
    between region centroids) and σ_s = ``sigma[sector]`` (scaling factors, 1)."""
    time = Dense(exponential_correlation(period_separation_days(state), time_days),
                 name="covariance (time correlation)")
    correlation = exponential_correlation(state.regions.distance_km(), length_km)
    return [Kronecker(time, scaled_correlation(np.full(state.n_region, sigma[s]), correlation,
                                               name="covariance (spatial correlation of regions)"), name=f"B[{s}]")
            for s in state.sectors]


def with_flux_errors(problem: Problem, *, sigma: Mapping[str, float], length_km: float,
                     time_days: float) -> BlockDiagonal:
    """``problem.B`` with its sector blocks rebuilt for other error settings (the blocks after
    them — background offsets and any other extra state elements — are kept).  Reads nothing:
    ``tanhui tune`` and ``tanhui osse`` rebuild B for many error settings of one problem."""
    n = problem.state.n_sector
    return BlockDiagonal(flux_covariance_blocks(problem.state, sigma=sigma, length_km=length_km, time_days=time_days)
                         + list(problem.B.blocks[n:]), name="B")


def with_errors(problem: Problem, *, B: Covariance | None = None, R: Diagonal | None = None) -> Problem:
    """The same problem (H, y, observations — nothing re-read) with other error covariances."""
    if B is not None and B.size != problem.B.size:
        raise ValueError(f"B has size {B.size}, the state {problem.B.size}")
    if R is not None and R.size != problem.R.size:
        raise ValueError(f"R has size {R.size}, this rank's observations {problem.R.size}")
    return replace(problem, B=problem.B if B is None else B, R=problem.R if R is None else R)


def _check_grid(config: Config, store: FootprintStore) -> None:
    if config.grid is None:
        return
    g = config.grid
    expected = g.to_grid()
    if not store.grid.same_as(expected):
        raise InputError(store.path, "grid", f"footprint grid ({store.grid.describe()}) differs from [grid] in "
                         f"{config.source} ({expected.describe()})", "fix [grid] or use footprints on that grid")


@dataclass(frozen=True, eq=False)
class Inputs:
    """Every input opened and checked, except the footprint values."""

    store: FootprintStore
    obs: xr.Dataset  # all observations, ordered by store row
    state: StateSpace
    report_regions: Regions | None = None  # [report] regions, when they differ from the state regions


def open_inputs(config: Config, comm=None) -> Inputs:
    """Open and validate every input except the footprint values (cheap, no rank split).
    ``comm`` only decides which rank shows progress (the background from boundary curtains)."""
    for key, path in config.input_paths().items():
        if not Path(path).is_file():
            raise InputError(path, None, f"input file of {key} not found", f"check {key} in {config.source}")
    store = FootprintStore(config.transport.footprints)
    _check_grid(config, store)
    grid_source = str(store.path)
    obs = load_observations(config, store, comm)
    prior = read_prior(config.prior, config.run.species, store.grid, store.time_axis, grid_source)
    regions = state_regions(config.state.regions, store.grid, grid_source)
    periods = state_periods(config.run.start, config.run.end, config.state.period_days, store.time_axis,
                            str(config.source))
    sites = tuple(sorted(set(obs["site"].values.tolist()))) if config.state.background_offset else ()
    extras = (boundary_scaling_extra(periods, config.state.boundary_scaling_sigma),) \
        if config.state.boundary_scaling else ()
    state = StateSpace(sectors=tuple(config.prior.optimised), regions=regions, periods=periods, sites=sites,
                       prior=prior, fixed_sectors=tuple(config.prior.fixed), extras=extras)
    report_regions = read_regions(config.report.regions, store.grid, grid_source) \
        if config.report.regions is not None else None
    return Inputs(store=store, obs=obs, state=state, report_regions=report_regions)


def read_truth(config: Config, state: StateSpace) -> np.ndarray | None:
    """The twin experiment's true state (``report.truth``), or None."""
    if config.report.truth is None:
        return None
    from .io import open_netcdf

    return state.from_dataset(open_netcdf(config.report.truth, "truth state"), "truth", str(config.report.truth))


def build_problem(config: Config, comm, inputs: Inputs | None = None) -> Problem:
    """Wire H, B, R, x_b and y for this rank; ``inputs`` from :func:`open_inputs` if already opened."""
    inputs = inputs or open_inputs(config, comm)
    store, obs_all, state = inputs.store, inputs.obs, inputs.state
    B = prior_covariance(config, state)
    n_obs = obs_all.sizes["obs"]
    start, stop = partition(n_obs, comm.size, comm.rank)
    obs = obs_all.isel(obs=slice(start, stop))
    rows = obs["row"].values
    log.info("state: %d elements (%d sectors × %d periods × %d regions + %d offsets%s); observations: %d "
             "(%d on this rank); footprints: %s", state.size, state.n_sector, state.n_period, state.n_region,
             len(state.sites), "".join(f" + {e.size} {e.name}" for e in state.extras), n_obs, stop - start, store.path)
    if rows.size:
        first = int(rows.min())
        # float64 from the reader: no float32 copy beside it, and products never convert again
        matrix = store.read_rows(first, int(rows.max()) + 1, check=True, dtype=np.float64)
        if not np.array_equal(rows, np.arange(first, first + rows.size)):
            matrix = matrix[rows - first]  # a selection copies; observations in store order (the rule) need none
    else:
        matrix = store.read_rows(0, 0, check=True)
    K = FootprintOperator(matrix, comm=comm)
    site_pos = {s: i for i, s in enumerate(state.sites)}
    site_index = np.array([site_pos[s] for s in obs["site"].values], dtype=np.int64) if state.sites else np.zeros(
        stop - start, dtype=np.int64)
    scaled = config.state.boundary_scaling
    extra_columns = boundary_scaling_columns(obs["background_edge"].values, obs["time"].values, state.periods) \
        if scaled else None
    H = ObservationOperator(K, state.E, site_index, len(state.sites), comm, extra_columns=extra_columns)
    fixed_model = K.matvec(state.fixed_flux)
    y = obs["value"].values - (0.0 if scaled else obs["background"].values) - fixed_model
    R = Diagonal(obs["sigma"].values ** 2, name="R (this rank's observations)", allow_empty=True)
    # Total observation sensitivity per cell (report maps), one grid-sized allreduce.
    per_column = K.rmatvec_local(np.ones(K.shape[0]))  # Kᵀ 1, summed in float64
    sensitivity = comm.allreduce(per_column.reshape(store.time_axis.size, -1).sum(axis=0)).reshape(store.grid.shape)
    return Problem(config=config, comm=comm, state=state, x_b=state.prior_mean(), B=B, H=H, y=y, R=R, obs=obs,
                   fixed_model=fixed_model, n_obs=n_obs, obs_range=(start, stop), sensitivity=sensitivity)
