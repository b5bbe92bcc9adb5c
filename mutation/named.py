"""Issue 15's two named mutants, applied one at a time to a scratch copy: which tests catch each.

    python mutation/named.py [pytest args…]     # default: the fast chain tests (~1 min per mutant)

Each mutant is a literal replacement in one file. A mutant whose text is no longer found in the
source fails the run (the code moved on: update the mutant, do not drop it). Exit 0 when every mutant
is caught by at least one test, 1 otherwise. Not part of the default test run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass

from scratch import scratch_copy


@dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str


MUTANTS = [
    Mutant("zero detector ignores a page's last byte", "pagecodec/codecs/zero.py",
           "zero = zero_page_mask(seg.pages)", "zero = zero_page_mask(seg.pages[:, :-1])"),
    Mutant("last_sent_block updated for a segment that wrote nothing", "pagecodec/chain/sender.py",
           "        if data.nbytes:\n            self.ram.last_sent_block = bi\n",
           "        self.ram.last_sent_block = bi\n        if data.nbytes:\n"),
]

DEFAULT_TESTS = ["tests/test_reference_sender.py", "tests/test_zero_edges.py", "tests/test_chain.py",
                 "tests/test_xbzrle_chain.py", "tests/test_zero_detect.py", "tests/test_verify.py",
                 "tests/test_wire_records.py", "tests/test_receiver.py"]


def run(m: Mutant, tests: list[str]) -> list[str]:
    """The tests that fail with ``m`` applied (pytest's node ids)."""
    work = scratch_copy()
    try:
        f = work / m.path
        text = f.read_text()
        if text.count(m.old) != 1:
            raise SystemExit(f"{m.name}: {m.path} no longer holds the mutated text exactly once")
        f.write_text(text.replace(m.old, m.new))
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", *tests],
                             cwd=work, env=env, capture_output=True, text=True).stdout
        return sorted(set(re.findall(r"^FAILED (\S+)", out, re.M)))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str]) -> int:
    tests = argv or DEFAULT_TESTS
    missed = 0
    for m in MUTANTS:
        failed = run(m, tests)
        print(f"{m.name} ({m.path}): {'caught by ' + str(len(failed)) + ' test(s)' if failed else 'SURVIVED'}")
        for t in failed:
            print(f"    {t}")
        missed += not failed
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
