"""Summary of a trace for ``pagecodec trace info``: what is in it and how compressible it looks.

The zero-page share per round is the first thing to know about a trace (QEMU sends zero pages as 9-byte
records), so it is computed here, vectorized over each streamed batch: pages viewed as uint64 words,
``.any(axis=1)`` — no per-page Python work and no copy of the page bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tabulate import tabulate

from pagecodec.trace.format import TraceReader

__all__ = ["trace_info", "format_info", "zero_page_mask"]


def zero_page_mask(pages: np.ndarray) -> np.ndarray:
    """Boolean (n,) mask of all-zero pages in an (n, page_size) uint8 array."""
    if pages.shape[1] % 8 == 0 and pages.flags.c_contiguous:
        return ~pages.view(np.uint64).any(axis=1)
    return ~pages.any(axis=1)


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
    per_round = []
    for r, n in enumerate(reader.pages_per_round):
        per_round.append(
            {
                "round": r,
                "pages": n,
                "page_bytes": n * ps,
                "zero_pages": int(zeros[r]),
                "zero_fraction": float(zeros[r] / n) if n else 0.0,
            }
        )
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
            "version": 1,
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
        ["source", prov["source"]],
        ["command", prov["command"]],
        ["date", prov["date"]],
    ]
    blocks = tabulate(
        [[b["name"], b["used_length"], _mib(b["used_length"]), b["pages"], b["page_size"]] for b in d["blocks"]],
        headers=["block", "used_length", "size", "pages", "host page"],
        tablefmt="simple",
    )
    rounds = tabulate(
        [
            [r["round"], r["pages"], _mib(r["page_bytes"]), r["zero_pages"], f"{r['zero_fraction']:.1%}"]
            for r in d["per_round"]
        ],
        headers=["round", "pages", "page bytes", "zero pages", "zero"],
        tablefmt="simple",
    )
    return "\n\n".join([tabulate(head, tablefmt="plain"), blocks, rounds])
