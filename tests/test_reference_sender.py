"""The chain's whole stream, byte for byte, against the independent page-by-page model of QEMU
(``qemu_sender_reference.py``), on generated traces; counters from the model, never from the code.

The traces are built to hit what recorded traces rarely hold: dirty pages that did not change (XBZRLE
skips them: nothing is written), whole blocks of such pages (a segment that writes nothing must not
move ``last_sent_block``), block switches, rounds with no dirty page at all, pages whose only non-zero
byte is the first or the last one (or sits at an 8-byte word boundary), small caches that collide,
page sizes other than 4 KiB and batches that split blocks.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import event, example, given, settings
from hypothesis.control import currently_in_test_context
from hypothesis import strategies as st

import qemu_sender_reference as ref
from hyp import examples
from pagecodec.chain.config import parse_spec
from pagecodec.chain.sender import Sender
from pagecodec.harness.replay import rounds_of
from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceReader, TraceWriter
from pagecodec.wire.writer import MemorySink

NAMES = ["pc.ram", "b", "/rom@etc/acpi/tables", "pc.bios"]
#: How a page's new content is made: kinds of content a page may get in round 0 or when rewritten.
CONTENT = ["zero", "first", "last", "word", "sparse", "random", "fill"]
#: What happens to a dirty page in a later round.
EDITS = ["same", "zero", "first", "last", "flip-first", "flip-last", "word", "sparse-edit", "random", "fill"]


def content(kind: str, ps: int, rnd: random.Random) -> bytes:
    """A fresh page of ``kind``: all zero, non-zero only in its first or last byte, only at one byte
    next to an 8-byte word boundary, a few bytes, random, or one byte value repeated."""
    page = bytearray(ps)
    if kind == "first":
        page[0] = rnd.randrange(1, 256)
    elif kind == "last":
        page[-1] = rnd.randrange(1, 256)
    elif kind == "word":
        w = rnd.randrange(ps // 8) * 8
        page[min(ps - 1, max(0, w + rnd.choice((-1, 0, 7))))] = rnd.randrange(1, 256)
    elif kind == "sparse":
        for _ in range(rnd.randrange(1, 6)):
            page[rnd.randrange(ps)] = rnd.randrange(1, 256)
    elif kind == "random":
        page[:] = rnd.randbytes(ps)
    elif kind == "fill":
        page[:] = bytes([rnd.randrange(1, 256)]) * ps
    return bytes(page)


def edit(kind: str, old: bytes, rnd: random.Random) -> bytes:
    """The page after a guest write of ``kind`` (``same``: dirtied, rewritten with what it held)."""
    ps = len(old)
    page = bytearray(old)
    if kind == "same":
        return old
    if kind == "flip-first":
        page[0] ^= rnd.randrange(1, 256)
    elif kind == "flip-last":
        page[-1] ^= rnd.randrange(1, 256)
    elif kind == "sparse-edit":
        for _ in range(rnd.randrange(1, 12)):
            page[rnd.randrange(ps)] ^= rnd.randrange(1, 256)
    else:
        return content(kind, ps, rnd)
    return bytes(page)


@st.composite
def traces(draw, page_sizes=(4096, 4096, 1024, 2048)) -> ref.RefTrace:
    """Small traces (1–3 blocks of 1–5 pages, 1–6 rounds) whose every structural choice is drawn."""
    ps = draw(st.sampled_from(page_sizes))
    nblocks = draw(st.integers(1, 3))
    names = draw(st.permutations(NAMES))[:nblocks]
    npages = [draw(st.integers(1, 5)) for _ in range(nblocks)]
    rnd = random.Random(draw(st.integers(0, 2**32 - 1)))
    ram = [[content(draw(st.sampled_from(CONTENT)), ps, rnd) for _ in range(n)] for n in npages]
    rounds = [[(b, i * ps, ram[b][i]) for b in range(nblocks) for i in range(npages[b])]]
    for _r in range(1, draw(st.integers(1, 6))):
        pages = []
        if draw(st.sampled_from(["empty", "dirty", "dirty", "dirty"])) == "dirty":
            for b in range(nblocks):
                mode = draw(st.sampled_from(["clean", "unchanged", "some", "all"]))
                for i in range(npages[b]):
                    if mode == "clean" or (mode == "some" and not draw(st.booleans())):
                        continue
                    kind = "same" if mode == "unchanged" else draw(st.sampled_from(EDITS))
                    ram[b][i] = edit(kind, ram[b][i], rnd)
                    pages.append((b, i * ps, ram[b][i]))
        rounds.append(pages)
    return ref.RefTrace(ps, [(names[b], npages[b] * ps) for b in range(nblocks)], rounds)


def write(path, t: ref.RefTrace) -> None:
    """The trace file (rows in QEMU's order; an empty round declared as such)."""
    meta = TraceMeta(t.page_size, tuple(RAMBlockInfo(n, s, 4096) for n, s in t.blocks),
                     Provenance("test", "tests/test_reference_sender.py", "2026-01-01T00:00:00"))
    with TraceWriter(path, meta) as w:
        for r, pages in enumerate(t.rounds):
            pages = sorted(pages, key=lambda p: (p[0], p[1]))
            if not pages:
                w.write(r, 0, np.zeros(0, np.int64), np.zeros((0, t.page_size), np.uint8))
                continue
            w.write(r, np.array([p[0] for p in pages]), np.array([p[1] for p in pages], np.int64),
                    np.frombuffer(b"".join(p[2] for p in pages), np.uint8).reshape(-1, t.page_size))


def chain(path, spec: str, pm, max_pages: int) -> tuple[bytes, dict]:
    """The chain's stream and results for the trace at ``path``, batches of ``max_pages`` pages."""
    reader = TraceReader(path)
    sink = MemorySink()
    stats = Sender(reader.meta, parse_spec(spec, pm.presets), pm, sink).run(rounds_of(reader, max_pages=max_pages),
                                                               reader.num_rounds)
    return sink.getvalue(), stats.to_json()


def first_difference(a: bytes, b: bytes) -> str:
    n = min(len(a), len(b))
    at = next((i for i in range(n) if a[i] != b[i]), n)
    return (f"streams differ at byte {at} (chain {len(a)} bytes, reference {len(b)}): "
            f"chain {a[max(0, at - 16):at + 16].hex()} reference {b[max(0, at - 16):at + 16].hex()}")


def assert_same(got: bytes, res: dict, want: ref.RefResult) -> None:
    """Bytes, then every counter the reference computed (exact; rates to float precision)."""
    assert got == want.stream, first_difference(got, want.stream)
    for key, value in want.ram.items():
        assert res["ram"][key] == value, f"ram.{key}: chain {res['ram'][key]}, reference {value}"
    assert {k: v for k, v in res["records"].items() if v} == want.records
    assert sum(r["skipped"] for r in res["rounds"]) == want.skipped
    assert [{k: r[k] for k in want.rounds[0]} for r in res["rounds"]] == want.rounds
    if want.xbzrle is not None:
        got_x = res["xbzrle-cache"]
        for key, value in want.xbzrle.items():
            assert got_x[key] == pytest.approx(value, rel=1e-12), f"xbzrle-cache.{key}: chain {got_x[key]}, reference {value}"


def _run(tmp_path, pm, t: ref.RefTrace, spec: str, max_pages: int, **kw) -> None:
    path = tmp_path / "t.parquet"
    path.unlink(missing_ok=True)
    write(path, t)
    got, res = chain(path, spec, pm, max_pages)
    want = ref.send(t, **kw)
    if currently_in_test_context():
        _events(t, want)
    assert_same(got, res, want)


def _events(t: ref.RefTrace, want: ref.RefResult) -> None:
    """What the example exercised (``--hypothesis-show-statistics`` lists them)."""
    if any(not pages for pages in t.rounds[1:]):
        event("empty round")
    if len({b for pages in t.rounds for b, _o, _p in pages}) > 1:
        event("block switch")
    edge = [p for pages in t.rounds for _b, _o, p in pages if any(p) and not any(p[1:-1])]
    if edge:
        event("page non-zero only at its first/last byte")
    if want.skipped:
        event("unchanged dirty page skipped")
    if want.xbzrle:
        for key in ("overflow", "cache-miss"):
            if want.xbzrle[key]:
                event(f"xbzrle {key}")
        if want.records.get("xbzrle"):
            event("xbzrle record")


# --- fixed cases: the two bugs issue 15 named, each on the smallest trace that shows it -----------------
def _two_blocks_second_unchanged(ps: int = 4096) -> ref.RefTrace:
    """Round 1 fills XBZRLE's cache (misses); round 2 changes a page of block 0 and re-dirties block 1
    unchanged (XBZRLE skips it: that segment writes nothing); round 3 changes block 0 again, whose
    record must CONTINUE block 0 (QEMU names a block only in a header it writes)."""
    a0, b0 = bytes([1]) * ps, bytes([2]) * ps
    a2 = bytes([9]) + a0[1:]
    a3 = a2[:-1] + bytes([7])
    return ref.RefTrace(ps, [("pc.ram", ps), ("pc.bios", ps)],
                        [[(0, 0, a0), (1, 0, b0)], [(0, 0, a0), (1, 0, b0)], [(0, 0, a2), (1, 0, b0)], [(0, 0, a3)]])


def _edge_pages(ps: int = 4096) -> ref.RefTrace:
    """Pages non-zero only in their last byte, their first byte, or next to a word boundary."""
    last = bytes(ps - 1) + b"\x01"
    first = b"\x80" + bytes(ps - 1)
    mid = bytes(ps // 2) + b"\x01" + bytes(ps // 2 - 1)
    return ref.RefTrace(ps, [("pc.ram", 4 * ps)], [[(0, 0, last), (0, ps, first), (0, 2 * ps, mid), (0, 3 * ps, bytes(ps))],
                                                   [(0, 0, bytes(ps)), (0, 3 * ps, last)]])


@pytest.mark.parametrize("spec,kw", [("none", {}), ("xbzrle", {"xbzrle": True})])
def test_segment_that_writes_nothing_keeps_the_last_sent_block(tmp_path, pm, spec, kw):
    _run(tmp_path, pm, _two_blocks_second_unchanged(), spec, 4096, **kw)


@pytest.mark.parametrize("ps", [1024, 4096, 8192])  # XBZRLE takes pages up to 8 KiB
@pytest.mark.parametrize("spec,kw", [("none", {}), ("xbzrle", {"xbzrle": True})])
def test_pages_nonzero_only_at_an_edge_are_sent_as_pages(tmp_path, pm, spec, kw, ps):
    _run(tmp_path, pm, _edge_pages(ps), spec, 4096, **kw)


def test_the_reference_itself_sees_both_cases():
    """The model is not vacuous: the unchanged block is skipped and the later record continues block 0;
    the edge pages are PAGE records, only the truly zero page a ZERO record."""
    r = ref.send(_two_blocks_second_unchanged(), xbzrle=True)
    assert r.skipped == 1 and r.records == {"page": 4, "xbzrle": 2}
    assert r.stream.count(b"pc.ram") == 4  # MEM_SIZE list, rounds 0, 1 and 2; round 3 continues it
    e = ref.send(_edge_pages())
    assert e.records == {"page": 4, "zero": 2} and e.ram["duplicate"] == 2


# --- generated traces -----------------------------------------------------------------------------------
@settings(max_examples=examples(100), deadline=None)
@given(t=traces(), max_pages=st.sampled_from([1, 3, 4096]))
@example(t=_two_blocks_second_unchanged(), max_pages=4096)
@example(t=_edge_pages(), max_pages=1)
def test_none_equals_the_reference(tmp_path_factory, pm, t, max_pages):
    _run(tmp_path_factory.mktemp("none"), pm, t, "none", max_pages)


CACHE_PAGES = [1, 2, 4, 128, 16384]


@settings(max_examples=examples(200), deadline=None)
@given(t=traces(), max_pages=st.sampled_from([1, 3, 4096]), cache_pages=st.sampled_from(CACHE_PAGES),
       qemu41=st.booleans())
@example(t=_two_blocks_second_unchanged(), max_pages=4096, cache_pages=16384, qemu41=False)
@example(t=_edge_pages(), max_pages=4096, cache_pages=1, qemu41=False)
def test_xbzrle_equals_the_reference(tmp_path_factory, pm, t, max_pages, cache_pages, qemu41):
    size = cache_pages * t.page_size
    spec = f"xbzrle,xbzrle-cache-size={size}" + (",qemu-version=4.1" if qemu41 else "")
    _run(tmp_path_factory.mktemp("xbzrle"), pm, t, spec, max_pages, xbzrle=True, cache_size=size, qemu41=qemu41)


@pytest.mark.parametrize("ps,spec,match", [(512, "none", "at least 1024"), (8, "xbzrle", "at least 1024"),
                                           (1024, "xor-zstd", "at least 2048")])
def test_page_sizes_whose_offsets_overlap_the_flags_are_refused(tmp_path, pm, ps, spec, match):
    """Flags share the be64 with the page offset: below 1 KiB (QEMU's smallest target page; 2 KiB for
    pagecodec's extension flag 0x400) a stream could not be parsed, so none is written."""
    from pagecodec.errors import ConfigError

    path = tmp_path / "t.parquet"
    write(path, ref.RefTrace(ps, [("pc.ram", 2 * ps)], [[(0, 0, bytes(ps)), (0, ps, bytes([1]) * ps)]]))
    with pytest.raises(ConfigError, match=match):
        chain(path, spec, pm, 4096)
