"""The dirty log's clock: seconds the target process has *run* since round 0, frozen time excluded.

A process capture is a timed dirty log (trace v2): round 0 the image, round k the slice of pages
written during ``(t[k-1], t[k]]``. ``t[k]`` must be the time at which the slice's contents are what the
trace holds, on the clock the process's own writes run on:

* **Frozen** (the default): the contents are fixed at the moment ``SIGSTOP`` is sent (the process
  writes nothing after it until ``SIGCONT``), so that is the snapshot moment. The time the capture
  keeps the process stopped while reading a round is **excluded**: the process did not run and wrote
  nothing then, so counting it would make every slice look longer than the process's own running time
  and understate its dirty rate by the frozen share (reading a 64 MiB round 0 can take longer than a
  short interval). With it excluded, ``t[k]`` is the process's running time since the image, the clock
  a migrated guest's writes run on, which is what ``pagecodec simulate`` replays against the link.
* **Not frozen** (``--no-freeze``, or a process that was already stopped): nothing is excluded; ``t[k]``
  is the moment the round's reading starts (a write landing while the round is read may fall in either
  slice).

The capture is scheduled on the same clock: round k is taken when the process has run ``k · interval``
seconds, so a log's slices are ``interval`` long however long reading takes, and the capture's wall
time is the log's duration plus the frozen time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RunningClock"]


class RunningClock:
    """Log times of the rounds of one capture (see the module docstring); ``now`` and ``sleep`` are
    injectable for tests.

    Per round: :meth:`wait_until` the round's scheduled time, :meth:`snapshot` right before ``SIGSTOP`` (or
    right before reading, unfrozen), then :meth:`resumed` right after ``SIGCONT``, or :meth:`unfrozen`
    when the process was not stopped."""

    def __init__(self, now: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        self._now = now
        self._sleep = sleep
        self._log = 0.0                            # log time of the last snapshot
        self._snapped: float | None = None         # wall time of the last snapshot (None: none yet)
        self._running_since: float | None = None   # wall time the process runs again since (None: held)
        #: seconds excluded so far: the process held stopped by the capture
        self.frozen_s = 0.0

    @property
    def running_s(self) -> float:
        """The process's running time since round 0's snapshot, as of now."""
        if self._running_since is None:  # before round 0, or held stopped: no time passes for the process
            return self._log
        return self._log + (self._now() - self._running_since)

    def wait_until(self, log_s: float) -> None:
        """Sleep until the process has run ``log_s`` seconds since round 0 (return at once if it has)."""
        delay = log_s - self.running_s
        if delay > 0:
            self._sleep(delay)

    def snapshot(self) -> float:
        """The log time of a round whose contents are fixed now: 0.0 for the first; later, strictly after
        the previous round's (a slice of no duration has no dirty rate: the next float up if the clock has
        not moved)."""
        if self._snapped is not None:
            if self._running_since is None:
                raise RuntimeError("snapshot() before resumed()/unfrozen() of the previous round")
            t = self.running_s
            self._log = t if t > self._log else math.nextafter(self._log, math.inf)
        self._snapped = self._now()
        self._running_since = None
        return self._log

    def resumed(self) -> None:
        """The process runs again (``SIGCONT`` sent): the time since :meth:`snapshot` is excluded."""
        if self._snapped is None or self._running_since is not None:
            raise RuntimeError("resumed() without a snapshot() before it")
        now = self._now()
        self.frozen_s += now - self._snapped
        self._running_since = now

    def unfrozen(self) -> None:
        """The round was read with the process running: nothing is excluded."""
        if self._snapped is None or self._running_since is not None:
            raise RuntimeError("unfrozen() without a snapshot() before it")
        self._running_since = self._snapped
