"""The conformance kit's trace: pages that catch the usual mistakes, over rounds that exercise state.

A codec is most often wrong on the pages nobody thought of: all zeros, all 0xff, incompressible
random bytes, one byte changed (in the middle, the first byte, the last byte), a page dirtied but
written back unchanged, a page that goes from data to zero and back. The trace puts each of them in
front of the codec, in two blocks, one of them longer than the chain's 512-page segment (so a batch
is cut inside a block and the codec sees the same block in two segments), over five rounds: the bulk
stage, three iterations (one of them empty: a pass with nothing dirty) and the last stage.

The trace is made from a seed, so a failure can be reproduced exactly; :class:`EdgeTrace` keeps the
final image of every block, which a destination must hold after the last round.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter

__all__ = ["EdgeTrace", "edge_pages", "write_edge_trace", "BLOCKS", "SMALL_BLOCKS"]

#: (name, pages): the first block is longer than a segment (512 pages), the second a few pages.
BLOCKS = (("pc.ram", 600), ("pc.rom", 8))
#: The same kinds of page and rounds in fewer pages, for the decoder fuzz (each input loads the stream).
SMALL_BLOCKS = (("pc.ram", 64), ("pc.rom", 8))

_TEXT = (b"The quick brown fox jumps over the lazy dog. migration page 0123456789 "
         b"Lorem ipsum dolor sit amet, consectetur adipiscing elit; sed do eiusmod tempor. ")


def edge_pages(n: int, page_size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """``n`` pages cycling through the edge kinds (zero, 0xff, random, text, a repeated word, half
    zero, sparse bytes, a counter), and each page's kind."""
    kinds = ["zero", "ones", "random", "text", "word", "half", "sparse", "counter"]
    out = np.zeros((n, page_size), np.uint8)
    names = []
    text = np.frombuffer((_TEXT * (page_size // len(_TEXT) + 1))[:page_size], np.uint8)
    for i in range(n):
        kind = kinds[i % len(kinds)]
        names.append(kind)
        p = out[i]
        if kind == "ones":
            p[:] = 0xFF
        elif kind == "random":
            p[:] = rng.integers(0, 256, page_size, dtype=np.uint8)
        elif kind == "text":
            p[:] = np.roll(text, int(rng.integers(0, page_size)))
        elif kind == "word":
            p[:] = np.tile(rng.integers(0, 256, 8, dtype=np.uint8), page_size // 8)
        elif kind == "half":
            p[: page_size // 2] = rng.integers(0, 256, page_size // 2, dtype=np.uint8)
        elif kind == "sparse":
            at = rng.choice(page_size, 16, replace=False)
            p[at] = rng.integers(1, 256, 16, dtype=np.uint8)
        elif kind == "counter":
            p[:] = (np.arange(page_size) + i).astype(np.uint8)
    return out, names


@dataclass
class EdgeTrace:
    """The written trace: its path, metadata and each block's image after the last round."""

    path: Path
    meta: TraceMeta
    final: dict[str, np.ndarray]  # block name -> (pages, page_size)


def _iteration(ram: np.ndarray, rng: np.random.Generator, r: int) -> np.ndarray:
    """Dirty some pages of one block in every way a codec must survive; returns their indexes."""
    n, ps = ram.shape
    idx = np.unique(rng.choice(n, min(n, 48), replace=False))
    for j, i in enumerate(idx.tolist()):
        how = (j + r) % 8
        p = ram[i]
        if how == 0:
            p[ps // 2] ^= 0x5A  # one byte in the middle
        elif how == 1:
            p[0] ^= 0xFF  # the first byte
        elif how == 2:
            p[-1] ^= 0x01  # the last byte
        elif how == 3:
            pass  # dirtied, written back unchanged
        elif how == 4:
            p[:] = 0  # data to zero
        elif how == 5:
            p[:] = rng.integers(0, 256, ps, dtype=np.uint8)  # anything to random
        elif how == 6:
            p[:] = 0xFF if p[0] != 0xFF else 0xFE  # uniform to another uniform
        else:
            at = rng.integers(0, ps - 64)
            p[at : at + 64] = rng.integers(0, 256, 64, dtype=np.uint8)  # a few words rewritten
    return idx


def write_edge_trace(path: str | Path, page_size: int = 4096, seed: int = 0,
                     blocks_pages: tuple[tuple[str, int], ...] = BLOCKS) -> EdgeTrace:
    """Write the kit's trace to ``path`` (see the module docstring); ``blocks_pages``: (name, pages)."""
    rng = np.random.default_rng(seed)
    blocks = [(name, pages * page_size) for name, pages in blocks_pages]
    meta = TraceMeta(page_size, tuple(RAMBlockInfo(n, s, page_size) for n, s in blocks),
                     Provenance("pagecodec.testing", f"write_edge_trace(page_size={page_size}, seed={seed})",
                                "2026-01-01T00:00:00"))
    ram = [edge_pages(pages, page_size, rng)[0] for _, pages in blocks_pages]
    rounds: list[dict[int, np.ndarray]] = [{bi: np.arange(len(r)) for bi, r in enumerate(ram)}]
    snapshots: list[list[np.ndarray]] = [[r.copy() for r in ram]]
    for r in (1, 2, 3, 4):
        dirty: dict[int, np.ndarray] = {}
        if r != 3:  # round 3 is a pass with nothing dirty
            for bi in range(len(ram)) if r != 1 else (0,):
                dirty[bi] = _iteration(ram[bi], rng, r)
        rounds.append(dirty)
        snapshots.append([x.copy() for x in ram])
    with TraceWriter(path, meta) as w:
        for r, dirty in enumerate(rounds):
            if not dirty:  # declared, so the reader knows the pass happened
                w.write(r, 0, np.empty(0, np.int64), np.empty((0, page_size), np.uint8))
            for bi in sorted(dirty):
                idx = dirty[bi]
                w.write(r, bi, (idx * page_size).astype(np.int64), snapshots[r][bi][idx])
    return EdgeTrace(Path(path), meta, {name: ram[bi] for bi, (name, _) in enumerate(blocks_pages)})
