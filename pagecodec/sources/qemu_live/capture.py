"""``pagecodec capture qemu``: a trace from a running QEMU, over QMP.

Migrates the guest to a temporary file with every page capability off (or the chosen ones) at a low
``max-bandwidth`` and a tiny ``downtime-limit`` so that QEMU makes several passes over RAM, raises the
limits after ``passes`` dirty-bitmap syncs so the migration completes, and imports the stream into a
trace with :func:`pagecodec.sources.qemu_stream.import_qemu_stream`. The guest is left paused
(``postmigrate``) unless ``cont`` is asked for.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...qemu import QemuError
from ...qemu.migrate import MigrationSettings, Progress, migrate_to_file
from ...qemu.qmp import QMP
from ..qemu_stream import import_qemu_stream
from .multifd import capture_multifd
from .session import CaptureResult, capture_command, open_session

__all__ = ["capture_qemu", "import_stream"]


def import_stream(stream: str | os.PathLike[str], trace: str | os.PathLike[str], command: str | None = None) -> Any:
    """Import a QEMU migration stream file into a trace; ``command`` is the provenance to record."""
    return import_qemu_stream(stream, trace, command=command)


def capture_qemu(
    qmp_socket: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    max_bandwidth: int = 1 << 20,
    downtime_limit: int = 1,
    passes: int | None = 5,
    capabilities: Sequence[str] = (),
    xbzrle_cache_size: int | None = None,
    cont: bool = False,
    keep_stream: str | os.PathLike[str] | None = None,
    timeout: float = 300.0,
    progress: Callable[[Progress], None] | None = None,
    qmp: QMP | None = None,
    connect_timeout: float = 5.0,
    multifd: int | None = None,
    multifd_compression: str = "none",
    parameters: Mapping[str, Any] | None = None,
) -> CaptureResult:
    """Migrate the VM behind ``qmp_socket`` into a temporary stream and import it as ``output``.

    ``passes``: raise the limits (so the migration completes) once QEMU has made this many dirty-bitmap
    syncs; None leaves them as set. ``keep_stream``: also keep the raw migration stream there.
    ``qmp``: an open session to use instead of connecting to ``qmp_socket``. ``parameters``: more
    ``migrate-set-parameters`` values by QMP name (e.g. ``{"compress-threads": 2}``).
    ``multifd``: migrate with this many multifd channels (``multifd_compression`` none/zlib/zstd) over
    loopback TCP to pagecodec's recorder (:func:`pagecodec.sources.qemu_live.multifd.capture_multifd`); ``keep_stream``
    is then a directory for ``main.mig`` and ``channel-<k>.bin``.
    """
    if multifd:
        if capabilities or xbzrle_cache_size is not None:
            raise QemuError("multifd captures take no other page capability (QEMU 7.2 sends no XBZRLE or "
                            "compressed pages through multifd)")
        return capture_multifd(qmp_socket, output, channels=multifd, compression=multifd_compression,
                               max_bandwidth=max_bandwidth, downtime_limit=downtime_limit, passes=passes,
                               cont=cont, keep_dir=keep_stream, timeout=timeout, progress=progress, qmp=qmp,
                               connect_timeout=connect_timeout)
    output = Path(output)
    settings = MigrationSettings(
        capabilities=tuple(capabilities), max_bandwidth=max_bandwidth, downtime_limit=downtime_limit,
        xbzrle_cache_size=xbzrle_cache_size, finish_after_passes=passes, parameters=dict(parameters or {}),
    )
    session, own = open_session(qmp, qmp_socket, connect_timeout, "capture_qemu")
    tmpdir = Path(tempfile.mkdtemp(prefix=".pagecodec-capture-", dir=output.resolve().parent))
    try:
        stream = tmpdir / "stream.mig"
        mig = migrate_to_file(session, stream, settings, progress=progress, timeout=timeout)
        resumed = False
        try:
            imported = import_stream(stream, output, capture_command(qmp_socket, output, settings))
        finally:
            if cont:  # resume the guest even if the import failed: the migration itself is over
                session.execute("cont")
                resumed = True
        kept = None
        if keep_stream is not None:
            kept = Path(keep_stream)
            shutil.move(str(stream), kept)
        return CaptureResult(output, mig, kept, imported, resumed)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
        if own:
            session.close()
