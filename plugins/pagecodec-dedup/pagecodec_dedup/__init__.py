"""Example pagecodec plugin: a page whose content the destination already holds goes as a reference.

The codec fills the ``delta`` slot, so it sees every page the zero slot left (QEMU's order: zero pages
are ZERO records before it). Both sides keep the same *table* of pages, direct-mapped by a hash of
the content, with as many entries as ``xbzrle-cache-size`` holds pages (so it is measured against
XBZRLE at the same memory). The encoder looks each page up in page order: an entry holding exactly
this page (compared byte for byte: the hash only picks the entry) sends a reference; any other page
goes whole and takes the entry. The decoder does the same with what it receives, so its table always
equals the encoder's. Its records are pagecodec extension records (QEMU cannot load them)::

    u8 0, be32 entry, page        a page not in the table, sent whole; the destination stores it in entry
    u8 1, be32 entry              the page held in entry

Pages it finds: a page dirtied but written back unchanged, copies of a page (the same library, buffer
or pattern in several places), a page that returns to an earlier content. What it costs: 11 bytes a
page more than QEMU's PAGE record where nothing matches, one hash and one 4 KiB compare a page.
"""

from __future__ import annotations

import mmap
from typing import Any, Mapping

import numpy as np

from pagecodec.chain.config import MigrationConfig
from pagecodec.codecs.base import Codec, CodecContext, RecordDecoder, Segment, Slot, SlotEncoder, Stage
from pagecodec.errors import ConfigError, DecodeError
from pagecodec.hookspecs import hookimpl
from pagecodec.wire.extension import RAM_SAVE_FLAG_EXTENSION, extension_records

__version__ = "0.1.0"

LITERAL, REFERENCE = 0, 1
#: mode byte + be32 entry
HEADER = 5
#: The hash: a fixed linear combination of a page's 64-bit words (wrapping), then its high bits folded
#: down. Fixed, so both sides and every run pick the same entries.
_COEF = np.random.default_rng(0x5EED).integers(1, 2**63, 4096, dtype=np.uint64) | np.uint64(1)


def entries_for(config: MigrationConfig, page_size: int) -> int:
    """The table's entries: as many pages as ``xbzrle-cache-size`` holds."""
    n = int(config.param("xbzrle-cache-size")) // page_size
    if not 1 <= n < 2**32:
        raise ConfigError(f"dedup: xbzrle-cache-size={config.param('xbzrle-cache-size')} gives {n} table entries "
                          f"of {page_size} bytes; give 1 … 2^32-1")
    return n


def new_table(entries: int, page_size: int) -> np.ndarray:
    """An (entries, page_size) table whose untouched entries cost no memory. Anonymous memory of its
    own, not numpy's: numpy asks for transparent huge pages on large arrays, so each entry first
    written would fault in (and zero) 2 MiB, 512 times the page it holds, and a table filled here
    and there would cost its whole size."""
    return np.frombuffer(mmap.mmap(-1, entries * page_size), np.uint8).reshape(entries, page_size)


def entry_of(pages: np.ndarray, entries: int) -> np.ndarray:
    """Each page's table entry (int64); pages is (n, page_size) uint8."""
    words = np.ascontiguousarray(pages).view("<u8")
    h = (words * _COEF[: words.shape[1]]).sum(axis=1, dtype=np.uint64)
    return ((h ^ (h >> np.uint64(31))) % np.uint64(entries)).astype(np.int64)


class DedupEncoder(SlotEncoder):
    """One migration's encoder: the table of what the destination received from it."""

    def __init__(self, wire_id: int, entries: int, page_size: int) -> None:
        self.wire_id = wire_id
        self.table = new_table(entries, page_size)
        self.filled = np.zeros(entries, bool)
        self.references = 0
        self.literals = 0

    def encode(self, seg: Segment, stage: Stage) -> None:
        idx = seg.pending()
        k = len(idx)
        if not k:
            return
        pages = seg.pages[idx]
        entry = entry_of(pages, len(self.filled))
        ref = np.zeros(k, bool)
        for j, e in enumerate(entry.tolist()):  # in page order: a page may match one sent just before it
            if self.filled[e] and np.array_equal(self.table[e], pages[j]):
                ref[j] = True
            else:
                self.table[e] = pages[j]
                self.filled[e] = True
        lengths = np.where(ref, HEADER, HEADER + pages.shape[1]).astype(np.int64)
        starts = np.cumsum(lengths) - lengths
        data = np.empty(int(lengths.sum()), np.uint8)
        data[starts] = np.where(ref, REFERENCE, LITERAL)
        for b in range(4):
            data[starts + 1 + b] = (entry >> (24 - 8 * b)) & 0xFF
        for j in np.flatnonzero(~ref).tolist():
            data[starts[j] + HEADER : starts[j] + lengths[j]] = pages[j]
        seg.claim(Slot.DELTA, idx, extension_records("dedup", self.wire_id, idx, data, starts, lengths))
        self.references += int(ref.sum())
        self.literals += k - int(ref.sum())

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        return {"dedup": {"entries": len(self.filled), "references": self.references, "literals": self.literals}}


class DedupDecoder(RecordDecoder):
    """The destination's table, filled by the literals it receives; every record is checked whole
    before the page or the table is touched."""

    flag = RAM_SAVE_FLAG_EXTENSION

    def __init__(self, entries: int, page_size: int) -> None:
        self.table = new_table(entries, page_size)
        self.filled = np.zeros(entries, bool)

    def load(self, r, page: np.ndarray) -> None:  # type: ignore[no-untyped-def]
        at = r.base + r.pos
        n = r.remaining
        if n < HEADER:
            raise DecodeError(f"dedup record of {n} bytes, shorter than its {HEADER}-byte header", at, r.source)
        mode = r.get_byte("dedup mode")
        entry = r.get_be32("dedup entry")
        if entry >= len(self.filled):
            raise DecodeError(f"dedup entry {entry} outside the table of {len(self.filled)}", at + 1, r.source)
        if mode == REFERENCE:
            if r.remaining:
                raise DecodeError(f"dedup reference with {r.remaining} bytes after it", at, r.source)
            if not self.filled[entry]:
                raise DecodeError(f"dedup reference to entry {entry}, which holds no page yet", at + 1, r.source)
            page[:] = self.table[entry]
        elif mode == LITERAL:
            if r.remaining != page.shape[0]:
                raise DecodeError(f"dedup page of {r.remaining} bytes, not {page.shape[0]}", at, r.source)
            page[:] = r.get_array(page.shape[0], "dedup page")
            self.table[entry] = page
            self.filled[entry] = True
        else:
            raise DecodeError(f"dedup record of mode {mode}, not {LITERAL} (page) or {REFERENCE} (reference)",
                              at, r.source)


class DedupCodec(Codec):
    name = "dedup"
    slots = (Slot.DELTA,)
    qemu_format = False
    description = "pages the destination already holds as 5-byte references to a shared table (example plugin)"
    parameters = ("xbzrle-cache-size",)  # the table's size: bench --sweep xbzrle-cache-size=… reaches it

    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        return DedupEncoder(self.wire_id, entries_for(ctx.config, ctx.page_size), ctx.page_size)

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        return [DedupDecoder(entries_for(ctx.config, ctx.page_size), ctx.page_size)]


@hookimpl
def register_codecs(register) -> None:  # type: ignore[no-untyped-def]
    register(DedupCodec())


@hookimpl
def register_presets(register) -> None:  # type: ignore[no-untyped-def]
    register("dedup", "delta-codec=dedup", "pages the destination already holds as references (example plugin)")
