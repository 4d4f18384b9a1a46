"""One TOML file per case, validated into frozen pydantic models before any heavy work.

* Unknown or misspelled keys are errors that list the allowed keys of their section (and the
  closest match).
* Paths resolve relative to the directory of the config file; ``$VARS`` expand in paths only
  (an unset variable is an error, never an empty string; ``${VAR:-default}`` gives an explicit
  default).
* Physical quantities are strings with their unit (``"1.5 ppm"``, ``"300 km"``, ``"14 day"``)
  parsed by :mod:`transport.units`, the one place where units are interpreted.
"""

from __future__ import annotations

import datetime as dt
import difflib
import glob
import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from transport.errors import InputError
from transport.units import MOLE_FRACTION_UNITS, parse_quantity, parse_units

from .regions import GRID_CELLS

CONFIG_NAME = "config.toml"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _to_datetime64(value: Any) -> np.datetime64:
    """TOML date/datetime or ISO string → UTC ``datetime64[s]`` (naive means UTC)."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return np.datetime64(value.replace(microsecond=0), "s")
    if isinstance(value, dt.date):
        return np.datetime64(value.isoformat(), "s")
    if isinstance(value, str):
        text = value.strip().removesuffix("Z")
        try:
            return np.datetime64(text, "s")
        except ValueError as exc:
            raise ValueError(f"not an ISO date/time: {value!r}") from exc
    raise ValueError(f"expected a date like 2024-07-01 or 2024-07-01T00:00:00Z, got {value!r}")


class RunConfig(_Section):
    """What is inverted and where the outputs go."""

    name: str
    species: Literal["co2", "ch4"] = "co2"
    start: Any
    end: Any
    output_dir: Path = Path("output")

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: Any) -> np.datetime64:
        return _to_datetime64(v)

    @model_validator(mode="after")
    def _order(self) -> "RunConfig":
        if not self.start < self.end:
            raise ValueError(f"run.start ({self.start}) must be before run.end ({self.end})")
        return self


class GridConfig(_Section):
    """Expected inversion grid (domain edges and spacing, degrees); inputs must match it."""

    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float
    dlat: float
    dlon: float

    def to_grid(self):
        """The :class:`transport.grid.Grid` these edges and spacings describe."""
        from transport.grid import Grid

        return Grid.regular(self.lat_min, self.lat_max, self.lon_min, self.lon_max, self.dlat, self.dlon)


class TransportConfig(_Section):
    footprints: Path


class ObservationSource(_Section):
    """One raw observation file (``[[observations.sources]]``)."""

    file: Path
    site: str | None = None  # site code, when the file does not name it
    format: Literal["auto", "tanhui", "obspack", "openghg", "csv"] | None = None  # default: observations.format


_HOURS_CLOCK = re.compile(r"^(utc|solar|[+-]\d{2}:\d{2})$")


class ObservationsConfig(_Section):
    """Observation files, their selection and averaging onto the footprint times, and the
    model–data mismatch added in quadrature to each uncertainty.

    Either ``file`` (one file) or ``sources`` (one table per file).  The paired tanhui schema
    (``format = "tanhui"``) is used as is; raw formats (obspack, openghg, csv) are selected and
    averaged onto the footprint receptor times (:mod:`inversion.selection`)."""

    file: Path | None = None
    format: Literal["auto", "tanhui", "obspack", "openghg", "csv"] = "auto"
    sources: list[ObservationSource] = []
    hours: list[int] | None = None  # receptor hours of day kept (None: all)
    hours_clock: str = "utc"  # utc | solar (UTC + longitude/15 h) | fixed offset "+08:00"
    use_flags: bool = True
    inlet_mismatch: Literal["warn", "error"] = "error"
    inlet_tolerance: str = "1 m"
    averaging_window: str | None = None  # e.g. "2 h"; required for raw formats
    averaging_align: Literal["start", "centre", "end"] = "start"  # where the receptor time sits in the window
    min_samples: int = 1
    measurement_uncertainty: Literal["repeatability", "variability", "both"] = "repeatability"
    unmatched: Literal["error", "drop"] = "error"
    model_data_mismatch: str = "0 ppm"
    site_mismatch: dict[str, str] = {}

    @model_validator(mode="after")
    def _files(self) -> "ObservationsConfig":
        if (self.file is None) == (not self.sources):
            raise ValueError("give either observations.file or [[observations.sources]] (one table per file), not both")
        if self.measurement_uncertainty != "repeatability" and self.min_samples < 2:
            raise ValueError(f"measurement_uncertainty = {self.measurement_uncertainty!r} uses the spread of the samples "
                             "in each averaging window: set min_samples ≥ 2")
        return self

    @field_validator("hours")
    @classmethod
    def _hours(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or any(not 0 <= h <= 23 for h in v)):
            raise ValueError("hours must list hours of day in 0…23 (omit the key to keep every hour)")
        return v

    @field_validator("hours_clock")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _HOURS_CLOCK.match(v):
            raise ValueError('hours_clock must be "utc", "solar" or a fixed UTC offset such as "+08:00"')
        return v

    @field_validator("inlet_tolerance")
    @classmethod
    def _inlet_tol(cls, v: str) -> str:
        if parse_quantity(v, "m", variable="observations.inlet_tolerance") < 0:
            raise ValueError("inlet_tolerance must be ≥ 0")
        return v

    @field_validator("averaging_window")
    @classmethod
    def _window(cls, v: str | None) -> str | None:
        if v is not None and not parse_quantity(v, "s", variable="observations.averaging_window") > 0:
            raise ValueError("averaging_window must be > 0, e.g. '2 h'")
        return v

    @field_validator("min_samples")
    @classmethod
    def _min_samples(cls, v: int) -> int:
        if v < 1:
            raise ValueError("min_samples must be ≥ 1")
        return v

    @property
    def inlet_tolerance_m(self) -> float:
        return parse_quantity(self.inlet_tolerance, "m")

    @property
    def averaging_window_s(self) -> float | None:
        return None if self.averaging_window is None else parse_quantity(self.averaging_window, "s")

    def source_list(self) -> list[ObservationSource]:
        """The observation files as sources (``file`` is one source of ``format``)."""
        if self.file is not None:
            return [ObservationSource(file=self.file, format=self.format)]
        return [s if s.format is not None else s.model_copy(update={"format": self.format}) for s in self.sources]

    @field_validator("model_data_mismatch")
    @classmethod
    def _mdm(cls, v: str) -> str:
        if parse_quantity(v, MOLE_FRACTION_UNITS, variable="observations.model_data_mismatch") < 0:
            raise ValueError("model_data_mismatch must be ≥ 0")
        return v

    @field_validator("site_mismatch")
    @classmethod
    def _site_mdm(cls, v: dict[str, str]) -> dict[str, str]:
        for site, text in v.items():
            if parse_quantity(text, MOLE_FRACTION_UNITS, variable=f"observations.site_mismatch.{site}") < 0:
                raise ValueError(f"site_mismatch.{site} must be ≥ 0")
        return v

    def mismatch(self, site: str) -> float:
        """Model–data mismatch for ``site`` in mol mol⁻¹."""
        text = self.site_mismatch.get(site, self.model_data_mismatch)
        return parse_quantity(text, MOLE_FRACTION_UNITS, variable="observations.site_mismatch")


class BackgroundConfig(_Section):
    """Where the background mole fraction of each observation comes from
    (:mod:`inversion.background`): ``file`` (the ``background`` variable of a tanhui
    observation file), ``curtains`` (boundary curtains × the store's particle-exit fractions)
    or ``series`` (a background time series per site)."""

    method: Literal["file", "curtains", "series"] = "file"
    curtains: list[Path] = []
    curtain_units: str | None = None  # units of curtain variables that have no units attribute
    series: list[Path] = []
    time_mapping: Literal["month", "linear", "constant"] | None = None  # default: month (curtains), linear (series)

    @model_validator(mode="after")
    def _inputs(self) -> "BackgroundConfig":
        if self.method == "curtains" and not self.curtains:
            raise ValueError('method = "curtains" needs curtains = ["…vmr_n/e/s/w files…"]')
        if self.method == "series" and not self.series:
            raise ValueError('method = "series" needs series = ["background.csv"]')
        if self.method != "curtains" and (self.curtains or self.curtain_units):
            raise ValueError(f'curtains and curtain_units are used only with method = "curtains" (method is {self.method!r})')
        if self.method != "series" and self.series:
            raise ValueError(f'series is used only with method = "series" (method is {self.method!r})')
        if self.method == "file" and self.time_mapping is not None:
            raise ValueError('time_mapping is used only with method = "curtains" or "series"')
        return self

    @field_validator("curtain_units")
    @classmethod
    def _units(cls, v: str | None) -> str | None:
        if v is not None:
            parse_quantity(f"1 {v}", MOLE_FRACTION_UNITS, variable="background.curtain_units")
        return v

    @property
    def mapping(self) -> str:
        """The time mapping in use (its default depends on the method)."""
        return self.time_mapping or {"curtains": "month", "series": "linear"}.get(self.method, "none")


PRIOR_PRODUCTS = ("cf", "odiac", "edgar", "carbontracker", "vprm", "gfed", "cams")


class SectorConfig(_Section):
    """One prior sector (``[prior.sectors.NAME]``): the inventory it is read from, how it is
    mapped onto the inversion grid and flux time axis (:mod:`inversion.inventories`), and
    whether its scaling factors are optimised (with prior σ ``sigma``) or it is held fixed."""

    product: Literal["cf", "odiac", "edgar", "carbontracker", "vprm", "gfed", "cams"] = "cf"
    file: Path  # a file, or a glob pattern for a series of files (e.g. one per month)
    variable: str | list[str] | None = None  # default: the product's; for "cf" the sector's name; a list is summed
    optimise: bool = True
    sigma: float | None = None  # prior σ of the scaling factors (default covariance.sigma)
    units: str | None = None  # overrides the file's units attribute (logged)
    time_mapping: Literal["step", "linear", "constant"] = "step"
    time_stamp: Literal["start", "middle"] | None = None  # what file time stamps mark (default: the product's)
    time_step: str = "auto"  # inventory step when the file has no time bounds: auto, month, year or "3 h"…
    year: int | None = None  # year of files that say it only in their name (ODIAC, EDGAR, GFED)
    nan: Literal["error", "zero"] = "error"  # NaN over the domain: refuse, or count, log and use 0
    regrid: bool = True  # false: the file must already be on the inversion grid

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: float | None) -> float | None:
        if v is not None and not (v > 0 and np.isfinite(v)):
            raise ValueError("sigma must be a finite number > 0")
        return v

    @field_validator("variable")
    @classmethod
    def _variable(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and (not v or len(set(v)) != len(v)):
            raise ValueError("variable must be a name or a non-empty list of distinct names (summed)")
        return v

    @field_validator("units")
    @classmethod
    def _units(cls, v: str | None) -> str | None:
        if v is not None:
            parse_units(v, variable="prior.sectors.*.units")
        return v

    @field_validator("time_step")
    @classmethod
    def _time_step(cls, v: str) -> str:
        if v not in ("auto", "month", "year") and not parse_quantity(v, "s", variable="prior.sectors.*.time_step") > 0:
            raise ValueError('time_step must be "auto", "month", "year" or a duration such as "1 h" or "1 day"')
        return v

    def files(self) -> list[Path]:
        """The sector's files: ``file`` itself, or the sorted matches of a glob pattern."""
        text = str(self.file)
        return [Path(p) for p in sorted(glob.glob(text))] if glob.has_magic(text) else [self.file]


class PriorConfig(_Section):
    """Prior fluxes, in one of two forms:

    * the shorthand ``file`` + ``optimised`` (+ ``fixed``): a tanhui/CF NetCDF already on the
      inversion grid, one variable per sector named in the lists;
    * one ``[prior.sectors.NAME]`` table per sector (:class:`SectorConfig`); ``optimised`` and
      ``fixed`` are then derived from each sector's ``optimise``.

    :attr:`sector_configs` gives both forms as sector tables."""

    file: Path | None = None
    optimised: list[str] = []
    fixed: list[str] = []
    sectors: dict[str, SectorConfig] = {}

    @model_validator(mode="after")
    def _sectors(self) -> "PriorConfig":
        if self.file is not None:
            if self.sectors:
                raise ValueError("give either prior.file (with optimised/fixed) or [prior.sectors.NAME] tables, not both")
            if not self.optimised:
                raise ValueError("prior.optimised is required with prior.file: name at least one sector variable")
        elif not self.sectors:
            raise ValueError("prior needs [prior.sectors.NAME] tables, or prior.file with prior.optimised")
        else:
            for key, derived in (("optimised", [n for n, s in self.sectors.items() if s.optimise]),
                                 ("fixed", [n for n, s in self.sectors.items() if not s.optimise])):
                if key in self.model_fields_set and getattr(self, key) != derived:
                    raise ValueError(f"prior.{key} is set by each sector's optimise key: remove prior.{key}")
                object.__setattr__(self, key, derived)  # derived, so the frozen model may hold it
            if not self.optimised:
                raise ValueError("at least one [prior.sectors.NAME] needs optimise = true")
        both = set(self.optimised) & set(self.fixed)
        if both:
            raise ValueError(f"sectors {sorted(both)} are listed as both optimised and fixed")
        return self

    @property
    def sector_configs(self) -> dict[str, SectorConfig]:
        """Every sector as a table; the shorthand means product "cf", variable NAME of
        ``file``, already on the inversion grid (``regrid = false``), step time mapping."""
        if self.file is None:
            return dict(self.sectors)
        return {name: SectorConfig(file=self.file, variable=name, optimise=name in self.optimised, regrid=False)
                for name in self.optimised + self.fixed}

    def sigma_of(self, sector: str, covariance: "CovarianceConfig") -> float:
        """Prior σ of ``sector``: ``covariance.sector_sigma`` (e.g. from ``tanhui tune``) or the
        sector's own ``sigma`` (setting both is refused), else ``covariance.sigma``."""
        if sector in covariance.sector_sigma:
            return covariance.sector_sigma[sector]
        table = self.sectors.get(sector)
        return table.sigma if table is not None and table.sigma is not None else covariance.sigma


class StateConfig(_Section):
    """State vector: scaling factors per (optimised sector, period, region) + extras."""

    regions: Literal["grid"] | Path  # a mask file, or "grid": every grid cell its own region (no file)
    period_days: float = 7.0
    background_offset: bool = False
    background_offset_sigma: str = "1 ppm"
    boundary_scaling: bool = False  # one scaling factor per domain edge (N, E, S, W) and period
    boundary_scaling_sigma: float = 0.1  # prior σ of those factors (dimensionless, prior mean 1)

    @field_validator("period_days")
    @classmethod
    def _period(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("period_days must be > 0")
        return v

    @field_validator("boundary_scaling_sigma")
    @classmethod
    def _bc_sigma(cls, v: float) -> float:
        if not (v > 0 and np.isfinite(v)):
            raise ValueError("boundary_scaling_sigma must be a finite number > 0")
        return v

    @field_validator("background_offset_sigma")
    @classmethod
    def _bg_sigma(cls, v: str) -> str:
        if not parse_quantity(v, MOLE_FRACTION_UNITS, variable="state.background_offset_sigma") > 0:
            raise ValueError("background_offset_sigma must be > 0")
        return v


class CovarianceConfig(_Section):
    """Prior error covariance of the scaling factors: σ² · C_time ⊗ C_space (exponential)."""

    sigma: float = 0.5
    sector_sigma: dict[str, float] = {}  # per optimised sector, overrides sigma (e.g. from `tanhui tune`)
    correlation_length: str = "200 km"
    correlation_time: str = "7 day"

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: float) -> float:
        if not (v > 0 and np.isfinite(v)):
            raise ValueError("covariance.sigma must be a finite number > 0")
        return v

    @field_validator("sector_sigma")
    @classmethod
    def _sector_sigma(cls, v: dict[str, float]) -> dict[str, float]:
        for sector, value in v.items():
            if not (value > 0 and np.isfinite(value)):
                raise ValueError(f"sector_sigma.{sector} must be a finite number > 0")
        return v

    @field_validator("correlation_length")
    @classmethod
    def _length(cls, v: str) -> str:
        if not parse_quantity(v, "km", variable="covariance.correlation_length") > 0:
            raise ValueError("correlation_length must be > 0 (use a tiny value such as '1 km' for no correlation)")
        return v

    @field_validator("correlation_time")
    @classmethod
    def _time(cls, v: str) -> str:
        if not parse_quantity(v, "day", variable="covariance.correlation_time") > 0:
            raise ValueError("correlation_time must be > 0 (use a tiny value such as '0.01 day' for no correlation)")
        return v

    @property
    def length_km(self) -> float:
        return parse_quantity(self.correlation_length, "km")

    @property
    def time_days(self) -> float:
        return parse_quantity(self.correlation_time, "day")


class SolverConfig(_Section):
    method: Literal["analytical", "variational"] = "analytical"
    form: Literal["auto", "state", "observation"] = "auto"
    # Analytical posterior covariance: the dense n_state² A, or ("aggregates", observation form
    # only) A kept as the factor of H B Hᵀ + R, exact for any aggregate on demand; "auto" picks
    # "aggregates" when the dense A would not fit in memory (inversion.solvers).
    posterior_covariance: Literal["auto", "dense", "aggregates"] = "auto"
    tolerance: float = 1e-8
    max_iterations: int = 500
    reorthogonalize: bool = True
    # Checkpoint: every N CG iterations (variational) or N accumulation steps of block_rows
    # observation rows per rank (analytical); 0: only when stopped by SIGTERM/SIGUSR1, a STOP
    # file or --stop-after.  In checkpoint_dir (default <run.output_dir>/checkpoint).
    checkpoint_every: int = 10
    checkpoint_dir: Path | None = None
    # Analytical solver: observation rows per accumulated block (default: ≈ 256 MiB of dense rows).
    block_rows: int | None = None

    @field_validator("tolerance")
    @classmethod
    def _tol(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("tolerance must be in (0, 1)")
        return v

    @field_validator("max_iterations")
    @classmethod
    def _iters(cls, v: int) -> int:
        if v < 1:
            raise ValueError("max_iterations must be ≥ 1")
        return v

    @field_validator("block_rows")
    @classmethod
    def _block_rows(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError("block_rows must be ≥ 1 (or unset: blocks of ≈ 256 MiB)")
        return v

    @field_validator("checkpoint_every")
    @classmethod
    def _every(cls, v: int) -> int:
        if v < 0:
            raise ValueError("checkpoint_every must be ≥ 0 (0: checkpoint only when stopped)")
        return v

    @model_validator(mode="after")
    def _aggregates_form(self) -> "SolverConfig":
        if self.posterior_covariance == "aggregates" and self.form == "state":
            raise ValueError('solver.posterior_covariance = "aggregates" needs the observation form (the state form '
                             'factorises the n_state² Hessian anyway): set solver.form = "observation" or "auto"')
        return self


REPORT_PERIOD_KINDS = ("period", "monthly", "annual", "run")


class ReportConfig(_Section):
    """Optional truth (twin experiments) printed and written beside the posterior, the regions
    whose totals are reported when they differ from the state regions (e.g. state = grid-cell
    clusters, report = provinces), and what the national sink report (:mod:`inversion.report`)
    shows: the reported quantity (``sectors`` summed; default all, the net flux), the periods
    of its tables (``periods``: state periods, calendar months, calendar years, the whole run),
    the inventory table compared with it (``inventory``, rows of ``inventory_category``) and
    the sentence saying what is compared (``comparable_quantity``); the percentiles of the
    PARIS files and the attributes they need."""

    truth: Path | None = None
    regions: Path | None = None
    sectors: list[str] = []
    periods: list[Literal["period", "monthly", "annual", "run"]] = ["annual"]
    inventory: Path | None = None
    inventory_category: str | None = None
    comparable_quantity: str | None = None
    percentiles: list[float] = [0.025, 0.975]
    institution: str = "not stated"
    license: str = "not stated"
    transport_model: str = "not stated"

    @field_validator("periods")
    @classmethod
    def _periods(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"periods must list distinct kinds among {', '.join(REPORT_PERIOD_KINDS)}")
        return v

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < q < 1 for q in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError("percentiles must be increasing probabilities in (0, 1), e.g. [0.025, 0.975]")
        return v

    @field_validator("sectors")
    @classmethod
    def _sectors(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("report.sectors lists a sector twice")
        return v


HYPER_KINDS = ("sigma", "correlation_length", "correlation_time", "mismatch")
# Internal unit of each kind: σ of the scaling factors, km, day, mol mol⁻¹.
HYPER_UNITS = {"sigma": "1", "correlation_length": "km", "correlation_time": "day", "mismatch": MOLE_FRACTION_UNITS}
_HYPER_ITEM = re.compile(r"^(?:(sigma|mismatch)(?::(\S+))?|(correlation_length|correlation_time))$")
_SINGULAR = {"sigma": "a prior σ of 0 makes B singular",
             "correlation_length": "B is undefined (singular) for a correlation length ≤ 0",
             "correlation_time": "B is undefined (singular) for a correlation time ≤ 0",
             "mismatch": "a model–data mismatch of 0 makes R singular where the measurement uncertainty is small, "
                         "and the search works in log-parameters"}


def _hyper_value(kind: str, value: Any, where: str) -> float:
    """A [hyper] value in the internal unit of ``kind`` (σ: a number; the others: a quantity string)."""
    if kind == "sigma":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: expected a quantity with its unit such as "
                         f"\"{ {'correlation_length': '300 km', 'correlation_time': '7 day'}.get(kind, '1 ppm')}\", "
                         f"got {value!r}")
    return parse_quantity(value, HYPER_UNITS[kind], variable=where)


class HyperBounds(_Section):
    """Search interval [lower, upper] of each kind of hyperparameter.  The optimiser works in
    log-parameters, and a lower bound ≤ 0 would make B or R singular, so both must be > 0."""

    sigma: tuple[float, float] = (0.01, 10.0)
    correlation_length: tuple[str, str] = ("1 km", "10000 km")
    correlation_time: tuple[str, str] = ("0.1 day", "1000 day")
    mismatch: tuple[str, str] = ("0.001 ppm", "100 ppm")

    @field_validator("sigma", "correlation_length", "correlation_time", "mismatch")
    @classmethod
    def _interval(cls, v: tuple, info) -> tuple:
        kind = info.field_name
        lo, hi = (_hyper_value(kind, b, f"hyper.bounds.{kind}") for b in v)
        if not (np.isfinite(lo) and lo > 0):
            raise ValueError(f"lower bound {v[0]!r} must be > 0: {_SINGULAR[kind]}")
        if not (np.isfinite(hi) and hi > lo):
            raise ValueError(f"upper bound {v[1]!r} must be finite and above the lower bound {v[0]!r}")
        return v

    def interval(self, kind: str) -> tuple[float, float]:
        """(lower, upper) in the internal unit of ``kind`` (:data:`HYPER_UNITS`)."""
        lo, hi = getattr(self, kind)
        return _hyper_value(kind, lo, kind), _hyper_value(kind, hi, kind)


class HyperInitial(_Section):
    """Starting values of the search; unset ones come from [covariance] and [observations]."""

    sigma: float | None = None
    correlation_length: str | None = None
    correlation_time: str | None = None
    mismatch: str | None = None

    @field_validator("sigma", "correlation_length", "correlation_time", "mismatch")
    @classmethod
    def _positive(cls, v, info):
        if v is not None and not _hyper_value(info.field_name, v, f"hyper.initial.{info.field_name}") > 0:
            raise ValueError(f"must be > 0: {_SINGULAR[info.field_name]}")
        return v

    def value(self, kind: str) -> float | None:
        v = getattr(self, kind)
        return None if v is None else _hyper_value(kind, v, kind)


class HyperConfig(_Section):
    """Type-II maximum likelihood of the error settings (``tanhui tune``).

    ``estimate`` lists what to estimate: ``sigma`` (one prior σ per optimised sector) or
    ``sigma:SECTOR``, ``correlation_length``, ``correlation_time``, ``mismatch`` (one
    model–data mismatch per site or site group) or ``mismatch:SITE_OR_GROUP``.
    """

    estimate: list[str] = ["sigma", "mismatch"]
    method: Literal["exact", "stochastic"] = "exact"
    probes: int = 32
    lanczos_steps: int = 40
    seed: int = 0
    max_iterations: int = 100
    tolerance: float = 1e-5
    min_obs_per_group: int = 30
    few_obs: Literal["refuse", "pool"] = "refuse"
    site_groups: dict[str, list[str]] = {}
    bounds: HyperBounds = HyperBounds()
    initial: HyperInitial = HyperInitial()

    @field_validator("estimate")
    @classmethod
    def _estimate(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one hyperparameter to estimate")
        for item in v:
            if not _HYPER_ITEM.match(item):
                raise ValueError(f"unknown hyperparameter {item!r}; use sigma, sigma:SECTOR, correlation_length, "
                                 "correlation_time, mismatch or mismatch:SITE_OR_GROUP")
        if len(set(v)) != len(v):
            raise ValueError("a hyperparameter is listed twice")
        for kind in ("sigma", "mismatch"):
            if kind in v and any(item.startswith(kind + ":") for item in v):
                raise ValueError(f"{kind!r} already means every {kind}; do not also list {kind}:NAME")
        return v

    @field_validator("probes", "lanczos_steps")
    @classmethod
    def _at_least_two(cls, v: int, info) -> int:
        if v < 2:
            raise ValueError(f"{info.field_name} must be ≥ 2 (a standard error needs two probes, a quadrature two nodes)")
        return v

    @field_validator("max_iterations", "min_obs_per_group")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be ≥ 1")
        return v

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("tolerance must be in (0, 1)")
        return v

    @field_validator("site_groups")
    @classmethod
    def _groups(cls, v: dict[str, list[str]]) -> dict[str, list[str]]:
        seen: dict[str, str] = {}
        for group, sites in v.items():
            if not sites:
                raise ValueError(f"site_groups.{group} is empty")
            for site in sites:
                if site in seen:
                    raise ValueError(f"site {site!r} is in both site_groups.{seen[site]} and site_groups.{group}")
                seen[site] = group
        return v

    def items(self) -> list[tuple[str, str | None]]:
        """``estimate`` as (kind, name or None)."""
        out = []
        for item in self.estimate:
            m = _HYPER_ITEM.match(item)
            out.append((m.group(3), None) if m.group(3) else (m.group(1), m.group(2)))
        return out


class Config(_Section):
    run: RunConfig
    grid: GridConfig | None = None
    transport: TransportConfig
    observations: ObservationsConfig
    prior: PriorConfig
    state: StateConfig
    covariance: CovarianceConfig = CovarianceConfig()
    solver: SolverConfig = SolverConfig()
    report: ReportConfig = ReportConfig()
    hyper: HyperConfig = HyperConfig()
    background: BackgroundConfig = BackgroundConfig()

    # Not part of the schema: where the file was read from (set by load_config).
    source: Path | None = None

    @model_validator(mode="after")
    def _boundary_scaling(self) -> "Config":
        if self.state.boundary_scaling and self.background.method != "curtains":
            raise ValueError('state.boundary_scaling scales the contribution of each domain edge: it needs '
                             f'[background] method = "curtains" (method is {self.background.method!r})')
        return self

    @model_validator(mode="after")
    def _sectors_known(self) -> "Config":
        named = set(self.covariance.sector_sigma) | {name for kind, name in self.hyper.items()
                                                     if kind == "sigma" and name is not None}
        unknown = sorted(named - set(self.prior.optimised))
        if unknown:
            raise ValueError(f"covariance.sector_sigma / hyper.estimate name sectors that are not optimised: "
                             f"{', '.join(unknown)} (prior.optimised = {self.prior.optimised})")
        # One σ per sector in one place: the same sector's σ in two tables would be ambiguous.
        twice = sorted(s for s in self.covariance.sector_sigma
                       if s in self.prior.sectors and self.prior.sectors[s].sigma is not None)
        if twice:
            raise ValueError(f"the prior σ of sector(s) {', '.join(twice)} is set both in covariance.sector_sigma "
                             f"and in [prior.sectors.<name>] sigma: keep one")
        return self

    @model_validator(mode="after")
    def _report_sectors_known(self) -> "Config":
        unknown = sorted(set(self.report.sectors) - set(self.prior.optimised) - set(self.prior.fixed))
        if unknown:
            raise ValueError(f"report.sectors names sectors that are not in the prior: {', '.join(unknown)} "
                             f"(sectors: {self.prior.optimised + self.prior.fixed})")
        return self

    def input_paths(self) -> dict[str, Path]:
        """Every input file the run reads, by config key."""
        paths = {"transport.footprints": self.transport.footprints}
        if self.observations.file is not None:
            paths["observations.file"] = self.observations.file
        for i, source in enumerate(self.observations.sources):
            paths[f"observations.sources[{i}].file"] = source.file
        if self.prior.file is not None:
            paths["prior.file"] = self.prior.file
        for name, sector in self.prior.sectors.items():
            files = sector.files() or [sector.file]  # an unmatched pattern is reported as not found
            key = f"prior.sectors.{name}.file"
            paths.update({key: files[0]} if files == [sector.file] else
                         {f"{key}[{i}]": path for i, path in enumerate(files)})
        if self.state.regions != GRID_CELLS:
            paths["state.regions"] = self.state.regions
        for name in ("curtains", "series"):
            for i, path in enumerate(getattr(self.background, name)):
                paths[f"background.{name}[{i}]"] = path
        if self.report.truth is not None:
            paths["report.truth"] = self.report.truth
        if self.report.regions is not None:
            paths["report.regions"] = self.report.regions
        if self.report.inventory is not None:
            paths["report.inventory"] = self.report.inventory
        return paths


_PATH_KEYS = {
    ("run", "output_dir"),
    ("solver", "checkpoint_dir"),
    ("transport", "footprints"),
    ("observations", "file"),
    ("prior", "file"),
    ("state", "regions"),
    ("report", "truth"),
    ("report", "regions"),
    ("report", "inventory"),
}
_PATH_LIST_KEYS = {("background", "curtains"), ("background", "series")}  # lists of paths
_SOURCE_TABLES = ("observations", "sources")  # array of tables, each with a path under "file"
_UNSET_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")
_DEFAULT_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}")


def _resolve_path(text: str, base: Path, source: Path, key: str) -> Path:
    """Expand ``$VAR``, ``${VAR}`` and ``${VAR:-default}`` (the default when VAR is unset or
    empty), then resolve relative to ``base``."""
    text = _DEFAULT_VAR.sub(lambda m: os.environ.get(m.group(1)) or m.group(2), text)
    expanded = os.path.expandvars(text)
    leftover = _UNSET_VAR.search(expanded)
    if leftover:
        raise InputError(source, key, f"environment variable {leftover.group(0)} is not set",
                         "set it or write the path literally")
    path = Path(expanded).expanduser()
    return path if path.is_absolute() else (base / path)


def _resolve_paths(raw: dict, base: Path, source: Path) -> None:
    for section, key in _PATH_KEYS:
        table = raw.get(section)
        if not isinstance(table, dict) or key not in table or not isinstance(table[key], str):
            continue
        if (section, key) == ("state", "regions") and table[key] == GRID_CELLS:
            continue  # not a path: every grid cell is a region
        table[key] = _resolve_path(table[key], base, source, f"{section}.{key}")
    for section, key in _PATH_LIST_KEYS:
        table = raw.get(section)
        if isinstance(table, dict) and isinstance(table.get(key), list):
            table[key] = [_resolve_path(p, base, source, f"{section}.{key}[{i}]") if isinstance(p, str) else p
                          for i, p in enumerate(table[key])]
    section, key = _SOURCE_TABLES
    table = raw.get(section)
    if isinstance(table, dict) and isinstance(table.get(key), list):
        for i, entry in enumerate(table[key]):
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                entry["file"] = _resolve_path(entry["file"], base, source, f"{section}.{key}[{i}].file")
    sectors = raw.get("prior", {}).get("sectors") if isinstance(raw.get("prior"), dict) else None
    if isinstance(sectors, dict):  # [prior.sectors.NAME] file (a path or a glob pattern)
        for name, entry in sectors.items():
            if isinstance(entry, dict) and isinstance(entry.get("file"), str):
                entry["file"] = _resolve_path(entry["file"], base, source, f"prior.sectors.{name}.file")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Walk the model tree along ``loc`` (minus the offending key) to list the allowed keys."""
    keyed = False
    for part in loc[:-1]:
        if isinstance(part, int) or keyed:  # index into a list of tables, or a key of a table of tables
            keyed = False
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return None
        keyed = getattr(annotation, "__origin__", None) is dict  # e.g. [prior.sectors.NAME]
        model = nested[0]
    return sorted(k for k in model.model_fields if k != "source")


def _format_validation_error(exc: ValidationError, source: Path) -> str:
    lines = [f"{source}: invalid configuration ({exc.error_count()} problem(s))"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, loc) or []
            guess = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" — did you mean {guess[0]!r}?" if guess else ""
            lines.append(f"  {where}: unknown key{hint} Allowed keys here: {', '.join(allowed)}")
        elif err["type"] == "missing":
            lines.append(f"  {where}: required key is missing")
        else:
            lines.append(f"  {where}: {err['msg']}")
    return "\n".join(lines)


class ConfigError(ValueError):
    """The configuration file is invalid; the message lists every problem."""


def resolve_config_path(path: str | os.PathLike) -> Path:
    """A case directory means its ``config.toml``."""
    p = Path(path)
    if p.is_dir():
        p = p / CONFIG_NAME
    if not p.is_file():
        raise InputError(p, None, "configuration file not found",
                         f"pass a TOML file or a case directory containing {CONFIG_NAME}")
    return p.resolve()


def load_config(path: str | os.PathLike) -> Config:
    """Read, resolve and validate a case configuration (no input file is opened here)."""
    source = resolve_config_path(path)
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    _resolve_paths(raw, source.parent, source)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from None
    except InputError as exc:  # a unit string that could not be parsed
        raise ConfigError(f"{source}: {exc}") from None
    return config.model_copy(update={"source": source})


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def provenance(config: Config) -> dict[str, str]:
    """sha256 of the config file and of every input file (for ``config.resolved.toml``)."""
    hashes = {"config": file_sha256(config.source)} if config.source else {}
    for key, path in config.input_paths().items():
        hashes[key] = file_sha256(path)
    return hashes
