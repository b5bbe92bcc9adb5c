"""Trace format v2: round times and kinds (dirty logs and timed passes); v1 still reads as untimed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from pagecodec.errors import TraceError
from pagecodec.trace.format import (
    METADATA_KEY,
    TRACE_VERSION,
    UNTIMED_VERSION,
    Provenance,
    RAMBlockInfo,
    RoundTiming,
    TraceMeta,
    TraceWriter,
    open_trace,
)
from pagecodec.trace.info import format_info, trace_info

PS = 64
META = TraceMeta(PS, (RAMBlockInfo("pc.ram", 16 * PS),), Provenance("test", "pytest", "2026-01-01T00:00:00"))


def _pages(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 255, (n, PS), dtype=np.uint8)


def write_log(path, slices: list[list[int]], times: list[float], kinds: list[str] | None = None) -> None:
    """Round 0: all 16 pages; round k: the pages ``slices[k-1]``; timestamped ``times`` (one per round)."""
    kinds = kinds or ["image"] + ["slice"] * len(slices)
    with TraceWriter(path, META) as w:
        w.write(0, 0, np.arange(16, dtype=np.int64) * PS, _pages(16, 0))
        w.timestamp_round(0, times[0], kinds[0])
        for k, idx in enumerate(slices, start=1):
            w.write(k, 0, np.array(idx, dtype=np.int64) * PS, _pages(len(idx), k))
            w.timestamp_round(k, times[k], kinds[k])


def rewrite_metadata(src, dst, edit) -> None:
    """Copy trace ``src`` to ``dst`` with its metadata object changed by ``edit`` (bypassing the writer)."""
    info = json.loads(pq.ParquetFile(src).metadata.metadata[METADATA_KEY.encode()])
    edit(info)
    t = pq.read_table(src)
    pq.write_table(t.replace_schema_metadata({METADATA_KEY: json.dumps(info)}), dst)


def test_timed_log_round_trip(tmp_path):
    path = tmp_path / "log.trace.parquet"
    write_log(path, [[1, 2, 3], [], [2, 9]], [0.0, 0.5, 1.0, 2.0])
    info = json.loads(pq.ParquetFile(path).metadata.metadata[METADATA_KEY.encode()])
    assert info["version"] == TRACE_VERSION == 2
    assert info["round_time_s"] == [0.0, 0.5, 1.0, 2.0]
    assert info["round_kind"] == ["image", "slice", "slice", "slice"]
    with open_trace(path) as r:
        assert r.version == 2 and r.timing is not None and r.timing.is_log
        assert r.timing.time_s == (0.0, 0.5, 1.0, 2.0)
        assert r.pages_per_round == [16, 3, 0, 2]
        # start_round skips round 0's pages and yields every later round, the empty one included
        got = [(k, [int(o) // PS for b in it for o in b.offset]) for k, it in r.rounds(start_round=1)]
        assert got == [(1, [1, 2, 3]), (2, []), (3, [2, 9])]
        d = trace_info(r, with_sha256=False)
    assert d["timed"] and d["kind"] == "dirty-log" and d["duration_s"] == 2.0
    assert d["working_set_pages"] == 4  # pages 1, 2, 3, 9
    assert [x["working_set_pages"] for x in d["per_round"]] == [0, 3, 3, 4]
    assert d["per_round"][1]["dirty_pages_per_s"] == pytest.approx(6.0)  # 3 pages in 0.5 s
    assert d["per_round"][2]["dirty_pages_per_s"] == 0.0
    assert d["per_round"][3]["dirty_bytes_per_s"] == pytest.approx(2 * PS)
    assert d["dirty_pages_per_s"] == pytest.approx(5 / 2.0)
    text = format_info(d)
    assert "pagecodec-trace v2" in text and "dirty-log over 2.000 s" in text and "dirty MiB/s" in text


def test_untimed_trace_stays_v1_and_reads_untimed(tmp_path):
    path = tmp_path / "v1.trace.parquet"
    with TraceWriter(path, META) as w:
        w.write(0, 0, np.arange(16, dtype=np.int64) * PS, _pages(16, 0))
        w.write(1, 0, np.array([4], dtype=np.int64) * PS, _pages(1, 1))
    info = json.loads(pq.ParquetFile(path).metadata.metadata[METADATA_KEY.encode()])
    assert info["version"] == UNTIMED_VERSION == 1 and "round_time_s" not in info
    with open_trace(path) as r:
        assert r.version == 1 and r.timing is None
        d = trace_info(r, with_sha256=False)
    assert not d["timed"] and d["working_set_pages"] == 1 and "dirty MiB/s" not in format_info(d)


def test_timed_passes(tmp_path):
    path = tmp_path / "passes.trace.parquet"
    write_log(path, [[1], [1]], [0.0, 2.0, 2.0], ["pass", "pass", "pass"])  # passes may share a time
    with open_trace(path) as r:
        assert r.timing is not None and not r.timing.is_log and trace_info(r)["kind"] == "passes"


@pytest.mark.parametrize(
    "times, kinds, words",
    [
        ([0.0, 1.0, 1.0], ["image", "slice", "slice"], "round 2: slice ends at 1.0 s, not after round 1"),
        ([0.0, 2.0, 1.0], ["pass", "pass", "pass"], "round 2: captured at 1.0 s, before round 1"),
        ([0.0, 1.0, 2.0], ["image", "pass", "slice"], "round 1: kind 'pass' in a trace of a dirty log"),
        ([0.0, 1.0, 2.0], ["pass", "slice", "slice"], "round 1: kind 'slice' in a trace of migration passes"),
        ([0.0, 1.0, 2.0], ["image", "slice", "sliced"], "round 2: kind 'sliced' is not one of"),
        ([0.0, float("nan"), 2.0], ["image", "slice", "slice"], "round 1: capture time nan"),
        ([-1.0, 1.0, 2.0], ["image", "slice", "slice"], "round 0: capture time -1.0"),
        ([0.0, 1.0, 2.0], ["slice", "slice", "slice"], "round 0: kind 'slice'"),
    ],
)
def test_bad_timing_is_refused_by_writer_and_reader(tmp_path, times, kinds, words):
    with pytest.raises(TraceError, match=words):
        RoundTiming(tuple(times), tuple(kinds))
    with pytest.raises(TraceError, match=words):
        write_log(tmp_path / "w.trace.parquet", [[1], [2]], times, kinds)
    assert not (tmp_path / "w.trace.parquet").exists()
    # the reader: a v2 file whose metadata was edited after writing
    good = tmp_path / "good.trace.parquet"
    write_log(good, [[1], [2]], [0.0, 1.0, 2.0])
    bad = tmp_path / "bad.trace.parquet"
    rewrite_metadata(good, bad, lambda info: info.update(round_time_s=times, round_kind=kinds))
    with pytest.raises(TraceError, match=f"bad.trace.parquet: {words}"):
        open_trace(bad)


def test_v2_needs_a_time_for_every_round(tmp_path):
    path = tmp_path / "partial.trace.parquet"
    with pytest.raises(TraceError, match="1 round.s. timestamped, the trace has 2"):
        with TraceWriter(path, META) as w:
            w.write(0, 0, np.arange(16, dtype=np.int64) * PS, _pages(16, 0))
            w.timestamp_round(0, 0.0, "image")
            w.write(1, 0, np.array([1], dtype=np.int64) * PS, _pages(1, 1))
    assert not path.exists()
    good = tmp_path / "good.trace.parquet"
    write_log(good, [[1]], [0.0, 1.0])
    rewrite_metadata(good, tmp_path / "nokind.trace.parquet", lambda info: info.pop("round_kind"))
    with pytest.raises(TraceError, match="needs the lists round_time_s and round_kind"):
        open_trace(tmp_path / "nokind.trace.parquet")


def test_trailing_empty_slices_are_kept(tmp_path):
    """A timed round with no rows (the guest wrote nothing in the last slices) still counts."""
    path = tmp_path / "idle.trace.parquet"
    with TraceWriter(path, META) as w:
        w.write(0, 0, np.arange(16, dtype=np.int64) * PS, _pages(16, 0))
        for k, t in enumerate([0.0, 0.1, 0.2]):
            w.timestamp_round(k, t, "image" if k == 0 else "slice")
    with open_trace(path) as r:
        assert r.pages_per_round == [16, 0, 0] and r.timing.time_s == (0.0, 0.1, 0.2)
