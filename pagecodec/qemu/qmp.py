"""A small synchronous QMP client over a UNIX socket.

The protocol work (greeting, ``qmp_capabilities`` negotiation, command ids, matching replies, queueing
events) is done by ``qemu.qmp``, the QEMU project's own QMP library (LGPLv2+, on PyPI). Its client is
asyncio-based; this module runs it on a private event loop so the rest of pagecodec (and click) stays
synchronous, and turns every failure into one :class:`~pagecodec.qemu.QemuError` naming the socket and
the command: connection refused or QEMU gone, a command QEMU rejected (with QEMU's error class and
description), or no reply within the timeout. (``qemu.qmp.legacy`` offers a synchronous shim too, but it
is GPLv2-only and meant for QEMU's iotests; we only use the LGPL ``QMPClient``.)

    with QMP("/tmp/vm/qmp.sock") as qmp:
        qmp.execute("migrate-set-parameters", max_bandwidth=1 << 20)   # → "max-bandwidth"
        qmp.execute("migrate", uri="exec:cat > /tmp/x.mig")
        ev = qmp.wait_event("MIGRATION", timeout=30, match=lambda e: e["data"]["status"] == "completed")
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import ExecuteError, QMPClient, QMPError

from . import QemuError

__all__ = ["QMP", "QMPCommandError", "DEFAULT_TIMEOUT"]

DEFAULT_TIMEOUT = 30.0
_T = TypeVar("_T")

# qemu.qmp logs a warning for every unexpected hang-up (e.g. QEMU exiting after a failed incoming
# migration); we report those ourselves, with QEMU's stderr, as errors.
logging.getLogger("qemu.qmp").setLevel(logging.ERROR)


class QMPCommandError(QemuError):
    """QEMU answered a command with an error: ``error_class`` (e.g. ``GenericError``) and ``desc``."""

    def __init__(self, socket_path: str, command: str, error_class: str, desc: str) -> None:
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"QMP {socket_path}: {command!r} failed: {error_class}: {desc}")


class QMP:
    """A QMP session on a UNIX socket (``-qmp unix:PATH,server=on,wait=off``).

    ``execute(cmd, **args)`` sends a command and returns its ``return`` value. Argument names are QMP's
    with ``_`` written for ``-`` (``max_bandwidth`` → ``max-bandwidth``); pass ``arguments={...}`` for
    names that really contain an underscore. Events that arrive while commands run are queued and read
    with :meth:`events` / :meth:`wait_event`.
    """

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = 10.0, alive: Callable[[], str | None] | None = None) -> None:
        """``alive`` (optional) returns None while QEMU runs, or why it stopped (e.g. its stderr): it
        stops connection retries early and is added to errors."""
        self.path = str(path)
        self.timeout = timeout
        self._alive = alive
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(Path(self.path).name)
        self.greeting: dict[str, Any] | None = None
        self._connect(connect_timeout)

    # --- plumbing ----------------------------------------------------------------------------------
    def _run(self, coro: Any, timeout: float | None, what: str) -> Any:
        if self._loop.is_closed():
            coro.close()
            raise QemuError(f"QMP {self.path}: {what}: the session is closed")
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except asyncio.TimeoutError:
            raise QemuError(f"QMP {self.path}: {what}: no answer within {timeout:g} s{self._why()}") from None
        except ExecuteError as e:
            raise QMPCommandError(self.path, what, e.error_class, str(e)) from None
        except (QMPError, EOFError, OSError) as e:
            raise QemuError(f"QMP {self.path}: {what}: {type(e).__name__}: {e}{self._why()}") from None

    def _why(self) -> str:
        if self._alive is None:
            return ""
        reason = self._alive()
        return f" ({reason})" if reason else ""

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            reason = self._alive() if self._alive else None
            if reason:
                self._loop.close()
                raise QemuError(f"QMP {self.path}: cannot connect: {reason}")
            if os.path.exists(self.path):
                try:
                    self._loop.run_until_complete(asyncio.wait_for(self._client.connect(self.path), timeout))
                    break
                except (QMPError, OSError, asyncio.TimeoutError) as e:
                    last = e
            if time.monotonic() >= deadline:
                self._loop.close()
                if last is None:
                    detail = "the socket never appeared"
                elif isinstance(last, asyncio.TimeoutError):
                    detail = "no QMP greeting (is another client connected? a QMP socket serves one at a time)"
                else:
                    detail = f"{type(last).__name__}: {last}"
                raise QemuError(f"QMP {self.path}: cannot connect within {timeout:g} s: {detail}")
            time.sleep(0.05)
        g = self._client.greeting
        self.greeting = dict(g._asdict()) if g is not None else None

    # --- API ---------------------------------------------------------------------------------------
    def execute(self, cmd: str, arguments: Mapping[str, Any] | None = None, *, timeout: float | None = None,
                **args: Any) -> Any:
        """Run ``cmd``; returns QMP's ``return`` value. Raises :class:`QMPCommandError` on an error reply,
        :class:`QemuError` on timeout or hang-up."""
        merged: dict[str, Any] = dict(arguments or {})
        merged.update({k.replace("_", "-"): v for k, v in args.items()})
        return self._run(self._client.execute(cmd, merged or None), self.timeout if timeout is None else timeout, cmd)

    def hmp(self, command_line: str, *, timeout: float | None = None) -> str:
        """A human-monitor command (e.g. ``info ramblock``); returns its text output."""
        out = self.execute("human-monitor-command", {"command-line": command_line}, timeout=timeout)
        return str(out)

    def events(self) -> list[dict[str, Any]]:
        """Every event received so far and not yet taken (clears the queue)."""
        self._run(asyncio.sleep(0), 1.0, "reading events")  # let the reader task drain the socket
        return [dict(e) for e in self._client.events.clear()]

    def wait_event(self, name: str | None = None, *, timeout: float | None = None,
                   match: Callable[[dict[str, Any]], bool] | None = None) -> dict[str, Any]:
        """The next queued or arriving event with this ``name`` (any if None) for which ``match`` holds;
        other events are dropped. Raises :class:`QemuError` after ``timeout`` seconds."""
        timeout = self.timeout if timeout is None else timeout

        async def find() -> dict[str, Any]:
            while True:
                ev = dict(await self._client.events.get())
                if (name is None or ev.get("event") == name) and (match is None or match(ev)):
                    return ev

        return self._run(find(), timeout, f"waiting for event {name or '(any)'}")

    def close(self) -> None:
        """Disconnect (errors from a QEMU that already exited are ignored)."""
        if self._loop.is_closed():
            return
        try:
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 5.0))
        except (QMPError, EOFError, OSError, asyncio.TimeoutError):
            pass
        finally:
            self._loop.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
