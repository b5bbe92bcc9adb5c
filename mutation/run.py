"""Mutation testing of the wire, the chain and the QEMU codecs, with cosmic-ray, in a scratch copy.

    pip install -e '.[mutation]'
    # the bounded run (README, Mutation testing): ~250 of the ~3,600 mutants, ~30 min of CPU here
    nice -n 19 python mutation/run.py --sample 0.10 --share receiver=0.03 --share multifd=0.05 \
        --share xbzrle_kernel=0.02 --json mutation.json
    nice -n 19 python mutation/run.py --module zero --module raw          # every mutant of two modules

Each module is mutated by cosmic-ray in a scratch copy of the checkout (mutation/scratch.py) and tested
with the fast tests that exercise it (``MODULES``), ``pytest -x``: a mutant is killed when a test fails
(or times out, or the module no longer imports). ``--sample F`` runs a stable share F of each module's
mutants, chosen by a hash of each mutant's identity (module, operator, source line, rank on that line),
so the same mutants are picked before and after a change to the tests. Survivors listed in
``mutation/equivalent.toml`` (with the reason they cannot change behaviour) are equivalent mutants;
any other survivor fails the run (exit 1) and is printed with its diff. Not part of the default tests.

The score is killed / (mutants run − equivalent ones).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from scratch import ROOT, scratch_copy

_FAST = ["tests/test_reference_sender.py", "tests/test_chain.py"]
#: module -> (tests that exercise it, fastest and most sensitive first; per-mutant timeout in seconds)
MODULES: dict[str, tuple[list[str], int]] = {
    "pagecodec/chain/sender.py": ([*_FAST, "tests/test_sender_accounting.py", "tests/test_xbzrle_chain.py",
                                   "tests/test_verify.py"], 90),
    "pagecodec/codecs/zero.py": (["tests/test_zero_edges.py", "tests/test_zero_detect.py", *_FAST], 60),
    "pagecodec/codecs/xbzrle.py": (["tests/test_reference_sender.py", "tests/test_xbzrle_codec.py",
                                    "tests/test_xbzrle_chain.py"], 60),
    "pagecodec/codecs/page_cache.py": (["tests/test_page_cache.py", "tests/test_reference_sender.py",
                                       "tests/test_xbzrle_chain.py"], 60),
    "pagecodec/codecs/raw.py": ([*_FAST, "tests/test_receiver.py"], 60),
    "pagecodec/wire/records.py": (["tests/test_wire_records.py", *_FAST, "tests/test_xbzrle_chain.py",
                                   "tests/test_extension_records.py"], 60),
    "pagecodec/wire/qevm.py": (["tests/test_wire_records.py", *_FAST, "tests/test_receiver.py",
                                "tests/test_wire_qevm.py"], 60),
    "pagecodec/wire/reader.py": (["tests/test_receiver.py", "tests/test_wire_reader.py", "tests/test_wire_records.py",
                                  "tests/test_decoder_fuzz.py"], 60),
    "pagecodec/wire/writer.py": (["tests/test_wire_records.py", *_FAST, "tests/test_wire_writer.py"], 60),
    "pagecodec/wire/flags.py": (["tests/test_wire_records.py", *_FAST, "tests/test_receiver.py"], 60),
    "pagecodec/wire/extension.py": (["tests/test_wire_records.py", "tests/test_extension_records.py",
                                     "tests/test_receiver.py"], 60),
    "pagecodec/chain/receiver.py": (["tests/test_receiver.py", "tests/test_receiver_edges.py", "tests/test_chain.py",
                                    "tests/test_extension_records.py", "tests/test_verify.py", "tests/test_decoder_fuzz.py",
                                    "tests/test_compress_chain.py", "tests/test_delta_codecs.py"], 240),
    "pagecodec/wire/multifd.py": (["tests/test_wire_multifd.py", "tests/test_multifd_sender.py"], 90),
    "pagecodec/codecs/xbzrle_kernel.py": (["tests/test_xbzrle_kernel.py", "tests/test_kernel_guard_pages.py",
                                           "tests/test_reference_sender.py"], 150),
}
EQUIVALENT = Path(__file__).with_name("equivalent.toml")

#: Selective mutation: cosmic-ray replaces every binary operator by each of 11 others and every
#: comparison by each of 7, most of which a first test kills for the same reason (a type error, an
#: absurd value). Kept: each binary operator's one inverse or nearest neighbour, each comparison's
#: negation and its boundary neighbour (off by one), and every other operator cosmic-ray has. This
#: cuts the mutants by ~70% (12,200 → ~3,900 over MODULES) with the mutants that tell tests apart.
BINARY_KEPT = {"Add": "Sub", "Sub": "Add", "Mul": "Div", "Div": "Mul", "FloorDiv": "Mul", "Mod": "FloorDiv",
               "Pow": "Mul", "LShift": "RShift", "RShift": "LShift", "BitOr": "BitAnd", "BitAnd": "BitOr",
               "BitXor": "BitOr"}
COMPARISON_KEPT = {("Eq", "NotEq"), ("NotEq", "Eq"), ("Lt", "GtE"), ("Lt", "LtE"), ("LtE", "Gt"), ("LtE", "Lt"),
                   ("Gt", "LtE"), ("Gt", "GtE"), ("GtE", "Lt"), ("GtE", "Gt"), ("Is", "IsNot"), ("IsNot", "Is")}


def selected_operator(name: str) -> bool:
    """Whether operator ``name`` (cosmic-ray's, e.g. ``core/ReplaceBinaryOperator_Add_Sub``) is run."""
    kind, _, rest = name.partition("/")[2].partition("_")
    if kind == "ReplaceBinaryOperator":
        a, _, b = rest.partition("_")
        return BINARY_KEPT.get(a) == b
    if kind == "ReplaceComparisonOperator":
        a, _, b = rest.partition("_")
        return (a, b) in COMPARISON_KEPT
    return True


@dataclass
class Mutant:
    job_id: str
    module: str
    operator: str
    line: int
    text: str  # the source line, stripped
    rank: int = 0  # among mutants of this operator on this line
    pos: tuple[int, int] = (0, 0)  # (line, column) where the mutation starts
    occurrence: int = 0  # cosmic-ray's index of this mutation among the operator's in the module
    outcome: str = "pending"  # killed, survived, equivalent, skipped
    diff: str = ""

    @property
    def key(self) -> str:
        return f"{self.module}|{self.operator}|{self.text}|{self.rank}"


@dataclass
class Report:
    module: str
    total: int = 0
    run: int = 0
    killed: int = 0
    equivalent: list[Mutant] = field(default_factory=list)
    survived: list[Mutant] = field(default_factory=list)
    seconds: float = 0.0
    keys: list[str] = field(default_factory=list)  # every mutant run
    annotation: int = 0  # mutants in type annotations, left out (never evaluated)
    removed: list[str] = field(default_factory=list)  # --only: earlier survivors whose source line is gone

    @property
    def score(self) -> float:
        n = self.run - len(self.equivalent) - len(self.removed)
        return self.killed / n if n else 1.0

    def to_json(self) -> dict:
        return {"module": self.module, "mutants": self.total, "annotation": self.annotation, "run": self.run,
                "killed": self.killed,
                "equivalent": len(self.equivalent), "survived": len(self.survived), "score": round(self.score, 4),
                "seconds": round(self.seconds, 1),
                "survivors": [{"key": m.key, "line": m.line, "operator": m.operator, "source": m.text,
                               "diff": m.diff} for m in self.survived],
                "equivalents": [m.key for m in self.equivalent], "run_keys": self.keys, "removed": self.removed}


def annotation_lines(path: Path) -> set[tuple[int, int, int, int]]:
    """Spans (line, col, end line, end col) of the type annotations in ``path``. Every module here has
    ``from __future__ import annotations``: annotations are strings never evaluated at run time (and
    dataclasses read only ClassVar/InitVar from them), so a mutant inside one cannot change behaviour.
    Such mutants are left out, counted under ``annotation``."""
    import ast

    tree = ast.parse(path.read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body), f"{path}: annotations are evaluated here; mutants in them are not equivalent"
    nodes = []
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            a = n.args
            nodes += [x.annotation for x in (*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg)
                      if x is not None and x.annotation is not None]
            if n.returns is not None:
                nodes.append(n.returns)
        elif isinstance(n, ast.AnnAssign):
            nodes.append(n.annotation)
    return {(x.lineno, x.col_offset, x.end_lineno, x.end_col_offset) for x in nodes}


def in_annotation(pos: tuple[int, int], spans: set[tuple[int, int, int, int]]) -> bool:
    return any((l0, c0) <= pos < (l1, c1) for l0, c0, l1, c1 in spans)


def load_equivalent() -> list[dict]:
    """The equivalent-mutant list: each entry names module, operator, the source line (stripped) and
    optionally ``rank`` (which mutant of that operator on that line), with the reason."""
    if not EQUIVALENT.exists():
        return []
    entries = tomllib.loads(EQUIVALENT.read_text()).get("equivalent", [])
    for e in entries:
        missing = {"module", "operator", "line", "reason"} - set(e)
        if missing:
            raise SystemExit(f"{EQUIVALENT}: entry {e} lacks {', '.join(sorted(missing))}")
    return entries


def is_equivalent(m: Mutant, entries: list[dict]) -> bool:
    return any(e["module"] == m.module and e["operator"] == m.operator and e["line"] == m.text
               and e.get("rank", m.rank) == m.rank for e in entries)


#: A module with no more mutants than this runs them all, whatever ``--sample`` says.
SMALL_MODULE = 40


def sampled(m: Mutant, share: float) -> bool:
    """A stable choice of ``share`` of the mutants: by a hash of the mutant's identity."""
    if share >= 1.0:
        return True
    h = int.from_bytes(hashlib.sha256(m.key.encode()).digest()[:8], "big")
    return h < share * 2**64


def cosmic(args: list[str], cwd: Path, log: Path) -> None:
    exe = Path(sys.executable).with_name("cosmic-ray")
    with open(log, "a") as f:
        subprocess.run([str(exe), *args], cwd=cwd, check=True, stdout=f, stderr=subprocess.STDOUT)


def mutants_of(session: Path, work: Path) -> list[Mutant]:
    from cosmic_ray.work_db import WorkDB, use_db

    out: list[Mutant] = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item in db.work_items:
            (spec,) = item.mutations
            path = str(spec.module_path)
            line = spec.start_pos[0]
            text = (work / path).read_text().splitlines()[line - 1].strip()
            out.append(Mutant(item.job_id, path, spec.operator_name, line, text, pos=tuple(spec.start_pos),
                              occurrence=spec.occurrence))
    # rank: by place on the line, then cosmic-ray's occurrence (both stable for the same source; job
    # ids are random and must not decide it)
    out.sort(key=lambda m: (m.module, m.operator, m.text, m.pos, m.occurrence))
    seen: dict[tuple, int] = {}
    for m in out:
        k = (m.module, m.operator, m.text)
        m.rank = seen.get(k, 0)
        seen[k] = m.rank + 1
    return out


def skip(session: Path, job_ids: list[str]) -> None:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        db.set_multiple_results(job_ids, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def results(session: Path) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db

    with use_db(str(session), WorkDB.Mode.open) as db:
        return {job_id: r for job_id, r in db.results}


def run_module(module: str, work: Path, out: Path, share: float, equivalent: list[dict], *,
               all_operators: bool = False, only: set[str] | None = None) -> Report:
    tests, timeout = MODULES[module]
    tests = [t for t in tests if (work / t).exists()]
    name = Path(module).stem
    cfg = out / f"{name}.toml"
    session = out / f"{name}.sqlite"
    log = out / f"{name}.log"
    session.unlink(missing_ok=True)
    cmd = f"{sys.executable} -m pytest -x -q -p no:cacheprovider " + " ".join(tests)
    cfg.write_text(f'[cosmic-ray]\nmodule-path = "{module}"\ntimeout = {timeout}.0\nexcluded-modules = []\n'
                   f'test-command = "{cmd}"\n\n[cosmic-ray.distributor]\nname = "local"\n')
    t0 = time.monotonic()
    cosmic(["init", str(cfg), str(session)], work, log)
    ms = candidates(module, session, work, all_operators)
    share = 1.0 if len(ms) <= SMALL_MODULE else share
    chosen = [m for m in ms if sampled(m, share) and (only is None or m.key in only)]
    picked = {m.job_id for m in chosen}
    skip(session, [m.job_id for m in mutants_of(session, work) if m.job_id not in picked])
    print(f"{module}: {len(ms)} mutants, running {len(chosen)} with {' '.join(tests)}", flush=True)
    cosmic(["exec", str(cfg), str(session)], work, log)
    rep = score(module, session, work, equivalent, all_operators)
    rep.seconds = time.monotonic() - t0
    return rep


def candidates(module: str, session: Path, work: Path, all_operators: bool) -> list[Mutant]:
    """The session's mutants of the selected operators, outside type annotations."""
    spans = annotation_lines(work / module)
    ms = mutants_of(session, work)
    return [m for m in ms if (all_operators or selected_operator(m.operator)) and not in_annotation(m.pos, spans)]


def score(module: str, session: Path, work: Path, equivalent: list[dict], all_operators: bool = False) -> Report:
    """A module's report from its session: every mutant that has a result other than skipped."""
    from cosmic_ray.work_item import WorkerOutcome

    every = mutants_of(session, work)
    ms = candidates(module, session, work, all_operators)
    res = results(session)
    rep = Report(module, total=len(ms))
    rep.annotation = sum(1 for m in every if (all_operators or selected_operator(m.operator))) - len(ms)
    for m in ms:
        r = res.get(m.job_id)
        if r is None or r.worker_outcome == WorkerOutcome.SKIPPED:
            continue
        rep.run += 1
        rep.keys.append(m.key)
        if r.is_killed:
            rep.killed += 1
            continue
        m.diff = r.diff or ""
        (rep.equivalent if is_equivalent(m, equivalent) else rep.survived).append(m)
    return rep


def write_report(reports: list[Report], args: argparse.Namespace) -> None:
    """The JSON report, rewritten after every module (a long run can be read while it goes on)."""
    doc = {"sample": args.sample, "shares": args.share, "selective": not args.all_operators, "modules": [r.to_json() for r in reports]}
    for path in [args.out / ("rescore.json" if args.rescore else "report.json"), args.json]:
        if path is not None:
            path.write_text(json.dumps(doc, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", default=[],
                    help="a module of MODULES, by path or file stem (repeatable; default: all)")
    ap.add_argument("--sample", type=float, default=1.0, help="share of each module's mutants to run (stable choice)")
    ap.add_argument("--share", action="append", default=[], metavar="MODULE=F",
                    help="another share for one module (its path or file stem), e.g. receiver=0.04")
    ap.add_argument("--out", type=Path, default=ROOT / ".mutation", help="sessions, logs and the JSON report")
    ap.add_argument("--json", type=Path, help="write the report here too")
    ap.add_argument("--all-operators", action="store_true", help="every cosmic-ray operator, not the selective set")
    ap.add_argument("--only", type=Path, help="run only the mutants whose keys a previous report lists as survivors "
                    "(to re-score them after tests were added: the others were killed already)")
    ap.add_argument("--rescore", action="store_true", help="run nothing: score the sessions already in --out "
                    "(against --tree, the checkout they mutated) with the current equivalent list")
    ap.add_argument("--tree", type=Path, help="mutate this checkout instead of a scratch copy of this one "
                    "(e.g. a scratch export of another commit, to score its tests)")
    args = ap.parse_args(argv)
    want = args.module or list(MODULES)
    modules = []
    for w in want:
        hit = [m for m in MODULES if m == w or Path(m).stem == w]
        if not hit:
            ap.error(f"unknown module {w!r} (known: {', '.join(Path(m).stem for m in MODULES)})")
        modules += hit
    shares: dict[str, float] = {}
    for item in args.share:
        name, _, value = item.partition("=")
        hit = [m for m in MODULES if m == name or Path(m).stem == name]
        if not hit or not value:
            ap.error(f"--share {item!r}: expected MODULE=F with a module of MODULES")
        shares[hit[0]] = float(value)
    args.out.mkdir(parents=True, exist_ok=True)
    equivalent = load_equivalent()
    only = None
    prev_by_module: dict[str, dict] = {}
    if args.only:
        prev = json.loads(args.only.read_text())
        prev_by_module = {r["module"]: r for r in prev["modules"]}
        only = {s["key"] for r in prev["modules"] for s in r["survivors"]}
        only |= {k for r in prev["modules"] for k in r.get("equivalents", [])}
    os.environ.setdefault("PAGECODEC_SHARED", str(ROOT.parent / "shared"))
    if args.rescore:
        work = (args.tree or ROOT).resolve()
        reports = [score(m, args.out / f"{Path(m).stem}.sqlite", work, equivalent, args.all_operators)
                   for m in modules if (args.out / f"{Path(m).stem}.sqlite").exists()]
        for rep in reports:
            combine(rep, prev_by_module.get(rep.module))
        return summarize(reports, args)
    work = args.tree.resolve() if args.tree else scratch_copy()
    reports = []
    try:
        for module in modules:
            rep = run_module(module, work, args.out, shares.get(module, args.sample), equivalent,
                             all_operators=args.all_operators, only=only)
            combine(rep, prev_by_module.get(module))
            reports.append(rep)
            print_module(rep)
            write_report(reports, args)
    finally:
        if not args.tree:
            shutil.rmtree(work, ignore_errors=True)
    return summarize(reports, args)


def combine(rep: Report, prev: dict | None) -> None:
    """A re-run of a previous report's survivors (``--only``) scored as the whole previous sample: the
    mutants it killed stay killed (no test was removed since), its equivalents are re-judged with the
    current list."""
    if prev is None:
        return
    rep.total, rep.run, rep.killed = prev["mutants"], prev["run"], rep.killed + prev["killed"]
    asked = [s["key"] for s in prev["survivors"]] + list(prev.get("equivalents", []))
    rep.removed = sorted(set(asked) - set(rep.keys))  # the code they mutated was deleted


def print_module(rep: Report) -> None:
    print(f"  score {rep.score:.1%}: {rep.killed} killed, {len(rep.equivalent)} equivalent, "
          f"{len(rep.survived)} survived{f', {len(rep.removed)} removed with their code' if rep.removed else ''} of {rep.run} run ({rep.total} in all; {rep.annotation} in annotations "
          f"left out), {rep.seconds:.0f} s", flush=True)
    for m in rep.survived:
        print(f"  SURVIVED {m.module}:{m.line} {m.operator} rank {m.rank}: {m.text}")
        print("    " + "\n    ".join(line for line in m.diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")))


def summarize(reports: list[Report], args: argparse.Namespace) -> int:
    if args.rescore:
        for rep in reports:
            print(rep.module)
            print_module(rep)
    write_report(reports, args)
    run = sum(r.run - len(r.equivalent) - len(r.removed) for r in reports)
    killed = sum(r.killed for r in reports)
    print(f"total: score {killed / run if run else 1:.1%} ({killed} of {run} non-equivalent mutants killed)")
    return 1 if any(r.survived for r in reports) else 0


if __name__ == "__main__":
    sys.exit(main())
