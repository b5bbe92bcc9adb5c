"""Real QEMU 7.2 (marker ``qemu``): ``pagecodec simulate`` reproduces real migrations of the same workload.

The bounded form of ``bench/simulate_vs_qemu.py`` (issue 14's acceptance): one dirty log of the
project's guest, then each case of :data:`~pagecodec.harness.validate_simulate.CASES` (none and
xbzrle at 1 MiB/s / 50 ms and 2 MiB/s / 20 ms) migrated once for real and once by the model. Each
must agree in ``dirty-sync-count`` (±1), ``transferred`` (15 %) and ``total-time`` (max(15 %,
100 ms)); QEMU needs several passes in every case, so the switch-over rule is what is tested.
Where the model disagrees with the real run, QEMU migrates the case up to twice more and the model
is judged against the real run it agrees with best: on a busy host QEMU's own sync count moved by
one or two between runs of one workload (``none`` at 1 MiB/s, 50 ms: 9 syncs when the cases were
chosen, 10 later). The model moves with its capture too: the same case gave 8 syncs from the logs of
two CI runs on 2026-11-30 (QEMU: 10, 10, 10) and 11 from two others. So a case that still misses is
tried once more from a fresh capture; every attempt's table is printed, and the failure shows all.
"""

from __future__ import annotations

import pytest

from pagecodec.harness.validate_simulate import CASES, format_rows, validate
from pagecodec.qemu.find import require_for_tests

pytestmark = pytest.mark.qemu


def test_model_matches_real_qemu(tmp_path, capsys):
    require_for_tests()
    tables, pending = [], list(CASES)
    for attempt in range(2):  # a second attempt, with a fresh capture, for the cases that missed
        work = tmp_path / f"attempt-{attempt}"
        work.mkdir()
        rows = validate(work, pending, real_repeats=1, retry_real=2)
        tables.append(format_rows(rows))
        with capsys.disabled():
            print("\n" + tables[-1])
        for r in rows:
            assert r.real["dirty-sync-count"] >= 5, f"{r.case.label}: QEMU switched over too early to test anything"
        pending = [r.case for r in rows if not r.ok]
        if not pending:
            break
    assert not pending, "\n\n".join(tables)
