"""The sender's bookkeeping beyond the bytes: where a round's counters, a slot's CPU and a plugin's
error message come from (mutation testing found these unpinned: mutation/run.py)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.chain.sender import Sender
from pagecodec.codecs.base import Codec, Slot, SlotEncoder
from pagecodec.errors import PluginError
from pagecodec.harness.replay import rounds_of
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader
from pagecodec.wire.writer import MemorySink

PS = 4096


@pytest.fixture
def trace(tmp_path):
    """pc.ram of 40 pages (some zero), three rounds that rewrite, re-dirty unchanged and zero pages."""
    rng = np.random.default_rng(3)
    ram = rng.integers(0, 256, (40, PS), dtype=np.uint8)
    ram[::5] = 0
    rounds = [{0: (np.arange(40) * PS, ram.copy())}]
    for r in range(1, 4):
        idx = np.arange(r, 40, 3)
        ram[idx[::2], 7] ^= 0x11
        ram[idx[1::4]] = 0
        rounds.append({0: (idx * PS, ram[idx].copy())})
    path = tmp_path / "t.parquet"
    write_trace(path, [("pc.ram", 40 * PS)], rounds)
    return path


def _send(path, spec: str, pm):
    reader = TraceReader(path)
    s = Sender(reader.meta, parse_spec(spec, pm.presets), pm, MemorySink())
    s.save_setup()
    at_setup = s.ram.counters.transferred
    rs = [s.save_round(r, b, last_stage=(r == reader.num_rounds - 1)) for r, b in rounds_of(reader)]
    return s, at_setup, rs, s.finish()


@pytest.mark.parametrize("spec", ["none", "xbzrle", "compress", "multifd", "multifd-zlib", "multifd,qemu-version=10.2"])
def test_rounds_add_up_to_transferred(trace, pm, spec):
    """What each round reports as transferred is exactly what the total grew by in that round, codec
    counters (multifd's packets, SYNCs and handshakes) included."""
    s, at_setup, rs, st = _send(trace, spec, pm)
    assert st.ram.transferred == at_setup + sum(r.transferred for r in rs)
    assert all(r.transferred > 0 for r in rs)


def test_completion_flush_is_downtime(trace, pm):
    """10.2 multifd: every page goes to the channels (zero pages too), so the completion section's only
    counted main-stream record is its MULTIFD_FLUSH (8 bytes; its EOS is not counted): downtime-bytes
    is exactly that, and each earlier round's flush is precopy."""
    s, _at, rs, st = _send(trace, "multifd,qemu-version=10.2", pm)
    assert st.ram.downtime_bytes == 8
    assert st.ram.precopy_bytes == 8 * len(rs[:-1]) + 8 * len(rs[:-1])  # a flush and an EOS per iteration


def test_sender_channel_is_the_context_channel(trace, pm):
    reader = TraceReader(trace)
    s = Sender(reader.meta, parse_spec("multifd", pm.presets), pm, MemorySink())
    assert s.channel(1) is s.ctx.channel(1) is s.channels[1]


class _Boom(Exception):
    pass


class _Raising(SlotEncoder):
    def encode(self, seg, stage):
        if stage.round == 1:
            raise _Boom("kaboom")


class _WorkerCpu(SlotEncoder):
    """Claims nothing; says its worker threads spent 2 s of CPU per call."""

    def encode(self, seg, stage):
        pass

    def take_worker_cpu_ns(self) -> int:
        return 2_000_000_000


def _codec(name: str, enc: type[SlotEncoder]) -> Codec:
    class C(Codec):
        slots = (Slot.DELTA,)
        qemu_format = True

        def encoder(self, slot, ctx):
            return enc()

    C.name = name
    return C()


def _pm_with(codec: Codec) -> PluginManager:
    pm = PluginManager(entry_points=False)
    pm._add_codec(codec, pm.infos["pagecodec.codecs.raw"])
    pm.codec_plugin[codec.name] = "test-plugin"
    return pm


def test_plugin_error_names_the_segment_pages(trace):
    pm = _pm_with(_codec("raiser", _Raising))
    want = (r"codec 'raiser' \(plugin 'test-plugin'\) raised in the delta slot at round 1, "
            r"block 'pc.ram', pages 0x1000\.\.0x25000: _Boom: kaboom")  # round 1 dirties pages 1, 4, … 37
    with pytest.raises(PluginError, match=want):
        _send(trace, "delta-codec=raiser", pm)


def test_worker_cpu_is_charged_to_the_slot(trace):
    pm = _pm_with(_codec("busy", _WorkerCpu))
    _s, _at, rs, st = _send(trace, "delta-codec=busy", pm)
    calls = len(rs) + 2  # a segment per round, setup, and the end of every pass: at least this many
    assert st.cpu.ns["delta"] >= calls * 2_000_000_000
