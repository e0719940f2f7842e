"""R-SPIKE-11: every answer is one the plan expects of its step; any other is an error named by
endpoint and status, counted in the error rate, and BLOCKs the release."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import insert, select

from soundcheck import store
from soundcheck.models import Decision
from soundcheck.plan import expected_answer
from soundcheck.profile import parse_profile
from tasks.checktables import answers, unexpected_answers
from tasks.decide import judge as walk_tree
from tasks.kpis import compute_kpis
from tests.verdict_data import T0, build_run, new_store

PROFILE = parse_profile({"name": "test"})


def test_expected_answers_follow_the_plan():
    assert expected_answer("API-3", 409) and expected_answer("API-3", 200)
    assert not expected_answer("API-3", 400)  # a taken seat must be 409
    assert expected_answer("API-1", 201) and not expected_answer("API-2", 404)
    assert not expected_answer("API-6", 401) and not expected_answer("API-4", 500)


def test_answers_table_counts_by_endpoint_and_status_without_setup_calls():
    seconds = pd.DataFrame(
        [
            {"endpoint": "API-3", "codes": {"200": 5, "409": 90, "400": 3}},
            {"endpoint": "API-3", "codes": {"400": 2, "0": 4}},
            {"endpoint": "ADMIN", "codes": {"401": 1}},
        ]
    )
    a = answers(seconds)
    assert set(map(tuple, a[["endpoint", "status", "count"]].values.tolist())) == {
        ("API-3", 200, 5),
        ("API-3", 400, 5),
        ("API-3", 409, 90),
    }  # no answer (0) and set-up calls left out
    bad = unexpected_answers(seconds)
    assert bad[["endpoint", "status", "count"]].values.tolist() == [["API-3", 400, 5]]


def _add_answers(engine, scenario: str, endpoint: str, codes: dict[str, int]) -> int:
    with engine.connect() as c:
        sid = c.execute(select(store.scenario_runs.c.id).where(store.scenario_runs.c.scenario == scenario)).scalar()
    n = sum(codes.values())
    with engine.begin() as c:
        c.execute(
            insert(store.second_aggregates),
            [
                {
                    "scenario_run_id": sid,
                    "second": T0 + 1,
                    "endpoint": endpoint,
                    "count": n,
                    "s2xx": 0,
                    "s3xx": 0,
                    "s4xx": n,
                    "s5xx": 0,
                    "failed": 0,
                    "codes": codes,
                    "p50_ms": 5.0,
                    "p95_ms": 9.0,
                    "p99_ms": 10.0,
                    "max_ms": 12.0,
                }
            ],
        )
    return sid


@pytest.mark.parametrize(
    "scenario,endpoint,status", [("race", "API-3", "400"), ("spike", "API-2", "404"), ("points", "API-6", "401")]
)
def test_an_answer_the_plan_does_not_expect_blocks_named(tmp_path, validator, scenario, endpoint, status):
    engine = new_store(tmp_path)
    try:
        rid = build_run(engine, "run-1", (scenario,))
        healthy = walk_tree(engine, rid, PROFILE, validator=validator)[0]
        assert healthy.verdict == Decision.APPROVE, [t.why for t in healthy.trace]
        assert any(c.id == "R-SPIKE-11" and c.passed for c in healthy.checks)
        sid = _add_answers(engine, scenario, endpoint, {status: 7})
        client = {k.name: k.value for k in compute_kpis(engine, sid, save=False) if k.phase is None}
        v = walk_tree(engine, rid, PROFILE, validator=validator)[0]
    finally:
        engine.dispose()
    assert v.verdict == Decision.BLOCK
    (check,) = [c for c in v.checks if c.id == "R-SPIKE-11"]
    assert not check.passed and check.observed == f"{endpoint} answered {status} × 7"
    assert "fix_code_and_retest" in [r.code for r in v.remediations]
    assert client["unexpected_answer_rate"] == pytest.approx(7 / client["requests"])
    assert client["error_rate"] >= client["unexpected_answer_rate"]  # counted in the error rate
