"""A timed dirty log as QEMU's migration sees RAM: the guest's writes, the dirty bitmap, the page search.

A dirty log (trace v2: round 0 the RAM image, rounds 1… time slices) says which pages the guest wrote
in each interval and their contents at its end. :class:`DirtyLog` replays it against QEMU 7.2's
sender-side state (migration/ram.c):

- the guest's writes since the last sync (the dirty log KVM or TCG keeps): :meth:`advance`;
- ``RAMBlock.bmap``, the migration bitmap: all ones at setup (``ram_list_init_bitmaps``), the writes
  since the last sync OR-ed in by :meth:`sync` (``migration_bitmap_sync``; the pages newly set are
  ``num_dirty_pages_period``), a bit cleared when its page is sent; ``migration_dirty_pages`` is
  :attr:`dirty_pages`;
- the page search (``ram_find_and_save_block``): from the cursor (``last_seen_block``/``last_page``)
  upwards in RAM order, host page by host page (``ram_save_host_page``: the dirty target pages of one
  host page together); at the end of RAM it wraps to the first block (:meth:`wrap`; QEMU's
  ``complete_round``), so pages dirtied behind the cursor wait for the wrap and pages ahead are sent in
  this round;
- a page is sent with the guest's latest contents at the time it is sent (the log's contents of the
  last slice taken in that wrote it; the image's if none did).

Resolution: the log says which pages a slice wrote, not when inside the slice. A clock that stops
inside a slice takes the share of the slice's pages that its share of the slice's time stands for
(constant rate within a slice), in address order: exact for a guest that sweeps its memory, an
assumption for others. When the clock runs past the end of the log, the log is replayed from its first
slice again (``repeat``: the workload is taken as periodic) or :class:`LogExhausted` is raised.

Memory: the contents of every page written since the image are held once (the working set); the
image is streamed in address order, as the first pass over RAM reads it; the bitmaps are one byte per
page.
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
    """The guest's writes, QEMU's migration bitmap and page search over a timed dirty log.

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
        self.page_size = ps = reader.meta.page_size
        t0 = timing.time_s[0]
        #: slice k ends at ends[k] seconds after the image (round 0 at 0)
        self.ends = [t - t0 for t in timing.time_s]
        self.period = self.ends[-1]
        self.cycle = 0  # how many times the log has been replayed from its first slice
        self._slices: Iterator[tuple[int, Iterator[PageBatch]]] | None = None
        self._next_round = 1  # the next slice to read
        self.clock = 0.0  # how far the guest's writes have been taken in (guest seconds)
        self._cur: tuple[np.ndarray, np.ndarray, float, float] | None = None
        self._cur_taken = 0
        total = self.total_pages = self.meta.total_pages
        self.block_starts = np.asarray(self.meta.block_starts, dtype=np.int64)
        # the guest's side: pages written since the last sync, and the latest contents of every page
        # written since the image (a row of _buf per page, -1 for none)
        self.written = np.zeros(total, dtype=bool)
        self._row = np.full(total, -1, dtype=np.int64)
        self._rows = 0
        self._buf = np.empty((0, ps), dtype=np.uint8)
        # the migration's side: RAMBlock.bmap (all ones at setup), the search's cursor and round
        self.bitmap = np.ones(total, dtype=bool)
        self.dirty_pages = total
        self.cursor = 0
        self.round = 0
        self.frozen = False  # postcopy: the guest runs on the destination
        self._order: np.ndarray | None = None  # dirty pages at or after the cursor, ascending
        self._ptr = 0
        #: host page of each target page (global numbering): ram_save_host_page's unit
        self.host_page = _host_pages(self.meta)
        self.host_ratio = max(1, max(b.page_size // ps for b in self.meta.blocks))
        # the image, streamed in address order for the first pass
        self._image: Iterator[PageBatch] | None = None
        self._img_g = np.empty(0, dtype=np.int64)
        self._img_pages = np.empty((0, ps), dtype=np.uint8)

    # -- the guest ---------------------------------------------------------------------------------
    def _slice_end(self, k: int) -> float:
        """When round ``k`` ends in the current replay of the log (round 0, the image, at 0)."""
        return self.ends[k] + self.cycle * self.period

    def advance(self, until_s: float) -> None:
        """Take in what the guest wrote up to ``until_s`` (guest seconds since the image): every slice
        that ended by then, and of the slice in progress the share of its pages that its elapsed share
        of time stands for, in the slice's row order (address order). Raises :class:`LogExhausted`
        past the end of a log that is not repeated."""
        while True:
            if self._cur is None:
                if self._next_round >= self.reader.num_rounds:
                    if not self.repeat:
                        if until_s > self.period + 1e-12:
                            raise LogExhausted(f"{self.reader.path}: the migration outlasts the log "
                                               f"({self.period:.3f} s) and --log-end is stop")
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
                g = np.concatenate([self.block_starts[b.block] + b.offset // self.page_size for b in parts]) \
                    if parts else np.empty(0, np.int64)
                pages = np.concatenate([b.pages for b in parts]) if parts else np.empty((0, self.page_size), np.uint8)
                self._cur = (g, pages, self._slice_end(r - 1), self._slice_end(r))
                self._cur_taken = 0
                self._next_round += 1
            g, pages, start, end = self._cur
            n = len(g)
            want = n if until_s >= end else int(n * (until_s - start) / (end - start))
            if want > self._cur_taken:
                self._write(g[self._cur_taken : want], pages[self._cur_taken : want])
                self._cur_taken = want
            self.clock = min(until_s, end)
            if until_s < end:
                return
            self._cur = None

    def _write(self, g: np.ndarray, page_data: np.ndarray) -> None:
        """The guest wrote pages ``g`` (distinct): they are dirty in the dirty log, their contents new
        (unless :attr:`frozen`: in postcopy the guest writes on the destination, the source's pages
        keep the contents they had when it stopped)."""
        self.written[g] = True
        if self.frozen:
            return
        rows = self._row[g]
        old = rows >= 0
        if old.any():
            self._buf[rows[old]] = page_data[old]
        new = ~old
        n = int(new.sum())
        if n:
            need = self._rows + n
            if need > len(self._buf):
                buf = np.empty((max(need, 2 * len(self._buf), 1024), self.page_size), dtype=np.uint8)
                buf[: self._rows] = self._buf[: self._rows]
                self._buf = buf
            self._buf[self._rows : need] = page_data[new]
            self._row[g[new]] = np.arange(self._rows, need, dtype=np.int64)
            self._rows = need

    # -- QEMU's bitmap -----------------------------------------------------------------------------
    def sync(self) -> int:
        """``migration_bitmap_sync``: the pages written since the last sync become dirty; returns how
        many were not dirty already (``num_dirty_pages_period``'s increment)."""
        new = int(np.count_nonzero(self.written & ~self.bitmap))
        self.bitmap |= self.written
        self.written[:] = False
        self.dirty_pages += new
        self._order = None
        return new

    def _ahead(self) -> np.ndarray:
        if self._order is None:
            self._order = np.flatnonzero(self.bitmap[self.cursor :]) + self.cursor
            self._ptr = 0
        return self._order[self._ptr :]

    def find_next(self, max_host_pages: int, max_pages: int | None = None) -> np.ndarray:
        """The dirty target pages of the next ``max_host_pages`` dirty host pages at or after the
        cursor, ascending (at most ``max_pages`` of them: a host page may be cut), without wrapping;
        their bits are cleared and the cursor moves past the last. Empty: nothing dirty ahead."""
        ahead = self._ahead()
        if not len(ahead) or max_host_pages < 1:
            return ahead[:0]
        look = ahead[: max_host_pages * self.host_ratio]
        hp = self.host_page[look]
        cuts = np.flatnonzero(hp[1:] != hp[:-1]) + 1
        n = int(cuts[max_host_pages - 1]) if len(cuts) >= max_host_pages else len(look)
        if max_pages is not None:
            n = min(n, max_pages)
        out = look[:n]
        self._ptr += n
        self.bitmap[out] = False
        self.dirty_pages -= n
        self.cursor = int(out[-1]) + 1
        return out

    def in_host_page(self) -> bool:
        """Whether the next dirty page ahead belongs to the host page of the last page sent (a host
        page cut short by :meth:`find_next`'s ``max_pages``)."""
        ahead = self._ahead()
        return bool(len(ahead)) and self.cursor > 0 and self.host_page[ahead[0]] == self.host_page[self.cursor - 1]

    def reset_search(self) -> None:
        """The bitmap changed other than by the search (postcopy: requested pages sent, host pages
        made whole): look again from the cursor."""
        self._order = None

    def wrap(self) -> None:
        """The search reached the end of RAM and starts again at the first block (a new round)."""
        self.cursor = 0
        self.round += 1
        self._order = None

    # -- contents ----------------------------------------------------------------------------------
    def batches(self, g: np.ndarray) -> list[PageBatch]:
        """Pages ``g`` (ascending) of the current round with the guest's latest contents, in batches."""
        if not len(g):
            return []
        rows = self._row[g]
        pages = np.empty((len(g), self.page_size), dtype=np.uint8)
        have = rows >= 0
        if have.any():
            pages[have] = self._buf[rows[have]]
        if not have.all():
            pages[~have] = self._from_image(g[~have])
        block = (np.searchsorted(self.block_starts, g, side="right") - 1).astype(np.int32)
        offset = (g - self.block_starts[block]) * self.page_size
        return [PageBatch(round=self.round, block=block[lo : lo + BATCH_PAGES], offset=offset[lo : lo + BATCH_PAGES],
                          pages=pages[lo : lo + BATCH_PAGES]) for lo in range(0, len(g), BATCH_PAGES)]

    def _from_image(self, g: np.ndarray) -> np.ndarray:
        """Image contents of pages ``g`` (ascending, never written since): read forward through round 0
        (only the first pass asks, in address order). A page the image lacks is zero."""
        out = np.zeros((len(g), self.page_size), dtype=np.uint8)
        if self._image is None:
            self._image = self._image_batches()
        done = 0
        while done < len(g):
            if len(self._img_g) and self._img_g[-1] >= g[done]:
                hi = done + int(np.searchsorted(g[done:], self._img_g[-1], side="right"))
                part = g[done:hi]
                pos = np.searchsorted(self._img_g, part)
                ok = (pos < len(self._img_g)) & (self._img_g[np.minimum(pos, len(self._img_g) - 1)] == part)
                out[done:hi][ok] = self._img_pages[pos[ok]]
                done = hi
                continue
            nxt = next(self._image, None)
            if nxt is None:
                break  # the rest is not in the image: zero
            img_g = self.block_starts[nxt.block] + nxt.offset // self.page_size
            if len(img_g) and (np.any(img_g[1:] <= img_g[:-1]) or (len(self._img_g) and img_g[0] <= self._img_g[-1])):
                raise TraceError(f"{self.reader.path}: round 0 (the RAM image) is not in address order near page "
                                 f"{int(img_g[0])} (block {self.meta.blocks[int(nxt.block[0])].name!r}): the first "
                                 f"pass reads it in the order QEMU sends it")
            self._img_g, self._img_pages = img_g, nxt.pages
        return out

    def _image_batches(self) -> Iterator[PageBatch]:
        for r, batches in self.reader.rounds(max_pages=BATCH_PAGES):
            if r != 0:
                break
            yield from batches
            break


def _host_pages(meta) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Global host-page number of every target page: a block's host pages are ``page_size`` (the
    block's backing page size) ÷ the target page size target pages each (1 for ordinary RAM)."""
    ps = meta.page_size
    parts = []
    base = 0
    for b in meta.blocks:
        n = b.used_length // ps
        ratio = max(1, b.page_size // ps)
        parts.append(base + np.arange(n, dtype=np.int64) // ratio)
        base += -(-n // ratio)
    return np.concatenate(parts) if parts else np.empty(0, np.int64)
