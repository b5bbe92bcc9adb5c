"""Random draws that give the same numbers on every numpy the project accepts.

NumPy guarantees the raw stream of its bit generators across versions (NEP 19: ``PCG64`` with a seed
always yields the same 64-bit words), but not the algorithms of ``Generator``'s methods
(``integers``, ``choice``, ``geometric``, … may change in any release). The synthetic traces, and the
shipped corpus made from them, must be regenerable byte for byte from their MANIFEST command on any
numpy, so the generator draws through :class:`StableRandom`: every method here is built from
``PCG64.random_raw`` with integer arithmetic and correctly rounded IEEE operations only (no
transcendental functions, whose last bit may differ between numpy builds and CPUs).

The distributions are the ones the generator needs, not numpy's exact algorithms: the numbers differ
from ``Generator``'s, their laws do not (bounded integers by multiply-shift, whose bias is below
range / 2**32; doubles with 53 random bits; geometric by inversion over a table of powers).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["StableRandom"]

_U64 = np.uint64
_TWO_M53 = 2.0**-53


class StableRandom:
    """The draws :mod:`pagecodec.sources.synth` makes, from ``PCG64(seed)``'s raw words."""

    def __init__(self, seed: int) -> None:
        self._bg = np.random.PCG64(seed)
        self._geo: dict[float, np.ndarray] = {}

    def raw(self, n: int) -> np.ndarray:
        """``n`` raw 64-bit words (uint64), the only thing the other methods read."""
        return np.asarray(self._bg.random_raw(int(n)), dtype=_U64).reshape(int(n))

    def _raw_shaped(self, size: Any) -> np.ndarray:
        shape = () if size is None else ((size,) if isinstance(size, (int, np.integer)) else tuple(size))
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        return self.raw(n).reshape(shape)

    def random(self, size: Any = None) -> Any:
        """Doubles uniform on [0, 1): the top 53 bits of a word, times 2**-53 (exact)."""
        out = (self._raw_shaped(size) >> _U64(11)).astype(np.float64) * _TWO_M53
        return float(out) if size is None else out

    def uniform(self, low: float, high: float, size: Any = None) -> Any:
        return low + (high - low) * self.random(size)

    def integers(self, low: int, high: int | None = None, size: Any = None, dtype: Any = np.int64,
                 endpoint: bool = False) -> Any:
        """Integers in [low, high) ([low, high] with ``endpoint``); ``integers(n)`` is [0, n).

        Ranges up to 2**32: the top 32 bits times the range, shifted down (multiply-shift, exact in
        64-bit integers). The whole 64-bit range: the raw word itself."""
        if high is None:
            low, high = 0, low
        low, high = int(low), int(high) + (1 if endpoint else 0)
        span = high - low
        if span <= 0:
            raise ValueError(f"empty range [{low}, {high})")
        words = self._raw_shaped(size)
        if span == 1 << 64:
            val = words
        elif span <= 1 << 32:
            val = ((words >> _U64(32)) * _U64(span)) >> _U64(32)
        else:
            raise ValueError(f"a range of {span} values is not supported (at most 2**32, or all 2**64)")
        if np.dtype(dtype) == np.uint64:
            out = val + _U64(low)
        else:
            out = val.astype(np.int64) + low
            out = out.astype(dtype, copy=False)
        return out.item() if size is None else out

    def _geometric_table(self, p: float) -> np.ndarray:
        """(1 - p)**k for k = 1, 2, … down to below 2**-60, by repeated multiplication (exact IEEE
        steps, so the table is the same everywhere), ascending (reversed) for searchsorted."""
        t = self._geo.get(p)
        if t is None:
            q, v, vals = 1.0 - p, 1.0, []
            while True:
                v *= q
                if v < 2.0**-60 or len(vals) > 1 << 20:
                    break
                vals.append(v)
            t = self._geo[p] = np.array(vals[::-1], np.float64)
        return t

    def geometric(self, p: float, size: Any = None) -> Any:
        """Trials up to the first success, success probability ``p`` (≥ 1; mean 1/p): X > k exactly
        when u < (1 - p)**k, so X = 1 + the number of table entries above u."""
        if not 0.0 < p <= 1.0:
            raise ValueError(f"p = {p} outside (0, 1]")
        if p == 1.0:
            return 1 if size is None else np.ones(np.shape(self._raw_shaped(size)), np.int64)
        t = self._geometric_table(float(p))
        u = self.random(size)
        above = t.size - np.searchsorted(t, u, side="right")
        out = np.asarray(above, np.int64) + 1
        return int(out) if size is None else out

    def permutation(self, n: int) -> np.ndarray:
        """A uniform random order of range(n): sort by random keys (ties in 64 bits: by position)."""
        return np.argsort(self.raw(n), kind="stable")

    def choice(self, a: Any, size: Any = None, replace: bool = True, p: Any = None) -> Any:
        """Draws from ``a`` (an array, or range(a) for an int): with replacement by inversion of the
        cumulative ``p`` (uniform without it); without replacement, the first ``size`` of a random order."""
        pool = np.arange(a) if isinstance(a, (int, np.integer)) else np.asarray(a)
        m = len(pool)
        if not replace:
            k = int(size if size is not None else 1)
            if k > m:
                raise ValueError(f"cannot take {k} of {m} without replacement")
            return pool[self.permutation(m)[:k]]
        if p is None:
            idx = self.integers(0, m, size)
        else:
            cdf = np.cumsum(np.asarray(p, np.float64))  # a running sum: one order of additions everywhere
            idx = np.minimum(np.searchsorted(cdf / cdf[-1], self.random(size), side="right"), m - 1)
        return pool[idx]

    def bytes(self, n: int) -> bytes:
        """``n`` random bytes: raw words, little-endian."""
        return self.raw(-(-int(n) // 8)).astype("<u8").tobytes()[: int(n)]
