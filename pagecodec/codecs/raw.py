"""The raw page (QEMU's save_normal_page): what every page the other slots leave becomes."""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..wire.flags import RAM_SAVE_FLAG_PAGE
from ..wire.reader import StreamReader
from ..wire.records import RecordSet
from .base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage

__all__ = ["RawPageEncoder", "RawPageDecoder", "RawPageCodec"]


class RawPageEncoder(SlotEncoder):
    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        # the records point at the segment's pages: assembly copies each page once, into the wire
        seg.claim(Slot.RAW, idx, RecordSet("page", RAM_SAVE_FLAG_PAGE, idx, pages=seg.pages, rows=idx))


class RawPageDecoder(RecordDecoder):
    flag = RAM_SAVE_FLAG_PAGE

    def __init__(self, page_size: int) -> None:
        self.fixed_payload = page_size  # type: ignore[misc]

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        page[:] = r.get_array(page.shape[0], "page")

    def load_batch(self, payloads: np.ndarray, pages: np.ndarray, index: np.ndarray) -> None:
        pages[index] = payloads


class RawPageCodec(Codec):
    name = "raw"
    slots = (Slot.RAW,)
    qemu_format = True
    description = "the page as it is: PAGE records (save_normal_page)"
    version = __version__

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return RawPageEncoder()

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [RawPageDecoder(ctx.page_size)]


from ..hookspecs import hookimpl  # noqa: E402  (plugin registration, after the definitions)


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(RawPageCodec())
