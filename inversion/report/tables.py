"""CSV tables of everything in the report, and the report's NetCDF and JSON files.

==========================  =================================================================
file                        content
==========================  =================================================================
report_totals.csv           per region and report period: prior, posterior, σ, percentiles,
                            inventory, difference, inside-95 %, uncertainty reduction (and
                            truth, the low-rank σ of the variational solver and its error),
                            in the report unit; ``net_removal`` = −posterior
report_totals_tgc.csv       the same in Tg C yr-1 (CO₂ only)
report_summary.csv          whole-run mean, multi-year mean, trend (``statistic``)
report_summary_tgc.csv      the same in Tg C yr-1 (CO₂ only)
report_sectors.csv          prior and posterior (± σ) of each sector, region and period
report_sites.csv            per site: n, bias, RMSE, correlation, χ²/n, position
report_observations.csv     per observation: observed, modelled, background, σ
report_maps.csv             per grid cell: run-mean maps and sensitivity
report_regions.csv          per report region: code, area, resolution, sensitivity coverage
report_totals.nc            ``ReportData.totals`` (with the covariances between all totals)
report_summary.nc           ``ReportData.summary``
report_metadata.json        ``ReportData.metadata`` (settings, hashes, warnings)
==========================  =================================================================
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

from ..io import write_json, write_netcdf, write_text
from ..outputs import _csv_text
from .data import ReportData

_VALUE_COLUMNS = ("prior", "prior_sd", "posterior", "posterior_sd", "posterior_sd_lowrank", "p025", "p16", "p84",
                  "p975", "truth", "inventory", "inventory_sd", "difference", "difference_sd")


def _python(v):
    if isinstance(v, np.datetime64):
        return np.datetime_as_string(np.datetime64(v, "s"), unit="s")
    return v.item() if isinstance(v, np.generic) else v


def _rows(ds: xr.Dataset, axis: str, label_coords: tuple[str, ...], unit, factor: float) -> list[dict]:
    """Long-format rows (region × ``axis``) of a totals or summary dataset, values × ``factor``."""
    rows = []
    for r, region in enumerate(ds["region"].values):
        for k in range(ds.sizes[axis]):
            row = {"region": str(region), "region_code": str(ds["region_code"].values[r])}
            row.update({c: _python(ds[c].values[k]) for c in label_coords})
            row["unit"] = unit[k] if isinstance(unit, (list, np.ndarray)) else unit
            for name in _VALUE_COLUMNS:
                if name in ds:
                    row[name] = float(ds[name].values[r, k]) * factor
            if "posterior_sd_lowrank" in ds:
                row["lowrank_minus_exact_sd"] = row["posterior_sd_lowrank"] - row["posterior_sd"]
            row["has_inventory"] = bool(ds["has_inventory"].values[r, k])
            row["inventory_inside_95"] = bool(ds["inventory_inside_95"].values[r, k])
            row["consistent_95"] = bool(ds["consistent_95"].values[r, k])
            row["uncertainty_reduction"] = float(ds["uncertainty_reduction"].values[r, k])
            row["net_removal"] = -row["posterior"]
            rows.append(row)
    return rows


def totals_rows(data: ReportData, carbon: bool = False) -> list[dict]:
    """Rows of ``report_totals.csv`` (``carbon``: in Tg C yr-1)."""
    t = data.totals
    factor = t.attrs["carbon_factor"] if carbon else 1.0
    unit = t.attrs["carbon_units"] if carbon else data.unit
    return _rows(t, "period", ("period_kind", "period_label", "period_start", "period_end", "period_coverage"), unit,
                 factor)


def summary_rows(data: ReportData, carbon: bool = False) -> list[dict]:
    """Rows of ``report_summary.csv``."""
    s = data.summary
    factor = s.attrs["carbon_factor"] if carbon else 1.0
    units = [u.replace(data.unit, s.attrs["carbon_units"]) if carbon else u for u in s["statistic_unit"].values]
    return _rows(s, "statistic", ("statistic", "statistic_description", "statistic_start", "statistic_end",
                                  "statistic_years"), units, factor)


def _column(ds: xr.Dataset, name: str) -> str:
    """``name [units]`` (the CSV convention of tanhui's inputs), or ``name`` without units."""
    units = ds[name].attrs.get("units")
    return f"{name} [{units}]" if units else name


def _flat(ds: xr.Dataset, dims: tuple[str, ...], names) -> list[dict]:
    """One row per element of ``dims`` with the coordinates and the variables ``names`` (their
    units in brackets in the column names)."""
    stacked = ds[list(names)].transpose(*dims)
    index = np.indices([ds.sizes[d] for d in dims]).reshape(len(dims), -1).T
    rows = []
    for idx in index:
        row = {d: _python(ds[d].values[i]) if d in ds.coords else int(i) for d, i in zip(dims, idx)}
        row.update({_column(ds, n): _python(stacked[n].values[tuple(idx)]) for n in names})
        rows.append(row)
    return rows


def write_tables(data: ReportData, out_dir: Path) -> list[Path]:
    """Write every table of the report into ``out_dir`` (module docstring); returns the paths."""
    out_dir = Path(out_dir)
    tables = {"report_totals.csv": totals_rows(data), "report_summary.csv": summary_rows(data)}
    if data.totals.attrs["carbon_units"]:
        tables["report_totals_tgc.csv"] = totals_rows(data, carbon=True)
        tables["report_summary_tgc.csv"] = summary_rows(data, carbon=True)
    sectors = data.totals[["sector_prior", "sector_prior_sd", "sector_posterior", "sector_posterior_sd"]]
    sectors = sectors.assign_coords(period_label=data.totals["period_label"])
    rows = _flat(sectors, ("sector", "region", "period"), list(sectors.data_vars))
    for row in rows:
        row["period"] = str(data.totals["period_label"].values[row["period"]])
        row["unit"] = data.unit
    tables["report_sectors.csv"] = rows
    stats = data.site_stats
    tables["report_sites.csv"] = _flat(stats, ("site",), list(stats.data_vars))
    sites = data.sites
    tables["report_observations.csv"] = _flat(sites, ("obs",), [n for n in sites.data_vars])
    maps = data.maps
    tables["report_maps.csv"] = _flat(maps, ("lat", "lon"), [n for n in maps.data_vars
                                                             if maps[n].dims == ("lat", "lon")])
    regions = data.regions
    tables["report_regions.csv"] = _flat(regions.assign_coords(region_code=regions["region_code"]), ("region",),
                                         ["region_area", "resolution", "sensitivity_coverage"])
    paths = []
    for name, rows in tables.items():
        paths.append(out_dir / name)
        write_text(_csv_text(rows), paths[-1])
    write_netcdf(data.totals, out_dir / "report_totals.nc")
    write_netcdf(data.summary, out_dir / "report_summary.nc")
    write_json(data.metadata, out_dir / "report_metadata.json")
    return paths + [out_dir / n for n in ("report_totals.nc", "report_summary.nc", "report_metadata.json")]
