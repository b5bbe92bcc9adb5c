"""QEMU 7.2's precopy decision, pass by pass: when to iterate, when to switch over, how long it takes.

The arithmetic only: what is sent in a pass and what it costs come from a :class:`PassDriver` (the real
chain in :mod:`.simulate`, hand-made numbers in the tests), so the model can be checked in closed form.

What QEMU 7.2 does (migration/migration.c, migration/ram.c), and how the model follows it:

- ``migration_iteration_run`` asks ``ram_save_pending`` for the bytes still dirty,
  ``migration_dirty_pages × TARGET_PAGE_SIZE`` — *pages*, not wire bytes: compression and zero pages do
  not shrink it. When that is below ``threshold_size``, ``ram_save_pending`` first syncs the dirty
  bitmap and counts again. ``pending && pending >= threshold_size``: another iteration; otherwise
  ``migration_completion``: the guest stops, ``ram_save_complete`` syncs once more and sends every
  dirty page without rate limiting.
- ``migration_update_counters`` (every ``BUFFER_DELAY`` = 100 ms) sets ``threshold_size = bandwidth ×
  downtime_limit``, ``bandwidth`` being ``migration_total_bytes`` (``transferred``: the main stream
  plus 7.2's multifd count) sent in the window ÷ the window's length.
- The rate limit (``max-bandwidth``) caps those counted bytes per second while the guest runs.

The model: pass 1 (bulk) sends all of RAM; a pass's duration is the longest of its real wire bytes
÷ the link, its counted bytes ÷ ``max-bandwidth``, and the encoder's CPU time (the migration thread's
CPU plus its worker threads' CPU ÷ min(threads, cpus)). The pages dirtied meanwhile are pending at its
end; the pass's bandwidth (counted bytes ÷ duration) gives the threshold; pending ≥ threshold: the
next pass sends them; otherwise the two syncs and the completion pass, whose duration (without the rate
limit) is the downtime. ``dirty-sync-count`` comes out as QEMU's: the setup sync, one per later pass,
and the two before completion.

Not modelled (QEMU does it, the model does not): switch-over in the middle of a pass (QEMU syncs as
soon as the remaining pages fall below the threshold; here passes end empty), the 100 ms measurement
windows and the rate limiter's whole-window waits (here each pass has its own average rate), device
state, setup time and the destination's speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = ["Link", "PassCost", "PassRecord", "PrecopyResult", "PassDriver", "LogExhausted", "pass_duration",
           "run_precopy", "BUFFER_DELAY_S"]

#: QEMU's measurement window for the bandwidth (migration.c BUFFER_DELAY, 100 ms).
BUFFER_DELAY_S = 0.1


@dataclass(frozen=True)
class Link:
    """The network and QEMU's limits.

    ``link_bytes_per_s``: what the network carries. ``max_bandwidth``: QEMU's ``max-bandwidth``
    (bytes/s) while the guest runs; None: no rate limit beyond the link. ``downtime_limit_s``: QEMU's
    ``downtime-limit``. ``cpus``: CPUs the encoder's worker threads may use (None: one per thread).
    ``cpu_time``: charge the encoder's measured CPU time (False: encoding is free, the link decides)."""

    link_bytes_per_s: float
    downtime_limit_s: float = 0.3
    max_bandwidth: float | None = None
    cpus: int | None = None
    cpu_time: bool = True

    def __post_init__(self) -> None:
        if not (self.link_bytes_per_s > 0 and math.isfinite(self.link_bytes_per_s)):
            raise ValueError(f"link speed must be > 0 bytes/s, got {self.link_bytes_per_s!r}")
        if not self.downtime_limit_s >= 0:
            raise ValueError(f"downtime limit must be >= 0 s, got {self.downtime_limit_s!r}")
        if self.max_bandwidth is not None and not self.max_bandwidth > 0:
            raise ValueError(f"max-bandwidth must be > 0 bytes/s, got {self.max_bandwidth!r}")
        if self.cpus is not None and self.cpus < 1:
            raise ValueError(f"cpus must be >= 1, got {self.cpus!r}")


@dataclass(frozen=True)
class PassCost:
    """What one pass sent and what the sender spent on it."""

    pages: int  # dirty pages the pass took through the chain
    transferred: int  # QEMU's counted bytes (rate limit and bandwidth are measured on these)
    wire_bytes: int  # bytes that cross the link (main stream + multifd channels)
    serial_cpu_s: float = 0.0  # the migration thread's CPU
    parallel_cpu_s: float = 0.0  # the encoder's worker threads' CPU (compress threads, multifd channels)
    threads: int = 1  # worker threads of the parallel part


def pass_duration(cost: PassCost, link: Link, *, rate_limited: bool) -> tuple[float, str]:
    """Seconds a pass takes and what bounds it: ``link`` (wire bytes ÷ link), ``max-bandwidth``
    (counted bytes ÷ max-bandwidth, only while the guest runs: ``rate_limited``) or ``cpu``
    (serial CPU + parallel CPU ÷ min(threads, cpus))."""
    times = {"link": cost.wire_bytes / link.link_bytes_per_s}
    if rate_limited and link.max_bandwidth is not None:
        times["max-bandwidth"] = cost.transferred / link.max_bandwidth
    if link.cpu_time:
        workers = max(1, min(cost.threads, link.cpus or cost.threads))
        times["cpu"] = cost.serial_cpu_s + cost.parallel_cpu_s / workers
    bound = max(times, key=lambda k: times[k])
    return times[bound], bound


class LogExhausted(Exception):
    """The driver has no dirty log left for the time asked (the migration outlasted a non-repeated log)."""


class PassDriver(Protocol):
    """What the model needs of the world: send a pass, say what the guest dirtied by a time."""

    page_size: int

    def send(self, round_no: int, last_stage: bool) -> PassCost:
        """Sync and send a pass: round 0 all of RAM, later rounds the pages pending now."""

    def advance(self, until_s: float) -> int:
        """Let the guest run until ``until_s`` seconds after the start; returns the pages now pending.
        Raises :class:`LogExhausted` if the guest's behaviour at that time is unknown."""

    def sync(self) -> None:
        """A dirty-bitmap sync that sends nothing (``ram_save_pending``'s, right before completion)."""


@dataclass
class PassRecord:
    """One pass as the model saw it (times in seconds, rates in bytes/s)."""

    round: int
    stage: str  # bulk, iterate, complete
    start_s: float
    duration_s: float
    bound: str
    pages: int
    transferred: int
    wire_bytes: int
    bandwidth: float  # transferred ÷ duration: QEMU's measured bandwidth
    threshold_bytes: float  # bandwidth × downtime-limit after the pass (0 for the completion)
    pending_bytes: int  # dirty pages × page size at the pass's end (the next pass's)

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round, "stage": self.stage, "start-s": self.start_s, "duration-s": self.duration_s,
            "bound": self.bound, "pages": self.pages, "transferred": self.transferred,
            "wire-bytes": self.wire_bytes, "bandwidth": self.bandwidth, "threshold-size": self.threshold_bytes,
            "pending": self.pending_bytes,
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

    @property
    def converged(self) -> bool:
        return self.status == "completed"

    @property
    def precopy_passes(self) -> int:
        return sum(1 for p in self.passes if p.stage != "complete")

    @property
    def expected_downtime_s(self) -> float | None:
        """QEMU's ``expected-downtime`` after the last iteration: pending ÷ bandwidth."""
        last = [p for p in self.passes if p.stage != "complete"]
        if not last or last[-1].bandwidth <= 0:
            return None
        return last[-1].pending_bytes / last[-1].bandwidth


def run_precopy(driver: PassDriver, link: Link, *, max_passes: int = 50) -> PrecopyResult:
    """Migrate: iterate while pending ≥ threshold, then complete; at most ``max_passes`` passes while
    the guest runs (QEMU has no such limit: a migration that does not converge runs until cancelled)."""
    if max_passes < 1:
        raise ValueError("max_passes must be >= 1")
    ps = driver.page_size
    res = PrecopyResult("active")
    t = 0.0
    round_no = 0
    while True:
        cost = driver.send(round_no, last_stage=False)
        d, bound = pass_duration(cost, link, rate_limited=True)
        bandwidth = cost.transferred / d if d > 0 else math.inf
        threshold = bandwidth * link.downtime_limit_s
        start = t
        t += d
        try:
            pending = driver.advance(t)
        except LogExhausted:
            res.passes.append(PassRecord(round_no, "bulk" if round_no == 0 else "iterate", start, d, bound,
                                         cost.pages, cost.transferred, cost.wire_bytes, bandwidth, threshold, 0))
            res.total_time_s, res.log_ended = t, True
            return res
        pending_bytes = pending * ps
        res.passes.append(PassRecord(round_no, "bulk" if round_no == 0 else "iterate", start, d, bound, cost.pages,
                                     cost.transferred, cost.wire_bytes, bandwidth, threshold, pending_bytes))
        round_no += 1
        if not (pending_bytes and pending_bytes >= threshold):  # migration_iteration_run's test
            break
        if round_no >= max_passes:
            res.total_time_s = t
            return res
    driver.sync()  # ram_save_pending's sync found little left; ram_save_complete syncs again (in send)
    cost = driver.send(round_no, last_stage=True)
    d, bound = pass_duration(cost, link, rate_limited=False)
    res.passes.append(PassRecord(round_no, "complete", t, d, bound, cost.pages, cost.transferred, cost.wire_bytes,
                                 cost.transferred / d if d > 0 else math.inf, 0.0, 0))
    res.status = "completed"
    res.downtime_s = d
    res.total_time_s = t + d
    return res
