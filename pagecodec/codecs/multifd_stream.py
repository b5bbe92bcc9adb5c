"""The per-channel compression state of QEMU's multifd channels, both directions.

QEMU keeps one compression stream per channel for the whole migration (``multifd-zlib.c``,
``multifd-zstd.c``); a packet's payload is the stream's output for that packet's normal pages:

* **zlib** — ``deflateInit(level)`` once per channel (zlib wrapper, windowBits 15); per page
  ``deflate(Z_NO_FLUSH)``, the packet's last page ``deflate(Z_SYNC_FLUSH)``. Python's ``zlib`` links
  the same zlib (1.2.13 on Debian) and ``compress(page)`` per page followed by ``flush(Z_SYNC_FLUSH)``
  gives exactly QEMU's bytes (checked against QEMU's calls through ctypes, levels 0…9 — compressing
  a whole packet in one call differs at level 0, whose stored blocks depend on the calls).
* **zstd** — ``ZSTD_initCStream(level)`` once per channel: one endless frame; per page
  ``ZSTD_compressStream2(ZSTD_e_continue)``, the packet's last page ``ZSTD_e_flush``. zstd's output
  depends on the library *version*: the ``zstandard`` wheel bundles its own (1.5.7) while Debian's
  QEMU 7.2 links the system libzstd (1.5.4). So the compressor calls the system ``libzstd.so.1``
  through ctypes, as QEMU does, and only falls back to ``zstandard`` when there is none; the library
  used is reported (:func:`zstd_library`). Decoding is the same for every version.

The receiving side (:class:`ChannelInflater`) keeps the matching per-channel decompression stream and
caps what a packet may produce at its normal pages × page size (QEMU checks the size after the fact;
here a payload that would inflate further is refused without producing the excess: zlib's
``max_length``, libzstd's output buffer; the ``zstandard`` fallback, which takes no limit, is fed in
small pieces and stopped within ~2 MiB of the limit).

Used by the multifd codec (:mod:`pagecodec.codecs.multifd`), the capture splitter
(:mod:`pagecodec.sources.qemu_stream.split`) and the capture importer
(:mod:`pagecodec.sources.qemu_stream.channel`), so there is one implementation of QEMU's calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import zlib
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import DecodeError

__all__ = ["ChannelCompressor", "ChannelInflater", "libzstd", "zstd_library"]

_ZSTD_E_CONTINUE = 0
_ZSTD_E_FLUSH = 1
#: Input bytes per call of the ``zstandard`` fallback's uncapped decompress (see ChannelInflater).
_FALLBACK_CHUNK = 64


class _Buf(ctypes.Structure):
    """ZSTD_inBuffer / ZSTD_outBuffer: pointer, size, pos."""

    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t), ("pos", ctypes.c_size_t)]


@lru_cache(maxsize=1)
def libzstd() -> Any:
    """The system libzstd (the one QEMU links), or None, with the streaming calls of the multifd
    channels bound (:func:`pagecodec.codecs.zstd_ctx.zstd_lib` binds the rest pagecodec's own zstd
    codecs call)."""
    name = ctypes.util.find_library("zstd")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    sz, vp, bp = ctypes.c_size_t, ctypes.c_void_p, ctypes.POINTER(_Buf)
    lib.ZSTD_versionString.restype = ctypes.c_char_p
    lib.ZSTD_createCStream.restype = vp
    lib.ZSTD_freeCStream.argtypes = [vp]
    lib.ZSTD_initCStream.argtypes = [vp, ctypes.c_int]
    lib.ZSTD_initCStream.restype = sz
    lib.ZSTD_compressStream2.argtypes = [vp, bp, bp, ctypes.c_int]
    lib.ZSTD_compressStream2.restype = sz
    lib.ZSTD_compressBound.argtypes = [sz]
    lib.ZSTD_compressBound.restype = sz
    lib.ZSTD_createDStream.restype = vp
    lib.ZSTD_freeDStream.argtypes = [vp]
    lib.ZSTD_initDStream.argtypes = [vp]
    lib.ZSTD_initDStream.restype = sz
    lib.ZSTD_decompressStream.argtypes = [vp, bp, bp]
    lib.ZSTD_decompressStream.restype = sz
    lib.ZSTD_isError.argtypes = [sz]
    lib.ZSTD_isError.restype = ctypes.c_uint
    lib.ZSTD_getErrorName.argtypes = [sz]
    lib.ZSTD_getErrorName.restype = ctypes.c_char_p
    return lib


def zstd_library() -> str:
    """Which zstd compresses multifd payloads: ``libzstd <version> (system)`` or ``zstandard <version>``."""
    lib = libzstd()
    if lib is not None:
        return f"libzstd {lib.ZSTD_versionString().decode()} (system)"
    import zstandard

    return f"zstandard {zstandard.__version__} (bundled libzstd {'.'.join(map(str, zstandard.ZSTD_VERSION))})"


class _SystemZstdCompressor:
    """One channel's ZSTD_CStream with QEMU's calls (``zstd_send_prepare``)."""

    def __init__(self, lib: Any, level: int, packet_bytes: int) -> None:
        self.lib = lib
        self.zcs = lib.ZSTD_createCStream()
        if not self.zcs:
            raise MemoryError("ZSTD_createCStream failed")
        self._check(lib.ZSTD_initCStream(self.zcs, level), "ZSTD_initCStream")
        self.cap = lib.ZSTD_compressBound(packet_bytes)
        self.out = ctypes.create_string_buffer(self.cap)

    def _check(self, ret: int, what: str) -> int:
        if self.lib.ZSTD_isError(ret):
            raise RuntimeError(f"{what}: {self.lib.ZSTD_getErrorName(ret).decode()}")
        return ret

    def packet(self, pages: np.ndarray) -> bytes:
        lib, n = self.lib, len(pages)
        ob = _Buf(ctypes.addressof(self.out), self.cap, 0)
        for i in range(n):
            page = np.ascontiguousarray(pages[i])
            ib = _Buf(page.ctypes.data, page.nbytes, 0)
            mode = _ZSTD_E_FLUSH if i == n - 1 else _ZSTD_E_CONTINUE
            while True:
                ret = self._check(lib.ZSTD_compressStream2(self.zcs, ctypes.byref(ob), ctypes.byref(ib), mode),
                                  "ZSTD_compressStream2")
                if not (ret > 0 and ib.pos < ib.size and ob.pos < ob.size):
                    break
            if ret > 0 and ib.pos < ib.size:
                raise RuntimeError("compressStream buffer too small")
        return ctypes.string_at(self.out, ob.pos)

    def __del__(self) -> None:
        if getattr(self, "zcs", None):
            self.lib.ZSTD_freeCStream(self.zcs)
            self.zcs = None


class ChannelCompressor:
    """One channel's compression stream for the whole migration; :meth:`packet` gives a payload.

    ``method`` is QEMU's ``multifd-compression`` (none, zlib, zstd); ``level`` its
    ``multifd-zlib-level`` / ``multifd-zstd-level``. Per-page calls, as QEMU makes them: the output
    of zlib level 0 and of zstd depends on how the input is handed over."""

    def __init__(self, method: str, level: int = 1, packet_bytes: int = 512 * 1024) -> None:
        self.method = method
        self._z: Any = None
        if method == "zlib":
            self._z = zlib.compressobj(level, zlib.DEFLATED, 15)
        elif method == "zstd":
            lib = libzstd()
            if lib is not None:
                self._z = _SystemZstdCompressor(lib, level, packet_bytes)
            else:
                import zstandard

                self._z = zstandard.ZstdCompressor(level=level).compressobj()
        elif method != "none":
            raise ValueError(f"multifd compression {method!r}: choose none, zlib or zstd")

    def packet(self, pages: np.ndarray) -> bytes | np.ndarray:
        """The payload for ``pages`` (k, page_size), k ≥ 1: the pages themselves (none) or the
        stream's output for them, flushed at the last page."""
        if self.method == "none":
            return pages
        z = self._z
        if self.method == "zlib":
            parts = [z.compress(p) for p in pages]
            parts.append(z.flush(zlib.Z_SYNC_FLUSH))
            return b"".join(parts)
        if isinstance(z, _SystemZstdCompressor):
            return z.packet(pages)
        import zstandard

        parts = [z.compress(p) for p in pages]
        parts.append(z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        return b"".join(parts)


class ChannelInflater:
    """One channel's decompression stream (zlib: one inflate stream, zstd: one endless frame).

    :meth:`packet` turns a payload into its pages, refusing output beyond ``n`` pages (the payload
    may only inflate to normal_pages × page size), a short result, unconsumed input, or a stream
    that ends (QEMU never finishes it)."""

    def __init__(self, method: str, source: str | None = None) -> None:
        self.method = method
        self.source = source
        self._d: Any = None
        self._lib = None
        if method == "zlib":
            self._d = zlib.decompressobj()
        elif method == "zstd":
            self._lib = libzstd()
            if self._lib is not None:
                self._d = self._lib.ZSTD_createDStream()
                self._lib.ZSTD_initDStream(self._d)
            else:
                import zstandard

                self._d = zstandard.ZstdDecompressor().decompressobj()
        elif method != "none":
            raise ValueError(f"multifd compression {method!r}: choose none, zlib or zstd")

    def __del__(self) -> None:
        if self._lib is not None and self._d:
            self._lib.ZSTD_freeDStream(self._d)
            self._d = None

    def packet(self, data: np.ndarray | bytes, n: int, page_size: int, what: str, at: int | None) -> np.ndarray:
        """The ``n`` pages of a payload; ``what`` names the packet and ``at`` is the payload's offset
        for a DecodeError."""
        want = n * page_size
        if self.method == "none":
            arr = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
            if arr.nbytes != want:
                raise DecodeError(f"{what}: payload of {arr.nbytes} bytes, expected {n} pages = {want} bytes", at, self.source)
            return arr.reshape(n, page_size)
        raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
        if self.method == "zlib":
            d = self._d
            try:
                out = d.decompress(raw, want + 1)
            except zlib.error as e:
                raise DecodeError(f"zlib payload of {what} does not inflate: {e} (one deflate stream runs "
                                  f"through all packets of a channel)", at, self.source) from None
            if d.eof or d.unused_data:
                raise DecodeError(f"zlib payload of {what} ends the channel's deflate stream (QEMU never finishes "
                                  f"it: Z_SYNC_FLUSH per packet)", at, self.source)
            left = len(d.unconsumed_tail)
        elif self._lib is not None:
            out, left = self._zstd_system(raw, want, what, at)
        else:
            out, left = self._zstd_bundled(raw, want, what, at)
        if len(out) > want:
            raise DecodeError(f"{self.method} payload of {what} inflates beyond {n} pages = {want} bytes "
                              f"(refused at {want + 1} bytes)", at, self.source)
        if len(out) != want:
            raise DecodeError(f"{self.method} payload of {what} gives {len(out)} bytes, expected {n} pages = "
                              f"{want} bytes", at, self.source)
        if left:
            raise DecodeError(f"{self.method} payload of {what}: {left} bytes left over after its {n} pages",
                              at, self.source)
        return np.frombuffer(out, np.uint8).reshape(n, page_size)

    def _zstd_bundled(self, raw: bytes, want: int, what: str, at: int | None) -> tuple[bytes, int]:
        """The ``zstandard`` wheel's stream (no system libzstd): its ``decompress`` takes no output
        limit, so the payload goes in :data:`_FALLBACK_CHUNK` bytes at a time and stops once more than
        ``want`` bytes came out. A chunk completes at most a few blocks of ≤ 128 KiB, so a payload that
        inflates without bound costs at most ~2 MiB past ``want``, never what it claims."""
        import zstandard

        parts: list[bytes] = []
        got = 0
        pos = 0
        try:
            while pos < len(raw) and got <= want:
                piece = self._d.decompress(raw[pos : pos + _FALLBACK_CHUNK])
                pos += _FALLBACK_CHUNK
                parts.append(piece)
                got += len(piece)
        except zstandard.ZstdError as e:
            raise DecodeError(f"zstd payload of {what} does not decompress: {e}", at, self.source) from None
        out = b"".join(parts)
        return out[: want + 1], max(0, len(raw) - pos)

    def _zstd_system(self, raw: bytes, want: int, what: str, at: int | None) -> tuple[bytes, int]:
        lib = self._lib
        src = ctypes.create_string_buffer(raw, len(raw))
        dst = ctypes.create_string_buffer(want + 1)
        ib = _Buf(ctypes.addressof(src), len(raw), 0)
        ob = _Buf(ctypes.addressof(dst), want + 1, 0)
        for drain in (False, True):  # then one call more: a flushed block may still be buffered
            while (drain or ib.pos < ib.size) and ob.pos < ob.size:
                before = (ib.pos, ob.pos)
                ret = lib.ZSTD_decompressStream(self._d, ctypes.byref(ob), ctypes.byref(ib))
                if lib.ZSTD_isError(ret):
                    raise DecodeError(f"zstd payload of {what} does not decompress: "
                                      f"{lib.ZSTD_getErrorName(ret).decode()}", at, self.source)
                if (ib.pos, ob.pos) == before or drain:
                    break
        return ctypes.string_at(dst, ob.pos), ib.size - ib.pos
