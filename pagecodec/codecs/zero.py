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

__all__ = ["zero_page_mask", "fill_pages", "warm_up", "ZeroPageEncoder", "ZeroPageDecoder", "ZeroPageCodec"]

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


def _fill_rows(flat, stride, w, index, fill, nrows):  # pragma: no cover - compiled
    """ram_handle_compressed on rows ``index`` of ``flat`` (rows of ``w`` 64-bit words, ``stride``
    words apart): fill row i with the byte fill[i], except a row that is already zero and gets 0.

    QEMU skips the memset of a zero page that is already zero, and so does this: a page never
    written is the OS's shared zero page until something writes it, so a stream of ZERO records does
    not commit the memory it names (9 bytes of stream would otherwise cost a whole page). Returns the
    first position whose row lies outside the ``nrows`` rows, or -1."""
    for j in range(index.size):
        i = index[j]
        if i < 0 or i >= nrows:
            return j
        row = flat[i * stride : i * stride + w]
        f = np.uint64(fill[j])
        if f == 0:
            if (row[0] | row[w >> 1] | row[w - 1]) == 0:
                acc = np.uint64(0)
                for k in range(w):
                    acc |= row[k]
                    if (k & 127) == 127 and acc != 0:
                        break
                if acc == 0:
                    continue
        v = f * np.uint64(0x0101010101010101)
        for k in range(w):
            row[k] = v
    return -1


@lru_cache(maxsize=1)
def _compiled() -> Callable[..., Any]:
    from numba import njit

    return njit(cache=True, nogil=True, boundscheck=False)(_zero_rows)


@lru_cache(maxsize=1)
def _compiled_fill() -> Callable[..., Any]:
    from numba import njit

    return njit(cache=True, nogil=True, boundscheck=False)(_fill_rows)


def fill_pages(pages: np.ndarray, index: np.ndarray, fill: np.ndarray) -> None:
    """``pages[index[j]] = fill[j]`` for every j, leaving a page that is already zero untouched when
    its fill is 0 (QEMU's ``ram_handle_compressed``): a ZERO record costs no memory on a page that was
    never written. ``pages`` is a writable (n, page_size) uint8 array; IndexError for an index
    outside it (checked before anything is written)."""
    index = np.ascontiguousarray(index, np.int64)
    fill = np.ascontiguousarray(fill, np.uint8).reshape(-1)
    if index.size != fill.size:
        raise ValueError(f"{index.size} pages but {fill.size} fill bytes")
    n, ps = pages.shape
    if index.size and (int(index.min()) < 0 or int(index.max()) >= n):
        raise IndexError(f"page index outside the {n} pages")
    if not pages.flags.c_contiguous or ps % 8 or ps == 0 or not pages.flags.writeable or pages.dtype != np.uint8:
        for i, f in zip(index.tolist(), fill.tolist()):
            if f or pages[i].any():
                pages[i] = f
        return
    _compiled_fill()(pages.reshape(-1).view(np.uint64), ps // 8, ps // 8, index, fill, n)


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
    fill_pages(pages, np.array([0, 1]), np.zeros(2, np.uint8))


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
        warm_up()  # JIT load/compile belongs to set-up, not to the destination's zero stage

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        ch = r.get_byte("zero page fill byte")
        if ch != 0 or page.any():
            page[:] = ch

    def load_batch(self, payloads: np.ndarray, pages: np.ndarray, index: np.ndarray) -> None:
        fill_pages(pages, index, payloads[:, 0])


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
