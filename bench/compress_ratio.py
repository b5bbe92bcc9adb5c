"""Compress threads: the slot with 1 and 2 worker threads against zlib called directly, in one run.

    python bench/compress_ratio.py [TRACE] [--pages N] [--repeat N]

Goals (issue #8, this 2-core machine, zlib level 1): 2 threads >= 1.7x one thread; the slot with one
thread within 20% of calling zlib on the same pages directly. Beside them, the machine's own ceiling:
zlib on the same pages split over 2 plain threads, without pagecodec. The measurements are
interleaved and the best of N of each is kept, so all see the same machine load.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compress_common import (  # noqa: E402
    bench_setup,
    compress_slot,
    zlib_direct,
    zlib_direct_threads,
)


def main() -> None:
    a, pages = bench_setup(__doc__)
    runs = {"zlib direct": lambda: zlib_direct(pages, a.level),
            "zlib, 2 threads": lambda: zlib_direct_threads(pages, 2, a.level),
            "slot, 1 thread": lambda: compress_slot(pages, 1, a.level),
            "slot, 2 threads": lambda: compress_slot(pages, 2, a.level)}
    best = {k: float("inf") for k in runs}
    sizes = {}
    for _ in range(a.repeat):
        for k, fn in runs.items():
            t0 = time.perf_counter()
            sizes[k] = fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    n, nbytes = len(pages), pages.nbytes
    print(f"trace: {a.trace}: {n} non-zero pages ({nbytes / 1e6:.1f} MB), zlib level {a.level}, best of {a.repeat}")
    print(f"{'':16} {'pages/s':>10} {'MB/s':>8} {'out bytes':>12}")
    for k, t in best.items():
        print(f"{k:16} {n / t:10,.0f} {nbytes / t / 1e6:8.1f} {sizes[k]:12,}")
    assert len(set(sizes.values())) == 1, f"the slot wrote other zlib bytes than zlib itself: {sizes}"
    over = best["slot, 1 thread"] / best["zlib direct"] - 1
    speed = best["slot, 1 thread"] / best["slot, 2 threads"]
    print(f"slot overhead over zlib direct (1 thread): {over:+.1%}  (goal <= +20%)")
    print(f"2 threads vs 1 thread: {speed:.2f}x  (goal >= 1.7x)")
    ceiling = best["zlib direct"] / best["zlib, 2 threads"]
    print(f"the machine's ceiling, zlib on 2 plain threads vs 1: {ceiling:.2f}x; the slot reaches "
          f"{best['zlib, 2 threads'] / best['slot, 2 threads']:.0%} of that 2-thread speed")


if __name__ == "__main__":
    main()
