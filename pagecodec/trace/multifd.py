"""Multifd captures (QEMU 7.2): record them over TCP, read the channel files, import them as traces.

With the ``multifd`` capability QEMU opens a main connection and N channel connections (socket URIs
only: ``exec:`` cannot carry multifd). What travels where (QEMU 7.2, ``migration/ram.c`` and
``migration/multifd.c``):

* **Main stream** (``main.mig``): the ordinary QEVM file — header, configuration, the RAM section as
  START (MEM_SIZE block list) / PART… / END, device sections, EOF, vmdesc trailer — but its RAM
  sections carry only ZERO records and EOS: ``ram_save_target_page`` detects zero pages *before* it
  hands a page to multifd, so zero pages stay on the main stream and every other page goes to a channel.
* **Channel k** (``channel-<k>.bin``): the initial packet ``MultiFDInit_t`` (64 bytes: be32 magic
  0x11223344, be32 version 1, 16-byte uuid, u8 channel id, 7 pad bytes, 4 × u64 unused), then packets
  ``MultiFDPacket_t``: be32 magic, be32 version, be32 flags (SYNC 0x1; compression in bits 1–3:
  none 0, ZLIB 0x2, ZSTD 0x4), be32 pages_alloc, be32 normal_pages, be32 next_packet_size, be64
  packet_num, 4 × u64 unused, char ramblock[256], then be64 offsets — always ``MULTIFD_PACKET_SIZE /
  page size`` = 128 slots (the receiver reads a fixed ``packet_len``), of which the first normal_pages
  are used — then the payload: normal_pages raw pages (none), or next_packet_size bytes of one
  deflate stream per channel for the whole migration, Z_SYNC_FLUSH at each packet's end (zlib), or of
  one endless zstd frame per channel, flushed at each packet's end (zstd). Packets without pages carry
  no payload; their ramblock, next_packet_size and unused offset slots are stale leftovers of the
  channel's previous packet (QEMU reuses the buffer) and are ignored, as QEMU does.
* **Syncs**: ``multifd_send_sync_main`` runs in ``ram_save_setup``, at the end of every
  ``ram_save_iterate`` and in ``ram_save_complete``, each time right before the section's EOS: it
  flushes the partly filled packet, then queues one SYNC packet on *every* channel. The destination's
  ``ram_load`` waits at each EOS until every channel has delivered its SYNC packet. So the i-th SYNC
  packet of each channel closes the same window as the i-th EOS of the main stream: the channel pages
  between SYNC i-1 and SYNC i belong to RAM section i. (QEMU 8.1+ syncs once per pass with a
  MULTIFD_FLUSH record instead; such streams are refused.)

**Packet numbers.** ``packet_num`` is global (one counter for all channels), increasing in the order
the migration thread queued the packets; pages inside a packet are in queue order (one block).
Per channel the numbers never go back. One race in 7.2's ``multifd_send_sync_main`` shows in real
streams: if a channel's thread has not yet picked up the data packet it was just handed (typically the
flush right before the sync), the sync overwrites that packet's number and sets SYNC on it, so the
data goes out as a SYNC packet *with pages* under the sync's (later) number, the original number is
never used, and the channel then sends an empty packet repeating the number. The reader accepts
exactly that: a repeated number only on an empty non-SYNC packet, and as many unused numbers as SYNC
packets with pages (more means a channel file is missing).

**Rounds.** The import rebuilds the single stream QEMU would have written without multifd — same
sections, every page record where QEMU's page search sent it — and imports that with
:func:`pagecodec.trace.qemu_import.import_qemu_stream`, so a round is one pass over RAM exactly as for
``exec:`` captures (a new round starts where the page order wraps or a page repeats). The order
inside a section is recovered from QEMU's search rule, not from arrival times:

* Within one section no page is sent twice: the dirty bitmap is only synced between sections
  (``ram_save_pending``, ``ram_save_complete``'s start), never during one, and the search clears each
  bit it sends. So a section's pages — ZERO records of the main stream plus channel pages of the
  window — are a set (a page in both, or twice, is an error).
* The search sweeps RAM in MEM_SIZE block order, offsets ascending, and resumes where the previous
  section stopped: 7.2 leaves ``last_page`` one page *past* the last page sent (``pss_find_next_dirty``
  bounded to the host page), so a section's order is its page set sorted by global page index and
  rotated to start at the first page ≥ e + 1, e the previous section's last page (0 for the first
  section); at most one wrap per section.
* That order is checked against what the files do fix: the main stream's ZERO records must appear in
  it in stream order, and the channel pages in packet_num order (SYNC packets with pages excluded:
  their number is the sync's, not their queue position). If e + 1 fails, the rotation is re-derived
  from the data (0 after ``ram_state_reset``, or right after the last page of a wrapped subsequence),
  counted as ``restarts``; a section whose channel order cannot be reconciled takes the first
  rotation that fits its ZERO records and is counted as ``order_conflicts``; ZERO records that wrap
  twice in one section cannot come from one sweep and are an error.

Limits: the destination's RAM is fully determined by the files (pages are unique per section and
sections are applied in order), so the trace's images are exact; only *where* a pass boundary falls
inside a section can be off, and only if the section has no ZERO record and its channel pages contradict
the resume rule (counted, never silent). XBZRLE and COMPRESS_PAGE records (not used with multifd in
7.2), postcopy, RDMA and 8.1+ MULTIFD_FLUSH streams are refused.

**Capture** (:func:`capture_multifd`, ``pagecodec capture qemu --multifd N``): pagecodec listens on
127.0.0.1 (ephemeral port), switches ``multifd`` on at the source with ``multifd-channels`` and
``multifd-compression``, runs ``migrate uri=tcp:127.0.0.1:PORT`` and records each accepted connection
to its own file, named by its first bytes (QEVM → ``main.mig``; multifd magic → ``channel-<id>.bin``).
Without the return-path capability a 7.2 precopy source never reads from its connections, so a
recorder that only reads is enough and QEMU completes. With ``forward_to`` the recorder is a tee proxy
to a real destination (``-incoming defer`` with the same multifd settings, see
:func:`listen_multifd_incoming`): every connection is forwarded both ways and the source → destination
bytes are recorded. A 7.2 destination takes its *first* connection as the main stream (it does not look
at the magic), so the proxy connects to the destination in the order it accepts from the source.

:func:`split_stream` does the reverse of the import: it turns a single stream into a 7.2 multifd capture
(the sender's rules: 128-page packets of one block, a flush on block change, round-robin channels, one
SYNC per channel before each EOS, optionally with the sync race), for tests and for experiments.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..chain.receiver import read_block_list
from ..errors import DecodeError, PageCodecError, TraceError, WireError
from ..wire import qevm
from ..wire.flags import (
    QEMU_VM_FILE_MAGIC,
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
from ..wire.reader import StreamReader

__all__ = [
    "MULTIFD_MAGIC", "MULTIFD_VERSION", "MULTIFD_FLAG_SYNC", "MULTIFD_PACKET_SIZE", "COMPRESSION_FLAGS",
    "INIT_PACKET_SIZE", "PACKET_HEADER_SIZE", "packet_slots", "encode_initial_packet", "encode_packet",
    "ChannelFile", "MainStream", "read_channel", "read_main_stream", "MultifdImportReport", "import_multifd",
    "split_stream", "StreamRecorder", "RecordedCapture", "listen_multifd_incoming", "capture_multifd",
    "multifd_command",
]

# --- wire constants (migration/multifd.h, multifd.c) -----------------------------------------------
MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
MULTIFD_FLAG_SYNC = 0x1
MULTIFD_FLAG_COMPRESSION_MASK = 0x7 << 1
COMPRESSION_FLAGS = {"none": 0x0, "zlib": 0x2, "zstd": 0x4}
_COMPRESSION_NAMES = {v: k for k, v in COMPRESSION_FLAGS.items()}
#: Bytes of pages per packet; the packet header has this many / page size offset slots.
MULTIFD_PACKET_SIZE = 512 * 1024
#: QEMU's receive buffer for a compressed payload (zlib/zstd: twice the packet size).
COMPRESSED_BUFFER = 2 * MULTIFD_PACKET_SIZE
_INIT = struct.Struct(">II16sB7s32s")   # MultiFDInit_t
_PKT = struct.Struct(">IIIIIIQ32s256s")  # MultiFDPacket_t without offset[]
INIT_PACKET_SIZE = _INIT.size           # 64
PACKET_HEADER_SIZE = _PKT.size          # 320
_RAMBLOCK_AT = 64                       # ramblock[] inside a packet
_KNOWN_PACKET_FLAGS = MULTIFD_FLAG_SYNC | MULTIFD_FLAG_COMPRESSION_MASK
#: QEMU_VM_COMMANDs a precopy multifd stream may carry: OPEN_RETURN_PATH, PING, POSTCOPY_ADVISE without
#: postcopy-ram data (dirty-bitmap postcopy only), SWITCHOVER_START.
_HARMLESS_COMMANDS = {1: "OPEN_RETURN_PATH", 2: "PING", 3: "POSTCOPY_ADVISE", 11: "SWITCHOVER_START"}


def packet_slots(page_size: int) -> int:
    """Offset slots in every packet header (``MULTIFD_PACKET_SIZE / page size``; 128 for 4 KiB)."""
    return MULTIFD_PACKET_SIZE // page_size


def packet_size(page_size: int) -> int:
    """Bytes of a packet header with its offset slots (1344 for 4 KiB pages)."""
    return PACKET_HEADER_SIZE + 8 * packet_slots(page_size)


def encode_initial_packet(channel_id: int, uuid: bytes = bytes(16)) -> bytes:
    """``MultiFDInit_t`` as ``multifd_send_initial_packet`` writes it."""
    return _INIT.pack(MULTIFD_MAGIC, MULTIFD_VERSION, uuid, channel_id, bytes(7), bytes(32))


def encode_packet(
    flags: int, packet_num: int, block: str, offsets: Sequence[int], page_size: int = 4096, *,
    next_packet_size: int | None = None, pages_alloc: int | None = None, stale: bytes | None = None,
    magic: int = MULTIFD_MAGIC, version: int = MULTIFD_VERSION,
) -> bytes:
    """A packet header with its offset slots (payload not included). ``stale``: a previous header of the
    same channel whose unused slots (and, for an empty packet, ramblock) the new one keeps, as QEMU's
    reused buffer does."""
    slots = packet_slots(page_size)
    if len(offsets) > slots:
        raise ValueError(f"{len(offsets)} pages do not fit in a packet of {slots}")
    if next_packet_size is None:
        next_packet_size = len(offsets) * page_size
    buf = bytearray(stale if stale is not None else packet_size(page_size))
    name = block.encode("ascii")[:256] if block else bytes(buf[_RAMBLOCK_AT:_RAMBLOCK_AT + 256])
    _PKT.pack_into(buf, 0, magic, version, flags, slots if pages_alloc is None else pages_alloc, len(offsets),
                   next_packet_size, packet_num, bytes(32), name.ljust(256, b"\0") if block else name)
    for i, off in enumerate(offsets):
        struct.pack_into(">Q", buf, PACKET_HEADER_SIZE + 8 * i, off)
    return bytes(buf)


# --- the RAM layout (MEM_SIZE) ----------------------------------------------------------------------
@dataclass
class _Layout:
    page_size: int
    names: list[str]
    lengths: list[int]
    raw_names: list[bytes] = field(default_factory=list)

    def __post_init__(self) -> None:
        ps = self.page_size
        self.index = {n: i for i, n in enumerate(self.names)}
        self.starts = np.zeros(len(self.names) + 1, np.int64)
        np.cumsum([ln // ps for ln in self.lengths], out=self.starts[1:])
        self.total = int(self.starts[-1])
        self.raw_names = [n.encode("ascii") for n in self.names]

    def block_of(self, g: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.starts, g, side="right") - 1

    def where(self, g: int) -> str:
        b = int(self.block_of(np.array([g]))[0])
        return f"block {self.names[b]!r} offset {(g - int(self.starts[b])) * self.page_size:#x}"


# --- channel files ----------------------------------------------------------------------------------
@dataclass
class ChannelFile:
    """One parsed channel file: the initial packet and every packet's header (payloads stay in the file)."""

    path: str
    id: int
    uuid: bytes
    size: int
    reader: StreamReader
    compression: str | None = None     # from its packets with pages (None: it carried no page)
    at: list[int] = field(default_factory=list)          # file offset of each packet
    num: list[int] = field(default_factory=list)         # packet_num
    flags: list[int] = field(default_factory=list)
    normal: list[int] = field(default_factory=list)      # normal_pages
    payload_at: list[int] = field(default_factory=list)
    payload_len: list[int] = field(default_factory=list)
    first: list[int] = field(default_factory=list)       # index of the packet's first page in ``pages``
    window: list[int] = field(default_factory=list)      # RAM section (sync window) of the packet
    pages: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # global page indices
    syncs: int = 0

    @property
    def packets(self) -> int:
        return len(self.at)

    @property
    def sync_with_pages(self) -> int:
        return sum(1 for f, n in zip(self.flags, self.normal) if f & MULTIFD_FLAG_SYNC and n)

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "id": self.id, "bytes": self.size, "packets": self.packets,
                "sync_packets": self.syncs, "sync_packets_with_pages": self.sync_with_pages,
                "pages": int(len(self.pages)), "compression": self.compression}


def read_channel(path: str | os.PathLike[str], layout: _Layout) -> ChannelFile:
    """Parse a channel file against the main stream's block list. Raises WireError with the file and
    byte offset on anything malformed (magic, version, truncation, unknown block, offsets outside or
    not aligned, packet_num going back, unknown flags, mixed compression, oversized payloads)."""
    r = StreamReader.open(path)
    src = str(path)
    buf = r.view_np()
    mv = memoryview(buf)
    n = len(r)
    ps = layout.page_size
    slots = packet_slots(ps)
    hsize = packet_size(ps)
    if n < INIT_PACKET_SIZE:
        raise WireError(f"truncated channel file: the initial packet (MultiFDInit_t) needs {INIT_PACKET_SIZE} "
                        f"bytes, the file has {n}", n, src)
    magic, version, uuid, cid, _pad, _unused = _INIT.unpack_from(mv, 0)
    if magic != MULTIFD_MAGIC:
        hint = " (this is a main stream, QEVM: pass it as MAIN, not as a channel)" if magic == QEMU_VM_FILE_MAGIC else ""
        raise WireError(f"not a multifd channel: initial packet magic {magic:#010x}, expected {MULTIFD_MAGIC:#010x}{hint}", 0, src)
    if version != MULTIFD_VERSION:
        raise WireError(f"multifd initial packet version {version}, expected {MULTIFD_VERSION}", 4, src)
    ch = ChannelFile(src, cid, bytes(uuid), n, r)
    pos = INIT_PACKET_SIZE
    pages: list[np.ndarray] = []
    npages = 0
    last_num = -1
    last_at = -1
    names = layout.names
    while pos < n:
        at = pos
        if n - pos < hsize:
            raise WireError(f"truncated packet: its header needs {hsize} bytes ({slots} offset slots), "
                            f"{n - pos} left", at, src)
        magic, version, flags, alloc, normal, nsize, num, unused, rb = _PKT.unpack_from(mv, pos)
        if magic != MULTIFD_MAGIC:
            raise WireError(f"packet magic {magic:#010x}, expected {MULTIFD_MAGIC:#010x} (packet {ch.packets}; "
                            f"the previous packet's payload has the wrong size, or the file is corrupt)", at, src)
        if version != MULTIFD_VERSION:
            raise WireError(f"packet version {version}, expected {MULTIFD_VERSION}", at + 4, src)
        if flags & ~_KNOWN_PACKET_FLAGS:
            raise WireError(f"unknown packet flags {flags:#x} (known: SYNC 0x1, compression 0x2/0x4)", at + 8, src)
        if alloc > 100 * slots:
            raise WireError(f"pages_alloc {alloc}: QEMU refuses more than {100 * slots}", at + 12, src)
        if normal > alloc or normal > slots:
            raise WireError(f"{normal} normal pages in a packet with pages_alloc {alloc} and {slots} offset slots",
                            at + 16, src)
        if unused[:4] != bytes(4) and normal:
            # 9.0+ put zero_pages here (zero pages listed after the normal ones): not a 7.2 stream
            raise WireError(f"packet has zero_pages {int.from_bytes(unused[:4], 'big')} (QEMU 9.0+ multifd zero "
                            f"page detection): only QEMU 7.2-style channels are supported", at + 32, src)
        if num < last_num:
            raise WireError(f"packet_num {num} goes backwards (the channel's previous packet, at offset {last_at}, "
                            f"has {last_num}): packets out of order or from another migration", at + 24, src)
        if num == last_num and (normal or flags & MULTIFD_FLAG_SYNC):
            raise WireError(f"packet_num {num} repeats the previous packet's (offset {last_at}) on a packet with "
                            f"{'pages' if normal else 'SYNC'}: only an empty packet after a sync may repeat it",
                            at + 24, src)
        pos += hsize
        pat = pos
        plen = 0
        if normal:
            raw = rb.split(b"\0", 1)[0]
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError:
                raise WireError(f"packet ramblock name is not ASCII: {raw[:64]!r}", at + _RAMBLOCK_AT, src) from None
            bi = layout.index.get(name)
            if bi is None:
                raise WireError(f"packet names unknown RAM block {name!r} (the main stream's MEM_SIZE lists "
                                f"{', '.join(repr(x) for x in names)})", at + _RAMBLOCK_AT, src)
            offs = buf[at + PACKET_HEADER_SIZE : at + PACKET_HEADER_SIZE + 8 * normal].view(">u8")
            length = layout.lengths[bi]
            bad = np.flatnonzero((offs > np.uint64(length - ps)) | ((offs % np.uint64(ps)) != 0))
            if len(bad):
                i = int(bad[0])
                o = int(offs[i])
                why = "not page aligned" if o % ps else f"outside block {name!r} of {length:#x} bytes"
                raise WireError(f"page offset {o:#x} (page {i} of the packet) is {why}",
                                at + PACKET_HEADER_SIZE + 8 * i, src)
            method = flags & MULTIFD_FLAG_COMPRESSION_MASK
            comp = _COMPRESSION_NAMES.get(method)
            if comp is None:
                raise WireError(f"unknown multifd compression flags {method:#x}", at + 8, src)
            if ch.compression is None:
                ch.compression = comp
            elif comp != ch.compression:
                raise WireError(f"packet compressed with {comp}, earlier packets of this channel with "
                                f"{ch.compression}", at + 8, src)
            if comp == "none":
                plen = normal * ps
                if nsize != plen:
                    raise WireError(f"next_packet_size {nsize} disagrees with {normal} pages of {ps} bytes "
                                    f"(multifd-compression none)", at + 20, src)
            else:
                plen = nsize
                if nsize == 0 or nsize > COMPRESSED_BUFFER:
                    raise WireError(f"compressed payload of {nsize} bytes (QEMU's receive buffer holds 1.."
                                    f"{COMPRESSED_BUFFER})", at + 20, src)
            if n - pos < plen:
                raise WireError(f"truncated packet: its payload ({normal} pages, {plen} bytes) has {n - pos} "
                                f"bytes left", pat, src)
            g = offs.astype(np.int64) // ps + int(layout.starts[bi])
            pages.append(g)
            pos += plen
        ch.at.append(at)
        ch.num.append(num)
        ch.flags.append(flags)
        ch.normal.append(normal)
        ch.payload_at.append(pat)
        ch.payload_len.append(plen)
        ch.first.append(npages)
        ch.window.append(ch.syncs)
        npages += normal
        if flags & MULTIFD_FLAG_SYNC:
            ch.syncs += 1
        last_num, last_at = num, at
    ch.pages = np.concatenate(pages) if pages else np.empty(0, np.int64)
    return ch


class _PageSource:
    """Pages of one channel's packets, in channel order (compressed streams are inflated sequentially)."""

    def __init__(self, ch: ChannelFile, page_size: int) -> None:
        self.ch = ch
        self.ps = page_size
        self.next = 0
        self.buf = ch.reader.view_np()
        self.d: Any = None
        if ch.compression == "zlib":
            self.d = zlib.decompressobj()
        elif ch.compression == "zstd":
            import zstandard

            self.d = zstandard.ZstdDecompressor().decompressobj()

    def pages(self, k: int) -> np.ndarray:
        ch, ps = self.ch, self.ps
        if k < self.next:
            raise AssertionError("channel packets must be read in order")
        self.next = k + 1
        n = ch.normal[k]
        at, ln = ch.payload_at[k], ch.payload_len[k]
        data = self.buf[at : at + ln]
        if ch.compression in (None, "none"):
            return data.reshape(n, ps)
        want = n * ps
        if ch.compression == "zlib":
            try:
                out = self.d.decompress(data.tobytes())
            except zlib.error as e:
                raise DecodeError(f"zlib payload of packet {k} (packet_num {ch.num[k]}) does not inflate: {e} "
                                  f"(one deflate stream runs through all packets of a channel)", at, ch.path) from None
            if self.d.eof or self.d.unused_data:
                raise DecodeError(f"zlib payload of packet {k} ends the channel's deflate stream (QEMU never "
                                  f"finishes it: Z_SYNC_FLUSH per packet)", at, ch.path)
        else:
            import zstandard

            try:
                out = self.d.decompress(data.tobytes())
            except zstandard.ZstdError as e:
                raise DecodeError(f"zstd payload of packet {k} (packet_num {ch.num[k]}) does not decompress: {e}",
                                  at, ch.path) from None
        if len(out) != want:
            raise DecodeError(f"{ch.compression} payload of packet {k} (packet_num {ch.num[k]}) gives {len(out)} bytes, "
                              f"expected {n} pages = {want} bytes", at, ch.path)
        return np.frombuffer(out, np.uint8).reshape(n, ps)


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


# --- merging main stream and channels ---------------------------------------------------------------
def _check_channels(main: MainStream, chans: list[ChannelFile]) -> None:
    if not chans:
        raise WireError("a multifd capture needs at least one channel file", None, main.path)
    ids = sorted(c.id for c in chans)
    by_id: dict[int, ChannelFile] = {}
    for c in chans:
        if c.id in by_id:
            raise WireError(f"channel id {c.id} also in {by_id[c.id].path} (the same channel given twice?)", 24, c.path)
        by_id[c.id] = c
    if ids != list(range(len(chans))):
        missing = sorted(set(range(max(ids) + 1)) - set(ids))
        raise WireError(f"channel ids {ids} of {len(chans)} channel files: QEMU numbers its channels 0..N-1, "
                        f"so channel(s) {missing or [len(chans)]} are missing", None, main.path)
    u = chans[0].uuid
    for c in chans[1:]:
        if c.uuid != u:
            raise WireError(f"channel uuid {c.uuid.hex()} differs from {chans[0].path}'s {u.hex()}: channels of "
                            f"different migrations", 8, c.path)
    if main.header.uuid is not None and main.header.uuid != u:
        raise WireError(f"channel uuid {u.hex()} differs from the main stream's configuration uuid "
                        f"{main.header.uuid.hex()}", 8, chans[0].path)
    comps = {c.compression for c in chans if c.compression is not None}
    if len(comps) > 1:
        raise WireError(f"channels use different compression methods ({', '.join(sorted(comps))})", None, main.path)
    nsec = len(main.sections)
    seen: dict[int, tuple[ChannelFile, int]] = {}
    for c in chans:
        if c.syncs != nsec:
            raise WireError(f"channel {c.id} carries {c.syncs} SYNC packets but the main stream has {nsec} RAM "
                            f"sections (one sync per section before its EOS): the channel file or the main stream "
                            f"is incomplete, or they belong to different migrations", c.size, c.path)
        for k in range(c.packets):
            if c.window[k] >= nsec and c.normal[k]:
                raise WireError(f"packet {k} (packet_num {c.num[k]}) carries {c.normal[k]} pages after the "
                                f"channel's last SYNC packet: no RAM section is left to hold them", c.at[k], c.path)
            prev = seen.get(c.num[k])
            if prev is not None and prev[0] is not c:
                raise WireError(f"packet_num {c.num[k]} also used by channel {prev[0].id} (offset "
                                f"{prev[0].at[prev[1]]}): packet numbers are global and unique", c.at[k] + 24, c.path)
            seen.setdefault(c.num[k], (c, k))
    if seen:
        top = max(seen)
        unused = top + 1 - len(seen)
        raced = sum(c.sync_with_pages for c in chans)
        if unused > raced:
            have = np.zeros(top + 1, bool)
            have[list(seen)] = True
            gaps = np.flatnonzero(~have)[:8].tolist()
            raise WireError(f"{unused} packet numbers below {top} never occur (e.g. {gaps}), but only {raced} "
                            f"SYNC packets carry pages (the sync race that skips one number): a channel file is "
                            f"missing or truncated", None, main.path)


def _key(g: np.ndarray, r: int, total: int) -> np.ndarray:
    return (g - r) % total


def _consistent(seq: np.ndarray, r: int, total: int) -> bool:
    return len(seq) < 2 or bool(np.all(np.diff(_key(seq, r, total)) > 0))


def _candidates(resume: int, seqs: Sequence[np.ndarray], total: int) -> list[int]:
    cand = [resume % total, 0]
    for s in seqs:
        if len(s) > 1 and np.any(np.diff(s) < 0):
            cand.append(int(s[-1] + 1) % total)
    out: list[int] = []
    for c in cand:
        if c not in out:
            out.append(c)
    return out


@dataclass
class _MergeStats:
    sections: int = 0
    restarts: int = 0
    order_conflicts: int = 0
    zero: int = 0
    main_pages: int = 0
    channel_pages: int = 0
    packets: int = 0


def _merge(main: MainStream, chans: list[ChannelFile], out: Path, *, only_zero: bool = False) -> _MergeStats:
    """Write the single stream: main stream bytes verbatim except the RAM sections' page records, which are
    rewritten in QEMU's search order (see the module docstring), CONTINUE flags recomputed."""
    lay = main.layout
    ps = lay.page_size
    total = lay.total
    mbuf = main.reader.view_np()
    mmv = memoryview(mbuf)
    sources = [_PageSource(c, ps) for c in chans]
    # packets per (channel, window)
    per_window: list[list[tuple[int, int]]] = [[] for _ in main.sections]
    for ci, c in enumerate(chans):
        for k in range(c.packets):
            if c.normal[k] and c.window[k] < len(per_window):
                per_window[c.window[k]].append((ci, k))
    st = _MergeStats(sections=len(main.sections))
    resume = 0
    last_block = -1
    be64 = struct.Struct(">Q").pack
    with open(out, "wb") as f:
        w = f.write
        for piece in main.pieces:
            if isinstance(piece, tuple):
                a, b = piece
                if b > a:
                    w(mmv[a:b])
                continue
            sec = piece
            w(mmv[sec.start : sec.body])
            if sec.mem_size is not None:
                w(mmv[sec.mem_size[0] : sec.mem_size[1]])
            pk = sorted(per_window[sec.index], key=lambda x: chans[x[0]].num[x[1]])
            st.packets += len(pk)
            cpages: list[np.ndarray] = []
            cg: list[np.ndarray] = []
            corig: list[tuple[int, int, int]] = []  # (channel, packet, first page index in cg)
            checked: list[np.ndarray] = []
            # inflate in channel order ((channel, packet index) order)
            pages_of: dict[tuple[int, int], np.ndarray] = {}
            for ci, k in sorted(pk):
                pages_of[(ci, k)] = sources[ci].pages(k)
            pos = 0
            for ci, k in pk:
                c = chans[ci]
                g = c.pages[c.first[k] : c.first[k] + c.normal[k]]
                cg.append(g)
                cpages.append(pages_of[(ci, k)])
                corig.append((ci, k, pos))
                pos += len(g)
                if not (c.flags[k] & MULTIFD_FLAG_SYNC):
                    checked.append(g)
            Mg = sec.g
            if only_zero:
                keep = sec.kind == 0
                Mg = Mg[keep]
                m_idx = np.flatnonzero(keep)
            else:
                m_idx = np.arange(len(Mg))
            Cg = np.concatenate(cg) if cg else np.empty(0, np.int64)
            Cchk = np.concatenate(checked) if checked else np.empty(0, np.int64)
            allg = np.concatenate([Mg, Cg])
            if len(allg) == 0:
                w(mmv[sec.eos : sec.end])
                continue
            order = np.argsort(allg, kind="stable")
            sg = allg[order]
            dup = np.flatnonzero(sg[1:] == sg[:-1])
            if len(dup):
                i = int(dup[0])
                a, b = int(order[i]), int(order[i + 1])
                raise WireError(f"RAM section {sec.index}: {lay.where(int(sg[i]))} is sent twice "
                                f"({_origin(main, sec, m_idx, chans, corig, a)} and "
                                f"{_origin(main, sec, m_idx, chans, corig, b)}); within one section QEMU sends a "
                                f"page at most once, and the destination's result would depend on thread timing",
                                None, main.path)
            r0 = None
            for cand in _candidates(resume, [Mg, Cchk], total):
                if _consistent(Mg, cand, total) and _consistent(Cchk, cand, total):
                    r0 = cand
                    break
            if r0 is None:
                for cand in _candidates(resume, [Mg], total):
                    if _consistent(Mg, cand, total):
                        r0 = cand
                        st.order_conflicts += 1
                        break
            if r0 is None:
                raise WireError(f"RAM section {sec.index} (offset {sec.start}): its page records wrap around RAM "
                                f"more than once, which one sweep of QEMU's page search cannot do",
                                sec.start, main.path)
            if r0 != resume % total:
                st.restarts += 1
            key = _key(allg, r0, total)
            order = np.argsort(key, kind="stable")
            resume = int(allg[order[-1]]) + 1
            nm = len(Mg)
            blocks = lay.block_of(allg[order])
            offs = (allg[order] - lay.starts[blocks]) * ps
            cpage_arr = np.concatenate(cpages) if cpages else None
            for i, bi, off in zip(order.tolist(), blocks.tolist(), offs.tolist()):
                if i < nm:
                    mi = int(m_idx[i])
                    zero = sec.kind[mi] == 0
                else:
                    zero = False
                flag = RAM_SAVE_FLAG_ZERO if zero else RAM_SAVE_FLAG_PAGE
                if bi == last_block:
                    w(be64(off | flag | RAM_SAVE_FLAG_CONTINUE))
                else:
                    w(be64(off | flag))
                    nm_ = lay.raw_names[bi]
                    w(bytes((len(nm_),)) + nm_)
                    last_block = bi
                if zero:
                    w(b"\0")
                    st.zero += 1
                elif i < nm:
                    pa = int(sec.payload_at[mi])
                    w(mmv[pa : pa + ps])
                    st.main_pages += 1
                else:
                    w(cpage_arr[i - nm].data)  # type: ignore[index]
                    st.channel_pages += 1
            w(mmv[sec.eos : sec.end])
    return st


def _origin(main: MainStream, sec: _RamSection, m_idx: np.ndarray, chans: list[ChannelFile],
            corig: list[tuple[int, int, int]], i: int) -> str:
    nm = len(m_idx)
    if i < nm:
        mi = int(m_idx[i])
        return f"{'ZERO' if sec.kind[mi] == 0 else 'PAGE'} record at offset {int(sec.rec_at[mi])} of {main.path}"
    j = i - nm
    for ci, k, first in reversed(corig):
        if j >= first:
            c = chans[ci]
            return f"packet {k} (packet_num {c.num[k]}, offset {c.at[k]}) of {c.path}"
    return "?"  # pragma: no cover


# --- import -----------------------------------------------------------------------------------------
@dataclass
class MultifdImportReport:
    """What :func:`import_multifd` found; ``imported`` is the report of the rebuilt single stream's import."""

    main: str
    trace: str
    channels: list[dict[str, Any]]
    compression: str
    sections: int
    packets: int
    sync_packets_with_pages: int
    restarts: int
    order_conflicts: int
    zero_pages: int
    channel_pages: int
    imported: Any
    command: str = ""

    @property
    def rounds(self) -> int:
        return int(self.imported.rounds)

    @property
    def pages_per_round(self) -> list[int]:
        return list(self.imported.pages_per_round)

    @property
    def records(self) -> dict[str, int]:
        return dict(self.imported.records)

    def to_json(self) -> dict[str, Any]:
        return {
            "main": self.main, "trace": self.trace, "channels": list(self.channels),
            "compression": self.compression, "sections": self.sections, "packets": self.packets,
            "sync_packets_with_pages": self.sync_packets_with_pages, "restarts": self.restarts,
            "order_conflicts": self.order_conflicts, "zero_pages": self.zero_pages,
            "channel_pages": self.channel_pages, "command": self.command,
            "import": self.imported.to_json(),
        }


def multifd_command(main: Any, channels: Sequence[Any], trace: Any, require_vmdesc: bool = True) -> str:
    args = ["pagecodec", "trace", "import-qemu", str(main)]
    for c in channels:
        args += ["--channel", str(c)]
    args += ["-o", str(trace)]
    if not require_vmdesc:
        args.append("--no-vmdesc")
    return " ".join(shlex.quote(a) for a in args)


def import_multifd(
    main: str | os.PathLike[str],
    channels: Sequence[str | os.PathLike[str]],
    trace: str | os.PathLike[str],
    *,
    command: str | None = None,
    require_vmdesc: bool = True,
    single_stream: str | os.PathLike[str] | None = None,
) -> MultifdImportReport:
    """Import a multifd capture (the main stream and every channel file, in any order) as a trace.

    The channel pages are merged into the main stream's RAM sections in QEMU's send order (module
    docstring), giving the single stream QEMU would have written without multifd; that stream is
    imported with :func:`~pagecodec.trace.qemu_import.import_qemu_stream` (rounds = passes). With
    ``single_stream`` the rebuilt stream is kept there (a QEVM file a QEMU destination without multifd
    loads). Raises WireError/DecodeError naming the file and byte offset, or TraceError; nothing is
    written on error."""
    trace = Path(trace)
    if command is None:
        command = multifd_command(main, channels, trace, require_vmdesc)
    if trace.exists() and trace.is_dir():
        raise TraceError(f"{trace}: is a directory")
    ms = read_main_stream(main, require_vmdesc)
    chans = [read_channel(c, ms.layout) for c in channels]
    _check_channels(ms, chans)
    chans.sort(key=lambda c: c.id)
    if ms.page_records:
        s = next(s for s in ms.sections if (s.kind == 1).any())
        at = int(s.rec_at[int(np.flatnonzero(s.kind == 1)[0])])
        raise WireError("PAGE record in the main stream of a multifd capture (QEMU 7.2 sends every non-zero page "
                        "through a channel)", at, ms.path)
    parent = trace.resolve().parent
    tmp = Path(tempfile.mkdtemp(prefix=".pagecodec-multifd-", dir=parent if parent.is_dir() else None))
    try:
        merged = tmp / "single.mig"
        st = _merge(ms, chans, merged)
        from .qemu_import import import_qemu_stream

        try:
            rep = import_qemu_stream(merged, trace, command=command, require_vmdesc=require_vmdesc)
        except PageCodecError as e:
            msg = str(e).replace(str(merged), f"{ms.path} (+ {len(chans)} channels, merged)")
            raise type(e)(msg) from None
        rep.stream = ms.path
        if single_stream is not None:
            shutil.move(str(merged), str(single_stream))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    comp = next((c.compression for c in chans if c.compression), "none")
    return MultifdImportReport(
        main=ms.path, trace=str(trace), channels=[c.to_json() for c in chans], compression=comp,
        sections=st.sections, packets=sum(c.packets for c in chans),
        sync_packets_with_pages=sum(c.sync_with_pages for c in chans), restarts=st.restarts,
        order_conflicts=st.order_conflicts, zero_pages=st.zero, channel_pages=st.channel_pages, imported=rep,
        command=command,
    )


# --- the reverse: a single stream as a 7.2 multifd capture ------------------------------------------
def split_stream(
    stream: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    channels: int = 2,
    compression: str = "none",
    level: int = 1,
    uuid: bytes = bytes(16),
    sync_race: Callable[[int], bool] | None = None,
) -> tuple[Path, list[Path]]:
    """Write ``main.mig`` and ``channel-<k>.bin`` into ``out_dir``: the multifd capture QEMU 7.2 would
    send for the page records of the single stream ``stream`` (ZERO → main stream; PAGE → channel packets
    of ≤ 128 pages of one block, flushed on a block change, when full and before each EOS, handed to the
    channels round robin; then one SYNC packet per channel). ``sync_race(section)``: when true, the
    section's last data packet suffers 7.2's sync race (it goes out flagged SYNC under the sync's number,
    followed by an empty packet repeating it)."""
    if compression not in COMPRESSION_FLAGS:
        raise ValueError(f"compression {compression!r}: choose from {', '.join(COMPRESSION_FLAGS)}")
    ms = read_main_stream(stream, require_vmdesc=False)
    lay = ms.layout
    ps = lay.page_size
    slots = packet_slots(ps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [open(out / f"channel-{k}.bin", "wb") for k in range(channels)]
    try:
        comp: list[Any] = []
        for _ in range(channels):
            if compression == "zlib":
                comp.append(zlib.compressobj(level, zlib.DEFLATED, 15))
            elif compression == "zstd":
                import zstandard

                comp.append(zstandard.ZstdCompressor(level=level).compressobj())
            else:
                comp.append(None)
        stale = [packet_size(ps) * b"\0" for _ in range(channels)]
        for k, f in enumerate(files):
            f.write(encode_initial_packet(k, uuid))
        mbuf = ms.reader.view_np()
        state = {"num": 0, "next": 0}
        method = COMPRESSION_FLAGS[compression]

        def payload(k: int, pages: np.ndarray) -> bytes:
            data = pages.tobytes()
            if compression == "zlib":
                return comp[k].compress(data) + comp[k].flush(zlib.Z_SYNC_FLUSH)
            if compression == "zstd":
                import zstandard

                return comp[k].compress(data) + comp[k].flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            return data

        def send(k: int, flags: int, num: int, block: str, offs: list[int], pages: np.ndarray | None) -> None:
            body = payload(k, pages) if pages is not None and len(offs) else b""
            nsize = len(body) if len(offs) else int.from_bytes(stale[k][20:24], "big")
            hdr = encode_packet(flags | (method if len(offs) else 0), num, block, offs, ps,
                                next_packet_size=nsize, stale=stale[k])
            stale[k] = hdr
            files[k].write(hdr)
            files[k].write(body)

        for sec in ms.sections:
            pend: tuple[int, str, list[int], list[np.ndarray]] | None = None  # (block, name, offsets, pages)
            last_data: tuple[int, str, list[int], np.ndarray] | None = None
            queue: list[tuple[int, str, list[int], np.ndarray]] = []

            def flush() -> None:
                nonlocal pend
                if pend is not None and pend[2]:
                    queue.append((pend[0], pend[1], pend[2], np.stack(pend[3])))
                pend = None

            for i in np.flatnonzero(sec.kind == 1).tolist():
                g = int(sec.g[i])
                bi = int(lay.block_of(np.array([g]))[0])
                off = (g - int(lay.starts[bi])) * ps
                if pend is not None and pend[0] != bi:
                    flush()
                if pend is None:
                    pend = (bi, lay.names[bi], [], [])
                pend[2].append(off)
                pa = int(sec.payload_at[i])
                pend[3].append(mbuf[pa : pa + ps])
                if len(pend[2]) == slots:
                    flush()
            flush()
            race = bool(queue) and sync_race is not None and sync_race(sec.index)
            for qi, (bi, name, offs, pages) in enumerate(queue):
                k = state["next"]
                state["next"] = (k + 1) % channels
                if race and qi == len(queue) - 1:
                    last_data = (k, name, offs, pages)
                    state["num"] += 1  # this number is overwritten by the sync and never sent
                    continue
                send(k, 0, state["num"], name, offs, pages)
                state["num"] += 1
            for k in range(channels):
                num = state["num"]
                state["num"] += 1
                if last_data is not None and last_data[0] == k:
                    send(k, MULTIFD_FLAG_SYNC, num, last_data[1], last_data[2], last_data[3])
                    send(k, 0, num, "", [], None)
                else:
                    send(k, MULTIFD_FLAG_SYNC, num, "", [], None)
        # the main stream: everything but the PAGE records
        main_path = out / "main.mig"
        _merge(ms, [], main_path, only_zero=True)
    finally:
        for f in files:
            f.close()
    return main_path, [out / f"channel-{k}.bin" for k in range(channels)]


# --- recording over TCP -----------------------------------------------------------------------------
@dataclass
class _Conn:
    n: int
    path: Path
    src: socket.socket
    dst: socket.socket | None
    bytes: int = 0
    error: str | None = None
    done: threading.Event = field(default_factory=threading.Event)
    back_done: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)


@dataclass(frozen=True)
class RecordedCapture:
    """The files of a recorded multifd migration."""

    main: Path
    channels: list[Path]
    bytes: dict[str, int]


class StreamRecorder:
    """A loopback TCP listener recording every migration connection (source → destination bytes) to its own
    file; with ``forward_to=(host, port)`` also a tee proxy to a real destination.

        with StreamRecorder(workdir) as rec:
            qmp.execute("migrate", uri=rec.uri)
            ... wait for completed ...
            files = rec.finish(connections=1 + channels, timeout=30)
    """

    def __init__(self, directory: str | os.PathLike[str], *, forward_to: tuple[str, int] | None = None,
                 host: str = "127.0.0.1", port: int = 0, chunk: int = 1 << 20) -> None:
        self.dir = Path(directory)
        self.forward_to = forward_to
        self.host = host
        self.chunk = chunk
        self.conns: list[_Conn] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._sock = socket.create_server((host, port), backlog=64)
        self.port = self._sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="pagecodec-recorder", daemon=True)
        self._thread.start()

    @property
    def uri(self) -> str:
        return f"tcp:{self.host}:{self.port}"

    def __enter__(self) -> StreamRecorder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _accept_loop(self) -> None:
        self._sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                s, _ = self._sock.accept()
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                break
            s.settimeout(None)
            dst = None
            if self.forward_to is not None:
                # connect now, in accept order: a 7.2 destination takes its first connection as the main stream
                try:
                    dst = socket.create_connection(self.forward_to, timeout=10)
                    dst.settimeout(None)
                except OSError as e:
                    self.errors.append(f"cannot connect to the destination {self.forward_to[0]}:{self.forward_to[1]}: {e}")
                    s.close()
                    continue
            c = _Conn(len(self.conns), self.dir / f"conn-{len(self.conns)}.raw", s, dst)
            t = threading.Thread(target=self._pump, args=(c,), name=f"pagecodec-rec-{c.n}", daemon=True)
            c.threads.append(t)
            if dst is not None:
                tb = threading.Thread(target=self._pump_back, args=(c,), name=f"pagecodec-rec-{c.n}-back", daemon=True)
                c.threads.append(tb)
            else:
                c.back_done.set()
            with self._lock:
                self.conns.append(c)
            for th in c.threads:
                th.start()

    def _pump(self, c: _Conn) -> None:
        try:
            with open(c.path, "wb") as f:
                while True:
                    try:
                        data = c.src.recv(self.chunk)
                    except OSError as e:
                        c.error = f"reading from the source: {e}"
                        break
                    if not data:
                        break
                    f.write(data)
                    c.bytes += len(data)
                    if c.dst is not None:
                        try:
                            c.dst.sendall(data)
                        except OSError as e:
                            c.error = f"forwarding to the destination: {e}"
                            break
        finally:
            if c.dst is not None:
                try:
                    c.dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
            c.done.set()

    def _pump_back(self, c: _Conn) -> None:
        assert c.dst is not None
        try:
            while True:
                try:
                    data = c.dst.recv(self.chunk)
                except OSError:
                    break
                if not data:
                    break
                try:
                    c.src.sendall(data)
                except OSError:
                    break
        finally:
            try:
                c.src.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            c.back_done.set()

    def wait(self, connections: int, timeout: float) -> None:
        """Wait until ``connections`` connections were accepted and each source closed its side."""
        from ..qemu import QemuError

        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                conns = list(self.conns)
            if len(conns) >= connections and all(c.done.is_set() for c in conns):
                return
            if self.errors:
                raise QemuError(f"recording the migration: {self.errors[0]}")
            if time.monotonic() > deadline:
                open_ = [c.n for c in conns if not c.done.is_set()]
                raise QemuError(f"recording the migration: {len(conns)} of {connections} connections after "
                                f"{timeout:g} s" + (f", still open: {open_}" if open_ else ""))
            time.sleep(0.02)

    def finish(self, connections: int, timeout: float = 30.0) -> RecordedCapture:
        """Wait for the connections to end, then name the files by their first bytes: ``main.mig`` (QEVM)
        and ``channel-<id>.bin`` (multifd initial packet)."""
        from ..qemu import QemuError

        self.wait(connections, timeout)
        errs = [f"connection {c.n}: {c.error}" for c in self.conns if c.error]
        if errs:
            raise QemuError("recording the migration: " + "; ".join(errs))
        main: Path | None = None
        chans: dict[int, Path] = {}
        sizes: dict[str, int] = {}
        for c in self.conns:
            with open(c.path, "rb") as f:
                head = f.read(INIT_PACKET_SIZE)
            magic = int.from_bytes(head[:4], "big") if len(head) >= 4 else None
            if magic == QEMU_VM_FILE_MAGIC:
                if main is not None:
                    raise QemuError(f"recording the migration: two connections start with QEVM ({main}, {c.path})")
                main = self.dir / "main.mig"
                c.path.replace(main)
                sizes[main.name] = c.bytes
            elif magic == MULTIFD_MAGIC and len(head) >= 25:
                cid = head[24]
                if cid in chans:
                    raise QemuError(f"recording the migration: two connections claim multifd channel {cid}")
                p = self.dir / f"channel-{cid}.bin"
                c.path.replace(p)
                chans[cid] = p
                sizes[p.name] = c.bytes
            else:
                raise QemuError(f"recording the migration: connection {c.n} starts with {head[:8].hex() or 'nothing'}"
                                f", neither QEVM nor the multifd magic")
        if main is None:
            raise QemuError("recording the migration: no connection carried the main stream (QEVM)")
        return RecordedCapture(main, [chans[k] for k in sorted(chans)], sizes)

    def close(self) -> None:
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        self._thread.join(5)
        for c in self.conns:
            for s in (c.src, c.dst):
                if s is None:
                    continue
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            for t in c.threads:
                t.join(5)


# --- capture over QMP -------------------------------------------------------------------------------
def multifd_parameters(channels: int, compression: str = "none", level: int | None = None) -> dict[str, Any]:
    """``migrate-set-parameters`` arguments for multifd (QMP names)."""
    if compression not in COMPRESSION_FLAGS:
        raise ValueError(f"multifd compression {compression!r}: choose from {', '.join(COMPRESSION_FLAGS)}")
    p: dict[str, Any] = {"multifd-channels": channels, "multifd-compression": compression}
    if level is not None and compression != "none":
        p[f"multifd-{compression}-level"] = level
    return p


def listen_multifd_incoming(qmp: Any, channels: int, compression: str = "none", *, host: str = "127.0.0.1",
                            level: int | None = None) -> tuple[str, int]:
    """Make a destination started with ``-incoming defer`` listen for a multifd migration on ``host``
    (ephemeral port); returns (host, port)."""
    from ..qemu import QemuError

    qmp.execute("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    qmp.execute("migrate-set-parameters", arguments=multifd_parameters(channels, compression, level))
    qmp.execute("migrate-incoming", uri=f"tcp:{host}:0")
    for addr in qmp.execute("query-migrate").get("socket-address", []):
        if addr.get("type") in ("inet", "socket") and "port" in addr:
            return addr.get("host", host), int(addr["port"])
    raise QemuError("the destination did not report its listening port (query-migrate socket-address)")


def capture_multifd(
    qmp_socket: str | os.PathLike[str] | None,
    output: str | os.PathLike[str],
    *,
    channels: int = 2,
    compression: str = "none",
    compression_level: int | None = None,
    max_bandwidth: int = 1 << 20,
    downtime_limit: int = 1,
    passes: int | None = 5,
    cont: bool = False,
    keep_dir: str | os.PathLike[str] | None = None,
    timeout: float = 300.0,
    progress: Callable[[Any], None] | None = None,
    qmp: Any = None,
    connect_timeout: float = 5.0,
    forward_to: tuple[str, int] | None = None,
    poll: float = 0.1,
) -> Any:
    """Migrate the VM behind ``qmp_socket`` with multifd to pagecodec's recorder and import the capture.

    Like :func:`pagecodec.trace.qemu_capture.capture_qemu` (low bandwidth and downtime so QEMU makes several
    passes; limits raised after ``passes`` dirty syncs), with ``channels`` multifd channels and
    ``compression`` (none, zlib, zstd). ``keep_dir``: keep ``main.mig`` and ``channel-<k>.bin`` there.
    ``forward_to``: also migrate to a real destination (listening, see :func:`listen_multifd_incoming`).
    The source's multifd capability is switched off again afterwards. Returns a
    :class:`~pagecodec.trace.qemu_capture.CaptureResult` whose ``imported`` is a :class:`MultifdImportReport`."""
    from ..qemu import QemuError
    from ..qemu.migrate import MigrationResult, MigrationSettings, configure, wait_for_migration
    from .qemu_capture import CaptureResult, capture_command, open_session

    if not 1 <= channels <= 255:
        raise QemuError(f"multifd channels {channels}: QEMU takes 1..255")
    output = Path(output)
    settings = MigrationSettings(max_bandwidth=max_bandwidth, downtime_limit=downtime_limit,
                                 finish_after_passes=passes,
                                 parameters=multifd_parameters(channels, compression, compression_level))
    caps = [dict(c, state=True) if c["capability"] == "multifd" else c for c in settings.capability_list()]
    session, own = open_session(qmp, qmp_socket, connect_timeout, "capture_multifd")
    parent = output.resolve().parent
    tmpdir = Path(tempfile.mkdtemp(prefix=".pagecodec-capture-", dir=parent))
    command = capture_command(qmp_socket, output, settings) + f" --multifd {channels}"
    if compression != "none":
        command += f" --multifd-compression {compression}"
    try:
        current = session.execute("query-migrate").get("status")
        if current in ("setup", "active", "device", "pre-switchover", "cancelling", "wait-unplug"):
            raise QemuError(f"a migration is already {current}")
        rec = StreamRecorder(tmpdir / "rec", forward_to=forward_to)
        try:
            configure(session, settings, caps)
            t0 = time.monotonic()
            session.execute("migrate", uri=rec.uri)
            last, finished_early = wait_for_migration(
                session, settings, t0, progress=progress, timeout=timeout, poll=poll,
                failed=lambda p: (f"multifd migration to {rec.uri} {p.status}: "
                                  f"{p.info.get('error-desc', 'no error-desc')}"
                                  + (f"; recorder: {rec.errors[0]}" if rec.errors else "")),
                timed_out=lambda p: (f"multifd migration not completed after {timeout:g} s (status "
                                     f"{p.status}, {p.passes} passes); cancelled"))
            files = rec.finish(1 + channels, timeout=30)
        finally:
            rec.close()
        if len(files.channels) != channels:
            raise QemuError(f"recorded {len(files.channels)} multifd channels, expected {channels}")
        total = sum(files.bytes.values())
        main_path, chan_paths = files.main, list(files.channels)
        kept = None
        if keep_dir is not None:  # keep the recording even if the import fails
            kept = Path(keep_dir)
            kept.mkdir(parents=True, exist_ok=True)
            for p in [files.main, *files.channels]:
                shutil.move(str(p), str(kept / p.name))
            main_path, chan_paths = kept / files.main.name, [kept / p.name for p in files.channels]
        resumed = False
        try:
            imported = import_multifd(main_path, chan_paths, output, command=command)
        finally:
            if cont:
                session.execute("cont")
                resumed = True
        mig = MigrationResult(main_path, total, last.passes, last.transferred, last.elapsed, finished_early, last.info)
        return CaptureResult(output, mig, kept, imported, resumed)
    finally:
        try:
            if session.execute("query-migrate").get("status") not in ("setup", "active", "device", "cancelling"):
                session.execute("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": False}])
        except QemuError:
            pass
        shutil.rmtree(tmpdir, ignore_errors=True)
        if own:
            session.close()
