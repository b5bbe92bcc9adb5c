"""Import a real QEMU migration stream (``migrate "exec:cat > FILE"``) as a trace.

The file is a QEVM stream (QEMU 4.1 … 10.x, precopy): header and configuration section, optional
QEMU_VM_COMMAND sections, the iterable "ram" section as START (MEM_SIZE block list), PART… and END,
then device sections (FULL, not length-prefixed), EOF and the VMDESCRIPTION JSON trailer. This module
replays the load side (``ram_load_precopy`` in QEMU's migration/ram.c) on a RAM image kept as one
numpy array per block, and cuts the sequence of page records into rounds:

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
  ZERO → zeros, PAGE → the page, XBZRLE → the old page patched (decoded here with
  :func:`pagecodec.codecs.xbzrle_kernel.decode_page`, not through a codec plugin), COMPRESS_PAGE → the
  inflated page. XBZRLE pages whose content did not change are never sent, so they are not in the
  round.

Checks follow QEMU's load side: XBZRLE encoding byte 0x01 and length ≤ page size (``load_xbzrle``),
COMPRESS_PAGE length ≤ compressBound(page size) and exactly one page of zlib output, ZERO fill byte 0,
offsets inside their block, known blocks, footers naming the section. The MEM_SIZE block list carries
extra per-block fields when postcopy-ram (be64 page size, for blocks whose page size differs from the
source's host page size) or x-ignore-shared (be64 guest address) is on (``ram_save_setup``; QEMU 4.1
removed the 4.0 "ignored" byte). x-ignore-shared is declared in the configuration's capabilities
subsection by QEMU versions that have one; otherwise both layouts are tried. Postcopy is announced by
a POSTCOPY_ADVISE command (be64 page-size summary, be64 target page size).

Device sections are not length-prefixed, so the import stops at the first section after the RAM END
section and checks that the file is whole with the VMDESCRIPTION trailer (``0x00`` EOF, ``0x06``, be32
len, JSON to the end of the file), as scripts/analyze-migration.py locates it.

Nothing is written unless the whole RAM part parses: rounds stream into a :class:`TraceWriter` whose
temporary file is renamed into place only at the end, and removed on any error.
"""

from __future__ import annotations

import json
import os
import shlex
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import DecodeError, TraceError, WireError
from ..wire import qevm
from ..wire.flags import (
    ENCODING_FLAG_XBZRLE,
    RAM_SAVE_FLAG_COMPRESS_PAGE,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_HOOK,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
    RAM_SECTION_IDSTR,
    RAM_SECTION_VERSION,
    SectionType,
    compress_bound,
)
from ..wire.reader import StreamReader
from .format import DEFAULT_ROW_GROUP_PAGES, Provenance, RAMBlockInfo, TraceMeta, TraceWriter

__all__ = ["ImportReport", "import_qemu_stream", "find_vmdesc", "MIG_CMD_NAMES"]

#: QEMU_VM_COMMAND sub-commands (savevm.c ``enum qemu_vm_cmd``).
MIG_CMD_OPEN_RETURN_PATH = 1
MIG_CMD_PING = 2
MIG_CMD_POSTCOPY_ADVISE = 3
MIG_CMD_SWITCHOVER_START = 11
MIG_CMD_NAMES = {
    0: "INVALID", 1: "OPEN_RETURN_PATH", 2: "PING", 3: "POSTCOPY_ADVISE", 4: "POSTCOPY_LISTEN",
    5: "POSTCOPY_RUN", 6: "POSTCOPY_RAM_DISCARD", 7: "PACKAGED", 8: "ENABLE_COLO", 9: "POSTCOPY_RESUME",
    10: "RECV_BITMAP", 11: "SWITCHOVER_START",
}
#: Commands a precopy stream may carry: return-path set-up and pings, the postcopy *advice* (sent
#: whenever postcopy-ram is on, whether or not the migration ever switches to postcopy), and 10.0's
#: switchover notification (sent just before the RAM END section).
_HARMLESS_COMMANDS = {MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_PING, MIG_CMD_POSTCOPY_ADVISE, MIG_CMD_SWITCHOVER_START}

_PAGE_FLAGS = RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_XBZRLE | RAM_SAVE_FLAG_COMPRESS_PAGE
_KNOWN_FLAGS = (
    _PAGE_FLAGS | RAM_SAVE_FLAG_MEM_SIZE | RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE | RAM_SAVE_FLAG_HOOK
    | RAM_SAVE_FLAG_MULTIFD_FLUSH
)
#: Longest run of fixed-size CONTINUE records (PAGE or ZERO) applied in one vectorised step.
_RUN = 4096
#: How far from the end of the file the VMDESCRIPTION trailer is looked for (analyze-migration reads
#: the last 10 MB).
VMDESC_SEARCH_BYTES = 16 << 20
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
) -> ImportReport:
    """Parse the QEVM file ``stream_path`` and write its RAM passes as the trace ``trace_path``.

    ``progress(n)`` is called with the number of stream bytes consumed since the last call.
    ``command`` is recorded as the trace's provenance (default: the equivalent ``pagecodec trace
    import-qemu`` command line). ``require_vmdesc=False`` accepts a file without the VMDESCRIPTION
    trailer (machines with ``suppress-vmdesc``); its completeness after the RAM data is then not checked.
    Raises WireError (malformed or unsupported stream, with the byte offset) or TraceError (the passes
    do not make a trace, e.g. an incomplete first pass); on any error nothing is written.
    """
    if command is None:
        command = f"pagecodec trace import-qemu {shlex.quote(str(stream_path))} -o {shlex.quote(str(trace_path))}"
        if not require_vmdesc:
            command += " --no-vmdesc"
    imp = _Importer(Path(stream_path), Path(trace_path), progress, command, require_vmdesc)
    return imp.run()


# --------------------------------------------------------------------------------------------------
# the VMDESCRIPTION trailer
# --------------------------------------------------------------------------------------------------
def find_vmdesc(buf: np.ndarray, search: int = VMDESC_SEARCH_BYTES) -> tuple[int, dict] | None:
    """Locate the trailer ``0x00 (EOF), 0x06, be32 len, JSON`` ending exactly at the end of ``buf``.

    Returns (offset of the 0x06 byte, parsed JSON) or None. JSON text holds no 0x06 byte and the
    length must reach the end of the file exactly, so at most one candidate fits.
    """
    n = len(buf)
    if n < 7:
        return None
    lo = max(1, n - search)
    cand = np.flatnonzero(buf[lo : n - 5] == SectionType.VMDESCRIPTION) + lo
    if not len(cand):
        return None
    b = buf
    lens = (
        (b[cand + 1].astype(np.int64) << 24) | (b[cand + 2].astype(np.int64) << 16)
        | (b[cand + 3].astype(np.int64) << 8) | b[cand + 4].astype(np.int64)
    )
    ok = (lens == n - cand - 5) & (b[cand + 5] == ord("{")) & (b[cand - 1] == SectionType.EOF)
    for c in cand[ok][::-1].tolist():
        try:
            desc = json.loads(bytes(buf[c + 5 : n]))
        except ValueError:
            continue
        if isinstance(desc, dict):
            return c, desc
    return None


# --------------------------------------------------------------------------------------------------
# the importer
# --------------------------------------------------------------------------------------------------
@dataclass
class _Block:
    name: str
    length: int
    host_page_size: int | None
    addr: int | None


class _Importer:
    def __init__(
        self, stream: Path, trace: Path, progress: Callable[[int], None] | None, command: str, require_vmdesc: bool
    ) -> None:
        self.stream = stream
        self.trace = trace
        self.progress = progress
        self.command = command
        self.require_vmdesc = require_vmdesc
        self.src = str(stream)
        self.records = {k: 0 for k in _RECORD_KEYS}
        self.commands: dict[str, int] = {}
        self.ram_sections = 0
        self.ram_section_id: int | None = None
        self.ram_started = False
        self.ram_ended = False
        self.footers: bool | None = None
        self.postcopy_advised = False
        self.pagesize_summary = 0
        self.blocks: list[_Block] | None = None
        self.last_block: int | None = None
        self.writer: TraceWriter | None = None
        self.trace_index: np.ndarray | None = None  # stream block index -> trace block index (-1: ignored)
        self.ignored: list[str] = []
        self.pages_per_round: list[int] = []
        self.round = 0
        self.relaxed = False
        self._reported = 0

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
        buf = r.view_np()
        trailer = find_vmdesc(buf)
        hdr = qevm.read_file_header(r)
        caps = list(hdr.capabilities)
        if "mapped-ram" in caps or "fixed-ram" in caps:
            raise r.error("mapped-ram streams (file: URI with fixed page offsets) are not supported", 0)
        self.ignore_shared: bool | None = ("x-ignore-shared" in caps) if hdr.capabilities else None
        ps = 4096
        if hdr.target_page_bits is not None:
            if not 9 <= hdr.target_page_bits <= 16:
                raise r.error(f"implausible target-page-bits {hdr.target_page_bits}", 0)
            ps = 1 << hdr.target_page_bits
        if trailer is not None:
            vps = trailer[1].get("page_size")
            if isinstance(vps, int) and not isinstance(vps, bool):
                if hdr.target_page_bits is not None and vps != ps:
                    raise r.error(f"vmdesc page_size {vps} disagrees with target-page-bits {hdr.target_page_bits}", trailer[0])
                if vps < 512 or vps > 65536 or vps & (vps - 1):
                    raise r.error(f"implausible vmdesc page_size {vps}", trailer[0])
                ps = vps
        self.ps = ps
        self._tick(r)

        while not self.ram_ended:
            self._section(r)
            self._tick(r)
        ram_end = r.pos
        if self.blocks is None:
            raise r.error("the RAM sections carry no MEM_SIZE block list", ram_end)

        if trailer is None:
            if self.require_vmdesc:
                raise WireError(
                    f"no VMDESCRIPTION trailer (EOF, 0x06, be32 len, JSON) at the end of the file: the file is "
                    f"truncated after the RAM data (which ends at offset {ram_end}), or the machine suppresses "
                    f"vmdesc (then import with --no-vmdesc)",
                    len(r), self.src,
                )
        elif trailer[0] < ram_end:
            raise r.error("VMDESCRIPTION trailer overlaps the RAM data", trailer[0])

        self._end_round(ram_end, final=True)
        assert self.writer is not None
        self.writer.close()
        if self.progress is not None and len(r) > self._reported:
            self.progress(len(r) - self._reported)
        assert self.blocks is not None
        return ImportReport(
            stream=self.src,
            trace=str(self.trace),
            machine=hdr.machine,
            page_size=ps,
            blocks=list(self.writer.meta.blocks),
            records=dict(self.records),
            ram_sections=self.ram_sections,
            rounds=len(self.pages_per_round),
            pages_per_round=list(self.pages_per_round),
            stream_bytes=len(r),
            ram_end_offset=ram_end,
            vmdesc=trailer is not None,
            capabilities=caps,
            postcopy_advised=self.postcopy_advised,
            ignore_shared=bool(self.ignore_shared),
            ignored_blocks=list(self.ignored),
            commands=dict(self.commands),
            record_order="compress-threads" if self.relaxed else "sequential",
            command=self.command,
        )

    def _tick(self, r: StreamReader) -> None:
        if self.progress is not None and r.pos > self._reported:
            self.progress(r.pos - self._reported)
            self._reported = r.pos

    # -- sections -------------------------------------------------------------------------------
    def _section(self, r: StreamReader) -> None:
        at = r.pos
        t = r.peek_byte()
        if t is None:
            raise r.error("truncated stream: the file ends before the RAM END section")
        if t == SectionType.COMMAND:
            self._command(r)
            return
        hdr = qevm.read_section_header(r)
        st = hdr.type
        if st == SectionType.EOF:
            raise r.error("EOF before the RAM END section (the RAM data is incomplete)", at)
        if st == SectionType.VMDESCRIPTION:
            raise r.error("VMDESCRIPTION before the RAM END section", at)
        if st in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            if hdr.idstr != RAM_SECTION_IDSTR:
                raise r.error(
                    f"section {hdr.idstr!r} (id {hdr.section_id}, {st.name}) before the RAM END section: "
                    f"only the RAM section can be parsed while RAM is in flight (other sections are not "
                    f"length-prefixed)", at)
            if st == SectionType.SECTION_FULL:
                raise r.error("RAM sent as a FULL section (a snapshot, not a migration stream) is not supported", at)
            if self.ram_started:
                raise r.error("a second RAM START section", at)
            if hdr.version_id != RAM_SECTION_VERSION:
                raise r.error(f"RAM section version {hdr.version_id}, expected {RAM_SECTION_VERSION}", at)
            self.ram_started = True
            self.ram_section_id = hdr.section_id
        else:  # PART / END
            if not self.ram_started or hdr.section_id != self.ram_section_id:
                raise r.error(
                    f"{st.name} of section id {hdr.section_id}, which is not RAM (RAM is "
                    f"{self.ram_section_id if self.ram_started else 'not started'}): another iterable device's "
                    f"data is interleaved with RAM and cannot be skipped", at)
        self._ram_records(r)
        self._footer(r, hdr.section_id)
        self.ram_sections += 1
        if st == SectionType.SECTION_END:
            self.ram_ended = True

    def _footer(self, r: StreamReader, sid: int) -> None:
        """QEMU writes section footers unless the machine type predates them (send-section-footer)."""
        has = r.peek_byte() == SectionType.SECTION_FOOTER
        if self.footers is None:
            self.footers = has
        if self.footers:
            qevm.read_section_footer(r, sid)

    def _command(self, r: StreamReader) -> None:
        at = r.pos
        r.get_byte()
        cmd = r.get_be16("command")
        n = r.get_be16("command length")
        data = bytes(r.get_bytes(n, "command data"))
        name = MIG_CMD_NAMES.get(cmd, f"#{cmd}")
        if cmd not in _HARMLESS_COMMANDS:
            raise r.error(
                f"QEMU_VM_COMMAND {name}: streams that switch to postcopy (or carry COLO or packaged "
                f"data) are not supported, only precopy streams", at)
        if cmd == MIG_CMD_POSTCOPY_ADVISE:
            if self.ram_started:
                raise r.error("POSTCOPY_ADVISE after the RAM section started", at)
            if n == 16:  # postcopy-ram: be64 page-size summary, be64 target page size
                self.postcopy_advised = True
                self.pagesize_summary = int.from_bytes(data[:8], "big")
                tps = int.from_bytes(data[8:], "big")
                if tps != self.ps:
                    raise r.error(f"POSTCOPY_ADVISE names target page size {tps}, the stream uses {self.ps}", at)
            elif n != 0:  # 0: postcopy of dirty bitmaps only
                raise r.error(f"POSTCOPY_ADVISE with {n} bytes of data (expected 0 or 16)", at)
        elif cmd == MIG_CMD_PING and n != 4:
            raise r.error(f"PING with {n} bytes of data (expected 4)", at)
        elif cmd in (MIG_CMD_OPEN_RETURN_PATH, MIG_CMD_SWITCHOVER_START) and n != 0:
            raise r.error(f"{name} with {n} bytes of data (expected 0)", at)
        self.commands[name] = self.commands.get(name, 0) + 1

    # -- ram_load_precopy -----------------------------------------------------------------------
    def _ram_records(self, r: StreamReader) -> None:
        ps = self.ps
        mask = ps - 1
        rec = self.records
        while True:
            at = r.pos
            word = r.get_be64("RAM record header")
            flags = word & mask
            addr = word & ~mask
            if flags & _PAGE_FLAGS:
                bi = self._block_from_stream(r, flags, at)
                blk = self.blocks[bi]  # type: ignore[index]
                if addr + ps > blk.length:
                    raise r.error(f"page offset {addr:#x} outside block {blk.name!r} of {blk.length:#x} bytes", at)
                g = int(self.starts[bi]) + addr // ps
            kind = flags & ~RAM_SAVE_FLAG_CONTINUE
            if kind == RAM_SAVE_FLAG_EOS:
                if addr:
                    raise r.error(f"EOS record with a non-zero address {addr:#x}", at)
                rec["eos"] += 1
                return
            if kind == RAM_SAVE_FLAG_MEM_SIZE:
                self._mem_size(r, addr, at)
                rec["mem_size"] += 1
                continue
            if kind == RAM_SAVE_FLAG_MULTIFD_FLUSH:
                rec["multifd_flush"] += 1
                continue
            if kind == RAM_SAVE_FLAG_ZERO:
                ch = r.get_byte("zero page fill byte")
                if ch != 0:
                    raise r.error(f"zero page record with fill byte {ch:#04x} (QEMU only sends 0)", r.pos - 1)
                self._admit(g, bi, at)
                self.mem2d[bi][addr // ps] = 0
                rec["zero"] += 1
                if flags & RAM_SAVE_FLAG_CONTINUE:
                    rec["zero"] += self._load_run(r, flags, bi, g, 1)
                continue
            if kind == RAM_SAVE_FLAG_PAGE:
                data = r.get_array(ps, "page")
                self._admit(g, bi, at)
                self.mem2d[bi][addr // ps] = data
                rec["page"] += 1
                if flags & RAM_SAVE_FLAG_CONTINUE:
                    rec["page"] += self._load_run(r, flags, bi, g, ps)
                continue
            if kind == RAM_SAVE_FLAG_XBZRLE:
                self._xbzrle(r, bi, addr, g, at)
                continue
            if kind == RAM_SAVE_FLAG_COMPRESS_PAGE:
                self._compressed(r, bi, addr, g, at)
                continue
            if kind & RAM_SAVE_FLAG_HOOK:
                raise r.error("RAM control hook records (RDMA) are not supported", at)
            raise r.error(f"unknown combination of migration flags {flags:#x}", at)

    def _block_from_stream(self, r: StreamReader, flags: int, at: int) -> int:
        """ram_block_from_stream: CONTINUE reuses the last block, else u8 len + idstr follows."""
        if self.blocks is None:
            raise r.error("page record before the MEM_SIZE block list", at)
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self.last_block is None:
                raise r.error("CONTINUE flag with no previous block", at)
            return self.last_block
        name = r.get_counted_string("block idstr")
        bi = self.block_index.get(name)
        if bi is None:
            raise r.error(f"unknown RAM block {name!r} (MEM_SIZE lists {', '.join(self.block_index)})", at)
        self.last_block = bi
        return bi

    def _xbzrle(self, r: StreamReader, bi: int, addr: int, g: int, at: int) -> None:
        """load_xbzrle: u8 encoding flag (0x01), be16 len (<= page size), the encoded delta."""
        fat = r.pos
        enc = r.get_byte("XBZRLE encoding flag")
        if enc != ENCODING_FLAG_XBZRLE:
            raise DecodeError(f"XBZRLE record with encoding flag {enc:#04x}, expected {ENCODING_FLAG_XBZRLE:#04x}", fat, self.src)
        n = r.get_be16("XBZRLE length")
        if n > self.ps:
            raise DecodeError(f"XBZRLE record of {n} bytes, more than a page ({self.ps})", fat + 1, self.src)
        dat = r.pos
        data = r.get_array(n, "XBZRLE data")
        decode_page = _xbzrle_decoder(self.src, at)
        self._admit(g, bi, at)
        decode_page(data, self.mem[bi][addr : addr + self.ps], source=self.src, base_offset=dat)
        self.records["xbzrle"] += 1
        self.records["xbzrle_bytes"] += n

    def _compressed(self, r: StreamReader, bi: int, addr: int, g: int, at: int) -> None:
        """COMPRESS_PAGE: be32 len (<= compressBound(page)), one zlib stream inflating to one page."""
        lat = r.pos
        n = r.get_be32("compressed length")
        bound = compress_bound(self.ps)
        if n > bound:
            raise DecodeError(f"compressed page of {n} bytes, more than compressBound({self.ps}) = {bound}", lat, self.src)
        dat = r.pos
        data = bytes(r.get_bytes(n, "compressed page"))
        d = zlib.decompressobj()
        try:
            out = d.decompress(data, self.ps + 1)
        except zlib.error as e:
            raise DecodeError(f"compressed page is not a valid zlib stream: {e}", dat, self.src) from None
        if not d.eof:
            raise DecodeError(f"compressed page: zlib stream incomplete after {len(out)} bytes of output", dat, self.src)
        if len(out) != self.ps or d.unused_data:
            what = f"{len(out)} bytes of output" if len(out) != self.ps else f"{len(d.unused_data)} bytes after the zlib stream"
            raise DecodeError(f"compressed page: {what}, expected exactly one page of {self.ps} bytes", dat, self.src)
        self._admit(g, bi, at)
        self.mem2d[bi][addr // self.ps] = np.frombuffer(out, np.uint8)
        self.records["compress"] += 1

    def _load_run(self, r: StreamReader, flags: int, bi: int, g_prev: int, payload: int) -> int:
        """Vectorised: the following records with the same flags (CONTINUE, fixed payload) of block
        ``bi``, as long as none of them starts a round. Returns how many were applied."""
        ps = self.ps
        stride = 8 + payload
        start = r.pos
        avail = (len(r) - start) // stride
        k = min(_RUN, avail)
        if k < 1:
            return 0
        buf = r.view_np()
        heads = np.lib.stride_tricks.as_strided(buf[start:], shape=(k, 8), strides=(stride, 1)).copy().view(">u8").ravel()
        blk = self.blocks[bi]  # type: ignore[index]
        m = np.uint64(ps - 1)
        offs = heads & ~m
        ok = ((heads & m) == np.uint64(flags)) & (offs <= np.uint64(blk.length - ps))
        payloads = np.lib.stride_tricks.as_strided(buf[start + 8 :], shape=(k, payload), strides=(stride, 1))
        if payload == 1:
            ok &= payloads[:, 0] == 0
        gl = int(self.starts[bi]) + (offs // np.uint64(ps)).astype(np.int64)
        prev = np.empty(k, np.int64)
        prev[0] = g_prev
        prev[1:] = gl[:-1]
        ok &= gl > prev
        if self.relaxed:
            ok &= ~self.seen[np.where(ok, gl, 0)]
        bad = np.flatnonzero(~ok)
        k = int(bad[0]) if len(bad) else k
        if k == 0:
            return 0
        gl = gl[:k]
        idx = gl - int(self.starts[bi])
        if payload == 1:
            self.mem2d[bi][idx] = 0
        else:
            self.mem2d[bi][idx] = payloads[:k]
        self.seen[gl] = True
        self.round_vec.append(gl)
        self.count += k
        self.last_g = int(gl[-1])
        r.pos = start + k * stride
        return k

    # -- rounds ---------------------------------------------------------------------------------
    def _admit(self, g: int, bi: int, at: int) -> None:
        """Page ``g`` (global index in MEM_SIZE order) is about to be loaded: start a round if it
        cannot belong to the current pass, then count it in the current one."""
        if self.seen[g]:
            self._end_round(at)
        elif g < self.last_g:
            if self.relaxed:
                if bi < self.last_b:
                    self._end_round(at)
            elif self.round == 0 and self.count < self.total_pages:
                # QEMU's first pass sends every page, so going back before it is complete is not a
                # wrap: records are reordered (compress threads). See the module docstring.
                self.relaxed = True
                if bi < self.last_b:
                    self._end_round(at)
            else:
                self._end_round(at)
        self.seen[g] = True
        self.round_list.append(g)
        self.count += 1
        self.last_g = g
        self.last_b = bi

    def _round_pages(self) -> np.ndarray:
        parts = list(self.round_vec)
        if self.round_list:
            parts.append(np.array(self.round_list, dtype=np.int64))
        g = np.concatenate(parts) if parts else np.empty(0, np.int64)
        g.sort()
        return g

    def _end_round(self, at: int, final: bool = False) -> None:
        """The current pass is over (a wrap at stream offset ``at``, or the end of the RAM data)."""
        g = self._round_pages()
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
                f"{self.blocks[int(b[i])].name!r}, which the first pass did not send (x-ignore-shared)"  # type: ignore[index]
            )
        local = g - self.starts[b]
        cuts = np.flatnonzero(np.diff(b)) + 1
        bounds = [0, *cuts.tolist(), len(g)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if lo == hi:
                continue
            sb = int(b[lo])
            mem2d = self.mem2d[sb]
            for c in range(lo, hi, DEFAULT_ROW_GROUP_PAGES):
                e = min(hi, c + DEFAULT_ROW_GROUP_PAGES)
                li = local[c:e]
                self.writer.write(self.round, int(tb[lo]), li * ps, mem2d[li])
        self.pages_per_round.append(len(g))
        self.seen[g] = False
        self.round_vec = []
        self.round_list = []
        self.count = 0
        self.last_g = -1
        self.last_b = -1
        self.round += 1

    def _start_trace(self, g0: np.ndarray, at: int, final: bool) -> None:
        """Round 0 is over: check it is the whole RAM (or every block but ignored shared ones) and
        open the writer."""
        assert self.blocks is not None
        nb = len(self.blocks)
        per_block = np.bincount(np.searchsorted(self.starts, g0, side="right") - 1, minlength=nb)[:nb]
        sizes = np.diff(self.starts)
        keep = [i for i in range(nb) if not (self.ignore_shared and per_block[i] == 0)]
        self.ignored = [self.blocks[i].name for i in range(nb) if i not in keep]
        for i in keep:
            if per_block[i] != sizes[i]:
                present = np.zeros(int(sizes[i]), bool)
                sel = g0[(g0 >= self.starts[i]) & (g0 < self.starts[i + 1])] - self.starts[i]
                present[sel] = True
                first = int(np.flatnonzero(~present)[0])
                where = "at the end of the RAM data" if final else f"at offset {at}, where the page order wraps"
                raise TraceError(
                    f"{self.src}: the first pass (round 0) is incomplete {where}: block "
                    f"{self.blocks[i].name!r} got {int(per_block[i])} of {int(sizes[i])} pages (first missing: "
                    f"offset {first * self.ps:#x}); QEMU's first pass sends every page, so this stream is not a "
                    f"whole precopy migration (free-page hinting, virtio-mem or a cut-off start?)"
                )
        if not keep:
            raise TraceError(f"{self.src}: no RAM pages in the stream")
        self.trace_index = np.full(nb, -1, np.int64)
        for ti, si in enumerate(keep):
            self.trace_index[si] = ti
        infos = tuple(
            RAMBlockInfo(self.blocks[i].name, self.blocks[i].length, self.blocks[i].host_page_size or self.ps)
            for i in keep
        )
        meta = TraceMeta(self.ps, infos, Provenance.now("qemu-stream", self.command))
        self.writer = TraceWriter(self.trace, meta)

    # -- MEM_SIZE -------------------------------------------------------------------------------
    def _mem_size(self, r: StreamReader, total: int, at: int) -> None:
        """The block list: per block u8 len, idstr, be64 used_length [, be64 page size (postcopy-ram,
        page size != host page size)] [, be64 address (x-ignore-shared)]; lengths add up to ``total``."""
        if self.blocks is not None:
            raise r.error("a second MEM_SIZE block list", at)
        if total == 0:
            raise r.error("MEM_SIZE of 0 bytes: no RAM blocks", at)
        options = [self.ignore_shared] if self.ignore_shared is not None else [False, True]
        found = None
        for ign in options:
            found = self._parse_block_list(r, r.pos, total, bool(ign), [])
            if found is not None:
                self.ignore_shared = bool(ign)
                break
        if found is None:
            self._block_list_error(r, total, at, bool(options[0]))
        assert found is not None
        blocks, end = found
        r.pos = end
        self.blocks = blocks
        self.block_index = {b.name: i for i, b in enumerate(blocks)}
        ps = self.ps
        counts = np.array([b.length // ps for b in blocks], dtype=np.int64)
        self.starts = np.zeros(len(blocks) + 1, np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self.total_pages = int(self.starts[-1])
        self.mem = [np.zeros(b.length, np.uint8) for b in blocks]
        self.mem2d = [m.reshape(-1, ps) for m in self.mem]
        self.seen = np.zeros(self.total_pages, bool)
        self.round_vec: list[np.ndarray] = []
        self.round_list: list[int] = []
        self.count = 0
        self.last_g = -1
        self.last_b = -1

    def _parse_block_list(
        self, r: StreamReader, pos: int, remaining: int, ign: bool, acc: list[_Block]
    ) -> tuple[list[_Block], int] | None:
        """Tolerant parse of the rest of the list from ``pos``; None if this layout does not fit.

        Every block's optional postcopy page size is tried both ways (a be64 power of two among the
        advised page sizes, or absent); the list must add up exactly and be followed by a plausible
        record header."""
        buf = r.view_np()
        n = len(buf)
        ps = self.ps
        if remaining == 0:
            if pos + 8 > n:
                return None
            w = int.from_bytes(bytes(buf[pos : pos + 8]), "big")
            fl = w & (ps - 1)
            if fl == 0 or fl & ~_KNOWN_FLAGS or (fl == RAM_SAVE_FLAG_EOS and w != fl):
                return None
            return acc, pos
        if pos >= n:
            return None
        ln = int(buf[pos])
        if ln == 0 or pos + 1 + ln + 8 > n:
            return None
        raw = bytes(buf[pos + 1 : pos + 1 + ln])
        if any(c < 0x20 or c > 0x7E for c in raw):
            return None
        name = raw.decode("ascii")
        if any(b.name == name for b in acc):
            return None
        p = pos + 1 + ln
        length = int.from_bytes(bytes(buf[p : p + 8]), "big")
        p += 8
        if length == 0 or length % ps or length > remaining:
            return None
        choices: list[int | None] = []
        if self.postcopy_advised and p + 8 <= n:
            v = int.from_bytes(bytes(buf[p : p + 8]), "big")
            if v >= ps and v & (v - 1) == 0 and v & self.pagesize_summary and v < (1 << 40):
                choices.append(v)
        choices.append(None)
        for hps in choices:
            q = p + (8 if hps is not None else 0)
            addr = None
            if ign:
                if q + 8 > n:
                    continue
                addr = int.from_bytes(bytes(buf[q : q + 8]), "big")
                q += 8
            res = self._parse_block_list(r, q, remaining - length, ign, [*acc, _Block(name, length, hps, addr)])
            if res is not None:
                return res
        return None

    def _block_list_error(self, r: StreamReader, total: int, at: int, ign: bool) -> None:
        """No layout fits: re-read the plain layout strictly to name the first fault."""
        remaining = total
        names: set[str] = set()
        while remaining > 0:
            bat = r.pos
            name = r.get_counted_string("block idstr")
            length = r.get_be64("block used_length")
            if not name:
                raise r.error("empty block idstr in MEM_SIZE", bat)
            if name in names:
                raise r.error(f"block {name!r} listed twice in MEM_SIZE", bat)
            if length == 0 or length % self.ps or length > remaining:
                raise r.error(f"block {name!r}: bad used_length {length:#x} ({remaining:#x} bytes of MEM_SIZE left)", bat)
            names.add(name)
            if ign:
                r.get_be64("block address (x-ignore-shared)")
            remaining -= length
        r.need(8, "RAM record header")
        raise r.error(
            "MEM_SIZE block list does not parse with any layout (with or without x-ignore-shared addresses"
            + (" and postcopy page sizes" if self.postcopy_advised else "") + ")", at)


def _xbzrle_decoder(source: str, at: int) -> Callable[..., None]:
    """decode_page from the XBZRLE kernel (imported when the first XBZRLE record arrives)."""
    try:
        from ..codecs.xbzrle_kernel import decode_page
    except ImportError as e:  # pragma: no cover - the kernel ships with pagecodec
        raise WireError(f"XBZRLE records need pagecodec.codecs.xbzrle_kernel, which cannot be imported: {e}", at, source) from None
    return decode_page
