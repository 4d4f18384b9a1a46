"""Summaries of a footprint store: observations per site, time span, flux steps, grid,
sparsity and the total sensitivity map.

    total_sensitivity[i, j] = Σ_obs Σ_k K[obs, (k, i, j)]      m² s mol⁻¹

(the summed response of all observations to a unit flux held in cell (i, j) over every flux
step: where the network sees).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from transport.store import FootprintStore


def summarise(store: FootprintStore) -> dict:
    """Plain-Python summary of ``store`` (what ``tanhui footprints inspect`` prints)."""
    obs = store.obs
    sites = {}
    for site in sorted(set(obs["site"].values.tolist())):
        mask = obs["site"].values == site
        sites[site] = {"count": int(mask.sum()), "inlets_m": sorted(set(obs["height"].values[mask].tolist()))}
    axis = store.time_axis
    steps = np.unique((axis.end - axis.start).astype(np.int64))
    times = obs["time"].values
    return {
        "path": str(store.path),
        "n_obs": store.n_obs,
        "sites": sites,
        "receptor_times": (str(times.min()), str(times.max())) if store.n_obs else None,
        "flux_steps": {"count": axis.size, "start": str(axis.start[0]), "end": str(axis.end[-1]),
                       "lengths_s": steps.tolist(), "gaps": bool(np.any(axis.end[:-1] < axis.start[1:]))},
        "grid": store.grid.describe(),
        "n_columns": store.n_columns,
        "nnz": store.nnz,
        "density": store.nnz / (store.n_obs * store.n_columns) if store.n_obs else 0.0,
        "nnz_per_obs": store.nnz / store.n_obs if store.n_obs else 0.0,
        "boundary_heights_m": None if store.boundary_height is None else store.boundary_height.tolist(),
        "units": store.units,
    }


def total_sensitivity(store: FootprintStore) -> xr.Dataset:
    """Σ over observations and flux steps per cell, as a CF dataset on the store grid."""
    nt, (nlat, nlon) = store.time_axis.size, store.grid.shape
    column_sum = np.zeros(store.n_columns)
    for start, stop in store.iter_row_blocks():
        column_sum += np.asarray(store.read_rows(start, stop).astype(np.float64).sum(axis=0)).ravel()  # float64 sums
    total = column_sum.reshape(nt, nlat, nlon).sum(axis=0)
    grid = store.grid
    return xr.Dataset(
        {
            "total_sensitivity": (("lat", "lon"), total, {
                "units": "m2 s mol-1",
                "long_name": "footprint summed over all observations and flux time steps",
                "cell_methods": "obs: sum time: sum",
            }),
            "lat_bnds": (("lat", "nv"), grid.lat_bounds),
            "lon_bnds": (("lon", "nv"), grid.lon_bounds),
            "cell_area": (("lat", "lon"), grid.cell_area(), {"units": "m2"}),
        },
        coords={
            "lat": ("lat", grid.lat, {"units": "degrees_north", "standard_name": "latitude", "bounds": "lat_bnds"}),
            "lon": ("lon", grid.lon, {"units": "degrees_east", "standard_name": "longitude", "bounds": "lon_bnds"}),
        },
        attrs={"Conventions": "CF-1.8", "source": str(store.path), "n_obs": store.n_obs, "n_flux_steps": nt},
    )
