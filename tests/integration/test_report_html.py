"""The HTML report (inversion.report.html, inversion.report.figures).

* the page is self-contained: every <img> is a base64 PNG data URI that decodes to a PNG of
  the size matplotlib drew, no src/href points outside the page;
* the plain-language summary says what the numbers say (inventory inside / outside the
  posterior 95 % range, source / sink, how sure) for a synthetic ReportData built here with
  known answers;
* maps use the offline GSHHS coastlines of Debian's python-cartopy-data with cartopy's
  downloaders removed, and degrade to plain lat/lon maps with a visible note without them;
* borders come from the masks (majority-region cell edges) or the DCW polygons the mask names;
* a real headless Chromium opens the report of a real run: every image loads
  (naturalWidth > 0), no console error, no network request, and a screenshot is written to the
  test's tmp dir and to /tmp/tanhui-report-screenshot.png.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from inversion.report import figures
from inversion.report.html import fmt, pretty_unit, render_html, series_periods, write_html_report

SCREENSHOT = Path("/tmp/tanhui-report-screenshot.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DAY = np.timedelta64(1, "D")


# ---- a synthetic ReportData with known answers ----------------------------------------------
def _regions(lat, lon) -> xr.Dataset:
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    blocks = [(la < 33) & (lo < 114), (la < 33) & (lo >= 114), la >= 33]
    return xr.Dataset({"region_fraction": (("region", "lat", "lon"), np.stack(blocks).astype(float),
                                           {"units": "1"})},
                      coords={"region": ["WEST", "EAST", "NORTH"], "region_code": ("region", ["W", "E", "N"]),
                              "lat": lat, "lon": lon})


def _table(P, S, B, I, ISD, dims, coords, attrs) -> xr.Dataset:
    """A totals-like dataset of ReportData from posterior P ± S, prior σ B, inventory I ± ISD
    (NaN: none), with the ranges and comparisons defined as in inversion.report.data."""
    z95, z68 = 1.959964, 0.994458
    has = np.isfinite(I)
    dsd = np.where(has, np.sqrt(S**2 + np.nan_to_num(ISD) ** 2), np.nan)
    ds = xr.Dataset(
        {"prior": (dims, P + 0.5 * B), "prior_sd": (dims, B), "posterior": (dims, P), "posterior_sd": (dims, S),
         "p025": (dims, P - z95 * S), "p16": (dims, P - z68 * S), "p84": (dims, P + z68 * S),
         "p975": (dims, P + z95 * S), "inventory": (dims, I), "inventory_sd": (dims, ISD),
         "has_inventory": (dims, has), "difference": (dims, P - I), "difference_sd": (dims, dsd),
         "inventory_inside_95": (dims, has & (I >= P - z95 * S) & (I <= P + z95 * S)),
         "consistent_95": (dims, has & (np.abs(P - I) <= z95 * dsd)),
         "uncertainty_reduction": (dims, 1 - S / B)}, coords=coords, attrs=attrs)
    return ds


def synthetic_report_data(*, inventory: bool = True):
    """Three regions + ALL, three 4-day periods.  WEST: inventory inside the 95 % range, sink,
    well constrained; EAST: inventory far above, source; NORTH: weakly constrained, sign
    unknown; ALL: inventory outside."""
    from inversion.report.data import ReportData

    rng = np.random.default_rng(3)
    lat, lon = np.arange(30.5, 36.0, 1.0), np.arange(110.5, 118.0, 1.0)
    start = np.datetime64("2024-07-01T00:00:00", "s") + np.array([0, 4, 8]) * DAY
    end = start + 4 * DAY
    post, post_sd, prior_sd = np.array([-50.0, 300.0, 5.0]), np.array([5.0, 10.0, 40.0]), np.array([50.0, 60.0, 45.0])
    inv, inv_sd = np.array([-45.0, 600.0, 20.0]), np.array([10.0, 30.0, 10.0])
    if not inventory:
        inv, inv_sd = np.full(3, np.nan), np.full(3, np.nan)

    def with_all(x, how):
        return np.append(x, x.sum() if how == "sum" else np.sqrt((x**2).sum()))

    P1, S1, B1 = with_all(post, "sum"), with_all(post_sd, "rss"), with_all(prior_sd, "rss")
    I1, ISD1 = with_all(inv, "sum"), with_all(inv_sd, "rss")
    wiggle = rng.normal(0, 1, (4, 3))
    attrs = {"units": "Tg CO2 yr-1", "carbon_units": "Tg C yr-1", "carbon_factor": 12.011 / 44.0095,
             "sign_convention": "positive = emission to the atmosphere, negative = sink",
             "comparable_quantity": "net land flux (all sectors) vs inventory total"}
    regions = ["WEST", "EAST", "NORTH", "ALL"]
    totals = _table(P1[:, None] + S1[:, None] * wiggle, np.tile(S1[:, None], 3), np.tile(B1[:, None], 3),
                    np.tile(I1[:, None], 3), np.tile(ISD1[:, None], 3), ("region", "period"),
                    {"region": regions, "period": np.arange(3), "period_kind": ("period", ["period"] * 3),
                     "period_label": ("period", [f"{a}/{b}" for a, b in zip(start.astype("datetime64[D]"),
                                                                          end.astype("datetime64[D]"))]),
                     "period_start": ("period", start), "period_end": ("period", end),
                     "period_coverage": ("period", np.ones(3))}, attrs)
    summary = _table(P1[:, None], S1[:, None], B1[:, None], I1[:, None], ISD1[:, None], ("region", "statistic"),
                     {"region": regions, "statistic": ["mean"], "statistic_unit": ("statistic", ["Tg CO2 yr-1"]),
                      "statistic_description": ("statistic", ["mean over the whole run (duration-weighted)"]),
                      "statistic_start": ("statistic", start[:1]), "statistic_end": ("statistic", end[-1:]),
                      "statistic_years": ("statistic", [""])}, attrs)

    t = np.datetime64("2024-07-01T12:00", "s") + np.arange(24) * np.timedelta64(12, "h")
    site = np.repeat(["AAA", "BBB"], t.size)
    bg = 410.0 + np.sin(np.arange(site.size) / 5)
    obs = bg + rng.normal(4.0, 2.0, site.size)
    ppm = {"units": "ppm"}
    sites = xr.Dataset({"time": (("obs",), np.tile(t, 2)), "site": (("obs",), site), "observed": ("obs", obs, ppm),
                        "prior_model": ("obs", bg + 2.0, ppm),
                        "posterior_model": ("obs", obs + rng.normal(0, 0.5, site.size), ppm),
                        "background": ("obs", bg, ppm), "posterior_background": ("obs", bg + 0.3, ppm),
                        "sigma": ("obs", np.full(site.size, 1.0), ppm)})
    one = {"units": "1"}
    site_stats = xr.Dataset({"n": ("site", [24, 24]), "prior_bias": ("site", [2.1, 1.9], ppm),
                             "prior_rmse": ("site", [2.5, 2.2], ppm), "posterior_bias": ("site", [0.01, -0.02], ppm),
                             "posterior_rmse": ("site", [0.5, 0.6], ppm),
                             "posterior_correlation": ("site", [0.91, 0.95], one),
                             "posterior_chi2_per_obs": ("site", [0.9, 1.1], one),
                             "latitude": ("site", [31.1, 34.6], {"units": "degrees_north"}),
                             "longitude": ("site", [111.3, 116.4], {"units": "degrees_east"}),
                             "height": ("site", [50.0, 80.0], {"units": "m"})}, coords={"site": ["AAA", "BBB"]})
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    flux = {"units": "mol m-2 s-1"}
    prior_flux = 2e-6 * np.sin(la) * np.cos(lo)
    maps = xr.Dataset({"prior_flux": (("lat", "lon"), prior_flux, flux),
                       "posterior_flux": (("lat", "lon"), 0.8 * prior_flux + 1e-7, flux),
                       "difference": (("lat", "lon"), -0.2 * prior_flux + 1e-7, flux),
                       "uncertainty_reduction": (("lat", "lon"), rng.uniform(0, 1, la.shape), one),
                       "sensitivity": (("lat", "lon"), np.exp(-((la - 33) ** 2 + (lo - 114) ** 2) / 4),
                                       {"units": "m2 s mol-1"})},
                      coords={"lat": lat, "lon": lon},
                      attrs={"period_start": "2024-07-01T00:00:00", "period_end": "2024-07-13T00:00:00"})
    diagnostics = {"solver": "analytical", "form": "state", "n_obs": 48, "n_state": 11, "chi2_per_obs": 0.95,
                   "chi2_per_obs_95": [0.7, 1.35], "dofs": 7.5, "sites": {}}
    metadata = {"run_name": "synthetic test", "sites": [{"code": "AAA", "height": 50.0}, {"code": "BBB"}],
                "inventory": None, "hashes": {"config": "sha256:" + "ab" * 32},
                "warnings": ["region NORTH: the observations barely constrain it"]}
    return ReportData(run_dir=Path("."), config=None, species="co2", unit="Tg CO2 yr-1", totals=totals,
                      summary=summary, sites=sites, site_stats=site_stats, maps=maps, regions=_regions(lat, lon),
                      diagnostics=diagnostics, metadata=metadata)


def _images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def _png_size(png: bytes) -> tuple[int, int]:
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _summary_row(page: str, region: str) -> str:
    summary = page[page.index("<section id=summary>"):page.index("</section>")]
    row = re.search(rf"<tr><th scope=row>{re.escape(region)}</th>(.*?)</tr>", summary, re.S)
    assert row, f"no summary row for {region}"
    return row.group(1)


# ---- content --------------------------------------------------------------------------------
def test_page_is_self_contained_and_says_what_the_numbers_say(tmp_path):
    data = synthetic_report_data()
    path = write_html_report(data, tmp_path / "report")
    assert path == tmp_path / "report" / "index.html"
    page = path.read_text(encoding="utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["index.html"], "atomic write left a temporary file"
    # nothing outside the page: no src/href to another resource, no script, no stylesheet link
    refs = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert refs and all(r.startswith(("data:image/png;base64,", "#")) for r in refs), refs
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    images = _images(page)
    assert len(images) == 7  # 1 time-series image (4 panels), 5 maps, 1 site image
    for png in images:
        assert png.startswith(PNG_MAGIC) and min(_png_size(png)) > 100

    # plain language (whole-run mean): WEST consistent, inside, sink, well constrained; EAST not
    # consistent, above, source; NORTH consistent but weakly constrained, sign unknown; ALL not
    west, east, north, everything = (_summary_row(page, r) for r in ("WEST", "EAST", "NORTH",
                                                                      "ALL (all regions together)"))
    assert "badge ok'>consistent<" in west and "inside the atmosphere" in west and "net sink" in west \
        and "well constrained" in west
    assert "not consistent" in east and "lies above" in east and "net source" in east
    assert "badge ok'>consistent<" in north and "weakly constrained" in north and "cannot tell source from sink" in north
    assert "not consistent" in everything
    assert "consistent with the atmosphere at 95 %</b> for 2 of 4 regions: WEST, NORTH; <b>not consistent</b> " \
           "for EAST, ALL (all regions together)" in page
    # per-period agreement counted from the totals
    t = data.totals.sel(region="WEST")
    assert f"per report period: consistent in {int((t.consistent_95 & t.has_inventory).sum())} of 3" in west
    # the whole-run mean feeds the summary: WEST −50 ± 5 with its 95 % range; difference ± 1.96 σ
    assert f"{fmt(-50.0)} ± {fmt(5.0)}</td><td class=num>{fmt(-50 - 1.959964 * 5)} to {fmt(-50 + 1.959964 * 5)}" in west
    assert f"posterior − inventory = {fmt(-5.0)} ± {fmt(1.959964 * np.sqrt(125))} (95 %)" in west
    # units (with the Tg C column), sign convention, compared quantity, loader warnings
    assert "Tg CO₂ yr⁻¹ (= Mt CO₂ yr⁻¹)" in page and "negative = sink" in page
    carbon = 12.011 / 44.0095
    assert "posterior ± 1σ, Tg C yr⁻¹" in page and f"{fmt(-50 * carbon)} ± {fmt(5 * carbon)}" in page
    assert "net land flux (all sectors) vs inventory total" in page
    summary = page[page.index("<section id=summary>"):page.index("</section>")]
    assert "region NORTH: the observations barely constrain it" in summary
    # diagnostics, metadata, site statistics
    assert "0.950" in page and "DOFS" in page and "7.5 of 11" in page
    assert "sha256:" + "ab" * 32 in page and "inlet height" in page and "posterior χ²/n" in page
    assert "<th scope=row>BBB</th><td class=num>24</td>" in page  # n, then the statistics
    assert "posterior bias 0.010 ppm" not in page  # captions are inside the site figure, not text


def test_without_inventory_the_page_says_so_and_omits_the_columns():
    page = render_html(synthetic_report_data(inventory=False))
    assert "No inventory was given" in page
    assert "<th>inventory ± 1σ</th>" not in page and "<th>posterior − inventory ± 1σ</th>" not in page
    assert "<th>inventory ± 1σ</th>" in render_html(synthetic_report_data())
    assert "inventory consistent?" not in page


def test_chi2_outside_its_range_is_flagged_at_the_top():
    data = synthetic_report_data()
    data.diagnostics["chi2_per_obs"] = 3.0
    page = render_html(data)
    summary = page[page.index("<section id=summary>"):page.index("</section>")]
    assert "χ²/n = 3.00 lies outside" in summary and "too optimistic" in summary


def test_time_series_use_the_finest_report_periods():
    totals = synthetic_report_data().totals
    assert series_periods(totals) == [0, 1, 2]
    mixed = totals.assign_coords(period_kind=("period", ["annual", "monthly", "monthly"]))
    assert series_periods(mixed) == [1, 2]
    assert series_periods(totals.assign_coords(period_kind=("period", ["annual"] * 3))) == [0, 1, 2]


def test_numbers_and_units_are_written_for_readers():
    assert fmt(-1234.567) == "\u22121\u202f235"
    assert fmt(12.345) == "12.3" and fmt(1.2345) == "1.23" and fmt(0.012345) == "0.012"
    assert fmt(-0.0001) == "0.000" and fmt(float("nan")) == "–" and fmt(None) == "–"
    assert pretty_unit("Tg CO2 yr-1") == "Tg CO₂ yr⁻¹ (= Mt CO₂ yr⁻¹)"
    assert pretty_unit("Tg CO2 yr-1", alias=False) == "Tg CO₂ yr⁻¹"
    assert pretty_unit("Gg CH4 yr-1") == "Gg CH₄ yr⁻¹" and pretty_unit("Tg C yr-1 yr-1") == "Tg C yr⁻¹ yr⁻¹"


# ---- maps: offline coastlines, fallback, borders ---------------------------------------------
def test_mask_borders_follow_cell_edges_between_regions():
    data = synthetic_report_data()
    borders, source = figures.region_borders(data.regions)
    assert "cell edges" in source
    segs = np.array(borders)  # (n, 2, 2) straight segments on cell edges
    assert segs.shape[1:] == (2, 2)
    xs, ys = segs[..., 0].ravel(), segs[..., 1].ravel()
    assert np.allclose(xs, np.round(xs)) and np.allclose(ys, np.round(ys))  # 1° grid: edges on integers
    # the WEST/EAST border at lon 114 from 30 to 33 and the south/north border at lat 33
    vertical = segs[np.isclose(segs[:, 0, 0], segs[:, 1, 0])]
    assert np.isclose(np.sort(vertical[np.isclose(vertical[:, 0, 0], 114.0)][:, :, 1].ravel()),
                      [30, 31, 31, 32, 32, 33]).all()
    horizontal = segs[np.isclose(segs[:, 0, 1], segs[:, 1, 1])]
    assert np.isclose(horizontal[:, 0, 1], 33.0).sum() == 8  # the whole width, 8 cells
    # domain outline: 2·(6 + 8) cell edges; inner borders: 3 + 8
    assert len(segs) == 2 * (6 + 8) + 3 + 8


def test_maps_use_offline_coastlines_without_downloading(tmp_path, monkeypatch):
    cartopy = pytest.importorskip("cartopy", reason="cartopy is not installed (pip install -e '.[maps]')")
    if not figures.gshhs_files([figures.DEBIAN_CARTOPY_DATA]):
        pytest.skip("Debian's python-cartopy-data is not installed (apt-get install python-cartopy-data)")
    monkeypatch.delenv("CARTOPY_DATA_DIR", raising=False)
    empty = tmp_path / "cartopy-data"
    monkeypatch.setitem(cartopy.config, "data_dir", empty)
    monkeypatch.setitem(cartopy.config, "pre_existing_data_dir", Path("."))
    data = synthetic_report_data()
    basemap = figures.make_basemap(data.regions)
    assert basemap.note is None and basemap.uses_cartopy
    assert basemap.coastlines[0].is_relative_to(figures.DEBIAN_CARTOPY_DATA)
    assert cartopy.config["pre_existing_data_dir"] == figures.DEBIAN_CARTOPY_DATA
    assert basemap.shorelines, "the domain (eastern China) has GSHHS shorelines"
    downloaders = cartopy.config["downloaders"]
    png = figures.map_png(data.maps["prior_flux"].values, data.maps.lat.values, data.maps.lon.values, title="t",
                          colorbar_label="u", style=figures.MapStyle("diverging", "RdBu_r"), basemap=basemap,
                          sites=figures.Sites(("AAA",), np.array([31.0]), np.array([111.0])))
    assert png.startswith(PNG_MAGIC)
    assert cartopy.config["downloaders"] is downloaders  # restored after drawing
    assert not empty.exists(), "cartopy wrote into its download directory"
    # while drawing, any feature that would download fails instead
    with figures._no_downloads(cartopy):
        from cartopy.io import shapereader

        with pytest.raises(ValueError, match="No generic downloadable item"):
            shapereader.natural_earth(resolution="110m", category="physical", name="coastline")


def test_without_coastline_data_maps_are_plain_with_a_visible_note(tmp_path):
    data = synthetic_report_data()
    basemap = figures.make_basemap(data.regions, data_dirs=[tmp_path / "nothing-here"])
    assert basemap.note and not basemap.uses_cartopy and not basemap.shorelines
    page = render_html(data, basemap=basemap)
    assert "Maps without coastlines" in page and ("no coastline data found" in page or "cartopy is not installed" in page)
    assert len(_images(page)) == 7


def test_dcw_polygons_are_drawn_when_the_mask_names_them(tmp_path):
    pytest.importorskip("shapely", reason="shapely is not installed (pip install -e '.[regions]')")
    from inversion.masks.dcw import default_dcw_file

    if not default_dcw_file().is_file():
        pytest.skip("Debian's gmt-dcw is not installed (apt-get install gmt-dcw)")
    lat, lon = np.arange(46.25, 56.0, 0.5), np.arange(-10.75, 2.0, 0.5)
    regions = xr.Dataset({"region_fraction": (("region", "lat", "lon"), np.ones((2, lat.size, lon.size)) / 2),
                          "region_code": (("region",), ["GB", "IE"])},
                         coords={"region": ["UK", "IRELAND"], "lat": lat, "lon": lon}, attrs={"sources": "dcw:GB,IE"})
    borders, source = figures.region_borders(regions)
    assert source.startswith("DCW-GMT polygons") and len(borders) > 10
    pts = np.concatenate(borders)
    # DCW outlines of Great Britain and Ireland lie within 49.8–61 N, 11 W–2 E
    assert pts[:, 1].min() > 49.5 and pts[:, 1].max() < 61.5 and pts[:, 0].min() > -11.5 and pts[:, 0].max() < 2.0
    regions["region_code"] = (("region",), ["GB", "ZZ"])  # unknown code: back to the mask's own borders
    assert "cell edges" in figures.region_borders(regions)[1]


# ---- a real run, opened in a real browser ------------------------------------------------------
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _real_report_data(tmp_path):
    """A tiny twin run (report periods: the state periods and the year), then its ReportData
    with an inventory written from the run's own per-period totals: B01 equal to the
    posterior, B02 ten posterior σ above it, B03 one σ below, B04 without rows."""
    from inversion.cli import main
    from inversion.report.data import load_report_data
    from tests.casegen import make_case

    case = make_case(tmp_path / "case")
    config = case / "config.toml"
    config.write_text(config.read_text().replace("[report]\n", '[report]\nperiods = ["period", "annual"]\n'))
    assert main(["run", str(case), "--comm", "serial", "--no-report"]) == 0
    plain = load_report_data(case / "output")
    t = plain.totals.isel(period=np.flatnonzero(plain.totals.period_kind.values == "period"))
    lines = ["region,period,category,value,unit,sd"]
    for region, shift in (("B01", 0.0), ("B02", 10.0), ("B03", -1.0)):
        r = t.sel(region=region)
        for label, post, sd in zip(r.period_label.values, r.posterior.values, r.posterior_sd.values):
            lines.append(f"{region},{label},net_land_flux,{post + shift * sd:.6f},Tg CO2 yr-1,{0.1 * sd:.6f}")
    inventory = tmp_path / "inventory.csv"
    inventory.write_text("\n".join(lines) + "\n")
    return load_report_data(case / "output", inventory)


def browse(html: Path, screenshot: Path, profile: Path, timeout: float = 60.0) -> dict:
    """Open ``html`` in headless Chromium through the DevTools protocol; return the images'
    load state, console/log errors, network requests, and write a full-page screenshot."""
    import urllib.request

    websocket = pytest.importorskip("websocket", reason="websocket-client is not installed (pip install -e '.[test]')")
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--remote-debugging-port=0",
           "--remote-debugging-address=127.0.0.1", "--window-size=1280,4000", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + timeout
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            target = next(t for t in json.load(r) if t["type"] == "page")
        ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        ids = iter(range(1, 10**6))
        events: list[dict] = []

        def call(method: str, **params):
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            while True:
                msg = json.loads(ws.recv())
                if msg.get("id") == i:
                    if "error" in msg:
                        raise RuntimeError(f"{method}: {msg['error']}")
                    return msg.get("result", {})
                events.append(msg)

        for domain in ("Runtime", "Log", "Page", "Network"):
            call(f"{domain}.enable")
        call("Page.navigate", url=html.resolve().as_uri())
        while not any(e.get("method") == "Page.loadEventFired" for e in events):
            if time.monotonic() > deadline:
                raise RuntimeError("page did not load")
            events.append(json.loads(ws.recv()))
        state = call("Runtime.evaluate", returnByValue=True, awaitPromise=True, expression="""
            Promise.all(Array.from(document.images).map(i => i.decode().then(() => true, () => false)))
              .then(ok => ({n: document.images.length, decoded: ok,
                            widths: Array.from(document.images).map(i => i.naturalWidth),
                            complete: Array.from(document.images).map(i => i.complete),
                            height: document.documentElement.scrollHeight,
                            title: document.title}))""")["result"]["value"]
        call("Emulation.setScrollbarsHidden", hidden=True)
        call("Emulation.setDeviceMetricsOverride", width=1280, height=int(state["height"]), deviceScaleFactor=1,
             mobile=False)
        shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    errors = [e for e in events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    requests = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return {**state, "errors": errors, "requests": requests}


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium); "
                    ".ci/run installs it")
def test_report_of_a_run_opens_in_a_headless_browser(tmp_path):
    data = _real_report_data(tmp_path)
    page_path = write_html_report(data, tmp_path / "out" / "report")
    page = page_path.read_text(encoding="utf-8")
    # the verdicts follow the inventory written above, period by period
    assert "badge ok'>consistent in every period<" in _summary_row(page, "B01")
    assert "badge no'>not consistent in any period<" in _summary_row(page, "B02")
    assert "per report period: consistent in 2 of 2" in _summary_row(page, "B03")
    assert "badge na'>no inventory<" in _summary_row(page, "B04")

    shot = tmp_path / "report-screenshot.png"
    result = browse(page_path, shot, tmp_path / "chrome-profile")
    shutil.copyfile(shot, SCREENSHOT)
    print(f"\nreport screenshot: {shot} (copy: {SCREENSHOT})")
    n = len(_images(page))
    assert n >= 7 and result["n"] == n
    assert all(result["decoded"]) and all(w > 0 for w in result["widths"]) and all(result["complete"])
    assert result["errors"] == [], result["errors"]
    # the page itself is the only request: figures are data: URIs, nothing from the network
    assert all(u.startswith(("file:", "data:")) for u in result["requests"]), \
        [u[:80] for u in result["requests"]]
    png = shot.read_bytes()
    assert png.startswith(PNG_MAGIC) and _png_size(png)[0] == 1280 and _png_size(png)[1] > 2000


def test_site_lines_break_at_gaps_between_sampling_windows():
    hours = np.array([4, 6, 8, 28, 30, 32, 52], dtype="timedelta64[h]")
    time = np.datetime64("2024-07-01T00:00", "s") + hours
    gaps = figures._gaps(time)
    assert gaps.tolist() == [3, 6]  # the nights: 20 h against a median spacing of 2 h
    t, v = figures._broken(time, np.arange(7.0), gaps)
    assert len(t) == len(v) == 9 and np.isnan(v[[3, 7]]).all() and np.nansum(v) == 21
