"""Pinning bench runs to one CPU each, so a run's CPU figures are what its work costs on one core.

Why: ``bench`` reports CPU time, and CPU time moved with the scheduler's placement of threads. The
compress-thread configurations run ``compress-threads`` real worker threads; left free on this
2-vCPU machine, the scheduler sometimes spread them over both CPUs (each page read by another core
than the one that decoded it from the trace, each compressed buffer read back by the migration
thread's core) and sometimes kept them together. The five repeats of lz4 on ``synth-default`` in one
invocation were bimodal, 2.4 or 4.4 s/GiB, and the minimum moved by up to 1.8× between invocations.
Pinned, the spread within an invocation shrank to that of the single-threaded configs (README,
"Repeatable CPU figures"). Pinning is the usual remedy (pyperf's ``--affinity``; lzbench is run
under ``taskset``).

A run on one CPU is serial: its wall time is the sum of its threads' work, not what QEMU's parallel
threads would take. ``bench`` reports CPU per GiB, which is what the pinning makes repeatable; wall
times of multi-threaded configs are not the place to read parallel speed-up (``--no-pin`` restores
the free placement).

Each worker of a local pool gets its own CPU while there are CPUs left (from the highest-numbered:
CPU 0 takes most device interrupts), then they share. Only the thread that runs the tasks is pinned;
threads it starts (compress and decompress workers) inherit the pin. Dask workers are not pinned:
placement on a cluster is the cluster's business.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Iterator

__all__ = ["usable_cpus", "thread_affinity", "worker_cpus", "pinned", "pin_worker"]


def thread_affinity() -> list[int] | None:
    """The calling thread's CPUs, for the results (None where the platform cannot say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def usable_cpus() -> list[int]:
    """The CPUs this thread may run on, ascending (all of them where affinity is not supported)."""
    return thread_affinity() or list(range(os.cpu_count() or 1))


def worker_cpus(jobs: int, cpus: list[int] | None = None) -> list[int]:
    """One CPU per worker: distinct ones from the highest down while they last, then round again."""
    avail = list(reversed(cpus if cpus is not None else usable_cpus()))
    return [avail[k % len(avail)] for k in range(jobs)]


@contextmanager
def pinned(cpu: int | None) -> Iterator[None]:
    """Run the calling thread (and the threads it starts meanwhile) on ``cpu`` only; its former
    affinity is restored after. ``None``, or a platform without affinity: no change."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_worker(counter: Any, cpus: list[int]) -> None:
    """A process pool's initializer: the k-th worker to start (``counter``, a shared
    ``multiprocessing.Value``) runs on ``cpus[k % len(cpus)]`` for its life."""
    with counter.get_lock():
        k = counter.value
        counter.value += 1
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpus[k % len(cpus)]})
