"""A RAM block's content as of a round: ``pagecodec trace image`` (like analyze-migration's ``-x``).

Round 0 of a trace is the full RAM image; each later round overwrites the pages it holds. The image
as of round N is therefore round 0 with rounds 1 … N applied in order. Pages stream from the trace
row group by row group; only the block's array is held in memory.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..anonmem import zeroed
from ..atomic import atomic_write_bytes, check_output
from ..errors import TraceError
from .format import TraceReader

__all__ = ["block_image", "write_block_image", "changed_page_mask"]


def block_image(reader: TraceReader, block_name: str, round: int | None = None) -> np.ndarray:
    """Content of block ``block_name`` after round ``round`` (default: the last round), as a new
    writable uint8 array of the block's used_length. TraceError for an unknown block or round."""
    meta = reader.meta
    try:
        bi = meta.block_index(block_name)
    except TraceError as e:
        raise TraceError(f"{reader.path}: {e}") from None
    last = reader.num_rounds - 1
    if round is None:
        round = last
    if isinstance(round, bool) or not isinstance(round, (int, np.integer)) or not 0 <= round <= last:
        raise TraceError(f"{reader.path}: no round {round!r} (the trace has rounds 0 … {last})")
    ps = meta.page_size
    img = zeroed(meta.blocks[bi].used_length)  # 4 KiB pages, faulted in where written (anonmem)
    pages = img.reshape(-1, ps)
    if reader.num_pages == 0:
        return img
    for batch in reader.batches():
        if batch.round > round:
            break
        sel = np.flatnonzero(batch.block == bi)
        if len(sel):
            pages[batch.offset[sel] // ps] = batch.pages[sel]
    return img


def write_block_image(
    reader: TraceReader, block_name: str, output: str | os.PathLike[str], round: int | None = None
) -> tuple[int, str]:
    """Write :func:`block_image` to ``output`` atomically (temporary file + rename).

    Returns (bytes written, sha256 hex digest)."""
    out = Path(output)
    if out.is_dir():
        raise TraceError(f"{out}: is a directory")
    check_output(out)  # a missing directory is refused before the image is built, not after
    img = block_image(reader, block_name, round)
    try:
        atomic_write_bytes(out, memoryview(img))
    except OSError as e:
        raise TraceError(f"{out}: cannot write image: {e.strerror or e}") from None
    return img.nbytes, hashlib.sha256(memoryview(img)).hexdigest()


def changed_page_mask(old: np.ndarray, new: np.ndarray) -> np.ndarray:
    """Boolean (n,) mask of the pages whose bytes differ between two (n, page_size) uint8 images of
    the same RAM, compared eight bytes at a time (page sizes are powers of two >= 1 KiB). What a
    capture that reads contents (a process's diff, a QEMU dirty log) calls a written page."""
    return np.any(old.view(np.uint64) != new.view(np.uint64), axis=1)
