"""What a process capture did: its blocks, method, skips and notes."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["BlockReport", "ProcessCaptureReport"]


@dataclass(frozen=True)
class BlockReport:
    name: str
    start: int
    size: int
    mapping_start: int
    mapping_size: int
    host_page_size: int
    perms: str
    path: str


@dataclass
class ProcessCaptureReport:
    """What a capture did: the trace, the blocks, the dirty-detection method and everything it skipped."""

    trace: Path
    pid: int
    target: list[str]
    command: str
    method: str
    method_reason: str
    kernel: str
    frozen: bool
    rounds: int
    pages_per_round: list[int]
    page_size: int
    ram_bytes: int
    blocks: list[BlockReport]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: log time of each round (the trace's round_time_s): the process's running time since round 0
    round_times: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    launched: bool = False
    exit_status: int | None = None
    #: seconds the capture held the process stopped while reading rounds (excluded from round_times)
    frozen_s: float = 0.0

    @property
    def duration_s(self) -> float:
        """The log's duration: the process's running time from round 0 to the last round."""
        return self.round_times[-1] if self.round_times else 0.0

    @property
    def pages(self) -> int:
        return sum(self.pages_per_round)

    def block(self, address: int) -> BlockReport:
        """The block holding ``address`` (KeyError if none)."""
        for b in self.blocks:
            if b.start <= address < b.start + b.size:
                return b
        raise KeyError(f"no block holds address {address:#x}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["trace"] = str(self.trace)
        d["pages"] = self.pages
        d["duration_s"] = self.duration_s
        d["skipped"] = [list(s) for s in self.skipped]
        return d
