"""Deliberately broken codecs for tests, as a buggy third-party plugin would be: ``raiser`` fills the
raw slot and its encoder raises in round 1; ``decode-raiser`` writes good extension records (the page
as it is) but its decoder raises on the third record it decodes. `bench` must mark each row failed,
naming the plugin (and, for the decoder, the page), and finish the others."""

from __future__ import annotations

import numpy as np

from pagecodec.codecs.base import Codec, RecordDecoder, Slot, SlotEncoder
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records
from pagecodec.wire.flags import RAM_SAVE_FLAG_PAGE
from pagecodec.wire.records import RecordSet


class RaisingRaw(SlotEncoder):
    def encode(self, seg, stage):
        if stage.round == 1:
            raise ZeroDivisionError("the plugin's own bug")
        idx = seg.pending()
        seg.claim(Slot.RAW, idx, RecordSet("page", RAM_SAVE_FLAG_PAGE, idx, pages=seg.pages[idx]))


class RaisingRawCodec(Codec):
    name = "raiser"
    slots = (Slot.RAW,)
    qemu_format = True

    def encoder(self, slot, ctx):
        return RaisingRaw()


class WholePages(SlotEncoder):
    def __init__(self, cid):
        self.cid = cid

    def encode(self, seg, stage):
        idx = seg.pending()
        k = len(idx)
        ps = seg.pages.shape[1]
        seg.claim(Slot.RAW, idx, extension_records("decode-raiser", self.cid, idx, seg.pages[idx].reshape(-1),
                                                   np.arange(k, dtype=np.int64) * ps, np.full(k, ps, np.int64)))


class RaisingDecoder(RecordDecoder):
    flag = RAM_SAVE_FLAG_EXTENSION

    def __init__(self):
        self.seen = 0

    def load(self, r, page):
        self.seen += 1
        if self.seen == 3:
            raise IndexError("the decoder's own bug")
        page[:] = np.frombuffer(r.get_bytes(r.remaining, "page"), np.uint8)


class RaisingDecoderCodec(Codec):
    name = "decode-raiser"
    slots = (Slot.RAW,)
    qemu_format = False

    def encoder(self, slot, ctx):
        return WholePages(self.wire_id)

    def decoders(self, ctx):
        return [RaisingDecoder()]


@hookimpl
def register_codecs(register):
    register(RaisingRawCodec())
    register(RaisingDecoderCodec())
