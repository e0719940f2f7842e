"""The plan's decision tree (§5.2) as data, a small engine that walks it, and `judge_run`.

Precedence, highest first (each step leaves a line in the decision trace):

1. **BLOCK** — any failed correctness check (a seat sold twice, a lost compensation, a 5xx) with
   `fix_code_and_retest`; any failed plan criterion (pool exhaustion, memory growth …) with its
   remediation; any KPI in its action band, by the tree's action branches (DB CPU → bigger DB,
   error rate → fix the code, compensation → outbox interval / retries …). Correctness failures count
   even from a stage that could not otherwise be judged: what was observed is a defect regardless.
2. **INCONCLUSIVE** — the campaign could not measure: a stage not COMPLETED, k6 saturated (its CPU share
   above `profile.k6.max_cpu_share`), dropped iterations, missing seconds or data (coverage checks),
   missing metrics, a planned scenario that never ran. KPIs of such a stage are not banded (they
   describe the load generator), and the run is never APPROVE. Remediation `fix_test_environment`.
3. **APPROVE_WITH_TUNING** — some KPI in its allowed band, none in action: pool → 5 → 10, p95 → cache
   the concert list, consumer lag → concurrency 3 → 5, and the §6.1 risks.
4. **APPROVE** — every judged KPI on target and every check passed.

A stage that aborted on harm (R-SAFE) or on a k6 threshold measured the target misbehaving, so its
KPIs are still banded (they can BLOCK) — also when data its checks need is missing (the abort cut it
short), and with client KPIs computed from its seconds when the load stage stored none — but the stage
also counts as INCONCLUSIVE. Likewise sagas that never finish leave no saga time: that is the harm
measured (BLOCK), not a missing metric.

The overall p95 is blamed on the stage's slowest endpoint: "cache the concert list" only when that is
API-5 (or no per-endpoint figure exists), else that endpoint's own remedy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, delete, insert, update

from soundcheck import store
from soundcheck.bands import Judgement, band, bands_for, base_name
from soundcheck.models import KPI, Check, Decision, Remediation, TraceStep, Verdict
from soundcheck.plan import CONCERT_LIST, DERIVED_KPIS, PLAN, REMEDIATIONS, fmt_value
from soundcheck.profile import Profile, target_limits
from tasks.expectations import CheckResult, Validator, evaluate_run
from tasks.history import attach_shifts, build_of, fmt_shift, previous_values, rel_change, save_shifts
from tasks.rundata import RunData, load_run
from tasks.serverkpis import REQUIRED_SERVER_KPIS, Derived, stage_kpis

# ------------------------------------------------------------------------------------ remediations

# ------------------------------------------------------------------------------------------- tree


@dataclass(frozen=True)
class Rule:
    """One branch of the tree. A KPI rule matches a KPI by exact name or family (`p95_ms` matches
    `p95_ms.API-5`) and band; the first matching rule in TREE order decides that KPI's branch."""

    id: str
    branch: Decision
    why: str
    kpi: str | None = None
    band: str | None = None
    remediation: str | None = None
    exact: bool = False  # match the KPI name only, not its per-endpoint family members

    def matches(self, name: str, where: str | None) -> bool:
        if self.band != where:
            return False
        if self.kpi is None or self.kpi == name:
            return True
        return not self.exact and self.kpi == base_name(name)


#: Measurement branches (INCONCLUSIVE), by what was observed about the stage.
MEASUREMENT_RULES: dict[str, Rule] = {
    r.id: r
    for r in [
        Rule(
            "not_run", Decision.INCONCLUSIVE, "a planned scenario has no stage run", remediation="fix_test_environment"
        ),
        Rule("stage_status", Decision.INCONCLUSIVE, "the stage did not complete", remediation="fix_test_environment"),
        Rule(
            "k6_saturated",
            Decision.INCONCLUSIVE,
            "k6 CPU above the profile's limit: the numbers describe the load generator",
            remediation="fix_test_environment",
        ),
        Rule(
            "dropped_iterations",
            Decision.INCONCLUSIVE,
            "dropped iterations in an arrival-rate stage (coordinated omission)",
            remediation="fix_test_environment",
        ),
        Rule("coverage", Decision.INCONCLUSIVE, "data the checks need is missing", remediation="fix_test_environment"),
        Rule(
            "missing_metric",
            Decision.INCONCLUSIVE,
            "a KPI the verdict needs was not measured",
            remediation="fix_test_environment",
        ),
        Rule("no_stages", Decision.INCONCLUSIVE, "nothing was measured", remediation="fix_test_environment"),
    ]
}

#: What a stage measured although a KPI could not be computed from it: the harm is the measurement.
HARM_RULES: dict[str, Rule] = {
    "sagas_unfinished": Rule(
        "sagas_unfinished",
        Decision.BLOCK,
        "sagas never finished (no saga time: the saga never ended)",
        "sagas_unfinished",
        None,
        "shorten_outbox_interval",
    ),
}

#: A new lasting shift for the worse in a gated KPI's nightly series (R-REG-1), by `Profile.history.regression`.
REGRESSION_RULES: dict[str, Rule] = {
    "hold": Rule(
        "regression_hold",
        Decision.APPROVE_WITH_TUNING,
        "a lasting regression across nightly runs holds approval",
        remediation="investigate_regression",
    ),
    "block": Rule(
        "regression_block",
        Decision.BLOCK,
        "a lasting regression across nightly runs blocks the release",
        remediation="investigate_regression",
    ),
}

CHECK_RULES: dict[str, Rule] = {
    "correctness": Rule(
        "check_correctness", Decision.BLOCK, "correctness check failed", remediation="fix_code_and_retest"
    ),
    "criterion": Rule(
        "check_criterion", Decision.BLOCK, "plan success criterion not met", remediation="fix_code_and_retest"
    ),
}

#: KPI branches in priority order (plan §5.2, then the §6.1 risks, then catch-alls).
TREE: list[Rule] = [
    # action band → BLOCK
    Rule("action_db_cpu", Decision.BLOCK, "DB CPU > 90 %", "db_cpu_percent", "action", "upgrade_db_instance"),
    Rule(
        "action_error_rate",
        Decision.BLOCK,
        "error rate in the action band",
        "error_rate",
        "action",
        "fix_code_and_retest",
    ),
    Rule(
        "action_compensation",
        Decision.BLOCK,
        "compensating transactions failing",
        "compensation_success",
        "action",
        "shorten_outbox_interval",
    ),
    Rule("action_saga_time", Decision.BLOCK, "sagas too slow", "saga_time_s", "action", "shorten_outbox_interval"),
    Rule(
        "action_pool",
        Decision.BLOCK,
        "DB pool near exhaustion (§6.1: critical)",
        "db_pool_use",
        "action",
        "raise_db_pool",
    ),
    Rule("action_lag", Decision.BLOCK, "Kafka backlog (§6.1)", "consumer_lag", "action", "add_kafka_partitions"),
    Rule(
        "action_outbox",
        Decision.BLOCK,
        "outbox PENDING backlog (§6.1)",
        "outbox_oldest_age_s",
        "action",
        "shorten_outbox_interval",
    ),
    Rule("action_redis", Decision.BLOCK, "Redis memory (§6.1)", "redis_memory_bytes", "action", "reduce_redis_memory"),
    Rule(
        "action_timeouts",
        Decision.BLOCK,
        "network timeouts (§6.1)",
        "unanswered_rate",
        "action",
        "adjust_alb_idle_timeout",
    ),
    Rule("action_p95_queue", Decision.BLOCK, "queue latency", "p95_ms.API-1", "action", "use_rank_positions"),
    Rule("action_p95_poll", Decision.BLOCK, "queue latency", "p95_ms.API-2", "action", "use_rank_positions"),
    Rule("action_p95_concerts", Decision.BLOCK, "concert list slow", "p95_ms.API-5", "action", "cache_concert_list"),
    Rule(
        "action_p95",
        Decision.BLOCK,
        "response time in the action band",
        "p95_ms",
        "action",
        "cache_concert_list",
        exact=True,
    ),
    Rule(
        "action_throughput",
        Decision.BLOCK,
        "throughput in the action band",
        "throughput_rps",
        "action",
        "scale_out_app_servers",
    ),
    Rule("action_heap", Decision.BLOCK, "heap above the alarm line", "heap_use", "action", "fix_code_and_retest"),
    Rule("action_other", Decision.BLOCK, "KPI in the action band", None, "action", None),
    # allowed band → APPROVE_WITH_TUNING
    Rule("allowed_pool", Decision.APPROVE_WITH_TUNING, "DB pool near 85 %", "db_pool_use", "allowed", "raise_db_pool"),
    Rule(
        "allowed_p95_queue",
        Decision.APPROVE_WITH_TUNING,
        "queue latency",
        "p95_ms.API-1",
        "allowed",
        "use_rank_positions",
    ),
    Rule(
        "allowed_p95_poll",
        Decision.APPROVE_WITH_TUNING,
        "queue latency",
        "p95_ms.API-2",
        "allowed",
        "use_rank_positions",
    ),
    Rule(
        "allowed_p95_concerts",
        Decision.APPROVE_WITH_TUNING,
        "concert list near 1.5 s",
        "p95_ms.API-5",
        "allowed",
        "cache_concert_list",
    ),
    Rule(
        "allowed_p95",
        Decision.APPROVE_WITH_TUNING,
        "response time near 1.5 s",
        "p95_ms",
        "allowed",
        "cache_concert_list",
        exact=True,
    ),
    Rule(
        "allowed_lag",
        Decision.APPROVE_WITH_TUNING,
        "consumer lag near 300",
        "consumer_lag",
        "allowed",
        "raise_consumer_concurrency",
    ),
    Rule(
        "allowed_db_cpu",
        Decision.APPROVE_WITH_TUNING,
        "DB CPU above the scale-out line",
        "db_cpu_percent",
        "allowed",
        "add_read_replica",
    ),
    Rule(
        "allowed_compensation",
        Decision.APPROVE_WITH_TUNING,
        "compensation below 100 %",
        "compensation_success",
        "allowed",
        "shorten_outbox_interval",
    ),
    Rule(
        "allowed_saga_time",
        Decision.APPROVE_WITH_TUNING,
        "sagas slower than 10 s",
        "saga_time_s",
        "allowed",
        "shorten_outbox_interval",
    ),
    Rule(
        "allowed_outbox",
        Decision.APPROVE_WITH_TUNING,
        "outbox PENDING backlog (§6.1)",
        "outbox_oldest_age_s",
        "allowed",
        "shorten_outbox_interval",
    ),
    Rule(
        "allowed_redis",
        Decision.APPROVE_WITH_TUNING,
        "Redis memory (§6.1)",
        "redis_memory_bytes",
        "allowed",
        "reduce_redis_memory",
    ),
    Rule(
        "allowed_timeouts",
        Decision.APPROVE_WITH_TUNING,
        "network timeouts (§6.1)",
        "unanswered_rate",
        "allowed",
        "adjust_alb_idle_timeout",
    ),
    Rule(
        "allowed_throughput",
        Decision.APPROVE_WITH_TUNING,
        "throughput 800–1,000 req/s",
        "throughput_rps",
        "allowed",
        "scale_out_app_servers",
    ),
    Rule("allowed_other", Decision.APPROVE_WITH_TUNING, "KPI in the allowed band", None, "allowed", None),
    Rule("target", Decision.APPROVE, "on target", None, "target", None),
]

#: KPIs the load stage must deliver per scenario for the run to be judged.
REQUIRED_LOAD_KPIS: dict[str, tuple[str, ...]] = {s.name: s.load_kpis for s in PLAN.values() if s.load_kpis}

#: Stage statuses whose numbers still describe the target (it was stopped because it misbehaved).
TARGET_STOPPED = {"ABORTED", "THRESHOLD_ABORTED"}
ORDER = [Decision.BLOCK, Decision.INCONCLUSIVE, Decision.APPROVE_WITH_TUNING, Decision.APPROVE]


NOT_JUDGED = " — not judged: the stage could not measure"
UNMEASURED = " — not judged: data this requirement needs is missing"


#: Rules on the overall p95: the plan's remedy (cache the concert list) only when the concert list is what
#: is slow; otherwise the slowest endpoint's own remedy, if the tree has one.
OVERALL_LATENCY_RULES = frozenset({"action_p95", "allowed_p95"})


def overall_latency_remedy(k: KPI, kpis: list[KPI]) -> tuple[str | None, str]:
    """(remediation, trace note) for the overall p95 of a stage (phase): attributed to its slowest endpoint
    (highest per-endpoint p95 of the same scenario and phase). Caching the concert list is the remedy when
    API-5 is that endpoint, or when no per-endpoint figure exists to say otherwise."""
    per_ep = [
        e
        for e in kpis
        if e.scenario == k.scenario
        and e.phase == k.phase
        and e.value is not None
        and base_name(e.name) == "p95_ms"
        and e.name != "p95_ms"
    ]
    if not per_ep:
        return "cache_concert_list", "; no per-endpoint p95 to attribute it"
    slowest = max(per_ep, key=lambda e: e.value or 0.0)
    endpoint = slowest.name.split(".", 1)[1]
    note = f"; slowest endpoint {endpoint} ({_fmt_value(slowest)})"
    if endpoint == CONCERT_LIST:
        return "cache_concert_list", note
    own = next((r for r in TREE if r.kpi == slowest.name and r.remediation), None)
    return (own.remediation if own else None), note + ("" if own else ": no plan remedy of its own")


def rule_for(name: str, where: str | None) -> Rule | None:
    return next((r for r in TREE if r.matches(name, where)), None)


def kpi_remedy(k: KPI, kpis: list[KPI]) -> str | None:
    """The remediation the tree gives a KPI in its band (None on target or without one)."""
    rule = rule_for(k.name, k.band)
    if rule is None or rule.branch == Decision.APPROVE:
        return None
    return overall_latency_remedy(k, kpis)[0] if rule.id in OVERALL_LATENCY_RULES else rule.remediation


def raised_by(code: str, kpis: list[KPI]) -> list[KPI]:
    """The banded KPIs that raised remediation `code` (what a re-test must move): action band first, whole
    stage before a phase, an endpoint's own figure before the stage's overall one (the most direct effect)."""
    out = [k for k in kpis if k.band in ("allowed", "action") and kpi_remedy(k, kpis) == code]
    return sorted(out, key=lambda k: (k.band != "action", k.phase is not None, "." not in k.name, k.name))


# ----------------------------------------------------------------------------------------- engine


@dataclass
class StageFacts:
    """What the tree needs to know about one stage's ability to measure."""

    scenario: str
    status: str | None  # None: the scenario never ran
    k6_cpu_share: float | None = None
    dropped_iterations: int | None = None
    reason: str | None = None


def _fmt_value(k: KPI) -> str:
    return fmt_value(k.value, k.unit)


def _subject(k: KPI) -> str:
    return f"kpi {k.name}/{k.scenario}" + (f"/{k.phase}" if k.phase else "")


def measurement_steps(stages: list[StageFacts], max_cpu_share: float) -> tuple[list[TraceStep], set[str], set[str]]:
    """Trace steps for stages that could not measure; returns (steps, unjudged scenarios, reasons)."""
    steps: list[TraceStep] = []
    unjudged: set[str] = set()
    if not stages:
        r = MEASUREMENT_RULES["no_stages"]
        return [TraceStep(subject="run", branch=r.branch, why=r.why)], unjudged, {r.why}
    reasons: set[str] = set()
    for s in stages:

        def flag(rule_id: str, detail: str, *, keep_kpis: bool = False, _s: StageFacts = s) -> None:
            r = MEASUREMENT_RULES[rule_id]
            steps.append(TraceStep(subject=f"stage {_s.scenario}", branch=r.branch, why=f"{r.why}: {detail}"))
            reasons.add(f"{_s.scenario}: {detail}")
            if not keep_kpis:
                unjudged.add(_s.scenario)

        if s.status is None:
            flag("not_run", "no stage run recorded")
            continue
        if s.status != "COMPLETED":
            flag(
                "stage_status",
                f"status {s.status}" + (f" ({s.reason})" if s.reason else ""),
                keep_kpis=s.status in TARGET_STOPPED,
            )
        if s.k6_cpu_share is not None and s.k6_cpu_share > max_cpu_share:
            flag("k6_saturated", f"k6 CPU {s.k6_cpu_share:.0%} of its cores > {max_cpu_share:.0%}")
        if s.dropped_iterations:
            # in a stage stopped on harm, dropped iterations are the slow target exhausting k6's VUs: its
            # latencies are lower bounds (omitted requests would have been slower), still worth banding
            flag(
                "dropped_iterations", f"{s.dropped_iterations} dropped iterations", keep_kpis=s.status in TARGET_STOPPED
            )
    return steps, unjudged, reasons


def decide(
    *,
    run_id: str,
    profile: Profile,
    started_at: str,
    finished_at: str,
    stages: list[StageFacts],
    checks: list[CheckResult],
    kpis: list[KPI],
    scale: float = 1.0,
) -> Verdict:
    """Walk the tree over already-measured facts. `kpis` carry previous/delta; bands are set here."""
    table = bands_for(profile)
    trace, unjudged, inconclusive = measurement_steps(stages, profile.k6.max_cpu_share)
    remediations: dict[str, list[str]] = {}
    branches: list[Decision] = [t.branch for t in trace]

    def remedy(code: str | None, reason: str) -> None:
        if code:
            remediations.setdefault(code, [])
            if reason not in remediations[code]:
                remediations[code].append(reason)

    # checks: coverage first (it decides which requirements can be judged), then the rest. Missing data
    # leaves only its own requirement unjudged: a passed check of it may have passed on nothing, while a
    # failed one measured a failure, which stands (R-WHY of issue 11: never hide a measured failure).
    unmeasured: set[tuple[str, str]] = set()
    for cr in sorted(checks, key=lambda x: x.kind != "coverage"):
        c = cr.check
        if cr.kind == "coverage" and not c.passed:
            r = MEASUREMENT_RULES["coverage"]
            trace.append(
                TraceStep(subject=f"check {c.id}", branch=r.branch, why=f"{r.why}: {c.expected} — {c.observed}")
            )
            inconclusive.add(f"{c.scenario}: {c.id} not measured")
            unmeasured.add((c.scenario, c.id))
            branches.append(r.branch)
            continue
        if c.passed:
            if cr.kind != "coverage" and (c.scenario, c.id) in unmeasured and not c.observed.endswith(UNMEASURED):
                c.observed += UNMEASURED
            continue
        if cr.kind == "criterion" and c.scenario in unjudged:
            trace.append(
                TraceStep(
                    subject=f"check {c.id}",
                    branch=Decision.INCONCLUSIVE,
                    why=f"not judged: the {c.scenario} stage could not measure ({c.observed})",
                )
            )
            if not c.observed.endswith(NOT_JUDGED):
                c.observed += NOT_JUDGED
            continue
        r = CHECK_RULES.get(cr.kind, CHECK_RULES["correctness"])
        code = r.remediation if cr.kind == "correctness" else (cr.remediation or r.remediation)
        trace.append(
            TraceStep(
                subject=f"check {c.id}",
                branch=r.branch,
                why=f"{r.why} ({c.scenario}): expected {c.expected}, observed {c.observed}",
            )
        )
        remedy(code, f"{c.id} failed: {c.observed} (expected {c.expected})")
        branches.append(r.branch)

    # missing metrics
    have = {(k.scenario, k.name) for k in kpis if k.value is not None}
    unfinished = {k.scenario: k.value for k in kpis if k.name == "sagas_unfinished" and k.phase is None and k.value}
    for s in stages:
        if s.status is None or s.scenario in unjudged:
            continue
        need = REQUIRED_LOAD_KPIS.get(s.scenario, ()) + REQUIRED_SERVER_KPIS.get(s.scenario, ())
        missing = [n for n in need if (s.scenario, n) not in have]
        if "saga_time_s" in missing and unfinished.get(s.scenario):
            # no saga time because the sagas never ended: that is what was measured, not a gap
            missing.remove("saga_time_s")
            r = HARM_RULES["sagas_unfinished"]
            n = unfinished[s.scenario]
            trace.append(
                TraceStep(
                    subject=f"stage {s.scenario}",
                    branch=r.branch,
                    why=f"{r.why}: {n:.0f} sagas not terminal when the client gave up",
                )
            )
            remedy(r.remediation, f"{n:.0f} sagas in {s.scenario} never reached COMPLETED or FAILED")
            branches.append(r.branch)
        if missing:
            r = MEASUREMENT_RULES["missing_metric"]
            trace.append(
                TraceStep(subject=f"stage {s.scenario}", branch=r.branch, why=f"{r.why}: {', '.join(missing)}")
            )
            inconclusive.add(f"{s.scenario}: missing {', '.join(missing)}")
            branches.append(r.branch)

    # KPIs in bands
    on_target: dict[str, list[str]] = {}
    not_judged: dict[str, list[str]] = {}
    for k in kpis:
        j: Judgement = band(k.name, k.value, bands=table, scale=scale, scenario=k.scenario, phase=k.phase)
        k.band = j.band
        if j.band is None:
            continue
        if k.scenario in unjudged:
            not_judged.setdefault(k.scenario, []).append(
                f"{k.name}{'/' + k.phase if k.phase else ''} {_fmt_value(k)} (would be {j.band})"
            )
            k.band = None
            continue
        rule = rule_for(k.name, j.band)
        if rule is None:
            continue
        note = f"; {j.note}" if j.note else ""
        reg = f"; regression: {fmt_shift(k)}" if k.regression else ""
        if rule.branch == Decision.APPROVE:
            on_target.setdefault(k.scenario, []).append(
                f"{k.name}{'/' + k.phase if k.phase else ''} {_fmt_value(k)}{reg}"
            )
            if j.note:
                trace.append(
                    TraceStep(
                        subject=_subject(k), branch=rule.branch, why=f"{_fmt_value(k)} on target ({j.edges()}){note}"
                    )
                )
            continue
        code, blame = rule.remediation, ""
        if rule.id in OVERALL_LATENCY_RULES:
            code, blame = overall_latency_remedy(k, kpis)
        why = f"{_fmt_value(k)} in the {j.band} band ({j.edges()}): {rule.why}{blame}{note}{reg}"
        trace.append(TraceStep(subject=_subject(k), branch=rule.branch, why=why))
        remedy(
            code,
            f"{k.name} {_fmt_value(k)} in {k.scenario}" + (f" ({k.phase})" if k.phase else "") + f" ({j.band} band)",
        )
        branches.append(rule.branch)
    for scenario, items in not_judged.items():
        trace.append(
            TraceStep(
                subject=f"kpis {scenario}",
                branch=Decision.INCONCLUSIVE,
                why=f"not judged, the {scenario} stage could not measure: " + ", ".join(items),
            )
        )
    for scenario, items in on_target.items():
        trace.append(
            TraceStep(subject=f"kpis {scenario}", branch=Decision.APPROVE, why="on target: " + ", ".join(items))
        )
    hold = REGRESSION_RULES[profile.history.regression]
    for k in kpis:
        if k.scenario in unjudged or k.shift is None:
            continue
        if k.regression:
            trace.append(
                TraceStep(
                    subject=_subject(k),
                    branch=hold.branch,
                    why=f"{hold.why}: {fmt_shift(k)} (before {fmt_value(k.shift.before, k.unit)}, "
                    f"now {_fmt_value(k)}; history.regression: {profile.history.regression})",
                )
            )
            remedy(hold.remediation, f"{fmt_shift(k)}")
            branches.append(hold.branch)
        elif k.shift.new:
            trace.append(
                TraceStep(
                    subject=_subject(k), branch=Decision.APPROVE, why=f"lasting change for the better: {fmt_shift(k)}"
                )
            )

    if inconclusive:
        remedy("fix_test_environment", "; ".join(sorted(inconclusive)))
        branches.append(Decision.INCONCLUSIVE)
    verdict = next((d for d in ORDER if d in branches), Decision.APPROVE)
    trace.append(TraceStep(subject="verdict", branch=verdict, why=_summary(verdict, branches)))
    return Verdict(
        run_id=run_id,
        profile=profile.name,
        started_at=started_at,
        finished_at=finished_at,
        verdict=verdict,
        checks=[c.check for c in checks],
        kpis=kpis,
        remediations=[
            Remediation(code=code, reason="; ".join(reasons), detail=REMEDIATIONS.get(code, ""))
            for code, reasons in _ordered(remediations)
        ],
        trace=trace,
    )


def _ordered(rem: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """Remediations in catalogue order (the plan's own first), fix_test_environment last."""
    keys = list(REMEDIATIONS)
    return sorted(rem.items(), key=lambda kv: keys.index(kv[0]) if kv[0] in keys else len(keys))


def _summary(verdict: Decision, branches: list[Decision]) -> str:
    counts = {d: branches.count(d) for d in ORDER if branches.count(d)}
    parts = ", ".join(f"{n} × {d.value}" for d, n in counts.items()) or "every judged KPI on target"
    return {
        Decision.BLOCK: f"block: {parts}",
        Decision.INCONCLUSIVE: f"the campaign could not measure everything, never approve: {parts}",
        Decision.APPROVE_WITH_TUNING: f"some KPIs in the allowed band, none in action: {parts}",
        Decision.APPROVE: "every check passed and every judged KPI on target",
    }[verdict]


# ------------------------------------------------------------------------------------ judge_run

DERIVED_NAMES = DERIVED_KPIS


def kpis_of(
    run: RunData, derived: dict[str, list[Derived]], previous: dict[tuple[str, str, str | None], float]
) -> list[KPI]:
    """The load stage's KPIs plus the derived ones, each with its previous value and change."""
    out: list[KPI] = []
    seen: set[tuple[str, str, str | None]] = set()
    rows = run.kpis[~run.kpis["name"].isin(DERIVED_NAMES)] if not run.kpis.empty else run.kpis
    for r in rows.itertuples():
        value = None if r.value is None or (isinstance(r.value, float) and math.isnan(r.value)) else float(r.value)
        phase = r.phase if isinstance(r.phase, str) and r.phase else None
        out.append(KPI(name=r.name, scenario=r.scenario, value=value, unit=r.unit or "", phase=phase))
        seen.add((r.scenario, r.name, phase))
    for scenario, ds in derived.items():
        for d in ds:
            if (scenario, d.name, d.phase) not in seen:
                out.append(KPI(name=d.name, scenario=scenario, value=d.value, unit=d.unit, phase=d.phase))
    for k in out:
        k.previous = previous.get((k.scenario, k.name, k.phase))
        k.rel_change = rel_change(k.value, k.previous)
    return out


def stage_facts(run: RunData) -> list[StageFacts]:
    planned = run.scenarios or list(run.stages)
    facts = []
    for scenario in dict.fromkeys([*planned, *run.stages]):
        st = run.stages.get(scenario)
        facts.append(
            StageFacts(scenario, None)
            if st is None
            else StageFacts(scenario, st.status, st.k6_cpu_share, st.dropped_iterations, st.reason)
        )
    return facts


#: What lib/common.js's admission set-up says when the target did not admit the users a stage needs.
NOT_ADMITTED = re.compile(r"the target admitted (\d+) of (\d+) users within ([\d.]+) s")


def admission_findings(run: RunData) -> list[CheckResult]:
    """A stage whose set-up waited for admission in vain measured the target: users it should admit were not
    (R-SPIKE-12, a finding about the queue — BLOCK), besides the stage itself being unmeasured."""
    out = []
    for scenario, st in run.stages.items():
        m = NOT_ADMITTED.search(st.reason or "")
        if m:
            out.append(
                CheckResult(
                    Check(
                        id="R-SPIKE-12",
                        scenario=scenario,
                        passed=False,
                        source="gx",
                        expected="every user the stage needs admitted at the target's pace "
                        "(within target.admission.wait_s)",
                        observed=f"the target admitted {m.group(1)} of {m.group(2)} users within {m.group(3)} s",
                    ),
                    kind="correctness",
                )
            )
    return out


def _iso(dt: datetime | None) -> str:
    if dt is None:
        return ""
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).isoformat()


def judge(
    engine: Engine, run_id: str, profile: Profile, *, validator: Validator | None = None, store_results: bool = True
) -> tuple[Verdict, RunData]:
    """Judge a stored run: derive server KPIs, run the suites, compare with history, walk the tree,
    store checks and KPIs (the verdict row is `tasks.publish`'s). Calling it again (`soundcheck report
    RUN_ID`) re-judges with the current suites, bands and tree and replaces the check and derived-KPI rows.
    Returns the verdict and the loaded run data (the report draws its charts from it)."""
    run = load_run(engine, run_id)
    derived = {s: stage_kpis(st, run.time_scale) for s, st in run.stages.items()}
    checks = evaluate_run(run, derived, validator, target_limits(profile)) + admission_findings(run)
    kpis = kpis_of(run, derived, previous_values(engine, run_id))
    attach_shifts(
        engine,
        run_id,
        kpis,
        profile,
        scale=run.scale,
        completed={s for s, st in run.stages.items() if st.status == "COMPLETED"},
    )
    verdict = decide(
        run_id=run_id,
        profile=profile,
        started_at=_iso(run.started_at),
        finished_at=_iso(run.finished_at),
        stages=stage_facts(run),
        checks=checks,
        kpis=kpis,
        scale=run.scale,
    )
    verdict.profile = run.profile  # re-judging with another profile file keeps the run's own name
    verdict.extra = {
        "scale": run.scale,
        "time_scale": run.time_scale,
        "run_status": run.status,
        "build": build_of(engine, run_id),
    }
    if store_results:
        save(engine, verdict)
        save_shifts(engine, run_id, run.profile, run.scale, verdict.kpis)
    return verdict, run


VERDICT_SOURCES = ("gx", "coverage")


def save(engine: Engine, verdict: Verdict) -> None:
    """Store checks and KPIs (bands, previous, derived values); idempotent per run."""
    rid = verdict.run_id
    with engine.begin() as c:
        c.execute(delete(store.checks).where(store.checks.c.run_id == rid, store.checks.c.source.in_(VERDICT_SOURCES)))
        if verdict.checks:
            c.execute(
                insert(store.checks),
                [
                    {
                        "run_id": rid,
                        "check_id": ch.id,
                        "scenario": ch.scenario,
                        "passed": ch.passed,
                        "observed": ch.observed,
                        "expected": ch.expected,
                        "source": ch.source,
                    }
                    for ch in verdict.checks
                ],
            )
        c.execute(delete(store.kpis).where(store.kpis.c.run_id == rid, store.kpis.c.name.in_(DERIVED_NAMES)))
        derived = [k for k in verdict.kpis if k.name in DERIVED_NAMES]
        if derived:
            c.execute(insert(store.kpis), store.kpi_rows(rid, derived))
        for k in verdict.kpis:
            if k.name in DERIVED_NAMES:
                continue
            cond = [
                store.kpis.c.run_id == rid,
                store.kpis.c.scenario == k.scenario,
                store.kpis.c.name == k.name,
                store.kpis.c.phase.is_(None) if k.phase is None else store.kpis.c.phase == k.phase,
            ]
            c.execute(update(store.kpis).where(*cond).values(band=k.band, previous=k.previous))
