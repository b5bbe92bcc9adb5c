"""Shared set-up for the compress-thread benchmarks: real non-zero pages and the compress slot alone."""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

import numpy as np

from pagecodec.chain.config import parse_spec
from pagecodec.codecs.base import CodecContext, Segment, Stage
from pagecodec.codecs.compress import ZLIB, CompressThreadsEncoder, DeflateEngine
from pagecodec.codecs.compress_engines import ISAL, ZLIBNG, isal_level
from pagecodec.codecs.zero import zero_page_mask
from pagecodec.trace.format import TraceReader

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


def bench_setup(description: str) -> tuple[argparse.Namespace, np.ndarray]:
    """The compress benchmarks' command line (TRACE, --pages, --repeat, --level) and their pages."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--pages", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--level", type=int, default=1)
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


def compress_slot(pages: np.ndarray, threads: int, level: int = 1, engine: DeflateEngine = ZLIB) -> int:
    """The compress slot alone (thread assignment, buffers, records), ``threads`` worker threads, over
    segments of 512 pages of one block; the flush at the end included. Returns the compressed bytes."""
    cfg = parse_spec(f"compress,compress-threads={threads},compress-level={level}")
    ctx = CodecContext(cfg, pages.shape[1], (), (0,))
    enc = CompressThreadsEncoder(ctx, engine)
    stage = Stage(0, 1, True, False)
    offsets = np.arange(len(pages), dtype=np.int64) * pages.shape[1]
    sets = []
    for lo in range(0, len(pages), SEGMENT):
        seg = Segment(0, 0, offsets[lo : lo + SEGMENT], pages[lo : lo + SEGMENT])
        seg.last_sent_block = 0
        enc.encode(seg, stage)
        sets += seg.records + [rs for em in seg.before for rs in em.sets]
    em = enc.end_of_pass(stage)
    sets += em.sets if em is not None else []
    enc.ram_counters()  # shuts the worker pool down
    return sum(int(s.lengths.sum()) for s in sets if s.kind == "compress")
