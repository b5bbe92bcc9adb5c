"""Counters named as QEMU's query-migrate names them, plus what only an offline replay can measure.

``ram`` holds QEMU's MigrationInfo.ram keys (``transferred``, ``duplicate``, ``normal``,
``normal-bytes``, ``dirty-sync-count``, …) with QEMU 7.2's semantics (QEMU-FACTS.md, "Counters").
Codec slots add their own groups (``xbzrle-cache``, ``compression``, ``multifd``). ``wire`` counts
every byte of the stream by category, ``cpu`` the thread CPU seconds each stage spent; with the
destination decoding too (``bench``, ``verify``), ``cpu_decode`` the destination's per stage.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

__all__ = ["RamCounters", "RoundStats", "MigrationStats", "CpuClock", "StageClock"]


@dataclass
class RamCounters:
    """MigrationStats as query-migrate's ``ram`` object reports it."""

    transferred: int = 0
    duplicate: int = 0
    normal: int = 0
    dirty_sync_count: int = 0
    precopy_bytes: int = 0  # bytes of page records + EOS sent while the guest runs
    multifd_bytes: int = 0  # bytes QEMU charges to the multifd channels (7.2: pages uncompressed + headers)
    downtime_bytes: int = 0  # bytes sent in the completion stage (guest stopped)

    def to_json(self, page_size: int, total: int, seconds: float) -> dict[str, Any]:
        pages = self.duplicate + self.normal
        return {
            "transferred": self.transferred,
            "total": total,
            "duplicate": self.duplicate,
            "normal": self.normal,
            "normal-bytes": self.normal * page_size,
            "dirty-sync-count": self.dirty_sync_count,
            "page-size": page_size,
            "multifd-bytes": self.multifd_bytes,
            "precopy-bytes": self.precopy_bytes,
            "downtime-bytes": self.downtime_bytes,
            "pages-per-second": round(pages / seconds, 1) if seconds > 0 else 0.0,
        }


@dataclass
class RoundStats:
    """What one round (one pass over the dirty pages) sent."""

    round: int
    stage: str  # "bulk", "iterate", "complete"
    dirty_pages: int = 0
    transferred: int = 0
    records: Counter[str] = field(default_factory=Counter)
    wire: Counter[str] = field(default_factory=Counter)
    skipped: int = 0  # pages handled without a record (e.g. XBZRLE: unchanged)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "stage": self.stage,
            "dirty-pages": self.dirty_pages,
            "transferred": self.transferred,
            "records": dict(self.records),
            "wire": dict(self.wire),
            "skipped": self.skipped,
        }


class CpuClock:
    """Thread CPU time per stage (time.thread_time_ns), so work of other threads is not charged."""

    def __init__(self) -> None:
        self.ns: Counter[str] = Counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.thread_time_ns()
        try:
            yield
        finally:
            self.ns[name] += time.thread_time_ns() - t0

    def add(self, name: str, ns: int) -> None:
        self.ns[name] += ns

    def seconds(self) -> dict[str, float]:
        return {k: v / 1e9 for k, v in sorted(self.ns.items())}


class StageClock:
    """Thread CPU time per stage for a loop that changes stage often, such as the receiver's walk over
    records: the clock is read only when the stage changes (:meth:`lap`), so a run of records of one
    kind costs one clock read, not two per record (a read costs ~0.3 µs, as much as a small record).

    Between :meth:`start` and :meth:`stop` every nanosecond of the calling thread goes to the stage
    current at that moment; outside, nothing is charged and :meth:`lap` does nothing. Single-threaded:
    work on other threads is added with :meth:`add`."""

    __slots__ = ("ns", "stage", "_t0", "_depth")

    def __init__(self) -> None:
        self.ns: Counter[str] = Counter()
        self.stage: str | None = None  # None: stopped
        self._t0 = 0
        self._depth = 0

    def start(self, stage: str) -> None:
        """Start charging ``stage``. Nested starts (a public load method calling another) keep the
        current stage and only count, so the clock stops at the outermost :meth:`stop`."""
        self._depth += 1
        if self._depth == 1:
            self.stage = stage
            self._t0 = time.thread_time_ns()

    def stop(self) -> None:
        self._depth -= 1
        if self._depth == 0 and self.stage is not None:
            self.ns[self.stage] += time.thread_time_ns() - self._t0
            self.stage = None

    def lap(self, stage: str) -> None:
        """From now on charge ``stage``; the time since the last read goes to the stage before."""
        cur = self.stage
        if stage == cur or cur is None:
            return
        t = time.thread_time_ns()
        self.ns[cur] += t - self._t0
        self.stage = stage
        self._t0 = t

    @contextmanager
    def within(self, stage: str) -> Iterator[None]:
        """Charge the work inside to ``stage``, then return to the stage before (e.g. an observer's
        multifd channel work inside the main stream's load); timed on its own when stopped."""
        prev = self.stage
        if prev is None:
            self.start(stage)
            try:
                yield
            finally:
                self.stop()
            return
        self.lap(stage)
        try:
            yield
        finally:
            self.lap(prev)

    def add(self, name: str, ns: int) -> None:
        self.ns[name] += ns

    def take(self) -> dict[str, int]:
        """Nanoseconds per stage since the last take (a running clock is read, and keeps running)."""
        cur = self.stage
        if cur is not None:
            t = time.thread_time_ns()
            self.ns[cur] += t - self._t0
            self._t0 = t
        out = {k: v for k, v in self.ns.items() if v}
        self.ns = Counter()
        return out


@dataclass
class MigrationStats:
    """Everything one replay measured."""

    page_size: int
    total_ram: int
    ram: RamCounters = field(default_factory=RamCounters)
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)  # xbzrle-cache, compression, …
    wire: Counter[str] = field(default_factory=Counter)
    records: Counter[str] = field(default_factory=Counter)
    cpu: CpuClock = field(default_factory=CpuClock)
    rounds: list[RoundStats] = field(default_factory=list)
    wall_s: float = 0.0
    pages_offered: int = 0
    page_bytes_offered: int = 0
    channels: list[dict[str, int]] = field(default_factory=list)  # multifd: bytes by kind per channel
    #: The destination's thread CPU per stage (ns; ``wire``, record kinds, ``multifd``), when it decoded.
    decode_cpu_ns: dict[str, int] | None = None
    decode_wall_s: float = 0.0

    def to_json(self) -> dict[str, Any]:
        cpu = self.cpu.seconds()
        gib = self.page_bytes_offered / (1 << 30)
        out: dict[str, Any] = {
            "ram": self.ram.to_json(self.page_size, self.total_ram, self.wall_s),
            **{k: dict(v) for k, v in sorted(self.groups.items())},
            "wire": {"total": sum(self.wire.values()), **dict(sorted(self.wire.items()))},
            "records": dict(sorted(self.records.items())),
            "cpu": cpu,
            "cpu_s_per_gib": {k: (v / gib if gib else 0.0) for k, v in cpu.items()},
            "wall_s": self.wall_s,
            "pages": self.pages_offered,
            "page_bytes": self.page_bytes_offered,
            "rounds": [r.to_json() for r in self.rounds],
        }
        if self.decode_cpu_ns is not None:
            dec = {k: v / 1e9 for k, v in sorted(self.decode_cpu_ns.items())}
            out["cpu_decode"] = dec
            out["cpu_decode_s_per_gib"] = {k: (v / gib if gib else 0.0) for k, v in dec.items()}
            out["decode_wall_s"] = self.decode_wall_s
        if self.channels:
            out["channels"] = [{"channel": k, "bytes": sum(c.values()), **dict(sorted(c.items()))}
                               for k, c in enumerate(self.channels)]
        return out
