"""Plots of replay results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from . import analysis as A

__all__ = ["write_plots"]


def write_plots(results: Sequence[dict[str, Any]], outdir: str | os.PathLike[str], fmt: str = "png") -> list[Path]:
    """Wire bytes per config for each trace, and CPU cost against wire bytes. Returns the files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    results = [r for r in results if A.ok(r)]
    traces = sorted({Path(r["trace"]["path"]).name for r in results})
    configs = list(dict.fromkeys(r["config"]["label"] for r in results))
    files = []

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(traces) * max(1, len(configs)) / 2), 4))
    width = 0.8 / max(1, len(configs))
    for j, c in enumerate(configs):
        ys = []
        for t in traces:
            rr = [r for r in results if r["config"]["label"] == c and Path(r["trace"]["path"]).name == t]
            ys.append(rr[0]["ram"]["transferred"] / max(1, rr[0]["page_bytes"]) if rr else 0)
        ax.bar([i + j * width for i in range(len(traces))], ys, width, label=c)
    ax.set_xticks([i + width * (len(configs) - 1) / 2 for i in range(len(traces))], traces, rotation=15, ha="right")
    ax.set_ylabel("bytes on the wire per byte of dirty pages")
    files.append(_finish(plt, fig, ax, "Wire size by configuration", out / f"wire.{fmt}"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for c in configs:
        rr = [r for r in results if r["config"]["label"] == c]
        xs = [A.cpu(r) for r in rr]
        ys = [r["ram"]["transferred"] / max(1, r["page_bytes"]) for r in rr]
        ax.scatter(xs, ys, label=c)
    ax.set_xlabel("CPU seconds per GiB of dirty pages")
    ax.set_ylabel("wire bytes per page byte")
    files.append(_finish(plt, fig, ax, "Bandwidth against CPU", out / f"cpu-vs-wire.{fmt}"))
    return files


def _finish(plt, fig, ax, title: str, path: Path) -> Path:  # type: ignore[no-untyped-def]
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
