"""Faster zlib-compatible deflaters in the compress slot: ``compress-isal`` (ISA-L) and ``compress-zlibng``
(zlib-ng), issue 9.

A ``COMPRESS_PAGE`` record carries one zlib stream per page, and QEMU's destination
(``decompress_data_with_multi_threads``) only checks that the stream is valid, that its length is at
most ``compressBound(page)`` and that it inflates to exactly one page. Any zlib-compatible deflater
therefore writes records QEMU 7.2 loads, and a faster one spends less CPU per page. These codecs are
QEMU's compress threads (:class:`~pagecodec.codecs.compress.CompressThreadsEncoder`: same thread
rotation, buffers, flushes and counters, the same records in the same order) with another deflate
engine; only the payload bytes differ. They write no record of their own, so they bring no decoder:
the destination is the compress-threads codec's ``CompressedPageDecoder``, as in QEMU.

Levels (QEMU's ``compress-level`` 0–9):

* **ISA-L** has four levels, 0–3, and no stored mode (its level 0 is its fastest compressing level).
  Mapping: 0 → 0, 1–3 → 1, 4–6 → 2, 7–9 → 3. ``compress-level`` 1 (QEMU's default, zlib's best speed)
  gets ISA-L 1, whose pages come out about as small as zlib level 1's (−0.6 % on ``linux-mixed``) at
  ~3× its speed; ISA-L 0 is faster again but ~25 % larger, so it is kept for ``compress-level`` 0,
  where zlib would not compress at all and the user asked for the least CPU.
* **zlib-ng** has zlib's levels with zlib's meanings (0 stored … 9 best): the level is passed as is.
  Its level 1 (``deflate_quick``) is ~3× zlib's speed with ~20 % larger pages.

compressBound: zlib-ng's level 1 and ISA-L's level 0 can expand an incompressible page past zlib's
``compressBound`` (4,336 and 5,178 bytes seen for 4 KiB), the limit QEMU's destination enforces
("Invalid compressed data length"): any page an engine deflates past that bound is sent as a stored
zlib stream instead (page + 11 bytes).

The GIL: both libraries' one-shot ``compress(data, level, wbits)`` release it while they deflate
(``bench/compress_engines.py`` probes it: a pure-Python loop in another thread keeps its rate during a
long call), so the slot's
worker threads call it once per page, with ``wbits`` 15 (the zlib wrapper QEMU's destination expects).
The parts of each call that hold the GIL (argument parsing, the output bytes object, ISA-L's level
buffer) are a larger share of a 4 KiB page at these speeds than with zlib; ``bench/compress_engines.py``
measures what the threads gain.
"""

from __future__ import annotations

import importlib
import zlib
from itertools import repeat
from types import ModuleType
from typing import Any, Callable

import numpy as np

from .. import __version__
from ..errors import PluginError
from ..hookspecs import hookimpl
from ..wire.flags import compress_bound
from .base import Codec, CodecContext, RecordDecoder, Slot, SlotEncoder
from .compress import COMPRESS_THREAD_PARAMETERS, CompressThreadsEncoder, DeflateEngine

__all__ = ["ISAL", "ZLIBNG", "ModuleDeflateEngine", "CompressIsalCodec", "CompressZlibngCodec", "isal_level"]

#: zlib wrapper, 32 KiB window: what QEMU's destination inflates (``inflateInit``).
_WBITS = 15


def isal_level(level: int) -> int:
    """ISA-L's level for QEMU's ``compress-level`` (see the module docstring for why)."""
    return 0 if level <= 0 else min(3, (level + 2) // 3)


class ModuleDeflateEngine:
    """A deflate engine calling a Python binding's one-shot ``compress(page, level, wbits)`` per page.

    The binding is imported on first use, so a missing package fails the run that needs it (one line
    naming the package), not the loading of every plugin."""

    def __init__(self, name: str, module: str, package: str, level_map: Callable[[int], int],
                 version: Callable[[ModuleType], str]) -> None:
        self.name = name
        self._module_name = module
        self._package = package
        self._level_map = level_map
        self._version = version
        self._fn: Callable[[object, int, int], bytes] | None = None
        self._ver: str | None = None

    def _load(self) -> Callable[[object, int, int], bytes]:
        if self._fn is None:
            try:
                mod = importlib.import_module(self._module_name)
            except ImportError as e:
                raise PluginError(f"compress engine {self.name!r} needs the Python package {self._package!r}: {e}") from None
            self._ver = self._version(mod)
            self._fn = mod.compress
        return self._fn

    @property
    def version(self) -> str:
        self._load()
        assert self._ver is not None
        return self._ver

    def library_level(self, level: int) -> int:
        return self._level_map(level)

    def compress_run(self, pages: np.ndarray, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Each page's zlib stream (one library call per page, the GIL released while it deflates)."""
        fn = self._load()
        lv = self._level_map(level)
        outs = list(map(fn, pages, repeat(lv), repeat(_WBITS)))  # no bytecode between the calls
        lengths = np.fromiter(map(len, outs), np.int64, len(outs))
        if len(pages):
            # zlib-ng's level 1 (deflate_quick, static Huffman codes) expands incompressible pages past
            # zlib's compressBound (4,330 bytes for a 4 KiB page seen), which QEMU's destination refuses
            # ("Invalid compressed data length"); such a page is sent as a stored zlib stream (page + 11
            # bytes), what zlib's own deflate writes for incompressible data
            for i in np.flatnonzero(lengths > compress_bound(pages.shape[1])).tolist():
                outs[i] = zlib.compress(pages[i], 0)
                lengths[i] = len(outs[i])
        return np.frombuffer(b"".join(outs), np.uint8), lengths


def _isal_version(mod: ModuleType) -> str:
    import isal

    return f"isal {isal.__version__} (ISA-L {isal.ISAL_VERSION})"


def _zlibng_version(mod: ModuleType) -> str:
    import zlib_ng

    return f"zlib-ng {zlib_ng.__version__} (zlib-ng {mod.ZLIBNG_RUNTIME_VERSION})"


ISAL: DeflateEngine = ModuleDeflateEngine("isal", "isal.isal_zlib", "isal", isal_level, _isal_version)
ZLIBNG: DeflateEngine = ModuleDeflateEngine("zlib-ng", "zlib_ng.zlib_ng", "zlib-ng", lambda level: level, _zlibng_version)


class _EngineCodec(Codec):
    """Compress threads with another deflate engine: QEMU's COMPRESS_PAGE records, decoded by the
    compress-threads codec's decoder (a codec registers no decoder for a flag another one decodes)."""

    slots = (Slot.COMPRESS,)
    qemu_format = True
    version = __version__
    engine: DeflateEngine
    parameters = COMPRESS_THREAD_PARAMETERS

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return CompressThreadsEncoder(ctx, self.engine)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return []

    def unavailable(self, config: Any) -> str | None:
        try:
            self.engine.version  # imports the binding
        except PluginError as e:
            return str(e)
        return None


class CompressIsalCodec(_EngineCodec):
    name = "compress-isal"
    description = "compress threads deflating with ISA-L (COMPRESS_PAGE, QEMU 4.1 … 9.0 loads them)"
    engine = ISAL

    def reproducible(self, config: Any) -> bool:
        """isal 1.9's level-1 output depends on memory it did not initialise once two or more threads
        deflate (README, compress engines): one thread is reproducible."""
        return int(config.param("compress-threads")) < 2


class CompressZlibngCodec(_EngineCodec):
    name = "compress-zlibng"
    description = "compress threads deflating with zlib-ng (COMPRESS_PAGE, QEMU 4.1 … 9.0 loads them)"
    engine = ZLIBNG


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(CompressIsalCodec())
    register(CompressZlibngCodec())
