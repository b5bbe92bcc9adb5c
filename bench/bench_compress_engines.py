"""pytest-benchmark: the compress slot (1 worker thread) with each deflate engine beside its library
called directly, on the same 4,096 non-zero pages of a Linux-guest trace.

    pytest bench/bench_compress_engines.py --benchmark-only

bench/compress_engines.py prints the ratios (slot / direct, bytes and speed against zlib) in one run.
"""

from __future__ import annotations

import pytest

from _compress_common import ENGINES, compress_slot, library_direct, nonzero_pages


@pytest.fixture(scope="module")
def pages():
    return nonzero_pages(limit=4096)


@pytest.mark.parametrize("codec", list(ENGINES))
def test_library_direct(benchmark, pages, codec):
    benchmark.group = codec
    benchmark.extra_info["pages"] = len(pages)
    benchmark.extra_info["bytes"] = benchmark(library_direct, pages, codec)


@pytest.mark.parametrize("codec", list(ENGINES))
def test_compress_slot_one_thread(benchmark, pages, codec):
    benchmark.group = codec
    benchmark.extra_info["pages"] = len(pages)
    out = benchmark(compress_slot, pages, 1, 1, ENGINES[codec])
    benchmark.extra_info["bytes"] = out
    assert out <= library_direct(pages, codec)  # the library's bytes, pages past compressBound stored
