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
"""

from __future__ import annotations

import os
import shlex
import shutil
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import PageCodecError, TraceError, WireError
from ...wire.flags import RAM_SAVE_FLAG_CONTINUE, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_ZERO
from ...wire.multifd import MULTIFD_FLAG_SYNC
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
    imported with :func:`~pagecodec.sources.qemu_stream.importer.import_qemu_stream` (rounds = passes). With
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
