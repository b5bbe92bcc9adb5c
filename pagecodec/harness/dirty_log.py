"""A timed dirty log read as QEMU's dirty bitmap would see it: the pages written since the last sync.

A dirty log (trace v2: round 0 the RAM image, rounds 1… time slices) says which pages the guest wrote
in each interval and their contents at its end. A migration pass composed from it is the union of the
slices that ended since the previous sync, each page once with its latest contents, in QEMU's order
(blocks in migration order, offsets ascending): what ``migration_bitmap_sync`` would hand the next pass.

Resolution: the log says which pages a slice wrote, not when inside the slice. A window that ends
inside a slice takes the share of the slice's pages that its share of the slice's time stands for
(constant rate within a slice), in address order: exact for a guest that sweeps its memory, an
assumption for others; the rest of the slice's pages fall into the next window. A page always carries
the contents of its slice's end (the only contents the log has). When the simulated clock
runs past the end of the log, the log is replayed from its first slice again (``repeat``: the workload
is taken as periodic) or the log is reported exhausted (``stop``).

Memory: the pending pages are held once each (a page written in many slices keeps one copy), so it is
bounded by the working set, not by the window's length.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..errors import TraceError
from ..trace.format import PageBatch, TraceReader
from .precopy import LogExhausted

__all__ = ["DirtyLog", "BATCH_PAGES"]

#: Pages per batch handed to the sender (the trace reader's row-group size).
BATCH_PAGES = 4096


class DirtyLog:
    """Pending dirty pages of a timed log as the simulated clock advances (:meth:`take`).

    ``repeat``: after the last slice, play the slices again from the first, shifted by the log's
    duration (the guest is assumed to keep doing what the log recorded)."""

    def __init__(self, reader: TraceReader, *, repeat: bool = True) -> None:
        timing = reader.timing
        if timing is None or not timing.is_log:
            what = "an untimed trace (v1)" if timing is None else "a trace of migration passes"
            raise TraceError(f"{reader.path}: {what}: simulate needs a timed dirty log (trace v2 with an image and "
                             f"time slices: capture with --interval, or trace synth --interval)")
        if reader.num_rounds < 2:
            raise TraceError(f"{reader.path}: a dirty log with no time slice: nothing to simulate")
        self.reader = reader
        self.repeat = repeat
        self.meta = reader.meta
        self.page_size = reader.meta.page_size
        t0 = timing.time_s[0]
        #: slice k ends at ends[k] seconds after the image (round 0 at 0)
        self.ends = [t - t0 for t in timing.time_s]
        self.period = self.ends[-1]
        self.cycle = 0  # how many times the log has been replayed from its first slice
        self._slices: Iterator[tuple[int, Iterator[PageBatch]]] | None = None
        self._next_round = 1  # the next slice to read
        self.clock = 0.0  # how far the guest's writes have been taken in
        #: the slice in progress: (pages' global indices, contents, start s, end s), and how many taken
        self._cur: tuple[np.ndarray, np.ndarray, float, float] | None = None
        self._cur_taken = 0
        total = self.meta.total_pages
        self._row = np.full(total, -1, dtype=np.int64)  # global page -> row in _buf, or -1
        self._pending = 0
        self._idx = np.empty(0, dtype=np.int64)  # global page of each row
        self._buf = np.empty((0, self.page_size), dtype=np.uint8)

    # -- the image ---------------------------------------------------------------------------------
    def image(self) -> Iterator[PageBatch]:
        """Round 0: all of RAM at the log's start, as the first (bulk) pass sends it, streamed."""
        for r, batches in self.reader.rounds(max_pages=BATCH_PAGES):
            if r != 0:
                break
            yield from batches
            break

    # -- the slices --------------------------------------------------------------------------------
    def _slice_end(self, k: int) -> float:
        """When round ``k`` ends in the current replay of the log (round 0, the image, at 0)."""
        return self.ends[k] + self.cycle * self.period

    def advance(self, until_s: float) -> None:
        """Take in what the guest wrote up to ``until_s`` (seconds since the image): every slice that
        ended by then, and of the slice in progress the share of its pages that its elapsed share of
        time stands for, in the slice's row order (address order: exact for a guest sweeping its
        memory; for others the log cannot say which pages came first). A page keeps the contents of its
        slice's end: the only contents the log has."""
        while True:
            if self._cur is None:
                if self._next_round >= self.reader.num_rounds:
                    if not self.repeat:
                        if until_s > self.period:
                            raise LogExhausted(f"the migration outlasts the log ({self.period:.3f} s) and --log-end is stop")
                        return
                    self.cycle += 1
                    self._next_round = 1
                    self._slices = None
                if self._slice_end(self._next_round - 1) >= until_s:
                    return  # the next slice has not started
                if self._slices is None:
                    self._slices = self.reader.rounds(max_pages=BATCH_PAGES, start_round=1)
                r, batches = next(self._slices)
                assert r == self._next_round
                parts = list(batches)
                g = np.concatenate([self.meta.block_starts[b.block] + b.offset // self.page_size for b in parts]) \
                    if parts else np.empty(0, np.int64)
                pages = np.concatenate([b.pages for b in parts]) if parts else np.empty((0, self.page_size), np.uint8)
                self._cur = (g, pages, self._slice_end(r - 1), self._slice_end(r))
                self._cur_taken = 0
                self._next_round += 1
            g, pages, start, end = self._cur
            n = len(g)
            if until_s >= end:
                want = n
            else:
                want = int(n * (until_s - start) / (end - start))
            if want > self._cur_taken:
                self._add(g[self._cur_taken : want], pages[self._cur_taken : want])
                self._cur_taken = want
            self.clock = min(until_s, end)
            if until_s < end:
                return
            self._cur = None

    def _add(self, g: np.ndarray, page_data: np.ndarray) -> None:
        """Pages ``g`` (global indices, distinct) of one slice: a page already pending gets its newer
        contents, a new one a new row."""
        rows = self._row[g]
        old = rows >= 0
        if old.any():
            self._buf[rows[old]] = page_data[old]
        new = ~old
        n = int(new.sum())
        if n:
            need = self._pending + n
            if need > len(self._buf):
                cap = max(need, 2 * len(self._buf), 1024)
                buf = np.empty((cap, self.page_size), dtype=np.uint8)
                buf[: self._pending] = self._buf[: self._pending]
                idx = np.empty(cap, dtype=np.int64)
                idx[: self._pending] = self._idx[: self._pending]
                self._buf, self._idx = buf, idx
            lo = self._pending
            self._buf[lo:need] = page_data[new]
            self._idx[lo:need] = g[new]
            self._row[g[new]] = np.arange(lo, need, dtype=np.int64)
            self._pending = need

    @property
    def pending_pages(self) -> int:
        """Pages dirty since the last :meth:`take` (what QEMU's ``migration_dirty_pages`` would be)."""
        return self._pending

    def take(self, round_no: int) -> list[PageBatch]:
        """The pending pages as one pass's batches of round ``round_no``, in QEMU's order with their latest
        contents; the pending set is then empty (a dirty-bitmap sync)."""
        n = self._pending
        if n == 0:
            return []
        g = self._idx[:n]
        order = np.argsort(g, kind="stable")
        g_sorted = g[order]
        pages = self._buf[:n][order]  # one copy, in page order; the buffer is reused
        self._row[g_sorted] = -1
        self._pending = 0
        starts = self.meta.block_starts
        block = (np.searchsorted(starts, g_sorted, side="right") - 1).astype(np.int32)
        offset = (g_sorted - starts[block]) * self.page_size
        out = []
        for lo in range(0, n, BATCH_PAGES):
            hi = min(n, lo + BATCH_PAGES)
            out.append(PageBatch(round=round_no, block=block[lo:hi], offset=offset[lo:hi], pages=pages[lo:hi]))
        return out
