"""bench/scale.py runs end to end on a small guest and its table says what the goals need."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_scale_script_measures_replay_and_verify(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--sizes", "8M", "--rounds", "3",
                        "--repeat", "2", "--keep", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    rows = [line for line in p.stdout.splitlines() if line.startswith("| 8M |")]
    assert len(rows) == 1, p.stdout
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    replay_s, replay_mib, verify_s, verify_mib, ratio = map(float, (cells[3], cells[4], cells[5], cells[6], cells[7]))
    # the seconds are printed to 0.1 s, the ratio from the unrounded times: allow what the rounding can move
    # v/r by (up to 0.05 s on each), plus the ratio's own rounding
    assert replay_s > 0 and verify_s > 0
    slack = 0.05 / replay_s + 0.05 * verify_s / replay_s ** 2 + 0.005
    assert abs(ratio - verify_s / replay_s) <= slack
    assert replay_mib > 8 and verify_mib > 8  # a Python process with numpy, at least
    assert (tmp_path / "synth-8M.trace.parquet").exists()  # --keep keeps the trace
