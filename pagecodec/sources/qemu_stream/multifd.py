"""Importing a multifd capture (QEMU 7.2): the main stream and the channels merged into the single stream.

**Syncs**: ``multifd_send_sync_main`` runs in ``ram_save_setup``, at the end of every
``ram_save_iterate`` and in ``ram_save_complete``, each time right before the section's EOS: it
flushes the partly filled packet, then queues one SYNC packet on *every* channel. The destination's
``ram_load`` waits at each EOS until every channel has delivered its SYNC packet. So the i-th SYNC
packet of each channel closes the same window as the i-th EOS of the main stream: the channel pages
between SYNC i-1 and SYNC i belong to RAM section i. (QEMU 8.1+ syncs once per pass with a
MULTIFD_FLUSH record instead; such streams are refused.)

**Rounds.** The import rebuilds the single stream QEMU would have written without multifd — same
sections, every page record where QEMU's page search sent it — and imports that with
:func:`pagecodec.sources.qemu_stream.importer.import_qemu_stream`, so a round is one pass over RAM exactly as for
``exec:`` captures (a new round starts where the page order wraps or a page repeats). The order
inside a section is recovered from QEMU's search rule, not from arrival times:

* Within one section the search sends a page once: the dirty bitmap is only synced between sections
  (``ram_save_pending``, ``ram_save_complete``'s start), never during one, and the search clears each
  bit it sends. So a section's pages — ZERO records of the main stream plus channel pages of the
  window — are a set, except for the pages 7.2 queues twice (below); any other page a section carries
  twice is an error naming both copies.
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

**Pages queued twice.** 7.2's ``multifd_queue_page`` adds the page to the packet being filled; when
that fills the packet (all 128 offset slots), ``multifd_send_pages`` hands the packet to a channel
and takes that channel's empty structure in exchange, and then the function tests ``pages->block !=
block`` — on the packet it has just given away. If the channel thread has already taken that packet
(it sets ``block`` to NULL once the header is filled), the test is true and the page is queued
*again*, as the first page of the next packet. Real captures show it often (10–90 % of the full
packets of the busy tiny guest on a 2-core host, see ``tests/test_multifd_import.py``; 149 times in a
256 MiB Linux guest). The merge accepts exactly this pattern: the last page of a full, non-SYNC data packet is the
first page of the data packet that follows it in packet_num order in the same window (that one may be
a SYNC packet with pages from the sync race: the sync flushes the requeued page within the section).
Anything else stays an error, and so does a page sent both as a ZERO record and in a channel packet:
7.2 never does that (zero pages are detected before a page reaches multifd), and on the destination the
main thread's ``ram_handle_compressed`` (clear the page unless it is zero) would race with the
receive thread writing it.

The rebuilt stream carries such a page once, at its place in the search order, with the **later
packet's copy**. On the destination each channel's receive thread (``multifd_recv_thread``) reads its
packets and writes their pages straight into guest RAM (``readv`` into the host pages, or inflating
into them); channels are ordered only by the SYNC packets at each EOS, so of two copies in one
section the one written last stays. Packet order is the order of the two reads on the source, which
a destination handling packets in the order they were sent follows: the page is queued again only
after the first packet's thread has taken it — with zlib/zstd its pages are compressed by then;
without compression its ``writev`` starts right then — and the next packet goes out only after up to
127 more pages or the section's sync flush. The copies differ only if the guest wrote the page after
this pass cleared its dirty bit; the dirty log has that write, so a later section sends the page
again (the END section at the latest, with the guest stopped) and the choice does not reach the final
image. The report counts the duplicates (``duplicate_pages``), those whose copies differ
(``duplicate_pages_differing``) and, of these, the ones no later section sends again
(``duplicate_pages_not_resent``; e.g. a write TCG failed to log: there the destination holds
either copy, depending on thread timing, the trace the later one). A page once per section also keeps
the importer's rounds right: it starts a new round at a page repeated within the current one.

Limits: the destination's RAM is determined by the files (pages are unique per section, or queued
twice and then equal or resent later, and sections are applied in order), so the trace's images are
exact; only *where* a pass boundary falls inside a section can be off, and only if the section has no
ZERO record and its channel pages contradict the resume rule (counted, never silent). XBZRLE and
COMPRESS_PAGE records (not used with multifd in 7.2), postcopy, RDMA and 8.1+ MULTIFD_FLUSH streams
are refused.
"""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import PageCodecError, TraceError, WireError
from ...wire.flags import RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_ZERO
from ...wire.multifd import MULTIFD_FLAG_SYNC, PACKET_HEADER_SIZE, packet_slots
from .channel import ChannelFile, _PageSource, read_channel
from .importer import import_qemu_stream
from .main_stream import MainStream, _RamSection, read_main_stream

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
        nums = np.array(sorted(seen), np.uint64)  # the numbers present (not an array as long as the largest)
        top = int(nums[-1])
        unused = top + 1 - len(nums)
        raced = sum(c.sync_with_pages for c in chans)
        if unused > raced:
            gaps = _missing_numbers(nums, 8)
            raise WireError(f"{unused} packet numbers below {top} never occur (e.g. {gaps}), but only {raced} "
                            f"SYNC packets carry pages (the sync race that skips one number): a channel file is "
                            f"missing or truncated", None, main.path)


def _missing_numbers(nums: np.ndarray, k: int) -> list[int]:
    """The first ``k`` numbers from 0 up that the ascending ``nums`` lack, in time and memory
    proportional to ``len(nums)`` however large the numbers are."""
    out: list[int] = []
    prev = -1
    for v in nums.tolist():
        if v > prev + 1:
            out.extend(range(prev + 1, min(v, prev + 1 + k - len(out))))
            if len(out) >= k:
                break
        prev = v
    return out[:k]


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
    duplicates: int = 0              # pages queued twice (multifd_queue_page's race), earlier copy dropped
    duplicates_differing: int = 0    # ... whose two copies differ
    duplicates_not_resent: int = 0   # ... differing, and no later section sends the page again


@dataclass
class _WindowPages:
    """The channel pages of one sync window (= one RAM section), data packets in packet_num order."""

    pk: list[tuple[int, int]]  # (channel, packet index) of each data packet, in packet_num order
    g: np.ndarray              # global page index of every page
    data: np.ndarray           # (pages, page size): their contents
    pkt: np.ndarray            # index into ``pk`` of every page
    slot_at: np.ndarray        # file offset of every page's offset slot (for errors)
    sync: np.ndarray           # per page: its packet carries SYNC (its number is the sync's, not its queue position)


def _window_packets(chans: list[ChannelFile], sections: int) -> list[list[tuple[int, int]]]:
    """The data packets of each sync window, in packet_num order (the order the migration thread queued them)."""
    per: list[list[tuple[int, int]]] = [[] for _ in range(sections)]
    for ci, c in enumerate(chans):
        for k in range(c.packets):
            if c.normal[k] and c.window[k] < sections:
                per[c.window[k]].append((ci, k))
    for pk in per:
        pk.sort(key=lambda x: chans[x[0]].num[x[1]])
    return per


def _window_pages(pk: list[tuple[int, int]], chans: list[ChannelFile], sources: list[_PageSource],
                  page_size: int) -> _WindowPages:
    """Inflate a window's packets (in channel order, as each channel's compressed stream requires) and
    lay their pages out in packet_num order."""
    contents = {ck: sources[ck[0]].pages(ck[1]) for ck in sorted(pk)}
    g: list[np.ndarray] = []
    pkt: list[np.ndarray] = []
    slot: list[np.ndarray] = []
    sync: list[np.ndarray] = []
    for j, (ci, k) in enumerate(pk):
        c = chans[ci]
        n = c.normal[k]
        g.append(c.pages[c.first[k] : c.first[k] + n])
        pkt.append(np.full(n, j, np.int64))
        slot.append(c.at[k] + PACKET_HEADER_SIZE + 8 * np.arange(n, dtype=np.int64))
        sync.append(np.full(n, bool(c.flags[k] & MULTIFD_FLAG_SYNC)))
    if not pk:
        e = np.empty(0, np.int64)
        return _WindowPages(pk, e, np.empty((0, page_size), np.uint8), e, e, np.empty(0, bool))
    return _WindowPages(pk, np.concatenate(g), np.concatenate([contents[ck] for ck in pk]), np.concatenate(pkt),
                        np.concatenate(slot), np.concatenate(sync))


def _requeued(wp: _WindowPages, chans: list[ChannelFile], slots: int) -> tuple[np.ndarray, np.ndarray]:
    """The pages QEMU 7.2 queued twice: (index of the earlier copy in ``wp``, whether the two copies differ).

    ``multifd_queue_page`` hands a packet to a channel as soon as the page that fills it is queued, then
    asks whether that page still has to be queued (``pages->block != block``) — on the structure it has
    just given away. If the channel thread has already taken the packet (it sets ``block`` to NULL), the
    answer is yes, and the page is queued again as the first page of the next packet. So the only
    duplicate QEMU sends is: the last page of a full packet (all offset slots used, not a SYNC packet:
    a packet still waiting for its thread at the sync was not taken yet) is the first page of the data
    packet that follows it in packet_num order, in the same window (the sync flushes it)."""
    if len(wp.pk) < 2:
        return np.empty(0, np.int64), np.empty(0, bool)
    full = np.array([chans[ci].normal[k] == slots and not chans[ci].flags[k] & MULTIFD_FLAG_SYNC
                     for ci, k in wp.pk])
    last = np.flatnonzero(np.diff(wp.pkt))  # last page of each packet but the window's last
    hit = last[(wp.g[last] == wp.g[last + 1]) & full[wp.pkt[last]]]
    differ = (wp.data[hit] != wp.data[hit + 1]).any(axis=1)
    return hit, differ


def _origin(main: MainStream, sec: _RamSection, m_idx: np.ndarray, chans: list[ChannelFile],
            wp: _WindowPages, i: int) -> tuple[str, int, str]:
    """(description, file offset, file) of page ``i`` of a section (main-stream records first, then
    channel pages by their index in ``wp``)."""
    if i < len(m_idx):
        mi = int(m_idx[i])
        at = int(sec.rec_at[mi])
        return f"{'ZERO' if sec.kind[mi] == 0 else 'PAGE'} record at offset {at} of {main.path}", at, main.path
    j = i - len(m_idx)
    ci, k = wp.pk[int(wp.pkt[j])]
    c = chans[ci]
    at = int(wp.slot_at[j])
    return f"packet {k} (packet_num {c.num[k]}, offset slot at {at}) of {c.path}", at, c.path


def _refuse_duplicates(main: MainStream, sec: _RamSection, m_idx: np.ndarray, chans: list[ChannelFile],
                       wp: _WindowPages, allg: np.ndarray, idx: np.ndarray) -> None:
    """Raise on a page sent twice in the section other than by the requeue race (already dropped).
    ``allg[i]`` is the page of merge item i, ``idx[i]`` its index for :func:`_origin`."""
    order = np.argsort(allg, kind="stable")
    sg = allg[order]
    dup = np.flatnonzero(sg[1:] == sg[:-1])
    if not len(dup):
        return
    i = int(dup[0])
    a, b = (_origin(main, sec, m_idx, chans, wp, int(idx[order[x]])) for x in (i, i + 1))
    if a[2] == main.path and b[2] != main.path:
        why = ("a ZERO record and a channel page of one page race on QEMU's destination (main thread and "
               "receive thread), and QEMU 7.2 never sends both: it detects zero pages before queueing")
    else:
        why = ("within one section QEMU 7.2 sends a page once, except the last page of a full packet queued "
               "again as the first page of the next packet (multifd_queue_page's race), which this is not")
    raise WireError(f"RAM section {sec.index}: {main.layout.where(int(sg[i]))} is sent twice ({a[0]} and "
                    f"{b[0]}); {why}", b[1], b[2])


def _rotation(main: MainStream, sec: _RamSection, Mg: np.ndarray, Cchk: np.ndarray, resume: int,
              st: _MergeStats) -> int:
    """The page where the section's sweep starts (module docstring), counting restarts and conflicts."""
    total = main.layout.total
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
                        f"more than once, which one sweep of QEMU's page search cannot do", sec.start, main.path)
    if r0 != resume % total:
        st.restarts += 1
    return r0


class _RecordWriter:
    """Writes page records of the single stream, with CONTINUE where the block does not change."""

    def __init__(self, f: Any, main: MainStream) -> None:
        self.w = f.write
        self.lay = main.layout
        self.mmv = memoryview(main.reader.view_np())
        self.last_block = -1
        self.be64 = struct.Struct(">Q").pack

    def copy(self, a: int, b: int) -> None:
        """Main stream bytes a..b verbatim."""
        if b > a:
            self.w(self.mmv[a:b])

    def record(self, block: int, offset: int, zero: bool, payload: Any) -> None:
        flag = RAM_SAVE_FLAG_ZERO if zero else RAM_SAVE_FLAG_PAGE
        if block == self.last_block:
            self.w(self.be64(offset | flag | RAM_SAVE_FLAG_CONTINUE))
        else:
            name = self.lay.raw_names[block]
            self.w(self.be64(offset | flag) + bytes((len(name),)) + name)
            self.last_block = block
        self.w(payload)


def _merge(main: MainStream, chans: list[ChannelFile], out: Path, *, only_zero: bool = False) -> _MergeStats:
    """Write the single stream: main stream bytes verbatim except the RAM sections' page records, which are
    rewritten in QEMU's search order (see the module docstring), CONTINUE flags recomputed. A page QEMU
    queued twice in a section (:func:`_requeued`) is written once, with the later packet's copy."""
    lay = main.layout
    sources = [_PageSource(c, lay.page_size) for c in chans]
    windows = _window_packets(chans, len(main.sections))
    st = _MergeStats(sections=len(main.sections))
    last_sent = np.full(lay.total, -1, np.int64)  # per page: the last section that sends it
    differing: list[tuple[np.ndarray, int]] = []  # (pages whose two copies differ, section)
    resume = 0
    with open(out, "wb") as f:
        rw = _RecordWriter(f, main)
        for piece in main.pieces:
            if isinstance(piece, tuple):
                rw.copy(*piece)
                continue
            sec = piece
            rw.copy(sec.start, sec.body)
            if sec.mem_size is not None:
                rw.copy(*sec.mem_size)
            wp = _window_pages(windows[sec.index], chans, sources, lay.page_size)
            st.packets += len(wp.pk)
            hit, differ = _requeued(wp, chans, packet_slots(lay.page_size))
            st.duplicates += len(hit)
            st.duplicates_differing += int(differ.sum())
            differing.append((wp.g[hit[differ]], sec.index))
            keep = np.ones(len(wp.g), bool)
            keep[hit] = False
            cidx = np.flatnonzero(keep)  # the channel pages that go into the stream
            m_idx = np.flatnonzero(sec.kind == 0) if only_zero else np.arange(len(sec.g))
            Mg = sec.g[m_idx]
            nm = len(Mg)
            allg = np.concatenate([Mg, wp.g[cidx]])
            if len(allg) == 0:
                rw.copy(sec.eos, sec.end)
                continue
            _refuse_duplicates(main, sec, m_idx, chans, wp, allg, np.concatenate([np.arange(nm), nm + cidx]))
            r0 = _rotation(main, sec, Mg, wp.g[cidx[~wp.sync[cidx]]], resume, st)
            order = np.argsort(_key(allg, r0, lay.total), kind="stable")
            resume = int(allg[order[-1]]) + 1
            last_sent[allg] = sec.index
            _write_section(rw, main, sec, m_idx, wp.data, cidx, allg, order, st)
            rw.copy(sec.eos, sec.end)
    st.duplicates_not_resent = sum(int((last_sent[g] == s).sum()) for g, s in differing)
    return st


def _write_section(rw: _RecordWriter, main: MainStream, sec: _RamSection, m_idx: np.ndarray, cdata: np.ndarray,
                   cidx: np.ndarray, allg: np.ndarray, order: np.ndarray, st: _MergeStats) -> None:
    """The section's page records in ``order``: items below len(m_idx) are main-stream records (their
    payload copied), the others channel pages ``cdata[cidx[i - len(m_idx)]]``."""
    lay = main.layout
    ps = lay.page_size
    nm = len(m_idx)
    blocks = lay.block_of(allg[order])
    offs = (allg[order] - lay.starts[blocks]) * ps
    for i, bi, off in zip(order.tolist(), blocks.tolist(), offs.tolist()):
        if i >= nm:
            rw.record(bi, off, False, cdata[int(cidx[i - nm])].data)
            st.channel_pages += 1
            continue
        mi = int(m_idx[i])
        if sec.kind[mi] == 0:
            rw.record(bi, off, True, b"\0")
            st.zero += 1
        else:
            pa = int(sec.payload_at[mi])
            rw.record(bi, off, False, rw.mmv[pa : pa + ps])
            st.main_pages += 1


# --- import -----------------------------------------------------------------------------------------
@dataclass
class MultifdImportReport:
    """What :func:`import_multifd` found; ``imported`` is the report of the rebuilt single stream's import.

    ``duplicate_pages``: pages a section carries twice because of 7.2's requeue race (module docstring),
    written once, with the later packet's copy; ``duplicate_pages_differing`` of them had two different
    contents (the guest wrote the page between the two reads); ``duplicate_pages_not_resent`` of those
    no later section sends again, so QEMU's destination keeps whichever copy its receive threads wrote
    last — the trace has the later packet's (0 when the dirty log caught the write, as it should)."""

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
    duplicate_pages: int = 0
    duplicate_pages_differing: int = 0
    duplicate_pages_not_resent: int = 0

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
            "channel_pages": self.channel_pages, "duplicate_pages": self.duplicate_pages,
            "duplicate_pages_differing": self.duplicate_pages_differing,
            "duplicate_pages_not_resent": self.duplicate_pages_not_resent, "command": self.command,
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
    progress: Callable[..., None] | None = None,
    max_ram: int | None = None,
) -> MultifdImportReport:
    """Import a multifd capture (the main stream and every channel file, in any order) as a trace.

    The channel pages are merged into the main stream's RAM sections in QEMU's send order (module
    docstring), giving the single stream QEMU would have written without multifd; that stream is
    imported with :func:`~pagecodec.sources.qemu_stream.importer.import_qemu_stream` (rounds = passes). With
    ``single_stream`` the rebuilt stream is kept there (a QEVM file a QEMU destination without multifd
    loads). Raises WireError/DecodeError naming the file and byte offset, or TraceError; nothing is
    written on error. ``progress(n, total=None)`` counts the merged stream's bytes as they are
    imported (its first call gives their total, known once the channels are merged). ``max_ram``: the
    most RAM the main stream's MEM_SIZE list may claim (default: what the machine holds)."""
    trace = Path(trace)
    if command is None:
        command = multifd_command(main, channels, trace, require_vmdesc)
    if trace.exists() and trace.is_dir():
        raise TraceError(f"{trace}: is a directory")
    ms = read_main_stream(main, require_vmdesc, max_ram)
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
        try:
            if progress is not None:
                progress(0, total=merged.stat().st_size)
            rep = import_qemu_stream(merged, trace, command=command, require_vmdesc=require_vmdesc, progress=progress,
                                     max_ram=max_ram)
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
        command=command, duplicate_pages=st.duplicates, duplicate_pages_differing=st.duplicates_differing,
        duplicate_pages_not_resent=st.duplicates_not_resent,
    )
