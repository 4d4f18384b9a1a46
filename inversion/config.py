"""One TOML file per case, validated into frozen pydantic models before any heavy work.

* Unknown or misspelled keys are errors that list the allowed keys of their section (and the
  closest match).
* Paths resolve relative to the directory of the config file; ``$VARS`` expand in paths only
  (an unset variable is an error, never an empty string).
* Physical quantities are strings with their unit (``"1.5 ppm"``, ``"300 km"``, ``"14 day"``)
  parsed by :mod:`transport.units`, the one place where units are interpreted.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from transport.errors import InputError
from transport.units import MOLE_FRACTION_UNITS, parse_quantity

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


class TransportConfig(_Section):
    footprints: Path


class ObservationsConfig(_Section):
    """Observation file and the model–data mismatch added in quadrature to each uncertainty."""

    file: Path
    model_data_mismatch: str = "0 ppm"
    site_mismatch: dict[str, str] = {}

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


class PriorConfig(_Section):
    """Prior flux file (mol m-2 s-1 per sector variable) and which sectors are optimised."""

    file: Path
    optimised: list[str]
    fixed: list[str] = []

    @model_validator(mode="after")
    def _sectors(self) -> "PriorConfig":
        if not self.optimised:
            raise ValueError("prior.optimised must name at least one sector variable")
        both = set(self.optimised) & set(self.fixed)
        if both:
            raise ValueError(f"sectors {sorted(both)} are listed as both optimised and fixed")
        return self


class StateConfig(_Section):
    """State vector: scaling factors per (optimised sector, period, region) + extras."""

    regions: Path
    period_days: float = 7.0
    background_offset: bool = False
    background_offset_sigma: str = "1 ppm"

    @field_validator("period_days")
    @classmethod
    def _period(cls, v: float) -> float:
        if not v > 0:
            raise ValueError("period_days must be > 0")
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
    correlation_length: str = "200 km"
    correlation_time: str = "7 day"

    @field_validator("sigma")
    @classmethod
    def _sigma(cls, v: float) -> float:
        if not (v > 0 and np.isfinite(v)):
            raise ValueError("covariance.sigma must be a finite number > 0")
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
    tolerance: float = 1e-8
    max_iterations: int = 500
    reorthogonalize: bool = True

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


class ReportConfig(_Section):
    """Optional truth (twin experiments) printed and written beside the posterior."""

    truth: Path | None = None


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

    # Not part of the schema: where the file was read from (set by load_config).
    source: Path | None = None

    def input_paths(self) -> dict[str, Path]:
        """Every input file the run reads, by config key."""
        paths = {
            "transport.footprints": self.transport.footprints,
            "observations.file": self.observations.file,
            "prior.file": self.prior.file,
            "state.regions": self.state.regions,
        }
        if self.report.truth is not None:
            paths["report.truth"] = self.report.truth
        return paths


_PATH_KEYS = {
    ("run", "output_dir"),
    ("transport", "footprints"),
    ("observations", "file"),
    ("prior", "file"),
    ("state", "regions"),
    ("report", "truth"),
}
_UNSET_VAR = re.compile(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?")


def _resolve_paths(raw: dict, base: Path, source: Path) -> None:
    for section, key in _PATH_KEYS:
        table = raw.get(section)
        if not isinstance(table, dict) or key not in table or not isinstance(table[key], str):
            continue
        expanded = os.path.expandvars(table[key])
        leftover = _UNSET_VAR.search(expanded)
        if leftover:
            raise InputError(source, f"{section}.{key}", f"environment variable {leftover.group(0)} is not set",
                             "set it or write the path literally")
        path = Path(expanded).expanduser()
        table[key] = path if path.is_absolute() else (base / path)


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Walk the model tree along ``loc`` (minus the offending key) to list the allowed keys."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        annotation = field.annotation
        candidates = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        nested = [a for a in candidates if issubclass(a, BaseModel)]
        if not nested:
            return None
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
