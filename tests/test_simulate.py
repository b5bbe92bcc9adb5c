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


def _pages(log, g):
    return [(int(b.block[i]), int(b.offset[i]) // PS, int(b.pages[i][0])) for b in log.batches(g) for i in range(len(b))]


def test_dirty_log_is_qemus_bitmap_and_search(tmp_path):
    """All pages dirty at setup; a sync adds the pages written since the last one (counting those not
    dirty already); the search goes up from the cursor and wraps; a page goes with its latest
    contents (the image's if never written)."""
    path = tmp_path / "log.trace.parquet"
    _log(path, [[(0, 5, 10), (1, 0, 11)], [(0, 1, 12), (0, 5, 13)], [(0, 2, 14)]], [1.0, 1.25, 1.5, 1.75])
    with open_trace(path) as r:
        log = DirtyLog(r)
        assert log.dirty_pages == 10 and log.sync() == 0  # the setup sync: every page dirty already
        assert _pages(log, log.find_next(3)) == [(0, 0, 1), (0, 1, 2), (0, 2, 3)]  # the image's contents
        log.advance(0.25)  # slices end at 0.25, 0.5, 0.75 after the image (at 1.0 s)
        assert log.written.sum() == 2 and log.dirty_pages == 7  # written, not yet synced
        log.advance(0.375)  # half of slice 2's time: the first half of its pages, in address order
        assert _pages(log, log.find_next(1)) == [(0, 3, 4)]
        assert _pages(log, log.find_next(1)) == [(0, 4, 5)]
        assert _pages(log, log.find_next(1)) == [(0, 5, 10)]  # written in slice 1: its contents now
        assert log.sync() == 2  # pages 1 (sent: dirty again) and 5 of pc.ram (sent); pc.bios 0 was dirty still
        assert log.dirty_pages == 4 + 2
        got = _pages(log, log.find_next(10))
        assert got == [(0, 6, 7), (0, 7, 8), (1, 0, 11), (1, 1, 18)]  # ahead of the cursor, to the end of RAM
        assert not len(log.find_next(1))
        log.wrap()
        log.advance(0.5)
        assert _pages(log, log.find_next(10)) == [(0, 1, 12), (0, 5, 13)]  # behind the cursor: after the wrap
        assert log.round == 1 and log.dirty_pages == 0
        log.advance(1.25)  # the log (0.75 s) is replayed: slices end again at 1.0, 1.25
        assert log.cycle == 1
        assert log.sync() == 4
        assert _pages(log, log.find_next(10)) == [(1, 0, 11)]  # ahead of the cursor (after page 5)
        log.wrap()
        assert _pages(log, log.find_next(10)) == [(0, 1, 12), (0, 2, 14), (0, 5, 13)]
    with open_trace(path) as r:
        log = DirtyLog(r, repeat=False)
        log.advance(0.75)
        with pytest.raises(LogExhausted):
            log.advance(0.76)


def test_dirty_log_host_pages(tmp_path):
    """A block backed by 16 KiB host pages: the search hands out the dirty target pages of a host
    page together, and a host page can be cut (``max_pages``) and resumed."""
    path = tmp_path / "huge.trace.parquet"
    meta = TraceMeta(PS, (RAMBlockInfo("pc.ram", 8 * PS, page_size=4 * PS), RAMBlockInfo("pc.bios", 2 * PS)),
                     Provenance("test", "pytest", "x"))
    with TraceWriter(path, meta) as w:
        w.write(0, 0, np.arange(8, dtype=np.int64) * PS, np.ones((8, PS), np.uint8))
        w.write(0, 1, np.arange(2, dtype=np.int64) * PS, np.ones((2, PS), np.uint8))
        w.timestamp_round(0, 0.0, "image")
        w.write(1, 0, np.array([1 * PS, 6 * PS]), np.full((2, PS), 7, np.uint8))
        w.timestamp_round(1, 0.1, "slice")
    with open_trace(path) as r:
        log = DirtyLog(r)
        assert log.host_page.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 3]
        assert log.find_next(1).tolist() == [0, 1, 2, 3]
        assert log.find_next(1, max_pages=2).tolist() == [4, 5] and log.in_host_page()
        assert log.find_next(2).tolist() == [6, 7, 8] and not log.in_host_page()


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


def _written(t):
    """Pages the sweep log has written by guest time ``t``: 8 per whole 25 ms slice, and of the slice
    in progress the share its elapsed time stands for."""
    k, frac = divmod(t, 0.025)
    return int(8 * k + int(8 * frac / 0.025))


def test_simulate_real_chain_closed_form(tmp_path, pm):
    """Every page is a PAGE record of 4104 bytes; the link carries 1024 pages in 0.51 s (one page in
    ~0.5 ms), no max-bandwidth. ram_save_iterate's 50 ms check falls after host pages 1, 65, 129:
    129 pages a call (64 ms). Once the first window is measured the bandwidth is the link's, so at
    a 50 ms limit the threshold is ~100 pages. The bulk pass: 7 calls leave 121 pages (≥ 100), the
    8th sends them and finds none left; the sync at 0.51 s finds the 163 pages written (pass 2).
    Its first call sends 129 (64 ms): 34 left < 100: a sync adds the 20 written since (pages
    163-182): 54 pending, under the threshold: the completion sends them (the downtime)."""
    path = tmp_path / "sweep.trace.parquet"
    _sweep_log(path)
    rate = 1024 * 4104 / 0.51
    with open_trace(path) as r:
        res = simulate(r, parse_spec("none"), pm, Link(rate, downtime_limit_s=0.05, cpu_time=False), link_label="x")
    s = res["simulation"]
    assert s["status"] == "completed" and s["converged"] and s["downtime-ok"]
    page = 4104 / rate
    t1 = 1024 * page
    n2 = _written(t1)
    t2 = t1 + 129 * page
    n3 = 34 + _written(t2) - n2
    assert (n2, n3) == (163, 54)
    assert [p["pages"] for p in s["pass-log"]] == [1024, 129, n3]
    assert [p["stage"] for p in s["pass-log"]] == ["bulk", "iterate", "complete"]
    assert [p["pending"] for p in s["pass-log"][:2]] == [163 * PS, 54 * PS]
    assert s["passes"] == 2 and res["ram"]["dirty-sync-count"] == 4  # setup, 0.51 s, 0.574 s, completion
    assert res["ram"]["normal"] == 1024 + 129 + n3
    sections = 8 + 1  # the bulk's calls, pass 2's
    assert res["ram"]["transferred"] == pytest.approx((1024 + 129 + n3) * 4104 + 8 * sections, abs=64)
    assert s["downtime"] == pytest.approx(n3 * page * 1000, rel=1e-3)
    assert s["total-time"] == pytest.approx((1024 + 129 + n3) * page * 1000, rel=1e-3)
    assert s["setup-time"] == 0 and s["cpu-throttle-percentage"] == 0 and res["ram"]["postcopy-requests"] == 0
    # at a 100 ms limit (threshold ~201 pages) the sync comes after 7 calls (121 left, 903 sent): 143
    # written; the cursor goes on to the end of RAM and wraps: 129 pages; 135 left < 201: a sync
    # adds 21 (pages 143-163): 156 pending < 201: the completion
    with open_trace(path) as r:
        res = simulate(r, parse_spec("none"), pm, Link(rate, downtime_limit_s=0.1, cpu_time=False))
    assert [p["pages"] for p in res["simulation"]["pass-log"]] == [903, 129, 156]
    assert _written(903 * page) == 143 and _written(1032 * page) == 164


def test_simulate_above_link_speed_never_converges_but_xbzrle_does(tmp_path, pm):
    """A 128-page working set rewritten by sparse writes at 1,280 pages/s on a link of 500 pages/s:
    with config none every pass after the bulk one (2 s) is the whole working set (0.256 s), over
    the threshold (5 pages), for ever. XBZRLE (the chain sees the sync count QEMU would): pass 2
    fills its cache (128 misses, raw pages), pass 3 sends ~40-byte deltas in 3.2 ms, during which the
    guest writes 4 pages: under the threshold: it converges, with a downtime well under a millisecond."""
    path = tmp_path / "hot.trace.parquet"
    _sweep_log(path, dirty_fraction=32 / 1024, patterns="sparse", working_set=0.125)
    link = Link(500 * 4104, downtime_limit_s=0.01, cpu_time=False)
    with open_trace(path) as r:
        res = simulate(r, parse_spec("none"), pm, link, max_passes=6)
    s = res["simulation"]
    assert s["status"] == "active" and not s["converged"] and s["downtime"] is None and not s["downtime-ok"]
    assert [p["pages"] for p in s["pass-log"]] == [1024] + [128] * 5
    # the sync that found a 7th pass needed is counted: setup + 6
    assert res["ram"]["remaining"] == 128 * PS and res["ram"]["dirty-sync-count"] == 7
    with open_trace(path) as r:
        xb = simulate(r, parse_spec("xbzrle"), pm, link, max_passes=6)
    x = xb["simulation"]
    assert x["converged"] and x["downtime-ok"] and x["downtime"] < 1.0
    assert [p["pages"] for p in x["pass-log"]] == [1024, 128, 128, 4]
    assert [p["pending"] for p in x["pass-log"][:3]] == [128 * PS, 128 * PS, 4 * PS]
    cache = xb["xbzrle-cache"]
    assert cache["cache-miss"] == 128 and cache["pages"] == 128 + 4  # pass 3 and the completion hit
    assert xb["ram"]["dirty-sync-count"] == 5  # setup, passes 2 and 3, pending + complete syncs


def _expected_ram(path, guest_s):
    """The guest's RAM at ``guest_s`` (image + every write taken in by then), per global page."""
    with open_trace(path) as r:
        log = DirtyLog(r)
        log.advance(guest_s)
        return np.concatenate([b.pages for b in log.batches(np.arange(log.total_pages))])


@pytest.mark.parametrize("spec, bw", [("none", 1 << 20), ("xbzrle", 1 << 20), ("xbzrle", None), ("compress", 1 << 20),
                                      ("xbzrle,compress", 4 << 20),
                                      ("xbzrle,auto-converge", 256 << 10)])
def test_destination_gets_the_guests_ram_at_the_stop(tmp_path, pm, spec, bw):
    """The stream the simulated migration writes, loaded by the receiver (XBZRLE records decoded
    against the destination's copy), leaves the guest's RAM as it was when the guest stopped: every
    page was sent in QEMU's order with its latest contents, and the XBZRLE cache saw the pages in the
    order the destination decodes them."""
    from pagecodec.harness.precopy import run_precopy
    from pagecodec.harness.simulate import ChainDriver, convergence
    from pagecodec.chain.receiver import Receiver
    from pagecodec.wire.reader import StreamReader
    from pagecodec.wire.writer import MemorySink

    path = tmp_path / "sweep.trace.parquet"
    _sweep_log(path, patterns="sparse", dirty_fraction=4 / 1024, working_set=0.25)
    sink = MemorySink()
    cfg = parse_spec(spec)
    with open_trace(path) as r:
        d = ChainDriver(r, cfg, pm, sink=sink)
        res = run_precopy(d, Link(20e6 / 8, downtime_limit_s=0.3, max_bandwidth=bw, cpu_time=False),
                          convergence(cfg), max_passes=200)
        stop_guest_s = d.log.clock
        d.sender.finish()
    assert res.converged
    rc = Receiver(PS, pm, cfg)
    rc.load_stream(StreamReader(sink.getvalue()))
    got = np.concatenate([rc.block(b.name).reshape(-1, PS) for b in d.log.meta.blocks])
    want = _expected_ram(path, stop_guest_s)
    bad = np.flatnonzero((got != want).any(axis=1))
    assert not len(bad), f"{len(bad)} pages differ, first {bad[:5]}"


def test_huge_host_pages_rate_limit_inside_and_no_sync_until_done(tmp_path, pm):
    """pc.ram backed by 2 MiB host pages (512 target pages each), a budget of 9 pages a window.
    The rate limit acts after each target page inside a host page (ram_save_host_page's
    migration_rate_limit): a window overshoots by a target page, not by a host page — 10 pages, plus
    the page sent right after the thread wakes, which the next migration_rate_limit counts in the
    window it closes (11; 4 KiB pages: 10). But a host page is finished before ram_save_iterate
    returns, so no sync comes in its middle: with a threshold of ~1,000 pages, 4 KiB pages sync after
    3 windows (29 pages: the first record carries the block's name) and complete with the other 995;
    2 MiB pages finish host page 0 first (46 windows: 10 pages in the first, whose first record carries
    the block's name, then 11 each), then the 50 ms check ends the call, the
    sync finds 512 pages under the threshold, and the completion sends host page 1."""
    def make(path, host):
        meta = TraceMeta(PS, (RAMBlockInfo("pc.ram", 1024 * PS, page_size=host),), Provenance("test", "pytest", "x"))
        rng = np.random.default_rng(1)
        with TraceWriter(path, meta) as w:
            w.write(0, 0, np.arange(1024, dtype=np.int64) * PS, rng.integers(1, 255, (1024, PS), dtype=np.uint8))
            w.timestamp_round(0, 0.0, "image")
            w.write(1, 0, np.array([0]), np.full((1, PS), 3, np.uint8))
            w.timestamp_round(1, 100.0, "slice")
    link = Link(1e9, downtime_limit_s=10.0, max_bandwidth=9 * 4104 * 10 + 1, cpu_time=False)
    runs = {}
    for host in (PS, 2 << 20):
        path = tmp_path / f"h{host}.trace.parquet"
        make(path, host)
        with open_trace(path) as r:
            runs[host] = simulate(r, parse_spec("none"), pm, link)["simulation"]
    small, huge = runs[PS], runs[2 << 20]
    assert small["pass-log"][0]["bandwidth"] == pytest.approx((10 * 4104 + 18) / 0.1, rel=1e-3)
    assert huge["pass-log"][0]["bandwidth"] == pytest.approx((11 * 4104 + 18) / 0.1, rel=0.01)
    assert [p["pages"] for p in small["pass-log"]] == [29, 995]
    assert [p["pages"] for p in huge["pass-log"]] == [512, 512]
    assert [p["stage"] for p in huge["pass-log"]] == ["bulk", "complete"]
    assert huge["pass-log"][0]["windows"] == 46


def test_postcopy_requests_on_a_hand_made_log(tmp_path, pm):
    """postcopy-ram, switched at once (--postcopy-after 0): the guest stops (a sync), the discard
    ranges go out, then it runs on the destination while the source sends RAM from its start, 64
    host pages a step (0.64 s at 100 pages/s). By the end of the first step the guest has written
    pages 10, 300, 500 and 501 of pc.ram: page 10 has arrived, the other three have not: three page
    requests, served first in the next step; each costs the vCPU a round trip and the page's
    transfer. Later writes (the log repeats) touch pages already there: no more requests."""
    path = tmp_path / "pc.trace.parquet"
    _log(path, [[(0, 500, 1), (0, 501, 2)], [(0, 300, 3), (0, 10, 4)]], [0.0, 0.1, 0.2],
         blocks=(("pc.ram", 512), ("pc.bios", 2)))
    link = Link(100 * 4104, downtime_limit_s=0.3, cpu_time=False, rtt_s=0.001)
    with open_trace(path) as r:
        res = simulate(r, parse_spec("postcopy-ram"), pm, link, postcopy_after=0)
    s, ram = res["simulation"], res["ram"]
    assert s["status"] == "completed" and s["postcopy"]
    assert ram["postcopy-requests"] == 3 == s["postcopy-requests"]
    assert s["postcopy-wait"] == pytest.approx(3 * (0.001 + 4104 / (100 * 4104)) * 1000, rel=1e-6)
    assert ram["dirty-sync-count"] == 2  # setup, postcopy_start's
    # raw records: pc.ram's pages 255 and 511 are zero (the image's byte wraps): ZERO records
    assert ram["normal"] == 512 and ram["duplicate"] == 2
    assert ram["postcopy-bytes"] == 512 * 4104 + 2 * 9 + 1 + len("pc.ram") + 1 + len("pc.bios")
    assert ram["transferred"] == ram["postcopy-bytes"]
    assert [p["stage"] for p in s["pass-log"]] == ["postcopy"]
    # the downtime is the switch: two discard ranges (one per block) and the block names
    assert s["downtime"] < 1.0
    assert s["total-time"] == pytest.approx(514 * 4104 / (100 * 4104) * 1000, rel=0.01)
    with pytest.raises(ConfigError, match="postcopy-ram"):
        with open_trace(path) as r:
            simulate(r, parse_spec("none"), pm, link, postcopy_after=0)
    with pytest.raises(ConfigError, match="does not model compress threads in postcopy"):
        with open_trace(path) as r:
            simulate(r, parse_spec("postcopy-ram,compress"), pm, link, postcopy_after=0)


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


def test_cli_simulate_convergence_options(tmp_path, capsys):
    """--postcopy-after applies to the configs with postcopy-ram (QEMU cannot switch without it);
    auto-converge's throttle and the postcopy requests are columns; --device-state adds to the
    downtime."""
    path = tmp_path / "hot.trace.parquet"
    _sweep_log(path, rounds=41, dirty_fraction=32 / 1024, patterns="sparse", working_set=0.125)
    out = tmp_path / "sim.json"
    res = CliRunner().invoke(cli, ["simulate", str(path), "--config", "none,auto-converge", "--config", "postcopy-ram",
                                   "--link", "10M", "--max-bandwidth", "256K", "--downtime-limit", "10ms",
                                   "--no-cpu-time", "--max-passes", "12", "--postcopy-after", "2", "--rtt", "1ms",
                                   "--device-state", "64K", "--json", str(out)])
    assert res.exit_code == 0, res.output
    d = json.loads(out.read_text())
    ac, pc = d["runs"]
    assert ac["simulation"]["cpu-throttle-percentage"] >= 20 and ac["simulation"]["throttle-steps"]
    assert pc["simulation"]["postcopy"] and pc["simulation"]["link"]["postcopy-after"] == 2
    assert ac["simulation"]["link"]["postcopy-after"] is None
    assert pc["simulation"]["downtime"] >= 64 * 1024 / (10e6 / 8) * 1000
    assert pc["simulation"]["link"]["rtt"] == 1.0
    assert "cpu-throttle-percentage" in res.output and "postcopy-requests" in res.output
    with pytest.raises(SystemExit) as e:
        main(["simulate", str(path), "--link", "1G", "--postcopy-after", "1"])
    assert e.value.code == 2 and "postcopy-ram" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["none", "xbzrle", "compress"])
def test_stream_equals_a_replay_of_the_composed_passes(tmp_path, pm, spec):
    """A link so fast that the bulk pass ends inside the first 100 ms window: threshold-size is still
    0, so the migration completes right after it (QEMU does the same). The stream simulate wrote is
    byte for byte the stream ``replay`` writes for a trace of the two passes it composed (the image,
    then the pages the guest wrote by the stop with their contents then): the same chain, the same
    syncs, the same order."""
    from pagecodec.harness.precopy import run_precopy
    from pagecodec.harness.replay import replay
    from pagecodec.harness.simulate import ChainDriver
    from pagecodec.wire.writer import MemorySink

    path = tmp_path / "sweep.trace.parquet"
    _sweep_log(path, patterns="sparse", dirty_fraction=64 / 1024)
    cfg = parse_spec(spec)
    sink = MemorySink()
    sections = []
    with open_trace(path) as r:
        d = ChainDriver(r, cfg, pm, sink=sink)
        save_pages = d.sender.save_pages

        def recording(sec, batches, round_no=None):
            batches = list(batches)
            if not sections or sections[-1][0] is not sec:
                sections.append((sec, []))
            sections[-1][1].extend((b.round, b.block.copy(), b.offset.copy(), b.pages.copy()) for b in batches)
            save_pages(sec, batches, round_no)

        d.sender.save_pages = recording
        res = run_precopy(d, Link(4.2e8, downtime_limit_s=0.3, cpu_time=False))  # the bulk pass in 10 ms
        d.sender.finish()
        meta = r.meta
    assert res.converged and [p.stage for p in res.passes] == ["bulk", "complete"]
    assert len(sections) == 2 and res.passes[1].pages > 0
    composed = tmp_path / "composed.trace.parquet"
    with TraceWriter(composed, meta) as w:
        for rnd, (_sec, parts) in enumerate(sections):
            assert {p[0] for p in parts} == {rnd}
            for _r, block, offset, pages in parts:
                for b in np.unique(block):
                    sel = block == b
                    w.write(rnd, int(b), offset[sel], pages[sel])
    out = tmp_path / "replay.mig"
    with open_trace(composed) as r:
        replay(r, cfg, pm, qemu_stream=out)
    assert out.read_bytes() == sink.getvalue()


def test_simulate_tables_do_not_import_matplotlib():
    """Only --plots needs matplotlib (0.4 s of start-up): the tables and the model must not import it."""
    import subprocess
    import sys

    code = ("import sys, pagecodec.cli, pagecodec.harness.simulate, pagecodec.report.simulation; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
