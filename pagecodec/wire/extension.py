"""pagecodec's extension record: the one layout for every page record that is not QEMU's.

A codec that writes its own record kind (``Codec.qemu_format = False``) writes it in this layout, so
that any pagecodec receiver can tell which codec wrote a record and how long it is, dispatch it to that
codec's decoder, and fail with a named error when that codec is not installed::

    be64   offset_in_block | RAM_SAVE_FLAG_EXTENSION (0x400) [| RAM_SAVE_FLAG_CONTINUE]
    [u8 len, idstr]          without CONTINUE, as every RAM page record (QEMU's save_page_header)
    be16   codec id          the codec that wrote the record (:func:`codec_id`)
    be32   n                 payload length, at most :func:`payload_limit`
    n bytes                  the codec's own payload (may be empty)

Why 0x400: QEMU has never used that bit (its flags end at MULTIFD_FLUSH 0x200: "we can't use any flag
that is bigger than 0x200", because some QEMU targets have 1 KiB pages and the flags share the be64 with
the page offset). pagecodec's pages are at least 4 KiB, so the bit is free of the offset, and a QEMU
destination that meets it stops with "Unknown combination of migration flags": a stream with extension
records is never taken for QEMU's (``replay --qemu-stream`` refuses such configs outright).

A record stands for one page, but its payload may carry the data of a *run* of up to
:data:`MAX_RUN_PAGES` pages of its block whose own records follow with empty payloads (what the
streaming delta codecs do, :mod:`pagecodec.codecs.delta_runs`): compressing a run in one call costs
far less than a call and a zstd block per page. So the limit a receiver applies before it knows the
codec is a run's worth (:func:`payload_limit`); each codec's decoder bounds its own records further.

Codec ids are part of the wire format: by default the low 16 bits of the CRC-32 of the codec's name
(stable across runs and machines, no table in the stream); a codec may set ``extension_id`` itself. Two
installed extension codecs with one id are refused when they register.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from .records import RecordSet

__all__ = ["RAM_SAVE_FLAG_EXTENSION", "EXTENSION_HEADER", "MAX_RUN_PAGES", "codec_id", "payload_limit",
           "extension_records", "read_extension_header"]

#: The flag bit of pagecodec extension records (never used by QEMU).
RAM_SAVE_FLAG_EXTENSION = 0x400
#: be16 codec id + be32 payload length, after the page header.
EXTENSION_HEADER = 6
_HDR = struct.Struct(">HI")
#: Pages whose data one extension record may carry (a run: 256 KiB of 4 KiB pages).
MAX_RUN_PAGES = 64


def codec_id(name: str) -> int:
    """The default 16-bit wire id of an extension codec: the low bits of CRC-32 of its name."""
    return zlib.crc32(name.encode("utf-8")) & 0xFFFF


def payload_limit(page_size: int) -> int:
    """The largest payload an extension record may carry: a run of :data:`MAX_RUN_PAGES` pages as zstd
    may expand incompressible data (``ZSTD_compressBound``), plus a table of 3 bytes a page and 1 KiB of
    room for a codec's own header. The receiver bounds what it reads with it before it knows the codec."""
    raw = MAX_RUN_PAGES * page_size
    return raw + (raw >> 7) + 3 * MAX_RUN_PAGES + 1024


def extension_records(kind: str, cid: int, index: np.ndarray, data: np.ndarray, starts: np.ndarray,
                      lengths: np.ndarray, offsets: np.ndarray | None = None) -> RecordSet:
    """Extension records for the pages at ``index`` of a segment, payload i = ``data[starts[i]:][:lengths[i]]``.

    ``offsets``: the byte offsets the headers name, when a record is written at another page's position
    (a compress thread's record handed over late, :class:`~pagecodec.wire.records.RecordSet`)."""
    lengths = np.asarray(lengths, np.int64)
    prefix = np.empty((len(index), EXTENSION_HEADER), np.uint8)
    prefix[:, :2] = np.array([cid >> 8, cid & 0xFF], np.uint8)
    prefix[:, 2:] = lengths.astype(">u4").view(np.uint8).reshape(-1, 4)
    return RecordSet(kind, RAM_SAVE_FLAG_EXTENSION, np.asarray(index, np.int64), prefix=prefix, data=data,
                     starts=np.asarray(starts, np.int64), lengths=lengths, offsets=offsets)


def read_extension_header(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    """(codec id, payload length) at ``pos`` (the caller checks there are 6 bytes)."""
    return _HDR.unpack_from(buf, pos)
