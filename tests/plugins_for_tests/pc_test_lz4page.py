"""A test plugin with its own record kind: the raw slot's pages as LZ4 blocks, in pagecodec's extension
record layout (the receiver must dispatch them to this decoder through the same path as any other)."""

from __future__ import annotations

import lz4.block
import numpy as np

from pagecodec.codecs.base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from pagecodec.errors import DecodeError
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records


class Lz4PageEncoder(SlotEncoder):
    def __init__(self, cid: int) -> None:
        self.cid = cid

    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        if not len(idx):
            return
        outs = [lz4.block.compress(seg.pages[i], store_size=False) for i in idx.tolist()]
        lengths = np.array([len(o) for o in outs], np.int64)
        data = np.frombuffer(b"".join(outs), np.uint8)
        seg.claim(Slot.RAW, idx, extension_records("lz4page", self.cid, idx, data, np.cumsum(lengths) - lengths, lengths))


class Lz4PageDecoder(RecordDecoder):
    flag = RAM_SAVE_FLAG_EXTENSION

    def load(self, r, page: np.ndarray) -> None:
        at = r.pos
        data = bytes(r.get_bytes(r.remaining, "lz4 block"))
        try:
            out = lz4.block.decompress(data, uncompressed_size=page.shape[0])
        except lz4.block.LZ4BlockError as e:
            raise DecodeError(f"lz4 block does not decompress: {e}", r.base + at, r.source) from None
        if len(out) != page.shape[0]:
            raise DecodeError(f"lz4 block gives {len(out)} bytes, not a page", r.base + at, r.source)
        page[:] = np.frombuffer(out, np.uint8)


class Lz4PageCodec(Codec):
    name = "lz4page"
    slots = (Slot.RAW,)
    qemu_format = False
    description = "pages as LZ4 blocks in extension records (test plugin)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return Lz4PageEncoder(self.wire_id)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [Lz4PageDecoder()]


@hookimpl
def register_codecs(register):
    register(Lz4PageCodec())
