"""Scale: replay and verify of synthetic guests of growing size, time and peak memory of each.

    python bench/scale.py [--sizes 1G,2G,4G] [--rounds 8] [--config SPEC] [--repeat 3] [--keep DIR]

For each size a synthetic trace is generated into a temporary directory (not shipped: a 4 GiB guest's
trace is ~2 GB), then ``pagecodec replay`` and ``pagecodec verify`` run on it as separate processes, so
each one's peak RSS is its own (``resource.getrusage(RUSAGE_CHILDREN)`` after it exits, reset by
running each in a fresh child). Replay and verify alternate ``--repeat`` times per size; the table has
the fastest of each (and their ratio) and the highest peak RSS. The goals (issue 12): replay within guest RAM + cache + 256 MiB,
verify within 2× guest RAM, verify within 2× replay's time, and both linear in the guest size.
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

from pagecodec.chain.config import parse_size

PAGECODEC = [sys.executable, "-m", "pagecodec.cli"]


def run_measured(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes) of ``cmd`` run in a child that reports its own usage."""
    probe = ("import json,resource,subprocess,sys,time;t=time.perf_counter();"
             "p=subprocess.run(sys.argv[1:]);w=time.perf_counter()-t;"
             "print(json.dumps([p.returncode,w,resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))")
    out = subprocess.run([sys.executable, "-c", probe, *cmd], capture_output=True, text=True, check=True)
    rc, wall, kib = json.loads(out.stdout.strip().splitlines()[-1])
    if rc != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}): {out.stderr[-2000:]}")
    return wall, kib * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1G,2G,4G")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--config", default="xbzrle")
    ap.add_argument("--repeat", type=int, default=3, help="replay/verify pairs per size (interleaved)")
    ap.add_argument("--keep", type=Path, help="keep the traces in this directory (and reuse them)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pagecodec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = parse_size("64M") if "xbzrle" in args.config else 0
    mib = 2**20
    print(f"config {args.config!r}, {args.rounds} rounds, 5% dirtied per round, best of {args.repeat} interleaved "
          f"replay/verify pairs (peak RSS: the highest); traces in {work}")
    print("| guest | trace MiB | generate s | replay s | replay peak RSS MiB | verify s | verify peak RSS MiB | "
          "verify ÷ replay | replay RSS ≤ RAM + cache + 256 MiB | verify RSS ≤ 2 × RAM |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    try:
        for size in args.sizes.split(","):
            ram = parse_size(size)
            trace = work / f"synth-{size}.trace.parquet"
            gen = 0.0
            if not trace.exists():
                t0 = time.perf_counter()
                subprocess.run([*PAGECODEC, "trace", "synth", "-o", str(trace), "--ram-size", size, "--rounds",
                                str(args.rounds), "--seed", "3"], check=True, capture_output=True)
                gen = time.perf_counter() - t0
            replays, verifies = [], []
            for _ in range(args.repeat):
                replays.append(run_measured([*PAGECODEC, "replay", str(trace), "--config", args.config]))
                verifies.append(run_measured([*PAGECODEC, "verify", str(trace), "--config", args.config]))
            rw, rr = min(w for w, _ in replays), max(m for _, m in replays)
            vw, vr = min(w for w, _ in verifies), max(m for _, m in verifies)
            print(f"| {size} | {trace.stat().st_size / mib:.0f} | {gen:.1f} | {rw:.1f} | {rr / mib:.0f} | {vw:.1f} | "
                  f"{vr / mib:.0f} | {vw / rw:.2f} | {'yes' if rr <= ram + cache + 256 * mib else 'no'} | "
                  f"{'yes' if vr <= 2 * ram else 'no'} |", flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
