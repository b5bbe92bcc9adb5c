"""Shared set-up for the compress-thread benchmarks: real non-zero pages, the compress slot alone (QEMU's
deflate engines and pagecodec's own zstd/LZ4 codecs) and their libraries called directly."""

from __future__ import annotations

import argparse
import zlib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from itertools import repeat
from pathlib import Path
from typing import Callable

import numpy as np

from pagecodec.chain.config import parse_spec
from pagecodec.codecs.base import CodecContext, Segment, Slot, SlotEncoder, Stage
from pagecodec.codecs.compress import ZLIB, CompressThreadsEncoder, DeflateEngine
from pagecodec.codecs.compress_engines import ISAL, ZLIBNG, isal_level
from pagecodec.codecs.zstd_ctx import zstd_lib
from pagecodec.codecs.zero import zero_page_mask
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.records import RecordSet

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT / "corpora" / "linux-mixed.trace.parquet"
SEGMENT = 512


def nonzero_pages(path: Path = DEFAULT_TRACE, limit: int = 8192) -> np.ndarray:
    """Up to ``limit`` non-zero pages of the trace (round order), copied into one C-contiguous array:
    what the compress slot spends its time on (zero pages cost it a scan only)."""
    out = []
    n = 0
    with TraceReader(path) as r:
        for b in r.batches(max_pages=4096):
            p = b.pages[~zero_page_mask(b.pages)]
            out.append(p.copy())
            n += len(p)
            if n >= limit:
                break
    return np.ascontiguousarray(np.concatenate(out)[:limit])


def bench_setup(description: str, extra: Callable[[argparse.ArgumentParser], object] | None = None,
                ) -> tuple[argparse.Namespace, np.ndarray]:
    """The compress benchmarks' command line (TRACE, --pages, --repeat, --level, and ``extra``'s
    options) and their pages."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--pages", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--level", type=int, default=1)
    if extra is not None:
        extra(ap)
    a = ap.parse_args()
    return a, nonzero_pages(Path(a.trace), a.pages)


def zlib_direct(pages: np.ndarray, level: int = 1) -> int:
    """The baseline: zlib called on each page directly, one thread. Returns the compressed bytes."""
    return sum(len(zlib.compress(p, level)) for p in pages)


def zlib_direct_threads(pages: np.ndarray, threads: int, level: int = 1) -> int:
    """The machine's own ceiling: the same pages split over ``threads`` plain Python threads, each
    calling zlib (a compression object per page: it releases the GIL while it deflates)."""
    from concurrent.futures import ThreadPoolExecutor

    def part(p: np.ndarray) -> int:
        n = 0
        for page in p:
            c = zlib.compressobj(level)
            n += len(c.compress(page)) + len(c.flush())
        return n

    with ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(part, [pages[t::threads] for t in range(threads)]))


#: The deflate engines of the compress slot by codec name.
ENGINES: dict[str, DeflateEngine] = {"compress-threads": ZLIB, "compress-isal": ISAL, "compress-zlibng": ZLIBNG}


def library_direct(pages: np.ndarray, codec: str, level: int = 1) -> int:
    """An engine's library called directly on each page through its Python binding, one thread, at the
    level the slot passes it (ISA-L's mapped level). The baseline of the slot's overhead."""
    if codec == "compress-threads":
        return zlib_direct(pages, level)
    if codec == "compress-isal":
        from isal.isal_zlib import compress

        lv = isal_level(level)
    else:
        from zlib_ng.zlib_ng import compress  # type: ignore[no-redef]

        lv = level
    return sum(len(compress(p, lv, 15)) for p in pages)


def run_slot(enc: SlotEncoder, pages: np.ndarray) -> list[RecordSet]:
    """The compress slot alone: ``pages`` offered in segments of 512 pages of one block, the flush at
    the end of the pass included, the worker pool shut down. Returns the records written."""
    stage = Stage(0, 1, True, False)
    offsets = np.arange(len(pages), dtype=np.int64) * pages.shape[1]
    sets: list[RecordSet] = []
    for lo in range(0, len(pages), SEGMENT):
        seg = Segment(0, 0, offsets[lo : lo + SEGMENT], pages[lo : lo + SEGMENT])
        seg.last_sent_block = 0
        enc.encode(seg, stage)
        sets += seg.records + [rs for em in seg.before for rs in em.sets]
    em = enc.end_of_pass(stage)
    sets += em.sets if em is not None else []
    enc.ram_counters()  # shuts the worker pool down
    return sets


def compress_slot(pages: np.ndarray, threads: int, level: int = 1, engine: DeflateEngine = ZLIB) -> int:
    """The compress slot alone (thread assignment, buffers, records), ``threads`` worker threads, over
    segments of 512 pages of one block; the flush at the end included. Returns the compressed bytes."""
    cfg = parse_spec(f"compress,compress-threads={threads},compress-level={level}")
    ctx = CodecContext(cfg, pages.shape[1], (), (0,))
    sets = run_slot(CompressThreadsEncoder(ctx, engine), pages)
    return sum(int(s.lengths.sum()) for s in sets if s.kind == "compress")


# -- pagecodec's own codecs in the compress slot (compress-zstd, compress-lz4, compress-lz4hc) ---------
@lru_cache(maxsize=1)
def plugins() -> PluginManager:
    return PluginManager(entry_points=False)


def codec_slot(pages: np.ndarray, codec: str, threads: int, level: int) -> list[RecordSet]:
    """The compress slot of a pagecodec codec, built by the codec itself from a config (as a replay
    builds it), with ``threads`` workers at ``level`` (its pc- level parameter). Returns the records."""
    c = plugins().codec(codec)
    cfg = parse_spec(f"compress,compress-codec={codec},compress-threads={threads},{c.level_param}={level}")
    enc = c.encoder(Slot.COMPRESS, CodecContext(cfg, pages.shape[1], (), (0,)))
    return run_slot(enc, pages)


def payloads(sets: list[RecordSet], codec: str) -> list[bytes]:
    """The compressed pages of a codec's records, one bytes object each."""
    out: list[bytes] = []
    for s in sets:
        if s.kind == codec:
            assert s.data is not None and s.starts is not None and s.lengths is not None
            out += [s.data[a : a + n].tobytes() for a, n in zip(s.starts.tolist(), s.lengths.tolist())]
    return out


def _zstd_direct_part(pages: np.ndarray, level: int, first: int = 0, step: int = 1) -> int:
    """The system libzstd called directly on pages first, first + step, …: one ZSTD_CCtx, ZSTD_compress2
    per page into one buffer (the cheapest way to call it from Python, no copy of the pages), with the
    frame parameters compress-zstd uses. ``zstd_lib()``: the library with the one-shot API declared
    (ZSTD_createCCtx returns a pointer: undeclared, ctypes would cut it to an int)."""
    lib = zstd_lib()
    cctx = lib.ZSTD_createCCtx()
    for param, value in ((100, level), (200, 0), (201, 0), (202, 0)):
        lib.ZSTD_CCtx_setParameter(cctx, param, value)
    ps = pages.shape[1]
    bound = lib.ZSTD_compressBound(ps)
    out = np.empty(bound, np.uint8)
    fn, dst, src = lib.ZSTD_compress2, out.ctypes.data, pages.ctypes.data
    total = 0
    for i in range(first, len(pages), step):
        total += fn(cctx, dst, bound, src + i * ps, ps)
    lib.ZSTD_freeCCtx(cctx)
    return total


def _lz4_direct_part(pages: np.ndarray, hc: bool, level: int) -> int:
    """lz4.block called directly, one call per page (``map``: no bytecode between the calls)."""
    import lz4.block

    args = ("high_compression", False, 0, level) if hc else ("fast", False, level, 0)
    return sum(map(len, map(lz4.block.compress, pages, *map(repeat, args))))


def codec_direct(pages: np.ndarray, codec: str, threads: int, level: int) -> int:
    """The codec's library called directly on the same pages, split over ``threads`` plain threads as
    the slot's rotation splits them (page j to thread j mod threads). Returns the compressed bytes."""
    if codec == "compress-zstd":
        def part(t: int) -> int:
            return _zstd_direct_part(pages, level, t, threads)
    else:
        def part(t: int) -> int:
            return _lz4_direct_part(pages[t::threads], codec == "compress-lz4hc", level)
    if threads == 1:
        return part(0)
    with ThreadPoolExecutor(threads) as ex:
        return sum(ex.map(part, range(threads)))


def codec_decode(codec: str, payloads: list[bytes], page_size: int) -> None:
    """The codec's decoder on each payload, one page buffer, one reader per record (as the receiver
    hands it a payload)."""
    dec = plugins().codec(codec).decoders(CodecContext(parse_spec("none"), page_size, (), (0,)))[0]
    page = np.empty(page_size, np.uint8)
    for p in payloads:
        dec.load(StreamReader(p), page)


def library_decode(codec: str, payloads: list[bytes], page_size: int) -> None:
    """The library's one-shot decompression on each payload (the decoders' baseline)."""
    if codec == "compress-zstd":
        lib = zstd_lib()  # ZSTD_createDCtx declared to return a pointer
        dctx = lib.ZSTD_createDCtx()
        out = np.empty(page_size, np.uint8)
        fn, dst = lib.ZSTD_decompressDCtx, out.ctypes.data
        for p in payloads:
            fn(dctx, dst, page_size, p, len(p))
        lib.ZSTD_freeDCtx(dctx)
    else:
        import lz4.block

        for _ in map(lz4.block.decompress, payloads, repeat(page_size)):
            pass
