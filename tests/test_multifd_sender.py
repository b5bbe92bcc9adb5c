"""Multifd channels as a sender codec (``--config multifd|multifd-zlib|multifd-zstd``, QEMU 7.2 and 10.2).

Without QEMU: the sender's main stream + channel files import back (``import_multifd``, the importer of
real captures) to the source trace, row for row; where the splitter (``split_stream``, QEMU 7.2's sender
rules applied to a single stream) covers the same ground, the bytes are the splitter's, compressed
payloads included; batching never changes a byte; ``verify`` decodes every channel at the main
stream's sync points on generated traces (hypothesis) and on the corpora; damaged channel bytes fail
with the channel file and offset; QEMU 7.2's counters (multifd-bytes counts pages uncompressed); the
10.x packet layout with zero pages and QEMU's zero-page partition.

With QEMU (marker ``qemu``): the sender's multifd output for none, zlib and zstd is played into a QEMU
7.2 destination (``-incoming``, multifd on, main connection then one per channel) and the destination's
pc.ram equals the trace's final image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from conftest import ROOT, qemu_layout_trace_file, wait_incoming
from test_multifd_import import final_image, read_rows
from pagecodec.chain.config import parse_spec
from pagecodec.chain.sender import Sender
from pagecodec.codecs.multifd import zero_page_partition
from pagecodec.errors import DecodeError, PageCodecError, WireError
from pagecodec.harness.replay import replay, rounds_of, verify
from pagecodec.sources.qemu_stream import import_multifd, split_stream
from pagecodec.sources.synth import synthesize
from pagecodec.trace.format import TraceReader
from pagecodec.wire.multifd import (
    LAYOUT_72,
    LAYOUT_ZERO_PAGES,
    MULTIFD_FLAG_SYNC,
    encode_packet,
    packet_size,
    read_initial_packet,
    read_packet_header,
)
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096
HDR = packet_size(PS)  # 1344
MIB = 1 << 20
PRESETS = ("multifd", "multifd-zlib", "multifd-zstd")


def synth(path: Path, *, pages: int = 700, rounds: int = 5, seed: int = 3, zero: float = 0.4,
          blocks=None) -> Path:
    blocks = blocks or [("pc.ram", pages * PS), ("vga.vram", 40 * PS), ("pc.bios", 24 * PS)]
    synthesize(path, ram_size=0, blocks=blocks, rounds=rounds, dirty_fraction=0.3,
               patterns="sparse=4,rewrite=1,toggle=1,text=2,random=1", zero_fraction=zero, seed=seed,
               row_group_pages=64)
    return path


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    return synth(tmp_path_factory.mktemp("mfs") / "t.parquet")


def run(trace: Path, spec: str, pm, out: Path | None = None, max_pages: int = 4096) -> tuple[dict, bytes, list[bytes]]:
    """Replay into memory: (results, main stream, channel streams)."""
    main = MemorySink()
    chans: dict[int, MemorySink] = {}
    with TraceReader(trace) as r:
        s = Sender(r.meta, parse_spec(spec, pm.presets), pm, main,
                   channel_sinks=lambda k: chans.setdefault(k, MemorySink()))
        st = s.run(rounds_of(r, max_pages=max_pages), r.num_rounds)
    return st.to_json() | {"multifd": st.groups.get("multifd")}, main.getvalue(), [chans[k].getvalue() for k in sorted(chans)]


# --- the output is a capture the importer reads back ---------------------------------------------------
@pytest.mark.parametrize("spec", ["multifd", "multifd-zlib,multifd-channels=3", "multifd-zstd,multifd-channels=1"])
def test_output_imports_back_to_the_trace(trace, pm, tmp_path, spec):
    out = tmp_path / "cap"
    with TraceReader(trace) as r:
        res = replay(r, parse_spec(spec, pm.presets), pm, qemu_stream=out)
    n = parse_spec(spec, pm.presets).param("multifd-channels")
    assert sorted(p.name for p in out.iterdir()) == sorted(["main.mig"] + [f"channel-{k}.bin" for k in range(n)])
    sizes = [(out / f"channel-{k}.bin").stat().st_size for k in range(n)]
    assert [c["bytes"] for c in res["channels"]] == sizes
    assert res["wire"]["total"] == (out / "main.mig").stat().st_size + sum(sizes)
    back = tmp_path / "back.parquet"
    rep = import_multifd(out / "main.mig", [out / f"channel-{k}.bin" for k in reversed(range(n))], back)
    assert rep.order_conflicts == 0 and rep.sync_packets_with_pages == 0
    assert rep.channel_pages == res["ram"]["normal"] and rep.zero_pages == res["ram"]["duplicate"]
    assert read_rows(back) == read_rows(trace)
    assert np.array_equal(final_image(back), final_image(trace))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_same_bytes_as_the_splitter(trace, pm, tmp_path, compression):
    """The splitter applies QEMU 7.2's sender rules to a single stream; the codec applies them while
    sending. Same main stream, same channel files, compressed payloads included."""
    spec = "multifd" if compression == "none" else f"multifd-{compression}"
    single = tmp_path / "single.mig"
    with TraceReader(trace) as r:
        replay(r, parse_spec("none", pm.presets), pm, qemu_stream=single)
    main, chans = split_stream(single, tmp_path / "split", channels=2, compression=compression)
    _res, m, cs = run(trace, spec, pm)
    assert main.read_bytes() == m
    assert [c.read_bytes() for c in chans] == cs


@pytest.mark.parametrize("spec", [*PRESETS, "multifd-zlib,qemu-version=10.2",
                                  "multifd,qemu-version=10.2,zero-page-detection=legacy"])
def test_batching_does_not_change_a_byte(trace, pm, spec):
    outs = [run(trace, spec, pm, max_pages=n)[1:] for n in (1, 3, 4096)]
    assert outs[0] == outs[1] == outs[2]


# --- QEMU 7.2's counters and wire rules ---------------------------------------------------------------
def test_counters_follow_qemu_72(trace, pm, tmp_path):
    results = {spec: run(trace, spec, pm) for spec in PRESETS}
    none = run(trace, "none", pm)[0]
    for spec, (res, main, chans) in results.items():
        mf = res["multifd"]
        ram = res["ram"]
        # every non-zero page went through a channel; zero pages stayed on the main stream
        assert ram["normal"] == none["ram"]["normal"] == mf["pages"]
        assert ram["duplicate"] == none["ram"]["duplicate"] == res["records"]["zero"]
        assert "page" not in res["records"]
        # 7.2: pages uncompressed + one header per packet, SYNC packets too, handshakes not counted
        assert ram["multifd-bytes"] == mf["pages"] * PS + (mf["packets"] + mf["sync-packets"]) * HDR
        # one SYNC per channel in setup and per section
        with TraceReader(trace) as r:
            rounds = r.num_rounds
        assert mf["sync-packets"] == 2 * (1 + rounds)
        assert mf["wire-bytes"] == sum(len(c) for c in chans) == sum(c["bytes"] for c in res["channels"])
        assert res["wire"]["total"] == len(main) + mf["wire-bytes"]
    # multifd-bytes is the same with and without compression; the wire is not
    mb = {s: results[s][0]["ram"]["multifd-bytes"] for s in PRESETS}
    assert len(set(mb.values())) == 1
    assert results["multifd-zlib"][0]["multifd"]["wire-bytes"] < mb["multifd"] / 2
    assert results["multifd-zstd"][0]["multifd"]["wire-bytes"] < mb["multifd"] / 2
    assert results["multifd"][0]["multifd"]["wire-bytes"] == mb["multifd"] + 2 * 64  # + the handshakes


def test_transferred_is_main_stream_records_plus_multifd_bytes(trace, pm):
    res, main, _ = run(trace, "multifd", pm)
    ram, w = res["ram"], res["wire"]
    rounds = len(res["rounds"])
    # ZERO records + iteration EOS markers on the main stream, plus the channels' charge
    assert ram["transferred"] == w["zero"] + 8 * (rounds - 1) + ram["multifd-bytes"]


def channel_packets(data: bytes, layout: str = LAYOUT_72):
    r = StreamReader(data, "channel")
    init = read_initial_packet(r)
    out = []
    while not r.at_end():
        out.append(read_packet_header(r, PS, len(out), layout))
    return init, out


def test_packets_follow_qemu_72(trace, pm):
    res, main, chans = run(trace, "multifd,multifd-channels=3", pm)
    pk = [channel_packets(c) for c in chans]
    assert [i.channel_id for i, _ in pk] == [0, 1, 2]
    nums = sorted(p.packet_num for _, ps in pk for p in ps)
    assert nums == list(range(len(nums)))  # global, every number used once
    # setup: one SYNC per channel, numbers 0..2 in channel order
    assert [ps[0].packet_num for _, ps in pk] == [0, 1, 2] and all(ps[0].sync for _, ps in pk)
    data = sorted(((p.packet_num, k, p) for k, (_, ps) in enumerate(pk) for p in ps if p.normal_pages))
    # strict round robin over the data packets between syncs
    ks = [k for _, k, _ in data]
    assert ks[:6] == [0, 1, 2, 0, 1, 2]
    assert all(p.normal_pages <= 128 for _, _, p in data)
    # a packet is one block, ascending offsets; full unless the block changes or a sync follows
    for _, _, p in data:
        assert np.all(np.diff(p.offsets.astype(np.int64)) > 0)
    # SYNC packets keep the channel's stale next_packet_size (7.2 reuses the buffer)
    for _, ps in pk:
        for a, b in zip(ps, ps[1:]):
            if b.sync and a.normal_pages:
                assert b.next_packet_size == a.next_packet_size


# --- QEMU 10.2 -------------------------------------------------------------------------------------------
def qemu_partition(zero: np.ndarray) -> tuple[np.ndarray, int]:
    """multifd_send_zero_page_detect's loop, literally."""
    off = list(range(len(zero)))
    i, j = 0, len(zero) - 1
    while i <= j:
        if not zero[off[i]]:
            i += 1
            continue
        off[i], off[j] = off[j], off[i]
        j -= 1
    return np.array(off), i


@settings(max_examples=examples(300), deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=128))
def test_zero_page_partition_is_qemus_loop(zero):
    z = np.array(zero)
    got, k = zero_page_partition(z)
    want, kw = qemu_partition(z)
    assert k == kw and got.tolist() == want.tolist()


def test_qemu_102_layout_and_sync(trace, pm):
    res, main, chans = run(trace, "multifd,qemu-version=10.2", pm)
    # 10.x: no ZERO records, a MULTIFD_FLUSH per pass (and in setup)
    with TraceReader(trace) as r:
        rounds = r.num_rounds
    assert "zero" not in res["records"] and res["wire"]["multifd_flush"] == 8 * (rounds + 1)
    pk = [channel_packets(c, LAYOUT_ZERO_PAGES) for c in chans]
    zero = sum(p.zero_pages for _, ps in pk for p in ps)
    normal = sum(p.normal_pages for _, ps in pk for p in ps)
    assert zero == res["ram"]["duplicate"] > 0 and normal == res["ram"]["normal"]
    for _, ps in pk:
        for p in ps:
            if p.sync:  # memset, then only flags and packet_num
                assert p.pages_alloc == 0 and p.next_packet_size == 0
            else:
                assert p.pages_alloc == 128 and p.normal_pages + p.zero_pages > 0
    # 10.x counts the bytes really written, handshakes included
    assert res["ram"]["multifd-bytes"] == sum(len(c) for c in chans)
    # a 7.2 reader refuses packets with zero pages
    refused = 0
    for c in chans:
        try:
            channel_packets(c, LAYOUT_72)
        except WireError as e:
            assert "zero_pages" in str(e)
            refused += 1
    assert refused


def test_encode_packet_layouts():
    a = encode_packet(0x2, 7, "pc.ram", [0x1000, 0x3000], PS, zero_offsets=[0x2000], next_packet_size=99,
                      layout=LAYOUT_ZERO_PAGES)
    p = read_packet_header(StreamReader(a + bytes(99)), PS, 0, LAYOUT_ZERO_PAGES)
    assert (p.normal_pages, p.zero_pages, p.packet_num, p.ramblock, p.compression) == (2, 1, 7, "pc.ram", "zlib")
    assert p.offsets.tolist() == [0x1000, 0x3000] and p.zero_offsets.tolist() == [0x2000]
    s = encode_packet(MULTIFD_FLAG_SYNC, 8, "", (), PS, next_packet_size=0, layout=LAYOUT_ZERO_PAGES)
    assert s[12:16] == bytes(4) and s[64:] == bytes(len(s) - 64)
    with pytest.raises(ValueError):
        encode_packet(0, 1, "pc.ram", [0], PS, zero_offsets=[PS])  # 7.2 has no zero pages


@pytest.mark.parametrize("spec", ["multifd,qemu-version=10.2", "multifd-zstd,qemu-version=10.2",
                                  "multifd-zlib,qemu-version=10.2,zero-page-detection=none",
                                  "multifd,qemu-version=10.2,zero-page-detection=legacy,multifd-channels=4"])
def test_verify_qemu_102(trace, pm, spec):
    res = verify(TraceReader(trace), parse_spec(spec, pm.presets), pm)
    assert res.ok, res.mismatch
    assert res.metrics["cpu_decode"]["multifd"] > 0


def test_qemu_41_multifd_is_not_modelled(trace, pm):
    with pytest.raises(PageCodecError, match="qemu-version=4.1 is not modelled"):
        run(trace, "multifd,qemu-version=4.1", pm)


# --- verify ----------------------------------------------------------------------------------------------
@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    pages=st.integers(16, 400),
    extra_block=st.booleans(),
    rounds=st.integers(1, 5),
    dirty=st.floats(0.01, 1.0),
    zero=st.floats(0, 1),
    seed=st.integers(0, 2**31),
    spec=st.sampled_from([*PRESETS, "multifd,multifd-channels=3", "multifd-zstd,qemu-version=10.2",
                          "multifd-zlib,qemu-version=10.2,multifd-channels=1",
                          "multifd,qemu-version=10.2,zero-page-detection=none"]),
)
def test_verify_generated(tmp_path_factory, pm, pages, extra_block, rounds, dirty, zero, seed, spec):
    path = tmp_path_factory.mktemp("gen") / "g.trace.parquet"
    blocks = [("pc.ram", pages * PS)] + ([("pc.bios", 8 * PS)] if extra_block else [])
    synthesize(path, ram_size=0, blocks=blocks, rounds=rounds, dirty_fraction=dirty, patterns="sparse=2,random=1,text=1",
               zero_fraction=zero, seed=seed, row_group_pages=64)
    res = verify(TraceReader(path), parse_spec(spec, pm.presets), pm)
    assert res.ok, res.mismatch


def corpus_files() -> list[Path]:
    return [ROOT / "corpora" / e["file"] for e in json.loads((ROOT / "corpora" / "MANIFEST.json").read_text())]


@pytest.mark.slow
@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_verify_corpus_multifd(path, pm):
    """Every corpus trace: 7.2 multifd-zstd and 10.2 multifd (the CLI checks all presets, see README)."""
    for spec in ("multifd-zstd", "multifd,qemu-version=10.2"):
        res = verify(TraceReader(path), parse_spec(spec, pm.presets), pm)
        assert res.ok, (spec, res.mismatch)


def flip(at: int, data: bytes, where: int, value: bytes) -> bytes:
    return data[:where] + value + data[where + len(value):] if at <= where < at + len(data) else data


@pytest.mark.parametrize("spec,damage,exc,match", [
    ("multifd", "magic", WireError, "packet magic"),
    ("multifd-zlib", "payload", DecodeError, "zlib payload of packet"),
    ("multifd-zstd", "payload", DecodeError, "zstd payload of packet"),
    ("multifd", "offset", WireError, "outside block|not page aligned"),
    ("multifd", "truncate", WireError, "waits for this channel's SYNC|truncated"),
    ("multifd,qemu-version=10.2", "zero_pages", WireError, "zero pages in a packet"),
])
def test_damaged_channel_fails_verify(trace, pm, spec, damage, exc, match):
    """Damage the first data packet of channel 1 in round 1: verify fails naming channel-1.bin and the
    byte offset."""
    layout = LAYOUT_ZERO_PAGES if "10.2" in spec else LAYOUT_72
    state: dict[int, int] = {}
    hit = {}

    def tamper_channel(k, r, chunk):
        base = state.setdefault(k, 0)
        state[k] = base + len(chunk)
        if k != 1 or r != 1:
            return chunk
        rd = StreamReader(chunk, base=base)
        while True:
            p = read_packet_header(rd, PS, 0, layout)
            if p.normal_pages:
                break
        hit["at"] = base + p.at
        if damage == "magic":
            where = p.at
            val = b"\xde\xad\xbe\xef"
        elif damage == "payload":
            where = p.payload_at  # the first deflate / zstd block header: a reserved block type
            val = b"\xff\xff\xff\xff\xff\xff"
            hit["at"] = base + p.payload_at
        elif damage == "offset":
            where = p.at + 320
            val = (0x7FFFFFFF000).to_bytes(8, "big")
            hit["at"] = base + where
        elif damage == "zero_pages":
            where = p.at + 32
            val = (200).to_bytes(4, "big")
            hit["at"] = base + where
        else:
            hit["at"] = base + p.at
            return chunk[: p.at + 100]
        return chunk[:where] + val + chunk[where + len(val):]

    with pytest.raises(exc, match=match) as ei:
        verify(TraceReader(trace), parse_spec(spec, pm.presets), pm, tamper_channel=tamper_channel)
    msg = str(ei.value)
    assert msg.startswith("channel-1.bin: offset "), msg
    assert "\n" not in msg
    if damage != "truncate":
        assert f"offset {hit['at']}:" in msg, (msg, hit)


def test_leftover_channel_bytes_fail_verify(trace, pm):
    def tamper_channel(k, r, chunk):
        return chunk + b"\0" * 10 if (k, r) == (0, 4) else chunk

    with pytest.raises(WireError, match="channel-0.bin: offset .*bytes after the channel's last SYNC"):
        verify(TraceReader(trace), parse_spec("multifd", pm.presets), pm, tamper_channel=tamper_channel)


# --- CLI -------------------------------------------------------------------------------------------------
def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", "--no-progress", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_replay_writes_a_capture_directory(trace, tmp_path):
    out = tmp_path / "cap"
    p = cli("replay", str(trace), "--config", "multifd-zstd", "--qemu-stream", str(out), "--json", str(tmp_path / "r.json"))
    assert p.returncode == 0, p.stderr
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["multifd"]["compression"] == "zstd" and res["ram"]["multifd-bytes"] > res["multifd"]["wire-bytes"]
    back = tmp_path / "back.parquet"
    p = cli("trace", "import-qemu", str(out / "main.mig"), "--channel", str(out / "channel-0.bin"),
            "--channel", str(out / "channel-1.bin"), "-o", str(back))
    assert p.returncode == 0, p.stderr
    assert read_rows(back) == read_rows(trace)
    # an existing, non-empty directory is refused (nothing is mixed into it)
    p = cli("replay", str(trace), "--config", "multifd", "--qemu-stream", str(out))
    assert p.returncode == 2 and "not empty" in p.stderr and p.stderr.count("\n") == 1
    p = cli("verify", str(trace), "--config", "multifd-zlib")
    assert p.returncode == 0 and "verify: OK" in p.stdout, p.stderr
    p = cli("--qemu-version", "10.2", "verify", str(trace), "--config", "multifd")
    assert p.returncode == 0 and "verify: OK" in p.stdout, p.stderr


# --- real QEMU 7.2 ---------------------------------------------------------------------------------------
MEM_MIB = 64


# qemu_dir and guest_disk: tests/conftest.py


@pytest.fixture(scope="module")
def qemu_layout_trace(qemu_dir, guest_disk) -> Path:
    """A synthetic trace with exactly the RAM blocks of pc-i440fx-7.2 -m 64 (info ramblock)."""
    from pagecodec.qemu.machine import VM

    with VM(qemu_dir, disk=guest_disk, name="layout", memory_mib=MEM_MIB, paused=True) as vm:
        blocks = [(b.name, b.used) for b in vm.ram_blocks()]
    return qemu_layout_trace_file(qemu_dir / "layout.parquet", blocks, rounds=4, seed=12, mem_mib=MEM_MIB)




@pytest.mark.qemu
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_multifd_output_loads_into_qemu(qemu_dir, guest_disk, qemu_layout_trace, pm, compression):
    """main.mig on the first connection, channel-<k>.bin on one each, into QEMU 7.2 -incoming with
    multifd on: the destination's pc.ram is the trace's final image."""
    from pagecodec.qemu.machine import VM
    from pagecodec.sources.qemu_live import MultifdPlayer, listen_multifd_incoming

    spec = "multifd" if compression == "none" else f"multifd-{compression}"
    out = qemu_dir / f"out-{compression}"
    with TraceReader(qemu_layout_trace) as r:
        res = replay(r, parse_spec(f"{spec},multifd-channels=3", pm.presets), pm, qemu_stream=out,
                     machine="pc-i440fx-7.2")
    chans = [out / f"channel-{k}.bin" for k in range(3)]
    with VM(qemu_dir, disk=guest_disk, name=f"dst-{compression}", memory_mib=MEM_MIB, incoming=True,
            ram_file=qemu_dir / f"dst-{compression}.ram") as dst:
        addr = listen_multifd_incoming(dst.qmp, 3, compression)
        with MultifdPlayer(addr, out / "main.mig", chans) as player:
            wait_incoming(dst)
            player.join()
        assert dst.stderr_text() == ""
        assert dst.status() == "paused"
        ram = np.frombuffer(dst.pc_ram(), np.uint8)
    want = final_image(qemu_layout_trace)[: MEM_MIB * MIB // PS].reshape(-1)
    bad = np.flatnonzero((ram.reshape(-1, PS) != want.reshape(-1, PS)).any(axis=1))
    assert bad.size == 0, f"{bad.size} pages differ, first at {int(bad[0]) * PS:#x}"
    assert res["multifd"]["pages"] > 0 and res["ram"]["duplicate"] > 0
