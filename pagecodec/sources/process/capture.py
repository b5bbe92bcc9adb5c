"""``capture_process``: validate the arguments, attach to or launch the target, choose the
dirty-detection method and run the rounds into a trace."""

from __future__ import annotations

import ctypes
import os
import platform
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import pagecodec.sources.process as _package  # soft_dirty_supported is looked up there (tests patch it)
from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter
from pagecodec.sources.process.clock import RunningClock
from pagecodec.sources.process.errors import CaptureError, ProcessGoneError, _Gone
from pagecodec.sources.process.maps import DEFAULT_MAX_BYTES, PAGE_SIZE, Mapping, select_blocks
from pagecodec.sources.process.memory import _alive, _Notes, _read_diff
from pagecodec.sources.process.pagemap import PM_PRESENT, PM_SWAPPED, _read_soft_dirty
from pagecodec.sources.process.report import BlockReport, ProcessCaptureReport
from pagecodec.sources.process.target import _Proc

__all__ = ["capture_command", "capture_process", "METHODS", "DEFAULT_ROUNDS"]

METHODS = ("auto", "soft-dirty", "diff")
DEFAULT_ROUNDS = 8


def capture_command(
    target: int | Sequence[str],
    output: str | os.PathLike[str],
    *,
    interval: float,
    rounds: int,
    max_bytes: int | None,
    freeze: bool,
    method: str,
    include: Sequence[str] = (),
    warmup: float | None = None,
    unreadable: str = "zero",
) -> str:
    """The ``pagecodec capture process`` command line equivalent to a capture (trace provenance)."""
    args = ["pagecodec", "capture", "process"]
    if isinstance(target, int):
        args += ["--pid", str(target)]
    args += ["-o", str(output), "--interval", f"{interval:g}", "--rounds", str(rounds)]
    if max_bytes is not None:
        mib = max_bytes / (1 << 20)
        args += ["--max-mib", f"{mib:g}" if mib == round(mib, 6) else repr(mib)]
    else:
        args += ["--max-mib", "0"]
    for f in include:
        args += ["--include", f]
    if method != "auto":
        args += ["--method", method]
    if not freeze:
        args.append("--no-freeze")
    if unreadable != "zero":
        args += ["--unreadable", unreadable]
    if not isinstance(target, int):
        if warmup is not None:
            args += ["--warmup", f"{warmup:g}"]
        args.append("--")
        args += list(target)
    return shlex.join(args)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def capture_process(
    target: int | Sequence[str],
    output: str | os.PathLike[str],
    *,
    interval: float = 0.5,
    rounds: int | None = None,
    duration: float | None = None,
    include: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    freeze: bool = True,
    method: str = "auto",
    warmup: float = 1.0,
    unreadable: str = "zero",
    progress: Callable[[int, int, int], None] | None = None,
    command: str | None = None,
    stdout: Any = None,
    stderr: Any = None,
) -> ProcessCaptureReport:
    """Record the writable memory of process ``target`` (a pid, or an argv to launch) into ``output``.

    ``rounds`` rounds ``interval`` seconds apart (or as many as fit in ``duration`` seconds; default
    8). ``include``: block-name/path globs or ``0xADDR`` filters. ``max_bytes``: cap on the recorded
    bytes (None: no cap). ``method``: ``auto``, ``soft-dirty`` or ``diff``. ``unreadable``: ``zero``
    (zero-fill pages the kernel refuses at round 0, with a note) or ``error``. ``progress(round,
    rounds, pages)`` is called after each round is read and the process continued. ``command``: the
    provenance command (default: the equivalent ``pagecodec capture process`` line). ``stdout``/``stderr``:
    for a launched command (``subprocess.Popen`` arguments). See the module docstring for the rules.
    """
    if interval <= 0:
        raise CaptureError(f"interval must be > 0 s, got {interval}")
    if rounds is not None and duration is not None:
        raise CaptureError("give rounds or duration, not both")
    if duration is not None:
        if duration < 0:
            raise CaptureError(f"duration must be >= 0 s, got {duration}")
        rounds = int(duration / interval + 1e-9) + 1
    rounds = DEFAULT_ROUNDS if rounds is None else rounds
    if rounds < 1:
        raise CaptureError(f"rounds must be >= 1, got {rounds}")
    if method not in METHODS:
        raise CaptureError(f"unknown dirty-detection method {method!r} (choose {', '.join(METHODS)})")
    if unreadable not in ("zero", "error"):
        raise CaptureError(f"unreadable must be 'zero' or 'error', got {unreadable!r}")
    if max_bytes is not None and max_bytes < PAGE_SIZE:
        raise CaptureError(f"max_bytes must be at least one page ({PAGE_SIZE}), got {max_bytes}")
    include = list(include or ())
    output = Path(output)
    if command is None:
        command = capture_command(target, output, interval=interval, rounds=rounds, max_bytes=max_bytes,
                                  freeze=freeze, method=method, include=include,
                                  warmup=None if isinstance(target, int) else warmup, unreadable=unreadable)

    if isinstance(target, (int, np.integer)) and not isinstance(target, bool):
        pid = int(target)
        if pid <= 0:
            raise CaptureError(f"no process with pid {pid}")
        return _capture(pid, output, interval, rounds, include, max_bytes, freeze, method, unreadable, progress,
                        command, launched=None)

    argv = [str(a) for a in target]
    if not argv:
        raise CaptureError("no command to launch")
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                preexec_fn=_die_with_parent)
    except OSError as e:
        raise CaptureError(f"cannot start {shlex.join(argv)}: {e.strerror or e}") from None
    try:
        deadline = time.monotonic() + max(0.0, warmup)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        if proc.poll() is not None:
            raise CaptureError(f"command exited during the {warmup:g} s warm-up with status {proc.returncode}: "
                               f"{shlex.join(argv)}")
        rep = _capture(proc.pid, output, interval, rounds, include, max_bytes, freeze, method, unreadable,
                       progress, command, launched=proc)
    finally:
        _terminate(proc)
    rep.exit_status = proc.returncode
    return rep


def _terminate(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _capture(
    pid: int,
    output: Path,
    interval: float,
    rounds: int,
    include: list[str],
    max_bytes: int | None,
    freeze: bool,
    method: str,
    unreadable: str,
    progress: Callable[[int, int, int], None] | None,
    command: str,
    launched: subprocess.Popen | None,
) -> ProcessCaptureReport:
    t_start = time.monotonic()
    proc = _Proc(pid)
    ps = PAGE_SIZE
    comm = proc.comm()
    current_round = 0

    def gone(what: str = "") -> ProcessGoneError:
        status = ""
        if launched is not None and launched.poll() is not None:
            status = f" with status {launched.returncode}"
        return ProcessGoneError(
            f"process {pid} ({comm}) exited{status} during round {current_round} of {rounds}"
            f"{f' ({what})' if what else ''}; capture aborted, nothing written to {output}"
        )

    try:
        try:
            mappings = proc.maps(smaps=True)
        except _Gone:
            raise gone("reading smaps") from None
        def resident(m: Mapping) -> tuple[int, int] | None:
            try:
                pm = proc.pagemap(m.start, m.size // ps)
            except (OSError, _Gone):
                return None
            used = np.flatnonzero((pm & (PM_PRESENT | PM_SWAPPED)) != 0)
            return (m.start + int(used[0]) * ps, m.start + (int(used[-1]) + 1) * ps) if len(used) else None

        blocks, skipped, warnings = select_blocks(mappings, include=include, max_bytes=max_bytes, page_size=ps,
                                                  resident=resident)
        if not blocks:
            why = f" matching {include}" if include else ""
            raise CaptureError(f"process {pid} ({comm}) has no readable writable mappings{why} to record")
        target_cmd = proc.cmdline()
        kernel = platform.release()

        # Dirty-detection method.
        if method == "diff":
            use_sd, reason = False, "diff requested"
        else:
            ok, why = _package.soft_dirty_supported()
            if ok:
                try:
                    proc.clear_soft_dirty()
                    proc.pagemap(blocks[0].start, 1)
                    use_sd, reason = True, why
                except _Gone:
                    raise gone("probing clear_refs") from None
                except OSError as e:
                    use_sd, reason = False, f"soft-dirty unusable on process {pid}: {e.strerror or e}"
            else:
                use_sd, reason = False, why
            if method == "soft-dirty" and not use_sd:
                raise CaptureError(f"soft-dirty tracking unavailable: {reason}")
            if not use_sd:
                reason = f"soft-dirty unavailable ({reason}); diffing successive reads"
        method_used = "soft-dirty" if use_sd else "diff"

        full = f"{command}  # method={method_used}; kernel=Linux {kernel}"
        if launched is None:
            full += f"; target={shlex.join(target_cmd) if target_cmd else comm}"
        meta = TraceMeta(ps, tuple(RAMBlockInfo(b.name, b.size, b.host_page_size) for b in blocks),
                         Provenance.now("process", full))

        notes = _Notes()
        npages = [b.size // ps for b in blocks]
        # diff: the last content read of every block; soft-dirty: a scratch buffer per block
        image = [np.zeros(b.size, np.uint8) for b in blocks]
        scratch = [np.empty(b.size, np.uint8) for b in blocks] if not use_sd else image
        was_present = [np.zeros(n, bool) for n in npages]
        pages_per_round: list[int] = []
        round_times: list[float] = []
        already_stopped = proc.state() in ("T", "t")
        do_freeze = freeze and not already_stopped
        if freeze and already_stopped:
            notes_extra = [f"process {pid} was already stopped: not frozen/continued by the capture"]
        else:
            notes_extra = []
        stop_warned = False

        with TraceWriter(output, meta) as writer:
            clock = RunningClock()  # the log's time: the process's running time (see clock.py)
            for r in range(rounds):
                current_round = r
                if r:
                    clock.wait_until(r * interval)
                t_log = clock.snapshot()  # right before SIGSTOP: the contents are fixed from here
                sel: list[np.ndarray] = []  # per block: page indices to write this round
                try:
                    if do_freeze:
                        if not proc.stop() and not stop_warned:
                            notes_extra.append(f"process {pid}: not every thread stopped within 5 s of SIGSTOP; "
                                               f"some rounds may not be consistent snapshots")
                            stop_warned = True
                    try:
                        cur = proc.maps()
                        mstarts = np.array([m.start for m in cur], dtype=np.uint64)
                        mends = np.array([m.end for m in cur], dtype=np.uint64)
                        alive = [_alive(b, mstarts, mends, ps) for b in blocks]
                        vanished = sum(int(n - a.sum()) for n, a in zip(npages, alive))
                        if vanished:
                            notes.vanished[r] = vanished
                        if use_sd:
                            sel = _read_soft_dirty(proc, r, blocks, alive, image, was_present, notes, unreadable)
                        else:
                            sel = _read_diff(proc, r, blocks, alive, image, scratch, notes, unreadable)
                    finally:
                        if do_freeze:
                            proc.cont()
                            clock.resumed()
                        else:
                            clock.unfrozen()
                except _Gone as e:
                    raise gone(str(e)) from None
                writer.timestamp_round(r, t_log, "slice" if r else "image")
                round_times.append(t_log)
                # Write (process running again): blocks in order, offsets ascending.
                n_round = 0
                for bi, idx in enumerate(sel):
                    if len(idx):
                        writer.write(r, bi, idx.astype(np.int64) * ps, image[bi].reshape(-1, ps)[idx])
                        n_round += len(idx)
                if n_round == 0:
                    writer.write(r, 0, np.empty(0, np.int64), np.empty((0, ps), np.uint8))
                pages_per_round.append(n_round)
                if progress is not None:
                    progress(r, rounds, n_round)
        return ProcessCaptureReport(
            trace=output, pid=pid, target=target_cmd, command=full, method=method_used, method_reason=reason,
            kernel=kernel, frozen=do_freeze, rounds=rounds, pages_per_round=pages_per_round, page_size=ps,
            ram_bytes=meta.ram_bytes,
            blocks=[BlockReport(b.name, b.start, b.size, b.mapping.start, b.mapping.size, b.host_page_size, b.mapping.perms,
                                b.mapping.path) for b in blocks],
            skipped=skipped, warnings=warnings, notes=notes_extra + notes.lines(), round_times=round_times,
            elapsed=round(time.monotonic() - t_start, 3), launched=launched is not None,
            frozen_s=clock.frozen_s,
        )
    finally:
        proc.close()
