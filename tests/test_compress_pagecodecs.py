"""compress-zstd, compress-lz4, compress-lz4hc: QEMU's compress threads compressing with zstd / LZ4,
written as pagecodec extension records.

What must hold (issue 9): every page arrives intact (``verify``, corpus and generated traces); the
records (which pages, kinds, positions, order) and the thread counters are exactly compress-threads'
for the same trace, only the payloads differ, and each payload is what the library itself decodes to
the page; batching never changes the bytes; levels reach the library (zstd's negative levels too) and
are checked against it; malformed payloads are DecodeErrors at the payload's offset that leave the
page alone; results say the stream is not QEMU's and ``--qemu-stream`` refuses it."""

from __future__ import annotations

from pathlib import Path

import lz4.block
import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from conftest import write_trace
from pagecodec.chain.config import PC_PARAMETERS, MigrationConfig, parse_spec
from pagecodec.chain.receiver import PageRecords, Receiver, RecordObserver
from pagecodec.codecs.base import CodecContext, Slot
from pagecodec.codecs.compress_pagecodecs import ZstdPageDecoder, ZstdPages
from pagecodec.errors import ConfigError, DecodeError
from pagecodec.harness.replay import replay, verify
from pagecodec.trace.format import TraceReader
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, codec_id, payload_limit
from pagecodec.wire.reader import StreamReader
from test_compress_chain import make_trace, streams_by_batch_size
from test_compress_engines import COUNTERS, run

PS = 4096
CORPORA = Path(__file__).resolve().parents[1] / "corpora"
#: codec -> (preset, level parameter, library name in results)
CODECS = {"compress-zstd": ("zstd", "pc-zstd-level", "zstd"), "compress-lz4": ("lz4", "pc-lz4-acceleration", "lz4"),
          "compress-lz4hc": ("lz4hc", "pc-lz4hc-level", "lz4hc")}


def library_decode(codec: str, payload: bytes) -> bytes:
    """A payload decoded by the library's own Python binding (not the codec's decoder)."""
    if codec == "compress-zstd":
        return zstandard.ZstdDecompressor().decompress(payload, max_output_size=PS)
    return lz4.block.decompress(payload, uncompressed_size=PS)


class _Records(RecordObserver):
    """Every record in stream order as (block, offset, kind), kinds of this codec's records as
    ``compress``; each of its payloads decoded by the library and compared with the page written."""

    def __init__(self, data: bytes, codec: str | None) -> None:
        self.data = data
        self.codec = codec
        self.rc: Receiver | None = None
        self.records: list[tuple[int, int, str]] = []
        self.payloads: list[int] = []  # stream offset of each of the codec's payloads
        self.decoded = 0

    def pages(self, rec: PageRecords) -> None:
        kind = "compress" if rec.kind == self.codec else rec.kind
        self.records.extend((rec.block, int(i) * PS, kind) for i in rec.index)
        if rec.kind != self.codec or self.codec == "compress":
            return
        assert self.rc is not None
        block = self.rc.block_pages[rec.block]
        for i, hat in zip(rec.index.tolist(), rec.payload_at.tolist()):
            assert int.from_bytes(self.data[hat : hat + 2], "big") == codec_id(self.codec)
            n = int.from_bytes(self.data[hat + 2 : hat + 6], "big")
            assert library_decode(self.codec, self.data[hat + 6 : hat + 6 + n]) == block[i].tobytes()
            self.payloads.append(hat + 6)
            self.decoded += 1


def walk(data: bytes, pm, codec: str | None) -> _Records:
    obs = _Records(data, codec)
    rc = Receiver(PS, pm, observer=obs)
    obs.rc = rc
    rc.load_stream(StreamReader(data))
    return obs


def assert_same_as_compress_threads(path: Path, codec: str, pm, extra: str = "") -> _Records:
    """Records (pages, kinds, positions, order) and thread counters equal to compress-threads' (zlib);
    every payload decodes with the library to its page."""
    ref, ref_data = run(path, f"compress{extra}", pm)
    res, data = run(path, f"compress,compress-codec={codec}{extra}", pm)
    want, got = walk(ref_data, pm, "compress"), walk(data, pm, codec)
    assert got.records == want.records
    assert got.decoded == sum(k == "compress" for _b, _o, k in want.records) > 0
    for group, key in COUNTERS:
        assert res[group][key] == ref[group][key], (group, key)
    records = dict(res["records"])
    records["compress"] = records.pop(codec)
    assert records == ref["records"]
    # compressed-size: QEMU's rule (bytes handed over − 8 per buffer), so it differs by what the records do
    assert res["compression"]["compressed-size"] - ref["compression"]["compressed-size"] == (
        res["wire"][codec] - ref["wire"]["compress"])
    eng = res["threads"]["compression-engine"]
    _preset, param, lib = CODECS[codec]
    assert eng["name"] == lib and eng[param] == eng["library-level"] == PC_PARAMETERS[param]
    assert res["format"] == {"qemu-loadable": False, "extension-codecs": [codec], "unreproducible-codecs": []}
    return got


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("trace", ["linux-mixed", "linux-gunzip-sort", "process-redis", "synth-default", "linux-idle",
                                   "linux-counters"])
def test_corpus_traces_verify(pm, codec, trace):
    path = CORPORA / f"{trace}.trace.parquet"
    with TraceReader(path) as r:
        res = verify(r, parse_spec(CODECS[codec][0], pm.presets), pm)
    assert res.ok, res.mismatch
    m = res.metrics
    assert m["records"][codec] > 1000 and "compress" not in m["records"]
    assert m["format"] == {"qemu-loadable": False, "extension-codecs": [codec], "unreproducible-codecs": []}


@pytest.mark.parametrize("codec", list(CODECS))
def test_records_and_counters_are_compress_threads(pm, codec):
    assert_same_as_compress_threads(CORPORA / "linux-mixed.trace.parquet", codec, pm)


@pytest.mark.parametrize("codec", list(CODECS))
@pytest.mark.parametrize("extra", [",compress-threads=1", ",compress-threads=3", ",xbzrle=on,compress-threads=2",
                                   ",qemu-version=4.1"])
def test_generated_trace_same_as_compress_threads(tmp_path, pm, codec, extra):
    path = tmp_path / "t.parquet"
    make_trace(path, 7, empty_last=True)
    assert_same_as_compress_threads(path, codec, pm, extra)


def test_compressed_size_counts_the_extension_header(tmp_path, pm):
    """QEMU's compressed-size adds bytes − 8 per buffer handed over: 6 + payload for an extension record
    (4 + payload for COMPRESS_PAGE); so with one thread (no empty buffers but the flushes') it is the
    records' bytes minus their page headers, less 8 per empty buffer of a non-zero thread."""
    path = tmp_path / "t.parquet"
    make_trace(path, 3)
    ref, _ = run(path, "compress,compress-threads=1", pm)
    res, _ = run(path, "zstd,compress-threads=1", pm)
    n = res["records"]["compress-zstd"]
    assert n == ref["records"]["compress"]
    empty = res["compression"]["pages"] - n  # pages counted without a record: flushes of empty buffers
    assert res["compression"]["compressed-size"] == res["wire"]["compress-zstd"] - 8 * n - 8 * empty
    assert ref["compression"]["compressed-size"] == ref["wire"]["compress"] - 8 * n - 8 * empty


@pytest.mark.parametrize("spec", ["zstd,compress-threads=3", "lz4,compress-threads=2", "lz4hc", "xbzrle,zstd"])
def test_batch_size_does_not_change_the_stream(tmp_path, pm, spec):
    outs = streams_by_batch_size(tmp_path, pm, spec)
    assert outs[0] == outs[1] == outs[2]


def test_levels_reach_the_library(tmp_path, pm):
    """Each level parameter changes the bytes (zstd's negative levels included) and still verifies; the
    results name the parameter and the library."""
    path = tmp_path / "t.parquet"
    make_trace(path, 11)
    for preset, levels in (("zstd", (-5, 1, 19)), ("lz4", (1, 64)), ("lz4hc", (1, 12))):
        codec = f"compress-{preset}"
        param = CODECS[codec][1]
        sizes = set()
        for lv in levels:
            spec = f"{preset},{param}={lv}"
            res = verify(TraceReader(path), parse_spec(spec, pm.presets), pm)
            assert res.ok, (spec, res.mismatch)
            eng = res.metrics["threads"]["compression-engine"]
            assert eng[param] == lv and eng["library-level"] == lv
            assert res.metrics["config"]["extensions"]["compress-codec"] == codec
            sizes.add(res.metrics["wire"][codec])
        assert len(sizes) == len(levels), (preset, sizes)
    assert "libzstd" in eng["library"] or "lz4" in eng["library"]


def test_zstd_level_out_of_range(pm):
    with pytest.raises(ConfigError, match="pc-zstd-level=23 out of range"):
        parse_spec("zstd,pc-zstd-level=23", pm.presets)
    # the library's own range, whatever the config parser allows
    lo = ZstdPages()
    with pytest.raises(ConfigError, match=r"pc-zstd-level=-200000 out of range -\d+\.\.\d+ \(libzstd"):
        lo.check_level(-200000)
    cfg = MigrationConfig(parameters={**parse_spec("zstd", pm.presets).parameters, "pc-zstd-level": 99})
    with pytest.raises(ConfigError, match="pc-zstd-level=99 out of range"):
        pm.codecs["compress-zstd"].encoder(Slot.COMPRESS, CodecContext(cfg, PS, (), (0,)))


def test_large_pages_fit_an_extension_record(tmp_path, pm):
    """64 KiB pages: LZ4's and zstd's worst case for one page is within the extension record's limit
    (a run's worth, 64 pages), so they round-trip; the codecs still check the bound up front."""
    path = tmp_path / "big.parquet"
    ps = 65536
    rng = np.random.default_rng(9)
    write_trace(path, [("pc.ram", 4 * ps)], [{0: (np.arange(4) * ps, rng.integers(0, 255, (4, ps), dtype=np.uint8))}],
                page_size=ps)
    for preset in ("zstd", "lz4"):
        assert pm.codecs[f"compress-{preset}"].bound(ps) <= payload_limit(ps)
        assert verify(TraceReader(path), parse_spec(preset, pm.presets), pm).ok


def test_presets_codecs_and_decoders(pm):
    for codec, (preset, _param, _lib) in CODECS.items():
        assert pm.presets[preset].spec == f"compress=on,compress-codec={codec}"
        assert "extension" in pm.presets[preset].description and "QEMU cannot load" in pm.presets[preset].description
        c = pm.codecs[codec]
        assert c.qemu_format is False and c.slots == (Slot.COMPRESS,)
        assert [d.flag for d in c.decoders(CodecContext(parse_spec("none"), PS, (), (0,)))] == [RAM_SAVE_FLAG_EXTENSION]
    assert len({pm.codecs[c].wire_id for c in CODECS}) == 3


@pytest.mark.parametrize("codec", list(CODECS))
def test_qemu_stream_refuses_them(tmp_path, pm, codec):
    path = tmp_path / "t.parquet"
    make_trace(path, 2)
    out = tmp_path / "x.mig"
    with pytest.raises(ConfigError, match=f"'{codec}' .* write pagecodec extension records, which QEMU cannot load"):
        replay(TraceReader(path), parse_spec(CODECS[codec][0], pm.presets), pm, qemu_stream=out)
    assert not out.exists()


# --- malformed records -----------------------------------------------------------------------------------
def _zstd_frame(data: bytes, content_size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=3, write_content_size=content_size).compress(data)


def _bad_payloads(codec: str, payload: bytes) -> dict[str, bytes]:
    """Replacement payloads (the record's length field is set to match each)."""
    rng = np.random.default_rng(1)
    page = rng.integers(0, 3, PS, dtype=np.uint8).tobytes()
    garbage = rng.integers(0, 256, len(payload), dtype=np.uint8).tobytes()
    if codec == "compress-zstd":
        return {"truncated": payload[: len(payload) // 2], "garbage": garbage,
                "more": _zstd_frame(page + b"x"), "more, no content size": _zstd_frame(page + b"x", False),
                "less": _zstd_frame(page[:-1]), "less, no content size": _zstd_frame(page[:-1], False),
                "after the frame": payload + b"\0", "two frames": _zstd_frame(page[:100]) + _zstd_frame(page[100:]),
                "empty": b""}
    return {"truncated": payload[: len(payload) // 2], "garbage": garbage,
            "more": lz4.block.compress(page + b"x", store_size=False),
            "less": lz4.block.compress(page[:-1], store_size=False),
            "with stored size": lz4.block.compress(page), "empty": b""}


_MESSAGES = {"compress-zstd": r"zstd (frame|payload)", "compress-lz4": "lz4 block", "compress-lz4hc": "lz4 block"}


@pytest.mark.parametrize("codec", list(CODECS))
def test_malformed_records(tmp_path, pm, codec):
    path = tmp_path / "t.parquet"
    make_trace(path, 5, rounds=2)
    _res, data = run(path, CODECS[codec][0], pm)
    obs = walk(data, pm, codec)
    pay = obs.payloads[len(obs.payloads) // 2]  # a record in the middle of the stream
    n = int.from_bytes(data[pay - 4 : pay], "big")
    for what, bad in _bad_payloads(codec, data[pay : pay + n]).items():
        stream = data[: pay - 4] + len(bad).to_bytes(4, "big") + bad + data[pay + n :]
        rc = Receiver(PS, pm)
        with pytest.raises(DecodeError, match=rf"{_MESSAGES[codec]}.*\(codec '{codec}', block '[^']+', page offset 0x") as ei:
            rc.load_stream(StreamReader(stream, "s.mig"))
        assert ei.value.offset == pay, what
        assert "s.mig" in str(ei.value)


def test_zstd_decoder_bounds_its_output():
    """A frame claiming (or producing) more than a page fails inside ZSTD_decompressDCtx's one-page
    buffer, and the page stays as it was."""
    dec = ZstdPageDecoder()
    page = np.full(PS, 0xA5, np.uint8)
    for frame in (_zstd_frame(bytes(PS * 64)), _zstd_frame(bytes(PS * 64), False)):
        with pytest.raises(DecodeError, match="zstd frame decodes to more than a page of 4096 bytes") as ei:
            dec.load(StreamReader(frame, "f", base=100), page)
        assert ei.value.offset == 100 and (page == 0xA5).all()
    good = _zstd_frame(bytes(range(256)) * 16, False)
    dec.load(StreamReader(good, "f"), page)
    assert page.tobytes() == bytes(range(256)) * 16


# --- generated traces ------------------------------------------------------------------------------------
@settings(max_examples=examples(12), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), threads=st.integers(1, 9), codec=st.sampled_from(list(CODECS)),
       spec=st.sampled_from(["", ",xbzrle=on", ",compress-wait-thread=off", ",qemu-version=4.1", ",level"]))
def test_verify_generated(tmp_path_factory, pm, seed, threads, codec, spec):
    path = tmp_path_factory.mktemp("p") / "t.parquet"
    make_trace(path, seed, rounds=3 + seed % 3, empty_last=seed % 2 == 0)
    preset, param, _lib = CODECS[codec]
    if spec == ",level":
        spec = f",{param}={dict(zstd=-(seed % 7), lz4=1 + seed % 20, lz4hc=1 + seed % 12)[preset]}"
    full = f"{preset}{spec},compress-threads={threads}"
    res = verify(TraceReader(path), parse_spec(full, pm.presets), pm)
    assert res.ok, res.mismatch
    walk(run(path, full, pm)[1], pm, codec)  # every payload decodes with the library to its page
