"""The bounds of issue 11 one by one (tests/test_hostile.py replays the whole corpus): JSON depth and
size, the destination's RAM limit and QEMU's rule for ZERO records, decompressors that stop at the
size a record may decode to, kernel entries that check their indexes without overflow."""

from __future__ import annotations

import json
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hyp import examples

from hostile_corpus import mem_size, ram, stream, zero_records, zstd_bomb
from pagecodec.errors import DecodeError, WireError
from pagecodec.limits import JsonLimitError, format_bytes, json_depth, load_json, machine_memory

PS = 4096


# --- JSON ---------------------------------------------------------------------------------------------
def test_json_depth_ignores_brackets_in_strings():
    assert json_depth(b'{"a": [1, {"b": "[[[\\"[{"}], "c": "]]]"}') == 3
    assert json_depth(b"[]") == 1 and json_depth(b"7") == 0
    assert json_depth(b"[" * 100_000) == 100_000  # found without recursion


def test_load_json_bounds_depth_and_size():
    assert load_json(b'{"x": [[[1]]]}') == {"x": [[[1]]]}
    assert load_json("[" * 100 + "]" * 100) is not None  # the limit itself is fine
    with pytest.raises(JsonLimitError, match="101 levels"):
        load_json("[" * 101 + "]" * 101)
    with pytest.raises(JsonLimitError, match="more than the 10"):
        load_json(b'"' + b"x" * 20 + b'"', max_bytes=10)
    with pytest.raises(ValueError):
        load_json(b"{")


def test_find_vmdesc_is_linear_in_the_trailer():
    """Only candidates after the last 0x06 byte are parsed (JSON holds none): 16 MiB of 0x06 bytes with
    plausible lengths do not make it parse 16 MiB a million times."""
    from pagecodec.wire.qevm import find_vmdesc

    buf = np.frombuffer((b"\x00\x06\x00\x00\x00\x07{" * (2 << 20)) + b"\x00\x06" + (2).to_bytes(4, "big") + b"{}",
                        np.uint8)
    t0 = time.perf_counter()
    found = find_vmdesc(buf)
    assert found is not None and found[1] == {} and time.perf_counter() - t0 < 5


def test_format_bytes():
    assert format_bytes(64 << 30) == "64 GiB" and format_bytes(1 << 63) == "8 EiB"
    assert format_bytes(1536 << 20) == "1.5 GiB" and format_bytes(100) == "100 bytes"
    assert machine_memory() > 1 << 28


# --- the destination's RAM ---------------------------------------------------------------------------
def _receiver(**kw):
    from pagecodec.chain.receiver import Receiver
    from pagecodec.codecs.qemu import qemu_codecs

    return Receiver(PS, qemu_codecs(), source="s.mig", **kw)


def test_max_ram_names_the_block_that_passes_it():
    from pagecodec.wire.reader import StreamReader

    s = stream(ram(mem_size([(b"pc.ram", 1 << 20), (b"vga.vram", 16 << 20)])))
    with pytest.raises(WireError, match=r"block 'vga.vram' of 16 MiB .* more than --max-ram 8 MiB") as e:
        _receiver(max_ram=8 << 20).load_stream(StreamReader(s, "s.mig"))
    assert e.value.offset is not None and "s.mig" in str(e.value)
    r = _receiver(max_ram=17 << 20)
    r.load_stream(StreamReader(s, "s.mig"))
    assert [b.used_length for b in r.blocks] == [1 << 20, 16 << 20]


def test_zero_records_do_not_write_pages_that_are_zero():
    """ram_handle_compressed: a ZERO record's page is filled only if it is not zero already, so a flood
    of 9-byte records commits no memory; a page that holds data is cleared."""
    from pagecodec.codecs.zero import fill_pages

    pages = np.zeros((8, PS), np.uint8)
    pages[3, 100] = 5
    pages[5, PS - 1] = 1
    fill_pages(pages, np.array([1, 3, 5, 6]), np.array([0, 0, 7, 0], np.uint8))
    assert not pages[3].any() and (pages[5] == 7).all() and not pages[[0, 1, 2, 4, 6, 7]].any()
    odd = np.zeros((4, 12), np.uint8)  # rows that are not whole words take the plain path
    odd[2, 11] = 1
    fill_pages(odd, np.array([2, 3]), np.array([0, 9], np.uint8))
    assert not odd[2].any() and (odd[3] == 9).all()
    with pytest.raises(IndexError):
        fill_pages(pages, np.array([8]), np.zeros(1, np.uint8))


def _rss_mib() -> float:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)


def test_zero_record_flood_commits_no_memory():
    from pagecodec.wire.reader import StreamReader

    n = 60_000  # 540 KB of ZERO records naming 234 MiB of pages
    s = stream(ram(mem_size([(b"pc.ram", n * PS)]) + zero_records(n)))
    r = _receiver()
    before = _rss_mib()
    r.load_stream(StreamReader(s, "s.mig"))
    grew = _rss_mib() - before  # the receiver (and its 234 MiB block) still alive
    assert r.stats.records["zero"] == n and grew < 64, grew


def test_a_pass_per_record_costs_little_per_record(tmp_path):
    """A 1-page block and 30,000 ZERO records of its page: every 9-byte record starts a pass (a round).
    It imports (it is a valid stream), in time linear in the records: rows of small rounds are written
    a row group at a time, and a record that cannot start a run is not probed as one."""
    from hostile_corpus import be64

    from pagecodec.sources.qemu_stream import import_qemu_stream
    from pagecodec.trace.format import TraceReader

    n = 30_000
    body = mem_size([(b"pc.ram", PS)]) + be64(0x02) + b"\x06pc.ram\x00" + (be64(0x22) + b"\x00") * n
    (tmp_path / "s.mig").write_bytes(stream(ram(body)))
    t0 = time.perf_counter()
    rep = import_qemu_stream(tmp_path / "s.mig", tmp_path / "t.parquet")
    assert time.perf_counter() - t0 < 30  # ~2 s here; a writer call per round took ~4x that
    assert rep.rounds == n + 2
    with TraceReader(tmp_path / "t.parquet") as r:
        assert r.num_rounds == n + 2 and r.pages_per_round[:3] == [1, 1, 1]
        r.check_pages()


def test_mem_size_list_of_many_blocks_parses_without_recursion():
    from pagecodec.wire.reader import StreamReader

    blocks = [(f"b{i}".encode(), PS) for i in range(5000)]
    r = _receiver()
    r.load_stream(StreamReader(stream(ram(mem_size(blocks))), "s.mig"))
    assert len(r.blocks) == 5000 and r.block_order[-1] == "b4999"


# --- decompressors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("system", [True, False], ids=["libzstd", "zstandard-fallback"])
def test_channel_zstd_bomb_stops_at_the_packet_size(system):
    """65 KB of zstd claiming 2 GiB: refused within a few MiB of the packet's 128 pages, also by the
    zstandard fallback (whose decompress takes no limit: fed in pieces)."""
    import zstandard

    from pagecodec.codecs.multifd_stream import ChannelInflater

    inf = ChannelInflater("zstd", "channel-0.bin")
    if not system:
        inf._lib = None
        inf._d = zstandard.ZstdDecompressor().decompressobj()
    bomb = np.frombuffer(zstd_bomb(2 << 30), np.uint8)
    tracemalloc.start()
    try:
        with pytest.raises(DecodeError, match="inflates beyond 128 pages"):
            inf.packet(bomb, 128, PS, "packet 0", 100)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, peak


def test_zstandard_fallback_decodes_what_libzstd_does():
    import zstandard

    from pagecodec.codecs.multifd_stream import ChannelCompressor, ChannelInflater

    pages = np.random.default_rng(1).integers(0, 3, (5, PS), dtype=np.uint8)
    comp = ChannelCompressor("zstd", 1)
    inf = ChannelInflater("zstd")
    inf._lib = None
    inf._d = zstandard.ZstdDecompressor().decompressobj()
    for k in (2, 3):
        got = inf.packet(np.frombuffer(bytes(comp.packet(pages[:k])), np.uint8), k, PS, "p", 0)
        assert np.array_equal(got, pages[:k])


# --- kernel entries -----------------------------------------------------------------------------------
_EDGE = st.sampled_from([0, 1, 3, 4, 2**31, 2**32, 2**62, 2**63 - 1, -1, -(2**63)])


@settings(max_examples=examples(200), deadline=None)
@given(starts=st.lists(st.one_of(_EDGE, st.integers(-(2**63), 2**63 - 1)), min_size=1, max_size=3), data=st.data())
def test_decode_batch_never_reads_outside_its_data(starts, data):
    """Any int64 starts and lengths: the records decode, or RecordOutsideData (a DecodeError and a
    ValueError) names the first that does not lie inside the data; start + length is never computed
    (it wraps for starts near 2^63: a segfault once)."""
    from pagecodec.codecs.xbzrle_kernel import RecordOutsideData, decode_batch

    lengths = data.draw(st.lists(st.one_of(_EDGE, st.integers(-(2**63), 2**63 - 1)), min_size=len(starts),
                                 max_size=len(starts)))
    buf = b"\x01\x02ab\x00\x01c"
    pages = np.zeros((len(starts), PS), np.uint8)
    inside = all(0 <= s <= len(buf) and 0 <= n <= len(buf) - s for s, n in zip(starts, lengths))
    try:
        decode_batch(buf, starts, lengths, pages)
    except RecordOutsideData as e:
        assert not inside and isinstance(e, DecodeError) and isinstance(e, ValueError)
    except DecodeError:
        assert inside  # a record inside the data that XBZRLE rejects


def test_xor_or_whole_checks_its_indexes():
    from pagecodec.codecs.delta_kernel import xor_or_whole

    p = np.zeros((2, PS), np.uint8)
    for rows, slots in (([0, 2], [0, 1]), ([0, 1], [0, 2**62]), ([-1, 0], [0, 0])):
        with pytest.raises(ValueError):
            xor_or_whole(p, np.array(rows), p, np.array(slots), np.array([True, True]), 100)


# --- one-line messages -------------------------------------------------------------------------------
def test_one_line():
    from pagecodec.errors import one_line

    assert one_line("a\n  b\n\nc ") == "a b c" and one_line("") == "(no message)"
    assert "\n" not in json.dumps(one_line("x\ny"))
