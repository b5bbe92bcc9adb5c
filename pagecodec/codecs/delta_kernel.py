"""xor-zstd's per-page decision as one compiled pass: XOR with the cached copy, count, choose.

For each page a delta could encode, xor-zstd needs the XOR of the new page and the destination's
copy, how many of its bytes are non-zero (0: unchanged, nothing sent; more than a quarter: the page
was renewed and goes whole), and, for a page sent as XOR, those bytes. In numpy that is a gather from the cache, an
XOR, a scatter, another gather to count and a copy back for renewed pages: five passes over every
hit page, which cost as much CPU as zstd itself on a workload that renews its pages. This kernel
reads the page and the copy once and writes the XOR once (a whole page is not copied at all: zstd
reads it where it is) (numba, compiled on first use
and cached on disk like the XBZRLE kernels; :func:`warm_up` does it outside the timed chain).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable

import numpy as np

__all__ = ["MODE_SKIP", "xor_or_whole", "warm_up"]

#: Mode of a page that is unchanged (nothing to send); the others are delta_runs' MODE_PAGE/MODE_XOR.
MODE_SKIP = 255


def _xor_or_whole(pages, rows, cache, slots, hit, max_changed, out, modes):  # pragma: no cover - compiled
    """modes[j] = 0 (send pages[rows[j]] whole), 1 (send its XOR, written to out[j]), 255 (unchanged)."""
    n, ps = out.shape
    for j in range(n):
        src = pages[rows[j]]
        dst = out[j]
        if not hit[j]:
            modes[j] = 0
            continue
        ref = cache[slots[j]]
        changed = 0
        for b in range(ps):
            x = src[b] ^ ref[b]
            dst[b] = x
            changed += x != 0
        if changed == 0:
            modes[j] = MODE_SKIP
        elif changed > max_changed:
            modes[j] = 0
        else:
            modes[j] = 1


@lru_cache(maxsize=1)
def _compiled() -> Callable[..., Any]:
    from numba import njit

    return njit(cache=True, nogil=True)(_xor_or_whole)


def xor_or_whole(pages: np.ndarray, rows: np.ndarray, cache: np.ndarray, slots: np.ndarray, hit: np.ndarray,
                 max_changed: int) -> tuple[np.ndarray, np.ndarray]:
    """For pages ``pages[rows]``: each page's mode, and (k, page_size) rows holding the XOR of the
    pages whose mode is XOR (other rows are not written: a whole page is streamed from where it is);
    a hit page is compared with ``cache[slots[j]]``."""
    k, ps = len(rows), pages.shape[1]
    out = np.empty((k, ps), np.uint8)
    modes = np.empty(k, np.uint8)
    if k:
        rows = np.asarray(rows, np.int64)
        slots = np.asarray(slots, np.int64)
        hit = np.asarray(hit, np.bool_)
        # the compiled loop indexes without bounds checks: every index is checked here first
        if slots.shape != (k,) or hit.shape != (k,) or cache.shape[1:] != (ps,):
            raise ValueError(f"{k} rows, {slots.shape} slots, {hit.shape} hits, cache rows of {cache.shape[1:]}")
        if rows.min() < 0 or rows.max() >= len(pages):
            raise ValueError(f"a row outside the {len(pages)} pages")
        used = slots[hit]
        if len(used) and (used.min() < 0 or used.max() >= len(cache)):
            raise ValueError(f"a slot outside the cache's {len(cache)}")
        _compiled()(pages, rows, cache, slots, hit, int(max_changed), out, modes)
    return out, modes


def warm_up(page_size: int) -> None:
    """Load (or compile) the kernel now, so that its first use is not charged to the delta slot."""
    pages = np.zeros((2, page_size), np.uint8)
    pages[1, 0] = 1
    xor_or_whole(pages, np.arange(2), pages, np.arange(2), np.array([True, False]), page_size // 4)
