"""Deliberately broken codecs for tests. ``badrecord`` fills the raw slot with extension records whose
payload its own decoder rejects (as a corrupted stream would be rejected), so `pagecodec bench`, which
decodes every stream, must fail naming the offset, and `bench --no-decode` must not notice.
``overrun`` hands the chain malformed output in round 1 (a payload slice that runs past its buffer):
the sender must refuse it before writing a byte, naming the plugin and the page, decoding or not."""

from __future__ import annotations

import numpy as np

from pagecodec.codecs.base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from pagecodec.errors import DecodeError
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records


class BadRecordEncoder(SlotEncoder):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        if not len(idx):
            return
        lengths = np.full(len(idx), 2, np.int64)
        data = np.full(2 * len(idx), 0xEE, np.uint8)
        seg.claim(Slot.RAW, idx, extension_records("badrecord", self.cid, idx, data, np.cumsum(lengths) - lengths, lengths))


class BadRecordDecoder(RecordDecoder):
    flag = RAM_SAVE_FLAG_EXTENSION

    def load(self, r, page: np.ndarray) -> None:
        raise DecodeError("badrecord payload rejected", r.base + r.pos, r.source)


class BadRecordCodec(Codec):
    name = "badrecord"
    slots = (Slot.RAW,)
    qemu_format = False
    description = "extension records its decoder rejects (test plugin)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return BadRecordEncoder(self.wire_id)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [BadRecordDecoder()]


class OverrunEncoder(SlotEncoder):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        k = len(idx)
        if not k:
            return
        ps = seg.pages.shape[1]
        data = np.ascontiguousarray(seg.pages[idx]).reshape(-1)
        lengths = np.full(k, ps, np.int64)
        if stage.round == 1:
            lengths[-1] += 16  # the last page's payload claims 16 bytes past the buffer
        seg.claim(Slot.RAW, idx, extension_records("overrun", self.cid, idx, data, np.arange(k) * ps, lengths))


class WholePageDecoder(RecordDecoder):
    flag = RAM_SAVE_FLAG_EXTENSION

    def load(self, r, page: np.ndarray) -> None:
        if r.remaining != page.shape[0]:
            raise DecodeError(f"{r.remaining} payload bytes, not a page", r.base + r.pos, r.source)
        page[:] = np.frombuffer(r.get_bytes(r.remaining, "page"), np.uint8)


class OverrunCodec(Codec):
    name = "overrun"
    slots = (Slot.RAW,)
    qemu_format = False
    description = "malformed record sets in round 1 (test plugin)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return OverrunEncoder(self.wire_id)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [WholePageDecoder()]


@hookimpl
def register_codecs(register):
    register(BadRecordCodec())
    register(OverrunCodec())
