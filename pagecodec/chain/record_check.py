"""What a codec hands the chain is checked before the chain turns it into wire bytes.

A codec's encoder describes its records as :class:`~pagecodec.wire.records.RecordSet`s (positions,
flag, prefix, payloads). The batched assembler trusts them: an index past the segment, a payload slice
past its buffer or two records for one page would give an IndexError deep inside numpy, or worse, a
stream whose bytes are silently wrong, found only when the destination trips over it (if it does),
far from the codec that caused it. So every record set is checked where it is handed over, and a
malformed one is a PluginError naming the codec, its plugin, the slot, the round, the block and the
page. The checks are about the record's *shape*, which the receiver cannot tell from the bytes:

* positions: integers, ascending, inside the segment (or the emission), claimed by the slot itself
  (a record for a page another slot claimed would put two records on one page), one record a page;
* the flag: one of QEMU's page record flags, or pagecodec's extension flag — which only a codec with
  ``qemu_format = False`` may write, and only with its own wire id in the extension header, whose
  length field must be the payload's length and the payload within the extension limit;
* layout: a ZERO record is its fill byte, a PAGE record one page, a prefix has one row per record
  (or one for all), payload slices lie inside their buffer and header offsets are page-aligned.

It costs a few numpy operations on each record set (≤ 512 positions), some 20–40 µs a segment: for a
fast codec a quarter of its own CPU (config ``none``), so the sender charges it to no stage and takes
it out of the wall time: a plugin is measured as the built-in codecs are.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..codecs.base import SLOT_ORDER, Codec, Emission, Segment, Slot
from ..errors import PluginError
from ..wire.extension import EXTENSION_HEADER, RAM_SAVE_FLAG_EXTENSION, payload_limit
from ..wire.flags import RAM_SAVE_FLAG_COMPRESS_PAGE, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_XBZRLE, RAM_SAVE_FLAG_ZERO
from ..wire.records import RecordSet

__all__ = ["RecordCheck"]

_FLAGS = {RAM_SAVE_FLAG_ZERO, RAM_SAVE_FLAG_PAGE, RAM_SAVE_FLAG_XBZRLE, RAM_SAVE_FLAG_COMPRESS_PAGE, RAM_SAVE_FLAG_EXTENSION}


class _Bad(Exception):
    """A problem with the record at position ``pos`` (None: the set as a whole)."""

    def __init__(self, problem: str, pos: int | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.pos = pos


def _int_array(a: object, what: str, k: int | None = None) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 1 or a.dtype.kind not in "iu":
        raise _Bad(f"{what} must be a 1-D integer numpy array, not {type(a).__name__}"
                   + (f" of {a.dtype}, shape {a.shape}" if isinstance(a, np.ndarray) else ""))
    if k is not None and len(a) != k:
        raise _Bad(f"{what} has {len(a)} entries for {k} record(s)")
    return a.astype(np.int64, copy=False)


def _check_set(rs: object, n: int, page_size: int, codec: Codec, claimed: tuple[np.ndarray, int] | None) -> None:
    """Raise _Bad for what is wrong with ``rs`` (positions in ``0..n-1``; ``claimed``: the segment's
    ``claimed_by`` and the slot's index in it, None when positions are not pages, as in an emission)."""
    if not isinstance(rs, RecordSet):
        raise _Bad(f"handed over {type(rs).__name__}, not a RecordSet")
    idx = _int_array(rs.index, "index")
    k = len(idx)
    if k == 0:
        return
    if idx[0] < 0 or idx[-1] >= n or (k > 1 and not (np.diff(idx) > 0).all()):
        bad = int(np.flatnonzero((idx < 0) | (idx >= n))[0]) if ((idx < 0) | (idx >= n)).any() else None
        raise _Bad(f"record positions must be ascending and within the {n} page(s) handed over", bad)
    if claimed is not None:
        foreign = claimed[0][idx] != claimed[1]
        if foreign.any():
            raise _Bad("a record for a page this slot did not claim", int(idx[np.argmax(foreign)]))
    flag = rs.flag
    if not isinstance(flag, (int, np.integer)) or int(flag) not in _FLAGS:
        raise _Bad(f"flag {flag!r} is not a page record flag (QEMU's 0x2, 0x8, 0x40, 0x100 or the extension 0x400)",
                   int(idx[0]))
    flag = int(flag)
    p = 0
    if rs.prefix is not None:
        pre = rs.prefix
        if not isinstance(pre, np.ndarray) or pre.ndim != 2 or pre.dtype != np.uint8 or pre.shape[0] not in (1, k):
            raise _Bad(f"prefix must be a uint8 array of shape ({k} or 1, width), not "
                       f"{getattr(pre, 'dtype', type(pre).__name__)} {getattr(pre, 'shape', '')}")
        p = pre.shape[1]
    lengths = _payload_lengths(rs, k, page_size)
    if flag == RAM_SAVE_FLAG_ZERO and (p != 1 or lengths.any()):
        raise _Bad("a ZERO record is its fill byte: a prefix of width 1 and no payload", int(idx[0]))
    if flag == RAM_SAVE_FLAG_PAGE and (p != 0 or (lengths != page_size).any()):
        raise _Bad(f"a PAGE record is one page of {page_size} bytes and nothing else", int(idx[0]))
    if flag == RAM_SAVE_FLAG_EXTENSION:
        _check_extension(rs, idx, p, lengths, page_size, codec)
    offsets = rs.offsets
    if offsets is not None:
        offs = _int_array(offsets, "offsets", k)
        if ((offs < 0) | (offs % page_size != 0)).any():
            raise _Bad("a header offset that is not a page offset", int(idx[np.argmax((offs < 0) | (offs % page_size != 0))]))


def _payload_lengths(rs: RecordSet, k: int, page_size: int) -> np.ndarray:
    """Each record's payload length, after checking that its payload lies where it says."""
    if rs.pages is not None:
        pages = rs.pages
        if not isinstance(pages, np.ndarray) or pages.ndim != 2 or pages.dtype != np.uint8:
            raise _Bad("pages must be a uint8 array of shape (rows, page size)")
        if rs.rows is not None:
            rows = _int_array(rs.rows, "rows", k)
            if len(rows) and (rows.min() < 0 or rows.max() >= len(pages)):
                raise _Bad(f"rows point outside the {len(pages)} page(s) given", None)
        elif len(pages) < k:
            raise _Bad(f"{len(pages)} page(s) for {k} record(s)")
        return np.full(k, pages.shape[1], np.int64)
    if rs.data is None:
        if rs.lengths is not None or rs.starts is not None:
            raise _Bad("starts/lengths without data")
        return np.zeros(k, np.int64)
    data = rs.data
    if not isinstance(data, np.ndarray) or data.ndim != 1 or data.dtype != np.uint8:
        raise _Bad("data must be a 1-D uint8 array")
    if rs.starts is None or rs.lengths is None:
        raise _Bad("data without starts and lengths")
    starts = _int_array(rs.starts, "starts", k)
    lengths = _int_array(rs.lengths, "lengths", k)
    out = (starts < 0) | (lengths < 0) | (starts + lengths > len(data))
    if out.any():
        i = int(np.argmax(out))
        raise _Bad(f"payload {int(starts[i])}..{int(starts[i] + lengths[i])} lies outside its data of {len(data)} "
                   f"byte(s)", int(rs.index[i]))
    return lengths


def _check_extension(rs: RecordSet, idx: np.ndarray, p: int, lengths: np.ndarray, page_size: int, codec: Codec) -> None:
    if codec.qemu_format:
        raise _Bad("an extension record (flag 0x400) from a codec that declares qemu_format = True: a codec "
                   "writing its own records declares qemu_format = False", int(idx[0]))
    if p != EXTENSION_HEADER or rs.prefix is None:
        raise _Bad(f"an extension record's prefix is its {EXTENSION_HEADER}-byte header (build records with "
                   f"pagecodec.wire.extension.extension_records)", int(idx[0]))
    pre = np.broadcast_to(rs.prefix, (len(idx), EXTENSION_HEADER))
    cid = (pre[:, 0].astype(np.int64) << 8) | pre[:, 1]
    other = cid != codec.wire_id
    if other.any():
        raise _Bad(f"extension header names codec id {int(cid[np.argmax(other)]):#06x}, not this codec's "
                   f"{codec.wire_id:#06x} (its decoder would never see the record)", int(idx[np.argmax(other)]))
    n = pre[:, 2:].astype(np.int64)
    declared = (n[:, 0] << 24) | (n[:, 1] << 16) | (n[:, 2] << 8) | n[:, 3]
    wrong = declared != lengths
    if wrong.any():
        i = int(np.argmax(wrong))
        raise _Bad(f"extension header declares {int(declared[i])} payload bytes, the record has {int(lengths[i])}",
                   int(idx[i]))
    limit = payload_limit(page_size)
    big = lengths > limit
    if big.any():
        i = int(np.argmax(big))
        raise _Bad(f"payload of {int(lengths[i])} bytes, more than an extension record's limit of {limit}", int(idx[i]))


class RecordCheck:
    """Checks each codec's record sets as the sender receives them (see the module docstring)."""

    def __init__(self, page_size: int, idstrs: list[str], codec_of: Callable[[str], Codec],
                 plugin_of: Callable[[str], str]) -> None:
        self.page_size = page_size
        self.idstrs = idstrs
        self.codec_of = codec_of
        self.plugin_of = plugin_of

    def segment(self, slot: Slot, name: str, seg: Segment, round_: int, first_set: int, first_before: int) -> None:
        """The sets ``slot``'s codec ``name`` added to ``seg`` (records from ``first_set`` on, emissions
        from ``first_before`` on)."""
        codec = self.codec_of(name)
        if len(seg.records) > first_set:
            claimed = (seg.claimed_by, SLOT_ORDER.index(slot))
            for rs in seg.records[first_set:]:
                self._one(rs, len(seg), codec, claimed, slot, name, round_, seg.block_index, seg.offsets)
        for em in seg.before[first_before:]:
            self.emission(slot, name, em, round_)

    def emission(self, slot: Slot, name: str, em: Emission | None, round_: int) -> None:
        """Records a slot writes outside the page order (``end_of_pass``, a compress-thread flush)."""
        if em is None:
            return
        codec = self.codec_of(name)
        try:
            if not isinstance(em, Emission):
                raise _Bad(f"handed over {type(em).__name__}, not an Emission")
            if not 0 <= em.block_index < len(self.idstrs):
                raise _Bad(f"emission for block index {em.block_index}, not one of the {len(self.idstrs)} block(s)")
            offs = _int_array(em.offsets, "emission offsets")
            if ((offs < 0) | (offs % self.page_size != 0)).any():
                raise _Bad("an emission offset that is not a page offset")
        except _Bad as e:
            raise self._error(name, slot, round_, None, None, e) from None
        for rs in em.sets:
            self._one(rs, len(offs), codec, None, slot, name, round_, em.block_index, offs)

    def _one(self, rs: object, n: int, codec: Codec, claimed: tuple[np.ndarray, int] | None, slot: Slot, name: str,
             round_: int, block: int, offsets: np.ndarray) -> None:
        try:
            _check_set(rs, n, self.page_size, codec, claimed)
        except _Bad as e:
            offset = int(offsets[e.pos]) if e.pos is not None and 0 <= e.pos < len(offsets) else None
            raise self._error(name, slot, round_, block, offset, e) from None

    def _error(self, name: str, slot: Slot, round_: int, block: int | None, offset: int | None, e: _Bad) -> PluginError:
        where = f"round {round_}"
        if block is not None:
            where += f", block {self.idstrs[block]!r}"
        if offset is not None:
            where += f", page offset {offset:#x}"
        return PluginError(f"codec {name!r} (plugin {self.plugin_of(name)!r}) wrote a malformed record in the "
                           f"{slot.value} slot at {where}: {e.problem}")
