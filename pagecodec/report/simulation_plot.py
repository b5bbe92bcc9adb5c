"""The transfer-sheet plot of ``pagecodec simulate`` (``--plots``): total time against link speed.

Apart from :mod:`.simulation`'s tables so that a run without ``--plots`` does not import matplotlib
(0.4 s of a simulate's start-up). A line per config, the runs that miss the downtime limit or never
converge marked, so the crossings (where a codec stops paying) are visible.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..atomic import atomic_write_bytes
from .plots import render, styles_for
from .simulation import config_label

__all__ = ["transfer_figure", "write_transfer_plot"]


def transfer_figure(results: Sequence[dict[str, Any]]) -> Figure:
    """Total time against link speed (both log scales), a line per config; a hollow marker where the
    run misses the downtime limit, an × at the top where it never converges."""
    configs = list(dict.fromkeys(config_label(r) for r in results))
    styles = styles_for(configs)
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")  # the Agg canvas, never pyplot (as plots.py)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = max((r["simulation"]["total-time"] / 1000 for r in results), default=1.0)
    for cfg in configs:
        runs = sorted((r for r in results if config_label(r) == cfg), key=lambda r: r["simulation"]["link"]["link-bytes-per-s"])
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
