"""Change points in a KPI's nightly series (R-REG-1): Otava's E-divisive test and the recent-shift test beside it."""

from __future__ import annotations

import numpy as np
import pytest

from soundcheck.changepoints import change_points, noise, recent_shift, shifts
from soundcheck.profile import History

# ------------------------------------------------------------------------------------ change points


def _noisy(n: int, level: float = 100.0, sd: float = 0.03, seed: int = 1) -> list[float]:
    return list(level * (1 + np.random.default_rng(seed).normal(0, sd, n)))


def test_a_step_with_known_size_is_found_at_its_first_run():
    xs = _noisy(20)
    xs[14:] = [x * 1.25 for x in xs[14:]]
    (cp,) = change_points(xs)
    assert cp.index == 14 and cp.rel_change == pytest.approx(0.25, abs=0.05) and cp.p_value < 0.001


def test_one_bad_night_is_not_a_change_anywhere_in_the_series():
    for where in (0, 8, 19):
        xs = _noisy(20)
        xs[where] *= 1.5
        assert change_points(xs) == [], where


def test_a_change_needs_two_runs_at_the_new_level():
    xs = _noisy(15)
    assert change_points([*xs, 150.0]) == []
    assert [c.index for c in change_points([*xs, 150.0, 151.0])] == [15]


def test_noise_is_estimated_from_the_series_itself_despite_a_step():
    xs = _noisy(40, sd=0.05, seed=3)
    xs[20:] = [x * 1.3 for x in xs[20:]]
    assert noise(xs) == pytest.approx(0.05 * 1.15, rel=0.35)  # the step moves the level, not the estimate much


def test_a_modest_step_is_found_on_its_third_run_before_otava_can_place_it():
    xs = _noisy(18, sd=0.05, seed=2)
    xs[15:] = [x * 1.15 for x in xs[15:]]  # three runs at +15 %: three noise SDs
    assert change_points(xs) == []  # too short a segment for Otava's split statistic
    (cp,) = shifts(xs)
    assert cp.index == 15 and cp.rel_change == pytest.approx(0.15, abs=0.06) and cp.p_value <= 0.002
    assert shifts(xs, History(recent_pvalue=None)) == []  # the profile can turn it off
    assert recent_shift(xs[:17]) is None  # two runs are not yet a level


def test_the_recent_test_needs_every_one_of_the_last_runs_beyond_the_bound():
    xs = _noisy(18, sd=0.05, seed=4)
    xs[15] *= 1.5
    xs[17] *= 1.5  # two bad nights of three, and a normal one between them
    assert recent_shift(xs) is None
    xs[16] *= 0.8  # a step down on one, up on the others: no common side
    assert recent_shift(xs) is None


def test_the_recent_test_reads_its_baseline_after_the_last_lasting_change():
    xs = _noisy(30, sd=0.03, seed=5)
    xs[10:] = [x * 1.4 for x in xs[10:]]  # an old step, long since placed by Otava
    (old,) = shifts(xs)
    assert old.index == 10  # and the last three runs, at the same new level, are no new shift


def test_the_recent_test_stays_quiet_without_a_baseline_or_a_spread():
    assert recent_shift([100.0] * 5 + [130.0] * 3) is None  # 5 runs are too few to know the noise
    assert recent_shift([100.0] * 12 + [130.0] * 3) is None  # no spread: no bound to cross


def test_flat_and_zero_series_have_no_change():
    assert change_points([5.0] * 10) == [] and change_points([0.0] * 8 + [1.0, 1.0]) == []
