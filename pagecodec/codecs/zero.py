"""Zero-page detection (QEMU's save_zero_page): an all-zero page becomes a 9-byte ZERO record.

QEMU checks each page with ``buffer_is_zero``, which stops at the first non-zero bytes it finds;
:func:`zero_page_mask` does the same for a whole batch in one compiled pass (numba, compiled on first
use and cached on disk like the XBZRLE kernels; :func:`warm_up` does it outside the timed chain):
per page, the first, middle and last 64-bit words (most non-zero pages show it there), then 1 KiB
blocks ORed together, leaving the page at the first non-zero block. A non-zero page thus costs a few
words where a reduction over the batch read all of it. The slot also tells later slots which pages
were zero (``seg.meta["zero"]``): XBZRLE's page cache must learn them (``xbzrle_cache_zero_page``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..wire.flags import RAM_SAVE_FLAG_ZERO
from ..wire.reader import StreamReader
from ..wire.records import RecordSet
from .base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage

__all__ = ["zero_page_mask", "warm_up", "ZeroPageEncoder", "ZeroPageDecoder", "ZeroPageCodec"]

_FILL = np.zeros((1, 1), dtype=np.uint8)


_BLOCK = 128  # words ORed together between two tests for non-zero (1 KiB: measured best of 16…128 words)


def _zero_rows(flat, n, stride, w, out):  # pragma: no cover - compiled
    """out[i] = row i is all zero; row i is flat[i * stride : i * stride + w] (64-bit words).

    The row is a slice and each block's OR starts from 0 over a fixed trip count: written so, LLVM
    turns the block into vector ORs (indexing ``flat`` directly with offsets left it scalar, 3× slower)."""
    mid = w >> 1
    for i in range(n):
        row = flat[i * stride : i * stride + w]
        if row[0] | row[mid] | row[w - 1]:
            out[i] = False
            continue
        zero = True
        c = 0
        while c + _BLOCK <= w:
            acc = np.uint64(0)
            for k in range(c, c + _BLOCK):
                acc |= row[k]
            if acc != 0:
                zero = False
                break
            c += _BLOCK
        if zero:
            acc = np.uint64(0)
            for k in range(c, w):
                acc |= row[k]
            zero = acc == 0
        out[i] = zero


@lru_cache(maxsize=1)
def _compiled() -> Callable[..., Any]:
    from numba import njit

    return njit(cache=True, nogil=True, boundscheck=False)(_zero_rows)


def _word_rows(pages: np.ndarray) -> tuple[np.ndarray, int] | None:
    """(flat read-only uint64 view from the first row's start to the last row's end, row stride in
    words), or None when the rows are not whole 64-bit words at a positive word-multiple stride."""
    n, ps = pages.shape
    s0, s1 = pages.strides
    if ps == 0 or ps % 8 or (s1 != 1 and ps > 1) or s0 <= 0 or s0 % 8 or pages.dtype != np.uint8:
        return None
    if pages.flags.c_contiguous:
        flat = pages.reshape(-1).view(np.uint64)
    else:  # rows apart (a slice of a larger array): the span between them belongs to that array
        flat = np.lib.stride_tricks.as_strided(pages, shape=((n - 1) * s0 + ps,), strides=(1,)).view(np.uint64)
    if flat.flags.writeable:
        flat = flat.view()
        flat.flags.writeable = False  # one compiled specialisation for any input
    return flat, s0 // 8


def zero_page_mask(pages: np.ndarray) -> np.ndarray:
    """True for each all-zero row of ``pages`` (n, page_size); the same as ``~pages.any(axis=1)``."""
    n = pages.shape[0]
    out = np.empty(n, dtype=bool)
    if n == 0:
        return out
    rows = _word_rows(pages)
    if rows is None:
        return ~pages.any(axis=1)
    _compiled()(rows[0], n, rows[1], pages.shape[1] // 8, out)
    return out


def warm_up() -> None:
    """Load (or compile) the kernel now, so that its first use is not charged to a slot's CPU."""
    pages = np.zeros((2, 8), np.uint8)
    pages[1, 3] = 1
    zero_page_mask(pages)


class ZeroPageEncoder(SlotEncoder):
    def __init__(self) -> None:
        warm_up()  # JIT load/compile belongs to set-up, not to the zero slot's CPU

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

    def __init__(self) -> None:
        pages = np.ones((2, 16), np.uint8)  # load (or compile) the kernel now, not in a timed load
        _clear_kernel()(pages.reshape(-1).view(np.uint64), np.array([1], np.int64), 2)

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        ch = r.get_byte("zero page fill byte")
        if ch != 0 or page.any():
            page[:] = ch

    def load_batch(self, payloads: np.ndarray, pages: np.ndarray, index: np.ndarray) -> None:
        """As QEMU's ``ram_handle_zero`` page by page: write only a non-zero fill or a page that is not
        already zero. Most ZERO records land on pages the destination never wrote; looking at such a
        page maps the kernel's shared zero page, where writing zeros to it would allocate and clear
        a page of RAM (a write fault, several times dearer here, and resident memory)."""
        fill = payloads[:, 0]
        nonzero_fill = fill != 0
        if nonzero_fill.any():
            pages[index[nonzero_fill]] = payloads[nonzero_fill, :1]
            index = index[~nonzero_fill]
        if len(index) == 0:
            return
        ps = pages.shape[1]
        if pages.flags.c_contiguous and ps % 8 == 0 and ps >= 16 and pages.dtype == np.uint8:
            _clear_kernel()(pages.reshape(-1).view(np.uint64), np.ascontiguousarray(index, np.int64), ps // 8)
        else:
            sel = index[pages[index].any(axis=1)]
            pages[sel] = 0


def _clear_nonzero(flat, index, w):  # pragma: no cover - compiled
    """Zero every page ``index[i]`` (``w`` 64-bit words each, in ``flat``) that is not already zero;
    a page is tested as zero_page_mask tests it (first, middle, last word, then 1 KiB blocks) and is
    only written if something in it is not zero."""
    n_pages = flat.shape[0] // w
    mid = w >> 1
    for i in range(index.shape[0]):
        p = index[i]
        if p < 0 or p >= n_pages:
            continue  # the receiver checked the offsets; never write outside the block
        row = flat[p * w : p * w + w]
        dirty = (row[0] | row[mid] | row[w - 1]) != 0
        c = 0
        while not dirty and c < w:
            end = min(c + _BLOCK, w)
            acc = np.uint64(0)
            for k in range(c, end):
                acc |= row[k]
            dirty = acc != 0
            c = end
        if dirty:
            row[:] = 0


@lru_cache(maxsize=1)
def _clear_kernel() -> Callable[..., Any]:
    from numba import njit

    return njit(cache=True, nogil=True, boundscheck=False)(_clear_nonzero)


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
