"""The multifd packet reader's checks and the byte each names (mutation testing found these unpinned:
mutation/run.py)."""

from __future__ import annotations

import pytest

from pagecodec.errors import WireError
from pagecodec.wire.multifd import (
    LAYOUT_72,
    LAYOUT_ZERO_PAGES,
    MULTIFD_FLAG_SYNC,
    PACKET_HEADER_SIZE,
    encode_packet,
    packet_size,
    read_packet_header,
)
from pagecodec.wire.reader import StreamReader

PS = 4096
NSIZE_AT = 20  # magic, version, flags, pages_alloc, normal_pages: then be32 next_packet_size


@pytest.mark.parametrize("flags,comp", [(0, "none"), (MULTIFD_FLAG_SYNC, "none"), (0x2, "zlib"),
                                        (0x4 | MULTIFD_FLAG_SYNC, "zstd")])
def test_compression_is_the_flags_above_sync(flags, comp):
    """The compression method is flags & 0xE: the SYNC bit (0x1) is not part of it."""
    nsize = 2 * PS if comp == "none" else 100
    r = StreamReader(b"\xee" * 5 + encode_packet(flags, 7, "pc.ram", [0, PS], PS, next_packet_size=nsize) + bytes(2 * PS))
    r.pos = 5
    h = read_packet_header(r, PS)
    assert h.compression == comp and h.normal_pages == 2


def test_an_unknown_compression_method_is_named():
    r = StreamReader(b"\xee" * 5 + encode_packet(0x8, 7, "pc.ram", [0], PS, next_packet_size=10) + bytes(10))
    r.pos = 5
    with pytest.raises(WireError, match="unknown multifd compression flags 0x8") as ei:
        read_packet_header(r, PS)
    assert ei.value.offset == 5 + 8


@pytest.mark.parametrize("flags,offsets,zero,nsize,match", [
    (0, [], [0], 4096, "without normal pages"),  # 9.0+: only zero pages, yet a payload size
    (0, [0], [], 100, "disagrees with 1 pages"),
    (0x2, [0], [], 0, "compressed payload of 0 bytes"),
])
def test_next_packet_size_errors_point_at_the_field(flags, offsets, zero, nsize, match):
    layout = LAYOUT_ZERO_PAGES if zero else LAYOUT_72
    hdr = encode_packet(flags, 7, "pc.ram", offsets, PS, next_packet_size=nsize, zero_offsets=zero, layout=layout)
    r = StreamReader(b"\xee" * 5 + hdr + bytes(8 * PS))
    r.pos = 5
    with pytest.raises(WireError, match=match) as ei:
        read_packet_header(r, PS, layout=layout)
    assert ei.value.offset == 5 + NSIZE_AT
    assert packet_size(PS) == PACKET_HEADER_SIZE + 8 * 128
