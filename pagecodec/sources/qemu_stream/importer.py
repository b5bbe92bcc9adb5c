"""Import a real QEMU migration stream (``migrate "exec:cat > FILE"``) as a trace.

The file is a QEVM stream (QEMU 4.1 … 10.x, precopy): header and configuration section, optional
QEMU_VM_COMMAND sections, the iterable "ram" section as START (MEM_SIZE block list), PART… and END,
then device sections (FULL, not length-prefixed), EOF and the VMDESCRIPTION JSON trailer. The load side
(``ram_load_precopy`` in QEMU's migration/ram.c) is :class:`pagecodec.chain.receiver.Receiver`, run
with the decoders of QEMU's own record formats (:func:`pagecodec.codecs.qemu.qemu_codecs`, no
third-party plugins); it rebuilds RAM as one numpy array per block and shows this module, its
:class:`~pagecodec.chain.receiver.RecordObserver`, every page record in stream order, which it cuts
into rounds:

* **Rounds are passes.** QEMU's page search sweeps RAM in block order (MEM_SIZE order), offsets
  ascending, and wraps to the first block when it reaches the end; a new round starts where the
  order wraps, i.e. at a page record whose (block, offset) is not after the previous page record's,
  or at a page already sent in the current round (a pass sends a page at most once). Section
  boundaries (QEMU splits a pass by rate limit) and dirty-bitmap syncs do not start rounds.
* **Compress threads reorder records.** With the compress capability, each thread buffers its
  records (COMPRESS_PAGE and the ZERO records of the zero pages it finds) and they reach the stream
  when the thread is next used, so offsets inside a block arrive permuted — even in the first pass,
  even before the first COMPRESS_PAGE record (checked on a real QEMU 7.2 stream). QEMU flushes every
  thread on a block change and when the search wraps, so block order stays monotonic. The importer
  detects the permutation in the first pass (an offset going back while the first pass is still
  incomplete: QEMU's first pass sends every page) and from then on starts a round only at a block that
  goes back or a page sent twice. Two passes whose pages fall in one block without repeats then merge
  into one round (reported as ``record_order: "compress-threads"``).
* **Round 0 is the full RAM image.** QEMU's first pass (bulk stage) sends every page of every block
  (the dirty bitmap starts all ones), zero pages as ZERO records. If a stream's first pass is
  incomplete (free-page hinting, virtio-mem, a stream cut at the start) the import fails with a
  TraceError. With ``x-ignore-shared``, blocks that receive no page in the first pass are shared
  blocks QEMU does not migrate; they are left out of the trace and listed in the report.
* A round's rows are the pages sent in that pass with their content as rebuilt after their record:
  ZERO → zeros, PAGE → the page, XBZRLE → the old page patched, COMPRESS_PAGE → the inflated page.
  XBZRLE pages whose content did not change are never sent, so they are not in the round.

Checks follow QEMU's load side (see the receiver): XBZRLE encoding byte 0x01 and length ≤ page size,
COMPRESS_PAGE length ≤ compressBound(page size) and exactly one page of zlib output, ZERO fill byte 0
(newer QEMU's rule), offsets inside their block, known blocks, footers naming the section, the MEM_SIZE
block list with its postcopy-ram and x-ignore-shared fields, harmless commands only.

Device sections are not length-prefixed, so the import stops after the RAM END section and checks that
the file is whole with the VMDESCRIPTION trailer (``0x00`` EOF, ``0x06``, be32 len, JSON to the end of
the file), as scripts/analyze-migration.py locates it.

Nothing is written unless the whole RAM part parses: rounds stream into a :class:`TraceWriter` whose
temporary file is renamed into place only at the end, and removed on any error.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...chain.receiver import PageRecords, Receiver, RecordObserver
from ...codecs.qemu import qemu_codecs
from ...errors import TraceError, WireError
from ...wire import qevm
from ...wire.flags import RAM_SAVE_FLAG_XBZRLE, SectionType
from ...wire.qevm import find_vmdesc, stream_page_size
from ...wire.reader import StreamReader
from ...trace.format import DEFAULT_ROW_GROUP_PAGES, Provenance, RAMBlockInfo, TraceMeta, TraceWriter

__all__ = ["ImportReport", "import_qemu_stream"]

_RECORD_KEYS = ("mem_size", "eos", "zero", "page", "xbzrle", "xbzrle_bytes", "compress", "multifd_flush")


@dataclass
class ImportReport:
    """What :func:`import_qemu_stream` found and wrote."""

    stream: str
    trace: str
    machine: str | None
    page_size: int
    blocks: list[RAMBlockInfo]
    records: dict[str, int]
    ram_sections: int
    rounds: int
    pages_per_round: list[int]
    stream_bytes: int = 0
    ram_end_offset: int = 0
    vmdesc: bool = False
    capabilities: list[str] = field(default_factory=list)
    postcopy_advised: bool = False
    ignore_shared: bool = False
    ignored_blocks: list[str] = field(default_factory=list)
    commands: dict[str, int] = field(default_factory=dict)
    record_order: str = "sequential"  # or "compress-threads" (see the module docstring)
    command: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "trace": self.trace,
            "machine": self.machine,
            "page_size": self.page_size,
            "blocks": [b.to_dict() for b in self.blocks],
            "records": dict(self.records),
            "ram_sections": self.ram_sections,
            "rounds": self.rounds,
            "pages_per_round": list(self.pages_per_round),
            "stream_bytes": self.stream_bytes,
            "ram_end_offset": self.ram_end_offset,
            "vmdesc": self.vmdesc,
            "capabilities": list(self.capabilities),
            "postcopy_advised": self.postcopy_advised,
            "ignore_shared": self.ignore_shared,
            "ignored_blocks": list(self.ignored_blocks),
            "commands": dict(self.commands),
            "record_order": self.record_order,
            "command": self.command,
        }


def import_qemu_stream(
    stream_path: str | os.PathLike[str],
    trace_path: str | os.PathLike[str],
    *,
    progress: Callable[[int], None] | None = None,
    command: str | None = None,
    require_vmdesc: bool = True,
    max_ram: int | None = None,
) -> ImportReport:
    """Parse the QEVM file ``stream_path`` and write its RAM passes as the trace ``trace_path``.

    ``progress(n)`` is called with the number of stream bytes consumed since the last call.
    ``command`` is recorded as the trace's provenance (default: the equivalent ``pagecodec trace
    import-qemu`` command line). ``require_vmdesc=False`` accepts a file without the VMDESCRIPTION
    trailer (machines with ``suppress-vmdesc``); its completeness after the RAM data is then not checked.
    Raises WireError (malformed or unsupported stream, with the byte offset) or TraceError (the passes
    do not make a trace, e.g. an incomplete first pass); on any error nothing is written. ``max_ram``:
    the most RAM the stream's MEM_SIZE list may claim (default: what the machine holds; see
    :class:`~pagecodec.chain.receiver.Receiver`).
    """
    if command is None:
        command = f"pagecodec trace import-qemu {shlex.quote(str(stream_path))} -o {shlex.quote(str(trace_path))}"
        if not require_vmdesc:
            command += " --no-vmdesc"
    imp = _Importer(Path(stream_path), Path(trace_path), progress, command, require_vmdesc, max_ram)
    return imp.run()


class _Importer(RecordObserver):
    """Drives a Receiver over the stream and cuts the page records it reports into rounds."""

    def __init__(
        self, stream: Path, trace: Path, progress: Callable[[int], None] | None, command: str, require_vmdesc: bool,
        max_ram: int | None = None,
    ) -> None:
        self.stream = stream
        self.max_ram = max_ram
        self.trace = trace
        self.progress = progress
        self.provenance_command = command
        self.require_vmdesc = require_vmdesc
        self.src = str(stream)
        self.writer: TraceWriter | None = None
        self.trace_index: np.ndarray | None = None  # stream block index -> trace block index (-1: ignored)
        self.ignored: list[str] = []
        self.pages_per_round: list[int] = []
        self.round = 0
        self.relaxed = False
        self.seen: np.ndarray | None = None  # per page (global index in MEM_SIZE order): sent in this round
        self.parts: list[np.ndarray] = []  # this round's pages (global indexes), in stream order
        self.count = 0
        self.last_g = -1
        self.last_b = -1
        self.undo: tuple[int, np.ndarray, np.ndarray] | None = None
        self._reported = 0
        self.section: SectionType | None = None
        self.end_pages = 0  # page records of the RAM END section (ram_save_complete)
        self.held: list[tuple[int, int, np.ndarray, np.ndarray]] = []  # rows not yet written (_rows)
        self.held_rows = 0

    # -- driver ---------------------------------------------------------------------------------
    def run(self) -> ImportReport:
        r = StreamReader.open(self.stream)  # WireError naming the file if it cannot be read
        if self.trace.exists() and self.trace.is_dir():
            raise TraceError(f"{self.trace}: is a directory")
        try:
            rep = self._run(r)
        except BaseException:
            if self.writer is not None:
                self.writer.abort()
            raise
        return rep

    def _run(self, r: StreamReader) -> ImportReport:
        trailer = find_vmdesc(r.view_np())
        hdr = qevm.read_file_header(r)
        r.pos = 0
        self.ps = ps = stream_page_size(r, hdr, trailer)
        rc = self.rc = Receiver(ps, qemu_codecs(), source=self.src, zero_fill="reject", observer=self,
                                max_ram=self.max_ram)
        rc.load_stream(r, lambda _: self._tick(r), until_ram_end=True)
        ram_end = r.pos
        if not rc.blocks:
            raise r.error("the RAM sections carry no MEM_SIZE block list", ram_end)
        if trailer is not None:
            rc.locate_vmdesc(r, trailer)  # it must lie after the RAM data
        elif self.require_vmdesc:
            raise WireError(
                f"no VMDESCRIPTION trailer (EOF, 0x06, be32 len, JSON) at the end of the file: the file is "
                f"truncated after the RAM data (which ends at offset {ram_end}), or the machine suppresses "
                f"vmdesc (then import with --no-vmdesc)",
                len(r), self.src,
            )

        self._end_round(ram_end, final=True)
        if self.end_pages == 0 and self.pages_per_round:
            # ram_save_complete found nothing dirty: the trace ends with that empty pass, so a replay
            # sends the last pass as an iteration (guest running), as QEMU did
            self._end_round(ram_end, final=True)
        assert self.writer is not None
        self._flush_rows()
        self.writer.close()
        if self.progress is not None and len(r) > self._reported:
            self.progress(len(r) - self._reported)
        s = rc.stats
        counts = {**s.records, "mem_size": s.mem_size, "eos": s.eos, "multifd_flush": s.multifd_flush,
                  "xbzrle_bytes": rc.decoders[RAM_SAVE_FLAG_XBZRLE].data_bytes}  # type: ignore[attr-defined]
        return ImportReport(
            stream=self.src,
            trace=str(self.trace),
            machine=hdr.machine,
            page_size=ps,
            blocks=list(self.writer.meta.blocks),
            records={k: counts.get(k, 0) for k in _RECORD_KEYS},
            ram_sections=s.sections,
            rounds=len(self.pages_per_round),
            pages_per_round=list(self.pages_per_round),
            stream_bytes=len(r),
            ram_end_offset=ram_end,
            vmdesc=trailer is not None,
            capabilities=list(hdr.capabilities),
            postcopy_advised=rc.postcopy_advised,
            ignore_shared=bool(rc.ignore_shared),
            ignored_blocks=list(self.ignored),
            commands=dict(rc.commands),
            record_order="compress-threads" if self.relaxed else "sequential",
            command=self.provenance_command,
        )

    def _tick(self, r: StreamReader) -> None:
        if self.progress is not None and r.pos > self._reported:
            self.progress(r.pos - self._reported)
            self._reported = r.pos

    # -- rounds ---------------------------------------------------------------------------------
    def _setup(self) -> None:
        """The block list is known: index pages globally, in MEM_SIZE order."""
        self.starts = np.zeros(len(self.rc.blocks) + 1, np.int64)
        np.cumsum([b.used_length // self.ps for b in self.rc.blocks], out=self.starts[1:])
        self.total_pages = int(self.starts[-1])
        self.seen = np.zeros(self.total_pages, bool)

    def ram_section(self, header: qevm.SectionHeader, start: int, body: int) -> None:
        self.section = header.type

    def before_pages(self, records: PageRecords) -> None:
        """Pages of this round the record is about to overwrite: it sends them again, so the round
        ends inside it; keep their content for the round."""
        bi, idx = records.block, records.index
        if self.seen is None:
            self._setup()
        hit = self.seen[idx + self.starts[bi]]
        if hit.any():
            self.undo = (bi, idx[hit], self.rc.block_pages[bi][idx[hit]])

    def pages(self, records: PageRecords) -> None:
        """Pages loaded (ascending, of one block): start a round where they cannot belong to the
        current pass, count them in the pass they belong to."""
        bi, at = records.block, records.at
        if self.section == SectionType.SECTION_END:
            self.end_pages += len(records.index)
        g = records.index + self.starts[bi]
        j = self._wrap(g, bi)
        if j is not None:
            if j:
                self._admit(g[:j], bi)
            self._end_round(int(at[j]))
            g = g[j:]
        self._admit(g, bi)
        self.undo = None

    def _wrap(self, g: np.ndarray, bi: int) -> int | None:
        """Where a new pass starts among ``g``: at a page already sent in this one, or at one that is
        not after the previous page (unless compress threads reorder records). None: nowhere."""
        assert self.seen is not None
        g0 = int(g[0])
        if self.seen[g0] or (g0 < self.last_g and self._goes_back(bi)):
            return 0
        hit = np.flatnonzero(self.seen[g[1:]])  # g ascends, so only a repeat can start a pass inside it
        return int(hit[0]) + 1 if len(hit) else None

    def _goes_back(self, bi: int) -> bool:
        """A page before the previous one: a wrap, or reordered records (see the module docstring)."""
        if not self.relaxed and self.round == 0 and self.count < self.total_pages:
            # QEMU's first pass sends every page, so going back before it is complete is not a wrap:
            # records are reordered (compress threads); from now on only a block going back is.
            self.relaxed = True
        return bi < self.last_b if self.relaxed else True

    def _admit(self, g: np.ndarray, bi: int) -> None:
        assert self.seen is not None
        self.seen[g] = True
        self.parts.append(g)
        self.count += len(g)
        self.last_g = int(g[-1])
        self.last_b = bi

    def _end_round(self, at: int, final: bool = False) -> None:
        """The current pass is over (a wrap at stream offset ``at``, or the end of the RAM data)."""
        if self.seen is None:
            self._setup()
        assert self.seen is not None
        g = np.concatenate(self.parts) if self.parts else np.empty(0, np.int64)
        g.sort()
        if self.round == 0:
            self._start_trace(g, at, final)
        assert self.writer is not None and self.trace_index is not None
        ps = self.ps
        b = np.searchsorted(self.starts, g, side="right") - 1
        tb = self.trace_index[b]
        if len(g) and (tb < 0).any():
            i = int(np.flatnonzero(tb < 0)[0])
            raise TraceError(
                f"{self.src}: before offset {at}: round {self.round} sends a page of block "
                f"{self.rc.block_order[int(b[i])]!r}, which the first pass did not send (x-ignore-shared)"
            )
        if self.undo is not None:  # pages the record that ends the round overwrote: put this round's back
            ub, ui, old = self.undo
            new = self.rc.block_pages[ub][ui]
            self.rc.block_pages[ub][ui] = old
        if len(g) == 0 and self.round > 0:  # a pass that sent nothing: declare the empty round
            self._flush_rows()  # rows of earlier rounds go first
            self.writer.write(self.round, 0, np.empty(0, np.int64), np.empty((0, ps), np.uint8))
        local = g - self.starts[b]
        cuts = np.flatnonzero(np.diff(b)) + 1
        bounds = [0, *cuts.tolist(), len(g)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo == hi:
                continue
            mem2d = self.rc.block_pages[int(b[lo])]
            for c in range(lo, hi, DEFAULT_ROW_GROUP_PAGES):
                li = local[c : min(hi, c + DEFAULT_ROW_GROUP_PAGES)]
                self._rows(self.round, int(tb[lo]), li * ps, mem2d[li])  # (a copy: mem2d changes later)
        if self.undo is not None:
            self.rc.block_pages[ub][ui] = new
        self.pages_per_round.append(len(g))
        self.seen[g] = False
        self.parts = []
        self.count = 0
        self.last_g = -1
        self.last_b = -1
        self.round += 1

    def _rows(self, rnd: int, block: int, offsets: np.ndarray, pages: np.ndarray) -> None:
        """Rows of a round for the trace, written once a row group's worth is held: a stream whose
        every record starts a pass (9 bytes a round) would otherwise pay a writer call per round
        (~0.3 ms each, ~30 s per MiB of stream)."""
        self.held.append((rnd, block, offsets, pages))
        self.held_rows += len(offsets)
        if self.held_rows >= DEFAULT_ROW_GROUP_PAGES:
            self._flush_rows()

    def _flush_rows(self) -> None:
        if not self.held:
            return
        assert self.writer is not None
        if len(self.held) == 1:
            rnd, block, offsets, pages = self.held[0]
            self.writer.write(rnd, block, offsets, pages)
        else:
            self.writer.write(np.concatenate([np.full(len(o), r, np.int64) for r, _b, o, _p in self.held]),
                              np.concatenate([np.full(len(o), b, np.int64) for _r, b, o, _p in self.held]),
                              np.concatenate([o for _r, _b, o, _p in self.held]),
                              np.concatenate([p for _r, _b, _o, p in self.held]))
        self.held = []
        self.held_rows = 0

    def _start_trace(self, g0: np.ndarray, at: int, final: bool) -> None:
        """Round 0 is over: check it is the whole RAM (or every block but ignored shared ones) and
        open the writer."""
        blocks = self.rc.blocks
        nb = len(blocks)
        per_block = np.bincount(np.searchsorted(self.starts, g0, side="right") - 1, minlength=nb)[:nb]
        sizes = np.diff(self.starts)
        keep = [i for i in range(nb) if not (self.rc.ignore_shared and per_block[i] == 0)]
        self.ignored = [blocks[i].name for i in range(nb) if i not in keep]
        for i in keep:
            if per_block[i] != sizes[i]:
                present = np.zeros(int(sizes[i]), bool)
                present[g0[(g0 >= self.starts[i]) & (g0 < self.starts[i + 1])] - self.starts[i]] = True
                first = int(np.flatnonzero(~present)[0])
                where = "at the end of the RAM data" if final else f"at offset {at}, where the page order wraps"
                raise TraceError(
                    f"{self.src}: the first pass (round 0) is incomplete {where}: block "
                    f"{blocks[i].name!r} got {int(per_block[i])} of {int(sizes[i])} pages (first missing: "
                    f"offset {first * self.ps:#x}); QEMU's first pass sends every page, so this stream is not a "
                    f"whole precopy migration (free-page hinting, virtio-mem or a cut-off start?)"
                )
        if not keep:
            raise TraceError(f"{self.src}: no RAM pages in the stream")
        self.trace_index = np.full(nb, -1, np.int64)
        for ti, si in enumerate(keep):
            self.trace_index[si] = ti
        meta = TraceMeta(self.ps, tuple(blocks[i] for i in keep), Provenance.now("qemu-stream", self.provenance_command))
        self.writer = TraceWriter(self.trace, meta)
