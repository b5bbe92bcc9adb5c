"""Compress-slot deflate engines: zlib (compress-threads), ISA-L (compress-isal), zlib-ng (compress-zlibng).

    python bench/compress_engines.py [TRACE] [--pages N] [--repeat N] [--level L]

For each engine, in one interleaved run (best of N, so all see the same load of this shared machine):
its library called directly on the same non-zero pages (one thread), the slot with 1 worker thread
(goal: within 1.2x of the library direct) and with 2; bytes and MB/s of page data, against zlib.
First, whether each library's one-shot compress releases the GIL: a pure-Python loop on the main
thread counts while another thread makes one long call (about the loop's rate alone: released; near
zero: held). This does not need a free core, unlike comparing 2 threads with 1.
"""

from __future__ import annotations

import sys
import threading
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compress_common import ENGINES, bench_setup, compress_slot, library_direct  # noqa: E402


def gil_probe(compress, level: int, data: bytes) -> tuple[float, float]:
    """Main-thread loop iterations per second while another thread runs ``compress(data, level, 15)``,
    and the call's duration."""
    done = threading.Event()
    took = [0.0]

    def work() -> None:
        t0 = time.perf_counter()
        compress(data, level, 15)
        took[0] = time.perf_counter() - t0
        done.set()

    th = threading.Thread(target=work)
    n = 0
    th.start()
    while not done.is_set():
        n += 1
    th.join()
    return n / took[0], took[0]


def gil_report(pages, level: int) -> None:
    from isal.isal_zlib import compress as isal_compress
    from zlib_ng.zlib_ng import compress as zlibng_compress

    from pagecodec.codecs.compress_engines import isal_level

    data = pages.tobytes() * 2
    alone = gil_probe(lambda d, lv, w: time.sleep(0.2), 0, b"")[0]  # the same loop beside a thread that only sleeps
    for name, fn, lv in (("zlib", zlib.compress, level), ("isal", isal_compress, isal_level(level)),
                         ("zlib-ng", zlibng_compress, level)):
        rate, took = gil_probe(fn, lv, data)
        print(f"GIL probe {name:8} one {len(data) >> 20} MiB call ({took:.2f} s): main loop at {rate / alone:.0%} of its "
              f"rate alone -> GIL {'released' if rate > alone / 4 else 'held'} while deflating")


def main() -> None:
    a, pages = bench_setup(__doc__)
    gil_report(pages, a.level)
    runs = {}
    for codec, eng in ENGINES.items():
        runs[(codec, "direct")] = lambda c=codec: library_direct(pages, c, a.level)
        runs[(codec, "slot 1t")] = lambda e=eng: compress_slot(pages, 1, a.level, e)
        runs[(codec, "slot 2t")] = lambda e=eng: compress_slot(pages, 2, a.level, e)
    best = {k: float("inf") for k in runs}
    sizes: dict[tuple[str, str], int] = {}
    for _ in range(a.repeat):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            sizes[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    n, nbytes = len(pages), pages.nbytes
    print(f"trace: {a.trace}: {n} non-zero pages ({nbytes / 1e6:.1f} MB), compress-level {a.level}, best of {a.repeat}")
    print(f"{'engine':16} {'library':32} {'direct MB/s':>11} {'slot 1t':>8} {'slot 2t':>8} {'1t/direct':>9} "
          f"{'2t/1t':>6} {'bytes':>12} {'vs zlib':>8} {'MB/s vs zlib':>12}")
    z = ("compress-threads", "slot 1t")
    for codec, eng in ENGINES.items():
        d, s1, s2 = best[(codec, "direct")], best[(codec, "slot 1t")], best[(codec, "slot 2t")]
        print(f"{codec:16} {eng.version:32} {nbytes / d / 1e6:11.1f} {nbytes / s1 / 1e6:8.1f} {nbytes / s2 / 1e6:8.1f} "
              f"{s1 / d:9.2f} {s1 / s2:6.2f} {sizes[(codec, 'slot 1t')]:12,} "
              f"{sizes[(codec, 'slot 1t')] / sizes[z]:8.3f} {best[z] / s1:12.2f}")
    worst = max(best[(c, "slot 1t")] / best[(c, "direct")] for c in ENGINES)
    print(f"worst slot (1 thread) / library direct: {worst:.2f}x  (goal <= 1.2x)")
    for codec in ENGINES:
        if sizes[(codec, "slot 1t")] != sizes[(codec, "direct")]:
            print(f"{codec}: slot bytes differ from the library's: pages past compressBound sent stored "
                  f"({sizes[(codec, 'slot 1t')]:,} vs {sizes[(codec, 'direct')]:,})")


if __name__ == "__main__":
    main()
