"""bench on Dask: the same results as the local pool, a worker killed mid-sweep loses nothing, a task
that kills every worker becomes a failed row, --resume from the command line, traces named by URL.

One LocalCluster of 2 worker processes (one thread each) is shared by the module: starting one costs
a few seconds. The tests that kill workers come last (the nanny restarts a killed worker, but it
takes a moment). ``tests/plugins_for_tests/pc_test_dask.py`` gives the slow and the killing codecs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, write_text_trace
from pagecodec.errors import PageCodecError
from pagecodec.harness.dask_pool import DaskPool
from pagecodec.harness.matrix import LocalPool, Run, plan_tasks, run_matrix, run_task
from pagecodec.trace.format import TraceReader

PS = 4096
PLUGINS = str(ROOT / "tests" / "plugins_for_tests")
CONFIGS = ("none", "xbzrle", "compress", "multifd-zlib", "xor-zstd")
SLOW_S = 0.6  # the slow codec's sleep on the module's workers: long enough to catch a task running


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    """Three rounds over 32 pages: text-like pages, zero pages, small rewrites."""
    p = tmp_path_factory.mktemp("dask") / "t.parquet"
    write_text_trace(p, pages=32, text_pages=24, dirty=8, seed=5)
    return p


@pytest.fixture(scope="module")
def cluster():
    """2 worker processes, one thread each, the test plugins importable (workers are spawned with
    this process's sys.path and environment). ``allowed-failures`` 1: a task is run again after one
    worker died under it, and fails with KilledWorker after two (the killer test stays short)."""
    import dask
    from distributed import LocalCluster

    sys.path.insert(0, PLUGINS)
    old_slow = os.environ.get("PCTEST_SLOW_S")
    os.environ["PCTEST_SLOW_S"] = str(SLOW_S)
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                              dashboard_address=None) as c:
                yield c
    finally:
        sys.path.remove(PLUGINS)
        if old_slow is None:
            os.environ.pop("PCTEST_SLOW_S", None)
        else:
            os.environ["PCTEST_SLOW_S"] = old_slow


# -- before the cluster starts: these hide a module or shorten a timeout in this process ----------------
def test_without_distributed_dask_is_refused_in_one_line(monkeypatch, capsys, trace):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    with pytest.raises(PageCodecError, match=r"pip install 'pagecodec\[dask\]'"):
        DaskPool("local")
    from pagecodec.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", str(trace), "--config", "none", "--no-baselines", "--repeat", "1", "--dask", "local"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("pagecodec: error: ") and "pip install 'pagecodec[dask]'" in err


@pytest.mark.parametrize("args, message", [
    (["--dask", "local", "--scheduler", "tcp://127.0.0.1:9"], "not both"),
    (["--scheduler", "tcp://127.0.0.1:9", "--jobs", "3"], "--jobs does not apply to --scheduler"),
])
def test_dask_options_that_contradict_are_usage_errors(args, message, capsys, trace):
    from pagecodec.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", str(trace), "--config", "none", "--no-baselines", "--repeat", "1", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_an_unreachable_scheduler_is_one_error(trace):
    import dask
    import distributed  # noqa: F401 — its defaults in the config first: set() restores what it found

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        with pytest.raises(PageCodecError, match=r"cannot reach the Dask scheduler at tcp://127\.0\.0\.1:9"):
            run_matrix([Run(str(trace), "none")], executor=DaskPool("tcp://127.0.0.1:9"))


def test_a_task_the_cluster_cancels_stops_the_sweep_for_resume(trace):
    """Lost scheduler: every future is cancelled by the client. That is no run's failure (a failed
    row would stay failed on --resume): the sweep stops with one error pointing at --resume."""
    from concurrent.futures import CancelledError

    class Cancelled:
        key = "pagecodec-bench-#0 t.parquet [none] repeat 0 abcd1234"

        def result(self):
            e = CancelledError(f"{self.key} cancelled for reason: scheduler-connection-lost.\nClient lost …")
            e.reason = "scheduler-connection-lost"
            raise e

    pool = DaskPool("tcp://127.0.0.1:9")
    task = plan_tasks([Run(str(trace), "none")], 1)[0]
    with pytest.raises(PageCodecError, match=r"cancelled task .*\(scheduler-connection-lost\).*--resume$") as e:
        pool._sample(Cancelled(), task)
    assert "\n" not in str(e.value)


# -- on the module's cluster ------------------------------------------------------------------------------
def _by_label(results):
    return {r["config"]["label"]: r for r in results}


def test_a_dask_sweep_gives_the_local_pools_bytes(cluster, trace):
    runs = [Run(str(trace), s) for s in CONFIGS]
    local = _by_label(run_matrix(runs, repeat=2, executor=LocalPool(1)))
    dask_ = _by_label(run_matrix(runs, repeat=2, executor=DaskPool(cluster.scheduler_address)))
    assert set(local) == set(dask_) == set(CONFIGS)
    for label in CONFIGS:
        a, b = local[label], dask_[label]
        assert a["status"] == b["status"] == "ok", (label, b.get("error"))
        assert a["verify"] == b["verify"] == {"checked": True, "ok": True, "mismatch": None}, label
        assert a["wire"] == b["wire"], label
        assert a["records"] == b["records"], label
        assert a["trace"]["sha256"] == b["trace"]["sha256"]
        assert b["timing"]["repeats"] == 2


def test_a_trace_url_is_read_locally_and_on_dask(cluster, trace):
    url = trace.resolve().as_uri()
    assert url.startswith("file:///")
    with TraceReader(url) as r, TraceReader(trace) as p:
        assert r.path == url  # named as given, not folded into a Path
        assert (r.num_pages, r.pages_per_round, r.file_size, r.sha256()) == (p.num_pages, p.pages_per_round, p.file_size, p.sha256())
    plain = run_matrix([Run(str(trace), "xbzrle")], executor=LocalPool(1))[0]
    for ex in (LocalPool(1), DaskPool(cluster.scheduler_address)):
        res = run_matrix([Run(url, "xbzrle")], executor=ex)[0]
        assert res["status"] == "ok" and res["verify"]["ok"], (ex, res.get("error"))
        assert res["trace"]["path"] == url
        assert res["wire"] == plain["wire"] and res["trace"]["sha256"] == plain["trace"]["sha256"]


def test_skipped_tasks_are_cancelled(cluster, trace):
    """After the first sample, skip says no to every task: the pool stops without running them all."""
    tasks = plan_tasks([Run(str(trace), "raw-codec=slow")], 8, plugin_modules=["pc_test_dask"])
    seen = []
    t0 = time.monotonic()
    for task, sample in DaskPool(cluster.scheduler_address).run(run_task, tasks, skip=lambda t: bool(seen)):
        assert sample["status"] == "ok", sample.get("error")
        seen.append(task)
    assert 1 <= len(seen) < len(tasks)
    assert time.monotonic() - t0 < len(tasks) * SLOW_S / 2  # running them all on 2 workers takes longer


def test_a_worker_killed_mid_sweep_loses_nothing(cluster, trace):
    """Kill one worker (SIGKILL) while both run a slow task, after the first samples came back: the
    scheduler runs its tasks again elsewhere, every run completes ok with all its repeats, and the
    samples that had arrived are in the results."""
    from distributed import Client

    specs = ["raw-codec=slow", "xbzrle,raw-codec=slow", "compress,raw-codec=slow"]
    runs = [Run(str(trace), s) for s in specs]
    killed: list[int] = []
    early: list[dict] = []

    with Client(cluster.scheduler_address) as client:

        def on_sample(sample: dict) -> None:
            early.append(sample)
            if killed:
                return
            time.sleep(0.2)  # a task finishing with this one has finished, and both workers took new ones
            busy = [w for w, keys in client.processing().items() if keys]
            assert busy, "no task in flight to kill a worker under"
            pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

        results = run_matrix(runs, repeat=2, executor=DaskPool(cluster.scheduler_address),
                             plugin_modules=["pc_test_dask"], on_sample=on_sample)
    assert killed
    assert [r["status"] for r in results] == ["ok"] * 3, [r.get("error") for r in results]
    assert all(r["timing"]["repeats"] == 2 and r["verify"]["ok"] for r in results)
    assert {r["config"]["label"] for r in results} == set(specs)
    # every sample handed out before the run ended went into its run's result
    for s in early:
        res = next(r for r in results if r["config"]["label"] == s["config"]["label"])
        assert res["wire"] == s["wire"]


def test_a_task_that_kills_every_worker_is_a_failed_row(cluster, trace):
    """The killer codec kills the worker that runs it: after allowed-failures + 1 deaths the
    scheduler gives up (KilledWorker); that run is a failed row naming the task, the other is ok."""
    runs = [Run(str(trace), "raw-codec=killer"), Run(str(trace), "none")]
    results = _by_label(run_matrix(runs, executor=DaskPool(cluster.scheduler_address),
                                   plugin_modules=["pc_test_dask"]))
    bad = results["raw-codec=killer"]
    assert bad["status"] == "failed"
    assert bad["error"]["type"] == "KilledWorker"
    assert "raw-codec=killer" in bad["error"]["message"] and "workers died" in bad["error"]["message"]
    assert results["none"]["status"] == "ok"


# -- the command line ---------------------------------------------------------------------------------
# SIGINT is ignored in a process a non-interactive shell starts in the background, and Python keeps it
# ignored; the test's Ctrl-C must reach bench whatever started pytest, so bench runs with the handler set.
_BENCH = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
          "runpy.run_module('pagecodec.cli', run_name='__main__', alter_sys=True)")


def test_bench_on_dask_local_writes_as_it_goes_and_resumes(tmp_path, trace):
    """`bench --dask local --jobs 2 --json F`: F holds the first finished run while the sweep goes on;
    interrupted then, `--resume` keeps that run as it was and completes the others."""
    out = tmp_path / "r.json"
    specs = ["raw-codec=slow", "xbzrle,raw-codec=slow", "compress,raw-codec=slow"]
    args = [sys.executable, "-c", _BENCH, "--plugin", "pc_test_dask", "bench", str(trace), "--no-baselines",
            "--repeat", "2", "--dask", "local", "--jobs", "2", "--json", str(out)]
    for s in specs:
        args += ["--config", s]
    env = dict(os.environ, PYTHONPATH=PLUGINS, PCTEST_SLOW_S="0.75")
    p = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = None
        deadline = time.monotonic() + 60
        while first is None and p.poll() is None and time.monotonic() < deadline:
            if out.exists():
                first = json.loads(out.read_text())
            time.sleep(0.02)
        assert first is not None and p.poll() is None, "the JSON was not written while the sweep ran"
        assert 1 <= len(first) < len(specs)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode in (130, 0), err  # 0: the sweep had just finished
    interrupted = json.loads(out.read_text())
    assert interrupted[: len(first)] == first

    env["PCTEST_SLOW_S"] = "0"
    r = subprocess.run([*args, "--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    final = json.loads(out.read_text())
    assert sorted(x["config"]["label"] for x in final) == sorted(specs)
    assert final[: len(interrupted)] == interrupted  # finished runs kept as they were
    assert all(x["status"] == "ok" and x["timing"]["repeats"] == 2 for x in final)
    assert not Path(f"{out}.partial").exists()
