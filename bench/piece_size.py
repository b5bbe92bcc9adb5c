"""How fine the pieces of the piecewise minimum must be: the same replays combined with pieces of one
segment, of several, and whole, and how far two simulated ``bench --repeat 5`` invocations then
differ.

    python bench/piece_size.py [TRACE] [--config SPEC|memcpy] [--seconds S] [--cpu N]
                               [--group G ...] [--pairs P] [--seed K]

It replays TRACE back to back for S seconds, pinned to one CPU, each run cut into its pieces as
``bench`` cuts them (pagecodec.harness.pieces: a piece per 512-page segment; ``--config memcpy`` is
the memcpy floor row). Then it draws P pairs of invocations from the recording: an invocation is five
samples, each ``--sample-time`` seconds of consecutive replays starting at a random moment (as
``bench --repeat 5 --min-sample-time 0.5`` takes them), and its figure is the piecewise minimum with
neighbouring pieces summed in groups of G (G = 1: bench's own pieces; a G as large as the run: the
least whole run). Printed per G: how far apart the two invocations of a pair are (median, 90th
percentile, worst, and the share of pairs more than 10 % apart).

Why: the piecewise minimum needs each piece, not each whole run, to have met a quiet moment once, so
finer pieces remove more of the machine's short bursts, down to where the clock reads themselves
cost. The recording spans S seconds of one machine state; invocations minutes apart can also meet
two states, which no piece size removes (bench/machine_noise.py, and the calibration kernels).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pagecodec.chain.config import parse_spec
from pagecodec.harness.affinity import pinned, worker_cpus
from pagecodec.harness.baseline import MEMCPY, memcpy_baseline
from pagecodec.harness.replay import replay
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader

DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "corpora" / "synth-default.trace.parquet"
#: The invocation bench runs: five samples (--repeat 5) of 0.5 s each (--min-sample-time).
SAMPLES = 5


def record(trace: str, spec: str, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """Replays back to back for ``seconds`` (at least two): their start times (s) and their sender
    pieces (ns), one row a replay."""
    pm = PluginManager(())
    reader = TraceReader(trace)
    if spec == MEMCPY:
        def once() -> list[int]:
            return memcpy_baseline(reader, pm, pieces=True)["cpu_pieces"]["sender"]
    else:
        config = parse_spec(spec, pm.presets)

        def once() -> list[int]:
            return replay(reader, config, pm, pieces=True)["cpu_pieces"]["sender"]
    starts, rows = [], []
    t0 = time.perf_counter()
    while len(rows) < 2 or time.perf_counter() - t0 < seconds:
        starts.append(time.perf_counter() - t0)
        rows.append(once())
    return np.array(starts), np.array(rows, dtype=np.float64)


def grouped(pieces: np.ndarray, group: int) -> np.ndarray:
    """Each replay's pieces with neighbours summed in groups of ``group``."""
    return np.add.reduceat(pieces, np.arange(0, pieces.shape[1], group), axis=1)


def invocation(starts: np.ndarray, cut: np.ndarray, sample_time: float, rng: np.random.Generator) -> float:
    """One simulated invocation's piecewise minimum (ns) over the replays' pieces ``cut`` (:func:`grouped`)."""
    span = max(starts[-1] - sample_time, 0.0)
    samples = []
    for s in rng.uniform(0.0, span, SAMPLES):
        window = np.flatnonzero((starts >= s) & (starts < s + sample_time))
        if len(window) == 0:  # a sample is at least one replay
            window = np.array([int(np.searchsorted(starts, s))]).clip(0, len(starts) - 1)
        samples.append(cut[window].min(axis=0))  # fastest_of: each piece's least over the sample
    return float(np.min(samples, axis=0).sum())  # then each piece's least over the repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--config", default=MEMCPY, help="a config SPEC, or memcpy (the floor row; default)")
    ap.add_argument("--seconds", type=float, default=90.0, help="how long to record (at least two replays)")
    ap.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: the highest usable)")
    ap.add_argument("--group", type=int, action="append", help="pieces summed per group (repeatable; "
                    "default 1, 2, 4, 8 and the whole run)")
    ap.add_argument("--sample-time", type=float, default=0.5, help="seconds of replays per sample")
    ap.add_argument("--pairs", type=int, default=400, help="simulated pairs of invocations")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    cpu = a.cpu if a.cpu is not None else worker_cpus(1)[0]  # the highest usable, as bench pins its worker
    with pinned(cpu):
        _run(a, cpu)


def _run(a: argparse.Namespace, cpu: int) -> None:
    starts, pieces = record(a.trace, a.config, a.seconds)
    n = pieces.shape[1]
    groups = a.group or [1, 2, 4, 8, n]
    rng = np.random.default_rng(a.seed)
    print(f"{a.trace} with config {a.config!r}: {len(starts)} replays of {n} pieces over {starts[-1]:.0f} s "
          f"on CPU {cpu}; {a.pairs} pairs of invocations of {SAMPLES} samples × {a.sample_time:g} s")
    print(f"{'pieces summed':>13} {'pieces/run':>10} {'median':>8} {'p90':>8} {'worst':>8} {'>10 %':>8}")
    for g in groups:
        g = max(1, min(g, n))
        cut = grouped(pieces, g)
        d = np.array([abs(invocation(starts, cut, a.sample_time, rng) / invocation(starts, cut, a.sample_time, rng) - 1)
                      for _ in range(a.pairs)])
        label = "whole run" if g == n else str(g)
        print(f"{label:>13} {-(-n // g):>10} {np.median(d):8.1%} {np.percentile(d, 90):8.1%} {d.max():8.1%} "
              f"{(d > 0.10).mean():8.1%}")
    print("(|first ÷ second - 1| of the two invocations' piecewise minima of sender CPU)")


if __name__ == "__main__":
    main()
