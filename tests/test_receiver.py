"""The load side: QEMU's streams load; malformed input fails with WireError naming the offset."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from pagecodec.chain.receiver import Receiver
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
    data = stream((0x1000 | 0x400).to_bytes(8, "big") + eos_record())
    err(data, pm, "unknown combination of migration flags 0x400")


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
