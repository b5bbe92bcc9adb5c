"""A C reference for the XBZRLE kernels, compiled at bench time (gcc -O2) and called through ctypes.

The C below is written for this bench from the format and the acceptance rules described in
``pagecodec/codecs/xbzrle_kernel.py`` (not copied from QEMU); it does what QEMU 7.2's scalar
``xbzrle_decode_buffer`` / ``xbzrle_encode_buffer`` do (migration/xbzrle.c): the decoder applies
``zrun nzrun literal`` pairs straight onto the page, with QEMU's checks in QEMU's order (so a rejected
record may leave the page partly patched, as in QEMU), and memcpy for the literal bytes; the encoder
is QEMU's scalar loop (byte steps up to word alignment of the remaining length, then word compares,
the has-zero-byte test for the end of a changed run). Each entry point loops over a batch of records
or pages in C, so one ctypes call covers the batch and the Python call is not charged per page.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile

import numpy as np

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>

/* ULEB128 of at most two bytes: the value, or -1 if a second byte has its top bit set. */
static inline int get_uleb_small(const uint8_t *p, uint32_t *val)
{
    uint8_t b0 = p[0];
    if (!(b0 & 0x80)) {
        *val = b0;
        return 1;
    }
    if (p[1] & 0x80)
        return -1;
    *val = (uint32_t)(b0 & 0x7f) | ((uint32_t)p[1] << 7);
    return 2;
}

static inline int put_uleb_small(uint8_t *p, uint32_t v)
{
    if (v < 0x80) {
        p[0] = (uint8_t)v;
        return 1;
    }
    p[0] = (uint8_t)((v & 0x7f) | 0x80);
    p[1] = (uint8_t)(v >> 7);
    return 2;
}

/* One record src[0:slen] applied onto dst[0:dlen]: the decoded length, or -1 (rejected). */
int ref_decode(const uint8_t *src, int slen, uint8_t *dst, int dlen)
{
    int pos = 0, out = 0, n;
    uint32_t run;

    while (pos < slen) {
        if (slen - pos < 2)                       /* room for the zrun header */
            return -1;
        n = get_uleb_small(src + pos, &run);
        if (n < 0 || (pos != 0 && run == 0))      /* too long, or empty zrun after the first */
            return -1;
        pos += n;
        out += run;
        if (out > dlen)
            return -1;

        if (slen - pos < 2)                       /* room for the nzrun header */
            return -1;
        n = get_uleb_small(src + pos, &run);
        if (n < 0 || run == 0)
            return -1;
        pos += n;
        if (out + (int)run > dlen || pos + (int)run > slen)
            return -1;
        memcpy(dst + out, src + pos, run);
        out += run;
        pos += run;
    }
    return out;
}

/* Record k = buf[starts[k] : starts[k] + lens[k]] onto pages + k * ps, in order; stops at the
   first rejected record. Returns the number of records applied. */
long ref_decode_batch(const uint8_t *buf, const int64_t *starts, const int64_t *lens,
                      uint8_t *pages, long n, int ps)
{
    for (long k = 0; k < n; k++)
        if (ref_decode(buf + starts[k], (int)lens[k], pages + k * (long)ps, ps) < 0)
            return k;
    return n;
}

/* QEMU's scalar encoder with slen = dlen = len: the length, 0 (unchanged) or -1 (overflow). */
int ref_encode(const uint8_t *oldp, const uint8_t *newp, int len, uint8_t *dst, int dlen)
{
    int pos = 0, out = 0;
    const int W = (int)sizeof(unsigned long);

    while (pos < len) {
        int z0 = pos, rem;
        if (out + 2 > dlen)
            return -1;
        rem = (len - pos) % W;                    /* bytewise until the rest is whole words */
        while (rem && oldp[pos] == newp[pos]) {
            pos++;
            rem--;
        }
        if (!rem) {
            unsigned long a, b;
            while (pos < len) {
                memcpy(&a, oldp + pos, W);
                memcpy(&b, newp + pos, W);
                if (a != b)
                    break;
                pos += W;
            }
            while (pos < len && oldp[pos] == newp[pos])
                pos++;
        }
        if (pos - z0 == len)
            return 0;
        if (pos == len)                           /* an unchanged tail is not sent */
            return out;
        out += put_uleb_small(dst + out, (uint32_t)(pos - z0));

        int n0 = pos;
        if (out + 2 > dlen)
            return -1;
        rem = (len - pos) % W;
        while (rem && oldp[pos] != newp[pos]) {
            pos++;
            rem--;
        }
        if (!rem) {
            const unsigned long ones = (unsigned long)0x0101010101010101ULL;
            unsigned long a, b, x;
            while (pos < len) {
                memcpy(&a, oldp + pos, W);
                memcpy(&b, newp + pos, W);
                x = a ^ b;
                if ((x - ones) & ~x & (ones << 7)) {   /* an equal byte in this word */
                    while (oldp[pos] != newp[pos])
                        pos++;
                    break;
                }
                pos += W;
            }
        }
        int nz = pos - n0;
        out += put_uleb_small(dst + out, (uint32_t)nz);
        if (out + nz > dlen)
            return -1;
        memcpy(dst + out, newp + n0, nz);
        out += nz;
    }
    return out;
}

/* Page k of newp against page k of oldp for every k: lengths[k], encodings back to back in dst
   (each page's output area is ps bytes, as QEMU's encoded_buf). Returns the bytes used. */
long ref_encode_batch(const uint8_t *oldp, const uint8_t *newp, long n, int ps,
                      uint8_t *dst, int32_t *lengths)
{
    long used = 0;
    for (long k = 0; k < n; k++) {
        int L = ref_encode(oldp + k * (long)ps, newp + k * (long)ps, ps, dst + used, ps);
        lengths[k] = L;
        if (L > 0)
            used += L;
    }
    return used;
}
"""

_lib = None


def load() -> ctypes.CDLL:
    """Compile the C reference with gcc -O2 into a temporary shared object and load it (once)."""
    global _lib
    if _lib is not None:
        return _lib
    d = tempfile.mkdtemp(prefix="xbzrle-cref-")
    src = os.path.join(d, "xbzrle_ref.c")
    so = os.path.join(d, "xbzrle_ref.so")
    with open(src, "w") as f:
        f.write(C_SOURCE)
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", so, src], check=True)
    lib = ctypes.CDLL(so)
    P = ctypes.c_void_p
    lib.ref_decode_batch.argtypes = (P, P, P, P, ctypes.c_long, ctypes.c_int)
    lib.ref_decode_batch.restype = ctypes.c_long
    lib.ref_encode_batch.argtypes = (P, P, ctypes.c_long, ctypes.c_int, P, P)
    lib.ref_encode_batch.restype = ctypes.c_long
    _lib = lib
    return lib


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def decode_batch(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, pages: np.ndarray) -> int:
    """Apply the records to the pages in C (one call); returns the number applied."""
    lib = load()
    return lib.ref_decode_batch(_ptr(buf), _ptr(starts), _ptr(lens), _ptr(pages), pages.shape[0], pages.shape[1])


def decoder(buf: np.ndarray, starts: np.ndarray, lens: np.ndarray, pages: np.ndarray):
    """A no-argument callable decoding the batch in C, with the ctypes arguments prepared once."""
    lib = load()
    f = lib.ref_decode_batch
    args = (_ptr(buf), _ptr(starts), _ptr(lens), _ptr(pages), pages.shape[0], pages.shape[1])
    return lambda: f(*args)


def encoder(old: np.ndarray, new: np.ndarray):
    """(callable encoding the batch in C, dst, lengths): the callable fills dst and lengths."""
    lib = load()
    n, ps = old.shape
    dst = np.empty(n * ps, np.uint8)
    lengths = np.empty(n, np.int32)
    f = lib.ref_encode_batch
    args = (_ptr(old), _ptr(new), n, ps, _ptr(dst), _ptr(lengths))
    return (lambda: f(*args)), dst, lengths
