"""Summary of a trace for ``pagecodec trace info``: what is in it and how compressible it looks.

The zero-page share per round is the first thing to know about a trace (QEMU sends zero pages as 9-byte
records), so it is computed here, vectorized over each streamed batch: pages viewed as uint64 words,
``.any(axis=1)`` — no per-page Python work and no copy of the page bytes.

The working set (distinct pages written after round 0) decides whether a migration can converge at all
(a pass can never be smaller than the pages the guest keeps rewriting), and a timed trace's dirty rate
over time decides how fast it does; both come from the index columns alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tabulate import tabulate

from pagecodec.trace.format import TraceReader

__all__ = ["trace_info", "format_info", "zero_page_mask", "working_set_growth"]


def zero_page_mask(pages: np.ndarray) -> np.ndarray:
    """Boolean (n,) mask of all-zero pages in an (n, page_size) uint8 array."""
    if pages.shape[1] % 8 == 0 and pages.flags.c_contiguous:
        return ~pages.view(np.uint64).any(axis=1)
    return ~pages.any(axis=1)


def working_set_growth(reader: TraceReader) -> np.ndarray:
    """Distinct pages written in rounds 1 … k, for every round k (0 for round 0): the working set as it
    grows over the trace. From the index columns only (no page is read)."""
    meta = reader.meta
    g = meta.block_starts[reader.block_column] + reader.offset_column // meta.page_size
    seen = np.zeros(meta.total_pages, dtype=bool)
    out = np.zeros(reader.num_rounds, dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(reader.pages_per_round)))
    total = 0
    for r in range(1, reader.num_rounds):
        part = g[starts[r] : starts[r + 1]]
        total += int((~seen[part]).sum())  # a round holds each page at most once
        seen[part] = True
        out[r] = total
    return out


def trace_info(reader: TraceReader, *, with_sha256: bool = True) -> dict[str, Any]:
    """Everything ``trace info`` shows, as a JSON-ready dict.

    Keys: path, file_bytes, sha256 (unless ``with_sha256`` is false), format, version, page_size,
    ram_bytes, total_pages (pages of RAM), pages (rows in the trace), page_bytes, rounds, blocks
    [{name, used_length, page_size, pages}], provenance, zero_pages, zero_fraction, and per_round
    [{round, pages, page_bytes, zero_pages, zero_fraction}].  Reads every page once.
    """
    meta = reader.meta
    ps = meta.page_size
    zeros = np.zeros(reader.num_rounds, dtype=np.int64)
    for batch in reader.batches():
        zeros[batch.round] += int(zero_page_mask(batch.pages).sum())
    timing = reader.timing
    ws = working_set_growth(reader)
    per_round = []
    for r, n in enumerate(reader.pages_per_round):
        row: dict[str, Any] = {
            "round": r,
            "pages": n,
            "page_bytes": n * ps,
            "zero_pages": int(zeros[r]),
            "zero_fraction": float(zeros[r] / n) if n else 0.0,
            "working_set_pages": int(ws[r]),
        }
        if timing is not None:
            row["time_s"] = timing.time_s[r]
            row["kind"] = timing.kind[r]
            if timing.kind[r] == "slice":
                span = timing.time_s[r] - timing.time_s[r - 1]
                row["dirty_pages_per_s"] = n / span
                row["dirty_bytes_per_s"] = n * ps / span
        per_round.append(row)
    total_zero = int(zeros.sum())
    d: dict[str, Any] = {
        "path": str(reader.path),
        "file_bytes": reader.file_size,
    }
    if with_sha256:
        d["sha256"] = reader.sha256()
    d.update(
        {
            "format": "pagecodec-trace",
            "version": reader.version,
            "timed": timing is not None,
            "kind": None if timing is None else ("dirty-log" if timing.is_log else "passes"),
            "duration_s": None if timing is None else timing.time_s[-1] - timing.time_s[0],
            "working_set_pages": int(ws[-1]),
            "working_set_bytes": int(ws[-1]) * ps,
            "page_size": ps,
            "ram_bytes": meta.ram_bytes,
            "total_pages": meta.total_pages,
            "pages": reader.num_pages,
            "page_bytes": reader.num_pages * ps,
            "rounds": reader.num_rounds,
            "blocks": [
                {"name": b.name, "used_length": b.used_length, "page_size": b.page_size, "pages": meta.block_pages(i)}
                for i, b in enumerate(meta.blocks)
            ],
            "provenance": meta.provenance.to_dict(),
            "zero_pages": total_zero,
            "zero_fraction": float(total_zero / reader.num_pages) if reader.num_pages else 0.0,
            "per_round": per_round,
        }
    )
    if timing is not None and timing.is_log and reader.num_rounds > 1:
        slices = sum(reader.pages_per_round[1:])
        d["dirty_pages_per_s"] = slices / d["duration_s"]
        d["dirty_bytes_per_s"] = slices * ps / d["duration_s"]
    return d


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.2f} MiB"


def format_info(d: dict[str, Any]) -> str:
    """Human-readable text of :func:`trace_info`'s dict: a header, the blocks and the rounds."""
    prov = d["provenance"]
    head = [
        ["file", d["path"]],
        ["size", f"{d['file_bytes']} bytes ({_mib(d['file_bytes'])})"],
    ]
    if "sha256" in d:
        head.append(["sha256", d["sha256"]])
    head += [
        ["format", f"{d['format']} v{d['version']}"],
        ["page size", d["page_size"]],
        ["RAM", f"{d['ram_bytes']} bytes ({_mib(d['ram_bytes'])}), {d['total_pages']} pages"],
        ["rounds", d["rounds"]],
        ["pages", f"{d['pages']} ({_mib(d['page_bytes'])}), {d['zero_fraction']:.1%} zero"],
        ["working set", f"{d['working_set_pages']} pages ({_mib(d['working_set_bytes'])}) written after round 0"],
        *([["timing", f"{d['kind']} over {d['duration_s']:.3f} s"]] if d.get("timed") else []),
        *([["dirty rate", f"{_mib(d['dirty_bytes_per_s'])}/s ({d['dirty_pages_per_s']:.1f} pages/s) on average"]]
          if "dirty_bytes_per_s" in d else []),
        ["source", prov["source"]],
        ["command", prov["command"]],
        ["date", prov["date"]],
    ]
    blocks = tabulate(
        [[b["name"], b["used_length"], _mib(b["used_length"]), b["pages"], b["page_size"]] for b in d["blocks"]],
        headers=["block", "used_length", "size", "pages", "host page"],
        tablefmt="simple",
    )
    timed = bool(d.get("timed"))
    rows = []
    for r in d["per_round"]:
        row = [r["round"]]
        if timed:
            rate, prate = r.get("dirty_bytes_per_s"), r.get("dirty_pages_per_s")
            row += [f"{r['time_s']:.3f}", r["kind"], "" if rate is None else f"{rate / (1 << 20):.2f}",
                    "" if prate is None else f"{prate:.1f}"]
        row += [r["pages"], _mib(r["page_bytes"]), r["zero_pages"], f"{r['zero_fraction']:.1%}",
                _mib(r["working_set_pages"] * d["page_size"])]
        rows.append(row)
    headers = ["round"] + (["time s", "kind", "dirty MiB/s", "dirty pages/s"] if timed else [])
    headers += ["pages", "page bytes", "zero pages", "zero", "working set"]
    # the cells are formatted above (3 decimals of time, 2 of MiB/s): keep them as written, numbers right
    rounds = tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                      colalign=["left" if h == "kind" else "right" for h in headers])
    return "\n\n".join([tabulate(head, tablefmt="plain"), blocks, rounds])
