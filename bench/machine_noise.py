"""How much of a replay's CPU noise is the machine's: replays back to back, each between two
calibrations, and how closely the replay's CPU follows the calibration kernels.

    python bench/machine_noise.py [TRACE] [--config SPEC] [--seconds S] [--cpu N]

Each step times the calibration kernels (pagecodec.harness.calibration: a 16 MiB copy and zlib on
64 KiB, best of three), replays the trace with the destination decoding (as bench does), and times
the kernels again, all pinned to one CPU. At the end: the spread of the replay's sender CPU, of each
kernel, and the correlation between the replay's CPU and the mean of the kernel readings around it.
A correlation near 1 says the replay's spread is the machine's speed moving, not pagecodec; near 0,
that it is something in the run itself.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pagecodec.chain.config import parse_spec
from pagecodec.harness.affinity import pinned, worker_cpus
from pagecodec.harness.calibration import KERNELS, calibrate
from pagecodec.harness.repeats import sender_cpu_total
from pagecodec.harness.replay import replay
from pagecodec.plugins import PluginManager
from pagecodec.trace.format import TraceReader

DEFAULT_TRACE = Path(__file__).resolve().parent.parent / "corpora" / "linux-gunzip-sort.trace.parquet"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", nargs="?", default=str(DEFAULT_TRACE))
    ap.add_argument("--config", default="xbzrle+zstd")
    ap.add_argument("--seconds", type=float, default=150.0, help="how long to go on (at least two replays)")
    ap.add_argument("--cpu", type=int, default=None, help="the CPU to pin to (default: the highest usable)")
    a = ap.parse_args()
    cpu = a.cpu if a.cpu is not None else worker_cpus(1)[0]  # the highest usable, as bench pins its worker
    with pinned(cpu):
        _run(a, cpu)


def _run(a: argparse.Namespace, cpu: int) -> None:
    pm = PluginManager(())
    reader = TraceReader(a.trace)
    config = parse_spec(a.config, pm.presets)
    rows = []
    t0 = time.perf_counter()
    while len(rows) < 2 or time.perf_counter() - t0 < a.seconds:
        before = calibrate()
        run = replay(reader, config, pm, decode=True)
        after = calibrate()
        rows.append([sender_cpu_total(run)] + [(before[k] + after[k]) / 2 for k in KERNELS])
    data = np.array(rows)
    print(f"{a.trace} with config {a.config!r}: {len(rows)} replays over {time.perf_counter() - t0:.0f} s on CPU {cpu}")
    print(f"{'':22} {'min':>9} {'median':>9} {'max':>9}  {'corr. with replay':>17}")
    names = ["replay sender CPU"] + [f"kernel {k}" for k in KERNELS]
    for j, name in enumerate(names):
        col = data[:, j]
        corr = "" if j == 0 else f"{np.corrcoef(data[:, 0], col)[0, 1]:17.2f}"
        print(f"{name:22} {col.min():9.3f} {np.median(col):9.3f} {col.max():9.3f}  {corr}")
    print("(s/GiB; each kernel the mean of its best-of-3 readings just before and just after the replay)")


if __name__ == "__main__":
    main()
