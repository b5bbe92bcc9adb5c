"""What input may cost: memory the machine can hold, JSON of bounded depth and size.

A few bytes of a stream or a trace can *claim* anything — a RAM block of 2^63 bytes, JSON nested
100,000 deep — so whatever sizes an allocation or a parse by what the input says checks the claim
here first, and refuses it as bad input (the caller's :class:`~pagecodec.errors.PageCodecError`)
instead of letting the allocator, the OOM killer or Python's recursion limit answer. Nothing here
keeps state: the limits are read from the machine (and the process's ``ulimit -v``) when asked.

This module sits at the top of the package, beside ``atomic``: ``trace/``, ``wire/`` and the chain
all use it, and it imports nothing of pagecodec's.
"""

from __future__ import annotations

import json
import os
import re
import resource
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "JsonLimitError",
    "MAX_JSON_DEPTH",
    "machine_memory",
    "default_max_ram",
    "format_bytes",
    "json_depth",
    "load_json",
]

#: Deepest JSON nesting pagecodec parses. QEMU's vmdesc nests 13 deep (devices, fields, subsections),
#: a trace's metadata 3; the stdlib parser recurses once per level (RecursionError near 1,000 levels,
#: less what the caller's stack already uses), so a bound far below that and far above real data.
MAX_JSON_DEPTH = 100

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)  # a JSON string, escapes included


class JsonLimitError(ValueError):
    """JSON deeper or larger than allowed (a ValueError, as ``json.loads``' own errors are, so a caller
    that turns malformed JSON into its error class turns this into it too)."""


def format_bytes(n: int) -> str:
    """``n`` bytes for a message, in the largest binary unit it reaches: exact when it is a whole
    number of that unit (``64 GiB``), else to one decimal (``23.5 GiB``)."""
    for unit, shift in (("EiB", 60), ("PiB", 50), ("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n >> shift} {unit}" if n % (1 << shift) == 0 else f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def _cgroup_limit() -> int | None:
    """The memory limit of this process's cgroup (v2 ``memory.max``), if it has one."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                v = (Path("/sys/fs/cgroup") / line[3:].lstrip("/") / "memory.max").read_text().strip()
                return None if v == "max" else int(v)
    except (OSError, ValueError):
        pass
    return None


def machine_memory() -> int:
    """Bytes this process could hold at most: the machine's physical memory, or less where the
    process's address-space limit (``ulimit -v``, RLIMIT_AS) or its cgroup says less."""
    try:
        phys = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        phys = 1 << 40
    limits = [phys]
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    cg = _cgroup_limit()
    if cg is not None:
        limits.append(cg)
    return min(limits)


def default_max_ram() -> int:
    """The default for ``--max-ram``: the most guest RAM a destination here may be asked to hold.

    Destination RAM is allocated zeroed and untouched pages cost no memory, so a larger claim is not
    wrong in itself; but every page of it may be written, and its address space must exist. So the
    default is what the machine (or ``ulimit -v``) holds: a stream claiming more is refused by name
    before anything is allocated, and one claiming less but more than the address space left fails
    at allocation, also by name."""
    return machine_memory()


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in the JSON text ``raw``, found without recursion
    (brackets inside strings do not count). Malformed text gives a number too; the parser rejects it."""
    text = _STRING.sub(b'""', raw)
    a = np.frombuffer(text, np.uint8)
    opens = (a == 0x5B) | (a == 0x7B)
    where = np.flatnonzero(opens | (a == 0x5D) | (a == 0x7D))
    if not len(where):
        return 0
    steps = np.where(opens[where], 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max(initial=0))


def load_json(raw: bytes | bytearray | memoryview | str, *, max_bytes: int | None = None,
              max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads`` that cannot recurse without bound nor parse more than ``max_bytes``: raises
    :class:`JsonLimitError` (a ValueError) for text deeper than ``max_depth`` or longer than
    ``max_bytes``, and whatever ``json.loads`` raises for malformed text (ValueError,
    UnicodeDecodeError)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    if max_bytes is not None and len(data) > max_bytes:
        raise JsonLimitError(f"{len(data)} bytes of JSON, more than the {max_bytes} allowed")
    depth = json_depth(data) if data.count(b"[") + data.count(b"{") > max_depth else 0
    if depth > max_depth:
        raise JsonLimitError(f"JSON nested {depth} levels deep, more than the {max_depth} allowed")
    try:
        return json.loads(data)
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH unless the caller's stack is deep
        raise JsonLimitError(f"JSON nested too deeply for this stack ({depth} levels)") from None
