"""Reading a round's pages from ``/proc/PID/mem``: which pages are still mapped, reads by
contiguous run, zero-filled refusals, and the ``diff`` method (compare with the previous read)."""

from __future__ import annotations

import numpy as np

from pagecodec.sources.process.errors import CaptureError
from pagecodec.sources.process.maps import PAGE_SIZE, Block
from pagecodec.sources.process.target import _Proc
from pagecodec.trace.image import changed_page_mask


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the True runs of a boolean array (vectorized)."""
    d = np.diff(np.concatenate(([0], mask.view(np.int8), [0])).astype(np.int8))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _alive(block: Block, starts: np.ndarray, ends: np.ndarray, ps: int) -> np.ndarray:
    """Which pages of ``block`` are still covered by a mapping (sorted ``starts``/``ends``)."""
    n = block.size // ps
    i0 = int(np.searchsorted(ends, block.start, side="right"))
    i1 = int(np.searchsorted(starts, block.end, side="left"))
    if i1 - i0 == 1 and starts[i0] <= block.start and ends[i0] >= block.end:
        return np.ones(n, bool)
    alive = np.zeros(n, bool)
    for i in range(i0, i1):  # one step per overlapping mapping, not per page
        lo = max(int(starts[i]), block.start) - block.start
        hi = min(int(ends[i]), block.end) - block.start
        if hi > lo:
            alive[lo // ps : -(-hi // ps)] = True
    return alive


class _Notes:
    """Per-block counters of pages not read as they should be, turned into report lines at the end."""

    def __init__(self) -> None:
        self.zero_filled: dict[str, list[str]] = {}
        self.unreadable: dict[str, int] = {}
        self.vanished: dict[int, int] = {}

    def lines(self) -> list[str]:
        out = []
        for name, ranges in self.zero_filled.items():
            out.append(f"block {name!r}: round 0 could not read {', '.join(ranges)} (kernel refused: EIO, or "
                       f"unmapped since the smaps read); recorded as zero pages")
        for name, n in self.unreadable.items():
            out.append(f"block {name!r}: {n} page reads refused by the kernel in rounds >= 1; those pages keep "
                       f"their last content")
        if self.vanished:
            per = ", ".join(f"round {r}: {n}" for r, n in sorted(self.vanished.items()))
            out.append(f"pages no longer mapped (not read; the trace keeps their last content): {per}")
        return out


def _read_ranges(proc: _Proc, block: Block, buf: np.ndarray, mask: np.ndarray, ps: int) -> np.ndarray:
    """Read the pages of ``block`` selected by ``mask`` into ``buf`` (one preadv per run); returns the
    mask of pages the kernel refused (zero-filled in ``buf``)."""
    bad = np.zeros(len(mask), bool)
    view = memoryview(buf)
    starts, ends = _runs(mask)
    for s, e in zip(starts.tolist(), ends.tolist()):
        for lo, hi in proc.read(block.start + s * ps, view[s * ps : e * ps]):
            bad[s + lo // ps : s + -(-hi // ps)] = True
    return bad


def _zero_fill_note(block: Block, bad: np.ndarray, notes: _Notes, unreadable: str, ps: int) -> None:
    if not bad.any():
        return
    starts, ends = _runs(bad)
    ranges = [f"{block.start + s * ps:#x}-{block.start + e * ps:#x}" for s, e in zip(starts.tolist(), ends.tolist())]
    if unreadable == "error":
        raise CaptureError(
            f"block {block.name!r} ({block.mapping.describe()}): the kernel refused to read {int(bad.sum())} pages "
            f"at {', '.join(ranges[:4])}{' …' if len(ranges) > 4 else ''} (EIO, or unmapped since the smaps read)"
        )
    notes.zero_filled.setdefault(block.name, []).extend(ranges)


def _read_diff(proc: _Proc, r: int, blocks: list[Block], alive: list[np.ndarray], image: list[np.ndarray],
               scratch: list[np.ndarray], notes: _Notes, unreadable: str) -> list[np.ndarray]:
    ps = PAGE_SIZE
    out = []
    for bi, b in enumerate(blocks):
        a = alive[bi]
        if r == 0:
            bad = _read_ranges(proc, b, image[bi], a, ps)
            _zero_fill_note(b, bad | ~a, notes, unreadable, ps)
            out.append(np.arange(len(a), dtype=np.int64))
            continue
        bad = _read_ranges(proc, b, scratch[bi], a, ps)
        if bad.any():
            notes.unreadable[b.name] = notes.unreadable.get(b.name, 0) + int(bad.sum())
        ok = a & ~bad
        changed = changed_page_mask(image[bi].reshape(len(a), -1), scratch[bi].reshape(len(a), -1)) & ok
        idx = np.flatnonzero(changed)
        if len(idx):
            image[bi].reshape(-1, ps)[idx] = scratch[bi].reshape(-1, ps)[idx]
        out.append(idx)
    return out
