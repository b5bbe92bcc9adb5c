"""Plugin loading: built-ins, entry points, --plugin modules, and plugins that misbehave."""

from __future__ import annotations

import os
import sys
import types
from importlib import metadata

import pytest

from conftest import ROOT
from pagecodec.codecs.base import Slot
from pagecodec.errors import PluginError
from pagecodec.hookspecs import hookimpl
from pagecodec.plugins import DEFAULT_PLUGINS, LOAD_ENV, PluginManager

EXAMPLE = ROOT / "plugins" / "pagecodec-fillpage"


@pytest.fixture
def example_on_path():
    sys.path.insert(0, str(EXAMPLE))
    yield
    sys.path.remove(str(EXAMPLE))
    sys.modules.pop("pagecodec_fillpage", None)


def test_builtins_register_through_the_hooks():
    pm = PluginManager(entry_points=False)
    assert set(DEFAULT_PLUGINS) <= set(pm.infos)
    assert pm.codec("zero").slots == (Slot.ZERO,) and pm.codec("raw").slots == (Slot.RAW,)
    assert pm.plugin_of("zero") == "pagecodec.codecs.zero"
    assert {"none", "xbzrle", "compress", "xbzrle+compress", "multifd", "multifd-zlib", "multifd-zstd"} <= set(pm.presets)
    rows = {r["plugin"]: r for r in pm.describe()}
    assert rows["pagecodec.codecs.raw"]["codecs"][0]["format"] == "qemu"


def test_entry_point_plugin_is_loaded(monkeypatch, example_on_path):
    ep = metadata.EntryPoint(name="fillpage", value="pagecodec_fillpage", group="pagecodec")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "pagecodec" else [])
    pm = PluginManager(environ={})  # PAGECODEC_LOAD_PLUGINS unset: every installed entry point
    assert pm.plugin_of("fillpage") == "fillpage"
    assert pm.infos["fillpage"].source == "entry point"


def test_the_tests_load_no_installed_entry_point(monkeypatch, example_on_path):
    """conftest sets PAGECODEC_LOAD_PLUGINS to empty: the project's tests see only the built-in
    plugins (and those they name), whatever is installed."""
    ep = metadata.EntryPoint(name="fillpage", value="pagecodec_fillpage", group="pagecodec")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep] if group == "pagecodec" else [])
    assert os.environ[LOAD_ENV] == ""
    pm = PluginManager()
    assert "fillpage" not in pm.codecs and set(pm.infos) == set(DEFAULT_PLUGINS)


def test_load_allowlist(monkeypatch, example_on_path):
    eps = [metadata.EntryPoint(name="fillpage", value="pagecodec_fillpage", group="pagecodec"),
           metadata.EntryPoint(name="other", value="no_such_module_xyz", group="pagecodec")]
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: eps if group == "pagecodec" else [])
    pm = PluginManager(environ={LOAD_ENV: "fillpage"})
    assert "fillpage" in pm.codecs and not pm.broken  # 'other' (which would fail) is not even imported
    pm = PluginManager(environ={LOAD_ENV: "FillPage, nosuch"})  # names compare as pip compares them
    assert "fillpage" in pm.codecs and pm.not_installed == ["nosuch"]
    pm = PluginManager(environ={LOAD_ENV: ""})
    assert "fillpage" not in pm.codecs and not pm.broken
    pm = PluginManager(load=["other"], environ={})
    assert "fillpage" not in pm.codecs and set(pm.broken) == {"other"}
    pm = PluginManager(["pagecodec_fillpage"], environ={LOAD_ENV: ""})  # --plugin modules load regardless
    assert "fillpage" in pm.codecs


def test_broken_entry_point_is_recorded_and_named(monkeypatch):
    ep = metadata.EntryPoint(name="broken", value="no_such_module_xyz", group="pagecodec")
    monkeypatch.setattr(metadata, "entry_points", lambda group=None: [ep])
    pm = PluginManager(environ={})
    assert "raw" in pm.codecs  # the others load
    assert str(pm.broken["broken"]) == ("plugin 'broken' (entry point) failed to load: no_such_module_xyz failed to "
                                        "import: ModuleNotFoundError: No module named 'no_such_module_xyz'")
    with pytest.raises(PluginError, match=r"no plugin provides codec 'lz9'.*failed to load: 'broken' \(no_such"):
        pm.codec("lz9")
    with pytest.raises(PluginError, match="plugin 'broken' \\(entry point\\): no_such_module_xyz failed to import"):
        PluginManager(environ={}, strict=True)


def test_plugin_module_option(example_on_path):
    pm = PluginManager(["pagecodec_fillpage"], entry_points=False)
    assert pm.infos["pagecodec_fillpage"].version == "0.1.0"
    assert pm.codec("fillpage").slots == (Slot.ZERO,)


def _module(name: str, **hooks) -> types.ModuleType:
    m = types.ModuleType(name)
    for k, v in hooks.items():
        setattr(m, k, hookimpl(v))
    sys.modules[name] = m
    return m


def test_plugin_raising_in_registration_is_named():
    def register_codecs(register):
        raise RuntimeError("nope")

    _module("pc_test_regraiser", register_codecs=register_codecs)
    with pytest.raises(PluginError, match="plugin 'pc_test_regraiser' raised while registering: RuntimeError: nope"):
        PluginManager(["pc_test_regraiser"], entry_points=False, strict=True)
    pm = PluginManager(["pc_test_regraiser"], entry_points=False)
    assert "raised while registering: RuntimeError: nope" in pm.broken["pc_test_regraiser"].error


def test_a_plugin_failing_half_way_registers_nothing():
    """Registration is all or nothing: a plugin whose second codec is refused leaves no first codec
    and no preset behind (a half-registered plugin would run with parts missing)."""
    from pagecodec.codecs.raw import RawPageCodec

    class Mine(RawPageCodec):
        name = "mine"

    def register_codecs(register):
        register(Mine())
        register(RawPageCodec())  # 'raw' is taken

    def register_presets(register):
        register("mine-preset", "raw-codec=mine")

    _module("pc_test_halfway", register_codecs=register_codecs, register_presets=register_presets)
    pm = PluginManager(["pc_test_halfway"], entry_points=False)
    assert "mine" not in pm.codecs and "mine-preset" not in pm.presets and "pc_test_halfway" not in pm.infos
    assert "registers codec 'raw', already registered by 'pagecodec.codecs.raw'" in pm.broken["pc_test_halfway"].error
    assert not [p for p in pm.pm.get_plugins() if getattr(p, "__name__", "") == "pc_test_halfway"]


def test_duplicate_codec_name_is_refused():
    from pagecodec.codecs.raw import RawPageCodec

    def register_codecs(register):
        register(RawPageCodec())

    _module("pc_test_dup", register_codecs=register_codecs)
    with pytest.raises(PluginError, match="registers codec 'raw', already registered by 'pagecodec.codecs.raw'"):
        PluginManager(["pc_test_dup"], entry_points=False, strict=True)


def test_registering_a_non_codec_is_refused():
    def register_codecs(register):
        register(object())

    _module("pc_test_obj", register_codecs=register_codecs)
    with pytest.raises(PluginError, match="not a pagecodec Codec"):
        PluginManager(["pc_test_obj"], entry_points=False, strict=True)


def test_unknown_codec_lookup_lists_installed():
    with pytest.raises(PluginError, match="no plugin provides codec 'zz'.*raw"):
        PluginManager(entry_points=False).codec("zz")


def test_presets_say_what_they_contain(pm):
    d = pm.describe_preset("xor-zstd-long")
    assert d["spec"] == "delta-codec=xor-zstd,pc-zstd-long=24"
    assert d["slots"] == {"zero": "zero", "delta": "xor-zstd", "raw": "raw"}
    assert d["format"] == "extension (xor-zstd)"
    assert pm.describe_preset("xbzrle+compress")["format"] == "qemu"
    details = {p["name"] for row in pm.describe() for p in row["preset_details"]}
    assert {"xor-zstd", "xbzrle+zstd", "delta-zstd", "multifd-zstd"} <= details
