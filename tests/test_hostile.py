"""Issue 11's regression corpus (tests/hostile_corpus.py), replayed on every run under ulimit -v 4 GiB.

Every hostile input must end, via the API, in the PageCodecError subclass its case names (one-line
message) and, via the command line, in exit status 2 with one stderr line naming what is wrong,
leaving nothing in the output directory; the process replaying the corpus (tests/hostile_run.py, all
cases in one process) must peak under 512 MiB of RSS over the inputs under 1 MiB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hostile_corpus import cases

CASES = cases()
RSS_LIMIT_MIB = 512


@pytest.fixture(scope="module")
def replayed(tmp_path_factory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("hostile")
    p = subprocess.run([sys.executable, str(Path(__file__).with_name("hostile_run.py")), str(work)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-4000:]
    out = {}
    for line in p.stdout.splitlines():
        rec = json.loads(line)
        out[rec["name"]] = rec
    assert set(out) == {c.name for c in CASES}, p.stderr[-4000:]
    return out


@pytest.mark.parametrize("case", [c for c in CASES if c.api], ids=lambda c: c.name)
def test_api_raises_its_error(replayed, case):
    rec = replayed[case.name]
    assert "api" in rec, rec
    err = rec["api"]
    assert err is not None, f"{case.name}: nothing raised"
    assert "PageCodecError" in err["mro"] and case.error in err["mro"], (err["type"], err["message"], err["traceback"])
    assert case.expect in err["message"] and "\n" not in err["message"], err["message"]


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=lambda c: c.name)
def test_cli_one_line_exit_2_nothing_left(replayed, case):
    cli = replayed[case.name].get("cli")
    assert cli is not None
    lines = cli["stderr"].strip().splitlines()
    assert cli["rc"] == 2, cli["stderr"][-3000:]
    assert len(lines) == 1 and "Traceback" not in cli["stderr"], cli["stderr"][-3000:]
    assert case.expect in lines[0], lines[0]
    assert cli["left"] == [], f"left behind: {cli['left']}"


def test_peak_rss_under_limit(replayed):
    """Inputs under 1 MiB (all but the cases tagged big, which run last) keep the process under 512 MiB."""
    small = [replayed[c.name]["peak_rss_mib"] for c in CASES if "big" not in c.tags]
    assert max(small) < RSS_LIMIT_MIB, {c.name: replayed[c.name]["peak_rss_mib"] for c in CASES}
