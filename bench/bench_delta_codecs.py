"""pytest-benchmark: pagecodec's delta codecs in a replay held in memory, beside zstd called directly
on the inputs each codec hands it, and the destination's decode of their streams.

    pytest bench/bench_delta_codecs.py --benchmark-only

bench/delta_codecs.py prints the ratios (slot / zstd direct, MB/s, decode) in one interleaved run, and
bench/record_table.py sets them against QEMU's configs.
"""

from __future__ import annotations

import pytest

from _replay_common import ROOT, load_rounds, plugins
from delta_codecs import decode, record_calls, replay, zstd_direct

from pagecodec.chain.config import parse_spec

TRACE = ROOT / "corpora" / "linux-counters.trace.parquet"
CONFIGS = ["xor-zstd", "xor-zstd-long", "xbzrle+zstd", "delta-zstd"]


@pytest.fixture(scope="module")
def trace():
    return load_rounds(TRACE)


@pytest.mark.parametrize("spec", CONFIGS)
def test_replay(benchmark, trace, spec):
    reader, rounds = trace
    benchmark.group = spec
    sender, data = benchmark.pedantic(replay, args=(reader, rounds, spec), rounds=3, iterations=1)
    benchmark.extra_info["delta_cpu_s"] = sender.stats.cpu.ns["delta"] / 1e9
    benchmark.extra_info["stream_bytes"] = len(data)


@pytest.mark.parametrize("spec", CONFIGS)
def test_zstd_direct(benchmark, trace, spec):
    reader, rounds = trace
    cfg = parse_spec(spec, plugins().presets)
    calls = record_calls(reader, rounds, spec)
    benchmark.group = spec
    benchmark.pedantic(zstd_direct, args=(calls, cfg.param("pc-zstd-level"), cfg.param("pc-zstd-long")), rounds=3,
                       iterations=1)


@pytest.mark.parametrize("spec", CONFIGS)
def test_decode(benchmark, trace, spec):
    reader, rounds = trace
    _sender, data = replay(reader, rounds, spec)
    benchmark.group = spec
    benchmark.pedantic(decode, args=(data, spec, reader.meta.page_size), rounds=3, iterations=1)
