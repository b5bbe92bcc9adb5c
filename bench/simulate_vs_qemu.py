"""The time model against real QEMU 7.2 (issue 14): passes, bytes and time of real migrations beside ``simulate``.

    python bench/simulate_vs_qemu.py [--repeats 3] [--json out.json] [--keep DIR]

Captures one timed dirty log of the project's guest (``capture qemu --interval``), then migrates the
same workload for real with QEMU for each case of
:data:`pagecodec.harness.validate_simulate.CASES` (none and xbzrle, at 1 MiB/s with a 50 ms downtime
limit and 2 MiB/s with 20 ms) and runs ``pagecodec simulate`` on the log with the same settings. Each
real case runs ``--repeats`` times (the run of median total time is compared, and the spread of all is
printed). Prints QEMU beside the model; exit status 1 if a case misses the tolerances (syncs ±1,
transferred 15 %, total time max(15 %, 100 ms)). Needs qemu-system-x86_64 (7.2) and binutils.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from pagecodec.atomic import atomic_write_bytes
from pagecodec.harness.validate_simulate import CASES, format_rows, validate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="real migrations per case (median compared)")
    ap.add_argument("--json", type=Path, help="write QEMU's and the model's figures here")
    ap.add_argument("--keep", type=Path, help="working directory to keep (the log, the guest)")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="pagecodec-vs-qemu-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rows = validate(work, CASES, real_repeats=args.repeats)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(format_rows(rows))
    for r in rows:
        spread = r.real.get("runs", [])
        if len(spread) > 1:
            print(f"{r.case.label}: QEMU runs: syncs {[x['dirty-sync-count'] for x in spread]}, transferred "
                  f"{[x['transferred'] for x in spread]}, total-time {[x['total-time'] for x in spread]}")
    if args.json:
        atomic_write_bytes(args.json, json.dumps([{"case": r.case.label, "qemu": r.real, "model": r.model,
                                                   "checks": r.checks} for r in rows], indent=1).encode())
    sys.exit(0 if all(r.ok for r in rows) else 1)


if __name__ == "__main__":
    main()
