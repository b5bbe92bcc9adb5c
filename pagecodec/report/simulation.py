"""Tables and the transfer-sheet plot of ``pagecodec simulate`` results.

The question a user brings is "which settings at my link speed", so the sheet names, for every link
speed, the config that migrates fastest *with a downtime within the limit* (a config that does not
converge, or converges with a longer downtime, cannot win however few bytes it sends). The plot shows
total migration time against link speed, one line per config, with the runs that miss the downtime
limit or never converge marked, so the crossings (where a codec stops paying) are visible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tabulate import tabulate

from ..atomic import atomic_write_bytes
from .plots import render, styles_for

__all__ = ["simulation_rows", "format_simulation", "transfer_sheet", "format_sheet", "transfer_figure",
           "write_transfer_plot"]


def _label(r: dict[str, Any]) -> str:
    return str(r["config"].get("label", "?"))


def _link(r: dict[str, Any]) -> str:
    return str(r["simulation"]["link"]["label"])


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.2f}"


def simulation_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One row per run: link, config, QEMU's status, passes, counters, times."""
    rows = []
    for r in results:
        s, ram = r["simulation"], r["ram"]
        bounds = [p["bound"] for p in s["pass-log"] if p["stage"] in ("bulk", "iterate")]
        rows.append([
            _link(r), _label(r), s["status"] + (" (postcopy)" if s.get("postcopy") else ""), s["passes"],
            ram["dirty-sync-count"],
            f"{s['total-time'] / 1000:,.3f}",
            "-" if s["downtime"] is None else f"{s['downtime']:,.1f}",
            "yes" if s["downtime-ok"] else "no",
            "-" if s.get("expected-downtime") is None else f"{s['expected-downtime']:,.1f}",
            _mib(ram["transferred"]), _mib(r["wire"]["total"]),
            s.get("cpu-throttle-percentage", 0), ram.get("postcopy-requests", 0),
            max(set(bounds), key=bounds.count) if bounds else "-",
        ])
    return rows


HEADERS = ["link", "config", "status", "passes", "dirty-sync-count", "total-time s", "downtime ms",
           "downtime ≤ limit", "expected-downtime ms", "transferred MiB", "wire MiB", "cpu-throttle-percentage",
           "postcopy-requests", "passes bound by"]


def format_simulation(results: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    notes = []
    for r in results:
        s = r["simulation"]
        if s["log-ended"]:
            notes.append(f"{_link(r)} {_label(r)}: the migration outlasted the log ({s['log']['duration-s']:.3f} s; "
                         f"--log-end stop)")
        elif not s["converged"]:
            notes.append(f"{_link(r)} {_label(r)}: not converged after {s['passes']} passes (--max-passes); "
                         f"{_mib(r['ram'].get('remaining'))} MiB still dirty")
        if s.get("postcopy"):
            notes.append(f"{_link(r)} {_label(r)}: postcopy after {s['passes']} passes: "
                         f"{s['postcopy-requests']} page requests, the guest waited {s['postcopy-wait']:,.1f} ms")
    text = tabulate(simulation_rows(results), headers=HEADERS, tablefmt=fmt, colalign=("left", "left", "left"))
    return "\n".join([text, *notes])


def transfer_sheet(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per link speed (in the order given): the winner (least total time among the runs that complete
    with a downtime within the limit), its time, and the runner-up; winner None when no config fits."""
    links: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        links.setdefault(_link(r), []).append(r)
    sheet = []
    for link, runs in links.items():
        ok = sorted((r for r in runs if r["simulation"]["downtime-ok"]), key=lambda r: r["simulation"]["total-time"])
        sheet.append({
            "link": link,
            "winner": _label(ok[0]) if ok else None,
            "total-time": ok[0]["simulation"]["total-time"] if ok else None,
            "runner-up": _label(ok[1]) if len(ok) > 1 else None,
            "runner-up-total-time": ok[1]["simulation"]["total-time"] if len(ok) > 1 else None,
            "fit": [_label(r) for r in ok],
            "miss": [_label(r) for r in runs if not r["simulation"]["downtime-ok"]],
        })
    return sheet


def format_sheet(sheet: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    rows = []
    for s in sheet:
        rows.append([
            s["link"], s["winner"] or "(none fits)",
            "-" if s["total-time"] is None else f"{s['total-time'] / 1000:,.3f}",
            s["runner-up"] or "-",
            "-" if s["runner-up-total-time"] is None else f"{s['runner-up-total-time'] / 1000:,.3f}",
            ", ".join(s["miss"]) or "-",
        ])
    return tabulate(rows, headers=["link", "wins", "total-time s", "next", "its total-time s",
                                   "miss the downtime limit or never converge"], tablefmt=fmt,
                    colalign=("left", "left", "right", "left", "right", "left"))


def transfer_figure(results: Sequence[dict[str, Any]]) -> Figure:
    """Total time against link speed (both log scales), a line per config; a hollow marker where the
    run misses the downtime limit, an × at the top where it never converges."""
    configs = list(dict.fromkeys(_label(r) for r in results))
    styles = styles_for(configs)
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")  # the Agg canvas, never pyplot (as plots.py)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = max((r["simulation"]["total-time"] / 1000 for r in results), default=1.0)
    for cfg in configs:
        runs = sorted((r for r in results if _label(r) == cfg), key=lambda r: r["simulation"]["link"]["link-bytes-per-s"])
        st = styles[cfg]
        xs = [r["simulation"]["link"]["link-bytes-per-s"] * 8 / 1e9 for r in runs]
        ys = [r["simulation"]["total-time"] / 1000 if r["simulation"]["converged"] else None for r in runs]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax.plot(*zip(*pts), color=st.color, linestyle=st.linestyle, marker=st.marker, label=cfg)
        for r, x, y in zip(runs, xs, ys):
            if y is None:
                ax.plot([x], [top * 1.5], marker="x", color=st.color, linestyle="none")
            elif not r["simulation"]["downtime-ok"]:
                ax.plot([x], [y], marker="o", markersize=11, markerfacecolor="none", color=st.color, linestyle="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("link speed (Gbit/s)")
    ax.set_ylabel("total migration time (s)")
    ax.set_title("simulated precopy: time to migrate by link speed\n"
                 "(ring: downtime over the limit; × at the top: does not converge)", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return fig


def write_transfer_plot(results: Sequence[dict[str, Any]], outdir: str | os.PathLike[str]) -> list[Path]:
    """``transfer-sheet.png`` and ``.svg`` in ``outdir`` (which must exist), written atomically."""
    fig = transfer_figure(results)
    out = []
    for fmt in ("png", "svg"):
        p = Path(outdir) / f"transfer-sheet.{fmt}"
        atomic_write_bytes(p, render(fig, fmt))
        out.append(p)
    return out
