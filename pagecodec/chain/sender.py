"""The sending side: QEMU's ram_save_setup / ram_save_iterate / ram_save_complete over a trace.

Each round of the trace is one pass over the dirty pages, preceded by a dirty-bitmap sync. Rounds
0 … R-2 are sent as iteration sections (SECTION_PART, guest running); the last round is sent as
``ram_save_complete`` (SECTION_END, last stage: guest stopped). Every section's RAM data ends with EOS.
Within a round, pages go through the chain's slots in QEMU's order (control → compress → zero →
multifd → delta → raw); the slots work on segments (runs of pages of one block) as numpy batches.

Modelling choices of ``replay`` (written down because QEMU decides them by timing): one section per
round (QEMU splits a pass into several sections by rate limit and a 50 ms budget; that changes only
section framing bytes), and each pass starts at the first block (QEMU resumes where its search
stopped). ``simulate`` decides them as QEMU's migration thread does and drives the same chain a
section at a time (:meth:`Sender.begin_section`, :meth:`Sender.save_pages`, :meth:`Sender.end_pass`
where the page search wraps, :meth:`Sender.end_section`), with the syncs where they fall.

Codecs that use connections besides the main stream (multifd channels) get a writer per channel from
``CodecContext.channel(k)``; ``channel_sinks(k)`` says where channel k's bytes go (default: counted
only). Their bytes are reported per channel and added to ``wire``.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..codecs.base import SLOT_ORDER, CodecContext, ControlRecord, Emission, Segment, Slot, SlotEncoder, Stage
from ..errors import ConfigError, PageCodecError, PluginError
from .metrics import MigrationStats, RoundStats
from .record_check import RecordCheck
from ..plugins import PluginManager
from ..trace.format import PageBatch, TraceMeta
from ..wire import qevm
from ..wire.extension import RAM_SAVE_FLAG_EXTENSION
from ..wire.flags import RAM_SAVE_FLAG_MULTIFD_FLUSH, RAM_SECTION_ID_DEFAULT, RAM_SECTION_IDSTR, RAM_SECTION_VERSION, SectionType, min_page_size
from ..wire.records import Scratch, assemble_segment, eos_record, mem_size_record
from ..wire.writer import NullSink, Sink, WireWriter
from .config import MigrationConfig
from .ramstate import RAMState, block_addresses

__all__ = ["Sender", "Section", "DEFAULT_MACHINE", "build_encoders", "block_runs", "tap_progress"]

DEFAULT_MACHINE = "pc-i440fx-7.2"

#: Pages per segment: the chain's batch. 512 pages (2 MiB) keeps the assembled wire bytes in cache and
#: the reusable output buffer small (a new Sender touches it once), while per-segment Python overhead
#: stays a few percent of the copy.
SEGMENT_PAGES = 512

#: Record kinds that count as QEMU's ``normal`` / ``duplicate`` pages.
_NORMAL_KINDS = ("page",)
_DUPLICATE_KINDS = ("zero",)


def build_encoders(
    config: MigrationConfig, plugins: PluginManager, ctx: CodecContext
) -> list[tuple[Slot, str, SlotEncoder]]:
    """One encoder per active slot, in chain order; ConfigError-style PluginError if a slot is unfilled."""
    out = []
    for slot, codec_name in config.slot_codecs().items():
        if codec_name not in plugins.codecs:
            known = ", ".join(sorted(plugins.codecs)) or "none"
            raise PluginError(
                f"the {slot.value!r} slot needs codec {codec_name!r}, which no installed plugin provides "
                f"(config {config.label!r}; installed codecs: {known}){plugins.broken_hint()}"
            )
        codec = plugins.codecs[codec_name]
        if slot not in codec.slots:
            raise PluginError(
                f"codec {codec_name!r} (plugin {plugins.plugin_of(codec_name)!r}) cannot fill the {slot.value!r} slot; "
                f"it fills {', '.join(s.value for s in codec.slots)}"
            )
        try:
            enc = codec.encoder(slot, ctx)
        except PageCodecError:
            raise
        except Exception as e:
            raise PluginError(f"codec {codec_name!r} (plugin {plugins.plugin_of(codec_name)!r}) failed to start: "
                              f"{type(e).__name__}: {e}") from e
        if plugins.tracer is not None:  # PAGECODEC_TRACE_PLUGINS: every call into it logged
            enc = plugins.tracer.encoder(enc, codec_name, plugins.plugin_of(codec_name), slot)
        out.append((slot, codec_name, enc))
    return out


@dataclass
class Section:
    """One section being sent (:meth:`Sender.begin_section` … :meth:`Sender.end_section`): its
    counts, the chain's stage, the channels' bytes at its start, pages the channels took so far."""

    rs: RoundStats
    stage: Stage
    chan0: Counter[str]
    by_channels: int = 0


class Sender:
    """Turns a trace's rounds into a QEVM stream through the decision chain."""

    def __init__(
        self,
        meta: TraceMeta,
        config: MigrationConfig,
        plugins: PluginManager,
        sink: Sink | None = None,
        *,
        machine: str = DEFAULT_MACHINE,
        section_id: int = RAM_SECTION_ID_DEFAULT,
        channel_sinks: Callable[[int], Sink] | None = None,
    ) -> None:
        self.meta = meta
        self.config = config
        self.plugins = plugins
        qevm.machine_name(machine)  # ConfigError for a name the configuration section cannot carry
        self.writer = WireWriter(sink)
        self.machine = machine
        self.section_id = section_id
        self.page_size = meta.page_size
        self.ram = RAMState()
        self.block_addrs = block_addresses([b.used_length for b in meta.blocks], meta.page_size)
        self.channel_sinks = channel_sinks
        self.channels: dict[int, WireWriter] = {}
        self.ctx = CodecContext(config, meta.page_size, meta.blocks, self.block_addrs,
                                channel=_channel_opener(self.channels, channel_sinks))
        self.encoders = build_encoders(config, plugins, self.ctx)
        check_page_size(meta.page_size, [n for _s, n, _e in self.encoders if not plugins.codecs[n].qemu_format])
        #: ``on_claims(block, offsets, claimed_by)`` after each segment: which slot took which page
        #: (``verify`` keeps the last one per page, to name the codec that sent a page that arrived wrong).
        self.on_claims: Callable[[int, np.ndarray, np.ndarray], None] | None = None
        #: ``on_segment()`` after each segment has gone through the chain and its records are written
        #: (``bench`` marks its CPU clocks there: :mod:`pagecodec.harness.pieces`).
        self.on_segment: Callable[[], None] | None = None
        self.check = RecordCheck(meta.page_size, [b.name for b in meta.blocks], plugins.codec, plugins.plugin_of)
        self.stats = MigrationStats(page_size=meta.page_size, total_ram=meta.ram_bytes)
        self._idstr = [b.name for b in meta.blocks]
        self._wall0: float | None = None
        self._check_wall_ns = 0  # the record check's wall time: not the migration's (see _checked)
        self._scratch = Scratch()

    def channel(self, k: int) -> WireWriter:
        """Channel k's writer (multifd), made on first use with ``channel_sinks(k)`` (or counting only)."""
        assert self.ctx.channel is not None
        return self.ctx.channel(k)

    def wire_bytes(self) -> int:
        """Bytes written so far: the main stream and every channel."""
        return sum(self.writer.bytes_by_kind.values()) + sum(self._channel_bytes().values())

    def _channel_bytes(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for w in self.channels.values():
            total.update(w.bytes_by_kind)
        return total

    # -- the three phases -----------------------------------------------------------------------
    def save_setup(self) -> None:
        """Header, configuration, and the START section: MEM_SIZE block list + EOS (ram_save_setup)."""
        self._wall0 = time.perf_counter()
        w = self.writer
        with self.stats.cpu.stage("wire"):
            qevm.write_file_header(w, self.machine)
            qevm.write_section_header(
                w, SectionType.SECTION_START, self.section_id, RAM_SECTION_IDSTR, 0, RAM_SECTION_VERSION
            )
            w.put(mem_size_record([(b.name, b.used_length) for b in self.meta.blocks]), "mem_size")
        for slot, name, enc in self.encoders:
            recs = self._call(slot, name, enc, None, None, lambda e: e.setup())
            self._write_control(recs, None, None)
        self._take_counters(None)
        with self.stats.cpu.stage("wire"):
            w.put(eos_record(), "eos")
            qevm.write_section_footer(w, self.section_id)

    def save_round(self, round_no: int, batches: Iterable[PageBatch], last_stage: bool) -> RoundStats:
        """One pass: sync, every dirty page through the chain, EOS. ``last_stage``: ram_save_complete."""
        self.ram.migration_bitmap_sync()
        sec = self.begin_section(round_no, last_stage)
        self.save_pages(sec, batches)
        self.end_pass(sec)
        return self.end_section(sec)

    # -- a section at a time (``simulate``: QEMU's migration thread decides when each part happens) ----
    def stage_of(self, round_no: int, last_stage: bool) -> Stage:
        """The chain's view of the migration now: round ``round_no`` (a pass over RAM: the page search
        wraps between rounds), the current sync count and bulk flag."""
        ram = self.ram
        return Stage(round_no, ram.dirty_sync_count, ram.bulk_stage, last_stage)

    def begin_section(self, round_no: int, last_stage: bool) -> Section:
        """A section's header (SECTION_PART for ``ram_save_iterate``, SECTION_END for
        ``ram_save_complete``); the returned :class:`Section` collects what the section sends."""
        stage = self.stage_of(round_no, last_stage)
        rs = RoundStats(round_no, "complete" if last_stage else ("bulk" if stage.bulk_stage else "iterate"))
        with self.stats.cpu.stage("wire"):
            qevm.write_section_header(self.writer, SectionType.SECTION_END if last_stage else SectionType.SECTION_PART,
                                      self.section_id)
        return Section(rs, stage, self._channel_bytes())

    def save_pages(self, sec: Section, batches: Iterable[PageBatch], round_no: int | None = None) -> None:
        """Dirty pages of the section through the chain, in the order given. ``round_no``: the pass they
        belong to when it changed inside the section (the page search wrapped: :meth:`end_pass`); the
        stage is taken anew then (the sync count and bulk flag may have changed)."""
        if round_no is not None and round_no != sec.stage.round:
            sec.stage = self.stage_of(round_no, sec.stage.last_stage)
        for batch in batches:
            if batch.round != sec.stage.round:
                raise PageCodecError(f"batch of round {batch.round} offered while sending round {sec.stage.round}")
            self._save_batch(batch, sec.stage, sec.rs)
        sec.by_channels += self._take_counters(sec.rs)  # counted now, as QEMU's rate limiter counts them

    def end_pass(self, sec: Section, *, last_stage: bool | None = None) -> None:
        """The page search wrapped around the end of RAM (``find_dirty_block``): codecs flush what they
        hold back (compress threads), the bulk stage ends (6.0+: ``xbzrle_enabled``). ``last_stage``
        False for a wrap in the middle of ``ram_save_complete`` (one flush, not its final two)."""
        stage = sec.stage
        if last_stage is not None and last_stage != stage.last_stage:
            stage = Stage(stage.round, stage.dirty_sync_count, stage.bulk_stage, last_stage)
        for slot, name, enc in self.encoders:
            em = self._call(slot, name, enc, stage, None, lambda e: e.end_of_pass(stage))
            self._checked(lambda: self.check.emission(slot, name, em, stage.round))
            if em is not None:
                self._write_emission(em, stage, sec.rs)
        if not stage.last_stage:
            self.ram.complete_round()

    def end_section(self, sec: Section) -> RoundStats:
        """Work due before EOS (7.2's multifd sync), EOS, the footer; the section's RoundStats."""
        stage, rs, w = sec.stage, sec.rs, self.writer
        for slot, name, enc in self.encoders:
            recs = self._call(slot, name, enc, stage, None, lambda e: e.before_eos(stage))
            self._write_control(recs, stage, rs)
        by_channels = sec.by_channels + self._take_counters(rs)
        rs.wire.update(self._channel_bytes() - sec.chan0)
        rs.skipped = rs.dirty_pages - sum(rs.records.values()) - by_channels
        with self.stats.cpu.stage("wire"):
            w.put(eos_record(), "eos")
            if not stage.last_stage:  # the iteration EOS counts in transferred (ram_save_iterate)
                self.ram.counters.transferred += 8
                self.ram.counters.precopy_bytes += 8
                rs.transferred += 8
            rs.wire["eos"] += 8
            qevm.write_section_footer(w, self.section_id)
        self.stats.rounds.append(rs)
        return rs

    def finish(self) -> MigrationStats:
        """EOF and the vmdesc trailer; close the sink; collect the counters."""
        w = self.writer
        with self.stats.cpu.stage("wire"):
            qevm.write_eof(w)
            qevm.write_vmdesc(w, self.page_size)
        w.close()
        st = self.stats
        for k in sorted(self.channels):
            self.channels[k].close()
        st.ram = self.ram.counters
        st.wire.update(w.bytes_by_kind)
        st.wire.update(self._channel_bytes())
        st.channels = [dict(self.channels[k].bytes_by_kind) for k in sorted(self.channels)]
        st.records.update(w.records_by_kind)
        for _slot, _name, enc in self.encoders:
            for group, values in enc.counters(w.bytes_by_kind, w.records_by_kind).items():
                st.groups.setdefault(group, {}).update(values)
            for key, n in enc.ram_counters().items():
                setattr(st.ram, key, getattr(st.ram, key) + n)
        st.wall_s = time.perf_counter() - (self._wall0 or time.perf_counter()) - self._check_wall_ns / 1e9
        return st

    def run(
        self,
        rounds: Iterable[tuple[int, Iterable[PageBatch]]],
        num_rounds: int,
        progress: Callable[[int], None] | None = None,
    ) -> MigrationStats:
        """Send a whole trace: ``rounds`` yields (round number, batches) for rounds 0 … num_rounds-1."""
        self.save_setup()
        for r, batches in rounds:
            self.save_round(r, tap_progress(batches, progress), last_stage=(r == num_rounds - 1))
        return self.finish()

    # -- the chain ------------------------------------------------------------------------------
    def _save_batch(self, batch: PageBatch, stage: Stage, rs: RoundStats) -> None:
        n = len(batch)
        if n == 0:
            return
        self.stats.pages_offered += n
        self.stats.page_bytes_offered += n * self.page_size
        rs.dirty_pages += n
        for a, b in block_runs(batch.block):
            bi = int(batch.block[a])
            for lo in range(a, b, SEGMENT_PAGES):
                hi = min(b, lo + SEGMENT_PAGES)
                seg = Segment(bi, self.block_addrs[bi], batch.offset[lo:hi], batch.pages[lo:hi])
                self._save_segment(seg, stage, rs)

    def _call(self, slot: Slot, name: str, enc: SlotEncoder, stage: Stage | None, seg: Segment | None,
              fn: Callable[[SlotEncoder], Any]) -> Any:
        """Run ``fn(enc)``, charge its CPU (own thread + the encoder's workers) to the slot, name it on error."""
        t0 = time.thread_time_ns()
        try:
            out = fn(enc)
        except PageCodecError:
            raise
        except Exception as e:
            where = (f"block {self._idstr[seg.block_index]!r}, pages {int(seg.offsets[0]):#x}..{int(seg.offsets[-1]):#x}"
                     if seg is not None else "end of the pass")
            when = f"at round {stage.round}, {where}" if stage is not None else "in ram_save_setup"
            raise PluginError(
                f"codec {name!r} (plugin {self.plugins.plugin_of(name)!r}) raised in the {slot.value} slot "
                f"{when}: {type(e).__name__}: {e}"
            ) from e
        self.stats.cpu.add(slot.value, time.thread_time_ns() - t0 + enc.take_worker_cpu_ns())
        return out

    def _checked(self, fn: Callable[[], None]) -> None:
        """Check a slot's records (:mod:`.record_check`). The check is pagecodec's guard, not the
        codec's work nor the migration's: its time is charged to no stage and taken out of ``wall_s``
        (as ``verify``'s comparisons are), so a plugin is measured as the built-in codecs are, and
        a fast codec's figures do not carry it (~40 µs a segment: a quarter of config none's CPU)."""
        w0 = time.perf_counter_ns()
        fn()
        self._check_wall_ns += time.perf_counter_ns() - w0

    def _save_segment(self, seg: Segment, stage: Stage, rs: RoundStats) -> None:
        seg.last_sent_block = self.ram.last_sent_block
        for slot, name, enc in self.encoders:
            # every slot sees every segment, even when no page is left pending: a later slot may act on
            # pages an earlier one claimed (XBZRLE's cache learns the zero pages)
            first_set, first_before = len(seg.records), len(seg.before)
            self._call(slot, name, enc, stage, seg, lambda e: e.encode(seg, stage))
            self._checked(lambda: self.check.segment(slot, name, seg, stage.round, first_set, first_before))
        for em in seg.before:
            self._write_emission(em, stage, rs)
        left = np.flatnonzero(seg.claimed_by < 0)
        if len(left):
            raise PluginError(
                f"{len(left)} page(s) of block {self._idstr[seg.block_index]!r} left unclaimed by every slot "
                f"(first at offset {int(seg.offsets[left[0]]):#x}); the raw slot must take what the others leave"
            )
        if self.on_claims is not None:
            self.on_claims(seg.block_index, seg.offsets, seg.claimed_by)
        self._write_records(seg.block_index, seg.offsets, seg.records, stage, rs)
        if self.on_segment is not None:
            self.on_segment()

    def slot_codec(self, slot_index: int) -> tuple[str, str, str] | None:
        """(slot, codec, plugin) of the slot at ``slot_index`` in SLOT_ORDER, if it is active."""
        for slot, name, _enc in self.encoders:
            if SLOT_ORDER.index(slot) == slot_index:
                return slot.value, name, self.plugins.plugin_of(name)
        return None

    def _write_control(self, recs: list[ControlRecord], stage: Stage | None, rs: RoundStats | None) -> None:
        """Main-stream control records (MULTIFD_FLUSH). Those of a round count in ``transferred`` like
        its EOS; the setup section's, like its MEM_SIZE list and EOS, do not."""
        with self.stats.cpu.stage("wire"):
            for rec in recs:
                self.writer.put(rec.data, rec.kind)
                if stage is None or rs is None:
                    continue
                n = len(rec.data)
                c = self.ram.counters
                c.transferred += n
                if stage.last_stage:
                    c.downtime_bytes += n
                else:
                    c.precopy_bytes += n
                rs.transferred += n
                rs.wire[rec.kind] += n

    def _take_counters(self, rs: RoundStats | None) -> int:
        """Apply the encoders' counter additions (work without main-stream records); returns the pages
        they handled (``normal`` + ``duplicate``)."""
        c = self.ram.counters
        pages = 0
        for _slot, _name, enc in self.encoders:
            for key, n in enc.take_ram_counters().items():
                setattr(c, key, getattr(c, key) + n)
                if key == "transferred" and rs is not None:
                    rs.transferred += n
                if key in ("normal", "duplicate"):
                    pages += n
        return pages

    def _write_emission(self, em: Emission, stage: Stage, rs: RoundStats) -> None:
        self._write_records(em.block_index, em.offsets, em.sets, stage, rs)

    def _write_records(self, bi: int, offsets: np.ndarray, sets: list, stage: Stage, rs: RoundStats) -> None:
        """Assemble records of block ``bi`` (the first names the block if it is not the last one sent),
        write them, count them as QEMU's counters do."""
        t0 = time.thread_time_ns()
        need_idstr = bi != self.ram.last_sent_block
        data, by_kind, recs = assemble_segment(offsets, self._idstr[bi] if need_idstr else None, sets, self._scratch)
        if data.nbytes:
            self.ram.last_sent_block = bi
            self.writer.put_counted(data, by_kind, recs)
            c = self.ram.counters
            c.transferred += data.nbytes
            if stage.last_stage:
                c.downtime_bytes += data.nbytes
            else:
                c.precopy_bytes += data.nbytes
            c.normal += sum(recs.get(k, 0) for k in _NORMAL_KINDS)
            c.duplicate += sum(recs.get(k, 0) for k in _DUPLICATE_KINDS)
            rs.transferred += data.nbytes
            rs.wire.update(by_kind)
            rs.records.update(recs)
        self.stats.cpu.add("wire", time.thread_time_ns() - t0)


def check_page_size(page_size: int, extension_codecs: list[str]) -> None:
    """ConfigError for a page size whose offsets would overlap the record flags: QEMU's flags go up to
    0x200 (so its target pages are at least 1 KiB), pagecodec's extension records use 0x400 (2 KiB).
    Below that the stream is written but no destination can tell a flag from an offset bit."""
    top = RAM_SAVE_FLAG_EXTENSION if extension_codecs else RAM_SAVE_FLAG_MULTIFD_FLUSH
    need = min_page_size(top)
    if page_size < need:
        why = (f"extension records of {', '.join(repr(n) for n in extension_codecs)} carry flag {top:#x}"
               if extension_codecs else f"QEMU's record flags go up to {top:#x}: it migrates target pages of 1 KiB and more")
        raise ConfigError(f"page size {page_size}: a RAM record keeps its flags in the bits below the page offset, and "
                          f"{why}; this trace needs pages of at least {need} bytes to be sent")


def _channel_opener(channels: dict[int, WireWriter],
                    sinks: Callable[[int], Sink] | None) -> Callable[[int], WireWriter]:
    """``CodecContext.channel``: channel k's writer, made on first use in ``channels``. A closure over
    the table, not a bound method of the Sender: the sender holds its encoders, which hold the context,
    so a method would close a reference cycle, and the encoders' memory (XBZRLE's page cache: 64 MiB by
    default) would outlive the run until a garbage collection; in a bench of many runs they pile up."""

    def channel(k: int) -> WireWriter:
        w = channels.get(k)
        if w is None:
            w = channels[k] = WireWriter(sinks(k) if sinks else NullSink())
        return w

    return channel


def block_runs(blocks: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of equal block indices in a batch (pages of one block, in order)."""
    cuts = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
    bounds = [0, *cuts.tolist(), len(blocks)]
    return list(zip(bounds[:-1], bounds[1:])) if len(blocks) else []


def tap_progress(batches: Iterable[PageBatch], progress: Callable[[int], None] | None) -> Iterator[PageBatch]:
    """Pass batches through, reporting each one's page count to ``progress``."""
    for b in batches:
        yield b
        if progress is not None:
            progress(len(b))
