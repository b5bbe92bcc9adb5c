"""The destination's CPU per stage: the receiver's stage clock and the stages a config's stream uses."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from pagecodec.chain.config import parse_spec
from pagecodec.chain.metrics import StageClock
from pagecodec.chain.receiver import Receiver
from pagecodec.harness.replay import replay
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
