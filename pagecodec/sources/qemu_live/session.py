"""What both kinds of QEMU capture share: the QMP session, the provenance command line, the result."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...qemu import QemuError
from ...qemu.migrate import MigrationResult, MigrationSettings
from ...qemu.qmp import QMP

__all__ = ["CaptureResult", "capture_command", "open_session"]


@dataclass(frozen=True)
class CaptureResult:
    trace: Path
    migration: MigrationResult
    stream: Path | None      # kept stream file, if asked for
    imported: Any            # what import_qemu_stream returned
    resumed: bool


def capture_command(qmp_socket: Any, output: Any, settings: MigrationSettings) -> str:
    """The ``pagecodec capture qemu`` command line equivalent to a capture (trace provenance)."""
    args = ["pagecodec", "capture", "qemu", "--qmp", str(qmp_socket or "SOCKET"), "-o", str(output),
            "--max-bandwidth", str(settings.max_bandwidth), "--downtime-limit", str(settings.downtime_limit),
            "--passes", str(settings.finish_after_passes or 0)]
    for c in settings.capabilities:
        args += ["--capability", c]
    if settings.xbzrle_cache_size is not None:
        args += ["--xbzrle-cache-size", str(settings.xbzrle_cache_size)]
    for k, v in settings.parameters.items():
        args += ["--parameter", f"{k}={v}"]
    return " ".join(shlex.quote(a) for a in args)


def open_session(qmp: QMP | None, qmp_socket: str | os.PathLike[str] | None, connect_timeout: float,
                 caller: str) -> tuple[QMP, bool]:
    """The QMP session a capture uses: ``qmp`` if given, else a new one to ``qmp_socket``; True if the
    session is the caller's to close."""
    if qmp is not None:
        return qmp, False
    if qmp_socket is None:
        raise QemuError(f"{caller}: give a QMP socket or an open session")
    return QMP(qmp_socket, connect_timeout=connect_timeout), True
