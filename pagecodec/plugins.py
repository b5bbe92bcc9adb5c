"""Loading plugins: the built-in ones, entry points of group ``pagecodec``, and ``--plugin MODULE``.

The built-in codecs register through the very hooks a third-party package uses; nothing is special
about them except that they are listed in :data:`DEFAULT_PLUGINS`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable

import pluggy

from . import __version__, hookspecs
from .codecs.base import Codec, Slot
from .errors import PageCodecError, PluginError

__all__ = ["DEFAULT_PLUGINS", "PluginManager", "PluginInfo", "Preset"]

DEFAULT_PLUGINS: tuple[str, ...] = (
    "pagecodec.codecs.zero",
    "pagecodec.codecs.raw",
    "pagecodec.codecs.xbzrle",
    "pagecodec.codecs.compress",
    "pagecodec.codecs.compress_engines",
    "pagecodec.codecs.compress_pagecodecs",
    "pagecodec.codecs.multifd",
    "pagecodec.codecs.delta_stream",
    "pagecodec.codecs.delta_patch",
    "pagecodec.presets",
)


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "builtin", "entry point", "--plugin"
    codecs: list[Codec] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Preset:
    name: str
    spec: str
    description: str
    plugin: str


class PluginManager:
    """Registers plugins and collects what they provide (codecs by name, presets by name)."""

    def __init__(self, extra_modules: Iterable[str] = (), *, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.codecs: dict[str, Codec] = {}
        self.codec_plugin: dict[str, str] = {}
        self.presets: dict[str, Preset] = {}
        for mod in DEFAULT_PLUGINS:
            self._register_module(mod, "builtin", __version__)
        if entry_points:
            for ep in metadata.entry_points(group=hookspecs.PROJECT):
                try:
                    obj = ep.load()
                except Exception as e:  # a broken third-party package must not look like our bug
                    raise PluginError(f"plugin entry point {ep.name!r} ({ep.value}) failed to load: {e}") from e
                version = ep.dist.version if ep.dist is not None else "unknown"
                self._register(obj, ep.name, "entry point", version)
        for mod in extra_modules:
            self._register_module(mod, "--plugin", None)

    # -- registration ---------------------------------------------------------------------------
    def _register_module(self, modname: str, source: str, version: str | None) -> None:
        try:
            mod = importlib.import_module(modname)
        except Exception as e:
            raise PluginError(f"plugin module {modname!r} failed to import: {e}") from e
        self._register(mod, modname, source, version or str(getattr(mod, "__version__", "unknown")))

    def _register(self, obj: Any, name: str, source: str, version: str) -> None:
        if name in self.infos:
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as e:
            raise PluginError(f"plugin {name!r} is not a valid pagecodec plugin: {e}") from e
        info = PluginInfo(name, version, source)
        self.infos[name] = info
        caller = self.pm.subset_hook_caller  # call only this plugin's implementations
        others = [p for p in self.pm.get_plugins() if p is not obj]

        def register_codec(codec: Codec) -> None:
            self._add_codec(codec, info)

        def register_preset(pname: str, spec: str, description: str = "") -> None:
            if pname in self.presets:
                raise PluginError(f"plugin {name!r} registers preset {pname!r}, already registered by {self.presets[pname].plugin!r}")
            self.presets[pname] = Preset(pname, spec, description, name)
            info.presets.append(pname)

        try:
            caller("register_codecs", remove_plugins=others)(register=register_codec)
            caller("register_presets", remove_plugins=others)(register=register_preset)
        except PluginError:
            raise
        except Exception as e:
            raise PluginError(f"plugin {name!r} raised while registering: {type(e).__name__}: {e}") from e

    def _add_codec(self, codec: Codec, info: PluginInfo) -> None:
        if not isinstance(codec, Codec):
            raise PluginError(f"plugin {info.name!r} registered {codec!r}, which is not a pagecodec Codec")
        for attr in ("name", "slots", "qemu_format"):
            if not hasattr(codec, attr):
                raise PluginError(f"plugin {info.name!r}: codec {codec!r} lacks {attr!r}")
        bad = [s for s in codec.slots if not isinstance(s, Slot)]
        if bad or not codec.slots:
            raise PluginError(f"plugin {info.name!r}: codec {codec.name!r} names no valid chain slot ({bad or 'none'})")
        if codec.name in self.codecs:
            raise PluginError(
                f"plugin {info.name!r} registers codec {codec.name!r}, already registered by {self.codec_plugin[codec.name]!r}"
            )
        if not codec.qemu_format:
            wid = codec.wire_id
            if not 0 <= wid <= 0xFFFF:
                raise PluginError(f"plugin {info.name!r}: codec {codec.name!r} has extension id {wid}, not 0..65535")
            other = next((c for c in self.codecs.values() if not c.qemu_format and c.wire_id == wid), None)
            if other is not None:
                raise PluginError(
                    f"plugin {info.name!r}: extension codec {codec.name!r} has wire id {wid:#06x}, already used by "
                    f"{other.name!r} (plugin {self.codec_plugin[other.name]!r}); set extension_id to another value")
        self.codecs[codec.name] = codec
        self.codec_plugin[codec.name] = info.name
        info.codecs.append(codec)

    # -- queries --------------------------------------------------------------------------------
    def codec(self, name: str) -> Codec:
        try:
            return self.codecs[name]
        except KeyError:
            known = ", ".join(sorted(self.codecs)) or "none"
            raise PluginError(f"no plugin provides codec {name!r} (installed codecs: {known})") from None

    def plugin_of(self, codec_name: str) -> str:
        return self.codec_plugin.get(codec_name, "?")

    def describe(self) -> list[dict[str, Any]]:
        """Rows for ``pagecodec plugins``: plugin, version, source, codecs with slots and format."""
        rows = []
        for info in self.infos.values():
            rows.append(
                {
                    "plugin": info.name,
                    "version": info.version,
                    "source": info.source,
                    "codecs": [
                        {
                            "name": c.name,
                            "slots": [s.value for s in c.slots],
                            "format": "qemu" if c.qemu_format else "extension",
                            "description": c.description,
                        }
                        for c in info.codecs
                    ],
                    "presets": list(info.presets),
                    "preset_details": [self.describe_preset(name) for name in info.presets],
                }
            )
        return rows

    def describe_preset(self, name: str) -> dict[str, Any]:
        """What a preset contains: its spec, the codec in each slot, and whether QEMU can load what it
        writes (every slot's codec is QEMU's format)."""
        from .chain.config import parse_spec

        p = self.presets[name]
        try:
            slots = parse_spec(p.spec, self.presets).slot_codecs()
        except PageCodecError as e:  # a plugin's preset may name what is not installed
            return {"name": name, "spec": p.spec, "description": p.description, "slots": {}, "format": f"invalid: {e}"}
        ext = [c for c in slots.values() if c in self.codecs and not self.codecs[c].qemu_format]
        return {"name": name, "spec": p.spec, "description": p.description,
                "slots": {s.value: c for s, c in slots.items()},
                "format": "extension (" + ", ".join(ext) + ")" if ext else "qemu"}

