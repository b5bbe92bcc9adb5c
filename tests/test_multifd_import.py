"""Multifd captures (QEMU 7.2): channel files, the merge into one stream, rounds, capture over TCP.

Without QEMU: a model of QEMU 7.2's page search (sections cut by a rate limit, the search resuming one
page past the last page sent, dirty-bitmap syncs only between sections, one final sync before the END
section) writes a single stream; :func:`split_stream` turns it into main stream + channel files by the
7.2 sender's rules (with and without the sync race, none/zlib/zstd); importing the multifd capture must
give exactly the trace the single stream gives — same rounds, same rows. Crafted damage to channel
files must fail with the file, byte offset and reason, and write nothing. 7.2's requeue race (the last
page of a full packet queued again as the first page of the next) is modelled by ``split_stream(requeue=)``
and crafted with differing copies: the page is written once, the later packet's copy wins; duplicates of
any other shape are refused.

With QEMU (marker ``qemu``): the tiny guest is migrated with multifd (2 channels) through pagecodec's
recorder acting as a tee proxy to a real QEMU destination; the trace's final pc.ram equals the
destination's (read from its backing file), for none, zlib and zstd. The CLI captures with ``--multifd 2``
and imports the kept files again with ``--channel``; the rebuilt single stream loads into a QEMU
destination *without* multifd and gives the same RAM. A guest that dirties all 143 pages it can reach
with no wait fills one packet per pass, so QEMU shows the requeue race (checked against QEMU's own
multifd-bytes counter and the destination's RAM).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_incoming
from pagecodec.errors import DecodeError, WireError
from pagecodec.trace.format import TraceReader
from pagecodec.sources.qemu_stream import (
    import_multifd,
    import_qemu_stream,
    read_channel,
    read_main_stream,
    split_stream,
)
from pagecodec.wire.multifd import MULTIFD_FLAG_SYNC, PACKET_HEADER_SIZE

PS = 4096
MIB = 1 << 20


def be32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def be64(v: int) -> bytes:
    return v.to_bytes(8, "big")


# --- a model of QEMU 7.2's sender without multifd ----------------------------------------------------
BLOCKS = (("pc.ram", 700 * PS), ("vga.vram", 40 * PS), ("pc.bios", 24 * PS))


def qemu_like_stream(path: Path, *, seed: int = 1, budget: int = 230, sections: int = 14, sync_every: int = 2,
                     reset_at: int | None = None, zero_fraction: float = 0.5, blocks=BLOCKS) -> np.ndarray:
    """Write a QEVM stream as QEMU 7.2 would (no multifd); returns the final RAM (pages, global order).

    Each PART section sends up to ``budget`` dirty pages, searching from one page past the last page
    sent and wrapping at the end of RAM; every ``sync_every`` sections a dirty-bitmap sync dirties a
    random set of pages with new content (some zero, some unchanged); ``reset_at``: that section's
    search starts over at the first page (ram_state_reset). The END section follows a last sync and
    sends everything left."""
    rng = np.random.default_rng(seed)
    npages = [ln // PS for _, ln in blocks]
    starts = np.concatenate([[0], np.cumsum(npages)])
    total = int(starts[-1])
    ram = np.zeros((total, PS), np.uint8)
    nz = rng.random(total) >= zero_fraction
    ram[nz, :16] = rng.integers(1, 256, (int(nz.sum()), 16), dtype=np.uint8)
    dirty = np.ones(total, bool)
    last = [0]
    last_block = [None]
    out = bytearray(b"QEVM" + be32(3) + b"\x07" + be32(13) + b"pc-i440fx-7.2")

    def section(kind: int, sid: int = 2) -> None:
        out.extend(bytes([kind]) + be32(sid))
        if kind == 1:
            out.extend(b"\x03ram" + be32(0) + be32(4))

    def footer(sid: int = 2) -> None:
        out.extend(b"\x7e" + be32(sid))

    def send(g: int) -> None:
        bi = int(np.searchsorted(starts, g, side="right") - 1)
        off = (g - int(starts[bi])) * PS
        zero = not ram[g].any()
        flag = 0x02 if zero else 0x08
        if last_block[0] == bi:
            out.extend(be64(off | flag | 0x20))
        else:
            name = blocks[bi][0].encode()
            out.extend(be64(off | flag) + bytes([len(name)]) + name)
            last_block[0] = bi
        out.extend(b"\0" if zero else ram[g].tobytes())
        dirty[g] = False
        last[0] = g + 1

    def sweep(limit: int | None) -> None:
        sent = 0
        while limit is None or sent < limit:
            nxt = np.flatnonzero(dirty[last[0]:])
            if len(nxt):
                g = last[0] + int(nxt[0])
            else:
                nxt = np.flatnonzero(dirty[: last[0]])
                if not len(nxt):
                    return
                g = int(nxt[0])
            send(g)
            sent += 1

    def sync() -> None:
        pick = rng.choice(total, size=int(rng.integers(5, total // 6)), replace=False)
        for g in pick.tolist():
            u = rng.random()
            if u < 0.3:
                ram[g] = 0
            elif u < 0.9:
                ram[g, rng.integers(0, PS - 8)] = rng.integers(1, 256)
            # else: dirtied, content unchanged
        dirty[pick] = True

    section(1)
    out.extend(be64(total * PS | 0x04))
    for name, ln in blocks:
        out.extend(bytes([len(name)]) + name.encode() + be64(ln))
    out.extend(be64(0x10))
    footer()
    for s in range(sections):
        if s and s % sync_every == 0:
            sync()
        if reset_at is not None and s == reset_at:
            last[0] = 0
        section(2)
        sweep(budget)
        out.extend(be64(0x10))
        footer()
    sync()
    section(3)
    sweep(None)
    out.extend(be64(0x10))
    footer()
    desc = json.dumps({"page_size": PS, "devices": []}).encode()
    out.extend(b"\x00\x06" + be32(len(desc)) + desc)
    path.write_bytes(bytes(out))
    return ram


def read_rows(path: Path) -> tuple[int, list[tuple[int, int, int, bytes]]]:
    """(number of rounds, every row as (round, block, offset, page bytes))."""
    rows = []
    with TraceReader(path) as r:
        for b in r.batches():
            rows += [(b.round, int(bl), int(o), p.tobytes()) for bl, o, p in zip(b.block, b.offset, b.pages)]
        return r.num_rounds, rows


def final_image(path: Path) -> np.ndarray:
    with TraceReader(path) as r:
        sizes = [b.used_length // PS for b in r.meta.blocks]
        starts = np.concatenate([[0], np.cumsum(sizes)])
        img = np.zeros((int(starts[-1]), PS), np.uint8)
        for b in r.batches():
            img[starts[b.block] + b.offset // PS] = b.pages
    return img


def leftovers(d: Path) -> list[str]:
    return [p.name for p in d.iterdir() if p.name.startswith(".pagecodec-")]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    d = tmp_path_factory.mktemp("mfd")
    stream = d / "single.mig"
    ram = qemu_like_stream(stream)
    trace = d / "single.parquet"
    rep = import_qemu_stream(stream, trace)
    return {"dir": d, "stream": stream, "ram": ram, "trace": trace, "report": rep}


@pytest.fixture(scope="module")
def split2(single):
    d = single["dir"] / "split2"
    main, chans = split_stream(single["stream"], d, channels=2, sync_race=lambda s: s % 3 == 1)
    return main, chans


# --- the merge gives back the single stream's trace ----------------------------------------------------
@pytest.mark.parametrize("channels,compression,race", [
    (1, "none", False), (2, "none", True), (3, "none", False), (2, "zlib", True), (3, "zstd", True),
])
def test_multifd_import_equals_single_stream_import(single, tmp_path, channels, compression, race):
    assert single["report"].rounds >= 4, single["report"].pages_per_round
    main, chans = split_stream(single["stream"], tmp_path / "cap", channels=channels, compression=compression,
                               sync_race=(lambda s: s % 2 == 0) if race else None)
    ms = read_main_stream(main)
    assert ms.page_records == 0 and ms.zero_records > 0
    trace = tmp_path / "m.parquet"
    keep = tmp_path / "rebuilt.mig"
    seen: list[tuple[int, int | None]] = []
    rep = import_multifd(main, list(reversed(chans)), trace, single_stream=keep,  # any order of channel files
                         progress=lambda n, total=None: seen.append((n, total)))
    assert seen[0] == (0, keep.stat().st_size) and sum(n for n, _ in seen) == keep.stat().st_size  # progress in bytes
    assert rep.compression == compression
    assert rep.restarts == 0 and rep.order_conflicts == 0
    assert (rep.sync_packets_with_pages > 0) == race
    assert rep.sections == single["report"].ram_sections
    assert rep.rounds == single["report"].rounds and rep.pages_per_round == single["report"].pages_per_round
    assert read_rows(trace) == read_rows(single["trace"])
    assert np.array_equal(final_image(trace), single["ram"])
    # the rebuilt single stream is the original one, byte for byte
    assert keep.read_bytes() == single["stream"].read_bytes()
    assert leftovers(tmp_path) == []


def test_split_follows_qemu_sender_rules(single, split2):
    main, chans = split2
    ms = read_main_stream(main)
    layout = ms.layout
    cs = [read_channel(c, layout) for c in chans]
    assert [c.id for c in cs] == [0, 1]
    for c in cs:
        assert c.syncs == len(ms.sections)
        # every data packet holds pages of one block, at most 128, and never crosses a sync
        assert all(n <= 128 for n in c.normal)
        assert all(c.num[k] >= c.num[k - 1] for k in range(1, c.packets))
    # the first packets are the setup sync (numbers 0, 1), as in QEMU 7.2
    assert [cs[0].num[0], cs[1].num[0]] == [0, 1] and all(c.flags[0] & MULTIFD_FLAG_SYNC for c in cs)
    assert sum(c.sync_with_pages for c in cs) > 0


def test_section_restart_is_detected_from_zero_records(tmp_path):
    """ram_state_reset makes a section start over at the first page: its ZERO records contradict
    'resume after the last page'; the merge re-derives the start and the trace still matches."""
    stream = tmp_path / "s.mig"
    ram = qemu_like_stream(stream, seed=5, reset_at=5, zero_fraction=0.6)
    import_qemu_stream(stream, tmp_path / "a.parquet")
    main, chans = split_stream(stream, tmp_path / "cap", channels=2)
    rep = import_multifd(main, chans, tmp_path / "b.parquet")
    assert rep.restarts >= 1
    assert read_rows(tmp_path / "a.parquet") == read_rows(tmp_path / "b.parquet")
    assert np.array_equal(final_image(tmp_path / "b.parquet"), ram)


@pytest.mark.parametrize("seed,budget", [(2, 50), (3, 400), (4, 9), (6, 765)])
def test_rounds_match_for_other_schedules(tmp_path, seed, budget):
    stream = tmp_path / "s.mig"
    qemu_like_stream(stream, seed=seed, budget=budget, sections=10, sync_every=1 + seed % 3)
    a = import_qemu_stream(stream, tmp_path / "a.parquet")
    main, chans = split_stream(stream, tmp_path / "cap", channels=1 + seed % 3, sync_race=lambda s: s % 2 == 1)
    b = import_multifd(main, chans, tmp_path / "b.parquet")
    assert b.pages_per_round == a.pages_per_round
    assert read_rows(tmp_path / "a.parquet") == read_rows(tmp_path / "b.parquet")


# --- damaged captures: clear errors, nothing written ----------------------------------------------------
def patched(src: Path, dst: Path, at: int, data: bytes) -> Path:
    b = bytearray(src.read_bytes())
    b[at : at + len(data)] = data
    dst.write_bytes(bytes(b))
    return dst


def fails(tmp_path: Path, main: Path, chans: list[Path], exc=WireError, match: str = "") -> str:
    out = tmp_path / "t.parquet"
    with pytest.raises(exc, match=match) as ei:
        import_multifd(main, chans, out)
    assert not out.exists() and leftovers(tmp_path) == []
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


@pytest.fixture(scope="module")
def parsed(split2):
    main, chans = split2
    ms = read_main_stream(main)
    return ms, [read_channel(c, ms.layout) for c in chans]


def data_packet(ch, nth: int = 0) -> int:
    ks = [k for k in range(ch.packets) if ch.normal[k] and not ch.flags[k] & MULTIFD_FLAG_SYNC]
    return ks[nth]


def test_truncated_packet(tmp_path, split2, parsed):
    main, chans = split2
    ch = parsed[1][1]
    k = data_packet(ch, 1)
    cut = ch.payload_at[k] + 100
    bad = tmp_path / "c1.bin"
    bad.write_bytes(chans[1].read_bytes()[:cut])
    msg = fails(tmp_path, main, [chans[0], bad], match="truncated packet: its payload")
    assert f"{bad}: offset {ch.payload_at[k]}:" in msg
    bad.write_bytes(chans[1].read_bytes()[: ch.at[k] + 500])
    msg = fails(tmp_path, main, [chans[0], bad], match="truncated packet: its header needs 1344 bytes")
    assert f"offset {ch.at[k]}:" in msg
    bad.write_bytes(chans[1].read_bytes()[:30])
    fails(tmp_path, main, [chans[0], bad], match="initial packet .* needs 64 bytes")


def test_missing_sync_packets(tmp_path, split2, parsed):
    """A channel file cut at a packet boundary: it lacks the last syncs."""
    main, chans = split2
    ch = parsed[1][0]
    bad = tmp_path / "c0.bin"
    bad.write_bytes(chans[0].read_bytes()[: ch.at[ch.packets - 1]])
    fails(tmp_path, main, [bad, chans[1]], match=r"channel 0 carries \d+ SYNC packets but the main stream has \d+ RAM sections")


def test_bad_magic_and_version(tmp_path, split2, parsed):
    main, chans = split2
    ch = parsed[1][0]
    k = data_packet(ch, 2)
    bad = patched(chans[0], tmp_path / "c0.bin", ch.at[k], be32(0x11223345))
    msg = fails(tmp_path, main, [bad, chans[1]], match="packet magic 0x11223345, expected 0x11223344")
    assert f"offset {ch.at[k]}:" in msg
    bad = patched(chans[0], tmp_path / "c0.bin", ch.at[k] + 4, be32(2))
    fails(tmp_path, main, [bad, chans[1]], match="packet version 2, expected 1")
    bad = patched(chans[0], tmp_path / "c0.bin", 0, be32(0xDEADBEEF))
    msg = fails(tmp_path, main, [bad, chans[1]], match="not a multifd channel: initial packet magic 0xdeadbeef")
    assert f"{bad}: offset 0:" in msg
    fails(tmp_path, main, [main, chans[1]], match="this is a main stream")


def test_offset_outside_block_or_unaligned(tmp_path, split2, parsed):
    main, chans = split2
    ms, cs = parsed
    ch = cs[0]
    k = data_packet(ch, 0)
    slot = ch.at[k] + PACKET_HEADER_SIZE + 8 * 3
    bad = patched(chans[0], tmp_path / "c0.bin", slot, be64(700 * PS))
    msg = fails(tmp_path, main, [bad, chans[1]], match=r"page offset 0x2bc000 \(page 3 of the packet\) is outside block 'pc.ram' of 0x2bc000 bytes")
    assert f"offset {slot}:" in msg
    bad = patched(chans[0], tmp_path / "c0.bin", slot, be64(5 * PS + 8))
    fails(tmp_path, main, [bad, chans[1]], match="is not page aligned")


def test_unknown_block(tmp_path, split2, parsed):
    main, chans = split2
    ch = parsed[1][1]
    k = data_packet(ch, 0)
    bad = patched(chans[1], tmp_path / "c1.bin", ch.at[k] + 64, b"pc.rax\0")
    msg = fails(tmp_path, main, [chans[0], bad], match=r"unknown RAM block 'pc.rax' \(the main stream's MEM_SIZE lists 'pc.ram', 'vga.vram', 'pc.bios'\)")
    assert f"offset {ch.at[k] + 64}:" in msg


def test_packet_num_backwards_or_repeated(tmp_path, split2, parsed):
    main, chans = split2
    ch = parsed[1][0]
    k = data_packet(ch, 3)
    bad = patched(chans[0], tmp_path / "c0.bin", ch.at[k] + 24, be64(ch.num[k - 1] - 1))
    msg = fails(tmp_path, main, [bad, chans[1]], match=rf"packet_num {ch.num[k - 1] - 1} goes backwards \(the channel's previous packet, at offset {ch.at[k - 1]}, has {ch.num[k - 1]}\)")
    assert f"offset {ch.at[k] + 24}:" in msg
    bad = patched(chans[0], tmp_path / "c0.bin", ch.at[k] + 24, be64(ch.num[k - 1]))
    fails(tmp_path, main, [bad, chans[1]], match="repeats the previous packet's")
    # a number the other channel uses (between the two neighbours, so the order stays monotonic)
    other = parsed[1][1]
    mid = [n for n in other.num if ch.num[k - 1] < n < ch.num[k]]
    assert mid
    bad = patched(chans[0], tmp_path / "c0.bin", ch.at[k] + 24, be64(mid[0]))
    fails(tmp_path, main, [bad, chans[1]], match=f"packet_num {mid[0]} also used by channel [01] .*global and unique")


def test_missing_or_repeated_channel(tmp_path, split2):
    main, chans = split2
    fails(tmp_path, main, [chans[0]], match=r"packet numbers below \d+ never occur .* a channel file is missing")
    fails(tmp_path, main, [chans[1]], match=r"channel ids \[1\] of 1 channel files: .* channel\(s\) \[0\] are missing")
    fails(tmp_path, main, [chans[0], chans[0]], match="channel id 0 also in")
    fails(tmp_path, main, [], match="at least one channel file")


def test_page_sent_twice_in_a_section(tmp_path, split2, parsed):
    main, chans = split2
    ch = parsed[1][0]
    k = data_packet(ch, 0)
    first = int.from_bytes(chans[0].read_bytes()[ch.at[k] + PACKET_HEADER_SIZE : ch.at[k] + PACKET_HEADER_SIZE + 8], "big")
    bad = patched(chans[0], tmp_path / "c0.bin", ch.at[k] + PACKET_HEADER_SIZE + 8, be64(first))
    msg = fails(tmp_path, main, [bad, chans[1]], match=rf"block 'pc.ram' offset {first:#x} is sent twice \(packet {k} ")
    assert f"{bad}: offset {ch.at[k] + PACKET_HEADER_SIZE + 8}: RAM section " in msg
    assert "except the last page of a full packet queued again" in msg and "which this is not" in msg


def test_main_stream_problems(tmp_path, single, split2):
    main, chans = split2
    # the single stream (PAGE records) is not the main stream of a multifd capture
    fails(tmp_path, single["stream"], chans, match="PAGE record in the main stream of a multifd capture")
    # a main stream cut inside the RAM data
    cut = tmp_path / "main.mig"
    cut.write_bytes(main.read_bytes()[:5000])
    fails(tmp_path, cut, chans, match="truncated")


def test_corrupt_compressed_payload(tmp_path, single):
    main, chans = split_stream(single["stream"], tmp_path / "cap", channels=2, compression="zlib")
    ms = read_main_stream(main)
    ch = read_channel(chans[1], ms.layout)
    k = data_packet(ch, 1)
    bad = patched(chans[1], tmp_path / "c1.bin", ch.payload_at[k] + 5, b"\xff\xff\xff\xff")
    msg = fails(tmp_path, main, [chans[0], bad], exc=DecodeError, match=f"zlib payload of packet {k} .*(does not inflate|gives)")
    assert f"offset {ch.payload_at[k]}" in msg


def test_cli_import_with_channels(tmp_path, split2, single):
    main, chans = split2
    out = tmp_path / "t.parquet"
    args = [sys.executable, "-m", "pagecodec.cli", "trace", "import-qemu", str(main)]
    for c in chans:
        args += ["--channel", str(c)]
    p = subprocess.run(args + ["-o", str(out), "--json"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rep = json.loads(p.stdout)
    assert rep["import"]["pages_per_round"] == single["report"].pages_per_round
    assert [c["id"] for c in rep["channels"]] == [0, 1]
    assert read_rows(out) == read_rows(single["trace"])
    with TraceReader(out) as r:
        assert "--channel" in r.meta.provenance.command
    p = subprocess.run(args[:-2] + ["-o", str(tmp_path / "u.parquet")], capture_output=True, text=True)
    assert p.returncode == 2 and "pagecodec: error:" in p.stderr and "a channel file is missing" in p.stderr
    assert not (tmp_path / "u.parquet").exists()



# --- pages QEMU 7.2 queues twice (multifd_queue_page's race) ------------------------------------------------
@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    """A single stream whose first pass fills packets (few zero pages), so captures have full packets."""
    d = tmp_path_factory.mktemp("dense")
    stream = d / "single.mig"
    ram = qemu_like_stream(stream, seed=7, zero_fraction=0.1, budget=400, sections=10)
    trace = d / "single.parquet"
    rep = import_qemu_stream(stream, trace)
    return {"dir": d, "stream": stream, "ram": ram, "trace": trace, "report": rep}


@dataclass
class Twice:
    """One page a capture carries twice in a window as QEMU's requeue race does (uncompressed offsets)."""

    window: int
    g: int
    earlier: tuple[int, int]  # (index in the channel list, packet index): the full packet it ends
    later: tuple[int, int]    # the next data packet, which it starts
    earlier_at: int           # file offset of the earlier copy's page bytes
    later_at: int
    later_sync: bool          # the later packet is a SYNC packet with pages (sync race)
    resent: bool              # a later window sends the page again


def pages_twice(main: Path, chans: list[Path]) -> list[Twice]:
    ms = read_main_stream(main)
    cs = [read_channel(c, ms.layout) for c in chans]
    data = sorted((c.window[k], c.num[k], ci, k) for ci, c in enumerate(cs) for k in range(c.packets) if c.normal[k])
    sent: dict[int, set[int]] = {w: set(s.g.tolist()) for w, s in enumerate(ms.sections)}
    for w, _, ci, k in data:
        sent[w] |= set(cs[ci].pages[cs[ci].first[k] : cs[ci].first[k] + cs[ci].normal[k]].tolist())
    out = []
    for (w, _, ci, k), (w2, _, cj, j) in zip(data, data[1:]):
        a, b = cs[ci], cs[cj]
        last, first = int(a.pages[a.first[k] + a.normal[k] - 1]), int(b.pages[b.first[j]])
        if w == w2 and a.normal[k] == 128 and not a.flags[k] & MULTIFD_FLAG_SYNC and last == first:
            out.append(Twice(w, last, (ci, k), (cj, j), a.payload_at[k] + 127 * PS, b.payload_at[j],
                             bool(b.flags[j] & MULTIFD_FLAG_SYNC), any(last in sent[v] for v in sent if v > w)))
    return out


def requeue_all(calls: list):
    return lambda section, n: calls.append((section, n)) or True


@pytest.mark.parametrize("channels,compression,race", [
    (1, "none", False), (2, "none", True), (3, "none", False), (2, "zlib", True), (3, "zstd", True),
])
def test_pages_queued_twice_are_imported_once(dense, tmp_path, channels, compression, race):
    """Every full packet's last page queued again (same content): the import counts them, keeps one copy
    each, and gives the single stream's trace and the single stream itself, byte for byte — no extra round."""
    calls: list = []
    main, chans = split_stream(dense["stream"], tmp_path / "cap", channels=channels, compression=compression,
                               sync_race=(lambda s: True) if race else None, requeue=requeue_all(calls))
    twice = pages_twice(main, chans)
    assert len(calls) >= 3 and len(twice) == len(calls)
    if race:  # one of them is flushed by the sync and raced: the later copy travels in a SYNC packet
        assert any(t.later_sync for t in twice)
    keep = tmp_path / "rebuilt.mig"
    rep = import_multifd(main, chans, tmp_path / "m.parquet", single_stream=keep)
    assert (rep.duplicate_pages, rep.duplicate_pages_differing, rep.duplicate_pages_not_resent) == (len(calls), 0, 0)
    assert rep.restarts == 0 and rep.order_conflicts == 0
    assert rep.channel_pages == dense["report"].records["page"]
    assert rep.pages_per_round == dense["report"].pages_per_round
    assert keep.read_bytes() == dense["stream"].read_bytes()
    assert read_rows(tmp_path / "m.parquet") == read_rows(dense["trace"])
    j = rep.to_json()
    assert (j["duplicate_pages"], j["duplicate_pages_differing"], j["duplicate_pages_not_resent"]) == (len(calls), 0, 0)


def swap(chans: list[Path], i: int, path: Path) -> list[Path]:
    return [path if n == i else c for n, c in enumerate(chans)]


def test_pages_queued_twice_with_differing_copies_keep_the_later(dense, tmp_path):
    """The copies differ: the later packet's copy is the page's content in its round, whichever of the two
    was changed; it reaches the final image only where no later section sends the page again (counted)."""
    main, chans = split_stream(dense["stream"], tmp_path / "cap", channels=2, requeue=lambda s, n: True)
    twice = pages_twice(main, chans)
    resent = next(t for t in twice if t.resent)
    final = next(t for t in twice if not t.resent)
    out = tmp_path / "t.parquet"
    for t in (resent, final):  # the earlier copy altered: the trace is the single stream's
        bad = patched(chans[t.earlier[0]], tmp_path / "e.bin", t.earlier_at, b"\xee" * 64)
        rep = import_multifd(main, swap(chans, t.earlier[0], bad), out)
        assert rep.duplicate_pages == len(twice) and rep.duplicate_pages_differing == 1
        assert rep.duplicate_pages_not_resent == (0 if t.resent else 1)
        assert read_rows(out) == read_rows(dense["trace"])
    # the later copy altered (never sent again): the trace takes it, in its round and in the final image
    bad = patched(chans[final.later[0]], tmp_path / "l.bin", final.later_at, b"\xee" * 64)
    rep = import_multifd(main, swap(chans, final.later[0], bad), out)
    assert (rep.duplicate_pages_differing, rep.duplicate_pages_not_resent) == (1, 1)
    want = dense["ram"].copy()
    want[final.g, :64] = 0xEE
    assert np.array_equal(final_image(out), want)
    rounds, rows = read_rows(out)
    diff = [r for r, s in zip(rows, read_rows(dense["trace"])[1]) if r != s]
    assert len(diff) == 1 and diff[0][3][:64] == b"\xee" * 64


def slot_at(ch, k: int, i: int) -> int:
    return ch.at[k] + PACKET_HEADER_SIZE + 8 * i


def test_pages_sent_twice_otherwise_are_refused(dense, tmp_path):
    """Duplicates that are not the requeue pattern fail on one line naming the later copy's file and
    offset slot: the last page of a full packet again as the *second* page of the next packet, or as the
    first page of the packet after next; a page both as a ZERO record and in a channel packet."""
    main, chans = split_stream(dense["stream"], tmp_path / "cap", channels=2)
    ms = read_main_stream(main)
    cs = [read_channel(c, ms.layout) for c in chans]
    data = sorted((c.window[k], c.num[k], ci, k) for ci, c in enumerate(cs) for k in range(c.packets)
                  if c.normal[k] and not c.flags[k] & MULTIFD_FLAG_SYNC)
    w, _, ci, k = next(d for d in data if cs[d[2]].normal[d[3]] == 128)
    nxt = [(cj, j) for ww, _, cj, j in data if ww == w and cs[cj].num[j] > cs[ci].num[k]]
    assert len(nxt) >= 2 and cs[nxt[1][0]].id != cs[nxt[0][0]].id
    last = int.from_bytes(chans[ci].read_bytes()[slot_at(cs[ci], k, 127) : slot_at(cs[ci], k, 128)], "big")
    for (cj, j), i in ((nxt[0], 1), (nxt[1], 0)):
        at = slot_at(cs[cj], j, i)
        bad = patched(chans[cj], tmp_path / "c.bin", at, be64(last))
        msg = fails(tmp_path, main, swap(chans, cj, bad), match=rf"RAM section {w}: block 'pc.ram' offset {last:#x} "
                    rf"is sent twice \(packet {k} \(packet_num {cs[ci].num[k]}, offset slot at {slot_at(cs[ci], k, 127)}\)")
        assert msg.startswith(f"{bad}: offset {at}: ") and "which this is not" in msg
    # a ZERO record of the window's section, as a page of one of its packets
    sec = ms.sections[w]
    zg = int(sec.g[(sec.kind == 0) & (sec.g < 700)][0])
    at = slot_at(cs[ci], k, 5)
    bad = patched(chans[ci], tmp_path / "c.bin", at, be64(zg * PS))
    msg = fails(tmp_path, main, swap(chans, ci, bad), match=rf"offset {zg * PS:#x} is sent twice \(ZERO record at offset \d+ of {main}")
    assert msg.startswith(f"{bad}: offset {at}: ") and "a ZERO record and a channel page of one page race" in msg


def test_cli_reports_pages_queued_twice(dense, tmp_path):
    main, chans = split_stream(dense["stream"], tmp_path / "cap", channels=2, requeue=lambda s, n: True)
    n = len(pages_twice(main, chans))
    args = [sys.executable, "-m", "pagecodec.cli", "trace", "import-qemu", str(main), "--channel", str(chans[0]),
            "--channel", str(chans[1])]
    p = subprocess.run(args + ["-o", str(tmp_path / "a.parquet")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"; {n} pages queued twice (later packet's copy kept; 0 with differing copies, 0 of them not sent again))" in p.stdout
    p = subprocess.run(args + ["-o", str(tmp_path / "b.parquet"), "--json"], capture_output=True, text=True)
    assert json.loads(p.stdout)["duplicate_pages"] == n

# --- the recorder without QEMU ------------------------------------------------------------------------
def test_recorder_tees_and_names_connections(tmp_path, split2):
    """Three fake connections (main first, then the channels in reverse) through the recorder to a fake
    destination: every byte is forwarded and recorded, files are named by their first bytes, the
    destination sees the connections in the source's order and its replies reach the source."""
    import socket
    import threading

    from pagecodec.sources.qemu_live import StreamRecorder

    main, chans = split2
    payloads = [main.read_bytes(), chans[1].read_bytes(), chans[0].read_bytes()]
    srv = socket.create_server(("127.0.0.1", 0))
    got: list[bytes] = []

    def destination() -> None:
        for _ in payloads:
            c, _ = srv.accept()
            buf = bytearray()
            while chunk := c.recv(1 << 16):
                buf += chunk
            c.sendall(b"bye")
            c.close()
            got.append(bytes(buf))

    t = threading.Thread(target=destination)
    t.start()
    with StreamRecorder(tmp_path / "rec", forward_to=srv.getsockname()) as rec:
        assert rec.uri == f"tcp:127.0.0.1:{rec.port}"
        replies = []
        for data in payloads:
            s = socket.create_connection(("127.0.0.1", rec.port))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            replies.append(s.recv(16))
            s.close()
        files = rec.finish(3, timeout=10)
    t.join(10)
    srv.close()
    assert got == payloads and replies == [b"bye"] * 3
    assert files.main.read_bytes() == payloads[0]
    assert [p.name for p in files.channels] == ["channel-0.bin", "channel-1.bin"]
    assert [p.read_bytes() for p in files.channels] == [payloads[2], payloads[1]]
    # the recording imports like the originals
    rep = import_multifd(files.main, files.channels, tmp_path / "t.parquet")
    assert rep.channel_pages > 0


def test_recorder_rejects_foreign_connections(tmp_path):
    import socket

    from pagecodec.qemu import QemuError
    from pagecodec.sources.qemu_live import StreamRecorder

    with StreamRecorder(tmp_path / "rec") as rec:
        s = socket.create_connection(("127.0.0.1", rec.port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.close()
        with pytest.raises(QemuError, match="connection 0 starts with 474554202f204854, neither QEVM nor the multifd magic"):
            rec.finish(1, timeout=10)
        with pytest.raises(QemuError, match="1 of 2 connections after 0.2 s"):
            rec.wait(2, timeout=0.2)


def test_multifd_capture_takes_no_other_capability(tmp_path):
    from pagecodec.qemu import QemuError
    from pagecodec.sources.qemu_live import capture_qemu

    with pytest.raises(QemuError, match="multifd captures take no other page capability"):
        capture_qemu(None, tmp_path / "t.parquet", multifd=2, capabilities=("xbzrle",))

# --- real QEMU 7.2 ------------------------------------------------------------------------------------
#: Sparse counter updates on 32 pages plus 2 whole-page rewrites, one pass per timer tick: at 1 MiB/s
#: QEMU keeps iterating until the limits are raised (see tests/test_qemu_real.py).
MEM_MIB = 64


# qemu_dir and guest_disk: tests/conftest.py


def guest_counter(vm) -> int:
    from pagecodec.qemu.guest import PASS_COUNTER

    return int.from_bytes(vm.pmemsave(PASS_COUNTER, 4), "little")




def changed_pages(a, b) -> list[int]:
    a = np.frombuffer(a, np.uint8) if isinstance(a, bytes) else a
    b = np.frombuffer(b, np.uint8) if isinstance(b, bytes) else b
    return [int(p) * PS for p in np.flatnonzero((a.reshape(-1, PS) != b.reshape(-1, PS)).any(axis=1))]


def pc_ram_image(trace: Path) -> np.ndarray:
    with TraceReader(trace) as r:
        assert r.meta.blocks[0].name == "pc.ram"
        n = r.meta.blocks[0].used_length // PS
    return final_image(trace)[:n].reshape(-1)


@pytest.mark.qemu
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_multifd_capture_matches_qemu_destination(qemu_dir, guest_disk, compression):
    """Source → pagecodec's recorder (tee) → real destination, 2 channels: the trace's final pc.ram is the
    destination's, and the recording is what the destination loaded."""
    from pagecodec.qemu.machine import VM, wait_until
    from pagecodec.sources.qemu_live import capture_multifd, listen_multifd_incoming

    d = qemu_dir
    trace = d / f"mfd-{compression}.parquet"
    with VM(d, disk=guest_disk, name=f"s-{compression}", memory_mib=MEM_MIB) as src, \
            VM(d, disk=guest_disk, name=f"d-{compression}", memory_mib=MEM_MIB, incoming=True,
               ram_file=d / f"d-{compression}.ram") as dst:
        wait_until(lambda: guest_counter(src) >= 3, 20, "the guest's first passes")
        fwd = listen_multifd_incoming(dst.qmp, 2, compression)
        t0 = time.monotonic()
        res = capture_multifd(None, trace, channels=2, compression=compression, passes=6, timeout=60,
                              qmp=src.qmp, forward_to=fwd, keep_dir=d / f"keep-{compression}")
        elapsed = time.monotonic() - t0
        wait_incoming(dst)
        assert dst.stderr_text() == ""
        assert src.status() == "postmigrate"
        # the source's multifd capability is off again: an exec: migration would work
        caps = {c["capability"]: c["state"] for c in src.qmp.execute("query-migrate-capabilities")}
        assert caps["multifd"] is False
        src_ram = src.pmemsave(0, MEM_MIB * MIB)
        dst_ram = dst.pc_ram()
    rep = res.imported
    info = res.migration.info
    assert info["status"] == "completed"
    assert rep.compression == compression and [c["id"] for c in rep.channels] == [0, 1]
    assert all(c["pages"] > 0 for c in rep.channels)
    # the resume rule (one page past the last page sent) agrees with every packet QEMU numbered in order
    assert rep.order_conflicts == 0 and rep.restarts == 0
    assert rep.rounds >= 3, rep.pages_per_round
    assert rep.pages_per_round[0] == sum(b.used_length for b in rep.imported.blocks) // PS
    # QEMU's own counters: every normal page went through the channels
    assert info["ram"]["normal"] == rep.channel_pages and info["ram"]["duplicate"] == rep.zero_pages
    # multifd-bytes counts every packet header (1344 bytes) and every page *uncompressed*, also with zlib/zstd
    # (a page queued twice twice: see test_real_capture_with_pages_queued_twice_matches_qemu_destination)
    wire = sum(c["bytes"] for c in rep.channels)
    assert info["ram"]["multifd-bytes"] == rep.packets * 1344 + (rep.channel_pages + rep.duplicate_pages) * PS
    if compression == "none":
        assert info["ram"]["multifd-bytes"] == wire - 2 * 64  # all but the initial packets
    else:
        assert wire < info["ram"]["multifd-bytes"] / 2
    assert changed_pages(pc_ram_image(trace), dst_ram) == []
    # QEMU's migration of this guest is exact except page 0 (BIOS timer tick count, see pagecodec.qemu.guest)
    assert set(changed_pages(src_ram, dst_ram)) <= {0}
    print(f"\nmultifd {compression}: {res.migration.passes} syncs, {rep.sections} sections, {rep.packets} packets "
          f"({rep.sync_packets_with_pages} SYNC packets with pages), zero {rep.zero_pages}, normal {rep.channel_pages}, "
          f"rounds {rep.pages_per_round}, channel bytes {wire} (QEMU's multifd-bytes {info['ram']['multifd-bytes']}), "
          f"{elapsed:.1f} s")


#: Every counter page the real-mode guest can reach (0x10000…0x9f000: 143 pages), no wait between passes:
#: each of QEMU's passes then fills one 128-page packet (and 15 pages more), the packets where 7.2's
#: requeue race shows (pagecodec.sources.qemu_stream.multifd).
BUSY = {"first": 0x10000, "end": 0x9F000, "wait_ticks": 0}


@pytest.fixture(scope="module")
def busy_disk(qemu_dir):
    from pagecodec.qemu.guest import GuestPattern, build_disk

    return build_disk(qemu_dir, GuestPattern(**BUSY))


def capture_to_destination(d: Path, disk: Path, name: str, compression: str, passes: int):
    """One multifd capture (2 channels) through the recorder to a real destination: (result, source RAM,
    destination pc.ram, seconds of migration)."""
    from pagecodec.qemu.machine import VM, wait_until
    from pagecodec.sources.qemu_live import capture_multifd, listen_multifd_incoming

    with VM(d, disk=disk, name=f"s-{name}", memory_mib=MEM_MIB) as src, \
            VM(d, disk=disk, name=f"d-{name}", memory_mib=MEM_MIB, incoming=True, ram_file=d / f"d-{name}.ram") as dst:
        wait_until(lambda: guest_counter(src) >= 3, 20, "the guest's first passes")
        fwd = listen_multifd_incoming(dst.qmp, 2, compression)
        t0 = time.monotonic()
        res = capture_multifd(None, d / f"{name}.parquet", channels=2, compression=compression, passes=passes,
                              timeout=60, qmp=src.qmp, forward_to=fwd, keep_dir=d / f"keep-{name}")
        elapsed = time.monotonic() - t0
        wait_incoming(dst)
        assert dst.stderr_text() == ""
        return res, src.pmemsave(0, MEM_MIB * MIB), dst.pc_ram(), elapsed


@pytest.mark.qemu
@pytest.mark.parametrize("compression", ["none", "zlib"])
def test_real_capture_with_pages_queued_twice_matches_qemu_destination(qemu_dir, busy_disk, compression):
    """A guest dirtying 143 pages as fast as it can, 30 dirty syncs: QEMU 7.2 queues the last page of some
    full packets twice (measured here: 2–12 of 14–64 full packets per capture, ~4 s each). The import
    accepts them, QEMU's own counters confirm the count, and the trace's final pc.ram is the destination's.
    The race depends on thread timing, so up to 3 captures are made until one shows it."""
    t0 = time.monotonic()
    for attempt in range(3):
        res, src_ram, dst_ram, elapsed = capture_to_destination(qemu_dir, busy_disk, f"twice-{compression}-{attempt}",
                                                                compression, passes=30)
        rep = res.imported
        if rep.duplicate_pages:
            break
    info = res.migration.info
    full = sum(1 for c in read_channels(res.stream) for k in range(c.packets) if c.normal[k] == 128)
    assert rep.duplicate_pages > 0, f"no page queued twice in {attempt + 1} captures ({full} full packets in the last)"
    assert rep.duplicate_pages_not_resent == 0  # the guest's writes are all in the dirty log (invlpg)
    assert rep.restarts == 0 and rep.order_conflicts == 0 and rep.rounds >= 3
    assert rep.pages_per_round[0] == sum(b.used_length for b in rep.imported.blocks) // PS
    # QEMU counts a requeued page once as "normal" but twice in multifd-bytes (per packet: its pages + header)
    assert info["ram"]["normal"] == rep.channel_pages
    # multifd-bytes: sometimes (1 of 4 runs here) one packet header more than the channel files hold,
    # under this guest's sync races; cause not established, so allowed: whole headers, at most one a sync
    extra = info["ram"]["multifd-bytes"] - (rep.packets * 1344 + (rep.channel_pages + rep.duplicate_pages) * PS)
    assert extra % 1344 == 0 and 0 <= extra // 1344 <= rep.sections, (extra, rep.sections)
    assert changed_pages(pc_ram_image(res.trace), dst_ram) == []
    assert set(changed_pages(src_ram, dst_ram)) <= {0}
    print(f"\nqueued twice ({compression}): {rep.duplicate_pages} pages ({rep.duplicate_pages_differing} differing) "
          f"of {full} full packets, {rep.packets} packets, {rep.sections} sections, rounds {rep.rounds}; attempt "
          f"{attempt + 1}, migration {elapsed:.1f} s, test {time.monotonic() - t0:.1f} s")


def read_channels(keep: Path):
    ms = read_main_stream(keep / "main.mig")
    return [read_channel(c, ms.layout) for c in sorted(keep.glob("channel-*.bin"))]


@pytest.mark.qemu
def test_cli_multifd_capture_and_rebuilt_stream_loads_into_qemu(qemu_dir, guest_disk):
    """``pagecodec capture qemu --multifd 2 --stream DIR``; the kept files import again with --channel to
    the same trace, and the rebuilt single stream loads into a destination without multifd."""
    from pagecodec.qemu.machine import VM, wait_until
    from pagecodec.qemu.migrate import load_from_file

    d = qemu_dir
    trace, keep = d / "cli.parquet", d / "cli-keep"
    sock = d / "cli.qmp"
    with VM(d, disk=guest_disk, name="cli-src", memory_mib=MEM_MIB,
            extra_args=["-qmp", f"unix:{sock},server=on,wait=off"]) as src:
        wait_until(lambda: guest_counter(src) >= 3, 20, "the guest's first passes")
        p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "--no-progress", "capture", "qemu", "--qmp", str(sock),
                            "-o", str(trace), "--passes", "6", "--multifd", "2", "--stream", str(keep), "--timeout", "60"],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert "multifd 2 channels" in p.stdout and "guest left paused" in p.stdout
        assert src.status() == "postmigrate"
    assert sorted(x.name for x in keep.iterdir()) == ["channel-0.bin", "channel-1.bin", "main.mig"]
    with TraceReader(trace) as r:
        assert "--multifd 2" in r.meta.provenance.command and r.num_rounds >= 3
    again, single_mig = d / "cli-again.parquet", d / "cli-single.mig"
    rep = import_multifd(keep / "main.mig", [keep / "channel-1.bin", keep / "channel-0.bin"], again,
                         single_stream=single_mig)
    assert read_rows(again) == read_rows(trace)
    with VM(d, disk=guest_disk, name="cli-dst", memory_mib=MEM_MIB, incoming=True, ram_file=d / "cli-dst.ram") as dst:
        load_from_file(dst, single_mig)
        assert dst.stderr_text() == ""
        assert changed_pages(pc_ram_image(trace), dst.pc_ram()) == []
    assert rep.channel_pages > 0
