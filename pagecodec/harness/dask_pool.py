"""Sweeps on a Dask cluster: the :class:`~.matrix.Executor` that scales ``bench`` out.

Why Dask (DESIGN.md's scale-out engine): a real scheduler and workers on as many machines as there
are, and the scheduler re-runs the tasks of a worker that dies on the others (``distributed``'s
``scheduler.allowed-failures``), so pagecodec only submits tasks, collects samples and cancels what a
failed run no longer needs. Every :class:`~.matrix.Task` is independent and reads its trace itself,
so a trace must be at the same path on every worker, or at a URL every worker can open
(:class:`~pagecodec.trace.format.TraceReader` reads ``file://``, ``s3://``, ``gs://``, ``hdfs://``, …).

One task per worker process (``--nthreads 1``; ``LocalCluster(threads_per_worker=1)`` here): the CPU
figures are the thread CPU of the worker that ran the task, and a second task in the same process
would share its core and its GIL.

``distributed`` is an optional extra: it is imported only when Dask is asked for, and its absence is
a one-line :class:`~pagecodec.errors.PageCodecError` naming the extra to install.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from contextlib import contextmanager
from dataclasses import replace
from types import ModuleType
from typing import Any

from ..errors import PageCodecError
from ..trace.format import is_url
from .matrix import Run, Task, failed_sample

__all__ = ["DaskPool", "LOCAL", "import_distributed", "task_key"]

#: ``DaskPool(LOCAL)``: start a LocalCluster on this machine for the sweep
LOCAL = "local"


def import_distributed() -> ModuleType:
    """``distributed``, or the one-line error that says how to get it."""
    try:
        import distributed
    except ImportError as e:
        raise PageCodecError(f"Dask scale-out needs the distributed package: pip install 'pagecodec[dask]' ({e})") from None
    return distributed


def task_key(task: Task, index: int, token: str) -> str:
    """A key the dashboard and the worker logs show: trace, config and repeat, made unique by the
    task's place in the sweep and a token of the sweep (two sweeps may share a cluster). Dask groups
    keys by their leading words, so every task of a sweep groups under ``pagecodec-bench``."""
    name = os.path.basename(task.run.trace.rstrip("/")) or task.run.trace
    return f"pagecodec-bench-#{index} {name} [{task.run.spec}] repeat {task.repeat} {token}"


def _for_workers(task: Task) -> Task:
    """The task as a worker must see it: a local path made absolute, since a worker's working
    directory is its own (a URL is left as it is)."""
    trace = task.run.trace
    if is_url(trace) or os.path.isabs(trace):
        return task
    return replace(task, run=Run(os.path.abspath(trace), task.run.spec))


class DaskPool:
    """Runs tasks on a Dask cluster: ``scheduler`` is its address (``tcp://HOST:PORT``) or
    :data:`LOCAL` to start a ``LocalCluster`` of ``n_workers`` processes (one thread each) for the
    sweep and close it after."""

    def __init__(self, scheduler: str = LOCAL, n_workers: int = 2) -> None:
        self._distributed = import_distributed()  # now, so a missing package is said before any work
        self.scheduler = scheduler
        self.n_workers = n_workers

    @property
    def where(self) -> str:
        """The cluster, as messages name it."""
        return "the Dask LocalCluster" if self.scheduler == LOCAL else f"the Dask cluster at {self.scheduler}"

    def __repr__(self) -> str:
        return f"DaskPool({self.scheduler!r}" + (f", n_workers={self.n_workers})" if self.scheduler == LOCAL else ")")

    @contextmanager
    def _client(self) -> Iterator[Any]:
        d = self._distributed
        if self.scheduler == LOCAL:
            # loopback only; no dashboard (bokeh is not a dependency, and port 8787 may be taken)
            with d.LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                host="127.0.0.1", dashboard_address=None) as cluster, d.Client(cluster) as client:
                yield client
            return
        try:
            client = d.Client(self.scheduler)
        except (OSError, ValueError, TypeError) as e:
            raise PageCodecError(f"cannot reach the Dask scheduler at {self.scheduler}: {e}") from None
        with client:
            yield client

    def run(self, fn: Callable[[Task], dict[str, Any]], tasks: Sequence[Task],
            skip: Callable[[Task], bool] | None = None) -> Iterator[tuple[Task, dict[str, Any]]]:
        """Submit every task not skipped, yield (task, sample) as each finishes; after each, cancel
        the tasks ``skip`` no longer wants (a task already running finishes, its sample is dropped).

        A task the cluster could not run — every worker that ran it died (``KilledWorker``), or
        ``fn`` could not even be loaded on the worker — becomes a failed sample naming the task and
        the cluster's error, and the sweep goes on. A task cancelled by the cluster itself (the
        scheduler lost, restarted) stops the sweep with a :class:`PageCodecError`: the runs
        finished so far are already handed out, and ``--resume`` does the rest."""
        todo = [t for t in tasks if skip is None or not skip(t)]
        if not todo:
            return
        d = self._distributed
        token = uuid.uuid4().hex[:8]
        with self._client() as client:
            futures: dict[Any, Task] = {}
            for i, t in enumerate(todo):
                f = client.submit(fn, _for_workers(t), key=task_key(t, i, token), pure=False)
                futures[f] = t
            for f in d.as_completed(list(futures)):
                task = futures.pop(f, None)
                if task is None:  # one we cancelled: as_completed hands those out too
                    continue
                sample = self._sample(f, task)
                f.release()  # the sample is here now: the cluster need not keep it
                yield task, sample
                if skip is not None:
                    drop = [g for g, t in futures.items() if skip(t)]
                    if drop:
                        client.cancel(drop)
                        for g in drop:
                            del futures[g]

    def _sample(self, f: Any, task: Task) -> dict[str, Any]:
        """The task's sample, or a failed one when the cluster could not give it. ``f.result()`` of a
        task whose worker died after finishing it waits while the scheduler runs it again."""
        try:
            return f.result()
        except CancelledError as e:
            why = getattr(e, "reason", None) or " ".join(str(e).split()) or "no reason given"
            raise PageCodecError(
                f"{self.where} cancelled task {f.key!r} ({why}): the finished runs are kept; run again with --resume"
            ) from None
        except Exception as e:  # noqa: BLE001 — the task's own failure, never the sweep's
            what = str(e) or repr(e)
            if f.key not in what:
                what = f"task {f.key!r}: {what}"
            if isinstance(e, ImportError):
                what += " (are pagecodec and the same plugins installed on every worker?)"
            return failed_sample(task, {
                "type": type(e).__name__,
                "message": f"{self.where} could not run it: {type(e).__name__}: {what}",
            })
