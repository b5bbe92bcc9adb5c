"""The precopy model's arithmetic on hand-made dirty logs whose answers are known in closed form.

A fake driver stands in for the chain: every page costs exactly ``PS`` bytes on the wire and in
QEMU's count, the guest dirties ``rate`` distinct pages per second (up to a working set), so a pass of
n pages takes n / L seconds (L: link in pages/s) and leaves min(W, rate · n / L) pages for the next.
"""

from __future__ import annotations

import math

import pytest

from pagecodec.harness.precopy import Link, LogExhausted, PassCost, pass_duration, run_precopy

PS = 4096


class FakeDriver:
    """RAM of ``ram`` pages; the guest dirties ``rate`` pages/s within a working set of ``ws`` pages."""

    page_size = PS

    def __init__(self, ram: int, rate: float, ws: int, log_s: float = math.inf, cpu_s_per_page: float = 0.0,
                 threads: int = 1, parallel: bool = False) -> None:
        self.ram, self.rate, self.ws, self.log_s = ram, rate, ws, log_s
        self.cpu, self.threads, self.parallel = cpu_s_per_page, threads, parallel
        self.pending = 0
        self.last = 0.0
        self.syncs = 1  # ram_save_setup's
        self.sent: list[tuple[int, bool]] = []

    def send(self, round_no: int, last_stage: bool) -> PassCost:
        if round_no:
            self.syncs += 1
        n = self.ram if round_no == 0 else self.pending
        self.pending = 0
        self.sent.append((n, last_stage))
        cpu = n * self.cpu
        return PassCost(n, n * PS, n * PS, 0.0 if self.parallel else cpu, cpu if self.parallel else 0.0, self.threads)

    def advance(self, until_s: float) -> int:
        if until_s > self.log_s:
            raise LogExhausted("log ended")
        self.pending = min(self.ws, self.pending + round(self.rate * (until_s - self.last)))
        self.last = until_s
        return self.pending

    def sync(self) -> None:
        self.syncs += 1


L = 1000 * PS  # link: 1000 pages per second


def test_below_link_speed_converges_in_one_pass():
    """1000 pages at 1000 pages/s: 1 s; 100 pages dirtied at 100/s; threshold 300 pages (0.3 s × link)."""
    d = FakeDriver(ram=1000, rate=100, ws=10**9)
    res = run_precopy(d, Link(L, downtime_limit_s=0.3))
    assert res.converged and res.status == "completed"
    assert [p.pages for p in res.passes] == [1000, 100]
    assert [p.stage for p in res.passes] == ["bulk", "complete"]
    assert res.passes[0].threshold_bytes == pytest.approx(300 * PS)
    assert res.downtime_s == pytest.approx(0.1) and res.total_time_s == pytest.approx(1.1)
    assert d.syncs == 3  # setup, ram_save_pending's, ram_save_complete's
    assert d.sent[-1] == (100, True)


def test_below_link_speed_geometric_passes():
    """Ratio ρ = rate / link = 0.1: passes of 1000, 100, 10 pages; the 10-page pass is under the
    50-page threshold (0.05 s), so it is the completion. total = (1000 + 100 + 10) / 1000 s."""
    d = FakeDriver(ram=1000, rate=100, ws=10**9)
    res = run_precopy(d, Link(L, downtime_limit_s=0.05))
    assert [p.pages for p in res.passes] == [1000, 100, 10]
    assert res.precopy_passes == 2 and res.converged
    assert res.total_time_s == pytest.approx(1.11) and res.downtime_s == pytest.approx(0.01)
    assert [p.start_s for p in res.passes] == pytest.approx([0.0, 1.0, 1.1])
    assert d.syncs == 4


@pytest.mark.parametrize("rho, limit", [(0.5, 0.01), (0.25, 0.002), (0.75, 0.6)])
def test_below_link_speed_closed_form(rho, limit):
    """Pass k sends N·ρ^k pages; the first k with N·ρ^(k+1) < L·D completes; time = N/L · Σ ρ^i."""
    n, link_pages = 4096, 1000
    d = FakeDriver(ram=n, rate=rho * link_pages, ws=10**9)
    res = run_precopy(d, Link(link_pages * PS, downtime_limit_s=limit), max_passes=1000)
    sizes = [n]
    while not sizes[-1] * rho < limit * link_pages:  # (the fake rounds pages; ρ·n stays whole here)
        sizes.append(round(sizes[-1] * rho))
    sizes.append(round(sizes[-1] * rho))
    got = [p.pages for p in res.passes]
    assert got == sizes
    assert res.total_time_s == pytest.approx(sum(sizes) / link_pages)
    assert res.downtime_s == pytest.approx(sizes[-1] / link_pages)
    assert res.downtime_s <= limit


def test_above_link_speed_never_converges():
    """Dirty rate 2× the link over a large working set: each pass is twice the last until the working
    set caps it, always above the 300-page threshold: still active after max_passes."""
    d = FakeDriver(ram=1000, rate=2000, ws=8000)
    res = run_precopy(d, Link(L, downtime_limit_s=0.3), max_passes=6)
    assert not res.converged and res.status == "active" and res.downtime_s is None
    assert [p.pages for p in res.passes] == [1000, 2000, 4000, 8000, 8000, 8000]
    assert res.total_time_s == pytest.approx(1 + 2 + 4 + 8 + 8 + 8)
    assert res.passes[-1].pending_bytes == 8000 * PS
    assert all(not s[1] for s in d.sent)  # no completion stage


def test_above_link_speed_with_a_small_working_set_converges():
    """The rate alone does not decide: a working set under the threshold is sent in the downtime."""
    d = FakeDriver(ram=1000, rate=2000, ws=200)
    res = run_precopy(d, Link(L, downtime_limit_s=0.3))
    assert res.converged and [p.pages for p in res.passes] == [1000, 200]
    assert res.downtime_s == pytest.approx(0.2) and res.total_time_s == pytest.approx(1.2)


def test_max_bandwidth_limits_iterations_but_not_the_completion():
    """max-bandwidth 500 pages/s: the bulk pass takes 2 s; the threshold follows the measured 500
    pages/s (150 pages); the completion runs at the link (100 pages: 0.1 s)."""
    d = FakeDriver(ram=1000, rate=50, ws=10**9)
    res = run_precopy(d, Link(L, downtime_limit_s=0.3, max_bandwidth=500 * PS))
    assert [p.bound for p in res.passes] == ["max-bandwidth", "link"]
    assert res.passes[0].duration_s == pytest.approx(2.0)
    assert res.passes[0].threshold_bytes == pytest.approx(150 * PS)
    assert res.downtime_s == pytest.approx(0.1) and res.total_time_s == pytest.approx(2.1)


def test_cpu_bound_encoder():
    """0.5 s of the migration thread plus 2 s of 8 worker threads, on a 1 s link: on 2 CPUs the CPU
    decides (0.5 + 2/2), on 8 CPUs the link (0.5 + 2/8 < 1); an encoder at 2 ms per page on its own
    thread makes every pass CPU-bound."""
    cost = PassCost(1000, 1000 * PS, 1000 * PS, 0.5, 2.0, threads=8)
    assert pass_duration(cost, Link(L, cpus=2), rate_limited=True) == (pytest.approx(1.5), "cpu")
    assert pass_duration(cost, Link(L, cpus=8), rate_limited=True) == (pytest.approx(1.0), "link")
    assert pass_duration(cost, Link(L), rate_limited=True) == (pytest.approx(1.0), "link")  # a CPU per thread
    assert pass_duration(cost, Link(L, cpus=1, cpu_time=False), rate_limited=True) == (pytest.approx(1.0), "link")
    d = FakeDriver(ram=1000, rate=100, ws=10**9, cpu_s_per_page=0.002)
    res = run_precopy(d, Link(L, downtime_limit_s=0.3))
    # bulk 2 s, 200 pages dirtied; bandwidth measured 500 pages/s → threshold 150: another pass of
    # 0.4 s → 40 pages < 150: completion in 0.08 s
    assert [p.pages for p in res.passes] == [1000, 200, 40]
    assert res.total_time_s == pytest.approx(2.48) and res.downtime_s == pytest.approx(0.08)


def test_nothing_dirtied_completes_with_an_empty_pass():
    d = FakeDriver(ram=1000, rate=0, ws=0)
    res = run_precopy(d, Link(L))
    assert [p.pages for p in res.passes] == [1000, 0] and res.converged and res.downtime_s == 0


def test_log_exhausted_is_reported_not_converged():
    d = FakeDriver(ram=1000, rate=2000, ws=10**9, log_s=2.5)
    res = run_precopy(d, Link(L))
    assert res.log_ended and not res.converged and res.total_time_s == pytest.approx(3.0)


@pytest.mark.parametrize("kw", [dict(link_bytes_per_s=0), dict(link_bytes_per_s=L, downtime_limit_s=-1),
                                dict(link_bytes_per_s=L, max_bandwidth=0), dict(link_bytes_per_s=L, cpus=0)])
def test_bad_link(kw):
    with pytest.raises(ValueError):
        Link(**kw)
