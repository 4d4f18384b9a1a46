"""Figures of the report, each returned as PNG bytes (matplotlib's Agg canvas, no pyplot and
no global matplotlib state, so report writing never changes a caller's plotting backend).

Maps are drawn with cartopy (the ``maps`` extra) **offline**:

* coastlines are GSHHS shapefiles found on disk — ``cartopy.config['pre_existing_data_dir']``
  (``$CARTOPY_DATA_DIR``), Debian's ``python-cartopy-data`` (``/usr/share/cartopy/data``),
  or cartopy's ``data_dir`` — read with ``cartopy.io.shapereader.Reader``; nothing is ever
  downloaded: drawing runs with cartopy's downloaders removed, so a missing file is an
  error here instead of a network request;
* region borders come from the region masks themselves: the DCW-GMT polygons when the mask
  file says it was built from ``dcw:`` sources (``tanhui regions build``) and the DCW file
  is installed, otherwise the 0.5 contour of each region's ``region_fraction``.

Without cartopy or without any coastline file the maps degrade to plain lat/lon plots with
the borders, and :class:`Basemap` carries a note saying why (shown on the figure and in the
report).
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from transport.grid import Grid

DEBIAN_CARTOPY_DATA = Path("/usr/share/cartopy/data")
_GSHHS_SCALES = ("f", "h", "i", "l", "c")  # finest first
_DPI = 100
_MIN_LAKE_KM2 = 1000.0

# Colours shared by every figure: one per role, so a reader learns them once.
COLOURS = {"observed": "black", "prior": "#d95f02", "posterior": "#1b6ca8", "background": "0.55",
           "inventory": "#2ca02c", "truth": "#7b3294"}


@dataclass(frozen=True)
class Sites:
    """Sites drawn on maps: codes and positions (degrees north / east)."""

    code: tuple[str, ...]
    lat: np.ndarray
    lon: np.ndarray


@dataclass(frozen=True)
class Basemap:
    """What is drawn under every map.

    ``coastlines``: GSHHS shapefiles used (level 1 = shorelines, level 2 = lakes) or empty;
    ``shorelines``, ``lakes``: their shapely geometries inside the map extent (lakes of
    1000 km² or more only: smaller ones and river stretches would read as borders);
    ``borders``: region outlines as (n, 2) arrays of (lon, lat) degrees;
    ``border_source``: how the borders were obtained; ``note``: why the maps are plain
    lat/lon plots (None when they are cartopy maps with coastlines) and ``label`` its short
    form written on each plain map.
    """

    coastlines: tuple[Path, ...]
    borders: tuple[np.ndarray, ...]
    border_source: str
    note: str | None
    label: str = ""
    shorelines: tuple = ()
    lakes: tuple = ()

    @property
    def uses_cartopy(self) -> bool:
        return self.note is None


# ---- map background ---------------------------------------------------------------------------
def _cartopy():
    try:
        import cartopy
        import cartopy.crs  # fails without pyproj/shapely: then no cartopy maps
    except ImportError:
        return None
    return cartopy


def gshhs_files(data_dirs: Sequence[Path]) -> tuple[Path, ...]:
    """The finest GSHHS shoreline (level 1) and lake (level 2) shapefiles under the first
    data directory holding any, in cartopy's layout ``shapefiles/gshhs/<scale>/GSHHS_<scale>_L<level>.shp``."""
    for root in data_dirs:
        found = []
        for level in (1, 2):
            for scale in _GSHHS_SCALES:
                path = Path(root) / "shapefiles" / "gshhs" / scale / f"GSHHS_{scale}_L{level}.shp"
                if path.is_file():
                    found.append(path)
                    break
        if found and found[0].name.endswith("_L1.shp"):
            return tuple(found)
    return ()


def cartopy_data_dirs(cartopy) -> list[Path]:
    """Where coastline files are looked for, in order: ``$CARTOPY_DATA_DIR`` /
    ``cartopy.config['pre_existing_data_dir']``, Debian's python-cartopy-data, cartopy's data_dir."""
    dirs = []
    if os.environ.get("CARTOPY_DATA_DIR"):
        dirs.append(Path(os.environ["CARTOPY_DATA_DIR"]))
    if cartopy is not None:
        dirs.append(Path(cartopy.config["pre_existing_data_dir"]))
    dirs.append(DEBIAN_CARTOPY_DATA)
    if cartopy is not None:
        dirs.append(Path(cartopy.config["data_dir"]))
    return [d for d in dict.fromkeys(dirs) if str(d) not in ("", ".")]


def make_basemap(regions, *, data_dirs: Sequence[Path] | None = None, dcw_file: Path | None = None) -> Basemap:
    """Coastlines and region borders for the maps of ``regions`` (a Dataset with
    ``region_fraction(region, lat, lon)``; optional ``region_code`` and attribute ``sources``).

    ``data_dirs`` overrides where GSHHS files are looked for (tests: an empty directory shows
    the plain fallback)."""
    borders, border_source = region_borders(regions, dcw_file=dcw_file)
    cartopy = _cartopy()
    if cartopy is None:
        return Basemap((), borders, border_source,
                       "cartopy is not installed (pip install 'tanhui[maps]'): plain latitude/longitude maps "
                       "without coastlines", "plain lat/lon map: cartopy not installed, no coastlines")
    dirs = list(data_dirs) if data_dirs is not None else cartopy_data_dirs(cartopy)
    files = gshhs_files(dirs)
    if not files:
        return Basemap((), borders, border_source,
                       "no coastline data found (install Debian's python-cartopy-data, or set CARTOPY_DATA_DIR "
                       f"to a directory with shapefiles/gshhs; looked in {', '.join(map(str, dirs)) or 'nothing'}): "
                       "plain latitude/longitude maps without coastlines", "plain lat/lon map: no coastline data")
    # The files are read directly; also point cartopy at their tree so any cartopy feature
    # used later resolves to the same offline data.
    cartopy.config["pre_existing_data_dir"] = files[0].parents[3]
    extent = _extent(regions)
    shorelines, lakes = [], []
    for path in files:
        if path.name.endswith("_L1.shp"):
            shorelines += _read_shapes(path, extent)
        else:
            # GSHHS gives each polygon's area in km², negative for river-lakes (stretches of
            # rivers): only real lakes larger than _MIN_LAKE_KM2 are drawn.
            lakes += _read_shapes(path, extent, lambda a: float(a.get("area", 0.0)) >= _MIN_LAKE_KM2)
    return Basemap(files, borders, border_source, None, shorelines=tuple(shorelines), lakes=tuple(lakes))


def _extent(ds) -> tuple[float, float, float, float]:
    """(lon0, lon1, lat0, lat1) of the grid's cell edges."""
    grid = Grid.from_centres(np.asarray(ds["lat"].values, dtype=np.float64),
                             np.asarray(ds["lon"].values, dtype=np.float64))
    return grid.lon_bounds[0, 0], grid.lon_bounds[-1, 1], grid.lat_bounds[0, 0], grid.lat_bounds[-1, 1]


def _read_shapes(path: Path, extent, keep=None) -> list:
    """Geometries of a shapefile whose bounding box meets the extent (and whose attributes
    satisfy ``keep``)."""
    import logging

    from cartopy.io.shapereader import Reader

    # pyshp warns about GSHHS lake polygons made only of holes; they are drawn as outlines,
    # where ring orientation does not matter.
    shp_log = logging.getLogger("shapefile")
    level = shp_log.level
    shp_log.setLevel(logging.ERROR)
    try:
        reader = Reader(path, bbox=(extent[0], extent[2], extent[1], extent[3]))
        return [r.geometry for r in reader.records()
                if _in_box(r.geometry.bounds, extent) and (keep is None or keep(r.attributes))]
    finally:
        shp_log.setLevel(level)


def region_borders(regions, dcw_file: Path | None = None) -> tuple[tuple[np.ndarray, ...], str]:
    """Region outlines as (lon, lat) polylines and a sentence saying where they come from."""
    sources = str(regions.attrs.get("sources", "")).split()
    if sources and all(s.startswith("dcw:") for s in sources) and "region_code" in regions:
        centre = float(np.mean(_extent(regions)[:2]))
        rings = _dcw_rings([str(c) for c in regions["region_code"].values], dcw_file, centre)
        if rings is not None:
            return rings, f"DCW-GMT polygons of the mask's regions ({' '.join(sources)})"
    return (_mask_borders(regions),
            "grid-cell edges between regions (each cell drawn in the region holding ≥ 50 % of it)")


def _dcw_rings(codes: list[str], dcw_file: Path | None, centre_lon: float) -> tuple[np.ndarray, ...] | None:
    """DCW perimeters and holes of ``codes``, simplified to 0.01° (~1 km, far below a map
    pixel), each shifted by a multiple of 360° to lie nearest the map's central longitude
    (DCW stores some rings in 0–360°); None when the DCW file or shapely is missing or a code
    is not in it (the caller then draws the mask's own borders)."""
    try:
        import shapely

        from transport.errors import InputError

        from ..masks.dcw import Dcw
    except ImportError:
        return None
    try:
        dcw = Dcw(dcw_file)
        entries = [dcw.entries.get(code) for code in codes]
        if any(e is None for e in entries):
            return None
        rings = []
        for entry in entries:
            perimeters, holes = dcw.rings(entry)
            for ring in perimeters + holes:
                ring = np.asarray(shapely.simplify(shapely.LineString(ring), 0.01).coords)
                ring[:, 0] -= 360.0 * np.round((ring[:, 0].mean() - centre_lon) / 360.0)
                rings.append(ring)
    except InputError:
        return None
    return tuple(rings)


def _mask_borders(regions) -> tuple[np.ndarray, ...]:
    """Borders of the majority-region map: each cell belongs to the region with the largest
    fraction if that fraction is ≥ 0.5, else to none; a border is drawn along every cell edge
    between cells of different regions (a cell of no region next to one of a region, the
    domain edge next to a region's cell) — the 0.5 iso-line of the masks on the cells' own
    edges, exact for masks made of whole cells."""
    fraction = np.asarray(regions["region_fraction"].values, dtype=np.float64)
    grid = Grid.from_centres(np.asarray(regions["lat"].values, dtype=np.float64),
                             np.asarray(regions["lon"].values, dtype=np.float64))
    label = np.where(fraction.max(axis=0) >= 0.5, fraction.argmax(axis=0), -1)
    padded = np.pad(label, 1, constant_values=-1)
    lat_e = np.append(grid.lat_bounds[:, 0], grid.lat_bounds[-1, 1])
    lon_e = np.append(grid.lon_bounds[:, 0], grid.lon_bounds[-1, 1])
    segments = []
    # vertical edges: between columns j-1 and j of the padded map (edge lon_e[j-1])
    i, j = np.nonzero(padded[1:-1, :-1] != padded[1:-1, 1:])
    segments += [np.array([[lon_e[b], lat_e[a]], [lon_e[b], lat_e[a + 1]]]) for a, b in zip(i, j)]
    # horizontal edges: between rows
    i, j = np.nonzero(padded[:-1, 1:-1] != padded[1:, 1:-1])
    segments += [np.array([[lon_e[b], lat_e[a]], [lon_e[b + 1], lat_e[a]]]) for a, b in zip(i, j)]
    return tuple(segments)


@contextlib.contextmanager
def _no_downloads(cartopy) -> Iterator[None]:
    """Remove cartopy's downloaders while drawing: a feature needing a file that is not on
    disk then fails loudly instead of reaching for the network."""
    saved = cartopy.config["downloaders"]
    cartopy.config["downloaders"] = {}
    try:
        yield
    finally:
        cartopy.config["downloaders"] = saved


# ---- rendering ----------------------------------------------------------------------------------
def _figure(width: float, height: float):
    """A figure (inches) with its own Agg canvas and no layout engine: callers set fixed
    margins (a layout engine draws every figure twice, and most of a figure's time goes into
    drawing)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


@dataclass(frozen=True)
class MapStyle:
    """Colour scale of a map: ``kind`` is ``diverging`` (symmetric about 0, ±``limit``),
    ``fraction`` (0–1 shown in %), or ``log`` (positive values, decades)."""

    kind: str
    cmap: str
    limit: float | None = None


def symmetric_limit(*fields: np.ndarray) -> float:
    """Colour limit shared by fields: the 95th percentile of |value| (hot spots such as cities
    do not wash out the rest; they saturate, shown by the colour bar's arrows), or 1 for an
    all-zero field."""
    values = np.abs(np.concatenate([np.ravel(f)[np.isfinite(np.ravel(f))] for f in fields]))
    limit = float(np.percentile(values, 95)) if values.size else 0.0
    return limit if limit > 0 else 1.0


def map_png(values: np.ndarray, lat: np.ndarray, lon: np.ndarray, *, title: str, colorbar_label: str,
            style: MapStyle, basemap: Basemap, sites: Sites | None = None) -> bytes:
    """One map of ``values`` (lat × lon, on cell centres ``lat``, ``lon``) as PNG bytes."""
    from matplotlib import colors, patheffects
    from matplotlib.collections import LineCollection

    grid = Grid.from_centres(lat, lon)
    lat_edges = np.append(grid.lat_bounds[:, 0], grid.lat_bounds[-1, 1])
    lon_edges = np.append(grid.lon_bounds[:, 0], grid.lon_bounds[-1, 1])
    extent = (lon_edges[0], lon_edges[-1], lat_edges[0], lat_edges[-1])
    aspect = (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-9)
    if basemap.uses_cartopy:  # PlateCarree: one degree is as tall as it is wide
        aspect_plain = aspect
    else:  # plain lat/lon axes drawn with the local scale of a degree of longitude
        aspect_plain = aspect / max(np.cos(np.radians(np.mean(extent[2:]))), 0.2)
    # Fixed margins in inches: title above, tick labels and the colour bar below.
    width, left, right, top, bottom = 6.4, 0.65, 0.4, 0.4, 1.05
    map_w = width - left - right
    map_h = min(max(map_w * aspect_plain, 2.0), 8.0)
    height = map_h + top + bottom
    fig = _figure(width, height)
    rect = [left / width, bottom / height, map_w / width, map_h / height]
    values = np.asarray(values, dtype=np.float64)
    if style.kind == "diverging":
        limit = style.limit or symmetric_limit(values)
        norm = colors.Normalize(-limit, limit)
        extend = "both"
    elif style.kind == "fraction":
        values = 100.0 * values
        norm, extend = colors.Normalize(0.0, 100.0), "min"
    elif style.kind == "log":
        positive = values[np.isfinite(values) & (values > 0)]
        top = float(positive.max()) if positive.size else 1.0
        values = np.where(values > 0, values, np.nan)  # zero sensitivity: left blank, not a colour
        norm, extend = colors.LogNorm(top * 1e-3, top), "min"
    else:
        raise ValueError(f"unknown map style {style.kind!r}")

    cartopy = _cartopy() if basemap.uses_cartopy else None
    with (_no_downloads(cartopy) if cartopy is not None else contextlib.nullcontext()):
        if cartopy is not None:
            import cartopy.crs as ccrs

            plate = ccrs.PlateCarree()
            ax = fig.add_axes(rect, projection=plate)
            ax.set_extent(extent, crs=plate)
            kw = {"transform": plate}
        else:
            ax = fig.add_axes(rect)
            kw = {}
        mesh = ax.pcolormesh(lon_edges, lat_edges, np.ma.masked_invalid(values), cmap=style.cmap, norm=norm,
                             shading="flat", rasterized=True, **kw)
        if cartopy is not None:
            if basemap.shorelines:
                ax.add_geometries(basemap.shorelines, plate, facecolor="none", edgecolor="black", linewidth=0.9,
                                  zorder=3)
            if basemap.lakes:
                ax.add_geometries(basemap.lakes, plate, facecolor="none", edgecolor="#3a6ea5", linewidth=0.6,
                                  zorder=3)
        else:
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            ax.set_aspect(aspect_plain / aspect)
            ax.text(0.01, 0.01, basemap.label, transform=ax.transAxes, fontsize=7,
                    color="0.2", va="bottom", bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        _degree_ticks(ax, extent, plate if cartopy is not None else None)
        if basemap.borders:
            ax.add_collection(LineCollection(basemap.borders, colors="0.25", linewidths=0.7, zorder=4, **kw))
        if sites is not None and len(sites.code):
            ax.scatter(sites.lon, sites.lat, marker="^", s=42, c="white", edgecolors="black", linewidths=1.0,
                       zorder=6, **kw)
            halo = [patheffects.withStroke(linewidth=2.5, foreground="white")]
            for code, la, lo in zip(sites.code, sites.lat, sites.lon):
                # PlateCarree axes: data coordinates are (lon, lat) themselves
                ax.annotate(code, (lo, la), xytext=(4, 4), textcoords="offset points", fontsize=8, zorder=7,
                            path_effects=halo)
        ax.set_title(title, fontsize=11)
        cax = fig.add_axes([(left + 0.1 * map_w) / width, 0.42 / height, 0.8 * map_w / width, 0.14 / height])
        bar = fig.colorbar(mesh, cax=cax, orientation="horizontal", extend=extend)
        bar.set_label(colorbar_label, fontsize=9)
        bar.ax.tick_params(labelsize=8)
        return _png(fig)


def _degree_ticks(ax, extent, plate) -> None:
    """Longitude/latitude ticks labelled 110°E, 30°N (gridlines at the ticks), at round
    numbers of degrees; plain matplotlib ticks even on cartopy axes (cartopy's gridliner labels
    cost more than the rest of the map)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    locator = MaxNLocator(nbins=6, steps=[1, 2, 2.5, 3, 5, 10])
    xt = [x for x in locator.tick_values(extent[0], extent[1]) if extent[0] <= x <= extent[1]]
    yt = [y for y in locator.tick_values(extent[2], extent[3]) if extent[2] <= y <= extent[3]]
    kw = {} if plate is None else {"crs": plate}
    ax.set_xticks(xt, **kw)
    ax.set_yticks(yt, **kw)

    def lon(x, _):
        x = (x + 180.0) % 360.0 - 180.0
        return f"{abs(x):g}°{'E' if x > 0 else 'W' if x < 0 else ''}"

    ax.xaxis.set_major_formatter(FuncFormatter(lon))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{abs(y):g}°{'N' if y > 0 else 'S' if y < 0 else ''}"))
    ax.tick_params(labelsize=8, direction="out", length=3)
    ax.grid(linewidth=0.3, color="0.5", alpha=0.6)


def _in_box(bounds: tuple[float, float, float, float], extent) -> bool:
    x0, y0, x1, y1 = bounds
    return x1 >= extent[0] and x0 <= extent[1] and y1 >= extent[2] and y0 <= extent[3]


@dataclass(frozen=True)
class Series:
    """Totals of one region per period (report units): period bounds, prior mean and σ,
    posterior mean and its 2.5/16/84/97.5 % points, the truth of twins (optional), and the
    inventory values (mean, σ — NaN when not given) with their own period bounds, which may be
    coarser than the series' periods (e.g. a monthly inventory beside weekly totals)."""

    region: str
    start: np.ndarray
    end: np.ndarray
    prior: np.ndarray
    prior_sd: np.ndarray
    posterior: np.ndarray
    p025: np.ndarray
    p16: np.ndarray
    p84: np.ndarray
    p975: np.ndarray
    truth: np.ndarray | None = None
    inventory: np.ndarray | None = None
    inventory_sd: np.ndarray | None = None
    inventory_start: np.ndarray | None = None
    inventory_end: np.ndarray | None = None


def _days(t: np.ndarray) -> np.ndarray:
    """matplotlib date numbers (days) of datetime64 values, vectorised (much faster to draw
    than Python datetime objects)."""
    import matplotlib.dates as mdates

    return mdates.date2num(np.asarray(t).astype("datetime64[s]"))


def _date_axis(ax) -> None:
    import matplotlib.dates as mdates

    ax.xaxis_date()
    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def timeseries_png(series: Sequence[Series], unit: str, columns: int = 3) -> bytes:
    """Small multiples, one panel per region: posterior per period as a line with boxes for
    the 16–84 % (dark) and 2.5–97.5 % (light) ranges, prior ± 1σ dashed, inventory as a line
    over its period with its 95 % range (± 1.96σ), truth (twin experiments) as crosses."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    n = len(series)
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    width, height = 4.2 * columns, 2.9 * rows + 0.7
    fig = _figure(width, height)
    fig.subplots_adjust(left=0.75 / width, right=1 - 0.1 / width, bottom=0.45 / height, top=1 - 0.7 / height,
                        wspace=0.25, hspace=0.5)
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False).ravel())
    for ax, s in zip(axes, series):
        start, end = _days(s.start), _days(s.end)
        mid = (start + end) / 2
        ax.bar(start, s.p975 - s.p025, bottom=s.p025, width=end - start, align="edge", color=COLOURS["posterior"],
               alpha=0.18, linewidth=0)
        ax.bar(start, s.p84 - s.p16, bottom=s.p16, width=end - start, align="edge", color=COLOURS["posterior"],
               alpha=0.35, linewidth=0)
        ax.hlines(s.posterior, start, end, color=COLOURS["posterior"], linewidth=2.0)
        ax.hlines(s.prior, start, end, color=COLOURS["prior"], linewidth=1.4, linestyles="--")
        ax.errorbar(mid, s.prior, yerr=s.prior_sd, fmt="none", ecolor=COLOURS["prior"], elinewidth=1.0, capsize=3)
        if s.inventory is not None and s.inventory.size:
            i_start, i_end = _days(s.inventory_start), _days(s.inventory_end)
            err = 1.959964 * np.where(np.isfinite(s.inventory_sd), s.inventory_sd, 0.0)
            ax.hlines(s.inventory, i_start, i_end, color=COLOURS["inventory"], linewidth=1.6)
            ax.errorbar((i_start + i_end) / 2, s.inventory, yerr=err, fmt="s", color=COLOURS["inventory"],
                        markersize=5, capsize=3, elinewidth=1.2)
        if s.truth is not None and np.isfinite(s.truth).any():
            ax.plot(mid, s.truth, "x", color=COLOURS["truth"], markersize=7, markeredgewidth=1.8)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.set_title(s.region, fontsize=10, loc="left")
        _date_axis(ax)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, linewidth=0.5)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[::columns][:rows]:
        ax.set_ylabel(unit, fontsize=8)
    handles = [Line2D([], [], color=COLOURS["posterior"], lw=2, label="posterior (atmosphere)"),
               Patch(color=COLOURS["posterior"], alpha=0.45, label="posterior 16–84 %"),
               Patch(color=COLOURS["posterior"], alpha=0.18, label="posterior 2.5–97.5 %"),
               Line2D([], [], color=COLOURS["prior"], lw=1.4, ls="--", label="prior ± 1σ")]
    if any(s.inventory is not None and s.inventory.size for s in series):
        handles.append(Line2D([], [], color=COLOURS["inventory"], marker="s", label="inventory (95 % range)"))
    if any(s.truth is not None and np.isfinite(s.truth).any() for s in series):
        handles.append(Line2D([], [], color=COLOURS["truth"], marker="x", ls="none", mew=1.8,
                              label="truth (twin experiment)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.1 / height), ncol=len(handles),
               fontsize=9, frameon=False)
    return _png(fig)


@dataclass(frozen=True)
class SiteSeries:
    """Mole fractions at one site (display units): observed, modelled with the prior and the
    posterior fluxes (background included), the (prior) background and optionally the
    posterior background, and the statistics line."""

    site: str
    time: np.ndarray
    observed: np.ndarray
    prior: np.ndarray
    posterior: np.ndarray
    background: np.ndarray
    sigma: np.ndarray
    caption: str
    posterior_background: np.ndarray | None = None


def sites_png(sites: Sequence[SiteSeries], unit: str) -> bytes:
    """One panel per site (stacked, shared time axis): observations with their 1σ error bars,
    prior and posterior model, background."""
    from matplotlib.lines import Line2D

    n = len(sites)
    width, height = 12.0, 2.4 * n + 0.9
    fig = _figure(width, height)
    fig.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.65 / height,
                        hspace=0.35)
    axes = np.atleast_1d(fig.subplots(n, 1, sharex=True, squeeze=False).ravel())
    for ax, s in zip(axes, sites):
        order = np.argsort(s.time)
        time = s.time[order].astype("datetime64[s]")
        x = _days(time)
        obs, sig = s.observed[order], s.sigma[order]
        ax.vlines(x, obs - sig, obs + sig, color=COLOURS["observed"], linewidth=0.5, alpha=0.6, zorder=3)
        ax.plot(x, obs, "o", color=COLOURS["observed"], markersize=2.5, zorder=3)
        gap = _gaps(time)
        ax.plot(*_broken(x, s.background[order], gap), color=COLOURS["background"], linewidth=1.0, zorder=1)
        if s.posterior_background is not None:
            ax.plot(*_broken(x, s.posterior_background[order], gap), color=COLOURS["background"], linewidth=1.0,
                    linestyle="--", zorder=1)
        ax.plot(*_broken(x, s.prior[order], gap), color=COLOURS["prior"], linewidth=1.0, marker=".",
                markersize=2, zorder=2)
        ax.plot(*_broken(x, s.posterior[order], gap), color=COLOURS["posterior"], linewidth=1.2, marker=".",
                markersize=2, zorder=4)
        ax.set_title(f"{s.site}   {s.caption}", fontsize=9, loc="left")
        ax.set_ylabel(unit, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3, linewidth=0.5)
    _date_axis(axes[-1])
    handles = [Line2D([], [], color=COLOURS["observed"], marker="o", ls="none", ms=4, label="observed ± 1σ"),
               Line2D([], [], color=COLOURS["prior"], label="modelled, prior fluxes"),
               Line2D([], [], color=COLOURS["posterior"], lw=1.2, label="modelled, posterior fluxes"),
               Line2D([], [], color=COLOURS["background"], label="background (prior)")]
    if any(s.posterior_background is not None for s in sites):
        handles.append(Line2D([], [], color=COLOURS["background"], ls="--", label="background (posterior)"))
    fig.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.1 / height), ncol=len(handles),
               fontsize=9, frameon=False)
    return _png(fig)


def _gaps(time: np.ndarray) -> np.ndarray:
    """Indices i where the series has a gap between samples i−1 and i: more than three times
    the median spacing (e.g. the nights between afternoon samples), never under one hour."""
    if time.size < 3:
        return np.zeros(0, dtype=int)
    step = np.diff(time).astype("timedelta64[s]").astype(np.float64)
    limit = max(3.0 * float(np.median(step)), 3600.0)
    return np.flatnonzero(step > limit) + 1


def _broken(x: np.ndarray, values: np.ndarray, gaps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x, values) with a NaN point inserted at each gap: matplotlib does not join points
    across a NaN, so lines are not drawn across gaps (markers still show every sample)."""
    values = np.asarray(values, dtype=np.float64)
    if gaps.size:
        x = np.insert(x, gaps, x[gaps - 1])
        values = np.insert(values, gaps, np.nan)
    return x, values
