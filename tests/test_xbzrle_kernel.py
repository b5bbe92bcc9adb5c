"""XBZRLE kernels against QEMU 7.2's own encoder output and a literal model of its C code.

The reference vectors (``shared/vectors/xbzrle-qemu72.bin``) were produced by QEMU's scalar
``xbzrle_encode_buffer`` with slen = dlen = 4096. Six rows (``avx512-*`` categories) mark inputs on
which QEMU 8.0+'s AVX512 encoder disagrees with the scalar one: four where AVX512 accepts an encoding
of 4095/4096 bytes that ends in an unchanged run (scalar: -1, because its ``d + 2 > dlen`` check at
the top of the loop fires before it sees the trailing run), and two where AVX512 writes past
``dlen``. pagecodec follows the scalar result (QEMU 7.2 has only the scalar encoder), so those rows
must come out as -1 here too.
"""

from __future__ import annotations

import csv
import hashlib
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hyp import examples

import pagecodec.codecs.xbzrle_kernel as kernel
import xbzrle_reference as ref
from pagecodec.codecs.xbzrle_kernel import (
    ENCODING_FLAG_XBZRLE,
    check_record_header,
    decode_batch,
    decode_page,
    decode_record_length_ok,
    encode_batch,
    encode_page,
)
from pagecodec.errors import DecodeError

VECTORS_SHA256 = "f71b6b746954e4a9e07ec36b450d5b3df59ff5064ba04a3880d303efc1aa8f04"
PS = 4096
DECODE_PATHS = (None, "py")  # the compiled decoder, and its Python source run by the interpreter


def shared_dir() -> Path:
    env = os.environ.get("PAGECODEC_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


# ----------------------------------------------------------------------------------------------------
# reference vectors
# ----------------------------------------------------------------------------------------------------


class Vectors:
    def __init__(self, raw: bytes, rows: list[dict]):
        olds, news, lens, encs = [], [], [], []
        p = 0
        while p < len(raw):
            olds.append(raw[p : p + PS])
            news.append(raw[p + PS : p + 2 * PS])
            (L,) = struct.unpack_from("<i", raw, p + 2 * PS)
            p += 2 * PS + 4
            encs.append(raw[p : p + max(L, 0)])
            p += max(L, 0)
            lens.append(L)
        self.old = np.frombuffer(b"".join(olds), np.uint8).reshape(-1, PS)
        self.new = np.frombuffer(b"".join(news), np.uint8).reshape(-1, PS)
        self.lens = np.array(lens, np.int32)
        self.encs = encs
        self.rows = rows
        self.olds, self.news = olds, news


@pytest.fixture(scope="module")
def vectors() -> Vectors:
    path = shared_dir() / "vectors" / "xbzrle-qemu72.bin"
    csv_path = path.with_suffix(".csv")
    if not path.is_file() or not csv_path.is_file():
        pytest.fail(f"XBZRLE reference vectors missing: {path} (set PAGECODEC_SHARED to the shared directory)")
    raw = path.read_bytes()
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    v = Vectors(raw, rows)
    v.sha256 = hashlib.sha256(raw).hexdigest()
    return v


def test_vectors_file_is_the_published_one(vectors):
    assert vectors.sha256 == VECTORS_SHA256
    assert len(vectors.lens) == 2000
    assert [int(r["encoded_len"]) for r in vectors.rows] == vectors.lens.tolist()
    assert all(r["decode_ok"] == "1" for r in vectors.rows)


@pytest.mark.parametrize("path", [None, "py"])
def test_encode_batch_reproduces_every_vector(vectors, path):
    idx = np.arange(2000) if path is None else np.arange(0, 2000, 37)  # (the interpreted kernel is slow)
    lengths, data, starts = encode_batch(vectors.old[idx], vectors.new[idx], force_path=path)
    assert lengths.dtype == np.int32 and starts.dtype == np.int64 and data.dtype == np.uint8
    want = vectors.lens[idx]
    np.testing.assert_array_equal(lengths, want)
    for j, i in enumerate(idx.tolist()):
        if want[j] > 0:
            assert data[starts[j] : starts[j] + want[j]].tobytes() == vectors.encs[i], f"case {i}"
    assert data.size == int(want[want > 0].sum())


def test_encode_batch_in_uneven_chunks(vectors):
    """Batch boundaries must not matter (runs never cross pages, whatever the batch)."""
    i = 0
    for size in [1, 2, 3, 7, 64, 255, 256, 1, 400, 1011]:
        j = min(i + size, 2000)
        lengths, data, starts = encode_batch(vectors.old[i:j], vectors.new[i:j])
        np.testing.assert_array_equal(lengths, vectors.lens[i:j])
        for k in range(j - i):
            if lengths[k] > 0:
                assert data[starts[k] : starts[k] + lengths[k]].tobytes() == vectors.encs[i + k]
        i = j


def test_reference_encoder_reproduces_every_vector(vectors):
    for i in range(2000):
        got = ref.encode(vectors.olds[i], vectors.news[i])
        want = vectors.encs[i] if vectors.lens[i] > 0 else int(vectors.lens[i])
        assert got == want, f"case {i}"


def _canonical(old: bytes, new: bytes) -> tuple[int, bool]:
    """(length without any dlen limit, page ends in an unchanged run)."""
    enc = ref.encode(old, new, dlen=1 << 30)
    return (0 if enc == 0 else len(enc)), old[-1] == new[-1]


def test_overflow_rule_on_vectors(vectors):
    """-1 exactly when L > 4096, or L >= 4095 and the page ends unchanged (QEMU's d + 2 > dlen)."""
    hits = {"over": 0, "trailing": 0, "accepted_4095_4096": 0}
    for i in range(2000):
        L, trailing = _canonical(vectors.olds[i], vectors.news[i])
        overflow = L > PS or (L >= PS - 1 and trailing)
        assert (vectors.lens[i] == -1) == overflow, f"case {i}: L={L} trailing={trailing}"
        if not overflow:
            assert vectors.lens[i] == L
        hits["over"] += L > PS
        hits["trailing"] += (L in (PS - 1, PS)) and trailing
        hits["accepted_4095_4096"] += (L in (PS - 1, PS)) and not trailing
    # the vectors exercise every branch of the rule
    assert all(v > 0 for v in hits.values()), hits


def test_avx512_rows_follow_the_scalar_encoder(vectors):
    rows = [r for r in vectors.rows if r["category"].startswith("avx512")]
    assert len(rows) == 6
    idx = [int(r["index"]) for r in rows]
    lengths, _, _ = encode_batch(vectors.old[idx], vectors.new[idx])
    assert lengths.tolist() == [-1] * 6
    assert any(int(r["avx512_len"]) > 0 for r in rows)  # where AVX512 would have accepted


def test_decoders_rebuild_every_positive_vector(vectors):
    pos = np.flatnonzero(vectors.lens > 0)
    data = b"".join(vectors.encs[i] for i in pos)
    lens = vectors.lens[pos].astype(np.int64)
    starts = np.cumsum(lens) - lens
    pages = vectors.old[pos].copy()
    decode_batch(data, starts, lens, pages)
    np.testing.assert_array_equal(pages, vectors.new[pos])
    some = slice(None, None, 16)  # the interpreted kernel is slow: every 16th record
    pages = vectors.old[pos[some]].copy()
    decode_batch(data, starts[some], lens[some], pages, force_path="py")
    np.testing.assert_array_equal(pages, vectors.new[pos[some]])
    for n, i in enumerate(pos.tolist()):
        for path in DECODE_PATHS if n % 16 == 0 else (None,):
            page = vectors.old[i].copy()
            decode_page(vectors.encs[i], page, force_path=path)
            assert np.array_equal(page, vectors.new[i]), (i, path)
        assert ref.decode(vectors.encs[i], vectors.olds[i]) == vectors.news[i]


# ----------------------------------------------------------------------------------------------------
# property tests
# ----------------------------------------------------------------------------------------------------


@st.composite
def page_pairs(draw, page_sizes=(8, 16, 64, 256, 4096), max_pages=6):
    """Batches of (old, new) pages: random content, changes in runs (clustered, scattered, dense)."""
    ps = draw(st.sampled_from(page_sizes))
    n = draw(st.integers(1, max_pages))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, (n, ps), dtype=np.uint8)
    if draw(st.booleans()):
        old[:] = 0
    new = old.copy()
    for k in range(n):
        kind = draw(st.sampled_from(["same", "runs", "scatter", "dense", "all", "edges"]))
        if kind == "runs":
            for s, ln in draw(st.lists(st.tuples(st.integers(0, ps - 1), st.integers(1, 300)), max_size=8)):
                new[k, s : s + ln] ^= rng.integers(1, 256, min(ln, ps - s), dtype=np.uint8)
        elif kind in ("scatter", "dense"):
            p = draw(st.sampled_from([0.01, 0.1, 0.3])) if kind == "scatter" else draw(
                st.sampled_from([0.5, 0.66, 0.9])
            )
            m = rng.random(ps) < p
            new[k, m] ^= rng.integers(1, 256, int(m.sum()), dtype=np.uint8)
        elif kind == "all":
            new[k] ^= rng.integers(1, 256, ps, dtype=np.uint8)
        elif kind == "edges":
            new[k, 0] ^= 1
            new[k, -1] ^= 0x80
            new[k, ps // 2 - 1 : ps // 2 + 1] ^= 7
    return old, new


def _check_against_reference(old, new, result):
    lengths, data, starts = result
    for k in range(old.shape[0]):
        want = ref.encode(old[k].tobytes(), new[k].tobytes())
        if isinstance(want, bytes):
            assert lengths[k] == len(want)
            assert data[starts[k] : starts[k] + lengths[k]].tobytes() == want
        else:
            assert lengths[k] == want


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page_pairs())
def test_encode_batch_matches_reference(pair):
    old, new = pair
    _check_against_reference(old, new, encode_batch(old, new))
    if old.shape[1] <= 256:  # (the interpreted kernel is slow)
        _check_against_reference(old, new, encode_batch(old, new, force_path="py"))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page_pairs())
def test_decode_inverts_encode(pair):
    old, new = pair
    lengths, data, starts = encode_batch(old, new)
    pos = np.flatnonzero(lengths > 0)
    assume(pos.size)
    paths = DECODE_PATHS if old.shape[1] <= 256 else (None,)  # (the interpreted kernel is slow)
    for path in paths:
        pages = old[pos].copy()
        decode_batch(data, starts[pos], lengths[pos], pages, force_path=path)
        np.testing.assert_array_equal(pages, new[pos])
    for k in pos.tolist():
        for path in paths:
            page = old[k].copy()
            decode_page(data[starts[k] : starts[k] + lengths[k]], page, force_path=path)
            np.testing.assert_array_equal(page, new[k])


@st.composite
def near_boundary(draw):
    """64-byte pages whose canonical encoding is within a few bytes of the page size."""
    ps = 64
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    old = rng.integers(0, 256, ps, dtype=np.uint8)
    mask = np.array(draw(st.lists(st.booleans(), min_size=ps, max_size=ps)))
    new = old.copy()
    new[mask] ^= rng.integers(1, 256, int(mask.sum()), dtype=np.uint8)
    return old, new


@settings(max_examples=examples(400), deadline=None)
@given(near_boundary())
def test_overflow_rule_matches_reference(pair):
    old, new = pair
    L, trailing = _canonical(old.tobytes(), new.tobytes())
    got = encode_page(old, new)
    want = ref.encode(old.tobytes(), new.tobytes())
    assert got == want
    assert (got == -1) == (L > 64 or (L >= 63 and trailing))


def test_encode_page_examples():
    old = np.zeros(PS, np.uint8)
    new = old.copy()
    assert encode_page(old, new) == 0
    new[5] = 1
    assert encode_page(old, new) == bytes([5, 1, 1])
    new[200:330] = 9  # zrun 194 and nzrun 130 take two ULEB bytes each
    assert encode_page(old, new) == bytes([5, 1, 1, 0xC2, 0x01, 0x82, 0x01]) + b"\x09" * 130
    new[:] = 0xFF  # whole page: 1 + 2 + 4096 bytes > 4096
    assert encode_page(old, new) == -1


def test_encode_input_handling():
    # strided and read-only inputs are fine
    pages = np.zeros((4, 2 * PS), np.uint8)
    pages.flags.writeable = False
    new = np.zeros((4, PS), np.uint8)
    new[1, 10] = 3
    lengths, data, starts = encode_batch(pages[:, ::2], new)
    assert lengths.tolist() == [0, 3, 0, 0] and data.tobytes() == bytes([10, 1, 3])
    with pytest.raises(ValueError):
        encode_batch(np.zeros((2, PS), np.uint8), np.zeros((3, PS), np.uint8))
    with pytest.raises(TypeError):
        encode_batch(np.zeros((2, PS), np.int16), np.zeros((2, PS), np.int16))
    with pytest.raises(ValueError):
        encode_batch(np.zeros((2, 100), np.uint8), np.zeros((2, 100), np.uint8))
    lengths, data, starts = encode_batch(np.zeros((0, PS), np.uint8), np.zeros((0, PS), np.uint8))
    assert lengths.size == 0 and data.size == 0


# ----------------------------------------------------------------------------------------------------
# decoder rejections: one test per rule (reason, reported offset, page untouched, every path)
# ----------------------------------------------------------------------------------------------------


def _qemu_verdict(data: bytes, dlen: int) -> tuple[str, int] | None:
    """The first of QEMU's checks that ``data`` fails, as (reason, offset of the ULEB), or None.

    An independent walk in QEMU's order (xbzrle_decode_buffer), the oracle for ``.reason``/``.offset``.
    """
    slen = len(data)
    i = d = 0
    while i < slen:
        if slen - i < 2:
            return "truncated-zrun", i
        z, n = ref.uleb_decode(data, i)
        if n < 0:
            return "uleb-too-long", i
        if i and not z:
            return "zero-zrun", i
        d += z
        if d > dlen:
            return "zrun-past-page", i
        j = i + n
        if slen - j < 2:
            return "truncated-nzrun", j
        nz, n = ref.uleb_decode(data, j)
        if n < 0:
            return "uleb-too-long", j
        if not nz:
            return "zero-nzrun", j
        if d + nz > dlen:
            return "nzrun-past-page", j
        if j + n + nz > slen:
            return "nzrun-past-input", j
        d += nz
        i = j + n + nz
    return None


_COMPANIONS: dict[int, tuple[np.ndarray, np.ndarray, bytes]] = {}


def _companion(ps: int) -> tuple[np.ndarray, np.ndarray, bytes]:
    """(old, new, record): a valid record with many pairs (every 4th byte changed) for ps-byte pages."""
    if ps not in _COMPANIONS:
        old = np.random.default_rng(ps).integers(0, 256, ps, dtype=np.uint8)
        new = old.copy()
        new[::4] ^= 0x5A
        enc = encode_page(old, new)
        assert isinstance(enc, bytes)
        _COMPANIONS[ps] = old, new, enc
    return _COMPANIONS[ps]


def _decode_everywhere(data: bytes, page: np.ndarray, base: int = 1000, py: bool = True):
    """Decode ``data`` onto ``page`` in every way; return each outcome's (reason, offset), None = accepted.

    Every way must agree with QEMU (tests/xbzrle_reference.py) on acceptance and on the page, and
    with ``_qemu_verdict`` on the rejection; a rejected record must leave its page untouched. The
    ways: decode_page; decode_batch on the record alone (ending ``data``, so copies near the end of
    the buffer are exercised); and decode_batch on the record between records with many pairs, so
    that it is decoded alongside one of them (the compiled kernel decodes such records in pairs).
    """
    want = ref.decode(data, page.tobytes())
    verdict = _qemu_verdict(data, page.size)
    assert (want is None) == (verdict is not None)
    outcomes = []

    def check(run, p, at, record=None):
        try:
            run()
        except DecodeError as e:
            assert np.array_equal(p, page), "page changed by a rejected record"
            assert (e.reason, e.offset - at) == verdict
            if record is not None:
                assert e.record == record
            outcomes.append((e.reason, e.offset - at + base))
            return
        assert want is not None and p.tobytes() == want
        outcomes.append(None)

    for path in DECODE_PATHS if py else (None,):
        p = page.copy()
        check(lambda: decode_page(data, p, source="vm.mig", base_offset=base, force_path=path), p, base)
        p = page.copy()
        check(
            lambda: decode_batch(b"\xaa" * 5 + data, [5], [len(data)], p.reshape(1, -1), source="vm.mig",
                                 base_offset=base - 5, force_path=path),
            p, base, 0,
        )
    c_old, c_new, comp = _companion(page.size)
    for before, after in ((1, 1), (0, 1), (2, 0)):  # companions before / after the record
        recs = [comp] * before + [data] + [comp] * after
        lens = [len(r) for r in recs]
        starts = np.cumsum(lens) - lens
        pages = np.stack([c_old] * before + [page] + [c_old] * after)
        p = pages[before]  # a view: check() compares it with page
        check(lambda: decode_batch(b"".join(recs), starts, lens, pages, base_offset=base), p,
              base + int(starts[before]), before)
        for k in range(before):  # applied
            np.testing.assert_array_equal(pages[k], c_new)
        for k in range(before + 1, before + 1 + after):  # applied if the record was, else untouched
            np.testing.assert_array_equal(pages[k], c_new if outcomes[-1] is None else c_old)
    return outcomes


VALID_PAIR = bytes([3, 2, 0xAB, 0xCD])  # zrun 3, nzrun 2
REJECTIONS = [
    ("truncated-zrun", b"\x05", 0),
    ("truncated-zrun", VALID_PAIR + b"\x01", 4),
    ("uleb-too-long", b"\x80\x80\x01\x01\x00", 0),
    ("uleb-too-long", b"\x01\xff\x80\x01", 1),
    ("zero-zrun", VALID_PAIR + b"\x00\x01\x33", 4),
    ("zero-zrun", VALID_PAIR + b"\x80\x00\x01\x33", 4),  # a non-canonical two-byte zero
    ("zrun-past-page", b"\x81\x20\x01\x00", 0),  # zrun 4097
    ("zrun-past-page", VALID_PAIR + b"\xff\x1f\x01\x00", 4),  # 5 + 4095 > 4096
    ("truncated-nzrun", b"\x05\x01", 1),
    ("truncated-nzrun", b"\x81\x01\x02", 2),
    ("zero-nzrun", b"\x05\x00\x00", 1),
    ("zero-nzrun", b"\x05\x80\x00\x00", 1),
    ("nzrun-past-page", b"\xff\x1f\x02\x00\x00", 2),  # zrun 4095 + nzrun 2
    ("nzrun-past-page", b"\x00\x81\x20" + b"\x00" * 4097, 1),  # nzrun 4097
    ("nzrun-past-input", b"\x00\x05abcd", 1),
    ("nzrun-past-input", VALID_PAIR + b"\x01\x83\x01" + b"x" * 100, 5),  # nzrun 131, 100 left
]
# The same rules deep inside a record with many pairs (the compiled kernel's one-pass path, where a
# common-looking pair is accepted by one combined test): 12 pairs "zrun 1, nzrun 1" first, which
# take 36 bytes and reach page offset 24.
MANY = bytes([1, 1, 0x41]) * 12
REJECTIONS_AFTER_MANY_PAIRS = [
    ("truncated-zrun", MANY + b"\x05", 36),
    ("truncated-zrun", MANY + b"\x85", 36),
    ("uleb-too-long", MANY + b"\x80\x80\x01\x01\x00", 36),
    ("uleb-too-long", MANY + b"\x01\xff\x80\x01", 37),
    ("uleb-too-long", MANY + b"\x01\x80\x80" + b"x" * 20, 37),
    ("zero-zrun", MANY + b"\x00\x01\x33" + MANY, 36),
    ("zero-zrun", MANY + b"\x80\x00\x01\x33" + MANY, 36),
    ("zrun-past-page", MANY + b"\xf0\x1f\x01\x00", 36),  # 24 + 4080 > 4096
    ("truncated-nzrun", MANY + b"\x05\x01", 37),
    ("truncated-nzrun", MANY + b"\x81\x01\x02", 38),
    ("zero-nzrun", MANY + b"\x05\x00\x00" + MANY, 37),
    ("zero-nzrun", MANY + b"\x85\x01\x00\x00" + MANY, 38),
    ("nzrun-past-page", MANY + b"\xe7\x1f\x02\x00\x00", 38),  # 24 + 4071 = 4095, + 2
    ("nzrun-past-input", MANY + b"\x01\x05abcd", 37),
    ("nzrun-past-input", MANY + b"\x81\x01\x10" + b"x" * 15, 38),  # two-byte zrun, nzrun 16, 15 left
]
ALL_REJECTIONS = REJECTIONS + REJECTIONS_AFTER_MANY_PAIRS
REJECTION_IDS = [f"{r[0]}@{r[2]}" for r in REJECTIONS] + [f"many-{r[0]}@{r[2]}" for r in REJECTIONS_AFTER_MANY_PAIRS]


@pytest.mark.parametrize("reason,data,offset", ALL_REJECTIONS, ids=REJECTION_IDS)
def test_decoder_rejects(reason, data, offset):
    page = np.random.default_rng(7).integers(0, 256, PS, dtype=np.uint8)
    assert ref.decode(data, page.tobytes()) is None  # QEMU rejects it too
    assert _qemu_verdict(data, PS) == (reason, offset)
    for out in _decode_everywhere(data, page):
        assert out == (reason, 1000 + offset)
    p = page.copy()
    with pytest.raises(DecodeError) as ei:
        decode_page(data, p, source="vm.mig", base_offset=1000)
    assert ei.value.source == "vm.mig"
    assert str(ei.value).startswith(f"vm.mig: offset {1000 + offset}: XBZRLE record rejected")


def test_every_rule_is_tested_inside_many_pairs():
    assert {r[0] for r in REJECTIONS_AFTER_MANY_PAIRS} == set(kernel.REJECT_REASONS) - {
        "bad-encoding-flag",
        "length-over-page",
    }


def test_rejection_messages():
    page = np.zeros(PS, np.uint8)
    want = {
        b"\x05": "fewer than 2 bytes left for a zrun header (1 left)",
        b"\x80\x80\x01\x01\x00": "ULEB128 longer than 2 bytes (zrun)",
        b"\x01\xff\x80\x01": "ULEB128 longer than 2 bytes (nzrun)",
        b"\x81\x20\x01\x00": "zrun runs past the end of the page (to 4097 > 4096)",
        b"\x81\x01\x02": "fewer than 2 bytes left for an nzrun header (1 left)",
        b"\xff\x1f\x02\x00\x00": "nzrun runs past the end of the page (to 4097 > 4096)",
        VALID_PAIR + b"\x01\x83\x01" + b"x" * 100: "nzrun runs past the end of the record (131 bytes, 100 left)",
    }
    for data, msg in want.items():
        for path in DECODE_PATHS:
            with pytest.raises(DecodeError) as ei:
                decode_page(data, page, force_path=path)
            assert str(ei.value) == f"offset {ei.value.offset}: XBZRLE record rejected: {msg}"
            with pytest.raises(DecodeError) as ei:
                decode_batch(data, [0], [len(data)], page.reshape(1, -1), force_path=path)
            assert str(ei.value).endswith(f"{msg} (record 0)")


def test_empty_record_is_accepted_and_changes_nothing():
    page = np.arange(PS, dtype=np.uint32).astype(np.uint8)
    assert ref.decode(b"", page.tobytes()) == page.tobytes()
    outcomes = _decode_everywhere(b"", page)
    assert outcomes == [None] * len(outcomes)


def test_first_pair_may_have_zero_zrun_and_pairs_may_reach_the_page_end():
    for data, head in ((b"\x00\x02ab" + b"\xfd\x1f\x01z", b"ab"), (MANY + b"\xe7\x1f\x01z", b"\x00A" * 12)):
        page = np.zeros(PS, np.uint8)  # ... 4095 = z
        assert _decode_everywhere(data, page) == [None] * 7
        decode_page(data, page)
        assert page[: len(head)].tobytes() == head and page[PS - 1] == ord("z")
        assert not page[len(head) : PS - 1].any()


@st.composite
def many_pair_records(draw):
    """Valid records with many pairs and run lengths around the kernel's limits (1, 15-17, 127-129)."""
    ps = draw(st.sampled_from([64, 256, 4096]))
    lens = st.sampled_from([1, 2, 15, 16, 17, 127, 128, 129, 300])
    out = bytearray()
    d = 0
    first = True
    while True:
        z = draw(st.sampled_from([0]) if first else lens)
        nz = draw(lens)
        if d + z + nz > ps:
            break
        out += ref.uleb_encode(z) + ref.uleb_encode(nz) + bytes(draw(st.binary(min_size=nz, max_size=nz)))
        d += z + nz
        first = False
        if draw(st.integers(0, 40)) == 0:
            break
    if d < ps and draw(st.booleans()):  # end exactly at the page end
        z = draw(st.integers(1, ps - d - 1)) if ps - d > 1 else 0
        if z or first:
            out += ref.uleb_encode(z) + ref.uleb_encode(ps - d - z) + bytes(ps - d - z)
    return ps, bytes(out)


@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(many_pair_records(), st.data())
def test_records_with_many_pairs_and_edge_run_lengths(rec, data):
    ps, enc = rec
    page = np.frombuffer(data.draw(st.binary(min_size=ps, max_size=ps)), np.uint8).copy()
    assert all(o is None for o in _decode_everywhere(enc, page, py=False))
    if data.draw(st.booleans()):  # and one damaged byte
        enc = bytearray(enc)
        if enc:
            at = data.draw(st.integers(0, len(enc) - 1))
            enc[at] = data.draw(st.sampled_from([0, 1, 16, 17, 0x7F, 0x80, 0x81, 0xFF]))
        _decode_everywhere(bytes(enc), page, py=False)


def test_decode_batch_applies_records_before_the_first_bad_one():
    rng = np.random.default_rng(3)
    pages = rng.integers(0, 256, (4, PS), dtype=np.uint8)
    recs = [b"\x01\x01A", b"\x02\x01B", b"\x05\x00\x00", b"\x03\x01C"]
    data = b"".join(recs)
    lens = [len(r) for r in recs]
    starts = np.cumsum(lens) - lens
    for path in DECODE_PATHS:
        p = pages.copy()
        with pytest.raises(DecodeError) as ei:
            decode_batch(data, starts, lens, p, base_offset=10, force_path=path)
        assert ei.value.record == 2 and ei.value.reason == "zero-nzrun"
        assert ei.value.offset == 10 + int(starts[2]) + 1
        assert p[0, 1] == ord("A") and p[1, 2] == ord("B")
        assert np.array_equal(p[0, 2:], pages[0, 2:]) and np.array_equal(p[2:], pages[2:])


def _pair_offsets(enc: bytes) -> list[int]:
    """Where each pair of a valid record starts."""
    out, i = [], 0
    while i < len(enc):
        out.append(i)
        _, n = ref.uleb_decode(enc, i)
        nz, m = ref.uleb_decode(enc, i + n)
        i += n + m + nz
    return out


@pytest.mark.parametrize("bad", [0, 1, 2, 3, 40, 41, 77])
@pytest.mark.parametrize("defect", ["early", "middle", "late"])
def test_decode_batch_first_bad_record_among_many(vectors, bad, defect):
    """The first-bad rule whatever the position: also among records with many pairs (finished in one pass through a scratch page)."""
    pos = [i for i in np.flatnonzero(vectors.lens > 0) if len(_pair_offsets(vectors.encs[i])) > 20][:80]
    assert len(pos) == 80
    recs = [vectors.encs[i] for i in pos]
    rec = recs[bad]
    if defect == "early":  # in the first pair
        recs[bad] = b"\x05\x00\x00" + rec
        reason, at = "zero-nzrun", 1
    elif defect == "middle":  # a pair with a zero zrun, half-way
        at = _pair_offsets(rec)[len(_pair_offsets(rec)) // 2]
        recs[bad] = rec[:at] + b"\x00\x01\x33" + rec[at:]
        reason = "zero-zrun"
    else:  # a lone byte where a zrun header should be
        recs[bad] = rec + b"\x05"
        reason, at = "truncated-zrun", len(rec)
    assert _qemu_verdict(recs[bad], PS) == (reason, at)
    data = b"".join(recs)
    lengths = np.array([len(r) for r in recs])
    starts = np.cumsum(lengths) - lengths
    pages = vectors.old[pos].copy()
    with pytest.raises(DecodeError) as ei:
        decode_batch(data, starts, lengths, pages)
    assert ei.value.record == bad and ei.value.reason == reason
    assert ei.value.offset == starts[bad] + at
    np.testing.assert_array_equal(pages[:bad], vectors.new[pos[:bad]])
    np.testing.assert_array_equal(pages[bad:], vectors.old[pos[bad:]])


def test_decode_batch_records_in_any_layout():
    """Records may overlap, repeat or be out of order in ``data``: each is read where it lies."""
    data = b"..\x01\x01A..\x00\x02BC"
    for path in DECODE_PATHS:
        pages = np.zeros((3, 16), np.uint8)
        decode_batch(data, [7, 2, 7], [4, 3, 4], pages, force_path=path)
        assert pages[0, :2].tobytes() == b"BC" and pages[1, 1] == ord("A") and pages[2, :2].tobytes() == b"BC"
        strided = np.zeros((3, 32), np.uint8)[:, ::2]  # not contiguous: still written in place
        decode_batch(data, [7, 2, 7], [4, 3, 4], strided, force_path=path)
        np.testing.assert_array_equal(strided, pages)
        wide = np.zeros((4, 32), np.uint8)  # ... and only up to the first bad record
        with pytest.raises(DecodeError) as ei:
            decode_batch(data + b"\x05", [7, 2, 11, 7], [4, 3, 1, 4], wide[:, ::2], force_path=path)
        assert ei.value.record == 2
        assert wide[0, 0:4:2].tobytes() == b"BC" and wide[1, 2] == ord("A") and not wide[2:].any()
        col = np.zeros((16, 2), np.uint8)[:, 1]
        decode_page(b"\x03\x01Z", col, force_path=path)
        assert col[3] == ord("Z") and col.sum() == ord("Z")
    as_words = np.frombuffer(b"\x03\x02YZ", np.uint32)  # any array is read as its bytes
    page = np.zeros(16, np.uint8)
    decode_page(as_words, page)
    assert page[3:5].tobytes() == b"YZ"
    with pytest.raises(ValueError):
        decode_batch(data, [12], [4], pages[:1])  # past the end of data
    with pytest.raises(ValueError):
        decode_batch(data, [0, 0], [1, 1], pages[:1])  # counts differ
    ro = np.zeros(16, np.uint8)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        decode_page(b"", ro)
    with pytest.raises(TypeError):
        decode_page(b"", np.zeros(16, np.int16))
    decode_batch(b"", [], [], np.zeros((0, 16), np.uint8))


def test_unknown_force_path_is_refused():
    page = np.zeros(16, np.uint8)
    for path in ("batch", "walk4", "fast"):  # the former numpy decoder's strategies are gone
        with pytest.raises(ValueError):
            decode_page(b"\x03\x01Z", page, force_path=path)
        with pytest.raises(ValueError):
            decode_batch(b"\x03\x01Z", [0], [3], page.reshape(1, -1), force_path=path)
    assert not page.any()


def test_numba_is_imported_and_the_kernel_compiled_only_on_first_use():
    code = (
        "import sys, numpy as np\n"
        "import pagecodec, pagecodec.codecs.xbzrle_kernel as k\n"
        "assert 'numba' not in sys.modules and k._compiled is None\n"
        "page = np.zeros(16, np.uint8)\n"
        "k.decode_page(b'\\x03\\x01Z', page)\n"
        "assert 'numba' in sys.modules and k._compiled is not None and page[3] == 90\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_load_side_header_checks():
    assert decode_record_length_ok(PS) and decode_record_length_ok(0)
    assert not decode_record_length_ok(PS + 1)
    check_record_header(ENCODING_FLAG_XBZRLE, PS)
    with pytest.raises(DecodeError) as ei:
        check_record_header(0x02, 10, offset=77, source="s")
    assert ei.value.reason == "bad-encoding-flag" and ei.value.offset == 77
    with pytest.raises(DecodeError) as ei:
        check_record_header(ENCODING_FLAG_XBZRLE, PS + 1, offset=5)
    assert ei.value.reason == "length-over-page"


# ----------------------------------------------------------------------------------------------------
# fuzzing: any input either decodes to QEMU's result or raises DecodeError, never anything else
# ----------------------------------------------------------------------------------------------------


def _fuzz_one(data: bytes, page: np.ndarray):
    outcomes = _decode_everywhere(data, page, base=0)  # (checks them against QEMU's result)
    assert len(set(outcomes)) == 1, outcomes


@settings(max_examples=examples(300), deadline=None)
@given(st.binary(max_size=40), st.sampled_from([8, 64, 4096]))
def test_fuzz_random_bytes(data, ps):
    _fuzz_one(data, np.arange(ps, dtype=np.uint16).astype(np.uint8))


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page_pairs(page_sizes=(16, 64, 4096), max_pages=1), st.data())
def test_fuzz_mutated_encodings(pair, data):
    old, new = pair
    enc = encode_page(old[0], new[0])
    enc = bytearray(enc if isinstance(enc, bytes) else b"\x00\x01\x00")
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert", "append"]))
        at = data.draw(st.integers(0, len(enc)))
        if op == "flip" and enc:
            enc[min(at, len(enc) - 1)] = data.draw(st.sampled_from([0, 1, 0x7F, 0x80, 0x81, 0xFF, 0x20]))
        elif op == "cut":
            del enc[at:]
        elif op == "insert":
            enc[at:at] = data.draw(st.binary(min_size=1, max_size=3))
        else:
            enc += data.draw(st.binary(min_size=1, max_size=3))
    _fuzz_one(bytes(enc), old[0].copy())


def test_atheris_harness_runs_clean():
    pytest.importorskip("atheris", reason="atheris not installed (optional: pip install atheris)")
    harness = Path(__file__).with_name("fuzz_xbzrle.py")
    proc = subprocess.run(
        [sys.executable, str(harness), "-max_total_time=4", "-rss_limit_mb=4096", "-print_final_stats=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr or "stat::number_of_executed_units" in proc.stderr
