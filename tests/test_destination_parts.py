"""The destination loads a big round in parts while the sender writes it (Destination.segment_written):
the same pages arrive, the same bytes are read, a fault in a later part names its round and stream
offset, and the stream buffer stays a part and a batch, not a round."""

from __future__ import annotations

import pytest

from conftest import ROOT
from pagecodec.chain.config import parse_spec
from pagecodec.chain.sender import SEGMENT_PAGES, block_runs
from pagecodec.errors import WireError
from pagecodec.harness import destination
from pagecodec.harness.replay import replay, verify
from pagecodec.trace.format import TraceReader

SYNTH = ROOT / "corpora" / "synth-default.trace.parquet"  # bulk round: 8256 pages in 3 batches
MIXED = ROOT / "corpora" / "linux-mixed.trace.parquet"  # bulk round: 16514 pages in 5 batches


def _segments(path, r):
    """How many segments the sender cuts round ``r`` of a trace into (512 pages within a block)."""
    n = 0
    for rr, batches in TraceReader(path).rounds(max_pages=4096):
        for b in batches:
            if rr == r:
                n += sum(-(-(hi - lo) // SEGMENT_PAGES) for lo, hi in block_runs(b.block))
    return n


@pytest.fixture
def loads(monkeypatch):
    """Every Destination.load call as (round, whole round?)."""
    calls: list[tuple[int, bool]] = []
    real = destination.Destination.load

    def spy(self, r, num_rounds):
        calls.append((r, num_rounds is not None))
        return real(self, r, num_rounds)

    monkeypatch.setattr(destination.Destination, "load", spy)
    return calls


@pytest.mark.parametrize("spec", ["none", "xbzrle", "compress,compress-threads=2", "zstd", "xor-zstd", "multifd",
                                  "multifd-zstd"])
def test_rounds_loaded_in_parts_arrive_intact_with_the_same_stream(pm, loads, monkeypatch, spec):
    monkeypatch.setattr(destination, "PART_BYTES", 1 << 40)  # every round whole
    whole = verify(TraceReader(MIXED), parse_spec(spec, pm.presets), pm)
    assert not [c for c in loads if not c[1]]
    loads.clear()
    monkeypatch.setattr(destination, "PART_BYTES", 1)  # a part after every segment that wrote records
    parts = verify(TraceReader(MIXED), parse_spec(spec, pm.presets), pm)
    assert parts.ok, parts.mismatch
    segments = _segments(MIXED, 0)
    assert segments == 37  # 16514 pages in 5 batches, cut at block ends too
    if "multifd" in spec:  # a segment whose pages all went to the channels writes nothing on the main stream
        assert 5 < loads.count((0, False)) < segments
    else:  # a part after each segment of the bulk round, then the rest at its end
        assert loads.count((0, False)) == segments
    assert parts.stream_bytes == whole.stream_bytes and parts.channel_bytes == whole.channel_bytes
    assert parts.metrics["wire"] == whole.metrics["wire"] and parts.metrics["records"] == whole.metrics["records"]
    untimed = lambda m: {k: v for k, v in m["ram"].items() if k != "pages-per-second"}  # noqa: E731
    assert untimed(parts.metrics) == untimed(whole.metrics)


def test_a_fault_in_a_later_part_names_its_round_and_offset(pm, loads, monkeypatch):
    """Round 0's second part starts with a record header: turn it into unknown flags."""
    monkeypatch.setattr(destination, "PART_BYTES", 1)
    offsets: list[int] = []
    seen: list[int] = []

    def tamper(r, chunk):
        if r == 0 and len(seen) == 2:  # setup, round 0's first part, then this one
            offsets.append(sum(seen))
            b = bytearray(chunk)
            b[7] = 0x01
            chunk = bytes(b)
        seen.append(len(chunk))
        return chunk

    with pytest.raises(WireError, match="unknown combination of migration flags 0x1") as ei:
        replay(TraceReader(SYNTH), parse_spec("none"), pm, decode=True, tamper=tamper)
    assert offsets and ei.value.offset == offsets[0]
    assert "with config 'none', round 0: " in str(ei.value)


def test_the_stream_buffer_holds_a_part_and_a_segment_not_a_round(pm, monkeypatch):
    sizes: list[int] = []
    real = destination.PipeSink.take

    def spy(self):
        sizes.append(len(self._buf))
        return real(self)

    monkeypatch.setattr(destination.PipeSink, "take", spy)
    monkeypatch.setattr(destination, "PART_BYTES", 1 << 20)
    res = verify(TraceReader(MIXED), parse_spec("none"), pm)
    assert res.ok
    segment = SEGMENT_PAGES * (4096 + 64)  # one segment's records at most
    assert max(sizes) <= 2 * ((1 << 20) + segment)  # grown by doubling to fit a part and a segment
    assert max(sizes) < 16514 * 4096  # not the bulk round's 64 MiB
