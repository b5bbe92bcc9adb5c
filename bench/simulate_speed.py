"""Simulate vs bench: is simulating a timed trace cheap next to benchmarking it? (issue 14's acceptance)

    python bench/simulate_speed.py [--ram-size 1G] [--rounds 41] [--interval 0.05] [--dirty-rate 64M]
        [--config xbzrle] [--link 10G] [--downtime-limit T] [--repeat 3] [--threshold 2] [--keep DIR]
        [--json OUT]

Issue 14: "Simulating a 1 GiB-guest timed trace at one link speed and one config takes < 2× the time
of a plain ``bench`` of it." A timed dirty log is made with ``pagecodec trace synth --interval`` (into
a temporary directory unless ``--keep``), then, ``--repeat`` times interleaved (so a drift of the
machine's speed hits both alike):

* ``pagecodec simulate TRACE --config CONFIG --link LINK``
* ``pagecodec bench TRACE --config CONFIG --repeat 1`` — the plain bench: its defaults (memcpy and
  none baseline rows, decode and verify on the first repeat) are part of what the acceptance compares
  with;
* with ``--sender-only`` (default on), also ``bench … --no-baselines --no-decode``: the same config's
  sender alone, the work closest to simulate's (which encodes and does not decode), for information.

Each is a separate process (the CLI, not the library: the commands' own work, whatever their
internals become), run in a fresh child that reports its own ``RUSAGE_CHILDREN``, so each peak RSS
is its own (bench's pool workers included). ``--json`` is passed to both (to read the passes and
pages from, a few KB written). The table gives the fastest wall time of each and the highest peak
RSS; the ratio is simulate's best ÷ plain bench's best. Exit status 1 if the ratio is ≥
``--threshold`` (default 2), so a CI job can gate on it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import PAGECODEC, run_measured  # noqa: E402  (bench/ scripts share their helpers by path)

MIB = 2**20


def synth_command(trace: Path, args: argparse.Namespace) -> list[str]:
    """The ``trace synth`` command making the timed log."""
    return [*PAGECODEC, "trace", "synth", "-o", str(trace), "--ram-size", args.ram_size, "--rounds", str(args.rounds),
            "--interval", repr(args.interval), "--dirty-rate", args.dirty_rate, "--seed", "3"]


def commands(trace: Path, out: Path, args: argparse.Namespace) -> dict[str, list[str]]:
    """The timed commands, by name, in the order they run within a repeat."""
    cmds = {
        "simulate": [*PAGECODEC, "simulate", str(trace), "--config", args.config, "--link", args.link,
                     *(["--downtime-limit", args.downtime_limit] if args.downtime_limit else []),
                     "--json", str(out / "simulate.json")],
        "bench": [*PAGECODEC, "bench", str(trace), "--config", args.config, "--repeat", "1",
                  "--json", str(out / "bench.json")],
    }
    if args.sender_only:
        cmds["bench sender only"] = [*PAGECODEC, "bench", str(trace), "--config", args.config, "--repeat", "1",
                                     "--no-baselines", "--no-decode", "--json", str(out / "bench-sender.json")]
    return cmds


def verdict(ratio: float, threshold: float) -> int:
    """The exit status: 0 if simulate took less than ``threshold`` × bench, else 1."""
    return 0 if ratio < threshold else 1


def simulation_summary(path: Path) -> dict[str, Any]:
    """Passes, pages sent and the simulated times from simulate's JSON (keys missing: left out)."""
    try:
        run = json.loads(path.read_text())["runs"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return {}
    sim = run.get("simulation", {})
    out = {k: sim[k] for k in ("status", "passes", "total-time", "downtime") if k in sim}
    log = sim.get("pass-log")
    if isinstance(log, list):
        out["pages-sent"] = sum(int(p.get("pages", 0)) for p in log)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ram-size", default="1G", help="guest RAM of the synthetic log (default 1G; smaller for CI)")
    ap.add_argument("--rounds", type=int, default=41, help="rounds of the log, image included (default 41)")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds per slice (default 0.05)")
    ap.add_argument("--dirty-rate", default="64M", help="bytes dirtied per second (default 64M)")
    ap.add_argument("--config", default="xbzrle")
    ap.add_argument("--link", default="10G")
    ap.add_argument("--downtime-limit", default=None,
                    help="passed to simulate (default: simulate's own); lower it to make the migration take more passes")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs of each command; the fastest counts")
    ap.add_argument("--threshold", type=float, default=2.0, help="fail (exit 1) if simulate ÷ bench ≥ this")
    ap.add_argument("--sender-only", action=argparse.BooleanOptionalAction, default=True,
                    help="also time bench --no-baselines --no-decode (information, not gated)")
    ap.add_argument("--keep", type=Path, help="keep the trace in this directory (and reuse it)")
    ap.add_argument("--json", type=Path, help="write the figures as JSON here")
    args = ap.parse_args(argv)
    if args.repeat < 1:
        ap.error("--repeat must be >= 1")
    work = args.keep or Path(tempfile.mkdtemp(prefix="pagecodec-simspeed-"))
    work.mkdir(parents=True, exist_ok=True)
    trace = work / f"log-{args.ram_size}-{args.rounds}x{args.interval:g}s-{args.dirty_rate}.trace.parquet"
    try:
        gen = 0.0
        if not trace.exists():
            t0 = time.perf_counter()
            subprocess.run(synth_command(trace, args), check=True, capture_output=True)
            gen = time.perf_counter() - t0
        cmds = commands(trace, work, args)
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in cmds}
        for _ in range(args.repeat):
            for name, cmd in cmds.items():
                samples[name].append(run_measured(cmd))
        best = {name: min(w for w, _ in s) for name, s in samples.items()}
        rss = {name: max(m for _, m in s) for name, s in samples.items()}
        ratio = best["simulate"] / best["bench"]
        status = verdict(ratio, args.threshold)
        sim = simulation_summary(work / "simulate.json")

        print(f"timed log: {' '.join(synth_command(trace, args)[len(PAGECODEC):])} "
              f"({trace.stat().st_size / MIB:.0f} MiB file{f', made in {gen:.1f} s' if gen else ', reused'})")
        print(f"best of {args.repeat} interleaved runs each (peak RSS: the highest)")
        print("| command | best s | all s | peak RSS MiB | ÷ bench |")
        print("|---|---:|---|---:|---:|")
        for name, cmd in cmds.items():
            walls = ", ".join(f"{w:.2f}" for w, _ in samples[name])
            shown = ["TRACE" if a == str(trace) else a for a in cmd[len(PAGECODEC):-2]]  # without --json FILE
            print(f"| `{' '.join(shown)}` | {best[name]:.2f} | {walls} | {rss[name] / MIB:.0f} | "
                  f"{best[name] / best['bench']:.2f} |")
        if sim:
            print("simulation: " + ", ".join(f"{k} {v}" for k, v in sim.items()))
        print(f"ratio simulate ÷ bench = {ratio:.2f} ({'<' if status == 0 else '≥'} threshold {args.threshold:g}: "
              f"{'ok' if status == 0 else 'FAIL'})")
        if args.json:
            args.json.write_text(json.dumps({
                "trace": str(trace), "trace_bytes": trace.stat().st_size, "ram_size": args.ram_size,
                "config": args.config, "link": args.link, "repeat": args.repeat, "threshold": args.threshold,
                "commands": {n: c[len(PAGECODEC):] for n, c in cmds.items()},
                "wall_s": {n: [w for w, _ in s] for n, s in samples.items()}, "best_s": best,
                "peak_rss_bytes": rss, "ratio": ratio, "ok": status == 0, "simulation": sim,
            }, indent=1))
        return status
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
