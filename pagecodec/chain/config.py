"""Migration configuration: QEMU's capabilities and parameters, by QEMU's names.

``--config`` takes a SPEC: comma-separated items, each a preset name (``none``, ``xbzrle``, …), a
capability (``xbzrle`` = ``xbzrle=on``) or ``key=value`` with a QEMU parameter name
(``xbzrle-cache-size=32M``, ``compress-level=1``). Sizes take K/M/G suffixes. pagecodec's own keys are
``qemu-version`` (which QEMU's rules to follow), ``<slot>-codec=NAME`` (fill a chain slot with a
plugin's codec instead of QEMU's) and the ``pc-`` parameters of pagecodec's own codecs
(:data:`PC_PARAMETERS`); the last two are marked as extensions in every result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..errors import ConfigError
from .slots import SLOT_ORDER, Slot

__all__ = ["MigrationConfig", "parse_spec", "parse_size", "CAPABILITIES", "CONVERGENCE_KEYS", "PARAMETERS", "PC_PARAMETERS", "QEMU_VERSIONS"]

#: Capabilities pagecodec models (QEMU's MigrationCapability names): the page encoders, and the two
#: that change how a migration converges, which only ``simulate`` reads (the chain sends the same bytes).
CAPABILITIES: dict[str, bool] = {"xbzrle": False, "compress": False, "multifd": False,
                                 "auto-converge": False, "postcopy-ram": False}

#: Capabilities and parameters that act on the migration thread, not on the pages' encoding.
CONVERGENCE_KEYS = ("auto-converge", "postcopy-ram", "cpu-throttle-initial", "cpu-throttle-increment",
                    "cpu-throttle-tailslow", "max-cpu-throttle", "throttle-trigger-threshold",
                    "max-postcopy-bandwidth")

#: Parameters (QEMU's MigrationParameter names) with QEMU 7.2's defaults.
PARAMETERS: dict[str, Any] = {
    "xbzrle-cache-size": 64 << 20,
    "compress-level": 1,
    "compress-threads": 8,
    "compress-wait-thread": True,
    "decompress-threads": 2,
    "multifd-channels": 2,
    "multifd-compression": "none",
    "multifd-zlib-level": 1,
    "multifd-zstd-level": 1,
    "zero-page-detection": "multifd",  # QEMU 9.0+ only (qemu-version=10.2)
    # auto-converge (mig_throttle_guest_down) and postcopy
    "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10,
    "cpu-throttle-tailslow": False,
    "max-cpu-throttle": 99,
    "throttle-trigger-threshold": 50,
    "max-postcopy-bandwidth": 0,  # bytes/s; 0: no limit
}

#: pagecodec's own parameters, for the codecs QEMU lacks (issue 9). They are not QEMU's: the prefix
#: ``pc-`` says so, and results list them under ``config.extensions`` when set.
PC_PARAMETERS: dict[str, Any] = {
    "pc-zstd-level": 1,         # zstd level of the zstd codecs (negative: zstd's fast levels)
    "pc-zstd-long": 0,          # the delta codecs' zstd stream: 0 = 1 MiB window; N = long-distance matching, 2^N window
    "pc-lz4-acceleration": 1,   # LZ4's fast mode acceleration (1 = LZ4's default; higher is faster, larger)
    "pc-lz4hc-level": 9,        # LZ4 HC level (LZ4HC_CLEVEL_DEFAULT = 9, max 12)
}

#: Parameters that only exist from some QEMU version on: parameter -> the versions that have it.
_VERSIONED_PARAMS = {"zero-page-detection": ("10.2",)}

_SIZE_PARAMS = {"xbzrle-cache-size", "max-postcopy-bandwidth"}
_BOOL_PARAMS = {"compress-wait-thread", "cpu-throttle-tailslow"}
_INT_RANGES = {
    "compress-level": (0, 9),
    "cpu-throttle-initial": (1, 99),  # migrate_params_check
    "cpu-throttle-increment": (1, 99),
    "max-cpu-throttle": (1, 99),
    "throttle-trigger-threshold": (1, 100),
    "compress-threads": (1, 255),
    "decompress-threads": (1, 255),
    "multifd-channels": (1, 255),
    "multifd-zlib-level": (0, 9),
    "multifd-zstd-level": (0, 20),
    "pc-zstd-level": (-131072, 22),  # ZSTD_minCLevel() … ZSTD_maxCLevel() of libzstd 1.5
    "pc-zstd-long": (0, 27),  # checked further by the codecs: 0, or 20 … 27 (128 MiB)
    "pc-lz4-acceleration": (1, 65537),  # LZ4_ACCELERATION_MAX
    "pc-lz4hc-level": (1, 12),
}
_CHOICES = {"multifd-compression": ("none", "zlib", "zstd"), "zero-page-detection": ("none", "legacy", "multifd")}

#: QEMU versions whose rules pagecodec reproduces.
QEMU_VERSIONS = ("7.2", "4.1", "10.2")

_TRUE = {"on", "true", "yes", "1"}
_FALSE = {"off", "false", "no", "0"}
_SIZE_RE = re.compile(r"^(\d+)([kKmMgGtT]?)[bB]?$")


def parse_size(text: str) -> int:
    """'64M' -> 67108864. Plain numbers are bytes."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise ConfigError(f"bad size {text!r} (use a number with an optional K/M/G suffix)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}[m.group(2).lower()]


def _parse_bool(key: str, text: str) -> bool:
    t = text.strip().lower()
    if t in _TRUE:
        return True
    if t in _FALSE:
        return False
    raise ConfigError(f"{key}={text!r}: expected on or off")


@dataclass(frozen=True)
class MigrationConfig:
    """Resolved capabilities and parameters of one migration."""

    capabilities: Mapping[str, bool] = field(default_factory=lambda: dict(CAPABILITIES))
    parameters: Mapping[str, Any] = field(default_factory=lambda: {**PARAMETERS, **PC_PARAMETERS})
    slot_codec_overrides: Mapping[str, str] = field(default_factory=dict)
    qemu_version: str = "7.2"
    label: str = "none"

    def cap(self, name: str) -> bool:
        return bool(self.capabilities.get(name, False))

    def param(self, name: str) -> Any:
        return self.parameters[name]

    def main_thread_zero_detection(self) -> bool:
        """Whether the migration thread looks for zero pages (``save_zero_page``). QEMU 9.0+'s
        ``zero-page-detection``: ``none`` sends zero pages as normal pages; ``multifd`` (the default)
        leaves them to the multifd channels when multifd is on, else to the migration thread."""
        if self.qemu_version != "10.2":
            return True
        zpd = self.param("zero-page-detection")
        return zpd == "legacy" or (zpd == "multifd" and not self.cap("multifd"))

    def slot_codecs(self) -> dict[Slot, str]:
        """Which codec fills each active slot, as QEMU would with these capabilities."""
        slots: dict[Slot, str] = {Slot.RAW: "raw"}
        if self.main_thread_zero_detection():
            slots[Slot.ZERO] = "zero"
        if self.cap("compress"):
            slots[Slot.COMPRESS] = "compress-threads"
        if self.cap("multifd"):
            slots[Slot.MULTIFD] = "multifd"
        if self.cap("xbzrle"):
            slots[Slot.DELTA] = "xbzrle"
        for slot_name, codec in self.slot_codec_overrides.items():
            slots[Slot(slot_name)] = codec
        return {s: slots[s] for s in SLOT_ORDER if s in slots}

    def keys_read(self, codecs: Mapping[str, Any]) -> set[str]:
        """Every SPEC key that can change this migration: the capabilities, ``qemu-version``, the slot
        overrides, what the chain itself reads, and what each active codec reads
        (``codecs[name].parameters_read(self)``; a codec missing from ``codecs`` adds nothing). A
        sweep applies a key only where it is read (``bench --sweep``). The convergence keys
        (:data:`CONVERGENCE_KEYS`) are not among them: they change when pages are sent (``simulate``),
        never the bytes a pass's pages make."""
        keys = (set(CAPABILITIES) - set(CONVERGENCE_KEYS)) | {"qemu-version"} | {f"{s.value}-codec" for s in Slot}
        if self.qemu_version == "10.2":
            keys.add("zero-page-detection")  # main_thread_zero_detection
        for name in self.slot_codecs().values():
            if name in codecs:
                keys.update(codecs[name].parameters_read(self))
        return keys

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "qemu-version": self.qemu_version,
            "capabilities": dict(self.capabilities),
            "parameters": {k: v for k, v in self.parameters.items() if k not in PC_PARAMETERS},
            "slot-codecs": {s.value: c for s, c in self.slot_codecs().items()},
            "extensions": {**{f"{k}-codec": v for k, v in self.slot_codec_overrides.items()},
                           **{k: v for k, v in self.parameters.items() if k in PC_PARAMETERS and v != PC_PARAMETERS[k]}},
        }


def parse_spec(spec: str, presets: Mapping[str, Any] | None = None, _depth: int = 0) -> MigrationConfig:
    """Parse a ``--config`` SPEC into a :class:`MigrationConfig` (ConfigError on anything unknown).

    ``presets`` maps a preset name to an object with a ``spec`` attribute (or to a spec string).
    """
    presets = presets or {}
    caps = dict(CAPABILITIES)
    params = {**PARAMETERS, **PC_PARAMETERS}
    overrides: dict[str, str] = {}
    qemu_version = "7.2"
    items = [s.strip() for s in spec.split(",")] if spec.strip() else []
    if "" in items:  # ',,,' or 'xbzrle,' is a typo, not QEMU's defaults (that is 'none')
        raise ConfigError(f"empty item in config {spec!r} (items are comma-separated; 'none' means QEMU's defaults)")
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip()
        value = value.strip()
        if not eq and key == "none":  # QEMU's defaults: nothing to change
            continue
        if not eq and key in presets and _depth < 4:
            p = presets[key]
            sub = parse_spec(getattr(p, "spec", p), presets, _depth + 1)
            caps.update({k: v for k, v in sub.capabilities.items() if v})
            defaults = {**PARAMETERS, **PC_PARAMETERS}
            params.update({k: v for k, v in sub.parameters.items() if v != defaults.get(k)})
            overrides.update(sub.slot_codec_overrides)
            if sub.qemu_version != "7.2":
                qemu_version = sub.qemu_version
            continue
        if key in CAPABILITIES:
            caps[key] = True if not eq else _parse_bool(key, value)
        elif key in PARAMETERS or key in PC_PARAMETERS:
            if not eq:
                raise ConfigError(f"parameter {key} needs a value ({key}=…)")
            params[key] = _parse_param(key, value)
        elif key == "qemu-version":
            if value not in QEMU_VERSIONS:
                raise ConfigError(f"qemu-version={value!r}: supported are {', '.join(QEMU_VERSIONS)}")
            qemu_version = value
        elif key.endswith("-codec") and key[: -len("-codec")] in {s.value for s in Slot}:
            if not value:
                raise ConfigError(f"{key} needs a codec name")
            overrides[key[: -len("-codec")]] = value
        else:
            known = sorted(list(CAPABILITIES) + list(PARAMETERS) + list(PC_PARAMETERS) + list(presets)
                           + ["qemu-version", "<slot>-codec"])
            raise ConfigError(f"unknown config item {item!r} in {spec!r}; known: {', '.join(known)}")
    _check_combination(caps, params, qemu_version, spec)
    return MigrationConfig(caps, params, overrides, qemu_version, label=spec.strip() or "none")


def _check_combination(caps: Mapping[str, bool], params: Mapping[str, Any], qemu_version: str, spec: str) -> None:
    """Refuse what the modelled QEMU refuses, with QEMU's own words (``migrate_caps_check`` and the
    QAPI schema of that version)."""
    where = f"(qemu-version={qemu_version}, config {spec!r})"
    for key, versions in _VERSIONED_PARAMS.items():
        if params[key] != PARAMETERS[key] and qemu_version not in versions:
            raise ConfigError(f"{key}: QEMU {qemu_version} has no such parameter (it exists in "
                              f"qemu-version={'/'.join(versions)}) {where}")
    if qemu_version == "10.2":
        if caps["compress"]:  # the capability left the QAPI schema in 9.1
            raise ConfigError(f"Parameter 'capability' does not accept value 'compress': QEMU 10.2 has no compress "
                              f"threads (removed in 9.1; use multifd-compression) {where}")
        if caps["multifd"] and caps["xbzrle"]:
            raise ConfigError(f"Multifd is not compatible with xbzrle {where}")
    elif caps["multifd"] and caps["compress"]:
        raise ConfigError(f"Multifd is not compatible with compress (QEMU's migrate_caps_check refuses the pair) {where}")


def _parse_param(key: str, value: str) -> Any:
    if key in _SIZE_PARAMS:
        return parse_size(value)
    if key in _BOOL_PARAMS:
        return _parse_bool(key, value)
    if key in _CHOICES:
        if value not in _CHOICES[key]:
            raise ConfigError(f"{key}={value!r}: choose one of {', '.join(_CHOICES[key])}")
        return value
    try:
        v = int(value, 0)
    except ValueError:
        raise ConfigError(f"{key}={value!r}: expected an integer") from None
    lo, hi = _INT_RANGES[key]
    if not lo <= v <= hi:
        raise ConfigError(f"{key}={v} out of range {lo}..{hi}")
    return v
