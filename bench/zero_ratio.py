"""Zero-page detection against a C ``buffer_is_zero``-like reference and the old numpy reduction.

Run: ``python bench/zero_ratio.py [--trace corpora/linux-mixed.trace.parquet] [--runs 9]``.

Three cases, all from round 0 of the trace (its pages decoded once, held in memory):

- **non-zero**: the round's non-zero pages, one batch (gathered into one contiguous array);
- **zero**: the round's all-zero pages, one batch;
- **segments**: the whole round as the chain sees it, 512-page segments (``SEGMENT_PAGES``) of the
  reader's read-only batches, one call per segment (per-call costs count here, C's ctypes call too).

Each implementation is timed best of ``--runs`` runs, the implementations interleaved run by run.
Rates are GB/s of page data (1 GB = 10**9 bytes). The C reference is compiled now with
``gcc -O2 -march=native`` into a temporary .so and called through ctypes once per batch (its loop over
the pages is in C): first, middle and last 64-bit words of a page, then 128-byte blocks of four AVX2
vectors (unrolled 64-bit words without AVX2) ORed and tested, stopping at the first non-zero block,
as QEMU's ``util/bufferiszero.c`` does (written for this benchmark, not QEMU's code). The per-call
figures are one call on one page (the fixed cost of a call) and one call on a 512-page segment.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT / "corpora" / "linux-mixed.trace.parquet"
SEGMENT_PAGES = 512

C_SOURCE = r"""
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

static inline uint64_t ld64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static int is_zero(const unsigned char *p, size_t len)
{
    size_t i = 0;
    uint64_t acc = 0;
    if (len < 64) {
        unsigned char b = 0;
        for (; i < len; i++) b |= p[i];
        return b == 0;
    }
    if (ld64(p) | ld64(p + ((len / 2) & ~(size_t)7)) | ld64(p + len - 8))
        return 0;
#ifdef __AVX2__
    for (; i + 128 <= len; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(p + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(p + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(p + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(p + i + 96));
        __m256i t = _mm256_or_si256(_mm256_or_si256(a, b), _mm256_or_si256(c, d));
        if (!_mm256_testz_si256(t, t))
            return 0;
    }
#else
    for (; i + 64 <= len; i += 64) {
        uint64_t t = ld64(p + i) | ld64(p + i + 8) | ld64(p + i + 16) | ld64(p + i + 24)
                   | ld64(p + i + 32) | ld64(p + i + 40) | ld64(p + i + 48) | ld64(p + i + 56);
        if (t)
            return 0;
    }
#endif
    for (; i + 8 <= len; i += 8) acc |= ld64(p + i);
    for (; i < len; i++) acc |= p[i];
    return acc == 0;
}

void zero_mask(const unsigned char *base, size_t n, ptrdiff_t stride, size_t len, unsigned char *out)
{
    for (size_t k = 0; k < n; k++)
        out[k] = (unsigned char)is_zero(base + (ptrdiff_t)k * stride, len);
}
"""


def old_numpy_mask(pages: np.ndarray) -> np.ndarray:
    """zero_page_mask before issue 12: one OR-reduction over every word of every page."""
    if pages.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    if pages.shape[1] % 8 == 0 and pages.flags.c_contiguous:
        return np.bitwise_or.reduce(pages.view(np.uint64), axis=1) == 0
    return ~pages.any(axis=1)


class CReference:
    """The C reference, built now in a temporary directory (removed by :meth:`close`)."""

    def __init__(self) -> None:
        gcc = shutil.which("gcc")
        if gcc is None:
            raise RuntimeError("gcc not found: the C reference is compiled at bench time")
        self.dir = tempfile.mkdtemp(prefix="pagecodec-zero-")
        src, so = Path(self.dir) / "zero_ref.c", Path(self.dir) / "zero_ref.so"
        src.write_text(C_SOURCE)
        subprocess.run([gcc, "-O2", "-march=native", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
        self.lib = ctypes.CDLL(str(so))
        self.fn = self.lib.zero_mask
        self.fn.restype = None
        self.fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_ssize_t, ctypes.c_size_t, ctypes.c_void_p]

    def __call__(self, pages: np.ndarray) -> np.ndarray:
        out = np.empty(pages.shape[0], np.bool_)
        if pages.strides[1] != 1 and pages.shape[1] > 1:
            pages = np.ascontiguousarray(pages)
        self.fn(pages.ctypes.data, pages.shape[0], pages.strides[0], pages.shape[1], out.ctypes.data)
        return out

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def load_cases(trace: Path = TRACE) -> dict[str, list[np.ndarray]]:
    """{"non-zero": [batch], "zero": [batch], "segments": [segment…]} from round 0 of ``trace``."""
    from pagecodec.trace.format import TraceReader

    reader = TraceReader(trace)
    segs: list[np.ndarray] = []
    for r, batches in reader.rounds():
        for b in batches:
            for lo in range(0, len(b), SEGMENT_PAGES):
                segs.append(b.pages[lo : lo + SEGMENT_PAGES])
        if r == 0:
            break
    allp = np.concatenate(segs)
    zero = ~allp.any(axis=1)
    return {"non-zero": [allp[~zero]], "zero": [allp[zero]], "segments": segs}


def run_all(fn, batches: list[np.ndarray]) -> None:
    for p in batches:
        fn(p)


def measure(cases: dict[str, list[np.ndarray]], impls: dict, runs: int = 9) -> dict[str, dict[str, float]]:
    """{case: {impl: GB/s}}: best of ``runs``, implementations interleaved within each run."""
    for name, fn in impls.items():  # same answers, and every implementation warm
        for batches in cases.values():
            for p in batches:
                np.testing.assert_array_equal(fn(p), ~p.any(axis=1), err_msg=name)
    out: dict[str, dict[str, float]] = {}
    for case, batches in cases.items():
        nbytes = sum(p.nbytes for p in batches)
        best = {name: float("inf") for name in impls}
        for _ in range(runs):
            for name, fn in impls.items():
                t0 = time.perf_counter()
                run_all(fn, batches)
                best[name] = min(best[name], time.perf_counter() - t0)
        out[case] = {name: nbytes / t / 1e9 for name, t in best.items()}
    return out


def per_call(page: np.ndarray, segment: np.ndarray, impls: dict, calls: int = 2000, runs: int = 7) -> dict:
    """{impl: (µs per call on one page, µs per call on one segment)}, best of ``runs`` loops."""
    res = {}
    for name, fn in impls.items():
        row = []
        for arg, k in ((page, calls), (segment, max(calls // 20, 10))):
            best = float("inf")
            for _ in range(runs):
                t0 = time.perf_counter()
                for _ in range(k):
                    fn(arg)
                best = min(best, (time.perf_counter() - t0) / k)
            row.append(best * 1e6)
        res[name] = tuple(row)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", type=Path, default=TRACE)
    ap.add_argument("--runs", type=int, default=9, help="runs per case, best of (at least 7)")
    args = ap.parse_args()
    runs = max(args.runs, 7)

    from pagecodec.codecs.zero import warm_up, zero_page_mask

    warm_up()
    cref = CReference()
    try:
        impls = {"pagecodec": zero_page_mask, "C ref": cref, "old numpy": old_numpy_mask}
        cases = load_cases(args.trace)
        rates = measure(cases, impls, runs)
        seg = max(cases["segments"], key=len)
        calls = per_call(cases["non-zero"][0][:1], seg, impls)
    finally:
        cref.close()

    print(f"zero-page detection, {args.trace.name} round 0, GB/s of page data, best of {runs} interleaved runs")
    print(f"{datetime.date.today()}; C ref: gcc -O2 -march=native, one ctypes call per batch/segment\n")
    hdr = f"{'case':<34}{'pagecodec':>10}{'C ref':>9}{'old numpy':>10}{'pc/C':>7}{'pc/old':>8}"
    print(hdr)
    print("-" * len(hdr))
    for case, batches in cases.items():
        n = sum(len(p) for p in batches)
        label = f"{case} ({n} pages" + (f", {len(batches)} calls)" if len(batches) > 1 else ")")
        r = rates[case]
        print(f"{label:<34}{r['pagecodec']:>10.1f}{r['C ref']:>9.1f}{r['old numpy']:>10.1f}"
              f"{r['pagecodec'] / r['C ref']:>7.2f}{r['pagecodec'] / r['old numpy']:>8.2f}")
    print(f"\nper call, µs (one non-zero page / one {len(seg)}-page segment of round 0):")
    for name, (one, s) in calls.items():
        print(f"  {name:<10}{one:>8.2f}{s:>10.2f}")


if __name__ == "__main__":
    main()
