"""Lasting changes in a nightly series (R-REG-1): Apache Otava's change-point detection behind one function.

Otava (formerly DataStax Hunter) splits a series with E-divisive means and keeps a change point when a
Student t-test says its two segments differ. Chosen over `signal-processing-algorithms`' `e_divisive`
by measurement (`bench/changepoints.py`, figures in docs/history.md): the same recall at the same
false-alarm rate, several times faster, and deterministic — e_divisive's permutation test can give a
re-judged run a different answer.

On top of Otava, one rule of ours: every segment must hold at least `min_run` points, so one bad night
(or one good one) is never a change, and a change is reported from its second run at the new level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

#: Points a level must hold to count: one noisy night is not a change (R-REG-1).
MIN_RUN = 2


@dataclass(frozen=True)
class ChangePoint:
    index: int  # the first point at the new level
    before: float  # mean of the segment before
    after: float  # mean of the segment from `index` on
    p_value: float

    @property
    def rel_change(self) -> float:
        return self.after / self.before - 1.0 if self.before else math.inf


def noise(values: Sequence[float]) -> float | None:
    """Run-to-run noise relative to the level, from the series itself: the median absolute difference of
    successive points (robust to a step, which moves one difference) as a standard deviation."""
    xs = [float(v) for v in values]
    if len(xs) < 3:
        return None
    diffs = sorted(abs(b - a) for a, b in zip(xs, xs[1:], strict=False))
    level = sorted(abs(x) for x in xs)[len(xs) // 2]
    if level == 0:
        return None
    mad = diffs[len(diffs) // 2] if len(diffs) % 2 else (diffs[len(diffs) // 2 - 1] + diffs[len(diffs) // 2]) / 2
    return 1.4826 * mad / math.sqrt(2) / level


def change_points(
    values: Sequence[float], *, max_pvalue: float = 0.0001, min_change: float = 0.05, min_run: int = MIN_RUN
) -> list[ChangePoint]:
    """The series' lasting changes, oldest first. A series with fewer than 2 × `min_run` points, or a
    level of zero (no relative change), has none."""
    from otava.analysis import TTestSignificanceTester, compute_change_points, merge

    xs = [float(v) for v in values]
    if len(xs) < 2 * min_run or any(math.isnan(x) for x in xs):
        return []
    cps, _ = compute_change_points(xs, window_len=max(30, len(xs)), max_pvalue=max_pvalue, min_magnitude=min_change)
    tester = TTestSignificanceTester(max_pvalue)
    while cps:
        bounds = [0, *[int(c.index) for c in cps], len(xs)]
        short = next((k for k in range(len(bounds) - 1) if bounds[k + 1] - bounds[k] < min_run), None)
        if short is None:
            break
        del cps[max(short - 1, 0)]  # the change that opened the short segment (the first one, for the first)
        intervals = tester.get_intervals(cps)
        cps = [tester.change_point(c.to_candidate(), xs, intervals) for c in cps]
        cps = merge(cps, xs, max_pvalue, min_change)  # drop what no longer holds once recomputed
    out = []
    for c in cps:
        before, after, p = float(c.stats.mean_1), float(c.stats.mean_2), float(c.stats.pvalue)
        if before == 0 or math.isnan(p) or p > max_pvalue or abs(after / before - 1.0) < min_change:
            continue
        out.append(ChangePoint(int(c.index), before, after, p))
    return out
