"""The load side (QEMU's ram_load_precopy and the QEVM container around it): parse the stream, rebuild
each RAM block in memory.

Each RAM block lives in a numpy array. Records are dispatched on their flag to the decoder of the codec
that writes them: the receiver gets its codecs from the plugin manager (``verify``: what the sender
could have used) or as a list (readers of real QEMU streams: :func:`pagecodec.codecs.qemu.qemu_codecs`),
never a decoder by name. Runs of fixed-size records (raw pages, zero pages) of one block are parsed
and applied as one batch.

Besides what pagecodec's own sender writes, the receiver reads what QEMU 4.1 … 10.x writes in a
precopy stream: QEMU_VM_COMMAND sections (return path, pings, the postcopy *advice*, 10.0's
SWITCHOVER_START; postcopy, COLO and packaged data are refused), the MEM_SIZE block list's extra
per-block fields (be64 page size with postcopy-ram for blocks whose page size differs from the
source's host page size; be64 guest address with x-ignore-shared, declared in the configuration's
capabilities by the QEMU versions that have them, otherwise both layouts are tried), MULTIFD_FLUSH
(8.1+), streams without section footers (old machine types), and device sections: they are not
length-prefixed, so the load stops cleanly at the first one after the RAM END section and the
VMDESCRIPTION trailer is located from the end of the stream instead (:meth:`Receiver.locate_vmdesc`).
A ZERO record's fill byte is applied as QEMU 7.2 does (the page is filled with it); newer QEMU
rejects anything but 0 (``zero_fill="reject"``).

This is the one RAM-record walker of pagecodec. Whoever needs to know where records are (the importer
cutting passes into rounds, the multifd import splicing channel pages back in, ``verify`` comparing the
pages a round touched) passes a :class:`RecordObserver`: it sees every section, control record and
page record in stream order (a vectorised run as one call) with block, page indexes and byte
positions. The receiver charges its thread CPU per stage (:attr:`Receiver.cpu`, :meth:`Receiver.take_cpu_ns`):
each page record kind (``zero``, ``page``, ``xbzrle``, ``compress``, an extension codec's name) gets
its decoding, its decoders' worker threads included; ``wire`` the stream's framing (file header,
sections, footers, commands, MEM_SIZE, EOS, MULTIFD_FLUSH); an observer's work counts in the stage it
is called in unless it charges a stage of its own (:meth:`StageClock.within`). The clock is read
where the stage changes, not per record: a record's header is read before its kind is known, so it
goes to the stage of the record before (a few ns).
Everything malformed raises :class:`WireError` (payloads: :class:`DecodeError`) with the
byte offset: unknown flags, a CONTINUE with no previous block, an unknown block, an offset outside its
block, a MEM_SIZE list that disagrees with the expected blocks, a truncated record, a missing footer.

What a stream costs is what it holds, not what it claims: the MEM_SIZE list's RAM is checked against
``max_ram`` before anything is allocated (a few bytes can claim 2^63), blocks are allocated zeroed
(untouched pages cost nothing) and a ZERO record does not write a page that is already zero (QEMU's
``ram_handle_compressed``), the list is parsed without recursion, and every decoder bounds its output.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from ..anonmem import zeroed
from ..codecs.base import Codec, CodecContext, RecordDecoder
from ..errors import DecodeError, PageCodecError, PluginError
from ..limits import default_max_ram, format_bytes
from ..plugins import PluginManager
from ..trace.format import RAMBlockInfo
from ..wire import qevm
from ..wire.flags import (
    PAGE_RECORD_FLAGS,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_HOOK,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_MULTIFD_FLUSH,
    RAM_SAVE_FLAG_ZERO,
    RAM_SECTION_IDSTR,
    RAM_SECTION_VERSION,
    SectionType,
)
from ..wire.extension import EXTENSION_HEADER, RAM_SAVE_FLAG_EXTENSION, payload_limit, read_extension_header
from ..wire.reader import StreamReader
from .config import MigrationConfig
from .metrics import StageClock
from .ramstate import block_addresses

__all__ = ["Receiver", "LoadStats", "RecordObserver", "PageRecords", "read_block_list"]

#: Longest run of fixed-size records parsed in one vectorised step.
_RUN = 4096
#: Alternatives the tolerant MEM_SIZE parse may try per block the stream can hold (each block takes
#: at least 10 bytes): linear in the input, however its optional fields branch.
_BLOCK_LIST_TRIES = 16

#: Commands a precopy stream may carry: return-path set-up and pings, the postcopy *advice* (sent
#: whenever postcopy-ram is on, whether or not the migration ever switches to postcopy), and 10.0's
#: switchover notification (sent just before the RAM END section).
_HARMLESS_COMMANDS = {
    qevm.MIG_CMD_OPEN_RETURN_PATH, qevm.MIG_CMD_PING, qevm.MIG_CMD_POSTCOPY_ADVISE, qevm.MIG_CMD_SWITCHOVER_START,
}
#: Flags that are not page records but may start a record.
_CONTROL_FLAGS = (
    RAM_SAVE_FLAG_MEM_SIZE | RAM_SAVE_FLAG_EOS | RAM_SAVE_FLAG_CONTINUE | RAM_SAVE_FLAG_HOOK | RAM_SAVE_FLAG_MULTIFD_FLUSH
)
_KIND_OF_FLAG = {0x02: "zero", 0x08: "page", 0x40: "xbzrle", 0x100: "compress"}
#: QEMU's page record flags (one decoder each), and with pagecodec's extension flag: what names a block
#: and an offset.
_QEMU_PAGE_FLAGS = set(_KIND_OF_FLAG)
_PAGE_FLAGS = PAGE_RECORD_FLAGS | RAM_SAVE_FLAG_EXTENSION
#: The CPU stage of the stream's framing (sections, control records), as the sender names its own.
WIRE_STAGE = "wire"

_F = TypeVar("_F", bound=Callable[..., Any])


def _timed(fn: _F) -> _F:
    """A public load method runs with the receiver's stage clock started (framing until a record
    kind takes over), and stops it on return, so time between calls is nobody's."""

    @functools.wraps(fn)
    def run(self: "Receiver", *args: Any, **kwargs: Any) -> Any:
        self.cpu.start(WIRE_STAGE)
        try:
            return fn(self, *args, **kwargs)
        finally:
            self.cpu.stop()

    return run  # type: ignore[return-value]


@dataclass
class LoadStats:
    records: dict[str, int] = field(default_factory=dict)  # page records by kind
    sections: int = 0  # RAM sections
    eos: int = 0
    mem_size: int = 0
    multifd_flush: int = 0


@dataclass(frozen=True)
class PageRecords:
    """Page records of one block as the receiver meets them: one record, or a vectorised run of
    records (same flags, CONTINUE, ascending offsets). Offsets are stream offsets (``base`` included)."""

    block: int               # index into Receiver.blocks (MEM_SIZE order)
    index: np.ndarray        # int64 page indexes in the block, strictly ascending (a run holds a page once)
    kind: str                # "zero", "page", "xbzrle", "compress", or the flag in hex for a plugin's record
    at: np.ndarray           # int64 offset of each record's header
    payload_at: np.ndarray   # int64 offset of each record's payload (after header and idstr)


class RecordObserver:
    """What the receiver shows of the stream as it walks it, in stream order. Override what you need;
    every method here does nothing. A method that raises stops the load with that error.

    Offsets are stream offsets. ``before_pages`` is called once a page record's header is checked and
    just before its pages are written (the old content is still in ``Receiver.block_pages``),
    ``pages`` once they are written."""

    def command(self, name: str, data: bytes, at: int) -> None:
        """A QEMU_VM_COMMAND section the receiver accepted (``name`` as in ``qevm.MIG_CMD_NAMES``)."""

    def ram_section(self, header: qevm.SectionHeader, start: int, body: int) -> None:
        """A RAM section's header (START/PART/END) at ``start``; its first record is at ``body``."""

    def mem_size(self, at: int, end: int) -> None:
        """The MEM_SIZE record at ``at`` with its block list, which ends at ``end`` (blocks are set)."""

    def before_pages(self, records: PageRecords) -> None:
        """Page records about to be applied."""

    def pages(self, records: PageRecords) -> None:
        """Page records applied."""

    def multifd_flush(self, at: int) -> None:
        """A MULTIFD_FLUSH record (QEMU 8.1+)."""

    def eos(self, at: int) -> None:
        """The EOS record that ends a RAM section's data."""

    def ram_section_end(self, header: qevm.SectionHeader, end: int) -> None:
        """The RAM section is over (footer read, if the stream has footers); the next section is at ``end``."""


# --------------------------------------------------------------------------------------------------
# the receiver
# --------------------------------------------------------------------------------------------------
def read_block_list(
    r: StreamReader, total: int, page_size: int, ignore_shared: bool,
    expect: Callable[[StreamReader, str, int, int], None] | None = None,
) -> list[tuple[str, int]]:
    """The MEM_SIZE block list read strictly in one layout (no postcopy page sizes): per block u8 len,
    idstr, be64 used_length [, be64 address with ``ignore_shared``], lengths adding up to ``total``.
    ``expect(r, name, used_length, offset)`` may check each block. Returns (name, used_length) per block
    in list order; the first fault raises WireError at its block's offset."""
    remaining = total
    blocks: list[tuple[str, int]] = []
    names: set[str] = set()
    while remaining > 0:
        bat = r.pos
        name = r.get_counted_string("block idstr")
        length = r.get_be64("block used_length")
        if not name:
            raise r.error("empty block idstr in MEM_SIZE", bat)
        if name in names:
            raise r.error(f"block {name!r} listed twice in MEM_SIZE", bat)
        if expect is not None:
            expect(r, name, length, bat)
        if length == 0 or length % page_size or length > remaining:
            raise r.error(f"block {name!r}: bad used_length {length:#x} ({remaining:#x} bytes of MEM_SIZE left)", bat)
        names.add(name)
        if ignore_shared:
            r.get_be64("block address (x-ignore-shared)")
        blocks.append((name, length))
        remaining -= length
    return blocks


class Receiver:
    """Destination RAM plus the state ram_load keeps between records (the last block seen).

    ``codecs``: where the decoders come from — a plugin manager (every codec it registered) or a list
    of codecs (e.g. :func:`pagecodec.codecs.qemu.qemu_codecs`); None: no page record decodes.
    ``zero_fill``: "fill" applies a ZERO record's fill byte (QEMU 7.2), "reject" refuses a non-zero one
    (newer QEMU). ``observer`` sees the stream as it is walked (:class:`RecordObserver`).
    ``max_ram``: the most RAM the MEM_SIZE list may claim (default: what the machine holds,
    :func:`pagecodec.limits.default_max_ram`); a larger claim is refused naming the block, before
    anything is allocated. Blocks are allocated zeroed, so pages no record touches cost no memory.
    """

    def __init__(
        self,
        page_size: int,
        codecs: PluginManager | Iterable[Codec] | None,
        config: MigrationConfig | None = None,
        expected_blocks: Iterable[RAMBlockInfo] | None = None,
        source: str | None = None,
        *,
        zero_fill: str = "fill",
        observer: RecordObserver | None = None,
        max_ram: int | None = None,
    ) -> None:
        if zero_fill not in ("fill", "reject"):
            raise ValueError(f"zero_fill must be 'fill' or 'reject', not {zero_fill!r}")
        self.page_size = page_size
        self.max_ram = default_max_ram() if max_ram is None else max_ram
        self.expected = {b.name: b for b in expected_blocks} if expected_blocks is not None else None
        self.memory: dict[str, np.ndarray] = {}
        self.block_order: list[str] = []
        self.blocks: list[RAMBlockInfo] = []  # MEM_SIZE order; page_size: the announced host page size
        self.block_pages: list[np.ndarray] = []  # each block as (pages, page_size), MEM_SIZE order
        self.shared_addr: dict[str, int] = {}  # x-ignore-shared: each block's guest address
        self._index: dict[str, int] = {}
        self._last: int | None = None
        self.source = source
        self.zero_fill = zero_fill
        self.observer = observer
        self.stats = LoadStats()
        self.header: qevm.FileHeader | None = None
        self.ignore_shared: bool | None = None  # None: not declared, both MEM_SIZE layouts are tried
        self.postcopy_advised = False
        self.pagesize_summary = 0
        self.commands: dict[str, int] = {}
        self.ram_section_id: int | None = None
        self.ram_ended = False
        self.footers: bool | None = None  # decided by the first section (send-section-footer)
        self.finished = False  # EOF read
        self.open_section: qevm.SectionHeader | None = None  # a RAM section loaded in parts, not ended yet
        self.device_state_at: int | None = None  # where the load stopped at device state
        self.vmdesc: dict | None = None
        self.vmdesc_offset: int | None = None
        self.cpu = StageClock()  # thread CPU per stage; worker threads' via take_cpu_ns
        blocks = tuple(self.expected.values()) if self.expected else ()
        ctx = CodecContext(config or MigrationConfig(), page_size, blocks, block_addresses([b.used_length for b in blocks], page_size))
        tracer = None
        if isinstance(codecs, PluginManager):
            named = [(c, codecs.plugin_of(c.name)) for c in codecs.codecs.values()]
            tracer = codecs.tracer  # PAGECODEC_TRACE_PLUGINS
            #: A third-party codec's plugin, named in its decoders' errors (built-in codecs are pagecodec's).
            self._third_party = {c.name: p for c, p in named if not codecs.is_builtin(p)}
        else:
            named = [(c, None) for c in (codecs or ())]
            self._third_party = {}
        self.decoders: dict[int, RecordDecoder] = {}
        self._decoder_codec: dict[int, str] = {}
        self.extension_decoders: dict[int, tuple[str, RecordDecoder]] = {}  # wire id -> (codec, decoder)
        for codec, owner in named:
            try:
                decs = codec.decoders(ctx)
            except Exception as e:
                raise PluginError(f"codec {codec.name!r} (plugin {owner or 'built-in'!r}) failed to build its decoder: "
                                  f"{type(e).__name__}: {e}") from e
            if tracer is not None:
                decs = [tracer.decoder(d, codec.name, owner) for d in decs]
            for d in decs:
                if d.flag == RAM_SAVE_FLAG_EXTENSION and not codec.qemu_format:
                    prev = self.extension_decoders.get(codec.wire_id)
                    if prev is not None:
                        raise PluginError(f"extension codecs {prev[0]!r} and {codec.name!r} both use wire id "
                                          f"{codec.wire_id:#06x}")
                    self.extension_decoders[codec.wire_id] = (codec.name, d)
                    continue
                if d.flag not in _QEMU_PAGE_FLAGS:
                    raise PluginError(
                        f"codec {codec.name!r} (plugin {owner or 'built-in'!r}) decodes flag {d.flag:#x}, which is "
                        f"not a QEMU page record flag: a codec's own records use the extension layout (flag "
                        f"{RAM_SAVE_FLAG_EXTENSION:#x}, qemu_format = False; see pagecodec.wire.extension)")
                if d.flag in self.decoders:
                    raise PluginError(
                        f"codecs {self._decoder_codec[d.flag]!r} and {codec.name!r} both decode flag {d.flag:#x}"
                    )
                self.decoders[d.flag] = d
                self._decoder_codec[d.flag] = codec.name
        #: Each decoder's CPU stage: its record kind, an extension codec's name.
        self._stages: list[tuple[str, RecordDecoder]] = [
            *((_KIND_OF_FLAG.get(f) or hex(f), d) for f, d in self.decoders.items()),
            *self.extension_decoders.values(),
        ]

    # -- stream level ---------------------------------------------------------------------------
    @_timed
    def load_stream(
        self,
        r: StreamReader,
        on_section: Callable[[qevm.SectionHeader], None] | None = None,
        *,
        until_ram_end: bool = False,
    ) -> None:
        """A whole QEVM stream: header, then sections until EOF, or until the first device section
        after the RAM END section (the cursor is left on it, see :attr:`device_state_at`; the
        VMDESCRIPTION trailer is then located from the end). ``until_ram_end``: stop right after the
        RAM END section, leaving what follows unread; an EOF before it is an error."""
        self.load_header(r)
        while not (self.finished or self.device_state_at is not None or (until_ram_end and self.ram_ended)):
            hdr = self.load_section(r)
            assert hdr is not None  # a whole stream: every section is loaded whole
            if hdr.type == SectionType.EOF:
                if until_ram_end:
                    raise r.error("EOF before the RAM END section (the RAM data is incomplete)", hdr.offset)
            elif on_section is not None:
                on_section(hdr)
        if self.device_state_at is not None:
            self.locate_vmdesc(r)

    @_timed
    def load_header(self, r: StreamReader) -> None:
        hdr = self.header = qevm.read_file_header(r)
        caps = hdr.capabilities
        if "mapped-ram" in caps or "fixed-ram" in caps:
            raise r.error("mapped-ram streams (file: URI with fixed page offsets) are not supported", 0)
        if hdr.target_page_bits is not None and 1 << hdr.target_page_bits != self.page_size:
            raise r.error(f"target-page-bits {hdr.target_page_bits}, but the page size here is {self.page_size}", 0)
        self.ignore_shared = ("x-ignore-shared" in caps) if caps else None

    @_timed
    def load_section(self, r: StreamReader, *, partial: bool = False) -> qevm.SectionHeader | None:
        """One section (a command; START/PART/END of "ram"; EOF); returns its header. A device
        section after the RAM END section is left unread (see :meth:`load_stream`).

        ``partial``: ``r`` may end inside a RAM section, at a record boundary (the destination of a
        replay loads a big round while the sender writes it): the records it holds are loaded, the
        section stays open (:attr:`open_section`) and None is returned; the next call goes on with
        the section's records (no header) and returns the header once its EOS and footer came."""
        if self.open_section is None:
            at = r.pos
            t = r.peek_byte()
            if t is None:
                raise r.error(f"truncated stream: it ends before {'the EOF' if self.ram_ended else 'the RAM END'} section")
            if t == SectionType.COMMAND:
                self._load_command(r)
                return qevm.SectionHeader(SectionType.COMMAND, -1, offset=at)
            hdr = qevm.read_section_header(r)
            if not self._ram_section_start(r, hdr, at):
                return hdr
            self.open_section = hdr
        hdr = self.open_section
        if not self.load_ram(r, partial=partial):
            return None
        self.open_section = None
        if self.footers is None:
            self.footers = r.peek_byte() == SectionType.SECTION_FOOTER
        if self.footers:
            qevm.read_section_footer(r, hdr.section_id)
        self.stats.sections += 1
        if hdr.type == SectionType.SECTION_END:
            self.ram_ended = True
        if self.observer is not None:
            self.observer.ram_section_end(hdr, r.base + r.pos)
        return hdr

    def _ram_section_start(self, r: StreamReader, hdr: qevm.SectionHeader, at: int) -> bool:
        """Check a section header just read: True when RAM records follow (a START/PART/END of RAM),
        False for EOF (and its vmdesc) or device state after RAM's END (the cursor goes back)."""
        st, sid = hdr.type, hdr.section_id
        if st == SectionType.EOF:
            self.finished = True
            if r.peek_byte() == SectionType.VMDESCRIPTION:
                r.get_byte()
                self.vmdesc_offset = r.base + r.pos - 1
                self.vmdesc = qevm.read_vmdesc(r)
            return False
        if st == SectionType.VMDESCRIPTION:
            raise r.error("VMDESCRIPTION section before EOF", at)
        full = st in (SectionType.SECTION_START, SectionType.SECTION_FULL)
        if not (hdr.idstr == RAM_SECTION_IDSTR if full else sid == self.ram_section_id):
            if self.ram_ended:  # device state: not length-prefixed, not loaded here
                r.pos = at
                self.device_state_at = r.base + at
                return False
            if full:
                raise r.error(
                    f"section {hdr.idstr!r} (id {sid}, {st.name}) before the RAM END section: only the RAM "
                    f"section can be parsed while RAM is in flight (other sections are not length-prefixed)", at)
            raise r.error(
                f"{st.name} of section id {sid}, which is not RAM (RAM is "
                f"{'not started' if self.ram_section_id is None else self.ram_section_id}): another iterable "
                f"device's data is interleaved with RAM and cannot be skipped", at)
        if full:
            if st == SectionType.SECTION_FULL:
                raise r.error("RAM sent as a FULL section (a snapshot, not a migration stream) is not supported", at)
            if self.ram_section_id is not None:
                raise r.error("a second RAM START section", at)
            if hdr.version_id != RAM_SECTION_VERSION:
                raise r.error(f"RAM section version {hdr.version_id}, expected {RAM_SECTION_VERSION}", at)
            self.ram_section_id = sid
        if self.observer is not None:
            self.observer.ram_section(hdr, r.base + at, r.base + r.pos)
        return True

    def _load_command(self, r: StreamReader) -> None:
        at = r.pos
        cmd, data = qevm.read_command(r)
        name = qevm.MIG_CMD_NAMES.get(cmd, f"#{cmd}")
        n = len(data)
        if cmd not in _HARMLESS_COMMANDS:
            raise r.error(
                f"QEMU_VM_COMMAND {name}: streams that switch to postcopy (or carry COLO or packaged "
                f"data) are not supported, only precopy streams", at)
        if cmd == qevm.MIG_CMD_POSTCOPY_ADVISE:
            if self.ram_section_id is not None:
                raise r.error("POSTCOPY_ADVISE after the RAM section started", at)
            if n == 16:  # postcopy-ram: be64 page-size summary, be64 target page size
                self.postcopy_advised = True
                self.pagesize_summary = int.from_bytes(data[:8], "big")
                tps = int.from_bytes(data[8:], "big")
                if tps != self.page_size:
                    raise r.error(f"POSTCOPY_ADVISE names target page size {tps}, the stream uses {self.page_size}", at)
            elif n != 0:  # 0: postcopy of dirty bitmaps only
                raise r.error(f"POSTCOPY_ADVISE with {n} bytes of data (expected 0 or 16)", at)
        elif cmd == qevm.MIG_CMD_PING and n != 4:
            raise r.error(f"PING with {n} bytes of data (expected 4)", at)
        elif cmd in (qevm.MIG_CMD_OPEN_RETURN_PATH, qevm.MIG_CMD_SWITCHOVER_START) and n != 0:
            raise r.error(f"{name} with {n} bytes of data (expected 0)", at)
        self.commands[name] = self.commands.get(name, 0) + 1
        if self.observer is not None:
            self.observer.command(name, data, r.base + at)

    @_timed
    def locate_vmdesc(self, r: StreamReader, found: tuple[int, dict] | None = None) -> dict | None:
        """The VMDESCRIPTION trailer at the end of the stream (:func:`qevm.find_vmdesc`; ``found``: its
        result from earlier, to save the search), which must lie after what was loaded. None if absent."""
        if found is None:
            found = qevm.find_vmdesc(r.view_np())
        if found is None:
            return None
        at, desc = found
        if at < r.pos:
            raise r.error("VMDESCRIPTION trailer overlaps the RAM data", at)
        self.vmdesc_offset, self.vmdesc = r.base + at, desc
        return desc

    # -- ram_load_precopy -----------------------------------------------------------------------
    @_timed
    def load_ram(self, r: StreamReader, *, partial: bool = False) -> bool:
        """Records until EOS (True). ``partial``: also stop where ``r`` ends, at a record boundary
        (False: the section goes on in the next chunk)."""
        ps = self.page_size
        mask = ps - 1
        count = self.stats.records
        obs = self.observer
        clock = self.cpu
        while True:
            at = r.pos
            if partial and at >= len(r):
                return False
            word = r.get_be64("RAM record header")
            flags = word & mask
            addr = word & ~mask
            if flags & _PAGE_FLAGS:
                bi = self._block_from_stream(r, flags, at)
                pages = self.block_pages[bi]
                if addr + ps > pages.nbytes:
                    raise r.error(f"page offset {addr:#x} outside block {self.block_order[bi]!r} of {pages.nbytes:#x} bytes", at)
            kind = flags & ~RAM_SAVE_FLAG_CONTINUE
            if kind == RAM_SAVE_FLAG_EOS:
                clock.lap(WIRE_STAGE)
                if addr:
                    raise r.error(f"EOS record with a non-zero address {addr:#x}", at)
                self.stats.eos += 1
                self._end_of_section(r, at)
                if obs is not None:
                    obs.eos(r.base + at)
                return True
            if kind == RAM_SAVE_FLAG_MEM_SIZE:
                clock.lap(WIRE_STAGE)
                self._load_mem_size(r, addr, at)
                if obs is not None:
                    obs.mem_size(r.base + at, r.base + r.pos)
                continue
            if kind == RAM_SAVE_FLAG_MULTIFD_FLUSH:  # 8.1+: multifd channels sync; nothing to load here
                clock.lap(WIRE_STAGE)
                self.stats.multifd_flush += 1
                if obs is not None:
                    obs.multifd_flush(r.base + at)
                continue
            if kind == RAM_SAVE_FLAG_EXTENSION:
                if not (flags & RAM_SAVE_FLAG_CONTINUE and self._load_extension_run(r, at, word, bi)):
                    self._load_extension(r, at, bi, addr)
                continue
            dec = self.decoders.get(kind)
            if dec is None:
                if kind & RAM_SAVE_FLAG_HOOK:
                    raise r.error("RAM control hook records (RDMA) are not supported", at)
                raise r.error(f"unknown combination of migration flags {flags:#x}", at)
            name = _KIND_OF_FLAG.get(kind) or hex(kind)
            if name != clock.stage:
                clock.lap(name)
            if flags & RAM_SAVE_FLAG_CONTINUE and (dec.fixed_payload is not None or dec.loads_many):
                n = (self._load_run(r, word, dec, bi, name) if dec.fixed_payload is not None
                     else self._load_variable_run(r, word, dec, bi, name))
                if n:
                    count[name] = count.get(name, 0) + n
                    continue
            if kind == RAM_SAVE_FLAG_ZERO and self.zero_fill == "reject" and r.peek_byte():
                raise r.error(f"zero page record with fill byte {r.peek_byte():#04x} (QEMU only sends 0)")
            i = addr // ps
            if obs is not None:
                rec = PageRecords(bi, np.array([i], np.int64), name, np.array([r.base + at], np.int64),
                                  np.array([r.base + r.pos], np.int64))
                obs.before_pages(rec)
            with self._decoder_faults(r, self._decoder_codec.get(kind, "?"), bi, at, lambda _off: addr):
                dec.load(r, pages[i])
            count[name] = count.get(name, 0) + 1
            if obs is not None:
                obs.pages(rec)

    def _load_run(self, r: StreamReader, word: int, dec: RecordDecoder, bi: int, name: str) -> int:
        """Vectorised: a run of records with the same flags (CONTINUE), a fixed payload size and
        ascending offsets.

        The cursor stands after the first header. Returns how many records it applied (0: take the
        record-by-record path)."""
        L = dec.fixed_payload
        assert L is not None
        stride = 8 + L
        start = r.pos - 8
        kmax = min(_RUN, (len(r) - start) // stride)
        if kmax < 2:
            return 0
        ps = self.page_size
        nxt = int.from_bytes(r._mv[start + stride : start + stride + 8], "big")
        if nxt & (ps - 1) != word & (ps - 1) or nxt & ~(ps - 1) <= word & ~(ps - 1):
            return 0  # no run: the next record does not continue this one (costs 8 bytes, not 64 headers)
        buf = r.view_np()
        m = np.uint64(ps - 1)
        pages = self.block_pages[bi]
        # look at a few headers first and at more only while the run goes on: runs are often short
        # (raw pages between zero pages), and gathering 4096 headers 4 KiB apart for a run of five
        # cost more than decoding it
        k = min(kmax, 64)
        while True:
            heads = np.lib.stride_tricks.as_strided(buf[start:], shape=(k, 8), strides=(stride, 1)).copy().view(">u8").ravel()
            offs = heads & ~m
            ok = ((heads & m) == (word & (ps - 1))) & (offs <= np.uint64(pages.nbytes - ps))
            ok[1:] &= offs[1:] > offs[:-1]  # a run holds each page once
            payloads = np.lib.stride_tricks.as_strided(buf[start + 8 :], shape=(k, L), strides=(stride, 1))
            if dec.flag == RAM_SAVE_FLAG_ZERO and self.zero_fill == "reject":
                ok &= payloads[:, 0] == 0
            bad = np.flatnonzero(~ok)
            if len(bad) or k == kmax:
                break
            k = min(kmax, k * 8)
        k = int(bad[0]) if len(bad) else k
        if k < 2:
            return 0
        idx = (offs[:k] // np.uint64(ps)).astype(np.int64)
        obs = self.observer
        if obs is not None:
            ats = r.base + start + stride * np.arange(k, dtype=np.int64)
            rec = PageRecords(bi, idx, name, ats, ats + 8)
            obs.before_pages(rec)
        dec.load_batch(payloads[:k], pages, idx)
        r.pos = start + k * stride
        if obs is not None:
            obs.pages(rec)
        return k

    def _load_variable_run(self, r: StreamReader, word: int, dec: RecordDecoder, bi: int, name: str) -> int:
        """A run of variable-length records (same flags, CONTINUE, ascending offsets) whose decoder can
        take them at once (``load_many``: e.g. COMPRESS_PAGE on decompress threads). The cursor stands
        after the first header. Returns how many records it applied (0: record by record)."""
        buf = r.view_np()
        n = len(buf)
        ps = self.page_size
        pages = self.block_pages[bi]
        start = r.pos - 8
        pos = start
        ats: list[int] = []
        offs: list[int] = []
        pays: list[tuple[int, int]] = []
        last = -1
        while len(ats) < _RUN and pos + 8 <= n:
            w = int.from_bytes(buf[pos : pos + 8].tobytes(), "big")
            off = w & ~(ps - 1)
            if w & (ps - 1) != word & (ps - 1) or off <= last or off + ps > pages.nbytes:
                break
            ln = dec.payload_length(buf, pos + 8)
            if ln is None or pos + 8 + ln > n:
                break
            ats.append(pos)
            offs.append(off)
            pays.append((pos + 8, ln))
            last = off
            pos += 8 + ln
        k = len(ats)
        if k < 2:
            return 0
        self._load_gathered(r, dec, bi, name, self._decoder_codec.get(dec.flag, "?"), "", ats, offs, pays, pos, 0)
        return k

    def _load_extension(self, r: StreamReader, at: int, bi: int, addr: int) -> None:
        """A pagecodec extension record: be16 codec id, be32 length, payload; the codec's decoder reads
        exactly the payload (a reader that ends there) and must consume all of it."""
        hat = r.pos
        r.need(EXTENSION_HEADER, "extension record header")
        cid, n = read_extension_header(r._mv, r.pos)
        entry = self.extension_decoders.get(cid)
        if entry is None:
            have = ", ".join(f"{name!r} ({i:#06x})" for i, (name, _) in sorted(self.extension_decoders.items())) or "none"
            raise r.error(f"extension record of codec id {cid:#06x}, which no installed plugin decodes (extension "
                          f"codecs here: {have})", hat)
        name, dec = entry
        self.cpu.lap(name)
        limit = payload_limit(self.page_size)
        if n > limit:
            raise DecodeError(f"extension record of codec {name!r}: payload of {n} bytes, more than the limit of "
                              f"{limit}", r.base + hat + 2, r.source)
        r.pos += EXTENSION_HEADER
        r.need(n, f"extension record payload of codec {name!r}")
        sub = StreamReader(r._mv[r.pos : r.pos + n], r.source, base=r.base + r.pos)
        obs = self.observer
        rec = None
        if obs is not None:
            idx = np.array([addr // self.page_size], np.int64)
            rec = PageRecords(bi, idx, name, np.array([r.base + at], np.int64), np.array([r.base + hat], np.int64))
            obs.before_pages(rec)
        with self._decoder_faults(r, name, bi, at, lambda _off: addr, what=f"codec {name!r}, "):
            dec.load(sub, self.block_pages[bi][addr // self.page_size])
        if not sub.at_end():
            plugin = self._third_party.get(name)
            raise DecodeError(f"decoder of extension codec {name!r} left {sub.remaining} of {n} payload bytes unread "
                              f"(block {self.block_order[bi]!r}, page offset {addr:#x}"
                              f"{f'; plugin {plugin!r}' if plugin else ''})", r.base + r.pos + sub.pos, r.source)
        r.pos += n
        self.stats.records[name] = self.stats.records.get(name, 0) + 1
        if obs is not None:
            obs.pages(rec)  # type: ignore[arg-type]

    def _load_extension_run(self, r: StreamReader, at: int, word: int, bi: int) -> int:
        """A run of extension records of one codec (same flags, CONTINUE, ascending offsets, each within
        the limit) whose decoder takes them at once (``loads_many``: a delta codec's run records, most
        of them empty, cost more in per-record set-up than in decoding). The cursor stands after the
        first record's be64 header. Returns how many records it applied (0: record by record)."""
        buf = r.view_np()
        end = len(buf)
        ps = self.page_size
        if r.pos + EXTENSION_HEADER > end:
            return 0
        cid, _n = read_extension_header(r._mv, r.pos)
        entry = self.extension_decoders.get(cid)
        if entry is None or not entry[1].loads_many:
            return 0
        name, dec = entry
        pages = self.block_pages[bi]
        limit = payload_limit(ps)
        low = word & (ps - 1)
        ats: list[int] = []
        offs: list[int] = []
        pays: list[tuple[int, int]] = []
        pos, last = at, -1
        mv = r._mv
        while len(ats) < _RUN and pos + 8 + EXTENSION_HEADER <= end:
            w = int.from_bytes(mv[pos : pos + 8], "big")
            off = w & ~(ps - 1)
            if w & (ps - 1) != low or off <= last or off + ps > pages.nbytes:
                break
            c, ln = read_extension_header(mv, pos + 8)
            if c != cid or ln > limit or pos + 8 + EXTENSION_HEADER + ln > end:
                break
            ats.append(pos)
            offs.append(off)
            pays.append((pos + 8 + EXTENSION_HEADER, ln))
            last = off
            pos += 8 + EXTENSION_HEADER + ln
        k = len(ats)
        if k < 2:
            return 0
        self.cpu.lap(name)
        self._load_gathered(r, dec, bi, name, name, f"codec {name!r}, ", ats, offs, pays, pos, EXTENSION_HEADER)
        self.stats.records[name] = self.stats.records.get(name, 0) + k
        return k

    def _load_gathered(self, r: StreamReader, dec: RecordDecoder, bi: int, kind: str, codec: str, what: str,
                       ats: list[int], offs: list[int], pays: list[tuple[int, int]], end: int, header: int) -> None:
        """Hand a gathered run of variable-length records to ``dec.load_many``: ``ats`` their positions,
        ``offs`` their pages' offsets, ``pays`` (position, length) of each payload, which ``header``
        bytes of the record's own layout precede (the observer is told where those start); a fault
        names the page of the record it lies in. The cursor ends at ``end``."""
        ps = self.page_size
        idx = np.array(offs, np.int64) // ps
        at_abs = r.base + np.array(ats, np.int64)
        pay_abs = r.base + np.array([p for p, _ in pays], np.int64)
        obs = self.observer
        rec = None
        if obs is not None:
            rec = PageRecords(bi, idx, kind, at_abs, pay_abs - header)
            obs.before_pages(rec)

        def page_of(off: int | None) -> int:  # the record of the run whose bytes hold ``off``
            return int(idx[max(0, int(np.searchsorted(at_abs, off or 0, side="right")) - 1)]) * ps

        mv = r._mv
        with self._decoder_faults(r, codec, bi, ats[0], page_of, what=what):
            dec.load_many([mv[p : p + ln] for p, ln in pays], self.block_pages[bi], idx, pay_abs, r.source)
        r.pos = end
        if obs is not None:
            obs.pages(rec)  # type: ignore[arg-type]

    @contextmanager
    def _decoder_faults(self, r: StreamReader, codec: str, bi: int, at: int, page_offset: Callable[[int | None], int],
                        what: str = "") -> Iterator[None]:
        """A decoder call, its errors told with where they happened: a DecodeError gets the block and the
        page offset (``page_offset(the error's stream offset)``, ``what`` before them); any other
        exception is the codec's bug, not bad input: a PluginError naming codec, block and offset."""
        block = self.block_order[bi]
        try:
            yield
        except DecodeError as e:
            plugin = self._third_party.get(codec)
            note = f"; plugin {plugin!r}" if plugin else ""
            raise e.within(after=f" ({what}block {block!r}, page offset {page_offset(e.offset):#x}{note})") from None
        except PageCodecError:
            raise
        except Exception as e:
            raise PluginError(f"{r.source or 'stream'}: offset {r.base + at}: decoder of codec {codec!r}"
                              f"{self._plugin_note(codec)} raised on block {block!r}, page offset "
                              f"{page_offset(None):#x}: {type(e).__name__}: {e}") from e

    def _end_of_section(self, r: StreamReader, at: int) -> None:
        """Tell every decoder the section ended (a decoder owed pages of a run raises DecodeError)."""
        for codec, dec in self._named_decoders():
            try:
                dec.end_of_section(r.base + at, r.source)
            except PageCodecError:
                raise
            except Exception as e:
                raise PluginError(f"{r.source or 'stream'}: offset {r.base + at}: decoder of codec {codec!r}"
                                  f"{self._plugin_note(codec)} raised at the section's EOS: {type(e).__name__}: {e}") from e

    def _named_decoders(self) -> list[tuple[str, RecordDecoder]]:
        return [*((self._decoder_codec.get(f, "?"), d) for f, d in self.decoders.items()),
                *self.extension_decoders.values()]

    def _plugin_note(self, codec: str) -> str:
        """`` (plugin 'p')`` for a third-party codec, nothing for pagecodec's own."""
        p = self._third_party.get(codec)
        return f" (plugin {p!r})" if p else ""

    def take_worker_cpu_ns(self) -> int:
        """Thread CPU nanoseconds the decoders' worker threads spent since the last call (extension
        codecs' decoders included). Shares the decoders' counters with :meth:`take_cpu_ns`."""
        return sum(d.take_worker_cpu_ns() for _stage, d in self._stages)

    def take_cpu_ns(self) -> dict[str, int]:
        """The destination's thread CPU nanoseconds per stage since the last call: this thread's
        (:attr:`cpu`) plus each decoder's worker threads under its stage."""
        out = self.cpu.take()
        for stage, d in self._stages:
            ns = d.take_worker_cpu_ns()
            if ns:
                out[stage] = out.get(stage, 0) + ns
        return out

    def _block_from_stream(self, r: StreamReader, flags: int, at: int) -> int:
        """ram_block_from_stream: CONTINUE reuses the last block, else u8 len + idstr follows."""
        if not self.blocks:
            raise r.error("page record before the MEM_SIZE block list", at)
        if flags & RAM_SAVE_FLAG_CONTINUE:
            if self._last is None:
                raise r.error("CONTINUE flag with no previous block", at)
            return self._last
        name = r.get_counted_string("block idstr")
        bi = self._index.get(name)
        if bi is None:
            raise r.error(f"unknown RAM block {name!r} (MEM_SIZE lists {', '.join(self.block_order)})", at)
        self._last = bi
        return bi

    # -- MEM_SIZE -------------------------------------------------------------------------------
    def _load_mem_size(self, r: StreamReader, total: int, at: int) -> None:
        """The block list: per block u8 len, idstr, be64 used_length [, be64 page size (postcopy-ram,
        page size != host page size)] [, be64 address (x-ignore-shared)]; lengths add up to ``total``."""
        if self.blocks:
            raise r.error("a second MEM_SIZE block list", at)
        if total == 0:
            raise r.error("MEM_SIZE of 0 bytes: no RAM blocks", at)
        known = _CONTROL_FLAGS | PAGE_RECORD_FLAGS | (RAM_SAVE_FLAG_EXTENSION if self.extension_decoders else 0)
        for f in self.decoders:
            known |= f
        options = [self.ignore_shared] if self.ignore_shared is not None else [False, True]
        for ign in options:
            found = self._parse_block_list(r.view_np(), r.pos, total, bool(ign), known)
            if found is not None:
                self.ignore_shared = bool(ign)
                break
        else:
            self._block_list_error(r, total, at, bool(options[0]))
        blocks, r.pos = found
        for name, length, hps, addr, bat in blocks:
            self._expect(r, name, length, bat)
        if self.expected is not None and set(self.expected) - {b[0] for b in blocks}:
            missing = ", ".join(sorted(set(self.expected) - {b[0] for b in blocks}))
            raise r.error(f"MEM_SIZE does not list block(s) {missing}", at)
        claimed = 0
        for name, length, _hps, _addr, bat in blocks:  # the claim is checked before anything is allocated
            claimed += length
            if claimed > self.max_ram:
                raise r.error(f"block {name!r} of {format_bytes(length)} takes the RAM the MEM_SIZE list claims to "
                              f"{format_bytes(claimed)} (of {format_bytes(total)}), more than --max-ram "
                              f"{format_bytes(self.max_ram)} (default: what this machine holds)", bat)
        for name, length, hps, addr, bat in blocks:
            self._index[name] = len(self.blocks)
            self.blocks.append(RAMBlockInfo(name, length, hps or self.page_size))
            try:  # zeroed by the OS as pages are touched: a page no record writes costs nothing
                self.memory[name] = zeroed(length)
            except MemoryError:
                raise r.error(f"block {name!r} of {format_bytes(length)}: its memory cannot be allocated here "
                              f"(the RAM the MEM_SIZE list claims, {format_bytes(total)}, is within --max-ram "
                              f"{format_bytes(self.max_ram)} but not within the address space left)", bat) from None
            self.block_pages.append(self.memory[name].reshape(-1, self.page_size))
            self.block_order.append(name)
            if addr is not None:
                self.shared_addr[name] = addr
        self.stats.mem_size += 1

    def _parse_block_list(
        self, buf: np.ndarray, start: int, total: int, ign: bool, known: int
    ) -> tuple[list[tuple], int] | None:
        """Tolerant parse of the list from ``start``; None if this layout does not fit.

        Every block's optional postcopy page size is tried both ways (a be64 power of two among the
        advised page sizes, or absent); the list must add up exactly and be followed by a plausible
        record header. A depth-first search without recursion (a list may have any number of
        blocks), giving up after a number of alternatives linear in the bytes it could span."""
        n = len(buf)
        budget = _BLOCK_LIST_TRIES * (min((n - start) // 10, total // self.page_size) + 1) + 64
        path: list[list[Any]] = []  # per block: [at, name, length, after length, choices, next choice, addr, remaining]
        names: set[str] = set()
        pos, remaining = start, total
        for _ in range(budget):
            if remaining == 0:
                if self._record_follows(buf, pos, known):
                    return [(f[1], f[2], f[4][f[5] - 1], f[6], f[0]) for f in path], pos
                block = None
            else:
                block = self._block_at(buf, pos, remaining, names)
            if block is not None:
                path.append([pos, *block, 0, None, remaining])
                names.add(block[0])
            while path:  # the next alternative of the innermost block that has one left
                f = path[-1]
                p, choices, i = f[3], f[4], f[5]
                while i < len(choices):
                    hps = choices[i]
                    i += 1
                    q = p + (8 if hps is not None else 0)
                    addr = None
                    if ign:
                        if q + 8 > n:
                            continue
                        addr = int.from_bytes(bytes(buf[q : q + 8]), "big")
                        q += 8
                    f[5], f[6] = i, addr
                    pos, remaining = q, f[7] - f[2]
                    break
                else:
                    path.pop()
                    names.discard(f[1])
                    continue
                break
            else:
                return None
        return None

    def _block_at(self, buf: np.ndarray, pos: int, remaining: int, names: set[str]) -> tuple[Any, ...] | None:
        """The block entry at ``pos`` if it can be one: (name, used_length, position after it, the
        postcopy page sizes it may carry — None for none); None if it cannot."""
        n = len(buf)
        ps = self.page_size
        if pos >= n:
            return None
        ln = int(buf[pos])
        if ln == 0 or pos + 1 + ln + 8 > n:
            return None
        raw = bytes(buf[pos + 1 : pos + 1 + ln])
        if any(c < 0x20 or c > 0x7E for c in raw):
            return None
        name = raw.decode("ascii")
        if name in names:
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
        return name, length, p, choices

    def _record_follows(self, buf: np.ndarray, pos: int, known: int) -> bool:
        """A plausible record header at ``pos`` (after a block list that adds up)."""
        if pos + 8 > len(buf):
            return False
        w = int.from_bytes(bytes(buf[pos : pos + 8]), "big")
        fl = w & (self.page_size - 1)
        return not (fl == 0 or fl & ~known or (fl == RAM_SAVE_FLAG_EOS and w != fl))

    def _block_list_error(self, r: StreamReader, total: int, at: int, ign: bool) -> None:
        """No layout fits: re-read the plain layout strictly to name the first fault."""
        read_block_list(r, total, self.page_size, ign, self._expect)
        r.need(8, "RAM record header")
        raise r.error(
            "MEM_SIZE block list does not parse with any layout (with or without x-ignore-shared addresses"
            + (" and postcopy page sizes" if self.postcopy_advised else "") + ")", at)

    def _expect(self, r: StreamReader, name: str, length: int, at: int) -> None:
        """The block agrees with the expected blocks (if any were given)."""
        if self.expected is None:
            return
        exp = self.expected.get(name)
        if exp is None:
            raise r.error(f"unknown RAM block {name!r} in MEM_SIZE", at)
        if exp.used_length != length:
            raise r.error(f"block {name!r}: length {length:#x} in stream, {exp.used_length:#x} expected", at)

    def block(self, name: str) -> np.ndarray:
        return self.memory[name]
