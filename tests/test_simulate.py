"""pagecodec simulate: dirty logs composed into passes, sent through the real chain, timed by the model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_text_trace

from pagecodec.chain.config import parse_spec
from pagecodec.cli import cli, main
from pagecodec.errors import ConfigError, TraceError
from pagecodec.harness.dirty_log import DirtyLog
from pagecodec.harness.precopy import LogExhausted
from pagecodec.harness.precopy import Link
from pagecodec.harness.simulate import parse_duration, parse_link, parse_links, simulate
from pagecodec.sources.synth import synthesize
from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter, open_trace

PS = 4096


def _log(path, slices, times, pages_of=None, blocks=(("pc.ram", 8), ("pc.bios", 2))):
    """Round 0: every page filled with its index; slice k writes ``slices[k]`` = [(block, page, byte)]."""
    meta = TraceMeta(PS, tuple(RAMBlockInfo(n, k * PS) for n, k in blocks), Provenance("test", "pytest", "x"))
    with TraceWriter(path, meta) as w:
        for b, (_, k) in enumerate(blocks):
            w.write(0, b, np.arange(k, dtype=np.int64) * PS, np.full((k, PS), b * 16 + 1, np.uint8) + np.arange(k, dtype=np.uint8)[:, None])
        w.timestamp_round(0, times[0], "image")
        for r, sl in enumerate(slices, start=1):
            for b in sorted({x[0] for x in sl}):
                mine = sorted((p, v) for bb, p, v in sl if bb == b)
                w.write(r, b, np.array([p for p, _ in mine], np.int64) * PS,
                        np.array([np.full(PS, v, np.uint8) for _, v in mine]))
            w.timestamp_round(r, times[r], "slice")
    return meta


def test_dirty_log_composes_latest_contents_in_qemu_order(tmp_path):
    path = tmp_path / "log.trace.parquet"
    _log(path, [[(0, 5, 10), (1, 0, 11)], [(0, 1, 12), (0, 5, 13)], [(0, 2, 14)]], [1.0, 1.25, 1.5, 1.75])
    with open_trace(path) as r:
        log = DirtyLog(r)
        assert sum(len(b) for b in log.image()) == 10
        log.advance(0.25)  # slices end at 0.25, 0.5, 0.75 after the image (at 1.0 s)
        assert log.pending_pages == 2
        log.advance(0.375)  # half of slice 2's time: the first half of its pages, in address order
        assert log.pending_pages == 3
        log.advance(0.5)
        assert log.pending_pages == 3  # page 5 of pc.ram written twice: pending once
        batches = log.take(1)
        got = [(int(b.block[i]), int(b.offset[i]) // PS, int(b.pages[i][0])) for b in batches for i in range(len(b))]
        assert got == [(0, 1, 12), (0, 5, 13), (1, 0, 11)]  # block order, offsets ascending, latest contents
        assert all(b.round == 1 for b in batches) and log.pending_pages == 0
        log.advance(1.25)  # the log (0.75 s) is replayed: slices end again at 1.0, 1.25
        assert log.cycle == 1
        got = [(int(b.block[i]), int(b.offset[i]) // PS, int(b.pages[i][0])) for b in log.take(2) for i in range(len(b))]
        assert got == [(0, 1, 12), (0, 2, 14), (0, 5, 13), (1, 0, 11)]
    with open_trace(path) as r:
        log = DirtyLog(r, repeat=False)
        log.advance(0.75)
        with pytest.raises(LogExhausted):
            log.advance(0.76)


def test_simulate_refuses_untimed_and_pass_traces(tmp_path, pm):


    write_text_trace(tmp_path / "v1.trace.parquet", pages=8, text_pages=4, dirty=2, seed=1)
    with open_trace(tmp_path / "v1.trace.parquet") as r, pytest.raises(TraceError, match="untimed trace .v1.: simulate needs a timed dirty log"):
        simulate(r, parse_spec("none"), pm, Link(1e9))


def _sweep_log(path, **kw):
    """1024 pages of random (incompressible, never zero) data; 8 pages rewritten per 25 ms slice in
    address order (320 pages/s), 4 s of log."""
    args = dict(ram_size=1024 * PS, rounds=161, dirty_fraction=8 / 1024, patterns="random", zero_fraction=0.0,
                unchanged_fraction=0.0, seed=3, interval=0.025, dirty_order="sweep")
    args.update(kw)
    synthesize(path, **args)


def test_simulate_real_chain_closed_form(tmp_path, pm):
    """Every page is a PAGE record of 4104 bytes and the guest has written floor(320·t) pages by time t
    (8 pages per 25 ms slice, in address order). The link carries the bulk pass in 0.51 s: 163 pages
    dirty; at a 50 ms limit the threshold is ~100 pages, so they make pass 2 (163/1024 · 0.51 s), by
    whose end floor(320 · 0.5912) = 189 pages were written: 26 pending, under the threshold, so they
    are the downtime."""
    path = tmp_path / "sweep.trace.parquet"
    _sweep_log(path)
    rate = 1024 * 4104 / 0.51
    with open_trace(path) as r:
        res = simulate(r, parse_spec("none"), pm, Link(rate, downtime_limit_s=0.05, cpu_time=False), link_label="x")
    s = res["simulation"]
    assert s["status"] == "completed" and s["converged"] and s["downtime-ok"]
    t1 = 1024 * 4104 / rate
    n2 = int(320 * t1)
    t2 = t1 + n2 * 4104 / rate
    n3 = int(320 * t2) - n2
    assert (n2, n3) == (163, 26)
    assert [p["pages"] for p in s["pass-log"]] == [1024, n2, n3]
    assert [p["stage"] for p in s["pass-log"]] == ["bulk", "iterate", "complete"]
    assert s["passes"] == 2 and res["ram"]["dirty-sync-count"] == 2 + 2  # setup, pass 2, pending + complete syncs
    assert res["ram"]["normal"] == 1024 + n2 + n3
    assert res["ram"]["transferred"] == pytest.approx((1024 + n2 + n3) * 4104, abs=64)
    assert s["downtime"] == pytest.approx(n3 * 4104 / rate * 1000, rel=1e-3)
    assert s["total-time"] == pytest.approx((1024 + n2 + n3) * 4104 / rate * 1000, rel=1e-3)
    # at a 100 ms limit (threshold ~200 pages) the 163 pages already fit: one pass, then the completion
    with open_trace(path) as r:
        res = simulate(r, parse_spec("none"), pm, Link(rate, downtime_limit_s=0.1, cpu_time=False))
    assert [p["pages"] for p in res["simulation"]["pass-log"]] == [1024, n2]


def test_simulate_above_link_speed_never_converges_but_xbzrle_does(tmp_path, pm):
    """A 128-page working set rewritten by sparse writes at 1,280 pages/s on a link of ~500 pages/s:
    with config none every pass after the bulk one (0.26 s: ten slices) is the whole working set, over
    the threshold (5 pages), for ever. XBZRLE (the chain sees the sync count QEMU would): pass 2 fills
    its cache (128 misses, raw pages), pass 3 sends ~66-byte deltas in 4 ms, during which the guest
    writes 4/25 of a slice (5 pages): 20,480 bytes pending, under the 20,520-byte threshold: it
    converges, with a downtime of well under a millisecond."""
    path = tmp_path / "hot.trace.parquet"
    _sweep_log(path, dirty_fraction=32 / 1024, patterns="sparse", working_set=0.125)
    link = Link(500 * 4104, downtime_limit_s=0.01, cpu_time=False)
    with open_trace(path) as r:
        res = simulate(r, parse_spec("none"), pm, link, max_passes=6)
    s = res["simulation"]
    assert s["status"] == "active" and not s["converged"] and s["downtime"] is None and not s["downtime-ok"]
    assert [p["pages"] for p in s["pass-log"]] == [1024] + [128] * 5
    assert res["ram"]["remaining"] == 128 * PS and res["ram"]["dirty-sync-count"] == 6
    with open_trace(path) as r:
        xb = simulate(r, parse_spec("xbzrle"), pm, link, max_passes=6)
    x = xb["simulation"]
    assert x["converged"] and x["downtime-ok"] and x["downtime"] < 1.0
    assert [p["pages"] for p in x["pass-log"]] == [1024, 128, 128, 5]
    assert [p["pending"] for p in x["pass-log"][:3]] == [128 * PS, 128 * PS, 5 * PS]
    cache = xb["xbzrle-cache"]
    assert cache["cache-miss"] == 128 and cache["pages"] == 128 + 5  # pass 3 and the completion hit
    assert xb["ram"]["dirty-sync-count"] == 5  # setup, passes 2 and 3, pending + complete syncs


def test_parsers():
    assert parse_link("10G") == 10e9 / 8 and parse_link("100M") == 100e6 / 8 and parse_link("2.5Gbit/s") == 2.5e9 / 8
    assert [x for x, _ in parse_links("1G,10G,25G")] == ["1G", "10G", "25G"]
    assert parse_duration("300ms") == pytest.approx(0.3) and parse_duration("300") == pytest.approx(0.3)
    assert parse_duration("2s") == 2.0
    for bad in ("fast", "0G", "-1G"):
        with pytest.raises(ConfigError):
            parse_link(bad)
    with pytest.raises(ConfigError, match="twice"):
        parse_links("1G,1G")
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_cli_simulate_transfer_sheet(tmp_path, capsys):
    path = tmp_path / "sweep.trace.parquet"
    _sweep_log(path, rounds=41)
    out = tmp_path / "sim.json"
    res = CliRunner().invoke(cli, ["simulate", str(path), "--config", "none", "--config", "compress", "--link",
                                   "10M,1G", "--downtime-limit", "50ms", "--no-cpu-time", "--max-passes", "5",
                                   "--json", str(out), "--plots", str(tmp_path / "plots")])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    assert len(d["runs"]) == 4 and [s["link"] for s in d["transfer-sheet"]] == ["10M", "1G"]
    assert d["transfer-sheet"][0]["winner"] is None  # 10 Mbit/s cannot keep up with 320 pages/s
    assert d["transfer-sheet"][1]["winner"] in ("none", "compress")
    assert "dirty-sync-count" in res.output and "wins" in res.output
    assert (tmp_path / "plots" / "transfer-sheet.png").stat().st_size > 0
    assert (tmp_path / "plots" / "transfer-sheet.svg").stat().st_size > 0
    # an untimed trace: one line, exit 2
    write_text_trace(tmp_path / "v1.trace.parquet", pages=8, text_pages=4, dirty=2, seed=1)
    with pytest.raises(SystemExit) as e:
        main(["simulate", str(tmp_path / "v1.trace.parquet"), "--link", "1G"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "needs a timed dirty log" in err and len(err.strip().splitlines()) == 1
