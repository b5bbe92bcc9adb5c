"""Multifd channels as a codec (QEMU's ``ram_save_multifd_page``, ``multifd.c``, ``multifd-zlib.c``,
``multifd-zstd.c``): the sending side fills the chain's multifd slot, the receiving side reads the
channels back for ``verify``.

**Sending** (:class:`MultifdEncoder`). Pages reach the slot after the zero slot (QEMU 7.2: zero pages
stay on the main stream as ZERO records) and write no main-stream record. They are queued as
``multifd_queue_page`` queues them: a packet holds up to ``MULTIFD_PACKET_SIZE / page size`` (128)
pages of one block and is sent when full or when the block changes. Each packet goes to a channel
with the next global ``packet_num``; each channel starts with its initial packet (handshake).
``multifd-compression`` zlib/zstd keep one compression stream per channel for the whole migration
(:mod:`pagecodec.codecs.multifd_stream`).

* **Sync, 7.2** — ``multifd_send_sync_main`` in ``ram_save_setup`` and at the end of every RAM
  section, before its EOS: the partial packet is sent, then one SYNC packet per channel (channel 0
  first). SYNC packets of 7.2 keep the channel's stale next_packet_size, ramblock and offset slots
  (QEMU reuses the buffer).
* **Sync, 8.1+** (``qemu-version=10.2``) — ``multifd_ram_flush_and_sync`` in ``ram_save_setup`` and
  each time the page search wraps past the last block (the end of every pass, the last one in
  ``ram_save_complete`` included): partial packet, one SYNC per channel, then a
  ``RAM_SAVE_FLAG_MULTIFD_FLUSH`` record on the main stream; the section ends no longer sync. With
  ``zero-page-detection=multifd`` the main thread sends no ZERO record: every page is queued and the
  channel sorts its packet's pages into normal ones (payload) and zero ones (listed after them,
  ``zero_pages``) with QEMU's in-place swap (:func:`zero_page_partition`).

**Modelling choices** (QEMU decides these by thread timing): packets go to the channels in strict
round robin (QEMU takes the next *idle* channel from ``next_channel``, which is round robin while
channels keep up), packet numbers follow the send order (10.x numbers packets in the channel threads),
and 7.2's sync race (a data packet overtaken by the SYNC) never happens. Every choice is a legal
QEMU behaviour, and the destination's memory does not depend on it.

**Counters.** 7.2: ``normal`` += pages queued; ``multifd-bytes`` and ``transferred`` += pages ×
page size + packet header (1344 bytes) per packet, and + packet header per SYNC — uncompressed even
with zlib/zstd, as 7.2 counts (initial packets not counted). 10.x: ``normal``/``duplicate`` as the
channel's zero-page detection sorts them, ``multifd-bytes`` the bytes really written (headers,
compressed payloads, initial packets). The group ``multifd`` (pagecodec's own, QEMU has no such
query-migrate group) gives the real bytes per channel beside packet counts.

**Receiving** (:class:`MultifdReceiver`): every channel's packets are read with
:func:`pagecodec.wire.multifd.read_packet_header`, inflated with the per-channel stream (capped at
normal pages × page size) and applied to the destination's memory; QEMU's rule that the main
stream's i-th EOS (7.2) or MULTIFD_FLUSH (8.1+) waits for every channel's i-th SYNC decides which
packets are applied when.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from .. import __version__
from ..errors import ConfigError, WireError
from ..wire.flags import RAM_SAVE_FLAG_MULTIFD_FLUSH
from ..wire.multifd import (
    COMPRESSION_FLAGS,
    MULTIFD_FLAG_SYNC,
    PACKET_HEADER_SIZE,
    RAMBLOCK_AT,
    encode_initial_packet,
    encode_packet,
    packet_layout,
    packet_size,
    packet_slots,
    read_initial_packet,
    read_packet_header,
)
from ..wire.reader import StreamReader
from ..wire.writer import NullSink, WireWriter
from .base import Codec, CodecContext, ControlRecord, Segment, Slot, SlotEncoder, Stage
from .multifd_stream import ChannelCompressor, ChannelInflater, zstd_library
from .zero import warm_up as warm_up_zero
from .zero import zero_page_mask

__all__ = ["MultifdCodec", "MultifdEncoder", "MultifdReceiver", "zero_page_partition", "channel_file_name"]

#: Byte-count categories of channel bytes.
KIND_INIT, KIND_HEADER, KIND_PAYLOAD, KIND_SYNC = "multifd_init", "multifd_header", "multifd_payload", "multifd_sync"
KIND_FLUSH = "multifd_flush"


def channel_file_name(k: int) -> str:
    """``channel-<k>.bin``: the name the capture recorder and ``trace import-qemu --channel`` use."""
    return f"channel-{k}.bin"


def zero_page_partition(zero: np.ndarray) -> tuple[np.ndarray, int]:
    """The order ``multifd_send_zero_page_detect`` leaves a packet's pages in, and its normal count.

    QEMU walks i up from the left and j down from the right; a zero page at i is swapped with j
    (j moves left, i looks again). Vectorised: normal pages left of the boundary k stay; each zero
    page left of k receives the next normal page pulled from the right end; the zero pages land at
    j = n-1, n-2, … in the order they are met; once i reaches k the remaining zero run is rotated by
    the same swaps. The tests compare it with the literal loop."""
    n = len(zero)
    nz = int(np.count_nonzero(zero))
    k = n - nz
    order = np.arange(n)
    if nz == 0:
        return order, k
    left_zero = np.flatnonzero(zero[:k])
    pulls = np.arange(n - 1, k - 1, -1)  # where j pulls from, in order
    pulled_normal = ~zero[pulls]
    t_end = 0
    if len(left_zero):
        order[left_zero] = pulls[pulled_normal]
        t_end = int(np.flatnonzero(pulled_normal)[-1]) + 1
        met = np.empty(t_end, np.int64)  # zero pages in the order the loop meets them
        met[0] = left_zero[0]
        c = np.cumsum(pulled_normal[: t_end - 1])
        met[1:] = np.where(pulled_normal[: t_end - 1], left_zero[np.minimum(c, len(left_zero) - 1)], pulls[: t_end - 1])
        order[pulls[:t_end]] = met
    j = n - 1 - t_end
    if j >= k:
        order[j] = k
        order[k:j] = np.arange(k + 1, j + 1)
    return order, k


@dataclass
class _ChannelState:
    writer: WireWriter
    compressor: ChannelCompressor
    stale: bytes  # 7.2: the channel's packet buffer as last sent
    packets: int = 0
    syncs: int = 0
    pages: int = 0
    zero_pages: int = 0


class MultifdEncoder(SlotEncoder):
    """The multifd slot for one migration: the packet queue, the channels and their streams."""

    def __init__(self, ctx: CodecContext) -> None:
        cfg = ctx.config
        if cfg.qemu_version not in ("7.2", "10.2"):
            raise ConfigError(f"codec 'multifd' models QEMU 7.2's and 10.2's channels; qemu-version="
                              f"{cfg.qemu_version} is not modelled")
        self.ps = ctx.page_size
        warm_up_zero()  # the zero-page kernel's JIT load belongs to set-up, not to a channel's CPU
        self.slots = packet_slots(self.ps)
        self.packet_len = packet_size(self.ps)
        self.modern = cfg.qemu_version == "10.2"
        self.layout = packet_layout(cfg.qemu_version)
        self.compression = cfg.param("multifd-compression")
        self.method = COMPRESSION_FLAGS[self.compression]
        level = {"zlib": cfg.param("multifd-zlib-level"), "zstd": cfg.param("multifd-zstd-level")}.get(self.compression, 0)
        #: 10.x with zero-page-detection=multifd: the channel finds zero pages
        self.detect_zero = self.modern and cfg.param("zero-page-detection") == "multifd"
        self.names = [b.name for b in ctx.blocks]
        n = cfg.param("multifd-channels")

        def writer(k: int) -> WireWriter:
            return ctx.channel(k) if ctx.channel is not None else WireWriter(NullSink())  # count only

        self.ch = [_ChannelState(writer(k), ChannelCompressor(self.compression, level, self.slots * self.ps),
                                 bytes(self.packet_len)) for k in range(n)]
        self.next_channel = 0
        self.packet_num = 0
        self.q_block = -1
        self.q_offsets: list[np.ndarray] = []
        self.q_pages: list[np.ndarray] = []
        self.q_n = 0
        self._counts: dict[str, int] = {}
        self._cpu_ns = 0

    # -- the chain ------------------------------------------------------------------------------
    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        if not len(idx):
            return
        seg.claim(Slot.MULTIFD, idx)  # no main-stream record
        if len(idx) == len(seg) or (idx[-1] - idx[0] == len(idx) - 1):
            sl = slice(int(idx[0]), int(idx[-1]) + 1)
            offs, pages = seg.offsets[sl], seg.pages[sl]
        else:
            offs, pages = seg.offsets[idx], seg.pages[idx]
        if not self.modern:
            self._add("normal", len(idx))  # ram_save_multifd_page counts at queue time (7.2)
        self._queue(seg.block_index, offs, pages)

    def _queue(self, bi: int, offs: np.ndarray, pages: np.ndarray) -> None:
        """multifd_queue_page for a run of pages of block ``bi``: a block change sends the queued
        packet, a full packet is sent."""
        if self.q_n and bi != self.q_block:
            self._send_queued()
        self.q_block = bi
        pos, n = 0, len(offs)
        while pos < n:
            take = min(self.slots - self.q_n, n - pos)
            self.q_offsets.append(offs[pos : pos + take])
            self.q_pages.append(pages[pos : pos + take])
            self.q_n += take
            pos += take
            if self.q_n == self.slots:
                self._send_queued()

    def _send_queued(self) -> None:
        """multifd_send_pages: hand the queued packet to the next channel (strict round robin)."""
        if not self.q_n:
            return
        offs = np.concatenate(self.q_offsets) if len(self.q_offsets) > 1 else self.q_offsets[0]
        pages = np.concatenate(self.q_pages) if len(self.q_pages) > 1 else self.q_pages[0]
        self.q_offsets, self.q_pages, self.q_n = [], [], 0
        k = self.next_channel
        self.next_channel = (k + 1) % len(self.ch)
        self._send_packet(k, self.names[self.q_block], offs, pages)

    def _send_packet(self, k: int, block: str, offs: np.ndarray, pages: np.ndarray) -> None:
        """The channel thread's work: zero detection (10.x), compression, header, write."""
        t0 = time.thread_time_ns()
        c = self.ch[k]
        num = self.packet_num
        self.packet_num += 1
        zero_offs: np.ndarray = offs[:0]
        if self.detect_zero:
            order, nn = zero_page_partition(zero_page_mask(np.ascontiguousarray(pages)))
            if nn < len(order):
                zero_offs = offs[order[nn:]]
                offs, pages = offs[order[:nn]], pages[order[:nn]]
        n = len(offs)
        payload: Any = c.compressor.packet(pages) if n else b""
        plen = payload.nbytes if isinstance(payload, np.ndarray) else len(payload)
        hdr = encode_packet(self.method, num, block, offs, self.ps, next_packet_size=plen, stale=c.stale,
                            zero_offsets=zero_offs, layout=self.layout)
        c.stale = hdr
        c.writer.put(hdr, KIND_HEADER)
        c.writer.put(payload, KIND_PAYLOAD)
        c.packets += 1
        c.pages += n
        c.zero_pages += len(zero_offs)
        if self.modern:
            self._add("normal", n)
            self._add("duplicate", len(zero_offs))
            sent = self.packet_len + plen
        else:
            sent = self.packet_len + n * self.ps  # 7.2 charges the pages uncompressed
        self._add("multifd_bytes", sent)
        self._add("transferred", sent)
        self._cpu_ns += time.thread_time_ns() - t0

    def _sync(self) -> list[ControlRecord]:
        """multifd_send_sync_main (7.2) / multifd_ram_flush_and_sync (8.1+)."""
        self._send_queued()
        for c in self.ch:
            num = self.packet_num
            self.packet_num += 1
            if self.modern:
                hdr = encode_packet(MULTIFD_FLAG_SYNC, num, "", (), self.ps, next_packet_size=0, layout=self.layout)
            else:  # the channel's buffer keeps next_packet_size, ramblock and offsets of its last packet
                hdr = encode_packet(MULTIFD_FLAG_SYNC, num, "", (), self.ps,
                                    next_packet_size=int.from_bytes(c.stale[20:24], "big"), stale=c.stale)
            c.stale = hdr
            c.writer.put(hdr, KIND_SYNC)
            c.syncs += 1
            self._add("multifd_bytes", self.packet_len)
            self._add("transferred", self.packet_len)
        if self.modern:
            return [ControlRecord(KIND_FLUSH, RAM_SAVE_FLAG_MULTIFD_FLUSH.to_bytes(8, "big"))]
        return []

    def setup(self) -> list[ControlRecord]:
        for k, c in enumerate(self.ch):
            init = encode_initial_packet(k)  # uuid 0: QEMU sends qemu_uuid, all zero without -uuid
            c.writer.put(init, KIND_INIT)
            if self.modern:  # 10.x counts the handshake in multifd-bytes
                self._add("multifd_bytes", len(init))
                self._add("transferred", len(init))
        return self._sync()

    def before_eos(self, stage: Stage) -> list[ControlRecord]:
        return self._sync()

    # -- counters -------------------------------------------------------------------------------
    def _add(self, key: str, n: int) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    def take_ram_counters(self) -> dict[str, int]:
        out, self._counts = self._counts, {}
        return out

    def take_worker_cpu_ns(self) -> int:
        return 0  # packets are built on the calling thread; its time is charged already

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        chans = []
        for k, c in enumerate(self.ch):
            b = c.writer.bytes_by_kind
            chans.append({"channel": k, "wire-bytes": sum(b.values()), "packets": c.packets, "sync-packets": c.syncs,
                          "pages": c.pages, **({"zero-pages": c.zero_pages} if self.modern else {})})
        group: dict[str, Any] = {
            "channels": len(self.ch),
            "compression": self.compression,
            "packets": sum(c.packets for c in self.ch),
            "sync-packets": sum(c.syncs for c in self.ch),
            "pages": sum(c.pages for c in self.ch),
            "wire-bytes": sum(x["wire-bytes"] for x in chans),
            "per-channel": chans,
        }
        if self.modern:
            group["zero-pages"] = sum(c.zero_pages for c in self.ch)
        if self.compression == "zstd":
            group["zstd-library"] = zstd_library()
        return {"multifd": group}


class MultifdCodec(Codec):
    name = "multifd"
    slots = (Slot.MULTIFD,)
    qemu_format = True
    description = "multifd channels: 128-page packets, round robin, none/zlib/zstd (ram_save_multifd_page)"
    version = __version__

    def parameters_read(self, config: Any) -> tuple[str, ...]:
        """The channel count and compression; a compression level only for the compression in use;
        zero-page-detection in the QEMU that has it."""
        comp = config.param("multifd-compression")
        level = {"zlib": ("multifd-zlib-level",), "zstd": ("multifd-zstd-level",)}.get(comp, ())
        zpd = ("zero-page-detection",) if config.qemu_version == "10.2" else ()
        return ("multifd-channels", "multifd-compression", *level, *zpd)

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return MultifdEncoder(ctx)


# --------------------------------------------------------------------------------------------------
# the receiving side
# --------------------------------------------------------------------------------------------------
@dataclass
class _ChannelIn:
    k: int
    source: str
    inflater: ChannelInflater | None = None
    buf: bytearray = field(default_factory=bytearray)
    base: int = 0          # stream offset of buf[0]
    started: bool = False  # initial packet read
    packets: int = 0
    syncs: int = 0
    last_num: int = -1


class MultifdReceiver:
    """The destination's multifd channels (``multifd_recv_thread``) for the receiver's memory.

    Feed each channel's bytes with :meth:`feed`; call :meth:`sync` where the main stream reaches a
    sync point (7.2: every EOS; 8.1+: every MULTIFD_FLUSH): it applies every channel's packets up to
    and including its next SYNC packet, as the destination's channel threads have done when
    ``multifd_recv_sync_main`` returns. ``memory(block_name)`` gives a block as (pages, page size);
    ``on_pages(block_name, page_indexes)`` reports what was written. :meth:`finish` checks that no
    channel has bytes left. Errors are WireError/DecodeError naming ``channel-<k>.bin`` and offset."""

    def __init__(self, qemu_version: str, channels: int, compression: str, page_size: int,
                 memory: Callable[[str], np.ndarray | None],
                 on_pages: Callable[[str, np.ndarray], None] | None = None) -> None:
        self.layout = packet_layout(qemu_version)
        self.modern = qemu_version == "10.2"
        self.compression = compression
        self.ps = page_size
        self.memory = memory
        self.on_pages = on_pages
        self.ch = [_ChannelIn(k, channel_file_name(k)) for k in range(channels)]
        for c in self.ch:
            c.inflater = ChannelInflater(compression, c.source)
        self.syncs = 0
        self.cpu_ns = 0
        self.pages = 0
        self.zero_pages = 0
        self.sync_point_kind = "MULTIFD_FLUSH" if self.modern else "EOS"

    def feed(self, k: int, data: bytes | bytearray | memoryview) -> None:
        self.ch[k].buf += data

    def sync(self, at: int | None = None) -> None:
        """The main stream's sync point (EOS in 7.2, MULTIFD_FLUSH in 8.1+) at stream offset ``at``."""
        t0 = time.thread_time_ns()
        try:
            for c in self.ch:
                self._until_sync(c, at)
            self.syncs += 1
        finally:
            self.cpu_ns += time.thread_time_ns() - t0

    def finish(self) -> None:
        for c in self.ch:
            if c.buf:
                raise WireError(f"{len(c.buf)} bytes after the channel's last SYNC packet (SYNC {c.syncs}, "
                                f"the main stream's last sync point): no sync point is left to apply them",
                                c.base, c.source)

    def _until_sync(self, c: _ChannelIn, at: int | None) -> None:
        r = StreamReader(bytes(c.buf), source=c.source, base=c.base)
        if not c.started:
            init = read_initial_packet(r)
            if init.channel_id != c.k:
                raise r.error(f"initial packet names channel {init.channel_id}, expected {c.k}", 24)
            c.started = True
        while True:
            if r.at_end():
                where = f" at offset {at}" if at is not None else ""
                raise r.error(f"the main stream's {self.sync_point_kind} #{self.syncs}{where} waits for this "
                              f"channel's SYNC #{self.syncs}, but the channel ends after {c.syncs} SYNC packets")
            p = read_packet_header(r, self.ps, c.packets, self.layout)
            c.packets += 1
            if p.packet_num <= c.last_num:
                raise r.error(f"packet_num {p.packet_num} does not increase (the channel's previous packet had "
                              f"{c.last_num})", p.at + 24)
            c.last_num = p.packet_num
            if p.normal_pages or p.zero_pages:
                self._apply(r, c, p)
            if p.sync:
                c.syncs += 1
                break
        del c.buf[: r.pos]
        c.base += r.pos

    def _apply(self, r: StreamReader, c: _ChannelIn, p: Any) -> None:
        if p.compression != self.compression:
            raise r.error(f"packet compressed with {p.compression}, the migration uses multifd-compression "
                          f"{self.compression}", p.at + 8)
        mem = self.memory(p.ramblock)
        if mem is None:
            raise r.error(f"packet names unknown RAM block {p.ramblock!r}", p.at + RAMBLOCK_AT)
        ps = self.ps
        offs = np.concatenate([p.offsets, p.zero_offsets]) if p.zero_pages else p.offsets
        limit = np.uint64(mem.nbytes - ps)
        bad = np.flatnonzero((offs > limit) | (offs % np.uint64(ps) != 0))
        if len(bad):
            i = int(bad[0])
            o = int(offs[i])
            why = "not page aligned" if o % ps else f"outside block {p.ramblock!r} of {mem.nbytes:#x} bytes"
            raise r.error(f"page offset {o:#x} (page {i} of packet {c.packets - 1}) is {why}",
                          p.at + PACKET_HEADER_SIZE + 8 * i)
        idx = (offs // np.uint64(ps)).astype(np.int64)
        n = p.normal_pages
        if n:
            data = r.view_np()[p.payload_at : p.payload_at + p.payload_len]
            assert c.inflater is not None
            pages = c.inflater.packet(data, n, ps, f"packet {c.packets - 1} (packet_num {p.packet_num})",
                                      r.base + p.payload_at)
            mem[idx[:n]] = pages
        if p.zero_pages:
            mem[idx[n:]] = 0  # multifd_recv_zero_page_process
        self.pages += n
        self.zero_pages += p.zero_pages
        if self.on_pages is not None:
            self.on_pages(p.ramblock, idx)


from ..hookspecs import hookimpl  # noqa: E402  (plugin registration, after the definitions)


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(MultifdCodec())
