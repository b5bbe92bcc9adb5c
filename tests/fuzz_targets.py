"""What each reader's fuzzing runs on one input (shared by the atheris harnesses tests/fuzz_*.py and
the seeded mutation fuzzer tests/mutfuzz.py): the input must end in a result or a PageCodecError.

* ``stream``: ``trace import-qemu`` of the bytes (find_vmdesc, the header and configuration, the
  Receiver's walk of every section and record with QEMU's decoders, the importer's rounds, the trace
  written), with max_ram 256 MiB, the VMDESCRIPTION trailer required unless the input ends in 0x00.
* ``trace``: the bytes opened as a trace (footer, metadata JSON, schema, index columns validated),
  every page batch read round by round, and ``trace info``.
* ``multifd``: the first byte picks compression and QEMU version, the second the channel number; the
  rest is a channel file, read by the capture importer (``read_channel``, every packet inflated) and
  by the destination's channel (``MultifdReceiver``, applied sync point by sync point, up to 64)
  against one RAM block pc.ram of 64 pages.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

PS = 4096
MAX_RAM = 256 << 20
MULTIFD_SELECT = [("none", "7.2"), ("zlib", "7.2"), ("zstd", "7.2"), ("none", "10.2"), ("zlib", "10.2"),
                  ("zstd", "10.2")]
#: Where each input is written (a file per reader): a directory of this process's own, inside
#: $PAGECODEC_FUZZ_DIR (the tests point it at their temporary directory) or /dev/shm, removed at exit
#: (libFuzzer ends the process without Python's exit handlers: then the test's directory holds it).
_DIR = Path(tempfile.mkdtemp(prefix="pagecodec-fuzz-", dir=os.environ.get("PAGECODEC_FUZZ_DIR")
                             or ("/dev/shm" if os.path.isdir("/dev/shm") else None)))
atexit.register(shutil.rmtree, _DIR, True)


def stream(data: bytes) -> None:
    from pagecodec.sources.qemu_stream import import_qemu_stream

    p = _DIR / "in.mig"
    p.write_bytes(data)
    import_qemu_stream(p, _DIR / "out.parquet", require_vmdesc=data[-1:] != b"\x00", max_ram=MAX_RAM)


def trace(data: bytes) -> None:
    from pagecodec.trace.format import TraceReader
    from pagecodec.trace.info import trace_info

    p = _DIR / "in.parquet"
    p.write_bytes(data)
    with TraceReader(p) as r:
        for _round, batches in r.rounds(max_pages=64):
            for _b in batches:
                pass
        trace_info(r)


_MEM = np.zeros((64, PS), np.uint8)


def multifd(data: bytes) -> None:
    from pagecodec.codecs.multifd import MultifdReceiver
    from pagecodec.errors import PageCodecError
    from pagecodec.sources.qemu_stream.channel import _PageSource, read_channel
    from pagecodec.sources.qemu_stream.layout import _Layout

    if len(data) < 2:
        return
    comp, version = MULTIFD_SELECT[data[0] % len(MULTIFD_SELECT)]
    k = data[1] % 2
    body = data[2:]
    p = _DIR / "channel-0.bin"
    p.write_bytes(body)
    first: PageCodecError | None = None
    try:  # the importer's reader (QEMU 7.2 captures)
        ch = read_channel(p, _Layout(PS, ["pc.ram"], [64 * PS]))
        src = _PageSource(ch, PS)
        for i in range(ch.packets):
            if ch.normal[i]:
                src.pages(i)
    except PageCodecError as e:
        first = e
    # the destination's channel k (verify, bench): its packets applied sync point by sync point
    rx = MultifdReceiver(version, k + 1, comp, PS, lambda name: _MEM if name == "pc.ram" else None)
    rx.feed(k, body)
    try:
        for _ in range(64):
            if not rx.ch[k].buf:
                break
            rx._until_sync(rx.ch[k], None)
    finally:
        if first is not None:
            raise first


TARGETS: dict[str, Callable[[bytes], None]] = {"stream": stream, "trace": trace, "multifd": multifd}
