"""KPI bands (R-GATE): the plan's edges, what has no band, rate edges that follow the scale, profile overrides."""

from __future__ import annotations

import pytest

from soundcheck.bands import band, bands_for
from soundcheck.profile import parse_profile


@pytest.mark.parametrize(
    ("kpi", "value", "where"),
    [
        ("p95_ms", 999, "target"),
        ("p95_ms", 1000, "allowed"),
        ("p95_ms", 2000, "allowed"),
        ("p95_ms", 2001, "action"),
        ("p95_ms.API-5", 1500, "allowed"),
        ("throughput_rps", 1001, "target"),
        ("throughput_rps", 900, "allowed"),
        ("throughput_rps", 799, "action"),
        ("error_rate", 0.0009, "target"),
        ("error_rate", 0.004, "allowed"),
        ("error_rate", 0.006, "action"),
        ("db_pool_use", 0.6, "target"),
        ("db_pool_use", 0.85, "allowed"),
        ("db_pool_use", 0.9, "action"),
        ("consumer_lag", 99, "target"),
        ("consumer_lag", 300, "allowed"),
        ("consumer_lag", 501, "action"),
        ("saga_time_s", 9, "target"),
        ("saga_time_s", 15, "allowed"),
        ("saga_time_s", 21, "action"),
        ("compensation_success", 1.0, "target"),
        ("compensation_success", 0.995, "allowed"),
        ("compensation_success", 0.98, "action"),
    ],
)
def test_plan_bands(kpi, value, where):
    assert band(kpi, value).band == where


def test_unbanded_and_unmeasured():
    assert band("tc1_release_spread_ms", 3).band is None
    assert band("p95_ms", None).band is None
    assert band("p95_ms", 5000, scenario="race").band is None  # bursts of 100 say nothing about capacity


def test_rate_edges_follow_the_scale():
    j = band("throughput_rps", 25, scale=0.02)
    assert j.band == "target" and j.target == pytest.approx(20) and "--scale 0.02" in j.note
    assert band("throughput_rps", 15, scale=0.02).band == "action"
    assert band("p95_ms", 1500, scale=0.02).band == "allowed"  # latency edges do not scale


def test_profile_overrides_one_band():
    table = bands_for(parse_profile({"name": "x", "bands": {"db_pool_use": {"target": 0.5, "allowed": 0.6}}}))
    assert band("db_pool_use", 0.55, bands=table).band == "allowed"
    assert band("p95_ms", 1500, bands=table).band == "allowed"
