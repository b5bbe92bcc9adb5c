"""Comparison tables of results (tabulate): a compact default, the rest with ``wide``.

Every column says its unit; numbers are right-aligned with thousands separators, ratios and rates
get the digits that mean something (three significant digits for CPU, whole pages per second).
Failed runs keep their row, marked FAILED, and their errors are listed under the table: a table
that silently dropped a broken codec would read as if it had not been tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from tabulate import tabulate

from ..harness.calibration import machine_speed
from . import analysis as A

__all__ = ["Column", "columns", "table_rows", "format_table", "failures", "csv_rows", "qemu_loadable"]


def qemu_loadable(r: dict[str, Any]) -> str:
    """"yes", "no (codec, …)" for a run that wrote pagecodec extension records, "-" for the memcpy
    row ("?" for results older than the field)."""
    fmt = r.get("format")
    if fmt is None:
        return "?"
    if fmt.get("qemu-loadable") is None:
        return "-"
    return "yes" if fmt.get("qemu-loadable") else f"no ({', '.join(fmt.get('extension-codecs', []))})"


def _check(r: dict[str, Any]) -> str:
    if not A.ok(r):
        return "FAILED"
    if A.is_baseline(r):
        return "-"
    v = r.get("verify")
    if v is None:
        state = "decoded" if "cpu_decode_s_per_gib" in r else "not run"
    else:
        state = "ok" if v.get("ok") else "FAILED"
    return f"{state} (bytes vary)" if r.get("timing", {}).get("wire-varies") else state


def _ext_records(r: dict[str, Any]) -> int | None:
    codecs = r.get("format", {}).get("extension-codecs") or []
    if not codecs:
        return None
    return sum(int(r.get("records", {}).get(c, 0)) for c in codecs)


def _miss_pct(r: dict[str, Any]) -> float | None:
    rate = A.cache_miss_rate(r)
    return None if rate is None else 100.0 * rate


def _timing(r: dict[str, Any], key: str, stat: str) -> float | None:
    t = r.get("timing", {}).get(key)
    if t:
        return float(t[stat])
    v = r.get(key)
    return float(v) if isinstance(v, (int, float)) else None


# -- formats --------------------------------------------------------------------------------------
def _int(v: Any) -> str:
    return f"{round(float(v)):,}"


def _fixed(digits: int) -> Callable[[Any], str]:
    return lambda v: f"{v:,.{digits}f}"


def _sig3(v: Any) -> str:
    """Three significant digits, never scientific: 0.0123, 0.434, 2.35, 12.3, 1,234."""
    v = float(v)
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    digits = max(0, 2 - int(math.floor(math.log10(abs(v)))))
    return f"{v:,.{digits}f}"


def _times(v: Any) -> str:
    return f"{_sig3(v)}×"


def _text(v: Any) -> str:
    return str(v)


@dataclass(frozen=True)
class Column:
    header: str
    get: Callable[[dict[str, Any], dict[str, Any]], Any]  # (result, context) -> raw value or None
    fmt: Callable[[Any], str]
    numeric: bool = True
    wide: bool = False  # only with --wide (and always in CSV)


def columns(wide: bool = False) -> list[Column]:
    """The table's columns; ``context`` carries each row's ``none`` baseline and Pareto mark."""
    cols = [
        Column("trace", lambda r, c: A.trace_name(r), _text, numeric=False),
        Column("config", lambda r, c: A.label(r), _text, numeric=False),
        Column("check", lambda r, c: _check(r), _text, numeric=False),
        Column("QEMU loads it", lambda r, c: qemu_loadable(r) if A.ok(r) else None, _text, numeric=False),
        Column("repeats", lambda r, c: r.get("timing", {}).get("repeats"), _int, wide=True),
        Column("rounds", lambda r, c: r.get("trace", {}).get("rounds"), _int, wide=True),
        Column("dirty pages", lambda r, c: r.get("pages") if A.ok(r) else None, _int, wide=True),
        Column("zero pages", lambda r, c: r.get("ram", {}).get("duplicate") if A.ok(r) else None, _int, wide=True),
        Column("normal pages", lambda r, c: r.get("ram", {}).get("normal") if A.ok(r) else None, _int, wide=True),
        Column("XBZRLE pages", lambda r, c: r.get("xbzrle-cache", {}).get("pages"), _int, wide=True),
        Column("cache miss %", lambda r, c: _miss_pct(r), _fixed(1), wide=True),
        Column("XBZRLE overflow", lambda r, c: r.get("xbzrle-cache", {}).get("overflow"), _int, wide=True),
        Column("ext. records", lambda r, c: _ext_records(r), _int, wide=True),
        Column("wire MiB", lambda r, c: A.wire_total(r) / (1 << 20) if A.wire_total(r) is not None and A.ok(r) else None,
               _fixed(2)),
        Column("wire ÷ page bytes (ratio)", lambda r, c: A.wire_ratio(r) if A.ok(r) else None, _fixed(3)),
        Column("saved vs none %", lambda r, c: c["relative"][0], _fixed(1)),
        Column("CPU s/GiB min", lambda r, c: A.cpu(r, "min") if A.ok(r) else None, _sig3),
        Column("CPU s/GiB median", lambda r, c: A.cpu(r, "median") if A.ok(r) else None, _sig3),
        Column("CPU s/GiB min run", lambda r, c: A.cpu(r, "run-min") if A.ok(r) else None, _sig3, wide=True),
        Column("CPU × none", lambda r, c: c["relative"][1], _times),
        Column("decode CPU s/GiB min", lambda r, c: A.decode_cpu(r, "min") if A.ok(r) else None, _sig3),
        Column("decode CPU s/GiB median", lambda r, c: A.decode_cpu(r, "median") if A.ok(r) else None, _sig3,
               wide=True),
        Column("decode CPU s/GiB min run", lambda r, c: A.decode_cpu(r, "run-min") if A.ok(r) else None, _sig3,
               wide=True),
        Column("pages/s", lambda r, c: r.get("ram", {}).get("pages-per-second") if A.ok(r) else None, _int, wide=True),
        Column("wall s min", lambda r, c: _timing(r, "wall_s", "min") if A.ok(r) else None, _sig3, wide=True),
        Column("wall s median", lambda r, c: _timing(r, "wall_s", "median") if A.ok(r) else None, _sig3, wide=True),
        Column("Pareto", lambda r, c: "*" if c["pareto"] else "", _text, numeric=False),
    ]
    return [col for col in cols if wide or not col.wide]


def _contexts(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    base = A.none_baseline(results)
    front = A.pareto_optimal(results)
    return [{"relative": A.relative_to_none(r, base.get(A.trace_key(r))), "pareto": i in front}
            for i, r in enumerate(results)]


def table_rows(results: Sequence[dict[str, Any]], wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and formatted cells ("" where a figure does not apply or the run failed)."""
    cols = columns(wide)
    rows = []
    for r, ctx in zip(results, _contexts(results)):
        row = []
        for col in cols:
            v = col.get(r, ctx)
            row.append("" if v is None else col.fmt(v))
        rows.append(row)
    return [c.header for c in cols], rows


def csv_rows(results: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Every column (``wide``), raw values for machines, plus the error of failed runs."""
    cols = columns(wide=True)
    rows = []
    for r, ctx in zip(results, _contexts(results)):
        rows.append([("" if (v := col.get(r, ctx)) is None else v) for col in cols]
                    + [r.get("error", {}).get("message", "")])
    return [c.header for c in cols] + ["error"], rows


def failures(results: Sequence[dict[str, Any]]) -> list[str]:
    """One line per failed run: trace, config, error."""
    return [f"FAILED: {A.trace_name(r)} with config {A.label(r)!r}: {r.get('error', {}).get('message', 'failed')}"
            for r in results if not A.ok(r)]


def format_table(results: Sequence[dict[str, Any]], fmt: str = "github", wide: bool = False) -> str:
    """The table, then the failed runs' errors; numbers right-aligned, text left-aligned."""
    headers, rows = table_rows(results, wide)
    align = ["right" if c.numeric else "left" for c in columns(wide)]
    text = tabulate(rows, headers=headers, tablefmt=fmt, colalign=align, disable_numparse=True)
    fails = failures(results)
    notes = [f"bytes vary: {A.trace_name(r)} with config {A.label(r)!r}: {r['timing']['wire-varies']}"
             for r in results if A.ok(r) and r.get("timing", {}).get("wire-varies")]
    if any(A.ok(r) and A.has_piecewise_min(r) for r in results):
        notes.append("CPU min: per 512-page piece of the run, its least CPU over the repeats, summed "
                     "(--wide: min run, the least whole run)")
    speed = machine_speed(results)
    if speed:
        notes.append("machine speed while measured (calibration kernels, median): "
                     + ", ".join(f"{k} {v:.3g} s/GiB" for k, v in speed.items()))
    if any(A.is_baseline(r) for r in results):
        notes.append("memcpy: copying each dirty page out and into fresh RAM, nothing else (the floor)")
    if any(c["pareto"] for c in _contexts(results)):
        notes.append("Pareto *: no other config of the trace is as good in both wire bytes and sender CPU (min) "
                     "and better in one")
    return "\n".join([text, *([""] + notes if notes else []), *([""] + fails if fails else [])])
