"""Plots of replay results: what a table of 16 configs × 6 traces hides at a glance.

Four figures, each one file per format (PNG for reading, SVG whose text stays text for papers):

``wire-vs-cpu``
    Wire bytes against sender CPU (min over repeats), the Pareto frontier of each trace drawn as a
    step line (everything above and right of it is beaten on both counts), the memcpy floor as a
    dashed vertical line: the cost question a user actually decides.
``rounds``
    Wire bytes of each migration pass, a line per config: the bulk stage and the later passes are
    where codecs differ (XBZRLE gains nothing in the bulk stage, a compressor gains in every pass).
``cache-sweep``
    Only when the results hold runs that differ in nothing but ``xbzrle-cache-size``: a panel per
    trace and config, wire bytes against cache size with the cache-miss rate on a second axis, to
    see where a bigger cache stops paying. Each config gets its own wire-byte scale: on a shared
    one, a 10% gain of one codec is a flat line beside another codec five times its size.
``relative-to-none``
    Per trace, bytes saved against the ``none`` run and sender CPU as a multiple of ``none``'s, as
    horizontal bars (config names stay readable with many configs); ``none`` is the 0% / 1× line.

Traces are panels of one figure (a grid, or one row per trace), not one file per trace: a reader
compares traces side by side, and one legend then serves them all, with every config drawn in the
same colour, marker and line style in every panel and every figure (20 colours of tab20, 7 markers,
a second line style after ten configs). Panels keep their own axis ranges (traces differ by orders
of magnitude in size). The legend has a column of its own right of the panels (a subfigure), so it
can cover neither data nor the title however many configs there are.

Only ok runs are drawn (a failed run has no figures to draw; the table lists its error). The
memcpy row is never a point or a bar: it is the CPU floor, drawn as a dashed line.

The figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas, never pyplot: no
global figure registry, nothing to close, safe to call from a library. Files are rendered to
memory and written atomically with the umask's permissions.
"""

from __future__ import annotations

import io
import json
import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure, SubFigure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullFormatter, NullLocator, ScalarFormatter

from ..atomic import atomic_write_bytes
from . import analysis as A

__all__ = ["SWEEP_KEY", "FIGURES", "Style", "Sweep", "build_figures", "write_plots", "render", "cache_sweeps", "styles_for",
           "size_label"]

SWEEP_KEY = "xbzrle-cache-size"
FIGURES = ("wire-vs-cpu", "rounds", "cache-sweep", "relative-to-none")
DPI = 120
PANEL_W, PANEL_H = 4.6, 3.4  # inches: a panel of a scatter or line grid

# tab20's ten strong colours first, then their light partners: 20 colours; markers repeat every 7
# and line styles change after each 10, so no two of the first 140 configs look alike.
_COLOR_ORDER = tuple(range(0, 20, 2)) + tuple(range(1, 20, 2))
_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_LINESTYLES = ("-", "--", "-.", ":")
_FLOOR_STYLE = {"color": "0.25", "linestyle": (0, (5, 3)), "linewidth": 1.2}
_FRONT_STYLE = {"color": "0.45", "linewidth": 1.4, "alpha": 0.8}


@dataclass(frozen=True)
class Style:
    color: tuple[float, float, float, float]
    marker: str
    linestyle: Any


def styles_for(labels: Iterable[str]) -> dict[str, Style]:
    """One look per config label, in the order given (first appearance in the results), so a config
    is the same colour and marker in every panel and every figure."""
    cmap = matplotlib.colormaps["tab20"]
    out: dict[str, Style] = {}
    for lab in labels:
        if lab not in out:
            i = len(out)
            out[lab] = Style(cmap(_COLOR_ORDER[i % 20]), _MARKERS[i % len(_MARKERS)], _LINESTYLES[(i // 10) % 4])
    return out


# -- figures ----------------------------------------------------------------------------------------
def build_figures(results: Sequence[dict[str, Any]]) -> dict[str, Figure]:
    """The figures for ``results`` by name (see :data:`FIGURES`), leaving out those with nothing to
    show (no sweep, no ``none`` run, no per-round figures). Exposed so tests and notebooks can read
    legends and extents before anything is written."""
    runs = [r for r in results if A.ok(r)]
    sweeps = cache_sweeps(runs)
    styles = styles_for(A.label(r) for r in runs if not A.is_baseline(r))
    figs = {
        "wire-vs-cpu": _wire_vs_cpu(runs, styles),
        "rounds": _rounds(runs, styles),
        "cache-sweep": _cache_sweep(sweeps, styles),
        "relative-to-none": _relative_to_none(runs, styles),
    }
    return {name: fig for name, fig in figs.items() if fig is not None}


def write_plots(results: Sequence[dict[str, Any]], outdir: str | os.PathLike[str],
                formats: Sequence[str] | str = ("png", "svg")) -> list[Path]:
    """Write every figure of :func:`build_figures` into ``outdir`` as ``NAME.FORMAT``; returns the
    files. Files of a figure these results do not produce (a sweep plot from an earlier bench) are
    left alone: the directory is the user's."""
    formats = (formats,) if isinstance(formats, str) else tuple(formats)
    supported = FigureCanvasAgg.get_supported_filetypes()
    unknown = [f for f in formats if f not in supported]
    if unknown:
        raise ValueError(f"plot format(s) {', '.join(unknown)} not supported (one of {', '.join(sorted(supported))})")
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for name, fig in build_figures(results).items():
        for fmt in formats:
            path = out / f"{name}.{fmt}"
            atomic_write_bytes(path, render(fig, fmt))
            files.append(path)
    return files


def render(fig: Figure, fmt: str) -> bytes:
    """The figure as ``fmt`` bytes. SVG keeps its text as text (searchable, editable, the fonts of
    the document it is put in) and carries no date, so equal results give equal files."""
    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "pagecodec"}):
        fig.savefig(buf, format=fmt, dpi=DPI, bbox_inches="tight", facecolor="white",
                    metadata={"Date": None} if fmt == "svg" else None)
    return buf.getvalue()


# 1. wire bytes against sender CPU ------------------------------------------------------------------
def _wire_vs_cpu(runs: list[dict[str, Any]], styles: dict[str, Style]) -> Figure | None:
    points = [r for r in runs if not A.is_baseline(r) and A.wire_total(r) is not None and A.cpu(r) is not None]
    if not points:
        return None
    front = {id(points[i]) for i in A.pareto_optimal(points)}
    floors = _memcpy_cpu(runs)
    div, unit = _byte_unit(max(A.wire_total(r) or 0 for r in points))
    traces = _traces(points)
    entries = [(_marker_handle(styles[lab]), lab) for lab in _labels_in(points)]
    entries.append((Line2D([], [], **_FRONT_STYLE), "Pareto frontier (black edge: optimal)"))
    if any(key in floors for key, _ in traces):
        entries.append((Line2D([], [], **_FLOOR_STYLE), "memcpy (copying the pages)"))
    fig, axes = _grid_sheet(len(traces), entries, "Wire bytes against sender CPU (min over repeats), per trace: lower left is better")
    for ax, (key, title) in zip(axes, traces):
        mine = [r for r in points if A.trace_key(r) == key]
        for r in mine:
            st = styles[A.label(r)]
            best = id(r) in front
            ax.scatter([A.cpu(r)], [A.wire_total(r) / div], color=st.color, marker=st.marker, s=46 if best else 34,
                       edgecolors="black" if best else "none", linewidths=0.9, zorder=3)
        frontier = sorted((A.cpu(r), A.wire_total(r) / div) for r in mine if id(r) in front)
        if frontier:
            ax.step([c for c, _ in frontier], [w for _, w in frontier], where="post", zorder=2, **_FRONT_STYLE)
        xs = [A.cpu(r) for r in mine]
        if key in floors:
            _floor_line(ax, floors[key])
            xs.append(floors[key])
        _scale(ax, "x", xs)
        _scale(ax, "y", [A.wire_total(r) / div for r in mine], zero=True)
        _panel_title(ax, title, key in floors)
        ax.set_xlabel("sender CPU (s/GiB of pages, min)")
        ax.set_ylabel(f"wire bytes ({unit})")
        ax.grid(True, which="major", alpha=0.3)
    return fig


# 2. bytes per round --------------------------------------------------------------------------------
def _round_wire(rd: dict[str, Any]) -> int:
    """A pass's wire bytes: its records' bytes by kind (QEMU's ``transferred`` where a results file
    has no breakdown; for multifd that counts pages before compression)."""
    w = rd.get("wire")
    return int(sum(w.values())) if w else int(rd.get("transferred", 0))


def _rounds(runs: list[dict[str, Any]], styles: dict[str, Style]) -> Figure | None:
    lines = [r for r in runs if not A.is_baseline(r) and r.get("rounds")]
    if not lines:
        return None
    div, unit = _byte_unit(max(_round_wire(rd) for r in lines for rd in r["rounds"]))
    traces = _traces(lines)
    entries = [(_line_handle(styles[lab]), lab) for lab in _labels_in(lines)]
    fig, axes = _grid_sheet(len(traces), entries, "Wire bytes of each migration pass, per trace")
    for ax, (key, title) in zip(axes, traces):
        mine = [r for r in lines if A.trace_key(r) == key]
        ys_all = []
        for r in mine:
            st = styles[A.label(r)]
            ys = [_round_wire(rd) / div for rd in r["rounds"]]
            ys_all += ys
            ax.plot([rd.get("round", i) for i, rd in enumerate(r["rounds"])], ys, color=st.color, marker=st.marker, linestyle=st.linestyle,
                    markersize=4.5, linewidth=1.4)
        _scale(ax, "y", ys_all, zero=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _panel_title(ax, title)
        ax.set_xlabel(f"migration pass ({_stage_note(mine[0]['rounds'])})")
        ax.set_ylabel(f"wire bytes in the pass ({unit})")
        ax.grid(True, which="major", alpha=0.3)
    return fig


def _stage_note(rounds: list[dict[str, Any]]) -> str:
    """What the x axis's ends are: "0 = bulk, 5 = final"."""
    parts = []
    for i, rd in ((0, rounds[0]), (len(rounds) - 1, rounds[-1])):
        stage = {"bulk": "bulk", "complete": "final"}.get(rd.get("stage", ""))
        note = f"{rd.get('round', i)} = {stage}"
        if stage and note not in parts:
            parts.append(note)
    return ", ".join(parts) if parts else "number"


# 3. cache-size sweep -------------------------------------------------------------------------------
@dataclass
class Sweep:
    """Runs of one trace whose configs differ in nothing but ``xbzrle-cache-size``."""
    trace_key: str
    trace_title: str
    label: str  # the config label without its cache-size part
    points: list[tuple[int, dict[str, Any]]]  # (cache size in bytes, run), by size


def cache_sweeps(results: Sequence[dict[str, Any]]) -> list[Sweep]:
    """The cache-size sweeps in ``results`` (ok runs): groups of ≥ 2 cache sizes of one trace and
    one config otherwise (every other parameter, codec and capability equal)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        if not A.ok(r) or A.is_baseline(r) or A.wire_total(r) is None:
            continue
        size, rest = _split_size(r)
        if size is not None:
            groups.setdefault((A.trace_key(r), rest), []).append(r)
    titles = dict(_traces([r for rr in groups.values() for r in rr]))
    out = []
    for (key, _), rr in groups.items():
        by_size: dict[int, dict[str, Any]] = {}
        for r in rr:
            by_size.setdefault(_split_size(r)[0], r)  # type: ignore[arg-type]
        if len(by_size) >= 2:
            out.append(Sweep(key, titles[key], _base_label(A.label(rr[0])), sorted(by_size.items(), key=lambda p: p[0])))
    return out


def _split_size(r: dict[str, Any]) -> tuple[int | None, str]:
    """(the run's cache size, the rest of its config as a comparable string)."""
    cfg = dict(r.get("config", {}))
    cfg.pop("label", None)
    params = dict(cfg.get("parameters") or {})
    size = params.pop(SWEEP_KEY, None)
    cfg["parameters"] = params
    return (int(size) if size is not None else None), json.dumps(cfg, sort_keys=True, default=str)


def _base_label(label: str) -> str:
    rest = [p for p in label.split(",") if not p.startswith(f"{SWEEP_KEY}=")]
    return ",".join(rest) or label


def _sweep_style(s: Sweep, styles: dict[str, Style]) -> Style:
    """The config's own look when it also ran without a size in its label, else that of its smallest
    size: either way the colour of a point of the other figures."""
    return styles.get(s.label) or styles[A.label(s.points[0][1])]


def _cache_sweep(sweeps: list[Sweep], styles: dict[str, Style]) -> Figure | None:
    """A panel per trace (row) and config (column): wire bytes on the left axis (solid), the
    cache-miss rate on the right (dashed), so each config's curve gets its own wire-byte scale."""
    if not sweeps:
        return None
    traces = list(dict.fromkeys((s.trace_key, s.trace_title) for s in sweeps))
    per_row = [[s for s in sweeps if s.trace_key == key] for key, _ in traces]
    cols = max(len(row) for row in per_row)
    with_miss = any(A.cache_miss_rate(r) is not None for s in sweeps for _, r in s.points)
    entries = [(_patch_handle(_sweep_style(s, styles)), s.label) for s in {s.label: s for s in sweeps}.values()]
    entries.append((Line2D([], [], color="0.2", marker="o", linewidth=1.5), "wire bytes (left axis)"))
    if with_miss:
        entries.append((Line2D([], [], color="0.2", marker="o", markerfacecolor="white", linestyle="--", linewidth=1.3),
                        "cache-miss rate (right axis)"))
    fig, main = _sheet(cols * (PANEL_W + 0.5), len(traces) * PANEL_H, entries)
    grid = main.subplots(len(traces), cols, squeeze=False)
    div, unit = _byte_unit(max(A.wire_total(r) or 0 for s in sweeps for _, r in s.points))
    for axes_row, row in zip(grid, per_row):
        for ax, s in zip(axes_row, row):
            _sweep_panel(ax, s, _sweep_style(s, styles), div, unit, with_miss)
        for ax in axes_row[len(row):]:
            main.delaxes(ax)
    _suptitle(main, f"Cache-size sweep ({SWEEP_KEY}), per trace and config", cols * (PANEL_W + 0.5))
    return fig


def _sweep_panel(ax: Axes, s: Sweep, st: Style, div: int, unit: str, with_miss: bool) -> None:
    sizes = [size for size, _ in s.points]
    wire = [A.wire_total(r) / div for _, r in s.points]  # type: ignore[operator]
    ax.plot(sizes, wire, color=st.color, marker=st.marker, linewidth=1.6, markersize=5.5, zorder=3)
    _size_axis(ax, sizes)
    _honest_ylim(ax, wire)
    ax.set_ylabel(f"wire bytes ({unit})")
    ax.grid(True, which="major", alpha=0.3)
    _panel_title(ax, f"{s.trace_title}\n{s.label}")
    if with_miss:
        twin = ax.twinx()
        miss = [(size, A.cache_miss_rate(r)) for size, r in s.points]
        miss = [(x, 100 * y) for x, y in miss if y is not None]
        if miss:
            twin.plot([x for x, _ in miss], [y for _, y in miss], color=st.color, marker=st.marker, linestyle="--",
                      markerfacecolor="white", linewidth=1.3, markersize=5.5, zorder=2)
        twin.set_ylim(0, 105)
        twin.set_ylabel("cache-miss rate (%)")


def _honest_ylim(ax: Axes, values: list[float]) -> None:
    """Limits spanning at least 5% of the largest value, so a 0.1% change does not look like a cliff,
    and plain tick labels (no "+2.3e1" offset)."""
    lo, hi = min(values), max(values)
    span = max(hi - lo, 0.05 * hi, 1e-9)
    mid = (lo + hi) / 2
    ax.set_ylim(mid - 0.6 * span, mid + 0.6 * span)
    ax.yaxis.set_major_formatter(ScalarFormatter(useOffset=False))


def _size_axis(ax: Axes, sizes: list[int]) -> None:
    """A log2 axis with a tick at each swept size, labelled 256K, 1M, 2G (QEMU's own suffixes)."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sizes))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: size_label(v)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(min(sizes) / 2 ** 0.4, max(sizes) * 2 ** 0.4)
    ax.set_xlabel(f"{SWEEP_KEY} (log2 scale)")


def size_label(n: float) -> str:
    """256K, 1M, 1.5G: a byte count with QEMU's binary suffixes."""
    for shift, suffix in ((40, "T"), (30, "G"), (20, "M"), (10, "K")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g}{suffix}"
    return f"{n:.0f}"


# 4. relative to none -------------------------------------------------------------------------------
def _relative_to_none(runs: list[dict[str, Any]], styles: dict[str, Style]) -> Figure | None:
    """Two panels per trace: bytes saved (%) and CPU (× none's). ``none`` itself is the 0% / 1× line."""
    base = A.none_baseline(runs)
    bars = [r for r in runs if not A.is_baseline(r) and A.label(r) != "none" and A.trace_key(r) in base
            and A.relative_to_none(r, base[A.trace_key(r)]) != (None, None)]
    if not bars:
        return None
    traces = _traces(bars)
    floors = _memcpy_cpu(runs)
    heights = [max(1.6, 0.26 * sum(A.trace_key(r) == key for r in bars) + 1.1) for key, _ in traces]
    entries = [(_patch_handle(styles[lab]), lab) for lab in _labels_in(bars)]
    if any(key in floors for key, _ in traces):
        entries.append((Line2D([], [], **_FLOOR_STYLE), "memcpy (copying the pages)"))
    fig, main = _sheet(2 * PANEL_W + 1.8, sum(heights) + 0.5, entries)
    grid = main.subplots(len(traces), 2, squeeze=False, gridspec_kw={"height_ratios": heights})
    for (saved_ax, cpu_ax), (key, title) in zip(grid, traces):
        mine = [r for r in bars if A.trace_key(r) == key]
        rel = [A.relative_to_none(r, base[key]) for r in mine]
        colors = [styles[A.label(r)].color for r in mine]
        ys = list(range(len(mine)))
        _saved_bars(saved_ax, ys, [s for s, _ in rel], colors)
        floor, cb = floors.get(key), A.cpu(base[key])
        _times_bars(cpu_ax, ys, [t for _, t in rel], colors, floor / cb if floor is not None and cb else None)
        saved_ax.set_yticks(ys, [A.label(r) for r in mine], fontsize="small")
        cpu_ax.set_yticks(ys, [])
        for ax in (saved_ax, cpu_ax):
            ax.set_ylim(len(mine) - 0.4, -0.6)  # first config on top
            ax.grid(True, axis="x", which="major", alpha=0.3)
        _panel_title(saved_ax, f"{title}: bytes saved")
        _panel_title(cpu_ax, f"{title}: sender CPU", floor is not None)
        saved_ax.set_xlabel("wire bytes saved vs none (%)")
        cpu_ax.set_xlabel("sender CPU × none (min, log scale)")
    _suptitle(main, "Against QEMU's defaults (none): bytes saved and CPU paid, per trace", 2 * PANEL_W + 1.8)
    return fig


def _saved_bars(ax: Axes, ys: list[int], saved: list[float | None], colors: list[Any]) -> None:
    vals = [0.0 if s is None else s for s in saved]
    ax.barh(ys, vals, color=colors, height=0.7, zorder=2)
    ax.axvline(0, color="0.2", linewidth=0.8, zorder=3)
    for y, s in zip(ys, saved):
        if s is not None:
            ax.text(s, y, f" {s:.1f}% ", va="center", ha="left" if s >= 0 else "right", fontsize="x-small", zorder=4)
    lo, hi = min(0.0, *vals), max(0.0, *vals)
    pad = 0.22 * max(hi - lo, 1.0)
    ax.set_xlim(lo - (pad if lo < 0 else 0.02 * pad), hi + pad)


def _times_bars(ax: Axes, ys: list[int], times: list[float | None], colors: list[Any], floor: float | None) -> None:
    """Bars from 1× (none's CPU) to each config's multiple on a log axis: left of 1 is cheaper."""
    times = [t if t is not None and t > 0 else None for t in times]  # a log axis: no 0×
    vals = [1.0 if t is None else t for t in times]
    ax.set_xscale("log")
    ax.barh(ys, [v - 1.0 for v in vals], left=1.0, color=colors, height=0.7, zorder=2)
    ax.axvline(1.0, color="0.2", linewidth=0.8, zorder=3)
    for y, t in zip(ys, times):
        if t is not None:
            ax.text(t, y, f" {t:.3g}× ", va="center", ha="left" if t >= 1 else "right", fontsize="x-small", zorder=4)
    span = vals + [1.0] + ([floor] if floor else [])
    lo, hi = min(span), max(span)
    room = max(hi / lo, 4.0) ** 0.2
    ax.set_xlim(lo / room, hi * room)
    if floor:
        _floor_line(ax, floor)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    ax.xaxis.set_minor_formatter(NullFormatter())


# -- shared pieces -----------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas (no pyplot), laid out by constrained layout."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _sheet(width: float, height: float, entries: list[tuple[Any, str]]) -> tuple[Figure, SubFigure]:
    """A figure of two side-by-side subfigures: the panels (returned, ``width`` inches wide) and a
    column holding the one legend, so the legend can neither cover data nor collide with the title.
    The column is sized from the longest entry; what is left over is cut off by the tight save."""
    rows = max(6, int((height - 0.5) / 0.19))
    ncols = max(1, math.ceil(len(entries) / rows))
    legend_w = ncols * (0.8 + 0.07 * max(len(t) for _, t in entries)) + 0.2
    fig = _figure(width + legend_w, height)
    main, side = fig.subfigures(1, 2, width_ratios=[width, legend_w])
    side.legend([h for h, _ in entries], [t for _, t in entries], loc="upper left", ncols=ncols, fontsize="small",
                frameon=False, bbox_to_anchor=(0.0, 1.0 - 0.45 / height))
    return fig, main


def _grid_sheet(n: int, entries: list[tuple[Any, str]], title: str) -> tuple[Figure, list[Axes]]:
    """n panels, up to 3 a row (6 traces: 3 × 2), unused cells removed; the legend right of them."""
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig, main = _sheet(cols * PANEL_W, rows * PANEL_H + 0.5, entries)
    axes = list(main.subplots(rows, cols, squeeze=False).flat)
    for ax in axes[n:]:
        main.delaxes(ax)
    _suptitle(main, title, cols * PANEL_W)
    return fig, axes[:n]


def _suptitle(main: SubFigure, title: str, width: float) -> None:
    """The figure's title over its panels, wrapped to their width (one panel is narrower than a
    sentence)."""
    main.suptitle("\n".join(textwrap.wrap(title, max(30, int(width / 0.11)))))


def _panel_title(ax: Axes, title: str, floor_label: bool = False) -> None:
    """The panel's title, lifted clear of the memcpy label that sits above the frame."""
    ax.set_title(title, fontsize="medium", pad=16 if floor_label else 6)


def _traces(runs: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(trace key, panel title) in order of first appearance; a name shared by different traces gets
    the start of its sha256."""
    keys = list(dict.fromkeys((A.trace_key(r), A.trace_name(r)) for r in runs))
    names = [n for _, n in keys]
    return [(k, n if names.count(n) == 1 else f"{n} ({k[:8]})") for k, n in keys]


def _labels_in(runs: Iterable[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(A.label(r) for r in runs))


def _memcpy_cpu(runs: Iterable[dict[str, Any]]) -> dict[str, float]:
    """trace key -> the memcpy row's CPU (s/GiB): what copying the dirty pages out costs."""
    out: dict[str, float] = {}
    for r in runs:
        c = A.cpu(r) if A.is_baseline(r) else None
        if c:
            out.setdefault(A.trace_key(r), c)
    return out


def _floor_line(ax: Axes, x: float) -> None:
    """The memcpy floor: a dashed vertical line, named just above the frame (never over data; the
    panel's title is lifted to make room)."""
    ax.axvline(x, zorder=1, **_FLOOR_STYLE)
    ax.annotate("memcpy", xy=(x, 1.0), xycoords=("data", "axes fraction"), xytext=(0, 2), textcoords="offset points",
                ha="center", va="bottom", fontsize="x-small", color=_FLOOR_STYLE["color"])


def _scale(ax: Axes, axis: str, values: list[float], zero: bool = False) -> None:
    """Log scale when the values span more than a factor of 20 (a few configs would otherwise sit in
    a corner); linear otherwise, from 0 when ``zero`` (so a height reads as a size)."""
    vals = [v for v in values if v is not None and v > 0]
    if not vals:
        return
    target = ax.xaxis if axis == "x" else ax.yaxis
    if max(vals) / min(vals) > 20:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        if max(vals) / min(vals) < 300:  # a couple of decades: label 2 and 5 as well
            target.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if _mantissa(v) in (2, 5) else ""))
    elif zero:
        (ax.set_xlim if axis == "x" else ax.set_ylim)(0, max(vals) * 1.08)


def _mantissa(v: float) -> int:
    return round(v / 10 ** math.floor(math.log10(v) + 1e-9)) if v > 0 else 0


def _byte_unit(n: float) -> tuple[int, str]:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return 1 << shift, unit
    return 1, "bytes"


def _marker_handle(st: Style) -> Line2D:
    return Line2D([], [], color=st.color, marker=st.marker, linestyle="none", markersize=7)


def _line_handle(st: Style) -> Line2D:
    return Line2D([], [], color=st.color, marker=st.marker, linestyle=st.linestyle, markersize=5, linewidth=1.5)


def _patch_handle(st: Style) -> Patch:
    return Patch(color=st.color)
