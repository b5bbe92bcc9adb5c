"""The floor every codec is measured against: copying the dirty pages, as lzbench's ``memcpy`` row.

A migration must at least move each dirty page once out of the guest into a send buffer, and once
from a receive buffer into the destination's RAM. :func:`memcpy_baseline` does exactly that, and
nothing else, over the same trace rounds the replay reads: the sender side copies each batch of
pages into a reused, already-faulted buffer (the bytes a raw ``PAGE`` record carries), the destination side scatters
them into fresh zero-filled RAM blocks at their offsets, as the receiver does (first-write page
faults included). Its CPU per GiB is the cost no codec can go below on this machine; a codec's
CPU is read against it the way lzbench's rows are read against memcpy.

The row is marked ``baseline: memcpy`` and writes no stream (``format.qemu-loadable`` is None).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..anonmem import zeroed
from ..chain.sender import SEGMENT_PAGES, block_runs
from ..trace.format import TraceReader
from .pieces import merge_pieces
from .provenance import machine, versions

__all__ = ["MEMCPY", "memcpy_baseline"]

#: The config label of the baseline row (``bench --config memcpy`` asks for it alone).
MEMCPY = "memcpy"
#: Pages per batch read from the trace and copied at once.
BATCH_PAGES = 4096


def memcpy_baseline(reader: TraceReader, plugins: Any | None = None, *, pieces: bool = False) -> dict[str, Any]:
    """Copy every page of every round out (to a send buffer) and in (to destination RAM); returns a
    results object shaped like a replay's, with CPU under ``copy`` on both sides. ``pieces``: with
    ``cpu_pieces``, a piece per :data:`SEGMENT_PAGES` pages, as a replay's (:mod:`.pieces`)."""
    meta = reader.meta
    ps = meta.page_size
    ram = [zeroed(b.used_length).reshape(-1, ps) for b in meta.blocks]
    # The send buffer is a sender's reused buffer: allocated at the largest batch and written once
    # before any timing, so that no copy counts the buffer's first-touch page faults as copy CPU.
    buf = np.empty((BATCH_PAGES, ps), dtype=np.uint8)
    buf.fill(0)
    send_ns = recv_ns = trace_ns = send_wall = recv_wall = 0
    pages = 0
    send_pieces: list[int] = []
    recv_pieces: list[int] = []
    for _r, batches in reader.rounds(max_pages=BATCH_PAGES):
        while True:
            t0 = time.thread_time_ns()
            b = next(batches, None)
            t1 = time.thread_time_ns()
            trace_ns += t1 - t0
            if b is None:
                break
            n = len(b)
            if len(buf) < n:
                buf = np.empty((n, ps), dtype=np.uint8)
            index = b.offset // ps
            # One piece per SEGMENT_PAGES, as a replay's sender cuts its work: the floor is a few ms
            # in all, and pieces of a whole 4096-page batch kept a host's memory-traffic bursts in.
            for lo in range(0, n, SEGMENT_PAGES):
                hi = min(n, lo + SEGMENT_PAGES)
                sent = buf[lo:hi]
                t1, w1 = time.thread_time_ns(), time.perf_counter_ns()
                np.copyto(sent, b.pages[lo:hi])  # sender: guest page -> send buffer
                t2, w2 = time.thread_time_ns(), time.perf_counter_ns()
                _scatter(ram, b.block[lo:hi], index[lo:hi], sent)  # destination: into its RAM
                t3, w3 = time.thread_time_ns(), time.perf_counter_ns()
                send_wall += w2 - w1
                recv_wall += w3 - w2
                send_ns += t2 - t1
                recv_ns += t3 - t2
                if pieces:
                    send_pieces.append(t2 - t1)
                    recv_pieces.append(t3 - t2)
            pages += n
    wall = send_wall / 1e9
    page_bytes = pages * ps
    gib = page_bytes / (1 << 30) or 1.0
    out: dict[str, Any] = {
        "trace": {"path": str(reader.path), "sha256": reader.sha256(), "rounds": reader.num_rounds,
                  "pages": reader.num_pages},
        "config": {"label": MEMCPY, "baseline": MEMCPY},
        "baseline": MEMCPY,
        "ram": {"transferred": page_bytes, "normal": pages, "duplicate": 0, "normal-bytes": page_bytes,
                "page-size": ps, "pages-per-second": round(pages / wall, 1) if wall > 0 else 0.0},
        "wire": {"total": page_bytes, "page": page_bytes},
        "cpu": {"copy": send_ns / 1e9, "trace": trace_ns / 1e9},
        "cpu_s_per_gib": {"copy": send_ns / 1e9 / gib, "trace": trace_ns / 1e9 / gib},
        "cpu_decode": {"copy": recv_ns / 1e9},
        "cpu_decode_s_per_gib": {"copy": recv_ns / 1e9 / gib},
        "wall_s": wall,
        "decode_wall_s": recv_wall / 1e9,
        "pages": pages,
        "page_bytes": page_bytes,
        "format": {"qemu-loadable": None, "extension-codecs": [], "unreproducible-codecs": []},
        "machine": machine(),
        "versions": versions(plugins),
    }
    if pieces:
        out["cpu_pieces"] = {"sender": merge_pieces(send_pieces), "decode": merge_pieces(recv_pieces)}
    return out


def _scatter(ram: list[np.ndarray], block: np.ndarray, index: np.ndarray, pages: np.ndarray) -> None:
    """Write ``pages`` into the destination's RAM blocks at their page ``index``es, as the receiver's
    page records do: a run of one block at a time, cut as the sender cuts its segments."""
    for lo, hi in block_runs(block):
        ram[int(block[lo])][index[lo:hi]] = pages[lo:hi]
