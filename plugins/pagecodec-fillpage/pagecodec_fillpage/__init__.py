"""Example pagecodec plugin: uniform pages (one byte value repeated) as ZERO records with that fill byte.

It shows the whole plugin surface: a Codec with its slot, a batched encoder over the segment's pages,
and registration through the ``register_codecs`` hook under the ``pagecodec`` entry-point group.
Decoding needs nothing new: the built-in ZERO decoder already applies any fill byte, as QEMU does.
"""

from __future__ import annotations

import numpy as np

from pagecodec.codecs.base import Codec, CodecContext, Segment, Slot, SlotEncoder, Stage
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.flags import RAM_SAVE_FLAG_ZERO
from pagecodec.wire.records import RecordSet

__version__ = "0.1.0"


def uniform_pages(pages: np.ndarray) -> np.ndarray:
    """True for each row whose bytes are all equal to its first byte."""
    if len(pages) == 0:
        return np.zeros(0, dtype=bool)
    return (pages == pages[:, :1]).all(axis=1)


class FillPageEncoder(SlotEncoder):
    def encode(self, seg: Segment, stage: Stage) -> None:
        uniform = uniform_pages(seg.pages)
        seg.meta["zero"] = uniform & (seg.pages[:, 0] == 0)  # later slots care about true zero pages
        idx = np.flatnonzero(uniform & (seg.claimed_by < 0))
        fill = seg.pages[idx, :1].copy()
        seg.claim(Slot.ZERO, idx, RecordSet("zero", RAM_SAVE_FLAG_ZERO, idx, prefix=fill))


class FillPageCodec(Codec):
    name = "fillpage"
    slots = (Slot.ZERO,)
    qemu_format = True  # QEMU's ZERO record layout; QEMU 7.2 loads it
    description = "uniform pages as ZERO records with their fill byte (example plugin)"

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return FillPageEncoder()


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(FillPageCodec())
