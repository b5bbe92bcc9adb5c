"""The sending side's QEMUFile: real bytes out, every byte counted by category.

QEMU's QEMUFile buffers and counts what it writes; here a :class:`WireWriter` appends bytes to a sink
(memory, a file, or nothing when only sizes matter) and keeps ``bytes_by_kind`` so that the harness can
say where the bandwidth went (page records by kind, EOS markers, section framing, setup).
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

from ..atomic import create_temp, umask
from ..errors import PageCodecError

__all__ = ["Sink", "MemorySink", "NullSink", "FileSink", "StreamDirectory", "WireWriter"]


class Sink(Protocol):
    """Where wire bytes go."""

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None: ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps the stream in memory (``getvalue()``), for verification and tests."""

    def __init__(self) -> None:
        self._buf = io.BytesIO()

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        self._buf.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)

    def getvalue(self) -> bytes:
        return self._buf.getvalue()

    def getbuffer(self) -> memoryview:
        """A view on the stream without copying it."""
        return self._buf.getbuffer()

    def take(self) -> bytes:
        """Everything written since the last take (the verifier feeds the receiver chunk by chunk)."""
        data = self._buf.getvalue()
        self._buf = io.BytesIO()
        return data

    def close(self) -> None:
        pass


class NullSink:
    """Discards the bytes: for benchmarks that only need sizes."""

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        pass

    def close(self) -> None:
        pass


class FileSink:
    """Writes to ``path`` atomically: a temporary file beside it, renamed on a successful close.

    ``abort()`` (or an exception before ``close``) removes the temporary file, so a failed run never
    leaves a partial stream behind.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd, tmp = create_temp(self.path)  # mode 0666 less the umask, not mkstemp's 0600
        self._tmp = Path(tmp)
        self._f: BinaryIO | None = os.fdopen(fd, "wb")

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        assert self._f is not None, "sink closed"
        self._f.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)

    def close(self) -> None:
        if self._f is None:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._f = None
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._tmp.unlink(missing_ok=True)


class _PlainFile:
    """A file inside a :class:`StreamDirectory` (the directory, not the file, is renamed into place)."""

    def __init__(self, path: Path) -> None:
        self._f: BinaryIO | None = open(path, "wb")

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        assert self._f is not None, "sink closed"
        self._f.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)

    def close(self) -> None:
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self._f = None


class StreamDirectory:
    """A multi-connection stream (multifd) as files: ``main.mig`` and ``channel-<k>.bin``, the layout
    ``pagecodec trace import-qemu main.mig --channel channel-0.bin …`` reads and the capture recorder
    writes.

    Written atomically as a whole: into a temporary directory beside ``path``, renamed onto ``path``
    by :meth:`commit`; :meth:`abort` removes it. ``path`` must not exist or be an empty directory, so
    a run never mixes its files with another run's."""

    MAIN = "main.mig"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            kind = "a directory that is not empty" if self.path.is_dir() else "a file"
            raise PageCodecError(f"{self.path}: is {kind}; a multifd stream is written as a new directory "
                          f"({self.MAIN} + channel-<k>.bin)")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
        self._sinks: list[_PlainFile] = []

    def main(self) -> Sink:
        return self._open(self.MAIN)

    def channel(self, k: int) -> Sink:
        return self._open(f"channel-{k}.bin")

    def _open(self, name: str) -> Sink:
        s = _PlainFile(self.tmp / name)
        self._sinks.append(s)
        return s

    def commit(self) -> None:
        for s in self._sinks:
            s.close()
        os.chmod(self.tmp, 0o777 & ~umask())  # mkdtemp's 0700 is for the temporary name only
        if self.path.is_dir():
            self.path.rmdir()  # empty (checked at the start)
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        for s in self._sinks:
            if s._f is not None:
                s._f.close()
                s._f = None
        shutil.rmtree(self.tmp, ignore_errors=True)


class WireWriter:
    """Big-endian put_* helpers over a sink, with byte counts per category.

    ``kind`` names the category a write is charged to: page record kinds (``zero``, ``page``,
    ``xbzrle``, ``compress``), ``eos``, ``mem_size`` (setup), ``section`` (QEVM framing).
    """

    def __init__(self, sink: Sink | None = None) -> None:
        self.sink: Sink = sink if sink is not None else MemorySink()
        self.bytes_by_kind: Counter[str] = Counter()
        self.records_by_kind: Counter[str] = Counter()
        self.position = 0

    def put(self, data: bytes | bytearray | memoryview | np.ndarray, kind: str) -> None:
        n = data.nbytes if isinstance(data, (np.ndarray, memoryview)) else len(data)
        if n:
            self.sink.write(data)
            self.position += n
            self.bytes_by_kind[kind] += n

    def put_counted(self, data: np.ndarray, bytes_by_kind: dict[str, int], records_by_kind: dict[str, int]) -> None:
        """Write an assembled run of records whose bytes are already split by kind."""
        if data.nbytes:
            self.sink.write(data)
            self.position += data.nbytes
        self.bytes_by_kind.update(bytes_by_kind)
        self.records_by_kind.update(records_by_kind)

    def put_byte(self, v: int, kind: str) -> None:
        self.put(bytes((v & 0xFF,)), kind)

    def put_be32(self, v: int, kind: str) -> None:
        self.put((v & 0xFFFFFFFF).to_bytes(4, "big"), kind)

    def put_be64(self, v: int, kind: str) -> None:
        self.put((v & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big"), kind)

    def count_records(self, kind: str, n: int = 1) -> None:
        self.records_by_kind[kind] += n

    def close(self) -> None:
        self.sink.close()
