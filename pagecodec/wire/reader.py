"""Bounds-checked reading of a migration stream (the load side's QEMUFile).

Every read checks that the bytes exist first and raises :class:`WireError` naming the byte offset and
the source, so a truncated or corrupt stream is reported where it breaks instead of as an IndexError or
a silently short page.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np

from ..errors import WireError

__all__ = ["StreamReader"]


class StreamReader:
    """Cursor over an in-memory (or memory-mapped) stream."""

    def __init__(
        self, data: bytes | bytearray | memoryview | mmap.mmap, source: str | None = None, base: int = 0
    ) -> None:
        """``base`` is the stream offset of ``data[0]`` (for a stream read in chunks): errors add it."""
        self.base = base
        self._mv = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        self._array: np.ndarray | None = None  # made on first use: a reader per extension record is common
        self.source = source
        self.pos = 0

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "StreamReader":
        """Memory-map ``path`` (an empty file maps as zero bytes)."""
        p = Path(path)
        try:
            with open(p, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
        except OSError as e:
            raise WireError(f"cannot read stream: {e.strerror}", source=str(p)) from e
        return cls(data, source=str(p))

    @property
    def _np(self) -> np.ndarray:
        """The stream as a uint8 array (np.frombuffer costs ~2 µs: only readers that need it pay)."""
        if self._array is None:
            self._array = np.frombuffer(self._mv, dtype=np.uint8)
        return self._array

    # -- state ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._mv)

    @property
    def remaining(self) -> int:
        return len(self._mv) - self.pos

    def at_end(self) -> bool:
        return self.pos >= len(self._mv)

    def error(self, message: str, offset: int | None = None) -> WireError:
        """A WireError at ``offset`` (default: the cursor)."""
        return WireError(message, self.base + (self.pos if offset is None else offset), self.source)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self._mv):
            raise self.error(f"truncated stream: {what} needs {n} bytes, {self.remaining} left")

    # -- reads ----------------------------------------------------------------------------------
    def get_byte(self, what: str = "byte") -> int:
        self.need(1, what)
        v = self._mv[self.pos]
        self.pos += 1
        return v

    def get_be16(self, what: str = "be16") -> int:
        return int.from_bytes(self.get_bytes(2, what), "big")

    def get_be32(self, what: str = "be32") -> int:
        return int.from_bytes(self.get_bytes(4, what), "big")

    def get_be64(self, what: str = "be64") -> int:
        return int.from_bytes(self.get_bytes(8, what), "big")

    def get_bytes(self, n: int, what: str = "bytes") -> memoryview:
        """``n`` bytes as a view (no copy)."""
        self.need(n, what)
        v = self._mv[self.pos : self.pos + n]
        self.pos += n
        return v

    def get_array(self, n: int, what: str = "bytes") -> np.ndarray:
        """``n`` bytes as a read-only uint8 array view."""
        self.need(n, what)
        v = self._np[self.pos : self.pos + n]
        self.pos += n
        return v

    def get_counted_string(self, what: str = "idstr") -> str:
        """u8 length + bytes, as QEMU's idstr fields."""
        n = self.get_byte(f"{what} length")
        raw = bytes(self.get_bytes(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not ASCII: {raw!r}", self.pos - n) from None

    def peek_byte(self) -> int | None:
        return self._mv[self.pos] if self.pos < len(self._mv) else None

    def view_np(self) -> np.ndarray:
        """The whole stream as a uint8 array (for vectorised scans of record runs)."""
        return self._np
