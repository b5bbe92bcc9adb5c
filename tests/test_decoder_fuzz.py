"""Bounded fuzz runs of the decoders this project added beside XBZRLE's (which has its own, in
test_xbzrle_kernel.py and fuzz_xbzrle.py): COMPRESS_PAGE (one record and runs on decompress threads),
pagecodec's extension records, the compress-zstd and compress-lz4/lz4hc payloads, and multifd channels. Any input must end in the page(s) written or a
WireError/DecodeError with a stream offset, and a rejected record must leave its page(s) untouched.
PAGECODEC_HYPOTHESIS_EXAMPLES scales them up."""

from __future__ import annotations

import ctypes
import zlib

import lz4.block
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from conftest import write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.codecs.compress import CompressedPageDecoder
from pagecodec.codecs.compress_pagecodecs import Lz4PageDecoder, Lz4Pages, ZstdPageDecoder, ZstdPages
from pagecodec.codecs.multifd_stream import libzstd
from pagecodec.errors import PageCodecError, WireError
from pagecodec.harness.replay import verify
from pagecodec.trace.format import TraceReader
from pagecodec.wire.reader import StreamReader

PS = 4096
EXAMPLES = examples(50)
_PAGES = np.random.default_rng(11).integers(0, 5, (6, PS), dtype=np.uint8)
_RECORDS = [len(z).to_bytes(4, "big") + z for z in (zlib.compress(p.tobytes(), 1) for p in _PAGES)]



def _split(run: tuple[np.ndarray, np.ndarray]) -> list[bytes]:
    data, lengths = run
    return [bytes(b) for b in np.split(data, np.cumsum(lengths)[:-1])]


#: Valid payloads of the compress slot's pagecodec codecs, made by the codecs' own compressors.
_ZSTD = _split(ZstdPages().compress_run(_PAGES, 1))
_LZ4 = _split(Lz4Pages(False).compress_run(_PAGES, 1)) + _split(Lz4Pages(True).compress_run(_PAGES, 9))


def _system_zstd(data: bytes) -> bytes:
    """The system libzstd's own one-shot decompression into one page (the reference: a damaged frame
    without checksum may decode to other bytes with another zstd version, e.g. the zstandard wheel's)."""
    lib = libzstd()
    fn = lib["ZSTD_decompress"]  # a function object of its own: its types are set here only
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
    fn.restype = ctypes.c_size_t
    out = ctypes.create_string_buffer(PS)
    n = fn(out, PS, data, len(data))
    assert not lib.ZSTD_isError(n)
    return out.raw[:n]

mutation = st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 255)), min_size=1, max_size=6)


def mutate(b: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(b)
    for pos, val in edits:
        if out:
            out[pos % len(out)] = val
    return bytes(out[:cut] if cut is not None else out)


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 5), edits=mutation, cut=st.none() | st.integers(0, 5000))
def test_compressed_page_record(which, edits, cut):
    data = mutate(_RECORDS[which], edits, cut)
    page = np.full(PS, 0xA5, np.uint8)
    try:
        CompressedPageDecoder().load(StreamReader(data, "f"), page)
    except WireError as e:
        assert e.offset is not None and 0 <= e.offset <= len(data)
        assert (page == 0xA5).all()  # rejected: untouched
    else:
        assert zlib.decompress(bytes(data[4:])) == page.tobytes()  # accepted: what the stream inflates to


@settings(max_examples=EXAMPLES, deadline=None)
@given(bad=st.integers(0, 5), edits=mutation)
def test_compressed_page_runs_on_threads(bad, edits):
    payloads = [memoryview(r) for r in _RECORDS]
    payloads[bad] = memoryview(mutate(_RECORDS[bad], edits, None))
    pages = np.full((8, PS), 0xA5, np.uint8)
    dec = CompressedPageDecoder(threads=3)
    dec.CHUNK = 2  # several worker tasks for six records
    at = np.arange(6, dtype=np.int64) * 10_000
    try:
        dec.load_many(payloads, pages, np.arange(6), at, "f")
    except WireError as e:
        assert e.offset is not None and at[bad] <= e.offset < at[bad] + 10_000
        assert (pages == 0xA5).all()  # the whole run is checked before any page is written
    else:
        assert all(pages[i].tobytes() == zlib.decompress(bytes(payloads[i][4:])) for i in range(6))


def _page_payload(decoder, payload: bytes, edits, cut, library) -> None:
    """One damaged payload: a DecodeError at an offset inside it with the page untouched, or exactly
    the page the library itself decodes the payload to."""
    data = mutate(payload, edits, cut)
    page = np.full(PS, 0xA5, np.uint8)
    try:
        decoder.load(StreamReader(data, "f", base=1000), page)
    except WireError as e:
        assert e.offset == 1000  # the payload's offset
        assert (page == 0xA5).all()  # rejected: untouched
    else:
        assert library(data) == page.tobytes()


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 5), edits=mutation, cut=st.none() | st.integers(0, 5000))
def test_zstd_page_payload(which, edits, cut):
    _page_payload(ZstdPageDecoder(), _ZSTD[which], edits, cut, _system_zstd)


@settings(max_examples=EXAMPLES, deadline=None)
@given(which=st.integers(0, 11), edits=mutation, cut=st.none() | st.integers(0, 5000))
def test_lz4_page_payload(which, edits, cut):
    """compress-lz4 (0–5) and compress-lz4hc (6–11) payloads, one decoder."""
    _page_payload(Lz4PageDecoder(), _LZ4[which], edits, cut, lambda d: lz4.block.decompress(d, uncompressed_size=PS))


_trace_cache: dict[str, str] = {}


def _small_trace(tmp_path_factory) -> str:
    if "t" not in _trace_cache:
        path = tmp_path_factory.mktemp("fz") / "t.parquet"
        rng = np.random.default_rng(5)
        ram = rng.integers(0, 4, (40, PS), dtype=np.uint8)
        ram[::3] = 0
        idx = np.array([1, 2, 7, 20, 33])
        write_trace(path, [("pc.ram", 40 * PS)], [{0: (np.arange(40) * PS, ram)}, {0: (idx * PS, ram[idx] ^ 1)}])
        _trace_cache["t"] = str(path)
    return _trace_cache["t"]


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.sampled_from(["multifd", "multifd-zlib", "multifd-zstd", "multifd-zstd,qemu-version=10.2"]),
       channel=st.integers(0, 1), rnd=st.integers(-1, 1), edits=mutation, cut=st.none() | st.integers(0, 30_000))
def test_multifd_channels(tmp_path_factory, pm, spec, channel, rnd, edits, cut):
    """Damaged channel bytes: verify ends in a named WireError/DecodeError (or, where the damage hits
    only page contents, a reported mismatch), never another exception."""
    trace = _small_trace(tmp_path_factory)

    def tamper_channel(k, r, data):
        return mutate(data, edits, cut) if (k, r) == (channel, rnd) and data else data

    try:
        res = verify(TraceReader(trace), parse_spec(spec, pm.presets), pm, tamper_channel=tamper_channel)
    except PageCodecError as e:
        assert "channel-" in str(e) or isinstance(e, WireError), e
    else:
        assert res.ok or res.mismatch is not None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=mutation, cut=st.none() | st.integers(0, 200_000))
def test_extension_records(tmp_path_factory, edits, cut):
    """Damaged streams of an extension codec (the LZ4 test plugin): a named error or a reported
    mismatch, never another exception."""
    import sys

    from conftest import ROOT
    from pagecodec.plugins import PluginManager

    sys.path.insert(0, str(ROOT / "tests" / "plugins_for_tests"))
    try:
        pm = PluginManager(["pc_test_lz4page"], entry_points=False)
    finally:
        sys.path.pop(0)
    trace = _small_trace(tmp_path_factory)

    def tamper(r, chunk):
        return mutate(chunk, [(p + 60, v) for p, v in edits], cut) if r == 0 else chunk

    try:
        res = verify(TraceReader(trace), parse_spec("raw-codec=lz4page"), pm, tamper=tamper)
    except PageCodecError as e:
        assert isinstance(e, WireError) and e.offset is not None, e
    else:
        assert res.ok or res.mismatch is not None


# --- pagecodec's delta codecs ------------------------------------------------------------------------
def _run_head(long_window: int = 0) -> tuple[bytes, np.ndarray]:
    from pagecodec.codecs.delta_runs import MODE_PAGE, MODE_XOR, RunEncoder

    pages = np.random.default_rng(12).integers(0, 5, (4, PS), dtype=np.uint8)
    modes = np.array([MODE_PAGE, MODE_XOR, MODE_PAGE, MODE_XOR], np.uint8)
    rs = RunEncoder("xor-zstd", 1, 1, PS, long_window).records(np.arange(4), modes, pages.reshape(-1),
                                                                np.full(4, PS, np.int64))
    return rs.data[: rs.lengths[0]].tobytes(), pages


_RUN_HEAD, _RUN_PAGES = _run_head()


@settings(max_examples=EXAMPLES, deadline=None)
@given(edits=mutation, cut=st.none() | st.integers(0, 5000))
def test_run_record(edits, cut):
    """A damaged head of an xor-zstd run: its page written (and the rest owed) or a DecodeError with
    an offset inside the record and nothing written."""
    from pagecodec.codecs.delta_runs import MODE_PAGE, MODE_XOR, RunDecoder

    data = mutate(_RUN_HEAD, edits, cut)
    dec = RunDecoder("xor-zstd", PS, (MODE_PAGE, MODE_XOR))
    page = np.full(PS, 0xA5, np.uint8)
    try:
        dec.load(StreamReader(data, "f", base=100), page)
    except WireError as e:
        assert e.offset is not None and 100 <= e.offset <= 100 + len(data), e
        assert (page == 0xA5).all()
        assert not dec.owed
    else:
        assert len(dec.owed) == data[0] - 1
        for _ in range(len(dec.owed)):  # the owed pages come out with their empty records, bounded
            dec.load(StreamReader(b"", "f"), np.zeros(PS, np.uint8))


@settings(max_examples=EXAMPLES, deadline=None)
@given(edits=mutation, cut=st.none() | st.integers(0, 5000), patch=st.booleans())
def test_delta_zstd_record(edits, cut, patch):
    from pagecodec.codecs.delta_patch import DeltaZstdDecoder
    from pagecodec.codecs.zstd_ctx import Compressor

    old = _PAGES[0]
    new = old.copy()
    new[100:140] ^= 7
    z = Compressor(1, PS)
    record = (b"\x01" + z.frame(new, old).tobytes()) if patch else (b"\x00" + z.frame(new).tobytes())
    data = mutate(record, edits, cut)
    page = old.copy()
    try:
        DeltaZstdDecoder(PS).load(StreamReader(data, "f", base=100), page)
    except WireError as e:
        assert e.offset is not None and 100 <= e.offset <= 100 + len(data), e
        assert (page == old).all()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.sampled_from(["xor-zstd", "xbzrle+zstd", "delta-zstd", "xor-zstd,pc-zstd-long=22"]),
       rnd=st.integers(0, 1), edits=mutation, cut=st.none() | st.integers(0, 200_000))
def test_delta_codec_streams(tmp_path_factory, pm, spec, rnd, edits, cut):
    """Damaged streams of the delta codecs: a named error with an offset or a reported mismatch."""
    trace = _small_trace(tmp_path_factory)

    def tamper(r, chunk):
        return mutate(chunk, [(p + 30, v) for p, v in edits], cut) if r == rnd else chunk

    try:
        res = verify(TraceReader(trace), parse_spec(spec, pm.presets), pm, tamper=tamper)
    except PageCodecError as e:
        assert isinstance(e, WireError) and e.offset is not None, e
    else:
        assert res.ok or res.mismatch is not None


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=st.sampled_from(["zstd", "lz4", "lz4hc"]), threads=st.integers(1, 3), rnd=st.integers(0, 1),
       edits=mutation, cut=st.none() | st.integers(0, 200_000))
def test_compress_pagecodec_streams(tmp_path_factory, pm, spec, threads, rnd, edits, cut):
    """Damaged streams of compress-zstd/lz4/lz4hc (compress threads, ZERO and extension records out of
    page order): a named error with an offset or a reported mismatch, never another exception."""
    trace = _small_trace(tmp_path_factory)

    def tamper(r, chunk):
        return mutate(chunk, [(p + 60, v) for p, v in edits], cut) if r == rnd else chunk

    try:
        res = verify(TraceReader(trace), parse_spec(f"{spec},compress-threads={threads}", pm.presets), pm, tamper=tamper)
    except PageCodecError as e:
        assert isinstance(e, WireError) and e.offset is not None, e
    else:
        assert res.ok or res.mismatch is not None
