"""Every branch of the plan's decision tree (§5.2), driven from constructed result tables."""

from __future__ import annotations

import pytest

from soundcheck.models import Decision
from soundcheck.profile import parse_profile
from tasks.decide import judge as walk_tree
from tests.verdict_data import MB, build_run

PROFILE = parse_profile({"name": "test"})


def judge(engine, validator, scenarios=("race", "saga", "points", "spike", "soak"), profile=PROFILE, **kw):
    rid = build_run(engine, "run-1", scenarios, **kw)
    return walk_tree(engine, rid, profile, validator=validator)[0]


def codes(v):
    return [r.code for r in v.remediations]


def failed(v):
    return {c.id for c in v.checks if not c.passed}


def test_all_on_target_approves(engine, validator):
    v = judge(engine, validator)
    assert v.verdict == Decision.APPROVE, [t.why for t in v.trace]
    assert not failed(v) and not v.remediations
    ids = {c.id for c in v.checks}
    assert {
        "R-RACE-1",
        "R-RACE-2",
        "R-RACE-3",
        "R-RACE-4",
        "R-RACE-5",
        "R-RACE-6",
        "R-SAGA-1",
        "R-SAGA-4",
        "R-SAGA-6",
        "R-POINT-1",
        "R-SPIKE-1",
        "R-SPIKE-3",
        "R-SPIKE-5",
        "R-SOAK-1",
        "R-SOAK-2",
    } <= ids
    assert v.trace[-1].subject == "verdict" and v.trace[-1].branch == Decision.APPROVE
    pool = next(k for k in v.kpis if k.name == "db_pool_use" and k.scenario == "spike" and k.phase is None)
    assert pool.value == pytest.approx(0.4) and pool.band == "target"


@pytest.mark.parametrize(
    ("server", "code", "detail"),
    [
        ({"db_pool_in_use": 4}, "raise_db_pool", "5 → 10"),  # 80 %: "pool near 85 %"
        ({"consumer_lag_messages": 300}, "raise_consumer_concurrency", "3 → 5"),
        ({"db_cpu_percent": 80}, "add_read_replica", "replica"),
        ({"redis_memory_bytes": 700 * MB}, "reduce_redis_memory", "TTL"),
        ({"outbox_oldest_age_s": 15}, "shorten_outbox_interval", "5 s → 2 s"),
    ],
)
def test_allowed_band_approves_with_tuning(engine, validator, server, code, detail):
    v = judge(engine, validator, ("spike",), spike={"server": server})
    assert v.verdict == Decision.APPROVE_WITH_TUNING, [t.why for t in v.trace]
    rem = next(r for r in v.remediations if r.code == code)
    assert detail in rem.detail


def test_one_full_pool_instant_is_not_sustained_use(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"server": {"db_pool_in_use": lambda i: 5 if i == 10 else 2}})
    assert v.verdict == Decision.APPROVE, [t.why for t in v.trace]
    kp = {k.name: k for k in v.kpis if k.scenario == "spike" and k.phase is None}
    assert kp["db_pool_use"].value == pytest.approx(0.4) and kp["db_pool_use_max"].value == 1.0
    assert kp["db_pool_use_max"].band is None


def test_rejudging_reads_the_same(engine, validator):
    first = judge(engine, validator, ("soak",), soak={"k6_cpu_share": 0.95, "server": {"gc_pause_max_s": 0.5}})
    again = walk_tree(engine, first.run_id, PROFILE, validator=validator)[0]
    assert [c.model_dump() for c in again.checks] == [c.model_dump() for c in first.checks]
    gc = next(c for c in again.checks if c.id == "R-SOAK-3")
    assert gc.observed.count("500.0 ms") == 1 and gc.observed.endswith("not judged: the stage could not measure")


def test_a_missing_snapshot_does_not_hide_a_slow_token_issuance(engine, validator):
    """Issue 11 item 6: no target database in the profile (no snapshot), token p95 1.7 s (3.4 × the limit).
    R-SPIKE-3 is unmeasured and listed as such; R-SPIKE-1 was measured and fails: BLOCK, not INCONCLUSIVE."""
    v = judge(engine, validator, ("spike",), spike={"snapshot": False, "kpis": {"p95_ms.API-1": 1700.0}})
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    assert "R-SPIKE-1" in failed(v)
    assert any(t.subject == "check R-SPIKE-3" and t.branch == Decision.INCONCLUSIVE for t in v.trace)
    assert "fix_test_environment" in codes(v)
    env = next(r for r in v.remediations if r.code == "fix_test_environment")
    assert "spike: R-SPIKE-3 not measured" in env.reason


def test_a_missing_snapshot_alone_is_inconclusive(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"snapshot": False})
    assert v.verdict == Decision.INCONCLUSIVE, [t.why for t in v.trace]
    assert {c.id for c in v.checks if not c.passed} == {"R-SPIKE-3", "R-SPIKE-9"}  # both need the database
    assert {c.source for c in v.checks if not c.passed} == {"coverage"}


def test_p95_near_1_5_s_caches_the_concert_list(engine, validator):
    v = judge(engine, validator, ("soak",), soak={"kpis": {"p95_ms": 1500.0}})
    assert v.verdict == Decision.APPROVE_WITH_TUNING
    assert codes(v) == ["cache_concert_list"]
    assert any(t.subject == "kpi p95_ms/soak" and "allowed" in t.why for t in v.trace)


def test_db_cpu_above_90_blocks_with_bigger_instance(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"server": {"db_cpu_percent": 95}})
    assert v.verdict == Decision.BLOCK
    assert "upgrade_db_instance" in codes(v)
    assert "db.r5.large → db.r5.xlarge" in next(r.detail for r in v.remediations if r.code == "upgrade_db_instance")


def test_error_rate_action_blocks_with_code_fix(engine, validator):
    v = judge(engine, validator, ("soak",), soak={"kpis": {"error_rate": 0.02}})
    assert v.verdict == Decision.BLOCK and "fix_code_and_retest" in codes(v)


def test_failing_compensation_blocks_with_outbox_remediation(engine, validator):
    v = judge(engine, validator, ("saga",), saga={"compensated": False, "comp_success": 0.0})
    assert v.verdict == Decision.BLOCK
    assert {"R-SAGA-1", "R-SAGA-2", "R-SAGA-3", "R-SAGA-4"} <= failed(v)
    assert "fix_code_and_retest" in codes(v) and "shorten_outbox_interval" in codes(v)
    assert any(t.subject == "check R-SAGA-1" and t.branch == Decision.BLOCK for t in v.trace)


def test_seat_sold_twice_blocks_citing_race_checks(engine, validator):
    v = judge(engine, validator, ("race",), race={"tc1_200": 3, "tc1_rows": 3})
    assert v.verdict == Decision.BLOCK
    assert {"R-RACE-1", "R-RACE-5"} <= failed(v)
    assert codes(v)[0] == "fix_code_and_retest"
    r1 = next(c for c in v.checks if c.id == "R-RACE-1" and not c.passed)
    assert r1.observed.startswith("3 × 200") and r1.expected == "exactly 1 × 200"


def test_a_5xx_in_the_race_blocks(engine, validator):
    v = judge(engine, validator, ("race",), race={"s5xx": 2})
    assert v.verdict == Decision.BLOCK and "R-RACE-4" in failed(v)


def test_lock_timeouts_above_5_percent_block(engine, validator):
    v = judge(engine, validator, ("race",), race={"lock_rate": 0.08})
    assert v.verdict == Decision.BLOCK and failed(v) == {"R-RACE-6"}


def test_two_reservation_ids_in_tc3_block(engine, validator):
    from sqlalchemy import insert

    from soundcheck import store

    rid = build_run(engine, "run-1", ("race",))
    with engine.begin() as c:
        c.execute(
            insert(store.k6_samples).values(
                scenario_run_id=1,
                ts=1.0,
                metric="sc_tc3_reservation",
                value=1.0,
                tags={"status": "200", "reservationId": "r-other"},
            )
        )
    v = walk_tree(engine, rid, PROFILE, validator=validator)[0]
    assert v.verdict == Decision.BLOCK and "R-RACE-3" in failed(v)


def test_lost_point_update_blocks(engine, validator):
    v = judge(engine, validator, ("points",), points={"final": 19_000})
    assert v.verdict == Decision.BLOCK and failed(v) == {"R-POINT-1"}


def test_pool_exhaustion_under_spike_blocks_with_pool_remediation(engine, validator):
    v = judge(
        engine,
        validator,
        ("spike",),
        spike={"server": {"db_pool_size": 1, "db_pool_in_use": 1, "db_pool_timeouts_total": lambda i: i}},
    )
    assert v.verdict == Decision.BLOCK
    assert "R-SPIKE-5" in failed(v)
    assert "raise_db_pool" in codes(v)


def test_spike_is_judged_per_phase(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"kpis": {"p95_ms@plateau": 2500.0}})
    assert v.verdict == Decision.BLOCK
    step = next(t for t in v.trace if t.subject == "kpi p95_ms/spike/plateau")
    assert step.branch == Decision.BLOCK and "action" in step.why
    plateau = next(k for k in v.kpis if k.name == "p95_ms" and k.phase == "plateau")
    assert plateau.band == "action"


def test_soak_memory_trend_blocks(engine, validator):
    v = judge(engine, validator, ("soak",), soak={"server": {"rss_bytes": lambda i: (200 + i) * MB}})
    assert v.verdict == Decision.BLOCK and "R-SOAK-1" in failed(v)
    growth = next(k for k in v.kpis if k.name == "memory_growth")
    assert growth.value == pytest.approx(118 / 200, rel=0.05)


def test_soak_latency_trend_blocks(engine, validator):
    v = judge(engine, validator, ("soak",), soak={"p99_fn": lambda i: 50 + 5 * i})
    assert "R-SOAK-4" in failed(v) and v.verdict == Decision.BLOCK


def test_flat_noisy_soak_has_no_trend(engine, validator):
    v = judge(engine, validator, ("soak",), soak={"p99_fn": lambda i: 50 + (7 * i) % 11})
    assert "R-SOAK-4" not in failed(v)


@pytest.mark.parametrize(
    ("stage", "needle"),
    [
        ({"status": "K6_CRASHED"}, "status K6_CRASHED"),
        ({"k6_cpu_share": 0.95}, "k6 CPU 95%"),
        ({"dropped": 120}, "120 dropped iterations"),
        ({"gap": 7}, "no missing seconds"),
    ],
)
def test_could_not_measure_is_inconclusive(engine, validator, stage, needle):
    v = judge(engine, validator, ("spike",), spike=stage)
    assert v.verdict == Decision.INCONCLUSIVE, [t.why for t in v.trace]
    assert codes(v) == ["fix_test_environment"]
    assert any(needle in t.why for t in v.trace if t.branch == Decision.INCONCLUSIVE)


def test_a_quiet_second_while_k6_runs_is_not_missing(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"gap": 7, "vus": True})
    assert v.verdict == Decision.APPROVE, [t.why for t in v.trace]


def test_saturated_k6_does_not_band_its_latencies(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"k6_cpu_share": 0.95, "kpis": {"p95_ms": 5000.0}})
    assert v.verdict == Decision.INCONCLUSIVE
    assert next(k for k in v.kpis if k.name == "p95_ms" and k.phase is None).band is None


def test_profile_sets_the_k6_cpu_limit(engine, validator):
    prof = parse_profile({"name": "test", "k6": {"max_cpu_share": 0.99}})
    v = judge(engine, validator, ("spike",), profile=prof, spike={"k6_cpu_share": 0.95})
    assert v.verdict == Decision.APPROVE


def test_missing_server_metrics_is_inconclusive(engine, validator):
    v = judge(engine, validator, ("spike",), spike={"server": {"db_pool_size": 0}})
    assert v.verdict == Decision.INCONCLUSIVE
    assert any("db_pool_use" in t.why for t in v.trace)


def test_planned_scenario_never_run_is_inconclusive(engine, validator):
    v = judge(engine, validator, ("race",), planned=["race", "soak"])
    assert v.verdict == Decision.INCONCLUSIVE
    assert any(t.subject == "stage soak" for t in v.trace)


def test_defect_beats_inconclusive(engine, validator):
    v = judge(engine, validator, ("race", "spike"), race={"tc1_200": 2}, spike={"status": "TARGET_DOWN"})
    assert v.verdict == Decision.BLOCK
    assert "fix_code_and_retest" in codes(v) and "fix_test_environment" in codes(v)


def test_throughput_judged_against_scaled_edges(engine, validator):
    v = judge(engine, validator, ("soak",), scale=0.02, soak={"kpis": {"throughput_rps": 25.0}})
    assert v.verdict == Decision.APPROVE
    step = next(t for t in v.trace if t.subject == "kpi throughput_rps/soak")
    assert "--scale 0.02" in step.why and "1,000 → 20" in step.why
    v2 = walk_tree(
        engine,
        build_run(engine, "run-2", ("soak",), scale=0.02, soak={"kpis": {"throughput_rps": 17.0}}),
        PROFILE,
        validator=validator,
    )[0]
    assert v2.verdict == Decision.APPROVE_WITH_TUNING and "scale_out_app_servers" in codes(v2)


def test_profile_band_override(engine, validator):
    prof = parse_profile({"name": "test", "bands": {"p95_ms": {"target": 40, "allowed": 45}}})
    v = judge(engine, validator, ("soak",), profile=prof)
    assert v.verdict == Decision.BLOCK and "cache_concert_list" in codes(v)


def test_rejudging_replaces_checks_and_publish_stores_one_verdict_row_per_judgement(engine, validator, tmp_path):
    from sqlalchemy import func, select

    from soundcheck import store
    from tasks.publish import publish_verdict

    v = judge(engine, validator, ("race",))
    again = walk_tree(engine, v.run_id, PROFILE, validator=validator)[0]
    url = engine.url.render_as_string(hide_password=False)
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(store.verdicts)).scalar() == 0  # judging stores no verdict
    publish_verdict(v, tmp_path, url)
    publish_verdict(again, tmp_path, url)
    with engine.connect() as c:
        n_checks = c.execute(select(func.count()).select_from(store.checks)).scalar()
        verdicts = c.execute(select(store.verdicts.c.verdict)).scalars().all()
        run_verdict = c.execute(select(store.runs.c.verdict)).scalar()
    assert n_checks == len(v.checks)
    assert verdicts == ["APPROVE", "APPROVE"] and run_verdict == "APPROVE"
    assert (tmp_path / "verdict.json").exists()


# ---- every rule of the tree, one by one, through the engine (no GX: facts given directly) ----------

from soundcheck.models import KPI  # noqa: E402
from tasks.decide import MEASUREMENT_RULES, TREE, StageFacts, decide  # noqa: E402

#: (rule id, scenario, KPI name, value, unit, remediation expected)
KPI_CASES = [
    ("action_db_cpu", "spike", "db_cpu_percent", 95, "%", "upgrade_db_instance"),
    ("action_error_rate", "soak", "error_rate", 0.02, "ratio", "fix_code_and_retest"),
    ("action_compensation", "saga", "compensation_success", 0.9, "ratio", "shorten_outbox_interval"),
    ("action_saga_time", "saga", "saga_time_s", 25, "s", "shorten_outbox_interval"),
    ("action_pool", "spike", "db_pool_use", 1.0, "ratio", "raise_db_pool"),
    ("action_lag", "saga", "consumer_lag", 800, "messages", "add_kafka_partitions"),
    ("action_outbox", "saga", "outbox_oldest_age_s", 45, "s", "shorten_outbox_interval"),
    ("action_redis", "spike", "redis_memory_bytes", 2 * 1024**3, "bytes", "reduce_redis_memory"),
    ("action_timeouts", "spike", "unanswered_rate", 0.02, "ratio", "adjust_alb_idle_timeout"),
    ("action_p95_queue", "spike", "p95_ms.API-1", 2500, "ms", "use_rank_positions"),
    ("action_p95_poll", "spike", "p95_ms.API-2", 2500, "ms", "use_rank_positions"),
    ("action_p95_concerts", "soak", "p95_ms.API-5", 2500, "ms", "cache_concert_list"),
    ("action_p95", "soak", "p95_ms", 2500, "ms", "cache_concert_list"),
    ("action_throughput", "spike", "throughput_rps", 500, "req/s", "scale_out_app_servers"),
    ("action_heap", "soak", "heap_use", 0.95, "ratio", "fix_code_and_retest"),
    ("action_other", "spike", "wait_until_entered_s", 900, "s", None),
    ("action_other", "spike", "p95_ms.API-3", 2500, "ms", None),  # reservation latency: no plan remedy of its own
    ("allowed_pool", "spike", "db_pool_use", 0.8, "ratio", "raise_db_pool"),
    ("allowed_p95_queue", "spike", "p95_ms.API-1", 1500, "ms", "use_rank_positions"),
    ("allowed_p95_poll", "spike", "p95_ms.API-2", 1500, "ms", "use_rank_positions"),
    ("allowed_p95_concerts", "soak", "p95_ms.API-5", 1500, "ms", "cache_concert_list"),
    ("allowed_p95", "soak", "p95_ms", 1500, "ms", "cache_concert_list"),
    ("allowed_lag", "saga", "consumer_lag", 300, "messages", "raise_consumer_concurrency"),
    ("allowed_db_cpu", "soak", "db_cpu_percent", 85, "%", "add_read_replica"),
    ("allowed_compensation", "saga", "compensation_success", 0.995, "ratio", "shorten_outbox_interval"),
    ("allowed_saga_time", "saga", "saga_time_s", 15, "s", "shorten_outbox_interval"),
    ("allowed_outbox", "saga", "outbox_oldest_age_s", 15, "s", "shorten_outbox_interval"),
    ("allowed_redis", "soak", "redis_memory_bytes", 700 * 1024**2, "bytes", "reduce_redis_memory"),
    ("allowed_timeouts", "soak", "unanswered_rate", 0.003, "ratio", "adjust_alb_idle_timeout"),
    ("allowed_throughput", "soak", "throughput_rps", 900, "req/s", "scale_out_app_servers"),
    ("allowed_other", "spike", "wait_until_entered_s", 300, "s", None),
    ("target", "spike", "p95_ms", 200, "ms", None),
]
#: a band for a KPI the plan does not band, so the catch-all rules are reachable
EXTRA = parse_profile({"name": "test", "bands": {"wait_until_entered_s": {"target": 120, "allowed": 600}}})
REQUIRED = {
    "spike": ["p95_ms", "error_rate", "throughput_rps", "db_pool_use", "db_pool_timeouts"],
    "soak": ["p95_ms", "error_rate", "throughput_rps", "db_pool_use", "db_pool_timeouts", "memory_growth"],
    "saga": ["saga_time_s", "consumer_lag"],
}


def _facts(scenario, name, value, unit):
    """Every required KPI of the stage on target (neutral values), the tested one replaced."""
    neutral = {
        "p95_ms": 100.0,
        "error_rate": 0.0,
        "throughput_rps": 1500.0,
        "db_pool_use": 0.3,
        "db_pool_timeouts": 0.0,
        "memory_growth": 0.0,
        "saga_time_s": 5.0,
        "consumer_lag": 3.0,
    }
    ks = [KPI(name=n, scenario=scenario, value=neutral[n], unit="") for n in REQUIRED[scenario] if n != name]
    return ks + [KPI(name=name, scenario=scenario, value=float(value), unit=unit)]


@pytest.mark.parametrize(
    ("rule_id", "scenario", "name", "value", "unit", "code"), KPI_CASES, ids=[f"{c[0]}-{c[2]}" for c in KPI_CASES]
)
def test_each_kpi_rule(rule_id, scenario, name, value, unit, code):
    rule = next(r for r in TREE if r.id == rule_id)
    v = decide(
        run_id="r",
        profile=EXTRA,
        started_at="",
        finished_at="",
        checks=[],
        stages=[StageFacts(scenario, "COMPLETED", 0.2, 0)],
        kpis=_facts(scenario, name, value, unit),
    )
    assert v.verdict == rule.branch, [t.why for t in v.trace]
    assert [r.code for r in v.remediations] == ([code] if code else [])
    if rule.branch != Decision.APPROVE:
        step = next(t for t in v.trace if t.subject == f"kpi {name}/{scenario}")
        assert rule.why in step.why


def test_every_rule_has_a_case():
    assert {r.id for r in TREE} == {c[0] for c in KPI_CASES}
    covered = {
        "not_run",
        "stage_status",
        "k6_saturated",
        "dropped_iterations",
        "coverage",
        "missing_metric",
        "no_stages",
    }
    assert set(MEASUREMENT_RULES) == covered


def test_ramp_phases_do_not_judge_throughput():
    ks = _facts("spike", "throughput_rps", 1500, "req/s") + [
        KPI(name="throughput_rps", scenario="spike", value=5.0, unit="req/s", phase="ramp_up"),
        KPI(name="throughput_rps", scenario="spike", value=5.0, unit="req/s", phase="plateau"),
    ]
    v = decide(
        run_id="r",
        profile=PROFILE,
        started_at="",
        finished_at="",
        checks=[],
        stages=[StageFacts("spike", "COMPLETED", 0.2, 0)],
        kpis=ks,
    )
    assert [k.band for k in ks if k.name == "throughput_rps"] == ["target", None, "action"]
    assert v.verdict == Decision.BLOCK


def test_nothing_measured_is_inconclusive():
    v = decide(run_id="r", profile=PROFILE, started_at="", finished_at="", stages=[], checks=[], kpis=[])
    assert v.verdict == Decision.INCONCLUSIVE and [r.code for r in v.remediations] == ["fix_test_environment"]


def test_lock_timeouts_are_read_from_the_k6_samples(engine, validator):
    """race.js records each lock-wait timeout as an `sc_lock_timeouts` sample tagged with the request's tags
    and the answer's status; a timeout answered 500 is the R-RACE-4 defect even when the 5xx share is tiny."""
    v = judge(engine, validator, ("race",), race={"locks": {500: 3, 409: 2}})
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    r4 = [c for c in v.checks if c.id == "R-RACE-4" and not c.passed]
    assert any("tc2: 3 of 5 lock timeouts answered 5xx" in c.observed for c in r4), [c.observed for c in r4]
    ok = walk_tree(
        engine, build_run(engine, "run-2", ("race",), race={"locks": {409: 2}}), PROFILE, validator=validator
    )[0]
    assert ok.verdict == Decision.APPROVE, [t.why for t in ok.trace]


def test_sagas_that_never_finish_are_the_measurement(engine, validator):
    """stuck_outbox: no saga ends, so there is no saga time and no failure reason naming the compensation
    payment. That is the harm, not a gap: BLOCK with the outbox remediation, the outbox backlog banded."""
    v = judge(engine, validator, ("saga",), saga={"stuck": True})
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    assert "shorten_outbox_interval" in codes(v) and "fix_test_environment" not in codes(v), codes(v)
    assert {"R-SAGA-1", "R-SAGA-5", "R-SAGA-6", "R-SAGA-7"} <= failed(v)
    assert not any(c.source == "coverage" and not c.passed for c in v.checks), [c.observed for c in v.checks]
    comp = next(c for c in v.checks if c.id == "R-SAGA-1" and not c.passed)
    assert comp.observed == "payment PENDING"  # the compensation payment found by its request's time
    slow = next(c for c in v.checks if c.id == "R-SAGA-5" and "within 10 s" in c.expected)
    assert slow.observed == "compensated in 120.0 s"  # at least as long as the client watched it
    age = next(k for k in v.kpis if k.name == "outbox_oldest_age_s" and k.scenario == "saga")
    assert age.value >= 120 and age.band == "action"
    assert any(t.subject == "stage saga" and "6 sagas not terminal" in t.why for t in v.trace)


def test_an_aborted_stage_is_judged_on_what_it_measured(engine, validator):
    """pool_too_small: the spike aborted on sustained pool exhaustion before the load stage stored its client
    KPIs, with holes in its data. Its KPIs are still banded (the harm is what it measured): BLOCK, pool remedy."""
    v = judge(
        engine,
        validator,
        ("spike",),
        spike={
            "status": "ABORTED",
            "reason": "aborted on harm: DB pool exhausted",
            "gap": 7,
            "load_kpis": False,
            "server": {"db_pool_size": 1, "db_pool_in_use": 1},
        },
    )
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    assert codes(v)[0] == "raise_db_pool" and "fix_test_environment" in codes(v)
    pool = next(k for k in v.kpis if k.name == "db_pool_use" and k.phase is None)
    assert pool.value == 1.0 and pool.band == "action"
    computed = {k.name: k for k in v.kpis if k.scenario == "spike" and k.phase is None}
    assert computed["error_rate"].value == 0.0 and computed["error_rate"].band == "target"  # from its seconds
    assert not any("not judged" in t.why for t in v.trace)


@pytest.mark.parametrize(
    ("scenario", "per_endpoint", "want", "slowest"),
    [
        ("soak", {"p95_ms.API-5": 1600.0, "p95_ms.API-2": 90.0, "p95_ms.API-3": 120.0}, "cache_concert_list", "API-5"),
        ("spike", {"p95_ms.API-1": 1700.0, "p95_ms.API-3": 300.0}, "use_rank_positions", "API-1"),
        ("spike", {"p95_ms.API-3": 1800.0, "p95_ms.API-1": 100.0}, None, "API-3"),
    ],
)
def test_overall_p95_is_blamed_on_its_slowest_endpoint(engine, validator, scenario, per_endpoint, want, slowest):
    """ "p95 near 1.5 s → cache the concert list" only when the concert list is what is slow."""
    v = judge(engine, validator, (scenario,), **{scenario: {"kpis": {"p95_ms": 1500.0, **per_endpoint}}})
    assert v.verdict in (Decision.APPROVE_WITH_TUNING, Decision.BLOCK), [t.why for t in v.trace]
    step = next(t for t in v.trace if t.subject == f"kpi p95_ms/{scenario}")
    assert f"slowest endpoint {slowest}" in step.why
    assert ("cache_concert_list" in codes(v)) == (want == "cache_concert_list")
    if want:
        assert want in codes(v)


@pytest.mark.parametrize(
    ("scenario", "gc", "verdict", "observed"),
    [
        ("soak", 0.0999, Decision.APPROVE, "longest pause 99.9 ms"),  # the exact gauge: under 100 ms
        ("soak", 0.12, Decision.BLOCK, "longest pause 120.0 ms"),
        ("soak", None, Decision.INCONCLUSIVE, "not measured"),  # the soak needs it (R-SOAK-3)
        ("spike", None, Decision.APPROVE, None),  # the spike does not
    ],
)
def test_gc_pause_from_the_sampled_maximum(engine, validator, scenario, gc, verdict, observed):
    v = judge(engine, validator, (scenario,), **{scenario: {"server": {"gc_pause_max_s": gc}}})
    assert v.verdict == verdict, [t.why for t in v.trace]
    r3 = [c for c in v.checks if c.id == "R-SOAK-3"]
    if observed is None:
        assert not r3
        return
    assert len(r3) == 1 and observed in r3[0].observed
    assert r3[0].passed == (verdict == Decision.APPROVE)
    if verdict == Decision.BLOCK:
        assert "tune_gc" in codes(v)


def test_quiet_seconds_of_a_sparse_spike_are_not_missing(engine, validator):
    """A small spike (1 response a second per endpoint) with a silent second and no k6 samples: sparse load,
    not a hole in the data (R-SPIKE-6 coverage passes)."""
    v = judge(engine, validator, ("spike",), spike={"gap": 7, "rps": 1})
    assert v.verdict == Decision.APPROVE, [t.why for t in v.trace]
    cov = next(c for c in v.checks if c.id == "R-SPIKE-6" and c.source == "coverage" and "missing" in c.expected)
    assert cov.passed and cov.observed.startswith("0 of 30 seconds missing")


@pytest.mark.parametrize(
    ("spike", "verdict", "req", "needle"),
    [
        ({"tokens": (60, 140, 0)}, Decision.BLOCK, "R-SPIKE-10", "60 of 200 ENTERED at issue (capacity 50, 0 places"),
        ({"tokens": (60, 140, 0), "freed": 10}, Decision.APPROVE, None, None),  # 10 users done → 10 places refilled
        ({"tokens": (40, 160, 0)}, Decision.BLOCK, "R-SPIKE-10", "40 of 200 ENTERED"),
        ({"tokens": (50, 140, 10)}, Decision.BLOCK, "R-SPIKE-10", "10 neither ENTERED nor WAITING"),
        ({"tokens": (20, 0, 0)}, Decision.APPROVE, None, None),  # fewer users than places: all ENTERED
        ({"expired": 3}, Decision.BLOCK, "R-SPIKE-9", "3 tokens EXPIRED 31 s after the first issue (TTL 1800 s)"),
        ({"tokens": (0, 0, 0)}, Decision.INCONCLUSIVE, "R-SPIKE-10", "not measured"),
    ],
)
def test_queue_capacity_and_token_ttl(engine, validator, spike, verdict, req, needle):
    v = judge(engine, validator, ("spike",), spike=spike)
    assert v.verdict == verdict, [t.why for t in v.trace]
    if req is None:
        assert not failed(v)
        return
    assert req in failed(v)
    assert any(needle in c.observed for c in v.checks if c.id == req and not c.passed), [
        c.observed for c in v.checks if c.id == req
    ]
    if verdict == Decision.BLOCK:
        assert "fix_code_and_retest" in codes(v)


def test_queue_capacity_comes_from_the_profile(engine, validator):
    prof = parse_profile({"name": "test", "environment": {"local": {"settings": {"queue_capacity": 60}}}})
    v = judge(engine, validator, ("spike",), profile=prof, spike={"tokens": (60, 140, 0)})
    assert v.verdict == Decision.APPROVE, [t.why for t in v.trace]
    r10 = [c for c in v.checks if c.id == "R-SPIKE-10" and "capacity" in c.observed]
    assert r10 and "capacity 60" in r10[0].observed


def test_a_stage_aborted_on_slow_answers_is_banded_despite_dropped_iterations(engine, validator):
    """The concert list holds its connection ~1.3 s: the soak aborts on p95 > 3 s and its arrival-rate VUs run
    out (dropped iterations). Latencies are then lower bounds, and already in the action band: BLOCK, cache."""
    v = judge(
        engine,
        validator,
        ("soak",),
        soak={
            "status": "ABORTED",
            "reason": "aborted on harm: p95 response time above 3,000 ms",
            "dropped": 45,
            "kpis": {"p95_ms": 2400.0, "p95_ms.API-5": 5200.0, "p95_ms.API-2": 11.0},
        },
    )
    assert v.verdict == Decision.BLOCK, [t.why for t in v.trace]
    assert codes(v)[0] == "cache_concert_list" and "fix_test_environment" in codes(v)
    assert next(k for k in v.kpis if k.name == "p95_ms.API-5").band == "action"
    completed = walk_tree(
        engine,
        build_run(engine, "run-2", ("soak",), soak={"dropped": 45, "kpis": {"p95_ms": 2400.0, "p95_ms.API-5": 5200.0}}),
        PROFILE,
        validator=validator,
    )[0]
    assert completed.verdict == Decision.INCONCLUSIVE  # a completed stage with dropped iterations: not measured
