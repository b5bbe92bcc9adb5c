"""PAGECODEC_HYPOTHESIS_EXAMPLES reaches every property test (README says it scales them).

A literal ``@settings(max_examples=N)`` overrides hypothesis's profile, which is how the variable once
reached 1 of 12 property tests. Two checks: no test file passes a ``max_examples`` that is not
``hyp.examples(...)``, and, in a fresh interpreter with the variable set, every collected hypothesis
test of every test module really has that many examples.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def _settings_calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "settings":
            for kw in node.keywords:
                if kw.arg == "max_examples":
                    yield node.lineno, kw.value


def test_no_literal_example_counts():
    bad = []
    for path in sorted([*TESTS.glob("*.py"), *(ROOT / "bench").glob("*.py")]):
        for line, value in _settings_calls(path):
            if not (isinstance(value, ast.Call) and getattr(value.func, "id", None) == "examples") and not (
                    isinstance(value, ast.Name) and value.id == "EXAMPLES"):
                bad.append(f"{path.relative_to(ROOT)}:{line}: max_examples={ast.unparse(value)}")
    assert not bad, "use hyp.examples(n), which PAGECODEC_HYPOTHESIS_EXAMPLES overrides:\n" + "\n".join(bad)


_PROBE = r"""
import importlib, inspect, json, sys
sys.path.insert(0, sys.argv[1])
import conftest  # registers and loads the 'pagecodec' profile, as pytest does
found = {}
for name in sorted(p[:-3] for p in __import__("os").listdir(sys.argv[1]) if p.startswith("test_") and p.endswith(".py")):
    mod = importlib.import_module(name)
    items = [(n, o) for n, o in vars(mod).items()]
    items += [(f"{n}.{m}", f) for n, o in vars(mod).items() if inspect.isclass(o) for m, f in vars(o).items()]
    for n, f in items:
        if getattr(f, "is_hypothesis_test", False):
            found[f"{name}::{n}"] = f._hypothesis_internal_use_settings.max_examples
print(json.dumps(found))
"""


def test_the_variable_sets_every_property_test():
    env = dict(os.environ, PAGECODEC_HYPOTHESIS_EXAMPLES="3")
    out = subprocess.run([sys.executable, "-c", _PROBE, str(TESTS)], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    given = sum(path.read_text().count("@given(") for path in TESTS.glob("test_*.py"))
    assert len(found) >= given - 2, (len(found), given)  # (an @given may sit in a docstring)
    wrong = {k: v for k, v in found.items() if v != 3}
    assert not wrong, f"PAGECODEC_HYPOTHESIS_EXAMPLES=3 does not reach: {wrong}"
