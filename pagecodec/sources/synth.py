"""Synthetic traces: a RAM image plus rounds of dirty pages with controllable write patterns.

Why synthetic traces: real captures are big, slow to make and say nothing about *why* a codec wins.  A
synthetic trace dials each effect in isolation — how much RAM is zero, how much is text (compressible)
or random (not), how dirty pages change (a few counter words → XBZRLE wins; full rewrites → XBZRLE
overflows; zero↔data toggles → zero-page detection and cache behaviour) — and is exactly reproducible
from its parameters and seed.

Model:

* The RAM image (all blocks, laid end to end in migration order) lives in one numpy array.  Every page
  has a content *kind*: zero, text-like, random (incompressible) or structured (sparse 8-byte words:
  pointers, small counters, mostly zeros).
* Round 0 is the full image.  Zero pages and data kinds come in clustered runs (RAM is not salt and
  pepper: zeroed heaps, text buffers and page tables sit in contiguous regions); exactly
  ``round(zero_fraction * pages)`` pages are zero.  Data kinds are drawn with the weights of the
  patterns that produce them: ``text`` → text, ``random`` → random, ``sparse`` → structured (all
  three equally when none of them is weighted).
* Round k >= 1 dirties ``dirty_fraction`` of all pages (rounded, at least one page: the trace format
  has no empty rounds), in clustered runs within the working set (the first ``working_set`` fraction
  of the pages; all of RAM by default), or with ``dirty_order="sweep"`` the next pages of the working
  set in address order, wrapping at its end (a guest looping over a buffer, as the project's tiny guest
  does: the pages dirtied in any window are then known in closed form).  ``unchanged_fraction`` of
  them keep their content (QEMU resends a page whenever it was written, even with the same bytes); the
  others get a write pattern drawn by weight, see :data:`PATTERNS`.
* With ``interval`` the trace is a timed dirty log (trace format v2): round 0 is the RAM image at 0 s
  and round k the slice of the pages written during ((k-1)·interval, k·interval], so a constant
  ``dirty_fraction`` is a constant dirty rate of ``dirty_fraction · RAM / interval`` bytes per second.

All content generation is vectorized over batches of pages; Python loops only run per pattern, per
kind and per chunk of pages.  The random stream (:class:`~pagecodec.sources.stable_random.StableRandom`:
PCG64's raw words, whose sequence NumPy guarantees across versions, turned into draws without numpy's
``Generator`` methods, whose algorithms it does not) is consumed in a fixed order with fixed chunk sizes,
so a seed always gives the same trace on any numpy — byte for byte, including the Parquet file with the
same Parquet writer, since the provenance date is fixed and the recorded command is derived from the
parameters, not the argv.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache

import numpy as np

from pagecodec.errors import TraceError
from pagecodec.sources.stable_random import StableRandom
from pagecodec.limits import format_bytes, machine_memory
from pagecodec.trace.format import (
    DEFAULT_ROW_GROUP_PAGES,
    Provenance,
    RAMBlockInfo,
    TraceMeta,
    TraceWriter,
)

__all__ = [
    "PATTERNS",
    "PatternError",
    "SynthArgumentError",
    "MAX_PAGE_SIZE",
    "parse_patterns",
    "parse_size",
    "format_size",
    "synthesize",
    "synth_command",
    "SYNTH_DATE",
    "main",
]

#: Write patterns applied to dirty pages in rounds >= 1.
#:
#: * ``sparse``  — 1 to 8 eight-byte words change (counter-like ``+= delta``); a zero page so written
#:   becomes a structured page.  At most 64 bytes differ from the previous round.
#: * ``rewrite`` — the whole page gets fresh content of its kind (a zero page gets a data kind).
#: * ``toggle``  — a zero page becomes data (fresh content), a data page becomes all zero.
#: * ``text``    — the page is rewritten with text-like bytes (~3x compressible with zlib).
#: * ``random``  — the page is rewritten with incompressible random bytes.
PATTERNS: tuple[str, ...] = ("sparse", "rewrite", "toggle", "text", "random")

#: Synthetic content has no capture date; a fixed one keeps files byte-identical across runs.
SYNTH_DATE = "1970-01-01T00:00:00+00:00"

# Content kinds.
ZERO, TEXT, RANDOM, STRUCT = 0, 1, 2, 3

_CHUNK = 1024  # pages generated per vectorized step (bounds temporary memory, fixes RNG consumption)
_RUN_MEAN = 8  # mean length (pages) of a dirty run / content run
_CONTENT_RUN_MEAN = 16


class SynthArgumentError(TraceError, ValueError):
    """An argument of :func:`synthesize` out of range, or a RAM size the machine cannot hold (both a
    ValueError and a TraceError, so argument parsers and the CLI's error handling both catch it)."""


class PatternError(SynthArgumentError):
    """A pattern spec names an unknown pattern or has a bad weight."""


#: Largest page size synthesized: QEMU's largest target page (TARGET_PAGE_BITS 16).
MAX_PAGE_SIZE = 65536
#: Bytes of memory the generator holds per page besides the page itself (kinds, indexes, masks).
_PAGE_OVERHEAD = 64


def parse_patterns(spec: str | Mapping[str, float]) -> dict[str, float]:
    """Parse ``"sparse=3,rewrite=1"`` (a bare name means weight 1) into ``{name: weight}``.

    Weights must be finite and >= 0 with a positive sum; names must be in :data:`PATTERNS`.
    """
    if isinstance(spec, Mapping):
        items = list(spec.items())
    else:
        items = []
        for part in str(spec).split(","):
            part = part.strip()
            if not part:
                continue
            name, sep, value = part.partition("=")
            name = name.strip()
            if sep:
                try:
                    w = float(value)
                except ValueError:
                    raise PatternError(f"pattern {name!r}: weight {value.strip()!r} is not a number") from None
            else:
                w = 1.0
            items.append((name, w))
    out: dict[str, float] = {}
    for name, w in items:
        if name not in PATTERNS:
            raise PatternError(f"unknown write pattern {name!r} (known: {', '.join(PATTERNS)})")
        w = float(w)
        if not math.isfinite(w) or w < 0:
            raise PatternError(f"pattern {name!r}: weight must be a finite number >= 0, got {w}")
        out[name] = out.get(name, 0.0) + w
    if not out or sum(out.values()) <= 0:
        raise PatternError("pattern weights must have a positive sum")
    return out


_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str | int) -> int:
    """``"32M"`` → 33554432 (binary K/M/G/T suffixes, optional trailing ``B``/``iB``)."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _SUFFIX and s[-1:] else ""
    num = s[: len(s) - len(unit)] if unit else s
    try:
        value = float(num) * _SUFFIX[unit]
    except ValueError:
        raise ValueError(f"bad size {text!r} (examples: 4096, 256K, 32M, 1G)") from None
    if value != int(value) or value < 0:
        raise ValueError(f"bad size {text!r}: must be a whole number of bytes >= 0")
    return int(value)


def format_size(n: int) -> str:
    """Inverse of :func:`parse_size` for exact multiples (``33554432`` → ``"32M"``)."""
    for unit in ("T", "G", "M", "K"):
        if n and n % _SUFFIX[unit] == 0:
            return f"{n // _SUFFIX[unit]}{unit}"
    return str(n)


def _fmt_float(x: float) -> str:
    return format(float(x), "g")


def synth_command(
    *,
    ram_size: int,
    rounds: int,
    dirty_fraction: float | Sequence[float],
    patterns: Mapping[str, float],
    zero_fraction: float,
    seed: int,
    page_size: int = 4096,
    blocks: Sequence[tuple[str, int]] | None = None,
    unchanged_fraction: float = 0.05,
    interval: float | None = None,
    working_set: float = 1.0,
    dirty_order: str = "runs",
) -> str:
    """The canonical command line recorded in a synthetic trace's provenance.

    Derived from the parameters (not from ``sys.argv``) and without the output path, so that the same
    parameters give the same file bytes whichever front end (this module, ``pagecodec trace synth``)
    made it and wherever it was written.
    """
    dirty = (
        _fmt_float(dirty_fraction)
        if isinstance(dirty_fraction, (int, float))
        else ",".join(_fmt_float(x) for x in dirty_fraction)
    )
    pats = ",".join(f"{n}={_fmt_float(patterns[n])}" for n in PATTERNS if n in patterns)
    parts = [
        "pagecodec trace synth",
        *(
            [f"--block {name}={format_size(size)}" for name, size in blocks]
            if blocks
            else [f"--ram-size {format_size(ram_size)}"]
        ),
        f"--rounds {rounds}",
        f"--dirty-fraction {dirty}",
        f"--pattern {pats}",
        f"--zero-fraction {_fmt_float(zero_fraction)}",
        f"--unchanged-fraction {_fmt_float(unchanged_fraction)}",
        f"--page-size {page_size}",
        f"--seed {seed}",
    ]
    # the timed-log options only when used, so untimed traces keep their command (and bytes)
    if interval is not None:
        parts.append(f"--interval {_fmt_float(interval)}")
    if working_set != 1.0:
        parts.append(f"--working-set {_fmt_float(working_set)}")
    if dirty_order != "runs":
        parts.append(f"--dirty-order {dirty_order}")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Content generators: (rng, n, page_size) -> (n, page_size) uint8
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _text_tokens() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A fixed English-like token table: (blob, token start, token length, token probability).

    Tokens are a word followed by a separator.  Words: common English words plus pseudo-words made of
    syllables, with Zipf frequencies; the table comes from its own fixed seed so it never depends on the
    trace's seed.
    """
    common = (
        "the of and to in is was that for it with as his on be at by had are but from or have an they "
        "which one you were her all she there would their we him been has when who will more no if out "
        "so said what up its about into than them can only other new some could time these two may then "
        "do first any my now such like our over man me even most made after also did many before must "
        "through back years where much your way well down should because each just those people how too "
        "little state good very make world still own see men work long get here between both life being "
        "under never day same another know while last might us great old year off come since against go "
        "came right used take three"
    ).split()
    r = StableRandom(0x5EED7E87)
    onsets = "b c d f g h j k l m n p r s t v w z br ch cl cr dr fl gr pl pr sh st str th tr".split()
    vowels = "a e i o u ai ea ee ie oo ou".split()
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "st", "ng", "ck", "m"]
    words = list(common)
    seen = set(words)
    while len(words) < 1500:
        nsyl = int(r.integers(1, 4))
        w = "".join(
            onsets[r.integers(len(onsets))] + vowels[r.integers(len(vowels))] + codas[r.integers(len(codas))]
            for _ in range(nsyl)
        )
        if w not in seen:
            seen.add(w)
            words.append(w)
    seps = [" ", " ", " ", " ", " ", " ", ", ", ". ", ".\n"]
    sep_p = np.array([1.0] * len(seps))
    sep_p /= math.fsum(sep_p.tolist())
    # libm's pow and an exactly rounded sum: numpy's SIMD power and pairwise sums may differ in the
    # last bit between builds, and the table must be the same everywhere (stable_random.py)
    zipf = np.array([1.0 / math.pow(i + 2.7, 1.05) for i in range(len(words))])
    zipf /= math.fsum(zipf.tolist())
    tokens = [w + s for w in words for s in seps]
    prob = (zipf[:, None] * sep_p[None, :]).ravel()
    enc = [t.encode() for t in tokens]
    lengths = np.array([len(t) for t in enc], dtype=np.int64)
    starts = np.zeros(len(enc), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    blob = np.frombuffer(b"".join(enc), dtype=np.uint8)
    cdf = np.cumsum(prob)
    cdf /= cdf[-1]
    return blob, starts, lengths, cdf


_PHRASES = 8  # phrases per text page ...
_PHRASE_TOKENS = 6  # ... of this many tokens ...
_PHRASE_REPEAT = 0.55  # ... making up this share of the page: ~3x with zlib level 1, like real text


def _gen_text(rng: StableRandom, n: int, ps: int) -> np.ndarray:
    """Text-like pages: Zipf-distributed words, where some phrases recur within the page.

    Independent words alone only compress ~2x (zlib sees no repeats); real text in RAM — logs, markup,
    source — repeats phrases.  Each page gets its own few phrases, and a fixed share of the page's
    segments are copies of them.  Nothing repeats *across* pages, so a streaming compressor (multifd
    zstd) gains nothing from neighbouring pages that real text would not give it.
    """
    blob, starts, lengths, cdf = _text_tokens()
    mean_len = math.fsum((lengths * np.diff(np.concatenate(([0.0], cdf)))).tolist())
    k = _PHRASE_TOKENS
    segs = -(-(int(ps / mean_len * 1.3) + 8) // k)

    def draw(shape: tuple[int, ...]) -> np.ndarray:
        return np.minimum(np.searchsorted(cdf, rng.random(shape), side="right"), len(cdf) - 1)

    phrases = draw((n, _PHRASES, k))
    fresh = draw((n, segs, k))
    pick = rng.integers(0, _PHRASES, size=(n, segs))
    repeat = rng.random((n, segs)) < _PHRASE_REPEAT
    ids = np.where(repeat[:, :, None], phrases[np.arange(n)[:, None], pick], fresh).reshape(n, segs * k)
    lens = lengths[ids]  # (n, t)
    flat_ids = ids.ravel()
    flat_lens = lens.ravel()
    tok_out_start = np.cumsum(flat_lens) - flat_lens
    total = int(flat_lens.sum())
    src = np.repeat(starts[flat_ids] - tok_out_start, flat_lens) + np.arange(total, dtype=np.int64)
    stream = blob[src]
    row_total = lens.sum(axis=1)
    row_start = np.cumsum(row_total) - row_total
    col = np.arange(ps, dtype=np.int64)
    # Rows are ~30% longer than a page; the modulo only matters in the (never seen) short case.
    idx = row_start[:, None] + (col[None, :] % row_total[:, None])
    return stream[idx]


def _gen_random(rng: StableRandom, n: int, ps: int) -> np.ndarray:
    """Incompressible pages (encrypted or compressed data, random keys)."""
    return np.frombuffer(rng.bytes(n * ps), dtype=np.uint8).reshape(n, ps)


def _gen_struct(rng: StableRandom, n: int, ps: int) -> np.ndarray:
    """Structured pages: mostly-zero arrays of 8-byte words — pointers into a 64-bit address space,
    small counters and a few random words — like heap objects and kernel structures."""
    w = ps // 8
    density = rng.uniform(0.05, 0.5, size=(n, 1))
    present = rng.random((n, w)) < density
    present[np.arange(n), rng.integers(0, w, size=n)] = True  # a data page is never all zero
    which = rng.random((n, w))
    ptr = np.uint64(0x00007F0000000000) + (rng.integers(0, 1 << 24, size=(n, w), dtype=np.uint64) << np.uint64(4))
    small = rng.integers(1, 4096, size=(n, w), dtype=np.uint64)
    rnd = rng.integers(0, np.iinfo(np.uint64).max, size=(n, w), dtype=np.uint64, endpoint=True)
    rnd |= np.uint64(1)  # every word value is non-zero, so present words really are data
    words = np.where(which < 0.5, ptr, np.where(which < 0.85, small, rnd))
    words = np.where(present, words, np.uint64(0)).astype("<u8")
    return words.view(np.uint8).reshape(n, ps)


_GENERATORS = {TEXT: _gen_text, RANDOM: _gen_random, STRUCT: _gen_struct}


def _fill(rng: StableRandom, ram: np.ndarray, idx: np.ndarray, kind: int) -> None:
    """Write fresh content of ``kind`` into pages ``idx`` of the RAM image, chunk by chunk."""
    ps = ram.shape[1]
    if kind == ZERO:
        ram[idx] = 0
        return
    gen = _GENERATORS[kind]
    for s in range(0, len(idx), _CHUNK):
        part = idx[s : s + _CHUNK]
        ram[part] = gen(rng, len(part), ps)


def _fill_by_kind(rng: StableRandom, ram: np.ndarray, idx: np.ndarray, kinds: np.ndarray) -> None:
    for k in (ZERO, TEXT, RANDOM, STRUCT):
        sel = idx[kinds == k]
        if len(sel):
            _fill(rng, ram, sel, k)


# --------------------------------------------------------------------------------------------------
# Layout: clustered runs
# --------------------------------------------------------------------------------------------------


def _runs_mask(rng: StableRandom, n: int, count: int, mean: int) -> np.ndarray:
    """Boolean mask of exactly ``count`` of ``n`` pages, laid out in runs of mean length ``mean``
    (workloads dirty neighbouring pages together: arrays, stacks, page-cache files)."""
    sel = np.zeros(n, dtype=bool)
    if count <= 0:
        return sel
    if count >= n:
        sel[:] = True
        return sel
    have = 0
    for _ in range(64):
        m = max(1, math.ceil((count - have) / mean))
        starts = rng.integers(0, n, size=m)
        ends = np.minimum(starts + rng.geometric(1.0 / mean, size=m), n)
        diff = np.zeros(n + 1, dtype=np.int64)
        np.add.at(diff, starts, 1)
        np.add.at(diff, ends, -1)
        sel |= np.cumsum(diff[:n]) > 0
        have = int(sel.sum())
        if have >= count:
            break
    if have < count:  # near-total coverage: top up with single pages
        free = np.flatnonzero(~sel)
        sel[rng.choice(free, size=count - have, replace=False)] = True
    elif have > count:  # trim the excess, a few pages off the runs
        on = np.flatnonzero(sel)
        sel[rng.choice(on, size=have - count, replace=False)] = False
    return sel


def _content_runs(rng: StableRandom, n: int, zero_pages: int, kind_p: np.ndarray) -> np.ndarray:
    """Kind of every page for round 0: runs of one kind, exactly ``zero_pages`` zero pages."""
    lens = rng.geometric(1.0 / _CONTENT_RUN_MEAN, size=max(1, n // _CONTENT_RUN_MEAN + 8))
    while lens.sum() < n:
        lens = np.concatenate((lens, rng.geometric(1.0 / _CONTENT_RUN_MEAN, size=len(lens))))
    run_of_page = np.repeat(np.arange(len(lens)), lens)[:n]
    nruns = int(run_of_page[-1]) + 1 if n else 0
    run_kind = np.array([TEXT, RANDOM, STRUCT], dtype=np.uint8)[rng.choice(3, size=nruns, p=kind_p)]
    kinds = run_kind[run_of_page]
    # Zero pages: whole runs in random order until the exact count is reached (the last run is cut).
    rank = rng.permutation(nruns)
    order = np.argsort(rank[run_of_page].astype(np.int64) * (n + 1) + np.arange(n), kind="stable")
    kinds[order[:zero_pages]] = ZERO
    return kinds


# --------------------------------------------------------------------------------------------------
# The generator
# --------------------------------------------------------------------------------------------------


def synthesize(
    path: str | os.PathLike[str],
    *,
    ram_size: int,
    rounds: int,
    dirty_fraction: float | Sequence[float],
    patterns: Mapping[str, float] | str,
    zero_fraction: float,
    seed: int,
    page_size: int = 4096,
    blocks: Sequence[tuple[str, int]] | None = None,
    unchanged_fraction: float = 0.05,
    command: str = "",
    row_group_pages: int = DEFAULT_ROW_GROUP_PAGES,
    progress: Callable[[int], None] | None = None,
    interval: float | None = None,
    working_set: float = 1.0,
    dirty_order: str = "runs",
) -> TraceMeta:
    """Write a synthetic trace to ``path`` and return its metadata.

    RAM layout: one block ``pc.ram`` of ``ram_size`` bytes, or, when ``blocks`` is given, exactly those
    blocks ``(name, size)`` in migration order (QEMU migrates the biggest first, e.g.
    ``[("pc.ram", 32 << 20), ("pc.bios", 256 << 10)]``) — then ``ram_size`` is ignored, so that a front
    end can keep a ``--ram-size`` default beside ``--block`` options.  ``rounds`` counts round 0, so ``rounds=6`` gives the full image
    plus 5 dirty rounds; ``dirty_fraction`` is one fraction for every dirty round or one per dirty round
    (``rounds - 1`` values).  ``patterns`` maps names from :data:`PATTERNS` to weights (or is a spec
    string for :func:`parse_patterns`).  ``command`` overrides the provenance command (default: the
    canonical :func:`synth_command`).  ``interval`` (seconds) makes it a timed dirty log, ``working_set``
    (a fraction of the pages, from the first) bounds where rounds write, ``dirty_order`` is ``runs``
    (clustered random runs) or ``sweep`` (address order, wrapping): see the module's docstring.  Same
    arguments and seed → byte-identical file.
    """
    pats = parse_patterns(patterns)
    if not isinstance(page_size, int) or not 64 <= page_size <= MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise SynthArgumentError(f"page_size must be a power of two from 64 to {MAX_PAGE_SIZE}, got {page_size!r}")
    if blocks:
        layout = [(str(n), int(s)) for n, s in blocks]
    elif ram_size:
        layout = [("pc.ram", int(ram_size))]
    else:
        raise SynthArgumentError("no RAM: ram_size is 0 and no blocks given")
    for name, size in layout:
        if size <= 0 or size % page_size:
            raise SynthArgumentError(f"block {name!r}: size {size} must be a positive multiple of the page size {page_size}")
    _check_memory(layout, page_size)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SynthArgumentError(f"seed must be an integer >= 0, got {seed!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise SynthArgumentError(f"rounds must be an integer >= 1 (round 0 is the full image), got {rounds!r}")
    if isinstance(dirty_fraction, (int, float)):
        dirty = [float(dirty_fraction)] * (rounds - 1)
    else:
        dirty = [float(x) for x in dirty_fraction]
        if len(dirty) != rounds - 1:
            raise SynthArgumentError(f"dirty_fraction has {len(dirty)} values, expected one per dirty round ({rounds - 1})")
    for name, v in [("zero_fraction", zero_fraction), ("unchanged_fraction", unchanged_fraction)] + [
        (f"dirty_fraction[{i}]", d) for i, d in enumerate(dirty)
    ]:
        if not (0.0 <= float(v) <= 1.0):  # (NaN fails this too)
            raise SynthArgumentError(f"{name} must be within [0, 1], got {v}")
    if interval is not None and not (isinstance(interval, (int, float)) and math.isfinite(interval) and interval > 0):
        raise SynthArgumentError(f"interval must be a number of seconds > 0, got {interval!r}")
    if not (isinstance(working_set, (int, float)) and 0.0 < float(working_set) <= 1.0):
        raise SynthArgumentError(f"working_set must be within (0, 1], got {working_set!r}")
    if dirty_order not in ("runs", "sweep"):
        raise SynthArgumentError(f"dirty_order must be 'runs' or 'sweep', got {dirty_order!r}")
    if any(d <= 0 for d in dirty):
        # Trace rounds are consecutive and each present round has rows: an empty round is not expressible.
        raise SynthArgumentError("dirty_fraction must be > 0 for every dirty round (a trace round cannot be empty)")

    meta = TraceMeta(
        page_size,
        tuple(RAMBlockInfo(name, size, 4096) for name, size in layout),
        Provenance(
            "synthetic",
            command
            or synth_command(
                ram_size=int(ram_size or 0),
                rounds=rounds,
                dirty_fraction=dirty_fraction if not isinstance(dirty_fraction, (int, float)) else float(dirty_fraction),
                patterns=pats,
                zero_fraction=zero_fraction,
                seed=seed,
                page_size=page_size,
                blocks=list(blocks or ()),
                unchanged_fraction=unchanged_fraction,
                interval=interval,
                working_set=working_set,
                dirty_order=dirty_order,
            ),
            SYNTH_DATE,
        ),
    )

    rng = StableRandom(seed)
    n = meta.total_pages
    starts = meta.block_starts
    kind_w = np.array([pats.get("text", 0.0), pats.get("random", 0.0), pats.get("sparse", 0.0)])
    if kind_w.sum() <= 0:
        kind_w = np.ones(3)
    kind_p = kind_w / kind_w.sum()
    pat_names = [p for p in PATTERNS if pats.get(p, 0.0) > 0]
    pat_p = np.array([pats[p] for p in pat_names])
    pat_p = pat_p / pat_p.sum()

    def draw_data_kinds(m: int) -> np.ndarray:
        return np.array([TEXT, RANDOM, STRUCT], dtype=np.uint8)[rng.choice(3, size=m, p=kind_p)]

    # Round 0: the full image.
    kinds = _content_runs(rng, n, int(round(zero_fraction * n)), kind_p)
    try:
        ram = np.zeros((n, page_size), dtype=np.uint8)
    except MemoryError:
        raise SynthArgumentError(f"{format_bytes(n * page_size)} of RAM cannot be allocated here (the machine, or "
                                 f"ulimit -v, holds {format_bytes(machine_memory())}, and some of it is in use)") from None
    all_pages = np.arange(n, dtype=np.int64)
    _fill_by_kind(rng, ram, all_pages[kinds != ZERO], kinds[kinds != ZERO])

    def emit(writer: TraceWriter, rnd: int, g: np.ndarray, contiguous: bool) -> None:
        step = writer.row_group_pages
        for s in range(0, len(g), step):
            part = g[s : s + step]
            blk = np.searchsorted(starts, part, side="right") - 1
            off = (part - starts[blk]) * page_size
            pages = ram[part[0] : part[-1] + 1] if contiguous else ram[part]
            writer.write(rnd, blk, off, pages)
            if progress is not None:
                progress(len(part))

    ws = max(1, int(round(float(working_set) * n)))  # the pages rounds >= 1 write: [0, ws)
    cursor = 0  # sweep: the next page to write

    with TraceWriter(path, meta, row_group_pages=row_group_pages) as writer:
        emit(writer, 0, all_pages, contiguous=True)
        if interval is not None:
            writer.timestamp_round(0, 0.0, "image")
        for k in range(1, rounds):
            count = min(ws, max(1, int(round(dirty[k - 1] * n))))  # at least one page: rounds are never empty
            if dirty_order == "sweep":
                dirty_idx = np.sort((cursor + np.arange(count, dtype=np.int64)) % ws)
                cursor = (cursor + count) % ws
            else:
                dirty_idx = np.flatnonzero(_runs_mask(rng, ws, count, _RUN_MEAN))
            if interval is not None:
                writer.timestamp_round(k, k * float(interval), "slice")
            unchanged = rng.random(len(dirty_idx)) < unchanged_fraction
            changed = dirty_idx[~unchanged]
            which = rng.choice(len(pat_names), size=len(changed), p=pat_p)
            for pi, name in enumerate(pat_names):
                idx = changed[which == pi]
                if len(idx):
                    _apply(name, rng, ram, kinds, idx, draw_data_kinds)
            emit(writer, k, dirty_idx, contiguous=False)
    return meta


def _check_memory(layout: Sequence[tuple[str, int]], page_size: int) -> None:
    """Refuse, before anything is made, a RAM the generator cannot hold: it keeps the whole image in
    memory (and a few bytes per page besides), so the RAM must fit in what the machine (or ulimit -v)
    holds."""
    ram = sum(size for _, size in layout)
    need = ram + ram // page_size * _PAGE_OVERHEAD
    have = machine_memory()
    if need > have:
        raise SynthArgumentError(f"RAM of {format_bytes(ram)} needs about {format_bytes(need)} of memory to synthesize "
                                 f"(the whole image is held while it is written), more than this machine (or ulimit "
                                 f"-v) holds: {format_bytes(have)}")


def synth_pages(ram_size: int, rounds: int, dirty_fraction: float | Sequence[float], page_size: int = 4096,
                blocks: Sequence[tuple[str, int]] | None = None) -> int:
    """How many pages :func:`synthesize` writes with these arguments (a progress bar's total): the
    whole image, then each dirty round's share (at least one page)."""
    n = sum(-(-int(s) // page_size) for _, s in blocks) if blocks else -(-int(ram_size) // page_size)
    dirty = [float(dirty_fraction)] * (rounds - 1) if isinstance(dirty_fraction, (int, float)) else list(dirty_fraction)
    return n + sum(max(1, int(round(d * n))) for d in dirty)  # (an upper bound with a smaller working set)


def _apply(
    name: str,
    rng: StableRandom,
    ram: np.ndarray,
    kinds: np.ndarray,
    idx: np.ndarray,
    draw_data_kinds: Callable[[int], np.ndarray],
) -> None:
    """Apply write pattern ``name`` to pages ``idx`` (in place on ``ram`` and ``kinds``)."""
    if name == "sparse":
        w = ram.shape[1] // 8
        for s in range(0, len(idx), _CHUNK):
            part = idx[s : s + _CHUNK]
            m = len(part)
            words = ram[part].view("<u8")  # (m, w) copy of the pages
            nchg = rng.integers(1, 9, size=m)
            cols = rng.integers(0, w, size=(m, 8))
            delta = rng.integers(1, 1 << 16, size=(m, 8), dtype=np.uint64)
            mask = np.arange(8)[None, :] < nchg[:, None]
            rows = np.broadcast_to(np.arange(m)[:, None], (m, 8))[mask]
            c = cols[mask]
            # Counter-like: old + delta (delta >= 1, so each chosen word really changes; a word chosen
            # twice keeps the last update, still different from the old value).
            words[rows, c] = words[rows, c] + delta[mask]
            ram[part] = words.view(np.uint8)
        kinds[idx[kinds[idx] == ZERO]] = STRUCT
    elif name == "rewrite":
        k = kinds[idx].copy()
        z = k == ZERO
        k[z] = draw_data_kinds(int(z.sum()))
        kinds[idx] = k
        _fill_by_kind(rng, ram, idx, k)
    elif name == "toggle":
        k = kinds[idx].copy()
        z = k == ZERO
        newk = np.zeros_like(k)
        newk[z] = draw_data_kinds(int(z.sum()))
        kinds[idx] = newk
        _fill_by_kind(rng, ram, idx, newk)
    elif name == "text":
        kinds[idx] = TEXT
        _fill(rng, ram, idx, TEXT)
    elif name == "random":
        kinds[idx] = RANDOM
        _fill(rng, ram, idx, RANDOM)
    else:  # pragma: no cover - parse_patterns rejects unknown names
        raise PatternError(f"unknown write pattern {name!r}")


# --------------------------------------------------------------------------------------------------
# python -m pagecodec.sources.synth
# --------------------------------------------------------------------------------------------------


def _block_arg(text: str) -> tuple[str, int]:
    name, sep, size = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SIZE, got {text!r}")
    return name, parse_size(size)


def _dirty_arg(text: str) -> float | list[float]:
    parts = [float(x) for x in text.split(",") if x.strip()]
    return parts[0] if len(parts) == 1 else parts


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line front end; the parameters map one to one onto :func:`synthesize`."""
    ap = argparse.ArgumentParser(prog="python -m pagecodec.sources.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ram-size", type=parse_size, default=0, help="size of the single block pc.ram (K/M/G suffixes)")
    ap.add_argument("--block", type=_block_arg, action="append", default=[], metavar="NAME=SIZE",
                    help="RAM blocks in migration order, instead of a single pc.ram (repeatable)")
    ap.add_argument("--rounds", type=int, required=True, help="rounds including round 0 (the full image)")
    ap.add_argument("--dirty-fraction", "--dirty", dest="dirty", type=_dirty_arg, required=True, help="dirty fraction per round, or one per dirty round, comma-separated")
    ap.add_argument("--pattern", "--patterns", dest="patterns", type=parse_patterns, default="sparse=1", help=f"weights, e.g. sparse=4,text=1 (patterns: {', '.join(PATTERNS)})")
    ap.add_argument("--zero-fraction", type=float, default=0.5)
    ap.add_argument("--unchanged-fraction", type=float, default=0.05)
    ap.add_argument("--page-size", type=int, default=4096)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("-o", "--output", required=True, help="trace file to write (.trace.parquet)")
    args = ap.parse_args(argv)
    try:
        meta = synthesize(
            args.output,
            ram_size=args.ram_size,
            rounds=args.rounds,
            dirty_fraction=args.dirty,
            patterns=args.patterns,
            zero_fraction=args.zero_fraction,
            seed=args.seed,
            page_size=args.page_size,
            blocks=args.block,
            unchanged_fraction=args.unchanged_fraction,
        )
    except (ValueError, TraceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    size = os.path.getsize(args.output)
    print(f"{args.output}: {meta.total_pages} pages of RAM ({meta.ram_bytes} bytes), {args.rounds} rounds, {size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
