"""Trace file format v2 (v1 still read and still written for untimed traces): one Parquet row per guest
page, streamed round by round.

Why Parquet: a trace is a large, append-once, read-many table of fixed-size binary values plus three
tiny index columns. Parquet gives us zstd-compressed row groups (so a reader can stream a 1 GiB RAM image
in 16 MiB pieces), column projection (the validator reads only the small columns), page checksums, and
files that DuckDB/pandas/Spark can open without pagecodec.

Schema (all columns non-null)::

    round   int32                      0 = full RAM image (bulk stage), k >= 1 = pages dirtied since k-1
    block   dictionary<int32, string>  RAM block idstr, one of the metadata's blocks
    offset  int64                      byte offset of the page inside its block (page aligned)
    page    fixed_size_binary(page_size)

File key-value metadata ``pagecodec.trace`` holds a JSON object (see :meth:`TraceMeta.to_dict`)::

    {"format": "pagecodec-trace", "version": 1, "page_size": 4096,
     "blocks": [{"name": "pc.ram", "used_length": N, "page_size": 4096}, ...],
     "provenance": {"source": ..., "command": ..., "date": ...},
     "rounds": R, "pages_per_round": [...]}

Version 2 adds when each round was captured and what it is, two lists of one entry per round::

    {"version": 2, ..., "round_time_s": [0.0, 0.1, 0.2, ...], "round_kind": ["image", "slice", ...]}

``round_time_s`` is the capture time in seconds since the trace started (finite, >= 0, not decreasing).
``round_kind`` says what a round is: ``"pass"`` — a migration pass (an imported QEMU stream: round 0
is the bulk pass, round k the pages QEMU sent in pass k); or, for a dirty log sampled every interval
without migrating, ``"image"`` for round 0 (all of RAM at time ``round_time_s[0]``) and ``"slice"``
for every later round: the pages written during (t[k-1], t[k]], with their contents at t[k] (so a
log's times strictly increase). A trace is either all passes or an image and slices. Untimed traces
are still written as version 1 (so older readers read them); a v1 trace reads as untimed passes.

Row order is QEMU's migration order: rounds ascending and consecutive from 0; within a round, blocks in the
order of ``blocks`` and offsets ascending, each page at most once.  Round 0 holds every page exactly once.

The reader validates all of that *before* handing out a single page, reading only the small columns, so
that a consumer (the sender, the verifier) never acts on half a trace.  Page bytes are handed out as
read-only numpy views on Arrow's decoded buffers: no copy of the (large) page data is made here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pagecodec.atomic import create_temp
from pagecodec.errors import OutputError, TraceError, one_line
from pagecodec.limits import load_json

__all__ = [
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "UNTIMED_VERSION",
    "READ_VERSIONS",
    "ROUND_KINDS",
    "RoundTiming",
    "METADATA_KEY",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_ROW_GROUP_PAGES",
    "RAMBlockInfo",
    "Provenance",
    "TraceMeta",
    "PageBatch",
    "TraceWriter",
    "TraceReader",
    "open_trace",
    "trace_schema",
    "is_url",
]

TRACE_FORMAT = "pagecodec-trace"
#: The version written for a trace with round timing (v2); untimed traces are written as v1.
TRACE_VERSION = 2
UNTIMED_VERSION = 1
READ_VERSIONS = (1, 2)
#: What a round can be: a migration pass, the RAM image that starts a dirty log, a time slice of it.
ROUND_KINDS = ("pass", "image", "slice")
METADATA_KEY = "pagecodec.trace"
DEFAULT_PAGE_SIZE = 4096
#: 4096 pages of 4 KiB = 16 MiB per row group: big enough for zstd and Parquet overheads to vanish,
#: small enough that streaming a trace never holds more than a few row groups in memory.
DEFAULT_ROW_GROUP_PAGES = 4096
#: Longest ``pagecodec.trace`` metadata JSON read (100,000 rounds' pages_per_round take ~1 MB).
MAX_METADATA_BYTES = 16 << 20
#: Total RAM a trace may describe: offsets and page indexes are int64.
MAX_RAM_BYTES = (1 << 63) - 1

_COLUMNS = ("round", "block", "offset", "page")
_INDEX_COLUMNS = ["round", "block", "offset"]


def _is_pow2(n: int) -> bool:
    return n > 0 and (n & (n - 1)) == 0


def _fail(path: Any, message: str, row: int | None = None) -> TraceError:
    """Build the one error shape the format uses: ``FILE: row N: message`` (row 0-based), on one line
    (Arrow's messages may hold newlines)."""
    where = f"{path}: row {row}: " if row is not None else f"{path}: "
    return TraceError(one_line(where + message))


# --------------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RAMBlockInfo:
    """One RAM block as QEMU announces it in the MEM_SIZE setup record.

    ``page_size`` is the *host* page size backing the block (QEMU sends it for postcopy when it differs
    from the host's default, e.g. hugepages); the trace's target page size is ``TraceMeta.page_size``.
    """

    name: str
    used_length: int
    page_size: int = DEFAULT_PAGE_SIZE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "used_length": self.used_length, "page_size": self.page_size}


@dataclass(frozen=True)
class Provenance:
    """Where a trace came from, so a result can always be traced back to how its input was made."""

    source: str
    command: str
    date: str

    @classmethod
    def now(cls, source: str, command: str) -> Provenance:
        """Provenance stamped with the current UTC time (for captures; synthetic traces use a fixed date
        so that the same parameters give byte-identical files)."""
        return cls(source, command, datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, str]:
        return {"source": self.source, "command": self.command, "date": self.date}


@dataclass(frozen=True)
class TraceMeta:
    """The trace's fixed description: target page size, RAM blocks in migration order, provenance.

    Validated on construction (``TraceError``), so every ``TraceMeta`` in the program is usable: the
    writer and the reader both rely on it.
    """

    page_size: int
    blocks: tuple[RAMBlockInfo, ...]
    provenance: Provenance
    _index: Mapping[str, int] = field(init=False, repr=False, compare=False, hash=False)
    _starts: np.ndarray = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        blocks = tuple(self.blocks)
        object.__setattr__(self, "blocks", blocks)
        ps = self.page_size
        if not isinstance(ps, int) or isinstance(ps, bool) or not _is_pow2(ps) or ps < 8:
            raise TraceError(f"page_size must be a power of two >= 8, got {ps!r}")
        if not blocks:
            raise TraceError("a trace needs at least one RAM block")
        index: dict[str, int] = {}
        ram = 0
        for i, b in enumerate(blocks):
            if not isinstance(b, RAMBlockInfo):
                raise TraceError(f"block {i} is not a RAMBlockInfo: {b!r}")
            if not isinstance(b.name, str) or not b.name or len(b.name.encode()) > 255:
                # QEMU sends the idstr behind a u8 length.
                raise TraceError(f"block {i}: name must be a non-empty string of <= 255 bytes, got {b.name!r}")
            if b.name in index:
                raise TraceError(f"block {i}: duplicate block name {b.name!r}")
            ul = b.used_length
            if not isinstance(ul, int) or isinstance(ul, bool) or ul <= 0 or ul % ps:
                raise TraceError(
                    f"block {b.name!r}: used_length must be a positive multiple of the page size {ps}, got {ul!r}"
                )
            ram += ul
            if ram > MAX_RAM_BYTES:
                raise TraceError(f"block {b.name!r}: used_length {ul:#x} takes the RAM past 2^63 bytes (offsets are "
                                 f"64-bit signed)")
            hps = b.page_size
            if not isinstance(hps, int) or isinstance(hps, bool) or not _is_pow2(hps):
                raise TraceError(f"block {b.name!r}: host page_size must be a power of two, got {hps!r}")
            index[b.name] = i
        if not isinstance(self.provenance, Provenance):
            raise TraceError(f"provenance must be a Provenance, got {self.provenance!r}")
        object.__setattr__(self, "_index", index)
        counts = np.array([b.used_length // ps for b in blocks], dtype=np.int64)
        starts = np.zeros(len(blocks) + 1, dtype=np.int64)
        np.cumsum(counts, out=starts[1:])
        starts.setflags(write=False)
        object.__setattr__(self, "_starts", starts)

    def block_index(self, name: str) -> int:
        """Index of block ``name`` in :attr:`blocks` (the order pages are migrated in)."""
        try:
            return self._index[name]
        except KeyError:
            raise TraceError(f"unknown RAM block {name!r} (trace has {', '.join(self._index)})") from None

    def block_pages(self, i: int) -> int:
        """Number of target pages in block ``i``."""
        return self.blocks[i].used_length // self.page_size

    @property
    def block_starts(self) -> np.ndarray:
        """Read-only int64 array: global page index of each block's first page (plus the total at the
        end), i.e. the pages of all blocks laid end to end in migration order.  ``starts[b] + offset //
        page_size`` orders pages exactly as QEMU migrates them, which is what the validators compare."""
        return self._starts

    @property
    def total_pages(self) -> int:
        return int(self._starts[-1])

    @property
    def ram_bytes(self) -> int:
        return sum(b.used_length for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": TRACE_FORMAT,
            "version": UNTIMED_VERSION,
            "page_size": self.page_size,
            "blocks": [b.to_dict() for b in self.blocks],
            "provenance": self.provenance.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Any) -> TraceMeta:
        """Parse the metadata JSON object (format and version already checked by the caller or here)."""
        if not isinstance(d, dict):
            raise TraceError("metadata is not a JSON object")
        if d.get("format") != TRACE_FORMAT:
            raise TraceError(f"not a pagecodec trace: format is {d.get('format')!r}, expected {TRACE_FORMAT!r}")
        if d.get("version") not in READ_VERSIONS:
            raise TraceError(f"unsupported trace version {d.get('version')!r} (this pagecodec reads versions "
                             f"{', '.join(map(str, READ_VERSIONS))})")
        try:
            blocks = []
            for b in d["blocks"]:
                used, hps = b["used_length"], b.get("page_size", DEFAULT_PAGE_SIZE)
                if not isinstance(used, int) or not isinstance(hps, int):
                    raise TraceError(f"malformed block entry {b!r}: used_length and page_size must be integers")
                blocks.append(RAMBlockInfo(str(b["name"]), used, hps))
            p = d["provenance"]
            prov = Provenance(str(p["source"]), str(p["command"]), str(p["date"]))
            page_size = d["page_size"]
        except TraceError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise TraceError(f"malformed metadata: missing or bad field {e}") from None
        return cls(page_size, blocks, prov)


@dataclass(frozen=True)
class RoundTiming:
    """When each round was captured (seconds since the trace started) and what it is (:data:`ROUND_KINDS`).

    Validated on construction (``TraceError`` naming the round), so a timed trace's rounds are always
    either all migration passes, or a RAM image followed by time slices with strictly increasing times
    (a slice of no duration would have no dirty rate)."""

    time_s: tuple[float, ...]
    kind: tuple[str, ...]

    def __post_init__(self) -> None:
        times = tuple(self.time_s)
        kinds = tuple(self.kind)
        object.__setattr__(self, "time_s", times)
        object.__setattr__(self, "kind", kinds)
        if len(times) != len(kinds):
            raise TraceError(f"round timing: {len(times)} times but {len(kinds)} kinds")
        if not times:
            raise TraceError("round timing: no rounds")
        for r, (t, k) in enumerate(zip(times, kinds)):
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
                raise TraceError(f"round {r}: capture time {t!r} must be a finite number of seconds >= 0")
            if k not in ROUND_KINDS:
                raise TraceError(f"round {r}: kind {k!r} is not one of {', '.join(ROUND_KINDS)}")
        if kinds[0] == "slice":
            raise TraceError("round 0: kind 'slice': round 0 holds all of RAM (kind 'image' or 'pass')")
        log = kinds[0] == "image"
        for r in range(1, len(kinds)):
            want = "slice" if log else "pass"
            if kinds[r] != want:
                what = "a dirty log (round 0 is an image)" if log else "migration passes (round 0 is a pass)"
                raise TraceError(f"round {r}: kind {kinds[r]!r} in a trace of {what}: expected {want!r}")
            if log and not times[r] > times[r - 1]:
                raise TraceError(f"round {r}: slice ends at {times[r]} s, not after round {r - 1} ({times[r - 1]} s)")
            if not log and times[r] < times[r - 1]:
                raise TraceError(f"round {r}: captured at {times[r]} s, before round {r - 1} ({times[r - 1]} s)")

    @property
    def is_log(self) -> bool:
        """A dirty log (an image, then time slices), as opposed to migration passes."""
        return self.kind[0] == "image"

    @property
    def rounds(self) -> int:
        return len(self.time_s)

    @classmethod
    def log(cls, times: Sequence[float]) -> RoundTiming:
        """A dirty log's timing: round 0 the image at ``times[0]``, every later round a slice ending at its time."""
        return cls(tuple(float(t) for t in times), ("image",) + ("slice",) * (len(times) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"round_time_s": list(self.time_s), "round_kind": list(self.kind)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], rounds: int) -> RoundTiming:
        """The timing lists of a v2 metadata object (both required), checked against the round count."""
        times, kinds = d.get("round_time_s"), d.get("round_kind")
        if not isinstance(times, list) or not isinstance(kinds, list):
            raise TraceError("version 2 metadata needs the lists round_time_s and round_kind")
        if len(times) != rounds:
            raise TraceError(f"round_time_s has {len(times)} entries, the trace has {rounds} rounds")
        return cls(tuple(times), tuple(kinds))


# --------------------------------------------------------------------------------------------------
# Row validation shared by writer and reader
# --------------------------------------------------------------------------------------------------


class _RowValidator:
    """Checks the (round, block, offset) sequence incrementally, vectorized within each chunk.

    The writer feeds it each ``write`` call, the reader the whole file at once; both get the same rules
    and the same messages.  State is only advanced when a chunk is accepted, so a rejected ``write``
    leaves the writer as it was.
    """

    def __init__(self, meta: TraceMeta, path: Any, empty_rounds: frozenset[int] = frozenset()) -> None:
        self.meta = meta
        self.path = path
        #: rounds declared to hold no pages (a guest that dirtied nothing): rows may skip over them
        self.empty_rounds = empty_rounds
        self.rows = 0
        self.last_round = -1
        self.last_g = -1
        self.round0_count = 0
        self.round0_first_missing: int | None = None  # first global page index missing so far in round 0
        self.pages_per_round: list[int] = []
        self._used = np.array([b.used_length for b in meta.blocks], dtype=np.int64)

    def _describe_page(self, g: int) -> str:
        starts = self.meta.block_starts
        b = int(np.searchsorted(starts, g, side="right") - 1)
        return f"block {self.meta.blocks[b].name!r} offset {(g - int(starts[b])) * self.meta.page_size}"

    def feed(self, r: np.ndarray, b: np.ndarray, o: np.ndarray) -> None:
        n = len(r)
        if n == 0:
            return
        meta, ps = self.meta, self.meta.page_size
        nb = len(meta.blocks)
        r = r.astype(np.int64, copy=False)
        b = b.astype(np.int64, copy=False)
        o = o.astype(np.int64, copy=False)

        prev_r = np.empty(n, np.int64)
        prev_r[0] = self.last_round
        prev_r[1:] = r[:-1]
        bad_round_order = r < prev_r
        bad_round_gap = r > prev_r + 1
        for i in np.flatnonzero(bad_round_gap).tolist():  # one check per round change, not per row
            if prev_r[i] >= 0 and all(k in self.empty_rounds for k in range(int(prev_r[i]) + 1, int(r[i]))):
                bad_round_gap[i] = False
        unknown = (b < 0) | (b >= nb)
        bc = np.where(unknown, 0, b)
        misaligned = (o % ps) != 0
        out_of_range = (o < 0) | (o >= self._used[bc])
        g = meta.block_starts[bc] + o // ps
        prev_g = np.empty(n, np.int64)
        prev_g[0] = self.last_g
        prev_g[1:] = g[:-1]
        same = r == prev_r
        dup = same & (g == prev_g)
        disorder = same & (g < prev_g)
        # Round 0 must be complete at the row where round 1 starts.
        is0 = r == 0
        count0_before = self.round0_count + np.concatenate(([0], np.cumsum(is0)[:-1]))
        leaving0 = (prev_r == 0) & (r != 0)
        incomplete0 = leaving0 & (count0_before != meta.total_pages)

        bad = bad_round_order | bad_round_gap | unknown | misaligned | out_of_range | dup | disorder | incomplete0
        if bad.any():
            i = int(np.argmax(bad))
            row = self.rows + i
            if bad_round_order[i]:
                msg = f"round {r[i]} after round {prev_r[i]}: rounds out of order"
            elif bad_round_gap[i]:
                if prev_r[i] < 0:
                    msg = f"trace starts with round {r[i]}, expected round 0 (the full RAM image)"
                else:
                    msg = f"round {r[i]} follows round {prev_r[i]}: gap in rounds"
            elif incomplete0[i]:
                missing = self._first_missing0(g, is0, i)
                msg = (
                    f"round {r[i]} starts but round 0 is incomplete: {count0_before[i]} of "
                    f"{meta.total_pages} pages (first missing: {self._describe_page(missing)})"
                )
            elif unknown[i]:
                msg = f"unknown block index {b[i]} (trace has {nb} blocks)"
            elif misaligned[i]:
                msg = f"block {meta.blocks[bc[i]].name!r} offset {o[i]} is not aligned to the page size {ps}"
            elif out_of_range[i]:
                msg = (
                    f"block {meta.blocks[bc[i]].name!r} offset {o[i]} is outside the block "
                    f"(used_length {self._used[bc[i]]})"
                )
            elif dup[i]:
                msg = f"duplicate page in round {r[i]}: block {meta.blocks[bc[i]].name!r} offset {o[i]}"
            else:
                msg = (
                    f"round {r[i]}: block {meta.blocks[bc[i]].name!r} offset {o[i]} comes after "
                    f"{self._describe_page(int(prev_g[i]))}: not in QEMU order (blocks in metadata order, "
                    f"offsets ascending)"
                )
            raise _fail(self.path, msg, row)

        # Accept: advance state.
        first_missing = self._first_missing0(g, is0, n)
        self.round0_count += int(is0.sum())
        self.round0_first_missing = first_missing if first_missing < self.round0_count else None
        counts = np.bincount(r - max(self.last_round, 0), minlength=1)
        base = max(self.last_round, 0)
        for k, c in enumerate(counts.tolist()):
            rk = base + k
            while len(self.pages_per_round) <= rk:
                self.pages_per_round.append(0)
            self.pages_per_round[rk] += c
        self.last_round = int(r[-1])
        self.last_g = int(g[-1])
        self.rows += n

    def declare_empty_round(self, r: int) -> None:
        """Round ``r`` exists and holds no pages (the writer's ``write`` with no rows)."""
        if r == self.last_round and r >= 1:
            return  # writing nothing into the current round changes nothing
        if r != self.last_round + 1 or r == 0:
            what = "round 0 cannot be empty (it is the full RAM image)" if r == 0 else (
                f"round {r} declared after round {self.last_round}: rounds out of order or with a gap")
            raise _fail(self.path, what, self.rows)
        if self.last_round == 0 and self.round0_count != self.meta.total_pages:
            raise _fail(
                self.path,
                f"round {r} starts but round 0 is incomplete: {self.round0_count} of {self.meta.total_pages} pages",
                self.rows,
            )
        while len(self.pages_per_round) <= r:
            self.pages_per_round.append(0)
        self.empty_rounds = self.empty_rounds | {r}
        self.last_round = r
        self.last_g = -1

    def _first_missing0(self, g: np.ndarray, is0: np.ndarray, upto: int) -> int:
        """First global page index absent from round 0, given the accepted rows plus ``g[:upto]``.

        Round-0 rows are strictly increasing, so page ``k`` is present iff the k-th round-0 row holds it;
        the first position where they differ names the first missing page, and once a page is missing it
        stays missing (later rows only go up).  Returns the page count so far when nothing is missing."""
        if self.round0_first_missing is not None:
            return self.round0_first_missing
        g0 = g[:upto][is0[:upto]]
        expected = self.round0_count + np.arange(len(g0), dtype=np.int64)
        diff = np.nonzero(g0 != expected)[0]
        if len(diff):
            return int(expected[diff[0]])
        return self.round0_count + len(g0)

    def finish(self) -> None:
        """End of trace: round 0 must exist and be complete."""
        total = self.meta.total_pages
        if self.rows == 0:
            raise _fail(self.path, f"trace has no pages: round 0 must hold all {total} pages", 0)
        if self.last_round == 0 and self.round0_count != total:
            missing = self._first_missing0(np.empty(0, np.int64), np.empty(0, bool), 0)
            raise _fail(
                self.path,
                f"round 0 is incomplete at end of trace: {self.round0_count} of {total} pages "
                f"(first missing: {self._describe_page(missing)})",
                self.rows,
            )


# --------------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------------


def trace_schema(page_size: int) -> pa.Schema:
    """The Arrow schema of a v1 trace with the given target page size."""
    return pa.schema(
        [
            pa.field("round", pa.int32(), nullable=False),
            pa.field("block", pa.dictionary(pa.int32(), pa.string()), nullable=False),
            pa.field("offset", pa.int64(), nullable=False),
            pa.field("page", pa.binary(page_size), nullable=False),
        ]
    )


def _create_temp(path: Path) -> str:
    """Create an empty temporary file beside ``path`` (same file system, so ``os.replace`` is atomic).

    Its mode is the umask's, like any ordinary file (:func:`pagecodec.atomic.create_temp`)."""
    try:
        fd, tmp = create_temp(path)
    except (OSError, OutputError) as e:
        raise _fail(path, f"cannot create trace: {str(e).removeprefix(f'{path}: ')}") from None
    os.close(fd)
    return tmp


def _discard(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class TraceWriter:
    """Write a trace, validating every row as it arrives; all or nothing.

    Rows go to a temporary file beside the target, which is renamed over the target (``os.replace``)
    only by a successful :meth:`close`.  Any error — a validation failure escaping the ``with`` block, an
    exception in the producer, a full disk — deletes the temporary file, so a trace file on disk is
    always complete and valid.

    Page bytes passed to :meth:`write` are copied into the writer's row-group buffer, so the caller may
    reuse or mutate its array (the synthetic generator mutates its RAM image in place).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        meta: TraceMeta,
        row_group_pages: int = DEFAULT_ROW_GROUP_PAGES,
        compression_level: int = 3,
    ) -> None:
        if not isinstance(meta, TraceMeta):
            raise TypeError("meta must be a TraceMeta")
        if row_group_pages < 1:
            raise ValueError("row_group_pages must be >= 1")
        self.path = Path(path)
        self.meta = meta
        self.row_group_pages = int(row_group_pages)
        self._check = _RowValidator(meta, self.path)
        self._schema = trace_schema(meta.page_size)
        self._dictionary = pa.array([b.name for b in meta.blocks], pa.string())
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._closed = False
        self._times: list[float] = []  # round_time_s / round_kind of rounds 0 … so far (timed traces)
        self._kinds: list[str] = []
        tmp = _create_temp(self.path)
        self._tmp = tmp
        self._finalizer = weakref.finalize(self, _discard, tmp)
        try:
            self._pq = pq.ParquetWriter(
                tmp,
                self._schema,
                compression="zstd",
                compression_level=compression_level,
                use_dictionary=["block"],
                # Min/max of 4 KiB binary values are useless and large; index columns keep theirs.
                write_statistics=_INDEX_COLUMNS,
                write_page_checksum=True,
            )
        except BaseException:
            self._finalizer()
            raise

    # -- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    @property
    def rows(self) -> int:
        """Rows accepted so far."""
        return self._check.rows

    def write(
        self,
        round: int | np.ndarray,
        block: np.ndarray | int | str,
        offset: np.ndarray | int,
        pages: np.ndarray,
    ) -> None:
        """Append pages of one round, in QEMU order.

        ``block`` is an array of block indices (into ``meta.blocks``), or one index or block name for
        all rows; ``offset`` the byte offsets; ``pages`` a uint8 array of shape ``(n, page_size)``.
        ``round`` may also be an array, one round per row (ascending): the rows of several small
        rounds in one call, which costs one call's overhead instead of one per round (an importer of a
        stream whose every record starts a pass). Raises ``TraceError`` naming the file and the
        (0-based) row of the first bad page; the rejected call leaves the writer unchanged.
        """
        if self._closed:
            raise _fail(self.path, "write on a closed TraceWriter")
        ps = self.meta.page_size
        row = self._check.rows
        off = np.atleast_1d(np.asarray(offset))
        if off.ndim != 1 or not np.issubdtype(off.dtype, np.integer):
            raise _fail(self.path, f"offsets must be a 1-D integer array, got {off.dtype} shape {off.shape}", row)
        n = len(off)
        if isinstance(block, str):
            block = self.meta.block_index(block)
        blk = np.asarray(block)
        if not np.issubdtype(blk.dtype, np.integer):
            raise _fail(self.path, f"block must be an integer index or array of indices, got {blk.dtype}", row)
        if blk.ndim == 0:
            blk = np.full(n, int(blk), dtype=np.int64)
        if blk.shape != (n,):
            raise _fail(self.path, f"block has shape {blk.shape}, offsets have {n} rows", row)
        if not isinstance(pages, np.ndarray):
            raise _fail(self.path, f"pages must be a numpy uint8 array, got {type(pages).__name__}", row)
        if pages.ndim == 1 and n == 1:
            pages = pages.reshape(1, -1)
        if pages.dtype != np.uint8 or pages.ndim != 2 or pages.shape[1] != ps:
            raise _fail(
                self.path,
                f"pages must be uint8 with shape (n, {ps}), got {pages.dtype} {pages.shape}: wrong page length",
                row,
            )
        if pages.shape[0] != n:
            raise _fail(self.path, f"{pages.shape[0]} pages but {n} offsets", row)
        if isinstance(round, np.ndarray):  # one round per row
            if round.shape != (n,) or not np.issubdtype(round.dtype, np.integer) or n == 0:
                raise _fail(self.path, f"rounds must be a non-empty integer array of {n} rows, got {round.dtype} "
                                       f"{round.shape}", row)
            rounds = round.astype(np.int64)
            if int(rounds.min()) < 0 or int(rounds.max()) >= 2**31:
                raise _fail(self.path, f"round {int(rounds.max())} out of range", row)
        else:
            if isinstance(round, bool) or not isinstance(round, (int, np.integer)):
                raise _fail(self.path, f"round must be an integer, got {round!r}", row)
            if not 0 <= int(round) < 2**31:
                raise _fail(self.path, f"round {round} out of range", row)
            if n == 0:
                self._check.declare_empty_round(int(round))
                return
            rounds = np.full(n, int(round), np.int64)
        self._check.feed(rounds, blk.astype(np.int64, copy=False), off.astype(np.int64))

        data = np.ascontiguousarray(pages).tobytes()  # the one copy: the caller may mutate its array
        table = pa.Table.from_arrays(
            [
                pa.array(rounds.astype(np.int32)),
                pa.DictionaryArray.from_arrays(pa.array(blk.astype(np.int32)), self._dictionary),
                pa.array(off.astype(np.int64)),
                pa.FixedSizeBinaryArray.from_buffers(pa.binary(ps), n, [None, pa.py_buffer(data)]),
            ],
            schema=self._schema,
        )
        self._pending.append(table)
        self._pending_rows += n
        if self._pending_rows >= self.row_group_pages:
            self._flush(final=False)

    def timestamp_round(self, round: int, time_s: float, kind: str) -> None:
        """Record when round ``round`` was captured (seconds since the trace started) and what it is
        (:data:`ROUND_KINDS`); rounds in order from 0. A trace with timing is written as version 2 and
        needs it for every round (:class:`RoundTiming` checks it at :meth:`close`). The round's rows
        may be written before or after."""
        if self._closed:
            raise _fail(self.path, "timestamp_round on a closed TraceWriter")
        if round != len(self._times):
            raise _fail(self.path, f"round {round} timestamped after {len(self._times)} round(s): rounds in order from 0")
        RoundTiming(tuple(self._times) + (time_s,), tuple(self._kinds) + (kind,))  # check as it arrives
        self._times.append(float(time_s))
        self._kinds.append(kind)

    def _flush(self, final: bool) -> None:
        """Write whole row groups of ``row_group_pages`` rows; keep the remainder unless ``final``."""
        if not self._pending:
            return
        table = pa.concat_tables(self._pending)
        rg = self.row_group_pages
        full = len(table) if final else (len(table) // rg) * rg
        try:
            if full:
                self._pq.write_table(table.slice(0, full), row_group_size=rg)
        except (pa.ArrowException, OSError) as e:
            raise _fail(self.path, f"write failed: {e}") from e
        rest = table.slice(full)
        self._pending = [rest] if len(rest) else []
        self._pending_rows = len(rest)

    def close(self) -> None:
        """Check the trace is complete, finish the file and move it into place atomically."""
        if self._closed:
            return
        try:
            self._check.finish()
            self._flush(final=True)
            info = self.meta.to_dict()
            info["rounds"] = len(self._check.pages_per_round)
            info["pages_per_round"] = list(self._check.pages_per_round)
            if self._times:
                while len(self._check.pages_per_round) < len(self._times):  # timed rounds left empty
                    self._check.declare_empty_round(len(self._check.pages_per_round))
                rounds = info["rounds"] = len(self._check.pages_per_round)
                info["pages_per_round"] = list(self._check.pages_per_round)
                if len(self._times) != rounds:
                    raise _fail(self.path, f"{len(self._times)} round(s) timestamped, the trace has {rounds}: a "
                                           f"timed trace needs a time for every round")
                info["version"] = TRACE_VERSION
                info.update(RoundTiming(tuple(self._times), tuple(self._kinds)).to_dict())
            self._pq.add_key_value_metadata({METADATA_KEY: json.dumps(info, sort_keys=True)})
            self._pq.close()
            with open(self._tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._closed = True
        self._finalizer.detach()

    def abort(self) -> None:
        """Give up: close and delete the temporary file; the target path is left untouched."""
        if self._closed:
            return
        self._closed = True
        try:
            self._pq.close()
        except Exception:
            pass
        self._pending = []
        self._finalizer()


# --------------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------------


@dataclass
class PageBatch:
    """Consecutive pages of ONE round, in QEMU order.

    ``pages`` is a read-only ``(n, page_size)`` uint8 view on Arrow's decoded buffer; copy it if you need
    to write.  ``block`` holds int32 indices into ``meta.blocks``; ``offset`` int64 byte offsets.
    ``first_row`` is the file row of the first page (for error messages).
    """

    round: int
    block: np.ndarray
    offset: np.ndarray
    pages: np.ndarray
    first_row: int = 0

    def __len__(self) -> int:
        return len(self.offset)


def _pages_view(arr: pa.Array, page_size: int, path: Path, first_row: int) -> np.ndarray:
    """Zero-copy (n, page_size) uint8 view on a page column chunk; checks every page's length.

    fixed_size_binary (what we write) is a plain view.  Plain binary columns (what another tool might
    write) are accepted when every value has exactly ``page_size`` bytes: their values are then contiguous
    too, so the same view works.
    """
    n = len(arr)
    if arr.null_count:
        bad = int(np.argmax(np.asarray(arr.is_null())))
        raise _fail(path, "page is null", first_row + bad)
    t = arr.type
    if pa.types.is_fixed_size_binary(t):
        if t.byte_width != page_size:
            raise _fail(path, f"page has {t.byte_width} bytes, expected page_size {page_size}: wrong page length", first_row)
        buf = arr.buffers()[1]
        start = arr.offset * page_size
    else:
        if pa.types.is_large_binary(t):
            odt = np.int64
        else:
            odt = np.int32
        offs = np.frombuffer(arr.buffers()[1], dtype=odt, count=n + 1, offset=arr.offset * np.dtype(odt).itemsize)
        lengths = np.diff(offs)
        wrong = np.nonzero(lengths != page_size)[0]
        if len(wrong):
            i = int(wrong[0])
            raise _fail(path, f"page has {lengths[i]} bytes, expected page_size {page_size}: wrong page length", first_row + i)
        buf = arr.buffers()[2]
        start = int(offs[0]) if n else 0
    if n == 0:
        return np.empty((0, page_size), np.uint8)
    view = np.frombuffer(buf, dtype=np.uint8, count=n * page_size, offset=start)
    # Arrow buffers export as writable; the trace is read-only input, so make accidents impossible.
    view.setflags(write=False)
    return view.reshape(n, page_size)


class TraceReader:
    """Open and fully validate a trace; then stream its pages as zero-copy batches.

    Validation reads only the round/block/offset columns (16 bytes a row), so it is cheap even for
    large traces, and it runs before any page is handed out: a trace that opens is a trace whose
    structure is right.  Page data is checked (length, Parquet page checksums, decompression) as it
    streams; :meth:`check_pages` does that pass up front for callers that must not start on a trace
    with damaged page bytes.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        #: a local path (``Path``), or the URL as given (``str``): a URL is not a path (``Path`` would
        #: fold ``file:///a`` into ``file:/a``), and errors and results name it as the user wrote it
        self.path: Path | str
        #: the filesystem a URL resolves to (None: a local path, opened as before)
        self._fs: pafs.FileSystem | None = None
        if is_url(path):
            self.path = str(path)
            self._fs, fs_path = _url_filesystem(self.path)
        else:
            self.path = Path(path)
            fs_path = str(self.path)
        self._fs_path = fs_path
        self._sha256: str | None = None  # the file's digest, once asked for (sha256)
        try:
            # No read_dictionary: our files carry the Arrow schema (block comes back dictionary-encoded);
            # a foreign file's plain string column is encoded in _block_indices.
            self._pf = pq.ParquetFile(fs_path, filesystem=self._fs, page_checksum_verification=True)
            kv = self._pf.metadata.metadata or {}
            schema = self._pf.schema_arrow
        except FileNotFoundError:
            raise _fail(self.path, "no such trace file") from None
        except (pa.ArrowException, OSError, ValueError) as e:  # (a corrupt footer: UnicodeDecodeError too)
            raise _fail(self.path, f"not a readable Parquet trace (truncated or corrupt?): {e}") from None
        try:
            self._open(kv, schema)
        except BaseException:
            self.close()
            raise

    def _open(self, kv: Mapping[bytes, bytes], schema: pa.Schema) -> None:
        raw = kv.get(METADATA_KEY.encode())
        if raw is None:
            raise _fail(self.path, f"not a pagecodec trace: no {METADATA_KEY!r} file metadata")
        try:
            info = load_json(raw, max_bytes=MAX_METADATA_BYTES)  # bounded depth and size
        except (ValueError, UnicodeDecodeError) as e:
            raise _fail(self.path, f"metadata {METADATA_KEY!r} is not valid JSON: {e}") from None
        try:
            self.meta = TraceMeta.from_dict(info)
        except TraceError as e:
            raise _fail(self.path, str(e)) from None
        ps = self.meta.page_size

        for name in _COLUMNS:
            if schema.get_field_index(name) < 0:
                raise _fail(self.path, f"column {name!r} missing (have {', '.join(schema.names)})")
        types = {name: schema.field(name).type for name in _COLUMNS}
        for name in ("round", "offset"):
            if not pa.types.is_integer(types[name]):
                raise _fail(self.path, f"column {name!r} has type {types[name]}, expected an integer")
        bt = types["block"]
        if pa.types.is_dictionary(bt):
            bt = bt.value_type
        if not (pa.types.is_string(bt) or pa.types.is_large_string(bt)):
            raise _fail(self.path, f"column 'block' has type {types['block']}, expected string")
        pt = types["page"]
        if pa.types.is_fixed_size_binary(pt):
            if pt.byte_width != ps:
                raise _fail(
                    self.path,
                    f"page has {pt.byte_width} bytes, expected page_size {ps}: wrong page length",
                    0 if self._pf.metadata.num_rows else None,
                )
        elif not (pa.types.is_binary(pt) or pa.types.is_large_binary(pt)):
            raise _fail(self.path, f"column 'page' has type {pt}, expected fixed_size_binary({ps})")

        try:
            small = self._pf.read(columns=_INDEX_COLUMNS, use_threads=True)
        except (pa.ArrowException, OSError) as e:
            raise _fail(self.path, f"cannot read index columns (corrupt file?): {e}") from None
        for name in _INDEX_COLUMNS:
            col = small.column(name)
            if col.null_count:
                bad = int(np.argmax(np.asarray(col.is_null())))
                raise _fail(self.path, f"{name} is null", bad)

        self._round = _int_column(small.column("round"), np.int64)
        self._offset = _int_column(small.column("offset"), np.int64)
        self._block = self._block_indices(small.column("block"))

        declared = info.get("pages_per_round")
        empty = frozenset(i for i, c in enumerate(declared) if c == 0) if isinstance(declared, list) else frozenset()
        check = _RowValidator(self.meta, self.path, empty)
        check.feed(self._round, self._block, self._offset)
        check.finish()
        n_declared = info.get("rounds")
        if (
            isinstance(n_declared, int)
            and n_declared > len(check.pages_per_round)
            and all(k in empty for k in range(len(check.pages_per_round), n_declared))
        ):
            # trailing rounds in which nothing was dirtied, declared empty in pages_per_round
            check.pages_per_round.extend([0] * (n_declared - len(check.pages_per_round)))
        self._round = self._round.astype(np.int32)
        self.num_rounds: int = len(check.pages_per_round)
        self.pages_per_round: list[int] = list(check.pages_per_round)
        self.num_pages: int = check.rows
        for a in (self._round, self._block, self._offset):
            a.setflags(write=False)
        # Round boundaries: rows [starts[k], starts[k+1]) are round k.
        self._round_starts = np.concatenate(([0], np.cumsum(self.pages_per_round))).astype(np.int64)

        if "rounds" in info and info["rounds"] != self.num_rounds:
            raise _fail(self.path, f"metadata says {info['rounds']} rounds, the rows hold {self.num_rounds}")
        #: the format version of the file (1: untimed)
        self.version: int = int(info["version"])
        #: when each round was captured and what it is (v2), or None (a v1 trace: untimed passes)
        self.timing: RoundTiming | None = None
        if self.version >= 2:
            try:
                self.timing = RoundTiming.from_dict(info, self.num_rounds)
            except TraceError as e:
                raise _fail(self.path, str(e)) from None
        if "pages_per_round" in info and info["pages_per_round"] != self.pages_per_round:
            raise _fail(
                self.path,
                f"metadata pages_per_round {info['pages_per_round']} disagrees with the rows {self.pages_per_round}",
            )

    def _block_indices(self, col: pa.ChunkedArray) -> np.ndarray:
        """Map the block column (dictionary-encoded, one dictionary per Parquet column chunk) to indices
        into ``meta.blocks``; unknown names are an error at their first row."""
        out = np.empty(len(col), np.int32)
        pos = 0
        for chunk in col.chunks:
            if not pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_encode()
            names = chunk.dictionary.to_pylist()
            lut = np.array([self.meta._index.get(nm, -1) for nm in names] + [-1], dtype=np.int32)
            idx = _int_column(chunk.indices, np.int64)
            outside = np.flatnonzero((idx < 0) | (idx >= len(names)))  # damaged indices Arrow does not check
            if len(outside):
                i = int(outside[0])
                raise _fail(self.path, f"block column: dictionary index {idx[i]} outside its dictionary of "
                            f"{len(names)} names (corrupt file?)", pos + i)
            mapped = lut[idx]
            unknown = np.nonzero(mapped < 0)[0]
            if len(unknown):
                i = int(unknown[0])
                raise _fail(
                    self.path,
                    f"unknown block {names[idx[i]]!r} (metadata lists {', '.join(b.name for b in self.meta.blocks)})",
                    pos + i,
                )
            out[pos : pos + len(chunk)] = mapped
            pos += len(chunk)
        return out

    # -- context manager ---------------------------------------------------------------------------
    def __enter__(self) -> TraceReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        pf = getattr(self, "_pf", None)
        if pf is not None:
            try:
                pf.close()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"TraceReader({str(self.path)!r}, rounds={getattr(self, 'num_rounds', '?')}, pages={getattr(self, 'num_pages', '?')})"

    # -- index columns ------------------------------------------------------------------------------
    @property
    def round_column(self) -> np.ndarray:
        """Read-only int32 round of every row (validated)."""
        return self._round

    @property
    def block_column(self) -> np.ndarray:
        """Read-only int32 block index of every row (validated)."""
        return self._block

    @property
    def offset_column(self) -> np.ndarray:
        """Read-only int64 byte offset of every row (validated)."""
        return self._offset

    @property
    def file_size(self) -> int:
        if self._fs is None:
            return Path(self.path).stat().st_size
        size = self._fs.get_file_info(self._fs_path).size
        if size is None:
            raise _fail(self.path, "the filesystem does not tell this file's size")
        return int(size)

    # -- streaming ------------------------------------------------------------------------------------
    def batches(self, max_pages: int = DEFAULT_ROW_GROUP_PAGES, start_round: int = 0) -> Iterator[PageBatch]:
        """Stream all pages (from round ``start_round`` on) as :class:`PageBatch` es of at most
        ``max_pages`` pages.

        Reads the page column one piece at a time (Parquet row groups, via ``iter_batches``), so memory
        stays bounded whatever the trace's size; row groups before ``start_round``'s first row are not
        read at all (a dirty log replayed again from round 1 does not decode the RAM image again).  A
        batch never spans two rounds.  Damaged page data raises ``TraceError`` naming the file and the
        first row of the piece that failed.
        """
        if max_pages < 1:
            raise ValueError("max_pages must be >= 1")
        if not 0 <= start_round <= self.num_rounds:
            raise ValueError(f"start_round {start_round} outside 0..{self.num_rounds}")
        ps = self.meta.page_size
        first = int(self._round_starts[start_round])
        row = 0
        md = self._pf.metadata
        for rg in range(md.num_row_groups):
            # One row group at a time, so a read error names the rows it concerns.
            rg_end = row + md.row_group(rg).num_rows
            if rg_end <= first:
                row = rg_end
                continue
            it = self._pf.iter_batches(batch_size=max_pages, row_groups=[rg], columns=["page"], use_threads=True)
            while True:
                try:
                    rb = next(it)
                except StopIteration:
                    break
                except (pa.ArrowException, OSError) as e:
                    raise _fail(
                        self.path, f"cannot read page data of rows {row}..{rg_end - 1} (corrupt file?): {e}", row
                    ) from None
                arr = rb.column(0)
                n = len(arr)
                if row + n > self.num_pages:
                    raise _fail(self.path, "page column has more rows than the index columns", row)
                pages = _pages_view(arr, ps, self.path, row)
                # Split at round boundaries inside this piece.
                lo = max(row, first)
                end = row + n
                while lo < end:
                    r = int(self._round[lo])
                    hi = min(end, int(self._round_starts[r + 1]))
                    yield PageBatch(
                        round=r,
                        block=self._block[lo:hi],
                        offset=self._offset[lo:hi],
                        pages=pages[lo - row : hi - row],
                        first_row=lo,
                    )
                    lo = hi
                row = end
        if row != self.num_pages:
            raise _fail(self.path, f"page column ends after {row} rows, index columns have {self.num_pages}", row)

    def rounds(self, max_pages: int = DEFAULT_ROW_GROUP_PAGES,
               start_round: int = 0) -> Iterator[tuple[int, Iterator[PageBatch]]]:
        """Group :meth:`batches` by round: yields ``(round, batches of that round)`` in order.

        Every round ``start_round`` … num_rounds-1 is yielded, empty ones (nothing dirtied) included.
        Consume each round's iterator before advancing (it is one shared stream, like ``groupby``)."""
        it = self.batches(max_pages, start_round)
        held: list[PageBatch] = []

        def of_round(r: int) -> Iterator[PageBatch]:
            while True:
                b = held.pop() if held else next(it, None)
                if b is None:
                    return
                if b.round != r:
                    held.append(b)
                    return
                yield b

        for r in range(start_round, self.num_rounds):
            yield r, of_round(r)

    def check_pages(self) -> None:
        """Decode every page once (lengths, checksums, decompression) so damage surfaces before use."""
        for _ in self.batches():
            pass

    def sha256(self) -> str:
        """SHA-256 of the file's bytes, as recorded in results and in corpora/MANIFEST.json. Read once
        per reader: every replay of it records the digest (``bench`` replays a short run several
        times per sample), and a reader reads one file as it was opened."""
        if self._sha256 is None:
            self._sha256 = self._hash_file()
        return self._sha256

    def _hash_file(self) -> str:
        h = hashlib.sha256()
        if self._fs is None:
            with open(self.path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            return h.hexdigest()
        try:  # a URL: streamed through the same filesystem the pages are read from
            with self._fs.open_input_stream(self._fs_path) as s:
                for chunk in iter(lambda: s.read(1 << 20), b""):
                    h.update(chunk)
        except (pa.ArrowException, OSError) as e:
            raise _fail(self.path, f"cannot read the file to hash it: {e}") from None
        return h.hexdigest()


def _int_column(col: pa.ChunkedArray | pa.Array, dtype: Any) -> np.ndarray:
    """Integer column to a numpy array of ``dtype`` (one copy of a small column)."""
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 0:
            return np.empty(0, dtype)
        parts = [np.asarray(c.to_numpy(zero_copy_only=False)) for c in col.chunks]
        a = np.concatenate(parts) if len(parts) > 1 else parts[0]
    else:
        a = np.asarray(col.to_numpy(zero_copy_only=False))
    if a.dtype.kind == "u" and a.dtype.itemsize >= 8:
        # uint64 values above int64's range would wrap negative; clamp so they report as out of range.
        a = np.minimum(a, np.iinfo(np.int64).max)
    return a.astype(dtype, copy=True)


_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a URL (``scheme://…``) rather than a local path: traces on shared storage
    are named by URL so that every Dask worker can open the same file."""
    return isinstance(path, str) and _URL.match(path) is not None


def _url_filesystem(url: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and in-filesystem path of a trace URL: pyarrow's own filesystems (``file://``,
    ``s3://``, ``gs://``, ``hdfs://``, … as :meth:`pyarrow.fs.FileSystem.from_uri` knows them), and
    ``http(s)://`` through fsspec, which pyarrow does not read by itself (optional: named when missing)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme in ("http", "https"):
        try:
            import fsspec

            fs = fsspec.filesystem(scheme)
        except ImportError as e:
            raise _fail(url, f"reading a trace over {scheme} needs fsspec's HTTP filesystem: pip install fsspec aiohttp requests ({e})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), url
    try:
        return pafs.FileSystem.from_uri(url)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _fail(url, f"cannot open this URL: {e}") from None


def open_trace(path: str | os.PathLike[str]) -> TraceReader:
    """Open and validate a trace file (``TraceError`` on any problem)."""
    return TraceReader(path)
