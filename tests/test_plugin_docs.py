"""docs/plugins.md, the plugin contract and tutorial, says what the code does: the tutorial's files are
the example package's, in full and in order; its tables name every check of the kit, every hook and
every Codec member. (Its commands run in tests/test_example_plugins.py.)"""

from __future__ import annotations

import re

from conftest import ROOT
from pagecodec import hookspecs
from pagecodec.codecs.base import Codec
from pagecodec.testing import CHECKS

DOC = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
BLOCK = re.compile(r"<!-- (example: (?P<path>\S+)|run in CI) -->\n```[a-z]*\n(?P<body>.*?)\n```", re.S)


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()]


def test_the_tutorial_shows_each_example_file_whole_and_in_order():
    shown: dict[str, list[str]] = {}
    for m in BLOCK.finditer(DOC):
        if m.group("path"):
            shown.setdefault(m.group("path"), []).extend(_lines(m.group("body")))
    assert set(shown) == {"plugins/pagecodec-brotli/pyproject.toml",
                          "plugins/pagecodec-brotli/pagecodec_brotli/__init__.py",
                          "plugins/pagecodec-brotli/tests/test_brotli_conformance.py"}
    for path, lines in shown.items():
        assert lines == _lines((ROOT / path).read_text(encoding="utf-8")), f"docs/plugins.md differs from {path}"


def test_the_contract_names_every_check_hook_and_codec_member():
    for check in CHECKS:
        assert f"| `{check}` |" in DOC
    for hook in ("register_codecs", "register_presets"):
        assert hasattr(hookspecs, hook) and f"def {hook}(register)" in DOC
    members = [m for m in vars(Codec) if not m.startswith("_")]
    for m in members:
        assert f"`{m}" in DOC, f"docs/plugins.md does not describe Codec.{m}"


def test_links_to_the_repository_exist():
    for target in re.findall(r"\]\(\.\./([^)#]+)\)", DOC):
        assert (ROOT / target).exists(), target
