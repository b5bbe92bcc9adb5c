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
    assert "dirty pages/s" in text and "(2.5 pages/s) on average" in text
    row1 = next(line.split() for line in text.splitlines() if line.split()[:3] == ["1", "0.500", "slice"])
    assert row1[4] == "6.0"  # round 1: 3 pages in 0.5 s, in pages per second beside MiB/s


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


# --- trace synth: timed dirty logs ------------------------------------------------------------------------
def test_synth_timed_sweep_log(tmp_path):
    """--interval makes a v2 log; sweep over a working set dirties the next pages in order, wrapping."""
    from pagecodec.sources.synth import synthesize

    path = tmp_path / "sweep.trace.parquet"
    synthesize(path, ram_size=64 * 4096, rounds=6, dirty_fraction=10 / 64, patterns="rewrite", zero_fraction=0.5,
               seed=1, interval=0.25, working_set=0.5, dirty_order="sweep")
    with open_trace(path) as r:
        assert r.version == 2 and r.timing.time_s == (0.0, 0.25, 0.5, 0.75, 1.0, 1.25) and r.timing.is_log
        got = [sorted(int(o) // 4096 for b in it for o in b.offset) for _, it in r.rounds(start_round=1)]
        assert "--interval 0.25 --working-set 0.5 --dirty-order sweep" in r.meta.provenance.command
    assert got[0] == list(range(10)) and got[1] == list(range(10, 20)) and got[2] == list(range(20, 30))
    assert got[3] == [0, 1, 2, 3, 4, 5, 6, 7, 30, 31]  # wraps at the working set's 32 pages
    assert got[4] == list(range(8, 18))


def test_synth_working_set_bounds_random_runs_and_untimed_is_unchanged(tmp_path):
    from pagecodec.sources.synth import synthesize

    kw = dict(ram_size=256 * 4096, rounds=4, dirty_fraction=0.05, patterns="sparse", zero_fraction=0.5, seed=9)
    synthesize(tmp_path / "ws.trace.parquet", working_set=0.25, **kw)
    with open_trace(tmp_path / "ws.trace.parquet") as r:
        assert r.version == 1 and r.timing is None
        assert int(r.offset_column[r.round_column > 0].max()) < 64 * 4096
    # the defaults give the same file as before the options existed (v1, same command, same RNG draws)
    synthesize(tmp_path / "a.trace.parquet", **kw)
    synthesize(tmp_path / "b.trace.parquet", working_set=1.0, dirty_order="runs", **kw)
    assert (tmp_path / "a.trace.parquet").read_bytes() == (tmp_path / "b.trace.parquet").read_bytes()
    with open_trace(tmp_path / "a.trace.parquet") as r:
        assert "--interval" not in r.meta.provenance.command and r.version == 1


def test_cli_synth_dirty_rate(tmp_path):
    from click.testing import CliRunner

    from pagecodec.cli import cli

    out = tmp_path / "rate.trace.parquet"
    res = CliRunner().invoke(cli, ["trace", "synth", "-o", str(out), "--ram-size", "4M", "--rounds", "5",
                                   "--interval", "0.1", "--dirty-rate", "8M", "--seed", "2"])
    assert res.exit_code == 0, res.output
    with open_trace(out) as r:
        assert r.pages_per_round[1:] == [205] * 4  # 8 MiB/s × 0.1 s = 204.8 pages → 205 per slice
        d = trace_info(r, with_sha256=False)
    assert d["dirty_bytes_per_s"] == pytest.approx(8 << 20, rel=0.01)
    res = CliRunner().invoke(cli, ["trace", "synth", "-o", str(out), "--dirty-rate", "8M"])
    assert res.exit_code == 2 and "needs --interval" in res.output
