"""``pagecodec capture process`` writes a timed dirty log (trace v2) that ``trace info`` and ``simulate`` read.

The clock is tested on its own with a fake time source (frozen time excluded, unfrozen time counted,
times strictly increasing); the capture on a child Python process that writes ``N`` new pages every
``P`` seconds of its own, so a slice of ``d`` seconds should hold about ``N · d / P`` pages. The child
is paced by the wall clock, the log by its running time: they differ by the (few ms) frozen time per
round, far inside the tolerances, which are loose because the CI machine is shared (a late tick moves
``N`` pages from one slice to the next; the totals are tighter than single slices).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from pagecodec.cli import cli
from pagecodec.sources import process as proc_mod
from pagecodec.sources.process import capture_process
from pagecodec.sources.process.clock import RunningClock
from pagecodec.trace.format import Provenance, RAMBlockInfo, TraceMeta, TraceWriter, open_trace
from pagecodec.trace.info import format_info, trace_info

PS = 4096
N, P = 16, 0.02         # the child writes N new pages every P s: 800 pages/s
RING = 2048             # pages in its ring (8 MiB): wraps after 2.56 s, longer than any slice here
RATE = N / P

WRITER = textwrap.dedent(
    """
    import ctypes, mmap, struct, sys, time
    PS, N, P, RING = 4096, int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
    buf = mmap.mmap(-1, RING * PS, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for p in range(RING):
        buf[p * PS] = 1
    print(ctypes.addressof(ctypes.c_char.from_buffer(buf)), flush=True)
    sys.stdin.readline()  # go
    k, t = 0, time.monotonic()
    while True:
        for j in range(N):
            struct.pack_into("<Q", buf, (k * N + j) % RING * PS, k + 2)  # a new value: changed and written
        k += 1
        t += P
        d = t - time.monotonic()
        if d > 0:
            time.sleep(d)
    """
)


@pytest.fixture
def writer(tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    p = subprocess.Popen([sys.executable, str(script), str(N), str(P), str(RING)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    addr = int(p.stdout.readline())
    p.stdin.write("go\n")
    p.stdin.flush()
    yield p.pid, addr
    p.kill()
    p.wait()
    p.stdin.close()
    p.stdout.close()


# --------------------------------------------------------------------------------------------------
# The clock
# --------------------------------------------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.t = 100.0

    def now(self) -> float:
        return self.t

    def sleep(self, d: float) -> None:
        assert d > 0
        self.t += d


def test_clock_excludes_the_time_the_process_is_held_stopped():
    ft = FakeTime()
    c = RunningClock(ft.now, ft.sleep)
    assert c.snapshot() == 0.0       # round 0: SIGSTOP at 100.0
    ft.t += 0.3                      # reading round 0 (the process frozen)
    c.resumed()
    c.wait_until(0.5)                # the process runs 0.5 s
    assert ft.t == pytest.approx(100.8)
    assert c.snapshot() == pytest.approx(0.5)
    ft.t += 0.1                      # frozen again
    assert c.running_s == pytest.approx(0.5)  # no time passes for a stopped process
    c.resumed()
    ft.t += 0.7                      # late (a slow progress callback): the log says so
    c.wait_until(1.0)                # already past: no sleep
    assert c.snapshot() == pytest.approx(1.2)
    c.resumed()
    assert c.frozen_s == pytest.approx(0.4)


def test_clock_unfrozen_counts_all_time_and_stays_strictly_increasing():
    ft = FakeTime()
    c = RunningClock(ft.now, ft.sleep)
    assert c.snapshot() == 0.0
    ft.t += 0.3                      # reading round 0 with the process running: it ran
    c.unfrozen()
    assert c.running_s == pytest.approx(0.3)
    c.wait_until(0.5)
    assert c.snapshot() == pytest.approx(0.5) and c.frozen_s == 0.0
    c.unfrozen()
    t = c.snapshot()                 # the clock has not moved: the next float up, never the same time
    assert t > 0.5 and t == np.nextafter(0.5, 1.0)
    with pytest.raises(RuntimeError):
        c.snapshot()                 # a snapshot of a round not resumed is a bug in the caller


# --------------------------------------------------------------------------------------------------
# The capture
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("freeze", [True, False], ids=["frozen", "running"])
def test_capture_of_a_known_write_rate_is_a_timed_dirty_log(tmp_path, writer, freeze):
    pid, addr = writer
    out = tmp_path / "log.trace.parquet"
    interval, rounds = 0.25, 5
    rep = capture_process(pid, out, interval=interval, rounds=rounds, include=[hex(addr)], freeze=freeze)
    assert rep.frozen is freeze and (rep.frozen_s > 0) is freeze
    with open_trace(out) as r:
        assert r.version == 2 and r.timing is not None and r.timing.is_log
        assert r.timing.kind == ("image",) + ("slice",) * (rounds - 1)
        times = r.timing.time_s
        assert list(times) == rep.round_times and times[0] == 0.0
        pages = r.pages_per_round
        assert pages[0] == rep.ram_bytes // PS == RING
        d = trace_info(r, with_sha256=False)
    # each round is taken once the process has run k · interval (never before), a little after at most
    for k in range(1, rounds):
        assert k * interval <= times[k] < k * interval + 0.25, times
    assert rep.elapsed >= times[-1] + rep.frozen_s
    # the slices hold what the child wrote: ~N pages every P s (loose per slice, tighter in total)
    for k in range(1, rounds):
        want = RATE * (times[k] - times[k - 1])
        assert 0.5 * want <= pages[k] <= 1.5 * want + N, (k, pages, times)
    total = sum(pages[1:]) / times[-1]
    assert 0.75 * RATE <= total <= 1.25 * RATE, (total, pages, times)
    assert d["dirty_pages_per_s"] == pytest.approx(total)
    assert [row["kind"] for row in d["per_round"]] == ["image"] + ["slice"] * (rounds - 1)
    # the working set: the ring's pages written so far (no page twice: it has not wrapped)
    assert d["working_set_pages"] == sum(pages[1:])
    text = format_info(d)
    assert "dirty-log over" in text and "dirty pages/s" in text and "pages/s) on average" in text


def test_simulate_runs_on_a_captured_process_log(tmp_path, writer):
    pid, addr = writer
    out = tmp_path / "log.trace.parquet"
    rep = capture_process(pid, out, interval=0.2, rounds=4, include=[hex(addr)])
    runner = CliRunner()
    info = runner.invoke(cli, ["trace", "info", str(out)])
    assert info.exit_code == 0, info.output
    assert "dirty-log over" in info.output and "slice" in info.output and "working set" in info.output
    res = runner.invoke(cli, ["simulate", str(out), "--config", "none", "--config", "xbzrle", "--link", "1G",
                              "--json", str(tmp_path / "sim.json")])
    assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "sim.json").read_text())["runs"]
    for run in runs:
        sim = run["simulation"]
        # 8 MiB at 125 MB/s, then ~3 MiB/s of writes: converges in a few passes
        assert sim["converged"] and sim["passes"] >= 1, sim
        assert run["ram"]["normal"] + run["ram"]["duplicate"] >= rep.ram_bytes // PS, run["ram"]
        assert sim["log"]["duration-s"] == pytest.approx(rep.duration_s)


def test_a_slow_frozen_read_does_not_stretch_the_log(tmp_path, writer, monkeypatch):
    """Reading a round that takes longer than the interval (the process frozen throughout) leaves the
    log's slices ``interval`` long: the frozen time is excluded, and counted in the report."""
    pid, addr = writer
    real = proc_mod.capture._read_diff

    def slow(*a, **k):
        import time

        time.sleep(0.15)
        return real(*a, **k)

    monkeypatch.setattr(proc_mod.capture, "_read_diff", slow)
    rep = capture_process(pid, tmp_path / "t.parquet", interval=0.1, rounds=4, method="diff", include=[hex(addr)])
    times = rep.round_times
    for k in range(1, 4):
        assert k * 0.1 <= times[k] < k * 0.1 + 0.12, times  # not k · 0.25: 0.15 s frozen per round excluded
    assert rep.frozen_s >= 4 * 0.15
    assert rep.elapsed >= times[-1] + rep.frozen_s


def test_untimed_v1_process_trace_still_reads(tmp_path):
    """A capture written before timed logs (v1) reads as untimed passes, and ``trace info`` works on it."""
    path = tmp_path / "v1.trace.parquet"
    meta = TraceMeta(PS, (RAMBlockInfo("heap", 4 * PS),), Provenance("process", "pagecodec capture process", "x"))
    with TraceWriter(path, meta) as w:
        w.write(0, 0, np.arange(4, dtype=np.int64) * PS, np.ones((4, PS), np.uint8))
        w.write(1, 0, np.array([2 * PS]), np.full((1, PS), 7, np.uint8))
    with open_trace(path) as r:
        assert r.version == 1 and r.timing is None and r.pages_per_round == [4, 1]
        d = trace_info(r, with_sha256=False)
    assert not d["timed"] and d["working_set_pages"] == 1 and "dirty pages/s" not in format_info(d)
