"""``pagecodec simulate``: a timed dirty log migrated at a link speed, pass by pass, through the real chain.

:mod:`.precopy` decides (QEMU 7.2's iterate / switch-over rule and the time arithmetic); this module
gives it a :class:`ChainDriver`: each pass it composes from the log (:class:`.dirty_log.DirtyLog`: the
pages dirtied since the last sync, latest contents) goes through :class:`~pagecodec.chain.sender.Sender`
— the same ``save_round`` as ``replay`` — so XBZRLE's page cache, compress threads, multifd and every
plugin codec see the pages, in the order and with the sync count they would see in QEMU, and the pass
costs the wire bytes and the CPU they really cost. Results use QEMU's query-migrate names.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Callable

from ..chain.config import MigrationConfig, parse_size
from ..chain.sender import Sender
from ..chain.slots import Slot
from ..errors import ConfigError
from ..plugins import PluginManager
from ..trace.format import TraceReader
from ..wire.writer import NullSink
from .dirty_log import DirtyLog
from .precopy import Link, PassCost, run_precopy
from .replay import result_object

__all__ = ["ChainDriver", "simulate", "parse_link", "parse_links", "parse_duration", "parse_bandwidth",
           "worker_threads"]

#: Stages whose work runs on the encoder's worker threads (their CPU is divided among the threads).
PARALLEL_STAGES = (Slot.COMPRESS.value, Slot.MULTIFD.value)

_LINK_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(?:bit|b|bps)?(?:/s)?\s*$")
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|us)?\s*$")


def parse_link(text: str) -> float:
    """A link speed in bits per second, network style (decimal): '10G' = 10·10⁹ bit/s, '100M', '1.5G';
    returned in bytes per second."""
    m = _LINK_RE.match(text)
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(f"bad link speed {text!r} (bits per second with an optional K/M/G/T suffix, e.g. 10G)")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}[m.group(2).lower()]
    return float(m.group(1)) * scale / 8


def parse_links(text: str) -> list[tuple[str, float]]:
    """'1G,10G' -> [('1G', bytes/s), ('10G', bytes/s)]."""
    items = [s.strip() for s in text.split(",")]
    if not items or "" in items:
        raise ConfigError(f"bad link list {text!r} (comma-separated speeds, e.g. 1G,10G,25G)")
    if len(set(items)) != len(items):
        raise ConfigError(f"link list {text!r} names a speed twice")
    return [(s, parse_link(s)) for s in items]


def parse_duration(text: str) -> float:
    """'300ms', '0.3s', '300' (QEMU's downtime-limit is in ms) -> seconds."""
    m = _DURATION_RE.match(text)
    if not m:
        raise ConfigError(f"bad duration {text!r} (e.g. 300ms or 0.3s; a bare number is milliseconds, as QEMU's)")
    unit = m.group(2) or "ms"
    return float(m.group(1)) * {"ms": 1e-3, "s": 1.0, "us": 1e-6}[unit]


def parse_bandwidth(text: str) -> float:
    """QEMU's max-bandwidth: bytes per second with QEMU's binary suffixes ('128M' = 128 MiB/s)."""
    return float(parse_size(text))


def worker_threads(config: MigrationConfig) -> int:
    """Threads the parallel stages run on: compress threads, or multifd channels (1 otherwise)."""
    if config.cap("compress"):
        return int(config.param("compress-threads"))
    if config.cap("multifd"):
        return int(config.param("multifd-channels"))
    return 1


class ChainDriver:
    """:class:`.precopy.PassDriver` over the real chain: passes composed from a dirty log, sent by a
    :class:`Sender` into a counting sink (the bytes are counted, not kept)."""

    def __init__(self, reader: TraceReader, config: MigrationConfig, plugins: PluginManager, *,
                 repeat: bool = True, progress: Callable[[int], None] | None = None) -> None:
        self.log = DirtyLog(reader, repeat=repeat)
        self.page_size = reader.meta.page_size
        self.threads = worker_threads(config)
        self.progress = progress
        self.sender = Sender(reader.meta, config, plugins, NullSink())
        self.sender.save_setup()

    def send(self, round_no: int, last_stage: bool) -> PassCost:
        batches = self.log.image() if round_no == 0 else self.log.take(round_no)
        cpu0 = Counter(self.sender.stats.cpu.ns)
        rs = self.sender.save_round(round_no, batches, last_stage)
        spent = Counter(self.sender.stats.cpu.ns)
        spent.subtract(cpu0)
        parallel = sum(spent[s] for s in PARALLEL_STAGES) if self.threads > 1 else 0
        if self.progress is not None:
            self.progress(rs.dirty_pages)
        return PassCost(pages=rs.dirty_pages, transferred=rs.transferred, wire_bytes=sum(rs.wire.values()),
                        serial_cpu_s=(sum(spent.values()) - parallel) / 1e9, parallel_cpu_s=parallel / 1e9,
                        threads=self.threads)

    def advance(self, until_s: float) -> int:
        self.log.advance(until_s)  # LogExhausted past the end of a log that is not repeated
        return self.log.pending_pages

    def sync(self) -> None:
        self.sender.ram.migration_bitmap_sync()


def simulate(reader: TraceReader, config: MigrationConfig, plugins: PluginManager, link: Link, *,
             max_passes: int = 50, repeat: bool = True, link_label: str = "",
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Migrate the dirty log ``reader`` with ``config`` over ``link``; the result object (QEMU's names:
    ``status``, ``total-time`` and ``downtime`` in ms, ``ram.*`` counters, plus the passes)."""
    driver = ChainDriver(reader, config, plugins, repeat=repeat, progress=progress)
    res = run_precopy(driver, link, max_passes=max_passes)
    stats = driver.sender.finish()
    metrics = stats.to_json()
    for k in ("rounds", "wall_s", "cpu_s_per_gib"):
        metrics.pop(k, None)
    ram = metrics["ram"]
    sent = sum(p.pages for p in res.passes)
    ram["pages-per-second"] = round(sent / res.total_time_s, 1) if res.total_time_s > 0 else 0.0
    last = [p for p in res.passes if p.stage != "complete"]
    if last:
        ram["mbps"] = last[-1].bandwidth * 8 / 1e6 if math.isfinite(last[-1].bandwidth) else None
        ram["dirty-pages-rate"] = round(last[-1].pending_bytes / reader.meta.page_size / last[-1].duration_s) \
            if last[-1].duration_s > 0 else None
        ram["remaining"] = 0 if res.converged else last[-1].pending_bytes
    expected = res.expected_downtime_s
    sim = {
        "status": res.status,
        "converged": res.converged,
        "log-ended": res.log_ended,
        "total-time": _ms(res.total_time_s),
        "downtime": _ms(res.downtime_s),
        "expected-downtime": _ms(expected),
        "passes": res.precopy_passes,
        "link": {
            "label": link_label,
            "link-bytes-per-s": link.link_bytes_per_s,
            "max-bandwidth": link.max_bandwidth,
            "downtime-limit": _ms(link.downtime_limit_s),
            "cpus": link.cpus,
            "cpu-time": link.cpu_time,
            "worker-threads": driver.threads,
            "max-passes": max_passes,
            "log-end": "repeat" if repeat else "stop",
        },
        "log": {"duration-s": driver.log.period, "replays": driver.log.cycle},
        "pass-log": [p.to_json() for p in res.passes],
        "downtime-ok": res.converged and res.downtime_s is not None and res.downtime_s <= link.downtime_limit_s,
    }
    return result_object(reader, config, {**metrics, "simulation": sim}, plugins)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)

