"""Shared set-up for the replay benchmarks: the trace's batches held in memory."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pagecodec.chain.config import parse_spec
from pagecodec.chain.sender import Sender
from pagecodec.harness.replay import rounds_of
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader
from pagecodec.wire.writer import NullSink

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRACE = ROOT / "corpora" / "synth-default.trace.parquet"


def load_rounds(path: Path = DEFAULT_TRACE, max_pages: int = 4096):
    """[(round, [PageBatch…])] with the page bytes decoded once, so timing excludes Parquet/zstd."""
    reader = TraceReader(path)
    rounds = [(r, list(batches)) for r, batches in rounds_of(reader, max_pages=max_pages)]
    return reader, rounds


_PM: list[PluginManager] = []


def plugins() -> PluginManager:
    """One plugin manager for all timed runs (loading entry points is set-up, not replay)."""
    if not _PM:
        _PM.append(PluginManager())
    return _PM[0]


def replay_in_memory(reader, rounds, spec: str = "none", pm: PluginManager | None = None):
    pm = pm or plugins()
    s = Sender(reader.meta, parse_spec(spec, pm.presets), pm, NullSink())
    return s.run(((r, iter(b)) for r, b in rounds), reader.num_rounds)


def numpy_copy(rounds, out: np.ndarray) -> None:
    """The baseline: copy every page of every batch once (what the wire needs at the very least)."""
    for _r, batches in rounds:
        for b in batches:
            np.copyto(out[: len(b)], b.pages)


def page_count(rounds) -> int:
    return sum(len(b) for _r, batches in rounds for b in batches)


def best_of(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
