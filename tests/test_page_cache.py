"""PageCache and xbzrle_process against a literal page-by-page model of QEMU 7.2.

The model (``RefCache`` / ``ref_save_xbzrle_page`` below) transcribes page_cache.c's
``cache_is_cached`` / ``cache_insert`` and ram.c's ``save_xbzrle_page`` / ``xbzrle_cache_zero_page``
one page at a time; the batched code must give exactly its results, including when several events
of one batch map to the same slot.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

import xbzrle_reference as ref
from pagecodec.codecs.page_cache import (
    CACHED_PAGE_LIFETIME,
    Outcome,
    PageCache,
    XbzrleCounters,
    check_xbzrle_cache_size,
    xbzrle_process,
)
from pagecodec.errors import ConfigError

PS = 64  # small pages keep the property tests fast; the code is page-size agnostic


# ----------------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------------


class RefCache:
    def __init__(self, size: int, ps: int):
        self.ps, self.n = ps, size // ps
        self.items = [[-1, 0, None] for _ in range(self.n)]  # it_addr, it_age, it_data

    def it(self, addr):
        return self.items[(addr // self.ps) & (self.n - 1)]

    def is_cached(self, addr, now):
        it = self.it(addr)
        if it[0] == addr:
            it[1] = now
            return True
        return False

    def insert(self, addr, data: bytes, now):
        it = self.it(addr)
        if it[2] is not None and it[0] != addr and it[1] + CACHED_PAGE_LIFETIME > now:
            return False
        it[2], it[1], it[0] = bytes(data), now, addr
        return True


def ref_event(cache: RefCache, addr, page: bytes, zero: bool, now, last_stage, ctr: dict):
    """One event: (outcome, encoding or None, inserted)."""
    if zero:  # xbzrle_cache_zero_page
        return Outcome.ZERO_REFRESH, None, cache.insert(addr, bytes(cache.ps), now)
    if not cache.is_cached(addr, now):  # save_xbzrle_page
        ctr["cache_miss"] += 1
        inserted = False
        if not last_stage:
            inserted = cache.insert(addr, page, now)
        return Outcome.MISS, None, inserted
    ctr["pages"] += 1
    it = cache.it(addr)
    enc = ref.encode(it[2], page)
    if not last_stage and enc != 0:
        it[2] = bytes(page)
    if enc == 0:
        return Outcome.SKIP, None, False
    if enc == -1:
        ctr["overflow"] += 1
        ctr["bytes"] += cache.ps
        return Outcome.OVERFLOW, None, False
    ctr["bytes"] += len(enc) + 3
    return Outcome.ENCODED, enc, False


def assert_same_state(cache: PageCache, model: RefCache):
    for s, (addr, age, data) in enumerate(model.items):
        assert cache.addr[s] == addr, s
        assert cache.filled[s] == (data is not None), s
        if data is not None:
            assert cache.age[s] == age, s
            assert cache.data[s].tobytes() == data, s


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------


def test_cache_init_rules():
    c = PageCache(64 << 20)
    assert c.slots == 16384 and c.page_size == 4096 and c.num_items == 0
    assert PageCache(4096).slots == 1
    assert PageCache((64 << 20) + 100).slots == 16384  # cache_init rounds the page count down
    with pytest.raises(ConfigError, match="4095 is smaller than the target page size"):
        PageCache(4095)
    with pytest.raises(ConfigError, match="holds 3 pages of 4096 bytes"):
        PageCache(3 * 4096)
    with pytest.raises(ConfigError, match="12288"):
        PageCache(12288)


def test_parameter_rule_is_stricter():
    check_xbzrle_cache_size(64 << 20)
    check_xbzrle_cache_size(4096)
    for bad in (4095, (64 << 20) + 100, 3 * 4096, 0):
        with pytest.raises(ConfigError, match="power of two no less than the target page size"):
            check_xbzrle_cache_size(bad)


def test_resize_replaces_the_cache_unless_the_size_is_unchanged():
    c = PageCache(8 * PS, PS)
    c.insert(3 * PS, np.full(PS, 7, np.uint8), 1)
    assert c.resize(8 * PS) is c and c.is_cached(3 * PS, 2)
    d = c.resize(16 * PS)
    assert d is not c and d.slots == 16 and d.num_items == 0 and not d.is_cached(3 * PS, 2)
    with pytest.raises(ConfigError):
        c.resize(3 * PS)


# ----------------------------------------------------------------------------------------------------
# single-page semantics
# ----------------------------------------------------------------------------------------------------


def test_slot_mapping_uses_the_global_address():
    c = PageCache(4 * PS, PS)
    assert [c.slot(a) for a in (0, PS - 1, PS, 4 * PS, 5 * PS + 3, 7 * PS)] == [0, 0, 1, 0, 1, 3]
    np.testing.assert_array_equal(c.slots_of([0, PS, 4 * PS, 7 * PS]), [0, 1, 0, 3])
    with pytest.raises(ValueError):
        c.slot(-PS)


def test_hit_refreshes_age_and_miss_does_not():
    c = PageCache(4 * PS, PS)
    page = np.arange(PS, dtype=np.uint8)
    assert c.insert(PS, page, now=3)
    assert not c.is_cached(5 * PS, now=9)  # same slot, other address
    assert c.age[1] == 3
    assert c.is_cached(PS, now=9) and c.age[1] == 9
    np.testing.assert_array_equal(c.get(PS), page)
    c.get(PS)[0] = 99  # a view, like get_cached_data
    assert c.data[1, 0] == 99
    with pytest.raises(KeyError):
        c.get(5 * PS)


def test_insert_refuses_a_fresh_page_of_another_address():
    c = PageCache(4 * PS, PS)
    a, b = PS, 5 * PS  # same slot
    assert c.insert(a, np.ones(PS, np.uint8), now=5)
    assert not c.insert(b, np.zeros(PS, np.uint8), now=5)  # 5 + 2 > 5
    assert not c.insert(b, np.zeros(PS, np.uint8), now=6)  # 5 + 2 > 6
    assert c.addr[1] == a and c.data[1, 0] == 1
    assert c.insert(b, np.full(PS, 2, np.uint8), now=7)  # 5 + 2 == 7: stale
    assert c.addr[1] == b and c.age[1] == 7 and c.data[1, 0] == 2


def test_insert_overwrites_the_same_address_whatever_its_age():
    c = PageCache(4 * PS, PS)
    assert c.insert(PS, np.ones(PS, np.uint8), now=5)
    assert c.insert(PS, None, now=5)  # same address: copied, age set (here the zero page)
    assert c.addr[1] == PS and c.age[1] == 5 and not c.data[1].any()
    assert c.insert(PS, np.full(PS, 3, np.uint8), now=4)  # even with an older "now"
    assert c.age[1] == 4 and c.data[1, 0] == 3


def test_empty_slots_accept_any_address_at_any_age():
    c = PageCache(2 * PS, PS)
    assert c.insert(0, np.ones(PS, np.uint8), now=0)  # it_data NULL: no freshness check
    assert c.insert(3 * PS, np.ones(PS, np.uint8), now=0)
    assert c.num_items == 2


# ----------------------------------------------------------------------------------------------------
# batches == page by page
# ----------------------------------------------------------------------------------------------------


@settings(max_examples=examples(200), deadline=None)
@given(
    st.sampled_from([1, 2, 4, 8]),
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 15), st.integers(0, 3)), max_size=12),  # (page number, fill)
            st.integers(0, 3),  # now advance
            st.booleans(),  # lookup or insert
        ),
        max_size=6,
    ),
)
def test_lookup_and_insert_batches_match_sequential(slots, batches):
    cache, model = PageCache(slots * PS, PS), RefCache(slots * PS, PS)
    now = 0
    for events, advance, lookup in batches:
        now += advance
        addrs = np.array([p * PS for p, _ in events], np.int64)
        pages = np.array([np.full(PS, f, np.uint8) for _, f in events]).reshape(-1, PS)
        if lookup:
            got = cache.lookup_batch(addrs, now)
            want = [model.is_cached(int(a), now) for a in addrs]
        else:
            got = cache.insert_batch(addrs, pages, now)
            want = [model.insert(int(a), pages[i].tobytes(), now) for i, a in enumerate(addrs)]
        assert got.tolist() == want
        assert_same_state(cache, model)


@st.composite
def event_batches(draw):
    """Batches of XBZRLE events on a small cache: few addresses, so slots collide within batches."""
    slots = draw(st.sampled_from([1, 2, 4, 8]))
    n_addr = draw(st.integers(1, 3 * slots))
    seed = draw(st.integers(0, 2**32 - 1))
    batches = []
    for _ in range(draw(st.integers(1, 6))):
        n = draw(st.integers(0, 10))
        evs = draw(
            st.lists(
                st.tuples(
                    st.integers(0, n_addr - 1),
                    st.sampled_from(["zero", "same", "small", "big", "random"]),
                ),
                min_size=n,
                max_size=n,
            )
        )
        batches.append((evs, draw(st.integers(0, 3)), draw(st.booleans())))
    return slots, seed, batches


@settings(max_examples=examples(250), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_batches())
def test_xbzrle_process_matches_sequential(case):
    slots, seed, batches = case
    rng = np.random.default_rng(seed)
    cache, model = PageCache(slots * PS, PS), RefCache(slots * PS, PS)
    content: dict[int, np.ndarray] = {}  # the guest's pages
    now = 0
    total = XbzrleCounters()
    ctr = {"pages": 0, "bytes": 0, "cache_miss": 0, "overflow": 0}
    for events, advance, last_stage in batches:
        now += advance
        addrs, pages, zero = [], [], []
        for a, kind in events:
            page = content.get(a, np.zeros(PS, np.uint8)).copy()
            if kind == "zero":
                page[:] = 0
            elif kind == "small":
                page[rng.integers(0, PS, 3)] ^= 0x5A
            elif kind == "big":
                page ^= (rng.random(PS) < 0.5).astype(np.uint8)
            elif kind == "random":
                page = rng.integers(0, 256, PS, dtype=np.uint8)
            content[a] = page
            addrs.append(a * PS)
            pages.append(page)
            zero.append(kind == "zero")
        pages_arr = np.array(pages, np.uint8).reshape(-1, PS)
        res = xbzrle_process(cache, np.array(addrs, np.int64), pages_arr, np.array(zero, bool), now, last_stage)
        total += res.counters
        assert res.data.size == int(res.lengths[res.outcome == Outcome.ENCODED].sum())
        prev_end = 0
        for i, a in enumerate(addrs):
            out, enc, inserted = ref_event(model, a, pages[i].tobytes(), zero[i], now, last_stage, ctr)
            assert res.outcome[i] == out, (i, Outcome(int(res.outcome[i])), out)
            assert res.inserted[i] == inserted, i
            if out == Outcome.ENCODED:
                assert res.record(i) == enc
                assert res.starts[i] == prev_end  # records are in event order
                prev_end += len(enc)
                assert res.lengths[i] == len(enc)
            elif out == Outcome.OVERFLOW:
                assert res.lengths[i] == -1
            else:
                assert res.lengths[i] == 0
        assert_same_state(cache, model)
    assert (total.pages, total.bytes, total.cache_miss, total.overflow) == (
        ctr["pages"], ctr["bytes"], ctr["cache_miss"], ctr["overflow"]
    )


def test_two_pages_of_one_batch_on_one_slot():
    """Second event on a slot sees the first event's result (rounds keep per-slot order)."""
    c = PageCache(2 * PS, PS)
    a, b = 0, 2 * PS  # both slot 0
    p1 = np.full(PS, 1, np.uint8)
    p2 = p1.copy()
    p2[10] = 2
    # a misses and is inserted at now=4; b misses, refused (a is fresh); a hits and encodes p2 vs p1
    res = xbzrle_process(c, [a, b, a, 1 * PS], np.stack([p1, p1, p2, p1]), [False, False, False, True], 4, False)
    assert [Outcome(int(o)) for o in res.outcome] == [Outcome.MISS, Outcome.MISS, Outcome.ENCODED, Outcome.ZERO_REFRESH]
    assert res.inserted.tolist() == [True, False, False, True]
    assert res.record(2) == bytes([10, 1, 2])
    assert res.counters == XbzrleCounters(pages=1, bytes=6, cache_miss=2, overflow=0)
    np.testing.assert_array_equal(c.get(a), p2)
    assert c.addr[1] == PS and not c.data[1].any()


def test_last_stage_keeps_the_cache_and_counts_like_qemu():
    c = PageCache(4 * PS, PS)
    base = np.zeros(PS, np.uint8)
    xbzrle_process(c, [0, PS, 2 * PS], np.stack([base] * 3), [False] * 3, 1, False)  # three misses, stored
    changed = base.copy()
    changed[3] = 1
    everything = np.full(PS, 9, np.uint8)
    res = xbzrle_process(c, [0, PS, 2 * PS, 3 * PS], np.stack([base, changed, everything, base]),
                         [False] * 4, 2, True)
    assert [Outcome(int(o)) for o in res.outcome] == [Outcome.SKIP, Outcome.ENCODED, Outcome.OVERFLOW, Outcome.MISS]
    assert res.counters == XbzrleCounters(pages=3, bytes=(3 + 3) + PS, cache_miss=1, overflow=1)
    assert not res.inserted.any()  # no inserts in the last stage
    assert not c.data[:3].any() and c.addr[3] == -1  # cached copies not updated
    assert (c.age[:3] == 2).all()  # but hits still refresh the age
    res = xbzrle_process(c, [3 * PS], base[None], [True], 2, True)  # zero pages are cached even then
    assert res.inserted.tolist() == [True] and c.addr[3] == 3 * PS


def test_overflow_updates_the_cached_copy():
    c = PageCache(PS, PS)
    xbzrle_process(c, [0], np.zeros((1, PS), np.uint8), [False], 1, False)
    everything = np.full((1, PS), 9, np.uint8)
    res = xbzrle_process(c, [0], everything, [False], 2, False)
    assert res.outcome[0] == Outcome.OVERFLOW and res.lengths[0] == -1
    np.testing.assert_array_equal(c.get(0), everything[0])
    res = xbzrle_process(c, [0], everything, [False], 3, False)
    assert res.outcome[0] == Outcome.SKIP


def test_process_input_checks():
    c = PageCache(4 * PS, PS)
    with pytest.raises(ValueError):
        xbzrle_process(c, [0, PS], np.zeros((1, PS), np.uint8), [False, False], 1, False)
    with pytest.raises(ValueError):
        xbzrle_process(c, [0], np.zeros((1, PS), np.uint8), [False, True], 1, False)
    res = xbzrle_process(c, np.zeros(0, np.int64), np.zeros((0, PS), np.uint8), np.zeros(0, bool), 1, False)
    assert res.outcome.size == 0 and res.data.size == 0
    with pytest.raises(ValueError):
        res2 = xbzrle_process(c, [0], np.zeros((1, PS), np.uint8), [False], 1, False)
        res2.record(0)  # a miss has no record


@pytest.mark.parametrize("first_page", [0, 5, 14])  # 14: the run of slots wraps around the cache
@pytest.mark.parametrize("last_stage", [False, True])
def test_consecutive_pages_match_sequential(first_page, last_stage):
    """Consecutive addresses map to consecutive slots (the batched code then works on views)."""
    rng = np.random.default_rng(first_page)
    slots, n = 16, 12
    cache, model = PageCache(slots * PS, PS), RefCache(slots * PS, PS)
    addrs = (first_page + np.arange(n)) * PS
    content = rng.integers(0, 256, (n, PS), dtype=np.uint8)
    ctr = {"pages": 0, "bytes": 0, "cache_miss": 0, "overflow": 0}
    for now, flips in enumerate([0, 2, 3, 0, 40]):
        content = content.copy()
        if flips:
            content[:, rng.integers(0, PS, flips)] ^= 0x11
        content[3] = content[3] if now != 4 else 0  # one page becomes zero
        zero = ~content.any(axis=1) if now == 4 else np.zeros(n, bool)
        res = xbzrle_process(cache, addrs, content, zero, now, last_stage and now == 4)
        for i in range(n):
            out, enc, ins = ref_event(model, int(addrs[i]), content[i].tobytes(), bool(zero[i]), now,
                                      last_stage and now == 4, ctr)
            assert (res.outcome[i], res.inserted[i]) == (out, ins)
            if enc is not None:
                assert res.record(i) == enc
        assert_same_state(cache, model)


# --- contracts mutation testing found unpinned (mutation/run.py) ----------------------------------------
def test_page_size_must_be_positive():
    for ps in (0, -4096):
        with pytest.raises(ConfigError, match="page size"):
            PageCache(4096, ps)


def test_hits_on_slots_out_of_order_encode_against_their_own_pages():
    """Hits whose slots are neither ascending nor a run (4, 9, 6: the span of the first and last equals
    a run's) each encode against their own cached page, not against a run of slots."""
    cache = PageCache(16 * PS, PS)
    slots = np.array([4, 9, 6, 5, 7])
    addrs = slots * PS
    rng = np.random.default_rng(2)
    old = rng.integers(0, 256, (5, PS), dtype=np.uint8)
    xbzrle_process(cache, addrs, old, np.zeros(5, bool), 1, False)  # misses: stored
    new = old.copy()
    new[:, 3] ^= 0x40
    res = xbzrle_process(cache, addrs[:3], new[:3], np.zeros(3, bool), 2, False)
    assert [Outcome(int(o)) for o in res.outcome] == [Outcome.ENCODED] * 3
    for i in range(3):
        assert res.record(i) == ref.encode(old[i].tobytes(), new[i].tobytes())
