"""Synthetic twin cases: generate every input of a case from its ``twin.toml``.

The case's ``config.toml`` gives the grid, run period, state and error settings; ``twin.toml``
gives the sites, observation hours, footprint back-time, synthetic prior and the seed.
Generation is deterministic for a seed and writes, under the case, the footprint store, the
prior flux, the region mask (rectangular blocks; or, with ``regions_from_file``, the case
uses a mask built beforehand by ``tanhui regions build``), the observations and the truth:

    truth       x_t = x_b + L z,           z ~ N(0, I)          (a draw from B)
    observation y   = background + K f(x_t) + offset_t + ε,   ε ~ N(0, R)

where f is the state-to-flux map and R the diagonal of total observation errors, both built
by the same code the inversion uses (:func:`inversion.problem.build_problem`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

import numpy as np
import xarray as xr
from pydantic import BaseModel, ConfigDict, ValidationError

from transport.errors import InputError
from transport.grid import Grid, TimeAxis
from transport.store import FootprintStore
from transport.synthetic import plume_footprint_blocks
from transport.units import MOLE_FRACTION_UNITS, parse_quantity

from .config import Config, ConfigError, ReportConfig, load_config
from .io import write_netcdf
from .parallel import SerialComm
from .problem import build_problem
from .progress import log
from .regions import GRID_CELLS, read_regions

TWIN_NAME = "twin.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TwinSite(_Strict):
    code: str
    name: str
    lat: float
    lon: float
    height: float  # inlet height, m above ground


class TwinCity(_Strict):
    name: str
    lat: float
    lon: float
    peak: float  # fossil flux in the city's centre cell, µmol m-2 s-1


class TwinConfig(_Strict):
    seed: int
    flux_step_hours: int = 3
    back_hours: float = 96.0
    # footprint cells below this fraction of a step's largest cell are dropped (transport.synthetic)
    footprint_cutoff: float = 1e-3
    obs_hours_utc: list[int]
    measurement_uncertainty: str = "0.2 ppm"
    background: str = "420 ppm"
    region_blocks: tuple[int, int] = (4, 4)
    # Take the state regions from the existing mask file at state.regions (e.g. provinces from
    # `tanhui regions build`) instead of writing rectangular blocks there.
    regions_from_file: bool = False
    prior_pattern: Literal["diurnal", "seasonal"] = "diurnal"
    land_mask: Path | None = None  # mask file (relative to the case); Σ fractions = land share of a cell
    gpp_max: float = 15.0  # µmol m-2 s-1 at noon for full vegetation
    respiration: float = 4.0  # µmol m-2 s-1 for full vegetation
    fossil_diffuse: float = 0.3  # µmol m-2 s-1 spread over land, besides the cities
    sites: list[TwinSite]
    cities: list[TwinCity] = []


def load_twin(case_dir: Path) -> TwinConfig:
    path = case_dir / TWIN_NAME
    if not path.is_file():
        raise InputError(path, None, "twin description not found", f"a twin case needs {TWIN_NAME} beside config.toml")
    try:
        return TwinConfig.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except (ValidationError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _grid(config: Config) -> Grid:
    if config.grid is None:
        raise InputError(config.source, "grid", "a twin case needs a [grid] section", "add lat/lon limits and spacing")
    g = config.grid
    return g.to_grid()


def _receptors(config: Config, twin: TwinConfig, grid: Grid) -> xr.Dataset:
    days = np.arange(config.run.start.astype("datetime64[D]"), config.run.end.astype("datetime64[D]"))
    rows = []
    for site in twin.sites:
        if not (grid.lat_bounds[0, 0] < site.lat < grid.lat_bounds[-1, 1]
                and grid.lon_bounds[0, 0] < site.lon < grid.lon_bounds[-1, 1]):
            raise InputError(Path(config.source).parent / TWIN_NAME, f"sites.{site.code}", "site outside the grid",
                             "move the site or enlarge [grid]")
        for day in days:
            for hour in twin.obs_hours_utc:
                t = (day + np.timedelta64(hour, "h")).astype("datetime64[s]")
                if config.run.start <= t < config.run.end:
                    rows.append((f"{site.code}-{np.datetime_as_string(t, unit='h')}", t, site))
    return xr.Dataset({
        "obs_id": ("obs", [r[0] for r in rows]),
        "time": ("obs", np.array([r[1] for r in rows], dtype="datetime64[s]")),
        "site": ("obs", [r[2].code for r in rows]),
        "latitude": ("obs", [r[2].lat for r in rows]),
        "longitude": ("obs", [r[2].lon for r in rows]),
        "height": ("obs", [r[2].height for r in rows]),
    })


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_cells: float) -> np.ndarray:
    """A smooth random field in [0, 1] (Gaussian-filtered white noise, rescaled)."""
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), scale_cells, mode="wrap")
    return (f - f.min()) / (f.max() - f.min())


def _prior(twin: TwinConfig, grid: Grid, time: TimeAxis, rng: np.random.Generator,
           land: np.ndarray | None = None) -> xr.Dataset:
    """Biosphere NEE (µmol m-2 s-1) and fossil emissions (mol m-2 s-1), both × the land share
    (1 without a land mask): ``diurnal`` — a diurnal cycle at the step midpoints (for hourly to
    3-hourly steps over a few weeks); ``seasonal`` — see :func:`_seasonal_prior`."""
    land = np.ones(grid.shape) if land is None else land
    if twin.prior_pattern == "seasonal":
        return _seasonal_prior(twin, grid, time, rng, land)
    veg = (0.2 + 0.8 * _smooth_field(rng, grid.shape, 3.0)) * land
    mid = time.start + (time.end - time.start) / 2
    utc_hours = (mid - mid.astype("datetime64[D]")) / np.timedelta64(1, "h")
    solar = (utc_hours[:, None] + grid.lon[None, :] / 15.0) % 24.0  # local solar time (t, lon)
    light = np.clip(np.sin(np.pi * (solar - 6.0) / 12.0), 0.0, None)
    nee = (twin.respiration - twin.gpp_max * light[:, None, :]) * veg[None, :, :]
    fossil = np.broadcast_to(twin.fossil_diffuse * land + _cities(twin, grid), nee.shape) * 1e-6
    return _prior_dataset(nee, fossil, grid, time)


def _cities(twin: TwinConfig, grid: Grid) -> np.ndarray:
    """Σ over cities of a Gaussian hot spot (σ = 40 km) of height ``peak`` (µmol m-2 s-1)."""
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    fossil = np.zeros(grid.shape)
    for city in twin.cities:
        d2 = ((lat - city.lat) * 111.0) ** 2 + ((lon - city.lon) * 111.0 * np.cos(np.radians(city.lat))) ** 2
        fossil += city.peak * np.exp(-d2 / (2 * 40.0**2))
    return fossil


def _seasonal_prior(twin: TwinConfig, grid: Grid, time: TimeAxis, rng: np.random.Generator,
                    land: np.ndarray) -> xr.Dataset:
    """A year-round pattern for national cases, on any flux step (hours to days), all fluxes
    × the land share of each cell:

    * season s(t) = ½(1 + cos 2π(doy − 196)/365.25) (1 in mid-July), seasonality
      w(φ) = clip((φ − 18°)/27°, 0, 1) (weak in the tropics, full in the north);
    * GPP = gpp_max · light · veg · [(1 − w)(0.6 + 0.4 s) + w s^1.5], light = the step mean of
      max(0, sin π(h_solar − 6)/12) (sub-sampled, so daily steps get the daily mean 1/π);
    * respiration = respiration · veg · (0.35 + 0.65 [(1 − w) 0.8 + w s]);
    * NEE = respiration − GPP (µmol m-2 s-1, positive upward);
    * fossil = (fossil_diffuse · (0.2 + 0.8 pop) + cities) · (1 + 0.2 cos 2π(doy − 15)/365.25)
      (winter heating), pop a smooth random field; cities as in the diurnal pattern.
    """
    veg = (0.2 + 0.8 * _smooth_field(rng, grid.shape, 3.0)) * land
    pop = 0.2 + 0.8 * _smooth_field(rng, grid.shape, 4.0)
    n_sub = max(2, int(np.ceil(2 * time.duration_s.max() / 3600.0)))  # at least two samples per hour
    offsets = (np.arange(n_sub) + 0.5) / n_sub
    sub = time.start[:, None] + (offsets[None, :] * (time.end - time.start)[:, None]).astype("timedelta64[s]")
    utc_hours = (sub - sub.astype("datetime64[D]")) / np.timedelta64(1, "h")  # (t, n_sub)
    solar = (utc_hours[:, :, None] + grid.lon[None, None, :] / 15.0) % 24.0
    light = np.clip(np.sin(np.pi * (solar - 6.0) / 12.0), 0.0, None).mean(axis=1)  # (t, lon)
    mid = time.start + (time.end - time.start) / 2
    doy = (mid - mid.astype("datetime64[Y]")) / np.timedelta64(1, "D")
    season = 0.5 * (1.0 + np.cos(2 * np.pi * (doy - 196.0) / 365.25))[:, None, None]
    w = np.clip((grid.lat - 18.0) / 27.0, 0.0, 1.0)[None, :, None]
    green = (1 - w) * (0.6 + 0.4 * season) + w * season**1.5
    gpp = twin.gpp_max * light[:, None, :] * green * veg[None]
    resp = twin.respiration * veg[None] * (0.35 + 0.65 * ((1 - w) * 0.8 + w * season))
    heating = (1.0 + 0.2 * np.cos(2 * np.pi * (doy - 15.0) / 365.25))[:, None, None]
    fossil = (twin.fossil_diffuse * pop * land + _cities(twin, grid))[None] * heating * 1e-6
    return _prior_dataset(resp - gpp, fossil, grid, time)


def _prior_dataset(nee: np.ndarray, fossil: np.ndarray, grid: Grid, time: TimeAxis) -> xr.Dataset:
    return xr.Dataset(
        {
            "bio": (("time", "lat", "lon"), nee, {"units": "umol m-2 s-1", "long_name": "net ecosystem exchange "
                                                  "(synthetic), positive upward"}),
            "fossil": (("time", "lat", "lon"), fossil, {"units": "mol m-2 s-1", "long_name": "fossil CO2 emission "
                                                        "(synthetic), positive upward"}),
        },
        coords={"time": time.start, "lat": grid.lat, "lon": grid.lon},
    )


def _regions(grid: Grid, blocks: tuple[int, int]) -> xr.Dataset:
    """Rectangular blocks B01, B02, … (row-major from the south-west) covering the grid."""
    nb_lat, nb_lon = blocks
    i_edges = np.linspace(0, grid.shape[0], nb_lat + 1).round().astype(int)
    j_edges = np.linspace(0, grid.shape[1], nb_lon + 1).round().astype(int)
    frac = np.zeros((nb_lat * nb_lon,) + grid.shape)
    names = []
    for a in range(nb_lat):
        for b in range(nb_lon):
            k = a * nb_lon + b
            frac[k, i_edges[a]:i_edges[a + 1], j_edges[b]:j_edges[b + 1]] = 1.0
            names.append(f"B{k + 1:02d}")
    return xr.Dataset({"region_fraction": (("region", "lat", "lon"), frac, {"units": "1"})},
                      coords={"region": names, "lat": grid.lat, "lon": grid.lon})


def _observations(receptors: xr.Dataset, value: np.ndarray, uncertainty: float, background: float) -> xr.Dataset:
    n = receptors.sizes["obs"]
    return xr.Dataset({
        "obs_id": ("obs", receptors["obs_id"].values),
        "time": ("obs", receptors["time"].values),
        "site": ("obs", receptors["site"].values),
        "value": ("obs", value * 1e6, {"units": "ppm"}),
        "uncertainty": ("obs", np.full(n, uncertainty * 1e6), {"units": "ppm"}),
        "background": ("obs", np.full(n, background * 1e6), {"units": "ppm"}),
    })


def make_twin_data(case: Path) -> dict[str, Path]:
    """Generate all inputs of a twin case; returns the written paths by config key."""
    config = load_config(case)
    case_dir = Path(config.source).parent
    twin = load_twin(case_dir)
    rng = np.random.default_rng(twin.seed)
    grid = _grid(config)
    step = np.timedelta64(twin.flux_step_hours, "h")
    back = np.timedelta64(int(np.ceil(twin.back_hours / twin.flux_step_hours)) * twin.flux_step_hours, "h")
    time = TimeAxis.regular(config.run.start - back, config.run.end, step)
    receptors = _receptors(config, twin, grid)
    log.info("twin %s: %d receptors at %d sites, grid %s, %d flux steps", config.run.name, receptors.sizes["obs"],
             len(twin.sites), grid.describe(), time.size)
    for path in config.input_paths().values():
        path.parent.mkdir(parents=True, exist_ok=True)
    if twin.regions_from_file and not Path(config.state.regions).is_file():
        raise InputError(config.state.regions, None, "region mask not found (twin.toml: regions_from_file = true)",
                         "build it first with `tanhui regions build --like CASE --source ... --out` this path "
                         "(see the case's README)")

    # written block by block: memory stays at one block of rows whatever the number of footprints
    blocks = plume_footprint_blocks(grid, time, receptors, rng=rng, back_hours=twin.back_hours,
                                    cutoff=twin.footprint_cutoff)
    with FootprintStore.create(config.transport.footprints, grid, time, receptors, overwrite=True) as writer:
        for block in blocks:
            writer.append(block)
    land = None
    if twin.land_mask is not None:
        land = np.clip(read_regions(case_dir / twin.land_mask, grid, "[grid] of the twin case").coverage(), 0.0, 1.0)
    write_netcdf(_prior(twin, grid, time, rng, land), config.prior.file)
    if not twin.regions_from_file and config.state.regions != GRID_CELLS:  # "grid": no file, a region per cell
        write_netcdf(_regions(grid, twin.region_blocks), config.state.regions)

    # Observations need the forward model: write a placeholder (value = background), build the
    # problem with the inversion's own code, then write the real values.
    uncertainty = parse_quantity(twin.measurement_uncertainty, MOLE_FRACTION_UNITS)
    background = parse_quantity(twin.background, MOLE_FRACTION_UNITS)
    n = receptors.sizes["obs"]
    write_netcdf(_observations(receptors, np.full(n, background), uncertainty, background), config.observations.file)
    problem = build_problem(config.model_copy(update={"report": ReportConfig()}), SerialComm())  # truth not yet written
    truth = problem.x_b + problem.B.sample(rng)
    noise = np.sqrt(problem.R.variance()) * rng.standard_normal(problem.n_obs)
    value = problem.obs["background"].values + problem.simulate(truth) + noise
    # problem.obs is ordered by store row, which is the receptor order written above.
    write_netcdf(_observations(receptors, value, uncertainty, background), config.observations.file)
    if config.report.truth is not None:
        write_netcdf(problem.state.to_dataset(truth, "truth"), config.report.truth)
    return config.input_paths()
