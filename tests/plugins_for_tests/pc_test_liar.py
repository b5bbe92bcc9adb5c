"""A deliberately broken codec for tests: fills the raw slot but sends one page with a flipped byte,
so the destination's memory differs from the trace and `pagecodec verify` must fail."""

from __future__ import annotations


from pagecodec.codecs.base import Codec, Slot, SlotEncoder
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.flags import RAM_SAVE_FLAG_PAGE
from pagecodec.wire.records import RecordSet


class LyingRaw(SlotEncoder):
    def encode(self, seg, stage):
        idx = seg.pending()
        pages = seg.pages[idx].copy()
        if stage.round == 1 and len(pages):
            pages[0, 100] ^= 0xFF
        seg.claim(Slot.RAW, idx, RecordSet("page", RAM_SAVE_FLAG_PAGE, idx, pages=pages))


class LyingRawCodec(Codec):
    name = "liar"
    slots = (Slot.RAW,)
    qemu_format = False

    def encoder(self, slot, ctx):
        return LyingRaw()


@hookimpl
def register_codecs(register):
    register(LyingRawCodec())
