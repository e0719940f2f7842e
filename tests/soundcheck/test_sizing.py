"""Sizing arithmetic (soundcheck.sizing): stairs, the steady-state gate, the USL fit on curves with known
coefficients, the recommendation and the scale-out point."""

from __future__ import annotations

import math
import random

import pytest

from soundcheck.sizing import (
    PEAK_RPS,
    Gates,
    StepResult,
    cpu_line,
    fit_usl,
    judge_step,
    prediction_holds,
    recommend,
    scale_out_point,
    stairs,
    usl,
)


def _step(offered=100.0, achieved=100.0, token=50.0, poll=80.0, first=40.0, second=45.0, errors=0.0, dropped=0):
    return StepResult(offered, achieved, 30.0, token, poll, first, second, errors, dropped)


def test_stairs_grow_by_the_factor_and_stop_at_their_bounds():
    assert stairs(50, 1.5, 5) == [50.0, 75.0, 112.5, 168.8, 253.1]
    assert stairs(50, 2, 10, max_rps=400) == [50.0, 100.0, 200.0, 400.0]
    with pytest.raises(ValueError):
        stairs(50, 1.0, 3)


def test_a_steady_step_within_the_gates_passes():
    s = judge_step(_step())
    assert s.passed and s.why == []


@pytest.mark.parametrize(
    ("kw", "why"),
    [
        ({"token": 520.0}, "token p95 520 ms ≥ 500 ms"),
        ({"poll": 1200.0}, "poll p99 1200 ms ≥ 1000 ms"),
        ({"errors": 0.002}, "errors 0.20% ≥ 0.1%"),
        ({"dropped": 3}, "3 iterations dropped"),
        ({"achieved": 90.0}, "achieved 90 of 100 req/s offered"),
        ({"first": 60.0, "second": 300.0}, "latency still rising within the step (p95 60 → 300 ms)"),
    ],
)
def test_each_gate_fails_a_step_on_its_own(kw, why):
    s = judge_step(_step(**kw))
    assert not s.passed and len(s.why) == 1 and s.why[0].startswith(why)


def test_a_small_latency_doubling_is_not_a_trend():
    assert judge_step(_step(first=3.0, second=9.0)).passed  # +6 ms: noise, not a queue


def test_a_rise_counts_when_at_its_pace_it_would_reach_the_gate_within_another_window():
    assert judge_step(_step(first=60.0, second=123.0)).passed  # → 249 ms after one more window: a wobble
    assert judge_step(_step(first=150.0, second=260.0)).passed  # → 480 ms: short of the 500 ms gate
    assert not judge_step(_step(first=150.0, second=270.0)).passed  # → 510 ms: a queue on course to break it
    assert not judge_step(_step(first=150.0, second=260.0), Gates(trend_horizon=2.0)).passed  # a longer look


@pytest.mark.parametrize(("lam", "sigma", "kappa"), [(400.0, 0.05, 0.002), (250.0, 0.2, 0.0), (900.0, 0.01, 0.02)])
def test_the_fit_recovers_known_coefficients_from_noisy_repeats(lam, sigma, kappa):
    rng = random.Random(3)
    counts = (1, 2, 3, 4, 6, 8)
    data = {n: [usl(n, lam, sigma, kappa) * (1 + rng.gauss(0, 0.02)) for _ in range(3)] for n in counts}
    fit = fit_usl(data)
    assert fit.lam == pytest.approx(lam, rel=0.06)
    assert fit.sigma == pytest.approx(sigma, abs=0.03)
    assert fit.kappa == pytest.approx(kappa, abs=0.005)
    assert all(fit.predict(n) == pytest.approx(usl(n, lam, sigma, kappa), rel=0.04) for n in counts)
    lo, hi = fit.interval(5)
    assert lo <= usl(5, lam, sigma, kappa) * 1.03 and hi >= usl(5, lam, sigma, kappa) * 0.97
    assert hi - lo < 0.1 * usl(5, lam, sigma, kappa)


def test_three_counts_without_repeats_fit_exactly_and_have_no_interval():
    data = {n: [usl(n, 300.0, 0.1, 0.01)] for n in (1, 2, 3)}
    fit = fit_usl(data)
    assert fit.rmse < 1e-3 and fit.interval(4) is None
    assert fit.peak_instances == pytest.approx(math.sqrt(0.9 / 0.01), rel=0.05)
    with pytest.raises(ValueError, match="two instance counts"):
        fit_usl({1: [300.0]})


def test_the_recommendation_is_the_smallest_count_with_headroom():
    fit = fit_usl({n: [usl(n, 1000.0, 0.02, 0.0)] for n in (1, 2, 3)})
    rec = recommend(fit, PEAK_RPS, headroom=0.3)  # needs 4,333 / 0.7 = 6,190 req/s
    x = [usl(n, 1000.0, 0.02, 0.0) for n in range(1, 12)]
    want = next(n for n, v in enumerate(x, 1) if v >= PEAK_RPS / 0.7)
    assert rec.instances == want == 7 and rec.predicted_rps == pytest.approx(x[6], rel=1e-3)
    assert "6,190 req/s" in rec.why


def test_no_count_reaches_a_peak_above_the_curves_maximum():
    fit = fit_usl({n: [usl(n, 1000.0, 0.1, 0.05)] for n in (1, 2, 3, 4)})
    rec = recommend(fit, PEAK_RPS)
    assert rec.instances is None and "scaling out does not carry the peak" in rec.why and "near 4 instances" in rec.why


def test_scale_out_point_leaves_the_startup_time_before_the_knee():
    fit = fit_usl({n: [usl(n, 1000.0, 0.0, 0.0)] for n in (1, 2, 3)})
    rec = recommend(fit, 2000.0, headroom=0.0)
    rec = scale_out_point(rec, fit, 2, startup_s=60, ramp_rps_per_s=5, cpu_per_rps=0.05, cpu_base=10)
    assert rec.scale_out_at_rps == pytest.approx(2000 - 300, rel=1e-3)
    assert rec.scale_out_cpu_percent == pytest.approx(10 + 0.05 * 1700 / 2, rel=1e-3)
    spike = scale_out_point(recommend(fit, 2000.0), fit, 2, startup_s=120, ramp_rps_per_s=433)
    assert spike.scale_out_at_rps is None and "scale out ahead of the event" in spike.scale_out_why


def test_cpu_line_and_the_prediction_check():
    base, slope = cpu_line([(100, 20.0), (200, 35.0), (300, 50.0)])
    assert base == pytest.approx(5.0) and slope == pytest.approx(0.15)
    assert cpu_line([(100, 20.0)]) is None
    assert prediction_holds(1000, 1140) and not prediction_holds(1000, 1160)
