"""pagecodec's extension record: a third-party codec's own records go through the receiver's one path,
a reader without the codec fails with a named error, QEMU streams refuse them, results mark them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT
from pagecodec.chain.config import parse_spec
from pagecodec.chain.receiver import Receiver
from pagecodec.codecs.base import Codec, RecordDecoder, Slot
from pagecodec.errors import ConfigError, DecodeError, PluginError, WireError
from pagecodec.harness.replay import replay, verify
from pagecodec.plugins import PluginManager
from pagecodec.sources.synth import synthesize
from pagecodec.trace.format import TraceReader
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, codec_id, payload_limit
from pagecodec.wire.reader import StreamReader
from pagecodec.wire.writer import MemorySink

PS = 4096
PLUGINS = str(ROOT / "tests" / "plugins_for_tests")


@pytest.fixture(scope="module")
def pm_ext():
    sys.path.insert(0, PLUGINS)
    try:
        yield PluginManager(["pc_test_lz4page"], entry_points=False)
    finally:
        sys.path.remove(PLUGINS)


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("ext") / "t.parquet"
    synthesize(path, ram_size=0, blocks=[("pc.ram", 96 * PS), ("pc.bios", 8 * PS)], rounds=4, dirty_fraction=0.3,
               patterns="sparse=2,text=2,random=1", zero_fraction=0.3, seed=3, row_group_pages=64)
    return path


def stream_of(trace, pm, spec="raw-codec=lz4page") -> tuple[bytes, dict]:
    sink = MemorySink()
    res = replay(TraceReader(trace), parse_spec(spec), pm, sink=sink)
    return sink.getvalue(), res


def test_extension_codec_round_trips_and_is_marked(trace, pm_ext):
    res = verify(TraceReader(trace), parse_spec("raw-codec=lz4page"), pm_ext)
    assert res.ok, res.mismatch
    m = res.metrics
    assert m["records"]["lz4page"] > 0 and "page" not in m["records"]
    assert m["format"] == {"qemu-loadable": False, "extension-codecs": ["lz4page"], "unreproducible-codecs": []}
    assert verify(TraceReader(trace), parse_spec("none"), pm_ext).metrics["format"]["qemu-loadable"] is True


def test_a_reader_without_the_codec_names_it(trace, pm_ext, pm):
    data, _ = stream_of(trace, pm_ext)
    cid = codec_id("lz4page")
    with pytest.raises(WireError, match=f"extension record of codec id {cid:#06x}, which no installed plugin decodes"):
        Receiver(PS, pm).load_stream(StreamReader(data, "s.mig"))


def test_qemu_stream_refuses_extension_records(trace, pm_ext, tmp_path):
    out = tmp_path / "x.mig"
    with pytest.raises(ConfigError, match="'lz4page' .* write pagecodec extension records, which QEMU cannot load"):
        replay(TraceReader(trace), parse_spec("raw-codec=lz4page"), pm_ext, qemu_stream=out)
    assert not out.exists()


def _first_extension_record(data: bytes) -> int:
    """Stream offset of the first extension record's be16 codec id (a CONTINUE record)."""
    flag = RAM_SAVE_FLAG_EXTENSION | 0x20
    for i in range(len(data) - 8):
        if data[i + 6] & 0x0F == flag >> 8 and data[i + 7] == flag & 0xFF and i > 100:
            return i + 8
    raise AssertionError("no extension record")


def test_malformed_extension_records(trace, pm_ext):
    data, _ = stream_of(trace, pm_ext)
    at = _first_extension_record(data)

    def load(b: bytes) -> None:
        Receiver(PS, pm_ext).load_stream(StreamReader(b, "s.mig"))

    too_long = data[:at + 2] + (payload_limit(PS) + 1).to_bytes(4, "big") + data[at + 6:]
    limit = payload_limit(PS)
    assert limit == 64 * PS + 64 * PS // 128 + 3 * 64 + 1024  # a run of 64 pages as zstd may expand them
    with pytest.raises(DecodeError, match=f"payload of {limit + 1} bytes, more than the limit of {limit}") as ei:
        load(too_long)
    assert ei.value.offset == at + 2
    n = int.from_bytes(data[at + 2 : at + 6], "big")
    garbled = data[:at + 6] + bytes([0xFF]) * n + data[at + 6 + n:]
    with pytest.raises(DecodeError, match=r"lz4 block .*\(codec 'lz4page', block 'pc.ram', page offset 0x"):
        load(garbled)
    truncated = data[:at + 6 + n // 2]
    with pytest.raises(WireError, match="truncated stream: extension record payload of codec 'lz4page'"):
        load(truncated)


def test_a_decoder_must_consume_its_payload(trace, pm_ext):
    """A decoder that reads less than the payload is caught (the stream would desynchronise)."""
    data, _ = stream_of(trace, pm_ext)
    dec = Receiver(PS, pm_ext).extension_decoders[codec_id("lz4page")][1]

    class Lazy(type(dec)):  # type: ignore[misc]
        def load(self, r, page):
            r.get_bytes(1)

    rc = Receiver(PS, pm_ext)
    cid = codec_id("lz4page")
    rc.extension_decoders[cid] = ("lz4page", Lazy())
    with pytest.raises(DecodeError, match="decoder of extension codec 'lz4page' left .* payload bytes unread"):
        rc.load_stream(StreamReader(data, "s.mig"))


def test_new_flag_bits_and_colliding_ids_are_refused(pm):
    class OwnFlag(RecordDecoder):
        flag = 0x800

        def load(self, r, page):
            pass

    class Bad(Codec):
        name = "ownflag"
        slots = (Slot.RAW,)
        qemu_format = False

        def encoder(self, slot, ctx):
            raise NotImplementedError

        def decoders(self, ctx):
            return [OwnFlag()]

    with pytest.raises(PluginError, match="decodes flag 0x800, which is not a QEMU page record flag"):
        Receiver(PS, [Bad()])

    class A(Bad):
        name = "a-codec"
        extension_id = 7

    class B(Bad):
        name = "b-codec"
        extension_id = 7

    class Mod:
        from pagecodec.hookspecs import hookimpl

        @hookimpl
        def register_codecs(register):  # noqa: N805
            register(A())
            register(B())

    m = PluginManager(entry_points=False, strict=True)
    with pytest.raises(PluginError, match="'b-codec' has wire id 0x0007, already used by 'a-codec'"):
        m._register(Mod, "collide", "test", "0")
    m = PluginManager(entry_points=False)  # not strict: recorded, and nothing of the plugin registered
    m._register(Mod, "collide", "test", "0")
    assert "already used by 'a-codec'" in m.broken["collide"].error and "a-codec" not in m.codecs


def test_cli_verify_with_an_extension_plugin(trace):
    env = dict(os.environ, PYTHONPATH=PLUGINS)
    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_lz4page", "verify", str(trace),
                        "--config", "raw-codec=lz4page"], capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "verify: OK" in p.stdout, p.stderr
    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "--plugin", "pc_test_lz4page", "replay", str(trace),
                        "--config", "raw-codec=lz4page", "--qemu-stream", str(trace) + ".mig"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 2 and "extension records, which QEMU cannot load" in p.stderr and p.stderr.count("\n") == 1
