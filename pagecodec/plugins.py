"""Loading plugins: the built-in ones, entry points of group ``pagecodec``, and ``--plugin MODULE``.

The built-in codecs register through the very hooks a third-party package uses; nothing is special
about them except that they are listed in :data:`DEFAULT_PLUGINS`.

A third-party plugin is someone else's code: one that fails to import or to register must not take
pagecodec down with it. Such a plugin is recorded in :attr:`PluginManager.broken` (its name, where it
came from, the error) with nothing of it registered, and whatever needs its codecs fails naming it,
so ``bench`` marks those configs failed and finishes the others. ``strict=True`` raises instead (the
conformance kit: the plugin under test must load).

Which installed entry points load is the user's to choose: ``PAGECODEC_LOAD_PLUGINS`` (as llm's
``LLM_LOAD_PLUGINS``) is a comma-separated allowlist of entry-point or distribution names; set but
empty, no entry point loads. Unset, every installed one does. The built-in plugins and ``--plugin``
modules load whatever it says. ``PAGECODEC_TRACE_PLUGINS`` logs the calls into plugins
(:mod:`pagecodec.plugin_trace`).
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Iterable, Mapping

import pluggy

from . import __version__, hookspecs
from .codecs.base import Codec, Slot
from .errors import PageCodecError, PluginError, one_line
from .plugin_trace import PluginTracer, tracer_from_env

__all__ = ["DEFAULT_PLUGINS", "LOAD_ENV", "PluginManager", "PluginInfo", "BrokenPlugin", "Preset", "load_allowlist"]

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

#: The allowlist of entry points to load (unset: all of them; empty: none).
LOAD_ENV = "PAGECODEC_LOAD_PLUGINS"


@dataclass
class PluginInfo:
    name: str
    version: str
    source: str  # "builtin", "entry point", "--plugin"
    codecs: list[Codec] = field(default_factory=list)
    presets: list[str] = field(default_factory=list)
    distribution: str | None = None  # the installed package an entry point comes from


@dataclass(frozen=True)
class BrokenPlugin:
    """A plugin that failed to import or to register: none of it is registered."""

    name: str
    source: str
    error: str  # one line: the exception's type and message

    def __str__(self) -> str:
        return f"plugin {self.name!r} ({self.source}) failed to load: {self.error}"


@dataclass(frozen=True)
class Preset:
    name: str
    spec: str
    description: str
    plugin: str


def _norm(name: str) -> str:
    """Distribution names compare as pip compares them (PEP 503)."""
    return name.strip().lower().replace("_", "-").replace(".", "-")


def load_allowlist(environ: Mapping[str, str]) -> frozenset[str] | None:
    """The entry points ``PAGECODEC_LOAD_PLUGINS`` allows (normalised names), or None: all of them."""
    value = environ.get(LOAD_ENV)
    if value is None:
        return None
    return frozenset(_norm(v) for v in value.split(",") if v.strip())


class PluginManager:
    """Registers plugins and collects what they provide (codecs by name, presets by name).

    ``extra_modules``: modules to load as plugins (``--plugin``). ``entry_points``: load installed
    entry points (as ``PAGECODEC_LOAD_PLUGINS`` allows; ``load`` replaces the variable's allowlist).
    ``strict``: raise PluginError for a plugin that fails, instead of recording it in :attr:`broken`.
    ``environ``: where the two variables are read (``os.environ``)."""

    def __init__(self, extra_modules: Iterable[str] = (), *, entry_points: bool = True,
                 load: Iterable[str] | None = None, strict: bool = False,
                 environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.strict = strict
        self.tracer: PluginTracer | None = tracer_from_env(env)
        if self.tracer is not None:
            self.tracer.monitor(self.pm)
        self.infos: dict[str, PluginInfo] = {}
        self.broken: dict[str, BrokenPlugin] = {}
        self.codecs: dict[str, Codec] = {}
        self.codec_plugin: dict[str, str] = {}
        self.presets: dict[str, Preset] = {}
        #: Names the allowlist gives that no installed entry point has (a typo, an uninstalled package).
        self.not_installed: list[str] = []
        self.allowlist = frozenset(_norm(n) for n in load) if load is not None else load_allowlist(env)
        for mod in DEFAULT_PLUGINS:
            self._register_module(mod, "builtin", __version__)
        if entry_points:
            self._load_entry_points()
        for mod in extra_modules:
            self._register_module(mod, "--plugin", None)

    # -- loading --------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        allow = self.allowlist
        seen: set[str] = set()
        for ep in metadata.entry_points(group=hookspecs.PROJECT):
            dist = ep.dist.name if ep.dist is not None else None
            names = {_norm(ep.name)} | ({_norm(dist)} if dist else set())
            seen |= names
            if allow is not None and not names & allow:
                continue
            try:
                obj = ep.load()
            except Exception as e:  # a broken third-party package must not look like our bug
                self._fail(ep.name, "entry point", f"{ep.value} failed to import: {type(e).__name__}: {one_line(str(e))}", e)
                continue
            version = ep.dist.version if ep.dist is not None else "unknown"
            self._register(obj, ep.name, "entry point", version, dist)
        if allow:
            self.not_installed = sorted(allow - seen)

    def _register_module(self, modname: str, source: str, version: str | None) -> None:
        try:
            mod = importlib.import_module(modname)
        except Exception as e:
            self._fail(modname, source, f"module {modname!r} failed to import: {type(e).__name__}: {one_line(str(e))}", e)
            return
        self._register(mod, modname, source, version or str(getattr(mod, "__version__", "unknown")))

    def _fail(self, name: str, source: str, error: str, cause: BaseException | None) -> None:
        """A plugin that cannot be used: raise (strict) or record it, once."""
        if self.strict:
            raise PluginError(f"plugin {name!r} ({source}): {error}") from cause
        self.broken.setdefault(name, BrokenPlugin(name, source, error))
        if self.tracer is not None and self.tracer.wants(name):
            self.tracer.log(str(self.broken[name]))

    def _register(self, obj: Any, name: str, source: str, version: str, dist: str | None = None) -> None:
        """Register ``obj`` and call its hooks; all it registers is checked first and kept only if the
        whole registration succeeds (a plugin that fails half-way leaves nothing behind)."""
        if name in self.infos or name in self.broken:
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as e:
            self._fail(name, source, f"not a valid pagecodec plugin: {one_line(str(e))}", e)
            return
        info = PluginInfo(name, version, source, distribution=dist)
        codecs: list[Codec] = []
        presets: list[Preset] = []
        others = [p for p in self.pm.get_plugins() if p is not obj]

        def register_codec(codec: Codec) -> None:
            self._check_codec(codec, name, codecs)
            codecs.append(codec)

        def register_preset(pname: str, spec: str, description: str = "") -> None:
            taken = self.presets.get(pname) or next((p for p in presets if p.name == pname), None)
            if taken is not None:
                raise PluginError(f"plugin {name!r} registers preset {pname!r}, already registered by {taken.plugin!r}")
            presets.append(Preset(pname, spec, description, name))

        try:
            self.pm.subset_hook_caller("register_codecs", remove_plugins=others)(register=register_codec)
            self.pm.subset_hook_caller("register_presets", remove_plugins=others)(register=register_preset)
        except Exception as e:
            self.pm.unregister(obj)
            msg = str(e) if isinstance(e, PluginError) else f"plugin {name!r} raised while registering: {type(e).__name__}: {e}"
            if self.strict:
                raise (e if isinstance(e, PluginError) else PluginError(msg)) from e
            self._fail(name, source, one_line(msg), e)
            return
        self.infos[name] = info
        for codec in codecs:
            self.codecs[codec.name] = codec
            self.codec_plugin[codec.name] = name
            info.codecs.append(codec)
            if self.tracer is not None:
                self.tracer.registered(name, "codec", codec.name)
        for p in presets:
            self.presets[p.name] = p
            info.presets.append(p.name)
            if self.tracer is not None:
                self.tracer.registered(name, "preset", p.name)

    def _check_codec(self, codec: Codec, plugin: str, staged: list[Codec]) -> None:
        """What a registered codec must be: a Codec with a name, valid slots, a free name and (for an
        extension codec) a free 16-bit wire id."""
        if not isinstance(codec, Codec):
            raise PluginError(f"plugin {plugin!r} registered {codec!r}, which is not a pagecodec Codec")
        for attr in ("name", "slots", "qemu_format"):
            if not hasattr(codec, attr):
                raise PluginError(f"plugin {plugin!r}: codec {codec!r} lacks {attr!r}")
        if not isinstance(codec.name, str) or not codec.name or "," in codec.name or "=" in codec.name:
            raise PluginError(f"plugin {plugin!r}: codec name {codec.name!r} must be a non-empty string without ',' or '='")
        bad = [s for s in codec.slots if not isinstance(s, Slot)]
        if bad or not codec.slots:
            raise PluginError(f"plugin {plugin!r}: codec {codec.name!r} names no valid chain slot ({bad or 'none'})")
        owner = self.codec_plugin.get(codec.name) or (plugin if any(c.name == codec.name for c in staged) else None)
        if owner is not None:
            raise PluginError(f"plugin {plugin!r} registers codec {codec.name!r}, already registered by {owner!r}")
        if not codec.qemu_format:
            wid = codec.wire_id
            if not 0 <= wid <= 0xFFFF:
                raise PluginError(f"plugin {plugin!r}: codec {codec.name!r} has extension id {wid}, not 0..65535")
            other = next((c for c in [*self.codecs.values(), *staged] if not c.qemu_format and c.wire_id == wid), None)
            if other is not None:
                raise PluginError(
                    f"plugin {plugin!r}: extension codec {codec.name!r} has wire id {wid:#06x}, already used by "
                    f"{other.name!r} (plugin {self.codec_plugin.get(other.name, plugin)!r}); set extension_id to another value")

    def _add_codec(self, codec: Codec, info: PluginInfo) -> None:
        """Register one more codec under an already registered plugin (tests that build a codec in place)."""
        self._check_codec(codec, info.name, [])
        self.codecs[codec.name] = codec
        self.codec_plugin[codec.name] = info.name
        info.codecs.append(codec)

    # -- queries --------------------------------------------------------------------------------
    def broken_hint(self) -> str:
        """What to add to a "no such codec/preset" error: the plugins that failed to load, which may be
        the ones that would have provided it ("" when none did)."""
        if not self.broken:
            return ""
        return "; plugin(s) that failed to load: " + "; ".join(f"{b.name!r} ({b.error})" for b in self.broken.values())

    def codec(self, name: str) -> Codec:
        try:
            return self.codecs[name]
        except KeyError:
            known = ", ".join(sorted(self.codecs)) or "none"
            raise PluginError(f"no plugin provides codec {name!r} (installed codecs: {known}){self.broken_hint()}") from None

    def plugin_of(self, codec_name: str) -> str:
        return self.codec_plugin.get(codec_name, "?")

    def is_builtin(self, plugin: str) -> bool:
        info = self.infos.get(plugin)
        return info is not None and info.source == "builtin"

    def describe(self) -> list[dict[str, Any]]:
        """One row per plugin (loaded or broken): name, version, source, codecs with slots and format,
        presets. ``pagecodec plugins`` builds its tables from :func:`pagecodec.listing.listing`."""
        rows = []
        for info in self.infos.values():
            rows.append(
                {
                    "plugin": info.name,
                    "version": info.version,
                    "source": info.source,
                    "distribution": info.distribution,
                    "status": "ok",
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
        for b in self.broken.values():
            rows.append({"plugin": b.name, "version": None, "source": b.source, "distribution": None,
                         "status": "failed", "error": b.error, "codecs": [], "presets": [], "preset_details": []})
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
