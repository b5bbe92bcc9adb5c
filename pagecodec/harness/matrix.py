"""Sweeps: every trace × every configuration, in this process or a local process pool.

Each run is independent (its own plugin manager, sender, destination and counters), so runs
parallelise across processes; ``--resume`` skips (trace sha256, config) pairs already present in the
results file. By default every run's stream is also decoded (``replay(decode=True)``), so results
carry the destination's CPU per stage next to the sender's; ``decode=False`` (``--no-decode``) skips it.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from ..chain.config import parse_spec
from ..errors import ConfigError
from ..plugins import PluginManager
from ..trace.format import TraceReader
from .replay import replay

__all__ = ["Run", "expand_sweeps", "plan_runs", "run_one", "run_matrix"]


@dataclass(frozen=True)
class Run:
    trace: str
    spec: str


def expand_sweeps(specs: Sequence[str], sweeps: Sequence[str]) -> list[str]:
    """``--sweep KEY=V1,V2`` multiplies every config by each value of KEY."""
    axes: list[list[str]] = []
    for sw in sweeps:
        key, eq, values = sw.partition("=")
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not eq or not key.strip() or not vals:
            raise ConfigError(f"--sweep {sw!r}: expected KEY=V1,V2,…")
        axes.append([f"{key.strip()}={v}" for v in vals])
    out = []
    for spec in specs:
        for combo in itertools.product(*axes) if axes else [()]:
            out.append(",".join(x for x in (spec, *combo) if x and x != "none") or "none")
    return list(dict.fromkeys(out))


def plan_runs(traces: Sequence[str], specs: Sequence[str]) -> list[Run]:
    return [Run(t, s) for t in traces for s in specs]


def run_one(run: Run, plugin_modules: Sequence[str] = (), decode: bool = True) -> dict[str, Any]:
    """One replay, decoded on the destination unless ``decode`` is False (also the unit of work of
    a pool worker)."""
    pm = PluginManager(plugin_modules)
    config = parse_spec(run.spec, pm.presets)
    reader = TraceReader(run.trace)
    return replay(reader, config, pm, decode=decode)


def _key(trace_sha: str, label: str) -> tuple[str, str]:
    return (trace_sha, label)


def run_matrix(
    runs: Iterable[Run],
    *,
    jobs: int = 1,
    plugin_modules: Sequence[str] = (),
    decode: bool = True,
    done: Sequence[dict[str, Any]] = (),
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run everything not already in ``done``; results come back in plan order."""
    have = {_key(r["trace"]["sha256"], r["config"]["label"]) for r in done}
    todo = list(runs)
    if have:  # resume: one plugin manager and one hash per trace, not one per run
        presets = PluginManager(plugin_modules).presets
        sha = {t: TraceReader(t).sha256() for t in {run.trace for run in todo}}
        todo = [run for run in todo if _key(sha[run.trace], parse_spec(run.spec, presets).label) not in have]
    results: list[dict[str, Any]] = []
    if jobs <= 1 or len(todo) <= 1:
        for run in todo:
            res = run_one(run, plugin_modules, decode)
            results.append(res)
            if on_result:
                on_result(res)
        return results
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(run_one, run, tuple(plugin_modules), decode) for run in todo]
        for f in futures:
            res = f.result()
            results.append(res)
            if on_result:
                on_result(res)
    return results
