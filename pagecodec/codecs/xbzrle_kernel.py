"""XBZRLE: QEMU's XOR-based zero-run-length page delta, as compiled batch kernels.

The wire format (migration/xbzrle.c, QEMU 7.2)::

    encoding := pair*
    pair     := zrun:uleb128 nzrun:uleb128 byte{nzrun}

``zrun`` counts bytes equal in the old and new page, ``nzrun`` counts the bytes that differ, which
follow verbatim (taken from the new page). Runs are maximal, so only the first ``zrun`` may be 0 and
every ``nzrun`` is at least 1; an unchanged tail of the page is never written. The ULEB128 values are
QEMU's "small" ones: at most two bytes (n < 128 -> 1 byte, else ``(n & 0x7f) | 0x80, n >> 7``).

Encoder
    :func:`encode_batch` reproduces ``xbzrle_encode_buffer(old, new, slen=P, dst, dlen=P)`` exactly
    (P = page size, 4096 in QEMU): the result is 0 for identical pages, -1 on overflow, else the
    length L of the encoding. QEMU's scalar loop checks ``d + 2 > dlen`` at the top of every
    iteration -- including the one that only discovers the unchanged tail -- so the overflow rule in
    closed form is::

        L > P                                   (a pair does not fit), or
        L >= P - 1 and the page ends unchanged  (the top-of-loop check fires first)

    The kernel is QEMU's loop itself, with the same checks in the same places; it finds run ends
    32 and 8 bytes at a time (which changes no result).

    QEMU 8.0+ also has an AVX512 encoder that disagrees with the scalar one near the ``dlen``
    boundary (it accepts some encodings of length 4095/4096 that end in an unchanged run, and on
    some inputs writes past ``dlen``); pagecodec follows the scalar result, which is what QEMU 7.2
    sends and what the reference vectors pin down.

Decoder
    :func:`decode_page` / :func:`decode_batch` apply QEMU's ``xbzrle_decode_buffer`` acceptance
    rules (``slen - i < 2`` before each ULEB, ULEBs longer than 2 bytes, a zero zrun anywhere but at
    input position 0, a zero nzrun, a run past the page or past the input), but validate a record
    completely before touching the page: a rejected record leaves the page unchanged, where QEMU
    would have patched part of it. An empty record is accepted and changes nothing (QEMU's loop does
    not run). The load side (``load_xbzrle``) additionally rejects an encoding flag other than 0x01
    and a length above the page size: :func:`check_record_header`.

Kernels
    Both directions are loops over bytes, sequential within a page (the position of each pair
    depends on the lengths before it), which array code can only vectorise across pages. They are
    written as plain Python and compiled by numba on first use (:func:`_jit`; numba itself is
    imported only then). ``force_path="py"`` runs the same source in the interpreter instead (slow;
    for tests and debugging).
"""

from __future__ import annotations

import threading
import types
from pathlib import Path

import numpy as np

from ..errors import DecodeError

__all__ = [
    "PAGE_SIZE",
    "ENCODING_FLAG_XBZRLE",
    "encode_batch",
    "encode_page",
    "decode_page",
    "decode_batch",
    "decode_record_length_ok",
    "check_record_header",
]

PAGE_SIZE = 4096
ENCODING_FLAG_XBZRLE = 0x01  # the u8 in front of the be16 length in a RAM_SAVE_FLAG_XBZRLE record

_MAX_PAGE_SIZE = 8192  # runs must fit QEMU's 14-bit ULEB128 (uleb128_encode_small asserts n <= 0x3fff)


def _check_page_size(ps: int) -> int:
    if ps < 8 or ps > _MAX_PAGE_SIZE or ps & (ps - 1):
        raise ValueError(f"XBZRLE page size must be a power of two in [8, {_MAX_PAGE_SIZE}], got {ps}")
    return ps.bit_length() - 1


def _as_pages(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8, got {a.dtype}")
    if a.ndim == 1:
        a = a.reshape(1, -1)
    if a.ndim != 2:
        raise ValueError(f"{name} must be (n, page_size), got shape {a.shape}")
    return np.ascontiguousarray(a)


# ----------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------


def encode_batch(
    old: np.ndarray, new: np.ndarray, *, force_path: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encode ``new`` against ``old`` page by page, as QEMU's scalar encoder with slen = dlen = page size.

    ``old`` and ``new`` are uint8 arrays of shape (n, page_size) (a single page of shape (page_size,)
    is accepted too). Returns ``(lengths, data, starts)``:

    - ``lengths``: int32 (n,): 0 = identical (QEMU sends nothing), -1 = overflow (QEMU sends the page
      raw), else the encoded length L (1 <= L <= page_size);
    - ``data``: uint8, the encodings of the pages with L > 0 back to back, in page order;
    - ``starts``: int64 (n,): where each page's encoding starts in ``data``. Valid where L > 0;
      elsewhere it is the offset the next encoding starts at, so ``starts`` is non-decreasing.

    ``force_path="py"`` runs the kernel's Python source in the interpreter (slow; for tests).
    """
    old = _as_pages(old, "old")
    new = _as_pages(new, "new")
    if old.shape != new.shape:
        raise ValueError(f"old and new differ in shape: {old.shape} vs {new.shape}")
    n, ps = old.shape
    _check_page_size(ps)
    starts = np.zeros(n, np.int64)
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.uint8), starts
    out = np.empty(n * ps, np.uint8)  # an accepted encoding fits its page, and QEMU writes no further
    lengths, used = _kernel(_encode_pages, force_path)(_readonly(old), _readonly(new), out)
    np.cumsum(np.maximum(lengths[:-1], 0), out=starts[1:])
    return lengths, out[: int(used)].copy(), starts


def _readonly(a: np.ndarray) -> np.ndarray:
    """``a`` as a read-only array (one numba specialisation for any input)."""
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def encode_page(old: np.ndarray, new: np.ndarray) -> bytes | int:
    """One page: the encoding as bytes, or 0 (identical) / -1 (overflow) like QEMU's return value."""
    lengths, data, _ = encode_batch(old, new)
    if lengths.size != 1:
        raise ValueError("encode_page takes one page")
    L = int(lengths[0])
    return data.tobytes() if L > 0 else L


# The kernels' index arithmetic is unsigned (np.uint64, and the constants below): numba gives every
# signed index a negative-index wraparound, which slows the loops and stops LLVM from vectorising
# the copies.
_U0, _U1, _U2, _U3, _U4, _U7, _U8, _U16, _U24, _U32 = (np.uint64(v) for v in (0, 1, 2, 3, 4, 7, 8, 16, 24, 32))
_U127, _U128 = np.uint64(127), np.uint64(128)
_ONES = np.uint64(0x0101010101010101)
_HIGHS = np.uint64(0x8080808080808080)


def _load8(a, i):
    """a[i : i + 8] as a little-endian uint64 (compiled: one unaligned load)."""
    return np.uint64(int.from_bytes(a[i : i + 8].tobytes(), "little"))


def _ctz(x):
    """The number of trailing zero bits of the uint64 x != 0 (compiled: LLVM's cttz)."""
    x = int(x)
    return np.uint64((x & -x).bit_length() - 1)


def _uleb(out, p, v):
    """QEMU's uleb128_encode_small(out + p, v) (v < 2**14); returns the position after it."""
    if v < _U128:
        out[p] = np.uint8(v)
        return p + _U1
    out[p] = np.uint8((v & _U127) | _U128)
    out[p + _U1] = np.uint8(v >> _U7)
    return p + _U2


def _encode_page(old, new, out, base, ps):
    """``xbzrle_encode_buffer(old, new, slen=ps, out + base, dlen=ps)``: the length, 0 or -1.

    QEMU's loop: the same checks in the same places. Run ends are found 32, then 8 bytes at a time
    (the first byte that differs: the lowest set bit of the XOR; the first equal byte: the lowest
    zero byte of the XOR, by the has-zero-byte trick, exact for the lowest one).
    """
    i = _U0
    d = _U0
    while i < ps:
        if d + _U2 > ps:
            return -1
        z0 = i  # zrun: bytes equal
        found = False
        while i + _U32 <= ps:
            x = _load8(old, i) ^ _load8(new, i)
            x |= _load8(old, i + _U8) ^ _load8(new, i + _U8)
            x |= _load8(old, i + _U16) ^ _load8(new, i + _U16)
            x |= _load8(old, i + _U24) ^ _load8(new, i + _U24)
            if x:
                break
            i += _U32
        while i + _U8 <= ps:
            x = _load8(old, i) ^ _load8(new, i)
            if x:
                i += _ctz(x) >> _U3
                found = True
                break
            i += _U8
        if not found:
            while i < ps and old[i] == new[i]:
                i += _U1
        if i - z0 == ps:  # the page is unchanged
            return 0
        if i == ps:  # an unchanged tail is not sent
            return np.int64(d)
        d = _uleb(out, base + d, i - z0) - base
        if d + _U2 > ps:
            return -1
        n0 = i  # nzrun: bytes that differ
        found = False
        while i + _U8 <= ps:
            x = _load8(old, i) ^ _load8(new, i)
            t = (x - _ONES) & ~x & _HIGHS
            if t:
                i += _ctz(t) >> _U3
                found = True
                break
            i += _U8
        if not found:
            while i < ps and old[i] != new[i]:
                i += _U1
        nz = i - n0
        d = _uleb(out, base + d, nz) - base
        if d + nz > ps:
            return -1
        for t in range(nz):
            out[base + d + t] = new[n0 + t]
        d += nz
    return np.int64(d)


def _encode_pages(old, new, out):
    """Encode page k of ``new`` against page k of ``old``, for every k; the encodings with a length
    L > 0 go to ``out`` back to back. Returns (lengths (int32), bytes used in ``out``)."""
    n = old.shape[0]
    ps = np.uint64(old.shape[1])
    lengths = np.empty(n, np.int32)
    used = _U0
    for k in range(n):
        L = _encode_page(old[k], new[k], out, used, ps)
        lengths[k] = L
        if L > 0:
            used += np.uint64(L)
    return lengths, used


# ----------------------------------------------------------------------------------------------------
# Decoder
# ----------------------------------------------------------------------------------------------------

#: Why a record is rejected (``DecodeError.reason``), in the order QEMU's decoder checks them per pair.
REJECT_REASONS = {
    "truncated-zrun": "fewer than 2 bytes left for a zrun header",
    "uleb-too-long": "ULEB128 longer than 2 bytes",
    "zero-zrun": "zero-length zrun after the first pair",
    "zrun-past-page": "zrun runs past the end of the page",
    "truncated-nzrun": "fewer than 2 bytes left for an nzrun header",
    "zero-nzrun": "zero-length nzrun",
    "nzrun-past-page": "nzrun runs past the end of the page",
    "nzrun-past-input": "nzrun runs past the end of the record",
    "bad-encoding-flag": "XBZRLE encoding flag is not 0x01",
    "length-over-page": "XBZRLE record longer than a page",
}


class RecordOutsideData(DecodeError, ValueError):
    """:func:`decode_batch` was given a record (start, length) that does not lie inside its data: a
    DecodeError naming the record (and a ValueError, what it was before). The check is made for every
    record before any is decoded, and without overflow: ``length > size - start`` with both
    non-negative, never ``start + length`` (which wraps for starts near 2^63)."""


def _reject(reason: str, offset: int, source: str | None, detail: str = "") -> DecodeError:
    msg = f"XBZRLE record rejected: {REJECT_REASONS[reason]}{detail}"
    err = DecodeError(msg, offset=offset, source=source)
    err.reason = reason  # type: ignore[attr-defined]
    return err


def decode_record_length_ok(length: int, page_size: int = PAGE_SIZE) -> bool:
    """Load-side length check of ``load_xbzrle``: ``xh_len > TARGET_PAGE_SIZE`` is rejected."""
    return 0 <= length <= page_size


def check_record_header(
    flag: int, length: int, *, page_size: int = PAGE_SIZE, source: str | None = None, offset: int | None = None
) -> None:
    """``load_xbzrle``'s header checks (u8 encoding flag, be16 length); raises DecodeError."""
    if flag != ENCODING_FLAG_XBZRLE:
        raise _reject("bad-encoding-flag", offset, source, f" (got 0x{flag:02x})")  # type: ignore[arg-type]
    if not decode_record_length_ok(length, page_size):
        raise _reject("length-over-page", offset, source, f" ({length} > {page_size})")  # type: ignore[arg-type]


def _as_buffer(data) -> np.ndarray:
    """The bytes of ``data`` (bytes-like, or any numpy array) as a contiguous 1-D uint8 array."""
    if not isinstance(data, np.ndarray):
        return np.frombuffer(data, np.uint8)
    if not data.flags.c_contiguous:
        data = np.ascontiguousarray(data)
    if data.dtype != np.uint8 or data.ndim != 1:
        data = data.view(np.uint8).reshape(-1)
    return data


#: ``.reason`` for each nonzero status code of :func:`_decode_records`.
_CODE_REASON = (
    None,
    "truncated-zrun",
    "uleb-too-long",
    "zero-zrun",
    "zrun-past-page",
    "truncated-nzrun",
    "uleb-too-long",
    "zero-nzrun",
    "nzrun-past-page",
    "nzrun-past-input",
)


def _detail(code: int, v1: int, v2: int, dlen: int) -> str:
    if code in (1, 5):
        return f" ({v1} left)"
    if code in (4, 8):
        return f" (to {v1} > {dlen})"
    if code == 9:
        return f" ({v1} bytes, {v2} left)"
    return {2: " (zrun)", 6: " (nzrun)"}.get(code, "")


# The decoding kernel, _decode_records, and its helpers (compiled with it: see _jit).

_DENSE = np.uint64(3 * 64)  # a record with more than 64 runs is finished by _dense


def _copy16(dst, a, src, b) -> None:
    """dst[a : a + 16] = src[b : b + 16]; compiled: one unaligned 16-byte load and store."""
    dst[a : a + 16] = src[b : b + 16]


def _patch16(page, d, src, b, nz) -> None:
    """page[d : d + nz] = src[b : b + nz] for nz < 16, where page[d : d + nz + 16] and src[b : b + 16]
    can be read. Compiled: the 16 bytes at page[d + nz] are loaded, 16 bytes are copied from src[b]
    to page[d], and the saved 16 bytes stored back at page[d + nz] (four unaligned 16-byte accesses,
    no branch on nz)."""
    page[d : d + nz] = src[b : b + nz]


def _pair(buf, s, e, i, d, dlen):
    """The pair at buf[i] of the record buf[s:e], with QEMU's checks in QEMU's order.

    ``d``: page offset before it. Returns (status, offset in the record, v1, v2, zrun, nzrun,
    position of the literal bytes); status 0 = valid, else the rule that failed (``_CODE_REASON``).
    """
    if i + _U2 > e:
        return 1, i - s, e - i, _U0, _U0, _U0, _U0
    z = np.uint64(buf[i])
    j = i + _U1
    if z >= _U128:
        hi = np.uint64(buf[j])
        if hi >= _U128:
            return 2, i - s, _U0, _U0, _U0, _U0, _U0
        z = (z & _U127) | (hi << _U7)
        j += _U1
    if z == _U0 and i != s:
        return 3, i - s, _U0, _U0, _U0, _U0, _U0
    if d + z > dlen:
        return 4, i - s, d + z, _U0, _U0, _U0, _U0
    if j + _U2 > e:
        return 5, j - s, e - j, _U0, _U0, _U0, _U0
    nz = np.uint64(buf[j])
    lit = j + _U1
    if nz >= _U128:
        hi = np.uint64(buf[lit])
        if hi >= _U128:
            return 6, j - s, _U0, _U0, _U0, _U0, _U0
        nz = (nz & _U127) | (hi << _U7)
        lit += _U1
    if nz == _U0:
        return 7, j - s, _U0, _U0, _U0, _U0, _U0
    if d + z + nz > dlen:
        return 8, j - s, d + z + nz, _U0, _U0, _U0, _U0
    if lit + nz > e:
        return 9, j - s, nz, e - lit, _U0, _U0, _U0
    return 0, _U0, _U0, _U0, z, nz, lit


def _copy_run(page, d, src, b, nz, dlen, nbuf) -> None:
    """page[d : d + nz] = src[b : b + nz], for a run inside its page (d + nz <= dlen, the page's end).

    A run of 16 bytes or more is copied 16 bytes at a time, the last 16 ending where it ends; a shorter
    one with 16 bytes of room after it in the page and in ``src`` by _patch16; any other byte by byte.
    """
    if nz >= _U16:
        t = _U0
        while t + _U16 < nz:
            _copy16(page, d + t, src, b + t)
            t += _U16
        t = nz - _U16
        _copy16(page, d + t, src, b + t)
    elif (d + nz + _U16 <= dlen) & (b + _U16 <= nbuf):
        _patch16(page, d, src, b, nz)
    else:
        for t in range(nz):
            page[d + t] = src[b + t]


def _dense(buf, s, e, i, d, flat, base, runs, m, out, dlen, nbuf):
    """Finish a record with many runs in one pass: (status, offset, v1, v2); the page is written
    only if the status is 0.

    The page flat[base : base + dlen] is copied to ``out`` (dlen + 32 bytes), the m / 3 runs noted
    so far are applied to it, then the rest of the record, from buf[i] and page offset d, is checked
    and applied to ``out`` as it is parsed, and ``out`` is copied back to the page if the record is
    valid. The common pair (one-byte ULEBs, a run of 1-16 bytes with 16 bytes of room after it in the
    page and in ``buf``) is applied as 16 bytes copied from ``buf``, then the 16 bytes after it from
    the page (never written in this pass): no branch on the run length, and the parse (a dependency
    chain of one load per pair) is not held up by the copies.
    """
    for t in range(dlen):
        out[t] = flat[base + t]
    t = _U0
    while t < m:
        _copy_run(out, runs[t], buf, runs[t + _U1], runs[t + _U2], dlen, nbuf)
        t += _U3
    dmax = dlen - _U16
    while i < e:
        if i + _U4 <= nbuf:
            z = np.uint64(buf[i])
            nz = np.uint64(buf[i + _U1])
            lit = i + _U2
            ni = lit + nz
            nd = d + z + nz
            # (i != s here, so a zero zrun is invalid)
            if ((z - _U1) < _U127) & ((nz - _U1) < _U16) & (nd <= dmax) & (ni <= e) & (lit + _U16 <= nbuf):
                _copy16(out, d + z, buf, lit)
                _copy16(out, nd, flat, base + nd)
                d = nd
                i = ni
                continue
        code, off, v1, v2, z, nz, lit = _pair(buf, s, e, i, d, dlen)
        if code:
            return code, off, v1, v2
        _copy_run(out, d + z, buf, lit, nz, dlen, nbuf)
        d += z + nz
        i = lit + nz
    for t in range(d):
        flat[base + t] = out[t]
    return 0, _U0, _U0, _U0


def _decode_records(buf, starts, lengths, pages):
    """Apply record k = buf[starts[k] : starts[k] + lengths[k]] to pages[k], for k = 0, 1, ... in order.

    Stops at the first record that QEMU's ``xbzrle_decode_buffer`` rejects, before writing anything
    to its page. Returns (status, k, offset, v1, v2): status 0 = all n records applied (k = n), else
    the rule that failed (``_CODE_REASON``) in record k, ``offset`` = position of the failing ULEB
    header in the record, and v1, v2 for the message; status -1: record k does not lie inside
    ``buf`` (checked for all records before any is decoded).

    Each record is walked once to validate it, noting where each literal run goes (page offset,
    position in ``buf``, length) in ``runs``; only when the whole record is valid are the runs copied
    to the page. A pair (ULEBs of one or two bytes, decoded without branches) takes one combined test that implies all of
    QEMU's checks for it; any other pair (one that fails, or one within 4 bytes of the end of
    ``buf``) goes through ``_pair``, which checks in QEMU's order.
    """
    n = pages.shape[0]
    dlen = np.uint64(pages.shape[1])
    nbuf = np.uint64(buf.size)
    flat = pages.reshape(-1)
    # A valid record has at most dlen pairs (each writes at least one byte of the page).
    runs = np.empty(3 * pages.shape[1] + 3, np.uint64)
    out = np.empty(pages.shape[1] + 32, np.uint8)
    size = buf.size
    for k in range(n):  # every record inside buf, before anything is decoded
        if (starts[k] < 0) | (lengths[k] < 0) | (lengths[k] > size - starts[k]):
            return -1, k, _U0, _U0, _U0
    base = _U0
    for k in range(n):
        s = np.uint64(starts[k])
        e = s + np.uint64(lengths[k])
        i = s
        d = _U0
        m = _U0
        while i < e:
            if m == _DENSE:  # a dense record: the rest in one pass through a scratch copy
                code, off, v1, v2 = _dense(buf, s, e, i, d, flat, base, runs, m, out, dlen, nbuf)
                if code:
                    return code, k, off, v1, v2
                m = _U0  # (applied)
                break
            if i + _U4 <= nbuf:  # (then buf[i : i + 4] can be read: both ULEBs, 1 or 2 bytes each)
                z0 = np.uint64(buf[i])
                z1 = np.uint64(buf[i + _U1])
                if (z0 | z1) < _U128:  # two one-byte ULEBs (dense records): one load deep
                    nz = z1
                    lit = i + _U2
                    ni = lit + nz
                    nd = d + z0 + nz
                    if ((z0 != _U0) | (i == s)) & (nz != _U0) & (nd <= dlen) & (ni <= e):
                        runs[m] = d + z0
                        runs[m + _U1] = lit
                        runs[m + _U2] = nz
                        m += _U3
                        d = nd
                        i = ni
                        continue
                zl = z0 >> _U7  # 1: a two-byte zrun
                z = (z0 & ~(zl << _U7)) | ((z1 << _U7) & (_U0 - zl))
                j = i + _U1 + zl
                n0 = np.uint64(buf[j])
                n1 = np.uint64(buf[j + _U1])
                nl = n0 >> _U7
                nz = (n0 & ~(nl << _U7)) | ((n1 << _U7) & (_U0 - nl))
                lit = j + _U1 + nl
                ni = lit + nz
                nd = d + z + nz
                # valid ULEBs, QEMU's zero-run rules, inside the page and inside the record (which
                # implies the two "2 bytes left" checks: lit + nz <= e with nz >= 1)
                if (
                    (((z1 & (zl << _U7)) | (n1 & (nl << _U7))) == _U0)
                    & ((z != _U0) | (i == s))
                    & (nz != _U0)
                    & (nd <= dlen)
                    & (ni <= e)
                ):
                    runs[m] = d + z
                    runs[m + _U1] = lit
                    runs[m + _U2] = nz
                    m += _U3
                    d = nd
                    i = ni
                    continue
            code, off, v1, v2, z, nz, lit = _pair(buf, s, e, i, d, dlen)
            if code:
                return code, k, off, v1, v2
            runs[m] = d + z
            runs[m + _U1] = lit
            runs[m + _U2] = nz
            m += _U3
            d += z + nz
            i = lit + nz
        t = _U0
        while t < m:
            _copy_run(flat, base + runs[t], buf, runs[t + _U1], runs[t + _U2], base + dlen, nbuf)
            t += _U3
        base += dlen
    return 0, n, _U0, _U0, _U0


def _run(kernel, buf, starts, lengths, pages, source, base_offset, where):
    """Call the kernel (on a contiguous copy of ``pages`` if need be); raise its rejection."""
    target = pages if pages.flags.c_contiguous else np.ascontiguousarray(pages)
    code, k, off, v1, v2 = kernel(buf, starts, lengths, target)
    if code < 0:
        k = int(k)
        raise RecordOutsideData(f"XBZRLE record {k} (start {int(starts[k])}, length {int(lengths[k])}) lies "
                                f"outside the {buf.size} bytes of data", base_offset, source)
    if target is not pages:
        pages[:k] = target[:k]
    if code:
        k = int(k)
        reason = _CODE_REASON[code]
        detail = _detail(code, int(v1), int(v2), pages.shape[1]) + where(k)
        return _reject(reason, base_offset + int(starts[k]) + int(off), source, detail), k
    return None, k


def decode_page(
    data, page: np.ndarray, *, source: str | None = None, base_offset: int = 0, force_path: str | None = None
) -> None:
    """Apply one XBZRLE record (``data``: bytes, memoryview or uint8 array) to ``page`` in place.

    Zruns leave bytes untouched; nzruns overwrite them. The record is validated completely before
    the page is written, so a rejected record raises :class:`DecodeError` (``.reason``, and
    ``.offset`` = ``base_offset`` + position of the failing header in ``data``) and leaves ``page``
    as it was. ``page`` must be a writable uint8 array; its length is QEMU's ``dlen``.

    This is :func:`decode_batch` on one record (the same compiled kernel; the first call in a
    process loads or compiles it). ``force_path="py"`` runs the kernel's Python source instead
    (slow; for tests and debugging).
    """
    if not isinstance(page, np.ndarray) or page.dtype != np.uint8 or page.ndim != 1:
        raise TypeError("page must be a 1-D uint8 numpy array")
    if not page.flags.writeable:
        raise ValueError("page is read-only")
    kernel = _compiled["_decode_records"] if force_path is None and _compiled else _decoder(force_path)
    buf = _as_buffer(data)
    length = np.array((buf.size,), np.int64)
    err, _ = _run(kernel, buf, _START_0, length, page[None], source, base_offset, _no_record)
    if err is not None:
        raise err


_START_0 = np.zeros(1, np.int64)  # decode_page's record starts at 0 (never written)


def _as_int64(a) -> np.ndarray:
    """``a`` as a contiguous 1-D int64 array (as it is, if it is one)."""
    if type(a) is np.ndarray and a.dtype == np.int64 and a.ndim == 1 and a.flags.c_contiguous:
        return a
    return np.ascontiguousarray(a, np.int64).reshape(-1)


def _no_record(k: int) -> str:
    return ""


def _record(k: int) -> str:
    return f" (record {k})"


def decode_batch(
    data,
    starts,
    lengths,
    pages: np.ndarray,
    *,
    source: str | None = None,
    base_offset: int = 0,
    force_path: str | None = None,
) -> None:
    """Apply record k = ``data[starts[k] : starts[k] + lengths[k]]`` to ``pages[k]``, for every k.

    The result is that of calling :func:`decode_page` for each record in order: the records before
    the first rejected one are applied, then :class:`DecodeError` is raised for it (``.offset`` =
    ``base_offset`` + position in ``data``, ``.record`` = k), and it and all later pages are left
    untouched. ``pages`` is a writable uint8 array (n, page_size). Records may lie anywhere in
    ``data`` (overlapping, repeated, out of order).

    The records are decoded in order by a compiled loop (compiled on first use, or loaded from
    numba's cache), which validates each record in one walk before it writes the page.
    ``force_path="py"`` runs its Python source in the interpreter instead (slow; for tests).
    """
    if not isinstance(pages, np.ndarray) or pages.dtype != np.uint8 or pages.ndim != 2:
        raise TypeError("pages must be a (n, page_size) uint8 numpy array")
    if not pages.flags.writeable:
        raise ValueError("pages is read-only")
    kernel = _compiled["_decode_records"] if force_path is None and _compiled else _decoder(force_path)
    buf = _as_buffer(data)
    starts = _as_int64(starts)
    lengths = _as_int64(lengths)
    n = pages.shape[0]
    if starts.size != n or lengths.size != n:
        raise ValueError(f"{n} pages but {starts.size} starts and {lengths.size} lengths")
    if n == 0:
        return
    # (the kernel checks that every record lies inside data before it decodes any)
    err, k = _run(kernel, buf, starts, lengths, pages, source, base_offset, _record)
    if err is not None:
        err.record = k  # type: ignore[attr-defined]
        raise err


# ----------------------------------------------------------------------------------------------------
# Compilation
# ----------------------------------------------------------------------------------------------------

def warm_up(page_size: int = PAGE_SIZE) -> None:
    """Load (or compile) the encode and decode kernels now, so that their first use is not charged
    to whatever is being timed (the chain measures CPU per slot)."""
    old = np.zeros((1, page_size), np.uint8)
    new = old.copy()
    new[0, 0] = 1
    lengths, data, starts = encode_batch(old, new)
    decode_page(data[int(starts[0]) : int(starts[0]) + int(lengths[0])], old[0])


def _decoder(force_path: str | None):
    return _kernel(_decode_records, force_path)


def _kernel(fn, force_path: str | None):
    """The kernel ``fn``: compiled (force_path None), or its source, interpreted ("py")."""
    if force_path is None:
        return _jit(fn)
    if force_path == "py":
        return lambda *args: _interpreted(fn, *args)
    raise ValueError(f"force_path must be None or 'py', got {force_path!r}")


def _interpreted(fn, *args):
    with np.errstate(over="ignore"):  # unsigned arithmetic wraps around, as in compiled code
        return fn(*args)


#: What the kernels call. Those marked True are inlined by numba where they are called: a call to a
#: compiled function costs atomic reference-count updates of its array arguments (tens of ns).
#: The others hold long loops, which compile to tighter code as functions of their own, and
#: ``_next_pair`` (the uncommon pairs) is kept out of ``_finish``'s loop.
_HELPERS = (
    (_uleb, True),
    (_encode_page, True),
    (_pair, True),
    (_copy_run, True),
    (_dense, False),
)
_KERNELS = (_encode_pages, _decode_records)

_compiled: dict | None = None  # kernel name -> numba dispatcher, once _jit has been called
_compile_lock = threading.Lock()


def _jit(fn):
    """The kernel ``fn`` compiled by numba (``cache=True``: the machine code is kept under
    ``__pycache__``, and later processes load it instead of compiling it, which takes seconds).

    The first call imports numba and sets the kernels up; each kernel is compiled (or loaded) the
    first time it runs, for the argument types it gets.
    """
    global _compiled
    if _compiled is None:
        with _compile_lock:
            if _compiled is None:
                _compiled = _build()
    return _compiled[fn.__name__]


def _build() -> dict:
    from numba import njit

    # Compile copies of the functions whose globals name the compiled versions of each other and
    # the intrinsics, leaving the module's Python functions as they are for the "py" path. A copy
    # has the name, file and line numbers of its original, which is what numba's cache is keyed on.
    namespace = dict(globals())
    namespace.update(_intrinsics())

    def copy(fn):
        f = types.FunctionType(_uninstrumented(fn), namespace, fn.__name__)
        f.__qualname__ = fn.__qualname__
        return f

    for fn, inline in _HELPERS:
        namespace[fn.__name__] = njit(nogil=True, inline="always" if inline else "never")(copy(fn))
    return {fn.__name__: njit(cache=True, nogil=True)(copy(fn)) for fn in _KERNELS}


def _intrinsics() -> dict:
    """Compiled versions of _copy16, _load8 and _ctz: single LLVM instructions."""
    from llvmlite import ir
    from numba import types as nbtypes
    from numba.core import cgutils
    from numba.extending import intrinsic

    i64 = ir.IntType(64)

    def address(context, builder, arrtype, arr, index):
        return builder.gep(context.make_array(arrtype)(context, builder, arr).data, [index])

    @intrinsic
    def copy16(typingctx, dst, a, src, b):
        def codegen(context, builder, sig, args):
            i128p = ir.IntType(128).as_pointer()
            sp = builder.bitcast(address(context, builder, sig.args[2], args[2], args[3]), i128p)
            dp = builder.bitcast(address(context, builder, sig.args[0], args[0], args[1]), i128p)
            builder.store(builder.load(sp, align=1), dp, align=1)
            return context.get_dummy_value()

        return nbtypes.void(dst, a, src, b), codegen

    @intrinsic
    def load8(typingctx, a, i):
        def codegen(context, builder, sig, args):
            ptr = builder.bitcast(address(context, builder, sig.args[0], args[0], args[1]), i64.as_pointer())
            return builder.load(ptr, align=1)

        return nbtypes.uint64(a, i), codegen

    @intrinsic
    def ctz(typingctx, x):
        def codegen(context, builder, sig, args):
            cttz = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(i64, [i64, ir.IntType(1)]), "llvm.cttz.i64"
            )
            return builder.call(cttz, [args[0], ir.Constant(ir.IntType(1), 0)])

        return nbtypes.uint64(x), codegen

    @intrinsic
    def patch16(typingctx, page, d, src, b, nz):
        def codegen(context, builder, sig, args):
            i128p = ir.IntType(128).as_pointer()
            dp = builder.bitcast(address(context, builder, sig.args[0], args[0], args[1]), i128p)
            tp = builder.bitcast(
                address(context, builder, sig.args[0], args[0], builder.add(args[1], args[4])), i128p
            )
            sp = builder.bitcast(address(context, builder, sig.args[2], args[2], args[3]), i128p)
            saved = builder.load(tp, align=1)
            builder.store(builder.load(sp, align=1), dp, align=1)
            builder.store(saved, tp, align=1)
            return context.get_dummy_value()

        return nbtypes.void(page, d, src, b, nz), codegen

    return {"_copy16": copy16, "_patch16": patch16, "_load8": load8, "_ctz": ctz}


def _uninstrumented(fn) -> types.CodeType:
    """The code of ``fn``, recompiled from its source file if a coverage fuzzer rewrote its bytecode.

    numba compiles bytecode and cannot type the tracing calls that atheris inserts (tests/fuzz_xbzrle.py
    instruments pagecodec).
    """
    code = fn.__code__
    if not {"_trace_branch", "_trace_cmp"} & set(code.co_names):
        return code
    import ast
    import inspect

    path = inspect.getsourcefile(fn)
    tree = ast.parse(Path(path).read_text(), path)
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn.__name__)
    module = compile(ast.Module([node], []), path, "exec")
    return next(c for c in module.co_consts if isinstance(c, types.CodeType) and c.co_name == fn.__name__)
