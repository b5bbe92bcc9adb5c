"""A deliberately broken codec for tests: fills the raw slot with extension records whose payload its
own decoder rejects (as a corrupted stream would be rejected), so `pagecodec bench`, which decodes
every stream, must fail naming the offset, and `bench --no-decode` must not notice."""

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


@hookimpl
def register_codecs(register):
    register(BadRecordCodec())
