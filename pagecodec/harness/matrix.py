"""Sweeps: every trace × configuration × repeat, as independent tasks on an executor.

The unit of work is a :class:`Task`: one replay of one trace with one configuration, one repeat.
Tasks are independent (each builds its own plugin manager, sender, destination and counters, and
reads the trace itself), so an executor may run them anywhere: in this process, a local process
pool (:class:`LocalPool`, the default) or a Dask cluster (:mod:`.dask_pool`). Tasks are planned
repeat-major — every run's repeat 0, then every run's repeat 1, … — so the repeats of one run are
spread over the sweep instead of sharing one noisy moment.

Each task first times two fixed kernels on its CPU (:mod:`.calibration`), so results say how fast
the machine was while they were measured. Repeat 0 of a run is its check (unless ``verify`` is off):
the stream is decoded and every page the round touched is compared with the trace
(:func:`.replay.verify`); the other repeats decode without comparing. A task that raises — a decode
error, a plugin that raises, a bad trace — gives a ``status: failed`` sample naming the error; the
other tasks go on. When all of a run's repeats are in, :func:`.repeats.aggregate` makes its result,
handed to ``on_result`` at once (``bench --json`` writes the file then, atomically), so an
interrupted sweep loses only unfinished runs; finished repeats of unfinished runs go to
``on_sample`` (``bench`` keeps them beside the results for ``--resume``).
"""

from __future__ import annotations

import itertools
import multiprocessing
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

from ..chain.config import parse_spec
from ..errors import ConfigError, PageCodecError
from ..plugins import PluginManager
from ..trace.format import TraceReader
from .affinity import pin_worker, pinned, thread_affinity, worker_cpus
from .baseline import MEMCPY, memcpy_baseline
from .calibration import calibrate
from .pieces import elementwise_min
from .repeats import aggregate, decode_cpu_total, sender_cpu_total
from .replay import replay, verify

__all__ = ["Run", "Task", "Executor", "LocalPool", "expand_sweeps", "plan_runs", "plan_tasks", "run_task",
           "run_matrix", "run_key", "failed_sample", "MEMCPY"]


@dataclass(frozen=True)
class Run:
    """One (trace, config) cell of the matrix; ``spec`` is a SPEC or :data:`MEMCPY`."""

    trace: str
    spec: str


@dataclass(frozen=True)
class Task:
    """One repeat of one run; ``check``: decode and compare the pages with the trace."""

    run: Run
    repeat: int
    check: bool
    decode: bool = True
    plugin_modules: tuple[str, ...] = ()
    min_sample_s: float = 0.0  # a shorter timing repeat is the fastest of back-to-back replays (run_task)


class Executor(Protocol):
    """Runs tasks somewhere and yields (task, sample) as each finishes, in any order. ``skip(task)``,
    asked before a task starts where the executor can, drops tasks no longer needed (the other
    repeats of a run that failed)."""

    def run(self, fn: Callable[[Task], dict[str, Any]], tasks: Sequence[Task],
            skip: Callable[[Task], bool] | None = None) -> Iterator[tuple[Task, dict[str, Any]]]:
        ...


class LocalPool:
    """``jobs`` worker processes (in this process when ``jobs`` is 1: no pickling, same figures),
    each pinned to its own CPU unless ``pin`` is off (:mod:`.affinity`: repeatable CPU figures)."""

    def __init__(self, jobs: int = 1, *, pin: bool = True) -> None:
        self.jobs = jobs
        self.pin = pin

    def run(self, fn: Callable[[Task], dict[str, Any]], tasks: Sequence[Task],
            skip: Callable[[Task], bool] | None = None) -> Iterator[tuple[Task, dict[str, Any]]]:
        cpus = worker_cpus(self.jobs) if self.pin else None
        if self.jobs <= 1 or len(tasks) <= 1:
            for t in tasks:
                if skip is None or not skip(t):
                    with pinned(cpus[0] if cpus else None):
                        sample = fn(t)
                    yield t, sample
            return
        ctx = multiprocessing.get_context()
        init: dict[str, Any] = {"initializer": pin_worker, "initargs": (ctx.Value("i", 0), cpus)} if cpus else {}
        with ProcessPoolExecutor(max_workers=self.jobs, mp_context=ctx, **init) as pool:
            futures: dict[Future[dict[str, Any]], Task] = {pool.submit(fn, t): t for t in tasks}
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in finished:
                    if not f.cancelled():
                        yield futures[f], f.result()
                if skip is not None:
                    for f in pending:
                        if skip(futures[f]):
                            f.cancel()  # only a task that has not started is cancelled


def expand_sweeps(specs: Sequence[str], sweeps: Sequence[str], keys_read: Callable[[str], set[str]] | None = None) -> list[str]:
    """``--sweep KEY=V1,V2`` multiplies every config by each value of KEY — where KEY matters.

    ``keys_read(spec)`` gives the keys a config reads (:meth:`MigrationConfig.keys_read`); a swept
    key it does not read is left out of that config, so ``--sweep xbzrle-cache-size=…`` makes one
    ``none`` row, not one per size. Sweeping a key twice is an error (which values would win?)."""
    axes: list[list[str]] = []
    seen: set[str] = set()
    for sw in sweeps:
        key, eq, values = sw.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key or not vals:
            raise ConfigError(f"--sweep {sw!r}: expected KEY=V1,V2,…")
        if key in seen:
            raise ConfigError(f"--sweep {key} given twice: give all its values in one --sweep {key}=V1,V2,…")
        seen.add(key)
        axes.append([f"{key}={v}" for v in vals])
    out = []
    for spec in specs:
        if spec == MEMCPY:
            out.append(spec)
            continue
        for combo in itertools.product(*axes) if axes else [()]:
            items = list(combo)
            if keys_read is not None and items:
                read = keys_read(",".join(x for x in (spec, *items) if x))
                items = [x for x in items if x.partition("=")[0].strip() in read]
            out.append(",".join(x for x in (spec, *items) if x and x != "none") or "none")
    return list(dict.fromkeys(out))


def plan_runs(traces: Sequence[str], specs: Sequence[str]) -> list[Run]:
    return [Run(t, s) for t in traces for s in specs]


def plan_tasks(runs: Sequence[Run], repeat: int, *, check: bool = True, decode: bool = True,
               plugin_modules: Sequence[str] = (), min_sample_s: float = 0.0) -> list[Task]:
    """Repeat-major: every run's repeat 0 first (the check), then every run's repeat 1, …"""
    mods = tuple(plugin_modules)
    return [Task(run, i, check and decode and i == 0 and run.spec != MEMCPY, decode, mods, min_sample_s)
            for i in range(repeat) for run in runs]


def run_task(task: Task) -> dict[str, Any]:
    """One repeat of one run: its results object with ``status`` (``ok`` or ``failed`` + ``error``),
    ``repeat`` and, for the checking repeat, ``verify``. Never raises for a failure of the run itself
    (only for KeyboardInterrupt and the like)."""
    run = task.run
    sample: dict[str, Any]
    speed = calibrate()  # how fast this CPU is right now (:mod:`.calibration`)
    try:
        pm = PluginManager(task.plugin_modules)
        reader = TraceReader(run.trace)
        if run.spec == MEMCPY:
            sample = fastest_of(lambda: memcpy_baseline(reader, pm, pieces=True), task.min_sample_s)
        else:
            config = parse_spec(run.spec, pm.presets)
            if task.check:
                res = verify(reader, config, pm, pieces=True)
                sample = {**res.metrics, "verify": {"checked": True, "ok": res.ok,
                                                    "mismatch": str(res.mismatch) if res.mismatch else None}}
                if res.mismatch is not None:
                    sample["status"] = "failed"
                    sample["error"] = {"type": "VerifyMismatch", "message": str(res.mismatch)}
            else:
                sample = fastest_of(lambda: replay(reader, config, pm, decode=task.decode, pieces=True),
                                    task.min_sample_s)
    except Exception as e:  # noqa: BLE001 — a run's failure is its row's, never the sweep's
        sample = _failed(task, e)
    sample.setdefault("status", "ok")
    sample["calibration"] = speed
    sample["repeat"] = task.repeat
    sample["cpu-affinity"] = thread_affinity()  # pinned by the executor, or free
    return sample


def fastest_of(once: Callable[[], dict[str, Any]], min_s: float) -> dict[str, Any]:
    """One timing sample: ``once()`` (a replay), run again back to back until ``min_s`` seconds have
    passed, and its fastest runs: the sender's figures from the run with the least sender CPU, the
    destination's from the one with the least decode CPU; ``replays`` says how many ran.

    Why: a run of 20–80 ms (the memcpy floor, ``none`` on a small trace) is a few scheduler ticks, and
    one page fault or tick more is a large share of it; its min over five repeats still moved by
    10–14 % between two invocations where longer runs moved by 1–5 %. Filling each sample to a fixed
    time gives short runs as many draws as long ones get work (timeit's autorange does the same).
    Counters and wire bytes do not depend on the run, so any run's stand for all. Where the runs cut
    their CPU into pieces, the sample's pieces are each piece's least over the runs (:mod:`.pieces`)."""
    t0 = time.perf_counter()
    best_send = best_decode = once()
    cut = [best_send.get("cpu_pieces")]
    k = 1
    while time.perf_counter() - t0 < min_s:
        s = once()
        cut.append(s.get("cpu_pieces"))
        k += 1
        if sender_cpu_total(s) < sender_cpu_total(best_send):
            best_send = s
        d, bd = decode_cpu_total(s), decode_cpu_total(best_decode)
        if d is not None and bd is not None and d < bd:
            best_decode = s
    if k == 1:
        return best_send
    out = dict(best_send)
    for key in ("cpu_decode", "cpu_decode_s_per_gib", "decode_wall_s"):
        if key in best_decode:
            out[key] = best_decode[key]
    out["replays"] = k
    out.pop("cpu_pieces", None)
    merged = elementwise_min(cut)
    if merged is not None:
        out["cpu_pieces"] = merged
    return out


def _failed(task: Task, e: Exception) -> dict[str, Any]:
    """A failed sample: what is known of the run, and the error (type, message, and a traceback for
    what is not a PageCodecError: a plugin or pagecodec bug)."""
    err: dict[str, Any] = {"type": type(e).__name__, "message": str(e) or repr(e)}
    if not isinstance(e, PageCodecError):
        err["traceback"] = traceback.format_exc()
        err["message"] = f"{type(e).__name__}: {err['message']} (an unexpected error: a plugin's or pagecodec's bug)"
    return failed_sample(task, err)


def failed_sample(task: Task, error: dict[str, Any]) -> dict[str, Any]:
    """The sample of a task that gave none of its own: what is known of its run and ``error`` (type,
    message, …). One shape for a run that raised and for a task an executor lost (a Dask worker that
    died under it), so tables, ``--resume`` and the exit status treat both alike."""
    return {"trace": {"path": task.run.trace}, "config": {"label": _label(task.run.spec)},
            "status": "failed", "error": error, "repeat": task.repeat}


def _label(spec: str) -> str:
    """The config label a run's results carry: the SPEC as given (``parse_spec`` labels a config so),
    known without parsing it, so a run whose config cannot even be parsed is named the same way."""
    return MEMCPY if spec == MEMCPY else (spec.strip() or "none")


def run_key(result: dict[str, Any]) -> tuple[str, str]:
    """(trace, config label): what identifies a run in a results file. The trace is its sha256 when
    known, else its file name."""
    t = result.get("trace", {})
    return (t.get("sha256") or Path(t.get("path", "")).name, result.get("config", {}).get("label", ""))


def run_matrix(
    runs: Iterable[Run],
    *,
    repeat: int = 1,
    check: bool = True,
    decode: bool = True,
    executor: Executor | None = None,
    plugin_modules: Sequence[str] = (),
    done: Sequence[dict[str, Any]] = (),
    samples_done: Sequence[dict[str, Any]] = (),
    on_result: Callable[[dict[str, Any]], None] | None = None,
    on_sample: Callable[[dict[str, Any]], None] | None = None,
    min_sample_s: float = 0.0,
) -> list[dict[str, Any]]:
    """Run every task not already covered by ``done`` (finished runs) or ``samples_done`` (finished
    repeats of unfinished runs, from an interrupted sweep); returns the new results in plan order."""
    runs = list(runs)
    executor = executor or LocalPool(1)
    have = {run_key(r) for r in done}
    sha: dict[str, str] = {}
    if have or samples_done:  # resume: one hash per trace
        sha = {t: TraceReader(t).sha256() for t in {run.trace for run in runs}}

    def key_of(run: Run) -> tuple[str, str]:
        return (sha.get(run.trace) or Path(run.trace).name, _label(run.spec))

    keys = {run: key_of(run) for run in runs} if sha else {}
    todo = [run for run in runs if not keys or keys[run] not in have]
    got: dict[Run, dict[int, dict[str, Any]]] = {run: {} for run in todo}
    by_key = {keys[run]: run for run in todo} if keys else {}
    for s in samples_done:
        run = by_key.get(run_key(s))
        if run is not None and s.get("status") == "ok" and isinstance(s.get("repeat"), int) and s["repeat"] < repeat:
            got[run][s["repeat"]] = s
    tasks = [t for t in plan_tasks(todo, repeat, check=check, decode=decode, plugin_modules=plugin_modules,
                                   min_sample_s=min_sample_s)
             if t.repeat not in got[t.run]]
    results: dict[Run, dict[str, Any]] = {}

    def finish(run: Run) -> None:
        samples = got[run]
        failed = [s for s in samples.values() if s.get("status") != "ok"]
        res = failed[0] if failed else aggregate([samples[i] for i in range(repeat)])
        if failed:  # the failed sample stands for the run; its raw CPU pieces are a sample's, not a result's
            res = {**{k: v for k, v in res.items() if k != "cpu_pieces"}, "timing": {"repeats": len(samples)}}
        results[run] = res
        if on_result:
            on_result(res)

    for run in todo:
        if len(got[run]) == repeat:
            finish(run)
    failed_runs: set[Run] = set()
    for task, sample in executor.run(run_task, tasks, skip=lambda t: t.run in results):
        run = task.run
        if run in results:
            continue
        got[run][task.repeat] = sample
        if sample.get("status") != "ok":
            failed_runs.add(run)
        if len(got[run]) == repeat or run in failed_runs:
            finish(run)
        elif on_sample:
            on_sample(sample)
    return [results[run] for run in todo if run in results]

