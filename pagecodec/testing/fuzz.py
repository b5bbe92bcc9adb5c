"""The kit's bounded fuzz of a codec's decoder: malformed records must raise DecodeError, nothing else.

A decoder's input comes from outside (a file, a capture, a network), so every payload it can be handed
must end in one of two ways: the page it decodes to, or a :class:`~pagecodec.errors.DecodeError` with
the offset, the page left as it was. The fuzz takes a stream the codec wrote, finds the codec's own
records in it (the receiver's :class:`~pagecodec.chain.receiver.RecordObserver` says where they are),
damages one record per input — bytes flipped, the payload cut short or lengthened (its length field
kept consistent, so the damage reaches the decoder), replaced by random bytes, emptied — and loads the
stream on a fresh receiver. A failure is any other outcome: an exception that is not a WireError
(the receiver reports it as the plugin's bug), or a page written before its record was rejected.

The inputs come from ``seed``; each failure says which input it was, so it can be replayed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..chain.receiver import PageRecords, Receiver, RecordObserver
from ..errors import PluginError, WireError
from ..wire.extension import EXTENSION_HEADER
from ..wire.reader import StreamReader

__all__ = ["FuzzReport", "find_records", "fuzz_decoder", "MUTATIONS"]

MUTATIONS = ("flip", "truncate", "extend", "random", "empty")


@dataclass
class _Record:
    at: int  # header
    payload: int  # first payload byte
    length: int


@dataclass
class FuzzReport:
    inputs: int
    rejected: int  # inputs the receiver refused with a WireError/DecodeError (the right outcome)
    problems: list[str]


class _Finder(RecordObserver):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.found: list[tuple[int, int]] = []  # (record header, extension header)

    def before_pages(self, records: PageRecords) -> None:
        if records.kind == self.kind:
            self.found += list(zip(records.at.tolist(), records.payload_at.tolist()))


def find_records(data: bytes, make_receiver: Callable[[RecordObserver | None], Receiver], kind: str) -> list[_Record]:
    """Where the records of extension codec ``kind`` are in ``data`` (header, payload, length)."""
    finder = _Finder(kind)
    make_receiver(finder).load_stream(StreamReader(data, "stream"))
    out = []
    for at, ext in finder.found:
        n = int.from_bytes(data[ext + 2 : ext + EXTENSION_HEADER], "big")
        out.append(_Record(at, ext + EXTENSION_HEADER, n))
    return out


def _mutate(data: bytes, rec: _Record, how: str, rng: np.random.Generator) -> bytes:
    """``data`` with ``rec``'s payload damaged ``how``; the extension length field follows the payload."""
    payload = bytearray(data[rec.payload : rec.payload + rec.length])
    if how == "flip":
        if not payload:
            payload = bytearray(rng.integers(0, 256, 1, dtype=np.uint8).tobytes())
        for i in rng.integers(0, len(payload), int(rng.integers(1, 9))).tolist():
            payload[i] ^= int(rng.integers(1, 256))
    elif how == "truncate":
        payload = payload[: int(rng.integers(0, max(1, len(payload))))]
    elif how == "extend":
        at = int(rng.integers(0, len(payload) + 1))
        payload[at:at] = rng.integers(0, 256, int(rng.integers(1, 65)), dtype=np.uint8).tobytes()
    elif how == "random":
        payload = bytearray(rng.integers(0, 256, int(rng.integers(0, 2 * len(payload) + 2)), dtype=np.uint8).tobytes())
    else:
        payload = bytearray()
    head = data[: rec.payload - 4] + len(payload).to_bytes(4, "big")
    return head + bytes(payload) + data[rec.payload + rec.length :]


class _Guard(RecordObserver):
    """Remembers the page of the damaged record just before it is written."""

    def __init__(self, at: int, receiver: list[Receiver]) -> None:
        self.at = at
        self.receiver = receiver
        self.before: tuple[int, int, np.ndarray] | None = None  # (block, page, content)

    def before_pages(self, records: PageRecords) -> None:
        hit = np.flatnonzero(records.at == self.at)
        if len(hit):
            page = int(records.index[hit[0]])
            self.before = (records.block, page, self.receiver[0].block_pages[records.block][page].copy())


def fuzz_decoder(data: bytes, make_receiver: Callable[[RecordObserver | None], Receiver], kind: str, *,
                 inputs: int = 200, seconds: float = 20.0, seed: int = 0) -> FuzzReport:
    """Damage ``kind``'s records in ``data`` ``inputs`` times (within ``seconds``) and load each stream
    on a fresh receiver from ``make_receiver(observer)``; see the module docstring."""
    records = [r for r in find_records(data, make_receiver, kind)]
    if not records:
        return FuzzReport(0, 0, [f"the stream holds no record of codec {kind!r} to damage"])
    rng = np.random.default_rng(seed)
    problems: list[str] = []
    rejected = done = 0
    t_end = time.monotonic() + seconds
    while done < inputs and time.monotonic() < t_end:
        rec = records[int(rng.integers(0, len(records)))]
        how = MUTATIONS[done % len(MUTATIONS)]
        bad = _mutate(data, rec, how, rng)
        holder: list[Receiver] = []
        guard = _Guard(rec.at, holder)
        rc = make_receiver(guard)
        holder.append(rc)
        label = f"input {done} (seed {seed}: {how} the record at offset {rec.at})"
        done += 1
        try:
            rc.load_stream(StreamReader(bad, "fuzzed"))
        except PluginError as e:
            problems.append(f"{label}: the decoder raised something other than DecodeError: {e}")
            continue
        except WireError as e:
            rejected += 1
            end = rec.payload + rec.length + (len(bad) - len(data))
            if guard.before is not None and e.offset is not None and rec.at <= e.offset <= end:
                block, page, old = guard.before
                if not np.array_equal(rc.block_pages[block][page], old):
                    problems.append(f"{label}: the record was rejected ({e}) but its page had been written: "
                                    f"validate before writing")
            continue
        except Exception as e:  # noqa: BLE001 — the kit reports whatever escaped, never crashes
            problems.append(f"{label}: {type(e).__name__} escaped the receiver: {e}")
    return FuzzReport(done, rejected, problems)
