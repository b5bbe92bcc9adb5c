"""A run's CPU cut into pieces, and repeats combined piece by piece (the piecewise minimum)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import write_text_trace
from pagecodec.chain.config import parse_spec
from pagecodec.harness.baseline import memcpy_baseline
from pagecodec.harness.calibration import KERNELS
from pagecodec.harness.matrix import fastest_of
from pagecodec.harness.pieces import MAX_PIECES, elementwise_min, merge_pieces
from pagecodec.harness.repeats import aggregate, decode_cpu_total, sender_cpu_total
from pagecodec.harness.replay import replay, verify
from pagecodec.report import analysis as A
from pagecodec.report.compare import compare
from pagecodec.report.table import format_table, table_rows
from pagecodec.trace.format import TraceReader


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """Three rounds over 1,200 pages: three 512-page segments in the bulk round."""
    p = tmp_path_factory.mktemp("pieces") / "t.parquet"
    write_text_trace(p, pages=1200, text_pages=900, dirty=300, seed=5)
    return p


def _gib(m):
    return m["page_bytes"] / (1 << 30)


@pytest.mark.parametrize("spec", ["none", "xbzrle", "compress", "multifd-zstd"])
def test_pieces_add_up_to_the_totals_and_are_cut_alike_by_replay_and_verify(pm, trace, spec):
    reader = TraceReader(trace)
    config = parse_spec(spec, pm.presets)
    decoded = replay(reader, config, pm, decode=True, pieces=True)
    checked = verify(reader, config, pm, pieces=True).metrics
    alone = replay(reader, config, pm, pieces=True)
    for m in (decoded, checked, alone):
        p = m["cpu_pieces"]
        assert sum(p["sender"]) / 1e9 / _gib(m) == pytest.approx(sender_cpu_total(m), rel=1e-9)
        assert all(isinstance(x, int) for x in p["sender"])
    for m in (decoded, checked):
        assert sum(m["cpu_pieces"]["decode"]) / 1e9 / _gib(m) == pytest.approx(decode_cpu_total(m), rel=1e-9)
    assert "decode" not in alone["cpu_pieces"]
    # setup, a piece per segment (3 + 1 + 1 in the three rounds: 1,200 then 300 and 300 dirty pages), a
    # piece per round's end and one for EOF: the same cut whichever way the run was made
    n = len(decoded["cpu_pieces"]["sender"])
    assert n == len(checked["cpu_pieces"]["sender"]) == len(alone["cpu_pieces"]["sender"]) == len(decoded["cpu_pieces"]["decode"])
    assert n >= 1 + 5 + 1 + 1
    assert "cpu_pieces" not in replay(reader, config, pm, decode=True)  # only when asked (bench asks)


def test_memcpy_cuts_a_piece_per_segment(trace):
    m = memcpy_baseline(TraceReader(trace), pieces=True)
    assert sum(m["cpu_pieces"]["sender"]) / 1e9 / _gib(m) == pytest.approx(sender_cpu_total(m), rel=1e-9)
    assert sum(m["cpu_pieces"]["decode"]) / 1e9 / _gib(m) == pytest.approx(decode_cpu_total(m), rel=1e-9)
    # 512-page pieces as the replay's segments: 512 + 512 + 176 pages in the bulk round, 300 in each other
    assert len(m["cpu_pieces"]["sender"]) == len(m["cpu_pieces"]["decode"]) == 5


def test_merging_keeps_the_sum_and_the_limit_and_depends_only_on_the_length():
    a = list(range(1, 2501))
    m = merge_pieces(a, 1000)
    assert len(m) <= 1000 and sum(m) == sum(a) and m[:2] == [1 + 2 + 3, 4 + 5 + 6]
    assert merge_pieces(a[:10], 1000) == a[:10]
    assert len(merge_pieces(list(range(MAX_PIECES * 3 + 1)))) <= MAX_PIECES


def test_elementwise_min_needs_every_run_cut_alike():
    a = {"sender": [5, 1, 7], "decode": [2, 2, 2]}
    b = {"sender": [3, 4, 9], "decode": [1, 3, 2]}
    assert elementwise_min([a, b]) == {"sender": [3, 1, 7], "decode": [1, 2, 2]}
    assert elementwise_min([a, {"sender": [1, 1], "decode": [1, 1]}]) is None  # other work, piece for piece
    assert elementwise_min([a, None]) is None
    assert elementwise_min([a, {"sender": [1, 1, 1]}]) is None


def _sample(pieces_sender, pieces_decode, gib_bytes=1 << 30):
    s, d = sum(pieces_sender) / 1e9, sum(pieces_decode) / 1e9
    return {"trace": {"path": "t.parquet", "sha256": "s"}, "config": {"label": "c"}, "status": "ok",
            "ram": {"transferred": 10}, "wire": {"total": 10}, "records": {"page": 1},
            "cpu_s_per_gib": {"wire": s, "trace": 9.0}, "cpu_decode_s_per_gib": {"page": d},
            "cpu": {"wire": s}, "wall_s": s, "decode_wall_s": d, "pages": 10, "page_bytes": gib_bytes,
            "format": {"unreproducible-codecs": []},
            "cpu_pieces": {"sender": list(pieces_sender), "decode": list(pieces_decode)}}


def test_aggregate_sums_each_pieces_least_and_drops_the_pieces():
    r = aggregate([_sample([4e8, 1e8, 5e8], [1e8, 1e8]), _sample([1e8, 3e8, 5e8], [2e8, 5e7])])
    t = r["timing"]
    assert t["cpu_s_per_gib"]["min"] == pytest.approx(0.9)  # the least whole run
    assert t["cpu_s_per_gib"]["piecewise-min"] == pytest.approx(0.1 + 0.1 + 0.5)
    assert t["cpu_decode_s_per_gib"]["piecewise-min"] == pytest.approx(0.1 + 0.05)
    assert t["pieces"] == 3 and "cpu_pieces" not in r
    assert A.cpu(r) == pytest.approx(0.7) and A.cpu(r, "run-min") == pytest.approx(0.9)
    assert A.decode_cpu(r) == pytest.approx(0.15) and A.has_piecewise_min(r)
    misaligned = aggregate([_sample([4e8, 1e8, 5e8], [1e8]), _sample([1e9], [1e8])])
    assert "piecewise-min" not in misaligned["timing"]["cpu_s_per_gib"] and "pieces" not in misaligned["timing"]
    assert A.cpu(misaligned) == pytest.approx(1.0) and not A.has_piecewise_min(misaligned)


def test_the_piecewise_minimum_resists_a_machine_that_slows_in_stretches():
    """A run of 400 pieces of known cost on a machine that runs 1.5x slower (as measured here) in
    stretches of 20 pieces, half of the time: no whole run is undisturbed, so the least of five
    totals stays 10-25 % above the cost and moves with the draw; the piecewise minimum stays within
    a few per cent of the cost, and moves less. (Where a whole run fits in one quiet or busy
    stretch, the two are the same: that is the limit of it.)"""
    rng = np.random.default_rng(7)
    true = rng.uniform(1e6, 3e6, 400)

    def one_run():
        phase = rng.integers(20)  # the stretches do not start with the run
        slow = np.repeat(rng.random(21) < 0.5, 20)[phase:phase + 400]
        jitter = rng.uniform(1.0, 1.03, 400)
        return (true * np.where(slow, 1.5, 1.0) * jitter).astype(np.int64)

    def invocation():
        runs = [one_run() for _ in range(5)]
        return aggregate([_sample(p, [1]) for p in runs])["timing"]["cpu_s_per_gib"]

    got = [invocation() for _ in range(40)]
    cost = true.sum() / 1e9
    piecewise = np.array([g["piecewise-min"] for g in got]) / cost
    whole = np.array([g["min"] for g in got]) / cost
    # seed 7: piecewise 1.008 … 1.056 (sd 0.012); the least total 1.141 … 1.244 (sd 0.026)
    assert piecewise.min() >= 1.0 and piecewise.max() < 1.07
    assert whole.min() > 1.1
    assert piecewise.std() < whole.std() / 1.5


def test_fastest_of_keeps_each_pieces_least_over_its_replays(monkeypatch):
    from pagecodec.harness import matrix

    runs = iter([_sample([3e8, 1e8], [1e8, 1e8]), _sample([1e8, 3e8], [2e8, 1e7])])
    clock = iter([0.0, 0.1, 0.3])
    monkeypatch.setattr(matrix.time, "perf_counter", lambda: next(clock))
    out = fastest_of(lambda: next(runs), 0.25)
    assert out["replays"] == 2 and out["cpu_pieces"] == {"sender": [100000000, 100000000], "decode": [100000000, 10000000]}


def test_compare_uses_the_piecewise_minimum_only_against_another():
    def row(cpu, piecewise=None):
        t = {"min": cpu, "median": cpu}
        if piecewise is not None:
            t["piecewise-min"] = piecewise
        return {"trace": {"path": "a", "sha256": "a"}, "config": {"label": "x"}, "wire": {"total": 1},
                "page_bytes": 4096, "timing": {"repeats": 3, "cpu_s_per_gib": t}}

    assert not compare([row(1.3, 1.0)], [row(1.0, 1.0)]).failed  # 1.0 vs 1.0 piecewise
    c = compare([row(1.3, 1.0)], [row(1.0)])  # an older file: least totals on both sides
    assert c.failed and any("one side only" in n for n in c.notes)
    headers, rows = table_rows([row(1.3, 1.0)], wide=True)
    cells = dict(zip(headers, rows[0]))
    assert cells["CPU s/GiB min"] == "1.00" and cells["CPU s/GiB min run"] == "1.30"
    assert "CPU min: per 512-page piece" in format_table([row(1.3, 1.0)])


def test_bench_results_carry_the_piecewise_minimum_and_the_machine_speed(trace, tmp_path):
    out = tmp_path / "r.json"
    p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "bench", str(trace), "--config", "xbzrle", "--repeat", "3",
                        "--min-sample-time", "0", "--json", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    for r in json.loads(out.read_text()):
        t = r["timing"]["cpu_s_per_gib"]
        assert r["timing"]["pieces"] > 0 and "cpu_pieces" not in r, r["config"]
        assert 0 < t["piecewise-min"] <= t["min"] * (1 + 1e-9)
        assert 0 < r["timing"]["cpu_decode_s_per_gib"]["piecewise-min"] <= r["timing"]["cpu_decode_s_per_gib"]["min"] * (1 + 1e-9)
        cal = r["timing"]["calibration"]  # harness/calibration.py, before every sample
        assert set(cal) == set(KERNELS) and all(0 < v["min"] <= v["median"] for v in cal.values())
    assert "machine speed while measured" in p.stdout


def test_piece_size_script_compares_groupings_of_the_same_replays(trace):
    from conftest import ROOT

    p = subprocess.run([sys.executable, str(ROOT / "bench" / "piece_size.py"), str(trace), "--seconds", "0.5",
                        "--sample-time", "0.05", "--pairs", "20", "--group", "1", "--group", "1000"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert "with config 'memcpy'" in lines[0] and " of 5 pieces " in lines[0]  # 512 + 512 + 176, 300, 300
    rows = [line.split() for line in lines[2:4]]
    assert [r[0] for r in rows] == ["1", "whole"] and rows[0][1] == "5" and rows[1][2] == "1"
    for r in rows:
        share = [float(c.rstrip("%")) for c in r[-4:]]
        assert all(0 <= c for c in share) and share[0] <= share[1] <= share[2] and share[3] <= 100
