"""QEMU 7.2's migration thread, at its own granularity: 100 ms windows, the rate limit, mid-pass syncs.

The arithmetic only: what is sent and what it costs come from a :class:`RamDriver` (the real chain in
:mod:`.simulate`, hand-made numbers in the tests), so the model can be checked in closed form. Times
are seconds of the simulated wall clock from the start of the migration.

What QEMU 7.2 does (migration/migration.c, migration/ram.c, softmmu/cpu-throttle.c), step by step as
the model does it:

- ``migration_thread`` loops: if the window's byte budget is not used up (``qemu_file_rate_limit``:
  ``rate_limit_used > rate_limit_max``, the max being ``max-bandwidth`` × 100 ms), it runs
  ``migration_iteration_run``; then ``migration_rate_limit``, which calls
  ``migration_update_counters`` (only when ≥ ``BUFFER_DELAY`` = 100 ms have passed since the
  window began: bandwidth = bytes counted in the window ÷ its length, ``threshold_size`` = bandwidth ×
  ``downtime-limit``, ``expected-downtime`` = bytes dirty at the last sync ÷ bandwidth, a new
  window with a fresh budget) and, when the budget is used up, sleeps until the window's 100 ms are
  over. While the budget lasts, the thread does not sleep: time moves by what the sending costs.
- ``migration_iteration_run``: ``ram_save_pending``: remaining = ``migration_dirty_pages`` × page
  size (pages, not wire bytes); below ``threshold_size`` it syncs the dirty bitmap first
  (``migration_bitmap_sync_precopy``) and counts again. ``pending && pending >= threshold``: with
  ``migrate-start-postcopy`` requested, ``postcopy_start``; otherwise ``ram_save_iterate``. Else
  ``migration_completion``.
- ``ram_save_iterate`` sends host page after host page from the search's cursor
  (``ram_find_and_save_block``), checking ``qemu_file_rate_limit`` before each; it stops when the
  budget is used up, when no dirty page is left (the search wrapped and found none), or when 50 ms
  (``MAX_WAIT``) have passed — checked after host pages 1, 65, 129, … of the call. Its section ends
  with EOS (8 bytes, counted in ``transferred``). Inside a huge host page ``ram_save_host_page``
  calls ``migration_rate_limit`` after every target page sent, so a window overshoots by one target
  page, not by the host page, and the thread may sleep in the middle of a host page.
- A sync adds the pages written since the last one to the bitmap; pages still unsent stay dirty; the
  cursor keeps its place (:mod:`.dirty_log`). At each sync, when more than a second has passed since
  the last rate period, ``migration_trigger_throttle`` (auto-converge): dirtied bytes in the period
  > ``throttle-trigger-threshold`` % of ``transferred`` in the period, the second time
  (``dirty_rate_high_cnt >= 2``), raises the CPU throttle (``mig_throttle_guest_down``: first
  ``cpu-throttle-initial``, then + ``cpu-throttle-increment``, or with ``cpu-throttle-tailslow`` the
  step that would bring the dirty rate to the threshold if smaller; at most ``max-cpu-throttle``). A
  guest throttled at p % runs (1 − p/100) of the wall time (``cpu_throttle_thread`` sleeps its vCPUs
  for the rest), so its log advances that much slower.
- ``migration_completion``: the guest stops (downtime starts), ``ram_save_complete`` syncs once
  more and sends every dirty page without rate limit (``qemu_file_set_rate_limit(INT64_MAX)``), then
  the device state; downtime ends when it is all out.
- Postcopy (``postcopy-ram``, after ``migrate-start-postcopy``): ``postcopy_start`` stops the guest,
  syncs (``ram_postcopy_send_discard_bitmap``), resets the cursor to the start of RAM, makes partly
  dirty host pages wholly dirty (``postcopy_chunk_hostpages_pass``), sends the discard ranges and the
  device state; the guest then runs on the destination (the downtime ends). The source sends the rest
  in RAM order, raw (no XBZRLE, no multifd in postcopy; QEMU 4.2+ would compress them with compress
  threads, which the model refuses to simulate), with ``max-postcopy-bandwidth`` (default 0: no limit); a page the guest touches before it arrived is requested (``postcopy-requests``) and
  sent first; the vCPU waits a round trip plus the host page's transfer.

``dirty-sync-count`` comes out as QEMU's: 1 at setup (``ram_init_bitmaps``), one per
``ram_save_pending`` sync, one in ``ram_save_complete`` (or one in ``postcopy_start``).

Where the model stands in for QEMU's timing: a send takes its wire bytes ÷ the link or its measured
CPU, whichever is longer (a socket write returns when the link has carried it); the rate limiter
counts ``transferred``, 10 bytes of section framing per ``ram_save_iterate`` and, in the first
window, the stream's header and setup section (``setup_bytes`` of the driver, if it has it) — every
byte QEMU puts into the stream, as its ``rate_limit_used`` and ``migration_total_bytes`` do; the
50 ms check and the bitmap syncs happen exactly where QEMU's loop puts them, on the model's clock.

Not modelled (QEMU does it, the model does not): setup time (``setup-time`` is 0: the bitmap set-up
and the MEM_SIZE list take milliseconds), the destination's speed (pages are placed as fast as they
arrive), timer and wake-up jitter (QEMU's windows are whole milliseconds, a little over 100), the
``migration_update_counters`` calls from inside a huge host page that do not sleep, device state
other than its size (``Link.device_state_bytes``). Auto-converge slows the guest's whole log by
(1 − throttle): right for a guest whose writes are CPU-bound, an assumption for one that waits on
timers or I/O. Postcopy: the guest's reads (the log records writes only, so only a write can
fault), vCPUs besides the one that faults (the guest waits whole), postcopy-preempt, the exact size
of the discard messages (16 bytes a range, 8 a message of 12); the source looks at the guest's new
writes between steps of 64 host pages, so a request waits for the step in progress to end on top of
its round trip and transfer, which is all the model charges the guest (``postcopy-wait``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Link", "Convergence", "PassCost", "PassRecord", "PrecopyResult", "RamDriver", "LogExhausted",
           "send_duration", "run_precopy", "BUFFER_DELAY_S", "MAX_WAIT_S", "CPU_THROTTLE_PCT_MIN",
           "CPU_THROTTLE_PCT_MAX"]

#: QEMU's measurement window for the bandwidth and the rate limit (migration.c BUFFER_DELAY, 100 ms).
BUFFER_DELAY_S = 0.1
#: ram_save_iterate's time budget (ram.c MAX_WAIT, 50 ms), checked every 64 host pages.
MAX_WAIT_S = 0.05
#: cpu_throttle_set's clamp (softmmu/cpu-throttle.c).
CPU_THROTTLE_PCT_MIN = 1
CPU_THROTTLE_PCT_MAX = 99
#: migration_bitmap_sync's rate period: the throttle check and dirty-pages-rate need > 1 s.
SYNC_PERIOD_S = 1.0
#: Bytes a section adds to the stream besides its RAM records: header (type + section id) and footer.
SECTION_FRAMING = 10
#: Host pages asked of the driver at a time in the last stage (no rate limit: only memory bounds it).
COMPLETION_HOST_PAGES = 4096


@dataclass(frozen=True)
class Link:
    """The network and QEMU's limits.

    ``link_bytes_per_s``: what the network carries. ``max_bandwidth``: QEMU's ``max-bandwidth``
    (bytes/s) while the guest runs; None: no rate limit beyond the link. ``downtime_limit_s``: QEMU's
    ``downtime-limit``. ``cpus``: CPUs the encoder's worker threads may use (None: one per thread).
    ``cpu_time``: charge the encoder's measured CPU time (False: encoding is free, the link decides).
    ``device_state_bytes``: the non-RAM device state sent in the downtime. ``rtt_s``: the round trip
    a postcopy page request takes (the request to the source, the page back)."""

    link_bytes_per_s: float
    downtime_limit_s: float = 0.3
    max_bandwidth: float | None = None
    cpus: int | None = None
    cpu_time: bool = True
    device_state_bytes: int = 0
    rtt_s: float = 1e-4

    def __post_init__(self) -> None:
        if not (self.link_bytes_per_s > 0 and math.isfinite(self.link_bytes_per_s)):
            raise ValueError(f"link speed must be > 0 bytes/s, got {self.link_bytes_per_s!r}")
        if not self.downtime_limit_s >= 0:
            raise ValueError(f"downtime limit must be >= 0 s, got {self.downtime_limit_s!r}")
        if self.max_bandwidth is not None and not self.max_bandwidth > 0:
            raise ValueError(f"max-bandwidth must be > 0 bytes/s, got {self.max_bandwidth!r}")
        if self.cpus is not None and self.cpus < 1:
            raise ValueError(f"cpus must be >= 1, got {self.cpus!r}")
        if self.device_state_bytes < 0:
            raise ValueError(f"device state must be >= 0 bytes, got {self.device_state_bytes!r}")
        if not self.rtt_s >= 0:
            raise ValueError(f"round-trip time must be >= 0 s, got {self.rtt_s!r}")


@dataclass(frozen=True)
class Convergence:
    """QEMU's convergence capabilities and parameters (QEMU 7.2's names and defaults).

    ``postcopy_after``: ``migrate-start-postcopy`` once that many passes (dirty-bitmap generations:
    the bulk pass is the first) are over; None: never (``postcopy-ram`` alone does nothing)."""

    auto_converge: bool = False
    cpu_throttle_initial: int = 20
    cpu_throttle_increment: int = 10
    cpu_throttle_tailslow: bool = False
    max_cpu_throttle: int = 99
    throttle_trigger_threshold: int = 50
    postcopy_ram: bool = False
    postcopy_after: int | None = None
    max_postcopy_bandwidth: float | None = None

    def __post_init__(self) -> None:
        if self.postcopy_after is not None and not self.postcopy_ram:
            raise ValueError("switching to postcopy needs the postcopy-ram capability")
        if self.postcopy_after is not None and self.postcopy_after < 0:
            raise ValueError(f"postcopy-after must be >= 0 passes, got {self.postcopy_after!r}")


@dataclass(frozen=True)
class PassCost:
    """What one call of the driver sent and what the sender spent on it."""

    pages: int  # target pages sent
    transferred: int  # QEMU's ram ``transferred`` (page records, EOS of iterations, multifd's count)
    wire_bytes: int  # bytes that cross the link (main stream + multifd channels)
    serial_cpu_s: float = 0.0  # the migration thread's CPU
    parallel_cpu_s: float = 0.0  # the encoder's worker threads' CPU (compress threads, multifd channels)
    threads: int = 1  # worker threads of the parallel part
    counted: int | None = None  # bytes the rate limiter and the bandwidth count (None: transferred)
    host_pages: int = 0  # host pages begun
    done: bool = False  # the search found no dirty page (after wrapping)
    cut: bool = False  # stopped inside a huge host page: the budget ran out after a target page
    requests: int = 0  # postcopy: page requests served
    requested_bytes: int = 0  # postcopy: wire bytes of the requested pages

    @property
    def counted_bytes(self) -> int:
        return self.transferred if self.counted is None else self.counted


def send_duration(cost: PassCost, link: Link) -> tuple[float, str]:
    """Seconds the sending took and what bounds it: ``link`` (wire bytes ÷ link) or ``cpu`` (serial
    CPU + parallel CPU ÷ min(threads, cpus))."""
    times = {"link": cost.wire_bytes / link.link_bytes_per_s}
    if link.cpu_time:
        workers = max(1, min(cost.threads, link.cpus or cost.threads))
        times["cpu"] = cost.serial_cpu_s + cost.parallel_cpu_s / workers
    bound = max(times, key=lambda k: times[k])
    return times[bound], bound


class LogExhausted(Exception):
    """The driver has no dirty log left for the time asked (the migration outlasted a non-repeated log)."""


class RamDriver(Protocol):
    """What the model needs of the world: the guest's writes, QEMU's bitmap, the sending."""

    page_size: int
    #: optional ``setup_bytes``: the stream's header and setup section, counted in the first window

    @property
    def dirty_pages(self) -> int:
        """``migration_dirty_pages``: pages dirty in the bitmap, not yet sent."""

    def advance(self, guest_s: float) -> None:
        """Let the guest run until ``guest_s`` seconds of its own time (throttling slows it).
        Raises :class:`LogExhausted` if its behaviour then is unknown."""

    def sync(self) -> int:
        """A dirty-bitmap sync; returns the pages it made dirty that were not (``num_dirty_pages_period``)."""

    def begin_section(self, last_stage: bool) -> None:
        """A RAM section begins (``ram_save_iterate`` or ``ram_save_complete``)."""

    def send(self, budget: float | None, max_host_pages: int, last_stage: bool) -> PassCost:
        """Send from the cursor in RAM order, wrapping at the end of RAM: host pages while the bytes
        counted in this call are ≤ ``budget`` (checked before each host page; inside a huge host page
        also after each target page: then ``cut``), at most ``max_host_pages`` of them (a host page
        continued from a cut counts); ``done`` when no dirty page is left. ``budget`` None: no limit."""

    def end_section(self, last_stage: bool) -> PassCost:
        """The section ends (flushes, 7.2's multifd sync, EOS)."""

    def start_postcopy(self) -> PassCost:
        """``postcopy_start``'s RAM part after its sync: cursor to the start of RAM, partly dirty host
        pages made wholly dirty, the discard messages; the guest's writes no longer change what the
        source sends."""

    def postcopy_send(self, max_host_pages: int, requested: int) -> PassCost:
        """Postcopy: first the pages the guest asked for (``requested`` of them, from
        :meth:`postcopy_faults`), then up to ``max_host_pages`` host pages in RAM order, raw."""

    def postcopy_faults(self, guest_s: float) -> int:
        """Postcopy: let the guest run on the destination until ``guest_s``; returns how many host
        pages it touched that have not arrived (queued as requests, in the order it touched them)."""


@dataclass
class PassRecord:
    """One pass: the time between two dirty-bitmap syncs (times in seconds, rates in bytes/s)."""

    round: int  # the pass's number (1: the bulk pass from the setup sync)
    stage: str  # bulk, iterate, complete, postcopy
    start_s: float
    duration_s: float = 0.0
    bound: str = "-"
    pages: int = 0
    transferred: int = 0
    wire_bytes: int = 0
    bandwidth: float = 0.0  # the last measured bandwidth at its end (QEMU's, of a 100 ms window)
    threshold_bytes: float = 0.0  # threshold-size at its end
    pending_bytes: int = 0  # dirty pages × page size after the sync that ends it (the next pass's)
    windows: int = 0  # 100 ms windows begun during it
    cpu_throttle: int = 0  # cpu-throttle-percentage at its end
    requests: int = 0  # postcopy page requests
    _time_by: dict[str, float] = field(default_factory=dict, repr=False)

    def charge(self, seconds: float, bound: str) -> None:
        self.duration_s += seconds
        self._time_by[bound] = self._time_by.get(bound, 0.0) + seconds
        self.bound = max(self._time_by, key=lambda k: self._time_by[k])

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round, "stage": self.stage, "start-s": self.start_s, "duration-s": self.duration_s,
            "bound": self.bound, "pages": self.pages, "transferred": self.transferred,
            "wire-bytes": self.wire_bytes, "bandwidth": self.bandwidth, "threshold-size": self.threshold_bytes,
            "pending": self.pending_bytes, "windows": self.windows, "cpu-throttle-percentage": self.cpu_throttle,
            "postcopy-requests": self.requests,
        }


@dataclass
class PrecopyResult:
    """A simulated migration. ``status`` is QEMU's: ``completed``, or ``active`` when it had not
    converged after ``max_passes`` (QEMU would go on) or outlasted a log not repeated (``log_ended``)."""

    status: str
    passes: list[PassRecord] = field(default_factory=list)
    total_time_s: float = 0.0
    downtime_s: float | None = None
    log_ended: bool = False
    dirty_sync_count: int = 0
    expected_downtime_s: float | None = None
    bandwidth: float = 0.0  # the last measured (bytes/s)
    threshold_bytes: float = 0.0
    dirty_pages_rate: float = 0.0  # pages/s of the last rate period
    cpu_throttle: int = 0  # cpu-throttle-percentage when the migration ended
    throttle_steps: list[tuple[float, int]] = field(default_factory=list)  # (time, new percentage)
    postcopy: bool = False
    postcopy_requests: int = 0
    postcopy_wait_s: float = 0.0  # time the guest waited for requested pages
    postcopy_bytes: int = 0
    remaining_bytes: int = 0  # dirty pages × page size at the end (0 when completed)
    transferred: int = 0

    @property
    def converged(self) -> bool:
        return self.status == "completed"

    @property
    def precopy_passes(self) -> int:
        return sum(1 for p in self.passes if p.stage in ("bulk", "iterate"))


class _Thread:
    """The migration thread's state and its steps (one migration)."""

    def __init__(self, driver: RamDriver, link: Link, conv: Convergence, max_passes: int) -> None:
        self.d, self.link, self.conv, self.max_passes = driver, link, conv, max_passes
        self.ps = driver.page_size
        self.rate_max = link.max_bandwidth * BUFFER_DELAY_S if link.max_bandwidth is not None else None
        self.t = 0.0  # wall clock
        self.g = 0.0  # the guest's clock
        self.throttle = 0
        self.window_start = 0.0
        self.used = 0  # bytes counted in the window (rate_limit_used; also the bandwidth's bytes)
        self.threshold = 0.0
        self.bandwidth = 0.0
        self.expected_downtime: float | None = None
        self.transferred = 0
        self.syncs = 0
        self.time_last_sync: float | None = None
        self.dirty_period = 0
        self.bytes_xfer_prev = 0
        self.high_cnt = 0
        self.dirty_pages_rate = 0.0
        self.remaining_at_sync = 0
        self.res = PrecopyResult("active")
        self.cur: PassRecord | None = None

    # -- time --------------------------------------------------------------------------------------
    def run_guest(self) -> None:
        """The guest has run up to the wall clock (at its throttled speed)."""
        self.d.advance(self.g)

    def elapse(self, seconds: float, bound: str) -> None:
        """Wall time passes while the guest runs: its own clock moves (1 − throttle) as far."""
        self.t += seconds
        self.g += seconds * (1 - self.throttle / 100)
        assert self.cur is not None
        self.cur.charge(seconds, bound)

    def charge(self, cost: PassCost, *, guest_runs: bool = True) -> None:
        """What the driver sent: its time, and its bytes in the window's count and the pass's."""
        d, bound = send_duration(cost, self.link)
        if guest_runs:
            self.elapse(d, bound)
        else:
            self.t += d
            assert self.cur is not None
            self.cur.charge(d, bound)
        self.used += cost.counted_bytes
        self.account(cost)

    def account(self, cost: PassCost) -> None:
        """A part's pages and bytes in the pass and in ``transferred``."""
        p = self.cur
        assert p is not None
        p.pages += cost.pages
        p.transferred += cost.transferred
        p.wire_bytes += cost.wire_bytes
        self.transferred += cost.transferred

    def budget(self) -> float | None:
        """What is left of the window's budget (None: no rate limit)."""
        return None if self.rate_max is None else self.rate_max - self.used

    def limited(self) -> bool:
        """qemu_file_rate_limit."""
        return self.rate_max is not None and self.used > self.rate_max

    def rate_limit(self) -> None:
        """migration_rate_limit: counters every 100 ms; sleep to the window's end when over budget."""
        if self.t >= self.window_start + BUFFER_DELAY_S - 1e-12:
            self.update_counters()
        if self.limited():
            self.elapse(self.window_start + BUFFER_DELAY_S - self.t, "max-bandwidth")

    def update_counters(self) -> None:
        """migration_update_counters: the window's bandwidth and threshold; a new window."""
        spent = self.t - self.window_start
        self.bandwidth = self.used / spent
        self.threshold = self.bandwidth * self.link.downtime_limit_s
        if self.dirty_pages_rate and self.used > 10000 and self.bandwidth > 0:
            self.expected_downtime = self.remaining_at_sync / self.bandwidth
        self.window_start = self.t
        self.used = 0
        assert self.cur is not None
        self.cur.windows += 1

    # -- the bitmap --------------------------------------------------------------------------------
    def close_pass(self) -> None:
        """The figures a pass ends with: the last window's bandwidth and threshold, the throttle."""
        if self.cur is not None:
            self.cur.bandwidth, self.cur.threshold_bytes = self.bandwidth, self.threshold
            self.cur.cpu_throttle = self.throttle

    def new_pass(self, stage: str) -> None:
        self.close_pass()
        self.cur = PassRecord(len(self.res.passes) + 1, stage, self.t)
        self.res.passes.append(self.cur)

    def begin_final(self, stage: str) -> None:
        """The completion or postcopy phase begins: a pass of its own, unless the pass that the
        pending sync just began has sent nothing (then that sync's pages are this phase's)."""
        c = self.cur
        if c is not None and c.stage in ("bulk", "iterate") and c.duration_s == 0 and c.pages == 0:
            c.stage = stage
        else:
            self.new_pass(stage)

    def sync(self) -> None:
        """migration_bitmap_sync (and auto-converge's check in it)."""
        self.syncs += 1
        if self.time_last_sync is None:
            self.time_last_sync = self.t
        self.dirty_period += self.d.sync()
        self.remaining_at_sync = self.d.dirty_pages * self.ps
        if len(self.res.passes) >= 2:  # what the pass that this sync ended leaves to the next
            self.res.passes[-2].pending_bytes = self.remaining_at_sync
        if self.t > self.time_last_sync + SYNC_PERIOD_S:
            if self.conv.auto_converge:
                self.trigger_throttle()
            self.dirty_pages_rate = self.dirty_period / (self.t - self.time_last_sync)
            self.time_last_sync = self.t
            self.dirty_period = 0
            self.bytes_xfer_prev = self.transferred

    def trigger_throttle(self) -> None:
        """migration_trigger_throttle."""
        xfer = self.transferred - self.bytes_xfer_prev
        dirty = self.dirty_period * self.ps
        threshold = xfer * self.conv.throttle_trigger_threshold // 100
        if dirty > threshold:
            self.high_cnt += 1
            if self.high_cnt >= 2:
                self.high_cnt = 0
                self.throttle_down(dirty, threshold)

    def throttle_down(self, dirty: int, threshold: int) -> None:
        """mig_throttle_guest_down."""
        c = self.conv
        if self.throttle == 0:
            new = c.cpu_throttle_initial
        else:
            if not c.cpu_throttle_tailslow:
                inc = c.cpu_throttle_increment
            else:
                cpu_now = 100 - self.throttle
                cpu_ideal = int(cpu_now * (threshold / dirty))
                inc = min(cpu_now - cpu_ideal, c.cpu_throttle_increment)
            new = min(self.throttle + inc, c.max_cpu_throttle)
        self.throttle = max(CPU_THROTTLE_PCT_MIN, min(CPU_THROTTLE_PCT_MAX, new))
        self.res.throttle_steps.append((self.t, self.throttle))

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> PrecopyResult:
        self.new_pass("bulk")
        # the header and ram_save_setup's section go into the stream before the first window's pages
        self.used = int(getattr(self.d, "setup_bytes", 0))
        self.sync()  # ram_init_bitmaps: every page dirty already
        try:
            while True:
                if not self.limited():
                    step = self.iteration_run()
                    if step == "break":
                        break
                    if step == "stop":
                        return self.finish()
                self.rate_limit()
        except LogExhausted:
            self.res.log_ended = True
            return self.finish()
        return self.finish()

    def iteration_run(self) -> str:
        """migration_iteration_run: 'resume', 'break' (completed) or 'stop' (max passes)."""
        remaining = self.d.dirty_pages * self.ps
        if remaining < self.threshold:  # ram_save_pending's sync
            self.run_guest()
            self.new_pass("iterate")
            self.sync()
            remaining = self.d.dirty_pages * self.ps
            if remaining and remaining >= self.threshold and len(self.res.passes) > self.max_passes:
                self.res.passes.pop()  # the pass that would begin is not simulated
                self.cur = self.res.passes[-1]
                return "stop"
        if remaining and remaining >= self.threshold:
            c = self.conv
            if c.postcopy_after is not None and self.precopy_passes_over() >= c.postcopy_after:
                self.postcopy()
                return "break"
            self.save_iterate()
            return "resume"
        self.completion()
        return "break"

    def precopy_passes_over(self) -> int:
        return len(self.res.passes) - 1

    def save_iterate(self) -> None:
        """ram_save_iterate: host pages while the budget lasts, at most 50 ms, until nothing is dirty."""
        self.d.begin_section(False)
        t0 = self.t
        k = 0  # host pages sent in this call (QEMU's i + 1)
        while not self.limited():
            n = 1 if k == 0 else 64 - (k - 1) % 64  # up to the next MAX_WAIT check (after 1, 65, 129, …)
            self.run_guest()
            cost = self.d.send(self.budget(), n, False)
            self.charge(cost)
            k += cost.host_pages
            while cost.cut:  # inside a huge host page, over budget: migration_rate_limit
                self.rate_limit()
                self.run_guest()
                cost = self.d.send(self.budget(), 1, False)
                self.charge(cost)
                k += cost.host_pages
            if cost.done:
                break
            if (k - 1) % 64 == 0 and self.t - t0 > MAX_WAIT_S:
                break
        self.charge(self.d.end_section(False))

    def completion(self) -> None:
        """migration_completion: the guest stops; ram_save_complete's sync and unlimited send."""
        self.run_guest()
        t_stop = self.t
        self.begin_final("complete")
        self.sync()
        self.d.begin_section(True)
        while True:
            cost = self.d.send(None, COMPLETION_HOST_PAGES, True)
            self.charge(cost, guest_runs=False)
            if cost.done:
                break
        self.charge(self.d.end_section(True), guest_runs=False)
        self.device_state()
        self.res.status = "completed"
        self.res.downtime_s = self.t - t_stop

    def device_state(self) -> None:
        if self.link.device_state_bytes:
            s = self.link.device_state_bytes / self.link.link_bytes_per_s
            self.t += s
            assert self.cur is not None
            self.cur.charge(s, "link")

    def postcopy(self) -> None:
        """postcopy_start, then the postcopy phase until every dirty page is at the destination."""
        self.run_guest()
        t_stop = self.t
        self.begin_final("postcopy")
        self.sync()  # ram_postcopy_send_discard_bitmap
        self.charge(self.d.start_postcopy(), guest_runs=False)
        self.device_state()
        self.res.downtime_s = self.t - t_stop
        self.res.postcopy = True
        self.throttle = 0  # the guest runs on the destination, unthrottled
        bw = self.conv.max_postcopy_bandwidth
        link = self.link
        requested = 0
        debt = 0.0  # wall time the guest still has to spend waiting for pages it asked for
        p = self.cur
        assert p is not None
        while True:
            cost = self.d.postcopy_send(64, requested)
            d, bound = send_duration(cost, link)
            if bw is not None and cost.wire_bytes / bw > d:
                d, bound = cost.wire_bytes / bw, "max-postcopy-bandwidth"
            self.t += d
            p.charge(d, bound)
            self.account(cost)
            self.res.postcopy_bytes += cost.transferred
            # each request: the vCPU waits a round trip and its host page's transfer, one after another
            wait = cost.requests * link.rtt_s + cost.requested_bytes / link.link_bytes_per_s
            self.res.postcopy_wait_s += wait
            debt += wait
            ran = d - min(d, debt)
            debt -= d - ran
            self.g += ran
            if cost.done:
                break
            requested = self.d.postcopy_faults(self.g)
            self.res.postcopy_requests += requested
            p.requests += requested
        self.res.status = "completed"

    def finish(self) -> PrecopyResult:
        r = self.res
        self.close_pass()
        if self.cur is not None:
            self.cur.pending_bytes = self.d.dirty_pages * self.ps
        r.total_time_s = self.t
        r.dirty_sync_count = self.syncs
        r.expected_downtime_s = self.expected_downtime
        r.bandwidth, r.threshold_bytes = self.bandwidth, self.threshold
        r.dirty_pages_rate = self.dirty_pages_rate
        r.cpu_throttle = self.throttle
        r.remaining_bytes = 0 if r.converged else self.d.dirty_pages * self.ps
        r.transferred = self.transferred
        return r


def run_precopy(driver: RamDriver, link: Link, conv: Convergence | None = None, *, max_passes: int = 50) -> PrecopyResult:
    """Migrate as QEMU 7.2's migration thread does. ``max_passes``: passes (dirty-bitmap generations)
    the guest may run before a migration that has not converged is reported ``active`` (QEMU has no
    such limit: it runs until cancelled)."""
    if max_passes < 1:
        raise ValueError("max_passes must be >= 1")
    return _Thread(driver, link, conv or Convergence(), max_passes).run()
