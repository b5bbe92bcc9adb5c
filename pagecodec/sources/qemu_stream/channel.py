"""Multifd channel files of a capture (QEMU 7.2, ``channel-<k>.bin``): their packets against the RAM
layout, the packet-number rules, and the page payloads.

A channel file is one channel connection as recorded: the packet layout and its bounds-checked
reader are :mod:`pagecodec.wire.multifd`. This module checks what needs the main stream's block list
(block names, offsets inside their block) and the sequence of packets, and inflates the payloads:
one deflate stream per channel for the whole migration, Z_SYNC_FLUSH at each packet's end (zlib), or
one endless zstd frame per channel, flushed at each packet's end (zstd).

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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...codecs.multifd_stream import ChannelInflater
from ...errors import WireError
from ...wire.multifd import MULTIFD_FLAG_SYNC, PACKET_HEADER_SIZE, RAMBLOCK_AT, read_initial_packet, read_packet_header
from ...wire.reader import StreamReader
from .layout import _Layout

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
    ps = layout.page_size
    init = read_initial_packet(r)
    ch = ChannelFile(src, init.channel_id, init.uuid, len(r), r)
    pages: list[np.ndarray] = []
    npages = 0
    last_num = -1
    last_at = -1
    names = layout.names
    while not r.at_end():
        p = read_packet_header(r, ps, ch.packets)
        at, num, normal = p.at, p.packet_num, p.normal_pages
        if num < last_num:
            raise WireError(f"packet_num {num} goes backwards (the channel's previous packet, at offset {last_at}, "
                            f"has {last_num}): packets out of order or from another migration", at + 24, src)
        if num == last_num and (normal or p.sync):
            raise WireError(f"packet_num {num} repeats the previous packet's (offset {last_at}) on a packet with "
                            f"{'pages' if normal else 'SYNC'}: only an empty packet after a sync may repeat it",
                            at + 24, src)
        if normal:
            bi = layout.index.get(p.ramblock)
            if bi is None:
                raise WireError(f"packet names unknown RAM block {p.ramblock!r} (the main stream's MEM_SIZE lists "
                                f"{', '.join(repr(x) for x in names)})", at + RAMBLOCK_AT, src)
            offs = p.offsets
            length = layout.lengths[bi]
            bad = np.flatnonzero((offs > np.uint64(length - ps)) | ((offs % np.uint64(ps)) != 0))
            if len(bad):
                i = int(bad[0])
                o = int(offs[i])
                why = "not page aligned" if o % ps else f"outside block {p.ramblock!r} of {length:#x} bytes"
                raise WireError(f"page offset {o:#x} (page {i} of the packet) is {why}",
                                at + PACKET_HEADER_SIZE + 8 * i, src)
            if ch.compression is None:
                ch.compression = p.compression
            elif p.compression != ch.compression:
                raise WireError(f"packet compressed with {p.compression}, earlier packets of this channel with "
                                f"{ch.compression}", at + 8, src)
            pages.append(offs.astype(np.int64) // ps + int(layout.starts[bi]))
        ch.at.append(at)
        ch.num.append(num)
        ch.flags.append(p.flags)
        ch.normal.append(normal)
        ch.payload_at.append(p.payload_at)
        ch.payload_len.append(p.payload_len)
        ch.first.append(npages)
        ch.window.append(ch.syncs)
        npages += normal
        if p.sync:
            ch.syncs += 1
        last_num, last_at = num, at
    ch.pages = np.concatenate(pages) if pages else np.empty(0, np.int64)
    return ch


class _PageSource:
    """Pages of one channel's packets, in channel order (compressed streams are inflated sequentially,
    with the per-channel stream of :class:`~pagecodec.codecs.multifd_stream.ChannelInflater`)."""

    def __init__(self, ch: ChannelFile, page_size: int) -> None:
        self.ch = ch
        self.ps = page_size
        self.next = 0
        self.buf = ch.reader.view_np()
        self.inflater = ChannelInflater(ch.compression or "none", ch.path)

    def pages(self, k: int) -> np.ndarray:
        ch, ps = self.ch, self.ps
        if k < self.next:
            raise AssertionError("channel packets must be read in order")
        self.next = k + 1
        at, ln = ch.payload_at[k], ch.payload_len[k]
        return self.inflater.packet(self.buf[at : at + ln], ch.normal[k], ps,
                                    f"packet {k} (packet_num {ch.num[k]})", at)
