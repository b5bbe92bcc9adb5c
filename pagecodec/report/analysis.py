"""What a row means beside the others: relative to ``none``, Pareto-optimal, min and median CPU.

A wire size or a CPU figure alone says little; what a user decides with is "how much does this save
over sending pages as they are, and at how many times the CPU", and "which configs are not beaten
on both counts by another". These functions read results objects (bench's, or ``replay --json``'s)
and are shared by the tables and the plots.

CPU here is the sender's (the migration source's chain and wire assembly, trace decoding excluded):
that is the CPU a migration takes from the running guest's host. A config is Pareto-optimal on a
trace when no other config of that trace sends no more wire bytes at no more sender CPU (min over
repeats) and is better in one of them; the memcpy baseline and failed runs take no part.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..harness.repeats import decode_cpu_total, sender_cpu_total

__all__ = ["ok", "is_baseline", "trace_name", "trace_key", "label", "wire_total", "wire_ratio", "cpu", "decode_cpu",
           "cache_miss_rate", "none_baseline", "relative_to_none", "pareto_optimal"]


def ok(r: dict[str, Any]) -> bool:
    """A run that finished and passed its checks (results older than ``status`` count as ok)."""
    return r.get("status", "ok") == "ok"


def is_baseline(r: dict[str, Any]) -> bool:
    """The memcpy row."""
    return bool(r.get("baseline"))


def trace_name(r: dict[str, Any]) -> str:
    return Path(r.get("trace", {}).get("path", "?")).name


def trace_key(r: dict[str, Any]) -> str:
    """Rows of one trace share this: its sha256 (its name for a failed run that never read it)."""
    t = r.get("trace", {})
    return t.get("sha256") or trace_name(r)


def label(r: dict[str, Any]) -> str:
    return r.get("config", {}).get("label", "?")


def wire_total(r: dict[str, Any]) -> int | None:
    w = r.get("wire")
    return int(w["total"]) if w and "total" in w else None


def wire_ratio(r: dict[str, Any]) -> float | None:
    """Bytes on the wire (every record, header and multifd channel) per byte of dirty pages. Not
    QEMU's ``transferred``: QEMU 7.2 counts a multifd packet's pages uncompressed there
    (``multifd_send_pages``), so with multifd compression it is not what crossed the link."""
    w, pb = wire_total(r), r.get("page_bytes")
    if w is None or not pb:
        return None
    return w / pb


def _timing_stat(t: dict[str, Any], stat: str) -> float:
    """``min``: the piecewise minimum where the repeats were cut into pieces
    (:mod:`pagecodec.harness.pieces`), else the least total; ``run-min``: the least total;
    ``median``/``max``: of the totals."""
    if stat == "min" and "piecewise-min" in t:
        return float(t["piecewise-min"])
    return float(t["min" if stat == "run-min" else stat])


def cpu(r: dict[str, Any], stat: str = "min") -> float | None:
    """Sender CPU s/GiB over the repeats (``stat``: :func:`_timing_stat`); the single figure of a
    one-run result whatever ``stat``."""
    t = r.get("timing", {}).get("cpu_s_per_gib")
    if t:
        return _timing_stat(t, stat)
    return sender_cpu_total(r) if "cpu_s_per_gib" in r else None


def decode_cpu(r: dict[str, Any], stat: str = "min") -> float | None:
    """Destination CPU s/GiB, as :func:`cpu` (None: not decoded)."""
    t = r.get("timing", {}).get("cpu_decode_s_per_gib")
    if t:
        return _timing_stat(t, stat)
    return decode_cpu_total(r)


def has_piecewise_min(r: dict[str, Any]) -> bool:
    """Whether the run's ``min`` is a piecewise minimum (its repeats were cut into pieces)."""
    return "piecewise-min" in (r.get("timing", {}).get("cpu_s_per_gib") or {})


def cache_miss_rate(r: dict[str, Any]) -> float | None:
    """The cache-miss rate (0…1) of XBZRLE's page cache (QEMU's ``xbzrle-cache``) or of a pagecodec
    delta codec's destination cache (``delta``); None for a run without one."""
    rate = (r.get("xbzrle-cache") or r.get("delta") or {}).get("cache-miss-rate")
    return None if rate is None else float(rate)


def none_baseline(results: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """trace key -> that trace's ``none`` run (QEMU's defaults: pages sent as they are, zero pages
    as ZERO records), among ok runs."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        if ok(r) and not is_baseline(r) and label(r) == "none":
            out.setdefault(trace_key(r), r)
    return out


def relative_to_none(r: dict[str, Any], base: dict[str, Any] | None) -> tuple[float | None, float | None]:
    """(wire bytes saved against ``none`` in %, sender CPU (min) as a multiple of ``none``'s)."""
    if base is None or not ok(r):
        return None, None
    w, wb = wire_total(r), wire_total(base)
    saved = 100.0 * (1.0 - w / wb) if w is not None and wb else None
    c, cb = cpu(r), cpu(base)
    times = c / cb if c is not None and cb else None
    return saved, times


def pareto_optimal(results: Sequence[dict[str, Any]]) -> set[int]:
    """Indices (into ``results``) of the runs no other run of the same trace dominates in (wire
    bytes, min sender CPU)."""
    points: dict[str, list[tuple[int, int, float]]] = {}
    for i, r in enumerate(results):
        w, c = wire_total(r), cpu(r)
        if ok(r) and not is_baseline(r) and w is not None and c is not None:
            points.setdefault(trace_key(r), []).append((i, w, c))
    best: set[int] = set()
    for pts in points.values():
        for i, w, c in pts:
            if not any((w2 <= w and c2 <= c) and (w2 < w or c2 < c) for j, w2, c2 in pts if j != i):
                best.add(i)
    return best
