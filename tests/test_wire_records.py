"""Wire layouts byte for byte: hand-built records from QEMU-FACTS.md, and QEMU's own bytes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hyp import examples

from pagecodec.wire import qevm
from pagecodec.wire.flags import (
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
    SectionType,
    compress_bound,
)
from pagecodec.wire.records import (
    RecordSet,
    assemble_segment,
    eos_record,
    mem_size_record,
    page_header,
    page_record,
    xbzrle_record,
    zero_record,
)
from pagecodec.wire.writer import WireWriter

PS = 4096


def test_flag_values_are_qemus():
    from pagecodec.wire import flags as f

    assert (f.RAM_SAVE_FLAG_ZERO, f.RAM_SAVE_FLAG_MEM_SIZE, f.RAM_SAVE_FLAG_PAGE, f.RAM_SAVE_FLAG_EOS) == (2, 4, 8, 0x10)
    assert (f.RAM_SAVE_FLAG_CONTINUE, f.RAM_SAVE_FLAG_XBZRLE, f.RAM_SAVE_FLAG_HOOK) == (0x20, 0x40, 0x80)
    assert (f.RAM_SAVE_FLAG_COMPRESS_PAGE, f.RAM_SAVE_FLAG_MULTIFD_FLUSH) == (0x100, 0x200)
    assert f.RAM_SAVE_FLAG_FULL == 0x01  # obsolete since 2009, but still QEMU's and never to be reused
    assert compress_bound(4096) == 4110


@pytest.mark.parametrize("n", [0, 1, 4096, 1 << 14, (1 << 14) + 5, 1 << 25, (1 << 26) + 3, 65536])
def test_compress_bound_is_zlibs(n):
    """compressBound from the system zlib (the library QEMU links): every term of its formula."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("z")
    if name is None:
        pytest.skip("no system libz")
    lib = ctypes.CDLL(name)
    lib.compressBound.restype = ctypes.c_ulong
    lib.compressBound.argtypes = [ctypes.c_ulong]
    assert compress_bound(n) == lib.compressBound(n)


def test_zero_record_with_idstr():
    # offset 0x3000 in "pc.ram": be64 0x3002, u8 6, "pc.ram", fill 0 -> 8 + 1 + 6 + 1 bytes
    assert zero_record(0x3000, "pc.ram") == bytes.fromhex("0000000000003002") + b"\x06pc.ram" + b"\x00"


def test_zero_record_continue_is_9_bytes():
    rec = zero_record(0x7FFF000, None)
    assert rec == bytes.fromhex("0000000007fff022") + b"\x00"
    assert len(rec) == 9


def test_page_record_layout():
    page = bytes(range(256)) * 16
    rec = page_record(0x1000, None, page)
    assert rec[:8] == bytes.fromhex("0000000000001028")
    assert rec[8:] == page and len(rec) == 8 + 4096


def test_xbzrle_record_layout():
    rec = xbzrle_record(0x2000, None, b"\x00\x02\xaa\xbb")
    assert rec == bytes.fromhex("0000000000002060") + b"\x01\x00\x04" + b"\x00\x02\xaa\xbb"
    assert len(rec) == 8 + 3 + 4


def test_eos_is_be64_0x10():
    assert eos_record() == bytes.fromhex("0000000000000010")


def test_page_header_rejects_bad_idstr():
    with pytest.raises(ValueError):
        page_header(0, RAM_SAVE_FLAG_PAGE, "")
    with pytest.raises(ValueError):
        page_header(0, RAM_SAVE_FLAG_PAGE, "x" * 256)


def test_qevm_header_and_ram_start_match_qemu(shared):
    """Our header, configuration, START section and MEM_SIZE list equal QEMU 7.2's bytes."""
    real = (shared / "streams" / "qemu72-paused-64m.mig").read_bytes()
    blocks = [
        ("pc.ram", 64 << 20),
        ("/rom@etc/acpi/tables", 128 << 10),
        ("pc.bios", 256 << 10),
        ("pc.rom", 128 << 10),
        ("/rom@etc/table-loader", 4096),
        ("/rom@etc/acpi/rsdp", 4096),
    ]
    w = WireWriter()
    qevm.write_file_header(w, "pc-i440fx-7.2")
    qevm.write_section_header(w, SectionType.SECTION_START, 2, "ram", 0, 4)
    w.put(mem_size_record(blocks), "mem_size")
    w.put(eos_record(), "eos")
    qevm.write_section_footer(w, 2)
    ours = w.sink.getvalue()
    assert real[: len(ours)] == ours
    assert w.bytes_by_kind["mem_size"] == 8 + sum(1 + len(n) + 8 for n, _ in blocks)
    assert sum(w.bytes_by_kind.values()) == len(ours) == w.position


# --- the batched assembler equals record-by-record emission ---------------------------------
record_kinds = st.lists(st.sampled_from(["zero", "page", "xbzrle", "skip"]), min_size=1, max_size=40)


@settings(max_examples=examples(150), deadline=None)
@given(kinds=record_kinds, with_idstr=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_assemble_equals_scalar_records(kinds, with_idstr, seed):
    rng = np.random.default_rng(seed)
    n = len(kinds)
    pages = rng.integers(0, 256, (n, PS), dtype=np.uint8)
    offsets = np.sort(rng.choice(1 << 14, n, replace=False)).astype(np.int64) * PS
    kinds_a = np.array(kinds)
    zi = np.flatnonzero(kinds_a == "zero")
    pi = np.flatnonzero(kinds_a == "page")
    xi = np.flatnonzero(kinds_a == "xbzrle")
    xl = rng.integers(1, 300, len(xi))
    xdata = rng.integers(0, 256, int(xl.sum()), dtype=np.uint8)
    xstarts = np.cumsum(xl) - xl
    sets = [
        RecordSet("page", RAM_SAVE_FLAG_PAGE, pi, pages=pages, rows=pi),
        RecordSet("zero", RAM_SAVE_FLAG_ZERO, zi, prefix=np.zeros((1, 1), np.uint8)),
        RecordSet(
            "xbzrle", RAM_SAVE_FLAG_XBZRLE, xi,
            prefix=np.stack([np.ones(len(xi), np.uint8), (xl >> 8).astype(np.uint8), (xl & 0xFF).astype(np.uint8)], axis=1),
            data=xdata, starts=xstarts, lengths=xl,
        ),
    ]
    out, by_kind, recs = assemble_segment(offsets, "pc.ram" if with_idstr else None, sets)
    expect = bytearray()
    sizes = {"zero": 0, "page": 0, "xbzrle": 0}
    first = True
    xj = 0
    for i, k in enumerate(kinds):
        if k == "skip":
            continue
        idstr = "pc.ram" if (first and with_idstr) else None
        first = False
        if k == "zero":
            rec = zero_record(int(offsets[i]), idstr)
        elif k == "page":
            rec = page_record(int(offsets[i]), idstr, pages[i].tobytes())
        else:
            s, l = int(xstarts[xj]), int(xl[xj])
            rec = xbzrle_record(int(offsets[i]), idstr, xdata[s : s + l].tobytes())
            xj += 1
        sizes[k] += len(rec)
        expect += rec
    assert out.tobytes() == bytes(expect)
    assert {k: v for k, v in by_kind.items() if v} == {k: v for k, v in sizes.items() if v}
    assert sum(recs.values()) == sum(1 for k in kinds if k != "skip")


@pytest.mark.parametrize("width", [0, 1, 2, 4])
@pytest.mark.parametrize("with_idstr", [False, True])
def test_variable_records_with_any_prefix_width(width, with_idstr):
    """A plugin's variable-length records may carry a fixed prefix of any width (1 byte included:
    the built-in codecs only use 3 and 4): every prefix byte lands before its payload."""
    rng = np.random.default_rng(width)
    n = 6
    offsets = np.arange(n, dtype=np.int64) * PS
    idx = np.array([0, 2, 3, 5])
    lengths = np.array([5, 0, 70, 2])
    data = rng.integers(0, 256, int(lengths.sum()), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    prefix = rng.integers(0, 256, (len(idx), width), dtype=np.uint8) if width else None
    s = RecordSet("ext", 0x400, idx, prefix=prefix, data=data, starts=starts, lengths=lengths)
    out, by_kind, recs = assemble_segment(offsets, "pc.ram" if with_idstr else None, [s])
    expect = bytearray()
    for j, i in enumerate(idx):
        expect += page_header(int(offsets[i]), 0x400, "pc.ram" if (with_idstr and j == 0) else None)
        expect += prefix[j].tobytes() if width else b""
        expect += data[starts[j] : starts[j] + lengths[j]].tobytes()
    assert out.tobytes() == bytes(expect)
    assert by_kind == {"ext": len(expect)} and recs == {"ext": len(idx)}


def test_extension_record_format_is_stable():
    """pagecodec's extension records on the wire: flag 0x400, be16 codec id, be32 length, payload; the
    shipped extension codecs' ids (the low 16 bits of CRC-32 of the name) are fixed literals here, since a
    stream written today must name the same codec tomorrow."""
    from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, codec_id, extension_records

    assert RAM_SAVE_FLAG_EXTENSION == 0x400
    ids = {"compress-zstd": 0xC96E, "compress-lz4": 0x66CD, "compress-lz4hc": 0x7E9D, "xor-zstd": 0xA17D,
           "xbzrle-zstd": 0xD53E, "delta-zstd": 0xF153}
    assert {n: codec_id(n) for n in ids} == ids
    rs = extension_records("ext", 0x66CD, np.array([0, 1]), np.arange(7, dtype=np.uint8), np.array([0, 5]),
                           np.array([5, 2]))
    out, _, recs = assemble_segment(np.array([0x3000, 0x4000], np.int64), None, [rs])
    want = ((0x3000 | 0x400 | 0x20).to_bytes(8, "big") + b"\x66\xcd" + (5).to_bytes(4, "big") + bytes(range(5))
            + (0x4000 | 0x400 | 0x20).to_bytes(8, "big") + b"\x66\xcd" + (2).to_bytes(4, "big") + bytes([5, 6]))
    assert out.tobytes() == want and recs == {"ext": 2}
