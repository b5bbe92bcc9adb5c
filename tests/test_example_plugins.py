"""The example plugin packages as a user meets them: installed by README's test command, found through
their entry points, listed, and benched on a corpus trace beside pagecodec's own codecs. This runs
docs/plugins.md's tutorial commands (its "run in CI" blocks). The rest of the project's tests load no
installed entry point (tests/conftest.py), so they pass with the examples installed or not; the last
test shows that allowlist at work."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from importlib import metadata

import pytest

from conftest import ROOT
from pagecodec.plugins import LOAD_ENV
from pagecodec.qemu.find import in_ci

DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
RUN_BLOCK = re.compile(r"<!-- run in CI -->\n```sh\n(?P<body>.*?)\n```", re.S)
EXAMPLES = {"pagecodec-brotli": "brotli", "pagecodec-dedup": "dedup"}  # distribution: entry point


def _require(dist: str) -> None:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        msg = f"{dist} is not installed (README's test command installs it: -e \"plugins/{dist}[test]\")"
        if in_ci():
            pytest.fail(f"CI={os.environ.get('CI')!r} but {msg}")
        pytest.skip(msg)


def _pagecodec(*args: str, allow: str | None = None) -> subprocess.CompletedProcess:
    """``pagecodec ARGS`` as a user runs it: installed entry points load (``allow``: an allowlist)."""
    env = {k: v for k, v in os.environ.items() if k != LOAD_ENV}
    if allow is not None:
        env[LOAD_ENV] = allow
    return subprocess.run([sys.executable, "-m", "pagecodec.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=900)


def _tutorial_commands() -> list[str]:
    return [line.strip() for m in RUN_BLOCK.finditer(DOC) for line in m.group("body").splitlines() if line.strip()]


def test_the_tutorials_install_and_test_commands_are_what_the_test_run_does():
    """pip install -e of the example and pytest of its tests: README's test command and the test paths."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    cmds = _tutorial_commands()
    installs = [c for c in cmds if "/pip install " in c]
    tests = [c for c in cmds if " -m pytest " in c]
    assert installs and tests
    for c in installs:
        target = c.split(" -e ", 1)[1]
        assert f"-e {target}" in readme, f"README's test command does not install {target}"
    assert re.search(r'testpaths = \[[^]]*"plugins"', pyproject)
    for c in tests:
        assert (ROOT / c.split()[-1] / "tests").is_dir()


@pytest.mark.parametrize("dist", sorted(EXAMPLES))
def test_an_installed_example_is_found_through_its_entry_point(dist):
    _require(dist)
    p = _pagecodec("plugins", "--json")
    assert p.returncode == 0, p.stderr
    listing = json.loads(p.stdout)
    names = {row["name"]: row for row in listing["plugins"]}
    assert names[EXAMPLES[dist]]["source"] == "entry point"
    assert EXAMPLES[dist] in {c["name"] for c in listing["codecs"]}


def test_the_tutorials_pagecodec_commands_run():
    _require("pagecodec-brotli")
    cmds = [c for c in _tutorial_commands() if c.startswith(".venv/bin/pagecodec ")]
    assert any(" bench " in f" {c} " for c in cmds)
    for c in cmds:
        p = _pagecodec(*shlex.split(c)[1:])
        assert p.returncode == 0, f"{c}: {p.stderr[-2000:]}"
        if shlex.split(c)[1] == "bench":
            rows = [line for line in p.stdout.splitlines() if "brotli" in line and "|" in line]
            assert rows and all("| ok " in r for r in rows), p.stdout
        else:
            assert "brotli" in p.stdout


def test_the_dedup_example_benches_beside_xbzrle(tmp_path):
    _require("pagecodec-dedup")
    out = tmp_path / "r.json"
    p = _pagecodec("bench", "corpora/linux-mixed.trace.parquet", "--config", "dedup", "--config", "xbzrle",
                   "--repeat", "1", "--no-baselines", "--json", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    runs = {r["config"]["label"]: r for r in json.loads(out.read_text())}
    assert runs["dedup"]["status"] == "ok" and runs["dedup"]["verify"]["ok"]
    assert runs["dedup"]["format"]["extension-codecs"] == ["dedup"]


def test_an_empty_allowlist_hides_installed_examples():
    """What tests/conftest.py sets for the project's tests: no installed entry point loads."""
    _require("pagecodec-brotli")
    p = _pagecodec("plugins", "--json", allow="")
    assert p.returncode == 0, p.stderr
    assert "brotli" not in {row["name"] for row in json.loads(p.stdout)["plugins"]}
