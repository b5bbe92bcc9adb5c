"""``pagecodec capture process``: record a live Linux process's writable memory as a trace.

A process stands in for a guest: its writable mappings are the RAM blocks, and every ``interval``
seconds the pages written since the last look form a round, exactly like QEMU's dirty-bitmap syncs.

**Blocks.** At round 0, ``/proc/PID/smaps`` is read once. Every mapping that is writable (private or
shared) and readable becomes a RAM block, in address order, named ``heap``, ``stack``,
``anon@7f12a4c00000`` (anonymous, by start address; ``anon-shared@…`` for shared anonymous memory), ``anon:NAME`` (``PR_SET_VMA_ANON_NAME``),
``/usr/lib/x86_64-linux-gnu/libc.so.6@rw`` (file-backed private; ``@rws`` for shared), with a start
address appended if a name repeats. ``used_length`` is the mapping's size, the host page size is
smaps' ``KernelPageSize``. ``[vvar]``, ``[vvar_vclock]``, ``[vsyscall]``, ``[vdso]``, ``[uprobes]`` and
writable-but-unreadable mappings are skipped (listed in the report). ``include`` filters narrow the set
(a glob on the block name or the mapping's path, or ``0xADDR``: the mapping containing that address).
``max_bytes`` caps the total: mappings are kept whole smallest first and the largest are trimmed to a
common size (water-filling: each mapping gets ``min(size, cap)`` with the largest ``cap`` that fits).
A trimmed mapping keeps the window that starts at its first resident page (pagemap's present/swapped
bits, so a thread stack keeps its used top end and an allocator arena its used start), or its first
bytes when nothing is resident or pagemap is unreadable; every trim and skip is a warning in the
report, and the report gives each block's start address.

**Blocks are fixed at round 0**, as QEMU's are: mappings created later (mmap, brk growth, thread
stacks) are not recorded; pages of a block whose address range is no longer mapped stop being read
(the trace keeps their last content) and are read again if something is mapped there later. The report
counts such pages per round.

**Round 0** reads every page of every block through ``/proc/PID/mem`` (``preadv`` straight into numpy
buffers, one call per contiguous range). Pages the kernel refuses to read (``EIO``: ``VM_IO`` /
``VM_PFNMAP`` device mappings, file mappings past the end of their file, ranges unmapped between the
smaps read and the freeze) are recorded as zero pages with a note naming the block and the addresses,
or raise :class:`CaptureError` with ``unreadable="error"``.

**Rounds ≥ 1, dirty detection** (``method``):

* ``soft-dirty`` — the kernel's soft-dirty bits: ``4`` is written to ``/proc/PID/clear_refs`` when a
  round is read, and the next round reads ``/proc/PID/pagemap`` (64-bit entries: bit 55 soft-dirty,
  62 swapped, 63 present) for each block in one ``pread`` (``np.frombuffer``) and reads only the dirty
  pages, one ``preadv`` per contiguous dirty run. A page can be soft-dirty with unchanged content (it
  was rewritten with the same bytes): it is kept, as QEMU would send it. Pages that were present or
  swapped and are now neither (``MADV_DONTNEED``, which does not set soft-dirty) count as dirty too:
  their content became zero. Needs a kernel with ``CONFIG_MEM_SOFT_DIRTY``; probed once on this
  process (clear, write a page, check bit 55) because a kernel without it accepts ``clear_refs`` and
  reports bit 55 as 0 for every page.
* ``diff`` — every round reads all pages and compares them with the previous read, page by page
  (uint64 words, vectorized); a round holds exactly the pages whose content changed.
* ``auto`` (default) — soft-dirty when the probe passes and the target's ``clear_refs``/``pagemap``
  are usable, else diff; the report says which and why.

**Freeze** (default on): the process is stopped (``SIGSTOP``, waiting until every thread is stopped)
while a round is read and continued (``SIGCONT``) before the pages are compressed and written, so each
round is a consistent snapshot. A process that was already stopped is left stopped. Without freeze
a round is read while the process runs: pages may be torn, and with soft-dirty a write landing
between the pagemap read and the clear is lost until the page is written again.

**Targets.** ``capture_process(pid, …)`` attaches to a running process (needs ptrace access: the same
user with ``kernel.yama.ptrace_scope`` 0, or root / ``CAP_SYS_PTRACE``); ``capture_process([argv…],
…)`` starts the command, waits ``warmup`` seconds, records, then terminates it (SIGTERM, then SIGKILL
after 5 s). The process is addressed through a ``/proc/PID`` directory descriptor and a pidfd, so a
recycled pid is never mistaken for the target.

**Errors** are :class:`CaptureError` (a ``PageCodecError``) with one clear line: no such process,
permission denied, the process exiting mid-capture (:class:`ProcessGoneError`, naming pid and round).
The trace is written through :class:`~pagecodec.trace.format.TraceWriter`, so an aborted capture leaves
no file (and an existing file of that name untouched).

**Provenance.** ``source = "process"``, ``command`` = the ``pagecodec capture process`` command line
(target command included) followed by a shell comment with the dirty-detection method, the kernel
release and the target's command line, ``date`` = now.
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import mmap
import os
import platform
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pagecodec.errors import PageCodecError
from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter

__all__ = [
    "CaptureError",
    "ProcessGoneError",
    "Mapping",
    "Block",
    "BlockReport",
    "ProcessCaptureReport",
    "parse_maps",
    "select_blocks",
    "soft_dirty_supported",
    "capture_command",
    "capture_process",
    "PM_SOFT_DIRTY",
    "PM_SWAPPED",
    "PM_PRESENT",
]

PM_SOFT_DIRTY = np.uint64(1 << 55)
PM_SWAPPED = np.uint64(1 << 62)
PM_PRESENT = np.uint64(1 << 63)

PAGE_SIZE = os.sysconf("SC_PAGESIZE") if hasattr(os, "sysconf") else 4096
SPECIAL_MAPPINGS = frozenset({"[vvar]", "[vvar_vclock]", "[vsyscall]", "[vdso]", "[uprobes]", "[sigpage]"})
METHODS = ("auto", "soft-dirty", "diff")
DEFAULT_ROUNDS = 8
DEFAULT_MAX_BYTES = 64 << 20
_MAX_NAME = 255


class CaptureError(PageCodecError):
    """A process capture failed (no such process, permission, unreadable memory, bad arguments)."""


class ProcessGoneError(CaptureError):
    """The target process exited (or exec'd) while being captured."""


class _Gone(Exception):
    """Internal: the target's memory or /proc entries vanished."""


# --------------------------------------------------------------------------------------------------
# Mappings and blocks
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mapping:
    """One line of ``/proc/PID/maps`` (plus smaps' KernelPageSize when read from smaps)."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    kernel_page_size: int = PAGE_SIZE

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def writable(self) -> bool:
        return self.perms[1:2] == "w"

    @property
    def readable(self) -> bool:
        return self.perms[:1] == "r"

    @property
    def shared(self) -> bool:
        return self.perms[3:4] == "s"

    def describe(self) -> str:
        return f"{self.start:x}-{self.end:x} {self.perms} {self.path or '(anonymous)'}"


def parse_maps(text: str, *, smaps: bool = False) -> list[Mapping]:
    """Mappings of a ``/proc/PID/maps`` text, or of ``/proc/PID/smaps`` with ``smaps=True`` (which
    adds each mapping's ``KernelPageSize``)."""
    out: list[Mapping] = []
    cur: dict[str, Any] | None = None
    for line in text.splitlines():
        head = line.split(None, 5)
        if len(head) >= 5 and "-" in head[0] and len(head[1]) == 4 and not head[0].endswith(":"):
            try:
                lo, hi = head[0].split("-")
                start, end = int(lo, 16), int(hi, 16)
                off, inode = int(head[2], 16), int(head[4])
            except ValueError:
                cur = None
                if not smaps:
                    raise CaptureError(f"unparsable maps line: {line!r}") from None
                continue
            if cur is not None:
                out.append(Mapping(**cur))
            cur = dict(start=start, end=end, perms=head[1], offset=off, inode=inode,
                       path=head[5].strip() if len(head) > 5 else "")
        elif smaps and cur is not None and line.startswith("KernelPageSize:"):
            parts = line.split()
            try:
                kps = int(parts[1]) * {"kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30}.get(parts[2], 1)
                cur["kernel_page_size"] = kps
            except (IndexError, ValueError):
                pass
    if cur is not None:
        out.append(Mapping(**cur))
    return out


@dataclass(frozen=True)
class Block:
    """A RAM block of the capture: the first ``size`` bytes of a mapping."""

    name: str
    start: int
    size: int
    mapping: Mapping
    host_page_size: int

    @property
    def end(self) -> int:
        return self.start + self.size


def _base_name(m: Mapping) -> str:
    p = m.path
    if p == "[heap]":
        return "heap"
    if p == "[stack]":
        return "stack"
    if p.startswith("[") and p.endswith("]"):
        return p[1:-1]
    if not p:
        return f"anon@{m.start:x}"
    if p == "/dev/zero (deleted)":  # MAP_SHARED|MAP_ANONYMOUS
        return f"anon-shared@{m.start:x}"
    return f"{p}@{'rws' if m.shared else 'rw'}"


def _fit(name: str, suffix: str = "") -> str:
    """``name + suffix`` within QEMU's 255-byte idstr, keeping the tail (the file name) of long paths."""
    full = name + suffix
    if len(full.encode()) <= _MAX_NAME:
        return full
    tail = full.encode()[-(_MAX_NAME - 3):].decode(errors="ignore")
    return "..." + tail


def _matches(m: Mapping, name: str, filters: Sequence[str]) -> bool:
    for f in filters:
        if f.lower().startswith("0x"):
            try:
                a = int(f, 16)
            except ValueError:
                raise CaptureError(f"include filter {f!r}: not a hex address") from None
            if m.start <= a < m.end:
                return True
        elif fnmatch.fnmatchcase(name, f) or (m.path and fnmatch.fnmatchcase(m.path, f)):
            return True
    return False


def _water_fill(sizes: list[int], budget: int, unit: int) -> int:
    """Largest cap (a multiple of ``unit``) with ``sum(min(s, cap)) <= budget``."""
    if sum(sizes) <= budget:
        return max(sizes, default=0)
    ss = sorted(sizes)
    used = 0
    for i, s in enumerate(ss):
        rest = len(ss) - i
        if used + s * rest > budget:
            return ((budget - used) // rest) // unit * unit
        used += s
    return ss[-1]  # pragma: no cover - unreachable (sum > budget)


def select_blocks(
    mappings: Sequence[Mapping],
    *,
    include: Sequence[str] | None = None,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    page_size: int = PAGE_SIZE,
    resident: Callable[[Mapping], tuple[int, int] | None] | None = None,
) -> tuple[list[Block], list[tuple[str, str]], list[str]]:
    """Choose the RAM blocks among ``mappings``: ``(blocks, skipped [(mapping, reason)], warnings)``.

    ``resident(mapping)`` -> ``(first, end)`` addresses of its resident (or swapped) pages, or None:
    where a trimmed mapping's window is placed (at the first resident page, kept inside the mapping;
    without it, or when nothing is resident, the mapping's first bytes)."""
    skipped: list[tuple[str, str]] = []
    cands: list[tuple[Mapping, str]] = []
    for m in mappings:
        if not m.writable:
            continue
        if m.path in SPECIAL_MAPPINGS:
            skipped.append((m.describe(), "special kernel mapping"))
            continue
        if not m.readable:
            skipped.append((m.describe(), "writable but not readable"))
            continue
        if m.size <= 0 or m.size % page_size:
            skipped.append((m.describe(), f"size {m.size} is not a multiple of the page size {page_size}"))
            continue
        name = _base_name(m)
        if include and not _matches(m, name, include):
            continue
        cands.append((m, name))
    warnings: list[str] = []
    total = sum(m.size for m, _ in cands)
    caps = {id(m): m.size for m, _ in cands}
    if max_bytes is not None and total > max_bytes:
        cap = _water_fill([m.size for m, _ in cands], max_bytes, page_size)
        left = max_bytes - sum(min(m.size, cap) for m, _ in cands)
        trimmed = dropped = 0
        for m, _ in cands:
            if m.size > cap:
                size = cap
                if left >= page_size:  # what the equal share leaves over: a page each, in address order
                    size += page_size
                    left -= page_size
                unit = max(page_size, m.kernel_page_size)
                caps[id(m)] = size // unit * unit
                if caps[id(m)]:
                    trimmed += 1
                else:
                    dropped += 1
                    skipped.append((m.describe(), f"over the {max_bytes} byte cap"))
        kept = sum(caps.values())
        warnings.append(
            f"writable mappings total {total} bytes, over the cap of {max_bytes}: {trimmed} largest trimmed to "
            f"{cap}-{cap + page_size} bytes" + (f", {dropped} skipped" if dropped else "")
            + f"; recording {kept} bytes"
        )
    blocks: list[Block] = []
    seen: set[str] = set()
    for m, name in cands:
        size = caps[id(m)]
        if size <= 0:
            continue
        start = m.start
        if size < m.size and resident is not None:
            span = resident(m)
            if span is not None:
                unit = max(page_size, m.kernel_page_size)
                start = min(max(span[0] // unit * unit, m.start), m.end - size)
        nm = _fit(name)
        if nm in seen:
            nm = _fit(name, f"@{m.start:x}")
        k = 2
        while nm in seen:
            nm = _fit(name, f"@{m.start:x}#{k}")
            k += 1
        seen.add(nm)
        blocks.append(Block(nm, start, size, m, m.kernel_page_size))
        if size < m.size:
            warnings.append(f"block {nm!r}: trimmed to {size} of {m.size} bytes, {start:#x}-{start + size:#x} "
                            f"({m.describe()})")
    return blocks, skipped, warnings


# --------------------------------------------------------------------------------------------------
# Soft-dirty support
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def soft_dirty_supported() -> tuple[bool, str]:
    """Does this kernel track soft-dirty bits? ``(yes, reason)``. Probed on the calling process: clear
    its soft-dirty bits, write one page, and read bit 55 of that page's pagemap entry."""
    try:
        buf = mmap.mmap(-1, PAGE_SIZE)
    except OSError as e:  # pragma: no cover
        return False, f"probe failed: {e}"
    try:
        buf[0] = 1
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("4")
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError as e:
            return False, f"/proc/self/clear_refs or pagemap unusable: {e.strerror or e}"
        try:
            def bit55() -> bool:
                raw = os.pread(fd, 8, addr // PAGE_SIZE * 8)
                return len(raw) == 8 and bool(int.from_bytes(raw, "little") >> 55 & 1)

            before = bit55()
            buf[0] = 2
            after = bit55()
        finally:
            os.close(fd)
        if not before and after:
            return True, "kernel sets soft-dirty bits (probe page dirty after write)"
        if not after:
            return False, "kernel does not set soft-dirty bits (built without CONFIG_MEM_SOFT_DIRTY?)"
        return False, "soft-dirty bit not cleared by clear_refs"
    finally:
        buf.close()


# --------------------------------------------------------------------------------------------------
# The target process
# --------------------------------------------------------------------------------------------------


def _permission_error(pid: int, what: str, e: OSError) -> CaptureError:
    return CaptureError(
        f"permission denied: {what} of process {pid} ({e.strerror}); attaching needs ptrace access: run as the "
        f"process's user with kernel.yama.ptrace_scope=0, or as root / with CAP_SYS_PTRACE"
    )


class _Proc:
    """The target, addressed by a /proc/PID directory fd (and a pidfd for signals)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.dirfd = -1
        self.memfd = -1
        self.pagemapfd = -1
        self.pidfd = -1
        try:
            self.dirfd = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise CaptureError(f"no process with pid {pid}") from None
        except PermissionError as e:
            raise _permission_error(pid, f"/proc/{pid}", e) from None
        if hasattr(os, "pidfd_open"):
            try:
                self.pidfd = os.pidfd_open(pid)
            except ProcessLookupError:
                self.close()
                raise CaptureError(f"no process with pid {pid}") from None
            except OSError:
                self.pidfd = -1
        if self.state() in ("Z", "X"):
            self.close()
            raise CaptureError(f"process {pid} has exited (zombie)")
        try:
            self.memfd = self._open("mem")
        except PermissionError as e:
            self.close()
            raise _permission_error(pid, f"opening /proc/{pid}/mem", e) from None
        except _Gone:
            self.close()
            raise CaptureError(f"process {pid} has exited") from None

    # -- files -------------------------------------------------------------------------------------
    def _open(self, name: str, flags: int = os.O_RDONLY) -> int:
        try:
            return os.open(name, flags | os.O_CLOEXEC, dir_fd=self.dirfd)
        except (FileNotFoundError, ProcessLookupError):
            raise _Gone(name) from None

    def _read_text(self, name: str) -> str:
        fd = self._open(name)
        try:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    break
                chunks.append(b)
        except ProcessLookupError:
            raise _Gone(name) from None
        finally:
            os.close(fd)
        return b"".join(chunks).decode(errors="surrogateescape")

    def state(self) -> str:
        try:
            stat = self._read_text("stat")
        except _Gone:
            return "X"
        return stat.rpartition(")")[2].split()[0] if ")" in stat else "?"

    def thread_states(self) -> list[str]:
        try:
            task = os.open("task", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.dirfd)
        except OSError:
            return []
        out = []
        try:
            for t in os.listdir(task):
                try:
                    fd = os.open(f"{t}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=task)
                except OSError:
                    continue  # a thread that just exited
                try:
                    s = os.read(fd, 4096).decode(errors="replace")
                except OSError:
                    continue
                finally:
                    os.close(fd)
                out.append(s.rpartition(")")[2].split()[0] if ")" in s else "?")
        finally:
            os.close(task)
        return out

    def cmdline(self) -> list[str]:
        try:
            raw = self._read_text("cmdline")
        except (_Gone, OSError):
            return []
        return [a for a in raw.split("\0") if a]

    def comm(self) -> str:
        try:
            return self._read_text("comm").strip()
        except (_Gone, OSError):
            return "?"

    def maps(self, smaps: bool = False) -> list[Mapping]:
        name = "smaps" if smaps else "maps"
        try:
            text = self._read_text(name)
        except PermissionError as e:
            raise _permission_error(self.pid, f"reading /proc/{self.pid}/{name}", e) from None
        ms = parse_maps(text, smaps=smaps)
        if not ms:
            if self.state() not in ("Z", "X"):
                raise CaptureError(f"process {self.pid} has no memory mappings (a kernel thread?)")
            raise _Gone(name)  # a zombie has no mappings
        return ms

    def read(self, addr: int, view: memoryview) -> list[tuple[int, int]]:
        """Read ``len(view)`` bytes at ``addr`` into ``view``. Returns the ranges ``(lo, hi)`` (byte offsets
        into ``view``, page aligned) the kernel refused (EIO/EFAULT), which are zero-filled."""
        n = len(view)
        pos = 0
        bad: list[tuple[int, int]] = []
        while pos < n:
            try:
                k = os.preadv(self.memfd, [view[pos:]], addr + pos)
            except OSError as e:
                if e.errno in (errno.EIO, errno.EFAULT):
                    nxt = min(n, (pos // PAGE_SIZE + 1) * PAGE_SIZE)
                    view[pos:nxt] = bytes(nxt - pos)
                    if bad and bad[-1][1] == pos:
                        bad[-1] = (bad[-1][0], nxt)
                    else:
                        bad.append((pos, nxt))
                    pos = nxt
                    continue
                if e.errno == errno.ESRCH:
                    raise _Gone("mem") from None
                if e.errno in (errno.EACCES, errno.EPERM):
                    raise _permission_error(self.pid, f"reading /proc/{self.pid}/mem", e) from None
                raise
            if k == 0:
                raise _Gone("mem")  # the address space is gone (exit or exec)
            pos += k
        return bad

    def pagemap(self, addr: int, npages: int) -> np.ndarray:
        if self.pagemapfd < 0:
            self.pagemapfd = self._open("pagemap")
        want = npages * 8
        raw = os.pread(self.pagemapfd, want, addr // PAGE_SIZE * 8)
        if len(raw) < want:  # only past the end of the address space
            raw = raw + bytes(want - len(raw))
        return np.frombuffer(raw, dtype="<u8").astype(np.uint64, copy=False)

    def clear_soft_dirty(self) -> None:
        fd = self._open("clear_refs", os.O_WRONLY)
        try:
            os.write(fd, b"4")
        except ProcessLookupError:
            raise _Gone("clear_refs") from None
        finally:
            os.close(fd)

    def signal(self, sig: int) -> None:
        try:
            if self.pidfd >= 0:
                signal.pidfd_send_signal(self.pidfd, sig)
            else:
                os.kill(self.pid, sig)
        except ProcessLookupError:
            raise _Gone("signal") from None
        except PermissionError as e:
            raise _permission_error(self.pid, f"sending signal {signal.Signals(sig).name}", e) from None

    def stop(self, timeout: float = 5.0) -> bool:
        """SIGSTOP and wait until every thread is stopped; False if that was not seen within ``timeout``."""
        self.signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        delay = 0.0002
        while True:
            states = self.thread_states()
            if not states or any(s in ("Z", "X") for s in states) and self.state() in ("Z", "X"):
                raise _Gone("stop")
            if all(s in ("T", "t", "Z", "X") for s in states):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def cont(self) -> None:
        try:
            self.signal(signal.SIGCONT)
        except _Gone:
            pass

    def close(self) -> None:
        for name in ("memfd", "pagemapfd", "pidfd", "dirfd"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BlockReport:
    name: str
    start: int
    size: int
    mapping_start: int
    mapping_size: int
    host_page_size: int
    perms: str
    path: str


@dataclass
class ProcessCaptureReport:
    """What a capture did: the trace, the blocks, the dirty-detection method and everything it skipped."""

    trace: Path
    pid: int
    target: list[str]
    command: str
    method: str
    method_reason: str
    kernel: str
    frozen: bool
    rounds: int
    pages_per_round: list[int]
    page_size: int
    ram_bytes: int
    blocks: list[BlockReport]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    round_times: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    launched: bool = False
    exit_status: int | None = None

    @property
    def pages(self) -> int:
        return sum(self.pages_per_round)

    def block(self, address: int) -> BlockReport:
        """The block holding ``address`` (KeyError if none)."""
        for b in self.blocks:
            if b.start <= address < b.start + b.size:
                return b
        raise KeyError(f"no block holds address {address:#x}")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["trace"] = str(self.trace)
        d["pages"] = self.pages
        d["skipped"] = [list(s) for s in self.skipped]
        return d


# --------------------------------------------------------------------------------------------------
# Capture
# --------------------------------------------------------------------------------------------------


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


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end indices of the True runs of a boolean array (vectorized)."""
    d = np.diff(np.concatenate(([0], mask.view(np.int8), [0])).astype(np.int8))
    return np.flatnonzero(d == 1), np.flatnonzero(d == -1)


def _alive(block: Block, starts: np.ndarray, ends: np.ndarray, ps: int) -> np.ndarray:
    """Which pages of ``block`` are still covered by a mapping (sorted ``starts``/``ends``)."""
    n = block.size // ps
    i0 = int(np.searchsorted(ends, block.start, side="right"))
    i1 = int(np.searchsorted(starts, block.end, side="left"))
    if i1 - i0 == 1 and starts[i0] <= block.start and ends[i0] >= block.end:
        return np.ones(n, bool)
    alive = np.zeros(n, bool)
    for i in range(i0, i1):  # one step per overlapping mapping, not per page
        lo = max(int(starts[i]), block.start) - block.start
        hi = min(int(ends[i]), block.end) - block.start
        if hi > lo:
            alive[lo // ps : -(-hi // ps)] = True
    return alive


class _Notes:
    """Per-block counters of pages not read as they should be, turned into report lines at the end."""

    def __init__(self) -> None:
        self.zero_filled: dict[str, list[str]] = {}
        self.unreadable: dict[str, int] = {}
        self.vanished: dict[int, int] = {}

    def lines(self) -> list[str]:
        out = []
        for name, ranges in self.zero_filled.items():
            out.append(f"block {name!r}: round 0 could not read {', '.join(ranges)} (kernel refused: EIO, or "
                       f"unmapped since the smaps read); recorded as zero pages")
        for name, n in self.unreadable.items():
            out.append(f"block {name!r}: {n} page reads refused by the kernel in rounds >= 1; those pages keep "
                       f"their last content")
        if self.vanished:
            per = ", ".join(f"round {r}: {n}" for r, n in sorted(self.vanished.items()))
            out.append(f"pages no longer mapped (not read; the trace keeps their last content): {per}")
        return out


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
            ok, why = soft_dirty_supported()
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
            t0 = time.monotonic()
            for r in range(rounds):
                current_round = r
                if r:
                    delay = t0 + r * interval - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                round_times.append(round(time.monotonic() - t0, 4))
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
                except _Gone as e:
                    raise gone(str(e)) from None
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
        )
    finally:
        proc.close()


def _read_ranges(proc: _Proc, block: Block, buf: np.ndarray, mask: np.ndarray, ps: int) -> np.ndarray:
    """Read the pages of ``block`` selected by ``mask`` into ``buf`` (one preadv per run); returns the
    mask of pages the kernel refused (zero-filled in ``buf``)."""
    bad = np.zeros(len(mask), bool)
    view = memoryview(buf)
    starts, ends = _runs(mask)
    for s, e in zip(starts.tolist(), ends.tolist()):
        for lo, hi in proc.read(block.start + s * ps, view[s * ps : e * ps]):
            bad[s + lo // ps : s + -(-hi // ps)] = True
    return bad


def _zero_fill_note(block: Block, bad: np.ndarray, notes: _Notes, unreadable: str, ps: int) -> None:
    if not bad.any():
        return
    starts, ends = _runs(bad)
    ranges = [f"{block.start + s * ps:#x}-{block.start + e * ps:#x}" for s, e in zip(starts.tolist(), ends.tolist())]
    if unreadable == "error":
        raise CaptureError(
            f"block {block.name!r} ({block.mapping.describe()}): the kernel refused to read {int(bad.sum())} pages "
            f"at {', '.join(ranges[:4])}{' …' if len(ranges) > 4 else ''} (EIO, or unmapped since the smaps read)"
        )
    notes.zero_filled.setdefault(block.name, []).extend(ranges)


def _read_diff(proc: _Proc, r: int, blocks: list[Block], alive: list[np.ndarray], image: list[np.ndarray],
               scratch: list[np.ndarray], notes: _Notes, unreadable: str) -> list[np.ndarray]:
    ps = PAGE_SIZE
    out = []
    for bi, b in enumerate(blocks):
        a = alive[bi]
        if r == 0:
            bad = _read_ranges(proc, b, image[bi], a, ps)
            _zero_fill_note(b, bad | ~a, notes, unreadable, ps)
            out.append(np.arange(len(a), dtype=np.int64))
            continue
        bad = _read_ranges(proc, b, scratch[bi], a, ps)
        if bad.any():
            notes.unreadable[b.name] = notes.unreadable.get(b.name, 0) + int(bad.sum())
        ok = a & ~bad
        cur = scratch[bi].view(np.uint64).reshape(len(a), -1)
        old = image[bi].view(np.uint64).reshape(len(a), -1)
        changed = (cur != old).any(axis=1) & ok
        idx = np.flatnonzero(changed)
        if len(idx):
            image[bi].reshape(-1, ps)[idx] = scratch[bi].reshape(-1, ps)[idx]
        out.append(idx)
    return out


def _read_soft_dirty(proc: _Proc, r: int, blocks: list[Block], alive: list[np.ndarray], image: list[np.ndarray],
                     was_present: list[np.ndarray], notes: _Notes, unreadable: str) -> list[np.ndarray]:
    ps = PAGE_SIZE
    present = PM_PRESENT | PM_SWAPPED
    dirty: list[np.ndarray] = []
    if r == 0:
        proc.clear_soft_dirty()
        for bi, b in enumerate(blocks):
            pm = proc.pagemap(b.start, b.size // ps)
            was_present[bi] = (pm & present) != 0
            dirty.append(np.ones(len(pm), bool))
    else:
        for bi, b in enumerate(blocks):
            pm = proc.pagemap(b.start, b.size // ps)
            now = (pm & present) != 0
            # soft-dirty, or zapped since the last round (MADV_DONTNEED does not set soft-dirty)
            dirty.append((((pm & PM_SOFT_DIRTY) != 0) | (was_present[bi] & ~now)) & alive[bi])
            was_present[bi] = now
        proc.clear_soft_dirty()  # after the pagemap reads, before the page reads
    out = []
    for bi, b in enumerate(blocks):
        d = dirty[bi]
        if r == 0:
            bad = _read_ranges(proc, b, image[bi], alive[bi], ps)
            _zero_fill_note(b, bad | ~alive[bi], notes, unreadable, ps)
            out.append(np.arange(len(d), dtype=np.int64))
            continue
        bad = _read_ranges(proc, b, image[bi], d, ps)
        if bad.any():
            notes.unreadable[b.name] = notes.unreadable.get(b.name, 0) + int(bad.sum())
        out.append(np.flatnonzero(d & ~bad))
    return out
