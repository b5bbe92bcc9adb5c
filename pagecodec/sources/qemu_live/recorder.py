"""Recording a multifd migration over loopback TCP, one file per connection, optionally as a tee proxy.

The recorder names each connection's file by its first bytes (QEVM → ``main.mig``; multifd magic →
``channel-<id>.bin``). Without the return-path capability a 7.2 precopy source never reads from its
connections, so a recorder that only reads is enough and QEMU completes. With ``forward_to`` the recorder
is a tee proxy to a real destination (``-incoming defer`` with the same multifd settings, see
:func:`~pagecodec.sources.qemu_live.multifd.listen_multifd_incoming`): every connection is forwarded both ways
and the source → destination bytes are recorded. A 7.2 destination takes its *first* connection as the
main stream (it does not look at the magic), so the proxy connects to the destination in the order it
accepts from the source.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...wire.flags import QEMU_VM_FILE_MAGIC
from ...wire.multifd import INIT_PACKET_SIZE, MULTIFD_MAGIC

# --- recording over TCP -----------------------------------------------------------------------------
@dataclass
class _Conn:
    n: int
    path: Path
    src: socket.socket
    dst: socket.socket | None
    bytes: int = 0
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    back_done: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedCapture:
    """The files of a recorded multifd migration."""

    main: Path
    channels: list[Path]
    bytes: dict[str, int]


class StreamRecorder:
    """A loopback TCP listener recording every migration connection (source → destination bytes) to its own
    file; with ``forward_to=(host, port)`` also a tee proxy to a real destination.

        with StreamRecorder(workdir) as rec:
            qmp.execute("migrate", uri=rec.uri)
            ... wait for completed ...
            files = rec.finish(connections=1 + channels, timeout=30)
    """

    def __init__(self, directory: str | os.PathLike[str], *, forward_to: tuple[str, int] | None = None,
                 host: str = "127.0.0.1", port: int = 0, chunk: int = 1 << 20) -> None:
        self.dir = Path(directory)
        self.forward_to = forward_to
        self.host = host
        self.chunk = chunk
        self.conns: list[_Conn] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sock = socket.create_server((host, port), backlog=64)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="pagecodec-recorder", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def __enter__(self) -> StreamRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept_loop(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                s, _ = self._sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            s.settimeout(None)
            dst = None
            if self.forward_to is not None:
                # connect now, in accept order: a 7.2 destination takes its first connection as the main stream
                try:
                    dst = socket.create_connection(self.forward_to, timeout=10)
                    dst.settimeout(None)
                except OSError as e:
                    self.errors.append(f"cannot connect to the destination {self.forward_to[0]}:{self.forward_to[1]}: {e}")
                    s.close()
                    continue
            c = _Conn(len(self.conns), self.dir / f"conn-{len(self.conns)}.raw", s, dst)
            t = threading.Thread(target=self._pump, args=(c,), name=f"pagecodec-rec-{c.n}", daemon=True)
            c.threads.append(t)
            if dst is not None:
                tb = threading.Thread(target=self._pump_back, args=(c,), name=f"pagecodec-rec-{c.n}-back", daemon=True)
                c.threads.append(tb)
            else:
                c.back_done.set()
            with self._lock:
                self.conns.append(c)
            for th in c.threads:
                th.start()

    def _pump(self, c: _Conn) -> None:
        try:
            with open(c.path, "wb") as f:
                while True:
                    try:
                        data = c.src.recv(self.chunk)
                    except OSError as e:
                        c.error = f"reading from the source: {e}"
                        break
                    if not data:
                        break
                    f.write(data)
                    c.bytes += len(data)
                    if c.dst is not None:
                        try:
                            c.dst.sendall(data)
                        except OSError as e:
                            c.error = f"forwarding to the destination: {e}"
                            break
        finally:
            if c.dst is not None:
                try:
                    c.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            c.done.set()

    def _pump_back(self, c: _Conn) -> None:
        assert c.dst is not None
        try:
            while True:
                try:
                    data = c.dst.recv(self.chunk)
                except OSError:
                    break
                if not data:
                    break
                try:
                    c.src.sendall(data)
                except OSError:
                    break
        finally:
            try:
                c.src.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            c.back_done.set()

    def wait(self, connections: int, timeout: float) -> None:
        """Wait until ``connections`` connections were accepted and each source closed its side."""
        from ...qemu import QemuError

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                conns = list(self.conns)
            if len(conns) >= connections and all(c.done.is_set() for c in conns):
                return
            if self.errors:
                raise QemuError(f"recording the migration: {self.errors[0]}")
            if time.monotonic() > deadline:
                open_ = [c.n for c in conns if not c.done.is_set()]
                raise QemuError(f"recording the migration: {len(conns)} of {connections} connections after "
                                f"{timeout:g} s" + (f", still open: {open_}" if open_ else ""))
            time.sleep(0.02)

    def finish(self, connections: int, timeout: float = 30.0) -> RecordedCapture:
        """Wait for the connections to end, then name the files by their first bytes: ``main.mig`` (QEVM)
        and ``channel-<id>.bin`` (multifd initial packet)."""
        from ...qemu import QemuError

        self.wait(connections, timeout)
        errs = [f"connection {c.n}: {c.error}" for c in self.conns if c.error]
        if errs:
            raise QemuError("recording the migration: " + "; ".join(errs))
        main: Path | None = None
        chans: dict[int, Path] = {}
        sizes: dict[str, int] = {}
        for c in self.conns:
            with open(c.path, "rb") as f:
                head = f.read(INIT_PACKET_SIZE)
            magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
            if magic == QEMU_VM_FILE_MAGIC:
                if main is not None:
                    raise QemuError(f"recording the migration: two connections start with QEVM ({main}, {c.path})")
                main = self.dir / "main.mig"
                c.path.replace(main)
                sizes[main.name] = c.bytes
            elif magic == MULTIFD_MAGIC and len(head) >= 25:
                cid = head[24]
                if cid in chans:
                    raise QemuError(f"recording the migration: two connections claim multifd channel {cid}")
                p = self.dir / f"channel-{cid}.bin"
                c.path.replace(p)
                chans[cid] = p
                sizes[p.name] = c.bytes
            else:
                raise QemuError(f"recording the migration: connection {c.n} starts with {head[:8].hex() or 'nothing'}"
                                f", neither QEVM nor the multifd magic")
        if main is None:
            raise QemuError("recording the migration: no connection carried the main stream (QEVM)")
        return RecordedCapture(main, [chans[k] for k in sorted(chans)], sizes)

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        self._thread.join(5)
        for c in self.conns:
            for s in (c.src, c.dst):
                if s is None:
                    continue
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            for t in c.threads:
                t.join(5)
