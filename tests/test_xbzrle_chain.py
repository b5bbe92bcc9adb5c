"""XBZRLE in the chain: QEMU's rules page by page, batching equivalence, QEMU's own records."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import xbzrle_reference as ref
from conftest import write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.chain.ramstate import block_addresses
from pagecodec.chain.receiver import Receiver
from pagecodec.chain.sender import Sender
from pagecodec.codecs.xbzrle import XbzrleDecoder
from pagecodec.codecs.xbzrle_kernel import encode_page
from pagecodec.errors import DecodeError, WireError
from pagecodec.harness.replay import replay, rounds_of, verify
from pagecodec.trace.format import TraceReader
from pagecodec.wire.flags import SectionType
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096
BLOCKS = [("pc.ram", 48 * PS), ("pc.bios", 4 * PS)]


def make_trace(path, seed: int, rounds: int = 6):
    """Pages re-dirtied round after round: sparse edits (hits), rewrites (overflows), zero toggles,
    unchanged (skips); both blocks, so cache slots of different blocks collide in small caches."""
    rng = np.random.default_rng(seed)
    mem = [rng.integers(0, 256, (s // PS, PS), dtype=np.uint8) for _, s in BLOCKS]
    mem[0][rng.random(48) < 0.3] = 0
    content = [{i: (np.arange(len(m)) * PS, m.copy()) for i, m in enumerate(mem)}]
    for _r in range(1, rounds):
        rd = {}
        for bi, m in enumerate(mem):
            dirty = np.sort(rng.choice(len(m), max(1, len(m) // 2), replace=False))
            for p in dirty:
                x = rng.random()
                if x < 0.45:
                    pos = rng.integers(0, PS, rng.integers(1, 12))
                    m[p, pos] = rng.integers(0, 256, len(pos), dtype=np.uint8)
                elif x < 0.6:
                    m[p] = rng.integers(0, 256, PS, dtype=np.uint8)
                elif x < 0.75:
                    m[p] = 0 if m[p].any() else rng.integers(1, 256, PS, dtype=np.uint8)
                # else: dirty but unchanged
            rd[bi] = (dirty * PS, m[dirty].copy())
        content.append(rd)
    write_trace(path, BLOCKS, content)


def qemu_model(reader: TraceReader, cache_size: int, qemu41: bool = False):
    """QEMU 7.2's ram_save_target_page for xbzrle, one page at a time, with a dict page cache and the
    byte-by-byte reference encoder. Returns [(round, block, offset, kind, payload)] and counters."""
    slots = cache_size // PS
    base = block_addresses([b.used_length for b in reader.meta.blocks], PS)
    cache: dict[int, list] = {}
    out = []
    cnt = dict(hits=0, miss=0, overflow=0, bytes=0)

    def insert(addr, page, now):
        s = (addr // PS) & (slots - 1)
        e = cache.get(s)
        if e is not None and e[0] != addr and e[1] + 2 > now:
            return
        cache[s] = [addr, now, bytes(page)]

    n_rounds = reader.num_rounds
    for r, batches in rounds_of(reader):
        now, bulk, last = r + 1, r == 0, r == n_rounds - 1
        for b in batches:
            for bi, off, page in zip(b.block.tolist(), b.offset.tolist(), b.pages):
                addr = base[bi] + off
                pb = page.tobytes()
                if not page.any():
                    out.append((r, bi, off, "zero", b""))
                    if not bulk:
                        insert(addr, bytes(PS), now)
                    continue
                if bulk:
                    out.append((r, bi, off, "page", pb))
                    continue
                e = cache.get((addr // PS) & (slots - 1))
                if e is None or e[0] != addr:
                    cnt["miss"] += 1
                    if not last:
                        insert(addr, pb, now)
                    out.append((r, bi, off, "page", pb))
                    continue
                e[1] = now
                cnt["hits"] += 1
                res = ref.encode(e[2], pb)
                if res == 0:
                    continue
                if not last:
                    e[2] = pb
                if res == -1:
                    cnt["overflow"] += 1
                    out.append((r, bi, off, "page", pb))
                    continue
                out.append((r, bi, off, "xbzrle", res))
    return out, cnt


def stream_records(data: bytes, names: list[str]):
    """Independent parse: [(section index, block, offset, kind, payload)] of every page record."""
    r = StreamReader(data)
    r.get_bytes(8)
    r.get_byte()
    r.get_bytes(r.get_be32())
    recs, sec, last = [], -1, None
    while (t := r.get_byte()) != SectionType.EOF:
        r.get_be32()
        if t == SectionType.SECTION_START:
            r.get_bytes(r.get_byte())
            r.get_bytes(8)
        sec += 1
        while True:
            word = r.get_be64()
            flags, off = word & 0xFFF, word & ~0xFFF
            if flags == 0x10:
                break
            if flags & 0x04:
                total = off
                while total:
                    r.get_bytes(r.get_byte())
                    total -= r.get_be64()
                continue
            if not flags & 0x20:
                last = names.index(bytes(r.get_bytes(r.get_byte())).decode())
            kind = {0x02: "zero", 0x08: "page", 0x40: "xbzrle"}[flags & ~0x20]
            if kind == "zero":
                assert r.get_byte() == 0
                payload = b""
            elif kind == "page":
                payload = bytes(r.get_bytes(PS))
            else:
                assert r.get_byte() == 1
                payload = bytes(r.get_bytes(r.get_be16()))
            recs.append((sec - 1, last, off, kind, payload))  # section 0 is START: round = sec - 1
        assert r.get_byte() == SectionType.SECTION_FOOTER
        r.get_be32()
    return recs


@pytest.mark.parametrize("seed,cache", [(1, 64 << 20), (2, 16 << 10), (3, 8 << 10), (4, 4 << 10)])
def test_chain_equals_qemu_page_by_page(tmp_path, pm, seed, cache):
    path = tmp_path / "t.parquet"
    make_trace(path, seed)
    reader = TraceReader(path)
    expect, cnt = qemu_model(reader, cache)
    sink = MemorySink()
    res = replay(TraceReader(path), parse_spec(f"xbzrle,xbzrle-cache-size={cache}"), pm, sink=sink)
    got = stream_records(sink.getvalue(), [b.name for b in reader.meta.blocks])
    assert [g[:4] for g in got] == [e[:4] for e in expect]
    assert got == expect
    x = res["xbzrle-cache"]
    assert (x["pages"], x["cache-miss"], x["overflow"]) == (cnt["hits"], cnt["miss"], cnt["overflow"])
    n_x = sum(1 for e in expect if e[3] == "xbzrle")
    assert n_x > 0 and cnt["overflow"] > 0 and cnt["miss"] > 0
    # 7.2: bytes = Σ(len + 3) (+ idstr of a record that names its block) + a page per overflow
    named = res["wire"]["xbzrle"] - sum(8 + 3 + len(e[4]) for e in expect if e[3] == "xbzrle")
    assert x["bytes"] == sum(len(e[4]) + 3 for e in expect if e[3] == "xbzrle") + named + PS * cnt["overflow"]
    assert res["records"]["xbzrle"] == n_x
    # QEMU divides misses by the pages sent (target_page_count) while xbzrle is on: rounds after the bulk stage
    assert x["cache-miss-rate"] == pytest.approx(cnt["miss"] / sum(1 for e in expect if e[0] >= 1))


def test_batching_does_not_change_the_stream(tmp_path, pm):
    path = tmp_path / "t.parquet"
    make_trace(path, 5)
    outs = []
    for max_pages in (1, 7, 4096):
        reader = TraceReader(path)
        sink = MemorySink()
        Sender(reader.meta, parse_spec("xbzrle,xbzrle-cache-size=8K"), pm, sink).run(
            rounds_of(reader, max_pages=max_pages), reader.num_rounds)
        outs.append(sink.getvalue())
    assert outs[0] == outs[1] == outs[2]


@pytest.mark.parametrize("cache", ["64M", "8K"])
def test_verify_xbzrle(tmp_path, pm, cache):
    path = tmp_path / "t.parquet"
    make_trace(path, 6)
    res = verify(TraceReader(path), parse_spec(f"xbzrle,xbzrle-cache-size={cache}"), pm)
    assert res.ok, res.mismatch
    assert res.metrics["records"].get("xbzrle", 0) > 0


def test_qemu41_counters(tmp_path, pm):
    path = tmp_path / "t.parquet"
    make_trace(path, 7)
    new = replay(TraceReader(path), parse_spec("xbzrle"), pm)
    old = replay(TraceReader(path), parse_spec("xbzrle,qemu-version=4.1"), pm)
    assert new["wire"] == old["wire"]  # same stream, only the counters differ
    n = new["records"]["xbzrle"]
    assert old["xbzrle-cache"]["pages"] == n < new["xbzrle-cache"]["pages"]
    assert old["xbzrle-cache"]["bytes"] == new["wire"]["xbzrle"]
    assert new["xbzrle-cache"]["bytes"] == new["wire"]["xbzrle"] - 8 * n + PS * new["xbzrle-cache"]["overflow"]


def test_bad_cache_size_is_refused(tmp_path, pm):
    path = tmp_path / "t.parquet"
    make_trace(path, 1, rounds=2)
    with pytest.raises(Exception, match="power of two"):
        replay(TraceReader(path), parse_spec("xbzrle,xbzrle-cache-size=12K"), pm)


class Recording(XbzrleDecoder):
    def __init__(self):
        self.seen = []

    def load(self, r, page):
        old = page.copy()
        at = r.pos
        super().load(r, page)
        self.seen.append((old, page.copy(), r.view_np()[at + 3 : r.pos].tobytes()))


def load_qemu_ram(path, pm):
    r = StreamReader.open(path)
    rc = Receiver(PS, pm, source=str(path))
    rec = Recording()
    rc.decoders[0x40] = rec
    rc.load_header(r)
    while rc.load_section(r).type != SectionType.SECTION_END:
        pass
    return rc, rec


def test_qemu_xbzrle_records_reencode_identically(shared, pm):
    """QEMU 7.2's 562 XBZRLE records: our encoder, given each record's old and new page, writes
    QEMU's bytes; our decoder rebuilds the RAM QEMU's destination had (expected.json)."""
    path = shared / "streams" / "qemu72-xbzrle-64m.mig"
    exp = json.loads((shared / "streams" / "expected.json").read_text())["qemu72-xbzrle-64m.mig"]
    rc, rec = load_qemu_ram(path, pm)
    assert len(rec.seen) == exp["records"]["xbzrle"] == 562
    assert sum(len(d) for _o, _n, d in rec.seen) == exp["records"]["xbzrle_bytes"]
    for old, new, data in rec.seen:
        assert encode_page(old, new) == data
    for name, b in exp["blocks"].items():
        assert hashlib.sha256(rc.memory[name]).hexdigest() == b["sha256"], name


def first_xbzrle_record(chunk: bytes) -> int | None:
    """Offset of the first XBZRLE record's header in a PART/END section chunk."""
    r = StreamReader(chunk)
    r.get_byte()
    r.get_be32()
    while True:
        at = r.pos
        word = r.get_be64()
        flags = word & 0xFFF
        if flags == 0x10:
            return None
        if not flags & 0x20:
            r.get_bytes(r.get_byte())
        if flags & 0x02:
            r.get_byte()
        elif flags & 0x08:
            r.get_bytes(PS)
        elif flags & 0x40:
            return at


@pytest.mark.parametrize("what,match", [("flag", "encoding flag 0x02"), ("length", "exceeds the page size"),
                                        ("payload", "XBZRLE record rejected")])
def test_malformed_xbzrle_record_in_stream(tmp_path, pm, what, match):
    path = tmp_path / "t.parquet"
    make_trace(path, 8, rounds=4)
    hit = []

    def tamper(r, chunk):
        at = first_xbzrle_record(chunk) if r >= 2 and not hit else None
        if at is None:
            return chunk
        hit.append(r)
        b = bytearray(chunk)
        named = 0 if b[at + 7] & 0x20 else 1 + b[at + 8]
        p = at + 8 + named
        if what == "flag":
            b[p] = 2
        elif what == "length":
            b[p + 1 : p + 3] = (PS + 1).to_bytes(2, "big")
        else:
            b[p + 3] = 0  # first zrun 0 is legal; make the first nzrun 0 instead
            b[p + 4] = 0
        return bytes(b)

    with pytest.raises(WireError, match=match) as ei:
        verify(TraceReader(path), parse_spec("xbzrle"), pm, tamper=tamper)
    assert hit and ei.value.offset is not None


def test_xbzrle_decoder_rejects_overlong_and_garbage(pm):
    dec = XbzrleDecoder()
    page = np.zeros(PS, np.uint8)
    with pytest.raises(WireError, match="exceeds the page size"):
        dec.load(StreamReader(b"\x01\x10\x01" + bytes(4097), "s"), page)
    with pytest.raises(DecodeError):
        dec.load(StreamReader(b"\x01\x00\x03" + b"\x00\x00\x05", "s"), page)
    assert not page.any()
