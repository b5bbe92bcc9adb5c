"""pytest-benchmark: compress-zstd (levels -5, 1, 3), compress-lz4 and compress-lz4hc (9) in the compress
slot beside their libraries called directly, with 1 and 2 threads, and their decoders beside the
libraries' own decompression, on the same 4,096 non-zero pages of a Linux-guest trace.

    pytest bench/bench_compress_pagecodecs.py --benchmark-only

bench/compress_pagecodecs.py prints the ratios (slot / direct, decode / library, compression ratio) in
one interleaved run.
"""

from __future__ import annotations

import pytest

from _compress_common import codec_decode, codec_direct, codec_slot, library_decode, nonzero_pages, payloads

CASES = [("compress-zstd", -5), ("compress-zstd", 1), ("compress-zstd", 3), ("compress-lz4", 1), ("compress-lz4hc", 9)]
IDS = [f"{c.removeprefix('compress-')}-{lv}" for c, lv in CASES]


@pytest.fixture(scope="module")
def pages():
    return nonzero_pages(limit=4096)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("codec,level", CASES, ids=IDS)
def test_library_direct(benchmark, pages, codec, level, threads):
    benchmark.group = f"{codec} {level}, {threads} thread(s)"
    benchmark.extra_info["pages"] = len(pages)
    benchmark.extra_info["bytes"] = benchmark(codec_direct, pages, codec, threads, level)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("codec,level", CASES, ids=IDS)
def test_compress_slot(benchmark, pages, codec, level, threads):
    benchmark.group = f"{codec} {level}, {threads} thread(s)"
    benchmark.extra_info["pages"] = len(pages)
    sets = benchmark(codec_slot, pages, codec, threads, level)
    out = sum(map(len, payloads(sets, codec)))
    benchmark.extra_info["bytes"] = out
    assert out == codec_direct(pages, codec, 1, level)  # the library's own bytes


@pytest.mark.parametrize("codec,level", CASES, ids=IDS)
def test_decoder(benchmark, pages, codec, level):
    benchmark.group = f"{codec} {level}, decode"
    data = payloads(codec_slot(pages, codec, 1, level), codec)
    benchmark.extra_info["pages"] = len(data)
    benchmark(codec_decode, codec, data, pages.shape[1])


@pytest.mark.parametrize("codec,level", CASES, ids=IDS)
def test_library_decode(benchmark, pages, codec, level):
    benchmark.group = f"{codec} {level}, decode"
    data = payloads(codec_slot(pages, codec, 1, level), codec)
    benchmark.extra_info["pages"] = len(data)
    benchmark(library_decode, codec, data, pages.shape[1])
