"""Capturing a live QEMU's multifd migration over QMP (``pagecodec capture qemu --multifd N``).

**Capture** (:func:`capture_multifd`, ``pagecodec capture qemu --multifd N``): pagecodec listens on
127.0.0.1 (ephemeral port), switches ``multifd`` on at the source with ``multifd-channels`` and
``multifd-compression``, runs ``migrate uri=tcp:127.0.0.1:PORT`` and records each accepted connection
to its own file, named by its first bytes (QEVM → ``main.mig``; multifd magic → ``channel-<id>.bin``).
See :mod:`pagecodec.sources.qemu_live.recorder` for the recorder and its tee mode.

**Playing** (:class:`MultifdPlayer`): the reverse, for pagecodec's own multifd output
(``replay --qemu-stream DIR``) or a kept capture — ``main.mig`` and ``channel-<k>.bin`` sent to a
destination listening with :func:`listen_multifd_incoming`.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collections.abc import Sequence

from ...qemu import QemuError
from ...qemu.migrate import MigrationResult, MigrationSettings, configure, wait_for_migration
from ...wire.multifd import COMPRESSION_FLAGS
from ..qemu_stream.multifd import import_multifd
from .recorder import StreamRecorder
from .session import CaptureResult, capture_command, open_session

# --- capture over QMP -------------------------------------------------------------------------------
def multifd_parameters(channels: int, compression: str = "none", level: int | None = None) -> dict[str, Any]:
    """``migrate-set-parameters`` arguments for multifd (QMP names)."""
    if compression not in COMPRESSION_FLAGS:
        raise ValueError(f"multifd compression {compression!r}: choose from {', '.join(COMPRESSION_FLAGS)}")
    p: dict[str, Any] = {"multifd-channels": channels, "multifd-compression": compression}
    if level is not None and compression != "none":
        p[f"multifd-{compression}-level"] = level
    return p


def listen_multifd_incoming(qmp: Any, channels: int, compression: str = "none", *, host: str = "127.0.0.1",
                            level: int | None = None) -> tuple[str, int]:
    """Make a destination started with ``-incoming defer`` listen for a multifd migration on ``host``
    (ephemeral port); returns (host, port)."""
    qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    qmp.execute("migrate-set-parameters", arguments=multifd_parameters(channels, compression, level))
    qmp.execute("migrate-incoming", uri=f"tcp:{host}:0")
    for addr in qmp.execute("query-migrate").get("socket-address", []):
        if addr.get("type") in ("inet", "socket") and "port" in addr:
            return addr.get("host", host), int(addr["port"])
    raise QemuError("the destination did not report its listening port (query-migrate socket-address)")


class MultifdPlayer:
    """Plays a multifd migration's files into a listening destination over loopback TCP.

    The main stream goes on the first connection (a 7.2 destination takes its first connection as the
    main stream, whatever it carries), then each channel file on a connection of its own; each
    connection is written by its own thread, because the destination's main thread stops at every
    sync point until every channel has delivered its SYNC packet, so no file can be written out in one
    go before the others. ``join`` waits for all writers and raises QemuError naming the file that failed.

        with MultifdPlayer(listen_multifd_incoming(dst.qmp, 2), main, [c0, c1]) as player:
            ... wait until the destination reports completed ...
            player.join()
    """

    def __init__(self, address: tuple[str, int], main: str | os.PathLike[str],
                 channels: Sequence[str | os.PathLike[str]], *, connect_timeout: float = 10.0,
                 chunk: int = 1 << 20) -> None:
        self.files = [Path(main), *(Path(c) for c in channels)]
        self.chunk = chunk
        self.errors: list[str] = []
        self.socks: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        for path in self.files:  # connect in order, each starts writing at once
            try:
                s = socket.create_connection(address, timeout=connect_timeout)
            except OSError as e:
                self.close()
                raise QemuError(f"cannot connect to the destination {address[0]}:{address[1]} for {path}: {e}") from e
            s.settimeout(None)
            self.socks.append(s)
            t = threading.Thread(target=self._send, args=(path, s), name=f"pagecodec-play-{path.name}", daemon=True)
            self.threads.append(t)
            t.start()

    def _send(self, path: Path, s: socket.socket) -> None:
        try:
            with open(path, "rb") as f:
                while True:
                    data = f.read(self.chunk)
                    if not data:
                        break
                    s.sendall(data)
        except OSError as e:
            self.errors.append(f"{path}: {e}")

    def join(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for t, path in zip(self.threads, self.files):
            t.join(max(0.0, deadline - time.monotonic()))
            if t.is_alive():
                raise QemuError(f"{path}: still being sent after {timeout:g} s (the destination stopped reading)")
        if self.errors:
            raise QemuError(f"sending to the destination failed: {self.errors[0]}")

    def close(self) -> None:
        for s in self.socks:
            try:
                s.close()
            except OSError:
                pass

    def __enter__(self) -> MultifdPlayer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def capture_multifd(
    qmp_socket: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    channels: int = 2,
    compression: str = "none",
    compression_level: int | None = None,
    max_bandwidth: int = 1 << 20,
    downtime_limit: int = 1,
    passes: int | None = 5,
    cont: bool = False,
    keep_dir: str | os.PathLike[str] | None = None,
    timeout: float = 300.0,
    progress: Callable[[Any], None] | None = None,
    qmp: Any = None,
    connect_timeout: float = 5.0,
    forward_to: tuple[str, int] | None = None,
    poll: float = 0.1,
) -> Any:
    """Migrate the VM behind ``qmp_socket`` with multifd to pagecodec's recorder and import the capture.

    Like :func:`pagecodec.sources.qemu_live.capture.capture_qemu` (low bandwidth and downtime so QEMU makes several
    passes; limits raised after ``passes`` dirty syncs), with ``channels`` multifd channels and
    ``compression`` (none, zlib, zstd). ``keep_dir``: keep ``main.mig`` and ``channel-<k>.bin`` there.
    ``forward_to``: also migrate to a real destination (listening, see :func:`listen_multifd_incoming`).
    The source's multifd capability is switched off again afterwards. Returns a
    :class:`~pagecodec.sources.qemu_live.session.CaptureResult` whose ``imported`` is a :class:`MultifdImportReport`."""
    if not 1 <= channels <= 255:
        raise QemuError(f"multifd channels {channels}: QEMU takes 1..255")
    output = Path(output)
    settings = MigrationSettings(max_bandwidth=max_bandwidth, downtime_limit=downtime_limit,
                                 finish_after_passes=passes,
                                 parameters=multifd_parameters(channels, compression, compression_level))
    caps = [dict(c, state=True) if c["capability"] == "multifd" else c for c in settings.capability_list()]
    session, own = open_session(qmp, qmp_socket, connect_timeout, "capture_multifd")
    parent = output.resolve().parent
    tmpdir = Path(tempfile.mkdtemp(prefix=".pagecodec-capture-", dir=parent))
    command = capture_command(qmp_socket, output, settings) + f" --multifd {channels}"
    if compression != "none":
        command += f" --multifd-compression {compression}"
    try:
        current = session.execute("query-migrate").get("status")
        if current in ("setup", "active", "device", "pre-switchover", "cancelling", "wait-unplug"):
            raise QemuError(f"a migration is already {current}")
        rec = StreamRecorder(tmpdir / "rec", forward_to=forward_to)
        try:
            configure(session, settings, caps)
            t0 = time.monotonic()
            session.execute("migrate", uri=rec.uri)
            last, finished_early = wait_for_migration(
                session, settings, t0, progress=progress, timeout=timeout, poll=poll,
                failed=lambda p: (f"multifd migration to {rec.uri} {p.status}: "
                                  f"{p.info.get('error-desc', 'no error-desc')}"
                                  + (f"; recorder: {rec.errors[0]}" if rec.errors else "")),
                timed_out=lambda p: (f"multifd migration not completed after {timeout:g} s (status "
                                     f"{p.status}, {p.passes} passes); cancelled"))
            files = rec.finish(1 + channels, timeout=30)
        finally:
            rec.close()
        if len(files.channels) != channels:
            raise QemuError(f"recorded {len(files.channels)} multifd channels, expected {channels}")
        total = sum(files.bytes.values())
        main_path, chan_paths = files.main, list(files.channels)
        kept = None
        if keep_dir is not None:  # keep the recording even if the import fails
            kept = Path(keep_dir)
            kept.mkdir(parents=True, exist_ok=True)
            for p in [files.main, *files.channels]:
                shutil.move(str(p), str(kept / p.name))
            main_path, chan_paths = kept / files.main.name, [kept / p.name for p in files.channels]
        resumed = False
        try:
            imported = import_multifd(main_path, chan_paths, output, command=command)
        finally:
            if cont:
                session.execute("cont")
                resumed = True
        mig = MigrationResult(main_path, total, last.passes, last.transferred, last.elapsed, finished_early, last.info)
        return CaptureResult(output, mig, kept, imported, resumed)
    finally:
        try:
            if session.execute("query-migrate").get("status") not in ("setup", "active", "device", "cancelling"):
                session.execute("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": False}])
        except QemuError:
            pass
        shutil.rmtree(tmpdir, ignore_errors=True)
        if own:
            session.close()
