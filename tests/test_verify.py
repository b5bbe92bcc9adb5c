"""verify: every corpus trace and generated traces round-trip through sender and receiver."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT
from pagecodec.chain.config import parse_spec
from pagecodec.harness.replay import verify
from pagecodec.trace.format import TraceReader
from pagecodec.trace.synth import PATTERNS, synthesize

CORPORA = ROOT / "corpora"


def corpus_files():
    return [CORPORA / e["file"] for e in json.loads((CORPORA / "MANIFEST.json").read_text())]


@pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
def test_verify_corpus(path, pm):
    res = verify(TraceReader(path), parse_spec("none"), pm)
    assert res.ok, res.mismatch
    assert res.pages == TraceReader(path).num_pages


patterns = st.dictionaries(st.sampled_from(PATTERNS), st.floats(0.1, 5), min_size=1)


@settings(max_examples=int(os.environ.get("PAGECODEC_HYPOTHESIS_EXAMPLES", 25)), deadline=None,
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
