"""``pagecodec capture qemu --interval``: a timed dirty log of a running guest, without migrating it.

The trace (format v2) holds round 0, the *image* (every page of every RAM block at the start), and then
one *slice* per interval: the pages whose contents changed during it, with their contents at its end,
stamped with the guest's running time. ``pagecodec simulate`` composes migration passes from it.

How the pages are read, and why this way: QEMU's QMP offers no exact page-level dirty log. Its
dirty-rate machinery (``calc-dirty-rate``, modes page-sampling / dirty-bitmap / dirty-ring) reports a
*rate* (sampled page hashes or bitmap counts over a period), never which pages nor their contents, and
the migration dirty bitmap is internal to QEMU. What is exact is reading RAM with the guest stopped:
``stop``, read, ``cont``. So each slice ends with the vCPUs paused, the RAM is compared page by page
with the previous slice's, and the guest resumes. Two readers:

* **the RAM file** (fast): a block backed by ``memory-backend-file,…,share=on`` (found over QMP:
  ``qom-get /objects/<block> mem-path``/``share``) is read straight from its file, a memory map of the
  very pages the guest writes;
* **a snapshot migration** (any guest): the stopped VM is migrated to a file at unlimited bandwidth,
  one pass that carries every page of every block exactly as QEMU's migration sees it, and the stream
  is imported. Slower (a pass over all of RAM per slice), but it needs nothing of the VM's set-up.

The image is always a snapshot migration (it is what fixes the blocks, their order and the contents
of the ROM-like blocks, ``pc.bios``, ``/rom@etc/…``, that no file backs). With the RAM file, a last
snapshot at the end checks that the blocks no file backs did not change and that the file-backed ones
equal what the log says (an error otherwise: the log would be wrong).

Time: the guest's *running* time. QEMU stops its virtual clock while the VM is paused
(``cpu_disable_ticks``), so the guest's timers — and a workload that paces itself by them — do not
see the pauses; the slice times add up the intervals between the ``cont`` and ``stop`` replies
(QMP round trips of ~1 ms each are the error).

What a slice means: pages whose *contents changed*. A page rewritten with the bytes it held is dirty
for QEMU (and resent by a migration) but invisible here; so is a page changed and changed back within
one interval. Shorter intervals narrow the second case; the first is a limit of reading contents.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...qemu import QemuError
from ...qemu.migrate import MigrationSettings, migrate_to_file
from ...qemu.qmp import QMP, QMPCommandError
from ...trace.format import Provenance, TraceMeta, TraceReader, TraceWriter
from ...trace.image import block_image, changed_page_mask
from ..qemu_stream import import_qemu_stream
from .session import open_session

__all__ = ["DirtyLogCapture", "capture_dirty_log", "SliceProgress"]

#: A snapshot migration: every page once, at once (the VM is stopped, so it completes in its first pass).
SNAPSHOT = MigrationSettings(max_bandwidth=1 << 40, downtime_limit=60_000, finish_after_passes=None)


@dataclass(frozen=True)
class SliceProgress:
    """Reported after each slice: its number, the guest's running time so far, pages it changed."""

    slice: int
    slices: int
    time_s: float
    pages: int


@dataclass(frozen=True)
class DirtyLogCapture:
    """What :func:`capture_dirty_log` did."""

    trace: Path
    slices: int
    duration_s: float  # guest running time covered by the slices
    slice_pages: int  # pages in all slices
    method: str  # "ram-file" or "snapshot"
    file_blocks: tuple[str, ...]  # blocks read from their RAM file
    checked: bool  # the final snapshot matched the log (ram-file method)
    resumed: bool


def capture_dirty_log(
    qmp_socket: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    interval: float,
    duration: float | None = None,
    slices: int | None = None,
    method: str = "auto",
    cont: bool = True,
    qmp: QMP | None = None,
    connect_timeout: float = 5.0,
    timeout: float = 120.0,
    progress: Callable[[SliceProgress], None] | None = None,
) -> DirtyLogCapture:
    """Record ``slices`` slices of ``interval`` seconds of guest running time (or as many as fill
    ``duration``) from the VM behind ``qmp_socket`` into the trace ``output`` (written atomically).

    ``method``: ``ram-file`` (every RAM block the guest writes must be file-backed with share=on),
    ``snapshot``, or ``auto`` (the RAM file where one backs a block, else snapshots). ``cont``: leave
    the guest running at the end (else paused). ``timeout``: seconds for each snapshot migration."""
    if not interval > 0:
        raise QemuError(f"interval must be > 0 s, got {interval}")
    if (slices is None) == (duration is None):
        raise QemuError("give either slices or duration")
    if slices is None:
        assert duration is not None
        slices = int(duration / interval + 1e-9)
    if slices < 1:
        raise QemuError(f"no slice of {interval:g} s fits in {duration} s")
    if method not in ("auto", "ram-file", "snapshot"):
        raise QemuError(f"unknown method {method!r} (auto, ram-file, snapshot)")
    output = Path(output)
    session, own = open_session(qmp, qmp_socket, connect_timeout, "capture qemu --interval")
    work = Path(tempfile.mkdtemp(prefix=".pagecodec-log-", dir=output.resolve().parent))
    try:
        return _Capture(session, output, work, interval, slices, method, timeout, progress, qmp_socket).run(cont)
    finally:
        for p in work.iterdir():
            p.unlink()
        work.rmdir()
        if own:
            session.close()


class _Capture:
    """One capture: the state of RAM as of the last slice, per block, and the readers of it."""

    def __init__(self, qmp: QMP, output: Path, work: Path, interval: float, slices: int, method: str,
                 timeout: float, progress: Callable[[SliceProgress], None] | None,
                 qmp_socket: str | os.PathLike[str] | None) -> None:
        self.qmp, self.output, self.work = qmp, output, work
        self.interval, self.slices, self.method, self.timeout = interval, slices, method, timeout
        self.progress = progress
        self.command = " ".join(shlex.quote(a) for a in [
            "pagecodec", "capture", "qemu", "--qmp", str(qmp_socket or "SOCKET"), "-o", str(output),
            "--interval", f"{interval:g}", "--slices", str(slices), "--method", method])
        self.snapshots = 0

    # --- reading RAM with the guest stopped -------------------------------------------------------
    def snapshot(self) -> tuple[TraceMeta, dict[str, np.ndarray]]:
        """Every block's contents, through a migration of the stopped VM (one pass, all pages)."""
        self.snapshots += 1
        stream = self.work / f"snap{self.snapshots}.mig"
        trace = self.work / f"snap{self.snapshots}.trace.parquet"
        migrate_to_file(self.qmp, stream, SNAPSHOT, timeout=self.timeout)
        import_qemu_stream(stream, trace, command=self.command)
        stream.unlink()
        with TraceReader(trace) as r:
            images = {b.name: block_image(r, b.name) for b in r.meta.blocks}  # after its last round
            meta = r.meta
        trace.unlink()
        return meta, images

    def ram_files(self, meta: TraceMeta) -> dict[str, Path]:
        """Blocks backed by a shared memory-backend-file, and their files (QOM ``/objects/<name>``)."""
        files: dict[str, Path] = {}
        for b in meta.blocks:
            try:
                path = self.qmp.execute("qom-get", path=f"/objects/{b.name}", property="mem-path")
                share = self.qmp.execute("qom-get", path=f"/objects/{b.name}", property="share")
            except QMPCommandError:
                continue  # not a memory backend object, or not a file one
            if share and path and Path(path).is_file():
                files[b.name] = Path(path)
        return files

    # --- the capture ------------------------------------------------------------------------------
    def run(self, cont: bool) -> DirtyLogCapture:
        """Stop, image, slices, check; the guest runs afterwards if ``cont`` (and after an error if it
        ran before)."""
        qmp = self.qmp
        status = qmp.execute("query-status")["status"]
        if status not in ("running", "paused", "postmigrate"):
            raise QemuError(f"capture qemu --interval: the VM is {status!r} (want running or paused)")
        migrating = qmp.execute("query-migrate").get("status")
        if migrating in ("setup", "active", "device", "pre-switchover", "postcopy-active"):
            raise QemuError(f"capture qemu --interval: a migration is {migrating} on this VM")
        qmp.execute("stop")
        try:
            return self._record(cont)
        except BaseException:
            if status == "running":  # an error leaves the guest as it found it
                try:
                    qmp.execute("cont")
                except QemuError:
                    pass
            raise

    def _record(self, cont: bool) -> DirtyLogCapture:
        qmp = self.qmp
        meta, state = self.snapshot()
        files = self.ram_files(meta) if self.method != "snapshot" else {}
        if self.method == "ram-file" and not files:
            raise QemuError("capture qemu --interval --method ram-file: no RAM block is backed by a shared "
                            "memory-backend-file (start QEMU with -object memory-backend-file,id=pc.ram,"
                            "mem-path=FILE,size=…,share=on -machine memory-backend=pc.ram)")
        use_files = bool(files)
        maps = {name: np.memmap(path, dtype=np.uint8, mode="r", shape=(state[name].size,))
                for name, path in files.items()}
        meta = TraceMeta(meta.page_size, meta.blocks, Provenance.now("qemu-dirty-log", self.command))
        ps = meta.page_size
        run_s = 0.0
        total = 0
        with TraceWriter(self.output, meta) as w:
            for bi, b in enumerate(meta.blocks):
                n = b.used_length // ps
                w.write(0, bi, np.arange(n, dtype=np.int64) * ps, state[b.name].reshape(n, ps))
            w.timestamp_round(0, 0.0, "image")
            for k in range(1, self.slices + 1):
                t0 = time.monotonic()
                qmp.execute("cont")
                t1 = time.monotonic()
                time.sleep(max(0.0, k * self.interval - run_s - (t1 - t0) / 2))
                t2 = time.monotonic()
                qmp.execute("stop")
                t3 = time.monotonic()
                run_s += (t3 + t2) / 2 - (t1 + t0) / 2  # midpoints of the two replies' round trips
                now = maps if use_files else self.snapshot()[1]
                pages = 0
                for bi, b in enumerate(meta.blocks):
                    if b.name not in now:
                        continue
                    pages += _write_changed(w, k, bi, state[b.name], now[b.name], ps)
                if pages == 0:
                    w.write(k, 0, np.empty(0, np.int64), np.empty((0, ps), np.uint8))
                w.timestamp_round(k, run_s, "slice")
                total += pages
                if self.progress is not None:
                    self.progress(SliceProgress(k, self.slices, run_s, pages))
            checked = False
            if use_files:
                _, final = self.snapshot()
                for name, img in final.items():
                    bad = np.flatnonzero(changed_page_mask(state[name].reshape(-1, ps), img.reshape(-1, ps)))
                    if len(bad):
                        where = "not file-backed" if name not in files else f"backed by {files[name]}"
                        raise QemuError(
                            f"capture qemu --interval: block {name} ({where}) differs from the log in "
                            f"{len(bad)} page(s), first at offset {int(bad[0]) * ps:#x}: the log would be "
                            f"wrong; use --method snapshot")
                checked = True
        if cont:
            qmp.execute("cont")
        return DirtyLogCapture(self.output, self.slices, run_s, total, "ram-file" if use_files else "snapshot",
                               tuple(sorted(files)), checked, cont)


def _write_changed(w: TraceWriter, round_no: int, block: int, state: np.ndarray, now: np.ndarray, ps: int) -> int:
    """Write the pages of ``now`` that differ from ``state`` as round ``round_no``, update ``state``."""
    old, new = state.reshape(-1, ps), np.asarray(now).reshape(-1, ps)
    changed = np.flatnonzero(changed_page_mask(old, new))
    if len(changed) == 0:
        return 0
    pages = new[changed]  # a copy: the file keeps changing after cont
    w.write(round_no, block, changed.astype(np.int64) * ps, pages)
    old[changed] = pages
    return len(changed)
