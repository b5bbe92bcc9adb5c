"""zstd compression and decompression contexts of the system libzstd, for pagecodec's delta codecs.

Why the C library through ctypes and not the ``zstandard`` binding: the delta codecs need two things
the binding does not offer per call, *patch-from* (``ZSTD_CCtx_refPrefix`` / ``ZSTD_DCtx_refPrefix``:
the destination's current copy of a page as the prefix of the new page's frame) and a decoder whose
output is bounded by the caller's buffer (a hostile record can never make it allocate more). The
library is the one QEMU links (Debian's ``libzstd.so.1``), loaded once by
:func:`pagecodec.codecs.multifd_stream.libzstd`; every ctypes call releases the GIL.

Memory of a hostile stream is bounded too: compressors set ``windowLog`` (:data:`WINDOW_LOG`, or
the configured long window) and decompressors refuse frames that ask for a larger window than their
configuration allows (``ZSTD_d_windowLogMax``), instead of zstd's default limit of 128 MiB.
"""

from __future__ import annotations

import ctypes
import mmap
from functools import lru_cache
from typing import Any

import numpy as np

from ..errors import ConfigError, DecodeError
from .multifd_stream import _Buf, libzstd
from .page_cache import MADV_POPULATE_WRITE

__all__ = ["WINDOW_LOG", "C_LEVEL", "FRAME_PARAMS", "zstd_lib", "zstd_version", "level_range", "check_level", "check_long", "Compressor",
           "Decompressor"]

#: Window of pagecodec's zstd streams without ``pc-zstd-long``: 1 MiB (256 pages of 4 KiB).
WINDOW_LOG = 20
#: The largest long window (``pc-zstd-long``): 128 MiB, zstd's default limit for decoders.
LONG_WINDOW_LOG_MAX = 27

# zstd.h (stable API): parameter and directive numbers
C_LEVEL, _C_WINDOWLOG, _C_LDM = 100, 101, 160
#: The frame fields every pagecodec zstd frame leaves out (content size, checksum, dictionary id): a
#: record says what its frame stands for, and the destination checks it gives exactly that.
FRAME_PARAMS = ((200, 0), (201, 0), (202, 0))
_D_WINDOWLOG_MAX = 100
_E_CONTINUE, _E_FLUSH = 0, 1
_RESET_SESSION = 1


@lru_cache(maxsize=1)
def zstd_lib() -> Any:
    """The system libzstd with the prototypes pagecodec's zstd codecs call (delta codecs, compress-zstd);
    ConfigError if there is none, or it lacks a call (libzstd ≥ 1.4.0 has them all)."""
    lib = libzstd()
    if lib is None:
        raise ConfigError("pagecodec's zstd codecs need the system libzstd (libzstd.so.1, Debian package libzstd1)")
    vp, sz, i = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int
    bp = ctypes.POINTER(_Buf)
    for name, args, res in (
        ("ZSTD_createCCtx", [], vp), ("ZSTD_freeCCtx", [vp], sz),
        ("ZSTD_createDCtx", [], vp), ("ZSTD_freeDCtx", [vp], sz),
        ("ZSTD_CCtx_setParameter", [vp, i, i], sz), ("ZSTD_DCtx_setParameter", [vp, i, i], sz),
        ("ZSTD_CCtx_reset", [vp, i], sz), ("ZSTD_DCtx_reset", [vp, i], sz),
        ("ZSTD_CCtx_refPrefix", [vp, vp, sz], sz), ("ZSTD_DCtx_refPrefix", [vp, vp, sz], sz),
        ("ZSTD_compress2", [vp, vp, sz, vp, sz], sz), ("ZSTD_decompressDCtx", [vp, vp, sz, vp, sz], sz),
        ("ZSTD_compressStream2", [vp, bp, bp, i], sz), ("ZSTD_decompressStream", [vp, bp, bp], sz),
        ("ZSTD_minCLevel", [], i), ("ZSTD_maxCLevel", [], i),
        ("ZSTD_createCCtx_advanced", [_CustomMem], vp), ("ZSTD_createDCtx_advanced", [_CustomMem], vp),
        ("ZSTD_findFrameCompressedSize", [vp, sz], sz), ("ZSTD_getErrorCode", [sz], i),
    ):
        fn = getattr(lib, name, None)
        if fn is None:
            raise ConfigError(f"pagecodec's zstd codecs need {name}, which the system libzstd "
                              f"{lib.ZSTD_versionString().decode()} lacks (libzstd ≥ 1.4.0 has it)")
        fn.argtypes, fn.restype = args, res
    return lib


def zstd_version() -> str:
    """``libzstd <version> (system)``, for results."""
    return f"libzstd {zstd_lib().ZSTD_versionString().decode()} (system)"


def level_range() -> tuple[int, int]:
    """The levels this libzstd accepts: ZSTD_minCLevel() … ZSTD_maxCLevel()."""
    lib = zstd_lib()
    return int(lib.ZSTD_minCLevel()), int(lib.ZSTD_maxCLevel())


def check_level(level: int) -> int:
    """``pc-zstd-level`` checked against the library (negative levels are zstd's fast levels)."""
    lo, hi = level_range()
    if not lo <= level <= hi:
        raise ConfigError(f"pc-zstd-level={level} out of range {lo}..{hi} ({zstd_version()}: ZSTD_minCLevel() .. "
                          f"ZSTD_maxCLevel())")
    return level


def check_long(window_log: int) -> int:
    """``pc-zstd-long``: 0 (off) or the log2 of the long window, :data:`WINDOW_LOG` … 27."""
    if window_log and not WINDOW_LOG <= window_log <= LONG_WINDOW_LOG_MAX:
        raise ConfigError(f"pc-zstd-long={window_log}: 0 (off) or a window of 2^{WINDOW_LOG} … "
                          f"2^{LONG_WINDOW_LOG_MAX} bytes")
    return window_log


_ALLOC = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_FREE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


class _CustomMem(ctypes.Structure):
    _fields_ = [("customAlloc", _ALLOC), ("customFree", _FREE), ("opaque", ctypes.c_void_p)]


class _PopulatedMemory:
    """zstd's allocations (``ZSTD_customMem``) as anonymous memory faulted in at once.

    Why: a context's workspace (its window buffer and match tables: megabytes, 16+ MiB with a long
    window) is otherwise faulted in page by page as zstd first writes it, which on this project's
    virtual machine costs about 3 ms of CPU per MiB; ``MADV_POPULATE_WRITE`` costs about a quarter
    of that. zstd allocates a context's workspace once and reuses it, so the callbacks (Python,
    holding the GIL) run a handful of times per migration. Where the kernel lacks the call, the
    memory faults in as usual."""

    def __init__(self) -> None:
        self.maps: dict[int, mmap.mmap] = {}
        self.alloc = _ALLOC(self._alloc)
        self.free = _FREE(self._free)
        self.mem = _CustomMem(self.alloc, self.free, None)

    def _alloc(self, _opaque: int | None, size: int) -> int:
        try:
            m = mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except (OSError, ValueError):
            return 0  # zstd reports the allocation failure
        try:
            m.madvise(MADV_POPULATE_WRITE)
        except (OSError, ValueError, AttributeError):
            pass
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        self.maps[addr] = m
        return addr

    def _free(self, _opaque: int | None, address: int | None) -> None:
        if address:
            self.maps.pop(address, None)  # the mmap closes when the last reference goes (the buffer export
            # from addressof(from_buffer) is released with the c_char object, already gone)


def _error(lib: Any, ret: int) -> str | None:
    return lib.ZSTD_getErrorName(ret).decode() if lib.ZSTD_isError(ret) else None


class Compressor:
    """One ZSTD_CCtx: single frames (optionally against a prefix) or one endless flushed stream.

    Frames leave out the content size, checksum and dictionary id (the record says what a frame
    stands for; a page is verified by the destination's check of its size). ``long_window`` (a log2,
    0: off) turns on long-distance matching with that window: a stream then finds data sent up to
    2^long_window bytes earlier (a page a guest moved, sorted or copied since the bulk stage)."""

    def __init__(self, level: int, capacity: int, long_window: int = 0) -> None:
        lib = self.lib = zstd_lib()
        self._memory = _PopulatedMemory()
        self.cctx = lib.ZSTD_createCCtx_advanced(self._memory.mem)
        if not self.cctx:
            raise MemoryError("ZSTD_createCCtx failed")
        params = [(C_LEVEL, level), (_C_WINDOWLOG, long_window or WINDOW_LOG), *FRAME_PARAMS]
        if long_window:
            params.append((_C_LDM, 1))
        for p, v in params:
            self._check(lib.ZSTD_CCtx_setParameter(self.cctx, p, v), "ZSTD_CCtx_setParameter")
        self.capacity = capacity + (capacity >> 7) + 1024  # ≥ ZSTD_compressBound(capacity)
        self.out = np.empty(self.capacity, np.uint8)
        self._ob = _Buf(self.out.ctypes.data, self.capacity, 0)
        self._ib = _Buf(0, 0, 0)

    def _check(self, ret: int, what: str) -> int:
        err = _error(self.lib, ret)
        if err is not None:
            raise RuntimeError(f"{what}: {err}")
        return ret

    def frame(self, src: np.ndarray, prefix: np.ndarray | None = None) -> np.ndarray:
        """One frame of ``src`` (contiguous), matched against ``prefix`` when given (patch-from); a view
        of the compressor's buffer, valid until the next call."""
        lib = self.lib
        if prefix is not None:
            self._check(lib.ZSTD_CCtx_refPrefix(self.cctx, prefix.ctypes.data, prefix.nbytes), "ZSTD_CCtx_refPrefix")
        n = self._check(lib.ZSTD_compress2(self.cctx, self.out.ctypes.data, self.capacity, src.ctypes.data, src.nbytes),
                        "ZSTD_compress2")
        return self.out[:n]

    def flush(self, src: np.ndarray) -> np.ndarray:
        """``src`` (contiguous, at most ``capacity`` bytes) through the context's one endless frame,
        flushed (ZSTD_e_flush): everything needed to decode ``src`` is in the output, and later calls
        may still match into it (window :data:`WINDOW_LOG`). A view valid until the next call."""
        return self.flush_pieces([src.ctypes.data], [src.nbytes])

    def flush_pieces(self, ptrs: list[int], sizes: list[int]) -> np.ndarray:
        """Like :meth:`flush` for input in several pieces of memory (addresses and sizes, alive for the
        call), fed in order (ZSTD_e_continue, the last ZSTD_e_flush): zstd copies its input into its
        window anyway, so a caller whose data lies in a few pieces need not gather them first."""
        lib, ob, ib = self.lib, self._ob, self._ib
        ob.pos = 0
        last = len(ptrs) - 1
        for i, (ptr, size) in enumerate(zip(ptrs, sizes)):
            ib.ptr, ib.size, ib.pos = ptr, size, 0
            mode = _E_FLUSH if i == last else _E_CONTINUE
            while True:
                ret = self._check(lib.ZSTD_compressStream2(self.cctx, ctypes.byref(ob), ctypes.byref(ib), mode),
                                  "ZSTD_compressStream2")
                if ib.pos == ib.size and (mode == _E_CONTINUE or ret == 0):
                    break
                if ob.pos == ob.size:
                    raise RuntimeError("zstd stream output larger than its buffer")
        return self.out[: ob.pos]

    def __del__(self) -> None:
        if getattr(self, "cctx", None):
            self.lib.ZSTD_freeCCtx(self.cctx)
            self.cctx = None


class Decompressor:
    """One ZSTD_DCtx whose output never exceeds what the caller asks for, and whose window (the memory
    a stream may make it keep) is at most 2^``window_log`` bytes."""

    def __init__(self, window_log: int = WINDOW_LOG) -> None:
        lib = self.lib = zstd_lib()
        self._memory = _PopulatedMemory()
        self.dctx = lib.ZSTD_createDCtx_advanced(self._memory.mem)
        if not self.dctx:
            raise MemoryError("ZSTD_createDCtx failed")
        ret = lib.ZSTD_DCtx_setParameter(self.dctx, _D_WINDOWLOG_MAX, max(window_log, WINDOW_LOG))
        if _error(lib, ret):
            raise RuntimeError(f"ZSTD_DCtx_setParameter: {_error(lib, ret)}")
        self._ob = _Buf(0, 0, 0)
        self._ib = _Buf(0, 0, 0)

    def frame(self, src: np.ndarray, out: np.ndarray, at: int, source: str | None,
              prefix: np.ndarray | None = None) -> None:
        """Decode the frame(s) in ``src`` into exactly ``out`` (contiguous; against ``prefix`` when given,
        which must not overlap ``out``): DecodeError at ``at`` for anything that does not give exactly
        ``out.nbytes`` bytes. zstd cannot write past ``out``."""
        lib = self.lib
        if prefix is not None:
            ret = lib.ZSTD_DCtx_refPrefix(self.dctx, prefix.ctypes.data, prefix.nbytes)
            if _error(lib, ret):
                raise RuntimeError(f"ZSTD_DCtx_refPrefix: {_error(lib, ret)}")
        src = np.ascontiguousarray(src)
        ret = lib.ZSTD_decompressDCtx(self.dctx, out.ctypes.data, out.nbytes, src.ctypes.data, src.nbytes)
        err = _error(lib, ret)
        if err is not None:
            lib.ZSTD_DCtx_reset(self.dctx, _RESET_SESSION)
            raise DecodeError(f"zstd frame does not decode to {out.nbytes} bytes: {err}", at, source)
        if ret != out.nbytes:
            raise DecodeError(f"zstd frame gives {ret} bytes, expected {out.nbytes}", at, source)

    def stream(self, src: np.ndarray, out: np.ndarray, at: int, source: str | None) -> None:
        """Feed ``src`` (a flushed piece of the peer's endless frame) and fill exactly ``out``: DecodeError
        if the piece gives less, would give more (refused without producing the excess), ends the
        frame, or leaves input unread. Bad input leaves the stream unusable, as in QEMU's channels."""
        lib, ob, ib = self.lib, self._ob, self._ib
        src = np.ascontiguousarray(src)
        spare = np.empty(1, np.uint8)
        ib.ptr, ib.size, ib.pos = src.ctypes.data, src.nbytes, 0
        ob.ptr, ob.size, ob.pos = out.ctypes.data, out.nbytes, 0
        while True:
            before = (ib.pos, ob.pos)
            ret = lib.ZSTD_decompressStream(self.dctx, ctypes.byref(ob), ctypes.byref(ib))
            err = _error(lib, ret)
            if err is not None:
                raise DecodeError(f"zstd stream data does not decode: {err}", at, source)
            if ret == 0:
                raise DecodeError("zstd stream data ends the stream's frame (pagecodec's streams never end it)",
                                  at, source)
            if ob.pos == ob.size or (ib.pos, ob.pos) == before:
                break
        if ob.pos != ob.size:
            raise DecodeError(f"zstd stream data gives {ob.pos} bytes, expected {out.nbytes}", at, source)
        # nothing more may come out of this piece: one more call with a one-byte window must give nothing
        ob.ptr, ob.size, ob.pos = spare.ctypes.data, 1, 0
        ret = lib.ZSTD_decompressStream(self.dctx, ctypes.byref(ob), ctypes.byref(ib))
        err = _error(lib, ret)
        if err is not None:
            raise DecodeError(f"zstd stream data does not decode: {err}", at, source)
        if ob.pos:
            raise DecodeError(f"zstd stream data gives more than the {out.nbytes} bytes its record declares",
                              at, source)
        if ib.pos != ib.size:
            raise DecodeError(f"zstd stream data: {ib.size - ib.pos} bytes left unread after {out.nbytes} bytes "
                              f"of output", at, source)

    def __del__(self) -> None:
        if getattr(self, "dctx", None):
            self.lib.ZSTD_freeDCtx(self.dctx)
            self.dctx = None
