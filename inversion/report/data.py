"""Everything a report shows, read from a run directory: :class:`ReportData`.

``load_report_data(RUN_DIR)`` reads only the run's outputs (``totals.nc``, ``maps.nc``,
``observations_modelled.nc``, ``diagnostics.json``, ``config.resolved.toml``) and the
inventory table, so a report can be made on another machine without the inputs and without
rerunning.  Every total and its uncertainty is an exact linear combination of the base totals
(:mod:`inversion.report.totals`); nothing is sampled.

Variables whose value does not exist are NaN, always with a stated reason (in the variable's
``note`` attribute): no inventory row for a region and period; no inventory σ; uncertainty
reduction of a cell with no optimised flux (prior σ = 0); a correlation of a single or
constant series.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from transport.errors import InputError

from .. import __version__
from ..aggregates import DOMAIN
from ..config import CONFIG_NAME, Config, ConfigError, load_config
from ..io import open_netcdf
from ..outputs import site_summary
from ..progress import log
from .inventory import Comparison, compare_periods, match_regions, read_inventory
from .totals import ANNUAL_MIN_COVERAGE, RANGES, SIGN_CONVENTION, TOTALS_FILE, BaseTotals, gaussian_ranges, \
    read_base_totals, report_periods, report_units, summary_statistics

RESOLVED_CONFIG = "config.resolved.toml"
RUN_FILES = (TOTALS_FILE, "maps.nc", "observations_modelled.nc", "diagnostics.json", RESOLVED_CONFIG)
MIN_RESOLUTION = 0.5  # report regions with ρ_R below this are not resolved by the state
MIN_UNCERTAINTY_REDUCTION = 0.1  # … or whose whole-run total the observations barely constrain
SENSITIVITY_THRESHOLD = 0.1  # a cell is "seen" when its sensitivity per area ≥ 10 % of the domain mean


@dataclass(frozen=True)
class ReportData:
    """Everything the report shows (the HTML page, its figures and the tables read only this).

    Units: totals in :attr:`unit` ("Tg CO2 yr-1" = Mt CO₂ yr⁻¹ for CO₂, "Gg CH4 yr-1" for CH₄;
    ``totals.attrs["carbon_factor"]`` converts CO₂ to Tg C yr⁻¹), mole fractions in ppm (CO₂)
    or ppb (CH₄), fluxes in mol m⁻² s⁻¹.  Sign: positive = emission, negative = sink.

    ``totals`` — dims (region, period); regions are the report regions plus ``ALL`` (their sum);
    periods those of ``[report] periods`` in order (coords ``period_kind`` ∈ period | monthly |
    annual | run, ``period_label`` e.g. "2023", "2023-07", "2024-07-01/2024-07-08",
    ``period_start``/``period_end`` the part covered by the run, ``period_nominal_start``/
    ``period_nominal_end`` the calendar month/year, ``period_coverage`` their ratio); coord
    ``region_code``.  Variables (the reported quantity, ``attrs["quantity"]``): ``prior``,
    ``prior_sd``, ``posterior``, ``posterior_sd`` (exact), ``posterior_sd_lowrank`` (variational
    solver only: from the Ritz pairs; exact − low-rank is the approximation's error),
    ``p025``, ``p16``, ``p84``, ``p975`` (Gaussian posterior percentiles), ``truth`` (twin
    experiments only), ``inventory``, ``inventory_sd`` (NaN: no row / no σ given),
    ``difference`` = posterior − inventory, ``difference_sd`` = √(σ_post² + σ_inv²) (σ_inv = 0
    when the table gives none), ``inventory_inside_95`` (bool: p025 ≤ inventory ≤ p975; False
    where there is no inventory — check ``has_inventory``), ``has_inventory`` (bool),
    ``uncertainty_reduction`` = 1 − σ_post/σ_prior; ``posterior_covariance(region, period,
    region_, period_)`` (and ``prior_covariance``, ``posterior_covariance_lowrank``) between all
    totals; the breakdown by sector ``sector_prior``, ``sector_prior_sd``, ``sector_posterior``,
    ``sector_posterior_sd`` (sector, region, period).  attrs: ``units``, ``carbon_units``,
    ``carbon_factor``, ``sign_convention``, ``comparable_quantity``, ``quantity``,
    ``inventory_file``, ``inventory_category``, ``solver``.

    ``summary`` — dims (region, statistic), the same variables as ``totals`` (without the
    covariances and sectors).  Statistics (coord ``statistic``; present only when defined):

    * ``mean`` — the mean over the whole run (duration-weighted over every state period), in
      :attr:`unit`;
    * ``annual_mean`` — the mean of the annual totals of the calendar years the run covers to
      ≥ 90 % (equal weight per year), in :attr:`unit` (present with ≥ 1 such year);
    * ``trend`` — the least-squares linear trend of those annual totals against the year, in
      :attr:`unit` per year (present with ≥ 2 such years).

    Coords ``statistic_unit``, ``statistic_description``, ``statistic_start``/``statistic_end``
    (time span), ``statistic_years`` ("2019 2020 2021" or ""). Their uncertainties use the full
    posterior covariance between periods.  Inventory: ``mean`` compares with a row of the run's
    own period; ``annual_mean`` and ``trend`` with the mean and slope of the inventory's annual
    values when it has every year used (``inventory_sd`` NaN: the correlation of inventory
    errors between years is not known; ``difference_sd`` is then the posterior σ).

    ``sites`` — dim obs (store order): ``time``, ``site``, ``obs_id``, ``observed``,
    ``prior_model``, ``posterior_model`` (modelled with background), ``background`` (prior),
    ``posterior_background``, ``sigma`` (total 1σ), ``measurement_uncertainty``, ``latitude``,
    ``longitude``, ``height``; ``units`` attribute on each mole fraction.

    ``site_stats`` — dim site: ``n``, ``prior_bias``, ``prior_rmse``, ``posterior_bias``,
    ``posterior_rmse`` (bias = mean(observed − modelled)), ``prior_correlation``,
    ``posterior_correlation``, ``prior_chi2_per_obs``, ``posterior_chi2_per_obs`` (mean of
    (residual/σ)²), ``latitude``, ``longitude``, ``height``.

    ``maps`` — dims (lat, lon), run means: ``prior_flux``, ``posterior_flux``, ``difference``
    (posterior − prior), ``prior_flux_sd``, ``posterior_flux_sd``, ``uncertainty_reduction``
    (1 − σ_post/σ_prior per cell; NaN where no flux is optimised), ``sensitivity`` (Σ of all
    footprints, m² s mol⁻¹), ``cell_area``; ``lat_bnds``, ``lon_bnds``.

    ``regions`` — the report regions (not ``ALL``): ``region_fraction(region, lat, lon)``,
    ``region_code``, ``region_area`` (m²), ``resolution`` (ρ_R: 1 = resolved by the state),
    ``sensitivity_coverage`` (fraction of the region's area where the sensitivity per area is
    ≥ 10 % of the domain mean), ``lat_bnds``, ``lon_bnds``; attrs: the mask file's provenance.

    ``diagnostics`` — ``diagnostics.json`` of the run.  ``metadata`` — see
    :func:`load_report_data` (sites, period, transport model, priors, background, solver and
    error settings, mask source, code version, config and input hashes, ``warnings``).
    """

    run_dir: Path
    config: Config
    species: str
    unit: str
    totals: xr.Dataset
    summary: xr.Dataset
    sites: xr.Dataset
    site_stats: xr.Dataset
    maps: xr.Dataset
    regions: xr.Dataset
    diagnostics: dict
    metadata: dict


# --- run directory ----------------------------------------------------------------------------

def resolve_run_dir(path: Path) -> Path:
    """A run's output directory (holding ``config.resolved.toml``), or a case directory / config
    file whose ``run.output_dir`` holds one."""
    path = Path(path)
    if (path / RESOLVED_CONFIG).is_file():
        return path
    if path.is_file() or (path / CONFIG_NAME).is_file():
        out = load_config(path).run.output_dir
        if (out / RESOLVED_CONFIG).is_file():
            return out
        path = out
    raise InputError(path, RESOLVED_CONFIG, "not the output directory of a completed run",
                     "pass the run's output directory (or its case), after `tanhui run` has finished")


def read_run_config(run_dir: Path) -> tuple[Config, dict]:
    """The configuration that ran and its ``[provenance]`` table (version and sha256 hashes)."""
    path = Path(run_dir) / RESOLVED_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    provenance = raw.pop("provenance", {})
    try:
        config = Config.model_validate(raw)
    except ValueError as exc:
        raise ConfigError(f"{path}: not a configuration this version can read ({exc})") from None
    return config, provenance


# --- totals -----------------------------------------------------------------------------------

def _groups(base: BaseTotals) -> list[list[int]]:
    n = len(base.regions)
    return [[r] for r in range(n)] + [list(range(n))]


def _combined(base: BaseTotals, sectors, targets: np.ndarray, factor: float) -> dict:
    """Means, σ and covariances of the combination, in report units, shaped (group, target)."""
    n_g, n_t = len(base.regions) + 1, targets.shape[0]
    res = base.combine(base.weights(sectors=sectors, groups=_groups(base), targets=targets))
    out = {}
    for key in ("prior", "posterior", "truth"):
        out[key] = None if res[key] is None else (res[key] * factor).reshape(n_g, n_t)
    for key in ("prior_cov", "posterior_cov", "posterior_cov_lowrank"):
        cov = res[key]
        out[key] = None if cov is None else (cov * factor**2).reshape(n_g, n_t, n_g, n_t)
        if cov is not None:
            out[key.replace("_cov", "_sd")] = np.sqrt(np.maximum(np.diag(cov), 0.0)).reshape(n_g, n_t) * factor
    return out


def _variables(c: dict, inventory: Comparison | None, factor: float, dims: tuple[str, str]) -> dict:
    """The report variables of one table (totals or summary) from :func:`_combined`."""
    post, sd = c["posterior"], c["posterior_sd"]
    ranges = gaussian_ranges(post, sd)
    out = {"prior": c["prior"], "prior_sd": c["prior_sd"], "posterior": post, "posterior_sd": sd}
    if c.get("posterior_sd_lowrank") is not None:
        out["posterior_sd_lowrank"] = c["posterior_sd_lowrank"]
    out.update(dict(zip(RANGES, ranges)))
    if c["truth"] is not None:
        out["truth"] = c["truth"]
    if inventory is None:
        value = sd_inv = np.full(post.shape, np.nan)
        present = np.zeros(post.shape, dtype=bool)
    else:
        value, sd_inv, present = inventory.value * factor, inventory.sd * factor, inventory.present
    out["inventory"], out["inventory_sd"], out["has_inventory"] = value, sd_inv, present
    out["difference"] = post - value
    out["difference_sd"] = np.where(present, np.sqrt(sd**2 + np.nan_to_num(sd_inv) ** 2), np.nan)
    out["inventory_inside_95"] = present & (value >= ranges[0]) & (value <= ranges[-1])
    with np.errstate(invalid="ignore"):
        out["consistent_95"] = present & (np.abs(out["difference"]) <= stats.norm.ppf(0.975) * out["difference_sd"])
    with np.errstate(divide="ignore", invalid="ignore"):
        out["uncertainty_reduction"] = np.where(c["prior_sd"] > 0, 1.0 - sd / c["prior_sd"], np.nan)
    notes = {"inventory": "NaN: no inventory row for this region and period",
             "inventory_sd": "NaN: no inventory row, or the row gives no uncertainty",
             "difference": "posterior - inventory; NaN without inventory",
             "difference_sd": "sqrt(posterior_sd^2 + inventory_sd^2), inventory_sd taken as 0 when not given; "
                              "NaN without inventory",
             "inventory_inside_95": "p025 <= inventory <= p975; False where has_inventory is False",
             "consistent_95": "|difference| <= 1.96 difference_sd (posterior and inventory agree within their "
                              "combined uncertainty); False where has_inventory is False",
             "uncertainty_reduction": "1 - posterior_sd / prior_sd; NaN where prior_sd = 0",
             "p025": "Gaussian 2.5 % percentile of the posterior", "p16": "Gaussian 16 % percentile",
             "p84": "Gaussian 84 % percentile", "p975": "Gaussian 97.5 % percentile",
             "posterior_sd": "exact", "posterior_sd_lowrank": "low-rank (Ritz pairs), variational solver"}
    return {k: (dims, v, {"note": notes[k]} if k in notes else {}) for k, v in out.items()}


def _totals_dataset(base, periods, sectors, units, inventory, names, codes) -> xr.Dataset:
    """The totals of every region and report period (:class:`ReportData`)."""
    targets = base.mean_targets(periods.start, periods.end)
    c = _combined(base, sectors, targets, units.factor)
    ds = xr.Dataset(_variables(c, inventory, units.factor, ("region", "period")),
                    coords={"region": names, "region_code": ("region", codes), "period": np.arange(periods.size),
                            "period_kind": ("period", periods.kind), "period_label": ("period", periods.label),
                            "period_start": ("period", periods.start), "period_end": ("period", periods.end),
                            "period_nominal_start": ("period", periods.nominal_start),
                            "period_nominal_end": ("period", periods.nominal_end),
                            "period_coverage": ("period", periods.coverage)})
    four = ("region", "period", "region_", "period_")
    for key in ("prior_cov", "posterior_cov", "posterior_cov_lowrank"):
        if c[key] is not None:
            ds[key.replace("_cov", "_covariance")] = (four, c[key], {"units": f"({units.label})2"})
    per_sector = [_combined(base, [s], targets, units.factor) for s in base.sectors]
    for key in ("prior", "prior_sd", "posterior", "posterior_sd"):
        ds[f"sector_{key}"] = (("sector", "region", "period"), np.stack([p[key] for p in per_sector]),
                               {"units": units.label})
    ds = ds.assign_coords(sector=list(base.sectors))
    for name in ds.data_vars:
        if ds[name].dtype.kind == "f" and "units" not in ds[name].attrs:
            ds[name].attrs["units"] = "1" if name == "uncertainty_reduction" else units.label
    return ds


def _summary_dataset(base, units, sectors, inventory_table, region_index, names, codes) -> xr.Dataset:
    """Whole-run mean, multi-year mean and trend (:class:`ReportData`,
    :func:`~inversion.report.totals.summary_statistics`)."""
    st = summary_statistics(base)
    c = _combined(base, sectors, st.targets, units.factor)
    inventory = None
    if inventory_table is not None:
        n_g, n_s = len(names), len(st.labels)
        whole = compare_periods(inventory_table, region_index, n_g, st.start[:1], st.end[:1], np.array(["run"]),
                                np.array(["run"]), refuse_if_none=False, warn=False)
        value, sd = np.full((n_g, n_s), np.nan), np.full((n_g, n_s), np.nan)
        value[:, 0], sd[:, 0] = whole.value[:, 0], whole.sd[:, 0]
        if st.years.size:
            yearly = compare_periods(inventory_table, region_index, n_g, st.years.nominal_start, st.years.nominal_end,
                                     st.years.kind, st.years.label, refuse_if_none=False, warn=False)
            full = yearly.present.all(axis=1)  # the inventory has every year used
            for k, label in enumerate(st.labels):
                if label in st.year_weights:
                    value[full, k] = yearly.value[full] @ st.year_weights[label]
        inventory = Comparison(value=value, sd=sd, present=np.isfinite(value), lines=np.zeros(value.shape, int))
    unit_of = [f"{units.label} yr-1" if rate else units.label for rate in st.per_year]
    ds = xr.Dataset(_variables(c, inventory, units.factor, ("region", "statistic")),
                    coords={"region": names, "region_code": ("region", codes), "statistic": list(st.labels),
                            "statistic_unit": ("statistic", unit_of),
                            "statistic_description": ("statistic", list(st.descriptions)),
                            "statistic_start": ("statistic", st.start), "statistic_end": ("statistic", st.end),
                            "statistic_years": ("statistic", [" ".join(st.years.label) if k else ""
                                                              for k in range(len(st.labels))])})
    for name in ds.data_vars:
        if ds[name].dtype.kind == "f":
            ds[name].attrs["units"] = "1" if name == "uncertainty_reduction" else "see statistic_unit"
    if inventory_table is not None:
        ds["inventory_sd"].attrs["note"] = ("mean: the inventory row of the run's period; annual_mean, trend: NaN "
                                           "(the correlation of inventory errors between years is not known)")
    return ds


# --- sites, maps, regions ---------------------------------------------------------------------

def _site_stats(sites: xr.Dataset) -> xr.Dataset:
    table = site_summary(sites)
    codes = sorted(table)
    site = sites["site"].values.astype(str)
    first = [int(np.flatnonzero(site == s)[0]) for s in codes]
    unit = sites["observed"].attrs.get("units", "")
    keys = ("prior_bias", "prior_rmse", "prior_correlation", "prior_chi2_per_obs", "posterior_bias", "posterior_rmse",
            "posterior_correlation", "posterior_chi2_per_obs")
    ds = xr.Dataset({"n": ("site", np.array([table[s]["n_obs"] for s in codes], dtype=np.int64))},
                    coords={"site": codes})
    for key in keys:
        ds[key] = ("site", np.array([table[s][key] for s in codes]),
                   {"units": "1" if "correlation" in key or "chi2" in key else unit})
    ds["prior_bias"].attrs["note"] = ds["posterior_bias"].attrs["note"] = "mean(observed - modelled)"
    for key in ("prior_correlation", "posterior_correlation"):
        ds[key].attrs["note"] = "NaN for a single or constant series"
    for name in ("latitude", "longitude", "height"):
        if name in sites:
            ds[name] = ("site", sites[name].values[first], dict(sites[name].attrs))
    return ds


def _maps(maps: xr.Dataset) -> xr.Dataset:
    out = maps[["prior_flux", "posterior_flux", "prior_flux_sd", "posterior_flux_sd", "sensitivity", "cell_area",
                "lat_bnds", "lon_bnds"]].copy()
    out["difference"] = (maps["posterior_flux"] - maps["prior_flux"]).assign_attrs(
        units="mol m-2 s-1", long_name="posterior - prior flux (run mean)")
    prior_sd = maps["prior_flux_sd"].values
    with np.errstate(divide="ignore", invalid="ignore"):
        reduction = np.where(prior_sd > 0, 1.0 - maps["posterior_flux_sd"].values / prior_sd, np.nan)
    out["uncertainty_reduction"] = (("lat", "lon"), reduction,
                                    {"units": "1", "long_name": "1 - posterior sd / prior sd of the run-mean flux",
                                     "note": "NaN where no flux is optimised (prior sd = 0)"})
    return out


def _regions(base: BaseTotals, maps: xr.Dataset) -> xr.Dataset:
    area = maps["cell_area"].values
    density = maps["sensitivity"].values / area
    threshold = SENSITIVITY_THRESHOLD * np.sum(density * area) / np.sum(area)
    seen = (density >= threshold) & (density > 0)
    covered = np.einsum("rij,ij->r", base.fraction, area * seen) / np.einsum("rij,ij->r", base.fraction, area)
    ds = xr.Dataset(
        {"region_fraction": (("region", "lat", "lon"), base.fraction, {"units": "1"}),
         "region_area": ("region", base.area, {"units": "m2"}),
         "resolution": ("region", base.resolution, {"units": "1", "long_name": "resolution by the state regions "
                                                    "(1: a union of state regions)"}),
         "sensitivity_coverage": ("region", covered, {"units": "1", "long_name": "fraction of the area where the "
                                  f"sensitivity per area is >= {SENSITIVITY_THRESHOLD:.0%} of the domain mean"}),
         "lat_bnds": (("lat", "bnds"), base.grid.lat_bounds, {"units": "degrees_north"}),
         "lon_bnds": (("lon", "bnds"), base.grid.lon_bounds, {"units": "degrees_east"})},
        coords={"region": list(base.regions), "region_code": ("region", list(base.codes)),
                "lat": ("lat", base.grid.lat, {"units": "degrees_north"}),
                "lon": ("lon", base.grid.lon, {"units": "degrees_east"})})
    ds.attrs.update(base.mask_attributes)
    return ds


def resolution_warnings(regions: xr.Dataset, summary: xr.Dataset) -> list[str]:
    """One warning per report region the state cannot resolve (ρ_R < 0.5) or the observations
    barely constrain (whole-run uncertainty reduction < 10 %), with the fraction of its area
    covered by the observations' sensitivity."""
    out = []
    reduction = summary["uncertainty_reduction"].sel(statistic="mean")
    for name in regions["region"].values:
        rho = float(regions["resolution"].sel(region=name))
        ur = float(reduction.sel(region=name))
        seen = float(regions["sensitivity_coverage"].sel(region=name))
        why = []
        if rho < MIN_RESOLUTION:
            why.append(f"the state cannot resolve it (on average only {rho:.0%} of the state regions it overlaps "
                       "lies inside it, so its total follows their scaling factors)")
        if not ur >= MIN_UNCERTAINTY_REDUCTION:
            why.append(f"the observations barely constrain it (uncertainty reduction {ur:.0%})")
        if why:
            out.append(f"region {name}: {' and '.join(why)}; {seen:.0%} of its area is covered by the observations' "
                       f"sensitivity (>= {SENSITIVITY_THRESHOLD:.0%} of the domain mean per area)")
    return out


# --- metadata ---------------------------------------------------------------------------------

def _metadata(config: Config, provenance: dict, diagnostics: dict, site_stats: xr.Dataset, base: BaseTotals,
              inventory_path, inventory_category, comparable: str, quantity: str, warnings: list[str]) -> dict:
    cov, obs, solver = config.covariance, config.observations, config.solver
    sites = [{"code": str(s), "n_obs": int(site_stats["n"].sel(site=s)),
              **{k: float(site_stats[k].sel(site=s)) for k in ("latitude", "longitude", "height") if k in site_stats}}
             for s in site_stats["site"].values]
    priors = {name: {"product": sector.product, "file": str(sector.file), "variable": sector.variable,
                     "optimised": sector.optimise,
                     "sigma": config.prior.sigma_of(name, cov) if sector.optimise else None,
                     "time_mapping": sector.time_mapping}
              for name, sector in config.prior.sector_configs.items()}
    hashes = {k: str(v) for k, v in provenance.items() if k != "tanhui_version"}
    return {
        "run_name": config.run.name, "species": config.run.species,
        "period": {"start": str(config.run.start), "end": str(config.run.end)},
        "report_periods": list(config.report.periods),
        "sites": sites,
        "transport_model": config.report.transport_model, "footprints": str(config.transport.footprints),
        "priors": priors,
        "background": {"method": config.background.method, "time_mapping": config.background.mapping,
                       "files": [str(p) for p in config.background.curtains + config.background.series]},
        "state": {"regions": str(config.state.regions), "period_days": config.state.period_days,
                  "background_offset": config.state.background_offset,
                  "boundary_scaling": config.state.boundary_scaling},
        "solver": {"method": solver.method, "form": solver.form, "tolerance": solver.tolerance,
                   "max_iterations": solver.max_iterations,
                   **{k: diagnostics[k] for k in ("iterations", "converged", "aggregate_iterations")
                      if k in diagnostics}},
        "errors": {"prior_sigma": cov.sigma, "sector_sigma": dict(cov.sector_sigma),
                   "correlation_length": cov.correlation_length, "correlation_time": cov.correlation_time,
                   "model_data_mismatch": obs.model_data_mismatch, "site_mismatch": dict(obs.site_mismatch),
                   "measurement_uncertainty": obs.measurement_uncertainty},
        "mask": dict(base.mask_attributes),
        "quantity": quantity, "comparable_quantity": comparable,
        "inventory": None if inventory_path is None else {"file": str(inventory_path), "category": inventory_category},
        "sign_convention": SIGN_CONVENTION,
        "code_version": {"run": str(provenance.get("tanhui_version", "unknown")), "report": __version__},
        "hashes": hashes,
        "warnings": warnings,
    }


# --- entry point ------------------------------------------------------------------------------

def load_report_data(run_dir: Path, inventory: Path | None = None) -> ReportData:
    """Read a run directory (or a case whose output directory holds a completed run) into
    :class:`ReportData`.  ``inventory`` overrides ``[report] inventory`` of the run's
    configuration.  Bad inventory tables raise :class:`~transport.errors.InputError`; report
    regions the state cannot resolve or the observations barely constrain are warned about
    (``metadata["warnings"]``, and the log)."""
    run_dir = resolve_run_dir(run_dir)
    config, provenance = read_run_config(run_dir)
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing:
        raise InputError(run_dir, ", ".join(missing), "run outputs missing (a run by an older tanhui, or unfinished)",
                         "rerun `tanhui run` with this version")
    species = config.run.species
    units = report_units(species)
    base = read_base_totals(run_dir / TOTALS_FILE)
    periods = report_periods(config.report.periods, base.state_periods)
    sectors = list(config.report.sectors) or list(base.sectors)
    quantity = "net flux (all sectors: " + " + ".join(base.sectors) + ")" if set(sectors) == set(base.sectors) \
        else "flux of " + " + ".join(sectors)
    names = list(base.regions) + [DOMAIN]
    codes = list(base.codes) + [DOMAIN]

    inventory_path = inventory if inventory is not None else config.report.inventory
    table = comparison = region_index = None
    if inventory_path is not None:
        table = read_inventory(inventory_path, species, config.report.inventory_category)
        region_index = match_regions(table, base.regions, base.codes)
        comparison = compare_periods(table, region_index, len(names), periods.nominal_start, periods.nominal_end,
                                     periods.kind, periods.label)
        short = periods.coverage < ANNUAL_MIN_COVERAGE
        if np.any(comparison.present[:, short]):
            log.warning("inventory values are compared with report periods the run covers only in part (%s): the "
                        "posterior is the mean over the covered part", ", ".join(
                            f"{lab} {cov:.0%}" for lab, cov in zip(periods.label[short], periods.coverage[short])))
    comparable = config.report.comparable_quantity or (
        f"posterior {quantity} of each region" + (f" vs inventory category {table.category!r}" if table else ""))

    totals = _totals_dataset(base, periods, sectors, units, comparison, names, codes)
    summary = _summary_dataset(base, units, sectors, table, region_index, names, codes)
    attrs = {"units": units.label, "carbon_units": units.carbon_label or "",
             "carbon_factor": (units.carbon_factor / units.factor) if units.carbon_factor else np.nan,
             "sign_convention": SIGN_CONVENTION, "comparable_quantity": comparable, "quantity": quantity,
             "inventory_file": "" if table is None else str(table.path),
             "inventory_category": "" if table is None else table.category, "solver": base.solver}
    totals.attrs.update(attrs)
    summary.attrs.update({**attrs, "units": "see statistic_unit"})

    sites = open_netcdf(run_dir / "observations_modelled.nc", "modelled observations")
    site_stats = _site_stats(sites)
    maps_raw = open_netcdf(run_dir / "maps.nc", "report maps")
    maps = _maps(maps_raw)
    regions = _regions(base, maps_raw)
    warnings = resolution_warnings(regions, summary)
    for text in warnings:
        log.warning("%s", text)
    diagnostics = json.loads((run_dir / "diagnostics.json").read_text(encoding="utf-8"))
    metadata = _metadata(config, provenance, diagnostics, site_stats, base, None if table is None else table.path,
                         None if table is None else table.category, comparable, quantity, warnings)
    return ReportData(run_dir=run_dir, config=config, species=species, unit=units.label, totals=totals,
                      summary=summary, sites=sites, site_stats=site_stats, maps=maps, regions=regions,
                      diagnostics=diagnostics, metadata=metadata)
