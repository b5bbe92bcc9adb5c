"""The source's copy of what the destination holds, for pagecodec's delta codecs.

A delta codec encodes a dirty page against the destination's current copy of it; the source keeps
those copies in QEMU's XBZRLE page cache (:class:`~pagecodec.codecs.page_cache.PageCache`: the same
direct-mapped slots, ageing and size parameter ``xbzrle-cache-size``, so a delta codec is compared
with XBZRLE at the same memory). Two rules differ from XBZRLE's, and are why these codecs can act
from the first round after the bulk stage:

* every page the destination receives is offered to the cache, whoever sent it: the bulk stage's
  pages, pages an earlier slot claimed (zero pages, compressed pages) and pages sent whole; XBZRLE
  inserts only on a miss after the bulk stage, so its first iteration after it is all misses;
* in the last stage nothing is stored (as in QEMU: nothing follows);
* a zero page is not stored: its address's copy, if any, is dropped. A later write to that page is
  then a miss and goes whole, which is exactly its XOR with the zero page, so no delta is lost,
  and the cache never spends memory (nor the CPU of faulting memory in) on zero pages, about half
  of the bulk stage of a fresh guest.

A cached copy therefore always equals the destination's page, which is what the delta is applied to.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import numpy as np

from .. import __version__
from ..chain.config import MigrationConfig
from .base import Codec, CodecContext, Slot, SlotEncoder

from .page_cache import PageCache, _round_indexes, check_xbzrle_cache_size

__all__ = ["DestinationCache", "Lookup", "DeltaCodec"]


def _distinct(slots: np.ndarray) -> bool:
    """No slot twice (consecutive pages have ascending slots: checked without sorting)."""
    d = np.diff(slots)
    if (d > 0).all():
        return True
    return len(np.unique(slots)) == len(slots)


@dataclass
class Lookup:
    """Which pages of a segment have the destination's copy in the cache, and that copy."""

    hit: np.ndarray  # bool (n,)
    ref: np.ndarray  # uint8 (n, page_size): the cached copy where hit (undefined elsewhere)


class DestinationCache:
    """QEMU's page cache, kept equal to the destination's pages (see the module docstring)."""

    def __init__(self, size_bytes: int, page_size: int) -> None:
        check_xbzrle_cache_size(size_bytes, page_size)
        self.cache = PageCache(size_bytes, page_size)
        self.page_size = page_size
        self.hits = 0
        self.misses = 0

    def lookup(self, addrs: np.ndarray, want: np.ndarray, now: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The fast path of :meth:`lookup_and_store` when no two of ``addrs`` share a cache slot (always,
        when the cache is as large as RAM): the hit mask over ``want`` and every page's slot, without
        copying the cached pages — read them from ``cache.data[slots]`` before calling :meth:`store`.
        None when slots collide (then use :meth:`lookup_and_store`)."""
        c = self.cache
        slots = c.slots_of(addrs)
        if len(slots) > 1 and not _distinct(slots):
            return None
        hit = (c.addr[slots] == addrs) & want
        c.age[slots[hit]] = now  # cache_is_cached: a hit makes the slot young
        k = int(hit.sum())
        self.hits += k
        self.misses += int(want.sum()) - k
        return hit, slots

    def store(self, addrs: np.ndarray, slots: np.ndarray, pages: np.ndarray, now: int,
              zero: np.ndarray | None = None) -> None:
        """``cache_insert`` of every page (distinct slots, as :meth:`lookup` found them); pages that
        ``zero`` marks drop their address's copy instead."""
        if zero is not None and zero.any():
            self._drop(addrs[zero], slots[zero])
            keep = ~zero
            addrs, slots, pages = addrs[keep], slots[keep], pages[keep]
        self.cache._insert_distinct(slots, addrs, pages, now)

    def _drop(self, addrs: np.ndarray, slots: np.ndarray) -> None:
        c = self.cache
        mine = slots[c.addr[slots] == addrs]
        c.addr[mine] = -1
        c.filled[mine] = False

    def lookup_and_store(self, addrs: np.ndarray, pages: np.ndarray, want: np.ndarray, now: int,
                         store: bool, zero: np.ndarray | None = None) -> Lookup:
        """For the pages at ``want`` (a mask: those a delta could encode), the cached copy as it was
        before this segment; then (``store``) every page of the segment becomes the cached copy of its
        address, as ``cache_insert`` allows. Pages whose cache slots collide are taken in page order
        (rounds of distinct slots), so the result is the sequential one."""
        c = self.cache
        n = len(addrs)
        hit = np.zeros(n, bool)
        ref = np.empty((n, self.page_size), np.uint8)
        slots = c.slots_of(addrs)
        for idx in _round_indexes(slots):
            s, a = slots[idx], addrs[idx]
            h = (c.addr[s] == a) & want[idx]
            if h.any():
                hs = s[h]
                c.age[hs] = now  # cache_is_cached: a hit makes the slot young
                hit[idx[h]] = True
                ref[idx[h]] = c.data[hs]
            if store:  # the slots of one round are distinct: store() applies
                self.store(a, s, pages[idx], now, zero[idx] if zero is not None else None)
        k = int(hit.sum())
        self.hits += k
        self.misses += int(want.sum()) - k
        return Lookup(hit, ref)

    def counters(self) -> dict[str, int | float]:
        looked = self.hits + self.misses
        return {"cache-size": self.cache.size_bytes, "hits": self.hits, "cache-miss": self.misses,
                "cache-miss-rate": self.misses / looked if looked else 0.0}


class DeltaCodec(Codec):
    """What pagecodec's delta codecs have in common as plugins: the delta slot, extension records, and
    an encoder made from the context, the codec's wire id and its name (the records' kind)."""

    slots = (Slot.DELTA,)
    qemu_format = False
    version = __version__
    #: ``make(ctx, wire_id, name)``: the codec's encoder for one migration.
    make: ClassVar[Callable[[CodecContext, int, str], SlotEncoder]]
    #: The cache is sized as QEMU's XBZRLE cache is; the payloads are zstd at pc-zstd-level.
    parameters = ("xbzrle-cache-size", "pc-zstd-level")

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return type(self).make(ctx, self.wire_id, self.name)

    def unavailable(self, config: MigrationConfig) -> str | None:
        """Every delta codec compresses with the system libzstd (:mod:`.zstd_ctx`)."""
        from ..errors import ConfigError
        from .zstd_ctx import zstd_lib

        try:
            zstd_lib()
        except ConfigError as e:
            return str(e)
        return None
