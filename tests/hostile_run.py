"""Replays the regression corpus (:mod:`hostile_corpus`) in one process under ``ulimit -v`` 4 GiB.

    python tests/hostile_run.py WORKDIR [CASE ...]

Sets RLIMIT_AS to 4 GiB before anything heavy is imported (as ``ulimit -v 4194304`` would), then for
every case: calls its API entry and records what it raised; runs its command line in this process
(``pagecodec.cli.main``, stderr captured, SystemExit's status kept) and lists what is left in its
output directory. Prints one JSON object per case (with the process's peak RSS so far) on stdout.
One process for all cases keeps the run to seconds, and its peak RSS bounds every case's.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
import sys
import traceback
from pathlib import Path

LIMIT = 4 << 30  # ulimit -v 4194304 (KiB)


def _peak_mib() -> int:
    """This process's peak RSS (VmHWM: ru_maxrss would include the parent's, kept across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def _left(d: Path) -> list[str]:
    """Files a failed run left where it was told to write (the out/ directory, a missing nodir/)."""
    out = sorted(os.listdir(d / "out")) if (d / "out").is_dir() else []
    return out + (["nodir/"] if (d / "nodir").exists() else [])


def main(argv: list[str]) -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, hard if hard == resource.RLIM_INFINITY else min(hard, LIMIT)))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from hostile_corpus import cases

    from pagecodec.cli import main as cli_main

    work = Path(argv[0])
    wanted = set(argv[1:])
    # cases with inputs over 1 MiB ("big") last: the RSS bound is for the others, and peak RSS only grows
    for case in sorted(cases(), key=lambda c: "big" in c.tags):
        if wanted and case.name not in wanted:
            continue
        rec: dict = {"name": case.name}
        d = work / case.name
        (d / "api").mkdir(parents=True, exist_ok=True)
        made = case.make(d / "api")
        if "api" in made:
            try:
                made["api"]()
                rec["api"] = None
            except BaseException as e:  # noqa: BLE001 — what it raised is the result
                rec["api"] = {"type": type(e).__name__, "mro": [c.__name__ for c in type(e).__mro__],
                              "message": str(e)[:4000],
                              "traceback": "" if "PageCodecError" in [c.__name__ for c in type(e).__mro__]
                              else traceback.format_exc()[-4000:]}
        if case.cli:
            (d / "cli").mkdir(parents=True, exist_ok=True)
            made = case.make(d / "cli")
            if "argv" in made:
                err, out = io.StringIO(), io.StringIO()
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
                    try:
                        cli_main(["--no-progress", *made["argv"]])
                        rc: object = 0
                    except SystemExit as e:
                        rc = e.code if isinstance(e.code, int) else 1
                    except BaseException as e:  # noqa: BLE001
                        rc = f"raised {type(e).__name__}"
                        print(traceback.format_exc(), file=err)
                rec["cli"] = {"rc": rc, "stderr": err.getvalue()[-4000:], "left": _left(d / "cli")}
        rec["peak_rss_mib"] = _peak_mib()
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
