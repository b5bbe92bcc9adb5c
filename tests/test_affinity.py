"""Pinning bench workers to CPUs (harness/affinity.py): which CPUs, that threads inherit the pin, that
the pin is undone, and that every result says where its repeats ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import write_text_trace
from pagecodec.harness.affinity import pinned, thread_affinity, usable_cpus, worker_cpus
from pagecodec.harness.matrix import LocalPool, Run, Task

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")


def _where(task: Task) -> dict:
    """A task function for the pools: where it ran, and where a thread it started ran."""
    seen: list = []
    t = threading.Thread(target=lambda: seen.append(thread_affinity()))
    t.start()
    t.join()
    return {"task": thread_affinity(), "thread": seen[0], "pid": os.getpid()}


def test_workers_get_distinct_cpus_from_the_highest_then_share():
    assert worker_cpus(1, [0, 1, 2, 3]) == [3]
    assert worker_cpus(3, [0, 1, 2, 3]) == [3, 2, 1]
    assert worker_cpus(5, [0, 2]) == [2, 0, 2, 0, 2]


def test_pinned_runs_the_thread_and_its_new_threads_on_one_cpu_and_restores_after():
    before = thread_affinity()
    cpu = usable_cpus()[-1]
    with pinned(cpu):
        got = _where(Task(Run("t", "none"), 0, False))
        assert got["task"] == [cpu] and got["thread"] == [cpu]
    assert thread_affinity() == before


def test_pinned_none_changes_nothing():
    before = thread_affinity()
    with pinned(None):
        assert thread_affinity() == before


def test_pinned_restores_even_when_the_work_raises():
    before = thread_affinity()
    with pytest.raises(RuntimeError), pinned(usable_cpus()[0]):
        raise RuntimeError("a failing run")
    assert thread_affinity() == before


def test_local_pool_in_process_pins_each_task_and_unpins_between():
    before = thread_affinity()
    tasks = [Task(Run("t", "none"), i, False) for i in range(2)]
    out = [s for _, s in LocalPool(1).run(_where, tasks)]
    assert all(s["task"] == [usable_cpus()[-1]] for s in out)
    assert thread_affinity() == before
    free = [s for _, s in LocalPool(1, pin=False).run(_where, tasks)]
    assert all(s["task"] == before for s in free)


@pytest.mark.skipif(len(usable_cpus()) < 2, reason="needs two usable CPUs")
def test_local_pool_workers_each_get_their_own_cpu():
    tasks = [Task(Run("t", "none"), i, False) for i in range(8)]
    out = [s for _, s in LocalPool(2).run(_where, tasks)]
    by_pid = {s["pid"]: s["task"] for s in out}
    assert all(len(cpus) == 1 for cpus in by_pid.values())
    assert len({c[0] for c in by_pid.values()}) == len(by_pid)  # no two workers share a CPU
    assert all(s["thread"] == s["task"] for s in out)


def test_bench_results_say_where_every_repeat_ran(tmp_path):
    trace = tmp_path / "t.parquet"
    write_text_trace(trace, pages=16, text_pages=12, dirty=4, seed=3)
    out = {}
    for flag in ("--pin", "--no-pin"):
        js = tmp_path / f"{flag}.json"
        p = subprocess.run([sys.executable, "-m", "pagecodec.cli", "bench", str(trace), "--config", "xbzrle",
                            "--repeat", "2", "--no-baselines", "--json", str(js), flag],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        (res,) = json.loads(js.read_text())
        out[flag] = res["timing"]["cpu-affinity"]
        assert "cpu-affinity" not in res  # per repeat, under timing only
    assert out["--pin"] == [[usable_cpus()[-1]]] * 2
    assert out["--no-pin"] == [usable_cpus()] * 2
