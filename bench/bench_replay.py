"""pytest-benchmark: replay of the default trace with zero+raw pages, beside a numpy copy.

    pytest bench/bench_replay.py --benchmark-only

Both benchmarks run on the same in-memory pages in the same session, so their ratio is meaningful on
a shared, noisy machine; bench/replay_ratio.py prints that ratio directly.
"""

from __future__ import annotations

import numpy as np
import pytest

from _replay_common import load_rounds, numpy_copy, page_count, replay_in_memory


@pytest.fixture(scope="module")
def trace_rounds():
    return load_rounds()


def test_replay_none(benchmark, trace_rounds):
    reader, rounds = trace_rounds
    stats = benchmark(replay_in_memory, reader, rounds, "none")
    benchmark.extra_info["pages"] = page_count(rounds)
    benchmark.extra_info["page_bytes"] = page_count(rounds) * reader.meta.page_size
    assert stats.ram.duplicate + stats.ram.normal == page_count(rounds)


def test_numpy_copy_baseline(benchmark, trace_rounds):
    reader, rounds = trace_rounds
    out = np.empty((4096, reader.meta.page_size), np.uint8)
    benchmark(numpy_copy, rounds, out)
    benchmark.extra_info["pages"] = page_count(rounds)


def test_replay_from_parquet(benchmark):
    """End to end, trace decoding (Parquet + zstd) included."""
    from pagecodec.chain.config import parse_spec
    from pagecodec.harness.replay import replay
    from pagecodec.plugins import PluginManager
    from pagecodec.trace.format import TraceReader
    from _replay_common import DEFAULT_TRACE

    pm = PluginManager()
    benchmark.pedantic(lambda: replay(TraceReader(DEFAULT_TRACE), parse_spec("none"), pm), rounds=3, iterations=1)
