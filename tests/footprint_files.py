"""Small synthetic footprint files with the exact variable names and attributes of the real
formats (see ../shared/docs/FORMATS.md and the samples in ../shared/data/external)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

EXTERNAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "external"
ACRG_FOOTPRINTS = EXTERNAL / "acrg" / "tests" / "files" / "LPDM" / "fp_NAME_minimal" / "EUROPE"
ACRG_FLUX = EXTERNAL / "acrg" / "tests" / "files" / "LPDM" / "emissions" / "EUROPE" / "ch4_EUROPE_reduced_2013.nc"
OPENGHG_FOOTPRINTS = EXTERNAL / "openghg" / "tests" / "data" / "footprints"
ICOS_STILT = (EXTERNAL / "icos_stiltweb" / "src" / "test" / "resources" / "stilt-sample-run" / "output" / "Footprints"
              / "XXX" / "foot2012x12x08x18x46.55Nx007.98Ex00720_aggreg.nc")

EPOCH = np.datetime64("1970-01-01T00:00:00", "s")
HEIGHTS = np.arange(500.0, 20000.0, 1000.0, dtype=np.float32)  # the 20 NAME levels, m


def seconds(times, since="1970-01-01T00:00:00") -> np.ndarray:
    return (np.asarray(times, dtype="datetime64[s]") - np.datetime64(since, "s")).astype(np.float64)


def write(ds: xr.Dataset, path: Path, encoding: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_netcdf(path, engine="h5netcdf", encoding=encoding or {})
    return path


def stilt_v2(path: Path, values: np.ndarray, lat, lon, times=None, *, units="ppm (umol-1 m2 s)", variable="foot",
             dims=("lat", "lon"), fill=-1.0, attrs=None, var_attrs=None) -> Path:
    """R-STILT v2 ``<id>_foot.nc``: foot(time, lat, lon) float32, _FillValue -1, time in
    seconds since 1970 (the start of each backward interval); no time dim when ``times`` is None."""
    lat_dim, lon_dim = dims
    coords = {lat_dim: (lat_dim, np.asarray(lat, np.float64), {"units": "degrees_north", "standard_name": "latitude",
                                                                "long_name": "latitude at cell center"}),
              lon_dim: (lon_dim, np.asarray(lon, np.float64), {"units": "degrees_east", "standard_name": "longitude",
                                                               "long_name": "longitude at cell center"})}
    var_dims = (lat_dim, lon_dim)
    if times is not None:
        coords["time"] = ("time", seconds(times), {"units": "seconds since 1970-01-01 00:00:00Z", "standard_name": "time",
                                                   "long_name": "utc time", "calendar": "standard"})
        var_dims = ("time",) + var_dims
    foot_attrs = {"standard_name": "footprint", "long_name": "stilt surface influence footprint"}
    if units is not None:
        foot_attrs["units"] = units
    foot_attrs.update(var_attrs or {})
    ds = xr.Dataset({variable: (var_dims, np.asarray(values, np.float32), foot_attrs)}, coords=coords,
                    attrs={"crs": "+proj=longlat", "crs_format": "PROJ.4", "documentation": "github.com/uataq/stilt",
                           "title": "STILT Footprint", "time_created": "2018-05-14 19:49:09", **(attrs or {})})
    return write(ds, path, {variable: {"_FillValue": np.float32(fill)}})


def icos_stilt(path: Path, values: np.ndarray, lat_ll, lon_ll, time, *, backtime="240 hours") -> Path:
    """ICOS STILT ``foot…_aggreg.nc``: foot(time=1, lat, lon) float64 in 'ppm per (micromol m-2 s-1)',
    _FillValue -1e30, lat/lon the cells' lower-left corners, time in days since 2000."""
    days = seconds([time], "2000-01-01T00:00:00") / 86400.0
    ds = xr.Dataset(
        {"foot": (("time", "lat", "lon"), np.asarray(values, np.float64)[None],
                  {"units": "ppm per (micromol m-2 s-1)",
                   "long_name": "STILT footprints integrated over backward time intervall backtime"})},
        coords={"time": ("time", days, {"units": "days since 2000-01-01 00:00:00 UTC", "long_name": "footprint initial date"}),
                "lat": ("lat", np.asarray(lat_ll, np.float64), {"units": "degrees_north",
                                                                "long_name": "degrees latitude of center of grid boxes"}),
                "lon": ("lon", np.asarray(lon_ll, np.float64), {"units": "degrees_east",
                                                                "long_name": "degrees longitude of center of grid boxes"})},
        attrs={"backtime": backtime, "description": "aggregated STILT footprints on lon/lat/time grid, aggregated in grid "
               "boxes (lat,lon) and stilt start time (time), aggregated over backtime hours prior to start time"}
        if backtime else {},
    )
    return write(ds, path, {"foot": {"_FillValue": -1e30}})


def name_file(path: Path, fp: np.ndarray, lat, lon, times, *, release=(53.32611, -9.90387), attrs=None,
              boundary: dict | None = None, hitres: np.ndarray | None = None, h_back=None,
              fp_units="(mol/mol)/(mol/m2/s)") -> Path:
    """NAME footprint as used by acrg/openghg: fp(lat, lon, time) float32, time in seconds since
    the start of the year (label left), release_lat/lon(time), particle_locations_n/e/s/w,
    optional fp_HiTRes(lat, lon, time, H_back) float64 without units."""
    times = np.asarray(times, dtype="datetime64[s]")
    year = str(times.min())[:4] + "-01-01T00:00:00"
    n = times.size
    data = {
        "fp": (("lat", "lon", "time"), np.asarray(fp, np.float32), {"units": fp_units}),
        "release_lat": ("time", np.full(n, release[0], np.float32), {"units": "Degrees_north"}),
        "release_lon": ("time", np.full(n, release[1], np.float32), {"units": "Degrees_east"}),
        "PBLH": ("time", np.full(n, 800.0, np.float32), {"units": "m"}),
        "temperature": ("time", np.full(n, 280.0, np.float32), {"units": "K"}),
    }
    coords = {
        "lat": ("lat", np.asarray(lat, np.float32), {"units": "Degrees_north"}),
        "lon": ("lon", np.asarray(lon, np.float32), {"units": "Degrees_east"}),
        "time": ("time", seconds(times, year), {"long_name": "time", "standard_name": "time", "label": "left",
                                              "period": "2.0 hours", "units": f"seconds since {year[:10]}",
                                              "comment": "time stamp corresponds to the beginning of each averaging period",
                                              "calendar": "gregorian"}),
        "height": ("height", HEIGHTS),
    }
    if boundary is not None:
        for edge, values in boundary.items():
            cells = "lon" if edge in "ns" else "lat"
            data[f"particle_locations_{edge}"] = (("height", cells, "time"), np.asarray(values, np.float32), {
                "units": "", "long_name": f"Fraction of total particles leaving domain ({edge.upper()} side)"})
    if hitres is not None:
        data["fp_HiTRes"] = (("lat", "lon", "time", "H_back"), np.asarray(hitres, np.float64), {})
        coords["H_back"] = ("H_back", np.asarray(h_back, np.int64))
    ds = xr.Dataset(data, coords=coords, attrs={"author": "test", "created": "2016-09-21 17:52:37", **(attrs or {})})
    return write(ds, path, {v: {"_FillValue": np.nan} for v in ("fp", "fp_HiTRes") if v in data})


def flexpart_grid_time(path: Path, spec: np.ndarray, lat, lon, times, heights, releases: list[dict], *,
                       units="s m3 kg-1", ldirect=-1, loutaver=-3600, iedate="20180902", ietime="000000") -> Path:
    """FLEXPART backward ``grid_time_*.nc``: spec001_mr(nageclass, pointspec, time, height,
    latitude, longitude), time in seconds since the simulation start (iedate/ietime, negative
    for backward runs), release metadata RELCOM/RELLNG1/2/RELLAT1/2/RELZZ1/2/RELKINDZ/RELSTART/RELEND."""
    start = np.datetime64(f"{iedate[:4]}-{iedate[4:6]}-{iedate[6:8]}T{ietime[:2]}:{ietime[2:4]}", "s")
    since = f"{iedate[:4]}-{iedate[4:6]}-{iedate[6:8]} {ietime[:2]}:{ietime[2:4]}"
    def rel(key, dtype=np.float32):
        return ("numpoint", np.array([r[key] for r in releases], dtype))
    ds = xr.Dataset(
        {
            "spec001_mr": (("nageclass", "pointspec", "time", "height", "latitude", "longitude"), np.asarray(spec, np.float32),
                           {"units": units, "long_name": "TRACER", "decay": -0.07, "weightmolar": 29.0}),
            "RELCOM": ("numpoint", np.array([r["name"].ljust(45).encode() for r in releases], dtype="S45"),
                       {"long_name": "release point name"}),
            "RELLNG1": (*rel("lon1"), {"units": "degrees_east"}), "RELLNG2": (*rel("lon2"), {"units": "degrees_east"}),
            "RELLAT1": (*rel("lat1"), {"units": "degrees_north"}), "RELLAT2": (*rel("lat2"), {"units": "degrees_north"}),
            "RELZZ1": (*rel("z1"), {"units": "meters"}), "RELZZ2": (*rel("z2"), {"units": "meters"}),
            "RELKINDZ": (*rel("kindz", np.int32), {"long_name": "release kind"}),
            "RELSTART": ("numpoint", (np.array([r["start"] for r in releases], "datetime64[s]") - start).astype(np.int32),
                         {"units": "seconds", "long_name": "release start relative to simulation start"}),
            "RELEND": ("numpoint", (np.array([r["end"] for r in releases], "datetime64[s]") - start).astype(np.int32),
                       {"units": "seconds", "long_name": "release end relative to simulation start"}),
        },
        coords={
            "time": ("time", (np.asarray(times, "datetime64[s]") - start).astype(np.int32),
                     {"units": f"seconds since {since}", "calendar": "proleptic_gregorian"}),
            "latitude": ("latitude", np.asarray(lat, np.float32), {"units": "degrees_north", "description": "grid cell centers"}),
            "longitude": ("longitude", np.asarray(lon, np.float32), {"units": "degrees_east", "description": "grid cell centers"}),
            "height": ("height", np.asarray(heights, np.float32), {"units": "meters", "positive": "up"}),
        },
        attrs={"Conventions": "CF-1.6", "title": "FLEXPART model output", "ldirect": np.int32(ldirect),
               "ibdate": "20180801", "ibtime": "000000", "iedate": iedate, "ietime": ietime,
               "loutstep": np.int32(loutaver), "loutaver": np.int32(loutaver), "loutsample": np.int32(-900)},
    )
    return write(ds, path, {"RELCOM": {"char_dim_name": "nchar"}})


def paris_file(path: Path, srr: np.ndarray, lat, lon, times, *, boundary: dict | None = None, site="MHD",
               inlet="10magl", release=(53.32669, -9.904602), variable="srr") -> Path:
    """openghg/PARIS FLEXPART: srr(time, latitude, longitude) in (mol/mol)/(mol/m2/s), time in
    days since 1970, particle_locations_*(time, height, longitude|latitude)."""
    times = np.asarray(times, "datetime64[s]")
    n = times.size
    data = {
        variable: (("time", "latitude", "longitude"), np.asarray(srr, np.float32),
                {"units": "(mol/mol)/(mol/m2/s)", "long_name": "source_receptor_relationship"}),
        "release_lat": ("time", np.full(n, release[0], np.float32), {"units": "degrees_north"}),
        "release_lon": ("time", np.full(n, release[1], np.float32), {"units": "degrees_east"}),
        "release_height": ("time", np.full(n, 10.0, np.float32), {"units": "m"}),
    }
    if boundary is not None:
        for edge, values in boundary.items():
            cells = "longitude" if edge in "ns" else "latitude"
            data[f"particle_locations_{edge}"] = (("time", "height", cells), np.asarray(values, np.float32), {"units": "1"})
    ds = xr.Dataset(data, coords={
        "time": ("time", seconds(times) / 86400.0, {"units": "days since 1970-01-01", "calendar": "gregorian",
                                                     "label": "left", "period": " 1.0 hours"}),
        "latitude": ("latitude", np.asarray(lat, np.float64), {"units": "degrees_north"}),
        "longitude": ("longitude", np.asarray(lon, np.float64), {"units": "degrees_east"}),
        "height": ("height", HEIGHTS.astype(np.float64), {"units": "m"}),
    }, attrs={"model": "FLEXPART", "site": site, "inlet_height": inlet, "release_comment": f"{site}_10_mAGL",
              "LPDM_native_output_units": "s m3 kg-1"})
    return write(ds, path)
