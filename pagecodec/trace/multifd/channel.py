"""Multifd channel files (QEMU 7.2): the wire format, the packet reader and the page payloads.

What a channel connection carries (QEMU 7.2, ``migration/multifd.c``):

**Channel k** (``channel-<k>.bin``): the initial packet ``MultiFDInit_t`` (64 bytes: be32 magic
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

**Packet numbers.** ``packet_num`` is global (one counter for all channels), increasing in the order
the migration thread queued the packets; pages inside a packet are in queue order (one block).
Per channel the numbers never go back. One race in 7.2's ``multifd_send_sync_main`` shows in real
streams: if a channel's thread has not yet picked up the data packet it was just handed (typically the
flush right before the sync), the sync overwrites that packet's number and sets SYNC on it, so the
data goes out as a SYNC packet *with pages* under the sync's (later) number, the original number is
never used, and the channel then sends an empty packet repeating the number. The reader accepts
exactly that: a repeated number only on an empty non-SYNC packet, and as many unused numbers as SYNC
packets with pages (more means a channel file is missing).
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import DecodeError, WireError
from ...wire.flags import QEMU_VM_FILE_MAGIC
from ...wire.reader import StreamReader
from .layout import _Layout

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
