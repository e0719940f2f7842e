"""KPI bands (R-GATE), the previous comparable run, and the suites' guard against silently skipped expectations."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from soundcheck.bands import band, bands_for
from soundcheck.profile import parse_profile
from tasks.expectations import SuiteError, Validator, evaluate_tables, load_suite
from tasks.history import list_runs, previous_runs
from tests.verdict_data import build_run, new_store


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


def test_previous_comparable_run(tmp_path):
    e = new_store(tmp_path)
    t = datetime(2026, 11, 20, tzinfo=UTC)
    build_run(e, "old", ("soak",), started=t)
    build_run(e, "other-scale", ("soak",), scale=0.5, started=t + timedelta(hours=1))
    build_run(e, "other-profile", ("soak",), profile="staging", started=t + timedelta(hours=2))
    build_run(e, "crashed", ("soak",), started=t + timedelta(hours=3), soak={"status": "K6_CRASHED"})
    build_run(e, "new", ("soak", "race"), started=t + timedelta(hours=4))
    assert previous_runs(e, "new") == {"soak": "old"}
    assert [r["run_id"] for r in list_runs(e)][:2] == ["new", "crashed"]
    e.dispose()


def test_misspelled_expectation_is_an_error(tmp_path):
    good = json.loads((load_suite("points").path).read_text())
    good["expectations"][2]["type"] = "expect_column_values_to_be_betwen"
    (tmp_path / "points.json").write_text(json.dumps(good))
    n = len(good["expectations"])
    with pytest.raises(SuiteError, match=f"{n} expectations in the file, {n - 1} loaded"):
        load_suite("points", tmp_path)


def test_expectation_without_requirement_is_an_error(tmp_path):
    good = json.loads((load_suite("points").path).read_text())
    del good["expectations"][0]["meta"]["requirement"]
    (tmp_path / "points.json").write_text(json.dumps(good))
    with pytest.raises(SuiteError, match="lacks meta requirement"):
        load_suite("points", tmp_path)


@pytest.mark.parametrize("scenario", ["race", "saga", "spike", "soak", "points"])
def test_every_suite_loads_whole_and_cites_requirements(scenario):
    suite = load_suite(scenario)
    reqs = load_suite(scenario).path.parent.parent / "../shared/spec/requirements.md"
    assert len(suite.gx_suite.expectations) == len(suite.expectations) > 0
    for e in suite.expectations:
        assert e["meta"]["requirement"].startswith("R-")
    if reqs.exists():
        text = reqs.read_text()
        assert all(e["meta"]["requirement"] in text for e in suite.expectations)


def test_empty_table_is_not_a_pass():
    """GX passes a column expectation over zero rows; the verdict stage calls it not measured."""
    suite = load_suite("points")
    empty = pd.DataFrame(columns=["user_id", "expected_balance", "actual_balance", "difference"])
    none = pd.DataFrame(columns=["endpoint", "status", "count", "expected"])
    results = [
        r
        for r in evaluate_tables(suite, {"balances": empty, "unexpected_answers": none}, Validator())
        if r.check.id != "R-SPIKE-11"
    ]  # a table-level count: zero unexpected answers is measured
    assert results and all(not r.check.passed for r in results)
    assert {r.kind for r in results} == {"coverage"}
