"""Comparison tables of replay results (tabulate)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from tabulate import tabulate

__all__ = ["summary_rows", "format_table", "HEADERS", "cpu_s_per_gib", "decode_cpu_s_per_gib", "qemu_loadable"]

HEADERS = [
    "trace",
    "config",
    "QEMU loads it",
    "rounds",
    "pages",
    "wire MiB",
    "wire/page bytes",
    "duplicate",
    "normal",
    "xbzrle pages",
    "CPU s/GiB",
    "decode CPU s/GiB",
    "pages/s",
    "wall s",
]


#: ``cpu`` keys that are not the sender's migration work: trace decoding, and the destination's CPU as
#: results of ``verify`` before ``cpu_decode`` held it.
_NOT_SENDER = frozenset({"trace", "decode", "decode-multifd"})


def cpu_s_per_gib(r: dict[str, Any]) -> float:
    """CPU of the migration's own work: chain slots and wire assembly (not trace decoding)."""
    return sum(v for k, v in r.get("cpu_s_per_gib", {}).items() if k not in _NOT_SENDER)


def decode_cpu_s_per_gib(r: dict[str, Any]) -> float | str:
    """The destination's CPU (every decoding stage, framing and multifd channels included), or "-"
    for a run that did not decode (``bench --no-decode``, ``replay``)."""
    dec = r.get("cpu_decode_s_per_gib")
    return sum(dec.values()) if dec is not None else "-"


def qemu_loadable(r: dict[str, Any]) -> str:
    """"yes", or "no (codec, …)" for a run that wrote pagecodec extension records ("?" for results
    older than the field)."""
    fmt = r.get("format")
    if fmt is None:
        return "?"
    return "yes" if fmt.get("qemu-loadable") else f"no ({', '.join(fmt.get('extension-codecs', []))})"


def summary_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    rows = []
    for r in results:
        ram = r["ram"]
        page_bytes = r.get("page_bytes") or 1
        rows.append(
            [
                Path(r["trace"]["path"]).name,
                r["config"]["label"],
                qemu_loadable(r),
                r["trace"]["rounds"],
                r.get("pages", 0),
                r["wire"]["total"] / (1 << 20),
                ram["transferred"] / page_bytes,
                ram["duplicate"],
                ram["normal"],
                r.get("xbzrle-cache", {}).get("pages", "-"),
                cpu_s_per_gib(r),
                decode_cpu_s_per_gib(r),
                ram["pages-per-second"],
                r["wall_s"],
            ]
        )
    return rows


def format_table(results: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    return tabulate(summary_rows(results), headers=HEADERS, tablefmt=fmt, floatfmt=".3f", intfmt=",")
