"""An independent, page-by-page model of QEMU 7.2's sending side: the test oracle for the chain.

Written from ``../shared/QEMU-FACTS.md`` (and QEMU's ``migration/ram.c`` where the facts are terse),
without any of pagecodec's helpers: no ``wire``, ``codecs`` or ``chain`` import, no numpy. Like
``xbzrle_reference.py`` is for the XBZRLE kernel, it is deliberately slow and literal:
``ram_save_target_page`` for one page at a time, in QEMU's order, with a dict for the page cache and
``struct`` for the bytes. It produces the *whole* stream (QEVM header, configuration, the RAM
sections with their footers, EOF and the vmdesc trailer pagecodec appends) and every counter itself,
so a test compares the chain's bytes and counters with values the code under test had no part in.

What it models (pagecodec's documented choices where QEMU decides by timing): one RAM section per
trace round, each pass starting at the first block, a dirty-bitmap sync before every round (round r
runs with ``dirty_sync_count`` r + 1), round 0 the bulk stage, the last round ``ram_save_complete``.
Capabilities: none (zero pages + normal pages) and XBZRLE with its page cache (7.2's counters, or
4.1's with ``qemu41``).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import xbzrle_reference

# RAM_SAVE_FLAG_* (QEMU-FACTS.md, "Page records")
ZERO, MEM_SIZE, PAGE, EOS, CONTINUE, XBZRLE = 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
# QEVM section types (QEMU-FACTS.md, "The stream file")
EOF, START, PART, END, VMDESC, CONFIG, FOOTER = 0x00, 0x01, 0x02, 0x03, 0x06, 0x07, 0x7E
RAM_SECTION_ID = 2  # the id QEMU 7.2 gives "ram" on pc machines
CACHED_PAGE_LIFETIME = 2  # page_cache.c


@dataclass
class RefTrace:
    """A trace as plain data: ``rounds[r]`` lists (block index, byte offset, page bytes) in any order;
    round 0 holds every page of RAM."""

    page_size: int
    blocks: list[tuple[str, int]]
    rounds: list[list[tuple[int, int, bytes]]]

    def __repr__(self) -> str:
        """Short enough for a failing example: each page as block:offset=its non-zero bytes (first
        few positions and values), ``0`` for a zero page."""
        def page(p: bytes) -> str:
            nz = [i for i, v in enumerate(p) if v]
            if not nz:
                return "0"
            head = ",".join(f"{i}:{p[i]:02x}" for i in nz[:3])
            return f"{len(nz)}nz[{head}{',…' if len(nz) > 3 else ''}]#{hash(p) & 0xFFFF:04x}"
        rounds = "; ".join(f"r{r}: " + (" ".join(f"{b}:{o:#x}={page(p)}" for b, o, p in pages) or "empty")
                           for r, pages in enumerate(self.rounds))
        return f"RefTrace(page_size={self.page_size}, blocks={self.blocks}, {rounds})"

    def _repr_pretty_(self, p, cycle) -> None:  # hypothesis prints falsifying examples with this
        p.text(repr(self))


@dataclass
class RefResult:
    stream: bytes
    ram: dict[str, int]
    xbzrle: dict[str, float] | None
    records: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    #: per round, as the results' ``rounds`` list: stage, dirty pages, transferred, records and record
    #: bytes by kind (EOS included), pages skipped
    rounds: list[dict] = field(default_factory=list)


def ram_base_addresses(blocks: list[tuple[str, int]], page_size: int) -> list[int]:
    """``find_ram_offset`` on an empty address space: each block starts at the end of the previous one
    rounded up to ``BITS_PER_LONG`` (64) target pages."""
    align = 64 * page_size
    out, end = [], 0
    for _name, size in blocks:
        start = (end + align - 1) // align * align
        out.append(start)
        end = start + size
    return out


class RefPageCache:
    """page_cache.c: direct-mapped on the RAM address; a slot is [addr, age, page bytes]."""

    def __init__(self, size_bytes: int, page_size: int) -> None:
        self.page_size = page_size
        self.slots = size_bytes // page_size
        self.items: dict[int, list] = {}

    def _slot(self, addr: int) -> int:
        return (addr // self.page_size) & (self.slots - 1)

    def is_cached(self, addr: int, now: int) -> bool:
        it = self.items.get(self._slot(addr))
        if it is None or it[0] != addr:
            return False
        it[1] = now
        return True

    def get(self, addr: int) -> list:
        return self.items[self._slot(addr)]

    def insert(self, addr: int, page: bytes, now: int) -> bool:
        s = self._slot(addr)
        it = self.items.get(s)
        if it is not None and it[0] != addr and it[1] + CACHED_PAGE_LIFETIME > now:
            return False
        self.items[s] = [addr, now, bytes(page)]
        return True


class _State:
    """RAMState and the counters, as the reference keeps them."""

    def __init__(self, trace: RefTrace) -> None:
        self.trace = trace
        self.out = bytearray()
        self.last_sent_block: int | None = None  # persists across sections
        self.transferred = self.duplicate = self.normal = 0
        self.precopy = self.downtime = 0
        self.records = {"zero": 0, "page": 0, "xbzrle": 0}
        self.skipped = 0
        self.round: dict = {}

    def page_header(self, block: int, offset: int, flag: int) -> bytes:
        """save_page_header: CONTINUE when the block is the last one a header named, else the idstr
        (and only then does the last-sent block change)."""
        if block == self.last_sent_block:
            return struct.pack(">Q", offset | flag | CONTINUE)
        self.last_sent_block = block
        name = self.trace.blocks[block][0].encode("ascii")
        return struct.pack(">QB", offset | flag, len(name)) + name

    def record(self, kind: str, data: bytes, last_stage: bool) -> None:
        self.out += data
        self.transferred += len(data)
        if last_stage:
            self.downtime += len(data)
        else:
            self.precopy += len(data)
        self.records[kind] += 1
        r = self.round
        r["transferred"] += len(data)
        r["records"][kind] = r["records"].get(kind, 0) + 1
        r["wire"][kind] = r["wire"].get(kind, 0) + len(data)


def send(trace: RefTrace, *, xbzrle: bool = False, cache_size: int = 64 << 20, qemu41: bool = False,
         machine: str = "pc-i440fx-7.2") -> RefResult:
    """The whole stream and the counters QEMU would report for ``trace``."""
    ps = trace.page_size
    st = _State(trace)
    out = st.out
    zero_page = bytes(ps)
    base = ram_base_addresses(trace.blocks, ps)
    cache = RefPageCache(cache_size, ps) if xbzrle else None
    x_hits = x_miss = x_overflow = x_bytes = x_records = x_record_bytes = active_sent = 0

    # ram_save_setup: file header, configuration, START with the block list, EOS, footer
    name = machine.encode("ascii")
    out += struct.pack(">IIBI", 0x5145564D, 3, CONFIG, len(name)) + name
    out += struct.pack(">BIB", START, RAM_SECTION_ID, 3) + b"ram" + struct.pack(">II", 0, 4)
    out += struct.pack(">Q", sum(size for _n, size in trace.blocks) | MEM_SIZE)
    for bname, size in trace.blocks:
        raw = bname.encode("ascii")
        out += struct.pack(">B", len(raw)) + raw + struct.pack(">Q", size)
    out += struct.pack(">Q", EOS) + struct.pack(">BI", FOOTER, RAM_SECTION_ID)

    n_rounds = len(trace.rounds)
    per_round: list[dict] = []
    for r, pages in enumerate(trace.rounds):
        now = r + 1  # migration_bitmap_sync before the pass
        last = r == n_rounds - 1
        xbzrle_enabled = xbzrle and r >= 1  # set when the first pass wraps
        out += struct.pack(">BI", END if last else PART, RAM_SECTION_ID)
        st.round = {"round": r, "stage": "complete" if last else ("bulk" if r == 0 else "iterate"),
                    "dirty-pages": len(pages), "transferred": 0, "records": {}, "wire": {}, "skipped": 0}
        skipped0 = st.skipped
        for block, offset, page in sorted(pages, key=lambda p: (p[0], p[1])):
            assert len(page) == ps
            addr = base[block] + offset
            if not any(page):  # save_zero_page
                st.record("zero", st.page_header(block, offset, ZERO) + b"\x00", last)
                st.duplicate += 1
                if xbzrle_enabled:  # xbzrle_cache_zero_page: result ignored, also in the last stage
                    assert cache is not None
                    cache.insert(addr, zero_page, now)
                    active_sent += 1
                continue
            if xbzrle_enabled:  # ram_save_page → save_xbzrle_page
                assert cache is not None
                if not cache.is_cached(addr, now):
                    x_miss += 1
                    if not last:
                        cache.insert(addr, page, now)
                else:
                    x_hits += 1
                    item = cache.get(addr)
                    enc = xbzrle_reference.encode(item[2], page)
                    if not last and enc != 0:
                        item[2] = bytes(page)
                    if enc == 0:
                        st.skipped += 1
                        continue
                    if enc != -1:
                        assert isinstance(enc, bytes)
                        rec = st.page_header(block, offset, XBZRLE) + struct.pack(">BH", 1, len(enc)) + enc
                        st.record("xbzrle", rec, last)
                        x_bytes += len(rec) - 8
                        x_records += 1
                        x_record_bytes += len(rec)
                        active_sent += 1
                        continue
                    x_overflow += 1
                    x_bytes += ps
                active_sent += 1
            st.record("page", st.page_header(block, offset, PAGE) + page, last)  # save_normal_page
            st.normal += 1
        out += struct.pack(">Q", EOS)
        st.round["wire"]["eos"] = 8
        if not last:  # an iteration's EOS counts in transferred, the completion's does not
            st.transferred += 8
            st.precopy += 8
            st.round["transferred"] += 8
        out += struct.pack(">BI", FOOTER, RAM_SECTION_ID)
        st.round["skipped"] = st.skipped - skipped0
        per_round.append(st.round)

    out += bytes([EOF])
    desc = json.dumps({"page_size": ps, "devices": []}).encode()
    out += struct.pack(">BI", VMDESC, len(desc)) + desc

    ram = {"transferred": st.transferred, "duplicate": st.duplicate, "normal": st.normal,
           "normal-bytes": st.normal * ps, "dirty-sync-count": n_rounds, "precopy-bytes": st.precopy,
           "downtime-bytes": st.downtime, "page-size": ps, "total": sum(s for _n, s in trace.blocks)}
    xc: dict[str, float] | None = None
    if xbzrle:
        if qemu41:  # 4.1: pages and bytes of the records sent, headers included
            pages, nbytes = x_records, x_record_bytes
            rate = pages * ps / nbytes if nbytes else 0.0
        else:
            pages, nbytes = x_hits, x_bytes
            rate = pages * ps / nbytes if nbytes and pages else 0.0
        xc = {"cache-size": cache_size, "pages": pages, "bytes": nbytes, "cache-miss": x_miss,
              "overflow": x_overflow, "encoding-rate": rate,
              "cache-miss-rate": x_miss / active_sent if active_sent else 0.0}
    return RefResult(bytes(out), ram, xc, {k: v for k, v in st.records.items() if v}, st.skipped, per_round)
