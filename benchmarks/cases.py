"""Synthetic benchmark problems, generated through the realistic path.

Each size is a twin case (``config.toml`` + ``twin.toml``) written to a work directory and
generated with :func:`inversion.twin.make_twin_data`: plume-like footprints
(:mod:`transport.synthetic`) written to a footprint store (HDF5 CSR, float32), a prior, a
region mask, observations drawn from B and R.  The benchmark then reads it back with
``build_problem`` exactly as ``tanhui run`` does: a Kronecker time ⊗ space B (exponential
correlations), a diagonal R.

Sizes (observations × state):

* ``smoke``: 12 × 16 grid × 3 daily periods, ~170 obs (CI: checks the runner, not timings);
* ``S``: 30 × 40 grid × 7 daily periods, one region per cell (8 400 state), 980 obs, 48 h
  back — small enough for the naive dense formula;
* ``M`` "national year, regions": 10 × 10 = 100 regions × 52 weeks (5 200 state) on a
  40 × 50 grid, 20 020 obs (11 sites × 5 afternoon hours × 364 days), 48 h back, analytical;
* ``L`` "national year, grid": every cell of a 70 × 120 grid its own region
  (``state.regions = "grid"``) × 52 weeks (436 800 state), 49 140 obs (27 sites × 5 hours ×
  364 days), 240 h back, variational only.  Daily flux steps and a footprint cutoff of 3 %
  of each step's largest cell keep it at ≈ 3 × 10⁸ footprint non-zeros (≈ 6 000 per
  observation; with 3-hourly steps and the default 0.1 % cutoff the wide 10-day plumes would
  give ≈ 10⁵ per observation, 5 × 10⁹ in all);
* ``L20k-analytical``: the same grid, state and footprints model with 20 020 obs (11 sites),
  for an analytical solver that forms H B Hᵀ in observation blocks (``inversion/gram.py``);
  neither dense form fits (state form n² = 1.5 TB, observation form H L = 70 GB), so it is
  only run when asked for by name, and only useful once the analytical solver's ``auto``
  form picks that blocked path (until then the worker would try the 70 GB dense form).

The grid sits over eastern China at 0.5° (as the demo; L over China, from 18° N 73° E);
sites are spread over it on a regular lattice (deterministic).

``python -m benchmarks.cases --size L --case DIR`` generates one case in its own process
(the runner does this, so the generation's memory is its own) and records its time and peak
RSS in ``DIR/data/generated.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Size:
    name: str
    nlat: int
    nlon: int
    days: int
    period_days: int
    region_blocks: tuple[int, int]
    n_sites: int
    obs_hours: tuple[int, ...]
    back_hours: int
    flux_step_hours: int
    solvers: tuple[str, ...]
    ingest_files: int
    max_iterations: int = 300
    tolerance: float = 1e-6
    footprint_cutoff: float = 1e-3  # twin.toml footprint_cutoff (transport.synthetic's cutoff)
    grid_regions: bool = False  # state.regions = "grid" (every cell its own region, no mask file)
    origin: tuple[float, float] = (22.0, 104.0)  # south-west corner of the grid (lat, lon)

    @property
    def n_state(self) -> int:
        return self.region_blocks[0] * self.region_blocks[1] * (self.days // self.period_days)

    @property
    def n_obs(self) -> int:
        return self.n_sites * len(self.obs_hours) * self.days


SIZES = {
    "smoke": Size("smoke", 12, 16, 3, 1, (12, 16), 6, (4, 5, 6), 24, 3, ("analytical", "variational"), 12,
                  max_iterations=100),
    "S": Size("S", 30, 40, 7, 1, (30, 40), 20, (2, 3, 4, 5, 6, 7, 8), 48, 3, ("analytical", "variational"), 200),
    "M": Size("M", 40, 50, 364, 7, (10, 10), 11, (4, 5, 6, 7, 8), 48, 3, ("analytical", "variational"), 1000),
    "L": Size("L", 70, 120, 364, 7, (70, 120), 27, (4, 5, 6, 7, 8), 240, 24, ("variational",), 0,
              max_iterations=60, tolerance=1e-5, footprint_cutoff=3e-2, grid_regions=True, origin=(18.0, 73.0)),
    "L20k-analytical": Size("L20k-analytical", 70, 120, 364, 7, (70, 120), 11, (4, 5, 6, 7, 8), 240, 24,
                            ("analytical-aggregates",), 0, tolerance=1e-5, footprint_cutoff=3e-2, grid_regions=True,
                            origin=(18.0, 73.0)),
}

DEG = 0.5


def _sites(size: Size) -> list[dict]:
    """``n_sites`` towers on a lattice inside the grid (one cell in from the edges)."""
    k = int(np.ceil(np.sqrt(size.n_sites * size.nlon / size.nlat)))
    rows = int(np.ceil(size.n_sites / k))
    lat0, lon0 = size.origin
    lats = lat0 + DEG * (1 + (size.nlat - 2) * (np.arange(rows) + 0.5) / rows)
    lons = lon0 + DEG * (1 + (size.nlon - 2) * (np.arange(k) + 0.5) / k)
    sites = [(la, lo) for la in lats for lo in lons][: size.n_sites]
    return [{"code": f"S{i:02d}", "name": f"site {i}", "lat": round(float(la), 3), "lon": round(float(lo), 3),
             "height": 50.0} for i, (la, lo) in enumerate(sites)]


def _toml_value(v) -> str:
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


def write_case(size: Size, case: Path, *, method: str = "analytical") -> Path:
    """Write ``config.toml`` and ``twin.toml`` of ``size`` under ``case``; returns the config path."""
    case.mkdir(parents=True, exist_ok=True)
    start = np.datetime64("2024-01-01T00:00:00")
    end = start + np.timedelta64(size.days, "D")
    lat0, lon0 = size.origin
    regions = "grid" if size.grid_regions else "data/regions.nc"
    config = f"""# benchmark case {size.name} (generated by benchmarks/cases.py)
[run]
name = "benchmark {size.name}"
species = "co2"
start = {np.datetime_as_string(start)}Z
end = {np.datetime_as_string(end)}Z
output_dir = "output"

[grid]
lat_min = {lat0}
lat_max = {lat0 + DEG * size.nlat}
lon_min = {lon0}
lon_max = {lon0 + DEG * size.nlon}
dlat = {DEG}
dlon = {DEG}

[transport]
footprints = "data/footprints.h5"

[observations]
file = "data/observations.nc"
model_data_mismatch = "1.5 ppm"

[prior]
file = "data/prior_flux.nc"
optimised = ["bio"]
fixed = ["fossil"]

[state]
regions = "{regions}"
period_days = {size.period_days}

[covariance]
sigma = 0.5
correlation_length = "200 km"
correlation_time = "7 day"

[solver]
method = "{method}"
tolerance = {size.tolerance}
max_iterations = {size.max_iterations}
"""
    twin = ["seed = 20261124", f"flux_step_hours = {size.flux_step_hours}", f"back_hours = {size.back_hours}",
            f"obs_hours_utc = {_toml_value(list(size.obs_hours))}", 'measurement_uncertainty = "0.2 ppm"',
            'background = "420 ppm"', f"region_blocks = {_toml_value(list(size.region_blocks))}",
            f"footprint_cutoff = {size.footprint_cutoff!r}", ""]
    for site in _sites(size):
        twin += ["[[sites]]"] + [f"{k} = {_toml_value(v)}" for k, v in site.items()] + [""]
    (case / "config.toml").write_text(config, encoding="utf-8")
    (case / "twin.toml").write_text("\n".join(twin), encoding="utf-8")
    return case / "config.toml"


def generate(size: Size, case: Path) -> dict:
    """Write the case and generate its inputs (footprint store, prior, regions, observations)
    in this process; kept when already generated for the same description.  Returns the
    record of ``data/generated.json``: the size's description, the generation's wall time
    and peak RSS (VmHWM of this process, bytes), and the config path."""
    from inversion.twin import make_twin_data

    config = case / "config.toml"
    marker = case / "data" / "generated.json"
    if config.is_file() and marker.is_file():
        record = json.loads(marker.read_text())
        if record.get("data") == data_key(size):  # same inputs: only the solver settings may differ
            write_case(size, case)
            return {**record, "size": repr(size)}
    t0 = time.perf_counter()
    write_case(size, case)
    make_twin_data(case)
    record = {"size": repr(size), "data": data_key(size), "seconds": time.perf_counter() - t0,
              "peak_rss_bytes": _vm_hwm(), "config": str(config)}
    marker.write_text(json.dumps(record, indent=1))
    return record


def data_key(size: Size) -> str:
    """What the generated inputs depend on: the size without its solver settings."""
    return repr(replace(size, name="", solvers=(), max_iterations=0, tolerance=0.0))


def _vm_hwm() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cases", description="generate one benchmark case")
    parser.add_argument("--size", required=True, choices=sorted(SIZES))
    parser.add_argument("--case", type=Path, required=True, help="directory of the case")
    args = parser.parse_args(argv)
    print(json.dumps(generate(SIZES[args.size], args.case)))


if __name__ == "__main__":
    main()
