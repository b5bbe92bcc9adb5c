"""The XBZRLE kernels touch no byte outside the arrays they are given, checked with guard pages.

The decoder copies short runs with a 16-byte load and store that it undoes past the run's end
(``_patch16``), and the encoder compares pages 8 bytes at a time: both are LLVM intrinsics that no
bounds check sees, and a wrong guard around them reads or writes (and restores) bytes beyond the page
or the record buffer without changing any result. Here the pages and the record buffer end right at a
page the process may not touch (PROT_NONE), so any such access is a SIGSEGV in a child process.
"""

from __future__ import annotations

import subprocess
import sys

_PROBE = r"""
import ctypes, mmap
import numpy as np
from pagecodec.codecs.xbzrle_kernel import decode_batch, encode_batch

PAGE = mmap.PAGESIZE
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
keep = []

def at_guard(nbytes):
    # a uint8 array of nbytes that ends exactly where a PROT_NONE page begins
    span = -(-nbytes // PAGE) * PAGE
    mm = mmap.mmap(-1, span + PAGE)
    keep.append(mm)
    base = np.frombuffer(mm, np.uint8)
    addr = base.ctypes.data
    assert libc.mprotect(addr + span, PAGE, 0) == 0, ctypes.get_errno()
    return base[span - nbytes : span]

for ps in (1024, 4096):
    rng = np.random.default_rng(ps)
    n = 6
    old = rng.integers(0, 256, (n, ps), dtype=np.uint8)
    new = old.copy()
    # last runs short and ending within 16 bytes of the page end; one record of many runs (the dense path)
    for k in range(n):
        new[k, ps - 5 - k : ps - 2 - k] ^= 0x5A
        new[k, 7] ^= 1
    new[0, 0 : ps - 64 : 3] ^= 0x11
    o = at_guard(n * ps).reshape(n, ps); o[:] = old
    w = at_guard(n * ps).reshape(n, ps); w[:] = new
    lens, data, starts = encode_batch(o, w)
    assert (lens > 0).all(), lens
    rec = at_guard(data.size); rec[:] = data
    pages = at_guard(n * ps).reshape(n, ps); pages[:] = old
    decode_batch(rec, starts, lens, pages)
    assert np.array_equal(pages, new)
    for k in range(n):  # one record onto a page at the guard: at the end of its buffer, or with room after it
        for pad in (0, 40):
            one = at_guard(int(lens[k]) + pad); one[: int(lens[k])] = data[starts[k] : starts[k] + lens[k]]
            page = at_guard(ps).reshape(1, ps); page[:] = old[k]
            decode_batch(one, np.zeros(1, np.int64), lens[k : k + 1].astype(np.int64), page)
            assert np.array_equal(page[0], new[k])
print("inside")
"""


def test_xbzrle_kernels_stay_inside_their_buffers():
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "inside" in out.stdout, (out.returncode, out.stderr[-2000:])
