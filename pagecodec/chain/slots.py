"""The stages of QEMU's ``ram_save_target_page``, in QEMU's order: the slots codecs fill.

A chain concept that the configuration names (``<slot>-codec=NAME``) and that codecs declare
(``Codec.slots``); it lives here, importing nothing, so that the configuration, the codec interface
(:mod:`pagecodec.codecs.base`) and the sender all depend on it and none on another in a circle.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Slot", "SLOT_ORDER"]


class Slot(str, Enum):
    """The stages of ram_save_target_page, named after what fills them."""

    CONTROL = "control"  # control_save_page (RDMA hook)
    COMPRESS = "compress"  # save_compress_page (compress threads)
    ZERO = "zero"  # save_zero_page
    MULTIFD = "multifd"  # ram_save_multifd_page
    DELTA = "delta"  # save_xbzrle_page inside ram_save_page
    RAW = "raw"  # save_normal_page


#: QEMU's order (migration/ram.c, ram_save_target_page).
SLOT_ORDER: tuple[Slot, ...] = (Slot.CONTROL, Slot.COMPRESS, Slot.ZERO, Slot.MULTIFD, Slot.DELTA, Slot.RAW)
