"""Every zero-page detector, with a single non-zero byte at every position class, at every page size.

The detectors: the zero codec's compiled scan (``codecs/zero.py``: ``zero_page_mask``, which the zero
slot, the compress threads and 10.2's multifd channels all call, and the slot that claims pages with
it), its destination side (``fill_pages`` and the ZERO decoder skip a memset only on a page already
zero: a missed byte there leaves stale data), ``trace/info.py``'s mask, and the fillpage example
plugin (uniform pages). Position classes: the first and the last byte, both bytes of every 8-byte word
boundary (``8k - 1`` and ``8k``), the middle word. Page sizes: every power of two the trace format
accepts from its minimum (8 bytes) to QEMU's largest target page (64 KiB, target-page-bits 16).

Whole migrations check the same pages end to end (``verify``: a page sent as ZERO that was not zero
arrives different) for each config whose chain has a detector.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest

from pagecodec.chain.config import parse_spec
from pagecodec.codecs.base import Segment, Stage
from pagecodec.codecs.zero import ZeroPageDecoder, ZeroPageEncoder, fill_pages, zero_page_mask
from pagecodec.harness.replay import verify
from pagecodec.plugins import PluginManager
from pagecodec.trace import info
from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceReader, TraceWriter
from pagecodec.wire.reader import StreamReader

ROOT = Path(__file__).resolve().parents[1]
#: 8 B … 64 KiB: the trace format's smallest page, up to QEMU's largest target page.
PAGE_SIZES = [8 << k for k in range(14)]
#: Pages per batch handed to a detector (bounds the memory a 64 KiB page size takes: 16 MiB).
CHUNK = 256


def positions(ps: int) -> np.ndarray:
    """Every position class of a ``ps``-byte page: first, last, both sides of each word boundary, middle."""
    b = np.arange(8, ps, 8)
    return np.unique(np.concatenate(([0, ps - 1, ps // 2], b - 1, b)))


def edge_pages(ps: int, fill: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(positions, pages): row i is ``fill`` everywhere but at positions[i], which differs from it."""
    pos = positions(ps)
    for s in range(0, len(pos), CHUNK):
        p = pos[s : s + CHUNK]
        pages = np.full((len(p), ps), fill, np.uint8)
        pages[np.arange(len(p)), p] = fill ^ 0x80
        yield p, pages


def _no_row_detected(detect: Callable[[np.ndarray], np.ndarray], ps: int, fill: int = 0) -> None:
    for p, pages in edge_pages(ps, fill):
        got = np.asarray(detect(pages))
        assert got.shape == (len(p),)
        hit = p[got]
        assert not hit.size, f"page size {ps}: a page whose only differing byte is at {hit[:8].tolist()} was taken for " \
                             f"{'a uniform' if fill else 'a zero'} page"


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_zero_page_mask(ps):
    _no_row_detected(zero_page_mask, ps)
    assert zero_page_mask(np.zeros((3, ps), np.uint8)).all()


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_zero_page_mask_on_rows_of_a_larger_buffer(ps):
    """The slot gets views: rows one word further apart than a page (a slice of a wider array)."""
    def detect(pages):
        wide = np.zeros((len(pages), ps + 8), np.uint8)
        wide[:, :ps] = pages
        return zero_page_mask(wide[:, :ps])

    _no_row_detected(detect, ps)


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_trace_info_mask(ps):
    _no_row_detected(info.zero_page_mask, ps)
    assert info.zero_page_mask(np.zeros((2, ps), np.uint8)).all()


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_zero_slot_claims_only_zero_pages(ps):
    """The slot itself (not only its kernel): a segment of edge pages around true zero pages."""
    enc = ZeroPageEncoder()
    for p, pages in edge_pages(ps):
        both = np.concatenate((pages, np.zeros((2, ps), np.uint8)))
        seg = Segment(0, 0, np.arange(len(both), dtype=np.int64) * ps, both)
        enc.encode(seg, Stage(0, 1, True, False))
        claimed = np.flatnonzero(seg.claimed_by >= 0)
        assert claimed.tolist() == [len(p), len(p) + 1], f"page size {ps}: claimed {claimed[:8].tolist()}"
        assert seg.meta["zero"].tolist() == [False] * len(p) + [True, True]


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_destination_clears_every_page_a_zero_record_names(ps):
    """ram_handle_compressed skips the memset of a page that is already zero: its check must see any
    byte, or a ZERO record over a written page leaves the old data (batched and one by one)."""
    dec = ZeroPageDecoder()
    for p, pages in edge_pages(ps):
        fill_pages(pages, np.arange(len(p)), np.zeros(len(p), np.uint8))
        assert not pages.any(), f"page size {ps}: bytes left at {p[pages.any(axis=1)][:8].tolist()}"
    for p, pages in edge_pages(ps):
        for row in pages[:: max(1, len(p) // 16)]:
            dec.load(StreamReader(b"\x00", "s"), row)
            assert not row.any()


@pytest.fixture(scope="module")
def fillpage():
    """The example plugin from its directory (it is not installed into the test environment)."""
    path = str(ROOT / "plugins" / "pagecodec-fillpage")
    sys.path.insert(0, path)
    try:
        import pagecodec_fillpage

        yield pagecodec_fillpage
    finally:
        sys.path.remove(path)
        sys.modules.pop("pagecodec_fillpage", None)


@pytest.mark.parametrize("ps", PAGE_SIZES)
@pytest.mark.parametrize("fill", [0, 0x5A])
def test_fillpage_uniform_pages(fillpage, ps, fill):
    _no_row_detected(fillpage.uniform_pages, ps, fill)
    assert fillpage.uniform_pages(np.full((2, ps), fill, np.uint8)).all()


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_fillpage_slot_tells_later_slots_only_true_zero_pages(fillpage, ps):
    enc = fillpage.FillPageEncoder()
    for fill in (0, 0x5A):
        for p, pages in edge_pages(ps, fill):
            seg = Segment(0, 0, np.arange(len(p), dtype=np.int64) * ps, pages)
            enc.encode(seg, Stage(0, 1, True, False))
            assert not (seg.claimed_by >= 0).any() and not seg.meta["zero"].any()


# --- whole migrations: every config whose chain detects zero pages --------------------------------------
#: The sender's page sizes: QEMU's smallest target page (1 KiB) to its largest (64 KiB).
CHAIN_PAGE_SIZES = [1024, 4096, 65536]


def chain_positions(ps: int) -> np.ndarray:
    """Fewer classes for whole migrations: first, last, middle, the first and last word boundaries and
    both sides of every 1 KiB block (where the compiled scan's blocks meet)."""
    cand = {0, ps - 1, ps // 2, 7, 8, ps - 9, ps - 8}
    for k in range(1024, ps, 1024):
        cand |= {k - 1, k}
    return np.array(sorted(c for c in cand if 0 <= c < ps))


def edge_trace(path: Path, ps: int) -> int:
    """Round 0: an edge page per position, each followed by a zero page; round 1: the edge pages go
    zero and the zero pages get the edge bytes (pages turn zero and back). Returns the page count."""
    pos = chain_positions(ps)
    n = 2 * len(pos)
    pages = np.zeros((n, ps), np.uint8)
    pages[np.arange(0, n, 2), pos] = 0x80
    meta = TraceMeta(ps, (RAMBlockInfo("pc.ram", n * ps, 4096), RAMBlockInfo("pc.bios", 2 * ps, 4096)),
                     Provenance("test", "tests/test_zero_edges.py", "2026-01-01T00:00:00"))
    with TraceWriter(path, meta) as w:
        w.write(0, 0, np.arange(n, dtype=np.int64) * ps, pages)
        last = np.zeros((2, ps), np.uint8)
        last[0, ps - 1] = 1
        w.write(0, 1, np.arange(2, dtype=np.int64) * ps, last)
        w.write(1, 0, np.arange(n, dtype=np.int64) * ps, np.roll(pages, 1, axis=0))
        w.write(1, 1, np.arange(2, dtype=np.int64) * ps, last[::-1].copy())
    return n


CONFIGS = ["none", "xbzrle", "compress", "compress,compress-wait-thread=off", "multifd",
           "multifd,qemu-version=10.2", "multifd,qemu-version=10.2,zero-page-detection=legacy", "zero-codec=fillpage"]


@pytest.mark.parametrize("ps", CHAIN_PAGE_SIZES)
@pytest.mark.parametrize("spec", CONFIGS)
def test_migration_with_edge_pages_arrives_intact(tmp_path, fillpage, spec, ps):
    if spec == "xbzrle" and ps > 8192:
        ps = 8192  # pagecodec's XBZRLE takes pages up to 8 KiB (its ULEB runs are at most 2 bytes)
    path = tmp_path / "edges.parquet"
    n = edge_trace(path, ps)
    pm = PluginManager(["pagecodec_fillpage"], entry_points=False)
    res = verify(TraceReader(path), parse_spec(spec, pm.presets), pm)
    assert res.ok, res.mismatch
    ram = res.metrics["ram"]
    # each round has exactly n/2 + 1 zero pages; nothing else may be counted as one (compress threads
    # count a flushed thread's empty buffer as a duplicate page too: QEMU's quirk, bounded by threads)
    if "compress" not in spec:
        assert ram["duplicate"] == 2 * (n // 2 + 1), (spec, ps, ram)


# --- the zero codec's contracts beyond the scan (mutation testing found these unpinned) -----------------
def test_fill_pages_contract():
    """fill_pages: an empty index does nothing; an index outside the pages is an IndexError before
    anything is written; read-only pages are refused like numpy refuses them; zero-width pages work."""
    pages = np.arange(4 * 16, dtype=np.uint8).reshape(4, 16)
    before = pages.copy()
    fill_pages(pages, np.zeros(0, np.int64), np.zeros(0, np.uint8))
    assert np.array_equal(pages, before)
    for bad in ([0, 4], [-1, 2]):
        with pytest.raises(IndexError):
            fill_pages(pages, np.array(bad), np.zeros(2, np.uint8))
        assert np.array_equal(pages, before)
    with pytest.raises(ValueError, match="fill bytes"):
        fill_pages(pages, np.array([0, 1]), np.zeros(3, np.uint8))
    ro = before.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fill_pages(ro, np.array([1]), np.zeros(1, np.uint8))
    fill_pages(np.zeros((3, 0), np.uint8), np.array([0, 2]), np.array([0, 5], np.uint8))
    fill_pages(pages, np.array([3, 0]), np.array([7, 0], np.uint8))
    assert (pages[3] == 7).all() and not pages[0].any() and np.array_equal(pages[1:3], before[1:3])


def test_fill_kernel_reports_the_first_row_outside():
    """The compiled fill checks every index against the rows it was given and stops at the first
    outside one (its caller checks first; the kernel must not write past the buffer if it did not)."""
    from pagecodec.codecs.zero import _compiled_fill

    pages = np.ones((3, 16), np.uint8)
    flat = pages.reshape(-1).view(np.uint64)
    assert _compiled_fill()(flat, 2, 2, np.array([0, 3, 1], np.int64), np.zeros(3, np.uint8), 3) == 1
    assert _compiled_fill()(flat, 2, 2, np.array([2, -1], np.int64), np.zeros(2, np.uint8), 3) == 1
    assert _compiled_fill()(flat, 2, 2, np.array([2, 1], np.int64), np.zeros(2, np.uint8), 3) == -1
    assert not pages[0].any() and not pages[1].any() and not pages[2].any()


_BOUNDS_PROBE = r"""
import numpy as np
from pagecodec.codecs.zero import fill_pages, zero_page_mask
for ps in (8, 16, 64, 1024, 1032, 4096):
    pos = np.unique(np.r_[0, ps - 1, ps // 2, np.arange(8, ps, 8) - 1, np.arange(8, ps, 8)])
    pages = np.zeros((len(pos) + 1, ps), np.uint8)
    pages[np.arange(len(pos)), pos] = 1
    assert not zero_page_mask(pages)[:-1].any() and zero_page_mask(pages)[-1]
    wide = np.zeros((len(pages), ps + 8), np.uint8); wide[:, :ps] = pages
    assert (zero_page_mask(wide[:, :ps]) == zero_page_mask(pages)).all()
    fill_pages(pages, np.arange(len(pages)), np.zeros(len(pages), np.uint8))
    assert not pages.any()
fill_pages(np.zeros((3, 0), np.uint8), np.array([0, 2]), np.zeros(2, np.uint8))  # no row to read
print("in bounds")
"""


def test_zero_kernels_stay_in_bounds(tmp_path):
    """The zero kernels are compiled without bounds checks (speed); compiled with them (numba's
    NUMBA_BOUNDSCHECK=1, a fresh cache) every index they use on edge pages must be inside the page."""
    import subprocess

    env = dict(os.environ, NUMBA_BOUNDSCHECK="1", NUMBA_CACHE_DIR=str(tmp_path / "numba"))
    out = subprocess.run([sys.executable, "-c", _BOUNDS_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "in bounds" in out.stdout, out.stderr[-2000:]


def test_zero_runs_take_the_batched_path(pm):
    """A run of CONTINUE ZERO records is applied by one load_batch (the receiver's fixed-payload path
    needs the decoder's payload size right), not record by record."""
    from pagecodec.chain.receiver import Receiver
    from pagecodec.wire.records import mem_size_record, zero_record

    calls = {"load": 0, "batch": 0}

    class Counting(ZeroPageDecoder):
        def load(self, r, page):
            calls["load"] += 1
            super().load(r, page)

        def load_batch(self, payloads, pages, index):
            calls["batch"] += len(index)
            super().load_batch(payloads, pages, index)

    stream = bytearray(b"QEVM\x00\x00\x00\x03\x07\x00\x00\x00\x0dpc-i440fx-7.2")
    stream += b"\x01\x00\x00\x00\x02\x03ram\x00\x00\x00\x00\x00\x00\x00\x04"
    stream += mem_size_record([("pc.ram", 64 * 4096)]) + (0x10).to_bytes(8, "big") + b"\x7e\x00\x00\x00\x02"
    stream += b"\x03\x00\x00\x00\x02" + zero_record(0, "pc.ram")
    for i in range(1, 64):
        stream += zero_record(i * 4096, None)
    stream += (0x10).to_bytes(8, "big") + b"\x7e\x00\x00\x00\x02"
    rc = Receiver(4096, pm)
    rc.decoders[0x02] = Counting()
    r = StreamReader(bytes(stream), "s")
    rc.load_header(r)
    rc.load_section(r)
    rc.load_section(r)
    assert calls["load"] + calls["batch"] == 64 and calls["batch"] >= 62, calls
