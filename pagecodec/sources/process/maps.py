"""The target's mappings (``/proc/PID/maps`` and ``smaps``) and the RAM blocks chosen among them:
naming, include filters and the ``max_bytes`` cap (water-filling trim)."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pagecodec.sources.process.errors import CaptureError

__all__ = ["Mapping", "Block", "parse_maps", "select_blocks", "PAGE_SIZE", "DEFAULT_MAX_BYTES"]

PAGE_SIZE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096
SPECIAL_MAPPINGS = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]", "[vdso]", "[uprobes]", "[sigpage]"})
DEFAULT_MAX_BYTES = 64 << 20
_MAX_NAME = 255


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/PID/maps`` (plus smaps' KernelPageSize when read from smaps)."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    kernel_page_size: int = PAGE_SIZE

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"

    @property
    def readable(self) -> bool:
        return self.perms[:1] == "r"

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    def describe(self) -> str:
        return f"{self.start:x}-{self.end:x} {self.perms} {self.path or '(anonymous)'}"


def parse_maps(text: str, *, smaps: bool = False) -> list[Mapping]:
    """Mappings of a ``/proc/PID/maps`` text, or of ``/proc/PID/smaps`` with ``smaps=True`` (which
    adds each mapping's ``KernelPageSize``)."""
    out: list[Mapping] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and len(head[1]) == 4 and not head[0].endswith(":"):
            try:
                lo, hi = head[0].split("-")
                start, end = int(lo, 16), int(hi, 16)
                off, inode = int(head[2], 16), int(head[4])
            except ValueError:
                cur = None
                if not smaps:
                    raise CaptureError(f"unparsable maps line: {line!r}") from None
                continue
            if cur is not None:
                out.append(Mapping(**cur))
            cur = dict(start=start, end=end, perms=head[1], offset=off, inode=inode,
                       path=head[5].strip() if len(head) > 5 else "")
        elif smaps and cur is not None and line.startswith("KernelPageSize:"):
            parts = line.split()
            try:
                kps = int(parts[1]) * {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}.get(parts[2], 1)
                cur["kernel_page_size"] = kps
            except (IndexError, ValueError):
                pass
    if cur is not None:
        out.append(Mapping(**cur))
    return out


@dataclass(frozen=True)
class Block:
    """A RAM block of the capture: the first ``size`` bytes of a mapping."""

    name: str
    start: int
    size: int
    mapping: Mapping
    host_page_size: int

    @property
    def end(self) -> int:
        return self.start + self.size


def _base_name(m: Mapping) -> str:
    p = m.path
    if p == "[heap]":
        return "heap"
    if p == "[stack]":
        return "stack"
    if p.startswith("[") and p.endswith("]"):
        return p[1:-1]
    if not p:
        return f"anon@{m.start:x}"
    if p == "/dev/zero (deleted)":  # MAP_SHARED|MAP_ANONYMOUS
        return f"anon-shared@{m.start:x}"
    return f"{p}@{'rws' if m.shared else 'rw'}"


def _fit(name: str, suffix: str = "") -> str:
    """``name + suffix`` within QEMU's 255-byte idstr, keeping the tail (the file name) of long paths."""
    full = name + suffix
    if len(full.encode()) <= _MAX_NAME:
        return full
    tail = full.encode()[-(_MAX_NAME - 3):].decode(errors="ignore")
    return "..." + tail


def _matches(m: Mapping, name: str, filters: Sequence[str]) -> bool:
    for f in filters:
        if f.lower().startswith("0x"):
            try:
                a = int(f, 16)
            except ValueError:
                raise CaptureError(f"include filter {f!r}: not a hex address") from None
            if m.start <= a < m.end:
                return True
        elif fnmatch.fnmatchcase(name, f) or (m.path and fnmatch.fnmatchcase(m.path, f)):
            return True
    return False


def _water_fill(sizes: list[int], budget: int, unit: int) -> int:
    """Largest cap (a multiple of ``unit``) with ``sum(min(s, cap)) <= budget``."""
    if sum(sizes) <= budget:
        return max(sizes, default=0)
    ss = sorted(sizes)
    used = 0
    for i, s in enumerate(ss):
        rest = len(ss) - i
        if used + s * rest > budget:
            return ((budget - used) // rest) // unit * unit
        used += s
    return ss[-1]  # pragma: no cover - unreachable (sum > budget)


def select_blocks(
    mappings: Sequence[Mapping],
    *,
    include: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    page_size: int = PAGE_SIZE,
    resident: Callable[[Mapping], tuple[int, int] | None] | None = None,
) -> tuple[list[Block], list[tuple[str, str]], list[str]]:
    """Choose the RAM blocks among ``mappings``: ``(blocks, skipped [(mapping, reason)], warnings)``.

    ``resident(mapping)`` -> ``(first, end)`` addresses of its resident (or swapped) pages, or None:
    where a trimmed mapping's window is placed (at the first resident page, kept inside the mapping;
    without it, or when nothing is resident, the mapping's first bytes)."""
    skipped: list[tuple[str, str]] = []
    cands: list[tuple[Mapping, str]] = []
    for m in mappings:
        if not m.writable:
            continue
        if m.path in SPECIAL_MAPPINGS:
            skipped.append((m.describe(), "special kernel mapping"))
            continue
        if not m.readable:
            skipped.append((m.describe(), "writable but not readable"))
            continue
        if m.size <= 0 or m.size % page_size:
            skipped.append((m.describe(), f"size {m.size} is not a multiple of the page size {page_size}"))
            continue
        name = _base_name(m)
        if include and not _matches(m, name, include):
            continue
        cands.append((m, name))
    warnings: list[str] = []
    total = sum(m.size for m, _ in cands)
    caps = {id(m): m.size for m, _ in cands}
    if max_bytes is not None and total > max_bytes:
        cap = _water_fill([m.size for m, _ in cands], max_bytes, page_size)
        left = max_bytes - sum(min(m.size, cap) for m, _ in cands)
        trimmed = dropped = 0
        for m, _ in cands:
            if m.size > cap:
                size = cap
                if left >= page_size:  # what the equal share leaves over: a page each, in address order
                    size += page_size
                    left -= page_size
                unit = max(page_size, m.kernel_page_size)
                caps[id(m)] = size // unit * unit
                if caps[id(m)]:
                    trimmed += 1
                else:
                    dropped += 1
                    skipped.append((m.describe(), f"over the {max_bytes} byte cap"))
        kept = sum(caps.values())
        warnings.append(
            f"writable mappings total {total} bytes, over the cap of {max_bytes}: {trimmed} largest trimmed to "
            f"{cap}-{cap + page_size} bytes" + (f", {dropped} skipped" if dropped else "")
            + f"; recording {kept} bytes"
        )
    blocks: list[Block] = []
    seen: set[str] = set()
    for m, name in cands:
        size = caps[id(m)]
        if size <= 0:
            continue
        start = m.start
        if size < m.size and resident is not None:
            span = resident(m)
            if span is not None:
                unit = max(page_size, m.kernel_page_size)
                start = min(max(span[0] // unit * unit, m.start), m.end - size)
        nm = _fit(name)
        if nm in seen:
            nm = _fit(name, f"@{m.start:x}")
        k = 2
        while nm in seen:
            nm = _fit(name, f"@{m.start:x}#{k}")
            k += 1
        seen.add(nm)
        blocks.append(Block(nm, start, size, m, m.kernel_page_size))
        if size < m.size:
            warnings.append(f"block {nm!r}: trimmed to {size} of {m.size} bytes, {start:#x}-{start + size:#x} "
                            f"({m.describe()})")
    return blocks, skipped, warnings
