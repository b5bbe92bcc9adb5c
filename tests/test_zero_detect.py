"""zero_page_mask: the compiled early-exit scan gives exactly ``~pages.any(axis=1)``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hyp import examples

from pagecodec.codecs.zero import zero_page_mask, warm_up

warm_up()

PAGE_SIZES = [1, 3, 7, 8, 16, 24, 64, 100, 248, 256, 264, 512, 1000, 1024, 4096, 4104, 8192]


def _check(pages: np.ndarray) -> None:
    got = zero_page_mask(pages)
    assert got.dtype == np.bool_ and got.shape == (pages.shape[0],)
    np.testing.assert_array_equal(got, ~pages.any(axis=1))


@settings(max_examples=examples(300), deadline=None)
@given(ps=st.sampled_from(PAGE_SIZES), n=st.integers(1, 6), data=st.data())
def test_single_nonzero_byte_anywhere(ps, n, data):
    pages = np.zeros((n, ps), np.uint8)
    row = data.draw(st.integers(0, n - 1))
    pos = data.draw(st.integers(0, ps - 1))
    pages[row, pos] = data.draw(st.integers(1, 255))
    _check(pages)
    got = zero_page_mask(pages)
    assert not got[row] and got.sum() == n - 1


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_every_single_byte_position(ps):
    """Page i has its only non-zero byte at position i (every position of the page), among zero pages."""
    pages = np.zeros((2 * ps + 1, ps), np.uint8)
    pages[np.arange(ps) * 2 + 1, np.arange(ps)] = 0x80
    _check(pages)
    assert zero_page_mask(pages).sum() == ps + 1


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_all_zero(ps):
    pages = np.zeros((5, ps), np.uint8)
    assert zero_page_mask(pages).all()
    pages.flags.writeable = False
    assert zero_page_mask(pages).all()


def test_empty_batches():
    assert zero_page_mask(np.zeros((0, 4096), np.uint8)).shape == (0,)
    assert zero_page_mask(np.zeros((3, 0), np.uint8)).all()


@settings(max_examples=examples(200), deadline=None)
@given(ps=st.sampled_from(PAGE_SIZES), n=st.integers(0, 8), seed=st.integers(0, 2**32 - 1),
       density=st.sampled_from([0.0, 1e-4, 1e-2, 0.5]))
def test_random_pages(ps, n, seed, density):
    rng = np.random.default_rng(seed)
    pages = np.where(rng.random((n, ps)) < density, rng.integers(1, 256, (n, ps)), 0).astype(np.uint8)
    pages[rng.random(n) < 0.3] = 0  # some whole zero pages
    _check(pages)


@settings(max_examples=examples(200), deadline=None)
@given(ps=st.sampled_from(PAGE_SIZES), n=st.integers(1, 8), seed=st.integers(0, 2**32 - 1),
       view=st.sampled_from(["rows", "cols", "offset", "transposed", "reversed", "fortran", "unaligned"]))
def test_non_contiguous(ps, n, seed, view):
    """Strided rows, column slices, offsets into a row, Fortran order, negative strides, unaligned starts."""
    rng = np.random.default_rng(seed)
    big = np.zeros((3 * n + 1, ps + 17), np.uint8)
    hot = rng.random(big.shape) < 2.0 / big.size * n
    big[hot] = rng.integers(1, 256, int(hot.sum()))
    if view == "rows":
        pages = big[::3, :ps]
    elif view == "cols":
        pages = big[:n, 8 : 8 + ps]
    elif view == "offset":
        pages = big[1 : n + 1, 1 : 1 + ps]
    elif view == "transposed":
        pages = np.ascontiguousarray(big[:n, :ps].T).T
    elif view == "reversed":
        pages = big[n - 1 :: -1, :ps] if n > 1 else big[:1, :ps]
    elif view == "fortran":
        pages = np.asfortranarray(big[:n, :ps])
    else:
        raw = np.zeros(n * ps + 1, np.uint8)[1:]
        pages = raw.reshape(n, ps)
        pages[...] = big[:n, :ps]
    _check(pages)


def test_real_corpus_round0():
    from pathlib import Path

    from pagecodec.harness.replay import rounds_of
    from pagecodec.trace.format import TraceReader

    path = Path(__file__).resolve().parents[1] / "corpora" / "linux-mixed.trace.parquet"
    reader = TraceReader(path)
    seen = 0
    for r, batches in rounds_of(reader, max_pages=512):
        for b in batches:
            _check(b.pages)
            seen += len(b)
        if r >= 1:
            break
    assert seen > 0


def test_zero_records_write_only_pages_that_are_not_zero_already():
    """ram_handle_zero's rule, batched: a zero fill clears exactly the pages that hold something, a
    non-zero fill fills; pages already zero are left alone (equal result to page-by-page loads)."""
    from pagecodec.codecs.zero import ZeroPageDecoder

    rng = np.random.default_rng(5)
    pages = np.zeros((64, 4096), np.uint8)
    for i in (1, 7, 8, 30, 63):
        pages[i, rng.integers(0, 4096)] = 1 + i
    pages[9, -1] = 5  # the last byte only
    pages[10, 2048] = 5  # the middle word only
    pages[11, 1500] = 5  # inside a block
    index = np.array([0, 1, 7, 9, 10, 11, 30, 63, 40, 5], np.int64)
    payloads = np.zeros((len(index), 1), np.uint8)
    payloads[-1] = 0xAB  # a non-zero fill
    expect = pages.copy()
    for k, i in enumerate(index):
        expect[i] = payloads[k, 0]
    keep = pages[8].copy()
    ZeroPageDecoder().load_batch(payloads, pages, index)
    assert np.array_equal(pages, expect) and np.array_equal(pages[8], keep)
