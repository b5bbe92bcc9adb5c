"""Multifd channel wire format (QEMU 7.2, ``migration/multifd.h`` and ``multifd.c``): the handshake, the
packet header with its offset slots, the encoder and a bounds-checked packet reader.

What a channel connection carries:

* the initial packet ``MultiFDInit_t`` (64 bytes): be32 magic 0x11223344, be32 version 1, 16-byte
  uuid, u8 channel id, 7 pad bytes, 4 × u64 unused;
* then packets ``MultiFDPacket_t``: be32 magic, be32 version, be32 flags (SYNC 0x1; compression in
  bits 1–3: none 0, ZLIB 0x2, ZSTD 0x4), be32 pages_alloc, be32 normal_pages, be32 next_packet_size,
  be64 packet_num, 4 × u64 unused, char ramblock[256], then be64 offsets — always
  ``MULTIFD_PACKET_SIZE / page size`` = 128 slots (the receiver reads a fixed ``packet_len``), of which
  the first normal_pages are used — then the payload: normal_pages raw pages (none), or
  next_packet_size bytes of the channel's compressed stream (zlib, zstd). Packets without pages carry
  no payload; their ramblock, next_packet_size and unused offset slots are stale leftovers of the
  channel's previous packet (QEMU reuses the buffer) and are ignored, as QEMU does.

QEMU 9.0+ (``qemu-version=10.2``, :data:`LAYOUT_ZERO_PAGES`) puts be32 ``zero_pages`` into the first
unused word: the offset slots list the normal pages, then the zero pages the channel found
(``zero-page-detection=multifd``), and only the normal pages travel as payload. Its sender clears
the whole header before filling each packet (no stale fields), and its SYNC packets carry nothing but
magic, version, flags and packet_num (pages_alloc 0). A 7.2 reader (:data:`LAYOUT_72`) refuses a
packet with zero pages, as QEMU 7.2 would read them as normal pages that never arrive.

The sender side (multifd channels as a codec) and the importer of multifd captures both use this
module, so the layout is defined once. What depends on the RAM layout (block names, offsets inside a
block) or on the sequence of packets (packet numbers, syncs) is checked by the caller.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .flags import QEMU_VM_FILE_MAGIC
from .reader import StreamReader

__all__ = [
    "MULTIFD_MAGIC", "MULTIFD_VERSION", "MULTIFD_FLAG_SYNC", "MULTIFD_FLAG_COMPRESSION_MASK", "COMPRESSION_FLAGS",
    "COMPRESSION_NAMES", "MULTIFD_PACKET_SIZE", "COMPRESSED_BUFFER", "INIT_PACKET_SIZE", "PACKET_HEADER_SIZE",
    "RAMBLOCK_AT", "packet_slots", "packet_size", "encode_initial_packet", "encode_packet", "InitialPacket",
    "PacketHeader", "read_initial_packet", "read_packet_header", "LAYOUT_72", "LAYOUT_ZERO_PAGES", "packet_layout",
    "ZERO_PAGES_AT",
]

MULTIFD_MAGIC = 0x11223344
MULTIFD_VERSION = 1
MULTIFD_FLAG_SYNC = 0x1
MULTIFD_FLAG_COMPRESSION_MASK = 0x7 << 1
COMPRESSION_FLAGS = {"none": 0x0, "zlib": 0x2, "zstd": 0x4}
COMPRESSION_NAMES = {v: k for k, v in COMPRESSION_FLAGS.items()}
#: Bytes of pages per packet; the packet header has this many / page size offset slots.
MULTIFD_PACKET_SIZE = 512 * 1024
#: QEMU's receive buffer for a compressed payload (zlib/zstd: twice the packet size).
COMPRESSED_BUFFER = 2 * MULTIFD_PACKET_SIZE
_INIT = struct.Struct(">II16sB7s32s")   # MultiFDInit_t
_PKT = struct.Struct(">IIIIIIQ32s256s")  # MultiFDPacket_t without offset[]
INIT_PACKET_SIZE = _INIT.size           # 64
PACKET_HEADER_SIZE = _PKT.size          # 320
RAMBLOCK_AT = 64                        # ramblock[] inside a packet
ZERO_PAGES_AT = 32                      # 9.0+: be32 zero_pages, the first word of unused[]
#: Packet layouts: QEMU 7.2's, and 9.0+'s with zero_pages (both are MULTIFD_VERSION 1 on the wire).
LAYOUT_72 = "7.2"
LAYOUT_ZERO_PAGES = "9.0+"
_KNOWN_PACKET_FLAGS = MULTIFD_FLAG_SYNC | MULTIFD_FLAG_COMPRESSION_MASK


def packet_slots(page_size: int) -> int:
    """Offset slots in every packet header (``MULTIFD_PACKET_SIZE / page size``; 128 for 4 KiB)."""
    return MULTIFD_PACKET_SIZE // page_size


def packet_size(page_size: int) -> int:
    """Bytes of a packet header with its offset slots (1344 for 4 KiB pages)."""
    return PACKET_HEADER_SIZE + 8 * packet_slots(page_size)


def packet_layout(qemu_version: str) -> str:
    """The packet layout a modelled QEMU version writes and reads (``qemu-version`` values)."""
    return LAYOUT_ZERO_PAGES if qemu_version == "10.2" else LAYOUT_72


def encode_initial_packet(channel_id: int, uuid: bytes = bytes(16)) -> bytes:
    """``MultiFDInit_t`` as ``multifd_send_initial_packet`` writes it."""
    return _INIT.pack(MULTIFD_MAGIC, MULTIFD_VERSION, uuid, channel_id, bytes(7), bytes(32))


def encode_packet(
    flags: int, packet_num: int, block: str, offsets: Sequence[int] | np.ndarray, page_size: int = 4096, *,
    next_packet_size: int | None = None, pages_alloc: int | None = None, stale: bytes | None = None,
    magic: int = MULTIFD_MAGIC, version: int = MULTIFD_VERSION, zero_offsets: Sequence[int] | np.ndarray = (),
    layout: str = LAYOUT_72,
) -> bytes:
    """A packet header with its offset slots (payload not included).

    7.2 layout: ``stale`` is a previous header of the same channel whose unused slots (and, for an
    empty packet, ramblock) the new one keeps, as QEMU's reused buffer does. 9.0+ layout
    (``LAYOUT_ZERO_PAGES``): the header starts from zeros; ``zero_offsets`` follow the normal
    ``offsets`` in the slots and their count goes into ``zero_pages``; a packet without any page (a
    SYNC) has pages_alloc 0 and no ramblock, as ``multifd_send_fill_packet`` leaves them."""
    slots = packet_slots(page_size)
    nz = len(zero_offsets)
    if nz and layout != LAYOUT_ZERO_PAGES:
        raise ValueError("zero pages in a packet need the 9.0+ layout")
    if len(offsets) + nz > slots:
        raise ValueError(f"{len(offsets) + nz} pages do not fit in a packet of {slots}")
    if next_packet_size is None:
        next_packet_size = len(offsets) * page_size
    if layout == LAYOUT_ZERO_PAGES:
        buf = bytearray(packet_size(page_size))
        empty = not len(offsets) and not nz
        alloc = (0 if empty else slots) if pages_alloc is None else pages_alloc
        name = b"" if empty else block.encode("ascii")[:255]
        _PKT.pack_into(buf, 0, magic, version, flags, alloc, len(offsets), next_packet_size, packet_num,
                       nz.to_bytes(4, "big").ljust(32, b"\0"), name.ljust(256, b"\0"))
    else:
        buf = bytearray(stale if stale is not None else packet_size(page_size))
        name = block.encode("ascii")[:256] if block else bytes(buf[RAMBLOCK_AT:RAMBLOCK_AT + 256])
        _PKT.pack_into(buf, 0, magic, version, flags, slots if pages_alloc is None else pages_alloc, len(offsets),
                       next_packet_size, packet_num, bytes(32), name.ljust(256, b"\0") if block else name)
    n = len(offsets)
    if n:
        buf[PACKET_HEADER_SIZE:PACKET_HEADER_SIZE + 8 * n] = np.asarray(offsets, dtype=">u8").tobytes()
    if nz:
        at = PACKET_HEADER_SIZE + 8 * n
        buf[at:at + 8 * nz] = np.asarray(zero_offsets, dtype=">u8").tobytes()
    return bytes(buf)


@dataclass(frozen=True)
class InitialPacket:
    """``MultiFDInit_t``: which migration (uuid) and which channel a connection is."""

    uuid: bytes
    channel_id: int


@dataclass(frozen=True)
class PacketHeader:
    """One ``MultiFDPacket_t`` as read, with where its parts are in the stream (offsets relative to the
    reader's buffer; add ``StreamReader.base`` for stream offsets)."""

    at: int                      # the packet's first byte
    flags: int
    pages_alloc: int
    normal_pages: int
    next_packet_size: int
    packet_num: int
    ramblock: str                # "" for a packet without pages (its ramblock[] is stale)
    offsets: np.ndarray          # be64 view of the first normal_pages offset slots
    compression: str | None      # None for a packet without pages
    payload_at: int
    payload_len: int
    zero_pages: int = 0          # 9.0+ layout: pages the sender found zero (no payload)
    zero_offsets: np.ndarray | None = None  # be64 view of their offset slots (after the normal ones)

    @property
    def sync(self) -> bool:
        return bool(self.flags & MULTIFD_FLAG_SYNC)


def read_initial_packet(r: StreamReader) -> InitialPacket:
    """``MultiFDInit_t`` at the cursor (the start of a channel), checked as ``multifd_recv_initial_packet``
    checks it (magic, version); raises WireError naming the offset."""
    at = r.pos
    if r.remaining < INIT_PACKET_SIZE:
        raise r.error(f"truncated channel file: the initial packet (MultiFDInit_t) needs {INIT_PACKET_SIZE} "
                      f"bytes, the file has {r.remaining}", len(r))
    magic, version, uuid, cid, _pad, _unused = _INIT.unpack_from(r.get_bytes(INIT_PACKET_SIZE, "initial packet"))
    if magic != MULTIFD_MAGIC:
        hint = " (this is a main stream, QEVM: pass it as MAIN, not as a channel)" if magic == QEMU_VM_FILE_MAGIC else ""
        raise r.error(f"not a multifd channel: initial packet magic {magic:#010x}, expected {MULTIFD_MAGIC:#010x}{hint}", at)
    if version != MULTIFD_VERSION:
        raise r.error(f"multifd initial packet version {version}, expected {MULTIFD_VERSION}", at + 4)
    return InitialPacket(bytes(uuid), cid)


def read_packet_header(r: StreamReader, page_size: int, index: int = 0, layout: str = LAYOUT_72) -> PacketHeader:
    """The packet at the cursor: its header and offset slots, checked as ``multifd_recv_unfill_packet``
    checks them (magic, version, flags, pages_alloc, normal_pages, zero_pages, payload size), and the
    payload's extent (bounds-checked, not read). The cursor is left after the payload. ``index`` (the
    packet's position in its channel) only names the packet in errors; ``layout`` is :data:`LAYOUT_72`
    (zero_pages refused) or :data:`LAYOUT_ZERO_PAGES` (9.0+). Raises WireError naming the offset."""
    ps = page_size
    slots = packet_slots(ps)
    hsize = packet_size(ps)
    at = r.pos
    if r.remaining < hsize:
        raise r.error(f"truncated packet: its header needs {hsize} bytes ({slots} offset slots), {r.remaining} left", at)
    buf = r.view_np()
    magic, version, flags, alloc, normal, nsize, num, unused, rb = _PKT.unpack_from(r.get_bytes(hsize, "packet header"))
    if magic != MULTIFD_MAGIC:
        raise r.error(f"packet magic {magic:#010x}, expected {MULTIFD_MAGIC:#010x} (packet {index}; the previous "
                      f"packet's payload has the wrong size, or the file is corrupt)", at)
    if version != MULTIFD_VERSION:
        raise r.error(f"packet version {version}, expected {MULTIFD_VERSION}", at + 4)
    if flags & ~_KNOWN_PACKET_FLAGS:
        raise r.error(f"unknown packet flags {flags:#x} (known: SYNC 0x1, compression 0x2/0x4)", at + 8)
    if alloc > 100 * slots or (layout == LAYOUT_ZERO_PAGES and alloc > slots):
        limit = slots if layout == LAYOUT_ZERO_PAGES else 100 * slots
        raise r.error(f"pages_alloc {alloc}: QEMU refuses more than {limit}", at + 12)
    if normal > alloc or normal > slots:
        raise r.error(f"{normal} normal pages in a packet with pages_alloc {alloc} and {slots} offset slots", at + 16)
    zero = int.from_bytes(unused[:4], "big")
    if layout == LAYOUT_ZERO_PAGES:
        if zero > alloc - normal:
            raise r.error(f"{zero} zero pages in a packet with pages_alloc {alloc} and {normal} normal pages "
                          f"(QEMU allows at most {alloc - normal})", at + ZERO_PAGES_AT)
    elif zero and normal:
        # 9.0+ put zero_pages here (zero pages listed after the normal ones): not a 7.2 stream
        raise r.error(f"packet has zero_pages {zero} (QEMU 9.0+ multifd zero page detection): only QEMU "
                      f"7.2-style channels are supported", at + ZERO_PAGES_AT)
    else:
        zero = 0
    pat = r.pos
    if not normal and not zero:
        return PacketHeader(at, flags, alloc, 0, nsize, num, "", buf[0:0].view(">u8"), None, pat, 0)
    raw = rb.split(b"\0", 1)[0]
    try:
        name = raw.decode("ascii")
    except UnicodeDecodeError:
        raise r.error(f"packet ramblock name is not ASCII: {raw[:64]!r}", at + RAMBLOCK_AT) from None
    offs = buf[at + PACKET_HEADER_SIZE : at + PACKET_HEADER_SIZE + 8 * normal].view(">u8")
    zat = at + PACKET_HEADER_SIZE + 8 * normal
    zoffs = buf[zat : zat + 8 * zero].view(">u8")
    method = flags & MULTIFD_FLAG_COMPRESSION_MASK
    comp = COMPRESSION_NAMES.get(method)
    if comp is None:
        raise r.error(f"unknown multifd compression flags {method:#x}", at + 8)
    if not normal:
        plen = 0
        if nsize:
            raise r.error(f"next_packet_size {nsize} in a packet without normal pages ({zero} zero pages)", at + 20)
    elif comp == "none":
        plen = normal * ps
        if nsize != plen:
            raise r.error(f"next_packet_size {nsize} disagrees with {normal} pages of {ps} bytes "
                          f"(multifd-compression none)", at + 20)
    else:
        plen = nsize
        if nsize == 0 or nsize > COMPRESSED_BUFFER:
            raise r.error(f"compressed payload of {nsize} bytes (QEMU's receive buffer holds 1..{COMPRESSED_BUFFER})",
                          at + 20)
    if r.remaining < plen:
        raise r.error(f"truncated packet: its payload ({normal} pages, {plen} bytes) has {r.remaining} bytes left", pat)
    r.pos += plen
    return PacketHeader(at, flags, alloc, normal, nsize, num, name, offs, comp, pat, plen, zero, zoffs)
