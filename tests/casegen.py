"""Small twin cases written into a temporary directory for tests (seconds to generate)."""

from __future__ import annotations

from pathlib import Path

CONFIG = """\
[run]
name = "tiny twin"
species = "co2"
start = 2024-07-01T00:00:00Z
end = {end}
output_dir = "output"

[grid]
lat_min = 30.0
lat_max = 36.0
lon_min = 110.0
lon_max = 118.0
dlat = {dlat}
dlon = {dlon}

[transport]
footprints = "data/footprints.h5"

[observations]
file = "data/observations.nc"
model_data_mismatch = "1.0 ppm"

[prior]
file = "data/prior_flux.nc"
optimised = ["bio"]
fixed = ["fossil"]

[state]
regions = "data/regions.nc"
period_days = {period_days}
background_offset = {background_offset}
background_offset_sigma = "1 ppm"

[covariance]
sigma = {sigma}
correlation_length = "{length}"
correlation_time = "5 day"

[solver]
method = "{method}"
tolerance = 1e-12
max_iterations = 400

[report]
truth = "data/truth_state.nc"
"""

TWIN = """\
seed = {seed}
flux_step_hours = 6
back_hours = 48
obs_hours_utc = {hours}
measurement_uncertainty = "0.3 ppm"
background = "410 ppm"
region_blocks = {blocks}

[[sites]]
code = "AAA"
name = "site A"
lat = 31.1
lon = 111.3
height = 50.0
[[sites]]
code = "BBB"
name = "site B"
lat = 33.6
lon = 114.4
height = 80.0
[[sites]]
code = "CCC"
name = "site C"
lat = 35.2
lon = 116.9
height = 30.0

[[cities]]
name = "city"
lat = 32.5
lon = 115.0
peak = 20.0
"""


def write_case(directory: Path, *, seed: int = 1, end: str = "2024-07-09T00:00:00Z", dlat: float = 1.0,
               dlon: float = 1.0, period_days: float = 4, background_offset: bool = True, sigma: float = 0.5,
               length: str = "300 km", method: str = "analytical", hours: str = "[4, 6, 8]",
               blocks: str = "[2, 2]") -> Path:
    """Write config.toml + twin.toml of a tiny twin case and return the case directory."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.toml").write_text(CONFIG.format(
        end=end, dlat=dlat, dlon=dlon, period_days=period_days,
        background_offset="true" if background_offset else "false", sigma=sigma, length=length, method=method))
    (directory / "twin.toml").write_text(TWIN.format(seed=seed, hours=hours, blocks=blocks))
    return directory


def make_case(directory: Path, **kwargs) -> Path:
    """Write and generate a tiny twin case (inputs on disk)."""
    from inversion.twin import make_twin_data

    case = write_case(directory, **kwargs)
    make_twin_data(case)
    return case
