"""The destination's CPU per stage: the receiver's stage clock, the stages a config's stream uses,
replay's decoding (results, the sender's figures unchanged) and its failure on a corrupted stream."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from pagecodec.chain.config import parse_spec
from pagecodec.chain.metrics import StageClock
from pagecodec.chain.receiver import Receiver
from pagecodec.codecs.compress import CompressedPageDecoder
from pagecodec.errors import DecodeError, WireError
from pagecodec.harness.destination import Destination
from pagecodec.harness.replay import replay, verify
from pagecodec.plugins import PluginManager
from pagecodec.sources.synth import synthesize
from pagecodec.trace.format import TraceReader
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096
PLUGINS = str(ROOT / "tests" / "plugins_for_tests")


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    """Enough rounds and rewrites for XBZRLE hits, zero and raw pages, and compressible pages."""
    path = tmp_path_factory.mktemp("dc") / "t.parquet"
    synthesize(path, ram_size=0, blocks=[("pc.ram", 600 * PS), ("pc.bios", 16 * PS)], rounds=5, dirty_fraction=0.3,
               patterns="sparse=4,rewrite=1,toggle=1,text=2,random=1", zero_fraction=0.4, seed=11,
               row_group_pages=64)
    return path


@pytest.fixture(scope="module")
def pm_ext():
    sys.path.insert(0, PLUGINS)
    try:
        yield PluginManager(["pc_test_lz4page"], entry_points=False)
    finally:
        sys.path.remove(PLUGINS)


# --- the stage clock -----------------------------------------------------------------------------
def burn(ms: float) -> None:
    t0 = time.thread_time()
    while time.thread_time() - t0 < ms / 1000:
        pass


def test_stage_clock_charges_laps_nested_starts_and_within():
    c = StageClock()
    c.lap("ignored")  # stopped: nothing is charged
    assert c.stage is None and c.take() == {}
    c.start("wire")
    burn(3)
    c.start("nested")  # a nested start keeps the stage
    c.lap("zero")
    burn(3)
    with c.within("multifd"):
        burn(3)
    assert c.stage == "zero"
    c.stop()
    assert c.stage == "zero"  # the outer start is still running
    c.stop()
    assert c.stage is None
    burn(2)  # stopped: not charged
    ns = c.take()
    assert set(ns) == {"wire", "zero", "multifd"}
    assert all(2.5e6 < v < 30e6 for v in ns.values()), ns
    assert c.take() == {}


# --- the receiver --------------------------------------------------------------------------------
def stream(trace: Path, pm: PluginManager, spec: str) -> bytes:
    sink = MemorySink()
    replay(TraceReader(trace), parse_spec(spec, pm.presets), pm, sink=sink)
    return sink.getvalue()


@pytest.mark.parametrize("spec", ["none", "xbzrle"])
def test_receiver_charges_every_record_kind_and_the_stages_add_up(trace, pm, spec):
    data = stream(trace, pm, spec)
    rc = Receiver(PS, pm, parse_spec(spec))
    t0 = time.thread_time_ns()
    rc.load_stream(StreamReader(data, "s.mig"))
    outer = time.thread_time_ns() - t0
    ns = rc.take_cpu_ns()
    assert set(ns) == {"wire"} | set(rc.stats.records), (ns, rc.stats.records)
    if spec == "xbzrle":
        assert rc.stats.records["xbzrle"] > 0
    assert all(v > 0 for v in ns.values())
    total = sum(ns.values())
    assert 0.9 * outer - 1e6 <= total <= outer  # one thread: the laps cover the load, and nothing else
    assert rc.take_cpu_ns() == {}


def test_worker_cpu_of_extension_decoders_is_taken(trace, pm_ext, monkeypatch):
    """Receiver.take_worker_cpu_ns asks the extension codecs' decoders too, and take_cpu_ns charges
    their workers to the codec's stage."""
    import pc_test_lz4page

    monkeypatch.setattr(pc_test_lz4page.Lz4PageDecoder, "take_worker_cpu_ns", lambda self: 7_000, raising=False)
    rc = Receiver(PS, pm_ext, parse_spec("raw-codec=lz4page"))
    assert rc.take_worker_cpu_ns() == 7_000
    rc.load_stream(StreamReader(stream(trace, pm_ext, "raw-codec=lz4page"), "s.mig"))
    ns = rc.take_cpu_ns()
    assert rc.stats.records["lz4page"] > 0
    assert ns["lz4page"] > 7_000 and "page" not in ns


# --- bench's decoding (replay with decode) -------------------------------------------------------
#: config -> stages its stream must be charged to (besides "wire")
STAGES = {
    "none": {"zero", "page"},
    "xbzrle": {"zero", "page", "xbzrle"},
    "compress": {"zero", "compress"},
    "xbzrle+compress": {"zero", "compress", "xbzrle"},
    "multifd-zstd": {"zero", "multifd"},
    "multifd-zlib,qemu-version=10.2": {"multifd"},
}


@pytest.mark.parametrize("spec", list(STAGES))
def test_bench_run_has_decode_cpu_per_stage_adding_up_to_the_total(trace, pm, spec, monkeypatch):
    outer: list[int] = []
    workers: list[int] = []
    real_load, real_take = Destination.load, CompressedPageDecoder.take_worker_cpu_ns

    def load(self, r, n):
        t0 = time.thread_time_ns()
        try:
            real_load(self, r, n)
        finally:
            outer.append(time.thread_time_ns() - t0)

    def take(self):
        ns = real_take(self)
        workers.append(ns)
        return ns

    monkeypatch.setattr(Destination, "load", load)
    monkeypatch.setattr(CompressedPageDecoder, "take_worker_cpu_ns", take)
    res = replay(TraceReader(trace), parse_spec(spec, pm.presets), pm, decode=True)
    dec = res["cpu_decode"]
    assert STAGES[spec] | {"wire"} <= set(dec), dec
    assert set(dec) <= STAGES[spec] | {"wire", "page"}, dec  # nothing else (raw pages may appear)
    assert all(v >= 0 for v in dec.values())
    assert set(res["cpu_decode_s_per_gib"]) == set(dec)
    gib = res["page_bytes"] / (1 << 30)
    assert res["cpu_decode_s_per_gib"]["wire"] == pytest.approx(dec["wire"] / gib)
    total = (sum(outer) + sum(workers)) / 1e9  # this thread's time in the loads, and the decoders' workers
    assert 0.8 * total - 0.002 <= sum(dec.values()) <= total + 1e-6, (dec, total)
    assert res["decode_wall_s"] > 0
    assert not any(k.startswith("decode") for k in res["cpu"])  # the sender's stages only
    if "compress" in spec:
        assert res["threads"]["decompress"] == 2


def test_verify_reports_the_same_decode_stages(trace, pm):
    res = verify(TraceReader(trace), parse_spec("xbzrle"), pm)
    assert res.ok
    assert {"wire", "zero", "page", "xbzrle"} <= set(res.metrics["cpu_decode"])


def test_sender_figures_do_not_depend_on_the_destination(trace, pm):
    """The hand-over of the bytes is nobody's stage: the sender's stages stay what --no-decode measures
    (same counters and bytes; CPU within noise, so only the keys are compared exactly)."""
    a = replay(TraceReader(trace), parse_spec("multifd-zstd", pm.presets), pm, decode=True)
    b = replay(TraceReader(trace), parse_spec("multifd-zstd", pm.presets), pm)
    assert set(a["cpu"]) == set(b["cpu"]) and a["wire"] == b["wire"]
    assert a["ram"]["transferred"] == b["ram"]["transferred"]
    assert "cpu_decode" not in b and "cpu_decode_s_per_gib" not in b


def test_corrupted_stream_fails_the_bench_run_naming_the_offset(trace, pm):
    """A record header changed into an unknown flag in round 1: the run fails where it breaks."""
    base: list[int] = []

    def tamper(r, chunk):
        if r == 1:
            base.append(sum(seen))
            b = bytearray(chunk)
            b[5 + 7] = 0x01  # the first record after the PART section's 5-byte header
            chunk = bytes(b)
        seen.append(len(chunk))
        return chunk

    seen: list[int] = []
    with pytest.raises(WireError, match="unknown combination of migration flags 0x1") as ei:
        replay(TraceReader(trace), parse_spec("xbzrle"), pm, decode=True, tamper=tamper)
    at = base[0] + 5
    msg = str(ei.value)
    assert ei.value.offset == at and msg.startswith(f"replayed stream: offset {at}: "), msg
    assert "t.parquet with config 'xbzrle', round 1: " in msg and "\n" not in msg


def test_corrupted_channel_fails_the_bench_run_naming_file_and_offset(trace, pm):
    def tamper_channel(k, r, chunk):
        if (k, r) == (1, 2) and len(chunk) > 1400:
            b = bytearray(chunk)
            b[1344 + 10] ^= 0xFF  # inside the first packet's zstd payload
            return bytes(b)
        return chunk

    with pytest.raises(DecodeError) as ei:
        replay(TraceReader(trace), parse_spec("multifd-zstd", pm.presets), pm, decode=True,
               tamper_channel=tamper_channel)
    msg = str(ei.value)
    assert msg.startswith("channel-1.bin: offset ") and ei.value.offset is not None, msg
    assert "with config 'multifd-zstd', round 2: " in msg


def test_decode_refuses_a_stream_file_or_sink(trace, pm, tmp_path):
    with pytest.raises(ValueError, match="decode"):
        replay(TraceReader(trace), parse_spec("none"), pm, decode=True, qemu_stream=tmp_path / "x.mig")
