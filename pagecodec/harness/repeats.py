"""One bench run's repeats made into one result: min and median timings, checks across repeats.

A single timing on a shared machine is noise (the same XBZRLE run measured 0.32 … 2.57 s/GiB over
five invocations), so ``bench`` runs every (trace, config) ``--repeat N`` times, interleaved with
the other runs, and reports the minimum (the least disturbed run: what the code costs) and the
median (what a user will typically see) of each total, per stage the median. Where the repeats cut
their CPU into pieces (:mod:`.pieces`), the **piecewise minimum** (each piece's least over the
repeats, summed) stands beside the least total: it asks each piece, not each whole run, to have met
a quiet moment once, and so moves less between invocations on a shared machine (82 and 106 against
70 and 97 of 120 rows within 10 % on the same samples of two pairs, README "How stable"). Everything
that is not a timing must not change between repeats: the wire bytes by kind, the records and QEMU's
counters are compared, and a difference fails the run — unless an active codec declares its bytes
unreproducible (:meth:`pagecodec.codecs.base.Codec.reproducible`), when the spread is reported
instead.
"""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from .calibration import summarize
from .pieces import elementwise_min

__all__ = ["aggregate", "sender_cpu_total", "decode_cpu_total", "SENDER_EXCLUDED"]

#: ``cpu`` keys that are not the sender's migration work: trace decoding, and the destination's CPU as
#: results of ``verify`` held it before ``cpu_decode`` existed.
SENDER_EXCLUDED = frozenset({"trace", "decode", "decode-multifd"})

#: Counters that are timings (they may differ between repeats); every other ``ram`` counter may not.
_TIMED_RAM_KEYS = frozenset({"pages-per-second"})


def sender_cpu_total(sample: dict[str, Any]) -> float:
    """CPU s/GiB of the migration's own work in one run: chain slots and wire assembly."""
    return sum(v for k, v in sample.get("cpu_s_per_gib", {}).items() if k not in SENDER_EXCLUDED)


def decode_cpu_total(sample: dict[str, Any]) -> float | None:
    """CPU s/GiB of the destination in one run (every decoding stage), None if it did not decode."""
    dec = sample.get("cpu_decode_s_per_gib")
    return sum(dec.values()) if dec is not None else None


def _stats(values: Sequence[float]) -> dict[str, Any]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "samples": list(values)}


def _by_stage(dicts: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Each stage's min and median over the repeats (a stage missing from a repeat counts 0)."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    return {k: {"min": min(d.get(k, 0.0) for d in dicts), "median": statistics.median([d.get(k, 0.0) for d in dicts])}
            for k in keys}


def _invariant(sample: dict[str, Any]) -> dict[str, Any]:
    """What must be equal between repeats of one run."""
    ram = {k: v for k, v in sample.get("ram", {}).items() if k not in _TIMED_RAM_KEYS}
    return {"wire": sample.get("wire"), "records": sample.get("records"), "ram": ram}


def aggregate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The run's result from its repeats (``samples``, in repeat order, every one ``status: ok``).

    The result is the first repeat's object (counters, rounds, verify) with the timings replaced:
    ``cpu``/``cpu_s_per_gib``/``cpu_decode*``/``wall_s``/``decode_wall_s`` hold each stage's median,
    and ``timing`` the min/median/max/samples of the totals and (``timing.stages``) each stage's min
    and median CPU per GiB, the sender's and the destination's. Where every repeat has
    ``cpu_pieces`` cut alike, the CPU totals also get ``piecewise-min`` and ``timing.pieces`` their
    number; the pieces themselves are not kept. ``timing.calibration``: the calibration kernels' min
    and median over the samples (:mod:`.calibration`). Wire bytes that differ between repeats
    set ``status: failed`` (``error`` says how) unless the config's codecs are unreproducible, in
    which case ``timing.wire-total`` holds their spread.
    """
    first = samples[0]
    out = dict(first)
    out.pop("cpu_pieces", None)
    n = len(samples)
    timing: dict[str, Any] = {"repeats": n}
    timing["cpu_s_per_gib"] = _stats([sender_cpu_total(s) for s in samples])
    decoded = [decode_cpu_total(s) for s in samples]
    if all(d is not None for d in decoded):
        timing["cpu_decode_s_per_gib"] = _stats([d for d in decoded if d is not None])
    pieces = elementwise_min([s.get("cpu_pieces") for s in samples])
    gib = (first.get("page_bytes") or 0) / (1 << 30)
    if pieces is not None and gib:
        timing["pieces"] = len(pieces["sender"])
        for side, key in (("sender", "cpu_s_per_gib"), ("decode", "cpu_decode_s_per_gib")):
            if side in pieces and key in timing:
                timing[key]["piecewise-min"] = sum(pieces[side]) / 1e9 / gib
    timing["wall_s"] = _stats([float(s.get("wall_s", 0.0)) for s in samples])
    calibration = summarize(samples)
    if calibration is not None:
        timing["calibration"] = calibration  # the machine's speed around the samples
    out.pop("calibration", None)
    timing["cpu-affinity"] = [s.get("cpu-affinity") for s in samples]  # each repeat's CPUs (pinned: one)
    timing["replays"] = [int(s.get("replays", 1)) for s in samples]  # back-to-back replays per sample
    out.pop("cpu-affinity", None)
    out.pop("replays", None)
    if all("decode_wall_s" in s for s in samples):
        timing["decode_wall_s"] = _stats([float(s["decode_wall_s"]) for s in samples])
    stages: dict[str, Any] = {}
    for key in ("cpu", "cpu_s_per_gib", "cpu_decode", "cpu_decode_s_per_gib"):
        if all(key in s for s in samples):
            by_stage = _by_stage([s[key] for s in samples])
            out[key] = {k: v["median"] for k, v in by_stage.items()}
            if key.endswith("_s_per_gib"):
                stages[key] = by_stage
    timing["stages"] = stages
    out["wall_s"] = timing["wall_s"]["median"]
    if "decode_wall_s" in timing:
        out["decode_wall_s"] = timing["decode_wall_s"]["median"]
    ram = out.get("ram")
    if ram and out["wall_s"] > 0 and "pages-per-second" in ram:
        out["ram"] = {**ram, "pages-per-second": round(out.get("pages", 0) / out["wall_s"], 1)}

    totals = [s.get("wire", {}).get("total", 0) for s in samples]
    if n > 1:
        timing["wire-total"] = {"min": min(totals), "max": max(totals), "samples": totals}
    ref = _invariant(first)
    differ = [i for i, s in enumerate(samples[1:], 1) if _invariant(s) != ref]
    if differ:
        unreproducible = first.get("format", {}).get("unreproducible-codecs") or []
        if unreproducible:
            timing["wire-varies"] = f"codec(s) {', '.join(unreproducible)} are not reproducible: " \
                                    f"wire total {min(totals):,} … {max(totals):,} bytes over {n} repeats"
        else:
            i = differ[0]
            out["status"] = "failed"
            out["error"] = {"type": "RepeatMismatch",
                            "message": f"repeat {i} wrote different bytes from repeat 0 (wire total "
                                       f"{totals[i]:,} vs {totals[0]:,}; records or counters differ): the "
                                       f"encoding is not deterministic"}
    out["timing"] = timing
    return out
