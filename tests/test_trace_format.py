"""Trace format (v1, untimed): writer/reader round trip, zero-copy batches, and every validation failure.

Invalid files are written with pyarrow directly (bypassing TraceWriter's checks) so that the reader's
own validation is what is tested; the writer's checks are tested separately on the same faults.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hyp import examples

from pagecodec.errors import PageCodecError, TraceError
from pagecodec.trace.format import (
    METADATA_KEY,
    TRACE_FORMAT,
    UNTIMED_VERSION,
    PageBatch,
    Provenance,
    RAMBlockInfo,
    TraceMeta,
    TraceReader,
    TraceWriter,
    open_trace,
)
from pagecodec.trace.info import format_info, trace_info

PS = 64
PROV = Provenance("test", "pytest", "2024-05-01T12:00:00+00:00")


def make_meta(ps: int = PS, sizes: tuple[int, ...] = (8, 3), names: tuple[str, ...] = ("pc.ram", "pc.bios")) -> TraceMeta:
    return TraceMeta(ps, tuple(RAMBlockInfo(n, k * ps) for n, k in zip(names, sizes)), PROV)


def full_round(meta: TraceMeta) -> list[tuple[int, int]]:
    """(block, offset) of every page in QEMU order."""
    return [(b, p * meta.page_size) for b in range(len(meta.blocks)) for p in range(meta.block_pages(b))]


def random_trace(meta: TraceMeta, rng: np.random.Generator, dirty_rounds: int) -> list[tuple[int, int, int, bytes]]:
    """Rows (round, block, offset, page bytes) of a valid trace: full round 0, random dirty subsets."""
    rows = []
    allp = full_round(meta)
    for r in range(dirty_rounds + 1):
        if r == 0:
            chosen = allp
        else:
            k = int(rng.integers(1, len(allp) + 1))
            sel = np.sort(rng.choice(len(allp), size=k, replace=False))
            chosen = [allp[i] for i in sel]
        for b, o in chosen:
            rows.append((r, b, o, rng.bytes(meta.page_size)))
    return rows


def write_rows(path: Path, meta: TraceMeta, rows, row_group_pages: int = 4096, chunk: int = 3) -> None:
    """Write rows via TraceWriter, in calls of up to ``chunk`` rows that never span rounds."""
    with TraceWriter(path, meta, row_group_pages=row_group_pages) as w:
        i = 0
        while i < len(rows):
            r = rows[i][0]
            j = i
            while j < len(rows) and j - i < chunk and rows[j][0] == r:
                j += 1
            part = rows[i:j]
            w.write(
                r,
                np.array([x[1] for x in part]),
                np.array([x[2] for x in part], dtype=np.int64),
                np.frombuffer(b"".join(x[3] for x in part), np.uint8).reshape(len(part), meta.page_size),
            )
            i = j


def write_raw(
    path: Path,
    info: dict | None,
    rows,
    *,
    page_type: pa.DataType | None = None,
    block_names: list[str] | None = None,
    nullable: bool = False,
    round_values: list | None = None,
    **pq_kwargs,
) -> None:
    """Write a Parquet file with the trace columns as given — no validation at all."""
    ps = info["page_size"] if info else PS
    names = block_names or [b.name for b in make_meta().blocks]
    page_type = page_type or pa.binary(ps)
    rounds = round_values if round_values is not None else [r[0] for r in rows]
    table = pa.table(
        {
            "round": pa.array(rounds, pa.int32()),
            "block": pa.array([names[r[1]] if isinstance(r[1], int) else r[1] for r in rows], pa.string()),
            "offset": pa.array([r[2] for r in rows], pa.int64()),
            "page": pa.array([r[3] for r in rows], page_type),
        }
    )
    if info is not None:
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(info)})
    pq.write_table(table, path, compression="zstd", **pq_kwargs)


def good_rows(meta: TraceMeta, rng=None):
    rng = rng or np.random.default_rng(7)
    rows = [(0, b, o, rng.bytes(meta.page_size)) for b, o in full_round(meta)]
    rows += [(1, 0, PS, rng.bytes(PS)), (1, 0, 5 * PS, rng.bytes(PS)), (1, 1, 0, rng.bytes(PS))]
    rows += [(2, 1, 2 * PS, rng.bytes(PS))]
    return rows


def read_all(reader: TraceReader, max_pages: int = 4096):
    out = []
    for b in reader.batches(max_pages):
        for i in range(len(b)):
            out.append((b.round, int(b.block[i]), int(b.offset[i]), bytes(b.pages[i])))
    return out


def assert_trace_error(exc: pytest.ExceptionInfo, path: Path, row: int | None, *words: str) -> None:
    msg = str(exc.value)
    assert str(path) in msg, msg
    if row is not None:
        assert re.search(rf"\brow {row}\b", msg), msg
    for w in words:
        assert w in msg, msg


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------


def test_meta_properties():
    meta = make_meta(sizes=(8, 3))
    assert meta.total_pages == 11
    assert meta.ram_bytes == 11 * PS
    assert meta.block_index("pc.bios") == 1
    assert meta.block_pages(0) == 8 and meta.block_pages(1) == 3
    assert list(meta.block_starts) == [0, 8, 11]
    with pytest.raises(TraceError, match="unknown RAM block 'nope'"):
        meta.block_index("nope")
    assert TraceMeta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    assert isinstance(TraceError("x"), PageCodecError)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"page_size": 100}, "power of two"),
        ({"blocks": ()}, "at least one RAM block"),
        ({"blocks": (RAMBlockInfo("a", PS), RAMBlockInfo("a", PS))}, "duplicate block name"),
        ({"blocks": (RAMBlockInfo("a", PS + 1),)}, "multiple of the page size"),
        ({"blocks": (RAMBlockInfo("a", 0),)}, "positive multiple"),
        ({"blocks": (RAMBlockInfo("", PS),)}, "non-empty"),
        ({"blocks": (RAMBlockInfo("a", PS, 3000),)}, "host page_size"),
    ],
)
def test_meta_rejects_bad_values(kwargs, words):
    args = {"page_size": PS, "blocks": (RAMBlockInfo("pc.ram", PS),), "provenance": PROV} | kwargs
    with pytest.raises(TraceError, match=words):
        TraceMeta(**args)


# ----------------------------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("row_group_pages", [1, 4, 5, 4096])
@pytest.mark.parametrize("max_pages", [1, 3, 4096])
def test_round_trip_preserves_everything(tmp_path, row_group_pages, max_pages):
    meta = make_meta()
    rows = random_trace(meta, np.random.default_rng(1), dirty_rounds=3)
    path = tmp_path / "t.trace.parquet"
    write_rows(path, meta, rows, row_group_pages=row_group_pages)
    with open_trace(path) as r:
        assert isinstance(r, TraceReader)
        assert r.meta == meta
        assert r.path == path
        assert r.num_rounds == 4
        assert r.num_pages == len(rows)
        assert r.pages_per_round == [sum(1 for x in rows if x[0] == k) for k in range(4)]
        assert read_all(r, max_pages) == rows
        batches = list(r.batches(max_pages))
        assert all(1 <= len(b) <= max_pages for b in batches)
        # Batches never span rounds and cover consecutive file rows.
        pos = 0
        for b in batches:
            assert b.first_row == pos
            assert set(r.round_column[pos : pos + len(b)].tolist()) == {b.round}
            pos += len(b)
        assert pos == len(rows)
        assert r.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    pf = pq.ParquetFile(path)
    md = pf.metadata
    assert md.num_row_groups == -(-len(rows) // row_group_pages)
    assert all(md.row_group(i).num_rows == row_group_pages for i in range(md.num_row_groups - 1))
    assert md.row_group(0).column(3).compression == "ZSTD"
    info = json.loads(md.metadata[METADATA_KEY.encode()])
    assert info["format"] == TRACE_FORMAT and info["version"] == UNTIMED_VERSION  # untimed: still v1
    assert info["rounds"] == 4 and info["pages_per_round"] == r.pages_per_round
    assert info["provenance"] == {"source": "test", "command": "pytest", "date": PROV.date}
    schema = pf.schema_arrow
    assert schema.field("page").type == pa.binary(PS)
    assert schema.field("round").type == pa.int32()
    assert pa.types.is_dictionary(schema.field("block").type)
    assert not any(schema.field(c).nullable for c in ("round", "block", "offset", "page"))


def _arrow_buffer_of(a: np.ndarray):
    base = a
    while isinstance(base, np.ndarray):
        base = base.base
    return base


def test_batches_are_read_only_views_on_arrow_buffers(tmp_path):
    meta = make_meta()
    rows = random_trace(meta, np.random.default_rng(2), dirty_rounds=2)
    path = tmp_path / "t.trace.parquet"
    write_rows(path, meta, rows, row_group_pages=4)
    with open_trace(path) as r:
        for b in r.batches(3):
            assert isinstance(b, PageBatch)
            assert b.pages.dtype == np.uint8 and b.pages.shape == (len(b), PS)
            assert b.block.dtype == np.int32 and b.offset.dtype == np.int64
            assert not b.pages.flags.writeable
            with pytest.raises(ValueError):
                b.pages[0, 0] = 1
            buf = _arrow_buffer_of(b.pages)
            assert isinstance(buf, pa.Buffer), type(buf)
            start = b.pages.__array_interface__["data"][0]
            assert buf.address <= start and start + b.pages.nbytes <= buf.address + buf.size
            assert np.shares_memory(b.pages, np.frombuffer(buf, np.uint8))


def test_batches_honour_array_offset_of_sliced_arrow_chunks(tmp_path):
    # A batch that starts inside a decoded chunk (several rounds in one row group) must view the right
    # bytes: that is the array-offset arithmetic.
    meta = make_meta(sizes=(4,), names=("pc.ram",))
    rng = np.random.default_rng(3)
    rows = [(0, 0, i * PS, rng.bytes(PS)) for i in range(4)]
    rows += [(r, 0, ((r - 1) % 4) * PS, rng.bytes(PS)) for r in range(1, 7)]
    path = tmp_path / "t.trace.parquet"
    write_rows(path, meta, rows, row_group_pages=4096)
    with open_trace(path) as r:
        got = list(r.batches(4096))
        assert [b.round for b in got] == [0, 1, 2, 3, 4, 5, 6]
        assert [len(b) for b in got] == [4, 1, 1, 1, 1, 1, 1]
        assert read_all(r) == rows


def test_rounds_groups_batches(tmp_path):
    meta = make_meta()
    rows = random_trace(meta, np.random.default_rng(4), dirty_rounds=3)
    path = tmp_path / "t.trace.parquet"
    write_rows(path, meta, rows, row_group_pages=2)
    with open_trace(path) as r:
        seen = []
        for rnd, batches in r.rounds(max_pages=2):
            n = sum(len(b) for b in batches if b.round == rnd)
            seen.append((rnd, n))
        assert seen == list(enumerate(r.pages_per_round))


def test_writer_copies_pages_so_caller_may_mutate(tmp_path):
    meta = make_meta(sizes=(2,), names=("pc.ram",))
    pages = np.full((2, PS), 7, np.uint8)
    path = tmp_path / "t.trace.parquet"
    with TraceWriter(path, meta) as w:
        w.write(0, 0, np.array([0, PS]), pages)
        pages[:] = 9
    with open_trace(path) as r:
        (b,) = list(r.batches())
        assert (b.pages == 7).all()


def test_writer_accepts_block_name_and_scalar_forms(tmp_path):
    meta = make_meta()
    path = tmp_path / "t.trace.parquet"
    with TraceWriter(path, meta) as w:
        w.write(0, "pc.ram", np.arange(8) * PS, np.zeros((8, PS), np.uint8))
        w.write(0, 1, np.arange(3) * PS, np.ones((3, PS), np.uint8))
        w.write(1, np.int64(1), 2 * PS, np.ones(PS, np.uint8))  # one page, 1-D
        assert w.rows == 12
    with open_trace(path) as r:
        assert r.pages_per_round == [11, 1]


@settings(max_examples=examples(40), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.data(),
    ps=st.sampled_from([8, 16, 64]),
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    dirty_rounds=st.integers(0, 4),
    row_group_pages=st.integers(1, 7),
    max_pages=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_property(tmp_path_factory, data, ps, sizes, dirty_rounds, row_group_pages, max_pages, seed):
    meta = make_meta(ps, tuple(sizes), tuple(f"blk{i}" for i in range(len(sizes))))
    rows = random_trace(meta, np.random.default_rng(seed), dirty_rounds)
    path = tmp_path_factory.mktemp("prop") / "t.trace.parquet"
    write_rows(path, meta, rows, row_group_pages=row_group_pages, chunk=data.draw(st.integers(1, 5)))
    with open_trace(path) as r:
        assert r.meta == meta
        assert r.num_rounds == dirty_rounds + 1
        got = []
        for b in r.batches(max_pages):
            assert 1 <= len(b) <= max_pages
            assert not b.pages.flags.writeable
            got.extend((b.round, int(x), int(o), bytes(p)) for x, o, p in zip(b.block, b.offset, b.pages))
        assert got == rows


# ----------------------------------------------------------------------------------------------
# Writer validation: TraceError naming file and row; never a file left behind
# ----------------------------------------------------------------------------------------------


def _only_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


def _round0(w: TraceWriter, meta: TraceMeta) -> None:
    for b in range(len(meta.blocks)):
        n = meta.block_pages(b)
        w.write(0, b, np.arange(n) * meta.page_size, np.zeros((n, meta.page_size), np.uint8))


def _page(n=1):
    return np.zeros((n, PS), np.uint8)


@pytest.mark.parametrize(
    "action, row, words",
    [
        (lambda w, m: w.write(0, 2, np.array([0]), _page()), 0, "unknown block index 2"),
        (lambda w, m: w.write(0, -1, np.array([0]), _page()), 0, "unknown block"),
        (lambda w, m: w.write(0, 0, np.array([0, 65]), _page(2)), 1, "not aligned"),
        (lambda w, m: w.write(0, 0, np.array([0, 8 * PS]), _page(2)), 1, "outside the block"),
        (lambda w, m: w.write(0, 0, np.array([-PS]), _page()), 0, "outside the block"),
        (lambda w, m: w.write(0, 0, np.array([0]), np.zeros((1, PS - 1), np.uint8)), 0, "wrong page length"),
        (lambda w, m: w.write(0, 0, np.array([0]), np.zeros((1, PS), np.int16)), 0, "uint8"),
        (lambda w, m: w.write(0, 0, np.array([0, PS]), _page(1)), 0, "1 pages but 2 offsets"),
        (lambda w, m: w.write(1, 0, np.array([0]), _page()), 0, "expected round 0"),
        (lambda w, m: w.write(0, 0, np.array([0, PS, PS]), _page(3)), 2, "duplicate page"),
        (lambda w, m: w.write(0, 0, np.array([0, 2 * PS, PS]), _page(3)), 2, "not in QEMU order"),
        (lambda w, m: w.write(0, np.array([1, 0]), np.array([0, 0]), _page(2)), 1, "not in QEMU order"),
        (lambda w, m: (w.write(0, 0, np.array([0, PS]), _page(2)), w.write(0, 0, np.array([PS]), _page()))[-1], 2, "duplicate page"),
        (lambda w, m: (w.write(0, 0, np.array([0, PS]), _page(2)), w.write(1, 0, np.array([0]), _page()))[-1], 2, "round 0 is incomplete: 2 of 11"),
        (lambda w, m: (_round0(w, m), w.write(2, 0, np.array([0]), _page()))[-1], 11, "gap in rounds"),
        (lambda w, m: (_round0(w, m), w.write(1, 0, np.array([0]), _page()), w.write(0, 0, np.array([0]), _page()))[-1], 12, "rounds out of order"),
        (lambda w, m: (w.write(0, 0, np.arange(8) * PS, _page(8)), w.close())[-1], 8, "round 0 is incomplete at end of trace: 8 of 11"),
        (lambda w, m: w.close(), 0, "no pages"),
    ],
)
def test_writer_rejects_and_leaves_no_file(tmp_path, action, row, words):
    meta = make_meta()
    path = tmp_path / "bad.trace.parquet"
    with pytest.raises(TraceError) as exc:
        with TraceWriter(path, meta) as w:
            action(w, meta)
    assert_trace_error(exc, path, row, words)
    assert _only_files(tmp_path) == []


def test_writer_names_first_missing_page_of_round0(tmp_path):
    meta = make_meta()
    path = tmp_path / "bad.trace.parquet"
    with pytest.raises(TraceError) as exc:
        with TraceWriter(path, meta) as w:
            w.write(0, 0, np.array([0, PS, 3 * PS]), _page(3))
            w.write(1, 0, np.array([0]), _page())
    assert_trace_error(exc, path, 3, "first missing: block 'pc.ram' offset 128")


def test_rejected_write_leaves_writer_usable(tmp_path):
    meta = make_meta()
    path = tmp_path / "t.trace.parquet"
    with TraceWriter(path, meta) as w:
        with pytest.raises(TraceError):
            w.write(0, 0, np.array([PS, 0]), _page(2))
        _round0(w, meta)
    with open_trace(path) as r:
        assert r.pages_per_round == [11]


def test_writer_exception_in_producer_leaves_old_file_untouched(tmp_path):
    meta = make_meta()
    path = tmp_path / "t.trace.parquet"
    write_rows(path, meta, good_rows(meta))
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with TraceWriter(path, meta) as w:
            _round0(w, meta)
            raise RuntimeError("boom")
    assert path.read_bytes() == before
    assert _only_files(tmp_path) == ["t.trace.parquet"]


def test_writer_without_close_leaves_no_temp(tmp_path):
    meta = make_meta()
    w = TraceWriter(tmp_path / "t.trace.parquet", meta)
    _round0(w, meta)
    w.abort()
    assert _only_files(tmp_path) == []
    w2 = TraceWriter(tmp_path / "u.trace.parquet", meta)
    del w2
    import gc

    gc.collect()
    assert _only_files(tmp_path) == []


def test_writer_cannot_create_in_missing_dir(tmp_path):
    with pytest.raises(TraceError, match="cannot create"):
        TraceWriter(tmp_path / "nope" / "t.trace.parquet", make_meta())


# ----------------------------------------------------------------------------------------------
# Reader validation on files written without any checks
# ----------------------------------------------------------------------------------------------


def _info(**over):
    d = make_meta().to_dict()
    d.update(over)
    return d


def test_reader_accepts_foreign_writer_with_plain_columns(tmp_path):
    # pyarrow.write_table with a plain string block column and variable binary pages: valid if the
    # lengths are right, and still zero-copy.
    path = tmp_path / "ok.parquet"
    meta = make_meta()
    rows = good_rows(meta)
    write_raw(path, _info(), rows, page_type=pa.binary(), row_group_size=5)
    with open_trace(path) as r:
        assert read_all(r, 2) == rows
        assert all(not b.pages.flags.writeable for b in r.batches())


def _swap(rows, i, j):
    rows = list(rows)
    rows[i], rows[j] = rows[j], rows[i]
    return rows


def _set(rows, i, **kw):
    rows = list(rows)
    r, b, o, p = rows[i]
    rows[i] = (kw.get("round", r), kw.get("block", b), kw.get("offset", o), kw.get("page", p))
    return rows


G = good_rows(make_meta())  # 11 pages of round 0 (rows 0-10), round 1 rows 11-13, round 2 row 14


@pytest.mark.parametrize(
    "info, rows, row, words",
    [
        (_info(format="other-trace"), G, None, "format is 'other-trace'"),
        (_info(version=3), G, None, "unsupported trace version 3"),
        (_info(page_size=100), G, None, "power of two"),
        (_info(blocks=[]), G, None, "at least one RAM block"),
        (_info(provenance={"source": "x"}), G, None, "malformed metadata"),
        (_info(rounds=7), G, None, "metadata says 7 rounds"),
        (_info(pages_per_round=[11, 3, 2]), G, None, "disagrees"),
        (_info(), _set(G, 12, block="pc.rom"), 12, "unknown block 'pc.rom'"),
        (_info(), _set(G, 12, offset=PS + 3), 12, "not aligned"),
        (_info(), _set(G, 12, offset=9 * PS), 12, "outside the block"),
        (_info(), _set(G, 13, offset=-PS), 13, "outside the block"),
        (_info(), _set(G, 14, round=1, block=0, offset=6 * PS), 14, "not in QEMU order"),
        (_info(), _set(G, 14, round=0), 14, "rounds out of order"),
        (_info(), _set(G, 14, round=3), 14, "gap in rounds"),
        (_info(), [_set(G, 0, round=1)[0]] + G[1:], 0, "expected round 0"),
        (_info(), _set(G, 12, offset=PS), 12, "duplicate page in round 1"),
        (_info(), _swap(G, 11, 12), 12, "not in QEMU order"),
        (_info(), _swap(G, 7, 8), 8, "not in QEMU order"),
        (_info(), G[:5] + G[6:], 10, "round 0 is incomplete: 10 of 11 pages (first missing: block 'pc.ram' offset 320)"),
        (_info(), G[:10], 10, "round 0 is incomplete at end of trace: 10 of 11 pages (first missing: block 'pc.bios' offset 128)"),
        (_info(), [], 0, "trace has no pages"),
    ],
)
def test_reader_rejects(tmp_path, info, rows, row, words):
    path = tmp_path / "bad.trace.parquet"
    write_raw(path, info, rows, page_type=pa.binary(PS), row_group_size=4)
    with pytest.raises(TraceError) as exc:
        TraceReader(path)
    assert_trace_error(exc, path, row, words)


def test_reader_rejects_missing_metadata(tmp_path):
    path = tmp_path / "plain.parquet"
    write_raw(path, None, G)
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, None, "not a pagecodec trace", METADATA_KEY)


def test_reader_rejects_bad_json(tmp_path):
    path = tmp_path / "bad.parquet"
    table = pa.table({"x": [1]}).replace_schema_metadata({METADATA_KEY: "{not json"})
    pq.write_table(table, path)
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, None, "not valid JSON")


def test_reader_rejects_missing_column(tmp_path):
    path = tmp_path / "bad.parquet"
    table = pa.table({"round": pa.array([0], pa.int32())}).replace_schema_metadata({METADATA_KEY: json.dumps(_info())})
    pq.write_table(table, path)
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, None, "column 'block' missing")


def test_reader_rejects_wrong_fixed_page_width(tmp_path):
    path = tmp_path / "bad.parquet"
    rows = [(r, b, o, p[:32]) for r, b, o, p in G]
    write_raw(path, _info(), rows, page_type=pa.binary(32))
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, 0, "page has 32 bytes", "wrong page length")


def test_reader_rejects_wrong_variable_page_length_at_its_row(tmp_path):
    path = tmp_path / "bad.parquet"
    rows = _set(G, 9, page=b"\x01" * (PS - 1))
    write_raw(path, _info(), rows, page_type=pa.binary(), row_group_size=4)
    r = open_trace(path)  # structure is fine; the page column is checked as it streams
    with pytest.raises(TraceError) as exc:
        r.check_pages()
    assert_trace_error(exc, path, 9, "page has 63 bytes", "wrong page length")
    with pytest.raises(TraceError):
        list(r.batches(2))


def test_reader_rejects_null_values(tmp_path):
    path = tmp_path / "bad.parquet"
    write_raw(path, _info(), G, round_values=[r[0] for r in G[:3]] + [None] + [r[0] for r in G[4:]])
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, 3, "round is null")


def test_reader_rejects_null_page(tmp_path):
    path = tmp_path / "bad.parquet"
    write_raw(path, _info(), _set(G, 6, page=None), page_type=pa.binary(PS), row_group_size=4)
    with pytest.raises(TraceError) as exc:
        open_trace(path).check_pages()
    assert_trace_error(exc, path, 6, "page is null")


def _written(tmp_path, **kw) -> Path:
    path = tmp_path / "t.trace.parquet"
    meta = make_meta()
    write_rows(path, meta, good_rows(meta), **kw)
    return path


def test_reader_rejects_truncated_file(tmp_path):
    path = _written(tmp_path)
    data = path.read_bytes()
    cut = tmp_path / "cut.trace.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(TraceError) as exc:
        open_trace(cut)
    assert_trace_error(exc, cut, None, "not a readable Parquet trace")
    assert exc.value.__cause__ is None  # one clear error, no chained pyarrow traceback


@pytest.mark.parametrize("content", [b"", b"PAR1", b"hello world\n" * 100, np.random.default_rng(0).bytes(4096), b"PAR1" + bytes(100) + b"PAR1"])
def test_reader_rejects_garbage(tmp_path, content):
    path = tmp_path / "garbage.trace.parquet"
    path.write_bytes(content)
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, None)


def test_reader_rejects_missing_file(tmp_path):
    path = tmp_path / "absent.trace.parquet"
    with pytest.raises(TraceError) as exc:
        open_trace(path)
    assert_trace_error(exc, path, None, "no such trace file")


def test_a_trace_named_by_url_reads_as_the_file(tmp_path):
    """file:// (pyarrow's filesystems: the same path for s3://, gs://, hdfs://): the same pages, size
    and hash, and the URL kept as given (a Path would fold file:///a into file:/a)."""
    path = _written(tmp_path, row_group_pages=4)
    url = path.resolve().as_uri()
    with open_trace(url) as r, open_trace(path) as p:
        assert r.path == url and isinstance(r.path, str)
        assert (r.num_pages, r.pages_per_round, r.file_size) == (p.num_pages, p.pages_per_round, p.file_size)
        assert r.sha256() == p.sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
        for a, b in zip(read_all(r, 4), read_all(p, 4), strict=True):
            assert a == b


def test_a_trace_url_that_cannot_be_read_is_named(tmp_path, monkeypatch):
    with pytest.raises(TraceError, match=r"^file:///nonexistent/t\.parquet: no such trace file"):
        open_trace("file:///nonexistent/t.parquet")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"hello world\n" * 100)
    with pytest.raises(TraceError, match=rf"^{re.escape(garbage.as_uri())}: not a readable Parquet trace"):
        open_trace(garbage.as_uri())
    with pytest.raises(TraceError, match=r"^nosuch://host/t\.parquet: cannot open this URL"):
        open_trace("nosuch://host/t.parquet")
    monkeypatch.setitem(sys.modules, "fsspec", None)  # as if fsspec were not installed
    with pytest.raises(TraceError, match=r"^https://example\.invalid/t\.parquet: .*pip install fsspec"):
        open_trace("https://example.invalid/t.parquet")


def test_reader_detects_corrupt_page_data_with_row(tmp_path):
    path = _written(tmp_path, row_group_pages=4)
    md = pq.ParquetFile(path).metadata
    col = md.row_group(2).column(3)  # page column of rows 8..11
    assert col.path_in_schema == "page"
    start = col.dictionary_page_offset or col.data_page_offset
    data = bytearray(path.read_bytes())
    mid = start + col.total_compressed_size // 2
    for i in range(mid, mid + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    r = open_trace(path)  # index columns are intact
    with pytest.raises(TraceError) as exc:
        r.check_pages()
    assert_trace_error(exc, path, 8, "cannot read page data of rows 8..11")
    # Rows before the damage were delivered intact.
    delivered = []
    with pytest.raises(TraceError):
        for b in r.batches(4):
            delivered.append(len(b))
    assert sum(delivered) == 8


# ----------------------------------------------------------------------------------------------
# trace info
# ----------------------------------------------------------------------------------------------


def test_trace_info_counts_zero_pages_per_round(tmp_path):
    meta = make_meta()
    rng = np.random.default_rng(5)
    z, d = bytes(PS), lambda: bytes([1]) + rng.bytes(PS - 1)
    rows = [(0, b, o, z if i % 3 == 0 else d()) for i, (b, o) in enumerate(full_round(meta))]  # 4 of 11 zero
    rows += [(1, 0, 0, d()), (1, 0, PS, z), (1, 1, 0, z), (1, 1, PS, z)]  # 3 of 4 zero
    rows += [(2, 0, 0, bytes(PS - 1) + b"\x01")]  # last byte set: not zero
    path = tmp_path / "t.trace.parquet"
    write_rows(path, meta, rows, row_group_pages=3)
    with open_trace(path) as r:
        info = trace_info(r)
    assert info["rounds"] == 3 and info["pages"] == 16 and info["total_pages"] == 11
    assert [x["zero_pages"] for x in info["per_round"]] == [4, 3, 0]
    assert [x["pages"] for x in info["per_round"]] == [11, 4, 1]
    assert [x["page_bytes"] for x in info["per_round"]] == [11 * PS, 4 * PS, PS]
    assert info["per_round"][1]["zero_fraction"] == pytest.approx(0.75)
    assert info["zero_fraction"] == pytest.approx(7 / 16)
    assert info["file_bytes"] == path.stat().st_size
    assert info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info["blocks"] == [
        {"name": "pc.ram", "used_length": 8 * PS, "page_size": 4096, "pages": 8},
        {"name": "pc.bios", "used_length": 3 * PS, "page_size": 4096, "pages": 3},
    ]
    json.dumps(info)  # JSON-ready
    text = format_info(info)
    for word in ("pc.ram", "pc.bios", "pytest", "75.0%", info["sha256"], "pagecodec-trace v1"):
        assert word in text
    assert len([ln for ln in text.splitlines() if re.match(r"\s*[012]\s+\d+\s", ln)]) == 3


def test_empty_rounds_are_kept(tmp_path):
    """A round in which the guest dirtied nothing is a real round (a paused guest's passes)."""
    meta = make_meta()
    path = tmp_path / "empty.trace.parquet"
    rows = good_rows(meta)
    with TraceWriter(path, meta) as w:
        for r, b, o, p in rows:
            if r == 0:
                w.write(0, b, np.array([o]), np.frombuffer(p, np.uint8).reshape(1, -1))
        w.write(1, 0, np.zeros(0, np.int64), np.zeros((0, meta.page_size), np.uint8))
        w.write(2, 0, np.array([0]), np.zeros((1, meta.page_size), np.uint8))
        w.write(3, 0, np.zeros(0, np.int64), np.zeros((0, meta.page_size), np.uint8))
    r = TraceReader(path)
    assert r.num_rounds == 4 and r.pages_per_round == [meta.total_pages, 0, 1, 0]
    got = [(k, sum(len(b) for b in bs)) for k, bs in r.rounds()]
    assert got == [(0, meta.total_pages), (1, 0), (2, 1), (3, 0)]


def test_empty_round_zero_or_gap_rejected(tmp_path):
    meta = make_meta()
    with pytest.raises(TraceError, match="round 0 cannot be empty"):
        with TraceWriter(tmp_path / "a.parquet", meta) as w:
            w.write(0, 0, np.zeros(0, np.int64), np.zeros((0, meta.page_size), np.uint8))
    with pytest.raises(TraceError, match="gap"):
        with TraceWriter(tmp_path / "b.parquet", meta) as w:
            for r, b, o, p in good_rows(meta):
                if r == 0:
                    w.write(0, b, np.array([o]), np.frombuffer(p, np.uint8).reshape(1, -1))
            w.write(2, 0, np.zeros(0, np.int64), np.zeros((0, meta.page_size), np.uint8))
    assert not (tmp_path / "a.parquet").exists() and not (tmp_path / "b.parquet").exists()
