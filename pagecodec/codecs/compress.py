"""QEMU's compress threads (``compress`` capability, QEMU 4.1 … 9.0): COMPRESS_PAGE records.

The record: ``be64 offset|COMPRESS_PAGE [idstr]``, ``be32 len``, then one zlib stream (``deflateReset``
per page at ``compress-level``) that inflates to exactly one page. The load side
(``decompress_data_with_multi_threads``) refuses ``len > compressBound(page size)``.

This module holds the codec's decoder, used by every destination that reads QEMU's streams (the
importer of real captures and ``verify``). The chain's compress slot is not filled by it yet: the
codec declares no slot, so a config with ``compress=on`` is still refused with the slot named.
"""

from __future__ import annotations

import zlib

import numpy as np

from .. import __version__
from ..errors import DecodeError, PluginError
from ..wire.flags import RAM_SAVE_FLAG_COMPRESS_PAGE, compress_bound
from ..wire.reader import StreamReader
from .base import Codec, CodecContext, RecordDecoder, Slot, SlotEncoder

__all__ = ["CompressedPageDecoder", "CompressThreadsCodec"]


class CompressedPageDecoder(RecordDecoder):
    """COMPRESS_PAGE: be32 len ≤ compressBound(page), then one zlib stream that inflates to exactly one
    page. Inflation stops one byte past a page, so a hostile stream cannot make it allocate more."""

    flag = RAM_SAVE_FLAG_COMPRESS_PAGE

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        ps = page.shape[0]
        lat = r.pos
        n = r.get_be32("compressed length")
        bound = compress_bound(ps)
        if n > bound:
            raise DecodeError(f"compressed page of {n} bytes, more than compressBound({ps}) = {bound}", r.base + lat, r.source)
        dat = r.base + r.pos
        d = zlib.decompressobj()
        try:
            out = d.decompress(bytes(r.get_bytes(n, "compressed page")), ps + 1)
        except zlib.error as e:
            raise DecodeError(f"compressed page is not a valid zlib stream: {e}", dat, r.source) from None
        if not d.eof:
            raise DecodeError(f"compressed page: zlib stream incomplete after {len(out)} bytes of output", dat, r.source)
        if len(out) != ps or d.unused_data:
            what = f"{len(out)} bytes of output" if len(out) != ps else f"{len(d.unused_data)} bytes after the zlib stream"
            raise DecodeError(f"compressed page: {what}, expected exactly one page of {ps} bytes", dat, r.source)
        page[:] = np.frombuffer(out, np.uint8)


class CompressThreadsCodec(Codec):
    """COMPRESS_PAGE records, decode side only for now (it fills no chain slot)."""

    name = "compress-threads"
    slots: tuple[Slot, ...] = ()
    qemu_format = True
    description = "zlib-compressed pages (COMPRESS_PAGE), QEMU's compress threads: decoder"
    version = __version__

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        raise PluginError(f"codec {self.name!r} decodes COMPRESS_PAGE records but fills no chain slot")

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [CompressedPageDecoder()]
