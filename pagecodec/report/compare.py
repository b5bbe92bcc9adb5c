"""Two results files side by side: what changed, and whether that is a regression.

``pagecodec report NEW.json BASELINE.json`` matches runs by trace and config label and compares wire
bytes (deterministic: any growth beyond ``wire_pct`` is a regression) and the minimum CPU over
repeats, sender and destination (noisy: beyond ``cpu_pct``, default 10 %, like pytest-benchmark's
``--benchmark-compare-fail=min:10%``): the piecewise minimum (:mod:`pagecodec.harness.pieces`) where
both sides have one, else the least whole run on both. When the two files' calibration kernels
(:mod:`pagecodec.harness.calibration`) ran at speeds further apart than ``cpu_pct``, a note says the
machine changed: the CPU verdicts stand, but the note names their likely cause. A run that passed in
the baseline and fails now is a regression too. Runs present on one side only are listed, not
judged. Traces are matched by sha256; a trace whose name matches but whose content differs is
matched by name and flagged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from tabulate import tabulate

from ..harness.calibration import machine_speed
from . import analysis as A

__all__ = ["Comparison", "compare", "format_comparison", "provenance_differences", "machine_change"]


@dataclass
class Comparison:
    headers: list[str]
    rows: list[list[str]]
    regressions: list[str]
    only_new: list[str]
    only_base: list[str]
    notes: list[str]

    @property
    def failed(self) -> bool:
        return bool(self.regressions)


def _pct(new: float | None, old: float | None) -> float | None:
    if new is None or old is None or old == 0:
        return None
    return 100.0 * (new - old) / old


def _fmt_pct(v: float | None) -> str:
    return "" if v is None else f"{v:+.1f}%"


def _index(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(A.trace_key(r), A.label(r)): r for r in results}


def provenance_differences(new: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]]) -> list[str]:
    """Where the two files' machines or versions differ (each file's first run speaks for it)."""
    out = []
    n = next((r for r in new if "versions" in r), {})
    b = next((r for r in base if "versions" in r), {})
    for section in ("machine", "versions"):
        dn, db = n.get(section, {}) or {}, b.get(section, {}) or {}
        for k in sorted(set(dn) | set(db)):
            if k == "plugins":
                continue
            if dn.get(k) != db.get(k):
                out.append(f"{section}.{k}: {db.get(k)!r} -> {dn.get(k)!r}")
        pn, pb = dn.get("plugins") or {}, db.get("plugins") or {}
        for k in sorted(set(pn) | set(pb)):
            if pn.get(k) != pb.get(k):
                out.append(f"{section}.plugins.{k}: {pb.get(k)!r} -> {pn.get(k)!r}")
    return out


def machine_change(new: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], cpu_pct: float) -> list[str]:
    """Where the calibration kernels (:mod:`pagecodec.harness.calibration`) ran more than ``cpu_pct``
    faster or slower in ``new`` than in ``base``: the machine changed between the files, and CPU
    changes of that size are the machine's, not the code's. Nothing when either file has none."""
    sn, sb = machine_speed(new), machine_speed(base)
    if not sn or not sb:
        return []
    moved = {k: _pct(sn[k], sb[k]) for k in sn if k in sb}
    if not any(v is not None and abs(v) > cpu_pct for v in moved.values()):
        return []
    kernels = ", ".join(f"{k} {sb[k]:.3g} -> {sn[k]:.3g} s/GiB ({v:+.0f}%)" for k, v in moved.items() if v is not None)
    return [f"the machine itself ran at another speed: calibration kernels {kernels}; CPU changes of that "
            f"size are the machine's, not the code's (compare files measured in one machine state)"]


def compare(new: Sequence[dict[str, Any]], base: Sequence[dict[str, Any]], *, cpu_pct: float = 10.0,
            wire_pct: float = 0.1) -> Comparison:
    """Compare ``new`` against ``base``; thresholds are growth in percent."""
    bi = _index(base)
    by_name = {(A.trace_name(r), A.label(r)): r for r in base}
    headers = ["trace", "config", "wire MiB (base)", "wire MiB", "wire Δ", "CPU s/GiB min (base)", "CPU s/GiB min",
               "CPU Δ", "decode CPU Δ", "verdict"]
    rows, regressions, only_new, notes = [], [], [], []
    matched: set[int] = set()
    mixed = 0  # runs compared by their least totals because one side has no piecewise minimum
    for r in new:
        key = (A.trace_key(r), A.label(r))
        b = bi.get(key)
        if b is None:
            b = by_name.get((A.trace_name(r), A.label(r)))
            if b is not None:
                notes.append(f"{A.trace_name(r)}: the trace's content differs between the files (sha256); compared by name")
        if b is None:
            only_new.append(f"{A.trace_name(r)} / {A.label(r)}")
            continue
        matched.add(id(b))
        what = f"{A.trace_name(r)} with config {A.label(r)!r}"
        verdict = []
        if not A.ok(r):
            if A.ok(b):
                regressions.append(f"{what}: failed ({r.get('error', {}).get('message', '')}), passed in the baseline")
            verdict.append("FAILED")
            rows.append([A.trace_name(r), A.label(r), "", "", "", "", "", "", "", ", ".join(verdict)])
            continue
        wn, wb = A.wire_total(r), A.wire_total(b)
        # like with like: a piecewise minimum only against another (results of an older pagecodec
        # carry the least total alone)
        stat = "min" if A.has_piecewise_min(r) and A.has_piecewise_min(b) else "run-min"
        if stat == "run-min" and (A.has_piecewise_min(r) or A.has_piecewise_min(b)):
            mixed += 1
        cn, cb = A.cpu(r, stat), A.cpu(b, stat)
        dn, db = A.decode_cpu(r, stat), A.decode_cpu(b, stat)
        dw, dc, dd = _pct(wn, wb), _pct(cn, cb), _pct(dn, db)
        if dw is not None and dw > wire_pct:
            regressions.append(f"{what}: wire bytes {wb:,} -> {wn:,} ({dw:+.2f}% > {wire_pct}%)")
            verdict.append("wire")
        if dc is not None and dc > cpu_pct:
            regressions.append(f"{what}: sender CPU min {cb:.3g} -> {cn:.3g} s/GiB ({dc:+.1f}% > {cpu_pct}%)")
            verdict.append("CPU")
        if dd is not None and dd > cpu_pct:
            regressions.append(f"{what}: decode CPU min {db:.3g} -> {dn:.3g} s/GiB ({dd:+.1f}% > {cpu_pct}%)")
            verdict.append("decode CPU")
        rows.append([A.trace_name(r), A.label(r),
                     "" if wb is None else f"{wb / (1 << 20):,.2f}", "" if wn is None else f"{wn / (1 << 20):,.2f}",
                     _fmt_pct(dw), "" if cb is None else f"{cb:.3g}", "" if cn is None else f"{cn:.3g}",
                     _fmt_pct(dc), _fmt_pct(dd), "regression: " + ", ".join(verdict) if verdict else "ok"])
    only_base = [f"{A.trace_name(b)} / {A.label(b)}" for b in base if id(b) not in matched]
    notes += machine_change(new, base, cpu_pct)
    if mixed:
        notes.append(f"{mixed} run(s) have a piecewise CPU minimum on one side only: compared by the least "
                     f"whole run on both sides")
    return Comparison(headers, rows, regressions, only_new, only_base, notes + provenance_differences(new, base))


def format_comparison(c: Comparison, fmt: str = "github") -> str:
    align = ["left", "left"] + ["right"] * 7 + ["left"]
    parts = [tabulate(c.rows, headers=c.headers, tablefmt=fmt, colalign=align, disable_numparse=True)]
    if c.notes:
        parts += ["", "Differences between the files:", *[f"  {n}" for n in c.notes]]
    if c.only_new:
        parts += ["", "Only in the new results: " + "; ".join(c.only_new)]
    if c.only_base:
        parts += ["", "Only in the baseline: " + "; ".join(c.only_base)]
    if c.regressions:
        parts += ["", f"{len(c.regressions)} regression(s):", *[f"  {x}" for x in c.regressions]]
    return "\n".join(parts)
