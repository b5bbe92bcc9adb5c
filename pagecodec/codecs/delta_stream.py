"""Streaming delta codecs for the delta slot (pagecodec extensions): xor-zstd and xbzrle-zstd.

Both send every page left to them through one zstd stream per migration, in run records
(:mod:`pagecodec.codecs.delta_runs`), and both act from the bulk stage on, so their cache of the
destination's pages is full when the iterations begin (XBZRLE only starts filling its cache then):

* **xor-zstd** (pagecodec's own): a page whose destination copy is cached is sent as the XOR of the
  new page and that copy — mostly zero bytes when a guest rewrote a few words, which zstd turns
  into a few bytes, and whose non-zero bytes keep their positions, so the stream's window finds the
  same patterns across neighbouring pages; an unchanged page sends nothing; any other page goes
  whole into the stream. The cache is :class:`~pagecodec.codecs.delta_cache.DestinationCache`.
* **xbzrle-zstd**: QEMU's XBZRLE (the same page cache rules and encoder, ``xbzrle_process``)
  followed by zstd as an entropy stage: XBZRLE's records, and the pages it leaves (misses,
  overflows), go through the stream. XBZRLE's own rules decide what is a hit; its cache learns the
  bulk stage's pages too.

Their records are not QEMU's (QEMU refuses flag 0x400): results mark them as extensions.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np

from ..hookspecs import hookimpl
from .base import SLOT_ORDER, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from .delta_cache import DeltaCodec, DestinationCache
from .delta_kernel import MODE_SKIP, xor_or_whole
from .delta_kernel import warm_up as warm_up_delta
from .delta_runs import MODE_PAGE, MODE_XBZRLE, MODE_XOR, RunDecoder, RunEncoder
from .page_cache import Outcome, PageCache, check_xbzrle_cache_size, xbzrle_process
from .xbzrle_kernel import warm_up
from .zstd_ctx import check_level, check_long, zstd_version

__all__ = ["XorZstdCodec", "XbzrleZstdCodec"]

_ZERO_SLOT = SLOT_ORDER.index(Slot.ZERO)
#: xor-zstd sends a page whole when more than this fraction of its bytes changed.
XOR_MAX_CHANGED = 0.25


class XorZstdEncoder(SlotEncoder):
    """One migration's xor-zstd: the destination cache and the zstd stream."""

    def __init__(self, ctx: CodecContext, cid: int, name: str) -> None:
        cfg = ctx.config
        self.level = check_level(int(cfg.param("pc-zstd-level")))
        self.cache = DestinationCache(int(cfg.param("xbzrle-cache-size")), ctx.page_size)
        self.long = check_long(int(cfg.param("pc-zstd-long")))
        self.runs = RunEncoder(name, cid, self.level, ctx.page_size, self.long)
        self.page_size = ctx.page_size
        self.max_changed = int(ctx.page_size * XOR_MAX_CHANGED)
        warm_up_delta(ctx.page_size)
        self.xor_pages = 0
        self.whole_pages = 0
        self.unchanged = 0

    def encode(self, seg: Segment, stage: Stage) -> None:
        pend = seg.claimed_by < 0
        pos = np.flatnonzero(pend)
        now, store = stage.dirty_sync_count, not stage.last_stage
        addrs, zero = seg.addrs, seg.meta.get("zero")
        fast = self.cache.lookup(addrs, pend, now)
        if fast is not None:  # no slot twice: compare with the cache in place, then store
            hit, slots = fast
            data, modes = xor_or_whole(seg.pages, pos, self.cache.cache.data, slots[pos], hit[pos], self.max_changed)
            if store:
                self.cache.store(addrs, slots, seg.pages, now, zero)
        else:  # slots collide: the cached copies as each page saw them, in page order
            look = self.cache.lookup_and_store(addrs, seg.pages, pend, now, store, zero)
            data, modes = xor_or_whole(seg.pages, pos, look.ref, pos, look.hit[pos], self.max_changed)
        if not len(pos):
            return
        rows = np.arange(len(pos))  # each page's row in ``data``
        same = modes == MODE_SKIP
        if same.any():
            seg.claim(Slot.DELTA, pos[same])
            self.unchanged += int(same.sum())
            rows = np.flatnonzero(~same)
            pos, modes = pos[rows], modes[rows]
        if not len(pos):
            return
        is_xor = modes == MODE_XOR
        xor = int(np.count_nonzero(is_xor))
        self.xor_pages += xor
        self.whole_pages += len(pos) - xor
        # each page's bytes where they are: its XOR in ``data``, a whole page in the segment
        ps = self.page_size
        pages = seg.pages if seg.pages.flags.c_contiguous else np.ascontiguousarray(seg.pages)
        ptrs = np.where(is_xor, data.ctypes.data + rows * ps, pages.ctypes.data + pos * ps)
        rs = self.runs.records_at(pos, modes, ptrs, np.full(len(pos), ps, np.int64))
        seg.claim(Slot.DELTA, pos, rs)

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        return {"delta": {"codec": "xor-zstd", "zstd": zstd_version(), "pc-zstd-level": self.level, "pc-zstd-long": self.long,
                          "xor-pages": self.xor_pages, "whole-pages": self.whole_pages, "unchanged": self.unchanged,
                          "runs": self.runs.runs, **self.cache.counters()}}


class XbzrleZstdEncoder(SlotEncoder):
    """One migration's xbzrle-zstd: QEMU's page cache and XBZRLE encoder, then the zstd stream."""

    def __init__(self, ctx: CodecContext, cid: int, name: str) -> None:
        cfg = ctx.config
        self.level = check_level(int(cfg.param("pc-zstd-level")))
        size = int(cfg.param("xbzrle-cache-size"))
        check_xbzrle_cache_size(size, ctx.page_size)
        self.cache = PageCache(size, ctx.page_size)
        warm_up(ctx.page_size)
        self.long = check_long(int(cfg.param("pc-zstd-long")))
        self.runs = RunEncoder(name, cid, self.level, ctx.page_size, self.long)
        self.page_size = ctx.page_size
        self.encoded = 0
        self.whole_pages = 0
        self.unchanged = 0
        self.cache_miss = 0
        self.overflow = 0

    def encode(self, seg: Segment, stage: Stage) -> None:
        claimed = seg.claimed_by
        by_zero = claimed == _ZERO_SLOT
        pending = claimed < 0
        ev = np.flatnonzero(by_zero | pending)
        other = np.flatnonzero(~(by_zero | pending))
        if len(other) and not stage.last_stage:
            # pages an earlier slot sent whole (its content is the destination's): keep the cache true
            self.cache.insert_batch(seg.addrs[other], seg.pages[other], stage.dirty_sync_count)
        if not len(ev):
            return
        res = xbzrle_process(self.cache, seg.addrs[ev], seg.pages if len(ev) == len(seg) else seg.pages[ev],
                             by_zero[ev], stage.dirty_sync_count, stage.last_stage)
        out = res.outcome
        skip = ev[out == Outcome.SKIP]
        seg.claim(Slot.DELTA, skip)
        send_ev = np.flatnonzero((out == Outcome.ENCODED) | (out == Outcome.MISS) | (out == Outcome.OVERFLOW))
        self.unchanged += len(skip)
        self.cache_miss += res.counters.cache_miss
        self.overflow += res.counters.overflow
        if not len(send_ev):
            return
        enc = out[send_ev] == Outcome.ENCODED
        lengths = np.where(enc, res.lengths[send_ev], self.page_size).astype(np.int64)
        modes = np.where(enc, MODE_XBZRLE, MODE_PAGE).astype(np.uint8)
        # each page's bytes where they are: its XBZRLE record in ``res.data``, a whole page in the segment
        pages = seg.pages if seg.pages.flags.c_contiguous else np.ascontiguousarray(seg.pages)
        data = np.ascontiguousarray(res.data)
        ptrs = np.where(enc, data.ctypes.data + res.starts[send_ev], pages.ctypes.data + ev[send_ev] * self.page_size)
        self.encoded += int(enc.sum())
        self.whole_pages += int(len(send_ev) - enc.sum())
        rs = self.runs.records_at(ev[send_ev], modes, ptrs, lengths)
        seg.claim(Slot.DELTA, ev[send_ev], rs)

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        return {"delta": {"codec": "xbzrle-zstd", "zstd": zstd_version(), "pc-zstd-level": self.level, "pc-zstd-long": self.long,
                          "xbzrle-pages": self.encoded, "whole-pages": self.whole_pages, "unchanged": self.unchanged,
                          "runs": self.runs.runs, "cache-size": self.cache.size_bytes, "cache-miss": self.cache_miss,
                          "overflow": self.overflow}}


class _RunCodec(DeltaCodec):
    """The delta codecs that write one zstd stream in runs of pages (:mod:`.delta_runs`): they read
    the long-window parameter too, and decode with a RunDecoder taking the record modes they write."""

    parameters = ("xbzrle-cache-size", "pc-zstd-level", "pc-zstd-long")
    #: The run record modes this codec writes (whole pages and its delta).
    modes: ClassVar[tuple[int, ...]]

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [RunDecoder(self.name, ctx.page_size, self.modes, int(ctx.config.param("pc-zstd-long")))]


class XorZstdCodec(_RunCodec):
    name = "xor-zstd"
    description = ("pagecodec extension: XOR against the destination's cached copy (or the whole page), "
                   "one zstd stream in runs of 64 pages, from the bulk stage on")
    make = XorZstdEncoder
    modes = (MODE_PAGE, MODE_XOR)


class XbzrleZstdCodec(_RunCodec):
    name = "xbzrle-zstd"
    description = ("pagecodec extension: QEMU's XBZRLE and page cache (filled from the bulk stage on), "
                   "then zstd over records and whole pages in runs of 64")
    make = XbzrleZstdEncoder
    modes = (MODE_PAGE, MODE_XBZRLE)


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(XorZstdCodec())
    register(XbzrleZstdCodec())
