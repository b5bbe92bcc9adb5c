""".ci/run is CI by itself: it sets CI=true before the tests run (the QEMU tests' must-not-skip guard
reads it), rather than relying on the runner to export it."""

from __future__ import annotations

import re
from pathlib import Path

CI_RUN = Path(__file__).resolve().parents[1] / ".ci" / "run"


def test_ci_run_exports_ci_true_before_pytest():
    lines = [line.strip() for line in CI_RUN.read_text().splitlines()]
    export = next((i for i, line in enumerate(lines) if re.fullmatch(r"export CI=(true|\"true\"|'true')", line)), None)
    pytest_line = next(i for i, line in enumerate(lines) if "-m pytest" in line and not line.startswith("#"))
    assert export is not None and export < pytest_line, ".ci/run must `export CI=true` before it runs pytest"
