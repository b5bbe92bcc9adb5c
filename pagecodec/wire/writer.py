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

from ..atomic import check_output, create_temp, output_error, umask
from ..errors import OutputError

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

    Nothing is created until the first write (or the close of an empty stream): a run refused at
    its start (a bad config, a codec that fails to start) leaves nothing behind, whatever order its
    set-up takes. A path that cannot be written is refused at once (:func:`check_output`), and any
    later failure of the file system raises OutputError. ``abort()`` (or an exception before
    ``close``) removes the temporary file, so a failed run never leaves a partial stream behind.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        check_output(self.path)
        self._tmp: Path | None = None
        self._f: BinaryIO | None = None
        self._closed = False

    def _open(self) -> BinaryIO:
        assert not self._closed, "sink closed"
        if self._f is None:
            fd, tmp = create_temp(self.path)  # mode 0666 less the umask, not mkstemp's 0600; OutputError
            self._tmp = Path(tmp)
            self._f = os.fdopen(fd, "wb")
        return self._f

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        f = self._f if self._f is not None else self._open()
        try:
            f.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from None

    def close(self) -> None:
        if self._closed:
            return
        try:
            f = self._open()
            f.flush()
            os.fsync(f.fileno())
            f.close()
            self._f = None
            assert self._tmp is not None
            os.replace(self._tmp, self.path)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from None
        self._closed = True

    def abort(self) -> None:
        self._closed = True
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)


class _PlainFile:
    """A file inside a :class:`StreamDirectory` (the directory, not the file, is renamed into place),
    opened on its first write."""

    def __init__(self, directory: "StreamDirectory", name: str) -> None:
        self._dir = directory
        self._name = name
        self._f: BinaryIO | None = None
        self._done = False

    def _open(self) -> BinaryIO:
        assert not self._done, "sink closed"
        if self._f is None:
            path = self._dir.make() / self._name
            try:
                self._f = open(path, "wb")
            except OSError as e:
                raise output_error(path, e) from None
        return self._f

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        f = self._f if self._f is not None else self._open()
        try:
            f.write(memoryview(data).cast("B") if isinstance(data, np.ndarray) else data)
        except OSError as e:
            raise output_error(self._dir.path / self._name, e) from None

    def close(self) -> None:
        if self._done:
            return
        f = self._open()  # an empty file is still written
        f.flush()
        os.fsync(f.fileno())
        f.close()
        self._f = None
        self._done = True

    def discard(self) -> None:
        self._done = True
        if self._f is not None:
            self._f.close()
            self._f = None


class StreamDirectory:
    """A multi-connection stream (multifd) as files: ``main.mig`` and ``channel-<k>.bin``, the layout
    ``pagecodec trace import-qemu main.mig --channel channel-0.bin …`` reads and the capture recorder
    writes.

    Written atomically as a whole: into a temporary directory beside ``path``, made at the first
    write (so a run refused at its start leaves nothing), renamed onto ``path`` by :meth:`commit`;
    :meth:`abort` removes it. ``path`` must not exist or be an empty directory, so a run never mixes
    its files with another run's; OutputError names what is in the way."""

    MAIN = "main.mig"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            kind = "a directory that is not empty" if self.path.is_dir() else "a file"
            raise OutputError(f"{self.path}: is {kind}; a multifd stream is written as a new directory "
                              f"({self.MAIN} + channel-<k>.bin)")
        check_output(self.path, directory=True)
        self.tmp: Path | None = None
        self._sinks: list[_PlainFile] = []

    def make(self) -> Path:
        """The temporary directory, made on first use."""
        if self.tmp is None:
            parent = self.path.parent if str(self.path.parent) else Path(".")
            try:
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=parent))
            except OSError as e:
                raise output_error(self.path, e, "cannot create the stream directory") from None
        return self.tmp

    def main(self) -> Sink:
        return self._open(self.MAIN)

    def channel(self, k: int) -> Sink:
        return self._open(f"channel-{k}.bin")

    def _open(self, name: str) -> Sink:
        s = _PlainFile(self, name)
        self._sinks.append(s)
        return s

    def commit(self) -> None:
        try:
            tmp = self.make()
            for s in self._sinks:
                s.close()
            os.chmod(tmp, 0o777 & ~umask())  # mkdtemp's 0700 is for the temporary name only
            if self.path.is_dir():
                self.path.rmdir()  # empty (checked at the start)
            os.replace(tmp, self.path)
        except OSError as e:
            self.abort()
            raise output_error(self.path, e) from None
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        for s in self._sinks:
            s.discard()
        if self.tmp is not None:
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
