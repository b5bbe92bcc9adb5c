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

from ...chain.receiver import PageRecords, Receiver, RecordObserver
from ...codecs.qemu import qemu_codecs
from ...errors import WireError
from ...wire import qevm
from ...wire.flags import SectionType
from ...wire.reader import StreamReader
from .layout import _Layout


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


class _Structure(RecordObserver):
    """Observes the Receiver's walk and keeps what the merge needs: where each RAM section, its MEM_SIZE
    list, its records and their payloads, its EOS and its end are; refuses what a 7.2 multifd main
    stream cannot hold."""

    def __init__(self, src: str) -> None:
        self.src = src
        self.rc: Receiver | None = None
        self.layout: _Layout | None = None
        self.pieces: list[tuple[int, int] | _RamSection] = []
        self.sections: list[_RamSection] = []
        self.copy_from = 0
        self.cur: _RamSection | None = None
        self.parts: list[tuple[np.ndarray, int, np.ndarray, np.ndarray]] = []

    def command(self, name: str, data: bytes, at: int) -> None:
        if name == "POSTCOPY_ADVISE" and data:
            raise WireError("QEMU_VM_COMMAND POSTCOPY_ADVISE with postcopy-ram: only precopy multifd streams are "
                            "supported", at, self.src)

    def ram_section(self, header: qevm.SectionHeader, start: int, body: int) -> None:
        self.pieces.append((self.copy_from, start))
        self.cur = _RamSection(len(self.sections), header.type, start, body, None)
        self.parts = []

    def mem_size(self, at: int, end: int) -> None:
        assert self.cur is not None and self.rc is not None
        if self.cur.type != SectionType.SECTION_START or self.parts:
            raise WireError("MEM_SIZE block list outside the start of the RAM START section", at, self.src)
        self.cur.mem_size = (at, end)
        ps = self.rc.page_size
        self.layout = _Layout(ps, [b.name for b in self.rc.blocks], [b.used_length for b in self.rc.blocks])

    def before_pages(self, records: PageRecords) -> None:
        if records.kind not in ("zero", "page"):
            what = {"xbzrle": "XBZRLE", "compress": "COMPRESS_PAGE"}.get(records.kind, records.kind)
            raise WireError(f"{what} record: not supported here (QEMU 7.2 sends no such records with multifd; "
                            f"import single streams with import-qemu without --channel)", int(records.at[0]), self.src)

    def pages(self, records: PageRecords) -> None:
        assert self.layout is not None
        g = records.index + int(self.layout.starts[records.block])
        self.parts.append((g, 0 if records.kind == "zero" else 1, records.at, records.payload_at))

    def multifd_flush(self, at: int) -> None:
        raise WireError("MULTIFD_FLUSH record: QEMU 8.1+ syncs multifd channels once per pass, not per section; "
                        "only QEMU 7.2-style multifd streams are supported", at, self.src)

    def eos(self, at: int) -> None:
        assert self.cur is not None
        self.cur.eos = at

    def ram_section_end(self, header: qevm.SectionHeader, end: int) -> None:
        sec = self.cur
        assert sec is not None
        sec.end = end
        if self.parts:
            sec.g = np.concatenate([p[0] for p in self.parts])
            sec.kind = np.concatenate([np.full(len(p[0]), p[1], np.int8) for p in self.parts])
            sec.rec_at = np.concatenate([p[2] for p in self.parts])
            sec.payload_at = np.concatenate([p[3] for p in self.parts])
        self.pieces.append(sec)
        self.sections.append(sec)
        self.copy_from = end
        self.cur = None


def read_main_stream(path: str | os.PathLike[str], require_vmdesc: bool = True,
                     max_ram: int | None = None) -> MainStream:
    """Walk a QEVM main stream up to the RAM END section with the Receiver (bounds-checked, WireError
    with offsets) and keep its structure.

    Accepts ZERO and PAGE records (a multifd main stream has only ZERO; a single stream, for
    :func:`split_stream`, has both), MEM_SIZE (plain or with x-ignore-shared addresses) and EOS; the
    harmless QEMU_VM_COMMANDs; refuses XBZRLE, COMPRESS_PAGE, RDMA hooks, MULTIFD_FLUSH (8.1+) and
    postcopy. ``max_ram``: the most RAM the MEM_SIZE list may claim (:class:`Receiver`)."""
    r = StreamReader.open(path)
    src = str(path)
    trailer = qevm.find_vmdesc(r.view_np())
    hdr = qevm.read_file_header(r)
    ps = qevm.stream_page_size(r, hdr, trailer)
    r.pos = 0
    walk = _Structure(src)
    rc = walk.rc = Receiver(ps, qemu_codecs(), source=src, zero_fill="reject", observer=walk, max_ram=max_ram)
    rc.load_stream(r, until_ram_end=True)
    ram_end = r.pos
    if walk.layout is None:
        raise r.error("the RAM sections carry no MEM_SIZE block list", ram_end)
    if trailer is None:
        if require_vmdesc:
            raise WireError(f"no VMDESCRIPTION trailer (EOF, 0x06, be32 len, JSON) at the end of the file: the file "
                            f"is truncated after the RAM data (which ends at offset {ram_end}), or the machine "
                            f"suppresses vmdesc (then import with --no-vmdesc)", len(r), src)
    else:
        rc.locate_vmdesc(r, trailer)  # it must lie after the RAM data
    walk.pieces.append((walk.copy_from, len(r)))
    return MainStream(src, r, hdr, walk.layout, walk.pieces, walk.sections, trailer is not None, dict(rc.commands))
