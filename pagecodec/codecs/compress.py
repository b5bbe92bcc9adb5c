"""QEMU's compress threads (``compress`` capability, QEMU 4.1 … 9.0) in the chain's compress slot.

What QEMU 7.2 does (migration/ram.c: ``save_compress_page``, ``compress_page_with_multi_thread``,
``do_data_compress``, ``flush_compressed_data``, ``update_compress_thread_counts``):

* **When.** Compression is used while the capability is on and XBZRLE is not yet enabled (with
  xbzrle on too: only in the bulk stage). The first page of a block other than the last one sent is
  not compressed: the threads are flushed first and the page goes on down the chain (zero page or raw
  page), so that its header can name the block before compressed records ``CONTINUE`` it.
* **Threads.** Each of ``compress-threads`` threads owns one deflate stream at ``compress-level``,
  reset for every page: a page is ``COMPRESS_PAGE | be32 len | zlib stream`` (independent per page),
  or a ``ZERO`` record when the thread finds the page all zero. The thread writes into its own buffer;
  the buffer reaches the stream when the thread is next given a page, or at a flush (block change,
  end of a pass, ``ram_save_complete``), threads in index order. So records appear in the order the
  threads are reused, not in page order, and a page's record may follow later pages' records.
* **Which thread.** ``compress_page_with_multi_thread`` gives the page to the lowest-numbered idle
  thread; with ``compress-wait-thread`` on it waits for one, off it gives up: the page falls through
  the chain (zero or raw page) and counts as ``busy``.
* **Counters** (``update_compress_thread_counts``), whenever a thread's buffer is handed over,
  including at every flush of every thread, even an empty buffer: ``transferred`` += its bytes; if the
  thread's last page was zero ``duplicate`` += 1, else ``compression.pages`` += 1 and
  ``compressed-size`` += bytes − 8. So each flush adds one count per thread that has no page behind
  it (QEMU-FACTS: "the per-flush quirk"). QEMU 4.1 has the same function; ``qemu-version=4.1`` keeps
  these semantics.
* **Flushes, modelled**: the first page of the migration and of every block change; every time QEMU's
  page search wraps: QEMU resumes a pass where its search stopped, so a pass wraps once in the middle
  when it has pages below that point, and once more at its end (the search that finds nothing else);
  ``ram_save_complete`` flushes once more before its EOS. QEMU also flushes in iterations that find no
  dirty page at all (the search goes round once); a trace does not show those, except the completion
  (an empty last round), so with N threads pagecodec's ``compression.pages`` + ``duplicate`` can be
  lower than QEMU's by N per such iteration.

**Which thread, modelled.** Whether a thread is idle is a matter of timing in QEMU. With
``compress-wait-thread`` on (QEMU's default), pagecodec models threads that take longer to compress a
page than the migration thread takes to hand a page to each of the others: after a flush (all threads
idle) pages go to threads 0, 1, …, N−1, 0, 1, … — the lowest-numbered idle thread at every step under
that model. Wire bytes and counters then depend only on the pages, never on this machine's timing;
the compression itself runs on ``compress-threads`` real worker threads (zlib releases the GIL), each
compressing the pages its QEMU thread would. With ``compress-wait-thread`` off, QEMU's result depends
on timing by definition: pagecodec then asks real worker threads whether they are done at each page,
and the result says ``timing-dependent`` under ``threads``.

The decoder (:class:`CompressedPageDecoder`) is QEMU's ``decompress_data_with_multi_threads`` check:
``len ≤ compressBound(page)``, exactly one page of zlib output (inflation stops one byte past a page).

**Other compressors, other records.** The thread model does not depend on what compresses a page or
how its record is framed, so :class:`CompressThreadsEncoder` takes both as parameters: a
:class:`PageCompressor` (zlib here; ISA-L and zlib-ng in :mod:`.compress_engines`, zstd and LZ4 in
:mod:`.compress_pagecodecs`) and a :class:`RecordLayout` (QEMU's ``COMPRESS_PAGE``, or pagecodec's
extension record for compressors QEMU cannot inflate). QEMU's own codecs use the defaults.
"""

from __future__ import annotations

import ctypes
import dataclasses
import ctypes.util
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Protocol

import numpy as np

from .. import __version__
from ..errors import DecodeError
from ..hookspecs import hookimpl
from ..wire.extension import EXTENSION_HEADER, extension_records
from ..wire.flags import RAM_SAVE_FLAG_COMPRESS_PAGE, RAM_SAVE_FLAG_ZERO, compress_bound
from ..wire.reader import StreamReader
from ..wire.records import RecordSet
from .base import Codec, CodecContext, Emission, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from .zero import warm_up as warm_up_zero
from .zero import zero_page_mask

__all__ = ["CompressedPageDecoder", "CompressThreadsEncoder", "CompressThreadsCodec", "PageCompressor", "DeflateEngine",
           "ZLIB", "RecordLayout", "COMPRESS_PAGE_RECORDS", "ExtensionRecords", "compress_pages", "compress_run"]

_ZERO_FILL = np.zeros((1, 1), np.uint8)
#: Page size the cheap length check of a run assumes (other page sizes are re-checked exactly).
_PAGE_SIZE_HINT = 4096


@dataclass
class _Output:
    """What a thread's buffer holds: the record of one page (QEMU keeps at most one per thread)."""

    offset: int          # byte offset in the block
    zero: bool           # a ZERO record (else the compressed page's record)
    data: bytes = b""    # the compressed page


class PageCompressor(Protocol):
    """What compresses the pages of the compress slot, each page on its own (a thread's state is reset
    for every page, as QEMU's is): the thread and flush rules (record order, counters) are the slot's
    and do not depend on it.

    ``compress_run`` runs on the slot's worker threads: it should release the GIL while it compresses,
    or ``compress-threads`` workers share one core."""

    #: Short name for results (``zlib``, ``isal``, ``zlib-ng``, ``zstd``, ``lz4``).
    name: str
    #: The library and its version as loaded, for results.
    version: str

    def compress_run(self, pages: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Each page compressed at ``level`` (the slot's level parameter), back to back, and their lengths."""
        ...

    def library_level(self, level: int) -> int:
        """The library's own level for the slot's level parameter (results show both)."""
        ...


#: A page compressor whose output is one complete zlib stream (RFC 1950 wrapper, window ≤ 32 KiB) per
#: page at QEMU's ``compress-level`` (0–9). QEMU's destination only inflates each ``COMPRESS_PAGE``
#: payload and checks it gives exactly one page, so any zlib-compatible deflater writes records QEMU loads.
DeflateEngine = PageCompressor


class RecordLayout(Protocol):
    """How the compress slot frames a compressed page on the wire (ZERO records are QEMU's either way)."""

    #: Bytes between the 8-byte page header and the compressed data (QEMU counts them in
    #: ``compressed-size``).
    header: int

    def records(self, index: np.ndarray, offsets: np.ndarray, data: np.ndarray, starts: np.ndarray,
                lengths: np.ndarray) -> RecordSet:
        """Records for pages at ``offsets`` (compressed data ``data[starts[i]:][:lengths[i]]``), handed
        over at segment positions ``index``."""
        ...


class _CompressPageRecords:
    """QEMU's ``COMPRESS_PAGE``: ``be32 len`` and the zlib stream."""

    header = 4

    def records(self, index: np.ndarray, offsets: np.ndarray, data: np.ndarray, starts: np.ndarray,
                lengths: np.ndarray) -> RecordSet:
        return RecordSet("compress", RAM_SAVE_FLAG_COMPRESS_PAGE, index,
                         prefix=lengths.astype(">u4").view(np.uint8).reshape(-1, 4), data=data, starts=starts,
                         lengths=lengths, offsets=offsets)


#: QEMU's record layout (compress-threads, compress-isal, compress-zlibng).
COMPRESS_PAGE_RECORDS: RecordLayout = _CompressPageRecords()


@dataclass(frozen=True)
class ExtensionRecords:
    """pagecodec's extension record (:mod:`pagecodec.wire.extension`) of codec ``kind`` with wire id
    ``cid``: for compressors whose output QEMU cannot load."""

    kind: str
    cid: int
    header: int = EXTENSION_HEADER

    def records(self, index: np.ndarray, offsets: np.ndarray, data: np.ndarray, starts: np.ndarray,
                lengths: np.ndarray) -> RecordSet:
        return extension_records(self.kind, self.cid, index, data, starts, lengths, offsets=offsets)


@lru_cache(maxsize=1)
def _load_libz() -> tuple[Any, str]:
    """``compress2`` of the system zlib and its version, or (None, the zlib module's version). Loaded on
    first use, not at import: every pagecodec command imports this plugin, few compress."""
    name = ctypes.util.find_library("z")
    if name is not None:
        try:
            lib = ctypes.CDLL(name)
            fn = lib.compress2
        except (OSError, AttributeError):
            pass
        else:
            fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_ulong), ctypes.c_void_p, ctypes.c_ulong,
                           ctypes.c_int]
            fn.restype = ctypes.c_int
            lib.zlibVersion.restype = ctypes.c_char_p
            return fn, f"{name} {lib.zlibVersion().decode()}"
    return None, f"zlib module {zlib.ZLIB_RUNTIME_VERSION}"


class _Libz:
    """The system zlib's ``compress2`` through ctypes: ``deflateInit(level)`` + ``deflate(Z_FINISH)`` +
    ``deflateEnd`` in one C call (QEMU: deflateReset + deflate(Z_FINISH): the same bytes).

    Why not the ``zlib`` module: its per-page calls hold the GIL between the C parts (creating the
    compression object, flushing), so compress threads share one core for a good part of each page;
    a ctypes call releases the GIL for the whole page, so ``compress-threads`` workers really run in
    parallel (bench/compress_ratio.py). It is the library QEMU itself links (Debian's ``libz.so.1``);
    where it cannot be loaded, the ``zlib`` module's compression objects do the same work."""

    name = "zlib"

    @property
    def version(self) -> str:
        return _load_libz()[1]

    def compress_run(self, pages: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Each page's zlib stream, back to back in one array, and their lengths."""
        pages = np.ascontiguousarray(pages)
        k = len(pages)
        fn = _load_libz()[0]
        if fn is None:
            outs = []
            for p in pages:
                c = zlib.compressobj(level)
                outs.append(c.compress(p) + c.flush())
            return np.frombuffer(b"".join(outs), np.uint8), np.array([len(o) for o in outs], np.int64)
        ps = pages.shape[1] if pages.ndim == 2 else 0
        bound = compress_bound(ps)
        out = np.empty(k * bound + 64, np.uint8)
        lengths = np.empty(k, np.int64)
        n = ctypes.c_ulong()
        ref = ctypes.byref(n)
        src, dst = pages.ctypes.data, out.ctypes.data
        cur = 0
        for i in range(k):
            n.value = bound
            rc = fn(dst + cur, ref, src + i * ps, ps, level)
            if rc != 0:
                raise RuntimeError(f"zlib compress2 failed with {rc}")
            lengths[i] = n.value
            cur += n.value
        return out[:cur], lengths

    def library_level(self, level: int) -> int:
        """zlib's levels are QEMU's (QEMU passes ``compress-level`` to deflateInit)."""
        return level


_LIBZ = _Libz()
#: The system zlib engine (compress-threads, QEMU's own bytes).
ZLIB: DeflateEngine = _LIBZ


@dataclass
class _Pending:
    """A segment handed to the workers whose records are not written yet."""

    block: int
    offsets: np.ndarray            # the segment's page offsets (records are positioned on them)
    pos: np.ndarray                # positions dispatched, in order
    thread_of: np.ndarray          # QEMU thread of each dispatch
    zero: np.ndarray               # zero page per dispatch
    jobs: list[tuple[np.ndarray, Future[Any]]]  # (dispatch indices, worker result) per thread
    early: list[tuple[int, _Output]]            # buffers of earlier segments handed over here


def _join_emissions(ems: list[Emission]) -> Emission | None:
    """Emissions of one block, one after the other, as one (positions shifted)."""
    if not ems:
        return None
    if len(ems) == 1:
        return ems[0]
    assert len({e.block_index for e in ems}) == 1, "compress-thread buffers always hold one block"
    sets: list[RecordSet] = []
    shift = 0
    for e in ems:
        sets += [dataclasses.replace(rs, index=rs.index + shift) for rs in e.sets]  # headers name rs.offsets
        shift += len(e.offsets)
    return Emission(ems[0].block_index, np.concatenate([e.offsets for e in ems]), sets)


def compress_run(pages: np.ndarray, level: int, engine: PageCompressor = ZLIB) -> tuple[np.ndarray, np.ndarray, int]:
    """Each page compressed by ``engine`` (the default: zlib streams, deflateInit(level): zlib wrapper,
    windowBits 15, memLevel 8, a fresh state per page as after deflateReset, the stream finished), back
    to back, their lengths, and the calling thread's CPU nanoseconds. The per-worker function of every
    engine: runs on a worker thread with the GIL released while it compresses (see :class:`_Libz`)."""
    t0 = time.thread_time_ns()
    data, lengths = engine.compress_run(pages, level)
    return data, lengths, time.thread_time_ns() - t0


def compress_pages(pages: np.ndarray, level: int, engine: PageCompressor = ZLIB) -> tuple[list[bytes], int]:
    """Like :func:`compress_run`, one bytes object per page."""
    data, lengths, ns = compress_run(pages, level, engine)
    ends = np.cumsum(lengths)
    return [data[e - n : e].tobytes() for e, n in zip(ends.tolist(), lengths.tolist())], ns


class CompressThreadsEncoder(SlotEncoder):
    """One migration's compress threads: what each thread's buffer holds, which thread is next, the
    counters, and the worker pool that does the compressing with ``engine`` (the system zlib for
    compress-threads; other zlib-compatible deflaters for compress-isal, compress-zlibng; zstd and LZ4
    for pagecodec's own codecs): only the payload bytes differ, record order and counters are the same.

    ``layout`` frames each compressed page (QEMU's COMPRESS_PAGE by default); ``level_param`` names the
    parameter that holds the compressor's level (QEMU's ``compress-level`` by default)."""

    def __init__(self, ctx: CodecContext, engine: PageCompressor = ZLIB,
                 layout: RecordLayout = COMPRESS_PAGE_RECORDS, level_param: str = "compress-level") -> None:
        self.engine = engine
        self.layout = layout
        warm_up_zero()  # the zero-page kernel's JIT load belongs to set-up
        cfg = ctx.config
        self.threads = int(cfg.param("compress-threads"))
        self.level_param = level_param
        self.level = int(cfg.param(level_param))
        self.wait = bool(cfg.param("compress-wait-thread"))
        self.xbzrle = cfg.cap("xbzrle")
        self.page_size = ctx.page_size
        self.held: list[_Output | None] = [None] * self.threads
        self.last_zero = [False] * self.threads  # CompressParam.zero_page: the thread's last page was zero
        self.block: int | None = None             # block of the held outputs
        self.next = 0                             # the rotation model's next thread
        self.pending: list[Future[Any] | None] = [None] * self.threads  # wait=off: a thread's work in flight
        self.pages = 0
        self.busy = 0
        self.compressed_size = 0
        self.extra_duplicate = 0
        self.offered = 0                          # pages offered while compression was in use
        self.flushes = 0
        self._cpu_ns = 0
        self._pool: ThreadPoolExecutor | None = None
        # QEMU's page search position (global page index after the last page it sent), to know where
        # its search wraps (each wrap flushes): see :meth:`_search_wraps`
        self._pending: _Pending | None = None  # a segment whose pages are with the workers
        self.resume = 0
        self.round: int | None = None
        self.max_below = -1
        self.max_all = -1

    # -- the chain ------------------------------------------------------------------------------
    def _in_use(self, stage: Stage) -> bool:
        """save_page_use_compression: off once XBZRLE is enabled (after the first pass)."""
        return not (self.xbzrle and not stage.bulk_stage)

    def _search_wraps(self, seg: Segment, stage: Stage) -> bool:
        """Follow QEMU's page search over this segment's pages; True if its search wrapped before them.

        QEMU resumes each pass where its search stopped (after the last page it sent) and sends the
        pages at or after that point first, then wraps (a flush) and sends the rest; the search that
        finds nothing more wraps again (the flush of :meth:`end_of_pass`). pagecodec sends a pass in
        page order from the first block, so it flushes for the first wrap when the pass begins below
        the resume point, which gives QEMU's number of flushes."""
        keys = seg.addrs // self.page_size
        first = self.round != stage.round
        if first:
            self.round = stage.round
            self.max_below = self.max_all = -1
        below = keys[keys < self.resume]
        if len(below):
            self.max_below = max(self.max_below, int(below.max()))
        self.max_all = max(self.max_all, int(keys.max()))
        return first and int(keys[0]) < self.resume

    def encode(self, seg: Segment, stage: Stage) -> None:
        wrapped = self._search_wraps(seg, stage)
        if not self._in_use(stage):
            return
        if wrapped:
            seg.before.extend(self.flush())
        pend = seg.pending()
        if len(pend) == 0:
            return
        self.offered += len(pend)
        if seg.last_sent_block != seg.block_index:
            # save_compress_page: a new block's first page is sent as a normal page, after a flush
            seg.before.extend(self.flush())
            pend = pend[1:]
            if len(pend) == 0:
                return
        if self.wait:
            self._dispatch_rotating(seg, pend)
        else:
            self._dispatch_first_idle(seg, pend)

    def end_of_pass(self, stage: Stage) -> Emission | None:
        """The search wrapped: flush. ``ram_save_complete`` flushes twice: its last search wraps (the
        flush in ``find_dirty_block``) and it flushes once more before EOS (the second is empty, but
        counts, see the module docstring)."""
        if self.round == stage.round and self.max_all >= 0:  # where QEMU's search stops in this pass
            self.resume = (self.max_below if self.max_below >= 0 else self.max_all) + 1
        if not self._in_use(stage):
            return None
        ems = self.flush()
        if stage.last_stage:
            ems += self.flush()
        return _join_emissions(ems)

    # -- dispatch -------------------------------------------------------------------------------
    def _dispatch_rotating(self, seg: Segment, pos: np.ndarray) -> None:
        """compress-wait-thread on: thread (next + j) mod N takes the j-th page (the model above).

        The segment's pages are handed to the workers and the call returns: the records the segment
        hands over are written before the next segment's (or at the next flush), which gives the same
        bytes, since every record this slot writes in a segment follows the segment's own records (a new
        block's first page). So the workers deflate while the chain goes on (the next batch of the
        trace is read meanwhile). In the rotation, dispatch j ≥ N hands over the output of dispatch
        j − N of the same segment and only the first N hand over buffers filled earlier: records and
        counts are array shifts. The segment's pages are submitted before the previous segment's
        results are collected, so the workers go straight on to them (submitting depends on nothing
        that collecting changes; the buffers are handed over after it)."""
        n, k = self.threads, len(pos)
        thread_of = (self.next + np.arange(k)) % n
        self.next = int((self.next + k) % n)
        pages = seg.pages[pos[0] : pos[0] + k] if pos[-1] - pos[0] == k - 1 else seg.pages[pos]  # a view if it can
        zero = zero_page_mask(pages)
        jobs = []
        for t in range(n):
            g = np.flatnonzero((thread_of == t) & ~zero)
            if len(g):
                # every n-th page (no zero page among them): a strided view, copied by the worker itself
                part = pages[int(g[0]) :: n][: len(g)] if len(g) == 1 or (np.diff(g) == n).all() else pages[g]
                jobs.append((g, self._submit(part)))
        seg.before.extend(self._resolve())
        early: list[tuple[int, _Output]] = []
        for j in range(min(k, n)):  # buffers filled before this segment
            prev = self._take(int(thread_of[j]))
            if prev is not None:
                early.append((int(pos[j]), prev))
        for j in range(max(0, k - n), k):  # each thread's last page: its buffer's next content
            self.last_zero[int(thread_of[j])] = bool(zero[j])
        self.block = seg.block_index
        seg.claim(Slot.COMPRESS, pos, None)
        self._pending = _Pending(seg.block_index, seg.offsets.copy(), pos, thread_of, zero, jobs, early)

    def _resolve(self) -> list[Emission]:
        """Wait for the pending segment's workers: its records (an Emission over its positions), and
        each thread's last output into the thread's buffer."""
        pd = self._pending
        if pd is None:
            return []
        self._pending = None
        n, k = self.threads, len(pd.pos)
        dstart = np.zeros(k, np.int64)
        dlen = np.zeros(k, np.int64)
        chunks: list[np.ndarray] = []
        base = 0
        for g, fut in pd.jobs:
            data, lengths, ns = fut.result()
            self._cpu_ns += ns
            dlen[g] = lengths
            dstart[g] = base + np.cumsum(lengths) - lengths
            chunks.append(data)
            base += len(data)
        flat = np.concatenate(chunks) if len(chunks) > 1 else (chunks[0] if chunks else np.empty(0, np.uint8))
        offs = pd.offsets[pd.pos]
        src = np.arange(max(0, k - n))  # dispatch j + n hands over dispatch j's output
        at = pd.pos[src + n]
        z = pd.zero[src]
        nzs = src[~z]
        self.pages += len(nzs)
        self.compressed_size += int((self.layout.header + dlen[nzs]).sum())
        sets = self._record_sets(pd.early)
        if z.any():
            sets.append(_zero_records(at[z], offs[src[z]]))
        if len(nzs):
            sets.append(self.layout.records(at[~z], offs[nzs], flat, dstart[nzs], dlen[nzs]))
        for j in range(max(0, k - n), k):
            t = int(pd.thread_of[j])
            zj = bool(pd.zero[j])
            self.held[t] = _Output(int(offs[j]), zj, b"" if zj else flat[dstart[j] : dstart[j] + dlen[j]].tobytes())
        return [Emission(pd.block, pd.offsets, sets)] if sets else []

    def _dispatch_first_idle(self, seg: Segment, pos: np.ndarray) -> None:
        """compress-wait-thread off: at each page, the lowest-numbered thread whose work is done takes
        it; none done: the page falls through and counts busy (timing-dependent, as in QEMU)."""
        zero = zero_page_mask(seg.pages[pos])
        out: list[tuple[int, _Output]] = []
        took: list[int] = []
        for j, p in enumerate(pos.tolist()):
            t = next((i for i, f in enumerate(self.pending) if f is None or f.done()), None)
            if t is None:
                self.busy += 1
                continue
            prev = self._take(t)
            if prev is not None:
                out.append((p, prev))
            z = bool(zero[j])
            self.held[t] = _Output(int(seg.offsets[p]), z)
            self.last_zero[t] = z
            if not z:
                self.pending[t] = self._submit(seg.pages[p : p + 1])
            took.append(p)
        if took:
            self.block = seg.block_index
            seg.claim(Slot.COMPRESS, np.array(took, np.int64), None)
            seg.records.extend(self._record_sets(out))

    # -- buffers --------------------------------------------------------------------------------
    def _settle(self, t: int) -> None:
        """Wait for thread ``t``'s work and put its compressed page into its held output."""
        fut = self.pending[t]
        if fut is None:
            return
        data, _lengths, ns = fut.result()
        self._cpu_ns += ns
        h = self.held[t]
        if h is not None and not h.zero:
            h.data = data.tobytes()
        self.pending[t] = None

    def _take(self, t: int) -> _Output | None:
        """update_compress_thread_counts for thread ``t``'s buffer as it is handed over."""
        self._settle(t)
        prev = self.held[t]
        self.held[t] = None
        if self.last_zero[t]:
            if prev is None:
                self.extra_duplicate += 1  # an empty buffer of a thread whose last page was zero
        else:
            self.pages += 1
            self.compressed_size += (self._wire_bytes(prev) if prev is not None else 0) - 8
        return prev

    def flush(self) -> list[Emission]:
        """flush_compressed_data: every thread's buffer, in thread order (after the records of a segment
        still in the workers); the rotation starts again at thread 0 (all threads are idle after it)."""
        ems = self._resolve()
        self.flushes += 1
        out = [(t, h) for t in range(self.threads) if (h := self._take(t)) is not None]
        self.next = 0
        block = self.block
        if out and block is not None:
            offsets = np.array([h.offset for _, h in out], np.int64)
            ems.append(Emission(block, offsets, self._record_sets([(i, h) for i, (_, h) in enumerate(out)])))
        return ems

    def _wire_bytes(self, h: _Output) -> int:
        """What a held record is on the wire (8-byte header, then a ZERO's fill byte or the layout's
        header and the compressed page)."""
        return 9 if h.zero else 8 + self.layout.header + len(h.data)

    def _record_sets(self, out: list[tuple[int, _Output]]) -> list[RecordSet]:
        """RecordSets for outputs handed over at the given positions (headers name the pages' own offsets)."""
        sets: list[RecordSet] = []
        zs = [(p, h) for p, h in out if h.zero]
        cs = [(p, h) for p, h in out if not h.zero]
        if zs:
            sets.append(_zero_records(np.array([p for p, _ in zs], np.int64),
                                      np.array([h.offset for _, h in zs], np.int64)))
        if cs:
            lengths = np.array([len(h.data) for _, h in cs], np.int64)
            sets.append(self.layout.records(np.array([p for p, _ in cs], np.int64),
                                            np.array([h.offset for _, h in cs], np.int64),
                                            np.frombuffer(b"".join(h.data for _, h in cs), np.uint8),
                                            np.cumsum(lengths) - lengths, lengths))
        return sets

    def _submit(self, pages: np.ndarray) -> Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="compress")
        return self._pool.submit(compress_run, pages, self.level, self.engine)

    # -- results --------------------------------------------------------------------------------
    def take_worker_cpu_ns(self) -> int:
        ns, self._cpu_ns = self._cpu_ns, 0
        return ns

    def ram_counters(self) -> dict[str, int]:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return {"duplicate": self.extra_duplicate}

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """query-migrate's ``compression`` (rates over the whole migration; QEMU's are per sync period)
        and how the threads were used."""
        size = self.compressed_size
        return {
            "compression": {
                "pages": self.pages,
                "busy": self.busy,
                "busy-rate": self.busy / self.offered if self.offered else 0.0,
                "compressed-size": size,
                "compression-rate": self.pages * self.page_size / size if size > 0 else 0.0,
            },
            "threads": {
                "compress": self.threads,
                "compress-wait-thread": self.wait,
                "compress-assignment": "rotation (deterministic model)" if self.wait
                else "first idle thread at each page (timing-dependent)",
                "timing-dependent": not self.wait,
                "compress-flushes": self.flushes,
                **({"zlib": self.engine.version} if self.engine is ZLIB else {}),
                "compression-engine": {"name": self.engine.name, "library": self.engine.version,
                                       self.level_param: self.level,
                                       "library-level": self.engine.library_level(self.level)},
            },
        }


def _zero_records(index: np.ndarray, offsets: np.ndarray) -> RecordSet:
    """ZERO records a thread wrote for pages at ``offsets``, handed over at positions ``index``."""
    return RecordSet("zero", RAM_SAVE_FLAG_ZERO, index, prefix=_ZERO_FILL, offsets=offsets)


class CompressedPageDecoder(RecordDecoder):
    """COMPRESS_PAGE: be32 len ≤ compressBound(page), then one zlib stream that inflates to exactly one
    page. Inflation stops one byte past a page, so a hostile stream cannot make it allocate more.

    Runs of records are inflated on ``decompress-threads`` worker threads, as QEMU's destination does
    (``decompress_data_with_multi_threads``); every page of a run is checked before any is written."""

    flag = RAM_SAVE_FLAG_COMPRESS_PAGE
    loads_many = True
    #: Records per worker task: enough to amortise the hand-off, few enough to spread a run.
    CHUNK = 64

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, int(threads))
        self._cpu_ns = 0

    def payload_length(self, buf: np.ndarray, pos: int) -> int | None:
        if pos + 4 > len(buf):
            return None
        n = int.from_bytes(buf[pos : pos + 4].tobytes(), "big")
        return 4 + n if n <= compress_bound(_PAGE_SIZE_HINT) else None

    def load_many(self, payloads: list[memoryview], pages: np.ndarray, index: np.ndarray, at: np.ndarray,
                  source: str | None) -> None:
        ps = pages.shape[1]
        if ps != _PAGE_SIZE_HINT:  # compressBound was checked against 4 KiB pages: re-check exactly
            bound = compress_bound(ps)
            for p, a in zip(payloads, at.tolist()):
                if len(p) - 4 > bound:
                    raise DecodeError(f"compressed page of {len(p) - 4} bytes, more than compressBound({ps}) = {bound}",
                                      a, source)
        chunks = [(lo, min(len(payloads), lo + self.CHUNK)) for lo in range(0, len(payloads), self.CHUNK)]

        def work(lo: int, hi: int) -> tuple[np.ndarray, int]:
            t0 = time.thread_time_ns()
            out = np.empty((hi - lo, ps), np.uint8)
            for j in range(lo, hi):
                out[j - lo] = inflate_page(payloads[j][4:], ps, int(at[j]) + 4, source)
            return out, time.thread_time_ns() - t0

        if self.threads > 1 and len(chunks) > 1:
            with ThreadPoolExecutor(max_workers=min(self.threads, len(chunks)), thread_name_prefix="decompress") as pool:
                results = list(pool.map(lambda c: work(*c), chunks))
            self._cpu_ns += sum(ns for _, ns in results)  # worker threads' CPU (the caller's is its own clock's)
        else:
            results = [work(lo, hi) for lo, hi in chunks]
        pages[index] = np.concatenate([o for o, _ in results])  # every page checked: now write them

    def take_worker_cpu_ns(self) -> int:
        ns, self._cpu_ns = self._cpu_ns, 0
        return ns

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        ps = page.shape[0]
        lat = r.pos
        n = r.get_be32("compressed length")
        bound = compress_bound(ps)
        if n > bound:
            raise DecodeError(f"compressed page of {n} bytes, more than compressBound({ps}) = {bound}", r.base + lat, r.source)
        dat = r.base + r.pos
        page[:] = inflate_page(bytes(r.get_bytes(n, "compressed page")), ps, dat, r.source)


def inflate_page(data: bytes | memoryview, page_size: int, at: int, source: str | None) -> np.ndarray:
    """One COMPRESS_PAGE payload inflated and checked (exactly one page, nothing after the stream). A
    decompression object releases the GIL while it inflates, so decompress threads run in parallel."""
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, page_size + 1)
    except zlib.error as e:
        raise DecodeError(f"compressed page is not a valid zlib stream: {e}", at, source) from None
    if not d.eof:
        raise DecodeError(f"compressed page: zlib stream incomplete after {len(out)} bytes of output", at, source)
    if len(out) != page_size or d.unused_data:
        what = f"{len(out)} bytes of output" if len(out) != page_size else f"{len(d.unused_data)} bytes after the zlib stream"
        raise DecodeError(f"compressed page: {what}, expected exactly one page of {page_size} bytes", at, source)
    return np.frombuffer(out, np.uint8)


#: What the compress-thread model reads (every codec of the compress slot built on it): the level is
#: QEMU's ``compress-level`` unless the codec names its own.
COMPRESS_THREAD_PARAMETERS = ("compress-threads", "compress-wait-thread", "decompress-threads", "compress-level")


class CompressThreadsCodec(Codec):
    name = "compress-threads"
    slots = (Slot.COMPRESS,)
    qemu_format = True
    description = "zlib compress threads (COMPRESS_PAGE), QEMU 4.1 … 9.0"
    version = __version__
    parameters = COMPRESS_THREAD_PARAMETERS

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return CompressThreadsEncoder(ctx)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [CompressedPageDecoder(ctx.config.param("decompress-threads"))]


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(CompressThreadsCodec())
