"""A small, literal pure-Python model of QEMU 7.2's XBZRLE encoder/decoder (migration/xbzrle.c).

It walks the page byte by byte with exactly QEMU's control flow and bound checks (``d + 2 > dlen``
at the top of each iteration and after the zrun, ``d + nzrun > dlen`` after the nzrun header;
``slen - i < 2`` before each ULEB in the decoder). The word-at-a-time scans of the C code only speed
up finding run ends and do not change results, so they are left out. This module is the test oracle
for the batched numpy kernel, which derives the same results in closed form.
"""

from __future__ import annotations


def uleb_encode(n: int) -> bytes:
    assert 0 <= n <= 0x3FFF
    return bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7])


def uleb_decode(buf: bytes, i: int) -> tuple[int, int]:
    """QEMU's uleb128_decode_small: (value, length), length -1 for a >2-byte ULEB."""
    b0 = buf[i]
    if not b0 & 0x80:
        return b0, 1
    b1 = buf[i + 1]
    if b1 & 0x80:
        return 0, -1
    return (b0 & 0x7F) | (b1 << 7), 2


def encode(old: bytes, new: bytes, dlen: int | None = None) -> bytes | int:
    """xbzrle_encode_buffer(old, new, slen=len(old), dst, dlen): bytes, 0 or -1."""
    slen = len(old)
    assert len(new) == slen
    if dlen is None:
        dlen = slen
    out = bytearray()
    i = 0
    zrun = nzrun = 0
    while i < slen:
        if len(out) + 2 > dlen:
            return -1
        while i < slen and old[i] == new[i]:
            zrun += 1
            i += 1
        if zrun == slen:
            return 0
        if i == slen:
            return bytes(out)
        out += uleb_encode(zrun)
        zrun = 0
        nz_start = i
        if len(out) + 2 > dlen:
            return -1
        while i < slen and old[i] != new[i]:
            nzrun += 1
            i += 1
        out += uleb_encode(nzrun)
        if len(out) + nzrun > dlen:
            return -1
        out += new[nz_start : nz_start + nzrun]
        nzrun = 0
    return bytes(out)


def decode(src: bytes, page: bytes) -> bytes | None:
    """xbzrle_decode_buffer(src, slen, dst=page copy, dlen=len(page)): the patched page, or None (-1)."""
    dst = bytearray(page)
    slen, dlen = len(src), len(dst)
    i = d = 0
    while i < slen:
        if slen - i < 2:
            return None
        count, ret = uleb_decode(src, i)
        if ret < 0 or (i and not count):
            return None
        i += ret
        d += count
        if d > dlen:
            return None
        if slen - i < 2:
            return None
        count, ret = uleb_decode(src, i)
        if ret < 0 or not count:
            return None
        i += ret
        if d + count > dlen or i + count > slen:
            return None
        dst[d : d + count] = src[i : i + count]
        d += count
        i += count
    return bytes(dst)
