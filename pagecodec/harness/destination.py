"""The destination side of a replay in this process: QEMU's ram_load (a
:class:`~pagecodec.chain.receiver.Receiver`) and, with multifd, the channels (a
:class:`~pagecodec.codecs.multifd.MultifdReceiver`), fed what the sender wrote as it writes it.

``verify`` and ``bench`` both decode through it, so a codec is costed where it is checked: a codec that
saves bytes but cannot be decoded at link speed shows it in ``cpu_decode``. The sender writes into
memory sinks; the destination takes the bytes and loads them after each section and, within a big
round, every :data:`PART_BYTES` (:meth:`Destination.segment_written`), so the main stream is held a part at a
time (plus the destination's RAM), never a round or the whole stream. The multifd channels' bytes
are taken at the end of each round, where their sync points are: a multifd run holds one round of
channel data.

CPU: the receiver charges its thread CPU per stage (``wire`` for framing, each record kind, each
extension codec; decoders' worker threads under their kind); the channels' work, which runs inside the
main stream's load at its sync points (7.2: every EOS; 8.1+: every MULTIFD_FLUSH), is charged to
``multifd``. Handing the bytes over (:class:`PipeSink`) is transport, neither encoding nor decoding:
the sender's thread time in it is measured and taken out of the sender's stage that wrote them
(``wire`` for the main stream, ``multifd`` for the channels), so the sender's figures are the same
with or without a destination; the destination's side of it is not charged either.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator

import numpy as np

from ..chain.config import MigrationConfig
from ..chain.metrics import CpuClock
from ..chain.receiver import Receiver, RecordObserver
from ..codecs.multifd import MultifdReceiver
from ..errors import WireError
from ..plugins import PluginManager
from ..trace.format import PageBatch, TraceMeta
from ..wire.reader import StreamReader
from ..wire.writer import Sink

__all__ = ["Destination", "ChannelSync", "PipeSink", "MULTIFD_STAGE", "PART_BYTES"]

#: A round's main stream is loaded in parts of about this many bytes (:meth:`Destination.segment_written`):
#: a part costs one receiver call per hundreds of records, stays in the caches' reach and bounds the
#: stream buffer; and at 1 MiB a part is a few segments' records (one of raw pages), so the
#: destination's CPU is cut into pieces nearly as fine as the sender's (:mod:`.pieces`).
PART_BYTES = 1 << 20

#: The CPU stage of the multifd channels' decoding (the sender's slot has the same name).
MULTIFD_STAGE = "multifd"


class PipeSink:
    """A connection from the sender to the destination in one process: keeps what is written until
    :meth:`take`. Each write is copied once (the writer reuses its buffers) into one buffer, which is
    reused part after part (:data:`PART_BYTES`, grown when a part needs more), so it stays small and
    its memory is not faulted in afresh. ``ns`` and ``wall_ns`` are the writing
    thread's CPU and wall time spent here, which the caller takes out of the sender's figures (a
    NullSink costs nothing, and they must not depend on who listens)."""

    def __init__(self) -> None:
        self._buf = np.empty(0, np.uint8)
        self._n = 0
        self.ns = 0
        self.wall_ns = 0

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        w0, t0 = time.perf_counter_ns(), time.thread_time_ns()
        src = np.frombuffer(memoryview(data).cast("B"), np.uint8)
        end = self._n + len(src)
        if end > len(self._buf):
            grown = np.empty(max(end, 2 * len(self._buf), 1 << 16), np.uint8)
            grown[: self._n] = self._buf[: self._n]
            self._buf = grown
        self._buf[self._n : end] = src
        self._n = end
        self.ns += time.thread_time_ns() - t0
        self.wall_ns += time.perf_counter_ns() - w0

    @property
    def pending(self) -> int:
        """Bytes written since the last :meth:`take`."""
        return self._n

    def take(self) -> memoryview:
        """Everything written since the last take: a view on the buffer, valid until the next write
        (the destination has loaded it by then)."""
        data = memoryview(self._buf)[: self._n]
        self._n = 0
        return data

    def close(self) -> None:
        pass


class ChannelSync(RecordObserver):
    """Runs the multifd channels where QEMU's destination does: at the main stream's sync points, each
    waits for every channel's next SYNC packet (7.2: EOS, 8.1+: MULTIFD_FLUSH). Without multifd it
    does nothing. Subclass it to see more of the walk (``verify`` tracks the pages a round touched)."""

    def __init__(self) -> None:
        self.receiver: Receiver | None = None
        self.multifd: MultifdReceiver | None = None

    def channel_pages(self, block: str, index: np.ndarray) -> None:
        """Pages a channel wrote into ``block`` (page indexes); nothing by default."""

    def eos(self, at: int) -> None:
        if self.multifd is not None and not self.multifd.modern:
            self._sync(at)  # 7.2: ram_load's EOS runs multifd_recv_sync_main

    def multifd_flush(self, at: int) -> None:
        if self.multifd is None:
            raise WireError("MULTIFD_FLUSH record in a stream without multifd channels", at,
                            self.receiver.source if self.receiver is not None else None)
        if self.multifd.modern:
            self._sync(at)

    def _sync(self, at: int) -> None:
        assert self.multifd is not None and self.receiver is not None
        with self.receiver.cpu.within(MULTIFD_STAGE):
            self.multifd.sync(at)


class Destination:
    """Receiver (+ channels) fed from the sender's memory sinks, one section at a time.

    Give the sender :attr:`sink` and :meth:`channel_sink`; call :meth:`load` after ``save_setup``,
    after every ``save_round`` and after ``finish``; then :meth:`close`. To load a big round in
    parts, pass its batches through :meth:`feeding` and make :meth:`segment_written` (part of) the
    sender's ``on_segment``. ``context`` goes before the
    round in error messages (e.g. the trace and config of a bench run). ``tamper(round, chunk)`` and
    ``tamper_channel(channel, round, chunk)`` let tests corrupt bytes between sender and receiver."""

    def __init__(
        self,
        meta: TraceMeta,
        config: MigrationConfig,
        plugins: PluginManager,
        *,
        observer: ChannelSync | None = None,
        source: str = "replayed stream",
        context: str = "",
        tamper: Callable[[int, bytes], bytes] | None = None,
        tamper_channel: Callable[[int, int, bytes], bytes] | None = None,
    ) -> None:
        self.page_size = ps = meta.page_size
        self.source = source
        self.context = context
        self.tamper = tamper
        self.tamper_channel = tamper_channel
        self.sink = PipeSink()
        self._chan_sinks: dict[int, PipeSink] = {}
        self.observer = observer if observer is not None else ChannelSync()
        self.receiver = Receiver(ps, plugins, config, expected_blocks=meta.blocks, source=source,
                                 observer=self.observer)
        self.observer.receiver = self.receiver
        self.multifd: MultifdReceiver | None = None
        if config.cap("multifd"):
            self.multifd = self.observer.multifd = MultifdReceiver(
                config.qemu_version, config.param("multifd-channels"), config.param("multifd-compression"), ps,
                self._block_pages, self.observer.channel_pages)
        self.offset = 0  # main-stream bytes loaded
        self.wall_ns = 0  # wall time spent loading
        self._feeding: int | None = None  # the round whose batches the sender is taking (feeding)
        self._cpu_ns: dict[str, int] = {}

    def _block_pages(self, name: str) -> np.ndarray | None:
        mem = self.receiver.memory.get(name)
        return mem.reshape(-1, self.page_size) if mem is not None else None

    def channel_sink(self, k: int) -> Sink:
        """Where the sender writes multifd channel ``k`` (the sender's ``channel_sinks``)."""
        return self._chan_sinks.setdefault(k, PipeSink())

    @property
    def channel_bytes(self) -> int:
        """Every channel's bytes fed so far."""
        return sum(c.base + len(c.buf) for c in self.multifd.ch) if self.multifd is not None else 0

    def feeding(self, r: int, batches: Iterable[PageBatch]) -> Iterator[PageBatch]:
        """``batches`` of round ``r`` passed on to the sender: while they last, :meth:`segment_written`
        loads round ``r``'s stream in parts."""
        self._feeding = r
        try:
            yield from batches
        finally:
            self._feeding = None

    def segment_written(self) -> None:
        """The sender's ``on_segment``: load what it wrote once :data:`PART_BYTES` have piled up.
        After a segment the sender has written every record of it, so the stream breaks at a record
        boundary there and the receiver goes on where it stopped (:meth:`Receiver.load_section` with
        ``partial``). The bulk round of a 1 GiB guest is then loaded a part at a time instead of
        held whole (1 GiB more memory, faulted in afresh for the round), and the destination's CPU
        falls into the same segment-sized pieces as the sender's (:mod:`.pieces`). Only while a
        round is :meth:`feeding`; small rounds stay one chunk (``tamper`` sees a round at once)."""
        if self._feeding is not None and self.sink.pending >= PART_BYTES:
            self.load(self._feeding, None)

    def load(self, r: int, num_rounds: int | None) -> None:
        """Load what the sender wrote since the last call: the setup section (``r`` = -1), round
        ``r``'s section (or the rest of it), or (``r`` = ``num_rounds``) EOF and the vmdesc trailer.
        ``num_rounds`` None: a part of round ``r``'s section that goes on (:meth:`feeding`; the
        multifd channels wait for the round's end, where their sync points are). A fault raises
        WireError/DecodeError with its stream offset (``channel-<k>.bin`` and offset for a channel),
        the context and the round."""
        t0 = time.perf_counter_ns()
        partial = num_rounds is None
        try:
            if self.multifd is not None and not partial:
                for k in sorted(self._chan_sinks):
                    data: bytes | memoryview = self._chan_sinks[k].take()
                    if self.tamper_channel is not None:
                        data = self.tamper_channel(k, r, bytes(data))
                    self.multifd.feed(k, data)
            chunk: bytes | memoryview = self.sink.take()
            if self.tamper is not None:
                chunk = self.tamper(r, bytes(chunk))
            sr = StreamReader(chunk, source=self.source, base=self.offset)
            rc = self.receiver
            try:
                if r < 0:
                    rc.load_header(sr)
                ended = rc.load_section(sr, partial=partial)
                if partial and ended is not None:
                    raise sr.error("the round's section ended before the sender finished the round")
                if not sr.at_end():
                    raise sr.error(f"{sr.remaining} unexpected bytes after the section")
                if num_rounds is not None and r >= num_rounds:
                    if not rc.finished:
                        raise sr.error("stream did not end with EOF")
                    if self.multifd is not None:
                        self.multifd.finish()
            except WireError as e:
                where = "setup" if r < 0 else (f"round {r}" if partial or r < num_rounds else "EOF and vmdesc")
                raise e.within(before=f"{self.context}{where}: ") from None
            self.offset += len(chunk)
            for stage, ns in rc.take_cpu_ns().items():
                self._cpu_ns[stage] = self._cpu_ns.get(stage, 0) + ns
        finally:
            self.wall_ns += time.perf_counter_ns() - t0

    @property
    def transport_wall_ns(self) -> int:
        """Wall time the sender spent handing bytes to the sinks so far."""
        return self.sink.wall_ns + sum(s.wall_ns for s in self._chan_sinks.values())

    def transport_cpu_ns(self) -> int:
        """CPU the sender has spent handing bytes to the sinks since the last :meth:`uncharge_transport`."""
        return self.sink.ns + sum(s.ns for s in self._chan_sinks.values())

    def uncharge_transport(self, cpu: CpuClock) -> None:
        """Take the sender's CPU in the sinks out of its stages: the main stream's writes ran in
        ``wire``, the channels' in ``multifd`` (the slot that writes them)."""
        for stage, sinks in (("wire", [self.sink]), (MULTIFD_STAGE, list(self._chan_sinks.values()))):
            ns = sum(s.ns for s in sinks)
            if ns:
                cpu.add(stage, -ns)
            for s in sinks:
                s.ns = 0

    def close(self) -> None:
        """Break the links between receiver, observer and channels (reference cycles), so the
        destination's RAM is freed when the run drops it, not at some later garbage collection: in a
        bench of many runs those would pile up."""
        self.observer.receiver = None
        self.observer.multifd = None
        self.receiver.observer = None
        self.multifd = None

    def cpu_ns(self) -> dict[str, int]:
        """The destination's thread CPU nanoseconds per stage so far (see the module docstring)."""
        return dict(self._cpu_ns)
