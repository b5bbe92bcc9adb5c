"""`pagecodec plugins`: every codec once, presets with whether they can run now and why not, readable
at 80 columns; the JSON model behind it; bench's default configs are the presets it says can run."""

from __future__ import annotations

import sys
import types

from pagecodec.chain.config import parse_spec
from pagecodec.codecs.raw import RawPageCodec
from pagecodec.hookspecs import hookimpl
from pagecodec.listing import listing, preset_status, render
from pagecodec.plugins import PluginManager


def _plugin(name: str, **hooks) -> str:
    m = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(m, k, hookimpl(v))
    sys.modules[name] = m
    return name


class _Unavailable(RawPageCodec):
    name = "needs-a-library"
    description = "a codec whose library is missing on this machine " * 3

    def unavailable(self, config):
        return "needs the Python package 'nosuchlib' (pip install nosuchlib)"


def _pm() -> PluginManager:
    def register_codecs(register):
        register(_Unavailable())

    def register_presets(register):
        register("wants-missing", "raw-codec=not-installed", "a preset naming a codec nobody provides")
        register("wants-library", "raw-codec=needs-a-library", "a preset whose codec cannot run here")

    name = _plugin("pc_test_a_plugin_with_a_rather_long_module_name_for_the_table",
                   register_codecs=register_codecs, register_presets=register_presets)
    return PluginManager([name, "pc_test_listing_missing_module"], entry_points=False)


def test_presets_say_whether_they_can_run_and_why_not():
    pm = _pm()
    st = {name: preset_status(pm, name) for name in pm.presets}
    assert st["xbzrle"]["runnable"] and st["xbzrle"]["format"] == "qemu" and st["xbzrle"]["why_not"] is None
    assert st["zstd"]["format"] == "extension" and st["zstd"]["extension_codecs"] == ["compress-zstd"]
    assert not st["wants-missing"]["runnable"]
    assert st["wants-missing"]["why_not"].startswith("the 'raw' slot needs codec 'not-installed', which no installed "
                                                    "plugin provides; plugin(s) that failed to load: "
                                                    "'pc_test_listing_missing_module'")
    assert st["wants-library"]["why_not"] == ("codec 'needs-a-library': needs the Python package 'nosuchlib' "
                                              "(pip install nosuchlib)")
    ten = preset_status(pm, "compress", lambda s: f"{s},qemu-version=10.2")  # pagecodec --qemu-version 10.2
    assert not ten["runnable"] and "QEMU 10.2 has no compress threads" in ten["why_not"]


def test_the_listing_model():
    data = listing(_pm(), environ={"PAGECODEC_LOAD_PLUGINS": ""})
    names = [c["name"] for c in data["codecs"]]
    assert len(names) == len(set(names)) and {"zero", "raw", "xor-zstd", "needs-a-library"} <= set(names)
    c = next(c for c in data["codecs"] if c["name"] == "needs-a-library")
    assert not c["available"] and "nosuchlib" in c["why_not"] and not c["builtin"] and c["slots"] == ["raw"]
    bad = [p for p in data["plugins"] if p["status"] == "failed"]
    assert [p["name"] for p in bad] == ["pc_test_listing_missing_module"] and "ModuleNotFoundError" in bad[0]["error"]
    assert data["environment"]["PAGECODEC_LOAD_PLUGINS"] == ""
    assert {p["name"] for p in data["presets"] if not p["runnable"]} == {"wants-missing", "wants-library"}


def test_the_text_fits_80_columns_and_says_what_matters():
    text = render(listing(_pm()), 80)
    assert max(len(line) for line in text.splitlines()) <= 80
    words = " ".join(text.split())
    assert "Plugins: 11 loaded, 1 failed to load" in text
    assert "pc_test_listing_missing_module - --plugin FAILED: module" in words  # long words wrap inside a cell
    assert "xor-zstd delta ext 0xa17d built-in" in words and "zero zero QEMU built-in" in words
    assert "Presets (--config NAME): 16 of 18 can run now" in text
    assert "wants-missing no - CANNOT RUN: the 'raw' slot needs codec 'not-installed'" in words
    assert "needs-a-library raw QEMU" in words and "CANNOT RUN HERE:" in words and "'nosuchlib'" in words
    wide = render(listing(_pm()), 120)
    assert max(len(line) for line in wide.splitlines()) <= 120 and len(wide.splitlines()) < len(text.splitlines())


def test_bench_runs_the_presets_plugins_says_can_run(monkeypatch):
    from pagecodec import cli

    c = cli.Ctx((), False, False)
    monkeypatch.setattr(cli.Ctx, "pm", property(lambda self: _pm()))
    names = cli.runnable_presets(c)
    assert "wants-missing" not in names and "wants-library" not in names and "xbzrle" in names
    assert parse_spec("wants-library", _pm().presets).slot_codecs()
