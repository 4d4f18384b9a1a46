"""Forward values on real NAME footprints against two independent peer tools.

The acrg README of ../shared/data/external documents 1e9·Σ(fp·flux) for the six acrg
February 2014 footprints (MHD and TAC, three receptor times each) with the NAEI+EDGAR flux
``ch4_EUROPE_reduced_2013.nc``: acrg's ``footprints_data_merge`` gives the same values.
They are checked here through the NAME reader, and through an ingested footprint store and
the FootprintOperator (the path the inversion uses).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from transport.formats.common import ReaderOptions
from transport.formats.detect import read_footprints
from transport.grid import TimeAxis
from transport.ingest import IngestOptions, grid_from_file, ingest
from transport.operator import FootprintOperator
from transport.store import FootprintStore

try:
    from tests import footprint_files as ff
except ModuleNotFoundError:  # pytest started outside the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from tests import footprint_files as ff

PEER_PPB = {  # documented peer values (acrg footprints_data_merge; external data README)
    "MHD-10magl_EUROPE_201402.nc": [3.5173814, 33.651065, 7.4809196],
    "TAC-100magl_EUROPE_201402.nc": [27.279221, 17.675410, 103.20681],
}
FILES = [ff.ACRG_FOOTPRINTS / name for name in ("MHD-10magl_EUROPE_201402.nc", "MHD-10magl_EUROPE_201403.nc",
                                                "TAC-100magl_EUROPE_201402.nc", "TAC-100magl_EUROPE_201403.nc")]
pytestmark = pytest.mark.skipif(not all(p.is_file() for p in FILES) or not ff.ACRG_FLUX.is_file(),
                                reason="acrg NAME footprints or ch4_EUROPE_reduced_2013.nc not found under ../shared/data/external")
RTOL = 1e-6


@pytest.fixture(scope="module")
def flux() -> np.ndarray:
    with xr.open_dataset(ff.ACRG_FLUX, engine="h5netcdf") as ds:
        assert ds["flux"].attrs["units"] == "mol/m2/s" and ds["flux"].sizes["time"] == 1
        return ds["flux"].transpose("time", "lat", "lon").values[0].astype(np.float64)


@pytest.mark.parametrize("name", sorted(PEER_PPB))
def test_forward_values_through_the_reader_match_the_peers(name, flux):
    records = list(read_footprints(ff.ACRG_FOOTPRINTS / name, back_hours=720))
    ppb = [1e9 * float((r.values[0] * flux).sum()) for r in records]
    np.testing.assert_allclose(ppb, PEER_PPB[name], rtol=RTOL)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> FootprintStore:
    """The four acrg files ingested onto their own grid, one flux step covering every back-time."""
    grid, _ = grid_from_file(FILES[0])
    axis = TimeAxis(start=np.array(["2014-01-01"], "datetime64[s]"), end=np.array(["2014-04-01"], "datetime64[s]"))
    out = tmp_path_factory.mktemp("real") / "acrg.h5"
    summary = ingest(FILES, out, grid, axis, options=IngestOptions(reader=ReaderOptions(back_hours=720)))
    assert summary.rejected == [] and summary.n_obs == 12 and summary.boundary
    return FootprintStore(out)


def test_forward_values_through_the_store_and_operator_match_the_peers(store, flux):
    K = FootprintOperator.from_store(store, 0, store.n_obs)
    ppb = 1e9 * K.matvec(flux.ravel())  # one flux step: the flux column vector is the map
    ids = list(store.obs["obs_id"].values)
    for name, expected in PEER_PPB.items():
        prefix = name.split("_")[0].replace("magl", "m")
        rows = [i for i, obs_id in enumerate(ids) if obs_id.startswith(prefix) and "-201402" in obs_id]
        np.testing.assert_allclose(ppb[rows], expected, rtol=RTOL)
    # March rows have no peer value: the store must still reproduce the reader exactly
    for path in FILES:
        for record in read_footprints(path, back_hours=720):
            row = ids.index(record.receptor.obs_id)
            assert ppb[row] == pytest.approx(1e9 * float((np.float32(record.values[0]) * flux).sum()), rel=1e-12)


def test_store_keeps_the_boundary_sensitivities(store):
    b = store.read_boundary(0, store.n_obs)
    assert b["n"].shape == (12, 20, 391) and b["e"].shape == (12, 20, 293)
    first = store.obs["obs_id"].values[0]
    with xr.open_dataset(FILES[0], engine="h5netcdf") as ds:
        assert first == "MHD-10m-20140201T0000"
        np.testing.assert_array_equal(b["w"][0], ds["particle_locations_w"].isel(time=0).values)
    np.testing.assert_array_equal(store.boundary_height, ff.HEIGHTS)
