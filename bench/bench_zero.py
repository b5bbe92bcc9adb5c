"""pytest-benchmark: zero-page detection on round 0 of linux-mixed (non-zero pages, zero pages, the
whole round in 512-page segments as the chain calls it), pagecodec's ``zero_page_mask`` against the
old numpy reduction and the C reference of ``bench/zero_ratio.py`` (compiled with gcc at set-up).

Run: ``pytest bench/bench_zero.py --benchmark-only``. Each benchmark records ``GB/s`` (page data,
1 GB = 10**9 bytes) in ``extra_info``; for the table with ratios use ``python bench/zero_ratio.py``.
The kernel is loaded (or compiled) before any benchmark.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pagecodec.codecs.zero import warm_up, zero_page_mask
from zero_ratio import CReference, load_cases, old_numpy_mask, run_all

CASES = ["non-zero", "zero", "segments"]


@pytest.fixture(scope="module")
def cases():
    warm_up()
    return load_cases()


@pytest.fixture(scope="module")
def impls():
    found = {"pagecodec": zero_page_mask, "old numpy": old_numpy_mask}
    cref = CReference() if shutil.which("gcc") else None
    if cref is not None:
        found["C ref"] = cref
    yield found
    if cref is not None:
        cref.close()


@pytest.mark.parametrize("impl", ["pagecodec", "C ref", "old numpy"])
@pytest.mark.parametrize("case", CASES)
def test_zero_detect(benchmark, cases, impls, case, impl):
    if impl not in impls:
        pytest.skip("gcc not found: no C reference")
    fn, batches = impls[impl], cases[case]
    for p in batches:
        np.testing.assert_array_equal(fn(p), ~p.any(axis=1))
    benchmark.group = f"zero detect: {case}"
    benchmark.name = f"{impl} {case}"
    benchmark(run_all, fn, batches)
    if benchmark.stats is not None:  # None under --benchmark-disable
        nbytes = sum(p.nbytes for p in batches)
        benchmark.extra_info["GB/s"] = round(nbytes / benchmark.stats.stats.min / 1e9, 1)
