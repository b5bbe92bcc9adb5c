"""README's pytest-benchmark table, regenerated from a saved run (``pytest bench/`` saves one).

    python bench/readme_table.py                 # print the table of the newest run in .benchmarks/
    python bench/readme_table.py RUN.json        # … of that run
    python bench/readme_table.py --update README.md   # replace the block between the markers

Per benchmark group (one comparison: an implementation against its baseline in the same run), each
benchmark's min and median time per call, the throughput its ``extra_info`` records (GB/s, MB/s,
pages) where it does, and its median as a multiple of the group's fastest median. The block sits
between ``<!-- pytest-benchmark:start -->`` and ``<!-- pytest-benchmark:end -->`` in README.md, headed
by the run's commit, date and machine, so the figures in the README are always the ones of a run
anyone can redo with ``pytest bench/ --benchmark-only`` and compare with ``--benchmark-compare``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

START = "<!-- pytest-benchmark:start -->"
END = "<!-- pytest-benchmark:end -->"


def newest_run(storage: Path) -> Path:
    runs = sorted(storage.glob("*/*.json"), key=lambda p: p.name)  # NNNN_commit_date.json: counter first
    if not runs:
        raise SystemExit(f"no saved run under {storage}: run `pytest bench/ --benchmark-only` first")
    return runs[-1]


def _time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:,.3g} {unit}"
    return f"{seconds / 1e-9:,.3g} ns"


def _extra(info: dict[str, Any]) -> str:
    parts = []
    for key, value in info.items():
        if isinstance(value, float):
            parts.append(f"{key} {value:,.3g}")
        elif isinstance(value, int):
            parts.append(f"{key} {value:,}")
    return ", ".join(parts)


def table(run: dict[str, Any]) -> str:
    commit = run.get("commit_info", {})
    mach = run.get("machine_info", {})
    cpu = mach.get("cpu", {}) or {}
    head = (f"Run of commit {str(commit.get('id', '?'))[:12]}{' (dirty)' if commit.get('dirty') else ''} on "
            f"{str(run.get('datetime', '?'))[:16]}, {cpu.get('brand_raw', mach.get('processor', '?'))}, "
            f"{cpu.get('count', '?')} CPUs, Python {mach.get('python_version', '?')}:")
    lines = [head, "", "| group | benchmark | min | median | recorded | ÷ fastest median |", "| --- | --- | ---: | ---: | --- | ---: |"]
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in run.get("benchmarks", []):
        groups.setdefault(b.get("group") or "-", []).append(b)
    for group, items in groups.items():
        fastest = min(b["stats"]["median"] for b in items)
        for b in sorted(items, key=lambda b: b["stats"]["median"]):
            st = b["stats"]
            lines.append(f"| {group} | {b['name']} | {_time(st['min'])} | {_time(st['median'])} | "
                         f"{_extra(b.get('extra_info', {}))} | {st['median'] / fastest:.2f} |")
    return "\n".join(lines)


def update(readme: Path, text: str) -> None:
    doc = readme.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{readme}: no {START} … {END} block to replace")
    before, rest = doc.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{text}\n{END}{after}"
    tmp = readme.with_name(f".{readme.name}.tmp")
    tmp.write_text(new)
    tmp.replace(readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", nargs="?", type=Path, help="a saved pytest-benchmark JSON (default: the newest in .benchmarks/)")
    ap.add_argument("--storage", type=Path, default=Path(".benchmarks"))
    ap.add_argument("--update", type=Path, metavar="README", help="replace the marked block in this file")
    args = ap.parse_args()
    path = args.run or newest_run(args.storage)
    text = table(json.loads(path.read_text()))
    if args.update:
        update(args.update, text)
        print(f"updated {args.update} from {path}", file=sys.stderr)
    else:
        print(text)


if __name__ == "__main__":
    main()
