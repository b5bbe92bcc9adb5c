"""The built-in codecs whose records are QEMU's own wire format: what a QEMU destination decodes.

Readers of real QEMU streams (the importer, the multifd main-stream walker) hand this list to the
:class:`~pagecodec.chain.receiver.Receiver`, so they decode with exactly the decoders the codecs
define, checked as QEMU's loader checks them, and without any third-party plugin.
"""

from __future__ import annotations

from .base import Codec
from .compress import CompressThreadsCodec
from .raw import RawPageCodec
from .xbzrle import XbzrleCodec
from .zero import ZeroPageCodec

__all__ = ["qemu_codecs"]


def qemu_codecs() -> list[Codec]:
    """Fresh instances of zero, raw, xbzrle and compress-threads (QEMU 4.1 … 10.x precopy records)."""
    return [ZeroPageCodec(), RawPageCodec(), XbzrleCodec(), CompressThreadsCodec()]
