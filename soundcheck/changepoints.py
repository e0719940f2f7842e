"""Lasting changes in a nightly series (R-REG-1): Apache Otava's change-point detection behind one function.

Otava (formerly DataStax Hunter) splits a series with E-divisive means and keeps a change point when a
Student t-test says its two segments differ. Chosen over `signal-processing-algorithms`' `e_divisive`
by measurement (`bench/changepoints.py`, figures in docs/history.md): the same recall at the same
false-alarm rate, several times faster, and deterministic — e_divisive's permutation test can give a
re-judged run a different answer.

On top of Otava, one rule of ours: every segment must hold at least `min_run` points, so one bad night
(or one good one) is never a change, and a change is reported from its second run at the new level.

Otava splits whole series and favours long segments, so a step of 1.6 noise SDs (+10 % at this machine's
6.3 %) is rarely significant three runs after it starts. `recent_shift` asks the narrower question the nightly
campaign has each morning: do the last three runs, every one of them, sit beyond the level before them? A
t-test on their mean, with a guard on each run so that a single bad night never counts; `shifts` joins both.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from soundcheck.profile import History

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


#: The runs a new level must hold before `recent_shift` reads it (R-REG-1: found within three runs).
RECENT_RUNS = 3
#: The fewest runs before them that make a baseline: fewer, and the noise estimate is itself noise.
MIN_BASELINE = 12
#: Each of those runs must lie this many prediction SDs beyond the baseline's mean, on the same side.
GUARD = 0.5


def recent_shift(
    values: Sequence[float],
    *,
    max_pvalue: float = 0.002,
    min_change: float = 0.05,
    runs: int = RECENT_RUNS,
    since: int = 0,
) -> ChangePoint | None:
    """A new level in the last `runs` points against the baseline before them (the points from `since`):
    their mean differs from the baseline's by a two-sided t-test at `max_pvalue` (the baseline's sample SD,
    n − 1 degrees of freedom) and by at least `min_change`, and every one of them lies on the same side,
    more than `GUARD` prediction SDs out. The guard is what keeps one bad night from carrying the mean: it
    needs the other runs out too. bench/changepoints.py measures the false alarms this gives."""
    from scipy.stats import t as student

    xs = [float(v) for v in values]
    base, tail = xs[since : len(xs) - runs], xs[len(xs) - runs :]
    if len(base) < MIN_BASELINE or len(tail) < runs or any(math.isnan(x) for x in xs):
        return None
    n = len(base)
    mean = sum(base) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in base) / (n - 1))
    if mean == 0 or sd == 0:
        return None
    after = sum(tail) / runs
    sign = 1.0 if after > mean else -1.0
    if min(sign * (x - mean) for x in tail) <= GUARD * sd * math.sqrt(1 + 1 / n):
        return None
    p_value = 2 * float(student.sf(abs(after - mean) / (sd * math.sqrt(1 / runs + 1 / n)), n - 1))
    if p_value > max_pvalue or abs(after / mean - 1.0) < min_change:
        return None
    return ChangePoint(len(xs) - runs, mean, after, p_value)


def shifts(values: Sequence[float], settings: History | None = None) -> list[ChangePoint]:
    """Every lasting change of the series, oldest first, with the profile's `history` thresholds (the
    defaults without): Otava's, then a recent shift of the last runs when Otava has not (yet) placed a change
    within one run of its start. The recent test's baseline starts at Otava's last change, so an old step
    does not pass for a new one. `recent_pvalue` None: Otava's only."""
    h = settings or History()
    cps = change_points(values, max_pvalue=h.max_pvalue, min_change=h.min_change)
    if h.recent_pvalue is None:
        return cps
    since = cps[-1].index if cps else 0
    recent = recent_shift(values, max_pvalue=h.recent_pvalue, min_change=h.min_change, since=since)
    if recent is None or any(abs(c.index - recent.index) <= 1 for c in cps):
        return cps
    return [*cps, recent]
