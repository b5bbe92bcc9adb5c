"""Guest-RAM buffers (anonmem.zeroed): zeroed, writable, faulted in only where written, and not
advised for transparent huge pages (whose synchronous compaction made the destination's first touch
of RAM slow and noisy)."""

from __future__ import annotations

import resource
from pathlib import Path

import numpy as np
import pytest

from pagecodec.anonmem import zeroed


def _huge_kib() -> int:
    """This process's anonymous memory in transparent huge pages (KiB)."""
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0


def test_zeroed_is_zero_writable_and_the_size_asked():
    a = zeroed(3 * 4096 + 5)
    assert a.dtype == np.uint8 and a.shape == (3 * 4096 + 5,) and not a.any()
    a[-1] = 7
    assert a[-1] == 7
    assert zeroed(0).shape == (0,)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc/self/smaps_rollup")
def test_zeroed_memory_does_not_take_huge_pages_where_numpy_does():
    before = _huge_kib()
    theirs = np.zeros(64 << 20, np.uint8)
    theirs[:] = 1
    if _huge_kib() == before:
        pytest.skip("numpy's memory gets no transparent huge pages here (THP off, or none free)")
    before = _huge_kib()
    ours = zeroed(64 << 20)
    ours[:] = 1
    assert _huge_kib() == before


def test_zeroed_memory_is_faulted_in_only_where_written():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = zeroed(256 << 20)
    a[:: 64 << 20] = 1  # four pages
    assert resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before < 1000
