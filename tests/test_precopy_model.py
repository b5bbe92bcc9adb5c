"""The migration thread's arithmetic on hand-made drivers whose answers are known in closed form.

A fake driver stands in for the chain and the dirty log: RAM of ``ram`` pages, every page costs
exactly ``PS`` bytes on the wire and in QEMU's count, sections cost nothing; the guest writes
``rate`` pages per second of its own time, sweeping a working set of ``ws`` pages (page k mod ws for
its k-th write). The driver keeps QEMU's bitmap and page search (cursor, wrap) itself, so every
send order and sync can be checked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pagecodec.harness.precopy import (BUFFER_DELAY_S, Convergence, Link, LogExhausted, PassCost, _Thread,
                                       run_precopy, send_duration)

PS = 4096


class FakeDriver:
    """QEMU's bitmap and search over ``ram`` pages; the guest sweeps ``ws`` pages at ``rate`` pages/s."""

    page_size = PS

    def __init__(self, ram: int, rate: float, ws: int | None = None, log_s: float = math.inf,
                 cpu_s_per_page: float = 0.0, threads: int = 1, parallel: bool = False) -> None:
        self.ram, self.rate, self.ws, self.log_s = ram, rate, ws or ram, log_s
        self.cpu, self.threads, self.parallel = cpu_s_per_page, threads, parallel
        self.bitmap = np.ones(ram, dtype=bool)
        self.written = np.zeros(ram, dtype=bool)
        self.writes = 0  # pages the guest has written so far
        self.cursor = 0
        self.syncs = 0
        self.sent: list[int] = []  # pages in the order sent
        self.sections: list[bool] = []  # last_stage of each section
        self.wraps = 0

    @property
    def dirty_pages(self) -> int:
        return int(self.bitmap.sum())

    def advance(self, guest_s: float) -> None:
        if guest_s > self.log_s:
            raise LogExhausted("log ended")
        n = math.floor(self.rate * guest_s + 1e-9)
        for k in range(self.writes, n):
            self.written[k % self.ws] = True
        self.writes = max(self.writes, n)

    def sync(self) -> int:
        self.syncs += 1
        new = int((self.written & ~self.bitmap).sum())
        self.bitmap |= self.written
        self.written[:] = False
        return new

    def begin_section(self, last_stage: bool) -> None:
        self.sections.append(last_stage)

    def end_section(self, last_stage: bool) -> PassCost:
        return PassCost(0, 0, 0)

    def send(self, budget, max_host_pages, last_stage):
        sent = []
        done = False
        while len(sent) < max_host_pages and (budget is None or len(sent) * PS <= budget):
            ahead = np.flatnonzero(self.bitmap[self.cursor :])
            if not len(ahead):
                self.cursor = 0
                self.wraps += 1
                if not self.bitmap.any():
                    done = True
                    break
                continue
            p = self.cursor + int(ahead[0])
            self.bitmap[p] = False
            self.cursor = p + 1
            sent.append(p)
        self.sent += sent
        n = len(sent)
        cpu = n * self.cpu
        return PassCost(n, n * PS, n * PS, 0.0 if self.parallel else cpu, cpu if self.parallel else 0.0, self.threads,
                        host_pages=n, done=done)


FAST = 1e12  # a link so fast that sending takes no time to speak of


def test_window_quantisation():
    """max-bandwidth B with B/10 = 9 pages: each window sends while its count is ≤ 9 pages, so 10
    pages (the budget and the page that crosses it), then the thread sleeps to the window's end. A
    pass of N pages needs ceil(N/10) windows of sending; when the last of them used its budget up,
    ram_save_iterate stopped for the rate limit before its search found nothing left, so the pass
    ends in the next window: floor(N/10) whole windows, time floor(N/10) × 100 ms."""
    d = FakeDriver(ram=100, rate=0)
    res = run_precopy(d, Link(FAST, downtime_limit_s=0.001, max_bandwidth=90 * PS))
    assert res.converged
    bulk = res.passes[0]
    assert bulk.pages == 100 and bulk.windows == 10  # counters updated at 0.1, 0.2, … 1.0 s
    assert res.bandwidth == pytest.approx(100 * PS, rel=1e-6)  # 10 pages per 0.1 s
    assert res.total_time_s == pytest.approx(1.0, abs=1e-6)
    assert d.sent == list(range(100)) and res.downtime_s == pytest.approx(0, abs=1e-6)
    assert res.dirty_sync_count == 3  # setup, ram_save_pending's, ram_save_complete's
    assert [p.stage for p in res.passes] == ["bulk", "complete"]  # the pending sync found nothing: completion
    for pages in (25, 30, 31, 99):
        r = run_precopy(FakeDriver(ram=pages, rate=0), Link(FAST, downtime_limit_s=0.001, max_bandwidth=90 * PS))
        assert r.passes[0].windows == pages // 10
        assert r.total_time_s == pytest.approx(pages // 10 * BUFFER_DELAY_S, abs=1e-6)
        assert sum(p.pages for p in r.passes) == pages


def test_mid_pass_sync_carries_the_unsent_tail():
    """10 pages per window (100 pages/s measured), downtime-limit 0.15 s: threshold 15 pages. After
    nine windows (0.9 s) 10 pages are left, < 15: ram_save_pending syncs in the middle of the pass.
    The guest (20 pages/s from page 0) has written pages 0-17, all sent already: 18 newly dirty; the
    10 unsent stay dirty: 28 pending. The cursor goes on: pages 90-99 first, then the search wraps to
    0-9; at 1.1 s 8 are left (< 15): a sync adds pages 18-21; 12 pages < 15: completion."""
    d = FakeDriver(ram=100, rate=20, ws=100)
    res = run_precopy(d, Link(FAST, downtime_limit_s=0.15, max_bandwidth=90 * PS))
    assert res.converged
    assert d.sent[:90] == list(range(90))
    assert d.sent[90:100] == list(range(90, 100))  # the unsent tail, ahead of the cursor, after the sync
    assert d.sent[100:110] == list(range(10))  # after the wrap
    assert d.sent[110:] == list(range(10, 22))  # the completion
    assert [p.pages for p in res.passes] == [90, 20, 12]
    assert [p.stage for p in res.passes] == ["bulk", "iterate", "complete"]
    assert res.passes[0].pending_bytes == 28 * PS
    assert [p.start_s for p in res.passes] == pytest.approx([0.0, 0.9, 1.1], abs=1e-6)
    assert res.dirty_sync_count == 4 and d.syncs == 4
    assert res.total_time_s == pytest.approx(1.1, abs=1e-6) and res.downtime_s == pytest.approx(0, abs=1e-6)


def test_below_link_speed_converges():
    """No max-bandwidth: the link decides; the bandwidth QEMU measures is the link's, so the
    threshold is link × downtime-limit and the last stage, sent at the link, fits the limit."""
    link_pages = 10_000
    for rate in (1_000, 5_000, 9_000):
        d = FakeDriver(ram=20_000, rate=rate, ws=20_000)
        res = run_precopy(d, Link(link_pages * PS, downtime_limit_s=0.01), max_passes=200)
        assert res.converged, rate
        assert res.bandwidth == pytest.approx(link_pages * PS, rel=1e-6)
        assert res.threshold_bytes == pytest.approx(link_pages * PS * 0.01, rel=1e-6)
        assert res.downtime_s <= 0.01
        assert res.total_time_s >= 20_000 / link_pages  # at least the bulk pass


def test_above_link_speed_never_converges():
    """The guest writes twice as fast as the link sends, over a working set far above the threshold:
    every sync finds the working set dirty again; still active after max_passes."""
    d = FakeDriver(ram=2_000, rate=2_000, ws=2_000)
    res = run_precopy(d, Link(1_000 * PS, downtime_limit_s=0.01), max_passes=5)
    assert not res.converged and res.status == "active" and res.downtime_s is None
    assert res.precopy_passes == 5 and len(res.passes) == 5
    assert all(not last for last in d.sections)  # no completion
    assert res.remaining_bytes >= 1_900 * PS


def test_a_small_working_set_converges_above_link_speed():
    """The rate alone does not decide: a working set under the threshold is sent in the downtime."""
    d = FakeDriver(ram=2_000, rate=20_000, ws=50)
    res = run_precopy(d, Link(1_000 * PS, downtime_limit_s=0.1))
    assert res.converged and res.downtime_s <= 0.1 + 1e-9  # remaining < threshold: 50 unsent + 50 rewritten
    assert res.passes[-1].pages == 100


def test_threshold_is_zero_until_the_first_window_is_measured():
    """A bulk pass done within the first 100 ms: threshold-size is still 0, so nothing pending
    means completion right away, with whatever the guest wrote meanwhile sent in the downtime."""
    d = FakeDriver(ram=100, rate=100, ws=100)
    res = run_precopy(d, Link(10_000 * PS, downtime_limit_s=0.001))
    assert res.converged and res.passes[0].windows == 0 and res.threshold_bytes == 0
    assert [p.pages for p in res.passes] == [100, 1]  # 0.01 s of guest: one page


def test_max_wait_ends_an_iteration_after_50ms():
    """ram_save_iterate checks its 50 ms after host pages 1, 65, 129, …: at 1 ms a page, the first
    check past 50 ms is after page 65; a section per call."""
    d = FakeDriver(ram=200, rate=0)
    run_precopy(d, Link(1_000 * PS, downtime_limit_s=0.001))
    # sections: 65 pages (check at 65 pages: 65 ms > 50), 65, 65, 5, then the completion
    assert d.sections == [False, False, False, False, True]


def test_cpu_bound_encoder():
    """0.5 s of the migration thread plus 2 s of 8 worker threads, on a 1 s link: on 2 CPUs the CPU
    decides (0.5 + 2/2), on 8 CPUs the link (0.5 + 2/8 < 1)."""
    L = 1000 * PS
    cost = PassCost(1000, 1000 * PS, 1000 * PS, 0.5, 2.0, threads=8)
    assert send_duration(cost, Link(L, cpus=2)) == (pytest.approx(1.5), "cpu")
    assert send_duration(cost, Link(L, cpus=8)) == (pytest.approx(1.0), "link")
    assert send_duration(cost, Link(L)) == (pytest.approx(1.0), "link")  # a CPU per thread
    assert send_duration(cost, Link(L, cpus=1, cpu_time=False)) == (pytest.approx(1.0), "link")
    d = FakeDriver(ram=1000, rate=0, cpu_s_per_page=0.002)
    res = run_precopy(d, Link(L, downtime_limit_s=0.3))
    assert res.passes[0].bound == "cpu" and res.total_time_s == pytest.approx(2.0, rel=1e-6)
    assert res.bandwidth == pytest.approx(500 * PS, rel=0.02)  # what the CPU lets through


def test_device_state_adds_to_the_downtime():
    d = FakeDriver(ram=100, rate=0)
    res = run_precopy(d, Link(1_000 * PS, device_state_bytes=50 * PS))
    assert res.downtime_s == pytest.approx(0.05)


def test_log_exhausted_is_reported_not_converged():
    d = FakeDriver(ram=2000, rate=4000, log_s=2.5)
    res = run_precopy(d, Link(1000 * PS))
    assert res.log_ended and not res.converged


# -- auto-converge ------------------------------------------------------------------------------------

class _Stub:
    page_size = PS
    dirty_pages = 0

    def __init__(self) -> None:
        self.new = 0

    def sync(self) -> int:
        return self.new


def _thread(**conv) -> tuple[_Thread, _Stub]:
    stub = _Stub()
    th = _Thread(stub, Link(FAST), Convergence(auto_converge=True, **conv), 50)  # type: ignore[arg-type]
    th.new_pass("bulk")
    return th, stub


def _period(th: _Thread, stub: _Stub, seconds: float, transferred: int, dirtied: int) -> None:
    """A rate period: ``transferred`` bytes sent, ``dirtied`` pages newly dirty at its closing sync."""
    th.t += seconds
    th.transferred += transferred
    stub.new = dirtied
    th.sync()


def test_auto_converge_throttles_on_the_second_high_period():
    """Dirtying > 50 % of what was sent in a > 1 s period counts once; the second such period starts
    the throttle at cpu-throttle-initial, every second one after adds cpu-throttle-increment, up to
    max-cpu-throttle (and cpu_throttle_set's 99). A low period does not reset the count."""
    th, stub = _thread()
    th.sync()  # the setup sync opens the first period at t = 0
    _period(th, stub, 1.5, 100 * PS, 51)  # 51 > 50 pages: high (1)
    assert th.throttle == 0
    _period(th, stub, 1.5, 100 * PS, 10)  # low: the count stays 1
    _period(th, stub, 1.5, 100 * PS, 60)  # high (2): throttle
    assert th.throttle == 20
    seen = []
    for _ in range(20):
        _period(th, stub, 1.5, 100 * PS, 90)
        seen.append(th.throttle)
    assert seen[:4] == [20, 30, 30, 40]
    assert max(seen) == 99 and seen[-1] == 99  # 90 + 10 capped at max-cpu-throttle 99
    th, stub = _thread(max_cpu_throttle=45)
    th.sync()
    for _ in range(10):
        _period(th, stub, 1.5, 100 * PS, 90)
    assert th.throttle == 45


def test_auto_converge_checks_only_periods_over_a_second():
    """migration_bitmap_sync checks (and starts a new rate period) only when > 1 s passed since the
    last: syncs closer together accumulate the period's dirtied pages and sent bytes."""
    th, stub = _thread()
    th.sync()
    for _ in range(8):
        _period(th, stub, 0.2, 100 * PS, 10)  # each period 20 % … but they add up
    # 0.2 … 1.0 s: not > 1 s; the sync at 1.2 s closes a period of 60 pages dirtied / 600 pages sent
    # (low); the syncs at 1.4 and 1.6 s are in the next period
    assert th.high_cnt == 0 and th.time_last_sync == pytest.approx(1.2)
    assert th.dirty_period == 20 and th.bytes_xfer_prev == 600 * PS
    assert th.dirty_pages_rate == pytest.approx(60 / 1.2)


def test_auto_converge_tailslow():
    """cpu-throttle-tailslow: the step is what would bring the dirty rate to the threshold, if
    smaller than the increment: at 50 %, dirtying 1.1 × the threshold, cpu_ideal = int(50 / 1.1) = 45."""
    th, _ = _thread(cpu_throttle_tailslow=True)
    th.throttle = 50
    th.throttle_down(dirty=110, threshold=100)
    assert th.throttle == 55
    th.throttle_down(dirty=400, threshold=100)  # cpu_now 45, ideal 11: 34 > 10: the increment
    assert th.throttle == 65


def test_auto_converge_slows_the_guest_until_it_converges():
    """A guest dirtying 95 % of the bandwidth over a large working set does not converge without
    auto-converge; with it, the guest's time runs at (1 − throttle) and the dirty set shrinks."""
    link = Link(FAST, downtime_limit_s=0.05, max_bandwidth=99 * PS)  # 10 pages a window, 100 pages/s
    plain = run_precopy(FakeDriver(ram=400, rate=95, ws=400), link, max_passes=40)
    assert not plain.converged and plain.cpu_throttle == 0
    d = FakeDriver(ram=400, rate=95, ws=400)
    res = run_precopy(d, link, Convergence(auto_converge=True), max_passes=40)
    assert res.converged and res.cpu_throttle >= 20
    steps = [p for _, p in res.throttle_steps]
    assert steps == sorted(steps) and steps[0] == 20 and all(b - a == 10 for a, b in zip(steps, steps[1:]))
    # the guest ran (1 − p) of the wall time: fewer writes than an unthrottled guest in the same time
    assert d.writes < 95 * res.total_time_s


@pytest.mark.parametrize("kw", [dict(link_bytes_per_s=0), dict(link_bytes_per_s=1e6, downtime_limit_s=-1),
                                dict(link_bytes_per_s=1e6, max_bandwidth=0), dict(link_bytes_per_s=1e6, cpus=0),
                                dict(link_bytes_per_s=1e6, rtt_s=-1)])
def test_bad_link(kw):
    with pytest.raises(ValueError):
        Link(**kw)


def test_postcopy_needs_the_capability():
    with pytest.raises(ValueError, match="postcopy-ram"):
        Convergence(postcopy_after=1)
