"""Seeded mutation fuzzing of the readers (stream, trace, multifd: tests/fuzz_targets.py).

    python tests/mutfuzz.py READER [--runs N] [--seconds S] [--seed K] [--artifacts DIR] [--ram-limit MiB]

Each input is one of the reader's seeds (tests/fuzz_seeds.py: valid inputs pagecodec's writers make,
the regression corpus's small hostile ones, tests/corpus/READER/) with 1 to 8 mutations of the kinds
that reach these formats' weak spots: bit flips, bytes set to boundary values, 2/4/8-byte big- and
little-endian integers overwritten with boundary values (0, 1, 2^31, 2^32 - 1, 2^40, 2^62, 2^63,
2^64 - 1, page multiples — the sizes, counts and offsets a record claims), ranges deleted, repeated
(long lists, deep nesting) or spliced from another seed, the input cut short; for traces, also one
change that Parquet itself accepts (:func:`mutate_trace`: metadata fields, column values, types,
nulls, dictionaries, rows), so that the reader's own checks meet it. Inputs that end in
another exception than a PageCodecError, take longer than ``--timeout`` seconds or raise MemoryError
under the address-space limit (``--ram-limit``, as ``ulimit -v``) are failures: written to
``--artifacts`` and counted (the slowest input is written there too). Deterministic for a seed (one random generator, seeds in name order).

Unlike libFuzzer (tests/fuzz_*.py, atheris), this keeps every seed in play whatever coverage
instrumentation sees, and counts its inputs exactly, so CI can ask for a number of them in a budget.
Prints a summary line of JSON; exit status 1 if any input failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

_INTS = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0xFFFF, 4095, 4096, 4097, 1 << 20, 1 << 21, 2**31 - 1, 2**31,
         2**32 - 1, 2**32, 1 << 40, 2**62, 2**63 - 1, 2**63, 2**64 - 1]


def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """``data`` with 1 to 8 random mutations (see the module docstring)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(10)
        n = len(b)
        at = rng.randrange(n) if n else 0
        if op == 0 and n:  # flip a bit
            b[at] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # a boundary byte
            b[at] = rng.choice((0, 1, 0x7E, 0x7F, 0x80, 0xFE, 0xFF))
        elif op in (2, 3) and n:  # a boundary integer, 2/4/8 bytes, either byte order
            w = rng.choice((2, 4, 8))
            v = rng.choice(_INTS) & ((1 << 8 * w) - 1)
            at = min(at, max(0, n - w))
            b[at : at + w] = v.to_bytes(w, rng.choice(("big", "little")))
        elif op == 4 and n:  # add or subtract a little from an aligned be32/be64 (lengths, counts)
            w = rng.choice((4, 8))
            at = min(at - at % w, max(0, n - w))
            v = (int.from_bytes(b[at : at + w], "big") + rng.randint(-16, 16)) % (1 << 8 * w)
            b[at : at + w] = v.to_bytes(w, "big")
        elif op == 5 and n:  # delete a range
            del b[at : at + rng.randint(1, max(1, min(n - at, 64 if rng.random() < 0.8 else n)))]
        elif op == 6 and n:  # repeat a range (long lists, deep nesting)
            ln = rng.randint(1, min(n - at, 32))
            b[at:at] = bytes(b[at : at + ln]) * rng.choice((2, 16, 256, 4096))
        elif op == 7:  # insert random bytes
            b[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 8 and pool:  # splice another seed in
            other = rng.choice(pool)
            if other:
                s = rng.randrange(len(other))
                b[at:] = other[s : s + rng.randint(1, len(other) - s)] + bytes(b[at:])
        elif op == 9 and n:  # cut short
            del b[at:]
    return bytes(b[: 1 << 22])


_META_VALUES = [0, -1, 1, 3, 4096, 2**31, 2**62, 2**63, 2**64, 1e308, "x", None, [], {}, [0] * 64, True]


def mutate_trace(rng: random.Random, data: bytes) -> bytes:
    """A valid trace rewritten with one change Parquet itself accepts (so the reader's own checks are
    what meets it): a metadata field set to a boundary value, a column's values, type or nulls changed,
    a column dropped or renamed, rows cut or repeated. Falls back to byte mutations on an input that
    is not a readable Parquet file."""
    import io
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
        meta = json.loads(table.schema.metadata[b"pagecodec.trace"])
    except Exception:  # noqa: BLE001 — not a trace: byte mutations instead
        return mutate(rng, data, [])
    op = rng.randrange(6)
    if op == 0:  # a metadata field
        target = rng.choice([meta, *[b for b in meta.get("blocks", []) if isinstance(b, dict)]])
        key = rng.choice(sorted(target) + ["rounds", "pages_per_round", "extra"])
        target[key] = rng.choice(_META_VALUES)
    elif op == 1:  # an index column's values
        name = rng.choice(["round", "offset"])
        col = table.column(name).to_numpy().astype(np.int64).copy()
        if len(col):
            col[rng.randrange(len(col))] = rng.choice([-1, 0, 1, 4096, 2**31 - 1, 2**40, 2**62, 2**63 - 1])
        typ = rng.choice([pa.int32(), pa.int64(), pa.uint64(), pa.int8()]) if name == "offset" else pa.int64()
        try:
            arr = pa.array(col).cast(typ, safe=False)
        except pa.ArrowException:
            arr = pa.array(col)
        table = table.set_column(table.schema.get_field_index(name), name, arr)
    elif op == 2:  # the block column: other names, plain strings, an index past the dictionary's names
        names = rng.choice([["pc.ram"], ["pc.ram", "other"], [""], ["x" * 300]])
        idx = np.array([rng.randrange(len(names)) for _ in range(table.num_rows)], np.int32)
        arr = pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(names)) if rng.random() < 0.7 \
            else pa.array([names[i] for i in idx])
        table = table.set_column(table.schema.get_field_index("block"), "block", arr)
    elif op == 3:  # the page column: another width, plain binary, nulls
        ps = rng.choice([8, 4095, 4096, 8192])
        rows = table.num_rows
        if rng.random() < 0.5:
            arr = pa.array([bytes(ps)] * rows, pa.binary(ps))
        else:
            arr = pa.array([None if rng.random() < 0.1 else bytes(ps) for _ in range(rows)], pa.binary())
        table = table.set_column(table.schema.get_field_index("page"), "page", arr)
    elif op == 4:  # a column dropped or renamed
        i = rng.randrange(table.num_columns)
        table = table.remove_column(i) if rng.random() < 0.5 else table.rename_columns(
            [("renamed" if j == i else n) for j, n in enumerate(table.column_names)])
    else:  # rows cut or repeated
        k = rng.randrange(table.num_rows + 1)
        table = table.slice(0, k) if rng.random() < 0.5 else pa.concat_tables([table, table.slice(0, k)])
    table = table.replace_schema_metadata({b"pagecodec.trace": json.dumps(meta).encode()})
    out = io.BytesIO()
    pq.write_table(table, out, row_group_size=rng.choice([1, 3, 4096]))
    return out.getvalue()


class _Timeout(Exception):
    pass


def _alarm(signum, frame):  # noqa: ANN001
    raise _Timeout()


def campaign(reader: str, runs: int, seconds: float, seed: int, artifacts: Path | None,
             timeout: float = 10.0, seeds_dir: Path | None = None) -> dict:
    """Run up to ``runs`` inputs (or ``seconds``); the summary: inputs, outcomes by class, failures."""
    import fuzz_seeds
    from fuzz_targets import TARGETS

    from pagecodec.errors import PageCodecError

    target = TARGETS[reader]
    if seeds_dir is None:  # made for this campaign, read into memory, removed
        with tempfile.TemporaryDirectory(prefix=f"pagecodec-seeds-{reader}-") as tmp:
            fuzz_seeds.make_seeds(reader, Path(tmp))
            pool = [p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()]
    else:
        pool = [p.read_bytes() for p in sorted(seeds_dir.iterdir()) if p.is_file()]
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    failures: list[dict] = []
    slowest = (0.0, "")
    slowest_input = b""
    signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    i = 0
    while i < runs and time.monotonic() - t0 < seconds:
        if i < len(pool):
            data = pool[i]
        elif reader == "trace" and rng.random() < 0.3:  # one change Parquet accepts, for the reader's own checks
            data = mutate_trace(rng, rng.choice(pool))
        else:
            data = mutate(rng, rng.choice(pool), pool)
        i += 1
        t = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, timeout)
        try:
            target(data)
            outcomes["ok"] += 1
        except PageCodecError as e:
            outcomes[type(e).__name__] += 1
        except BaseException as e:  # noqa: BLE001 — anything else is what we look for
            if isinstance(e, KeyboardInterrupt):
                raise
            signal.setitimer(signal.ITIMER_REAL, 0)
            kind = "timeout" if isinstance(e, _Timeout) else type(e).__name__
            digest = hashlib.sha1(data).hexdigest()[:16]
            rec = {"input": i, "kind": kind, "sha1": digest, "message": str(e)[:300],
                   "where": traceback.format_exc().strip().splitlines()[-3:]}
            failures.append(rec)
            outcomes["FAILED " + kind] += 1
            if artifacts is not None:
                artifacts.mkdir(parents=True, exist_ok=True)
                (artifacts / f"{reader}-{kind}-{digest}").write_bytes(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        dt = time.monotonic() - t
        if dt > slowest[0]:
            slowest = (dt, hashlib.sha1(data).hexdigest()[:16])
            slowest_input = data
    wall = time.monotonic() - t0
    if artifacts is not None and slowest[1]:  # kept so a campaign's slowest input can be looked at
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / f"{reader}-slowest-{slowest[1]}").write_bytes(slowest_input)
    return {"reader": reader, "inputs": i, "wall_s": round(wall, 1), "inputs_per_s": round(i / max(wall, 1e-9)),
            "seed": seed, "seeds": len(pool), "outcomes": dict(outcomes), "failures": failures[:20],
            "failed": len(failures), "slowest_s": round(slowest[0], 3), "slowest_sha1": slowest[1],
            "peak_rss_mib": _peak_mib()}


def _peak_mib() -> int:
    """This process's peak RSS (VmHWM: ru_maxrss would include the parent's, kept across fork and exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("reader", choices=["stream", "trace", "multifd"])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds one input may take")
    ap.add_argument("--artifacts", type=Path, default=None, help="where failing inputs are written")
    ap.add_argument("--seeds-dir", type=Path, default=None, help="seeds (default: made by fuzz_seeds)")
    ap.add_argument("--ram-limit", type=int, default=4096, help="address-space limit in MiB (ulimit -v)")
    a = ap.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (a.ram_limit << 20, hard))
    res = campaign(a.reader, a.runs, a.seconds, a.seed, a.artifacts, a.timeout, a.seeds_dir)
    print(json.dumps(res), flush=True)
    return 1 if res["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
