"""Mergeable latency histograms (DDSketch, 1 % relative accuracy) and their stored byte form.

`second_aggregates.sketch` holds one of these per (scenario run, second, endpoint). Any set of them
(several endpoints, a time window, shards of one run) merges exactly: the merged sketch answers the
same quantiles as one sketch fed every value, within 1 % relative error of the exact value.

Byte form (little-endian, versioned so it can change without breaking stored runs):
``b"DDS1"`` · float64 relative accuracy · float64 zero count · float64 count · float64 sum ·
float64 min · float64 max · uint32 n · int32[n] keys · float64[n] counts.
The keys are ddsketch's `LogarithmicMapping` keys, so `to_ddsketch` gives a real `DDSketch`.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping

RELATIVE_ACCURACY = 0.01
_MAPPING = LogarithmicMapping(RELATIVE_ACCURACY)
_MULTIPLIER = _MAPPING._multiplier  # keys = ceil(log2(v) * multiplier), as ddsketch computes them
_MIN_POSITIVE = _MAPPING.min_possible
_HEADER = struct.Struct("<4s6dI")
_MAGIC = b"DDS1"


def keys_of(values: np.ndarray) -> np.ndarray:
    """ddsketch bucket keys of positive values, vectorised (same formula as `LogarithmicMapping.key`)."""
    return np.ceil(np.log2(values) * _MULTIPLIER).astype(np.int64)


#: Dense key range kept per histogram: 2^(-400/m) ≈ 0.3 µs … 2^(900/m) ≈ 18 h (m = multiplier). Latencies
#: outside it are clamped to the end buckets (no k6 duration gets there).
KEY_MIN, KEY_MAX = -400, 900
NBINS = KEY_MAX - KEY_MIN + 1


@dataclass
class Histogram:
    """Counts per sketch bucket (dense numpy array) plus exact count/sum/min/max; adds and merges in bulk."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(NBINS))
    zero_count: float = 0.0
    count: float = 0.0
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    @property
    def bins(self) -> dict[int, float]:
        """Non-empty buckets as {ddsketch key: count}."""
        nz = np.flatnonzero(self.counts)
        return dict(zip((nz + KEY_MIN).tolist(), self.counts[nz].tolist(), strict=True))

    def add_values(self, values: np.ndarray) -> None:
        """Add latencies (ms). Values below the smallest bucket (0 ms) go to the zero bucket."""
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0:
            return
        pos = values[values >= _MIN_POSITIVE]
        self.zero_count += float(values.size - pos.size)
        if pos.size:
            idx = np.clip(keys_of(pos), KEY_MIN, KEY_MAX) - KEY_MIN
            self.counts += np.bincount(idx, minlength=NBINS)
        self.count += float(values.size)
        self.sum += float(values.sum())
        self.min = min(self.min, float(values.min()))
        self.max = max(self.max, float(values.max()))

    def merge(self, other: Histogram) -> None:
        self.counts += other.counts
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """ddsketch's quantile (lower rank convention: the value at rank floor(q·(n−1)))."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Iterable[float]) -> list[float | None]:
        """Several quantiles from one cumulative sum, exactly as ddsketch's `get_quantile_value`."""
        qs = list(qs)
        if self.count <= 0:
            return [None] * len(qs)
        cum = np.cumsum(self.counts)
        out: list[float | None] = []
        for q in qs:
            rank = q * (self.count - 1)
            if rank < self.zero_count:
                out.append(0.0)
                continue
            i = int(np.searchsorted(cum, rank - self.zero_count, side="right"))
            out.append(min(float(_MAPPING.value(i + KEY_MIN)), self.max) if i < NBINS else self.max)
        return out

    def to_bytes(self) -> bytes:
        nz = np.flatnonzero(self.counts)
        keys = (nz + KEY_MIN).astype(np.int32)
        counts = self.counts[nz].astype(np.float64)
        head = _HEADER.pack(
            _MAGIC,
            RELATIVE_ACCURACY,
            self.zero_count,
            self.count,
            self.sum,
            self.min if self.count else 0.0,
            self.max if self.count else 0.0,
            keys.size,
        )
        return head + keys.tobytes() + counts.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Histogram:
        magic, acc, zero, count, total, lo, hi, n = _HEADER.unpack_from(data, 0)
        if magic != _MAGIC or acc != RELATIVE_ACCURACY:
            raise ValueError(f"not a soundcheck sketch (magic {magic!r}, accuracy {acc})")
        off = _HEADER.size
        keys = np.frombuffer(data, dtype=np.int32, count=n, offset=off)
        counts = np.frombuffer(data, dtype=np.float64, count=n, offset=off + 4 * n)
        dense = np.zeros(NBINS)
        np.add.at(dense, np.clip(keys, KEY_MIN, KEY_MAX) - KEY_MIN, counts)
        return cls(dense, zero, count, total, lo if count else math.inf, hi if count else -math.inf)

    def to_ddsketch(self) -> DDSketch:
        """The same distribution as a ddsketch `DDSketch` (for code that wants the library object)."""
        s = DDSketch(RELATIVE_ACCURACY)
        for k, c in self.bins.items():
            s._store.add(k, c)
        s._zero_count = self.zero_count
        s._count = self.count
        s._sum = self.sum
        s._min = self.min
        s._max = self.max
        return s


def grouped(values: np.ndarray, starts: np.ndarray) -> list[Histogram]:
    """One histogram per run of `values` (runs begin at the sorted offsets `starts`), built in one pass.

    Same buckets and counts as `Histogram.add_values` per run; for the ingest, which adds every
    (second, endpoint) group of a chunk at once instead of one numpy round per group."""
    values = np.asarray(values, dtype=np.float64)
    g = starts.size
    if g == 0:
        return []
    lengths = np.diff(np.append(starts, values.size))
    group = np.repeat(np.arange(g), lengths)
    pos = values >= _MIN_POSITIVE
    idx = np.clip(keys_of(values[pos]), KEY_MIN, KEY_MAX) - KEY_MIN
    dense = np.bincount(group[pos] * NBINS + idx, minlength=g * NBINS).reshape(g, NBINS).astype(np.float64)
    zeros = (lengths - np.bincount(group[pos], minlength=g)).tolist()
    sums = np.add.reduceat(values, starts).tolist()
    mins = np.minimum.reduceat(values, starts).tolist()
    maxs = np.maximum.reduceat(values, starts).tolist()
    return [Histogram(dense[i], float(zeros[i]), float(lengths[i]), sums[i], mins[i], maxs[i]) for i in range(g)]


def merge_bytes(blobs: Iterable[bytes | None]) -> Histogram:
    """Merge stored sketches (e.g. every second of a phase, or every endpoint) into one histogram."""
    h = Histogram()
    for b in blobs:
        if b:
            h.merge(Histogram.from_bytes(b))
    return h
