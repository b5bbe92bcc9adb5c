"""XBZRLE in the chain's delta slot: QEMU's save_xbzrle_page with its page cache, as a codec plugin.

Per segment (QEMU order), after the zero slot has claimed the zero pages:

- nothing happens in the bulk stage (6.0+: ``xbzrle_enabled`` is false until the first pass wraps;
  4.1: ``ram_bulk_stage``);
- afterwards every page is an *event* in page order: a zero page refreshes the cache with a zero page
  (``xbzrle_cache_zero_page``); any other page goes through ``save_xbzrle_page``: a miss inserts the page
  (not in the last stage) and leaves it to the raw slot; a hit encodes against the cached copy:
  0 → page skipped (nothing sent), -1 → overflow, left to the raw slot, else an XBZRLE record
  ``XBZRLE | 0x01 | be16 len | bytes``. The cache copy is updated unless in the last stage or unchanged.

The batch is processed by :func:`pagecodec.codecs.page_cache.xbzrle_process`, which gives exactly the
sequential result (events on one cache slot stay in order). Counters follow QEMU 7.2 (or 4.1 with
``qemu-version=4.1``) and are keyed as query-migrate's ``xbzrle-cache`` object.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..errors import DecodeError, PluginError
from ..hookspecs import hookimpl
from ..wire.flags import ENCODING_FLAG_XBZRLE, RAM_SAVE_FLAG_XBZRLE
from ..wire.reader import StreamReader
from ..wire.records import RecordSet
from .base import SLOT_ORDER, Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from .page_cache import Outcome, PageCache, check_xbzrle_cache_size, xbzrle_process
from .xbzrle_kernel import decode_page, warm_up

__all__ = ["XbzrleCodec", "XbzrleEncoder", "XbzrleDecoder"]

_ZERO_SLOT = SLOT_ORDER.index(Slot.ZERO)


class XbzrleEncoder(SlotEncoder):
    """One migration's XBZRLE state: the page cache and the counters."""

    def __init__(self, ctx: CodecContext) -> None:
        size = int(ctx.config.param("xbzrle-cache-size"))
        check_xbzrle_cache_size(size, ctx.page_size)
        self.cache = PageCache(size, ctx.page_size)
        warm_up(ctx.page_size)  # JIT load/compile belongs to set-up, not to the delta slot's CPU
        self.page_size = ctx.page_size
        self.qemu41 = ctx.config.qemu_version == "4.1"
        self.hits = 0
        self.cache_miss = 0
        self.overflow = 0
        self.active_sent = 0  # pages sent while xbzrle was active: QEMU's target_page_count, the miss-rate denominator

    def encode(self, seg: Segment, stage: Stage) -> None:
        if stage.bulk_stage:
            return
        by_zero = seg.claimed_by == _ZERO_SLOT
        zero = seg.meta.get("zero")
        if by_zero.any() and (zero is None or np.any(by_zero & ~zero)):
            raise PluginError(
                "xbzrle: the zero slot claimed pages that are not all-zero; QEMU's cache refresh "
                "(xbzrle_cache_zero_page) stores a zero page, so this zero-slot codec cannot be combined with xbzrle"
            )
        pending = seg.claimed_by < 0
        ev = np.flatnonzero(by_zero | pending)
        if len(ev) == 0:
            return
        pages = seg.pages if len(ev) == len(seg) else seg.pages[ev]
        res = xbzrle_process(self.cache, seg.addrs[ev], pages, by_zero[ev], stage.dirty_sync_count, stage.last_stage)
        out = res.outcome
        skip = ev[out == Outcome.SKIP]
        enc_ev = np.flatnonzero(out == Outcome.ENCODED)
        seg.claim(Slot.DELTA, skip)
        self.active_sent += int(len(ev) - len(skip))  # skipped pages send nothing and count no page
        if len(enc_ev):
            lens = res.lengths[enc_ev].astype(np.int64)
            prefix = np.empty((len(enc_ev), 3), np.uint8)
            prefix[:, 0] = ENCODING_FLAG_XBZRLE
            prefix[:, 1] = lens >> 8
            prefix[:, 2] = lens & 0xFF
            rs = RecordSet("xbzrle", RAM_SAVE_FLAG_XBZRLE, ev[enc_ev], prefix=prefix, data=res.data,
                           starts=res.starts[enc_ev], lengths=lens)
            seg.claim(Slot.DELTA, ev[enc_ev], rs)
        c = res.counters
        self.cache_miss += c.cache_miss
        self.overflow += c.overflow
        self.hits += c.pages

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """query-migrate's ``xbzrle-cache``, derived from what went on the wire.

        7.2 (since 5.1): ``pages`` counts every hit (skips and overflows too); ``bytes`` is each record's
        size less the 8-byte header (so a header that names its block counts the idstr), plus a page per
        overflow. 4.1: ``pages`` counts records sent and ``bytes`` their full size; overflows add nothing.
        Rates are over the whole migration (QEMU's are per sync period).
        """
        rec_bytes = int(wire_bytes.get("xbzrle", 0))
        n_rec = int(wire_records.get("xbzrle", 0))
        if self.qemu41:
            pages, nbytes = n_rec, rec_bytes
            rate = pages * self.page_size / nbytes if nbytes else 0.0
        else:
            pages, nbytes = self.hits, rec_bytes - 8 * n_rec + self.overflow * self.page_size
            rate = pages * self.page_size / nbytes if nbytes and pages else 0.0
        return {
            "xbzrle-cache": {
                "cache-size": self.cache.size_bytes,
                "bytes": nbytes,
                "pages": pages,
                "cache-miss": self.cache_miss,
                "cache-miss-rate": self.cache_miss / self.active_sent if self.active_sent else 0.0,
                "encoding-rate": rate,
                "overflow": self.overflow,
            }
        }


class XbzrleDecoder(RecordDecoder):
    """load_xbzrle: encoding byte 0x01, be16 len ≤ page size, then the record patched onto the page.

    Header faults raise :class:`DecodeError` at the faulty byte; the payload is validated before the
    page is written (:func:`~pagecodec.codecs.xbzrle_kernel.decode_page`). ``data_bytes`` counts the
    encoded bytes of the records loaded (the importer reports it)."""

    flag = RAM_SAVE_FLAG_XBZRLE
    data_bytes: int = 0  # per instance once a record is loaded

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        at = r.pos
        r.need(3, "XBZRLE record header")
        enc, hi, lo = r.view_np()[at : at + 3].tolist()
        n = hi << 8 | lo
        if enc != ENCODING_FLAG_XBZRLE:
            raise DecodeError(f"XBZRLE record with encoding flag {enc:#04x}, expected {ENCODING_FLAG_XBZRLE:#04x}",
                              r.base + at, r.source)
        if n > page.shape[0]:
            raise DecodeError(f"XBZRLE record of {n} bytes exceeds the page size {page.shape[0]} (more than a page "
                              f"cannot be a delta of one)", r.base + at + 1, r.source)
        r.pos = at + 3
        data = r.get_array(n, "XBZRLE data")
        decode_page(data, page, source=r.source, base_offset=r.base + r.pos - n)
        self.data_bytes += n


class XbzrleCodec(Codec):
    name = "xbzrle"
    slots = (Slot.DELTA,)
    qemu_format = True
    description = "XBZRLE delta against QEMU's page cache (save_xbzrle_page)"
    version = __version__
    parameters = ("xbzrle-cache-size",)

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return XbzrleEncoder(ctx)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [XbzrleDecoder()]


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(XbzrleCodec())
