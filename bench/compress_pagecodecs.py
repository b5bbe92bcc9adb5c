"""pagecodec's own codecs in the compress slot: compress-zstd, compress-lz4, compress-lz4hc.

    python bench/compress_pagecodecs.py [TRACE] [--pages N] [--repeat N] [--threads 1,2]

For each codec and level (zstd -5, 1, 3; LZ4 acceleration 1; LZ4 HC 9) and each thread count, in one
interleaved run (best of N, so all see the same load of this shared machine): the slot built by the
codec from a config (thread rotation, buffers, extension records, the flush at the end) against the
library called directly on the same pages, split over the same number of plain threads (goal: slot
within 1.2x of direct); the decoder (one record at a time, as the receiver calls it) against the
library's own one-shot decompression; compression ratio (page bytes / payload bytes) and bytes
against zlib level 1 (compress-threads). MB/s are of page data. Beside the wall-time ratio, the CPU
ratio (process CPU seconds, all threads): what pagecodec adds whether or not a free core hides it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _compress_common import (  # noqa: E402
    bench_setup,
    codec_decode,
    codec_direct,
    codec_slot,
    compress_slot,
    library_decode,
    payloads,
    plugins,
)

#: (label, codec, level) measured: zstd at a fast, the default and zstd's own default level; LZ4 fast; LZ4 HC 9.
CASES = (("zstd -5", "compress-zstd", -5), ("zstd 1", "compress-zstd", 1), ("zstd 3", "compress-zstd", 3),
         ("lz4 (acc 1)", "compress-lz4", 1), ("lz4hc 9", "compress-lz4hc", 9))


def main() -> None:
    a, pages = bench_setup(__doc__, extra=lambda ap: ap.add_argument("--threads", default="1,2"))
    threads = [int(t) for t in a.threads.split(",")]
    ps = pages.shape[1]
    data: dict[str, list[bytes]] = {}
    for label, codec, level in CASES:  # payloads for the decoders (and a check that both sides agree)
        data[label] = payloads(codec_slot(pages, codec, 1, level), codec)
        assert sum(map(len, data[label])) == codec_direct(pages, codec, 1, level), label
    runs = {}
    for label, codec, level in CASES:
        for t in threads:
            runs[(label, f"direct {t}t")] = lambda c=codec, lv=level, t=t: codec_direct(pages, c, t, lv)
            runs[(label, f"slot {t}t")] = lambda c=codec, lv=level, t=t: codec_slot(pages, c, t, lv)
        runs[(label, "decode")] = lambda c=codec, d=data[label]: codec_decode(c, d, ps)
        runs[(label, "lib decode")] = lambda c=codec, d=data[label]: library_decode(c, d, ps)
    runs[("zlib 1", "slot 1t")] = lambda: compress_slot(pages, 1, 1)
    best = {k: float("inf") for k in runs}
    cpu = {k: float("inf") for k in runs}  # CPU seconds of the whole process (every thread)
    for _ in range(a.repeat):
        for k, fn in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
            cpu[k] = min(cpu[k], time.process_time() - c0)
    n, nbytes = len(pages), pages.nbytes
    zlib_bytes = compress_slot(pages, 1, 1)
    pm = plugins()
    libs = {c: pm.codec(c).compressor(1 if c != "compress-lz4hc" else 9).version for _l, c, _lv in CASES}
    print(f"trace: {a.trace}: {n} non-zero pages ({nbytes / 1e6:.1f} MB), best of {a.repeat}, interleaved")
    for c, v in libs.items():
        print(f"  {c}: {v}")
    mbs = lambda s: nbytes / s / 1e6  # noqa: E731
    head = f"{'codec':12}" + "".join(f" {f'direct {t}t':>9} {f'slot {t}t':>8} {'ratio':>6} {'cpu':>5}" for t in threads)
    print(head + f" {'decode':>8} {'lib dec':>8} {'ratio':>6} {'bytes':>11} {'comp.ratio':>10} {'vs zlib1':>8}")
    worst = 0.0
    for label, _codec, _level in CASES:
        row = f"{label:12}"
        for t in threads:
            d, s = best[(label, f"direct {t}t")], best[(label, f"slot {t}t")]
            worst = max(worst, s / d)
            c = cpu[(label, f"slot {t}t")] / cpu[(label, f"direct {t}t")]
            row += f" {mbs(d):9.0f} {mbs(s):8.0f} {s / d:6.2f} {c:5.2f}"
        size = sum(map(len, data[label]))
        dec, ldec = best[(label, "decode")], best[(label, "lib decode")]
        row += f" {mbs(dec):8.0f} {mbs(ldec):8.0f} {dec / ldec:6.2f} {size:11,} {nbytes / size:10.2f} {size / zlib_bytes:8.3f}"
        print(row)
    print(f"{'zlib 1':12} {'':9} {mbs(best[('zlib 1', 'slot 1t')]):8.0f} {'':6} {'':5}" + " " * (31 * (len(threads) - 1))
          + f" {'':8} {'':8} {'':6} {zlib_bytes:11,} {nbytes / zlib_bytes:10.2f} {1:8.3f}")
    print(f"MB/s of page data; ratio = wall time through pagecodec / library direct (same threads), cpu = the same "
          f"for CPU seconds of all threads (best of each); worst slot/direct: {worst:.2f}x (goal <= 1.2x)")


if __name__ == "__main__":
    main()
