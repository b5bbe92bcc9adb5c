"""Importing real QEMU migration streams as traces (issue #4).

The two streams in ../shared/streams were written by QEMU 7.2; expected.json holds each block's
sha256 (for the xbzrle stream checked against a real QEMU destination) and the record counts. Crafted
streams cover what those two do not carry: compress-thread records, postcopy advice, x-ignore-shared,
MULTIFD_FLUSH, 10.0's SWITCHOVER_START, and every kind of damage.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.errors import DecodeError, PageCodecError, TraceError, WireError
from pagecodec.harness.replay import replay, verify
from pagecodec.trace.format import TraceReader
from pagecodec.trace.image import block_image
from pagecodec.sources.qemu_stream import ImportReport, import_qemu_stream
from pagecodec.wire.qevm import find_vmdesc

PS = 4096
STREAMS = ("qemu72-paused-64m.mig", "qemu72-xbzrle-64m.mig")


def be16(v: int) -> bytes:
    return v.to_bytes(2, "big")


def be32(v: int) -> bytes:
    return v.to_bytes(4, "big")


def be64(v: int) -> bytes:
    return v.to_bytes(8, "big")


# --- a walker over the RAM records of a stream (test-side, to find offsets to cut and corrupt) -----
def walk(data: bytes) -> list[tuple[int, str, int]]:
    """(offset, kind, record length) of every RAM record, plus ('section', …) entries; stops at the
    first non-RAM section after RAM END. Assumes a well-formed stream without commands."""
    out = []
    pos = 8
    assert data[pos] == 7
    pos += 5 + int.from_bytes(data[pos + 1 : pos + 5], "big")
    assert data[pos] != 5, "configuration subsections are not expected in the test streams"
    while True:
        t = data[pos]
        if t in (1, 4) and data[pos + 6 : pos + 6 + data[pos + 5]] != b"ram":
            out.append((pos, "device", 0))
            return out
        hl = 5 + (1 + data[pos + 5] + 8 if t in (1, 4) else 0)
        out.append((pos, "section", hl))
        pos += hl
        while True:
            w = int.from_bytes(data[pos : pos + 8], "big")
            fl = w & (PS - 1)
            at = pos
            pos += 8
            if fl & 0x04:
                total = w & ~(PS - 1)
                while total:
                    n = data[pos]
                    total -= int.from_bytes(data[pos + 1 + n : pos + 9 + n], "big")
                    pos += 9 + n
                out.append((at, "mem_size", pos - at))
                continue
            if fl == 0x10:
                out.append((at, "eos", 8))
                break
            if not fl & 0x20:
                pos += 1 + data[pos]
            k = fl & ~0x20
            if k == 0x02:
                pos += 1
            elif k == 0x08:
                pos += PS
            elif k == 0x40:
                pos += 3 + int.from_bytes(data[pos + 1 : pos + 3], "big")
            else:
                raise AssertionError(hex(fl))
            out.append((at, {2: "zero", 8: "page", 0x40: "xbzrle"}[k], pos - at))
        out.append((pos, "footer", 5))
        pos += 5
        if t == 3:
            out.append((pos, "after_ram", 0))


# --- crafted streams ---------------------------------------------------------------------------------
def config(machine: str = "pc-i440fx-7.2", caps: list[str] | None = None) -> bytes:
    out = b"\x07" + be32(len(machine)) + machine.encode()
    if caps is not None:
        name = b"configuration/capabilities"
        out += b"\x05" + bytes([len(name)]) + name + be32(1) + be32(len(caps))
        out += b"".join(bytes([len(c)]) + c.encode() for c in caps)
    return out


def header(version: int = 3, **kw) -> bytes:
    return be32(0x5145564D) + be32(version) + config(**kw)


def sec(t: int, body: bytes, sid: int = 2, idstr: bytes = b"ram", version: int = 4, footer: bool = True) -> bytes:
    h = bytes([t]) + be32(sid)
    if t in (1, 4):
        h += bytes([len(idstr)]) + idstr + be32(0) + be32(version)
    return h + body + (b"\x7e" + be32(sid) if footer else b"")


def command(cmd: int, data: bytes = b"") -> bytes:
    return b"\x08" + be16(cmd) + be16(len(data)) + data


def trailer(devices: bytes = b"") -> bytes:
    desc = json.dumps({"page_size": PS, "devices": []}).encode()
    return devices + b"\x00\x06" + be32(len(desc)) + desc


def mem_size(blocks, extra=None) -> bytes:
    """blocks [(name, length)]; extra[i] bytes appended after block i's used_length."""
    out = be64(sum(n for _, n in blocks) | 0x04)
    for i, (name, n) in enumerate(blocks):
        out += bytes([len(name)]) + name.encode() + be64(n) + (extra[i] if extra else b"")
    return out


def rec(off: int, flag: int, block: str | None, payload: bytes = b"") -> bytes:
    if block is None:
        return be64(off | flag | 0x20) + payload
    return be64(off | flag) + bytes([len(block)]) + block.encode() + payload


def zero(i: int, block: str | None = None) -> bytes:
    return rec(i * PS, 0x02, block, b"\x00")


def page(i: int, content: bytes, block: str | None = None) -> bytes:
    return rec(i * PS, 0x08, block, content)


def comp(i: int, content: bytes, block: str | None = None) -> bytes:
    z = zlib.compress(content, 1)
    return rec(i * PS, 0x100, block, be32(len(z)) + z)


def xbz(i: int, enc: bytes, block: str | None = None, flag: int = 1) -> bytes:
    return rec(i * PS, 0x40, block, bytes([flag]) + be16(len(enc)) + enc)


EOS = be64(0x10)
BLOCKS = [("pc.ram", 8 * PS), ("pc.bios", 2 * PS)]


def fill(v: int) -> bytes:
    return bytes([v]) * PS


def bulk(blocks=BLOCKS) -> bytes:
    """A first pass: every page, page 1 of each block with content, the rest zero."""
    out = b""
    for name, n in blocks:
        for i in range(n // PS):
            first = name if i == 0 else None
            out += page(i, fill(i + 1), first) if i == 1 else zero(i, first)
    return out


INCOMPLETE = bulk(BLOCKS[:1]) + zero(0, "pc.bios")


def crafted(*parts: bytes, blocks=BLOCKS, caps=None, pre=b"", extra=None, devices=b"", with_trailer=True) -> bytes:
    """header, [pre], START(MEM_SIZE, EOS), one PART per part except the last, END(last part)."""
    data = header(caps=caps) + pre + sec(1, mem_size(blocks, extra) + EOS)
    for p in parts[:-1]:
        data += sec(2, p + EOS)
    data += sec(3, parts[-1] + EOS)
    return data + (trailer(devices) if with_trailer else b"")


def do_import(tmp_path: Path, data: bytes, name: str = "s.mig", **kw) -> tuple[ImportReport, TraceReader]:
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / (name + ".parquet")
    rep = import_qemu_stream(src, out, **kw)
    return rep, TraceReader(out)


def rounds_of(reader: TraceReader) -> list[dict[tuple[int, int], bytes]]:
    out: list[dict[tuple[int, int], bytes]] = [dict() for _ in range(reader.num_rounds)]
    for b in reader.batches():
        for blk, off, pg in zip(b.block.tolist(), b.offset.tolist(), b.pages):
            out[b.round][(blk, off)] = pg.tobytes()
    return out


def fails(tmp_path: Path, data: bytes, match: str | None, exc=PageCodecError, name: str = "bad.mig", **kw) -> PageCodecError:
    """The import raises ``exc`` matching ``match``, names the stream, and writes nothing."""
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / "out" / "t.parquet"
    out.parent.mkdir(exist_ok=True)
    with pytest.raises(exc, match=match) as ei:
        import_qemu_stream(src, out, **kw)
    assert str(src) in str(ei.value)
    assert list(out.parent.iterdir()) == [], "nothing may be written on error"
    return ei.value


# --- the real QEMU 7.2 streams -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def expected(shared):
    return json.loads((shared / "streams" / "expected.json").read_text())


@pytest.fixture(scope="module")
def imported(shared, tmp_path_factory):
    d = tmp_path_factory.mktemp("imported")
    out = {}
    for name in STREAMS:
        rep = import_qemu_stream(shared / "streams" / name, d / f"{name}.parquet")
        out[name] = (rep, d / f"{name}.parquet")
    return out


@pytest.mark.parametrize("name", STREAMS)
def test_real_stream_blocks_match_qemu(name, imported, expected):
    rep, path = imported[name]
    exp = expected[name]
    with TraceReader(path) as rd:
        assert [b.name for b in rd.meta.blocks] == list(exp["blocks"])
        for b in rd.meta.blocks:
            img = block_image(rd, b.name)
            assert img.nbytes == b.used_length == exp["blocks"][b.name]["used_length"]
            assert hashlib.sha256(img).hexdigest() == exp["blocks"][b.name]["sha256"], b.name
        assert rd.num_rounds == rep.rounds and rd.pages_per_round == rep.pages_per_round
        prov = rd.meta.provenance
        assert prov.source == "qemu-stream" and prov.command.startswith("pagecodec trace import-qemu ")
        assert name in prov.command and prov.date


@pytest.mark.parametrize("name", STREAMS)
def test_real_stream_report(name, imported, expected):
    rep, _ = imported[name]
    exp = expected[name]
    for k, v in exp["records"].items():
        assert rep.records[k] == v, k
    assert all(v == 0 for k, v in rep.records.items() if k not in exp["records"])
    assert rep.ram_sections == exp["ram_sections"]
    assert rep.machine == "pc-i440fx-7.2" and rep.vmdesc and rep.record_order == "sequential"
    assert rep.stream_bytes == exp["size"] and rep.ram_end_offset < rep.stream_bytes
    total = sum(b["used_length"] for b in exp["blocks"].values()) // PS
    assert rep.pages_per_round[0] == total
    page_records = exp["records"]["zero"] + exp["records"]["page"] + exp["records"].get("xbzrle", 0)
    assert sum(rep.pages_per_round) == page_records  # every page record is a row, none twice in a round
    # both streams end with an empty END section (ram_save_complete found nothing dirty): an empty round
    assert rep.pages_per_round[-1] == 0
    if "paused" in name:
        assert rep.rounds == 2  # a paused guest dirties nothing: the bulk pass, then the empty completion
    else:
        assert 4 <= rep.rounds <= exp["ram_sections"]
        assert all(0 < n <= total for n in rep.pages_per_round[1:-1])


@pytest.mark.parametrize("name", STREAMS)
def test_real_stream_trace_verifies(name, imported, pm):
    _, path = imported[name]
    with TraceReader(path) as rd:
        res = verify(rd, parse_spec("none", pm.presets), pm)
    assert res.ok, res.mismatch
    assert res.rounds == imported[name][0].rounds


def test_progress_reports_every_byte(shared, tmp_path):
    src = shared / "streams" / STREAMS[0]
    seen: list[int] = []
    import_qemu_stream(src, tmp_path / "t.parquet", progress=seen.append)
    assert sum(seen) == src.stat().st_size and all(n > 0 for n in seen)


def test_find_vmdesc(shared):
    data = (shared / "streams" / STREAMS[0]).read_bytes()
    at, desc = find_vmdesc(np.frombuffer(data, np.uint8))
    assert data[at] == 6 and data[at - 1] == 0 and desc["page_size"] == PS and desc["devices"]
    assert find_vmdesc(np.frombuffer(data[:-1], np.uint8)) is None


# --- round trip through pagecodec's own sender -----------------------------------------------------
def _roundtrip_trace(path: Path, seed: int) -> None:
    """Three blocks; every round k >= 1 starts at or before where round k-1 ended (QEMU's search
    wraps between passes), so the wrap rule must recover every round exactly."""
    rng = np.random.default_rng(seed)
    blocks = [("pc.ram", 48 * PS), ("vga.vram", 16 * PS), ("pc.rom", 2 * PS)]
    sizes = [n // PS for _, n in blocks]
    starts = np.concatenate(([0], np.cumsum(sizes)))
    total = int(starts[-1])
    ram = rng.integers(0, 256, (total, PS), dtype=np.uint8)
    ram[rng.random(total) < 0.5] = 0
    rounds = [{i: (np.arange(sizes[i]) * PS, ram[starts[i] : starts[i + 1]].copy()) for i in range(3)}]
    last = total - 1
    for _ in range(6):
        k = int(rng.integers(1, 12))
        g = set(rng.choice(total, k, replace=False).tolist())
        g.add(int(rng.integers(0, last + 1)))  # at or before the previous round's last page
        g = np.array(sorted(g))
        ram[g] = rng.integers(0, 256, (len(g), PS), dtype=np.uint8)
        ram[g[rng.random(len(g)) < 0.3]] = 0
        rnd = {}
        for i in range(3):
            sel = g[(g >= starts[i]) & (g < starts[i + 1])]
            if len(sel):
                rnd[i] = ((sel - starts[i]) * PS, ram[sel].copy())
        rounds.append(rnd)
        last = int(g[-1])
    write_trace(path, blocks, rounds)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_roundtrip_own_stream(seed, tmp_path, pm):
    src = tmp_path / "orig.parquet"
    _roundtrip_trace(src, seed)
    mig = tmp_path / "own.mig"
    with TraceReader(src) as rd:
        replay(rd, parse_spec("none", pm.presets), pm, qemu_stream=mig)
    rep, back = do_import(tmp_path, mig.read_bytes(), "own.mig")
    with TraceReader(src) as orig:
        assert back.meta.blocks == orig.meta.blocks
        assert back.num_rounds == orig.num_rounds == rep.rounds
        assert back.pages_per_round == orig.pages_per_round
        assert rounds_of(back) == rounds_of(orig)
    assert rep.ram_sections == rep.rounds + 1 and rep.machine == "pc-i440fx-7.2"


@pytest.fixture(scope="module")
def synth_trace(tmp_path_factory):
    from pagecodec.sources.synth import synthesize

    p = tmp_path_factory.mktemp("synth") / "syn.parquet"
    synthesize(p, ram_size=4 << 20, rounds=8, dirty_fraction=0.05, patterns="sparse=4,rewrite=1,toggle=1,text=2,random=1",
               zero_fraction=0.4, seed=7, blocks=[("pc.ram", 4 << 20), ("vga.vram", 1 << 20), ("pc.rom", 128 << 10)])
    return p


def test_roundtrip_synthesized_trace(synth_trace, tmp_path, pm):
    mig = tmp_path / "syn.mig"
    with TraceReader(synth_trace) as rd:
        replay(rd, parse_spec("none", pm.presets), pm, qemu_stream=mig)
    _, back = do_import(tmp_path, mig.read_bytes(), "syn.mig")
    with TraceReader(synth_trace) as orig:
        assert back.pages_per_round == orig.pages_per_round
        assert rounds_of(back) == rounds_of(orig)


def test_roundtrip_xbzrle_stream(synth_trace, tmp_path, pm):
    """pagecodec's XBZRLE encoder against the importer's decoding: XBZRLE records from round 2 on;
    pages whose content did not change are skipped on the wire, so each imported round holds the
    original round's changed pages (at least), with the same contents."""
    mig = tmp_path / "x.mig"
    with TraceReader(synth_trace) as rd:
        replay(rd, parse_spec("xbzrle", pm.presets), pm, qemu_stream=mig)
    rep, back = do_import(tmp_path, mig.read_bytes(), "x.mig")
    assert rep.records["xbzrle"] > 0 and rep.records["xbzrle_bytes"] > 0
    with TraceReader(synth_trace) as orig:
        assert back.num_rounds == orig.num_rounds
        want, got = rounds_of(orig), rounds_of(back)
        image: dict = {}
        for k, (w, g) in enumerate(zip(want, got)):
            assert set(g) <= set(w) and all(g[p] == w[p] for p in g), k
            assert all(w[p] == image[p] for p in set(w) - set(g)), k  # skipped: unchanged
            image.update(w)
        for b in orig.meta.blocks:
            assert np.array_equal(block_image(back, b.name), block_image(orig, b.name))


# --- crafted streams: layouts QEMU writes ------------------------------------------------------------
def test_crafted_rounds_and_records(tmp_path):
    # round 1: pages 2, 5 of pc.ram (split over two sections), wrap, round 2: page 5 again, 0 of pc.bios
    r1a = page(2, fill(0xA2), "pc.ram")
    r1b = zero(5) + be64(0x200)  # MULTIFD_FLUSH is ignored
    r2 = page(5, fill(0xB5), "pc.ram") + page(0, fill(0xC0), "pc.bios")
    data = crafted(bulk(), r1a, r1b, r2)
    rep, rd = do_import(tmp_path, data)
    assert rep.rounds == 3 and rep.pages_per_round == [10, 2, 2]
    assert rep.records == {"mem_size": 1, "eos": 5, "zero": 9, "page": 5, "xbzrle": 0, "xbzrle_bytes": 0,
                           "compress": 0, "multifd_flush": 1}
    rounds = rounds_of(rd)
    assert rounds[1] == {(0, 2 * PS): fill(0xA2), (0, 5 * PS): bytes(PS)}
    assert rounds[2] == {(0, 5 * PS): fill(0xB5), (1, 0): fill(0xC0)}
    img = block_image(rd, "pc.ram").reshape(-1, PS)
    assert (img[1] == 2).all() and (img[2] == 0xA2).all() and (img[5] == 0xB5).all() and not img[3].any()


def test_same_page_twice_is_a_wrap(tmp_path):
    data = crafted(bulk(), page(3, fill(1), "pc.ram") + page(3, fill(2), None))
    rep, rd = do_import(tmp_path, data)
    assert rep.pages_per_round == [10, 1, 1]
    assert rounds_of(rd)[2] == {(0, 3 * PS): fill(2)}


def test_xbzrle_records_patch_the_rebuilt_page(tmp_path):
    enc = bytes([5, 3]) + b"xyz"  # 5 unchanged bytes, 3 new ones
    data = crafted(bulk(), xbz(1, enc, "pc.ram") + xbz(1, b"\x00\x01Q", "pc.bios"))
    rep, rd = do_import(tmp_path, data)
    want = bytearray(fill(2))
    want[5:8] = b"xyz"
    want_bios = bytearray(fill(2))
    want_bios[0] = ord("Q")
    assert rounds_of(rd)[1] == {(0, PS): bytes(want), (1, PS): bytes(want_bios)}
    assert rep.records["xbzrle"] == 2 and rep.records["xbzrle_bytes"] == len(enc) + 3


def test_compress_threads_permuted_records(tmp_path):
    """Compress threads emit records out of order within a block (QEMU 7.2 does so even for ZERO
    records of the first pass); passes are still separated by a block going back or a repeat."""
    n = 8
    order = [0, 3, 1, 2, 6, 4, 7, 5]
    bulk_c = b"".join(
        (comp(i, fill(i + 1)) if i % 2 else zero(i)) if k else comp(i, fill(i + 1), "pc.ram")
        for k, i in enumerate(order)
    )
    bulk_c += zero(0, "pc.bios") + comp(1, fill(0x42))
    r1 = comp(6, fill(0x66), "pc.ram") + comp(2, fill(0x22))  # pc.bios -> pc.ram: a wrap
    r2 = comp(2, fill(0x23), "pc.ram") + comp(7, fill(0x77)) + zero(1, "pc.bios")  # page 2 again: a wrap
    data = crafted(bulk_c, r1, r2)
    rep, rd = do_import(tmp_path, data)
    assert rep.record_order == "compress-threads"
    assert rep.pages_per_round == [n + 2, 2, 3]
    assert rep.records["compress"] == 6 + 2 + 2 and rep.records["zero"] == 4 + 1
    rounds = rounds_of(rd)
    assert rounds[1] == {(0, 2 * PS): fill(0x22), (0, 6 * PS): fill(0x66)}
    assert rounds[2] == {(0, 2 * PS): fill(0x23), (0, 7 * PS): fill(0x77), (1, PS): bytes(PS)}
    img = block_image(rd, "pc.ram").reshape(-1, PS)
    assert (img[3] == 4).all() and (img[2] == 0x23).all() and not img[4].any()


def test_commands_postcopy_advice_and_switchover(tmp_path):
    """POSTCOPY_ADVISE (postcopy-ram on): blocks whose page size differs from the host's carry a be64
    page size in MEM_SIZE; 10.0 sends SWITCHOVER_START before the RAM END section."""
    blocks = [("pc.ram", 8 * PS), ("huge", 1024 * PS)]
    pre = command(1) + command(2, be32(1)) + command(3, be64(PS | 0x200000) + be64(PS))
    extra = [b"", be64(0x200000)]
    first = bulk(blocks)
    data = header() + pre + sec(1, mem_size(blocks, extra) + EOS) + sec(2, first + EOS)
    data += command(11) + sec(3, page(1, fill(9), "huge") + EOS) + trailer()
    rep, rd = do_import(tmp_path, data)
    assert rep.postcopy_advised and rep.commands == {"OPEN_RETURN_PATH": 1, "PING": 1, "POSTCOPY_ADVISE": 1,
                                                     "SWITCHOVER_START": 1}
    assert [(b.name, b.used_length, b.page_size) for b in rd.meta.blocks] == [
        ("pc.ram", 8 * PS, PS), ("huge", 1024 * PS, 0x200000)]
    assert rep.pages_per_round == [1032, 1]


@pytest.mark.parametrize("declared", [True, False])
def test_x_ignore_shared_addresses_and_ignored_block(tmp_path, declared):
    """x-ignore-shared adds a be64 guest address per block; shared blocks are listed but never sent."""
    blocks = [("pc.ram", 8 * PS), ("shm", 4 * PS), ("pc.bios", 2 * PS)]
    extra = [be64(0), be64(0x100000000), be64(0xFFFC0000)]
    sent = [b for b in blocks if b[0] != "shm"]
    data = crafted(bulk(sent), page(3, fill(7), "pc.ram"), blocks=blocks, extra=extra,
                   caps=["x-ignore-shared"] if declared else None)
    rep, rd = do_import(tmp_path, data)
    assert rep.ignore_shared and rep.ignored_blocks == ["shm"]
    assert [b.name for b in rd.meta.blocks] == ["pc.ram", "pc.bios"]
    assert rep.pages_per_round == [10, 1]


def test_no_vmdesc_and_no_footers(tmp_path):
    body = mem_size(BLOCKS) + EOS
    data = header() + sec(1, body, footer=False) + sec(3, bulk() + EOS, footer=False)
    fails(tmp_path, data, "no VMDESCRIPTION trailer")
    rep, rd = do_import(tmp_path, data, require_vmdesc=False)
    assert rep.pages_per_round == [10] and not rep.vmdesc
    assert "--no-vmdesc" in rd.meta.provenance.command


def test_existing_output_untouched_on_error(tmp_path):
    src = tmp_path / "bad.mig"
    src.write_bytes(crafted(bulk())[:-3])
    out = tmp_path / "t.parquet"
    out.write_bytes(b"old")
    with pytest.raises(WireError):
        import_qemu_stream(src, out)
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mig", "t.parquet"]


# --- truncation ----------------------------------------------------------------------------------------
def _cuts(data: bytes) -> list[int]:
    recs = walk(data)
    by = {}
    for at, kind, n in recs:
        by.setdefault(kind, []).append((at, n))
    cuts = {0, 3, 4, 7, 8, 9, 12, 20, len(data) - 1, len(data) - 2, len(data) - 100}
    for kind, items in by.items():
        for at, n in items[:2] + items[-2:]:
            cuts.update({at, at + 1, at + 7, at + 8, at + max(1, n // 2), at + n - 1})
    end = by["after_ram"][0][0]
    cuts.update({end, end + 1, end + 30})
    cuts.update(range(0, len(data), len(data) // 23))
    return sorted(c for c in cuts if 0 <= c < len(data))


def test_truncated_real_stream_fails_cleanly(shared, tmp_path):
    data = (shared / "streams" / STREAMS[0]).read_bytes()
    cuts = _cuts(data)
    assert len(cuts) > 60
    for c in cuts:
        e = fails(tmp_path, data[:c], None, name="cut.mig")
        assert isinstance(e, (WireError, TraceError))
        if isinstance(e, WireError):
            assert e.offset is not None and e.offset <= c


def test_truncated_xbzrle_stream_fails_after_writing_rounds(shared, tmp_path):
    """Cuts in later passes: round 0 was already streamed into the temporary trace; it must go."""
    data = (shared / "streams" / STREAMS[1]).read_bytes()
    xb = [(at, n) for at, kind, n in walk(data) if kind == "xbzrle"]
    for at, n in (xb[0], xb[len(xb) // 2], xb[-1]):
        for c in (at + 4, at + 8 + 2, at + n // 2, at + n):
            fails(tmp_path, data[:c], "truncated", WireError, name="cut.mig")


# --- corruption ----------------------------------------------------------------------------------------
def _patch(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


def test_corrupt_flags_idstr_and_section(shared, tmp_path):
    data = (shared / "streams" / STREAMS[0]).read_bytes()
    recs = walk(data)
    named = next(at for at, kind, _ in recs if kind in ("zero", "page") and not data[at + 7] & 0x20)
    cont = next(at for at, kind, _ in recs if kind == "page" and data[at + 7] & 0x20)
    w = int.from_bytes(data[cont : cont + 8], "big")
    for bit, msg in ((0x400, "unknown combination of migration flags"), (0x01, "unknown combination"),
                     (0x80, "RDMA")):
        e = fails(tmp_path, _patch(data, cont, be64(w | bit)), msg, WireError)
        assert e.offset == cont
    name_at = named + 9  # first idstr byte
    e = fails(tmp_path, _patch(data, name_at, b"X"), "unknown RAM block", WireError)
    assert e.offset == named
    first_section = recs[0][0]
    fails(tmp_path, _patch(data, first_section + 6, b"rbm"), "section 'rbm'.*before the RAM END", WireError)
    footer = next(at for at, kind, _ in recs if kind == "footer")
    fails(tmp_path, _patch(data, footer + 1, be32(9)), "footer names section 9", WireError)
    fails(tmp_path, _patch(data, cont, be64((w & 0xFFF) | 0x7FFFF000)), "outside block", WireError)
    zero_at, _, zn = next(r for r in recs if r[1] == "zero")
    fails(tmp_path, _patch(data, zero_at + zn - 1, b"\x07"), "fill byte 0x07", WireError)


def test_corrupt_xbzrle_payload(shared, tmp_path):
    data = (shared / "streams" / STREAMS[1]).read_bytes()
    at, _, n = next(r for r in walk(data) if r[1] == "xbzrle" and data[r[0] + 7] & 0x20)
    p = at + 8  # encoding byte (CONTINUE record: no idstr)
    e = fails(tmp_path, _patch(data, p, b"\x02"), "encoding flag 0x02", DecodeError)
    assert e.offset == p
    fails(tmp_path, _patch(data, p + 1, be16(PS + 1)), "more than a page", DecodeError)
    # a zero-length nzrun inside the delta: rejected by the decoder, with the offset of the run
    enc_len = int.from_bytes(data[p + 1 : p + 3], "big")
    assert enc_len >= 4
    e = fails(tmp_path, _patch(data, p + 3, b"\x01\x00"), "XBZRLE", DecodeError)
    assert p + 3 <= e.offset < p + 3 + enc_len


def test_corrupt_zlib_payload(tmp_path):
    def stream(rec2: bytes) -> bytes:
        return crafted(bulk(), comp(0, fill(3), "pc.ram") + rec2)

    good = comp(4, fill(5))
    _, rd = do_import(tmp_path, stream(good))
    assert rounds_of(rd)[1] == {(0, 0): fill(3), (0, 4 * PS): fill(5)}
    data = stream(good)
    z_at = data.index(good) + 12
    fails(tmp_path, _patch(data, z_at + 2, b"\xff\xff"), "compressed page", DecodeError)
    fails(tmp_path, stream(rec(4 * PS, 0x100, None, be32(4111) + bytes(4111))), "compressBound", DecodeError)
    half = zlib.compress(bytes(PS // 2))
    fails(tmp_path, stream(rec(4 * PS, 0x100, None, be32(len(half)) + half)), "2048 bytes of output", DecodeError)
    two = zlib.compress(bytes(PS)) + b"\x00"
    fails(tmp_path, stream(rec(4 * PS, 0x100, None, be32(len(two)) + two)), "after the zlib stream", DecodeError)


# --- unsupported or malformed structure ----------------------------------------------------------------
@pytest.mark.parametrize(
    "data, match",
    [
        (header(version=2), "version 2"),
        (b"QEVX" + be32(3), "not a QEMU migration stream"),
        (crafted(bulk(), pre=command(3, be64(PS) + be64(PS)) + command(4)), "POSTCOPY_LISTEN.*postcopy"),
        (crafted(bulk(), pre=command(7, be32(0))), "PACKAGED"),
        (crafted(bulk(), pre=command(6, b"\x00" * 4)), "POSTCOPY_RAM_DISCARD"),
        (header() + sec(4, b"", idstr=b"ram") + trailer(), "FULL section"),
        (header() + sec(1, mem_size(BLOCKS) + EOS, version=3) + trailer(), "RAM section version 3"),
        (header() + sec(1, b"", sid=1, idstr=b"block") + trailer(), "section 'block'"),
        (header() + sec(1, mem_size(BLOCKS) + EOS) + sec(2, EOS, sid=5) + trailer(), "id 5, which is not RAM"),
        (header() + sec(1, mem_size(BLOCKS) + EOS) + b"\x00" + trailer(), "EOF before the RAM END"),
        (crafted(bulk(), caps=["mapped-ram"]), "mapped-ram"),
        (crafted(INCOMPLETE + zero(3, "pc.ram")), "first pass .* incomplete"),  # a repeat before it is whole
        (crafted(INCOMPLETE), "first pass .* incomplete"),  # the RAM data ends without pc.bios page 1
        (crafted(zero(0, "nope")), "unknown RAM block 'nope'"),
        (crafted(zero(0)), "CONTINUE flag with no previous block"),
        (header() + sec(1, zero(0, "pc.ram") + EOS) + trailer(), "before the MEM_SIZE"),
        (crafted(bulk(), pre=command(3, be64(PS))), "POSTCOPY_ADVISE with 8 bytes"),
        (header() + sec(1, mem_size([("pc.ram", 8 * PS)]) + EOS).replace(b"pc.ram", b"pc\x01ram"),
         "MEM_SIZE block list does not parse"),
        (header() + sec(1, be64(0x4004) + b"\x06pc.ram" + be64(8 * PS) + EOS) + trailer(), "used_length|MEM_SIZE"),
    ],
)
def test_unsupported_or_malformed(tmp_path, data, match):
    fails(tmp_path, data, match)


def test_second_pass_with_a_block_missing_from_the_first_is_refused(tmp_path):
    blocks = [("pc.ram", 8 * PS), ("shm", 4 * PS)]
    data = crafted(bulk(blocks[:1]), zero(0, "pc.ram") + zero(1, "shm"), blocks=blocks, extra=[be64(0), be64(1 << 32)],
                   caps=["x-ignore-shared"])
    fails(tmp_path, data, "did not send", TraceError)


# --- rounds that end inside a run of records ----------------------------------------------------------
def test_run_repeating_pages_of_the_previous_round(tmp_path):
    """A run of CONTINUE records (loaded in one vectorised step) that sends pages of the round before
    again: the new round starts at the run, and the old round keeps the contents it had."""
    r1 = page(2, fill(0x12), "pc.ram") + page(3, fill(0x13)) + page(4, fill(0x14))
    r2 = page(3, fill(0x23)) + page(4, fill(0x24)) + page(5, fill(0x25))  # CONTINUE: one block, one run
    rep, rd = do_import(tmp_path, crafted(bulk(), r1 + r2))
    assert rep.pages_per_round == [10, 3, 3]
    rounds = rounds_of(rd)
    assert rounds[1] == {(0, i * PS): fill(0x10 + i) for i in (2, 3, 4)}
    assert rounds[2] == {(0, i * PS): fill(0x20 + i) for i in (3, 4, 5)}


def test_compress_threads_repeat_inside_a_zero_run(tmp_path):
    """Compress-thread order: a page sent again inside a run of ZERO records ends the round there; the
    pages of the run before it belong to the old round, with the contents they had then."""
    order = [0, 3, 1, 2, 6, 4, 7, 5]
    bulk_c = b"".join(comp(i, fill(i + 1), "pc.ram" if k == 0 else None) for k, i in enumerate(order))
    bulk_c += zero(0, "pc.bios") + comp(1, fill(0x42))
    r1 = comp(5, fill(0x55), "pc.ram") + zero(2, "pc.ram") + zero(3) + zero(5) + zero(6)
    rep, rd = do_import(tmp_path, crafted(bulk_c, r1))
    assert rep.record_order == "compress-threads" and rep.pages_per_round == [10, 3, 2]
    rounds = rounds_of(rd)
    assert rounds[1] == {(0, 5 * PS): fill(0x55), (0, 2 * PS): bytes(PS), (0, 3 * PS): bytes(PS)}
    assert rounds[2] == {(0, 5 * PS): bytes(PS), (0, 6 * PS): bytes(PS)}
