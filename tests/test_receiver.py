"""The load side: QEMU's streams load; malformed input fails with WireError naming the offset."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pagecodec.chain.receiver import Receiver, RecordObserver
from pagecodec.errors import WireError
from pagecodec.trace.format import RAMBlockInfo
from pagecodec.wire import qevm
from pagecodec.wire.flags import SectionType
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.records import eos_record, mem_size_record, page_record, zero_record
from pagecodec.wire.writer import WireWriter

PS = 4096
BLOCKS = [("pc.ram", 16 * PS), ("pc.bios", 2 * PS)]


def stream(*ram_bodies: bytes, footer: bool = True, eof: bool = True) -> bytes:
    """header + START(MEM_SIZE, EOS) + one PART per body + EOF."""
    w = WireWriter()
    qevm.write_file_header(w, "pc-i440fx-7.2")
    qevm.write_section_header(w, SectionType.SECTION_START, 2, "ram", 0, 4)
    w.put(mem_size_record(BLOCKS) + eos_record(), "x")
    qevm.write_section_footer(w, 2)
    for body in ram_bodies:
        qevm.write_section_header(w, SectionType.SECTION_PART, 2)
        w.put(body, "x")
        if footer:
            qevm.write_section_footer(w, 2)
    if eof:
        qevm.write_eof(w)
    return w.sink.getvalue()


def load(data: bytes, pm, expected=True) -> Receiver:
    rc = Receiver(PS, pm, expected_blocks=[RAMBlockInfo(n, s) for n, s in BLOCKS] if expected else None, source="s.mig")
    rc.load_stream(StreamReader(data, "s.mig"))
    return rc


def test_loads_pages_zero_and_runs(pm):
    page = bytes([7]) * PS
    body = (
        page_record(0, "pc.ram", page)
        + b"".join(page_record(i * PS, None, bytes([i]) * PS) for i in range(1, 10))
        + b"".join(zero_record(i * PS, None) for i in range(10, 16))
        + page_record(PS, "pc.bios", page)
        + eos_record()
    )
    rc = load(stream(body), pm)
    ram = rc.memory["pc.ram"].reshape(-1, PS)
    assert (ram[0] == 7).all() and all((ram[i] == i).all() for i in range(1, 10)) and not ram[10:].any()
    assert (rc.memory["pc.bios"].reshape(-1, PS)[1] == 7).all()
    assert rc.stats.records == {"page": 11, "zero": 6}
    assert rc.finished


def test_zero_record_overwrites_stale_page(pm):
    body1 = page_record(0, "pc.ram", b"\x05" * PS) + eos_record()
    body2 = zero_record(0, "pc.ram") + eos_record()
    rc = load(stream(body1, body2), pm)
    assert not rc.memory["pc.ram"].any()


def err(data: bytes, pm, match: str, expected=True) -> WireError:
    with pytest.raises(WireError, match=match) as ei:
        load(data, pm, expected)
    assert "s.mig" in str(ei.value) and ei.value.offset is not None
    return ei.value


def test_truncated_page(pm):
    data = stream(page_record(0, "pc.ram", b"\x01" * PS) + eos_record())
    e = err(data[:300], pm, "truncated")
    assert e.offset <= 300


def test_unknown_flags(pm):
    data = stream((0x1000 | 0x800).to_bytes(8, "big") + eos_record())
    err(data, pm, "unknown combination of migration flags 0x800")


def test_zero_and_page_flags_together_rejected(pm):
    data = stream((0x0A).to_bytes(8, "big") + b"\x06pc.ram" + b"\x00" + eos_record())
    err(data, pm, "unknown combination")


def test_continue_without_block(pm):
    data = stream(zero_record(0, None) + eos_record())
    err(data, pm, "CONTINUE flag with no previous block")


def test_unknown_block(pm):
    data = stream(zero_record(0, "pc.nope") + eos_record())
    err(data, pm, "unknown RAM block 'pc.nope'")


def test_offset_outside_block(pm):
    data = stream(zero_record(16 * PS, "pc.ram") + eos_record())
    err(data, pm, "outside block")


def test_offset_outside_block_in_a_run(pm):
    body = zero_record(0, "pc.ram") + b"".join(zero_record(i * PS, None) for i in range(1, 40)) + eos_record()
    err(stream(body), pm, "outside block")


def test_missing_footer(pm):
    data = stream(zero_record(0, "pc.ram") + eos_record(), footer=False)
    err(data, pm, "footer")


def test_bad_magic(pm):
    data = bytearray(stream(eos_record()))
    data[0] = 0
    err(bytes(data), pm, "not a QEMU migration stream")


def test_mem_size_disagrees_with_expected_blocks(pm):
    data = bytearray(stream(eos_record()))
    i = data.index(b"pc.bios") + len(b"pc.bios")
    data[i : i + 8] = (3 * PS).to_bytes(8, "big")
    err(bytes(data), pm, "length")


def test_shared_streams_ram_matches_expected(shared, pm):
    """QEMU's paused stream: every RAM block's content equals expected.json (device sections not
    loaded: the load stops at the first device section, after RAM's END)."""
    exp = json.loads((shared / "streams" / "expected.json").read_text())["qemu72-paused-64m.mig"]
    r = StreamReader.open(shared / "streams" / "qemu72-paused-64m.mig")
    rc = Receiver(PS, pm, source="paused")
    rc.load_header(r)
    assert rc.header.machine == "pc-i440fx-7.2"
    while True:
        h = rc.load_section(r)
        if h.type == SectionType.SECTION_END:
            break
    assert rc.stats.sections == exp["ram_sections"]
    assert rc.stats.records == {"zero": exp["records"]["zero"], "page": exp["records"]["page"]}
    assert rc.stats.eos == exp["records"]["eos"]
    for name, b in exp["blocks"].items():
        assert rc.memory[name].shape[0] == b["used_length"]
        assert hashlib.sha256(rc.memory[name]).hexdigest() == b["sha256"], name


# --- what QEMU's streams carry besides pagecodec's own records ---------------------------------------
def test_load_stream_stops_at_device_state_and_finds_vmdesc(shared, pm):
    """A whole QEMU stream: the load stops cleanly at the first device section after RAM END (the
    cursor is left on it) and takes the VMDESCRIPTION trailer from the end of the file."""
    exp = json.loads((shared / "streams" / "expected.json").read_text())["qemu72-paused-64m.mig"]
    r = StreamReader.open(shared / "streams" / "qemu72-paused-64m.mig")
    rc = Receiver(PS, pm, source="paused")
    rc.load_stream(r)
    assert rc.ram_ended and not rc.finished and rc.device_state_at == r.pos
    assert r.view_np()[r.pos] in (SectionType.SECTION_START, SectionType.SECTION_FULL)
    assert rc.vmdesc["page_size"] == PS and rc.vmdesc["devices"] and rc.vmdesc_offset > r.pos
    for name, b in exp["blocks"].items():
        assert hashlib.sha256(rc.memory[name]).hexdigest() == b["sha256"], name


def test_observers_see_every_page_record_in_stream_order(shared, pm):
    """before_pages/pages: one call per record or vectorised run, pages ascending, each record's
    offset; before sees the old content, after the new one."""
    calls = []

    class Obs(RecordObserver):
        def before_pages(self, rec):
            calls.append(["before", rec.block, rec.index.copy(), rec.kind, rec.at.copy(),
                          rc.block_pages[rec.block][rec.index].copy()])

        def pages(self, rec):
            calls.append(["after", rec.block, rec.index.copy(), rec.kind, rec.at.copy(),
                          rc.block_pages[rec.block][rec.index].copy()])

    path = shared / "streams" / "qemu72-xbzrle-64m.mig"
    r = StreamReader.open(path)
    rc = Receiver(PS, pm, source=str(path), observer=Obs())
    rc.load_stream(r)
    assert [c[0] for c in calls] == ["before", "after"] * (len(calls) // 2)
    done: dict[str, int] = {}
    data = r.view_np()
    last_at = -1
    for b, a in zip(calls[::2], calls[1::2]):
        assert b[1] == a[1] and b[3] == a[3] and np.array_equal(b[2], a[2]) and np.array_equal(b[4], a[4])
        bi, idx, kind, at = a[1:5]
        assert len(idx) == len(at) >= 1 and (np.diff(idx) > 0).all() and (np.diff(at) > 0).all() and at[0] > last_at
        last_at = int(at[-1])
        flag = {"zero": 0x02, "page": 0x08, "xbzrle": 0x40}[kind]
        for i, o in zip(idx.tolist(), at.tolist()):
            word = int.from_bytes(data[o : o + 8].tobytes(), "big")
            assert word & 0xFFF & ~0x20 == flag and word >> 12 == i
        if kind == "zero":
            assert not a[5].any()
        done[kind] = done.get(kind, 0) + len(idx)
    assert done == rc.stats.records and max(len(c[2]) for c in calls) > 1
    assert any(not np.array_equal(b[5], a[5]) for b, a in zip(calls[::2], calls[1::2]) if b[3] == "xbzrle")


def _with_fill(fill: int, run: bool) -> bytes:
    """Page 5 of pc.ram holds 0x01, then a ZERO record with ``fill`` for it: inside a run of CONTINUE
    records (the vectorised path) or alone."""
    if run:
        body = zero_record(0, "pc.ram") + b"".join(zero_record(i * PS, None, fill if i == 5 else 0) for i in range(1, 9))
    else:
        body = zero_record(0, "pc.ram") + zero_record(5 * PS, "pc.ram", fill)
    return stream(page_record(5 * PS, "pc.ram", b"\x01" * PS) + eos_record(), body + eos_record())


@pytest.mark.parametrize("run", [False, True])
def test_zero_fill_byte_policy(pm, run):
    """QEMU 7.2 fills the page with a ZERO record's byte; newer QEMU (zero_fill="reject") refuses it."""
    rc = load(_with_fill(7, run), pm)
    assert (rc.memory["pc.ram"].reshape(-1, PS)[5] == 7).all()
    data = _with_fill(7, run)
    with pytest.raises(WireError, match="fill byte 0x07") as ei:
        Receiver(PS, pm, source="s.mig", zero_fill="reject").load_stream(StreamReader(data, "s.mig"))
    assert data[ei.value.offset] == 7
    rc = Receiver(PS, pm, zero_fill="reject")
    rc.load_stream(StreamReader(_with_fill(0, run)))
    assert not rc.memory["pc.ram"].any()


def test_compressed_pages_decode_through_the_compress_threads_codec(pm):
    """COMPRESS_PAGE: the compress-threads codec (a built-in plugin) decodes it, from the plugin manager
    or given in a list of codecs; a receiver without it refuses the record."""
    import zlib

    from pagecodec.codecs.compress import CompressThreadsCodec
    from pagecodec.codecs.raw import RawPageCodec
    from pagecodec.codecs.zero import ZeroPageCodec
    from pagecodec.errors import DecodeError

    z = zlib.compress(b"\x09" * PS)
    rec = (3 * PS | 0x100).to_bytes(8, "big") + b"\x06pc.ram" + len(z).to_bytes(4, "big") + z
    data = stream(rec + eos_record())
    with pytest.raises(WireError, match="unknown combination of migration flags 0x100"):
        Receiver(PS, [ZeroPageCodec(), RawPageCodec()]).load_stream(StreamReader(data))
    for codecs in (pm, [ZeroPageCodec(), RawPageCodec(), CompressThreadsCodec()]):
        rc = Receiver(PS, codecs)
        rc.load_stream(StreamReader(data))
        assert (rc.memory["pc.ram"].reshape(-1, PS)[3] == 9).all() and rc.stats.records == {"compress": 1}
    bad = stream(rec[:-4] + b"\x00\x00\x00\x00" + eos_record())
    with pytest.raises(DecodeError, match="compressed page"):
        Receiver(PS, pm).load_stream(StreamReader(bad))


def test_commands_multifd_flush_and_eos_address(pm):
    w = WireWriter()
    qevm.write_file_header(w, "pc-i440fx-7.2")
    w.put(b"\x08\x00\x01\x00\x00" + b"\x08\x00\x02\x00\x04\x00\x00\x00\x01", "x")  # OPEN_RETURN_PATH, PING
    qevm.write_section_header(w, SectionType.SECTION_START, 2, "ram", 0, 4)
    w.put(mem_size_record(BLOCKS) + (0x200).to_bytes(8, "big") + zero_record(0, "pc.ram") + eos_record(), "x")
    qevm.write_section_footer(w, 2)
    qevm.write_eof(w)
    data = w.sink.getvalue()
    rc = load(data, pm)
    assert rc.commands == {"OPEN_RETURN_PATH": 1, "PING": 1} and rc.stats.multifd_flush == 1 and rc.finished
    err(data.replace(b"\x08\x00\x02\x00\x04", b"\x08\x00\x04\x00\x04"), pm, "POSTCOPY_LISTEN")
    at = data.rindex(eos_record())
    err(data[:at] + (PS | 0x10).to_bytes(8, "big") + data[at + 8 :], pm, "EOS record with a non-zero address")


@pytest.mark.parametrize("declared", [True, False])
def test_mem_size_with_x_ignore_shared_addresses(pm, declared):
    """x-ignore-shared: a be64 guest address follows each block's length (declared in the
    configuration's capabilities, or found by trying both layouts)."""
    w = WireWriter()
    qevm.write_file_header(w, "pc-i440fx-7.2")
    if declared:
        name = b"configuration/capabilities"
        w.put(b"\x05" + bytes([len(name)]) + name + (1).to_bytes(4, "big") + (1).to_bytes(4, "big") + b"\x0fx-ignore-shared", "x")
    qevm.write_section_header(w, SectionType.SECTION_START, 2, "ram", 0, 4)
    ms = bytearray(mem_size_record(BLOCKS))
    i = ms.index(b"pc.bios") - 1
    ms[i:i] = (0x1000_0000).to_bytes(8, "big")
    ms += (0xFFFE_0000).to_bytes(8, "big")
    w.put(bytes(ms) + zero_record(PS, "pc.bios", 0) + eos_record(), "x")
    qevm.write_section_footer(w, 2)
    qevm.write_eof(w)
    rc = load(w.sink.getvalue(), pm)
    assert rc.ignore_shared and rc.shared_addr == {"pc.ram": 0x1000_0000, "pc.bios": 0xFFFE_0000}
    assert [b.name for b in rc.blocks] == ["pc.ram", "pc.bios"] and rc.stats.records == {"zero": 1}


def test_observer_sees_sections_mem_size_eos_and_payloads(shared, pm):
    """The structural hooks: every RAM section's start, body, EOS and end, the MEM_SIZE record's extent,
    and each page record's payload offset (the page bytes as they stand in the stream)."""
    events = []

    class Obs(RecordObserver):
        def ram_section(self, header, start, body):
            events.append(("section", header.type, start, body))

        def mem_size(self, at, end):
            events.append(("mem_size", at, end))

        def pages(self, rec):
            events.append(("pages", rec))
            if rec.kind == "page":
                for i, p in zip(rec.index.tolist(), rec.payload_at.tolist()):
                    assert np.array_equal(data[p : p + PS], rc.block_pages[rec.block][i])

        def eos(self, at):
            events.append(("eos", at))

        def ram_section_end(self, header, end):
            events.append(("end", header.type, end))

    path = shared / "streams" / "qemu72-paused-64m.mig"
    r = StreamReader.open(path)
    data = r.view_np()
    rc = Receiver(PS, pm, source=str(path), observer=Obs())
    rc.load_stream(r)
    kinds = [e[0] for e in events]
    assert kinds.count("section") == kinds.count("end") == kinds.count("eos") == rc.stats.sections == 3
    assert kinds.count("mem_size") == 1 and kinds.index("mem_size") == 1
    prev_end = None
    for e in events:
        if e[0] == "section":
            _, st, start, body = e
            assert data[start] == st and body > start
            if prev_end is not None:
                assert start >= prev_end
        elif e[0] == "mem_size":
            word = int.from_bytes(data[e[1] : e[1] + 8].tobytes(), "big")
            assert word & 0xFFF == 0x04 and e[2] > e[1] + 8
        elif e[0] == "eos":
            assert int.from_bytes(data[e[1] : e[1] + 8].tobytes(), "big") == 0x10
        elif e[0] == "end":
            prev_end = e[2]
        else:
            rec = e[1]
            for a, p in zip(rec.at.tolist(), rec.payload_at.tolist()):
                cont = data[a + 7] & 0x20
                assert p == a + 8 + (0 if cont else 1 + int(data[a + 8]))
    assert rc.device_state_at == prev_end  # device state follows the RAM END section
