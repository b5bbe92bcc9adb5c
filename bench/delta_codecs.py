"""pagecodec's delta codecs: the delta slot against zstd called directly on the same input, and decode.

    python bench/delta_codecs.py [TRACE] [--repeat N] [--config SPEC]…

For each codec config, a first pass records every call the codec makes to zstd (the run data it
streams, or each page with its prefix). Then, interleaved and best of N (so all see the same load of
this shared machine):

* **slot**: the delta slot's thread CPU in a replay of the trace held in memory (cache, XOR, XBZRLE,
  runs, records and the zstd calls; the other slots and the wire are not counted);
* **zstd direct**: the same zstd calls on the recorded inputs through a fresh context, nothing else
  (goal: slot ≤ 1.2× of it; what is above it is the codec's own work);
* **decode**: the destination's thread CPU to load the stream (the Receiver with every decoder).

MB/s are of the page data the slot was offered (its dirty pages less the zero pages); the ratio is
that page data over the bytes of the codec's records.
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _replay_common import ROOT, load_rounds, plugins  # noqa: E402

from pagecodec.chain.config import parse_spec  # noqa: E402
from pagecodec.chain.receiver import Receiver  # noqa: E402
from pagecodec.chain.sender import Sender  # noqa: E402
from pagecodec.codecs import zstd_ctx  # noqa: E402
from pagecodec.wire.reader import StreamReader  # noqa: E402
from pagecodec.wire.writer import MemorySink  # noqa: E402

DEFAULT = ROOT / "corpora" / "linux-mixed.trace.parquet"
CONFIGS = ["xor-zstd", "xor-zstd,pc-zstd-long=24", "xbzrle+zstd", "delta-zstd"]


def replay(reader, rounds, spec: str) -> tuple[Sender, bytes]:
    sink = MemorySink()
    s = Sender(reader.meta, parse_spec(spec, plugins().presets), plugins(), sink)
    s.run(((r, iter(b)) for r, b in rounds), reader.num_rounds)
    return s, sink.getvalue()


def record_calls(reader, rounds, spec: str) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Every zstd call of one replay: ("flush", data, None) for a run (its pieces joined: the direct
    call gets them as one buffer) or ("frame", page, prefix)."""
    calls: list[tuple[str, np.ndarray, np.ndarray | None]] = []
    pieces, frame = zstd_ctx.Compressor.flush_pieces, zstd_ctx.Compressor.frame

    def rec_pieces(self, ptrs, sizes):
        data = b"".join(ctypes.string_at(p, n) for p, n in zip(ptrs, sizes))
        calls.append(("flush", np.frombuffer(data, np.uint8), None))
        return pieces(self, ptrs, sizes)

    def rec_frame(self, src, prefix=None):
        calls.append(("frame", src.copy(), None if prefix is None else prefix.copy()))
        return frame(self, src, prefix)

    zstd_ctx.Compressor.flush_pieces, zstd_ctx.Compressor.frame = rec_pieces, rec_frame
    try:
        replay(reader, rounds, spec)
    finally:
        zstd_ctx.Compressor.flush_pieces, zstd_ctx.Compressor.frame = pieces, frame
    if not calls:
        raise SystemExit(f"{spec}: no zstd call recorded (the codec calls zstd some other way)")
    return calls


def zstd_direct(calls, level: int, long_window: int) -> float:
    z = zstd_ctx.Compressor(level, 64 * 4096, long_window)
    t0 = time.thread_time()
    for kind, src, prefix in calls:
        if kind == "flush":
            z.flush(src)
        else:
            z.frame(src, prefix)
    return time.thread_time() - t0


def decode(data: bytes, spec: str, page_size: int) -> float:
    pm = plugins()
    rc = Receiver(page_size, pm, parse_spec(spec, pm.presets), source="bench")
    t0 = time.thread_time()
    rc.load_stream(StreamReader(data, "bench"))
    return time.thread_time() - t0 + rc.take_worker_cpu_ns() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", nargs="?", type=Path, default=DEFAULT)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--config", action="append")
    args = ap.parse_args()
    reader, rounds = load_rounds(args.trace)
    specs = args.config or CONFIGS
    ps = reader.meta.page_size
    prepared = {}
    for spec in specs:
        cfg = parse_spec(spec, plugins().presets)
        s, data = replay(reader, rounds, spec)
        delta_pages = s.stats.pages_offered - s.ram.counters.duplicate
        kind = next(c for sl, c in cfg.slot_codecs().items() if sl.value == "delta")
        prepared[spec] = dict(calls=record_calls(reader, rounds, spec), data=data, level=cfg.param("pc-zstd-level"),
                              long=cfg.param("pc-zstd-long"), page_bytes=delta_pages * ps,
                              wire=s.writer.bytes_by_kind.get(kind, 0))
    best = {spec: {"slot": float("inf"), "direct": float("inf"), "decode": float("inf")} for spec in specs}
    for rep in range(args.repeat):
        for spec in specs[rep % len(specs):] + specs[: rep % len(specs)]:
            p, b = prepared[spec], best[spec]
            s, _ = replay(reader, rounds, spec)
            b["slot"] = min(b["slot"], s.stats.cpu.ns["delta"] / 1e9)
            b["direct"] = min(b["direct"], zstd_direct(p["calls"], p["level"], p["long"]))
            b["decode"] = min(b["decode"], decode(p["data"], spec, ps))
    print(f"{args.trace.name}: best of {args.repeat} interleaved passes")
    print("| config | page data MiB | ratio | slot MB/s | zstd direct MB/s | slot ÷ direct | decode MB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for spec in specs:
        p, b = prepared[spec], best[spec]
        mb = p["page_bytes"] / 1e6
        print(f"| {spec} | {p['page_bytes'] / 2**20:.1f} | {p['page_bytes'] / max(1, p['wire']):.2f} | "
              f"{mb / b['slot']:.0f} | {mb / b['direct']:.0f} | {b['slot'] / b['direct']:.2f} | {mb / b['decode']:.0f} |")


if __name__ == "__main__":
    main()
