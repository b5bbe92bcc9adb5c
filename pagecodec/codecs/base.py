"""What a codec plugin provides: which chain slot it fills, how it encodes a batch, how it decodes.

QEMU's ``ram_save_target_page`` offers each dirty page to a fixed sequence of stages; a stage either
claims the page (and emits a record, or decides nothing needs sending) or lets it fall through. In
pagecodec each stage is a *slot* and a codec plugin fills it. Encoders work on a :class:`Segment`: a
run of dirty pages of one RAM block in QEMU's order, as numpy arrays. They claim pages with
:meth:`Segment.claim`; the chain assembles the claimed records in page order and writes them.

The batch is a performance device only: every encoder must give exactly the result that offering the
pages one by one in QEMU's order would give (the tests check this).

:class:`Slot` and :data:`SLOT_ORDER` are defined by the chain (:mod:`pagecodec.chain.slots`) and
offered here too, since a plugin names the slots it fills.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping

import numpy as np

from ..chain.config import MigrationConfig
from ..chain.slots import SLOT_ORDER, Slot
from ..wire.records import RecordSet

if TYPE_CHECKING:
    from ..trace.format import RAMBlockInfo
    from ..wire.reader import StreamReader
    from ..wire.writer import WireWriter

__all__ = [
    "Slot", "SLOT_ORDER", "Stage", "Segment", "Emission", "ControlRecord", "SlotEncoder", "RecordDecoder", "Codec",
    "CodecContext",
]


@dataclass(frozen=True)
class Stage:
    """Where the migration is when a round of pages is sent (RAMState's phase flags)."""

    round: int
    dirty_sync_count: int
    bulk_stage: bool  # first pass over RAM (4.1's ram_bulk_stage; 6.0+: not xbzrle_enabled)
    last_stage: bool  # ram_save_complete: guest stopped, final pages


@dataclass
class CodecContext:
    """What an encoder or decoder is built with."""

    config: MigrationConfig
    page_size: int
    blocks: tuple["RAMBlockInfo", ...]
    block_addrs: tuple[int, ...]  # global RAM address (ram_addr_t) of each block's start
    #: The sender's extra connections (multifd channels): ``channel(k)`` is channel k's writer, made
    #: on first use, counting bytes by kind (and writing them where the run sends them: nowhere, memory
    #: or ``channel-<k>.bin``). None where there are none (a receiver's context).
    channel: Callable[[int], "WireWriter"] | None = None


UNCLAIMED = -1


@dataclass
class Segment:
    """Dirty pages of one RAM block, in QEMU's order, offered to the chain's slots in turn."""

    block_index: int
    block_addr: int
    offsets: np.ndarray  # int64 (n,) byte offsets in the block
    pages: np.ndarray  # uint8 (n, page_size), read-only
    claimed_by: np.ndarray = field(init=False)  # int8 (n,): index into SLOT_ORDER, or UNCLAIMED
    records: list[RecordSet] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)  # slot-to-slot facts (e.g. which pages are zero)
    last_sent_block: int | None = None  # block of the last page record written before this segment
    before: list["Emission"] = field(default_factory=list)  # records written before the segment's own

    def __post_init__(self) -> None:
        self.claimed_by = np.full(len(self.offsets), UNCLAIMED, dtype=np.int8)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def addrs(self) -> np.ndarray:
        """Global RAM addresses of the pages (block->offset + offset), as page_cache.c keys them."""
        return self.offsets + self.block_addr

    def pending(self) -> np.ndarray:
        """Positions of pages no slot has claimed yet (ascending)."""
        return np.flatnonzero(self.claimed_by == UNCLAIMED)

    def claim(self, slot: Slot, index: np.ndarray, records: RecordSet | None = None) -> None:
        """Mark ``index`` as handled by ``slot``; ``records`` (same positions) go on the wire.

        A page claimed without a record is handled but sends nothing (XBZRLE's unchanged page).
        """
        if len(index) == 0:
            return
        if np.any(self.claimed_by[index] != UNCLAIMED):
            raise RuntimeError(f"slot {slot.value} claimed pages another slot already claimed")
        self.claimed_by[index] = SLOT_ORDER.index(slot)
        if records is not None and len(records):
            self.records.append(records)


@dataclass
class Emission:
    """Records a slot writes outside the page order of a segment: the output QEMU's compress threads
    hand to the stream when they are flushed (block change, end of a pass).

    ``offsets`` are byte offsets in block ``block_index`` in stream order; each RecordSet's ``index``
    are positions in ``offsets``. ``duplicate`` adds pages to QEMU's ``duplicate`` counter without a
    """

    block_index: int
    offsets: np.ndarray
    sets: list[RecordSet]


@dataclass(frozen=True)
class ControlRecord:
    """A main-stream record that is not a page: QEMU 8.1+'s ``RAM_SAVE_FLAG_MULTIFD_FLUSH``, which tells
    the destination to wait for every multifd channel's SYNC. ``kind`` is its byte-count category."""

    kind: str
    data: bytes


class SlotEncoder(ABC):
    """The sending half of a codec in one slot, for one migration (owns its state, e.g. a cache)."""

    @abstractmethod
    def encode(self, seg: Segment, stage: Stage) -> None:
        """Claim what this slot handles among ``seg.pending()``."""

    def end_of_pass(self, stage: Stage) -> Emission | None:
        """The pass is over: the dirty-page search wrapped around, or (``stage.last_stage``)
        ``ram_save_complete`` has offered the last page. Records still held back go out now, before
        the section's EOS (QEMU flushes its compress threads at both points)."""
        return None

    def setup(self) -> list[ControlRecord]:
        """``ram_save_setup``, before the setup section's EOS: per-migration set-up on the wire (the
        multifd channels' handshakes and first sync); returns main-stream records to write there."""
        return []

    def before_eos(self, stage: Stage) -> list[ControlRecord]:
        """The round's section is about to end with EOS (after :meth:`end_of_pass`): work due at that
        point runs now (QEMU 7.2's ``multifd_send_sync_main``), and main-stream records to write before
        the EOS are returned (8.1+'s MULTIFD_FLUSH at the pass's wrap, which pagecodec's one section
        per pass puts at the same point)."""
        return []

    def take_ram_counters(self) -> dict[str, int]:
        """Additions to ``ram`` counters since the last call (``transferred``, ``normal``,
        ``duplicate``, ``multifd_bytes``) for work that writes no main-stream record: the sender asks
        after setup and after every round, so each round's ``transferred`` includes them."""
        return {}

    def ram_counters(self) -> dict[str, int]:
        """At the end of the migration: additions to query-migrate's ``ram`` counters that stand for no
        page at all (QEMU's compress threads count a ``duplicate`` on every flush of a thread whose last
        page was zero). Unlike :meth:`take_ram_counters`, these are not pages the slot sent, so they do
        not enter a round's page accounting (``skipped``)."""
        return {}

    def take_worker_cpu_ns(self) -> int:
        """Thread CPU nanoseconds this encoder's worker threads spent since the last call (the sender
        charges them to the slot's stage, beside the calling thread's own time)."""
        return 0

    def counters(self, wire_bytes: Mapping[str, int], wire_records: Mapping[str, int]) -> dict[str, dict[str, Any]]:
        """Counter groups keyed as QEMU's query-migrate keys them (e.g. ``xbzrle-cache``).

        ``wire_bytes``/``wire_records`` are the stream's totals by record kind, so counters that QEMU
        derives from bytes written need not be tracked twice."""
        return {}


class RecordDecoder(ABC):
    """The load half: applies one kind of record onto the destination's page.

    Its input comes from outside (a file, a capture): a decoder reads and writes nothing out of
    bounds, raises DecodeError (with the offset) for anything malformed, and never produces more than
    the record may decode to — a decompressing decoder hands the library that bound (zlib's
    ``max_length``, an output buffer of one page, LZ4's ``uncompressed_size``) instead of
    decompressing and checking the size afterwards (65 KB of zstd can claim 2 GiB)."""

    #: RAM_SAVE_FLAG_* this decoder handles (exactly one flag bit).
    flag: ClassVar[int]
    #: Fixed payload length after the header, or None when the payload describes its own length.
    fixed_payload: ClassVar[int | None] = None
    #: Variable-length records that :meth:`payload_length` and :meth:`load_many` can take as a run.
    loads_many: ClassVar[bool] = False

    @abstractmethod
    def load(self, r: "StreamReader", page: np.ndarray) -> None:
        """Read the payload at the cursor and apply it to ``page`` (writable, page_size bytes)."""

    def load_batch(self, payloads: np.ndarray, pages: np.ndarray, index: np.ndarray) -> None:
        """Apply k fixed-size payloads (k, fixed_payload) onto ``pages[index]`` (a fast path)."""
        raise NotImplementedError

    def payload_length(self, buf: np.ndarray, pos: int) -> int | None:
        """Variable-length records: the length of the payload at ``buf[pos:]`` if it can be told cheaply
        and is acceptable, so the receiver can gather a run of records for :meth:`load_many`; None: load
        this record on its own (which raises the proper error if it is malformed)."""
        return None

    def load_many(self, payloads: list[memoryview], pages: np.ndarray, index: np.ndarray, at: np.ndarray,
                  source: str | None) -> None:
        """Apply a run of variable-length payloads onto ``pages[index]`` (``at``: each payload's stream
        offset, for errors), as loading them one by one in order would. A rejected payload raises
        DecodeError and leaves its page and every later page of the run untouched (a decoder that
        works on threads validates every payload before writing any page). Extension records come
        here too when their decoder sets ``loads_many`` (payloads without the extension header)."""
        raise NotImplementedError

    def take_worker_cpu_ns(self) -> int:
        """Thread CPU nanoseconds of this decoder's worker threads since the last call."""
        return 0

    def end_of_section(self, at: int, source: str | None) -> None:
        """The RAM section's EOS (at stream offset ``at``): a decoder that carries state from record to
        record (a run whose pages are still owed) raises DecodeError if it is left incomplete."""


class Codec(ABC):
    """A codec plugin's product: registered through the ``register_codecs`` hook."""

    name: ClassVar[str]
    #: Slots this codec can fill.
    slots: ClassVar[tuple[Slot, ...]]
    #: True when its records are QEMU's own wire format; False marks a pagecodec extension: its records
    #: then use the extension layout (:mod:`pagecodec.wire.extension`) and its decoders the flag
    #: ``RAM_SAVE_FLAG_EXTENSION``.
    qemu_format: ClassVar[bool]
    description: ClassVar[str] = ""
    #: An extension codec's 16-bit wire id (None: derived from the name, :func:`pagecodec.wire.extension.codec_id`).
    extension_id: ClassVar[int | None] = None
    #: The configuration parameters this codec reads (QEMU's names or ``pc-`` ones). ``bench --sweep``
    #: applies a swept key only to the configs where the chain or an active codec reads it, so a sweep
    #: never makes rows that differ in a key nothing looked at (:meth:`parameters_read`).
    parameters: ClassVar[tuple[str, ...]] = ()

    def parameters_read(self, config: MigrationConfig) -> tuple[str, ...]:
        """The parameters this codec reads under ``config``;
        a codec whose reading depends on another parameter (multifd's compression level) narrows it here."""
        return self.parameters

    def unavailable(self, config: MigrationConfig) -> str | None:
        """Why this codec cannot run on this machine under ``config`` (a library it needs is missing),
        or None. Cheap and without side effects: ``pagecodec plugins`` asks it of every preset's
        codecs to say which presets can run now, and ``bench`` leaves out the presets that cannot."""
        return None

    def reproducible(self, config: MigrationConfig) -> bool:
        """Whether the same pages give the same bytes on every run under ``config``. True for every
        codec that does not depend on timing or uninitialised memory; ``bench --repeat`` checks it and
        fails a run whose wire bytes differ between repeats, unless the codec says False here (then the
        spread is reported instead)."""
        return True

    @property
    def wire_id(self) -> int:
        """The id this codec's extension records carry."""
        from ..wire.extension import codec_id

        return self.extension_id if self.extension_id is not None else codec_id(self.name)

    @abstractmethod
    def encoder(self, slot: Slot, ctx: CodecContext) -> SlotEncoder:
        """A fresh encoder for one migration."""

    def decoders(self, ctx: CodecContext) -> list[RecordDecoder]:
        """Decoders for the records this codec writes (none if it writes none)."""
        return []
