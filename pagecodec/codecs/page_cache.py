"""QEMU's XBZRLE page cache (migration/page_cache.c) and the cache side of ``save_xbzrle_page``.

The cache is direct-mapped on the global RAM address (``ram_addr_t``: block base + offset)::

    slot = (addr / page_size) & (slots - 1)

Each slot holds an address (-1 when empty), an age and a page. The age is the migration's
``dirty_sync_count`` at the last hit or store ("now" below). QEMU 7.2's rules, as this module models
them:

- ``cache_init``: refuses a size below one page, and a page count (size / page_size, rounded down)
  that is not a power of two. (``migrate_params_check`` is stricter: the byte size itself must be a
  power of two no less than the page size; see :func:`check_xbzrle_cache_size`.)
- ``cache_is_cached(addr, now)``: hit when the slot's address is ``addr``; a hit sets age = now.
- ``cache_insert(addr, page, now)``: refused (-1) when the slot holds data for a *different* address
  that is still fresh, ``it_age + CACHED_PAGE_LIFETIME (2) > now``. Otherwise the page is copied in
  and the slot's age and address are set -- also when the slot already holds ``addr`` (overwrite).
- ``xbzrle_cache_resize``: a new size equal to the current one does nothing; any other size replaces
  the cache with a new, empty one.

``save_xbzrle_page`` (ram.c) and ``xbzrle_cache_zero_page`` are modelled by :func:`xbzrle_process`
for a batch of events in QEMU's page order; the result equals processing them one by one.
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field
from enum import IntEnum

import numpy as np

from ..errors import ConfigError
from .xbzrle_kernel import encode_batch

__all__ = [
    "CACHED_PAGE_LIFETIME",
    "PageCache",
    "check_xbzrle_cache_size",
    "Outcome",
    "XbzrleCounters",
    "XbzrleResult",
    "xbzrle_process",
]

CACHED_PAGE_LIFETIME = 2  # page_cache.c: "the page in cache will not be replaced in two cycles"


def check_xbzrle_cache_size(size: int, page_size: int = 4096) -> None:
    """``migrate_params_check``'s rule for the xbzrle-cache-size parameter (QEMU 7.2)."""
    if size < page_size or size & (size - 1):
        raise ConfigError(
            f"xbzrle-cache-size {size}: must be a power of two no less than the target page size ({page_size})"
        )


def _round_indexes(slots: np.ndarray) -> list[np.ndarray]:
    """Split event indexes into rounds in which no slot repeats; round r holds every slot's r-th event.

    Events on different slots commute (each reads and writes only its own slot), so processing the
    rounds in order, each in any order, gives the sequential result: the events of one slot keep
    their order, and moving an event past events of other slots changes nothing.
    """
    n = slots.size
    if n == 0:
        return []
    order = np.argsort(slots, kind="stable")
    s = slots[order]
    new_group = np.empty(n, bool)
    new_group[0] = True
    np.not_equal(s[1:], s[:-1], out=new_group[1:])
    if new_group.all():
        return [np.arange(n)]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n) - group_start
    by_rank = np.argsort(rank, kind="stable")  # ascending event index within each rank
    bounds = np.flatnonzero(np.diff(rank[by_rank])) + 1
    return np.split(by_rank, bounds)


#: Bytes of cache memory faulted in at once (:meth:`PageCache._populate`): 256 KiB populates little that
#: stays unused where stored pages are scattered among zero pages (measured: 2 MiB cost ~20% more).
_POPULATE_BYTES = 256 << 10
#: madvise advice that faults a range in at once (linux/mman.h, Linux 5.14+); the zstd contexts use it too.
MADV_POPULATE_WRITE = 23


def _slot_memory(slots: int, page_size: int) -> tuple[np.ndarray, "mmap.mmap | None"]:
    """The cache's pages: anonymous memory reserved but not touched (np.empty where mmap fails)."""
    n = slots * page_size
    try:
        mem = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, ValueError, AttributeError):
        return np.empty((slots, page_size), np.uint8), None
    return np.frombuffer(mem, np.uint8).reshape(slots, page_size), mem


class PageCache:
    """QEMU's XBZRLE page cache: ``slots`` direct-mapped pages, addressed by global RAM address."""

    def __init__(self, cache_size_bytes: int, page_size: int = 4096):
        cache_size_bytes = int(cache_size_bytes)
        page_size = int(page_size)
        if page_size <= 0:
            raise ConfigError(f"page cache: page size {page_size} must be positive")
        if cache_size_bytes < page_size:
            raise ConfigError(
                f"xbzrle cache size {cache_size_bytes} is smaller than the target page size ({page_size})"
            )
        slots = cache_size_bytes // page_size
        if slots & (slots - 1):
            raise ConfigError(
                f"xbzrle cache size {cache_size_bytes} holds {slots} pages of {page_size} bytes:"
                " the number of pages is not a power of two"
            )
        self.size_bytes = cache_size_bytes  # as configured (QEMU compares this on resize)
        self.page_size = page_size
        self.slots = slots
        self.addr = np.full(slots, -1, np.int64)  # it_addr; -1 = empty
        self.age = np.zeros(slots, np.int64)  # it_age
        self.filled = np.zeros(slots, bool)  # it_data != NULL
        self.data, self._memory = _slot_memory(slots, page_size)  # it_data; never read where ``filled`` is False
        self._chunk_slots = max(1, _POPULATE_BYTES // page_size)
        self._populated = np.zeros(-(-slots // self._chunk_slots), bool)

    def __repr__(self) -> str:
        return f"PageCache({self.size_bytes}, page_size={self.page_size}: {self.num_items}/{self.slots} slots used)"

    @property
    def num_items(self) -> int:
        """Slots holding a page (page_cache.c's ``num_items``)."""
        return int(np.count_nonzero(self.filled))

    # -- single pages (QEMU's API) -------------------------------------------------------------------

    def slot(self, addr: int) -> int:
        """``cache_get_cache_pos``."""
        if addr < 0:
            raise ValueError(f"RAM address {addr} is negative")
        return (int(addr) // self.page_size) & (self.slots - 1)

    def is_cached(self, addr: int, now: int) -> bool:
        """``cache_is_cached``: True when the slot holds ``addr``; a hit sets the slot's age to ``now``."""
        s = self.slot(addr)
        if self.addr[s] == addr:
            self.age[s] = now
            return True
        return False

    def get(self, addr: int) -> np.ndarray:
        """``get_cached_data``: a writable view of the cached page. KeyError unless ``addr`` is cached."""
        s = self.slot(addr)
        if self.addr[s] != addr:
            raise KeyError(f"RAM address {addr:#x} is not cached (slot {s} holds {int(self.addr[s]):#x})")
        return self.data[s]

    def _populate(self, slots: np.ndarray) -> None:
        """Fault in the memory of the chunks ``slots`` lie in before they are first written.

        Why: the cache's memory is reserved, not touched, so a cache larger than what a migration
        stores costs nothing; but faulting it in page by page as slots are written costs ~4x the CPU
        of asking the kernel for a 2 MiB chunk at once (``MADV_POPULATE_WRITE``, Linux 5.14+), and the
        XBZRLE/delta slot would pay it on its first pass (measured: 0.2 s against 0.05 s per 64 MiB on
        this project's machine). Where the kernel lacks it, the first writes fault as usual."""
        if self._memory is None:
            return
        chunks = np.unique(np.asarray(slots) // self._chunk_slots)
        new = chunks[~self._populated[chunks]]
        if not len(new):
            return
        self._populated[new] = True
        step = self._chunk_slots * self.page_size
        size = len(self._memory)
        try:
            for c in new.tolist():
                self._memory.madvise(MADV_POPULATE_WRITE, c * step, min(step, size - c * step))
        except (OSError, ValueError, AttributeError):
            self._memory = None  # not supported: let the writes fault the pages in

    def insert(self, addr: int, page: np.ndarray | None, now: int) -> bool:
        """``cache_insert``: store ``page`` (None = the zero page) for ``addr``. False when refused."""
        s = self.slot(addr)
        if self.filled[s] and self.addr[s] != addr and self.age[s] + CACHED_PAGE_LIFETIME > now:
            return False  # the cached page is fresh: don't replace it
        self._populate(np.array([s]))
        if page is None:
            self.data[s] = 0
        else:
            self.data[s] = np.asarray(page, np.uint8).reshape(self.page_size)
        self.filled[s] = True
        self.age[s] = now
        self.addr[s] = addr
        return True

    def resize(self, new_size: int) -> "PageCache":
        """``xbzrle_cache_resize``: the same cache if ``new_size`` is the current size, else a new empty one."""
        if int(new_size) == self.size_bytes:
            return self
        return PageCache(new_size, self.page_size)

    # -- batches (same results as page-by-page calls in order) --------------------------------------

    def slots_of(self, addrs: np.ndarray) -> np.ndarray:
        addrs = np.asarray(addrs, np.int64)
        if addrs.size and int(addrs.min()) < 0:
            raise ValueError("RAM addresses must not be negative")
        return (addrs // self.page_size) & (self.slots - 1)

    def lookup_batch(self, addrs: np.ndarray, now: int) -> np.ndarray:
        """``cache_is_cached`` for each address in order: the hit mask (hits set their slot's age).

        Lookups never change which address a slot holds, so the order within the batch is irrelevant.
        """
        addrs = np.asarray(addrs, np.int64)
        s = self.slots_of(addrs)
        hit = self.addr[s] == addrs
        self.age[s[hit]] = now
        return hit

    def insert_batch(self, addrs: np.ndarray, pages: np.ndarray | None, now: int) -> np.ndarray:
        """``cache_insert`` for each (address, page) in order (``pages`` None: zero pages). Accepted mask."""
        addrs = np.asarray(addrs, np.int64)
        s = self.slots_of(addrs)
        ok = np.zeros(addrs.size, bool)
        for idx in _round_indexes(s):
            ok[idx] = self._insert_distinct(s[idx], addrs[idx], None if pages is None else pages[idx], now)
        return ok

    def _insert_distinct(self, s: np.ndarray, addrs: np.ndarray, pages: np.ndarray | None, now: int) -> np.ndarray:
        """cache_insert for events whose slots ``s`` are all different."""
        refused = self.filled[s] & (self.addr[s] != addrs) & (self.age[s] + CACHED_PAGE_LIFETIME > now)
        ok = ~refused
        t = s[ok]
        if t.size:
            self._populate(t)
            self.data[t] = 0 if pages is None else (pages if t.size == s.size else pages[ok])
            self.filled[t] = True
            self.age[t] = now
            self.addr[t] = addrs[ok]
        return ok

    def process_batch(self, addrs, pages, is_zero, now: int, last_stage: bool) -> "XbzrleResult":
        """:func:`xbzrle_process` on this cache."""
        return xbzrle_process(self, addrs, pages, is_zero, now, last_stage)


# ----------------------------------------------------------------------------------------------------
# save_xbzrle_page / xbzrle_cache_zero_page for a batch of events
# ----------------------------------------------------------------------------------------------------


class Outcome(IntEnum):
    """What happened to each event of :func:`xbzrle_process`."""

    ZERO_REFRESH = 0  # zero page: xbzrle_cache_zero_page stored (or tried to store) the zero page
    MISS = 1  # not cached: cache-miss, stored unless last stage (may be refused), page sent raw
    SKIP = 2  # hit, unchanged (encoded_len 0): nothing sent, cache untouched
    OVERFLOW = 3  # hit, encoding longer than a page (-1): page sent raw, cache updated unless last stage
    ENCODED = 4  # hit, XBZRLE record of ``lengths[i]`` bytes, cache updated unless last stage


@dataclass
class XbzrleCounters:
    """``xbzrle_counters`` contributions (QEMU 5.1+ semantics, as in 7.2).

    ``bytes`` counts Σ(len + 3) over the records plus one page per overflow. QEMU adds
    ``save_page_header()``'s size minus 8, so a record sent *without* RAM_SAVE_FLAG_CONTINUE also
    counts its ``1 + len(idstr)`` block-name bytes: the caller that writes the headers adds those.
    """

    pages: int = 0  # cache hits, skipped and overflowing pages included
    bytes: int = 0
    cache_miss: int = 0
    overflow: int = 0

    def __iadd__(self, other: "XbzrleCounters") -> "XbzrleCounters":
        self.pages += other.pages
        self.bytes += other.bytes
        self.cache_miss += other.cache_miss
        self.overflow += other.overflow
        return self


@dataclass
class XbzrleResult:
    """Per-event outcome of :func:`xbzrle_process`, with the encodings in event order."""

    outcome: np.ndarray  # int8 (n,), Outcome values
    lengths: np.ndarray  # int32 (n,): encoded length for ENCODED, -1 for OVERFLOW, else 0
    starts: np.ndarray  # int64 (n,): where each ENCODED event's record starts in ``data``
    data: np.ndarray  # uint8: the ENCODED events' records, back to back, in event order
    inserted: np.ndarray  # bool (n,): the event stored its page in the cache (zero refresh or miss)
    counters: XbzrleCounters = field(default_factory=XbzrleCounters)

    def record(self, i: int) -> bytes:
        """The XBZRLE encoding of event ``i`` (ENCODED only)."""
        if self.outcome[i] != Outcome.ENCODED:
            raise ValueError(f"event {i} is {Outcome(int(self.outcome[i])).name}, not ENCODED")
        s = int(self.starts[i])
        return self.data[s : s + int(self.lengths[i])].tobytes()


def xbzrle_process(
    cache: PageCache,
    addrs: np.ndarray,
    pages: np.ndarray,
    is_zero: np.ndarray,
    now: int,
    last_stage: bool,
) -> XbzrleResult:
    """Run a batch of XBZRLE events through ``cache``, exactly as QEMU 7.2 would one by one, in order.

    Event i is at global RAM address ``addrs[i]``:

    - ``is_zero[i]``: a zero page was sent; ``xbzrle_cache_zero_page`` does
      ``cache_insert(addr, zero page, now)`` (result ignored; also in the last stage). Pass zero
      events only when QEMU would call it: xbzrle active (``rs->xbzrle_enabled``, i.e. past the
      first pass) and compression not in use.
    - otherwise ``save_xbzrle_page`` with content ``pages[i]``:
      miss -> ``cache-miss`` += 1, ``cache_insert`` unless ``last_stage`` (may be refused), raw page;
      hit -> ``pages`` += 1, age = now, encode against the cached copy; unless ``last_stage`` the
      cached copy becomes the new page whenever the result is not 0 (overflow included);
      0 -> skipped; -1 -> ``overflow`` += 1, ``bytes`` += page size, raw page; L -> record,
      ``bytes`` += L + 3.

    ``now`` is the dirty-sync count (``ram_counters.dirty_sync_count``). Pages of zero events are not
    read. Events sharing a slot are processed in rounds (see ``_round_indexes``).
    """
    addrs = np.asarray(addrs, np.int64).reshape(-1)
    n = addrs.size
    is_zero = np.asarray(is_zero, bool).reshape(-1)
    if is_zero.size != n:
        raise ValueError(f"{n} addresses but {is_zero.size} zero flags")
    pages = np.asarray(pages)
    if pages.dtype != np.uint8 or pages.shape != (n, cache.page_size):
        raise ValueError(f"pages must be uint8 ({n}, {cache.page_size}), got {pages.dtype} {pages.shape}")
    outcome = np.zeros(n, np.int8)
    lengths = np.zeros(n, np.int32)
    inserted = np.zeros(n, bool)
    counters = XbzrleCounters()
    slots = cache.slots_of(addrs)
    encoded: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []  # (events, lengths, starts, data)

    for idx in _round_indexes(slots):
        zero = is_zero[idx]
        zi = idx[zero]
        if zi.size:
            outcome[zi] = Outcome.ZERO_REFRESH
            inserted[zi] = cache._insert_distinct(slots[zi], addrs[zi], None, now)
        ci = idx[~zero] if zi.size else idx
        if ci.size == 0:
            continue
        s = slots[ci]
        hit = cache.addr[s] == addrs[ci]
        mi = ci[~hit]
        if mi.size:
            outcome[mi] = Outcome.MISS
            counters.cache_miss += int(mi.size)
            if not last_stage:
                inserted[mi] = cache._insert_distinct(slots[mi], addrs[mi], pages[mi], now)
        hi = ci[hit]
        if hi.size:
            hs = s[hit]
            cache.age[hs] = now
            # views instead of copies where the events / slots are consecutive (the common case)
            new = _rows(pages, hi)
            cached = _rows(cache.data, hs)
            lens, data, starts = encode_batch(cached, new)
            if not last_stage:
                upd = lens != 0
                if upd.all():
                    if isinstance(cached, np.ndarray) and cached.base is cache.data:
                        cached[...] = new
                    else:
                        cache.data[hs] = new
                elif upd.any():
                    cache.data[hs[upd]] = new[upd]
            outcome[hi] = np.where(lens > 0, Outcome.ENCODED, np.where(lens < 0, Outcome.OVERFLOW, Outcome.SKIP))
            lengths[hi] = lens
            counters.pages += int(hi.size)
            n_ovf = int(np.count_nonzero(lens < 0))
            counters.overflow += n_ovf
            counters.bytes += int(lens[lens > 0].sum()) + 3 * int(np.count_nonzero(lens > 0))
            counters.bytes += n_ovf * cache.page_size
            if data.size:
                encoded.append((hi, lens, starts, data))

    starts_out = np.zeros(n, np.int64)
    if not encoded:
        data_out = np.zeros(0, np.uint8)
    elif len(encoded) == 1:
        hi, lens, starts, data_out = encoded[0]
        starts_out[hi] = starts
    else:  # several rounds encoded: put the records in event order
        data_out, starts_out = _in_event_order(n, encoded)
    return XbzrleResult(outcome, lengths, starts_out, data_out, inserted, counters)


def _rows(a: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """a[idx] -- as a view when idx is a run of consecutive rows."""
    first = int(idx[0])
    if int(idx[-1]) - first == idx.size - 1 and (idx.size < 3 or bool((np.diff(idx) == 1).all())):
        return a[first : first + idx.size]
    return a[idx]


def _in_event_order(n: int, encoded: list) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate the records of several rounds in event order. Returns (data, starts)."""
    ev = np.concatenate([e[0] for e in encoded])
    ln = np.concatenate([e[1] for e in encoded]).astype(np.int64)
    base = np.cumsum([0] + [e[3].size for e in encoded[:-1]])
    src = np.concatenate([e[2] + b for e, b in zip(encoded, base)])
    pool = np.concatenate([e[3] for e in encoded])
    pos = ln > 0
    ev, ln, src = ev[pos], ln[pos], src[pos]
    order = np.argsort(ev, kind="stable")
    ev, ln, src = ev[order], ln[order], src[order]
    dst = np.cumsum(ln)
    total = int(dst[-1])
    dst -= ln
    idx = np.repeat(src - dst, ln)  # byte t of the output comes from pool[t + src - dst] of its record
    idx += np.arange(total)
    data = pool[idx]
    starts = np.zeros(n, np.int64)
    starts[ev] = dst
    return data, starts
