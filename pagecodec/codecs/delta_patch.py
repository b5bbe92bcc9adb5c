"""delta-zstd: zstd *patch-from* in the delta slot (a pagecodec extension).

A page whose destination copy is cached (:class:`~pagecodec.codecs.delta_cache.DestinationCache`,
QEMU's page cache kept equal to the destination from the bulk stage on) is compressed as one zstd
frame with that copy as the frame's prefix (``ZSTD_CCtx_refPrefix``): zstd finds the unchanged bytes
as matches into the old page, also where they moved, which XBZRLE's XOR cannot. Other pages are one
plain frame each; an unchanged page sends nothing. Each record stands alone (no stream state), so a
lost or reordered record harms only its page::

    extension payload    u8 mode (0: plain frame, 1: frame against the destination's page)
                         one zstd frame (no content size, checksum or dictionary id)

The decoder takes the destination's page as the prefix, decodes into a page-sized buffer (zstd
cannot write past it), and writes the page only when exactly one page came out.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ..errors import DecodeError
from ..hookspecs import hookimpl
from ..wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records
from ..wire.reader import StreamReader
from .base import CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from .delta_cache import DeltaCodec, DestinationCache
from .zstd_ctx import Compressor, Decompressor, check_level, zstd_version

__all__ = ["DeltaZstdCodec"]

MODE_PLAIN, MODE_PATCH = 0, 1


class DeltaZstdEncoder(SlotEncoder):
    def __init__(self, ctx: CodecContext, cid: int, name: str) -> None:
        cfg = ctx.config
        self.level = check_level(int(cfg.param("pc-zstd-level")))
        self.cache = DestinationCache(int(cfg.param("xbzrle-cache-size")), ctx.page_size)
        self.z = Compressor(self.level, ctx.page_size)
        self.cid = cid
        self.kind = name
        self.patched = 0
        self.plain = 0
        self.unchanged = 0

    def encode(self, seg: Segment, stage: Stage) -> None:
        pend = seg.claimed_by < 0
        look = self.cache.lookup_and_store(seg.addrs, seg.pages, pend, stage.dirty_sync_count, not stage.last_stage,
                                           seg.meta.get("zero"))
        pos = np.flatnonzero(pend)
        if not len(pos):
            return
        hit = look.hit[pos]
        same = np.zeros(len(pos), bool)
        hp = np.flatnonzero(hit)
        if len(hp):
            same[hp] = (seg.pages[pos[hp]] == look.ref[pos[hp]]).all(axis=1)
        seg.claim(Slot.DELTA, pos[same])
        self.unchanged += int(same.sum())
        keep = np.flatnonzero(~same)
        if not len(keep):
            return
        frames: list[bytes] = []
        z, ref = self.z, look.ref
        for j in keep.tolist():  # one library call per page: each frame has its own prefix
            p = int(pos[j])
            page = np.ascontiguousarray(seg.pages[p])
            frames.append(bytes((MODE_PATCH,)) + z.frame(page, ref[p]).tobytes() if hit[j]
                          else bytes((MODE_PLAIN,)) + z.frame(page).tobytes())
        lengths = np.fromiter(map(len, frames), np.int64, len(frames))
        self.patched += int(hit[keep].sum())
        self.plain += int(len(keep) - hit[keep].sum())
        rs = extension_records(self.kind, self.cid, pos[keep], np.frombuffer(b"".join(frames), np.uint8),
                               np.cumsum(lengths) - lengths, lengths)
        seg.claim(Slot.DELTA, pos[keep], rs)

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        return {"delta": {"codec": "delta-zstd", "zstd": zstd_version(), "pc-zstd-level": self.level,
                          "patched-pages": self.patched, "plain-pages": self.plain, "unchanged": self.unchanged,
                          **self.cache.counters()}}


class DeltaZstdDecoder(RecordDecoder):
    flag = RAM_SAVE_FLAG_EXTENSION

    def __init__(self, page_size: int) -> None:
        self.z = Decompressor()
        self.out = np.empty(page_size, np.uint8)

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        at = r.base + r.pos
        mode = r.get_byte("delta-zstd mode")
        if mode not in (MODE_PLAIN, MODE_PATCH):
            raise DecodeError(f"delta-zstd: mode {mode} (0: plain frame, 1: frame against the page)", at, r.source)
        frame = r.get_array(r.remaining, "zstd frame")
        # the destination's page is the prefix (it is a row of RAM, never the output buffer)
        self.z.frame(frame, self.out, at + 1, r.source, page if mode == MODE_PATCH else None)
        page[:] = self.out


class DeltaZstdCodec(DeltaCodec):
    name = "delta-zstd"
    description = ("pagecodec extension: one zstd frame per page, patch-from the destination's cached copy "
                   "(ZSTD_CCtx_refPrefix), from the bulk stage on")
    make = DeltaZstdEncoder

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [DeltaZstdDecoder(ctx.page_size)]


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(DeltaZstdCodec())
