"""pytest-benchmark: XBZRLE encode/decode throughput, batched (256 pages per call).

Run: ``pytest bench/bench_xbzrle.py --benchmark-only`` (``--benchmark-columns=mean,ops`` helps).
Each benchmark records ``MB/s`` (page data, 1 MB = 10**6 bytes) in ``extra_info``; for a
table against QEMU's C figures use ``python bench/xbzrle_ratio.py``.

The kernels are compiled by numba on first use (or loaded from its cache); ``warm_kernels`` does
that before any benchmark, so no timing includes it.
"""

from __future__ import annotations

import numpy as np
import pytest

from pagecodec.codecs.xbzrle_kernel import decode_batch, encode_batch
from xbzrle_ratio import make_regime, warm_up

PAGES = 256
REGIMES = ["0.1%", "1% clustered", "1% scattered", "10% scattered", "50% scattered", "50% clustered"]


@pytest.fixture(scope="module", autouse=True)
def warm_kernels():
    warm_up()


@pytest.fixture(scope="module", params=REGIMES)
def regime(request):
    old, new = make_regime(request.param, PAGES)
    return request.param, old, new


def _mbps(benchmark, nbytes: int) -> None:
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["MB/s"] = round(nbytes / benchmark.stats.stats.min / 1e6, 1)


def test_encode(benchmark, regime):
    name, old, new = regime
    benchmark.group = "xbzrle encode"
    benchmark.name = f"encode {name}"
    lengths, _, _ = benchmark(encode_batch, old, new)
    assert (lengths != 0).all()
    _mbps(benchmark, old.nbytes)


def test_decode(benchmark, regime):
    name, old, new = regime
    lengths, data, starts = encode_batch(old, new)
    ok = lengths > 0
    if not ok.any():
        pytest.skip(f"{name}: every page overflows")
    base = old[ok]
    pages = base.copy()
    s, n = starts[ok], lengths[ok]

    def setup():
        np.copyto(pages, base)  # fresh old pages for each round (not timed)

    benchmark.group = "xbzrle decode"
    benchmark.name = f"decode {name}"
    benchmark.pedantic(decode_batch, args=(data, s, n, pages), setup=setup, rounds=200, warmup_rounds=2)
    np.testing.assert_array_equal(pages, new[ok])
    _mbps(benchmark, base.nbytes)
