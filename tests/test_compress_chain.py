"""Compress threads in the chain, checked against an independent page-by-page model of QEMU 7.2's
``save_compress_page`` / ``compress_page_with_multi_thread`` / ``flush_compressed_data`` (written from
QEMU-FACTS.md and the module docstring of pagecodec.codecs.compress, without the production code's
helpers): the order of records on the wire, their kinds and offsets, and the counters, computed by the
model, not read back from the code under test."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from conftest import write_trace
from pagecodec.chain.slots import Slot
from pagecodec.chain.config import parse_spec
from pagecodec.chain.receiver import Receiver, RecordObserver
from pagecodec.chain.sender import Sender
from pagecodec.codecs.compress import compress_pages
from pagecodec.errors import DecodeError
from pagecodec.harness.replay import replay, rounds_of, verify
from pagecodec.trace.format import TraceReader
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096


# --- the model ----------------------------------------------------------------------------------------
def qemu_model(rounds: list[list[tuple[int, int, bytes]]], names: list[str], threads: int, level: int):
    """Page by page: returns the records in stream order [(block, offset, kind)] and QEMU's counters.
    ``rounds``: per round the dirty pages (block, offset, content) in search order (blocks, offsets)."""
    out: list[tuple[int, int, str]] = []
    c = {"transferred": 0, "duplicate": 0, "normal": 0, "pages": 0, "compressed-size": 0}
    held: list[tuple[int, int, str, int] | None] = [None] * threads
    last_zero = [False] * threads
    state = {"last_sent": None, "next": 0, "resume": 0}

    def write(block: int, offset: int, kind: str, payload: int) -> None:
        named = block != state["last_sent"]
        out.append((block, offset, kind))
        c["transferred"] += 8 + (1 + len(names[block]) if named else 0) + payload
        state["last_sent"] = block

    def take(t: int) -> None:  # update_compress_thread_counts, as the buffer goes out
        h = held[t]
        held[t] = None
        size = 0
        if h is not None:
            write(h[0], h[1], h[2], h[3])
            size = 8 + h[3]
        if last_zero[t]:  # the thread's last page was zero: a duplicate page, whether its record is here or gone
            c["duplicate"] += 1
        else:
            c["pages"] += 1
            c["compressed-size"] += size - 8

    def flush() -> None:
        for t in range(threads):
            take(t)
        state["next"] = 0

    for r, pages in enumerate(rounds):
        last = r == len(rounds) - 1
        keys = [b * 10**9 + o // PS for b, o, _ in pages]
        if keys and keys[0] < state["resume"]:
            flush()  # QEMU's search resumed past these pages: it wraps before them
        for b, o, data in pages:
            zero = not any(data)
            if b != state["last_sent"]:  # a new block's first page: flush, then the normal chain
                flush()
                if zero:
                    write(b, o, "zero", 1)
                    c["duplicate"] += 1
                else:
                    write(b, o, "page", PS)
                    c["normal"] += 1
                continue
            t = state["next"]
            state["next"] = (t + 1) % threads
            take(t)
            held[t] = (b, o, "zero", 1) if zero else (b, o, "compress", 4 + len(zlib.compress(data, level)))
            last_zero[t] = zero
        if keys:
            below = [k for k in keys if k < state["resume"]]
            state["resume"] = (max(below) if below else max(keys)) + 1
        flush()  # the search that finds nothing more wraps
        if last:
            flush()  # ram_save_complete's own flush
        else:
            c["transferred"] += 8  # the iteration's EOS
    return out, c


def stream_records(data: bytes, pm) -> list[tuple[int, int, str]]:
    recs: list[tuple[int, int, str]] = []

    class Obs(RecordObserver):
        def pages(self, rec):
            recs.extend((rec.block, int(i) * PS, rec.kind) for i in rec.index)

    Receiver(PS, pm, observer=Obs()).load_stream(StreamReader(data))
    return recs


# --- traces -------------------------------------------------------------------------------------------
def make_trace(path, seed: int, blocks=(("pc.ram", 48), ("vga.vram", 8), ("pc.bios", 4)), rounds: int = 4,
               empty_last: bool = False):
    """Blocks with zero, text-like and random pages; later rounds dirty a few pages of some blocks
    (changed, unchanged, zeroed), sometimes none."""
    rng = np.random.default_rng(seed)
    mem = []
    for _, n in blocks:
        m = np.zeros((n, PS), np.uint8)
        nz = rng.random(n) < 0.6
        m[nz] = rng.integers(0, 4, (int(nz.sum()), PS), dtype=np.uint8) * rng.integers(0, 2, (int(nz.sum()), 1), dtype=np.uint8)
        rnd = nz & (rng.random(n) < 0.3)
        m[rnd] = rng.integers(0, 256, (int(rnd.sum()), PS), dtype=np.uint8)
        mem.append(m)
    content = [{bi: (np.arange(len(m)) * PS, m.copy()) for bi, m in enumerate(mem)}]
    for r in range(1, rounds):
        rc = {}
        if not (empty_last and r == rounds - 1):
            for bi, m in enumerate(mem):
                if rng.random() < 0.3:
                    continue
                idx = np.sort(rng.choice(len(m), max(1, len(m) // 4), replace=False))
                m[idx[: len(idx) // 3]] = 0
                m[idx[len(idx) // 3 :], rng.integers(0, PS)] ^= 0x3C
                rc[bi] = (idx * PS, m[idx].copy())
        content.append(rc or {0: (np.zeros(0, np.int64), np.zeros((0, PS), np.uint8))})  # an empty round
    write_trace(path, [(n, s * PS) for n, s in blocks], content)
    return [n for n, _ in blocks]


def dirty_pages(path) -> list[list[tuple[int, int, bytes]]]:
    out = []
    with TraceReader(path) as r:
        for _rn, batches in r.rounds():
            pages = []
            for b in batches:
                for i in range(len(b)):
                    pages.append((int(b.block[i]), int(b.offset[i]), b.pages[i].tobytes()))
            out.append(pages)
    return out


# --- tests --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threads,level", [(1, 1), (2, 1), (3, 6), (8, 1), (8, 9)])
@pytest.mark.parametrize("seed", [1, 2])
def test_chain_equals_the_page_by_page_model(tmp_path, pm, threads, level, seed):
    path = tmp_path / "t.parquet"
    names = make_trace(path, seed, empty_last=seed == 2)
    spec = f"compress,compress-threads={threads},compress-level={level}"
    sink = MemorySink()
    res = replay(TraceReader(path), parse_spec(spec), pm, sink=sink)
    want, c = qemu_model(dirty_pages(path), names, threads, level)
    assert stream_records(sink.getvalue(), pm) == want
    assert res["compression"]["pages"] == c["pages"] and res["compression"]["compressed-size"] == c["compressed-size"]
    assert (res["ram"]["duplicate"], res["ram"]["normal"], res["ram"]["transferred"]) == (
        c["duplicate"], c["normal"], c["transferred"])
    assert res["threads"]["compress"] == threads and res["threads"]["timing-dependent"] is False


@pytest.mark.parametrize("spec", ["compress", "compress,compress-threads=3", "xbzrle+compress",
                                  "compress-isal,compress-threads=3", "compress-zlibng,compress-threads=3"])
def test_batch_size_does_not_change_the_stream(tmp_path, pm, spec):
    outs = streams_by_batch_size(tmp_path, pm, spec)
    if pm.codecs[parse_spec(spec, pm.presets).slot_codecs()[Slot.COMPRESS]].reproducible(parse_spec(spec, pm.presets)):
        assert outs[0] == outs[1] == outs[2]
    else:  # ISA-L with threads: its bytes vary run to run (README), the records and their order may not
        recs = [stream_records(o, pm) for o in outs]
        assert recs[0] == recs[1] == recs[2]


def streams_by_batch_size(tmp_path, pm, spec: str) -> list[bytes]:
    """The stream of ``spec`` on a 3-round trace read in batches of 1, 3 and 4096 pages."""
    path = tmp_path / "t.parquet"
    make_trace(path, 3)
    outs = []
    for max_pages in (1, 3, 4096):
        reader = TraceReader(path)
        sink = MemorySink()
        Sender(reader.meta, parse_spec(spec, pm.presets), pm, sink).run(rounds_of(reader, max_pages=max_pages),
                                                                        reader.num_rounds)
        outs.append(sink.getvalue())
    return outs


def test_compress_pages_are_zlibs_bytes():
    """One fresh deflate state per page at the level (QEMU: deflateReset + deflate(Z_FINISH))."""
    rng = np.random.default_rng(3)
    pages = np.concatenate([rng.integers(0, k, (40, PS), dtype=np.uint8) for k in (1, 2, 16, 256)])
    pages[::5, -7:] = 0
    for level in range(10):
        assert compress_pages(pages, level)[0] == [zlib.compress(p, level) for p in pages], level


def test_xbzrle_takes_over_after_the_bulk_stage(tmp_path, pm):
    path = tmp_path / "t.parquet"
    make_trace(path, 4, rounds=5)
    res = replay(TraceReader(path), parse_spec("xbzrle+compress", pm.presets), pm)
    rounds = res["rounds"]
    assert rounds[0]["records"].get("compress", 0) > 0
    assert all("compress" not in r["records"] for r in rounds[1:])
    assert res["xbzrle-cache"]["cache-miss"] > 0


def test_wait_thread_off_is_marked_timing_dependent(tmp_path, pm):
    path = tmp_path / "t.parquet"
    make_trace(path, 5)
    res = verify(TraceReader(path), parse_spec("compress,compress-wait-thread=off"), pm)
    assert res.ok, res.mismatch
    m = res.metrics
    assert m["threads"]["timing-dependent"] is True and m["threads"]["compress-wait-thread"] is False
    assert m["compression"]["pages"] + m["compression"]["busy"] > 0
    assert m["cpu_decode"]["compress"] > 0 and m["threads"]["decompress"] == 2


def test_a_corrupt_record_in_a_run_writes_no_page_of_the_run(tmp_path, pm):
    """The destination inflates runs of COMPRESS_PAGE records on decompress threads; a bad zlib stream
    in the middle of a run is a DecodeError with its offset, and no page of the run is written."""
    path = tmp_path / "t.parquet"
    rng = np.random.default_rng(9)
    pages = rng.integers(0, 3, (40, PS), dtype=np.uint8)
    write_trace(path, [("pc.ram", 40 * PS)], [{0: (np.arange(40) * PS, pages)}])
    hit = []
    base = []

    def tamper(r, chunk):
        if r < 0:
            base.append(len(chunk))  # the setup section: round 0's chunk starts after it
        b = bytearray(chunk)
        i = [j for j in range(len(b) - 8) if b[j : j + 8] == (20 * PS | 0x120).to_bytes(8, "big")]
        if r == 0 and i:
            at = i[0] + 8 + 4  # the zlib stream of page 20's record
            b[at + 2 : at + 6] = b"\xff\xff\xff\xff"
            hit.append(base[0] + at)
        return bytes(b)

    with pytest.raises(DecodeError, match="compressed page") as ei:
        verify(TraceReader(path), parse_spec("compress,compress-threads=4"), pm, tamper=tamper)
    assert hit and ei.value.offset is not None and hit[0] <= ei.value.offset < hit[0] + 16


@settings(max_examples=examples(15), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), threads=st.integers(1, 9), spec=st.sampled_from(
    ["compress", "xbzrle+compress", "compress,compress-wait-thread=off", "compress,qemu-version=4.1"]))
def test_verify_generated(tmp_path_factory, pm, seed, threads, spec):
    path = tmp_path_factory.mktemp("c") / "t.parquet"
    make_trace(path, seed, rounds=3 + seed % 3, empty_last=seed % 2 == 0)
    res = verify(TraceReader(path), parse_spec(f"{spec},compress-threads={threads}", pm.presets), pm)
    assert res.ok, res.mismatch


def test_receiver_checks_a_whole_run_before_writing(pm):
    from pagecodec.wire import qevm
    from pagecodec.wire.flags import SectionType
    from pagecodec.wire.records import eos_record, mem_size_record
    from pagecodec.wire.writer import WireWriter

    rng = np.random.default_rng(2)
    pages = rng.integers(1, 3, (12, PS), dtype=np.uint8)
    zs = [zlib.compress(p.tobytes(), 1) for p in pages]
    zs[6] = zs[6][:10] + b"\xff" * 8 + zs[6][18:]
    body = (0x100).to_bytes(8, "big") + b"\x06pc.ram" + len(zs[0]).to_bytes(4, "big") + zs[0]
    for i in range(1, 12):
        body += (i * PS | 0x120).to_bytes(8, "big") + len(zs[i]).to_bytes(4, "big") + zs[i]
    w = WireWriter()
    qevm.write_file_header(w, "pc-i440fx-7.2")
    qevm.write_section_header(w, SectionType.SECTION_START, 2, "ram", 0, 4)
    w.put(mem_size_record([("pc.ram", 16 * PS)]) + eos_record(), "x")
    qevm.write_section_footer(w, 2)
    qevm.write_section_header(w, SectionType.SECTION_PART, 2)
    w.put(body + eos_record(), "x")
    data = w.sink.getvalue()
    rc = Receiver(PS, pm, parse_spec("compress,decompress-threads=3"))
    with pytest.raises(DecodeError, match="compressed page") as ei:
        rc.load_stream(StreamReader(data, "s.mig"))
    ram = rc.memory["pc.ram"].reshape(-1, PS)
    assert np.array_equal(ram[0], pages[0]) and not ram[1:].any()  # the run 1..11 was checked first
    assert data.index(zs[6]) <= ei.value.offset < data.index(zs[6]) + len(zs[6])


def test_decode_errors_name_round_block_and_offset(tmp_path, pm):
    """A COMPRESS_PAGE that does not inflate: DecodeError with the round, the block and page offset,
    and the stream offset."""
    path = tmp_path / "t.parquet"
    rng = np.random.default_rng(4)
    pages = rng.integers(1, 3, (8, PS), dtype=np.uint8)
    write_trace(path, [("pc.ram", 8 * PS)], [{0: (np.arange(8) * PS, pages)}, {0: (np.array([5 * PS]), pages[:1])}])

    def tamper(r, chunk):
        if r != 1:
            return chunk
        b = bytearray(chunk)
        at = b.index((5 * PS | 0x120).to_bytes(8, "big")) + 12
        b[at : at + 4] = b"\xff\xff\xff\xff"
        return bytes(b)

    with pytest.raises(DecodeError, match=r"round 1: compressed page .*\(block 'pc.ram', page offset 0x5000\)") as ei:
        verify(TraceReader(path), parse_spec("compress,compress-threads=1"), pm, tamper=tamper)
    assert ei.value.offset is not None
