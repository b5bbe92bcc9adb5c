"""Migrate a running guest to a file over QMP, and load such a file into a destination.

Source side (:func:`migrate_to_file`): ``migrate-set-capabilities`` (every page capability off unless
chosen: ``xbzrle``, ``compress``), ``migrate-set-parameters`` (max-bandwidth, downtime-limit,
xbzrle-cache-size, compress-level, compress-threads), ``migrate uri=exec:cat > FILE``, then
``query-migrate`` every ``poll`` seconds until ``completed``. A low bandwidth with a tiny downtime
limit keeps QEMU iterating (one dirty-bitmap sync per pass over RAM); after ``finish_after_passes``
syncs the limits are raised so the migration completes. Progress: a callback with the passes
(``dirty-sync-count``) and bytes sent (``ram.transferred``).

Destination side (:func:`load_from_file`): a VM started with ``-incoming defer -S``;
``migrate-incoming uri=exec:cat FILE``; wait for ``completed``. If QEMU rejects the stream it exits:
the error carries its stderr (e.g. ``Unknown ramblock …``, ``Machine type received is …``).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import QemuError
from .machine import VM
from .qmp import QMP

__all__ = ["MigrationSettings", "Progress", "MigrationResult", "PAGE_CAPABILITIES", "migrate_to_file",
           "load_from_file", "configure", "wait_for_migration"]

#: Capabilities that change how pages travel (set explicitly, all off unless chosen). multifd and
#: postcopy need other transports than exec:, auto-converge would throttle the guest's pattern.
PAGE_CAPABILITIES = ("xbzrle", "compress", "multifd", "auto-converge", "postcopy-ram", "release-ram")
SELECTABLE = ("xbzrle", "compress")
#: QEMU 7.2's maxima: downtime-limit ≤ 2000 s; max-bandwidth ≤ SIZE_MAX/1000, anything huge is "unlimited".
FINISH_BANDWIDTH = 1 << 40
FINISH_DOWNTIME_MS = 60_000
_ACTIVE = {"setup", "active", "device", "pre-switchover", "wait-unplug", "postcopy-active", "colo", "cancelling"}


@dataclass(frozen=True)
class MigrationSettings:
    """What to migrate with. ``capabilities``: names from :data:`SELECTABLE` to switch on. ``parameters``
    maps extra QMP parameter names to values. ``finish_after_passes``: once ``dirty-sync-count``
    reaches this, raise max-bandwidth/downtime-limit so the migration completes (None: never)."""

    capabilities: tuple[str, ...] = ()
    max_bandwidth: int | None = 1 << 20
    downtime_limit: int | None = 1
    xbzrle_cache_size: int | None = None
    compress_level: int | None = None
    compress_threads: int | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    finish_after_passes: int | None = 5
    finish_bandwidth: int = FINISH_BANDWIDTH
    finish_downtime: int = FINISH_DOWNTIME_MS

    def __post_init__(self) -> None:
        bad = [c for c in self.capabilities if c not in SELECTABLE]
        if bad:
            raise QemuError(f"capability {bad[0]!r} not supported here (choose from {', '.join(SELECTABLE)})")

    def capability_list(self) -> list[dict[str, Any]]:
        return [{"capability": c, "state": c in self.capabilities} for c in PAGE_CAPABILITIES] + \
               [{"capability": "events", "state": True}]

    def parameter_dict(self) -> dict[str, Any]:
        p: dict[str, Any] = {}
        for key in ("max_bandwidth", "downtime_limit", "xbzrle_cache_size", "compress_level", "compress_threads"):
            v = getattr(self, key)
            if v is not None:
                p[key.replace("_", "-")] = v
        p.update(self.parameters)
        return p


@dataclass(frozen=True)
class Progress:
    status: str
    passes: int            # ram.dirty-sync-count
    transferred: int       # ram.transferred (bytes)
    remaining: int         # ram.remaining (bytes)
    elapsed: float         # seconds since migrate
    info: Mapping[str, Any]

    @property
    def mb(self) -> float:
        return self.transferred / 1e6


@dataclass(frozen=True)
class MigrationResult:
    path: Path
    size: int
    passes: int
    transferred: int
    elapsed: float
    finished_early: bool  # the limits were raised after finish_after_passes
    info: Mapping[str, Any]  # the last query-migrate


def configure(qmp: QMP, settings: MigrationSettings, capabilities: Iterable[dict[str, Any]] | None = None) -> None:
    qmp.execute("migrate-set-capabilities", capabilities=list(capabilities or settings.capability_list()))
    params = settings.parameter_dict()
    if params:
        qmp.execute("migrate-set-parameters", arguments=params)


def _progress(info: Mapping[str, Any], t0: float) -> Progress:
    ram = info.get("ram", {})
    return Progress(str(info.get("status", "none")), int(ram.get("dirty-sync-count", 0)),
                    int(ram.get("transferred", 0)), int(ram.get("remaining", 0)), time.monotonic() - t0, info)


def wait_for_migration(
    qmp: QMP,
    settings: MigrationSettings,
    t0: float,
    *,
    progress: Callable[[Progress], None] | None,
    timeout: float,
    poll: float,
    failed: Callable[[Progress], str],
    timed_out: Callable[[Progress], str],
) -> tuple[Progress, bool]:
    """Poll ``query-migrate`` every ``poll`` seconds (``t0``: when ``migrate`` was issued) until the
    migration completes; after ``settings.finish_after_passes`` dirty syncs raise the limits so it does.
    ``failed``/``timed_out`` word the QemuError for a failed or cancelled migration and for one still
    running after ``timeout`` seconds. On any error (also KeyboardInterrupt) the migration is cancelled.
    Returns the last progress and whether the limits were raised."""
    finished_early = False
    try:
        while True:
            last = _progress(qmp.execute("query-migrate"), t0)
            if progress is not None:
                progress(last)
            if last.status == "completed":
                return last, finished_early
            if last.status in ("failed", "cancelled"):
                raise QemuError(failed(last))
            if (not finished_early and settings.finish_after_passes is not None
                    and last.passes >= settings.finish_after_passes):
                qmp.execute("migrate-set-parameters", max_bandwidth=settings.finish_bandwidth,
                            downtime_limit=settings.finish_downtime)
                finished_early = True
            if last.elapsed > timeout:
                raise QemuError(timed_out(last))
            time.sleep(poll)
    except BaseException:
        try:
            qmp.execute("migrate_cancel", timeout=5)
        except QemuError:
            pass
        raise


def migrate_to_file(
    qmp: QMP,
    path: str | Path,
    settings: MigrationSettings = MigrationSettings(),
    *,
    progress: Callable[[Progress], None] | None = None,
    timeout: float = 120.0,
    poll: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> MigrationResult:
    """Migrate the VM behind ``qmp`` into ``path`` (overwritten). The source ends paused
    (``postmigrate``); ``cont`` resumes it. On timeout the migration is cancelled."""
    path = Path(path).resolve()
    part = path.with_name(path.name + ".part")
    path.unlink(missing_ok=True)
    part.unlink(missing_ok=True)
    current = qmp.execute("query-migrate").get("status")
    if current in _ACTIVE:
        raise QemuError(f"a migration is already {current} on {qmp.path}")
    configure(qmp, settings)
    t0 = time.monotonic()
    # cat writes FILE.part and renames it when it has written everything: QEMU reports "completed"
    # when it closes the pipe, possibly before cat has drained it.
    qmp.execute("migrate", uri=f"exec:cat > {shlex.quote(str(part))} && mv {shlex.quote(str(part))} {shlex.quote(str(path))}")
    last, finished_early = wait_for_migration(
        qmp, settings, t0, progress=progress, timeout=timeout, poll=poll,
        failed=lambda p: (f"migration to {path} {p.status}: {p.info.get('error-desc', 'no error-desc')}"
                          + (f" ({alive()})" if alive and alive() else "")),
        timed_out=lambda p: (f"migration to {path} not completed after {timeout:g} s (status {p.status}, "
                             f"{p.passes} passes, {p.transferred} bytes sent); cancelled"))
    # wait for cat to finish and rename
    deadline = time.monotonic() + 30
    while not path.exists():
        if time.monotonic() > deadline:
            raise QemuError(f"migration completed but {path} did not appear within 30 s (exec: cat failed?)")
        time.sleep(0.02)
    return MigrationResult(path, path.stat().st_size, last.passes, last.transferred, last.elapsed, finished_early, last.info)


def load_from_file(
    vm: VM,
    path: str | Path,
    *,
    capabilities: Iterable[str] = (),
    timeout: float = 60.0,
    poll: float = 0.05,
) -> Mapping[str, Any]:
    """Load ``path`` into ``vm`` (started with ``incoming=True``). ``capabilities`` to switch on first
    (``compress`` is needed for COMPRESS_PAGE records). Returns the destination's last query-migrate.
    Raises :class:`QemuError` with QEMU's own message if the load fails (QEMU 7.2 exits then)."""
    path = Path(path).resolve()
    if not path.is_file():
        raise QemuError(f"{path}: no such stream file")
    caps = list(capabilities)
    if caps:
        vm.qmp.execute("migrate-set-capabilities",
                       capabilities=[{"capability": c, "state": True} for c in caps])
    vm.qmp.execute("migrate-incoming", uri=f"exec:cat {shlex.quote(str(path))}")
    t0 = time.monotonic()
    while True:
        reason = vm.exit_reason()
        if reason:
            raise QemuError(f"loading {path}: {reason}")
        try:
            info = vm.qmp.execute("query-migrate")
        except QemuError as e:
            reason = _exit_reason_soon(vm)
            raise QemuError(f"loading {path}: {reason or e}") from None
        status = info.get("status")
        if status == "completed":
            return info
        if status in ("failed", "cancelled"):
            reason = _exit_reason_soon(vm)
            raise QemuError(f"loading {path}: incoming migration {status}: {info.get('error-desc', '')}"
                            + (f"; {reason}" if reason else ""))
        if time.monotonic() - t0 > timeout:
            raise QemuError(f"loading {path}: not completed after {timeout:g} s (status {status})")
        time.sleep(poll)


def _exit_reason_soon(vm: VM, wait: float = 5.0) -> str | None:
    """QEMU exits right after a failed incoming migration: give it a moment, then say why."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        r = vm.exit_reason()
        if r:
            return r
        time.sleep(0.05)
    return None
