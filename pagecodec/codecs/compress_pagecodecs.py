"""zstd and LZ4 in the compress slot: ``compress-zstd``, ``compress-lz4``, ``compress-lz4hc`` (issue 9),
pagecodec's own codecs.

QEMU's compress threads deflate; its destination inflates ``COMPRESS_PAGE`` payloads as zlib streams
and nothing else. These codecs keep QEMU 7.2's compress-thread model exactly
(:class:`~pagecodec.codecs.compress.CompressThreadsEncoder`: ``compress-threads`` threads, the same
rotation, buffers, flushes, ZERO records for zero pages, record order and counters) and compress each
page with another library, so what changes is what a page costs in CPU and bytes. Their records are
pagecodec *extension records* (:mod:`pagecodec.wire.extension`, payload = the compressed page): QEMU
cannot load these streams, every result says so (``format.qemu-loadable: false``) and ``replay
--qemu-stream`` refuses them.

* **compress-zstd**: one zstd frame per page at ``pc-zstd-level`` (zstd's levels: 1 … 22, 0 = zstd's
  default 3, negative = its fast levels down to ``ZSTD_minCLevel()``; checked against the loaded
  library). The system libzstd through ctypes (:func:`~pagecodec.codecs.zstd_ctx.zstd_lib`, the
  delta codecs' bindings), one ``ZSTD_CCtx`` per worker thread, ``ZSTD_compress2`` per page
  into a preallocated buffer: the ctypes call releases the GIL for the whole page, so the workers run
  in parallel. The frame carries no content size, checksum or dictionary id (the content size would cost
  a byte per page and bound nothing the decoder does not bound already: it decompresses into a buffer
  of exactly one page, so a frame can never produce more, and it must produce exactly that much). Without
  a checksum a damaged frame may decode to wrong bytes of the right length, as a damaged LZ4 block may
  and as QEMU's multifd zstd frames may (zlib's Adler-32 catches it in COMPRESS_PAGE): the transport
  guards the bytes, and ``verify`` compares every page.
* **compress-lz4**: an LZ4 block per page (``lz4.block``, fast mode, acceleration
  ``pc-lz4-acceleration``); **compress-lz4hc**: LZ4 HC at ``pc-lz4hc-level``. The payload is the raw block
  without a stored size (the page size is known); ``lz4.block`` releases the GIL while it compresses.

Decoders validate before they write (a rejected record leaves the page as it was) and raise
``DecodeError`` with the stream offset of the payload.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from itertools import repeat
from typing import Any, Callable, ClassVar

import numpy as np

from .. import __version__
from ..errors import ConfigError, DecodeError, PluginError
from ..hookspecs import hookimpl
from ..wire.extension import RAM_SAVE_FLAG_EXTENSION, payload_limit
from ..wire.reader import StreamReader
from .base import Codec, CodecContext, RecordDecoder, Slot, SlotEncoder
from .compress import COMPRESS_THREAD_PARAMETERS, CompressThreadsEncoder, ExtensionRecords, PageCompressor
from .zstd_ctx import C_LEVEL, FRAME_PARAMS, check_level, zstd_lib, zstd_version

__all__ = ["ZstdPages", "Lz4Pages", "ZstdPageDecoder", "Lz4PageDecoder", "CompressZstdCodec", "CompressLz4Codec",
           "CompressLz4hcCodec", "lz4_compress_bound"]

_ZSTD_ERROR_DST_SIZE_TOO_SMALL = 70  # ZSTD_ErrorCode (zstd_errors.h)


class _CCtx:
    """One worker thread's ZSTD_CCtx (freed with the thread's local storage when the thread ends)."""

    def __init__(self, lib: Any) -> None:
        self.lib = lib
        self.ptr = lib.ZSTD_createCCtx()
        if not self.ptr:
            raise MemoryError("ZSTD_createCCtx failed")
        self.level: int | None = None
        for param, value in FRAME_PARAMS:
            self._set(param, value)

    def _set(self, param: int, value: int) -> None:
        ret = self.lib.ZSTD_CCtx_setParameter(self.ptr, param, value)
        if self.lib.ZSTD_isError(ret):
            raise RuntimeError(f"ZSTD_CCtx_setParameter({param}, {value}): {self.lib.ZSTD_getErrorName(ret).decode()}")

    def at_level(self, level: int) -> int:
        """The context's pointer, set to ``level`` (parameters persist across ZSTD_compress2 calls)."""
        if level != self.level:
            self._set(C_LEVEL, level)
            self.level = level
        return self.ptr

    def __del__(self) -> None:
        if getattr(self, "ptr", None):
            self.lib.ZSTD_freeCCtx(self.ptr)
            self.ptr = None


class ZstdPages:
    """zstd frames, one per page, for the compress slot (:class:`~pagecodec.codecs.compress.PageCompressor`).

    Made per migration (per encoder): its thread-local contexts belong to that migration's workers."""

    name = "zstd"

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def version(self) -> str:
        return zstd_version()

    def library_level(self, level: int) -> int:
        """``pc-zstd-level`` is zstd's own level."""
        return level

    def check_level(self, level: int) -> None:
        """ConfigError unless the loaded libzstd has ``level`` (ZSTD_minCLevel … ZSTD_maxCLevel)."""
        check_level(level)

    def compress_run(self, pages: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Each page's zstd frame, back to back, and their lengths: one ``ZSTD_compress2`` per page with
        this thread's context, into this thread's buffer of ``ZSTD_compressBound`` per page, of which the
        frames are copied out at the end (a fresh buffer per run cost ~1.3 µs a page at zstd -5, mostly
        page faults, the copy ~0.5 µs)."""
        lib = zstd_lib()
        cctx = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = self._local.cctx = _CCtx(lib)
        ptr = cctx.at_level(level)
        pages = np.ascontiguousarray(pages)
        k = len(pages)
        ps = pages.shape[1] if pages.ndim == 2 else 0
        bound = int(lib.ZSTD_compressBound(ps))
        out = getattr(self._local, "out", None)
        if out is None or len(out) < k * bound + 1:
            out = self._local.out = np.empty(k * bound + 1, np.uint8)
        lengths = np.empty(k, np.int64)
        fn = lib.ZSTD_compress2
        src, dst = pages.ctypes.data, out.ctypes.data
        cur = 0
        for i in range(k):
            n = fn(ptr, dst + cur, bound, src + i * ps, ps)
            if n > bound:  # an error code ((size_t)-code) is larger than any output
                raise RuntimeError(f"ZSTD_compress2 failed: {lib.ZSTD_getErrorName(n).decode()}")
            lengths[i] = n
            cur += n
        return out[:cur].copy(), lengths


def lz4_compress_bound(n: int) -> int:
    """LZ4_COMPRESSBOUND(n): the largest LZ4 block for ``n`` input bytes."""
    return n + n // 255 + 16


@lru_cache(maxsize=1)
def _lz4() -> tuple[Callable[..., bytes], str]:
    """``lz4.block.compress`` and the library version. The slot calls it with positional arguments
    (source, mode, store_size, acceleration, compression), ~3 µs a page cheaper than keywords; that
    order is the binding's C argument list, not its documented signature, so it is checked here once."""
    try:
        import lz4
        import lz4.block
    except ImportError as e:
        raise PluginError(f"compress-lz4 needs the Python package 'lz4': {e}") from None
    fn = lz4.block.compress
    sample = bytes(range(256)) * 16
    for mode, acc, comp in (("fast", 3, 0), ("high_compression", 0, 4)):
        if fn(sample, mode, False, acc, comp) != fn(sample, mode=mode, store_size=False, acceleration=acc,
                                                     compression=comp):
            raise PluginError(f"lz4 {lz4.__version__}: lz4.block.compress takes its arguments in another order than "
                              f"(source, mode, store_size, acceleration, compression)")
    return fn, f"lz4 {lz4.__version__} (liblz4 {lz4.library_version_string()})"


class Lz4Pages:
    """LZ4 blocks, one per page, for the compress slot: fast mode (``level`` = acceleration) or HC
    (``level`` = HC level). One library call per page (``map``: no bytecode between pages), the GIL
    released while it compresses."""

    def __init__(self, hc: bool) -> None:
        self.name = "lz4hc" if hc else "lz4"
        self._mode = "high_compression" if hc else "fast"
        self._hc = hc

    @property
    def version(self) -> str:
        return _lz4()[1]

    def library_level(self, level: int) -> int:
        """``pc-lz4-acceleration`` / ``pc-lz4hc-level`` are LZ4's own."""
        return level

    def compress_run(self, pages: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Each page's LZ4 block (no stored size), back to back, and their lengths."""
        fn = _lz4()[0]
        acc, comp = (0, level) if self._hc else (level, 0)
        outs = list(map(fn, pages, repeat(self._mode), repeat(False), repeat(acc), repeat(comp)))
        lengths = np.fromiter(map(len, outs), np.int64, len(outs))
        return np.frombuffer(b"".join(outs), np.uint8), lengths


# -- decoders -------------------------------------------------------------------------------------------
class ZstdPageDecoder(RecordDecoder):
    """A compress-zstd record's payload: exactly one zstd frame (nothing after it) that decompresses to
    exactly one page. ``ZSTD_decompressDCtx`` writes into a buffer of one page, so a frame that would
    give more fails there; the page is written only when everything checked. Library errors are told
    apart from sizes without a call: an error code ((size_t)-code) is larger than any size."""

    flag = RAM_SAVE_FLAG_EXTENSION

    def __init__(self) -> None:
        self._lib: Any = None
        self._dctx: int | None = None
        self._out = np.empty(0, np.uint8)  # one page, made on first use
        self._out_ptr = 0

    def _ctx(self, page_size: int) -> tuple[Any, int]:
        if self._dctx is None:  # on first use: every receiver builds every codec's decoders
            self._lib = zstd_lib()
            self._dctx = self._lib.ZSTD_createDCtx()
            if not self._dctx:
                raise MemoryError("ZSTD_createDCtx failed")
        if len(self._out) != page_size:
            self._out = np.empty(page_size, np.uint8)
            self._out_ptr = self._out.ctypes.data
        return self._lib, self._dctx

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        ps = page.shape[0]
        lib, dctx = self._ctx(ps)
        at = r.base + r.pos
        src = bytes(r.get_bytes(r.remaining, "zstd frame"))
        n = len(src)
        size = lib.ZSTD_findFrameCompressedSize(src, n)
        if size != n:
            if size > n:
                raise DecodeError(f"zstd frame of {n} bytes is not a valid frame: "
                                  f"{lib.ZSTD_getErrorName(size).decode()}", at, r.source)
            raise DecodeError(f"zstd payload of {n} bytes: {n - size} bytes after its frame (one frame per page)",
                              at, r.source)
        got = lib.ZSTD_decompressDCtx(dctx, self._out_ptr, ps, src, n)
        if got != ps:
            if got <= ps:
                raise DecodeError(f"zstd frame decodes to {got} bytes, expected exactly a page of {ps} bytes",
                                  at, r.source)
            if lib.ZSTD_getErrorCode(got) == _ZSTD_ERROR_DST_SIZE_TOO_SMALL:
                raise DecodeError(f"zstd frame decodes to more than a page of {ps} bytes", at, r.source)
            raise DecodeError(f"zstd frame does not decompress: {lib.ZSTD_getErrorName(got).decode()}", at, r.source)
        memoryview(page)[:] = memoryview(self._out)  # ~5x cheaper than numpy's page[:] = out

    def __del__(self) -> None:
        if getattr(self, "_dctx", None):
            self._lib.ZSTD_freeDCtx(self._dctx)
            self._dctx = None


class Lz4PageDecoder(RecordDecoder):
    """A compress-lz4/lz4hc record's payload: one raw LZ4 block that decodes to exactly one page
    (``lz4.block.decompress`` into a buffer of one page: a block that would give more fails)."""

    flag = RAM_SAVE_FLAG_EXTENSION

    def __init__(self) -> None:
        self._lz4: Any = None

    def load(self, r: StreamReader, page: np.ndarray) -> None:
        if self._lz4 is None:  # on first use: every receiver builds every codec's decoders
            _lz4()
            import lz4.block

            self._lz4 = lz4.block
        ps = page.shape[0]
        at = r.base + r.pos
        data = r.get_bytes(r.remaining, "lz4 block")
        try:
            out = self._lz4.decompress(data, ps)  # (source, uncompressed_size): the output buffer is one page
        except self._lz4.LZ4BlockError as e:
            raise DecodeError(f"lz4 block of {len(data)} bytes does not decode to a page of {ps} bytes: {e}",
                              at, r.source) from None
        if len(out) != ps:
            raise DecodeError(f"lz4 block decodes to {len(out)} bytes, expected exactly a page of {ps} bytes", at, r.source)
        memoryview(page)[:] = out  # ~5x cheaper than numpy's page[:] = np.frombuffer(out)


# -- codecs ---------------------------------------------------------------------------------------------
class _PageCodec(Codec):
    """Compress threads with another compressor, writing extension records."""

    slots = (Slot.COMPRESS,)
    qemu_format = False
    version = __version__
    #: The pc- parameter holding the compressor's level.
    level_param: ClassVar[str]

    def compressor(self, level: int) -> PageCompressor:
        """A compressor for one migration at ``level`` (ConfigError if the library has no such level)."""
        raise NotImplementedError

    def bound(self, page_size: int) -> int:
        """The largest payload the compressor can write for one page."""
        raise NotImplementedError

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        limit = payload_limit(ctx.page_size)
        if self.bound(ctx.page_size) > limit:  # refused up front: no record may exceed the limit
            raise ConfigError(f"{self.name}: a page of {ctx.page_size} bytes may compress to "
                              f"{self.bound(ctx.page_size)} bytes, more than an extension record's limit of {limit}")
        comp = self.compressor(int(ctx.config.param(self.level_param)))
        return CompressThreadsEncoder(ctx, comp, ExtensionRecords(self.name, self.wire_id), self.level_param)

    def parameters_read(self, config: Any) -> tuple[str, ...]:
        return tuple(p for p in COMPRESS_THREAD_PARAMETERS if p != "compress-level") + (self.level_param,)


class CompressZstdCodec(_PageCodec):
    name = "compress-zstd"
    description = "compress threads, one zstd frame per page at pc-zstd-level (pagecodec extension records)"
    level_param = "pc-zstd-level"

    def unavailable(self, config: Any) -> str | None:
        try:
            zstd_lib()
        except ConfigError as e:
            return str(e)
        return None

    def compressor(self, level: int) -> PageCompressor:
        comp = ZstdPages()
        comp.check_level(level)
        return comp

    def bound(self, page_size: int) -> int:
        return int(zstd_lib().ZSTD_compressBound(page_size))

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [ZstdPageDecoder()]


class CompressLz4Codec(_PageCodec):
    name = "compress-lz4"
    description = "compress threads, one LZ4 block per page, pc-lz4-acceleration (pagecodec extension records)"
    level_param = "pc-lz4-acceleration"
    hc = False

    def unavailable(self, config: Any) -> str | None:
        try:
            _lz4()
        except PluginError as e:
            return str(e)
        return None

    def compressor(self, level: int) -> PageCompressor:
        return Lz4Pages(self.hc)

    def bound(self, page_size: int) -> int:
        return lz4_compress_bound(page_size)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [Lz4PageDecoder()]


class CompressLz4hcCodec(CompressLz4Codec):
    name = "compress-lz4hc"
    description = "compress threads, one LZ4 HC block per page at pc-lz4hc-level (pagecodec extension records)"
    level_param = "pc-lz4hc-level"
    hc = True


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(CompressZstdCodec())
    register(CompressLz4Codec())
    register(CompressLz4hcCodec())
