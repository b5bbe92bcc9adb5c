"""The sender's decision chain, end to end through the receiver."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from conftest import ROOT, write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.chain.receiver import Receiver
from pagecodec.chain.sender import Sender
from pagecodec.codecs.base import Codec, Slot, SlotEncoder
from pagecodec.errors import PluginError, WireError
from pagecodec.harness.replay import replay, rounds_of, verify
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader
from pagecodec.wire.flags import SectionType
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096


@pytest.fixture
def small_trace(tmp_path):
    """Two blocks; round 0 mixes zero, random and repeated pages; later rounds dirty some pages
    (to zero, to new data, and unchanged)."""
    rng = np.random.default_rng(7)
    ram = np.zeros((64, PS), np.uint8)
    ram[5:40] = rng.integers(0, 256, (35, PS), dtype=np.uint8)
    bios = np.full((4, PS), 0xAB, np.uint8)
    bios[0] = 0
    rounds = [{0: (np.arange(64) * PS, ram.copy()), 1: (np.arange(4) * PS, bios.copy())}]
    for r in range(1, 4):
        idx = np.sort(rng.choice(64, 20, replace=False))
        ram[idx[:5]] = 0
        ram[idx[5:15], rng.integers(0, PS, 10)] ^= 0x5A
        # idx[15:] dirty but unchanged
        content = {0: (idx * PS, ram[idx].copy())}
        if r == 2:
            bios[3] = 1
            content[1] = (np.array([3 * PS]), bios[3:4].copy())
        rounds.append(content)
    path = tmp_path / "small.parquet"
    write_trace(path, [("pc.ram", 64 * PS), ("pc.bios", 4 * PS)], rounds)
    return path


def parse_records(data: bytes):
    """Independent walk over the stream: (section type, list of (flags, record length))."""
    r = StreamReader(data)
    assert r.get_be32() == 0x5145564D and r.get_be32() == 3
    assert r.get_byte() == 7
    r.get_bytes(r.get_be32())
    sections = []
    while True:
        t = r.get_byte()
        if t == 0:
            break
        r.get_be32()
        if t == 1:
            r.get_bytes(r.get_byte())
            r.get_bytes(8)
        recs = []
        while True:
            at = r.pos
            word = r.get_be64()
            flags = word & 0xFFF
            if flags & 0x4:
                total = word & ~0xFFF
                while total:
                    r.get_bytes(r.get_byte())
                    total -= r.get_be64()
            if flags & 0x4A and not flags & 0x20:
                r.get_bytes(r.get_byte())
            if flags & 0x2:
                r.get_byte()
            if flags & 0x8:
                r.get_bytes(PS)
            recs.append((flags, r.pos - at))
            if flags == 0x10:
                break
        assert r.get_byte() == 0x7E
        r.get_be32()
        sections.append((t, recs))
    return sections


def test_verify_small_trace(small_trace, pm):
    res = verify(TraceReader(small_trace), parse_spec("none"), pm)
    assert res.ok, res.mismatch
    assert res.rounds == 4 and res.pages == 68 + 60 + 1


def test_transferred_equals_bytes_written(small_trace, pm):
    """transferred = every page record + the EOS of each iteration section (QEMU 7.2 semantics)."""
    sink = MemorySink()
    res = replay(TraceReader(small_trace), parse_spec("none"), pm, sink=sink)
    sections = parse_records(sink.getvalue())
    assert [t for t, _ in sections] == [1, 2, 2, 2, 3]
    page_bytes = sum(n for _, recs in sections for f, n in recs if f & 0xA)
    part_eos = 8 * sum(1 for t, _ in sections if t == 2)
    assert res["ram"]["transferred"] == page_bytes + part_eos
    assert res["wire"]["total"] == len(sink.getvalue())
    zero = sum(1 for _, recs in sections for f, _n in recs if f & 0x2)
    normal = sum(1 for _, recs in sections for f, _n in recs if f & 0x8)
    assert (res["ram"]["duplicate"], res["ram"]["normal"]) == (zero, normal)
    assert res["ram"]["dirty-sync-count"] == 4
    assert res["ram"]["downtime-bytes"] + res["ram"]["precopy-bytes"] == res["ram"]["transferred"]


def test_continue_only_within_block(small_trace, pm):
    """The first record after a block change carries the idstr; the rest CONTINUE."""
    sink = MemorySink()
    replay(TraceReader(small_trace), parse_spec("none"), pm, sink=sink)
    data = sink.getvalue()
    # last_sent_block persists across sections: round 0 ends in pc.bios, so round 1's first pc.ram
    # record names its block; round 2 continues pc.ram, then names pc.bios; round 3 names pc.ram again.
    assert data.count(b"\x06pc.ram") == 4  # MEM_SIZE list + rounds 0, 1, 3
    assert data.count(b"\x07pc.bios") == 3  # MEM_SIZE list + rounds 0, 2


def test_batch_size_does_not_change_the_stream(small_trace, pm):
    """Batches are a performance device: page-by-page processing gives the same bytes."""
    outs = []
    for max_pages in (1, 3, 4096):
        reader = TraceReader(small_trace)
        sink = MemorySink()
        s = Sender(reader.meta, parse_spec("none"), pm, sink)
        s.run(rounds_of(reader, max_pages=max_pages), reader.num_rounds)
        outs.append(sink.getvalue())
    assert outs[0] == outs[1] == outs[2]


def test_unfilled_slot_is_refused(small_trace, pm):
    with pytest.raises(PluginError, match="'control' slot needs codec 'rdma'"):
        replay(TraceReader(small_trace), parse_spec("control-codec=rdma"), pm)
    with pytest.raises(PluginError, match="'delta' slot needs codec 'nosuch'"):
        replay(TraceReader(small_trace), parse_spec("delta-codec=nosuch"), pm)


def test_codec_in_wrong_slot_is_refused(small_trace, pm):
    with pytest.raises(PluginError, match="cannot fill the 'delta' slot"):
        replay(TraceReader(small_trace), parse_spec("delta-codec=raw"), pm)


class Boom(Exception):
    pass


class _RaisingEncoder(SlotEncoder):
    def encode(self, seg, stage):
        if stage.round == 2:
            raise Boom("kaboom")


class _RaisingCodec(Codec):
    name = "raiser"
    slots = (Slot.DELTA,)
    qemu_format = True  # it would write QEMU's records, had it not raised (--qemu-stream accepts it)

    def encoder(self, slot, ctx):
        return _RaisingEncoder()


def test_plugin_that_raises_is_named(small_trace):
    pm = PluginManager()
    pm._add_codec(_RaisingCodec(), pm.infos["pagecodec.codecs.raw"])
    pm.codec_plugin["raiser"] = "test-raiser"
    with pytest.raises(PluginError, match=r"codec 'raiser' \(plugin 'test-raiser'\) raised in the delta slot at round 2, block 'pc.ram'.*kaboom"):
        replay(TraceReader(small_trace), parse_spec("delta-codec=raiser"), pm)


def test_corrupted_page_is_reported_by_round_block_offset(small_trace, pm):
    def tamper(r, chunk):
        if r == 1:
            b = bytearray(chunk)
            b[-100] ^= 0xFF  # inside the last page record's payload of round 1
            return bytes(b)
        return chunk

    res = verify(TraceReader(small_trace), parse_spec("none"), pm, tamper=tamper)
    assert not res.ok
    assert res.mismatch.round == 1 and res.mismatch.block == "pc.ram"
    assert "byte(s) differ" in str(res.mismatch)


def test_truncated_stream_is_a_wire_error(small_trace, pm):
    def tamper(r, chunk):
        return chunk[: len(chunk) // 2] if r == 2 else chunk

    with pytest.raises(WireError, match="truncated|footer|unknown"):
        verify(TraceReader(small_trace), parse_spec("none"), pm, tamper=tamper)


def test_qemu_stream_file_is_written_atomically(small_trace, pm, tmp_path):
    out = tmp_path / "out.mig"
    replay(TraceReader(small_trace), parse_spec("none"), pm, qemu_stream=out)
    data = out.read_bytes()
    assert data[:4] == b"QEVM"
    rc = Receiver(PS, pm)
    rc.load_stream(StreamReader(data))
    assert rc.finished
    assert not list(tmp_path.glob(".out.mig.*"))


def test_failed_replay_leaves_no_stream(small_trace, tmp_path):
    pm = PluginManager()
    pm._add_codec(_RaisingCodec(), pm.infos["pagecodec.codecs.raw"])
    out = tmp_path / "out.mig"
    with pytest.raises(PluginError):
        replay(TraceReader(small_trace), parse_spec("delta-codec=raiser"), pm, qemu_stream=out)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if "out.mig" in p.name] == []


def test_example_plugin_fillpage(small_trace):
    sys.path.insert(0, str(ROOT / "plugins" / "pagecodec-fillpage"))
    try:
        pm = PluginManager(["pagecodec_fillpage"])
        cfg = parse_spec("zero-codec=fillpage")
        res = verify(TraceReader(small_trace), cfg, pm)
        assert res.ok
        # pc.bios pages 1..3 are 0xAB-filled in round 0 and page 3 is 0x01-filled in round 2: four more
        # ZERO records (with a fill byte) than there are zero pages
        base = replay(TraceReader(small_trace), parse_spec("none"), PluginManager())
        assert res.metrics["ram"]["duplicate"] == base["ram"]["duplicate"] + 4
        assert res.metrics["config"]["extensions"] == {"zero-codec": "fillpage"}
    finally:
        sys.path.remove(str(ROOT / "plugins" / "pagecodec-fillpage"))


def test_sender_reproduces_qemus_paused_stream(shared, pm, tmp_path):
    """Byte for byte: QEMU 7.2's paused-guest stream, up to its device sections, is what our sender
    writes for a trace of that RAM (round 0 = the image, round 1 = nothing dirtied): header,
    configuration, START (MEM_SIZE), one PART with every page (ZERO/PAGE records, block idstrs,
    CONTINUE), END with EOS only."""
    src = shared / "streams" / "qemu72-paused-64m.mig"
    real = src.read_bytes()
    r = StreamReader(real, str(src))
    rc = Receiver(PS, pm)
    rc.load_header(r)
    while rc.load_section(r).type != SectionType.SECTION_END:
        pass
    ram_end = r.pos
    blocks = [(n, rc.memory[n].shape[0]) for n in rc.block_order]
    image = {i: (np.arange(s // PS) * PS, rc.memory[n].reshape(-1, PS)) for i, (n, s) in enumerate(blocks)}
    path = tmp_path / "paused.parquet"
    from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter

    meta = TraceMeta(PS, tuple(RAMBlockInfo(n, s) for n, s in blocks), Provenance("qemu", "test", "2026"))
    with TraceWriter(path, meta) as w:
        for bi in range(len(blocks)):
            w.write(0, bi, image[bi][0], image[bi][1])
        w.write(1, 0, np.zeros(0, np.int64), np.zeros((0, PS), np.uint8))
    sink = MemorySink()
    res = replay(TraceReader(path), parse_spec("none"), pm, sink=sink, machine="pc-i440fx-7.2")
    ours = sink.getvalue()
    assert ours[:ram_end] == real[:ram_end]
    assert ours[ram_end] == SectionType.EOF and ours[ram_end + 1] == SectionType.VMDESCRIPTION
    assert (res["ram"]["duplicate"], res["ram"]["normal"]) == (16465, 49)


@pytest.mark.parametrize("spec,match", [
    ("multifd,compress", "Multifd is not compatible with compress"),
    ("compress,qemu-version=10.2", "Parameter 'capability' does not accept value 'compress'"),
    ("multifd,xbzrle,qemu-version=10.2", "Multifd is not compatible with xbzrle"),
    ("zero-page-detection=none", "QEMU 7.2 has no such parameter"),
    ("zero-page-detection=none,qemu-version=4.1", "QEMU 4.1 has no such parameter"),
])
def test_config_refuses_what_qemu_refuses(spec, match):
    from pagecodec.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        parse_spec(spec)


def test_zero_page_detection_decides_the_zero_slot():
    """QEMU 9.0+: ``none`` sends zero pages as normal pages; ``multifd`` leaves them to the channels when
    multifd is on, else to the migration thread; 7.2 always detects them in the migration thread."""
    def has_zero(spec):
        return Slot.ZERO in parse_spec(spec).slot_codecs()

    assert has_zero("none") and has_zero("multifd") and has_zero("qemu-version=10.2")
    assert not has_zero("qemu-version=10.2,zero-page-detection=none")
    assert not has_zero("qemu-version=10.2,multifd")
    assert has_zero("qemu-version=10.2,multifd,zero-page-detection=legacy")
