"""Zero-page detection (QEMU's save_zero_page): an all-zero page becomes a 9-byte ZERO record.

QEMU checks each page with ``buffer_is_zero``; here one vectorised reduction over the batch's 64-bit
words answers it for every page at once. The slot also tells later slots which pages were zero
(``seg.meta["zero"]``): XBZRLE's page cache must learn them (``xbzrle_cache_zero_page``).
"""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..wire.flags import RAM_SAVE_FLAG_ZERO
from ..wire.reader import StreamReader
from ..wire.records import RecordSet
from .base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage

__all__ = ["zero_page_mask", "ZeroPageEncoder", "ZeroPageDecoder", "ZeroPageCodec"]

_FILL = np.zeros((1, 1), dtype=np.uint8)


def zero_page_mask(pages: np.ndarray) -> np.ndarray:
    """True for each all-zero row of ``pages`` (n, page_size)."""
    if pages.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if pages.shape[1] % 8 == 0 and pages.flags.c_contiguous:
        words = pages.view(np.uint64)
        return np.bitwise_or.reduce(words, axis=1) == 0  # faster than max/any over the words
    return ~pages.any(axis=1)


class ZeroPageEncoder(SlotEncoder):
    def encode(self, seg: Segment, stage: Stage) -> None:
        zero = zero_page_mask(seg.pages)
        seg.meta["zero"] = zero
        pending = seg.claimed_by < 0
        idx = np.flatnonzero(zero & pending)
        seg.claim(Slot.ZERO, idx, RecordSet("zero", RAM_SAVE_FLAG_ZERO, idx, prefix=_FILL))


class ZeroPageDecoder(RecordDecoder):
    """ram_handle_compressed: fill the page with the record's byte (QEMU skips it if already zero)."""

    flag = RAM_SAVE_FLAG_ZERO
    fixed_payload = 1

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        ch = r.get_byte("zero page fill byte")
        if ch != 0 or page.any():
            page[:] = ch

    def load_batch(self, payloads: np.ndarray, pages: np.ndarray, index: np.ndarray) -> None:
        pages[index] = payloads[:, :1]


class ZeroPageCodec(Codec):
    name = "zero"
    slots = (Slot.ZERO,)
    qemu_format = True
    description = "all-zero pages as ZERO records (save_zero_page)"
    version = __version__

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return ZeroPageEncoder()

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [ZeroPageDecoder()]


from ..hookspecs import hookimpl  # noqa: E402  (plugin registration, after the definitions)


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(ZeroPageCodec())
