"""The main stream of a multifd capture (QEMU 7.2, ``main.mig``): its structure, RAM records by page.

**Main stream** (``main.mig``): the ordinary QEVM file — header, configuration, the RAM section as
START (MEM_SIZE block list) / PART… / END, device sections, EOF, vmdesc trailer — but its RAM
sections carry only ZERO records and EOS: ``ram_save_target_page`` detects zero pages *before* it
hands a page to multifd, so zero pages stay on the main stream and every other page goes to a channel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ...chain.receiver import read_block_list
from ...errors import WireError
from ...wire import qevm
from ...wire.flags import (
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
)
from ...wire.reader import StreamReader
from .layout import _Layout

#: QEMU_VM_COMMANDs a precopy multifd stream may carry: OPEN_RETURN_PATH, PING, POSTCOPY_ADVISE without
#: postcopy-ram data (dirty-bitmap postcopy only), SWITCHOVER_START.
_HARMLESS_COMMANDS = {1: "OPEN_RETURN_PATH", 2: "PING", 3: "POSTCOPY_ADVISE", 11: "SWITCHOVER_START"}


# --- the main stream --------------------------------------------------------------------------------
@dataclass
class _RamSection:
    index: int
    type: SectionType
    start: int             # the section type byte
    body: int              # first record
    mem_size: tuple[int, int] | None
    eos: int = 0           # the EOS record
    end: int = 0           # after the footer
    g: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    kind: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))      # 0 ZERO, 1 PAGE
    rec_at: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    payload_at: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))


@dataclass
class MainStream:
    """The main stream's structure: verbatim byte ranges and RAM sections (records by global page index)."""

    path: str
    reader: StreamReader
    header: qevm.FileHeader
    layout: _Layout
    pieces: list[tuple[int, int] | _RamSection]
    sections: list[_RamSection]
    vmdesc: bool
    commands: dict[str, int]

    @property
    def zero_records(self) -> int:
        return sum(int((s.kind == 0).sum()) for s in self.sections)

    @property
    def page_records(self) -> int:
        return sum(int((s.kind == 1).sum()) for s in self.sections)


def read_main_stream(path: str | os.PathLike[str], require_vmdesc: bool = True) -> MainStream:
    """Walk a QEVM main stream up to the RAM END section (bounds-checked, WireError with offsets).

    Accepts ZERO and PAGE records (a multifd main stream has only ZERO; a single stream, for
    :func:`split_stream`, has both), MEM_SIZE (plain or with x-ignore-shared addresses) and EOS; the
    harmless QEMU_VM_COMMANDs; refuses XBZRLE, COMPRESS_PAGE, RDMA hooks, MULTIFD_FLUSH (8.1+) and
    postcopy."""
    r = StreamReader.open(path)
    src = str(path)
    buf = r.view_np()
    trailer = qevm.find_vmdesc(buf)
    hdr = qevm.read_file_header(r)
    ps = qevm.stream_page_size(r, hdr, trailer)
    ign = "x-ignore-shared" in hdr.capabilities
    pieces: list[tuple[int, int] | _RamSection] = []
    sections: list[_RamSection] = []
    commands: dict[str, int] = {}
    copy_from = 0
    ram_id: int | None = None
    layout: _Layout | None = None
    last_block: list[int | None] = [None]
    footers: bool | None = None
    while True:
        at = r.pos
        t = r.peek_byte()
        if t is None:
            raise r.error("truncated stream: the file ends before the RAM END section")
        if t == SectionType.COMMAND:
            r.get_byte()
            cmd = r.get_be16("command")
            data = bytes(r.get_bytes(r.get_be16("command length"), "command data"))
            name = _HARMLESS_COMMANDS.get(cmd, f"#{cmd}")
            if cmd not in _HARMLESS_COMMANDS or (cmd == 3 and len(data) != 0):
                raise r.error(f"QEMU_VM_COMMAND {name}{' with postcopy-ram' if cmd == 3 else ''}: only precopy "
                              f"multifd streams are supported", at)
            commands[name] = commands.get(name, 0) + 1
            continue
        sh = qevm.read_section_header(r)
        st = sh.type
        if st == SectionType.EOF:
            raise r.error("EOF before the RAM END section (the RAM data is incomplete)", at)
        if st == SectionType.VMDESCRIPTION:
            raise r.error("VMDESCRIPTION before the RAM END section", at)
        if st in (SectionType.SECTION_START, SectionType.SECTION_FULL):
            if sh.idstr != RAM_SECTION_IDSTR:
                raise r.error(f"section {sh.idstr!r} (id {sh.section_id}, {st.name}) before the RAM END section: "
                              f"only RAM can be parsed while RAM is in flight", at)
            if st == SectionType.SECTION_FULL:
                raise r.error("RAM sent as a FULL section (a snapshot, not a migration stream) is not supported", at)
            if ram_id is not None:
                raise r.error("a second RAM START section", at)
            if sh.version_id != RAM_SECTION_VERSION:
                raise r.error(f"RAM section version {sh.version_id}, expected {RAM_SECTION_VERSION}", at)
            ram_id = sh.section_id
        elif ram_id is None or sh.section_id != ram_id:
            raise r.error(f"{st.name} of section id {sh.section_id}, which is not RAM "
                          f"({ram_id if ram_id is not None else 'RAM not started'})", at)
        pieces.append((copy_from, at))
        sec = _RamSection(len(sections), st, at, r.pos, None)
        layout = _ram_records(r, sec, layout, ps, ign, last_block)
        has = r.peek_byte() == SectionType.SECTION_FOOTER
        if footers is None:
            footers = has
        if footers:
            qevm.read_section_footer(r, sh.section_id)
        sec.end = r.pos
        pieces.append(sec)
        sections.append(sec)
        copy_from = r.pos
        if st == SectionType.SECTION_END:
            break
    ram_end = r.pos
    if layout is None:
        raise r.error("the RAM sections carry no MEM_SIZE block list", ram_end)
    if trailer is None:
        if require_vmdesc:
            raise WireError(f"no VMDESCRIPTION trailer (EOF, 0x06, be32 len, JSON) at the end of the file: the file "
                            f"is truncated after the RAM data (which ends at offset {ram_end}), or the machine "
                            f"suppresses vmdesc (then import with --no-vmdesc)", len(r), src)
    elif trailer[0] < ram_end:
        raise r.error("VMDESCRIPTION trailer overlaps the RAM data", trailer[0])
    pieces.append((copy_from, len(r)))
    return MainStream(src, r, hdr, layout, pieces, sections, trailer is not None, commands)


def _ram_records(r: StreamReader, sec: _RamSection, layout: _Layout | None, ps: int, ign: bool,
                 last_block: list[int | None]) -> _Layout | None:
    mask = ps - 1
    g: list[int] = []
    kind: list[int] = []
    rec_at: list[int] = []
    pay: list[int] = []
    mv = r._mv
    n = len(r)
    pos = r.pos
    while True:
        at = pos
        if n - pos < 8:
            r.pos = pos
            r.need(8, "RAM record header")
        word = int.from_bytes(mv[pos : pos + 8], "big")
        pos += 8
        flags = word & mask
        addr = word & ~mask
        k = flags & ~RAM_SAVE_FLAG_CONTINUE
        if k == RAM_SAVE_FLAG_ZERO or k == RAM_SAVE_FLAG_PAGE:
            if layout is None:
                raise r.error("page record before the MEM_SIZE block list", at)
            if flags & RAM_SAVE_FLAG_CONTINUE:
                bi = last_block[0]
                if bi is None:
                    raise r.error("CONTINUE flag with no previous block", at)
            else:
                r.pos = pos
                name = r.get_counted_string("block idstr")
                pos = r.pos
                bi = layout.index.get(name)
                if bi is None:
                    raise r.error(f"unknown RAM block {name!r} (MEM_SIZE lists {', '.join(layout.names)})", at)
                last_block[0] = bi
            if addr + ps > layout.lengths[bi]:
                raise r.error(f"page offset {addr:#x} outside block {layout.names[bi]!r} of "
                              f"{layout.lengths[bi]:#x} bytes", at)
            if k == RAM_SAVE_FLAG_ZERO:
                if pos >= n:
                    r.pos = pos
                    r.need(1, "zero page fill byte")
                if mv[pos] != 0:
                    raise r.error(f"zero page record with fill byte {mv[pos]:#04x} (QEMU only sends 0)", pos)
                pay.append(pos)
                pos += 1
            else:
                if n - pos < ps:
                    r.pos = pos
                    r.need(ps, "page")
                pay.append(pos)
                pos += ps
            g.append(int(layout.starts[bi]) + addr // ps)
            kind.append(0 if k == RAM_SAVE_FLAG_ZERO else 1)
            rec_at.append(at)
            continue
        r.pos = pos
        if k == RAM_SAVE_FLAG_EOS:
            if addr:
                raise r.error(f"EOS record with a non-zero address {addr:#x}", at)
            sec.eos = at
            break
        if k == RAM_SAVE_FLAG_MEM_SIZE:
            if layout is not None or sec.type != SectionType.SECTION_START or g:
                raise r.error("MEM_SIZE block list outside the start of the RAM START section", at)
            layout = _mem_size(r, addr, ps, ign, at)
            sec.mem_size = (at, r.pos)
            pos = r.pos
            continue
        if k == RAM_SAVE_FLAG_MULTIFD_FLUSH:
            raise r.error("MULTIFD_FLUSH record: QEMU 8.1+ syncs multifd channels once per pass, not per "
                          "section; only QEMU 7.2-style multifd streams are supported", at)
        if k in (RAM_SAVE_FLAG_XBZRLE, RAM_SAVE_FLAG_COMPRESS_PAGE):
            what = "XBZRLE" if k == RAM_SAVE_FLAG_XBZRLE else "COMPRESS_PAGE"
            raise r.error(f"{what} record: not supported here (QEMU 7.2 sends no such records with multifd; "
                          f"import single streams with import-qemu without --channel)", at)
        if k & RAM_SAVE_FLAG_HOOK:
            raise r.error("RAM control hook records (RDMA) are not supported", at)
        raise r.error(f"unknown combination of migration flags {flags:#x}", at)
    sec.g = np.array(g, np.int64)
    sec.kind = np.array(kind, np.int8)
    sec.rec_at = np.array(rec_at, np.int64)
    sec.payload_at = np.array(pay, np.int64)
    return layout


def _mem_size(r: StreamReader, total: int, ps: int, ign: bool, at: int) -> _Layout:
    """u8 len, idstr, be64 used_length [, be64 address with x-ignore-shared] per block, adding up to ``total``."""
    if total == 0:
        raise r.error("MEM_SIZE of 0 bytes: no RAM blocks", at)
    blocks = read_block_list(r, total, ps, ign)
    return _Layout(ps, [name for name, _ in blocks], [length for _, length in blocks])
