"""RAM page records (ram.c): scalar builders and the batched assembler.

A RAM record starts with ``be64 offset_in_block | flags``; without ``RAM_SAVE_FLAG_CONTINUE`` the
header is followed by ``u8 len`` + the block's idstr (QEMU's ``save_page_header``). The payload
depends on the flag: ZERO a fill byte, PAGE the page, XBZRLE ``u8 0x01, be16 len, bytes``,
COMPRESS_PAGE ``be32 len, zlib stream``.

The scalar builders document the layouts and serve the tests. :func:`assemble_segment` builds all
records of a run of pages of one block in a single numpy pass: headers and prefixes are scattered with
index arithmetic, raw pages are copied run by run through strided views, variable payloads with one
gather. Its output is byte-identical to emitting the records one by one in page order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flags import (
    ENCODING_FLAG_XBZRLE,
    RAM_SAVE_FLAG_CONTINUE,
    RAM_SAVE_FLAG_EOS,
    RAM_SAVE_FLAG_MEM_SIZE,
    RAM_SAVE_FLAG_PAGE,
    RAM_SAVE_FLAG_XBZRLE,
    RAM_SAVE_FLAG_ZERO,
)

__all__ = [
    "page_header",
    "zero_record",
    "page_record",
    "xbzrle_record",
    "eos_record",
    "mem_size_record",
    "RecordSet",
    "assemble_segment",
    "Scratch",
]


# --- scalar builders -----------------------------------------------------------------------------
def page_header(offset: int, flags: int, idstr: str | None) -> bytes:
    """``save_page_header``: be64 offset|flags, plus u8 len + idstr unless the block continues."""
    if idstr is None:
        return ((offset | flags | RAM_SAVE_FLAG_CONTINUE)).to_bytes(8, "big")
    raw = idstr.encode("ascii")
    if not 0 < len(raw) < 256:
        raise ValueError(f"block idstr must be 1..255 bytes, got {len(raw)}")
    return (offset | flags).to_bytes(8, "big") + bytes((len(raw),)) + raw


def zero_record(offset: int, idstr: str | None, fill: int = 0) -> bytes:
    """ZERO: header + u8 fill byte (QEMU always writes 0)."""
    return page_header(offset, RAM_SAVE_FLAG_ZERO, idstr) + bytes((fill,))


def page_record(offset: int, idstr: str | None, page: bytes) -> bytes:
    """PAGE: header + the raw page."""
    return page_header(offset, RAM_SAVE_FLAG_PAGE, idstr) + bytes(page)


def xbzrle_record(offset: int, idstr: str | None, encoded: bytes) -> bytes:
    """XBZRLE: header + u8 ENCODING_FLAG_XBZRLE + be16 len + encoded bytes."""
    return (
        page_header(offset, RAM_SAVE_FLAG_XBZRLE, idstr)
        + bytes((ENCODING_FLAG_XBZRLE,))
        + len(encoded).to_bytes(2, "big")
        + bytes(encoded)
    )


def eos_record() -> bytes:
    """End of a section's RAM data."""
    return RAM_SAVE_FLAG_EOS.to_bytes(8, "big")


def mem_size_record(blocks: list[tuple[str, int]]) -> bytes:
    """Setup: be64 total|MEM_SIZE, then per block u8 len, idstr, be64 used_length."""
    total = sum(length for _, length in blocks)
    out = bytearray((total | RAM_SAVE_FLAG_MEM_SIZE).to_bytes(8, "big"))
    for name, length in blocks:
        raw = name.encode("ascii")
        out += bytes((len(raw),)) + raw + length.to_bytes(8, "big")
    return bytes(out)


# --- batched assembly ----------------------------------------------------------------------------
@dataclass
class RecordSet:
    """Records of one kind that a chain slot produced for some pages of a segment.

    ``index`` are positions in the segment (ascending). A record is written at its position; its
    header names ``offsets[i]`` when given (a record of an earlier page of the same block, handed over
    late: what QEMU's compress threads do), else the offset of the page at that position. The payload is either ``pages`` (k, w) rows
    (raw pages; with ``rows``, record i's payload is ``pages[rows[i]]``, so a slot can point at the
    segment's pages instead of copying them) or variable-length slices ``data[starts[i]:starts[i]+lengths[i]]``, or absent; an
    optional fixed-width ``prefix`` (k, p) precedes it (ZERO's fill byte, XBZRLE's 0x01 + be16 len).
    """

    kind: str
    flag: int
    index: np.ndarray
    prefix: np.ndarray | None = None
    pages: np.ndarray | None = None
    rows: np.ndarray | None = None  # payload of record i is pages[rows[i]] (default: pages[i])
    data: np.ndarray | None = None
    starts: np.ndarray | None = None
    lengths: np.ndarray | None = None
    offsets: np.ndarray | None = None  # byte offset named by record i's header (default: its position's page)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def prefix_len(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[1]

    def payload_lengths(self) -> np.ndarray:
        k = len(self.index)
        if self.pages is not None:
            return np.full(k, self.pages.shape[1], dtype=np.int64)
        if self.lengths is not None:
            return self.lengths.astype(np.int64, copy=False)
        return np.zeros(k, dtype=np.int64)


def _scatter_rows(out: np.ndarray, pos: np.ndarray, rows: np.ndarray) -> None:
    """out[pos[i] : pos[i] + w] = rows[i] for narrow rows (headers, prefixes)."""
    w = rows.shape[1]
    if w == 0 or len(pos) == 0:
        return
    out[(pos[:, None] + np.arange(w, dtype=np.int64)).ravel()] = rows.ravel()


#: Mean payload length from which payloads are copied one slice each rather than by one gather.
_SLICE_COPY_MEAN = 64


def _copy_segments(out: np.ndarray, dpos: np.ndarray, data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """out[dpos[i] : dpos[i]+lengths[i]] = data[starts[i] : ...] for all i.

    Short payloads (XBZRLE's tens of bytes) in one gather; longer ones (compressed pages, runs of a
    delta codec) one memcpy each: the gather's index arrays cost some 30 bytes of temporaries and
    several passes per payload byte, a slice copy a fraction of a microsecond per payload."""
    total = int(lengths.sum())
    if total == 0:
        return
    if total >= _SLICE_COPY_MEAN * len(lengths):
        some = np.flatnonzero(lengths)  # runs of a delta codec: one record carries a run, the rest are empty
        if len(some) < len(lengths):
            dpos, starts, lengths = dpos[some], starts[some], lengths[some]
        for d, s, n in zip(dpos.tolist(), starts.tolist(), lengths.tolist()):
            out[d : d + n] = data[s : s + n]
        return
    lengths = lengths.astype(np.int64, copy=False)
    first = np.cumsum(lengths) - lengths  # start of each piece in the flattened run
    within = np.arange(total, dtype=np.int64) - np.repeat(first, lengths)
    out[np.repeat(dpos, lengths) + within] = data[np.repeat(starts.astype(np.int64), lengths) + within]


def _prefix_rows(s: RecordSet, lo: int, hi: int) -> np.ndarray:
    assert s.prefix is not None
    return s.prefix[lo:hi] if s.prefix.shape[0] == len(s) else np.broadcast_to(s.prefix, (hi - lo, s.prefix.shape[1]))


def _write_named_record(out: np.ndarray, hdr: np.ndarray, idstr: str, s: RecordSet, i: int) -> None:
    """Record ``i`` of ``s`` at the start of ``out``, with its header naming the block."""
    raw = idstr.encode("ascii")
    h = hdr.copy()
    h[7] &= 0xFF ^ RAM_SAVE_FLAG_CONTINUE  # the flag bits live in the last byte of the be64
    out[:8] = h
    out[8] = len(raw)
    pos = 9 + len(raw)
    out[9:pos] = np.frombuffer(raw, dtype=np.uint8)
    if s.prefix is not None:
        out[pos : pos + s.prefix_len] = _prefix_rows(s, i, i + 1)[0]
        pos += s.prefix_len
    if s.pages is not None:
        row = int(s.rows[i]) if s.rows is not None else i
        out[pos : pos + s.pages.shape[1]] = s.pages[row]
    elif s.data is not None:
        assert s.starts is not None and s.lengths is not None
        st, ln = int(s.starts[i]), int(s.lengths[i])
        out[pos : pos + ln] = s.data[st : st + ln]


def _write_fixed_runs(out: np.ndarray, s: RecordSet, hdr: np.ndarray, ranks: np.ndarray, starts: np.ndarray, skip: int) -> None:
    """Fixed-width records (raw pages, zero pages): one 2-D strided view per run of adjacent records,
    written header, prefix and payload at once; a run breaks where another kind of record intervenes
    or the source pages are not consecutive."""
    n = len(ranks)
    if n <= skip:
        return
    p = s.prefix_len
    w = s.pages.shape[1] if s.pages is not None else 0
    width = 8 + p + w
    rows = (s.rows if s.rows is not None else np.arange(n, dtype=np.int64)) if s.pages is not None else None
    brk = np.diff(ranks[skip:]) != 1
    if rows is not None:
        brk |= np.diff(rows[skip:]) != 1
    bounds = [skip, *(np.flatnonzero(brk) + 1 + skip).tolist(), n]
    for a, b in zip(bounds[:-1], bounds[1:]):
        view = np.ndarray((b - a, width), np.uint8, buffer=out, offset=int(starts[a]), strides=(width, 1))
        view[:, :8] = hdr[a:b]
        if p:  # a (1, p) prefix broadcasts by itself
            view[:, 8 : 8 + p] = s.prefix if s.prefix.shape[0] == 1 else s.prefix[a:b]  # type: ignore[union-attr]
        if rows is not None:
            r0 = int(rows[a])
            view[:, 8 + p :] = s.pages[r0 : r0 + b - a]  # type: ignore[index]


def _write_variable(out: np.ndarray, s: RecordSet, hdr: np.ndarray, starts: np.ndarray, skip: int) -> None:
    """Variable-length records (XBZRLE, compressed pages): headers and prefixes scattered, payloads
    gathered in one pass."""
    assert s.data is not None and s.starts is not None and s.lengths is not None
    pos = starts[skip:]
    _scatter_rows(out, pos, hdr[skip:])
    body = pos + 8
    if s.prefix is not None:
        _scatter_rows(out, body, _prefix_rows(s, skip, len(s)))
    _copy_segments(out, body + s.prefix_len, s.data, s.starts[skip:], s.lengths[skip:])


class Scratch:
    """A reusable output buffer: a fresh multi-MiB array per segment would pay page faults (the kernel
    zeroing new memory) on every batch, which costs as much as the copy itself."""

    def __init__(self) -> None:
        self._buf = np.empty(0, dtype=np.uint8)

    def get(self, n: int) -> np.ndarray:
        if self._buf.shape[0] < n:
            self._buf = np.empty(max(n, 2 * self._buf.shape[0]), dtype=np.uint8)
        return self._buf[:n]


def assemble_segment(
    offsets: np.ndarray, idstr: str | None, sets: list[RecordSet], scratch: Scratch | None = None
) -> tuple[np.ndarray, dict[str, int], dict[str, int]]:
    """Build the wire bytes of a segment's records, in page order.

    ``offsets`` are the byte offsets in the block of the segment's pages; ``idstr`` is the block name
    when the first record must carry it (block differs from the last one sent), else None. Returns the
    bytes, bytes by kind and records by kind. With ``scratch`` the bytes are a view on its buffer,
    valid until the next call.
    """
    sets = [s for s in sets if len(s)]
    if not sets:
        return np.empty(0, np.uint8), {}, {}
    # Record lengths laid out by page position: records are in page order, so the positions that
    # hold a record, ascending, are the record order (no sort needed).
    n = len(offsets)
    rec_len_at = np.zeros(n, dtype=np.int64)
    first_set = 0
    for i, s in enumerate(sets):
        rec_len_at[s.index] = 8 + s.prefix_len + s.payload_lengths()
        if s.index[0] < sets[first_set].index[0]:
            first_set = i
    extra = 0 if idstr is None else 1 + len(idstr.encode("ascii"))
    first = int(sets[first_set].index[0])
    rec_len_at[first] += extra
    start_at = np.cumsum(rec_len_at) - rec_len_at  # a record's start; positions without one add 0
    total = int(start_at[-1] + rec_len_at[-1])
    out = scratch.get(total) if scratch is not None else np.empty(total, dtype=np.uint8)
    rank_at = np.cumsum(rec_len_at > 0) - 1  # every record has >= 8 bytes
    cont = np.uint64(RAM_SAVE_FLAG_CONTINUE)
    bytes_by_kind: dict[str, int] = {}
    records_by_kind: dict[str, int] = {}
    for s in sets:
        k = len(s)
        ranks = rank_at[s.index]
        starts = start_at[s.index]
        named = offsets[s.index] if s.offsets is None else s.offsets
        hdr = (named.astype(np.uint64) | np.uint64(s.flag) | cont).astype(">u8").view(np.uint8).reshape(k, 8)
        skip = 0
        if extra and int(s.index[0]) == first:  # the record that names its block: written on its own
            _write_named_record(out, hdr[0], idstr, s, 0)  # type: ignore[arg-type]
            skip = 1
        if s.pages is not None or s.data is None:
            _write_fixed_runs(out, s, hdr, ranks, starts, skip)
        else:
            _write_variable(out, s, hdr, starts, skip)
        bytes_by_kind[s.kind] = bytes_by_kind.get(s.kind, 0) + int(rec_len_at[s.index].sum())
        records_by_kind[s.kind] = records_by_kind.get(s.kind, 0) + k
    return out, bytes_by_kind, records_by_kind
