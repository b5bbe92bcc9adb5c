"""``pagecodec plugins``: what is installed, what each codec is, which presets can run now and why not.

One model (:func:`listing`, also ``pagecodec plugins --json``) and one text rendering of it
(:func:`render`) that fits the terminal it is printed on — 80 columns when there is none — by
wrapping the long cells (descriptions, reasons) instead of running off the edge. Three tables:

* plugins: name, version, where it came from, what it provides, or why it failed to load;
* codecs, each once: its slot(s), its wire format (QEMU's records, or a pagecodec extension with its
  wire id), its plugin, whether it can run on this machine (:meth:`Codec.unavailable`);
* presets: whether each can run now — its config is valid for the QEMU version asked for, every slot's
  codec is installed and available — and if not, why; which codecs it puts in which slot; whether
  QEMU can load what it writes.

``bench`` takes its default configs from the same function (:func:`preset_status`), so what
``plugins`` says can run is what ``bench`` runs.
"""

from __future__ import annotations

import os
import shutil
import textwrap
from typing import Any, Callable

from .chain.config import parse_spec
from .errors import PageCodecError
from .plugin_trace import TRACE_ENV
from .plugins import LOAD_ENV, PluginManager

__all__ = ["listing", "preset_status", "render", "terminal_width"]

def preset_status(pm: PluginManager, name: str, spec: Callable[[str], str] = lambda s: s) -> dict[str, Any]:
    """Whether preset ``name`` can run now, and if not why; its slot codecs and wire format.

    ``spec`` turns the preset's name into the SPEC a command would run (``--qemu-version`` added)."""
    p = pm.presets[name]
    out: dict[str, Any] = {"name": name, "spec": p.spec, "description": p.description, "plugin": p.plugin,
                           "slots": {}, "format": None, "extension_codecs": [], "runnable": False, "why_not": None}
    try:
        cfg = parse_spec(spec(name), pm.presets)
    except PageCodecError as e:
        out["why_not"] = str(e)
        return out
    slots = cfg.slot_codecs()
    out["slots"] = {s.value: c for s, c in slots.items()}
    missing = [(s.value, c) for s, c in slots.items() if c not in pm.codecs]
    if missing:
        out["why_not"] = "; ".join(f"the {s!r} slot needs codec {c!r}, which no installed plugin provides"
                                   for s, c in missing) + pm.broken_hint()
        return out
    ext = [c for c in slots.values() if not pm.codecs[c].qemu_format]
    out["extension_codecs"] = ext
    out["format"] = "extension" if ext else "qemu"
    for c in slots.values():
        why = pm.codecs[c].unavailable(cfg)
        if why:
            out["why_not"] = f"codec {c!r}: {why}"
            return out
    out["runnable"] = True
    return out


def listing(pm: PluginManager, spec: Callable[[str], str] = lambda s: s,
            environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``pagecodec plugins --json``: plugins, codecs (each once), presets (with ``runnable`` and
    ``why_not``) and the environment variables that chose them."""
    from .chain.config import MigrationConfig

    env = dict(os.environ if environ is None else environ)
    default = MigrationConfig()
    plugins = []
    for info in pm.infos.values():
        plugins.append({"name": info.name, "version": info.version, "source": info.source,
                        "distribution": info.distribution, "status": "ok", "error": None,
                        "codecs": [c.name for c in info.codecs], "presets": list(info.presets)})
    for b in pm.broken.values():
        plugins.append({"name": b.name, "version": None, "source": b.source, "distribution": None,
                        "status": "failed", "error": b.error, "codecs": [], "presets": []})
    codecs = []
    for name, c in pm.codecs.items():
        why = c.unavailable(default)
        codecs.append({"name": name, "slots": [s.value for s in c.slots],
                       "format": "qemu" if c.qemu_format else "extension",
                       "wire_id": None if c.qemu_format else c.wire_id,
                       "plugin": pm.plugin_of(name), "builtin": pm.is_builtin(pm.plugin_of(name)),
                       "description": c.description, "parameters": list(c.parameters),
                       "available": why is None, "why_not": why})
    presets = [preset_status(pm, name, spec) for name in pm.presets]
    return {"plugins": plugins, "codecs": codecs, "presets": presets,
            "environment": {LOAD_ENV: env.get(LOAD_ENV), "not_installed": list(pm.not_installed),
                            TRACE_ENV: env.get(TRACE_ENV)}}


def terminal_width() -> int:
    """The width to render for: the terminal's ($COLUMNS), 80 without one; never below 80 (narrower
    columns stop being readable: a narrower terminal wraps the lines instead) nor above 160 (long
    lines are harder to read)."""
    return max(80, min(160, shutil.get_terminal_size((80, 24)).columns))


#: The narrowest a wrapped column gets.
_MIN_COL = 12


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=True) or [""]


def _table(headers: list[str], rows: list[list[str]], width: int, flex: list[int]) -> str:
    """A plain table no wider than ``width``: two spaces between columns, a dashed rule under the
    headers. Columns start at their natural width; while the table is too wide, the widest column of
    the current tier is narrowed (its cells wrapped at word boundaries): the ``flex`` columns down to
    24 characters, then the others (a plugin's long name) down to 16, then any column down to 12."""
    if not rows:
        return ""
    widths = [max([len(h), *(len(str(r[i])) for r in rows)]) for i, h in enumerate(headers)]
    excess = sum(widths) + 2 * (len(headers) - 1) - width
    others = [i for i in range(len(widths)) if i not in flex]
    for cols, floor in ((flex, 24), (others, 16), (list(range(len(widths))), _MIN_COL)):
        while excess > 0:
            pool = [i for i in cols if widths[i] > floor]
            if not pool:
                break
            i = max(pool, key=lambda j: widths[j])
            rest = [widths[j] for j in pool if j != i]
            step = min(excess, widths[i] - max([floor, *rest]) or 1)
            widths[i] -= step
            excess -= step
    lines = ["  ".join(h[:w].ljust(w) for h, w in zip(headers, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        cells = [_wrap(str(c), w) for c, w in zip(r, widths)]
        for k in range(max(len(c) for c in cells)):
            lines.append("  ".join((c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths)).rstrip())
    return "\n".join(lines)


def render(data: dict[str, Any], width: int = 80) -> str:
    """The three tables of :func:`listing`'s model as text at most ``width`` columns wide."""
    out: list[str] = []
    ok = [p for p in data["plugins"] if p["status"] == "ok"]
    bad = [p for p in data["plugins"] if p["status"] != "ok"]
    out.append(f"Plugins: {len(ok)} loaded" + (f", {len(bad)} failed to load" if bad else ""))
    rows = []
    for p in data["plugins"]:
        if p["status"] != "ok":
            rows.append([p["name"], "-", p["source"], f"FAILED: {p['error']}"])
            continue
        provides = ", ".join(p["codecs"])
        if p["presets"]:
            provides += ("; " if provides else "") + f"{len(p['presets'])} preset(s)"
        rows.append([p["name"], p["version"], p["source"], provides or "-"])
    out.append(_table(["plugin", "version", "source", "provides"], rows, width, [3]))
    env = data["environment"]
    if env.get(LOAD_ENV) is not None:
        out.append(f"{LOAD_ENV}={env[LOAD_ENV]!r}: only these installed entry points load"
                   + (f"; not installed: {', '.join(env['not_installed'])}" if env["not_installed"] else ""))
    out.append("")
    out.append("Codecs (wire: QEMU's own records, or a pagecodec extension QEMU cannot load)")
    rows = []
    for c in data["codecs"]:
        wire = "QEMU" if c["format"] == "qemu" else f"ext {c['wire_id']:#06x}"
        desc = c["description"] or ""
        if not c["available"]:
            desc = f"CANNOT RUN HERE: {c['why_not']}" + (f" ({desc})" if desc else "")
        rows.append([c["name"], ",".join(c["slots"]), wire, "built-in" if c["builtin"] else c["plugin"], desc])
    out.append(_table(["codec", "slot", "wire", "plugin", "description"], rows, width, [3, 4]))
    out.append("")
    runnable = sum(p["runnable"] for p in data["presets"])
    out.append(f"Presets (--config NAME): {runnable} of {len(data['presets'])} can run now")
    rows = []
    for p in data["presets"]:
        qemu = {"qemu": "yes", "extension": "no"}.get(p["format"] or "", "-")
        note = p["description"] or p["spec"] if p["runnable"] else f"CANNOT RUN: {p['why_not']}"
        rows.append([p["name"], "yes" if p["runnable"] else "no", qemu, note])
    out.append(_table(["preset", "runs", "QEMU loads", "description (--json: spec, slot codecs)"], rows, width, [3]))
    return "\n".join(out)
