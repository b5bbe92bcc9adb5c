"""Example pagecodec plugin: every page the raw slot gets, compressed on its own with Brotli.

The codec fills the ``raw`` slot (the last one: it gets every page no other slot took) and writes
each page as one Brotli stream in a pagecodec *extension record*; a page Brotli cannot make smaller
goes as QEMU's own PAGE record instead, so no record is ever larger than a page. Its decoder reads the
extension records back, bounded: it asks Brotli for at most one page and refuses a record that gives
anything else, before it writes the page.
"""

from __future__ import annotations

import brotli
import numpy as np

from pagecodec.codecs.base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from pagecodec.errors import DecodeError
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records
from pagecodec.wire.flags import RAM_SAVE_FLAG_PAGE
from pagecodec.wire.records import RecordSet

__version__ = "0.1.0"

#: Brotli's fastest setting and a 64 KiB window: a 4 KiB page needs no more.
QUALITY, LGWIN = 1, 16


class BrotliPageEncoder(SlotEncoder):
    """Compresses each pending page; one migration's encoder (it keeps no state between pages)."""

    def __init__(self, wire_id: int) -> None:
        self.wire_id = wire_id

    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        if not len(idx):
            return
        page_size = seg.pages.shape[1]
        outs = [brotli.compress(seg.pages[i].tobytes(), quality=QUALITY, lgwin=LGWIN) for i in idx.tolist()]
        lengths = np.array([len(o) for o in outs], np.int64)
        small = lengths < page_size  # the others go whole, as QEMU's PAGE records
        packed = idx[small]
        data = np.frombuffer(b"".join(o for o, s in zip(outs, small) if s), np.uint8)
        sizes = lengths[small]
        seg.claim(Slot.RAW, packed, extension_records("brotli", self.wire_id, packed, data,
                                                      np.cumsum(sizes) - sizes, sizes))
        whole = idx[~small]
        seg.claim(Slot.RAW, whole, RecordSet("page", RAM_SAVE_FLAG_PAGE, whole, pages=seg.pages, rows=whole))


class BrotliPageDecoder(RecordDecoder):
    """Applies one extension record: exactly one Brotli stream that gives exactly one page."""

    flag = RAM_SAVE_FLAG_EXTENSION

    def load(self, r, page: np.ndarray) -> None:  # type: ignore[no-untyped-def]
        at = r.base + r.pos
        data = r.get_bytes(r.remaining, "brotli stream")
        size = page.shape[0]
        d = brotli.Decompressor()
        try:
            out = d.process(data, output_buffer_limit=size)
            if len(out) == size and not d.is_finished():
                out += d.process(b"", output_buffer_limit=1)  # one byte more would be too many
        except brotli.error as e:
            raise DecodeError(f"brotli stream does not decode: {e}", at, r.source) from None
        if len(out) != size or not d.is_finished():
            raise DecodeError(f"brotli stream gives {len(out)}{'' if d.is_finished() else '+'} bytes, "
                              f"not one page of {size}", at, r.source)
        page[:] = np.frombuffer(out, np.uint8)


class BrotliPageCodec(Codec):
    name = "brotli"
    slots = (Slot.RAW,)
    qemu_format = False  # extension records: QEMU cannot load the stream
    description = f"each page one Brotli stream (quality {QUALITY}), in pagecodec extension records (example plugin)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return BrotliPageEncoder(self.wire_id)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [BrotliPageDecoder()]


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(BrotliPageCodec())


@hookimpl
def register_presets(register) -> None:  # type: ignore[no-untyped-def]
    register("brotli", "raw-codec=brotli", "every non-zero page as one Brotli stream (example plugin)")
    register("xbzrle+brotli", "xbzrle,raw-codec=brotli", "XBZRLE after the bulk stage, Brotli for the rest (example plugin)")
