"""Proving a remediation by re-test (R-WHY-4): the plan of what to apply, the effect size, and real re-runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from soundcheck.models import KPI, Decision, Verdict, VerifyRun
from soundcheck.profile import parse_profile
from tasks.verify import (
    _u_cdf,
    arm_order,
    effect,
    fmt_verification,
    hodges_lehmann,
    moses_interval,
    plan,
    typical_verdict,
)

ROOT = Path(__file__).resolve().parents[2]


def _verdict(*kpis: KPI, codes: tuple[str, ...] = ()) -> Verdict:
    from soundcheck.models import Remediation

    return Verdict(
        run_id="r1",
        profile="local",
        started_at="",
        finished_at="",
        verdict=Decision.APPROVE_WITH_TUNING,
        kpis=list(kpis),
        remediations=[Remediation(code=c, reason="", detail="") for c in codes],
    )


POOL = KPI(name="db_pool_use", scenario="spike", value=0.88, unit="ratio", band="allowed")
API5 = KPI(name="p95_ms.API-5", scenario="soak", value=1400.0, unit="ms", band="allowed")
RUN = {"scale": 0.05, "time_scale": 0.03, "settings": {"settings": {"db_pool_size": 5, "concert_query_ms": 0}}}


# ------------------------------------------------------------------------------------------- effect


def test_hodges_lehmann_is_the_median_pairwise_difference():
    assert hodges_lehmann([1, 2, 3], [11, 12, 13]) == 10
    assert hodges_lehmann([1, 2, 100], [11, 12, 13]) == 10  # one odd run does not move it


def test_exact_rank_distribution_and_interval():
    cdf = _u_cdf(3, 3)
    assert cdf[0] == pytest.approx(1 / 20) and cdf[-1] == pytest.approx(1.0)
    low, high, conf = moses_interval([1, 2, 3], [11, 12, 14])
    assert (low, high) == (8, 13) and conf == pytest.approx(0.90)  # [min, max] of the 9 differences
    low, high, conf = moses_interval([1, 2, 3, 4, 5], [11, 12, 13, 14, 15], confidence=0.95)
    assert conf >= 0.95 and low > 0 and high < 15


def test_arms_interleave_and_the_typical_verdict_ignores_one_odd_run():
    assert arm_order(3) == ["A", "B", "A", "B", "A", "B"]
    assert typical_verdict(["APPROVE", "APPROVE", "BLOCK"]) == "APPROVE"
    assert typical_verdict(["APPROVE_WITH_TUNING", "BLOCK", "BLOCK"]) == "BLOCK"


def _runs(a: list[float], b: list[float], va: str, vb: str) -> list[VerifyRun]:
    out = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        out += [
            VerifyRun(run_id=f"a{i}", arm="A", verdict=va, value=x),
            VerifyRun(run_id=f"b{i}", arm="B", verdict=vb, value=y),
        ]
    return out


def _plan(k: KPI, code: str):
    from tasks.verify import Plan

    return Plan(
        code=code,
        change={"db_pool_size": 10},
        was={"db_pool_size": 5},
        kpi=k,
        scenarios=[k.scenario],
        before={},
        after={},
    )


def test_proven_needs_the_interval_and_the_verdict():
    prof = parse_profile({"name": "t"})
    v = effect(
        _plan(POOL, "raise_db_pool"),
        _runs([0.82, 0.84, 0.80], [0.41, 0.45, 0.40], "APPROVE_WITH_TUNING", "APPROVE"),
        prof,
        0.05,
        540,
    )
    assert v.status == "proven" and v.high < 0 and v.band_before == "allowed" and v.band_after == "target"
    line = fmt_verification(v)
    assert "db_pool_use/spike 82.0% → 41.0% [−44, −35 pp] (90% interval)" in line
    assert "APPROVE_WITH_TUNING → APPROVE, 3 + 3 runs, 9 min: proven" in line
    same = effect(
        _plan(POOL, "raise_db_pool"),
        _runs([0.88, 0.9, 0.86], [0.87, 0.91, 0.85], "APPROVE_WITH_TUNING", "APPROVE_WITH_TUNING"),
        prof,
        0.05,
        540,
    )
    assert same.status == "not proven" and "includes zero" in same.why and "did not improve" in same.why
    moved = effect(
        _plan(POOL, "raise_db_pool"),
        _runs([0.88, 0.9, 0.86], [0.80, 0.81, 0.79], "APPROVE_WITH_TUNING", "APPROVE_WITH_TUNING"),
        prof,
        0.05,
        540,
    )
    assert moved.status == "not proven" and "includes zero" not in moved.why and "did not improve" in moved.why
    short = effect(
        _plan(POOL, "raise_db_pool"),
        _runs([0.88], [0.41], "APPROVE_WITH_TUNING", "APPROVE"),
        prof,
        0.05,
        60,
        stopped="stopped at the budget",
    )
    assert short.status == "not proven" and "stopped at the budget" in short.why


# --------------------------------------------------------------------------------------------- plan


def test_local_plan_applies_the_setting_to_arm_b_only_and_keeps_the_run_s_own_settings():
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    prof = parse_profile(data)
    (p,) = plan(data, prof, _verdict(POOL, codes=("raise_db_pool",)), RUN)
    assert p.skipped is None and p.scenarios == ["spike"] and p.kpi.name == "db_pool_use"
    assert p.before["environment"]["local"]["settings"] == {"db_pool_size": 5, "concert_query_ms": 0}
    assert p.after["environment"]["local"]["settings"]["db_pool_size"] == 10
    assert p.was == {"db_pool_size": 5}
    assert p.before["name"] == "local~verify" and (p.before["scale"], p.before["time_scale"]) == (0.05, 0.03)
    parse_profile(p.before), parse_profile(p.after)  # both valid profiles


def test_what_cannot_be_applied_is_skipped_with_a_reason():
    data = yaml.safe_load((ROOT / "deployments" / "local.yaml").read_text())
    prof = parse_profile(data)
    v = _verdict(POOL, codes=("fix_code_and_retest", "raise_db_pool"))
    skipped, _ = plan(data, prof, v, RUN)
    assert "not raised by a KPI" in skipped.skipped
    ext = {**data, "target": {**data["target"], "base_url": "http://127.0.0.1:9"}, "environment": {"kind": "external"}}
    (p,) = plan(ext, parse_profile(ext), _verdict(POOL, codes=("raise_db_pool",)), RUN)
    assert "external target" in p.skipped
    (p,) = plan(
        data,
        prof,
        _verdict(
            KPI(name="error_rate", scenario="soak", value=0.004, unit="ratio", band="allowed"),
            codes=("fix_code_and_retest",),
        ),
        RUN,
    )
    assert p.skipped


def test_aws_plan_changes_the_stack_through_its_parameters():
    data = yaml.safe_load((ROOT / "deployments" / "staging.yaml").read_text())
    prof = parse_profile(data)
    cpu = KPI(name="db_cpu_percent", scenario="spike", value=95.0, unit="%", band="action")
    (p,) = plan(data, prof, _verdict(cpu, codes=("upgrade_db_instance",)), RUN)
    assert p.after["environment"]["aws"]["parameters"]["DbInstanceClass"] == "db.r5.xlarge"
    assert p.before["environment"]["aws"]["parameters"]["DbInstanceClass"] == "db.r5.large"


# ---------------------------------------------------------------------------------- real re-runs


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_real_reruns_prove_the_cache_and_not_a_setting_the_slow_list_ignores(tmp_path):
    """The fault matrix's slow concert list at small scale: caching it is proven by 2 + 2 real runs; raising
    the consumer concurrency (which the concert list never touches) is not."""
    from prefect.testing.utilities import prefect_test_harness

    from bench.fault_matrix import CASES, profile_for
    from soundcheck.cli import run_campaign, verify_run

    case = next(c for c in CASES if c.name == "slow_concert_list")
    case = type(case)(**{**case.__dict__, "time_scale": 0.01})
    prof = profile_for(case, tmp_path)
    with prefect_test_harness(server_startup_timeout=120):
        code = run_campaign(profile=prof, output=tmp_path / "orig", notify=False)
        assert code in (10, 20)
        v = json.loads((tmp_path / "orig" / "verdict.json").read_text())
        assert "cache_concert_list" in {r["code"] for r in v["remediations"]}
        run_id = v["run_id"]
        assert verify_run(run_id, prof, ["cache_concert_list"], repeats=2, notify=False, output=tmp_path / "orig") == 0
        assert (
            verify_run(
                run_id,
                prof,
                ["cache_concert_list"],
                repeats=2,
                notify=False,
                output=tmp_path / "noop",
                change=["consumer_concurrency=5"],
            )
            == 1
        )
    proven = json.loads((tmp_path / "orig" / "verdict.json").read_text())["verification"][0]
    assert proven["status"] == "proven" and proven["change"] == {"concert_cache": True}
    assert len(proven["runs"]) == 4 and proven["after"] < proven["before"]
    noop = json.loads((tmp_path / "noop" / "verdict.json").read_text())["verification"][0]
    assert noop["status"] == "not proven" and noop["change"] == {"consumer_concurrency": 5}
    assert "Remediations re-tested" in (tmp_path / "orig" / "report.html").read_text()
