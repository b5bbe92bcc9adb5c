"""The reverse of the import: a single stream as the multifd capture QEMU 7.2 would send.

:func:`split_stream` does the reverse of the import: it turns a single stream into a 7.2 multifd capture
(the sender's rules: 128-page packets of one block, a flush on block change, round-robin channels, one
SYNC per channel before each EOS, optionally with the sync race and the requeue race), for tests and for
experiments.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ...codecs.multifd_stream import ChannelCompressor
from ...wire.multifd import (
    COMPRESSION_FLAGS,
    MULTIFD_FLAG_SYNC,
    encode_initial_packet,
    encode_packet,
    packet_size,
    packet_slots,
)
from .main_stream import read_main_stream
from .multifd import _merge

# --- the reverse: a single stream as a 7.2 multifd capture ------------------------------------------
def split_stream(
    stream: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    channels: int = 2,
    compression: str = "none",
    level: int = 1,
    uuid: bytes = bytes(16),
    sync_race: Callable[[int], bool] | None = None,
    requeue: Callable[[int, int], bool] | None = None,
) -> tuple[Path, list[Path]]:
    """Write ``main.mig`` and ``channel-<k>.bin`` into ``out_dir``: the multifd capture QEMU 7.2 would
    send for the page records of the single stream ``stream`` (ZERO → main stream; PAGE → channel packets
    of ≤ 128 pages of one block, flushed on a block change, when full and before each EOS, handed to the
    channels round robin; then one SYNC packet per channel). ``sync_race(section)``: when true, the
    section's last data packet suffers 7.2's sync race (it goes out flagged SYNC under the sync's number,
    followed by an empty packet repeating it). ``requeue(section, n)``: when true, the section's n-th full
    packet (n from 0) suffers 7.2's requeue race: its last page is queued again as the first page of the
    next packet (``multifd_queue_page`` when the channel thread took the packet before the test of
    ``pages->block``), with the same content."""
    if compression not in COMPRESSION_FLAGS:
        raise ValueError(f"compression {compression!r}: choose from {', '.join(COMPRESSION_FLAGS)}")
    ms = read_main_stream(stream, require_vmdesc=False)
    lay = ms.layout
    ps = lay.page_size
    slots = packet_slots(ps)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [open(out / f"channel-{k}.bin", "wb") for k in range(channels)]
    try:
        # the same per-channel streams and per-page calls as the multifd codec (QEMU's send_prepare)
        comp = [ChannelCompressor(compression, level, slots * ps) for _ in range(channels)]
        stale = [packet_size(ps) * b"\0" for _ in range(channels)]
        for k, f in enumerate(files):
            f.write(encode_initial_packet(k, uuid))
        mbuf = ms.reader.view_np()
        state = {"num": 0, "next": 0}
        method = COMPRESSION_FLAGS[compression]

        def payload(k: int, pages: np.ndarray) -> bytes:
            out = comp[k].packet(pages)
            return out.tobytes() if isinstance(out, np.ndarray) else out

        def send(k: int, flags: int, num: int, block: str, offs: list[int], pages: np.ndarray | None) -> None:
            body = payload(k, pages) if pages is not None and len(offs) else b""
            nsize = len(body) if len(offs) else int.from_bytes(stale[k][20:24], "big")
            hdr = encode_packet(flags | (method if len(offs) else 0), num, block, offs, ps,
                                next_packet_size=nsize, stale=stale[k])
            stale[k] = hdr
            files[k].write(hdr)
            files[k].write(body)

        for sec in ms.sections:
            pend: tuple[int, str, list[int], list[np.ndarray]] | None = None  # (block, name, offsets, pages)
            last_data: tuple[int, str, list[int], np.ndarray] | None = None
            queue: list[tuple[int, str, list[int], np.ndarray]] = []

            def flush() -> None:
                nonlocal pend
                if pend is not None and pend[2]:
                    queue.append((pend[0], pend[1], pend[2], np.stack(pend[3])))
                pend = None

            full = 0
            for i in np.flatnonzero(sec.kind == 1).tolist():
                g = int(sec.g[i])
                bi = int(lay.block_of(np.array([g]))[0])
                off = (g - int(lay.starts[bi])) * ps
                if pend is not None and pend[0] != bi:
                    flush()
                if pend is None:
                    pend = (bi, lay.names[bi], [], [])
                pend[2].append(off)
                pa = int(sec.payload_at[i])
                pend[3].append(mbuf[pa : pa + ps])
                if len(pend[2]) == slots:
                    flush()
                    if requeue is not None and requeue(sec.index, full):
                        pend = (bi, lay.names[bi], [off], [mbuf[pa : pa + ps]])
                    full += 1
            flush()
            race = bool(queue) and sync_race is not None and sync_race(sec.index)
            for qi, (bi, name, offs, pages) in enumerate(queue):
                k = state["next"]
                state["next"] = (k + 1) % channels
                if race and qi == len(queue) - 1:
                    last_data = (k, name, offs, pages)
                    state["num"] += 1  # this number is overwritten by the sync and never sent
                    continue
                send(k, 0, state["num"], name, offs, pages)
                state["num"] += 1
            for k in range(channels):
                num = state["num"]
                state["num"] += 1
                if last_data is not None and last_data[0] == k:
                    send(k, MULTIFD_FLAG_SYNC, num, last_data[1], last_data[2], last_data[3])
                    send(k, 0, num, "", [], None)
                else:
                    send(k, MULTIFD_FLAG_SYNC, num, "", [], None)
        # the main stream: everything but the PAGE records
        main_path = out / "main.mig"
        _merge(ms, [], main_path, only_zero=True)
    finally:
        for f in files:
            f.close()
    return main_path, [out / f"channel-{k}.bin" for k in range(channels)]
