"""QEMU's migration wire constants (migration/ram.c, migration/savevm.c).

Names follow QEMU's: ``RAM_SAVE_FLAG_*`` are the low bits of the be64 that starts every RAM record,
``QEMU_VM_*`` the section types of the QEVM file.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

# --- RAM records (ram.c) -------------------------------------------------------------------------
RAM_SAVE_FLAG_FULL = 0x01  # obsolete, never written; loaders reject it
RAM_SAVE_FLAG_ZERO = 0x02
RAM_SAVE_FLAG_MEM_SIZE = 0x04
RAM_SAVE_FLAG_PAGE = 0x08
RAM_SAVE_FLAG_EOS = 0x10
RAM_SAVE_FLAG_CONTINUE = 0x20
RAM_SAVE_FLAG_XBZRLE = 0x40
RAM_SAVE_FLAG_HOOK = 0x80
RAM_SAVE_FLAG_COMPRESS_PAGE = 0x100
RAM_SAVE_FLAG_MULTIFD_FLUSH = 0x200

#: The smallest page the record header can carry: flags share the be64 with the page's offset, so every
#: flag must lie below the page size. QEMU keeps its flags at or below 0x200 for that reason ("QEMU
#: supports migration with any architecture that has PAGE_SIZE >= 1K"), so 1 KiB is its minimum.
MIN_PAGE_SIZE = 0x400


def min_page_size(max_flag: int) -> int:
    """The smallest page size whose offsets leave ``max_flag`` (and every lower bit) free."""
    return max(MIN_PAGE_SIZE, 1 << max_flag.bit_length())


#: XBZRLE record's encoding byte (ENCODING_FLAG_XBZRLE in ram.c)
ENCODING_FLAG_XBZRLE = 0x01

#: Flags that carry a page (and therefore a block reference) in ram_load_precopy.
PAGE_RECORD_FLAGS = (
    RAM_SAVE_FLAG_ZERO | RAM_SAVE_FLAG_PAGE | RAM_SAVE_FLAG_XBZRLE | RAM_SAVE_FLAG_COMPRESS_PAGE
)


class RamFlag(IntFlag):
    """The RAM record flags, for printing and dispatch."""

    ZERO = RAM_SAVE_FLAG_ZERO
    MEM_SIZE = RAM_SAVE_FLAG_MEM_SIZE
    PAGE = RAM_SAVE_FLAG_PAGE
    EOS = RAM_SAVE_FLAG_EOS
    CONTINUE = RAM_SAVE_FLAG_CONTINUE
    XBZRLE = RAM_SAVE_FLAG_XBZRLE
    HOOK = RAM_SAVE_FLAG_HOOK
    COMPRESS_PAGE = RAM_SAVE_FLAG_COMPRESS_PAGE
    MULTIFD_FLUSH = RAM_SAVE_FLAG_MULTIFD_FLUSH


# --- QEVM file (savevm.c) ------------------------------------------------------------------------
QEMU_VM_FILE_MAGIC = 0x5145564D  # "QEVM"
QEMU_VM_FILE_VERSION = 3


class SectionType(IntEnum):
    """QEMU_VM_* section type bytes."""

    EOF = 0x00
    SECTION_START = 0x01
    SECTION_PART = 0x02
    SECTION_END = 0x03
    SECTION_FULL = 0x04
    SUBSECTION = 0x05
    VMDESCRIPTION = 0x06
    CONFIGURATION = 0x07
    COMMAND = 0x08
    SECTION_FOOTER = 0x7E


#: The RAM section as QEMU registers it: idstr "ram", instance 0, version 4.
RAM_SECTION_IDSTR = "ram"
RAM_SECTION_VERSION = 4
#: section_id QEMU 7.2 gives "ram" on x86 pc machines (seen in real streams); any id is accepted on load.
RAM_SECTION_ID_DEFAULT = 2

#: zlib's compressBound(4096): the load side rejects longer COMPRESS_PAGE payloads.
def compress_bound(n: int) -> int:
    """zlib's compressBound(): the largest deflate output for ``n`` input bytes."""
    return n + (n >> 12) + (n >> 14) + (n >> 25) + 13
