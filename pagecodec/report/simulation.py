"""Tables of ``pagecodec simulate`` results (the plot is :mod:`.simulation_plot`).

The question a user brings is "which settings at my link speed", so the sheet names, for every link
speed, the config that migrates fastest *with a downtime within the limit* (a config that does not
converge, or converges with a longer downtime, cannot win however few bytes it sends).
"""

from __future__ import annotations

from typing import Any, Sequence

from tabulate import tabulate

__all__ = ["config_label", "simulation_rows", "format_simulation", "transfer_sheet", "format_sheet"]


def config_label(r: dict[str, Any]) -> str:
    """A run's config label (``?`` if it has none)."""
    return str(r["config"].get("label", "?"))


def _link(r: dict[str, Any]) -> str:
    return str(r["simulation"]["link"]["label"])


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / (1 << 20):,.2f}"


def simulation_rows(results: Sequence[dict[str, Any]]) -> list[list[Any]]:
    """One row per run: link, config, QEMU's status, passes, counters, times."""
    rows = []
    for r in results:
        s, ram = r["simulation"], r["ram"]
        bounds = [p["bound"] for p in s["pass-log"] if p["stage"] in ("bulk", "iterate")]
        rows.append([
            _link(r), config_label(r), s["status"] + (" (postcopy)" if s.get("postcopy") else ""), s["passes"],
            ram["dirty-sync-count"],
            f"{s['total-time'] / 1000:,.3f}",
            "-" if s["downtime"] is None else f"{s['downtime']:,.1f}",
            "yes" if s["downtime-ok"] else "no",
            "-" if s.get("expected-downtime") is None else f"{s['expected-downtime']:,.1f}",
            _mib(ram["transferred"]), _mib(r["wire"]["total"]),
            s.get("cpu-throttle-percentage", 0), ram.get("postcopy-requests", 0),
            max(set(bounds), key=bounds.count) if bounds else "-",
        ])
    return rows


HEADERS = ["link", "config", "status", "passes", "dirty-sync-count", "total-time s", "downtime ms",
           "downtime ≤ limit", "expected-downtime ms", "transferred MiB", "wire MiB", "cpu-throttle-percentage",
           "postcopy-requests", "passes bound by"]


def format_simulation(results: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    notes = []
    for r in results:
        s = r["simulation"]
        if s["log-ended"]:
            notes.append(f"{_link(r)} {config_label(r)}: the migration outlasted the log ({s['log']['duration-s']:.3f} s; "
                         f"--log-end stop)")
        elif not s["converged"]:
            notes.append(f"{_link(r)} {config_label(r)}: not converged after {s['passes']} passes (--max-passes); "
                         f"{_mib(r['ram'].get('remaining'))} MiB still dirty")
        if s.get("postcopy"):
            notes.append(f"{_link(r)} {config_label(r)}: postcopy after {s['passes']} passes: "
                         f"{s['postcopy-requests']} page requests, the guest waited {s['postcopy-wait']:,.1f} ms")
    text = tabulate(simulation_rows(results), headers=HEADERS, tablefmt=fmt, colalign=("left", "left", "left"))
    return "\n".join([text, *notes])


def transfer_sheet(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per link speed (in the order given): the winner (least total time among the runs that complete
    with a downtime within the limit), its time, and the runner-up; winner None when no config fits."""
    links: dict[str, list[dict[str, Any]]] = {}
    for r in results:
        links.setdefault(_link(r), []).append(r)
    sheet = []
    for link, runs in links.items():
        ok = sorted((r for r in runs if r["simulation"]["downtime-ok"]), key=lambda r: r["simulation"]["total-time"])
        sheet.append({
            "link": link,
            "winner": config_label(ok[0]) if ok else None,
            "total-time": ok[0]["simulation"]["total-time"] if ok else None,
            "runner-up": config_label(ok[1]) if len(ok) > 1 else None,
            "runner-up-total-time": ok[1]["simulation"]["total-time"] if len(ok) > 1 else None,
            "fit": [config_label(r) for r in ok],
            "miss": [config_label(r) for r in runs if not r["simulation"]["downtime-ok"]],
        })
    return sheet


def format_sheet(sheet: Sequence[dict[str, Any]], fmt: str = "github") -> str:
    rows = []
    for s in sheet:
        rows.append([
            s["link"], s["winner"] or "(none fits)",
            "-" if s["total-time"] is None else f"{s['total-time'] / 1000:,.3f}",
            s["runner-up"] or "-",
            "-" if s["runner-up-total-time"] is None else f"{s['runner-up-total-time'] / 1000:,.3f}",
            ", ".join(s["miss"]) or "-",
        ])
    return tabulate(rows, headers=["link", "wins", "total-time s", "next", "its total-time s",
                                   "miss the downtime limit or never converge"], tablefmt=fmt,
                    colalign=("left", "left", "right", "left", "right", "left"))
