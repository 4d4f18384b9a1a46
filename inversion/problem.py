"""``build_problem(config, comm)``: the one place where the roles are wired together.

Cheap checks of every input (metadata, units, grids, observation table, prior, regions,
covariance positive-definiteness) run first, on every rank; only then does each rank read its
own contiguous block of footprint rows (validated as they are read).

The linear model, per observation (mol mol⁻¹):

    value − background = K f_fixed + H x + ε,   ε ~ N(0, R),  x ~ N(x_b, B)

so the solvers see y = value − background − K f_fixed and the departures d = y − H x_b.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from transport.errors import InputError
from transport.grid import Grid
from transport.operator import FootprintOperator
from transport.store import FootprintStore
from transport.units import MOLE_FRACTION_UNITS, parse_quantity

from .config import Config
from .covariance import BlockDiagonal, Covariance, Dense, Diagonal, Kronecker, exponential_correlation, scaled_correlation
from .observations import read_observations
from .operators import ObservationOperator
from .parallel import partition
from .prior import read_prior
from .progress import log
from .regions import read_regions
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
    y: np.ndarray          # local: value − background − K f_fixed (mol mol⁻¹)
    R: Diagonal            # local observation error covariance
    obs: xr.Dataset        # local observations (ordered by store row)
    fixed_model: np.ndarray  # local K f_fixed (mol mol⁻¹)
    n_obs: int             # global number of observations
    obs_range: tuple[int, int]  # this rank's block [start, stop) of the global observations

    def departures(self) -> np.ndarray:
        """d = y − H x_b (local)."""
        return self.y - self.H.matvec(self.x_b)

    def simulate(self, x: np.ndarray) -> np.ndarray:
        """Modelled mole fraction above background, K f_fixed + H x (local, mol mol⁻¹)."""
        return self.fixed_model + self.H.matvec(x)


def prior_covariance(config: Config, state: StateSpace) -> Covariance:
    """B = ⊕_sectors σ²·(C_time ⊗ C_space) ⊕ diag(σ_bg²), exponential correlations in days
    between period midpoints and in km between region centroids."""
    cov = config.covariance
    mid = state.periods.start + (state.periods.end - state.periods.start) / 2
    dt_days = np.abs(mid[:, None] - mid[None, :]) / np.timedelta64(1, "D")
    time = Dense(exponential_correlation(dt_days.astype(np.float64), cov.time_days), name="covariance (time correlation)")
    sigma = np.full(state.n_region, cov.sigma)
    space = scaled_correlation(sigma, exponential_correlation(state.regions.distance_km(), cov.length_km),
                               name="covariance (spatial correlation of regions)")
    blocks: list[Covariance] = [Kronecker(time, space, name=f"B[{s}]") for s in state.sectors]
    if state.sites:
        sd = parse_quantity(config.state.background_offset_sigma, MOLE_FRACTION_UNITS)
        blocks.append(Diagonal(np.full(len(state.sites), sd**2), name="B[background offsets]"))
    return BlockDiagonal(blocks, name="B")


def _check_grid(config: Config, store: FootprintStore) -> None:
    if config.grid is None:
        return
    g = config.grid
    expected = Grid.regular(g.lat_min, g.lat_max, g.lon_min, g.lon_max, g.dlat, g.dlon)
    if not store.grid.same_as(expected):
        raise InputError(store.path, "grid", f"footprint grid ({store.grid.describe()}) differs from [grid] in "
                         f"{config.source} ({expected.describe()})", "fix [grid] or use footprints on that grid")


@dataclass(frozen=True, eq=False)
class Inputs:
    """Every input opened and checked, except the footprint values."""

    store: FootprintStore
    obs: xr.Dataset  # all observations, ordered by store row
    state: StateSpace


def open_inputs(config: Config) -> Inputs:
    """Open and validate every input except the footprint values (cheap, no rank split)."""
    for key, path in config.input_paths().items():
        if not Path(path).is_file():
            raise InputError(path, None, f"input file of {key} not found", f"check {key} in {config.source}")
    store = FootprintStore(config.transport.footprints)
    _check_grid(config, store)
    grid_source = str(store.path)
    obs = read_observations(config.observations.file, config.observations, store.obs, config.run.start,
                            config.run.end, store.path)
    prior = read_prior(config.prior.file, config.prior.optimised + config.prior.fixed, store.grid,
                       store.time_axis, grid_source)
    regions = read_regions(config.state.regions, store.grid, grid_source)
    periods = state_periods(config.run.start, config.run.end, config.state.period_days, store.time_axis,
                            str(config.source))
    sites = tuple(sorted(set(obs["site"].values.tolist()))) if config.state.background_offset else ()
    state = StateSpace(sectors=tuple(config.prior.optimised), regions=regions, periods=periods, sites=sites,
                       prior=prior, fixed_sectors=tuple(config.prior.fixed))
    return Inputs(store=store, obs=obs, state=state)


def read_truth(config: Config, state: StateSpace) -> np.ndarray | None:
    """The twin experiment's true state (``report.truth``), or None."""
    if config.report.truth is None:
        return None
    from .io import open_netcdf

    return state.from_dataset(open_netcdf(config.report.truth, "truth state"), "truth", str(config.report.truth))


def build_problem(config: Config, comm, inputs: Inputs | None = None) -> Problem:
    """Wire H, B, R, x_b and y for this rank; ``inputs`` from :func:`open_inputs` if already opened."""
    inputs = inputs or open_inputs(config)
    store, obs_all, state = inputs.store, inputs.obs, inputs.state
    B = prior_covariance(config, state)
    n_obs = obs_all.sizes["obs"]
    start, stop = partition(n_obs, comm.size, comm.rank)
    obs = obs_all.isel(obs=slice(start, stop))
    rows = obs["row"].values
    log.info("state: %d elements (%d sectors × %d periods × %d regions + %d offsets); observations: %d "
             "(%d on this rank); footprints: %s", state.size, state.n_sector, state.n_period, state.n_region,
             len(state.sites), n_obs, stop - start, store.path)
    if rows.size:
        block = store.read_rows(int(rows.min()), int(rows.max()) + 1, check=True)
        matrix = block[rows - rows.min()]
    else:
        matrix = store.read_rows(0, 0, check=True)
    K = FootprintOperator(matrix, comm=comm)
    site_pos = {s: i for i, s in enumerate(state.sites)}
    site_index = np.array([site_pos[s] for s in obs["site"].values], dtype=np.int64) if state.sites else np.zeros(
        stop - start, dtype=np.int64)
    H = ObservationOperator(K, state.E, site_index, len(state.sites), comm)
    fixed_model = K.matvec(state.fixed_flux)
    y = obs["value"].values - obs["background"].values - fixed_model
    R = Diagonal(obs["sigma"].values ** 2, name="R")
    return Problem(config=config, comm=comm, state=state, x_b=state.prior_mean(), B=B, H=H, y=y, R=R, obs=obs,
                   fixed_model=fixed_model, n_obs=n_obs, obs_range=(start, stop))
