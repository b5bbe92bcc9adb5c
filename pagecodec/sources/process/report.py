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
    round_times: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    launched: bool = False
    exit_status: int | None = None

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
        d["skipped"] = [list(s) for s in self.skipped]
        return d
