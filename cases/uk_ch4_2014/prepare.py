"""Prepare the inputs of the real case ``cases/uk_ch4_2014`` from the acrg/openghg files.

    python cases/uk_ch4_2014/prepare.py [--data-root DIR] [--out DIR] [--overwrite]

Reads the external data root (``--data-root``, else ``$TANHUI_DATA``, else
``../shared/data/external`` beside the repository) and writes into ``--out`` (default: the
case's ``data/``):

* ``footprints.h5`` — the four NAME footprint files (MHD 10 magl, TAC 100 magl, Feb and
  Mar 2014, 3 receptor times each) ingested with :func:`transport.ingest.ingest` onto their
  own EUROPE grid (391 × 293) and one flux step 2014-01-02 … 2014-04-01, with their
  particle-exit fractions.  The files are 30-day integrated footprints (the Met Office NAME
  runs used by acrg), so each receptor's back-time slot is [t − 720 h, t); the one flux step
  covers every slot, so no sensitivity is truncated;
* ``regions.nc`` — four regions as a ``region_fraction`` mask, from the label map ``basis``
  of ``sub-transd_EUROPE_2000.nc`` (label 0: the high-resolution box around the British
  Isles, 1–4: the rest of the domain) split by the Natural Earth country map
  ``country_EUROPE.nc`` (same grid): UK, IRELAND, the rest of the box (NW_EUROPE) and
  REST_OF_DOMAIN (labels 1–4 outside the UK — Shetland lies in label 3 and stays in UK).
  Every cell belongs to exactly one region (fractions 0 or 1).

It prints what it wrote and the prior UK total (Gg CH₄ yr⁻¹) from
``ch4_EUROPE_reduced_2013.nc``.  Missing input files are listed with what each is; the exit
status is then 2 and nothing is written.  The observations, prior flux and boundary curtains
are read by ``tanhui run`` directly from the data root (see ``config.toml``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

CASE_DIR = Path(__file__).resolve().parent
REPO_ROOT = CASE_DIR.parents[1]
DEFAULT_DATA_ROOT = REPO_ROOT / ".." / "shared" / "data" / "external"
DATA_ENV = "TANHUI_DATA"

LPDM = Path("acrg/tests/files/LPDM")
FOOTPRINTS = [LPDM / "fp_NAME_minimal/EUROPE" / f"{site}_EUROPE_{month}.nc"
              for site in ("MHD-10magl", "TAC-100magl") for month in ("201402", "201403")]
BASIS = LPDM / "basis_functions/EUROPE/sub-transd_EUROPE_2000.nc"
COUNTRIES = Path("openghg_inversions/tests/data/country_EUROPE.nc")
PRIOR = LPDM / "emissions/EUROPE/ch4_EUROPE_reduced_2013.nc"
READ_BY_RUN = {  # read by `tanhui run` through config.toml; checked here so a missing one is said early
    PRIOR: "NAEI (UK) + EDGAR prior CH4 flux, 2013 (one time)",
    LPDM / "bc/EUROPE/ch4_EUROPE_201402.nc": "MOZART CH4 boundary curtains, Feb 2014",
    LPDM / "bc/EUROPE/ch4_EUROPE_201403.nc": "MOZART CH4 boundary curtains, Mar 2014",
    Path("acrg/tests/files/obs/MHD/AGAGE-GCFID_MHD_20140201_ch4-20140401.nc"): "AGAGE GC-FID CH4 at Mace Head",
    Path("acrg/tests/files/obs/TAC/DECC-picarro_TAC_20140201_ch4-185m-20210401.nc"): "DECC Picarro CH4 at Tacolneston",
}
NEEDED = {**{f: "NAME footprint (fp, particle_locations_*)" for f in FOOTPRINTS},
          BASIS: "basis-region label map (sub-transd)", COUNTRIES: "country map of the EUROPE grid", **READ_BY_RUN}

FLUX_START, FLUX_END = "2014-01-02T00:00:00", "2014-04-01T00:00:00"
BACK_HOURS = 720.0  # 30-day integrated NAME footprints
UK = "UNITED KINGDOM OF GREAT BRITAIN AND NORTHERN IRELAND"
IRELAND = "IRELAND"
REGIONS = ("UK", "IRELAND", "NW_EUROPE", "REST_OF_DOMAIN")


def data_root(option: str | None) -> Path:
    """``--data-root``, else ``$TANHUI_DATA``, else ../shared/data/external beside the repository."""
    return Path(option or os.environ.get(DATA_ENV) or DEFAULT_DATA_ROOT)


def missing_inputs(root: Path) -> list[str]:
    """One line per input file absent under ``root``."""
    return [f"  {root / path}  ({what})" for path, what in NEEDED.items() if not (root / path).is_file()]


def region_masks(basis: np.ndarray, country: np.ndarray, names: list[str]) -> np.ndarray:
    """``region_fraction`` (4, nlat, nlon) of :data:`REGIONS` from the basis label map
    (0 = the box around the British Isles) and the country index map (into ``names``):
    each cell goes wholly to one region (a label map gives fractions 0 or 1)."""
    uk = country == names.index(UK)
    ireland = country == names.index(IRELAND)
    box = basis == 0
    masks = [uk, ireland & ~uk, box & ~uk & ~ireland, ~box & ~uk & ~ireland]
    fraction = np.stack(masks).astype(np.float64)
    assert np.array_equal(fraction.sum(axis=0), np.ones(basis.shape)), "every cell must be in exactly one region"
    return fraction


def write_regions(root: Path, out: Path, grid) -> Path:
    import xarray as xr

    from inversion.io import check_same_grid, open_netcdf, write_netcdf

    basis_ds = open_netcdf(root / BASIS, "basis functions")
    countries = open_netcdf(root / COUNTRIES, "country map")
    for ds, path in ((basis_ds, root / BASIS), (countries, root / COUNTRIES)):
        check_same_grid(ds, path, grid, "label map", "the NAME footprints")
    basis = np.asarray(basis_ds["basis"].transpose("lat", "lon", ...).values, dtype=np.float64).reshape(grid.shape)
    if not np.array_equal(basis, np.round(basis)) or basis.min() < 0:
        raise SystemExit(f"{root / BASIS}: basis is not a map of integer labels")
    names = [str(n).strip() for n in countries["name"].values]
    fraction = region_masks(basis, np.asarray(countries["country"].values), names)
    ds = xr.Dataset(
        {"region_fraction": (("region", "lat", "lon"), fraction,
                             {"long_name": "fraction of each cell in each region", "units": "1"})},
        coords={"region": list(REGIONS), "lat": ("lat", grid.lat, {"units": "degrees_north"}),
                "lon": ("lon", grid.lon, {"units": "degrees_east"})},
        attrs={"title": "uk_ch4_2014 regions", "source": f"{BASIS.name} (labels) split by {COUNTRIES.name} (Natural "
               "Earth 1:50m): UK, IRELAND, rest of label 0 (NW_EUROPE), labels 1-4 outside the UK (REST_OF_DOMAIN)"})
    path = out / "regions.nc"
    write_netcdf(ds, path)
    return path


def prior_uk_total(root: Path, grid, fraction: np.ndarray) -> float:
    """Prior flux summed over the UK cells, Gg CH₄ yr⁻¹ (positive = emission)."""
    from inversion.io import open_netcdf
    from transport.units import FLUX_UNITS, MOLAR_MASS_KG_PER_MOL, conversion_factor

    ds = open_netcdf(root / PRIOR, "prior flux")
    flux = np.asarray(ds["flux"].transpose("lat", "lon", ...).values, dtype=np.float64)[..., 0]
    flux = flux * conversion_factor(ds["flux"].attrs["units"], FLUX_UNITS, path=root / PRIOR, variable="flux")
    mol_per_s = float(np.sum(flux * grid.cell_area() * fraction))
    return mol_per_s * MOLAR_MASS_KG_PER_MOL["ch4"] * conversion_factor("kg s-1", "Gg a-1")


def prepare(root: Path, out: Path, *, overwrite: bool = False) -> dict:
    """Write footprints.h5 and regions.nc into ``out``; returns what was done."""
    from transport.formats.common import ReaderOptions
    from transport.grid import TimeAxis
    from transport.ingest import IngestOptions, grid_from_file, ingest

    out.mkdir(parents=True, exist_ok=True)
    store_path = out / "footprints.h5"
    if store_path.exists() and not overwrite:
        raise SystemExit(f"{store_path} exists: pass --overwrite to rebuild it")
    grid, _ = grid_from_file(root / FOOTPRINTS[0])
    axis = TimeAxis(start=np.array([FLUX_START], dtype="datetime64[s]"), end=np.array([FLUX_END], dtype="datetime64[s]"))
    summary = ingest([root / f for f in FOOTPRINTS], store_path, grid, axis,
                     options=IngestOptions(reader=ReaderOptions(back_hours=BACK_HOURS), boundary="require", strict=True),
                     overwrite=overwrite)
    regions = write_regions(root, out, grid)
    import xarray as xr

    with xr.open_dataset(regions, engine="h5netcdf") as ds:
        uk_fraction = ds["region_fraction"].sel(region="UK").values
    return {"store": store_path, "n_obs": summary.n_obs, "boundary": summary.boundary, "regions": regions,
            "prior_uk_gg_per_year": prior_uk_total(root, grid, uk_fraction)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + " See the module docstring.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", help=f"external data root (default ${DATA_ENV}, else {DEFAULT_DATA_ROOT})")
    parser.add_argument("--out", type=Path, default=CASE_DIR / "data", help="output directory (default: the case's data/)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild existing outputs")
    args = parser.parse_args(argv)
    root = data_root(args.data_root).resolve()
    missing = missing_inputs(root)
    if missing:
        print(f"uk_ch4_2014: {len(missing)} input file(s) missing under the data root {root}:\n" + "\n".join(missing)
              + f"\nSet ${DATA_ENV} (or --data-root) to the directory holding acrg/ and openghg_inversions/ "
              "(see ../shared/data/external/README.md).", file=sys.stderr)
        return 2
    done = prepare(root, args.out, overwrite=args.overwrite)
    print(f"footprint store {done['store']}: {done['n_obs']} receptors, boundary sensitivities "
          f"{'stored' if done['boundary'] else 'ABSENT'}")
    print(f"regions {done['regions']}: {', '.join(REGIONS)}")
    print(f"prior UK total (NAEI 2013 + natural, {PRIOR.name}): {done['prior_uk_gg_per_year']:.1f} Gg CH4 yr-1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
