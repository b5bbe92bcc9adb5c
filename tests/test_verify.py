"""verify: every corpus trace and generated traces round-trip through sender and receiver."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from conftest import ROOT
from pagecodec.chain.config import parse_spec
from pagecodec.harness.replay import verify
from pagecodec.trace.format import TraceReader
from pagecodec.sources.synth import PATTERNS, synthesize

CORPORA = ROOT / "corpora"


def corpus_files():
    return [CORPORA / e["file"] for e in json.loads((CORPORA / "MANIFEST.json").read_text())]


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_verify_corpus(path, pm):
    res = verify(TraceReader(path), parse_spec("none"), pm)
    assert res.ok, res.mismatch
    assert res.pages == TraceReader(path).num_pages


def test_corpus_has_real_traces_with_rounds():
    """Issue #4: at least four real traces (QEMU guests and a live process), each ≤ 16 MiB on disk with
    ≥ 3 rounds, as ``pagecodec trace info`` shows them."""
    import subprocess
    import sys

    entries = json.loads((CORPORA / "MANIFEST.json").read_text())
    real = [e for e in entries if e["source"] != "synthetic"]
    assert len(real) >= 4 and {"qemu-stream", "process"} <= {e["source"] for e in real}
    for e in entries:
        path = CORPORA / e["file"]
        assert path.stat().st_size <= 16 << 20, e["file"]
        assert TraceReader(path).num_rounds >= 3, e["file"]
    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "trace", "info", str(CORPORA / real[0]["file"])],
                       capture_output=True, text=True)
    # (the header's label column is as wide as its longest label: match the row, not its padding)
    assert p.returncode == 0 and re.search(rf"^rounds +{real[0]['rounds']}$", p.stdout, re.M), p.stdout


patterns = st.dictionaries(st.sampled_from(PATTERNS), st.floats(0.1, 5), min_size=1)


@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(
    pages=st.integers(16, 300),
    extra_block=st.booleans(),
    rounds=st.integers(1, 6),
    dirty=st.floats(0.01, 1.0),
    zero=st.floats(0, 1),
    unchanged=st.floats(0, 0.5),
    pats=patterns,
    seed=st.integers(0, 2**31),
)
def test_verify_generated(tmp_path_factory, pm, pages, extra_block, rounds, dirty, zero, unchanged, pats, seed):
    path = tmp_path_factory.mktemp("gen") / "g.trace.parquet"
    blocks = [("pc.ram", pages * 4096)] + ([("pc.bios", 8 * 4096)] if extra_block else [])
    synthesize(path, ram_size=0, blocks=blocks, rounds=rounds, dirty_fraction=dirty, patterns=pats,
               zero_fraction=zero, unchanged_fraction=unchanged, seed=seed, row_group_pages=64)
    res = verify(TraceReader(path), parse_spec("none"), pm)
    assert res.ok, res.mismatch


@pytest.mark.slow
def test_verify_large_generated(tmp_path, pm):
    """A bigger guest over 8 rounds: 64 MiB by default (the bounded form CI runs); set
    PAGECODEC_SLOW_MIB=1024 for the full check."""
    mib = int(os.environ.get("PAGECODEC_SLOW_MIB", 64))
    path = tmp_path / "big.trace.parquet"
    synthesize(path, ram_size=mib << 20, rounds=8, dirty_fraction=0.1, patterns="sparse=4,rewrite=1,toggle=1,text=2,random=1",
               zero_fraction=0.4, seed=11)
    res = verify(TraceReader(path), parse_spec("none"), pm)
    assert res.ok, res.mismatch


def _synth(path, rounds=4):
    synthesize(path, ram_size=0, blocks=[("pc.ram", 64 * 4096), ("pc.bios", 8 * 4096)], rounds=rounds,
               dirty_fraction=0.2, patterns="sparse=1,random=1", zero_fraction=0.3, unchanged_fraction=0.1,
               seed=5, row_group_pages=64)


def test_verify_compares_the_pages_a_round_touched(tmp_path, pm):
    """The per-round compare covers the pages the stream wrote, not only those the trace dirtied: round
    1 dirties page 0 without changing it, and the stream is tampered so that its record lands on page 5
    instead. Page 0 is still right; page 5, which the trace did not dirty, is caught in round 1."""
    from conftest import write_trace

    ps = 4096
    pages = np.arange(1, 9, dtype=np.uint8).repeat(ps).reshape(8, ps)
    path = tmp_path / "t.trace.parquet"
    write_trace(path, [("pc.ram", 8 * ps)], [
        {0: (np.arange(8) * ps, pages)},
        {0: (np.array([0]), pages[:1])},          # dirtied, same content
        {0: (np.array([3 * ps]), pages[3:4] ^ 1)},
    ])
    cont_page = (0x08 | 0x20).to_bytes(8, "big")  # PAGE|CONTINUE at offset 0

    def tamper(r, chunk):
        if r != 1:
            return chunk
        at = chunk.index(cont_page)
        return chunk[:at] + (5 * ps | 0x28).to_bytes(8, "big") + chunk[at + 8 :]

    res = verify(TraceReader(path), parse_spec("none"), pm, tamper=tamper)
    assert not res.ok and res.mismatch.round == 1 and res.mismatch.offset == 5 * ps


def test_verify_catches_a_stray_write_at_the_final_compare(tmp_path, pm, monkeypatch):
    """A decoder that writes outside the pages its records name is not seen by the per-round compare
    (that page is in neither the trace's nor the stream's set for the round) but by the comparison of
    all of RAM after the last round."""
    from conftest import write_trace
    from pagecodec.codecs import raw

    ps = 4096
    pages = np.arange(1, 9, dtype=np.uint8).repeat(ps).reshape(8, ps)
    path = tmp_path / "t.trace.parquet"
    write_trace(path, [("pc.ram", 8 * ps)], [
        {0: (np.arange(8) * ps, pages)},                   # round 0: every page (non-zero)
        {0: (np.array([0, ps]), pages[:2] ^ 0x11)},         # round 1: pages 0 and 1, sent as one run
        {0: (np.array([0]), pages[:1] ^ 0x22)},             # round 2: page 0
    ])
    real = raw.RawPageDecoder.load_batch
    hit = []

    def stray(self, payloads, pages_, index):
        real(self, payloads, pages_, index)
        if index[0] == 0 and not hit:  # round 1's run (round 0's run starts at page 1)
            pages_[7, 0] ^= 0xFF
            hit.append(7)

    monkeypatch.setattr(raw.RawPageDecoder, "load_batch", stray)
    res = verify(TraceReader(path), parse_spec("none"), pm)
    assert hit and not res.ok
    assert res.mismatch.round == 2 and res.mismatch.offset == 7 * ps and "first at +0x0" in res.mismatch.detail


def test_expected_ram_fingerprints_find_the_first_differing_byte(tmp_path):
    """verify keeps a 16-byte fingerprint per page instead of a copy of RAM; a page that differs is
    found, and its expected content is read back from the trace to say which byte."""
    from conftest import write_trace
    from pagecodec.harness.expected import ExpectedRAM
    from pagecodec.trace.format import TraceReader

    ps = 4096
    rng = np.random.default_rng(4)
    ram = rng.integers(0, 256, (16, ps), dtype=np.uint8)
    ram[3] = 0
    r1 = ram.copy()
    r1[[5, 9]] ^= 1
    path = tmp_path / "t.parquet"
    write_trace(path, [("pc.ram", 16 * ps)], [{0: (np.arange(16) * ps, ram)}, {0: (np.array([5, 9]) * ps, r1[[5, 9]])}])
    reader = TraceReader(path)
    exp = ExpectedRAM(reader, seed=1)
    for b in reader.batches():
        exp.apply(b)
    dest = {"pc.ram": r1.reshape(-1).copy()}
    assert exp.first_difference(dest, 1, None) is None
    assert exp.first_difference(dest, 1, [np.array([5, 9])]) is None
    dest["pc.ram"][9 * ps + 100] ^= 0x40
    block, offset, detail = exp.first_difference(dest, 1, None)
    assert (block, offset) == ("pc.ram", 9 * ps)
    assert detail == (f"1 byte(s) differ, first at +0x64 (got {int(r1[9, 100] ^ 0x40):#04x}, "
                      f"trace has {int(r1[9, 100]):#04x})")
    assert exp.first_difference(dest, 1, [np.array([5])]) is None  # only the pages asked about
    assert exp.first_difference({}, 1, None) == ("pc.ram", 0, "block missing at the destination")
    # the fingerprints of distinct pages differ, of equal ones agree, of a zero page are zero
    f = exp.fingerprint(np.stack([ram[0], ram[0], ram[3], ram[1]]))
    assert (f[0] == f[1]).all() and (f[2] == 0).all() and (f[0] != f[3]).any()


def test_fingerprints_are_the_linear_hash_of_the_words(tmp_path):
    """The compiled fingerprint is Σ wᵢ·cᵢ mod 2⁶⁴ per coefficient column: numpy's integer matmul gives
    the reference; strided pages (not C-contiguous) take the numpy path and agree."""
    from conftest import write_trace
    from pagecodec.harness.expected import ExpectedRAM

    path = tmp_path / "t.parquet"
    write_trace(path, [("pc.ram", 4 * 4096)], [{0: (np.arange(4) * 4096, np.ones((4, 4096), np.uint8))}])
    exp = ExpectedRAM(TraceReader(path), seed=9)
    pages = np.random.default_rng(2).integers(0, 256, (37, 4096), dtype=np.uint8)
    pages[3] = 0xFF  # every word 2⁶⁴-1: the products wrap
    want = pages.view(np.uint64).reshape(37, -1) @ exp._coef
    assert (exp.fingerprint(pages) == want).all()
    strided = np.repeat(pages, 2, axis=0)[::2]
    assert not strided.flags.c_contiguous and (exp.fingerprint(strided) == want).all()
    assert (exp.fingerprint(np.zeros((2, 4096), np.uint8)) == 0).all()
