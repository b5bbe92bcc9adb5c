"""Run records: the extension-record payload of pagecodec's streaming delta codecs (xor-zstd, xbzrle-zstd).

Compressing page by page costs twice: a zstd block per page (its own entropy tables) and a library
call per page. So these codecs compress *runs* of up to :data:`RUN_PAGES` pages of one segment in one
call through one zstd stream per migration (flushed at the end of each run, so everything a run needs
has been sent; later runs still match into earlier ones within the window: 1 MiB, or with
``pc-zstd-long=N`` 2^N bytes searched by zstd's long-distance matcher — the destination then keeps
that much of the stream, and refuses a stream that asks for more than its configuration says). Every page keeps its
own record, in page order, as the chain requires; the run's bytes travel in the first one::

    head record payload     u8 k (1 … RUN_PAGES)
                            k × (u8 mode, be16 len)     what each page of the run is
                            zstd stream data            flushed; decodes to Σ len bytes exactly
    the run's other pages   empty payload (the extension header's length is 0)

Modes: :data:`MODE_PAGE` (the page itself, len = page size), :data:`MODE_XOR` (new page XOR the
destination's copy, len = page size), :data:`MODE_XBZRLE` (an XBZRLE encoding against the
destination's copy, len ≤ page size). Records of other kinds (a zero page) may come between the
records of a run; the run's own records follow its pages' order.

The decoder (:class:`RunDecoder`) decompresses a run when its head arrives, bounded by the declared
lengths (never more than ``k`` pages), and applies each page when its own record arrives. It refuses
a head while pages of the previous run are still owed, an empty record with nothing owed, and (at the
section's EOS, :meth:`RunDecoder.end_of_section`) a run left incomplete.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from ..errors import DecodeError
from ..wire.extension import MAX_RUN_PAGES, RAM_SAVE_FLAG_EXTENSION, extension_records
from ..wire.reader import StreamReader
from ..wire.records import RecordSet
from .base import RecordDecoder
from .xbzrle_kernel import decode_page
from .zstd_ctx import WINDOW_LOG, Compressor, Decompressor

__all__ = ["RUN_PAGES", "MODE_PAGE", "MODE_XOR", "MODE_XBZRLE", "RunEncoder", "RunDecoder"]

#: Pages per run at most (the extension layout's limit): bounds the decoder's buffer and the record.
RUN_PAGES = MAX_RUN_PAGES
MODE_PAGE, MODE_XOR, MODE_XBZRLE = 0, 1, 2
_MODE_NAMES = {MODE_PAGE: "page", MODE_XOR: "xor", MODE_XBZRLE: "xbzrle"}


class RunEncoder:
    """One migration's zstd stream, cut into run records."""

    def __init__(self, kind: str, cid: int, level: int, page_size: int, long_window: int = 0) -> None:
        self.kind = kind
        self.cid = cid
        self.page_size = page_size
        self.z = Compressor(level, RUN_PAGES * page_size, long_window)
        self.runs = 0

    def records(self, index: np.ndarray, modes: np.ndarray, data: np.ndarray, lengths: np.ndarray) -> RecordSet:
        """Run records for the segment positions ``index`` (ascending): page i is ``modes[i]`` with
        ``lengths[i]`` bytes of ``data`` (packed back to back in order)."""
        lengths = np.asarray(lengths, np.int64)
        data = np.ascontiguousarray(data)
        return self.records_at(index, modes, data.ctypes.data + np.cumsum(lengths) - lengths, lengths)

    def records_at(self, index: np.ndarray, modes: np.ndarray, ptrs: np.ndarray, lengths: np.ndarray) -> RecordSet:
        """Like :meth:`records` with page i's bytes at memory address ``ptrs[i]`` (the caller keeps that
        memory alive for the call): pages whose bytes follow each other in memory go to zstd as one
        piece, so bytes already in place (a run of whole pages of the segment) are not gathered first."""
        m = len(index)
        lengths = np.asarray(lengths, np.int64)
        ptrs = np.asarray(ptrs, np.int64)
        joined = np.zeros(m, bool)  # page i continues page i - 1's piece
        if m > 1:
            joined[1:] = ptrs[:-1] + lengths[:-1] == ptrs[1:]
        heads = np.arange(0, m, RUN_PAGES)
        joined[heads] = False
        starts = np.flatnonzero(~joined)
        piece_len = np.add.reduceat(lengths, starts) if m else lengths
        piece_ptr = ptrs[starts].tolist()
        run_of_piece = starts // RUN_PAGES
        out: list[np.ndarray] = []
        plen = np.zeros(m, np.int64)
        first = np.searchsorted(run_of_piece, np.arange(len(heads)))
        last = np.searchsorted(run_of_piece, np.arange(len(heads)), side="right")
        piece_len_l = piece_len.tolist()
        for r, h in enumerate(heads.tolist()):
            e = min(m, h + RUN_PAGES)
            k = e - h
            a, b = int(first[r]), int(last[r])
            z = self.z.flush_pieces(piece_ptr[a:b], piece_len_l[a:b])
            table = np.empty((k, 3), np.uint8)
            table[:, 0] = modes[h:e]
            table[:, 1] = lengths[h:e] >> 8
            table[:, 2] = lengths[h:e] & 0xFF
            out += [np.array([k], np.uint8), table.reshape(-1), z.copy()]
            plen[h] = 1 + 3 * k + len(z)
        self.runs += len(heads)
        payload = np.concatenate(out) if out else np.empty(0, np.uint8)
        return extension_records(self.kind, self.cid, index, payload, np.cumsum(plen) - plen, plen)


class RunDecoder(RecordDecoder):
    """Decodes run records of one codec (see the module docstring): ``modes`` are those it accepts."""

    flag = RAM_SAVE_FLAG_EXTENSION
    loads_many = True

    def __init__(self, codec: str, page_size: int, modes: tuple[int, ...], long_window: int = 0) -> None:
        self.codec = codec
        self.page_size = page_size
        self.modes = modes
        self.z = Decompressor(long_window or WINDOW_LOG)
        self.owed: deque[tuple[int, np.ndarray]] = deque()

    def load_many(self, payloads: list[memoryview], pages: np.ndarray, index: np.ndarray, at: np.ndarray,
                  source: str | None) -> None:
        """A run of this codec's records in stream order: each applied as :meth:`load` would."""
        for payload, i, a in zip(payloads, index.tolist(), at.tolist()):
            if len(payload) == 0 and self.owed:  # the common case: the next page of the run
                mode, data = self.owed.popleft()
                self._apply(mode, data, pages[i], a, source)
            else:
                self.load(StreamReader(payload, source, base=a), pages[i])

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        at = r.base + r.pos
        if r.remaining == 0:
            if not self.owed:
                raise DecodeError(f"{self.codec}: empty run record with no run under way (a run starts with "
                                  f"a record that carries its data)", at, r.source)
            mode, data = self.owed.popleft()
            self._apply(mode, data, page, at, r.source)
            return
        if self.owed:
            raise DecodeError(f"{self.codec}: a new run starts while {len(self.owed)} page(s) of the previous "
                              f"run are still owed", at, r.source)
        k = r.get_byte("run length")
        if not 1 <= k <= RUN_PAGES:
            raise DecodeError(f"{self.codec}: run of {k} pages (1 … {RUN_PAGES})", at, r.source)
        table = r.get_array(3 * k, "run table").reshape(k, 3)
        modes = table[:, 0].astype(np.int64)
        lengths = table[:, 1].astype(np.int64) << 8 | table[:, 2]
        ps = self.page_size
        for j in range(k):
            mode, n = int(modes[j]), int(lengths[j])
            if mode not in self.modes:
                raise DecodeError(f"{self.codec}: page {j} of the run has mode {mode} (this codec writes "
                                  f"{', '.join(_MODE_NAMES[m] for m in self.modes)})", at + 1 + 3 * j, r.source)
            if (n != ps) if mode != MODE_XBZRLE else not 0 < n <= ps:
                raise DecodeError(f"{self.codec}: page {j} of the run declares {n} bytes of mode "
                                  f"{_MODE_NAMES[mode]} (page size {ps})", at + 1 + 3 * j, r.source)
        out = np.empty(int(lengths.sum()), np.uint8)
        zat = r.base + r.pos
        self.z.stream(r.get_array(r.remaining, "run data"), out, zat, r.source)
        ends = np.cumsum(lengths)
        pieces = [(int(modes[j]), out[int(ends[j] - lengths[j]) : int(ends[j])]) for j in range(k)]
        self._apply(*pieces[0], page, at, r.source)
        self.owed.extend(pieces[1:])

    def _apply(self, mode: int, data: np.ndarray, page: np.ndarray, at: int, source: str | None) -> None:
        if mode == MODE_PAGE:
            page[:] = data
        elif mode == MODE_XOR:
            np.bitwise_xor(page, data, out=page)
        else:
            decode_page(data, page, source=source, base_offset=at)

    def end_of_section(self, at: int, source: str | None) -> None:
        if self.owed:
            n = len(self.owed)
            self.owed.clear()
            raise DecodeError(f"{self.codec}: the section ends while {n} page(s) of a run are still owed", at, source)
