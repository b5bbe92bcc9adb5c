"""Replay: one trace through one configuration — the sender alone, sender + receiver, or sender +
receiver + check.

:func:`replay` measures (wire bytes, QEMU counters, CPU per stage); with ``decode`` (``bench``'s
default) it also loads the stream on the destination (:mod:`.destination`) as it is written and
measures the destination's CPU per stage (``cpu_decode``): every record is decoded and checked by its
decoder, pages are not compared. :func:`verify` decodes the same way and compares the destination's
memory with the trace's RAM image after every round; the first difference is reported by round,
block and offset.

Multifd configurations write more than one connection: :func:`replay` with ``qemu_stream`` then
writes a directory (``main.mig`` + ``channel-<k>.bin``, the layout ``trace import-qemu --channel``
reads), and :func:`verify` decodes every channel with the codec's channel receiver, applying each
channel's packets where QEMU's destination would: at the main stream's sync points (7.2: every EOS,
8.1+: every MULTIFD_FLUSH), each waits for every channel's next SYNC packet.

After a round only two kinds of page can differ: those the trace dirtied in the round (the expected
image changed) and those the stream wrote (the destination changed; the receiver's observer reports
them). So each round compares just those pages, in block and page order, and the whole of RAM is
compared once, after the last round: a decoder that wrote outside the pages its records name is
caught there.

With ``pieces`` (``bench``), a run also cuts its CPU into pieces at the same points of the work in
every repeat (after each segment, each round and the end; :mod:`.pieces`), so that repeats can be
combined piece by piece.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from ..chain.config import MigrationConfig
from ..chain.metrics import MigrationStats
from ..chain.receiver import PageRecords, Receiver
from ..chain.sender import DEFAULT_MACHINE, Sender, tap_progress
from ..errors import ConfigError
from ..plugins import PluginManager
from .expected import ExpectedRAM
from .provenance import machine, versions
from ..trace.format import PageBatch, TraceReader
from ..wire.writer import FileSink, NullSink, Sink, StreamDirectory
from .destination import ChannelSync, Destination
from .pieces import CpuPieces
from .repeats import SENDER_EXCLUDED

__all__ = ["replay", "verify", "VerifyResult", "Mismatch", "rounds_of"]


def rounds_of(reader: TraceReader, max_pages: int = 4096) -> Iterator[tuple[int, Iterator[PageBatch]]]:
    """(round, batches) for every round, empty rounds included (TraceReader.rounds)."""
    return reader.rounds(max_pages=max_pages)


def replay(
    reader: TraceReader,
    config: MigrationConfig,
    plugins: PluginManager,
    *,
    qemu_stream: str | os.PathLike[str] | None = None,
    machine: str = DEFAULT_MACHINE,
    progress: Callable[[int], None] | None = None,
    sink: Sink | None = None,
    decode: bool = False,
    tamper: Callable[[int, bytes], bytes] | None = None,
    tamper_channel: Callable[[int, int, bytes], bytes] | None = None,
    pieces: bool = False,
) -> dict[str, Any]:
    """Send the whole trace; returns the results object (DESIGN.md's results JSON, one run).

    ``qemu_stream``: write the stream there — a QEVM file, or for a multifd configuration a new
    directory with ``main.mig`` and ``channel-<k>.bin`` (written atomically as a whole).
    ``decode``: also load the stream on a destination after every section (:func:`_decoded`; not
    with ``qemu_stream`` or ``sink``); a decode fault raises WireError naming the offset, the trace,
    the config and the round. ``tamper``/``tamper_channel``: as in :func:`verify`, for tests.
    ``pieces``: the results carry ``cpu_pieces`` (:mod:`.pieces`)."""
    if decode:
        if qemu_stream is not None or sink is not None:
            raise ValueError("replay(decode=True) keeps the stream in memory: no qemu_stream or sink")
        return _decoded(reader, config, plugins, machine=machine, progress=progress, tamper=tamper,
                        tamper_channel=tamper_channel, pieces=pieces)
    fmt = stream_format(config, plugins)
    if qemu_stream is not None and fmt["extension-codecs"]:
        names = ", ".join(repr(n) for n in fmt["extension-codecs"])
        raise ConfigError(f"--qemu-stream: codec(s) {names} of config {config.label!r} write pagecodec extension "
                          f"records, which QEMU cannot load; write QEMU streams with QEMU-format codecs only")
    out_dir: StreamDirectory | None = None
    channel_sinks = None
    if sink is None:
        if qemu_stream is not None and config.cap("multifd"):
            out_dir = StreamDirectory(qemu_stream)
            sink, channel_sinks = out_dir.main(), out_dir.channel
        else:
            sink = FileSink(qemu_stream) if qemu_stream is not None else NullSink()
    try:
        sender = Sender(reader.meta, config, plugins, sink, machine=machine, channel_sinks=channel_sinks)
        cuts = _cut(sender, None) if pieces else None
        _watch_segments(sender, None, cuts)
        stats = sender.run(_timed_rounds(reader, sender, cuts), reader.num_rounds, progress)
        if cuts is not None:
            cuts.mark()
    except BaseException:
        if isinstance(sink, FileSink):
            sink.abort()
        if out_dir is not None:
            out_dir.abort()
        raise
    if out_dir is not None:
        out_dir.commit()
    metrics = {**stats.to_json(), "format": fmt}
    if cuts is not None:
        metrics["cpu_pieces"] = cuts.to_json()
    return result_object(reader, config, metrics, plugins)


def _decoded(
    reader: TraceReader,
    config: MigrationConfig,
    plugins: PluginManager,
    *,
    machine: str,
    progress: Callable[[int], None] | None,
    tamper: Callable[[int, bytes], bytes] | None,
    tamper_channel: Callable[[int, int, bytes], bytes] | None,
    pieces: bool = False,
) -> dict[str, Any]:
    """replay with the destination loading the stream as it is written (bounded memory: a part of a
    round's stream at a time, :meth:`Destination.segment_written`). Pages are not compared (that is
    :func:`verify`'s job and costs a second image of RAM); every record is decoded, with its
    decoder's checks."""
    name = os.path.basename(str(reader.path))
    dest = Destination(reader.meta, config, plugins, context=f"{name} with config {config.label!r}, ",
                       tamper=tamper, tamper_channel=tamper_channel)
    sender = Sender(reader.meta, config, plugins, dest.sink, machine=machine,
                    channel_sinks=dest.channel_sink if config.cap("multifd") else None)
    cuts = _cut(sender, dest) if pieces else None
    _watch_segments(sender, dest, cuts)
    n = reader.num_rounds
    try:
        sender.save_setup()
        dest.load(-1, n)
        for r, batches in _timed_rounds(reader, sender, cuts):
            sender.save_round(r, dest.feeding(r, tap_progress(batches, progress)), last_stage=(r == n - 1))
            dest.load(r, n)
        stats = sender.finish()
        in_window = dest.wall_ns + dest.transport_wall_ns
        dest.load(n, n)
        if cuts is not None:
            cuts.mark()
    finally:
        dest.close()
    return result_object(reader, config, _with_destination(stats, dest, in_window, config, plugins, cuts), plugins)


def _cut(sender: Sender, dest: Destination | None) -> CpuPieces:
    """Marks on the run's CPU clocks, with the destination's CPU when it decodes. They are made after
    every segment (:func:`_watch_segments`), where :func:`_marked` marks (each round) and at the end."""
    if dest is None:
        return CpuPieces(sender.stats.cpu, SENDER_EXCLUDED)
    return CpuPieces(sender.stats.cpu, SENDER_EXCLUDED, uncharged=dest.transport_cpu_ns,
                     decode=lambda: sum(dest.cpu_ns().values()))


def _watch_segments(sender: Sender, dest: Destination | None, cuts: CpuPieces | None) -> None:
    """The sender's ``on_segment``: the destination (if any) loads what has piled up
    (:meth:`Destination.segment_written`), then ``cuts`` (if any) marks, so a part's decoding falls
    into the piece of the segment that completed it."""
    load = dest.segment_written if dest is not None else None
    mark = cuts.mark if cuts is not None else None
    if load is None or mark is None:
        sender.on_segment = load or mark
        return

    def after_segment() -> None:
        load()
        mark()

    sender.on_segment = after_segment


def _with_destination(stats: MigrationStats, dest: Destination, in_window_ns: int, config: MigrationConfig,
                      plugins: PluginManager, cuts: CpuPieces | None = None) -> dict[str, Any]:
    """The run's metrics with the destination's CPU per stage and wall time. The destination loaded
    inside the sender's wall-clock window (after each section), so its wall time (``in_window_ns``,
    with the hand-over of the bytes) leaves ``wall_s``, which stays the sender's (and
    ``pages-per-second`` with it); loading EOF came after the window."""
    dest.uncharge_transport(stats.cpu)
    stats.decode_cpu_ns = dest.cpu_ns()
    stats.decode_wall_s = dest.wall_ns / 1e9
    stats.wall_s = max(0.0, stats.wall_s - in_window_ns / 1e9)
    metrics = {**stats.to_json(), "format": stream_format(config, plugins)}
    if config.cap("compress"):
        metrics.setdefault("threads", {})["decompress"] = int(config.param("decompress-threads"))
    if cuts is not None:
        metrics["cpu_pieces"] = cuts.to_json()
    return metrics


def stream_format(config: MigrationConfig, plugins: PluginManager) -> dict[str, Any]:
    """Whether the stream this config writes is QEMU's (every active codec writes QEMU's records) or
    carries pagecodec extension records (which codecs), and which active codecs may write different
    bytes from run to run (:meth:`Codec.reproducible`): every result says so."""
    codecs = [plugins.codecs[name] for name in config.slot_codecs().values() if name in plugins.codecs]
    ext = [c.name for c in codecs if not c.qemu_format]
    unreproducible = [c.name for c in codecs if not c.reproducible(config)]
    return {"qemu-loadable": not ext, "extension-codecs": ext, "unreproducible-codecs": unreproducible}


def _marked(rounds: Iterable[tuple[int, Iterator[PageBatch]]], cuts: CpuPieces | None
            ) -> Iterator[tuple[int, Iterator[PageBatch]]]:
    """``rounds`` passed on, ``cuts`` marked before each round is handed out and after the last (the
    caller has finished the round before by then: sent, and loaded on a destination). replay and
    verify both mark through this, so their repeats are cut alike."""
    for item in rounds:
        if cuts is not None:
            cuts.mark()
        yield item
    if cuts is not None:
        cuts.mark()


def _timed_rounds(reader: TraceReader, sender: Sender, cuts: CpuPieces | None = None
                  ) -> Iterator[tuple[int, Iterator[PageBatch]]]:
    """Charge the trace decoding (Parquet + zstd) to its own CPU stage; ``cuts``: as :func:`_marked`."""
    cpu = sender.stats.cpu
    for r, batches in _marked(rounds_of(reader), cuts):

        def timed(batches: Iterator[PageBatch] = batches) -> Iterator[PageBatch]:
            while True:
                t0 = time.thread_time_ns()
                b = next(batches, None)
                cpu.add("trace", time.thread_time_ns() - t0)
                if b is None:
                    return
                yield b

        yield r, timed()


def result_object(reader: TraceReader, config: MigrationConfig, metrics: dict[str, Any],
                  plugins: PluginManager) -> dict[str, Any]:
    """One run's results: the trace (with its sha256), the resolved config, the metrics, and where
    the figures came from (machine, versions of pagecodec, libraries and plugins)."""
    return {
        "trace": {"path": str(reader.path), "sha256": reader.sha256(), "rounds": reader.num_rounds, "pages": reader.num_pages},
        "config": config.to_json(),
        **metrics,
        "machine": machine(),
        "versions": versions(plugins),
    }


@dataclass
class Mismatch:
    round: int
    block: str
    offset: int
    detail: str
    sent_by: str | None = None  # the codec whose slot last claimed the page: "codec 'x' (plugin 'p', raw slot)"

    def __str__(self) -> str:
        by = f"; the page was last sent by {self.sent_by}" if self.sent_by else ""
        return f"mismatch in round {self.round}, block {self.block!r}, offset {self.offset:#x}: {self.detail}{by}"


@dataclass
class VerifyResult:
    rounds: int
    pages: int
    stream_bytes: int  # the main stream
    mismatch: Mismatch | None
    metrics: dict[str, Any]
    channel_bytes: int = 0  # multifd: every channel's bytes

    @property
    def ok(self) -> bool:
        return self.mismatch is None


def verify(
    reader: TraceReader,
    config: MigrationConfig,
    plugins: PluginManager,
    *,
    machine: str = DEFAULT_MACHINE,
    progress: Callable[[int], None] | None = None,
    tamper: Callable[[int, bytes], bytes] | None = None,
    tamper_channel: Callable[[int, int, bytes], bytes] | None = None,
    pieces: bool = False,
) -> VerifyResult:
    """Replay, decode each round's section, compare the destination with the trace after every round
    (the pages the round touched on either side; all of RAM after the last round).

    ``tamper(round, chunk) -> chunk`` lets tests corrupt the stream between sender and receiver;
    ``tamper_channel(channel, round, chunk) -> chunk`` a multifd channel's bytes. ``pieces``: the
    metrics carry ``cpu_pieces``, cut where :func:`replay`'s are (the check's own work is in none).
    """
    meta = reader.meta
    touched = _Touched(meta)
    name = os.path.basename(str(reader.path))
    dest = Destination(meta, config, plugins, observer=touched, tamper=tamper, tamper_channel=tamper_channel,
                       context=f"{name} with config {config.label!r}, ")
    receiver = dest.receiver
    sender = Sender(meta, config, plugins, dest.sink, machine=machine,
                    channel_sinks=dest.channel_sink if config.cap("multifd") else None)
    expected = ExpectedRAM(reader)
    n = reader.num_rounds
    claims = _Claims(meta)
    sender.on_claims = claims.record
    cuts = _cut(sender, dest) if pieces else None
    _watch_segments(sender, dest, cuts)

    check_ns = 0  # the check's own wall time (fingerprints, comparisons): not the migration's

    def expect(batches: Iterator[PageBatch]) -> Iterator[PageBatch]:
        nonlocal check_ns
        for b in batches:
            t0 = time.perf_counter_ns()
            for bi, idx in expected.apply(b):
                touched.add(bi, idx)
            check_ns += time.perf_counter_ns() - t0
            yield b

    pages = 0
    mismatch = None
    try:
        sender.save_setup()
        dest.load(-1, n)
        touched.clear()
        for r, batches in _marked(rounds_of(reader), cuts):
            rs = sender.save_round(r, dest.feeding(r, expect(tap_progress(batches, progress))), last_stage=(r == n - 1))
            pages += rs.dirty_pages
            dest.load(r, n)
            t0 = time.perf_counter_ns()
            mismatch = _compare(expected, receiver, r, touched.take())
            check_ns += time.perf_counter_ns() - t0
            if mismatch is not None:
                break
        t0 = time.perf_counter_ns()
        if mismatch is None and n:
            mismatch = _compare(expected, receiver, n - 1, None)
        if mismatch is not None:
            mismatch.sent_by = claims.sender_of(sender, mismatch.block, mismatch.offset)
        check_ns += time.perf_counter_ns() - t0
        stats = sender.finish()
        in_window = dest.wall_ns + dest.transport_wall_ns + check_ns
        if mismatch is None:
            dest.load(n, n)
        if cuts is not None:
            cuts.mark()
        channel_bytes = dest.channel_bytes
    finally:
        dest.close()
    metrics = _with_destination(stats, dest, in_window, config, plugins, cuts)
    return VerifyResult(n, pages, dest.offset, mismatch, result_object(reader, config, metrics, plugins), channel_bytes)


class _Claims:
    """Which chain slot last took each page (one byte a page): a page that arrives wrong is named with
    the codec, and its plugin, that sent it."""

    def __init__(self, meta: Any) -> None:
        self.page_size = meta.page_size
        self.names = [b.name for b in meta.blocks]
        self.slots = [np.full(meta.block_pages(i), -1, np.int8) for i in range(len(meta.blocks))]

    def record(self, block: int, offsets: np.ndarray, claimed_by: np.ndarray) -> None:
        self.slots[block][offsets // self.page_size] = claimed_by

    def sender_of(self, sender: Sender, block: str, offset: int) -> str | None:
        if block not in self.names:
            return None
        slot = int(self.slots[self.names.index(block)][offset // self.page_size])
        who = sender.slot_codec(slot) if slot >= 0 else None
        if who is None:
            return None
        slot_name, codec, plugin = who
        return f"codec {codec!r} (plugin {plugin!r}, {slot_name} slot)"


class _Touched(ChannelSync):
    """The pages a round touched, per block: written by the stream (the receiver reports them, the
    multifd channels too) or dirtied by the trace (verify adds what :meth:`ExpectedRAM.apply` reports).
    Kept as index arrays and made sorted and unique through one flag byte per page of RAM: a round
    costs its touched pages plus a scan of a byte per page (np.unique sorted the indexes instead:
    0.3 s of a 1 GiB guest's verify)."""

    def __init__(self, meta: Any) -> None:
        super().__init__()
        self.index = {b.name: i for i, b in enumerate(meta.blocks)}  # block name -> the trace's block index
        self.parts: list[list[np.ndarray]] = [[] for _ in meta.blocks]
        self._flags = [np.zeros(meta.block_pages(i), bool) for i in range(len(meta.blocks))]

    def channel_pages(self, block: str, index: np.ndarray) -> None:
        self.add(self.index[block], index)

    def pages(self, records: PageRecords) -> None:
        assert self.receiver is not None  # the stream's block order need not be the trace's
        self.parts[self.index[self.receiver.block_order[records.block]]].append(records.index)

    def add(self, block: int, index: np.ndarray) -> None:
        self.parts[block].append(index)

    def clear(self) -> None:
        for p in self.parts:
            p.clear()

    def take(self) -> list[np.ndarray]:
        """Each block's touched pages (sorted, unique) since the last call."""
        out = []
        for flags, parts in zip(self._flags, self.parts):
            for idx in parts:
                flags[idx] = True
            hit = np.flatnonzero(flags)
            flags[hit] = False
            out.append(hit)
        self.clear()
        return out


def _compare(expected: ExpectedRAM, receiver: Receiver, r: int, touched: list[np.ndarray] | None) -> Mismatch | None:
    """The first page (block order, then page order) where the destination differs from the trace,
    among ``touched`` pages per block (None: all pages)."""
    diff = expected.first_difference(receiver.memory, r, touched)
    return None if diff is None else Mismatch(r, *diff)
