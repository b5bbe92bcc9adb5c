"""XBZRLE: QEMU's XOR-based zero-run-length page delta, as batched numpy kernels.

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

    Every other check in the loop is implied by the first (a pair costs at least 3 bytes). The
    kernel derives runs for a whole batch at once: compare 64-bit words, look at the bytes of
    changed words only, find run starts/ends with shifted boolean masks, then size and place every
    run with cumulative sums. There is no Python loop per page, per run or per byte.

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
"""

from __future__ import annotations

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


_BYTE_SUM = np.uint64(0x0101010101010101)


def _bytes_set(mask: np.ndarray) -> np.ndarray:
    """Per 8-byte group of a contiguous bool array: how many are True (uint64)."""
    return (mask.view(np.uint64) * _BYTE_SUM) >> np.uint64(56)


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

    ``force_path`` ("dense" or "sparse") pins the internal strategy (for tests); by default it is
    chosen per call from the density of changed bytes inside changed words.
    """
    old = _as_pages(old, "old")
    new = _as_pages(new, "new")
    if old.shape != new.shape:
        raise ValueError(f"old and new differ in shape: {old.shape} vs {new.shape}")
    n, ps = old.shape
    shift = _check_page_size(ps)
    lengths = np.zeros(n, np.int32)
    starts = np.zeros(n, np.int64)
    empty = np.zeros(0, np.uint8)
    if n == 0:
        return lengths, empty, starts

    # 1. changed 64-bit words: the only pass over the whole batch
    ow = old.reshape(-1).view(np.uint64)
    nw = new.reshape(-1).view(np.uint64)
    cw = np.flatnonzero(ow != nw)  # global word index, ascending
    if cw.size == 0:
        return lengths, empty, starts
    # The rest works on changed words only, in chunks of whole pages that keep the per-word and
    # per-run arrays cache-sized.
    if cw.size <= _CHUNK_WORDS:
        parts = [_encode_words(ow, nw, cw, n, shift, lengths, force_path)]
    else:
        wshift = shift - 3
        first_word = np.searchsorted(cw, np.arange(n + 1) << wshift)  # per page, into cw
        cuts = np.unique(first_word[np.searchsorted(first_word, np.arange(0, cw.size, _CHUNK_WORDS), "right") - 1])
        cuts = np.append(cuts[cuts < cw.size], cw.size)
        if cuts[0] != 0:
            cuts = np.insert(cuts, 0, 0)
        parts = [
            _encode_words(ow, nw, cw[a:b], n, shift, lengths, force_path)
            for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist())
        ]
    data = parts[0] if len(parts) == 1 else np.concatenate(parts)
    pos_lens = np.where(lengths > 0, lengths, 0)
    np.cumsum(pos_lens[:-1], out=starts[1:])
    return lengths, data, starts


_CHUNK_WORDS = 65536  # changed words per internal chunk of the encoder


def _encode_words(
    ow: np.ndarray, nw: np.ndarray, cw: np.ndarray, n: int, shift: int, lengths: np.ndarray, force_path: str | None
) -> np.ndarray:
    """Encode the pages that the changed words ``cw`` (ascending, whole pages) belong to.

    Fills ``lengths`` for those pages and returns their encodings, back to back in page order.
    """
    ps = 1 << shift
    empty = np.zeros(0, np.uint8)
    neww = nw[cw]
    # 2. changed bytes, looked at only inside changed words
    k = cw.size
    fb = (ow[cw] ^ neww).view(np.uint8) != 0  # (k*8,) changed-byte mask of the gathered words
    T = int(np.count_nonzero(fb))
    dense = 2 * T > fb.size  # long runs: stay in the mask domain; else switch to byte positions
    if force_path is not None:
        dense = force_path == "dense"

    # 3. runs: maximal, and never across a page boundary
    if dense:
        wshift = shift - 3
        prefiltered = False
        while True:
            xb = fb.reshape(k, 8)
            # word j directly continues word j-1 (adjacent and in the same page)
            cont = np.zeros(k, bool)
            np.equal(cw[1:] - cw[:-1], 1, out=cont[1:])
            cont[1:] &= (cw[1:] & ((1 << wshift) - 1)) != 0
            carry_in = np.zeros(k, bool)  # a run enters word j from word j-1
            np.logical_and(xb[:-1, 7], cont[1:], out=carry_in[1:])
            mark = np.empty_like(fb)  # run starts
            mark[0] = fb[0]
            np.greater(fb[1:], fb[:-1], out=mark[1:])
            mark[0::8] = xb[:, 0] > carry_in
            if prefiltered or 4 * T <= (int(cw[-1] - cw[0]) + 8) * 8:  # < 25% of the bytes spanned
                break
            # Heavily changed batch: L >= changed bytes + 2 per run, so pages over that bound
            # overflow for certain; drop them before the per-run work.
            prefiltered = True
            wp = cw >> wshift
            per_word = _bytes_set(fb) + 2 * _bytes_set(mark)
            firstw = np.flatnonzero(np.concatenate(([True], wp[1:] != wp[:-1])))
            doomed = np.add.reduceat(per_word, firstw) > np.uint64(ps)
            if not doomed.any():
                break
            lengths[wp[firstw[doomed]]] = -1
            keepw = ~np.repeat(doomed, np.diff(np.append(firstw, k)))
            cw = cw[keepw]
            if cw.size == 0:
                return empty
            neww = neww[keepw]
            fb = xb[keepw].reshape(-1)
            k = cw.size
            T = int(np.count_nonzero(fb))
        carry_out = np.zeros(k, bool)  # a run leaves word j into word j+1
        np.logical_and(xb[1:, 0], carry_in[1:], out=carry_out[:-1])
        si = np.flatnonzero(mark)
        mark[-1] = fb[-1]  # run ends (inclusive)
        np.greater(fb[:-1], fb[1:], out=mark[:-1])
        mark[7::8] = xb[:, 7] > carry_out
        ei = np.flatnonzero(mark)
        del mark
        S = cw[si >> 3]
        S <<= 3
        S |= si & 7
        E = cw[ei >> 3]
        E <<= 3
        E |= ei & 7
        E += 1
        R = S.size
        nz = E - S
    else:
        bi = np.flatnonzero(fb)
        cb = cw[bi >> 3]
        cb <<= 3
        cb |= bi & 7  # global byte position of every changed byte, ascending
        brk = np.empty(T, bool)
        brk[0] = True
        np.not_equal(cb[1:] - cb[:-1], 1, out=brk[1:])
        brk |= (cb & (ps - 1)) == 0
        st = np.flatnonzero(brk)
        R = st.size
        S = cb[st]  # first byte of each run
        nz = np.empty(R, np.int64)  # run length
        nz[:-1] = st[1:] - st[:-1]
        nz[-1] = T - st[-1]
        E = S + nz  # one past the run's last byte

    # zrun = distance from the previous run's end, or from the page start for a page's first run
    page = S >> shift
    base = page << shift
    prevE = np.empty(R, np.int64)
    prevE[0] = 0
    prevE[1:] = E[:-1]
    z = S - np.maximum(prevE, base, out=prevE)
    zb = z >= 128
    nb = nz >= 128
    nz_all = nz
    size = nz + 2
    size += zb
    size += nb

    # 4. per-page length and QEMU's overflow rule
    first = np.empty(R, bool)
    first[0] = True
    np.not_equal(page[1:], page[:-1], out=first[1:])
    fi = np.flatnonzero(first)
    pg = page[fi]
    L = np.add.reduceat(size, fi)
    last = np.empty_like(fi)
    last[:-1] = fi[1:] - 1
    last[-1] = R - 1
    trailing = (E[last] & (ps - 1)) != 0  # the page ends in an unchanged run
    ovf = (L > ps) | ((L >= ps - 1) & trailing)
    lengths[pg] = np.where(ovf, -1, L)
    keep_run = None
    if ovf.any():
        if ovf.all():
            return empty
        runs_per_page = np.empty_like(fi)
        runs_per_page[:-1] = fi[1:] - fi[:-1]
        runs_per_page[-1] = R - fi[-1]
        keep_run = np.repeat(~ovf, runs_per_page)
        z = z[keep_run]
        nz = nz[keep_run]
        zb = zb[keep_run]
        nb = nb[keep_run]
        size = size[keep_run]
        R = z.size

    # the changed bytes' new values, in order, without those of overflowing pages
    new_bytes = neww.view(np.uint8)
    if dense:
        if keep_run is not None:
            keep_page = np.ones(n, bool)
            keep_page[pg[ovf]] = False
            fb = (fb.reshape(k, 8) & keep_page[cw >> (shift - 3)][:, None]).reshape(-1)
        lit_vals = new_bytes[fb]
    else:
        lit_vals = new_bytes[bi]
        if keep_run is not None:
            lit_vals = lit_vals[np.repeat(keep_run, nz_all)]
    T = lit_vals.size

    # 5. placement: pair r occupies data[off[r] : off[r] + size[r]]
    off = np.cumsum(size)
    total = int(off[-1])
    off -= size
    data = np.empty(total, np.uint8)
    lit = np.ones(total, bool) if dense else None  # dense path: mask of literal bytes in data
    zb8 = zb.view(np.uint8)
    nb8 = nb.view(np.uint8)
    for count, big, big8 in ((z, zb, zb8), (nz, nb, nb8)):  # zrun header, then nzrun header
        data[off] = (count.astype(np.uint8) & 0x7F) | (big8 << 7)
        if lit is not None:
            lit[off] = False
        if big.any():
            o2 = off[big] + 1
            data[o2] = (count[big] >> 7).astype(np.uint8)
            if lit is not None:
                lit[o2] = False
        off += 1
        off += big8
    # off is now where each run's literal bytes start
    if lit is not None:
        data[lit] = lit_vals  # long runs: a predictable mask, cheap to apply
        return data
    # literal byte t of the batch goes to t + (header bytes up to and including its run)
    off -= np.cumsum(nz) - nz
    if R == T:  # every run is one byte long (scattered changes)
        dst = off
    else:
        runs = np.zeros(T, np.int64)
        runs[(np.cumsum(nz) - nz)[1:]] = 1
        np.cumsum(runs, out=runs)
        dst = off[runs]
    dst += np.arange(T)
    data[dst] = lit_vals
    return data


def encode_page(old: np.ndarray, new: np.ndarray) -> bytes | int:
    """One page: the encoding as bytes, or 0 (identical) / -1 (overflow) like QEMU's return value."""
    lengths, data, _ = encode_batch(old, new)
    if lengths.size != 1:
        raise ValueError("encode_page takes one page")
    L = int(lengths[0])
    return data.tobytes() if L > 0 else L


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
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8 or data.ndim != 1:
            data = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
        return data
    return np.frombuffer(data, np.uint8)


def _parse_record(buf: bytes, dlen: int) -> tuple[list[tuple[int, int, int]], tuple[str, int, str] | None]:
    """Walk one record with QEMU's checks, in QEMU's order.

    Returns the pairs as (page offset, record offset of the literal bytes, count) and, if the record
    is rejected, (reason, record offset of the failing header, detail).
    """
    runs: list[tuple[int, int, int]] = []
    slen = len(buf)
    i = d = 0
    while i < slen:
        if slen - i < 2:
            return runs, ("truncated-zrun", i, f" ({slen - i} left)")
        b0 = buf[i]
        if b0 < 0x80:
            z, zl = b0, 1
        else:
            b1 = buf[i + 1]
            if b1 >= 0x80:
                return runs, ("uleb-too-long", i, " (zrun)")
            z, zl = (b0 & 0x7F) | (b1 << 7), 2
        if i and not z:
            return runs, ("zero-zrun", i, "")
        d += z
        if d > dlen:
            return runs, ("zrun-past-page", i, f" (to {d} > {dlen})")
        j = i + zl
        if slen - j < 2:
            return runs, ("truncated-nzrun", j, f" ({slen - j} left)")
        c0 = buf[j]
        if c0 < 0x80:
            nz, nl = c0, 1
        else:
            c1 = buf[j + 1]
            if c1 >= 0x80:
                return runs, ("uleb-too-long", j, " (nzrun)")
            nz, nl = (c0 & 0x7F) | (c1 << 7), 2
        if not nz:
            return runs, ("zero-nzrun", j, "")
        if d + nz > dlen:
            return runs, ("nzrun-past-page", j, f" (to {d + nz} > {dlen})")
        if j + nl + nz > slen:
            return runs, ("nzrun-past-input", j, f" ({nz} bytes, {slen - j - nl} left)")
        runs.append((d, j + nl, nz))
        d += nz
        i = j + nl + nz
    return runs, None


def decode_page(
    data, page: np.ndarray, *, source: str | None = None, base_offset: int = 0, force_path: str | None = None
) -> None:
    """Apply one XBZRLE record (``data``: bytes, memoryview or uint8 array) to ``page`` in place.

    Zruns leave bytes untouched; nzruns overwrite them. The record is validated completely before
    the page is written, so a rejected record raises :class:`DecodeError` (``.reason``, and
    ``.offset`` = ``base_offset`` + position of the failing header in ``data``) and leaves ``page``
    as it was. ``page`` must be a writable uint8 array; its length is QEMU's ``dlen``.

    For one record a Python walk over the pair headers is fastest (the literal bytes are copied as
    numpy slices); use :func:`decode_batch` for many records.
    """
    if not isinstance(page, np.ndarray) or page.dtype != np.uint8 or page.ndim != 1:
        raise TypeError("page must be a 1-D uint8 numpy array")
    if not page.flags.writeable:
        raise ValueError("page is read-only")
    buf = _as_buffer(data)
    if force_path == "batch":  # (tests) the batch decoder on one record
        decode_batch(buf, [0], [buf.size], page.reshape(1, -1), source=source, base_offset=base_offset)
        return
    _apply_record(buf, page, source, base_offset, "")


def _apply_record(buf: np.ndarray, page: np.ndarray, source: str | None, offset: int, where: str) -> None:
    """One record, parsed in Python (cheapest for a single record), copies as numpy slices."""
    runs, err = _parse_record(buf.tobytes(), page.size)
    if err is not None:
        reason, at, detail = err
        raise _reject(reason, offset + at, source, detail + where)
    for d, s, c in runs:
        page[d : d + c] = buf[s : s + c]


_PAD = 4  # bytes after each record in the compact buffer: lets every header read stay in bounds


def _gather_records(buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy the records into one buffer, each followed by _PAD zero bytes. Returns (cbuf, cstart)."""
    n = lengths.size
    span = lengths + _PAD
    cstart = np.zeros(n, np.int64)
    np.cumsum(span[:-1], out=cstart[1:])
    M = int(cstart[-1] + span[-1])
    cbuf = np.zeros(M + _PAD, np.uint8)
    N = int(lengths.sum())
    if N == 0:
        return cbuf, cstart
    ends = starts + lengths
    if n == 1 or np.array_equal(starts[1:], ends[:-1]):  # back to back
        src = buf[int(starts[0]) : int(ends[-1])]
    elif bool(np.all(starts[1:] >= ends[:-1])):  # ordered and disjoint: select by mask
        lo, hi = int(starts[0]), int(ends[-1])
        nonempty = lengths > 0
        edge = np.zeros(hi - lo + 1, np.int8)  # +1 at record starts, -1 at ends: a running sum
        edge[starts[nonempty] - lo] = 1  # is 1 exactly inside the records
        edge[ends[nonempty] - lo] -= 1
        src = buf[lo:hi][np.cumsum(edge[:-1], dtype=np.int8).view(bool)]
    else:  # overlapping or out of order: gather by index
        idx = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        idx += np.arange(N)
        src = buf[idx]
    keep = np.ones(M, bool)
    keep[((cstart + lengths)[:, None] + np.arange(_PAD)).reshape(-1)] = False
    cbuf[:M][keep] = src
    return cbuf, cstart


class _Pairs:
    """Validated pairs to apply: flat[dst : dst + cnt] = src[lit : lit + cnt] (flat = all pages)."""

    __slots__ = ("src", "dst", "lit", "cnt")

    def __init__(self, src: np.ndarray, dst: np.ndarray, lit: np.ndarray, cnt: np.ndarray):
        self.src, self.dst, self.lit, self.cnt = src, dst, lit, cnt

    def select(self, keep: np.ndarray) -> "_Pairs":
        return _Pairs(self.src, self.dst[keep], self.lit[keep], self.cnt[keep])


def _walk_pairs(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, steps: int, dlen: int, adaptive: bool):
    """Decode up to ``steps`` pairs of every record, all records in step, with all of QEMU's checks.

    Cheap when records have few pairs (each step costs the same whatever the record lengths).
    ``adaptive``: give up after a step when the records look like they hold many more pairs.
    Returns (pairs, failed record ids, the unfinished records as (ids, position, page offset), and
    whether the walk gave up).
    """
    lim = buf.size - 1
    rec = np.flatnonzero(ends > starts)
    cur = starts[rec]
    end = ends[rec]
    d = np.zeros(rec.size, np.int64)
    out: list[tuple[np.ndarray, ...]] = []
    failed: list[np.ndarray] = []
    for step in range(steps):
        if rec.size == 0:
            break
        b0 = buf[cur]
        b1 = buf[np.minimum(cur + 1, lim)]
        zhi = b0 >> 7
        z = b1.astype(np.int64)
        z <<= 7
        z -= 128
        z *= zhi
        z += b0
        j = cur + 1 + zhi  # nzrun header
        c0 = buf[np.minimum(j, lim)]
        c1 = buf[np.minimum(j + 1, lim)]
        nhi = c0 >> 7
        nz = c1.astype(np.int64)
        nz <<= 7
        nz -= 128
        nz *= nhi
        nz += c0
        lit = j + 1 + nhi
        d += z
        bad = end - cur < 2
        bad |= (zhi & (b1 >> 7)).view(bool)
        if step:
            bad |= z == 0
        bad |= d > dlen
        bad |= end - j < 2
        bad |= (nhi & (c1 >> 7)).view(bool)
        bad |= nz == 0
        bad |= d + nz > dlen
        bad |= lit + nz > end
        if bad.any():
            failed.append(rec[bad])
            ok = np.flatnonzero(~bad)
            rec, cur, d, lit, nz, end = rec[ok], cur[ok], d[ok], lit[ok], nz[ok], end[ok]
        out.append((rec * dlen + d, lit, nz))
        pair_bytes = int((lit - cur).sum() + nz.sum())
        cur = lit + nz
        d += nz
        more = np.flatnonzero(cur < end)
        if more.size < rec.size:
            rec, cur, d, end = rec[more], cur[more], d[more], end[more]
        if adaptive and rec.size and int((end - cur).sum()) > 8 * pair_bytes:
            return _collect(buf, out, failed), (rec, cur, d), True
    return _collect(buf, out, failed), (rec, cur, d), False


def _collect(buf: np.ndarray, out: list, failed: list) -> tuple[_Pairs | None, np.ndarray]:
    pairs = None
    if out:
        pairs = _Pairs(buf, *(np.concatenate(col) for col in zip(*out)))
    fail = np.concatenate(failed) if failed else np.zeros(0, np.int64)
    return pairs, fail


def _scan_pairs(
    buf: np.ndarray, starts: np.ndarray, lengths: np.ndarray, d0: np.ndarray, first: bool, rows: np.ndarray, dlen: int
):
    """Decode records with any number of pairs: evaluate a pair at every byte position, then follow.

    Every position is evaluated as if a pair started there (its ULEBs, its size and every
    position-local check), which turns decoding into following a pointer ``nxt`` from each record
    start; all records are followed in step. The page-bound checks, which depend on the running page
    offset (starting at ``d0``), are then a cumulative sum along each chain. ``first``: the records
    start at their first pair (where QEMU allows a zero zrun). Record i goes to page ``rows[i]``.
    Returns (pairs, failed local record indexes).
    """
    n = lengths.size
    cbuf, cstart = _gather_records(buf, starts, lengths)
    M = cbuf.size - _PAD
    # Selections use masks and arithmetic, not np.where (which is branchy on random data).
    b0 = cbuf[0:M]
    b1 = cbuf[1 : M + 1]
    b2 = cbuf[2 : M + 2]
    zhi = b0 >> 7  # 1: two-byte zrun ULEB
    m = np.subtract(np.uint8(0), zhi)  # 0xff where zhi
    c0 = b2 & m
    c0 |= b1 & ~m  # first byte of the nzrun ULEB
    c1 = cbuf[3 : M + 3] & m
    c1 |= b2 & ~m
    nhi = c0 >> 7
    z = b1.astype(np.int32)  # zrun: b0 if zhi == 0 else (b0 - 128) + (b1 << 7)
    z <<= 7
    z -= 128
    z *= zhi
    z += b0
    nz = c1.astype(np.int32)
    nz <<= 7
    nz -= 128
    nz *= nhi
    nz += c0
    hdr = zhi + nhi
    hdr += 2  # header bytes of the pair
    step = nz + hdr
    rem = np.repeat((cstart + lengths).astype(np.int32), lengths + _PAD)
    rem -= np.arange(M, dtype=np.int32)  # bytes left in the record from here (<= 0 in the padding)
    # position-local failures (QEMU checks 1-3, 5-7 and the input half of 8); record ends stop too
    stop = rem < 2
    stop |= (zhi & (b1 >> 7)).view(bool)
    stop |= rem < zhi + 3
    stop |= (nhi & (c1 >> 7)).view(bool)
    stop |= nz == 0
    stop |= step > rem
    zz = z == 0
    if first:
        zz[cstart] = False  # a zero zrun is allowed at a record's first byte
    stop |= zz
    step *= ~stop
    nxt = np.arange(M, dtype=np.int64)
    nxt += step  # next pair, or the position itself where the chain stops

    # W[r, t]: the t-th node of record r; its terminal node (record end or failure) repeats.
    # A pair takes at least 3 bytes, so a record has at most len // 3 pairs.
    cap = int(lengths.max()) // 3 + 2
    W = np.empty((n, cap), np.int64)
    cur = cstart
    W[:, 0] = cur
    P = 1
    chunk = 4
    while P < cap:
        for _ in range(min(chunk, cap - P)):
            cur = nxt[cur]
            W[:, P] = cur
            P += 1
        if np.array_equal(cur, W[:, P - 2]):
            break
        chunk = 16
    W = np.ascontiguousarray(W[:, :P])
    term = W[:, -1]  # each record's terminal node: its end, or a local failure

    live = ~stop[W]  # a pair to apply (the terminal column never is)
    zn = z[W]
    zn *= live
    nzn = nz[W]
    nzn *= live
    zn += nzn
    d = np.cumsum(zn, axis=1, dtype=np.int32)  # page offset after each pair, from d0
    # Rejected: a local failure at the terminal, or the running page offset passing the page end
    # (QEMU checks 4 and 8). The offset only grows, so checking its final value is enough.
    fail = (rem[term] != 0) | (d[:, -1] + d0 > dlen)
    d -= nzn
    base = d0 + rows * dlen  # page offset -> position in all pages
    sel = np.flatnonzero(live)
    cnt = nzn.ravel()[sel]
    lit = W.ravel()[sel + 1]  # the next node ...
    lit -= cnt  # ... minus the literal bytes
    if int(base.max()) + dlen < 2**31:
        d += base.astype(np.int32)[:, None]
        dst = d.ravel()[sel]
    else:
        dst = (d + base[:, None]).ravel()[sel]
    return _Pairs(cbuf, dst, lit, cnt), np.flatnonzero(fail)


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
    untouched. ``pages`` is a writable uint8 array (n, page_size).

    The batch is parsed with array operations over all records at once: first pair by pair in step
    (cheap while records have few pairs), then, for records with many pairs, by evaluating a pair at
    every byte position and following the chains (see ``_scan_pairs``). A handful of records are
    decoded one by one. ``force_path`` ("loop", "walk", "walk4" or "scan") pins one strategy, for
    tests.
    """
    buf = _as_buffer(data)
    if not isinstance(pages, np.ndarray) or pages.dtype != np.uint8 or pages.ndim != 2:
        raise TypeError("pages must be a (n, page_size) uint8 numpy array")
    if not pages.flags.writeable:
        raise ValueError("pages is read-only")
    starts = np.asarray(starts, np.int64).reshape(-1)
    lengths = np.asarray(lengths, np.int64).reshape(-1)
    n, ps = pages.shape
    if starts.size != n or lengths.size != n:
        raise ValueError(f"{n} pages but {starts.size} starts and {lengths.size} lengths")
    if n == 0:
        return
    ends = starts + lengths
    if int(starts.min()) < 0 or int(lengths.min()) < 0 or int(ends.max()) > buf.size:
        raise ValueError("a record lies outside data")
    _decode_records(buf, starts, lengths, pages, source, base_offset, force_path)


_CHUNK_BYTES = 1 << 18  # record bytes per scan of the batch decoder (keeps its arrays cache-sized)


def _decode_records(
    buf: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    pages: np.ndarray,
    source: str | None,
    base_offset: int,
    force_path: str | None,
) -> None:
    n, ps = pages.shape
    ends = starts + lengths
    dlen = ps
    if force_path == "loop" or (force_path is None and n <= 4):  # a handful: one by one is cheaper
        for k in range(n):
            rec_buf = buf[int(starts[k]) : int(ends[k])]
            try:
                _apply_record(rec_buf, pages[k], source, base_offset + int(starts[k]), f" (record {k})")
            except DecodeError as e:
                e.record = k  # type: ignore[attr-defined]
                raise
        return

    found: list[_Pairs] = []
    failed = np.zeros(n, bool)
    if force_path == "scan" or (force_path is None and int(lengths.sum()) < 256 * n):
        rec, cur, d, first = np.arange(n), starts, np.zeros(n, np.int64), True  # short records
    else:  # long records may still have few pairs: walk pair by pair while that stays cheap
        if force_path == "walk":
            steps, adaptive = 1 << 30, False
        elif force_path == "walk4":  # (tests) walk 4 pairs, then scan the rest of each record
            steps, adaptive = 4, False
        else:
            steps, adaptive = 16, True
        (pairs, fail), (rec, cur, d), gave_up = _walk_pairs(buf, starts, ends, steps, dlen, adaptive)
        failed[fail] = True
        first = False
        if gave_up:  # many pairs: scan the unfinished records from their start instead
            if pairs is not None:
                mine = np.ones(n, bool)
                mine[rec] = False
                pairs = pairs.select(np.flatnonzero(mine[pairs.dst // ps]))
            cur, d, first = starts[rec], np.zeros(rec.size, np.int64), True
        if pairs is not None:
            found.append(pairs)
    if rec.size:  # scanned in chunks of records, by bytes
        todo = ends[rec] - cur
        window = (np.cumsum(todo) - todo) // _CHUNK_BYTES
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(window)) + 1, [rec.size])).tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            pairs, fail = _scan_pairs(buf, cur[a:b], todo[a:b], d[a:b], first, rec[a:b], dlen)
            failed[rec[a:b][fail]] = True
            found.append(pairs)
    bad = np.flatnonzero(failed)
    first_bad = int(bad[0]) if bad.size else n

    # Apply the pairs of every record before the first rejected one.
    flat = pages.reshape(-1) if pages.flags.c_contiguous else np.ascontiguousarray(pages).reshape(-1)
    for p in found:
        if first_bad < n:
            p = p.select(np.flatnonzero(p.dst < first_bad * ps))
        if p.cnt.size:
            _copy_runs(flat, p.dst, p.src, p.lit, p.cnt)
    if not pages.flags.c_contiguous:
        pages[...] = flat.reshape(n, ps)

    if first_bad < n:
        k = first_bad
        rec_bytes = buf[int(starts[k]) : int(ends[k])].tobytes()
        _, err = _parse_record(rec_bytes, dlen)
        if err is None:  # pragma: no cover - the parsers disagree
            raise AssertionError(f"XBZRLE batch decoder rejected record {k}, which QEMU's rules accept")
        reason, at, detail = err
        e = _reject(reason, base_offset + int(starts[k]) + at, source, f"{detail} (record {k})")
        e.record = k  # type: ignore[attr-defined]
        raise e


def _copy_runs(flat: np.ndarray, dst: np.ndarray, src_buf: np.ndarray, src: np.ndarray, cnt: np.ndarray) -> None:
    """flat[dst[i] : dst[i] + cnt[i]] = src_buf[src[i] : src[i] + cnt[i]] for every i."""
    R = cnt.size
    T = int(cnt.sum())
    if R > 32 and T < 64 * R:
        k = 0
        if T <= 2 * R:  # mostly single bytes: copy byte k of every run at once, k = 0, 1, ...
            while True:
                flat[dst + k] = src_buf[src + k]
                k += 1
                more = np.flatnonzero(cnt > k)
                if more.size < cnt.size:
                    dst, src, cnt = dst[more], src[more], cnt[more]
                if cnt.size <= 32 or k == 4:
                    break
        if cnt.size > 32:  # (the rest of) many short runs: by index arithmetic
            cnt = cnt - k
            T = int(cnt.sum())
            shift = np.cumsum(cnt)
            shift -= cnt
            shift -= k
            s = np.repeat(src - shift, cnt)
            t = np.repeat(dst - shift, cnt)
            ar = np.arange(T)
            s += ar
            t += ar
            flat[t] = src_buf[s]
            return
        dst = dst + k
        src = src + k
        cnt = cnt - k
    for a, b, c in zip(dst.tolist(), src.tolist(), cnt.tolist()):  # few or long runs: slices
        flat[a : a + c] = src_buf[b : b + c]
