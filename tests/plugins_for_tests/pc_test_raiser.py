"""A deliberately broken codec for tests: fills the raw slot and raises in round 1, as a buggy
third-party plugin would; `bench` must mark its row failed (naming the plugin) and finish the others."""

from __future__ import annotations

from pagecodec.codecs.base import Codec, Slot, SlotEncoder
from pagecodec.hookspecs import hookimpl
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


@hookimpl
def register_codecs(register):
    register(RaisingRawCodec())
