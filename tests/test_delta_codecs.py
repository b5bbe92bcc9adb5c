"""pagecodec's delta codecs (xor-zstd, xbzrle-zstd, delta-zstd): round trips on the corpus and on
hypothesis-made traces, the destination cache's invariant, malformed records, and their marks as
extensions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from conftest import write_trace
from pagecodec.chain.config import parse_spec
from pagecodec.chain.receiver import Receiver
from pagecodec.chain.sender import Sender
from pagecodec.codecs.delta_cache import DestinationCache
from pagecodec.codecs.delta_runs import MODE_PAGE, MODE_XOR, RunDecoder, RunEncoder
from pagecodec.codecs.delta_patch import DeltaZstdDecoder
from pagecodec.codecs.zstd_ctx import Compressor
from pagecodec.errors import ConfigError, DecodeError
from pagecodec.harness.replay import verify
from pagecodec.trace.format import TraceReader
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096
CORPUS = Path(__file__).resolve().parent.parent / "corpora"
DELTA_CONFIGS = ["xor-zstd", "xbzrle+zstd", "delta-zstd"]


# --- round trips -------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", DELTA_CONFIGS + ["xor-zstd,pc-zstd-long=22,pc-zstd-level=-3",
                                                  "xbzrle+zstd,pc-zstd-long=22", "delta-zstd,pc-zstd-level=5"])
@pytest.mark.parametrize("trace", ["synth-default", "linux-counters"])
def test_round_trip_on_corpus(pm, spec, trace):
    res = verify(TraceReader(CORPUS / f"{trace}.trace.parquet"), parse_spec(spec, pm.presets), pm)
    assert res.ok, res.mismatch
    fmt = res.metrics["format"]
    assert fmt["qemu-loadable"] is False and len(fmt["extension-codecs"]) == 1


@pytest.mark.slow
@pytest.mark.parametrize("trace", ["process-redis", "linux-idle", "linux-gunzip-sort", "linux-mixed"])
def test_round_trip_on_the_other_corpus_traces(pm, trace):
    """Every codec on every corpus trace (the bounded CI form: each codec once, long window on)."""
    for spec in ("xor-zstd,pc-zstd-long=24", "xbzrle+zstd", "delta-zstd"):
        res = verify(TraceReader(CORPUS / f"{trace}.trace.parquet"), parse_spec(spec, pm.presets), pm)
        assert res.ok, (spec, res.mismatch)


@settings(max_examples=examples(16), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31), rounds=st.integers(2, 4), cache=st.sampled_from(["64M", "16K"]),
       spec=st.sampled_from(DELTA_CONFIGS))
def test_round_trip_on_generated_pages(tmp_path_factory, pm, seed, rounds, cache, spec):
    """Pages rewritten a little, a lot, wholly, back to zero, and unchanged; a 16 KiB cache makes
    pages share cache slots (the slow, collision-safe path)."""
    rng = np.random.default_rng(seed)
    n = 48
    ram = rng.integers(0, 3, (n, PS), dtype=np.uint8)
    ram[rng.random(n) < 0.3] = 0
    content = [{0: (np.arange(n) * PS, ram.copy())}]
    for _ in range(rounds - 1):
        idx = np.sort(rng.choice(n, rng.integers(1, n), replace=False))
        for i in idx.tolist():
            how = rng.integers(0, 4)
            if how == 0:
                ram[i, rng.integers(0, PS, 5)] ^= 0x5A  # a few bytes
            elif how == 1:
                ram[i] = rng.integers(0, 255, PS, dtype=np.uint8)  # renewed
            elif how == 2:
                ram[i] = 0
        content.append({0: (idx * PS, ram[idx].copy())})
    path = tmp_path_factory.mktemp("dz") / "t.parquet"
    write_trace(path, [("pc.ram", n * PS)], content)
    res = verify(TraceReader(path), parse_spec(f"{spec},xbzrle-cache-size={cache}", pm.presets), pm)
    assert res.ok, res.mismatch


@pytest.mark.parametrize("spec", ["xor-zstd", "delta-zstd"])
def test_the_cache_holds_what_the_destination_holds(pm, spec):
    """After every round, every cached page equals the destination's page at its address: the
    invariant the deltas rest on."""
    reader = TraceReader(CORPUS / "linux-counters.trace.parquet")
    meta = reader.meta
    sink = MemorySink()
    sender = Sender(meta, parse_spec(spec, pm.presets), pm, sink)
    recv = Receiver(PS, pm, sender.config, expected_blocks=meta.blocks, source="s")
    enc = next(e for s, _n, e in sender.encoders if s.value == "delta")
    sender.save_setup()
    r = StreamReader(sink.take(), "s")
    recv.load_header(r)
    recv.load_section(r)
    base = r.base + len(r)
    starts = np.array(sender.block_addrs)
    checked = 0
    for rnd, batches in reader.rounds():
        sender.save_round(rnd, batches, last_stage=False)
        r = StreamReader(sink.take(), "s", base=base)
        recv.load_section(r)
        base += len(r)
        c = enc.cache.cache
        filled = np.flatnonzero(c.filled)
        for s in filled.tolist():
            addr = int(c.addr[s])
            bi = int(np.searchsorted(starts, addr, side="right") - 1)
            off = addr - int(starts[bi])
            dest = recv.memory[meta.blocks[bi].name][off : off + PS]
            assert (c.data[s] == dest).all(), (rnd, addr)
            checked += 1
    assert checked > 10_000


def test_parameters_are_checked(pm):
    with pytest.raises(ConfigError, match="pc-zstd-long=19"):
        Sender(TraceReader(CORPUS / "synth-default.trace.parquet").meta, parse_spec("xor-zstd,pc-zstd-long=19", pm.presets), pm)
    with pytest.raises(ConfigError, match="pc-zstd-level=99 out of range"):
        parse_spec("xor-zstd,pc-zstd-level=99", pm.presets)
    cfg = parse_spec("xor-zstd,pc-zstd-level=-5", pm.presets)
    assert cfg.to_json()["extensions"] == {"delta-codec": "xor-zstd", "pc-zstd-level": -5}
    assert "pc-zstd-level" not in cfg.to_json()["parameters"]


def test_qemu_stream_output_is_refused(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "replay", str(CORPUS / "synth-default.trace.parquet"),
                        "--config", "xor-zstd", "--qemu-stream", str(tmp_path / "o.mig")], capture_output=True, text=True)
    assert p.returncode == 2 and "xor-zstd" in p.stderr and "QEMU cannot load" in p.stderr, p.stderr
    assert not (tmp_path / "o.mig").exists()


# --- malformed records -------------------------------------------------------------------------------
def _run_payload(pages: np.ndarray, modes: list[int]) -> bytes:
    enc = RunEncoder("xor-zstd", 1, 1, PS)
    rs = enc.records(np.arange(len(pages)), np.array(modes, np.uint8), pages.reshape(-1),
                     np.full(len(pages), PS, np.int64))
    return rs.data[: rs.lengths[0]].tobytes()


def _load(dec, payload: bytes, page: np.ndarray, base: int = 1000) -> None:
    dec.load(StreamReader(payload, "s.mig", base=base), page)


def test_run_records_refuse_bad_sequences():
    pages = np.random.default_rng(1).integers(0, 4, (3, PS), dtype=np.uint8)
    head = _run_payload(pages, [MODE_PAGE] * 3)
    dec = RunDecoder("xor-zstd", PS, (MODE_PAGE, MODE_XOR))
    page = np.zeros(PS, np.uint8)
    with pytest.raises(DecodeError, match="empty run record with no run under way") as ei:
        _load(dec, b"", page)
    assert ei.value.offset == 1000
    _load(dec, head, page)
    assert (page == pages[0]).all()
    with pytest.raises(DecodeError, match=r"new run starts while 2 page\(s\) of the previous run are still owed"):
        _load(dec, head, page)
    _load(dec, b"", page)
    assert (page == pages[1]).all()
    with pytest.raises(DecodeError, match=r"section ends while 1 page\(s\) of a run are still owed") as ei:
        dec.end_of_section(5000, "s.mig")
    assert ei.value.offset == 5000


@pytest.mark.parametrize("damage, message", [
    (lambda h: b"\x00" + h[1:], r"run of 0 pages"),
    (lambda h: h[:1] + b"\x07" + h[2:], "has mode 7"),
    (lambda h: h[:1] + b"\x02" + h[2:], "has mode 2"),  # XBZRLE pieces are not xor-zstd's
    (lambda h: h[:2] + b"\x0f\xff" + h[4:], "declares 4095 bytes of mode page"),
    (lambda h: h[: len(h) // 2], "zstd stream data"),
    (lambda h: h[:4] + bytes(len(h) - 4), "zstd stream data does not decode"),
    (lambda h: h + h[4:], "zstd stream data"),
])
def test_malformed_run_records(damage, message):
    pages = np.random.default_rng(2).integers(0, 4, (1, PS), dtype=np.uint8)
    head = _run_payload(pages, [MODE_PAGE])
    page = np.full(PS, 0xA5, np.uint8)
    with pytest.raises(DecodeError, match=message) as ei:
        _load(RunDecoder("xor-zstd", PS, (MODE_PAGE, MODE_XOR)), damage(head), page)
    assert 1000 <= ei.value.offset <= 1000 + len(head) * 2
    assert (page == 0xA5).all()  # a rejected record writes nothing


def test_a_stream_with_a_larger_window_than_configured_is_refused():
    rng = np.random.default_rng(3)
    pages = rng.integers(0, 255, (64, PS), dtype=np.uint8)
    enc = RunEncoder("xor-zstd", 1, 1, PS, long_window=27)
    rs = enc.records(np.arange(64), np.zeros(64, np.uint8), pages.reshape(-1), np.full(64, PS, np.int64))
    head = rs.data[: rs.lengths[0]].tobytes()
    with pytest.raises(DecodeError, match="zstd stream data does not decode: Frame requires too much memory"):
        _load(RunDecoder("xor-zstd", PS, (MODE_PAGE, MODE_XOR)), head, np.zeros(PS, np.uint8))
    dec = RunDecoder("xor-zstd", PS, (MODE_PAGE, MODE_XOR), long_window=27)
    page = np.zeros(PS, np.uint8)
    _load(dec, head, page)
    assert (page == pages[0]).all()


@pytest.mark.parametrize("damage, message", [
    (lambda f: b"\x03" + f[1:], "mode 3"),
    (lambda f: f[: len(f) // 2], "zstd frame does not decode"),
    (lambda f: f[:1] + bytes(len(f) - 1), "zstd frame does not decode"),
    (lambda f: f + f[1:], "zstd frame does not decode to 4096 bytes"),  # a second page's worth
])
def test_malformed_delta_zstd_records(damage, message):
    new = np.random.default_rng(4).integers(0, 4, PS, dtype=np.uint8)
    frame = b"\x00" + Compressor(1, PS).frame(new).tobytes()
    dec = DeltaZstdDecoder(PS)
    page = np.full(PS, 0xA5, np.uint8)
    _load(dec, frame, page)
    assert (page == new).all()
    page[:] = 0xA5
    with pytest.raises(DecodeError, match=message) as ei:
        _load(dec, damage(frame), page)
    assert 1000 <= ei.value.offset <= 1001
    assert (page == 0xA5).all()


def test_a_short_frame_is_refused():
    half = np.random.default_rng(5).integers(0, 4, PS // 2, dtype=np.uint8)
    frame = b"\x00" + Compressor(1, PS).frame(half).tobytes()
    with pytest.raises(DecodeError, match="zstd frame gives 2048 bytes, expected 4096"):
        _load(DeltaZstdDecoder(PS), frame, np.zeros(PS, np.uint8))


def test_destination_cache_fast_and_safe_paths_agree():
    rng = np.random.default_rng(6)
    pages = rng.integers(0, 255, (8, PS), dtype=np.uint8)
    addrs = np.arange(8, dtype=np.int64) * PS
    want = np.ones(8, bool)
    a, b = DestinationCache(64 * PS, PS), DestinationCache(64 * PS, PS)
    for now in (1, 2):
        hit, slots = a.lookup(addrs, want, now)
        ref_a = a.cache.data[slots].copy()
        a.store(addrs, slots, pages, now)
        look = b.lookup_and_store(addrs, pages, want, now, True)
        assert (hit == look.hit).all()
        assert (ref_a[hit] == look.ref[hit]).all()
        pages = pages ^ 1
    colliding = np.array([0, 64 * PS], np.int64)  # one slot, two addresses
    assert a.lookup(colliding, np.ones(2, bool), 3) is None


def _stream(pm, spec: str, trace: str = "linux-counters") -> tuple[bytes, object]:
    reader = TraceReader(CORPUS / f"{trace}.trace.parquet")
    sink = MemorySink()
    Sender(reader.meta, parse_spec(spec, pm.presets), pm, sink).run(reader.rounds(), reader.num_rounds)
    return sink.getvalue(), reader.meta


@pytest.mark.parametrize("spec", ["xor-zstd", "xbzrle+zstd"])
def test_runs_of_extension_records_load_at_once_as_one_by_one(pm, spec, monkeypatch):
    """The receiver hands a run of a codec's records to load_many; the destination is the same as
    when every record is loaded on its own."""
    data, meta = _stream(pm, spec)
    cfg = parse_spec(spec, pm.presets)
    fast = Receiver(PS, pm, cfg, expected_blocks=meta.blocks, source="s")
    fast.load_stream(StreamReader(data, "s"))
    monkeypatch.setattr(RunDecoder, "loads_many", False)
    slow = Receiver(PS, pm, cfg, expected_blocks=meta.blocks, source="s")
    slow.load_stream(StreamReader(data, "s"))
    assert fast.stats.records == slow.stats.records
    for name in fast.memory:
        assert (fast.memory[name] == slow.memory[name]).all(), name


def test_an_error_inside_a_run_names_its_page(pm):
    data, meta = _stream(pm, "xor-zstd")
    cfg = parse_spec("xor-zstd", pm.presets)
    rc = Receiver(PS, pm, cfg, expected_blocks=meta.blocks, source="s")
    cid = pm.codecs["xor-zstd"].wire_id.to_bytes(2, "big")
    # the second run head of the stream (a non-empty payload after the first): corrupt its run length
    heads = [i for i in range(len(data) - 14) if data[i + 8 : i + 10] == cid and data[i + 7] & 0x20
             and int.from_bytes(data[i + 10 : i + 14], "big") > 0 and data[i + 6] & 0x04]
    at = heads[1]
    bad = data[: at + 14] + b"\x00" + data[at + 15 :]
    with pytest.raises(DecodeError, match=r"run of 0 pages .*codec 'xor-zstd', block '.*', page offset 0x") as ei:
        rc.load_stream(StreamReader(bad, "s"))
    assert ei.value.offset == at + 14
    page_off = int.from_bytes(data[at : at + 8], "big") & ~(PS - 1)
    assert f"page offset {page_off:#x}" in str(ei.value)
