"""pytest-benchmark: the compress slot with 1 and 2 worker threads beside zlib called directly.

    pytest bench/bench_compress.py --benchmark-only

All three run on the same 4,096 non-zero pages of a Linux-guest trace in one session, so their ratios
are meaningful on a shared machine; bench/compress_ratio.py prints the ratios directly.
"""

from __future__ import annotations

import pytest

from _compress_common import compress_slot, nonzero_pages, zlib_direct


@pytest.fixture(scope="module")
def pages():
    return nonzero_pages(limit=4096)


def test_zlib_direct_baseline(benchmark, pages):
    benchmark.extra_info["pages"] = len(pages)
    benchmark(zlib_direct, pages)


@pytest.mark.parametrize("threads", [1, 2])
def test_compress_slot(benchmark, pages, threads):
    benchmark.extra_info["pages"] = len(pages)
    out = benchmark(compress_slot, pages, threads)
    assert out == zlib_direct(pages)  # the slot writes zlib's own bytes
