"""QEMU's RAMState for one outgoing migration, as an object (QEMU keeps it in a global)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .metrics import RamCounters

__all__ = ["RAMState", "block_addresses", "RAM_ADDR_ALIGN", "ALIGN_PAGES"]

#: find_ram_offset() places each new block at ROUND_UP(end of the previous, BITS_PER_LONG << TARGET_PAGE_BITS):
#: 64 *target* pages, so the alignment in bytes follows the page size.
ALIGN_PAGES = 64
#: The alignment with 4 KiB target pages (x86).
RAM_ADDR_ALIGN = ALIGN_PAGES * 4096


def block_addresses(lengths: list[int], page_size: int = 4096) -> tuple[int, ...]:
    """Global RAM addresses (ram_addr_t) of blocks allocated in order, as find_ram_offset lays them out
    on an empty address space: each at the end of the previous rounded up to 64 target pages of
    ``page_size`` bytes. The XBZRLE page cache is direct-mapped on these addresses, so with a page size
    other than 4 KiB a fixed 256 KiB alignment would map blocks onto other cache slots than QEMU's."""
    align = ALIGN_PAGES * page_size
    addrs = []
    end = 0
    for n in lengths:
        start = -(-end // align) * align
        addrs.append(start)
        end = start + n
    return tuple(addrs)


@dataclass
class RAMState:
    """Sender-side migration state: phase flags, last block sent, counters.

    ``bulk_stage`` is 4.1's ``ram_bulk_stage`` and the negation of 6.0+'s ``xbzrle_enabled``: true
    during the first pass over RAM, cleared when the dirty-page search wraps around.
    """

    last_sent_block: int | None = None
    bulk_stage: bool = True
    dirty_sync_count: int = 0
    counters: RamCounters = field(default_factory=RamCounters)

    def migration_bitmap_sync(self) -> None:
        """A dirty-bitmap sync: the start of every round of the trace."""
        self.dirty_sync_count += 1
        self.counters.dirty_sync_count = self.dirty_sync_count

    def complete_round(self) -> None:
        """The page search wrapped around to the first block (ram_find_and_save_block)."""
        self.bulk_stage = False
