"""``pagecodec capture process``: record a live Linux process's writable memory as a trace.

A process stands in for a guest: its writable mappings are the RAM blocks, and every ``interval``
seconds the pages written since the last look form a round, exactly like QEMU's dirty-bitmap syncs.

**A timed dirty log (trace v2).** The trace is what ``pagecodec simulate`` replays: round 0 is kind
``"image"`` (all of the recorded memory at the start, time 0), round k ≥ 1 kind ``"slice"``: the pages
written during ``(t[k-1], t[k]]`` with their contents at ``t[k]`` (the pages of a round are the same as
in an untimed capture; only the per-round ``round_time_s``/``round_kind`` are added). ``t[k]`` is the
**process's running time** since round 0, taken when the slice's contents are fixed (the ``SIGSTOP``
that freezes the round): the time the capture holds the process stopped while reading is excluded,
because the process writes nothing then and the log's dirty rate must be the process's own (a
migrated guest keeps running while QEMU syncs its bitmap). Rounds are scheduled on that clock (round k
when the process has run ``k · interval`` s), so slices are ``interval`` long and the capture's wall
time is the log's duration plus the frozen time (the report's ``frozen_s``). Without freeze nothing is
excluded and ``t[k]`` is when round k's reading starts. See :mod:`.clock`. Traces written before (v1,
untimed) still read, as untimed passes (``simulate`` refuses them with a clear error).

**What "written" means depends on the method** (below): with ``soft-dirty`` a slice holds the pages
the process *wrote* (stored to) in the interval, even with the same bytes, as QEMU's dirty bitmap does;
with ``diff`` it holds the pages whose content *changed* since the previous round, so a page rewritten
with its own content, or changed and changed back within an interval, is missing, and a diff log's
dirty rate is a lower bound on the written rate. The method is in the trace's provenance command.

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

**Modules.** ``maps`` (parsing maps/smaps, naming and capping blocks), ``clock`` (the log's
running-time clock), ``target`` (the ``/proc/PID``
handle: mem, pagemap, clear_refs, SIGSTOP/SIGCONT), ``memory`` (reading a round's pages, the ``diff``
method), ``pagemap`` (the soft-dirty probe and method), ``report``, ``capture`` (``capture_process`` and
the round loop), ``errors``.
"""

from __future__ import annotations

from pagecodec.sources.process.errors import CaptureError, ProcessGoneError, _Gone
from pagecodec.sources.process.maps import (
    _MAX_NAME,
    DEFAULT_MAX_BYTES,
    PAGE_SIZE,
    SPECIAL_MAPPINGS,
    Block,
    Mapping,
    parse_maps,
    select_blocks,
)
from pagecodec.sources.process.target import _permission_error, _Proc
from pagecodec.sources.process.memory import _alive, _Notes, _read_diff, _read_ranges, _runs, _zero_fill_note
from pagecodec.sources.process.pagemap import PM_PRESENT, PM_SOFT_DIRTY, PM_SWAPPED, _read_soft_dirty, soft_dirty_supported
from pagecodec.sources.process.report import BlockReport, ProcessCaptureReport
from pagecodec.sources.process.capture import (
    DEFAULT_ROUNDS,
    METHODS,
    _capture,
    _die_with_parent,
    _terminate,
    capture_command,
    capture_process,
)

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
