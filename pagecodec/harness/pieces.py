"""A run's CPU time cut into pieces of its work, so repeats can be combined piece by piece.

Why: on a shared machine the CPU one unit of work costs moves between two or more levels within
seconds (another tenant on the core, the host's memory traffic). Measured here: a 13 ms zlib kernel
took 13 or 20 ms for seconds at a time, and a 2.5 s replay measured between two such kernels
followed them (correlation 0.77), varying from 2.55 to 4.7 s/GiB over 150 s on one CPU. A run's
total is a sum over seconds of that, so the minimum of five totals still depends on whether one of
the five runs happened to fall into a quiet stretch as a whole: between two ``bench --repeat 5``
invocations, 7 or 8 of 120 minima moved by 10–28 %.

The work of a run is deterministic: its n-th 512-page segment does the same work in every repeat.
So each repeat records its sender's and its destination's cumulative thread CPU at the same points
(after every segment, by when the destination has loaded its part of the stream if a part was full;
before each round; at the end), and the repeats are combined per piece: the **piecewise minimum** is
the sum over the pieces of each piece's least CPU over the repeats. It needs each piece, not each
whole run, to fall once into a quiet stretch. On the same samples of two pairs of ``bench --repeat
5`` invocations in a noisy hour it kept 82 and 106 of 120 rows within 10 % where the least total
kept 70 and 97 (README, "How stable"). A state that lasts a whole invocation it cannot undo: that is
what :mod:`.calibration` reports. It is a minimum in the same sense as the least total (what the
work costs when nothing disturbs it), is never above it, and falls as repeats are added, as any
minimum does.

A piece holds the sender's CPU (every stage but the trace decoding: those
:data:`.repeats.SENDER_EXCLUDED` names; less the bytes' hand-over to an in-process destination, as
the totals count it) and the destination's. Pieces are kept to at most :data:`MAX_PIECES` per run
by summing neighbours in fixed groups, which depend only on the number of marks, so repeats stay
aligned.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from ..chain.metrics import CpuClock

__all__ = ["CpuPieces", "MAX_PIECES", "merge_pieces", "elementwise_min"]

#: At most this many pieces per run in a results object (a 1 GiB trace has thousands of segments).
MAX_PIECES = 1024


class CpuPieces:
    """Marks on a run's CPU clocks. ``sender`` is the sender's clock, whose stages in ``excluded`` are
    not the run's work (:data:`.repeats.SENDER_EXCLUDED`); ``uncharged()`` the sender's CPU
    spent so far handing bytes to an in-process destination (taken out of its stages at the end of
    the run: :meth:`Destination.uncharge_transport`); ``decode()`` the destination's CPU so far
    (None: the run does not decode). Call :meth:`mark` at the same points of the work in every
    repeat; :meth:`to_json` gives the pieces between consecutive marks."""

    def __init__(self, sender: CpuClock, excluded: frozenset[str], uncharged: Callable[[], int] | None = None,
                 decode: Callable[[], int] | None = None) -> None:
        self.sender = sender
        self.excluded = excluded
        self.uncharged = uncharged
        self.decode = decode
        self._sender_marks: list[int] = [0]
        self._decode_marks: list[int] = [0]

    def mark(self) -> None:
        ns = sum(v for k, v in self.sender.ns.items() if k not in self.excluded)
        if self.uncharged is not None:
            ns -= self.uncharged()
        self._sender_marks.append(ns)
        if self.decode is not None:
            self._decode_marks.append(self.decode())

    def to_json(self) -> dict[str, list[int]]:
        """``sender`` (and ``decode`` if the run decodes): CPU ns per piece, at most :data:`MAX_PIECES`."""
        out = {"sender": merge_pieces(np.diff(np.asarray(self._sender_marks, np.int64)))}
        if self.decode is not None:
            out["decode"] = merge_pieces(np.diff(np.asarray(self._decode_marks, np.int64)))
        return out


def merge_pieces(pieces: np.ndarray | Sequence[int], limit: int = MAX_PIECES) -> list[int]:
    """``pieces`` summed in consecutive groups of ceil(n / limit), so that at most ``limit`` remain."""
    a = np.asarray(pieces, np.int64)
    group = -(-len(a) // limit) if len(a) > limit else 1
    if group > 1:
        pad = (-len(a)) % group
        a = np.concatenate([a, np.zeros(pad, np.int64)]).reshape(-1, group).sum(axis=1)
    return [int(x) for x in a]


def elementwise_min(pieces: Sequence[dict[str, list[int]] | None]) -> dict[str, list[int]] | None:
    """Each piece's least CPU over several runs of the same work (None if a run has no pieces or the
    runs were cut differently: then they are not the same work, piece for piece)."""
    if not pieces or any(p is None for p in pieces):
        return None
    out: dict[str, list[int]] = {}
    for side in pieces[0]:  # type: ignore[union-attr]
        arrays = [p.get(side) for p in pieces]  # type: ignore[union-attr]
        if any(a is None for a in arrays) or len({len(a) for a in arrays}) != 1:  # type: ignore[arg-type]
            return None
        out[side] = [int(x) for x in np.min(np.asarray(arrays, np.int64), axis=0)]
    return out
