"""Soft-dirty tracking: the pagemap bits, the kernel probe, and the ``soft-dirty`` method
(read pagemap bit 55, clear_refs, read only the dirty pages)."""

from __future__ import annotations

import ctypes
import mmap
import os
from functools import lru_cache

import numpy as np

from pagecodec.sources.process.maps import PAGE_SIZE, Block
from pagecodec.sources.process.memory import _Notes, _read_ranges, _zero_fill_note
from pagecodec.sources.process.target import _Proc

__all__ = ["soft_dirty_supported", "PM_SOFT_DIRTY", "PM_SWAPPED", "PM_PRESENT"]

PM_SOFT_DIRTY = np.uint64(1 << 55)
PM_SWAPPED = np.uint64(1 << 62)
PM_PRESENT = np.uint64(1 << 63)


@lru_cache(maxsize=1)
def soft_dirty_supported() -> tuple[bool, str]:
    """Does this kernel track soft-dirty bits? ``(yes, reason)``. Probed on the calling process: clear
    its soft-dirty bits, write one page, and read bit 55 of that page's pagemap entry."""
    try:
        buf = mmap.mmap(-1, PAGE_SIZE)
    except OSError as e:  # pragma: no cover
        return False, f"probe failed: {e}"
    try:
        buf[0] = 1
        addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("4")
            fd = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError as e:
            return False, f"/proc/self/clear_refs or pagemap unusable: {e.strerror or e}"
        try:
            def bit55() -> bool:
                raw = os.pread(fd, 8, addr // PAGE_SIZE * 8)
                return len(raw) == 8 and bool(int.from_bytes(raw, "little") >> 55 & 1)

            before = bit55()
            buf[0] = 2
            after = bit55()
        finally:
            os.close(fd)
        if not before and after:
            return True, "kernel sets soft-dirty bits (probe page dirty after write)"
        if not after:
            return False, "kernel does not set soft-dirty bits (built without CONFIG_MEM_SOFT_DIRTY?)"
        return False, "soft-dirty bit not cleared by clear_refs"
    finally:
        buf.close()


def _read_soft_dirty(proc: _Proc, r: int, blocks: list[Block], alive: list[np.ndarray], image: list[np.ndarray],
                     was_present: list[np.ndarray], notes: _Notes, unreadable: str) -> list[np.ndarray]:
    ps = PAGE_SIZE
    present = PM_PRESENT | PM_SWAPPED
    dirty: list[np.ndarray] = []
    if r == 0:
        proc.clear_soft_dirty()
        for bi, b in enumerate(blocks):
            pm = proc.pagemap(b.start, b.size // ps)
            was_present[bi] = (pm & present) != 0
            dirty.append(np.ones(len(pm), bool))
    else:
        for bi, b in enumerate(blocks):
            pm = proc.pagemap(b.start, b.size // ps)
            now = (pm & present) != 0
            # soft-dirty, or zapped since the last round (MADV_DONTNEED does not set soft-dirty)
            dirty.append((((pm & PM_SOFT_DIRTY) != 0) | (was_present[bi] & ~now)) & alive[bi])
            was_present[bi] = now
        proc.clear_soft_dirty()  # after the pagemap reads, before the page reads
    out = []
    for bi, b in enumerate(blocks):
        d = dirty[bi]
        if r == 0:
            bad = _read_ranges(proc, b, image[bi], alive[bi], ps)
            _zero_fill_note(b, bad | ~alive[bi], notes, unreadable, ps)
            out.append(np.arange(len(d), dtype=np.int64))
            continue
        bad = _read_ranges(proc, b, image[bi], d, ps)
        if bad.any():
            notes.unreadable[b.name] = notes.unreadable.get(b.name, 0) + int(bad.sum())
        out.append(np.flatnonzero(d & ~bad))
    return out
