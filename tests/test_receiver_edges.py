"""Receiver corners mutation testing found unpinned (mutation/run.py): the strict block-list reader,
the layout guesser at the end of its buffer, command sections' headers."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pagecodec.chain.receiver import Receiver, read_block_list
from pagecodec.errors import WireError
from pagecodec.wire.flags import SectionType
from pagecodec.wire.reader import StreamReader

PS = 4096


def _blocks(*blocks: tuple[str, int]) -> bytes:
    return b"".join(struct.pack(">B", len(n)) + n.encode() + struct.pack(">Q", size) for n, size in blocks)


def test_block_list_stops_at_its_total():
    """The strict reader takes exactly the blocks that add up to the total and leaves what follows."""
    data = _blocks(("pc.ram", 2 * PS), ("pc.bios", PS)) + struct.pack(">Q", 0x10)
    r = StreamReader(data)
    assert read_block_list(r, 3 * PS, PS, False) == [("pc.ram", 2 * PS), ("pc.bios", PS)]
    assert r.pos == len(data) - 8


def test_block_list_faults_name_their_block():
    with pytest.raises(WireError, match="listed twice") as ei:
        read_block_list(StreamReader(_blocks(("a", PS), ("a", PS))), 2 * PS, PS, False)
    assert ei.value.offset == 10
    with pytest.raises(WireError, match="bad used_length"):
        read_block_list(StreamReader(_blocks(("a", PS + 1))), 2 * PS, PS, False)


def test_layout_guess_at_the_end_of_the_buffer(pm):
    """_block_at on a position at (or past) the end of the data is no block, never an IndexError."""
    rc = Receiver(PS, pm)
    buf = np.frombuffer(_blocks(("pc.ram", PS)), np.uint8)
    assert rc._block_at(buf, len(buf), PS, set()) is None
    assert rc._block_at(buf, 0, PS, set())[:3] == ("pc.ram", PS, len(buf))


def test_layout_guess_reads_no_page_size_it_cannot_read_whole(pm):
    """With postcopy advised a block may carry a be64 host page size; 7 bytes are not one."""
    rc = Receiver(PS, pm)
    rc.postcopy_advised = True
    rc.pagesize_summary = PS
    whole = np.frombuffer(_blocks(("pc.ram", PS)) + struct.pack(">Q", PS), np.uint8)
    assert rc._block_at(whole, 0, PS, set())[3] == [PS, None]
    cut = np.frombuffer(_blocks(("pc.ram", PS)) + struct.pack(">Q", PS)[1:], np.uint8)  # 7 bytes: 0x00…1000
    assert rc._block_at(cut, 0, PS, set())[3] == [None]


def test_command_section_header(pm):
    rc = Receiver(PS, pm)
    r = StreamReader(b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0dpc-i440fx-7.2" + b"\x08\x00\x02\x00\x04\x00\x00\x00\x01")
    rc.load_header(r)
    h = rc.load_section(r)
    assert (h.type, h.section_id, h.offset) == (SectionType.COMMAND, -1, 26)


@pytest.mark.parametrize("spec,cls", [("xor-zstd", "pagecodec.codecs.delta_runs.RunDecoder"),
                                      ("compress", "pagecodec.codecs.compress.CompressedPageDecoder")])
def test_runs_of_variable_records_take_the_batched_path(tmp_path, pm, monkeypatch, spec, cls):
    """A delta codec's run records and compress threads' COMPRESS_PAGE records reach their decoder's
    load_many in runs (the receiver gathers consecutive records of one codec), not one by one."""
    import importlib

    from conftest import write_text_trace
    from pagecodec.chain.config import parse_spec
    from pagecodec.harness.replay import verify
    from pagecodec.trace.format import TraceReader

    mod, _, name = cls.rpartition(".")
    klass = getattr(importlib.import_module(mod), name)
    sizes: list[int] = []
    orig = klass.load_many

    def counting(self, payloads, *a, **kw):
        sizes.append(len(payloads))
        return orig(self, payloads, *a, **kw)

    monkeypatch.setattr(klass, "load_many", counting)
    path = tmp_path / "t.parquet"
    write_text_trace(path, pages=256, text_pages=200, dirty=40, seed=3)
    res = verify(TraceReader(path), parse_spec(spec, pm.presets), pm)
    assert res.ok, res.mismatch
    assert sizes and max(sizes) >= 8, sizes
