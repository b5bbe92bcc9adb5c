"""How fast the machine was when a run was measured: two fixed kernels timed beside every sample.

Why: CPU seconds are only comparable between two bench invocations if the machine was the same
machine both times, and a shared host is not. On this project's 2-vCPU cloud VM two invocations of
``bench --repeat 5`` in a row (2026-11-30 07:37 and 07:46, pinned, nothing else running) measured the
memcpy floor at 0.18-0.20 s/GiB in the first and 0.09-0.10 s/GiB in the second — the same numpy
copy, twice as slow for nine minutes — and every other row 10-50 % slower with it, compute-heavy
codecs less than copy-heavy ones. No statistic over one invocation's samples can undo that; what the
bench can do is measure it and say so, so that ``report`` does not call the machine's change the
code's.

So every sample is preceded by two small kernels, on the same CPU: ``copy``, numpy copying 16 MiB
(memory-bound: beyond the L2 cache of the machines this runs on), and ``zlib``, zlib level 1 on
64 KiB of text-like bytes (compute-bound, in cache). Each is the best of three, in CPU s/GiB. The
run's result keeps their min and median over its samples (``timing.calibration``), and
:func:`machine_speed` sums a results file up; ``report`` compares two files' and names a change
beyond the CPU threshold. The kernels, with their buffers, take about 16 ms a sample.

The kernels are fixed: their figures compare across pagecodec versions, and a change to them must
rename them.
"""

from __future__ import annotations

import statistics
import time
import zlib
from typing import Any, Sequence

import numpy as np

__all__ = ["KERNELS", "calibrate", "summarize", "machine_speed"]

#: The kernels' names, in results.
KERNELS = ("copy", "zlib")
_COPY_BYTES = 16 << 20
_ZLIB_BYTES = 64 << 10
_BEST_OF = 3
_GIB = float(1 << 30)


def _text(n: int) -> bytes:
    """``n`` bytes of words of lowercase letters and spaces (zlib level 1 gets about 2:1)."""
    rng = np.random.default_rng(20261130)
    letters = rng.integers(97, 123, n, dtype=np.uint8)
    letters[rng.random(n) < 0.18] = 32
    return letters.tobytes()


def calibrate() -> dict[str, float]:
    """Each kernel's best of three, in thread CPU s/GiB, on the calling thread's CPU."""
    src = np.empty(_COPY_BYTES, np.uint8)
    src.fill(7)
    dst = np.empty_like(src)
    dst.fill(0)  # faulted in before timing: the kernel times the copy, not first touches
    text = _text(_ZLIB_BYTES)
    best_copy = best_zlib = float("inf")
    for _ in range(_BEST_OF):
        t0 = time.thread_time_ns()
        np.copyto(dst, src)
        t1 = time.thread_time_ns()
        zlib.compress(text, 1)
        t2 = time.thread_time_ns()
        best_copy = min(best_copy, (t1 - t0) / 1e9 * _GIB / _COPY_BYTES)
        best_zlib = min(best_zlib, (t2 - t1) / 1e9 * _GIB / _ZLIB_BYTES)
    return {"copy": best_copy, "zlib": best_zlib}


def summarize(samples: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]] | None:
    """Min and median of each kernel over a run's samples (None if a sample has no calibration)."""
    cals = [s.get("calibration") for s in samples]
    if not cals or any(c is None for c in cals):
        return None
    return {k: {"min": min(c[k] for c in cals), "median": statistics.median(c[k] for c in cals)}  # type: ignore[index]
            for k in KERNELS if all(k in c for c in cals)}  # type: ignore[operator]


def machine_speed(results: Sequence[dict[str, Any]]) -> dict[str, float] | None:
    """A results file's machine speed: each kernel's median over the runs' median calibrations
    (None: the file has none, e.g. from an older pagecodec or ``replay``)."""
    per_kernel: dict[str, list[float]] = {k: [] for k in KERNELS}
    for r in results:
        cal = (r.get("timing") or {}).get("calibration") or {}
        for k in KERNELS:
            if k in cal:
                per_kernel[k].append(float(cal[k]["median"]))
    out = {k: statistics.median(v) for k, v in per_kernel.items() if v}
    return out or None
