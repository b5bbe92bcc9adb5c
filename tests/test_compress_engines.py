"""compress-isal and compress-zlibng: QEMU's compress threads with another zlib-compatible deflater.

What must hold (issue 9): every page arrives intact (``verify``, corpus and generated traces); every
COMPRESS_PAGE payload is a zlib stream plain ``zlib.decompress`` inflates to its page, within zlib's
compressBound (what QEMU's destination checks); batching never changes the bytes; the records (kinds,
offsets, order) and the counters are exactly compress-threads' for the same trace: only payload bytes
differ. The QEMU 7.2 load of these streams is in tests/test_qemu_real.py."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from pagecodec.chain.config import parse_spec
from pagecodec.chain.receiver import PageRecords, Receiver, RecordObserver
from pagecodec.codecs.compress import compress_pages
from pagecodec.codecs.compress_engines import ISAL, ZLIBNG, isal_level
from pagecodec.harness.replay import replay, verify
from pagecodec.trace.format import TraceReader
from pagecodec.wire.flags import compress_bound
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink
from test_compress_chain import make_trace

PS = 4096
CORPORA = Path(__file__).resolve().parents[1] / "corpora"
ENGINES = {"compress-isal": ISAL, "compress-zlibng": ZLIBNG}


class _Payloads(RecordObserver):
    """Every record in stream order (block, offset, kind); each COMPRESS_PAGE payload inflated with
    plain zlib and compared with the page the receiver wrote."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.rc: Receiver | None = None
        self.records: list[tuple[int, int, str]] = []
        self.inflated = 0

    def pages(self, rec: PageRecords) -> None:
        self.records.extend((rec.block, int(i) * PS, rec.kind) for i in rec.index)
        if rec.kind != "compress":
            return
        assert self.rc is not None
        block = self.rc.block_pages[rec.block]
        for i, at in zip(rec.index.tolist(), rec.payload_at.tolist()):
            n = int.from_bytes(self.data[at : at + 4], "big")
            assert n <= compress_bound(PS)
            assert zlib.decompress(self.data[at + 4 : at + 4 + n]) == block[i].tobytes()
            self.inflated += 1


def walk(data: bytes, pm) -> _Payloads:
    obs = _Payloads(data)
    rc = Receiver(PS, pm, observer=obs)
    obs.rc = rc
    rc.load_stream(StreamReader(data))
    return obs


def run(path: Path, spec: str, pm) -> tuple[dict, bytes]:
    sink = MemorySink()
    with TraceReader(path) as r:
        res = replay(r, parse_spec(spec, pm.presets), pm, sink=sink)
    return res, sink.getvalue()


COUNTERS = (("compression", "pages"), ("compression", "busy"), ("ram", "duplicate"), ("ram", "normal"),
            ("threads", "compress-flushes"))


def assert_same_as_compress_threads(path: Path, codec: str, pm, extra: str = "") -> _Payloads:
    """Records (kinds, offsets, order) and counters equal to compress-threads'; payloads inflate to the pages."""
    ref, ref_data = run(path, f"compress{extra}", pm)
    res, data = run(path, f"compress,compress-codec={codec}{extra}", pm)
    want, got = walk(ref_data, pm), walk(data, pm)
    assert got.records == want.records
    assert got.inflated == want.inflated > 0
    for group, key in COUNTERS:
        assert res[group][key] == ref[group][key], (group, key)
    assert res["records"] == ref["records"]
    eng = res["threads"]["compression-engine"]
    assert eng["name"] == ENGINES[codec].name and eng["library"] == ENGINES[codec].version
    assert res["config"]["slot-codecs"]["compress"] == codec
    return got


@pytest.mark.parametrize("codec", list(ENGINES))
@pytest.mark.parametrize("trace", ["linux-mixed", "linux-gunzip-sort"])
def test_corpus_traces_verify(pm, codec, trace):
    path = CORPORA / f"{trace}.trace.parquet"
    with TraceReader(path) as r:
        res = verify(r, parse_spec(codec, pm.presets), pm)
    assert res.ok, res.mismatch
    assert res.metrics["records"]["compress"] > 1000


@pytest.mark.parametrize("codec", list(ENGINES))
def test_records_and_counters_are_compress_threads(pm, codec):
    assert_same_as_compress_threads(CORPORA / "linux-mixed.trace.parquet", codec, pm)


@pytest.mark.parametrize("codec", list(ENGINES))
@pytest.mark.parametrize("extra", [",compress-threads=1", ",compress-threads=3,compress-level=6",
                                   ",compress-level=0", ",compress-level=9,qemu-version=4.1"])
def test_generated_trace_same_as_compress_threads(tmp_path, pm, codec, extra):
    path = tmp_path / "t.parquet"
    make_trace(path, 7, empty_last=True)
    assert_same_as_compress_threads(path, codec, pm, extra)



@pytest.mark.parametrize("engine", [ISAL, ZLIBNG], ids=lambda e: e.name)
def test_engine_streams_inflate_within_compress_bound(engine):
    """At every compress-level, incompressible pages included: zlib-ng's level 1 and ISA-L's level 0
    expand random pages past compressBound, which QEMU refuses; those go as stored zlib streams."""
    rng = np.random.default_rng(3)
    pages = np.concatenate([rng.integers(0, k, (24, PS), dtype=np.uint8) for k in (1, 2, 16, 256)])
    pages[::5, -7:] = 0
    for level in range(10):
        outs, _ns = compress_pages(pages, level, engine)
        assert max(map(len, outs)) <= compress_bound(PS), level
        assert [zlib.decompress(o) for o in outs] == [p.tobytes() for p in pages], level


def test_isal_level_mapping():
    assert [isal_level(lv) for lv in range(10)] == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [ZLIBNG.library_level(lv) for lv in range(10)] == list(range(10))


def test_presets_and_plugins_list_them(pm):
    for name in ENGINES:
        assert pm.presets[name].spec == f"compress=on,compress-codec={name}"
        assert pm.codecs[name].qemu_format is True


@settings(max_examples=examples(10), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), threads=st.integers(1, 9), codec=st.sampled_from(list(ENGINES)),
       spec=st.sampled_from(["", ",xbzrle=on", ",compress-wait-thread=off", ",compress-level=3"]))
def test_verify_generated(tmp_path_factory, pm, seed, threads, codec, spec):
    path = tmp_path_factory.mktemp("e") / "t.parquet"
    make_trace(path, seed, rounds=3 + seed % 3, empty_last=seed % 2 == 0)
    res = verify(TraceReader(path), parse_spec(f"{codec}{spec},compress-threads={threads}", pm.presets), pm)
    assert res.ok, res.mismatch
    # every COMPRESS_PAGE payload of the stream inflates with plain zlib to its page (checked in walk)
    walk(run(path, f"{codec}{spec},compress-threads={threads}", pm)[1], pm)
