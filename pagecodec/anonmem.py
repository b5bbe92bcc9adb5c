"""Guest-RAM-sized zeroed buffers as plain anonymous memory, not numpy's default allocation.

Why: numpy asks the kernel for transparent huge pages on every allocation of 4 MiB or more
(``madvise(MADV_HUGEPAGE)``). Where the THP defrag setting is ``madvise`` (this machine's, and
the kernel's default), the first touch of each 2 MiB page may compact memory synchronously. Faulting
in 1 GiB took 1.4–3.0 s that way here, against 1.0–1.2 s for plain 4 KiB pages (alternated in one
process, three rounds), and that time lands in whoever touches the memory first: the destination's
decode CPU. Plain anonymous memory also comes zeroed and is faulted in only where written, so RAM a
stream never writes (pages that stay zero) costs nothing.
"""

from __future__ import annotations

import mmap

import numpy as np

__all__ = ["zeroed"]


def zeroed(nbytes: int) -> np.ndarray:
    """``nbytes`` of zeroed, writable uint8 memory (np.zeros where anonymous mmap is unavailable).
    The array keeps its mapping alive; the mapping goes when the last view of it does."""
    if nbytes <= 0:
        return np.zeros(max(0, nbytes), np.uint8)
    try:
        mem = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):
        return np.zeros(nbytes, np.uint8)
    return np.frombuffer(mem, np.uint8)
