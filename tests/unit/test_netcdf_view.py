"""transport.formats.netcdf (the readers' view of a NetCDF file) gives what
``xarray.open_dataset(engine="netcdf4", mask_and_scale=False, decode_times=False, …)`` gave
them, and decode_times' integer path gives what xarray's CF coder gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from transport.errors import InputError
from transport.formats.common import _coder_ns, decode_times, open_dataset


def write_file(path: Path, engine: str) -> Path:
    rng = np.random.default_rng(0)
    foot = rng.uniform(0, 1, size=(3, 4, 5)).astype(np.float32)
    foot[0, 0, 0] = -1.0
    ds = xr.Dataset(
        {"foot": (("time", "lat", "lon"), foot, {"units": "ppm (umol-1 m2 s)", "scale_factor": 2.0}),
         "counts": (("pointspec", "time"), rng.integers(0, 9, size=(2, 3)).astype(np.int16)),
         "label": ((), 7.5, {"long_name": "a scalar"}),
         "names": (("pointspec",), np.array(["MHD", "TAC10"]))},  # written as characters (pointspec, string5)
        coords={"time": ("time", [0.0, 3600.0, 7200.0], {"units": "seconds since 2015-06-01 00:00:00", "calendar": "standard"}),
                "lat": ("lat", 40.0 + np.arange(4.0), {"units": "degrees_north"}),
                "lon": ("lon", -113.0 + np.arange(5.0), {"units": "degrees_east"})},
        attrs={"site": "SLC", "r_lati": 40.5, "levels": np.array([1.0, 2.0])},
    )
    encoding = {"foot": {"_FillValue": np.float32(-1.0)}, "names": {"dtype": "S1"}}
    ds.to_netcdf(path, engine=engine, encoding=encoding, format="NETCDF4")
    return path


@pytest.mark.parametrize("engine", ["h5netcdf", "netcdf4"])
def test_view_matches_xarray_undecoded(tmp_path, engine):
    path = write_file(tmp_path / "f.nc", engine)
    with xr.open_dataset(path, engine="netcdf4", decode_times=False, decode_timedelta=False, mask_and_scale=False,
                         decode_coords=False) as ref, open_dataset(path) as ds:
        assert sorted(ds.variables) == sorted(map(str, ref.variables))
        assert sorted(ds.data_vars) == sorted(map(str, ref.data_vars))
        assert dict(ds.dims) == dict(ref.sizes)
        assert ds.attrs.keys() == ref.attrs.keys()
        for key, value in ref.attrs.items():
            np.testing.assert_array_equal(ds.attrs[key], value)
        for name in ref.variables:
            got, want = ds[name], ref[name]
            assert got.dims == want.dims and got.shape == want.shape, name
            assert got.attrs.keys() == want.attrs.keys(), name
            for key, value in want.attrs.items():
                np.testing.assert_array_equal(got.attrs[key], value)
            assert got.values.dtype == want.values.dtype, name
            np.testing.assert_array_equal(got.values, want.values)
        foot, want = ds["foot"], ref["foot"]
        assert foot.values[0, 0, 0] == -1.0  # raw: neither masked nor scaled
        t = foot.transpose("lon", "time", "lat")
        assert t.dims == ("lon", "time", "lat") and t.sizes == {"lon": 5, "time": 3, "lat": 4}
        np.testing.assert_array_equal(t.values, want.transpose("lon", "time", "lat").values)
        np.testing.assert_array_equal(t.isel(time=-1, lon=2).values, want.transpose("lon", "time", "lat").isel(time=-1, lon=2).values)
        assert t.isel(time=1).dims == ("lon", "lat")
        np.testing.assert_array_equal(ds["names"].isel(pointspec=1).values, ref["names"].isel(pointspec=1).values)
        with pytest.raises(IndexError):
            foot.isel(time=3)
        with pytest.raises(ValueError, match="do not exist"):
            foot.isel(height=0)


@pytest.mark.parametrize("units", ["seconds since 1970-01-01 00:00:00Z", "hours since 2015-06-01", "days since 2000-01-01 00:00:00 UTC",
                                   "minutes since 1999-12-31T23:30:00"])
def test_decode_times_equals_the_cf_coder(units):
    numbers = np.array([0.0, 1.0, 17.0, 5843.0, 5843.5, -2.25, 12345.0])
    got = decode_times(numbers, units, "standard", Path("f.nc"), "time")
    ns = _coder_ns(numbers, units, "standard")
    np.testing.assert_array_equal(got, ((ns + 500_000_000) // 1_000_000_000).astype("datetime64[s]"))
    unit = {"seconds": "s", "minutes": "m", "hours": "h", "days": "D"}[units.split()[0]]
    assert got[1] - got[0] == np.timedelta64(1, unit)


def test_decode_times_refuses_what_the_coder_cannot_decode():
    with pytest.raises(InputError, match="cannot decode"):
        decode_times([0.0], "fortnights since 2000-01-01", None, Path("f.nc"), "time")
    with pytest.raises(InputError, match="cannot decode"):
        decode_times([1e30], "seconds since 2000-01-01", None, Path("f.nc"), "time")
    with pytest.raises(InputError, match="calendar"):
        decode_times([0.0], "days since 2000-01-01", "noleap", Path("f.nc"), "time")
