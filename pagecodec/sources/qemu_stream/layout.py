"""The RAM layout of a multifd capture: the main stream's MEM_SIZE block list as global page indices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


# --- the RAM layout (MEM_SIZE) ----------------------------------------------------------------------
@dataclass
class _Layout:
    page_size: int
    names: list[str]
    lengths: list[int]
    raw_names: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        ps = self.page_size
        self.index = {n: i for i, n in enumerate(self.names)}
        self.starts = np.zeros(len(self.names) + 1, np.int64)
        np.cumsum([ln // ps for ln in self.lengths], out=self.starts[1:])
        self.total = int(self.starts[-1])
        self.raw_names = [n.encode("ascii") for n in self.names]

    def block_of(self, g: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, g, side="right") - 1

    def where(self, g: int) -> str:
        b = int(self.block_of(np.array([g]))[0])
        return f"block {self.names[b]!r} offset {(g - int(self.starts[b])) * self.page_size:#x}"
