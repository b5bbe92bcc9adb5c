"""Plugins that misbehave are named (plugin, and the page where there is one) and cost only their own
runs: a plugin that fails to import, an encoder that raises, a decoder that raises, records a decoder
rejects, malformed record sets, pages that arrive wrong. The fixtures are the modules under
``tests/plugins_for_tests``; ``PAGECODEC_TRACE_PLUGINS`` shows what the chain asked of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEST_PLUGINS, write_sparse_trace
from pagecodec.chain.config import parse_spec
from pagecodec.codecs.base import Codec, Slot, SlotEncoder
from pagecodec.errors import PluginError
from pagecodec.harness.replay import replay
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader
from pagecodec.wire.flags import RAM_SAVE_FLAG_PAGE
from pagecodec.wire.records import RecordSet

ENV = dict(os.environ, PYTHONPATH=str(TEST_PLUGINS))


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    p = tmp_path_factory.mktemp("t") / "t.parquet"
    write_sparse_trace(p, seed=5)
    return p


def _cli(*args: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True, env=env)


BROKEN = ["--plugin", "pc_test_importerror", "--plugin", "pc_test_raiser", "--plugin", "pc_test_badrecord",
          "--plugin", "pc_test_liar"]


def test_bench_names_every_broken_plugin_and_finishes_the_other_configs(trace, tmp_path):
    """The acceptance case of issue 13: one bench with every broken fixture and two good configs.
    Each broken config is a FAILED row whose error names the plugin (and the page where there is
    one); the good ones and the baselines finish; exit 1; no traceback."""
    js = tmp_path / "b.json"
    configs = ["raw-codec=importerror", "raw-codec=raiser", "raw-codec=decode-raiser", "raw-codec=badrecord",
               "raw-codec=overrun", "raw-codec=liar", "xbzrle", "zstd"]
    p = _cli(*BROKEN, "bench", str(trace), *(a for c in configs for a in ("--config", c)), "--repeat", "1",
             "--json", str(js))
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr + p.stdout
    assert ("pagecodec: warning: plugin 'pc_test_importerror' (--plugin) failed to load: module 'pc_test_importerror' "
            "failed to import: ModuleNotFoundError: No module named 'pagecodec_test_dependency_that_is_not_installed'"
            in p.stderr)
    res = {r["config"]["label"]: r for r in json.loads(js.read_text())}
    assert set(res) == {"memcpy", "none", *configs}
    for good in ("memcpy", "none", "xbzrle", "zstd"):
        assert res[good]["status"] == "ok", res[good]
    msg = {c: res[c]["error"]["message"] for c in configs[:6]}
    assert all(res[c]["status"] == "failed" for c in configs[:6])
    assert ("the 'raw' slot needs codec 'importerror', which no installed plugin provides" in msg["raw-codec=importerror"]
            and "failed to load: 'pc_test_importerror' (module 'pc_test_importerror' failed to import" in msg["raw-codec=importerror"])
    assert ("codec 'raiser' (plugin 'pc_test_raiser') raised in the raw slot at round 1, block 'pc.ram', pages "
            "0x1000..0x9000: ZeroDivisionError: the plugin's own bug" in msg["raw-codec=raiser"])
    # the decoder raises on the third record it sees: the raw slot's third page of round 0 (pages 0, 3, 6, …)
    assert ("decoder of codec 'decode-raiser' (plugin 'pc_test_raiser') raised on block 'pc.ram', page offset 0x6000: "
            "IndexError: the decoder's own bug" in msg["raw-codec=decode-raiser"])
    assert res["raw-codec=decode-raiser"]["error"]["type"] == "PluginError"
    assert ("badrecord payload rejected (codec 'badrecord', block 'pc.ram', page offset 0x0; plugin 'pc_test_badrecord')"
            in msg["raw-codec=badrecord"])
    assert ("codec 'overrun' (plugin 'pc_test_badrecord') wrote a malformed record in the raw slot at round 1, block "
            "'pc.ram', page offset 0x9000: payload 8192..12304 lies outside its data of 12288 byte(s)"
            in msg["raw-codec=overrun"])
    assert ("mismatch in round 1, block 'pc.ram', offset 0x1000" in msg["raw-codec=liar"]
            and "the page was last sent by codec 'liar' (plugin 'pc_test_liar', raw slot)" in msg["raw-codec=liar"])
    for c in configs[:6]:  # the table says so too, with the message under it
        assert f"FAILED: t.parquet with config '{c}': " in p.stdout


def test_malformed_output_is_refused_without_decoding(trace):
    """The sender checks record sets itself: --no-decode does not let malformed output through."""
    p = _cli("--plugin", "pc_test_badrecord", "bench", str(trace), "--config", "raw-codec=overrun", "--no-decode",
             "--no-baselines", "--repeat", "1")
    assert p.returncode == 1 and "wrote a malformed record in the raw slot at round 1" in p.stdout, p.stdout + p.stderr


def test_plugins_lists_a_broken_plugin_and_exits_2():
    p = _cli("--plugin", "pc_test_importerror", "--plugin", "pc_test_raiser", "plugins")
    assert p.returncode == 2
    words = " ".join(p.stdout.split())  # cells are wrapped to fit 80 columns
    assert "Plugins: 11 loaded, 1 failed to load" in p.stdout and max(map(len, p.stdout.splitlines())) <= 80
    assert "pc_test_importerror - --plugin FAILED: module 'pc_test_importerror' failed to import" in words
    assert "decode-raiser" in p.stdout and "pc_test_raiser" in p.stdout  # the good one is listed
    assert "failed to load" in p.stderr
    data = json.loads(_cli("--plugin", "pc_test_importerror", "plugins", "--json").stdout)
    bad = next(x for x in data["plugins"] if x["name"] == "pc_test_importerror")
    assert bad["status"] == "failed" and "ModuleNotFoundError" in bad["error"]


def test_trace_plugins_logs_hook_and_codec_calls(trace):
    """PAGECODEC_TRACE_PLUGINS=NAME: one line per hook call of that plugin, its encoder's and decoders'
    calls (pages offered and claimed, records, stream offsets); nothing of the others."""
    env = dict(ENV, PAGECODEC_TRACE_PLUGINS="pc_test_raiser")
    p = _cli("--plugin", "pc_test_raiser", "verify", str(trace), "--config", "raw-codec=decode-raiser", env=env)
    lines = [x for x in p.stderr.splitlines() if x.startswith("pagecodec-trace: ")]
    text = "\n".join(lines)
    assert "hook register_codecs() -> plugin(s) 'pc_test_raiser'" in text
    assert "plugin 'pc_test_raiser' registered codec 'decode-raiser'" in text
    assert "codec 'decode-raiser' (plugin 'pc_test_raiser') encoder() for the raw slot -> WholePages" in text
    assert ("codec 'decode-raiser' (plugin 'pc_test_raiser') encode(round 0, block 0, 32 page(s) 0x0..0x1f000, "
            "11 pending) -> claimed 11, 11 record(s) [decode-raiser], 45,122 bytes after the headers") in text
    assert "decoders() -> RaisingDecoder for flag 0x400" in text
    assert "load(offset " in text and "raised IndexError: the decoder's own bug" in text
    assert "'zero'" not in text and "pagecodec.codecs" not in text  # only the plugin asked for
    assert p.returncode == 2 and "decoder of codec 'decode-raiser' (plugin 'pc_test_raiser') raised" in p.stderr
    quiet = _cli("--plugin", "pc_test_raiser", "verify", str(trace), "--config", "raw-codec=decode-raiser")
    assert "pagecodec-trace" not in quiet.stderr


def test_trace_all_includes_the_builtin_codecs(trace):
    env = dict(ENV, PAGECODEC_TRACE_PLUGINS="1")
    p = _cli("verify", str(trace), "--config", "xbzrle", env=env)
    assert p.returncode == 0, p.stderr
    assert "codec 'xbzrle' (plugin 'pagecodec.codecs.xbzrle') encode(round 1" in p.stderr
    assert "codec 'zero' (plugin 'pagecodec.codecs.zero') decoders() -> " in p.stderr


# -- the record check, in process --------------------------------------------------------------------
class _Emit(SlotEncoder):
    def __init__(self, make):
        self.make = make

    def encode(self, seg, stage):
        idx = seg.pending()
        seg.claim(Slot.RAW, idx, self.make(seg, idx))


def _codec(make, qemu_format=True):
    class Out(Codec):
        name = "out"
        slots = (Slot.RAW,)

        def encoder(self, slot, ctx):
            return _Emit(make)

    Out.qemu_format = qemu_format
    return Out()


def _run(trace, make, qemu_format=True):
    pm = PluginManager(entry_points=False)
    pm._add_codec(_codec(make, qemu_format), pm.infos["pagecodec.codecs.raw"])
    return replay(TraceReader(trace), parse_spec("raw-codec=out"), pm)


@pytest.mark.parametrize("make, problem", [
    (lambda seg, idx: RecordSet("page", RAM_SAVE_FLAG_PAGE, idx + 1, pages=seg.pages, rows=idx),
     "a record for a page this slot did not claim"),
    (lambda seg, idx: RecordSet("page", RAM_SAVE_FLAG_PAGE, idx[::-1], pages=seg.pages, rows=idx),
     "record positions must be ascending"),
    (lambda seg, idx: RecordSet("page", 0x800, idx, pages=seg.pages, rows=idx), "flag 2048 is not a page record flag"),
    (lambda seg, idx: RecordSet("page", RAM_SAVE_FLAG_PAGE, idx, pages=seg.pages[:, :100], rows=idx),
     "a PAGE record is one page of 4096 bytes"),
    (lambda seg, idx: RecordSet("page", RAM_SAVE_FLAG_PAGE, idx, pages=seg.pages, rows=idx + 100),
     "rows point outside"),
    (lambda seg, idx: [1, 2, 3], "handed over list, not a RecordSet"),
])
def test_malformed_record_sets_are_named(trace, make, problem):
    with pytest.raises(PluginError, match=r"codec 'out' \(plugin 'pagecodec.codecs.raw'\) wrote a malformed record "
                                          r"in the raw slot at round 0, block 'pc.ram'") as ei:
        _run(trace, make)
    assert problem in str(ei.value)


def test_extension_records_must_carry_their_codecs_id_and_length(trace):
    from pagecodec.wire.extension import extension_records

    def wrong_id(seg, idx):
        k = len(idx)
        return extension_records("out", 0x1234, idx, np.zeros(k, np.uint8), np.arange(k), np.ones(k, np.int64))

    with pytest.raises(PluginError, match="from a codec that declares qemu_format = True"):
        _run(trace, wrong_id, qemu_format=True)
    with pytest.raises(PluginError, match="extension header names codec id 0x1234, not this codec's"):
        _run(trace, wrong_id, qemu_format=False)
