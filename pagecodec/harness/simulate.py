"""``pagecodec simulate``: a timed dirty log migrated at a link speed as QEMU 7.2's migration thread
would, through the real chain.

:mod:`.precopy` is the migration thread (windows, rate limit, syncs, auto-converge, postcopy); this
module gives it a :class:`ChainDriver`: QEMU's bitmap and page search over the log
(:class:`.dirty_log.DirtyLog`), and every page it sends through :class:`~pagecodec.chain.sender.Sender`
— the chain ``replay`` uses, a section per ``ram_save_iterate`` — so XBZRLE's page cache, compress
threads, multifd and every plugin codec see the pages in QEMU's order, with the latest contents and
the sync count they would see, and each part costs the wire bytes and the CPU it really costs. In
postcopy the pages are counted as QEMU 7.2 sends them there (raw or zero records), not written to the
stream. Results use QEMU's query-migrate names.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from ..chain.config import MigrationConfig, parse_size
from ..chain.sender import Section, Sender
from ..chain.slots import Slot
from ..codecs.zero import zero_page_mask
from ..errors import ConfigError
from ..plugins import PluginManager
from ..trace.format import TraceReader
from ..wire.writer import NullSink, Sink
from .dirty_log import DirtyLog
from .precopy import SECTION_FRAMING, Convergence, Link, PassCost, run_precopy
from .replay import result_object

__all__ = ["ChainDriver", "simulate", "convergence", "parse_link", "parse_links", "parse_duration", "parse_bandwidth",
           "worker_threads"]

#: The most one target page can add to the count beyond its page: an 8-byte header, the block's name
#: (u8 length + up to 255 bytes), a COMPRESS_PAGE's length and zlib's worst case over a page
#: (compressBound(4096) - 4096 = 14), with room to spare.
MAX_RECORD_OVERHEAD = 8 + 256 + 4 + 14 + 6

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
    """:class:`.precopy.RamDriver` over the real chain: QEMU's bitmap and page search over a dirty log
    (:class:`.dirty_log.DirtyLog`), the pages sent by a :class:`Sender` into a counting sink (the bytes
    are counted, not kept), a part of a section at a time.

    A part ends when the rate limiter's budget is used up. The count is known only once a page went
    through the chain (a zero page costs 9 bytes, a raw one 4,104), so pages go in batches that surely
    fit what is left of the budget (a page plus :data:`MAX_RECORD_OVERHEAD` each) and then one at a time: the part
    stops exactly where QEMU's ``qemu_file_rate_limit`` check would stop it, and the chain is called
    about (budget ÷ batch cost) times per window, not once per page."""

    def __init__(self, reader: TraceReader, config: MigrationConfig, plugins: PluginManager, *,
                 repeat: bool = True, progress: Callable[[int], None] | None = None, sink: Sink | None = None) -> None:
        self.log = DirtyLog(reader, repeat=repeat)
        self.page_size = reader.meta.page_size
        self.threads = worker_threads(config)
        self.progress = progress
        self.sender = Sender(reader.meta, config, plugins, sink or NullSink())
        self.sender.save_setup()
        #: the stream's header and setup section (MEM_SIZE list): counted in the first window
        self.setup_bytes = sum(self.sender.writer.bytes_by_kind.values())
        self.sec: Section | None = None
        self.max_cost = self.page_size + MAX_RECORD_OVERHEAD
        self._idstr_len = [len(b.name) for b in reader.meta.blocks]
        # postcopy
        self._queue: list[int] = []  # host pages the guest asked for, in the order it asked
        self._last_block: int | None = None
        self.postcopy_pages = {"normal": 0, "duplicate": 0}

    @property
    def dirty_pages(self) -> int:
        return self.log.dirty_pages

    def advance(self, guest_s: float) -> None:
        self.log.advance(guest_s)  # LogExhausted past the end of a log that is not repeated

    def sync(self) -> int:
        self.sender.ram.migration_bitmap_sync()
        return self.log.sync()

    # -- precopy -----------------------------------------------------------------------------------
    def _counts(self) -> tuple[int, int, Counter[str]]:
        s = self.sender
        return s.ram.counters.transferred, s.wire_bytes(), Counter(s.stats.cpu.ns)

    def _cost(self, before: tuple[int, int, Counter[str]], **kw: Any) -> PassCost:
        tr0, w0, cpu0 = before
        tr1, w1, cpu1 = self._counts()
        cpu1.subtract(cpu0)
        parallel = sum(cpu1[x] for x in PARALLEL_STAGES) if self.threads > 1 else 0
        return PassCost(transferred=tr1 - tr0, wire_bytes=w1 - w0, serial_cpu_s=(sum(cpu1.values()) - parallel) / 1e9,
                        parallel_cpu_s=parallel / 1e9, threads=self.threads, **kw)

    def begin_section(self, last_stage: bool) -> None:
        self.sec = self.sender.begin_section(self.log.round, last_stage)

    def end_section(self, last_stage: bool) -> PassCost:
        assert self.sec is not None
        before = self._counts()
        self.sender.end_section(self.sec)
        self.sec = None
        # the section's header and footer are counted with its end (they are not in ``transferred``)
        c = self._cost(before, pages=0)
        return replace(c, counted=c.transferred + SECTION_FRAMING)

    def send(self, budget: float | None, max_host_pages: int, last_stage: bool) -> PassCost:
        """See :meth:`.precopy.RamDriver.send`. ``max_host_pages`` counts a host page this call
        continues (cut short by the last call) as one: 1 finishes it and stops."""
        assert self.sec is not None, "send outside a section"
        log, sender, sec = self.log, self.sender, self.sec
        before = self._counts()
        tr0 = before[0]
        pages = touched = begun = 0  # host pages touched (a continued one too) and begun in this call
        done = cut = False
        while True:
            used = sender.ram.counters.transferred - tr0
            mid = log.in_host_page()
            if not mid and (touched >= max_host_pages or (budget is not None and used > budget)):
                break
            room = None if budget is None else max(1, int((budget - used) // self.max_cost))
            extra = 1 if mid and touched else 0  # the host page being continued is counted already
            g = log.find_next(max_host_pages - touched + extra, room)
            if not len(g):
                if log.dirty_pages == 0:  # the search goes round once, finds nothing: done
                    sender.end_pass(sec)
                    log.wrap()
                    done = True
                    break
                sender.end_pass(sec, last_stage=False)  # the search wraps and goes on from the first block
                log.wrap()
                continue
            hp = log.host_page[g]
            distinct = 1 + int(np.count_nonzero(hp[1:] != hp[:-1]))
            touched += distinct - extra
            begun += distinct - (1 if mid else 0)
            sender.save_pages(sec, log.batches(g), round_no=log.round)
            pages += len(g)
            if self.progress is not None:
                self.progress(len(g))
            if budget is not None and log.in_host_page() and sender.ram.counters.transferred - tr0 > budget:
                cut = True  # ram_save_host_page's migration_rate_limit after a target page
                break
        return self._cost(before, pages=pages, host_pages=begun, done=done, cut=cut)

    # -- postcopy ----------------------------------------------------------------------------------
    def start_postcopy(self) -> PassCost:
        """Cursor to the start of RAM, host pages made whole (postcopy_chunk_hostpages_pass), the
        discard ranges (``postcopy_discard_send_range``: 16 bytes a range, 12 ranges a message); the
        source's contents are now frozen."""
        log = self.log
        if log.host_ratio > 1:
            hp = log.host_page
            any_dirty = np.zeros(int(hp[-1]) + 1, dtype=bool)
            np.logical_or.at(any_dirty, hp, log.bitmap)
            whole = any_dirty[hp]
            log.dirty_pages += int(np.count_nonzero(whole & ~log.bitmap))
            log.bitmap |= whole
        log.cursor = 0
        log.frozen = True
        log.reset_search()
        starts = log.bitmap.copy()  # a run of dirty pages starts where the previous page is clean …
        starts[1:] &= ~log.bitmap[:-1]
        first = log.block_starts[:-1]
        starts[first] = log.bitmap[first]  # … or at a block's first page
        runs = int(np.count_nonzero(starts))
        msgs = -(-runs // 12) if runs else 0
        n = runs * 16 + msgs * 8 + sum(self._idstr_len) + 4 * len(self._idstr_len)
        return PassCost(pages=0, transferred=0, wire_bytes=n, counted=n)

    def postcopy_faults(self, guest_s: float) -> int:
        log = self.log
        log.advance(guest_s)
        w = np.flatnonzero(log.written)
        if not len(w):
            return 0
        log.written[w] = False
        missing = w[log.bitmap[w]]
        hosts = np.unique(log.host_page[missing])
        self._queue.extend(int(h) for h in hosts)
        return len(hosts)

    def postcopy_send(self, max_host_pages: int, requested: int) -> PassCost:
        log = self.log
        pages = transferred = req_bytes = 0
        served = 0
        if self._queue:
            hp = log.host_page
            for h in self._queue:
                lo, hi = int(np.searchsorted(hp, h)), int(np.searchsorted(hp, h, side="right"))
                g = lo + np.flatnonzero(log.bitmap[lo:hi])
                if not len(g):
                    continue  # arrived meanwhile
                log.bitmap[g] = False
                log.dirty_pages -= len(g)
                n = self._raw_bytes(g)
                pages += len(g)
                transferred += n
                req_bytes += n
                served += 1
            self._queue.clear()
            log.reset_search()
        g = log.find_next(max_host_pages)
        done = False
        if len(g):
            transferred += self._raw_bytes(g)
            pages += len(g)
        elif log.dirty_pages == 0:
            done = True
        else:
            log.wrap()
        return PassCost(pages=pages, transferred=transferred, wire_bytes=transferred, host_pages=0, done=done,
                        requests=served, requested_bytes=req_bytes)

    def _raw_bytes(self, g: np.ndarray) -> int:
        """Record bytes of pages ``g`` sent in postcopy: ZERO (9 bytes) or PAGE (8 + page), the block's
        name before the first page of a block other than the last one sent (save_page_header)."""
        n = 0
        for b in self.log.batches(g):
            zero = zero_page_mask(b.pages)
            nz = int(np.count_nonzero(zero))
            self.postcopy_pages["duplicate"] += nz
            self.postcopy_pages["normal"] += len(b) - nz
            n += nz * 9 + (len(b) - nz) * (8 + self.page_size)
            blocks = b.block.astype(np.int64)
            prev = np.concatenate([[-1 if self._last_block is None else self._last_block], blocks[:-1]])
            for bi in blocks[blocks != prev]:
                n += 1 + self._idstr_len[int(bi)]
            self._last_block = int(blocks[-1])
        return n


def convergence(config: MigrationConfig, postcopy_after: int | None = None) -> Convergence:
    """The migration thread's capabilities and parameters of ``config`` (QEMU's names)."""
    if postcopy_after is not None and not config.cap("postcopy-ram"):
        raise ConfigError(f"--postcopy-after needs the postcopy-ram capability (config {config.label!r}: add "
                          f"postcopy-ram); QEMU refuses migrate-start-postcopy without it")
    if postcopy_after is not None and config.cap("compress"):
        # QEMU (4.2 on) compresses postcopy's pages too; simulate sends them raw: refuse, do not mislead
        raise ConfigError(f"config {config.label!r}: simulate does not model compress threads in postcopy "
                          f"(QEMU 7.2 compresses postcopy pages; the model sends them raw)")
    bw = int(config.param("max-postcopy-bandwidth"))
    return Convergence(
        auto_converge=config.cap("auto-converge"),
        cpu_throttle_initial=int(config.param("cpu-throttle-initial")),
        cpu_throttle_increment=int(config.param("cpu-throttle-increment")),
        cpu_throttle_tailslow=bool(config.param("cpu-throttle-tailslow")),
        max_cpu_throttle=int(config.param("max-cpu-throttle")),
        throttle_trigger_threshold=int(config.param("throttle-trigger-threshold")),
        postcopy_ram=config.cap("postcopy-ram"),
        postcopy_after=postcopy_after,
        max_postcopy_bandwidth=float(bw) if bw else None,
    )


def simulate(reader: TraceReader, config: MigrationConfig, plugins: PluginManager, link: Link, *,
             max_passes: int = 50, repeat: bool = True, link_label: str = "", postcopy_after: int | None = None,
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Migrate the dirty log ``reader`` with ``config`` over ``link``; the result object (QEMU's
    query-migrate names: ``status``, ``total-time``, ``downtime``, ``expected-downtime`` in ms,
    ``setup-time``, ``cpu-throttle-percentage``, ``ram.*`` counters with ``dirty-sync-count`` and
    ``postcopy-requests``, plus the passes)."""
    conv = convergence(config, postcopy_after)
    driver = ChainDriver(reader, config, plugins, repeat=repeat, progress=progress)
    res = run_precopy(driver, link, conv, max_passes=max_passes)
    stats = driver.sender.finish()
    metrics = stats.to_json()
    for k in ("rounds", "wall_s", "cpu_s_per_gib"):
        metrics.pop(k, None)
    ram = metrics["ram"]
    # postcopy's pages do not go through the chain (they are sent raw): add them to QEMU's counters
    ram["transferred"] += res.postcopy_bytes
    ram["normal"] += driver.postcopy_pages["normal"]
    ram["normal-bytes"] = ram["normal"] * reader.meta.page_size
    ram["duplicate"] += driver.postcopy_pages["duplicate"]
    ram["postcopy-bytes"] = res.postcopy_bytes
    ram["postcopy-requests"] = res.postcopy_requests
    ram["dirty-sync-count"] = res.dirty_sync_count
    sent = sum(p.pages for p in res.passes)
    ram["pages-per-second"] = round(sent / res.total_time_s, 1) if res.total_time_s > 0 else 0.0
    ram["mbps"] = round(res.bandwidth * 8 / 1e6, 6)
    ram["dirty-pages-rate"] = round(res.dirty_pages_rate)
    ram["remaining"] = res.remaining_bytes
    sim = {
        "status": res.status,
        "converged": res.converged,
        "log-ended": res.log_ended,
        "total-time": _ms(res.total_time_s),
        "downtime": _ms(res.downtime_s),
        "setup-time": 0.0,
        "expected-downtime": _ms(res.expected_downtime_s),
        "cpu-throttle-percentage": res.cpu_throttle,
        "throttle-steps": [{"time": _ms(t), "cpu-throttle-percentage": p} for t, p in res.throttle_steps],
        "postcopy": res.postcopy,
        "postcopy-requests": res.postcopy_requests,
        "postcopy-wait": _ms(res.postcopy_wait_s),
        "passes": res.precopy_passes,
        "threshold-size": res.threshold_bytes,
        "link": {
            "label": link_label,
            "link-bytes-per-s": link.link_bytes_per_s,
            "max-bandwidth": link.max_bandwidth,
            "downtime-limit": _ms(link.downtime_limit_s),
            "cpus": link.cpus,
            "cpu-time": link.cpu_time,
            "device-state-bytes": link.device_state_bytes,
            "rtt": _ms(link.rtt_s),
            "worker-threads": driver.threads,
            "max-passes": max_passes,
            "postcopy-after": postcopy_after,
            "log-end": "repeat" if repeat else "stop",
        },
        "log": {"duration-s": driver.log.period, "replays": driver.log.cycle},
        "pass-log": [p.to_json() for p in res.passes],
        "downtime-ok": res.converged and res.downtime_s is not None and res.downtime_s <= link.downtime_limit_s,
    }
    return result_object(reader, config, {**metrics, "simulation": sim}, plugins)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)

