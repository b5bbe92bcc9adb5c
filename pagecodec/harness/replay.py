"""Replay: one trace through one configuration — the sender alone, or sender + receiver + check.

:func:`replay` measures (wire bytes, QEMU counters, CPU per stage). :func:`verify` also decodes the
stream round by round on a :class:`~pagecodec.chain.receiver.Receiver` and compares the destination's
memory with the trace's RAM image after every round; the first difference is reported by round,
block and offset.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from .. import __version__
from ..chain.config import MigrationConfig
from ..chain.receiver import Receiver
from ..chain.sender import DEFAULT_MACHINE, Sender, block_runs, tap_progress
from ..plugins import PluginManager
from ..trace.format import PageBatch, TraceReader
from ..wire.reader import StreamReader
from ..wire.writer import FileSink, MemorySink, NullSink, Sink

__all__ = ["replay", "verify", "VerifyResult", "Mismatch", "rounds_of", "versions"]


def versions() -> dict[str, str]:
    import numpy
    import pyarrow

    return {"pagecodec": __version__, "python": platform.python_version(), "numpy": numpy.__version__, "pyarrow": pyarrow.__version__}


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
) -> dict[str, Any]:
    """Send the whole trace; returns the results object (DESIGN.md's results JSON, one run)."""
    if sink is None:
        sink = FileSink(qemu_stream) if qemu_stream is not None else NullSink()
    sender = Sender(reader.meta, config, plugins, sink, machine=machine)
    try:
        stats = sender.run(_timed_rounds(reader, sender), reader.num_rounds, progress)
    except BaseException:
        if isinstance(sink, FileSink):
            sink.abort()
        raise
    return result_object(reader, config, stats.to_json())


def _timed_rounds(reader: TraceReader, sender: Sender) -> Iterator[tuple[int, Iterator[PageBatch]]]:
    """Charge the trace decoding (Parquet + zstd) to its own CPU stage."""
    cpu = sender.stats.cpu
    for r, batches in rounds_of(reader):

        def timed(batches: Iterator[PageBatch] = batches) -> Iterator[PageBatch]:
            while True:
                t0 = time.thread_time_ns()
                b = next(batches, None)
                cpu.add("trace", time.thread_time_ns() - t0)
                if b is None:
                    return
                yield b

        yield r, timed()


def result_object(reader: TraceReader, config: MigrationConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        "trace": {"path": str(reader.path), "sha256": reader.sha256(), "rounds": reader.num_rounds, "pages": reader.num_pages},
        "config": config.to_json(),
        **metrics,
        "versions": versions(),
    }


@dataclass
class Mismatch:
    round: int
    block: str
    offset: int
    detail: str

    def __str__(self) -> str:
        return f"mismatch in round {self.round}, block {self.block!r}, offset {self.offset:#x}: {self.detail}"


@dataclass
class VerifyResult:
    rounds: int
    pages: int
    stream_bytes: int
    mismatch: Mismatch | None
    metrics: dict[str, Any]

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
) -> VerifyResult:
    """Replay, decode each round's section, compare every block with the trace after every round.

    ``tamper(round, chunk) -> chunk`` lets tests corrupt the stream between sender and receiver.
    """
    meta = reader.meta
    ps = meta.page_size
    sink = MemorySink()
    sender = Sender(meta, config, plugins, sink, machine=machine)
    receiver = Receiver(ps, plugins, config, expected_blocks=meta.blocks, source="replayed stream")
    expected = {b.name: np.zeros(b.used_length, dtype=np.uint8) for b in meta.blocks}
    names = [b.name for b in meta.blocks]
    offset = 0

    def feed(r: int, loader: Callable[[StreamReader], Any]) -> None:
        nonlocal offset
        chunk = sink.take()
        if tamper is not None:
            chunk = tamper(r, chunk)
        sr = StreamReader(chunk, source="replayed stream", base=offset)
        loader(sr)
        if not sr.at_end():
            raise sr.error(f"{sr.remaining} unexpected bytes after the section")
        offset += len(chunk)

    def expect(batches: Iterator[PageBatch]) -> Iterator[PageBatch]:
        for b in batches:
            _apply(expected, names, b, ps)
            yield b

    sender.save_setup()
    feed(-1, lambda sr: (receiver.load_header(sr), receiver.load_section(sr)))
    pages = 0
    mismatch = None
    for r, batches in rounds_of(reader):
        rs = sender.save_round(r, expect(tap_progress(batches, progress)), last_stage=(r == reader.num_rounds - 1))
        pages += rs.dirty_pages
        feed(r, receiver.load_section)
        mismatch = _compare(expected, receiver, meta.blocks, ps, r)
        if mismatch is not None:
            break
    stats = sender.finish()
    if mismatch is None:
        feed(reader.num_rounds, receiver.load_section)
        if not receiver.finished:
            raise StreamReader(b"", "replayed stream", offset).error("stream did not end with EOF")
    return VerifyResult(reader.num_rounds, pages, offset, mismatch, result_object(reader, config, stats.to_json()))


def _apply(expected: dict[str, np.ndarray], names: list[str], b: PageBatch, ps: int) -> None:
    for a, z in block_runs(b.block):
        mem = expected[names[int(b.block[a])]].reshape(-1, ps)
        mem[b.offset[a:z] // ps] = b.pages[a:z]


def _compare(expected: dict[str, np.ndarray], receiver: Receiver, blocks, ps: int, r: int) -> Mismatch | None:  # type: ignore[no-untyped-def]
    for b in blocks:
        got = receiver.memory.get(b.name)
        if got is None:
            return Mismatch(r, b.name, 0, "block missing at the destination")
        exp = expected[b.name]
        if not np.array_equal(got, exp):
            diff = (got.reshape(-1, ps) != exp.reshape(-1, ps)).any(axis=1)
            page = int(np.flatnonzero(diff)[0])
            pg, pe = got.reshape(-1, ps)[page], exp.reshape(-1, ps)[page]
            first = int(np.flatnonzero(pg != pe)[0])
            return Mismatch(
                r, b.name, page * ps,
                f"{int((pg != pe).sum())} byte(s) differ, first at +{first:#x} (got {int(pg[first]):#04x}, trace has {int(pe[first]):#04x})",
            )
    return None
