"""Replay throughput of the default trace (zero + raw pages) against a numpy copy, in one run.

    python bench/replay_ratio.py [TRACE] [--repeat N]

Interleaves the two measurements and keeps the best of N of each, so both see the same machine load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _replay_common import DEFAULT_TRACE, load_rounds, numpy_copy, page_count, replay_in_memory  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args()
    import time

    reader, rounds = load_rounds(Path(a.trace))
    n = page_count(rounds)
    nbytes = n * reader.meta.page_size
    out = np.empty((4096, reader.meta.page_size), np.uint8)
    t_rep, t_cpy = float("inf"), float("inf")
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        numpy_copy(rounds, out)
        t_cpy = min(t_cpy, time.perf_counter() - t0)
        t0 = time.perf_counter()
        stats = replay_in_memory(reader, rounds)
        t_rep = min(t_rep, time.perf_counter() - t0)
    print(f"trace: {a.trace}: {n} pages, {nbytes / 1e9:.3f} GB of page data, {reader.num_rounds} rounds")
    print(f"zero pages {stats.ram.duplicate}, raw pages {stats.ram.normal}, wire {sum(stats.wire.values())} bytes")
    print(f"{'':14} {'pages/s':>12} {'GB/s':>8}")
    print(f"{'replay none':14} {n / t_rep:12,.0f} {nbytes / t_rep / 1e9:8.2f}")
    print(f"{'numpy copy':14} {n / t_cpy:12,.0f} {nbytes / t_cpy / 1e9:8.2f}")
    print(f"ratio replay/copy: {t_cpy / t_rep:.2f}  (goal >= 0.30; best of {a.repeat}, interleaved)")
    print("cpu by stage (s, last run):", {k: round(v, 4) for k, v in stats.cpu.seconds().items()})


if __name__ == "__main__":
    main()
